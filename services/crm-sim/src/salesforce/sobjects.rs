//! sObject endpoints: create, read, update, delete, external-ID upsert, sObject Collections,
//! describe, deleted-record listing and /limits.

use super::errors::{self, Fail};
use super::{api_version, limits as sf_limits, normalise_id, object_of_id, sf_datetime, COLLECTION_MAX};
use crate::gate::json;
use crate::state::{Account, Caller, FieldType, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub fn check_version(v: &str) -> Result<u32, Response> {
    api_version(v).ok_or_else(errors::not_found)
}

/// The objects SOQL reads: those written, and User (owners by email).
pub fn check_query_object(o: &str) -> Result<&'static str, Response> {
    if let Some(k) = ["User", "Account", "Opportunity", "OpportunityContactRole"].into_iter().find(|k| k.eq_ignore_ascii_case(o)) {
        return Ok(k);
    }
    check_object(o)
}

pub fn check_object(o: &str) -> Result<&'static str, Response> {
    ["Task", "Event", "Contact", "Lead"].into_iter().find(|k| k.eq_ignore_ascii_case(o)).ok_or_else(errors::not_found)
}

pub fn canonical_field(acct: &Account, object: &str, name: &str) -> Option<String> {
    acct.fields(object)?.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        errors::error(400, "JSON_PARSER_ERROR", &format!("Unexpected character at [line:{},column:{}]: {e}", e.line(), e.column()), &[])
    })
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Create,
    Update,
}

/// Checks a body's fields against the object's describe: names (case-insensitive), writability,
/// picklists, types and lengths.
fn validate(acct: &Account, object: &str, body: &Map<String, Value>, mode: Mode) -> Result<Map<String, Value>, Fail> {
    let schema = acct.schema_of(object);
    let mut out = Map::new();
    let mut not_writable = vec![];
    for (raw, v) in body {
        if raw == "attributes" {
            continue;
        }
        let Some(name) = canonical_field(acct, object, raw) else {
            return Err(Fail::new("INVALID_FIELD", format!("No such column '{raw}' on sobject of type {object}"), &[]));
        };
        let def = &schema[&name];
        if def.read_only || (mode == Mode::Update && def.create_only) {
            not_writable.push(name);
            continue;
        }
        let label = name.as_str();
        let v = match (def.kind, v) {
            (_, Value::Null) => Value::Null,
            (FieldType::Picklist, Value::String(s)) if !def.options.contains(s) => {
                return Err(Fail::new(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!("{label}: bad value for restricted picklist field: {s}"),
                    &[label],
                ));
            }
            (FieldType::Number, Value::Number(_)) => v.clone(),
            (FieldType::Number, Value::String(s)) => match s.parse::<f64>() {
                Ok(n) => json!(n as i64),
                Err(_) => {
                    return Err(Fail::new(
                        "JSON_PARSER_ERROR",
                        format!(
                            "Cannot deserialize instance of double from VALUE_STRING value {s} or request may be missing a required field"
                        ),
                        &[],
                    ))
                }
            },
            (FieldType::Number, _) => {
                return Err(Fail::new("JSON_PARSER_ERROR", format!("Cannot deserialize instance of double from {v}"), &[]))
            }
            (FieldType::Bool, Value::Bool(_)) => v.clone(),
            (FieldType::Date, Value::String(s)) if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() => {
                return Err(Fail::new(
                    "JSON_PARSER_ERROR",
                    format!("Cannot deserialize value of type date from String \"{s}\": expected format \"yyyy-MM-dd\""),
                    &[],
                ));
            }
            (FieldType::Lookup, Value::String(s)) => match normalise_id(s) {
                Some(id) => json!(id),
                None => return Err(Fail::new("MALFORMED_ID", format!("{label}: id value of incorrect type: {s}"), &[label])),
            },
            (FieldType::Text | FieldType::Phone | FieldType::Picklist, Value::String(s)) if s.chars().count() > 255 => {
                return Err(Fail::new(
                    "STRING_TOO_LONG",
                    format!("{label}: data value too large: {}... (max length=255)", s.chars().take(20).collect::<String>()),
                    &[label],
                ));
            }
            (FieldType::Json, Value::String(s)) if s.chars().count() > 32_000 => {
                return Err(Fail::new("STRING_TOO_LONG", format!("{label}: data value too large (max length=32000)"), &[label]));
            }
            (_, Value::String(_)) => v.clone(),
            (_, other) => return Err(Fail::new("JSON_PARSER_ERROR", format!("Cannot deserialize instance of string from {other}"), &[])),
        };
        out.insert(name, v);
    }
    if !not_writable.is_empty() {
        let list = not_writable.join(", ");
        let fields: Vec<&str> = not_writable.iter().map(String::as_str).collect();
        return Err(Fail::new(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            format!("Unable to create/update fields: {list}. Please check the security settings of this field and verify that it is read/write for your profile or permission set."),
            &fields,
        ));
    }
    Ok(out)
}

/// WhoId must name a live Contact or Lead: a recycled one is ENTITY_IS_DELETED.
fn check_who(acct: &mut Account, fields: &Map<String, Value>) -> Result<Option<String>, Fail> {
    let Some(who) = fields.get("WhoId").and_then(Value::as_str) else { return Ok(None) };
    let Some(obj) = object_of_id(who).filter(|o| *o == "Contact" || *o == "Lead") else {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", "Name ID: id value of incorrect type", &["WhoId"]));
    };
    match acct.table(obj).get(who) {
        Some(r) if r.live() => Ok(Some(who.to_string())),
        Some(_) => Err(Fail::new("ENTITY_IS_DELETED", "entity is deleted", &["WhoId"])),
        None => Err(Fail::new("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &["WhoId"])),
    }
}

fn check_unique(acct: &Account, object: &str, fields: &Map<String, Value>, except: Option<&str>) -> Result<(), Fail> {
    let schema = acct.schema_of(object);
    for (name, v) in fields {
        if schema.get(name).is_some_and(|d| d.unique) {
            if let Some(existing) = acct.unique_holder(object, name, v, except) {
                return Err(Fail::new(
                    "DUPLICATE_VALUE",
                    format!("duplicate value found: {name} duplicates value on record with id: {existing}"),
                    &[],
                ));
            }
        }
    }
    Ok(())
}

/// The most contacts an Event or Task relates (shared activities); a lead must be alone.
pub const EVENT_WHO_MAX: usize = 50;

/// The JunctionIdList naming an object's people (`EventWhoIds`, `TaskWhoIds`).
pub fn who_ids_field(object: &str) -> Option<&'static str> {
    match object {
        "Event" => Some("EventWhoIds"),
        "Task" => Some("TaskWhoIds"),
        _ => None,
    }
}

/// `EventWhoIds` / `TaskWhoIds` taken off a body: the people an Event or Task relates, each
/// a live Contact, or one live Lead alone. Exact error codes past the limits are not
/// documented ([U]): modelled as FIELD_INTEGRITY_EXCEPTION.
fn who_ids(acct: &mut Account, object: &str, body: &mut Map<String, Value>) -> Result<Option<Vec<String>>, Fail> {
    let Some(field) = who_ids_field(object) else { return Ok(None) };
    let Some(v) = body.remove(field) else { return Ok(None) };
    let Some(list) = v.as_array() else {
        return Err(Fail::new("JSON_PARSER_ERROR", format!("{field}: a JunctionIdList is an array of ids"), &[]));
    };
    let mut ids = vec![];
    for raw in list {
        let Some(id) = raw.as_str().and_then(normalise_id) else {
            return Err(Fail::new("MALFORMED_ID", format!("{field}: id value of incorrect type: {raw}"), &[field]));
        };
        let obj = object_of_id(&id).filter(|o| *o == "Contact" || *o == "Lead");
        match obj.and_then(|o| acct.table(o).get(&id)) {
            Some(r) if r.live() => {}
            Some(_) => return Err(Fail::new("ENTITY_IS_DELETED", "entity is deleted", &[field])),
            None => return Err(Fail::new("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &[field])),
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let leads = ids.iter().filter(|i| object_of_id(i) == Some("Lead")).count();
    if leads > 0 && ids.len() > 1 {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", format!("{field}: a lead can't be related with other people"), &[field]));
    }
    if ids.len() > EVENT_WHO_MAX {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", format!("{field}: more than {EVENT_WHO_MAX} contacts"), &[field]));
    }
    Ok(Some(ids))
}

/// An Event's times: a start, and an end or a duration unless it is all-day; the end not
/// before the start; at most 14 days.
fn check_event_times(fields: &mut Map<String, Value>) -> Result<(), Fail> {
    let all_day = fields.get("IsAllDayEvent").and_then(Value::as_bool) == Some(true);
    let time = |f: &Map<String, Value>, k: &str| f.get(k).and_then(Value::as_str).map(|s| parse_sf_time(s).ok_or(k.to_string()));
    let start = time(fields, "StartDateTime").or_else(|| time(fields, "ActivityDateTime")).transpose();
    let end = time(fields, "EndDateTime").transpose();
    let (start, end) = match (start, end) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(k), _) | (_, Err(k)) => {
            return Err(Fail::new("INVALID_TYPE_ON_FIELD_IN_RECORD", format!("{k}: value not of required type"), &[]))
        }
    };
    let duration = fields.get("DurationInMinutes").and_then(Value::as_i64);
    if all_day {
        return Ok(());
    }
    let Some(start) = start else {
        return Err(Fail::new("REQUIRED_FIELD_MISSING", "Required fields are missing: [StartDateTime]", &["StartDateTime"]));
    };
    let end = match (end, duration) {
        (Some(e), _) => e,
        (None, Some(d)) => start + d * 60_000,
        (None, None) => {
            return Err(Fail::new(
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [EndDateTime, DurationInMinutes]",
                &["EndDateTime", "DurationInMinutes"],
            ))
        }
    };
    if end < start {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", "End Date Time: cannot be before Start Date Time", &["EndDateTime"]));
    }
    if end - start > 14 * 24 * 3_600_000 {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", "Event duration cannot exceed 14 days", &["EndDateTime"]));
    }
    if duration.is_some_and(|d| start + d * 60_000 != end) {
        return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", "DurationInMinutes does not agree with EndDateTime", &["DurationInMinutes"]));
    }
    fields.insert("DurationInMinutes".into(), json!((end - start) / 60_000));
    fields.insert("EndDateTime".into(), json!(super::sf_datetime(end)));
    fields.insert("StartDateTime".into(), json!(super::sf_datetime(start)));
    fields.insert("ActivityDateTime".into(), json!(super::sf_datetime(start)));
    Ok(())
}

/// A Task's or Event's WhatId (CRM-APIS-ACTIVITIES §4.2): an Account or an Opportunity
/// that exists (other "what" objects are not modelled), never beside a Lead as WhoId; it
/// sets the activity's AccountId (an Opportunity's account).
fn check_what(acct: &Account, object: &str, fields: &mut Map<String, Value>, id: Option<&str>) -> Result<(), Fail> {
    if object != "Task" && object != "Event" {
        return Ok(());
    }
    let Some(what) = fields.get("WhatId").cloned() else { return Ok(()) };
    let Some(what) = what.as_str().filter(|w| !w.is_empty()).map(str::to_string) else {
        fields.insert("AccountId".into(), Value::Null);
        return Ok(());
    };
    let who = fields
        .get("WhoId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| id.and_then(|id| acct.objects.get(object)?.get(id)?.str_field("WhoId").map(str::to_string)));
    if who.as_deref().is_some_and(|w| w.starts_with("00Q")) {
        return Err(Fail::new(
            "FIELD_INTEGRITY_EXCEPTION",
            "Related To ID: You can't associate a lead with an object in the Related To field",
            &["WhatId"],
        ));
    }
    let account = match super::object_of_id(&what) {
        Some(o @ ("Account" | "Opportunity")) => match acct.objects.get(o).and_then(|t| t.get(&what)) {
            Some(r) if r.live() => {
                if o == "Account" {
                    Some(what.clone())
                } else {
                    r.str_field("AccountId").map(str::to_string)
                }
            }
            _ => return Err(Fail::new("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &["WhatId"])),
        },
        _ => return Err(Fail::new("FIELD_INTEGRITY_EXCEPTION", "Related To ID: id value of incorrect type", &["WhatId"])),
    };
    fields.insert("AccountId".into(), account.map_or(Value::Null, Value::from));
    Ok(())
}

/// An OwnerId must be an active user: an inactive one is INACTIVE_OWNER_OR_USER (the
/// StatusCode enum), an id no user has INVALID_CROSS_REFERENCE_KEY.
fn check_owner(acct: &Account, fields: &Map<String, Value>) -> Result<(), Fail> {
    let Some(id) = fields.get("OwnerId").and_then(Value::as_str).filter(|s| !s.is_empty()) else { return Ok(()) };
    match crate::users::check_owner(acct, id) {
        Ok(()) => Ok(()),
        Err(crate::users::NotOwner::Inactive) => {
            Err(Fail::new("INACTIVE_OWNER_OR_USER", "The user or record owner is not active", &["OwnerId"]))
        }
        Err(crate::users::NotOwner::Unknown) => Err(Fail::new("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", &["OwnerId"])),
    }
}

pub fn create_record(
    acct: &mut Account,
    object: &str,
    body: &Map<String, Value>,
    asked: super::leads::Asked,
    now: i64,
) -> Result<String, Fail> {
    let mut body = body.clone();
    let who_ids = who_ids(acct, object, &mut body)?;
    let body = &body;
    let mut fields = validate(acct, object, body, Mode::Create)?;
    if object == "Event" {
        check_event_times(&mut fields)?;
    }
    let schema = acct.schema_of(object);
    let missing: Vec<&str> = schema
        .iter()
        .filter(|(n, d)| d.required && fields.get(*n).is_none_or(|v| v.is_null() || v.as_str() == Some("")))
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Fail::new("REQUIRED_FIELD_MISSING", format!("Required fields are missing: [{}]", missing.join(", ")), &missing));
    }
    let who = check_who(acct, &fields)?;
    super::leads::before_write(acct, object, None, &mut fields, asked)?;
    check_owner(acct, &fields)?;
    check_what(acct, object, &mut fields, None)?;
    check_unique(acct, object, &fields, None)?;
    if object == "Lead" {
        fields.entry("Status").or_insert(json!(super::LEAD_STATUSES[0]));
        fields.entry("IsConverted").or_insert(json!(false));
    }
    if object == "Task" {
        fields.entry("Status").or_insert(json!("Not Started"));
        fields.entry("Priority").or_insert(json!("Normal"));
        fields.entry("TaskSubtype").or_insert(json!("Task"));
    }
    fields.entry("OwnerId").or_insert(json!(acct.owner_id));
    let id = super::new_id(acct, object);
    let lag = acct.search_lag_ms;
    let mut r = Record {
        id: id.clone(),
        fields,
        created_ms: now,
        updated_ms: now,
        deleted_ms: None,
        indexed_at_ms: now + lag,
        // The Event's people: EventWhoIds, with WhoId (else the first of them) as primary.
        associations: who.iter().cloned().chain(who_ids.into_iter().flatten()).collect(),
        merged_into: None,
    };
    super::derive(object, &mut r);
    acct.table(object).insert(r);
    Ok(id)
}

pub fn update_record(
    acct: &mut Account,
    object: &str,
    id: &str,
    body: &Map<String, Value>,
    asked: super::leads::Asked,
    now: i64,
) -> Result<(), Fail> {
    match acct.table(object).get(id) {
        None => return Err(Fail::new("NOT_FOUND", "The requested resource does not exist", &[]).status(404)),
        Some(r) if !r.live() => return Err(Fail::new("ENTITY_IS_DELETED", "entity is deleted", &[]).status(404)),
        _ => {}
    }
    let mut body = body.clone();
    let who_ids = who_ids(acct, object, &mut body)?;
    let mut fields = validate(acct, object, &body, Mode::Update)?;
    let who = check_who(acct, &fields)?;
    super::leads::before_write(acct, object, Some(id), &mut fields, asked)?;
    check_owner(acct, &fields)?;
    check_what(acct, object, &mut fields, Some(id))?;
    check_unique(acct, object, &fields, Some(id))?;
    if object == "Event" {
        // The times as they will be, checked together.
        let mut merged = acct.table(object).get(id).map(|r| r.fields.clone()).unwrap_or_default();
        let touches_times = ["StartDateTime", "EndDateTime", "ActivityDateTime", "DurationInMinutes", "IsAllDayEvent"];
        if fields.keys().any(|k| touches_times.contains(&k.as_str())) {
            if !fields.contains_key("DurationInMinutes") {
                merged.remove("DurationInMinutes");
            }
            if fields.contains_key("StartDateTime") && !fields.contains_key("ActivityDateTime") {
                merged.remove("ActivityDateTime");
            }
            merged.extend(fields.clone());
            check_event_times(&mut merged)?;
            for k in touches_times {
                if let Some(v) = merged.get(k) {
                    fields.insert(k.to_string(), v.clone());
                }
            }
        }
    }
    let lag = acct.search_lag_ms;
    let r = acct.table(object).get_mut(id).unwrap();
    if fields.contains_key("WhoId") || who_ids.is_some() {
        r.associations = who.iter().cloned().chain(who_ids.into_iter().flatten()).collect();
    }
    r.apply(fields);
    r.updated_ms = now;
    r.indexed_at_ms = now + lag;
    super::derive(object, r);
    acct.table(object).reindex(id);
    Ok(())
}

pub fn render(r: &Record, object: &str, version: &str, fields: Option<&[String]>, acct: &Account) -> Value {
    let mut out = Map::new();
    out.insert("attributes".into(), json!({"type": object, "url": format!("/services/data/{version}/sobjects/{object}/{}", r.id)}));
    let names: Vec<String> = match fields {
        Some(f) => f.iter().filter_map(|n| canonical_field(acct, object, n)).collect(),
        None => acct.fields(object).map(|s| s.keys().cloned().collect()).unwrap_or_default(),
    };
    for n in names {
        out.insert(n.clone(), r.fields.get(&n).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn fields_param(q: &HashMap<String, String>) -> Option<Vec<String>> {
    q.get("fields").map(|f| f.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

pub async fn limits(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(version): Path<String>) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    sim.with(&caller, |acct, now| {
        let (used, max) = sf_limits::used(acct, now);
        let conc = sf_limits::limits(acct).long_running_concurrency;
        json(200, json!({"DailyApiRequests": {"Max": max, "Remaining": max.saturating_sub(used)}, "ConcurrentLongRunningApexLimit": {"Max": conc, "Remaining": conc}}))
    })
}

pub async fn create(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    if super::setup::SETUP_OBJECTS.contains(&sobject.as_str()) {
        return match (check_version(&version), parse_json(&body)) {
            (Ok(_), Ok(Value::Object(b))) => sim.with(&caller, |acct, _| super::setup::create(acct, &sobject, &b)),
            (Err(r), _) | (_, Err(r)) => r,
            (_, Ok(_)) => errors::error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object", &[]),
        };
    }
    let (object, body) = match (check_version(&version), check_object(&sobject), parse_json(&body)) {
        (Ok(_), Ok(o), Ok(b)) => (o, b),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let Some(body) = body.as_object() else {
        return errors::error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object", &[]);
    };
    sim.with(&caller, |acct, now| match create_record(acct, object, body, asked, now) {
        Ok(id) => json(201, json!({"id": id, "success": true, "errors": []})),
        Err(f) => f.response(),
    })
}

pub async fn read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Some(id) = normalise_id(&id) else {
        return errors::error(404, "NOT_FOUND", &format!("Provided external ID field does not exist or is not accessible: {id}"), &[]);
    };
    sim.with(&caller, |acct, _| match acct.table(object).get(&id).filter(|r| r.live()).cloned() {
        Some(r) => json(200, render(&r, object, &version, fields_param(&q).as_deref(), acct)),
        None => errors::not_found(),
    })
}

pub async fn update(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    if super::setup::SETUP_OBJECTS.contains(&sobject.as_str()) {
        return match (check_version(&version), parse_json(&body)) {
            (Ok(_), Ok(Value::Object(b))) => sim.with(&caller, |acct, _| super::setup::create(acct, &sobject, &b)),
            (Err(r), _) | (_, Err(r)) => r,
            (_, Ok(_)) => errors::error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object", &[]),
        };
    }
    let (object, body) = match (check_version(&version), check_object(&sobject), parse_json(&body)) {
        (Ok(_), Ok(o), Ok(b)) => (o, b),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let Some(id) = normalise_id(&id) else {
        return errors::error(400, "MALFORMED_ID", &format!("{object} ID: id value of incorrect type: {id}"), &["Id"]);
    };
    let Some(body) = body.as_object() else {
        return errors::error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object", &[]);
    };
    sim.with(&caller, |acct, now| match update_record(acct, object, &id, body, asked, now) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(f) => f.response(),
    })
}

pub async fn delete(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, id)): Path<(String, String, String)>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Some(id) = normalise_id(&id) else {
        return errors::error(400, "MALFORMED_ID", &format!("{object} ID: id value of incorrect type: {id}"), &["Id"]);
    };
    sim.with(&caller, |acct, now| {
        delete_one(acct, object, &id, now).map_or_else(|f| f.response(), |_| StatusCode::NO_CONTENT.into_response())
    })
}

fn delete_one(acct: &mut Account, object: &str, id: &str, now: i64) -> Result<(), Fail> {
    match acct.table(object).get_mut(id) {
        None => Err(Fail::new("NOT_FOUND", "The requested resource does not exist", &[]).status(404)),
        Some(r) if !r.live() => Err(Fail::new("ENTITY_IS_DELETED", "entity is deleted", &[]).status(404)),
        Some(r) => {
            r.deleted_ms = Some(now);
            r.fields.insert("IsDeleted".into(), json!(true));
            Ok(())
        }
    }
}

/// The external-ID field named in a path, or the 404 Salesforce answers.
fn ext_field(acct: &Account, object: &str, field: &str) -> Result<String, Response> {
    match canonical_field(acct, object, field) {
        Some(f) if f == "Id" || acct.fields(object).and_then(|s| s.get(&f)).is_some_and(|d| d.external_id) => Ok(f),
        _ => Err(errors::error(404, "NOT_FOUND", &format!("Provided external ID field does not exist or is not accessible: {field}"), &[])),
    }
}

fn matches(acct: &mut Account, object: &str, field: &str, value: &str) -> Vec<String> {
    acct.table(object).find_by(field, value).into_iter().filter(|r| r.live()).map(|r| r.id.clone()).collect()
}

fn multiple_choices(ids: &[String], object: &str, version: &str) -> Response {
    let urls: Vec<String> = ids.iter().map(|id| format!("/services/data/{version}/sobjects/{object}/{id}")).collect();
    json(300, json!(urls))
}

pub async fn read_by_ext(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, field, value)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    sim.with(&caller, |acct, _| {
        let field = match ext_field(acct, object, &field) {
            Ok(f) => f,
            Err(r) => return r,
        };
        match matches(acct, object, &field, &value).as_slice() {
            [] => errors::not_found(),
            [one] => {
                let r = acct.table(object).get(one).cloned().unwrap();
                json(200, render(&r, object, &version, fields_param(&q).as_deref(), acct))
            }
            many => multiple_choices(many, object, &version),
        }
    })
}

/// Insert or update by external ID; live records only (a recycled record is not matched).
fn upsert_one(
    acct: &mut Account,
    object: &str,
    field: &str,
    value: &str,
    body: &Map<String, Value>,
    asked: super::leads::Asked,
    now: i64,
) -> Result<(String, bool), Result<Fail, Vec<String>>> {
    if let Some(v) = body.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v) {
        if v.as_str() != Some(value) {
            return Err(Ok(Fail::new(
                "INVALID_FIELD",
                format!("The value of the external ID field {field} in the body does not match the value in the URL"),
                &[field],
            )));
        }
    }
    match matches(acct, object, field, value).as_slice() {
        [] => {
            let mut b = body.clone();
            b.insert(field.to_string(), json!(value));
            create_record(acct, object, &b, asked, now).map(|id| (id, true)).map_err(Ok)
        }
        [one] => {
            let id = one.clone();
            let mut b = body.clone();
            b.retain(|k, _| !k.eq_ignore_ascii_case(field));
            update_record(acct, object, &id, &b, asked, now).map(|_| (id, false)).map_err(Ok)
        }
        many => Err(Err(many.to_vec())),
    }
}

pub async fn upsert(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, field, value)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    let (v, object, body) = match (check_version(&version), check_object(&sobject), parse_json(&body)) {
        (Ok(v), Ok(o), Ok(b)) => (v, o, b),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let Some(body) = body.as_object().cloned() else {
        return errors::error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object", &[]);
    };
    sim.with(&caller, |acct, now| {
        let field = match ext_field(acct, object, &field) {
            Ok(f) => f,
            Err(r) => return r,
        };
        match upsert_one(acct, object, &field, &value, &body, asked, now) {
            Ok((id, true)) => json(201, json!({"id": id, "success": true, "errors": [], "created": true})),
            Ok((id, false)) if v >= 46 => json(200, json!({"id": id, "success": true, "errors": [], "created": false})),
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(Ok(f)) => f.response(),
            Err(Err(many)) => multiple_choices(&many, object, &version),
        }
    })
}

/// The version, body and records of a collection request, or the error Salesforce answers.
fn collection_request(version: &str, body: &Bytes) -> Result<(bool, Vec<Value>), Response> {
    check_version(version)?;
    collection_records(&parse_json(body)?)
}

fn collection_records(body: &Value) -> Result<(bool, Vec<Value>), Response> {
    let all_or_none = body.get("allOrNone").and_then(Value::as_bool).unwrap_or(false);
    let Some(records) = body.get("records").and_then(Value::as_array).cloned() else {
        return Err(errors::error(400, "JSON_PARSER_ERROR", "records is required", &[]));
    };
    if records.len() > COLLECTION_MAX {
        return Err(errors::error(
            400,
            "EXCEEDED_ID_LIMIT",
            &format!("record limit reached. cannot submit more than {COLLECTION_MAX} records into this call"),
            &[],
        ));
    }
    Ok((all_or_none, records))
}

/// Runs each record's operation; with allOrNone, one failure rolls every record back.
fn run_collection(
    acct: &mut Account,
    all_or_none: bool,
    records: &[Value],
    mut op: impl FnMut(&mut Account, &Value) -> Result<Value, Fail>,
) -> Vec<Value> {
    let snapshot = all_or_none.then(|| (acct.objects.clone(), acct.seq));
    let results: Vec<Result<Value, Fail>> = records.iter().map(|r| op(acct, r)).collect();
    if all_or_none && results.iter().any(Result::is_err) {
        let (objects, seq) = snapshot.unwrap();
        acct.objects = objects;
        acct.seq = seq;
        return results
            .into_iter()
            .map(|r| match r {
                Err(f) => f.save_result(),
                Ok(_) => Fail::new(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    &[],
                )
                .save_result(),
            })
            .collect();
    }
    results.into_iter().map(|r| r.unwrap_or_else(|f| f.save_result())).collect()
}

fn record_type(rec: &Value) -> Result<&'static str, Fail> {
    let t = rec
        .pointer("/attributes/type")
        .and_then(Value::as_str)
        .ok_or_else(|| Fail::new("INVALID_TYPE", "Must send a concrete entity type.", &[]))?;
    check_object(t).map_err(|_| Fail::new("INVALID_TYPE", format!("sObject type '{t}' is not supported."), &[]))
}

pub async fn collection_create(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    let (aon, records) = match collection_request(&version, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        let out = run_collection(acct, aon, &records, |acct, rec| {
            let object = record_type(rec)?;
            if rec.get("Id").or(rec.get("id")).is_some() {
                return Err(Fail::new("INVALID_FIELD", "cannot specify Id in an insert call", &["Id"]));
            }
            let fields = rec.as_object().cloned().unwrap_or_default();
            create_record(acct, object, &fields, asked, now).map(|id| json!({"id": id, "success": true, "errors": []}))
        });
        json(200, Value::Array(out))
    })
}

pub async fn collection_update(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    let (aon, records) = match collection_request(&version, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        let out = run_collection(acct, aon, &records, |acct, rec| {
            let object = record_type(rec)?;
            let mut fields = rec.as_object().cloned().unwrap_or_default();
            let id = fields
                .remove("Id")
                .or_else(|| fields.remove("id"))
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| Fail::new("MISSING_ARGUMENT", "Id not specified in an update call", &[]))?;
            let id = normalise_id(&id)
                .ok_or_else(|| Fail::new("MALFORMED_ID", format!("{object} ID: id value of incorrect type: {id}"), &["Id"]))?;
            update_record(acct, object, &id, &fields, asked, now).map(|_| json!({"id": id, "success": true, "errors": []}))
        });
        json(200, Value::Array(out))
    })
}

pub async fn collection_upsert(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = super::leads::asked(&headers);
    let (v, object, body) = match (check_version(&version), check_object(&sobject), parse_json(&body)) {
        (Ok(v), Ok(o), Ok(b)) => (v, o, b),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    if v < 46 {
        return errors::not_found();
    }
    let (aon, records) = match collection_records(&body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        let field = match ext_field(acct, object, &field) {
            Ok(f) => f,
            Err(r) => return r,
        };
        let out = run_collection(acct, aon, &records, |acct, rec| {
            record_type(rec)?;
            let fields = rec.as_object().cloned().unwrap_or_default();
            let value = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(&field)).and_then(|(_, v)| v.as_str()).map(str::to_string);
            let Some(value) = value else {
                return Err(Fail::new("MISSING_ARGUMENT", format!("{field} not specified"), &[]));
            };
            match upsert_one(acct, object, &field, &value, &fields, asked, now) {
                Ok((id, created)) => Ok(json!({"id": id, "success": true, "errors": [], "created": created})),
                Err(Ok(f)) => Err(f),
                Err(Err(many)) => Err(Fail::new(
                    "DUPLICATE_EXTERNAL_ID",
                    format!("{field}: more than one record found for external id field: {many:?}"),
                    &[field.as_str()],
                )),
            }
        });
        json(200, Value::Array(out))
    })
}

pub async fn collection_read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let ids: Vec<String> = q.get("ids").map(|s| s.split(',').map(|x| x.trim().to_string()).collect()).unwrap_or_default();
    if ids.len() > COLLECTION_MAX {
        return errors::error(
            400,
            "EXCEEDED_ID_LIMIT",
            &format!("record limit reached. cannot submit more than {COLLECTION_MAX} records into this call"),
            &[],
        );
    }
    let fields = fields_param(&q);
    if fields.is_none() {
        return errors::error(400, "MISSING_ARGUMENT", "fields parameter is required", &[]);
    }
    sim.with(&caller, |acct, _| {
        let out: Vec<Value> = ids
            .iter()
            .map(|id| {
                normalise_id(id)
                    .and_then(|id| acct.table(object).get(&id).filter(|r| r.live()).cloned())
                    .map(|r| render(&r, object, &version, fields.as_deref(), acct))
                    .unwrap_or(Value::Null)
            })
            .collect();
        json(200, Value::Array(out))
    })
}

pub async fn collection_delete(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_version(&version) {
        return r;
    }
    let ids: Vec<Value> = q.get("ids").map(|s| s.split(',').map(|x| json!(x.trim())).collect()).unwrap_or_default();
    if ids.len() > COLLECTION_MAX {
        return errors::error(
            400,
            "EXCEEDED_ID_LIMIT",
            &format!("record limit reached. cannot submit more than {COLLECTION_MAX} records into this call"),
            &[],
        );
    }
    let aon = q.get("allOrNone").is_some_and(|v| v == "true");
    sim.with(&caller, |acct, now| {
        let out = run_collection(acct, aon, &ids, |acct, id| {
            let raw = id.as_str().unwrap_or_default();
            let id = normalise_id(raw).ok_or_else(|| Fail::new("MALFORMED_ID", format!("malformed id {raw}"), &[]))?;
            let object = object_of_id(&id).ok_or_else(|| Fail::new("INVALID_ID_FIELD", "invalid record id", &[]))?;
            delete_one(acct, object, &id, now).map(|_| json!({"id": id, "success": true, "errors": []}))
        });
        json(200, Value::Array(out))
    })
}

pub async fn describe(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject)): Path<(String, String)>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    sim.with(&caller, |acct, _| {
        let fields: Vec<Value> = acct
            .fields(object)
            .into_iter()
            .flatten()
            .map(|(n, d)| {
                let ty = match d.kind {
                    FieldType::Phone => "phone",
                    FieldType::Number => "int",
                    FieldType::Bool => "boolean",
                    FieldType::Date => "date",
                    FieldType::DateTime => "datetime",
                    FieldType::Picklist => "picklist",
                    FieldType::Lookup => "reference",
                    FieldType::Json => "textarea",
                    FieldType::Text => if n == "Id" { "id" } else { "string" },
                };
                let values: Vec<Value> = d.options.iter().map(|o| json!({"value": o, "label": o, "active": true})).collect();
                json!({"name": n, "type": ty, "custom": d.custom, "externalId": d.external_id, "unique": d.unique,
                       "createable": !d.read_only, "updateable": !d.read_only && !d.create_only, "nillable": !d.required, "picklistValues": values})
            })
            .collect();
        // Object permissions as the user has them (the gate's revocable Task.* permissions).
        let may = |p: &str| !acct.revoked.contains(p);
        json(
            200,
            json!({"name": object, "custom": false, "createable": may("Task.create"), "updateable": may("Task.edit"), "deletable": may("Task.delete"), "fields": fields}),
        )
    })
}

fn parse_sf_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
        .map(|d| d.timestamp_millis())
}

pub async fn deleted(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, sobject)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let object = match (check_version(&version), check_object(&sobject)) {
        (Ok(_), Ok(o)) => o,
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let (Some(start), Some(end)) = (q.get("start").and_then(|s| parse_sf_time(s)), q.get("end").and_then(|s| parse_sf_time(s))) else {
        return errors::error(400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times", &[]);
    };
    sim.with(&caller, |acct, now| {
        // The recycle bin keeps deleted records for 15 days.
        let earliest = now - 15 * crate::clock::DAY_MS;
        let recs: Vec<Value> = acct
            .table(object)
            .iter()
            .filter_map(|r| {
                r.deleted_ms.filter(|&d| d >= start.max(earliest) && d <= end).map(|d| json!({"id": r.id, "deletedDate": sf_datetime(d)}))
            })
            .collect();
        json(
            200,
            json!({"deletedRecords": recs, "earliestDateAvailable": sf_datetime(earliest), "latestDateCovered": sf_datetime(end.min(now))}),
        )
    })
}
