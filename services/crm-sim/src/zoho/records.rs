//! Records of the Calls, Events, Contacts and Leads modules: insert, read, update, delete (one or many),
//! list, search, COQL, deleted records and field metadata.

use super::errors::{self, body as err_body};
use super::limits::extra_credits;
use super::{derive, duration_secs, new_id, zoho_datetime, BATCH_MAX};
use crate::gate::{json, Charge};
use crate::sql::{eval, lex, Parser, Tok};
use crate::state::{digits, Account, Caller, FieldType, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

fn check(version: &str, module: &str) -> Result<&'static str, Response> {
    let ok_version = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .is_some_and(|m| (2..=8).contains(&m));
    if !ok_version {
        return Err(errors::error(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one", json!({})));
    }
    ["Calls", "Events", "Contacts", "Leads", "Accounts", "Deals"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(module))
        .ok_or_else(|| errors::invalid_module(module))
}

fn parse(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|_| errors::error(400, "INVALID_DATA", "body is not a valid JSON", json!({})))
}

fn with_charge(mut r: Response, extra: u64) -> Response {
    r.extensions_mut().insert(Charge(extra));
    r
}

fn actor(acct: &Account) -> Value {
    json!({"name": "Sim Admin", "id": acct.owner_id})
}

fn success(acct: &Account, r: &Record, message: &str) -> Value {
    json!({"code": "SUCCESS", "details": {"Modified_Time": zoho_datetime(r.updated_ms), "Modified_By": actor(acct), "Created_Time": zoho_datetime(r.created_ms), "id": r.id, "Created_By": actor(acct)}, "message": message, "status": "success"})
}

fn field_err(code: &str, message: &str, api_name: &str, i: usize, extra: Value) -> Value {
    let mut details = json!({"api_name": api_name, "json_path": format!("$.data[{i}].{api_name}")});
    if let (Some(d), Value::Object(e)) = (details.as_object_mut(), extra) {
        d.extend(e);
    }
    err_body(code, message, details)
}

/// Validates one record of `data[]`. Unknown fields are ignored, as Zoho reportedly does.
fn validate(
    acct: &mut Account,
    module: &str,
    rec: &Value,
    i: usize,
    creating: bool,
    id: Option<&str>,
) -> Result<(Map<String, Value>, Option<String>), Value> {
    let Some(rec) = rec.as_object() else {
        return Err(err_body("INVALID_DATA", "invalid data", json!({"json_path": format!("$.data[{i}]")})));
    };
    let schema = acct.fields(module).cloned().unwrap_or_default();
    let mut out = Map::new();
    for (k, v) in rec {
        let Some(def) = schema.get(k) else { continue };
        if def.read_only {
            continue;
        }
        match (def.kind, v) {
            (_, Value::Null) => {}
            (FieldType::Json, Value::Array(_)) if k == "Participants" => {}
            (FieldType::Bool, v) if !v.is_boolean() => {
                return Err(field_err("INVALID_DATA", "invalid data", k, i, json!({"expected_data_type": "boolean"})));
            }
            (FieldType::Picklist, Value::String(s)) if !def.options.contains(s) => {
                return Err(field_err("INVALID_DATA", "invalid data", k, i, json!({"expected_data_type": "picklist"})));
            }
            (FieldType::DateTime, Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
                return Err(field_err("INVALID_DATA", "invalid data", k, i, json!({"expected_data_type": "datetime"})));
            }
            (FieldType::Lookup, v) if v.get("id").and_then(Value::as_str).is_none() && !v.is_string() => {
                return Err(field_err("INVALID_DATA", "invalid data", k, i, json!({"expected_data_type": "lookup"})));
            }
            (FieldType::Text | FieldType::Phone | FieldType::Json | FieldType::Picklist, v) if !v.is_string() => {
                return Err(field_err("INVALID_DATA", "invalid data", k, i, json!({"expected_data_type": "text"})));
            }
            _ => {}
        }
        out.insert(k.clone(), v.clone());
    }
    if creating {
        for (name, def) in &schema {
            if def.required && out.get(name).is_none_or(|v| v.is_null() || v.as_str() == Some("")) {
                return Err(field_err("MANDATORY_NOT_FOUND", "required field not found", name, i, json!({})));
            }
        }
    }
    let mut who = None;
    if module == "Events" {
        check_event(acct, &mut out, i, id)?;
        if out.contains_key("What_Id") && !out.contains_key("$se_module") {
            return Err(field_err("MANDATORY_NOT_FOUND", "required field not found", "$se_module", i, json!({})));
        }
    }
    if module == "Calls" {
        let merged = |k: &str| {
            out.get(k)
                .cloned()
                .or_else(|| id.and_then(|id| acct.objects.get("Calls").and_then(|t| t.get(id)).and_then(|r| r.fields.get(k).cloned())))
        };
        let call_type = merged("Call_Type").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let scheduled = merged("Outbound_Call_Status").and_then(|v| v.as_str().map(str::to_string)).is_some_and(|s| s == "Scheduled");
        if creating && !scheduled && merged("Call_Start_Time").is_none() {
            return Err(field_err("MANDATORY_NOT_FOUND", "required field not found", "Call_Start_Time", i, json!({})));
        }
        if (call_type == "Inbound" || call_type == "Outbound") && !scheduled {
            match merged("Call_Duration").as_ref().and_then(Value::as_str) {
                None if creating => {
                    return Err(field_err("MANDATORY_NOT_FOUND", "required field not found", "Call_Duration", i, json!({})))
                }
                None => {}
                Some(d) => match duration_secs(d) {
                    None => {
                        return Err(field_err(
                            "INVALID_DATA",
                            "invalid data",
                            "Call_Duration",
                            i,
                            json!({"expected_data_type": "text", "format": "mm:ss"}),
                        ))
                    }
                    Some(0) => {
                        return Err(field_err("DEPENDENT_MISMATCH", "Call Duration can not be zero.", "Call_Duration", i, json!({})))
                    }
                    Some(_) => {}
                },
            }
        }
        if out.contains_key("What_Id") && !out.contains_key("$se_module") {
            return Err(field_err("MANDATORY_NOT_FOUND", "required field not found", "$se_module", i, json!({})));
        }
    }
    if module == "Calls" || module == "Events" {
        if let Some(w) = out.get("Who_Id") {
            let wid = w.get("id").and_then(Value::as_str).or(w.as_str()).unwrap_or_default().to_string();
            match acct.objects.get("Contacts").and_then(|t| t.get(&wid)) {
                Some(c) if c.live() => {
                    out.insert("Who_Id".into(), json!({"id": wid, "name": c.fields.get("Full_Name").cloned().unwrap_or(Value::Null)}));
                    who = Some(wid);
                }
                _ => {
                    return Err(field_err("INVALID_DATA", "invalid data", "Who_Id", i, json!({"id": wid, "expected_data_type": "lookup"})))
                }
            }
        }
    }
    // A "what" (What_Id with $se_module) must be a live record of a module activities may
    // relate to; Accounts and Deals are modelled.
    if module == "Calls" || module == "Events" {
        if let Some(w) = out.get("What_Id") {
            let wid = w.get("id").and_then(Value::as_str).or(w.as_str()).unwrap_or_default().to_string();
            let se = out.get("$se_module").and_then(Value::as_str).unwrap_or_default().to_string();
            if se != "Accounts" && se != "Deals" {
                return Err(field_err("INVALID_DATA", "invalid data", "$se_module", i, json!({"expected_data_type": "module"})));
            }
            if !acct.objects.get(&se).and_then(|t| t.get(&wid)).is_some_and(Record::live) {
                return Err(field_err("INVALID_DATA", "invalid data", "What_Id", i, json!({"id": wid, "expected_data_type": "lookup"})));
            }
        }
    }
    // An Owner must be an active user of the org (INVALID_DATA otherwise: unverified, the
    // harsher case, CRM-APIS-ACTIVITIES §3.3).
    if let Some(o) = out.get("Owner") {
        let oid = o.get("id").and_then(Value::as_str).or(o.as_str()).unwrap_or_default().to_string();
        if crate::users::check_owner(acct, &oid).is_err() {
            return Err(field_err("INVALID_DATA", "invalid data", "Owner", i, json!({"id": oid, "expected_data_type": "lookup"})));
        }
    }
    for (k, v) in &out {
        if schema.get(k).is_some_and(|d| d.unique) {
            // Whether Zoho's "Do not allow duplicate values" tells addresses apart by case is
            // [U]: the harsher case is modelled, it does not (Jane@X and jane@x collide).
            if let Some(existing) = acct.unique_holder_as(module, k, v, id, k == "Email") {
                return Err(field_err(
                    "DUPLICATE_DATA",
                    "duplicate data",
                    k,
                    i,
                    json!({"duplicate_record": {"id": existing, "module": {"api_name": module}, "Owner": actor(acct)}}),
                ));
            }
        }
    }
    Ok((out, who))
}

/// Who may be a participant, and how each is named.
pub const PARTICIPANT_TYPES: &[&str] = &["contact", "lead", "user", "email"];

/// An Event's times (the end not before the start, as they will be after an update) and
/// Participants: each `{type, participant}`, a contact or lead that exists, a user, or an
/// email address; answered on reads with `name`, `Email`, `invited` and `status`.
fn check_event(acct: &mut Account, out: &mut Map<String, Value>, i: usize, id: Option<&str>) -> Result<(), Value> {
    let existing = id.and_then(|id| acct.objects.get("Events").and_then(|t| t.get(id)).map(|r| r.fields.clone())).unwrap_or_default();
    let time = |k: &str| {
        out.get(k)
            .or(existing.get(k))
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.timestamp_millis())
    };
    if let (Some(s), Some(e)) = (time("Start_DateTime"), time("End_DateTime")) {
        if e < s {
            return Err(field_err("INVALID_DATA", "End_DateTime should be greater than Start_DateTime", "End_DateTime", i, json!({})));
        }
    }
    let Some(list) = out.get("Participants").cloned() else { return Ok(()) };
    let Some(list) = list.as_array() else {
        return Err(field_err("INVALID_DATA", "invalid data", "Participants", i, json!({"expected_data_type": "jsonarray"})));
    };
    let mut rendered = vec![];
    for p in list {
        let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
        let who = p.get("participant").and_then(Value::as_str).unwrap_or_default();
        if !PARTICIPANT_TYPES.contains(&ty) || who.is_empty() {
            return Err(field_err("INVALID_DATA", "invalid data", "Participants", i, json!({"expected_data_type": "jsonobject"})));
        }
        let (name, email) = match ty {
            "contact" | "lead" => {
                let module = if ty == "contact" { "Contacts" } else { "Leads" };
                match acct.objects.get(module).and_then(|t| t.get(who)).filter(|r| r.live()) {
                    Some(r) => {
                        (r.fields.get("Full_Name").cloned().unwrap_or(Value::Null), r.fields.get("Email").cloned().unwrap_or(Value::Null))
                    }
                    None => {
                        return Err(field_err(
                            "INVALID_DATA",
                            "invalid data",
                            "Participants",
                            i,
                            json!({"id": who, "expected_data_type": "lookup"}),
                        ))
                    }
                }
            }
            "email" if !who.contains('@') => {
                return Err(field_err("INVALID_DATA", "invalid data", "Participants", i, json!({"expected_data_type": "email"})));
            }
            "email" => (json!(who), json!(who)),
            _ => (Value::Null, Value::Null),
        };
        rendered.push(json!({"type": ty, "participant": who, "name": name, "Email": email, "invited": false, "status": "not_known"}));
    }
    out.insert("Participants".into(), Value::Array(rendered));
    Ok(())
}

/// The contacts an event is linked to: its Who_Id and its contact participants.
fn event_links(fields: &Map<String, Value>) -> std::collections::BTreeSet<String> {
    let who = fields.get("Who_Id").and_then(|w| w.get("id").and_then(Value::as_str).or(w.as_str())).map(str::to_string);
    let people = fields
        .get("Participants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "contact")
        .filter_map(|p| p["participant"].as_str().map(str::to_string));
    who.into_iter().chain(people).collect()
}

/// `POST /Events/{id}/actions/cancel`: only a meeting whose invitees exist and that has not
/// ended can be cancelled (`$event_cancelled`); anything else is INVALID_DATA.
pub async fn cancel_event(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check(&version, "Events") {
        return r;
    }
    sim.with(&caller, |acct, now| {
        let lag = acct.search_lag_ms;
        let Some(r) = acct.objects.get_mut("Events").and_then(|t| t.get_mut(&id)).filter(|r| r.live()) else {
            return errors::error(400, "INVALID_DATA", "the related id given seems to be invalid", json!({"id": id}));
        };
        let invitees = r.fields.get("Participants").and_then(Value::as_array).is_some_and(|p| !p.is_empty());
        let ended = r
            .fields
            .get("End_DateTime")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|e| e.timestamp_millis() <= now);
        if !invitees || ended {
            let why = if !invitees { "the meeting has no participants to cancel it for" } else { "the meeting has already ended" };
            return json(400, json!({"data": [errors::body("INVALID_DATA", why, json!({"id": id}))]}));
        }
        r.fields.insert("$event_cancelled".into(), json!(true));
        r.updated_ms = now;
        r.indexed_at_ms = now + lag;
        json(200, json!({"data": [{"code": "SUCCESS", "details": {"id": id}, "message": "meeting cancelled", "status": "success"}]}))
    })
}

/// What `associate_email` requires of each email (the OAS's required list and the docs'
/// mandatory subject and content).
const EMAIL_REQUIRED: &[&str] = &["from", "to", "original_message_id", "sent", "date_time", "subject", "content"];

/// `POST /{module}/{id}/actions/associate_email` (CRM-APIS-ACTIVITIES §1.3): emails cannot be
/// inserted as records; each is attached to the record's Emails related list. Whether Zoho
/// refuses a second association of one Message-ID is not known ([U]): crm-sim accepts it,
/// the harsher case, so a writer must look first (`email_available`).
pub async fn associate_email(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let module = match check(&version, &module) {
        Ok("Contacts") => "Contacts",
        Ok(other) => return errors::invalid_module(other),
        Err(r) => return r,
    };
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(emails) = body.get("Emails").and_then(Value::as_array).cloned() else {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "required param missing", json!({"param": "Emails"}));
    };
    sim.with(&caller, |acct, now| {
        if acct.objects.get(module).and_then(|t| t.get(&id)).is_none_or(|r| !r.live()) {
            return errors::error(400, "INVALID_DATA", "the related id given seems to be invalid", json!({"id": id}));
        }
        let mut results = vec![];
        for e in &emails {
            let missing = EMAIL_REQUIRED.iter().find(|k| e.get(**k).is_none_or(Value::is_null));
            let bad_subject = e.get("subject").and_then(Value::as_str).is_some_and(|s| s.is_empty() || s.chars().count() > 250);
            let bad_from = e.pointer("/from/email").and_then(Value::as_str).is_none_or(|a| !a.contains('@'));
            let bad_to = e.get("to").and_then(Value::as_array).is_none_or(|to| to.is_empty() || to.iter().any(|t| t.get("email").and_then(Value::as_str).is_none_or(|a| !a.contains('@'))));
            let bad_time = e.get("date_time").and_then(Value::as_str).is_none_or(|t| chrono::DateTime::parse_from_rfc3339(t).is_err());
            let problem = match (missing, bad_subject, bad_from, bad_to, bad_time, e.get("sent").is_some_and(Value::is_boolean)) {
                (Some(k), ..) => Some(("REQUIRED_PARAM_MISSING", json!({"param": k}))),
                (_, true, ..) => Some(("INVALID_DATA", json!({"api_name": "subject", "maximum_length": 250}))),
                (_, _, true, ..) => Some(("INVALID_DATA", json!({"api_name": "from", "expected_data_type": "jsonobject"}))),
                (_, _, _, true, ..) => Some(("INVALID_DATA", json!({"api_name": "to", "expected_data_type": "jsonarray"}))),
                (_, _, _, _, true, _) => Some(("INVALID_DATA", json!({"api_name": "date_time", "expected_data_type": "datetime"}))),
                (_, _, _, _, _, false) => Some(("INVALID_DATA", json!({"api_name": "sent", "expected_data_type": "boolean"}))),
                _ => None,
            };
            if let Some((code, details)) = problem {
                results.push(errors::body(code, "invalid data", details));
                continue;
            }
            let message_id = format!("{:x}", 0xe0_0000_0000u64 + acct.next_seq());
            let mut fields = e.as_object().cloned().unwrap_or_default();
            fields.insert("message_id".into(), json!(message_id));
            fields.insert("linked_record".into(), json!({"module": {"api_name": module}, "id": id}));
            let lag = acct.search_lag_ms;
            let r = Record {
                id: message_id.clone(),
                fields,
                created_ms: now,
                updated_ms: now,
                deleted_ms: None,
                indexed_at_ms: now + lag,
                associations: [id.clone()].into(),
                merged_into: None,
            };
            acct.table("Emails").insert(r);
            results.push(json!({"code": "SUCCESS", "details": {"message_id": message_id}, "message": "Email associated successfully", "status": "success"}));
        }
        let all_ok = results.iter().all(|r| r["status"] == "success");
        json(if all_ok { 201 } else { 400 }, json!({"Emails": results}))
    })
}

/// `GET /{module}/{id}/Emails`: the record's emails; 204 when it has none.
pub async fn related_emails(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module, id)): Path<(String, String, String)>,
) -> Response {
    if let Err(r) = check(&version, &module) {
        return r;
    }
    sim.with(&caller, |acct, _| {
        let emails: Vec<Value> =
            acct.table("Emails").live().filter(|r| r.associations.contains(&id)).map(|r| Value::Object(r.fields.clone())).collect();
        if emails.is_empty() {
            StatusCode::NO_CONTENT.into_response()
        } else {
            // The v8 OAS wraps them in `Emails` (v2's docs said `email_related_list`).
            json(200, json!({"Emails": emails, "info": {"count": emails.len(), "more_records": false}}))
        }
    })
}

/// `GET /actions/email_available?orginal_message_id=` (the OAS's spelling; the correct one
/// is accepted too): whether an email with this Message-ID is already associated, and the
/// record it hangs on (`{module, id}`, as the OAS has it). Whether it sees an association at
/// once is not known: it lags like search here, the harsher case.
pub async fn email_available(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check(&version, "Contacts") {
        return r;
    }
    let Some(mid) = q.get("orginal_message_id").or(q.get("original_message_id")).cloned() else {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "required param missing", json!({"param": "orginal_message_id"}));
    };
    sim.with(&caller, |acct, now| {
        let found = acct
            .table("Emails")
            .live()
            .filter(|r| r.indexed_at_ms <= now)
            .find(|r| r.str_field("original_message_id") == Some(mid.as_str()))
            .map(|r| r.fields.clone());
        match found {
            Some(f) => {
                let on = f.get("linked_record").cloned().unwrap_or(Value::Null);
                let record = json!({"module": {"api_name": on["module"]["api_name"], "id": on["id"]}, "id": on["id"]});
                json(200, json!({"available": true, "record": record}))
            }
            None => json(200, json!({"available": false, "record": Value::Null})),
        }
    })
}

/// Insert/update answers: 201/200 when all succeed, 207 on partial success, 400 when none do.
fn multi_status(results: Vec<Result<Value, Value>>, ok: u16) -> (u16, Value) {
    let failed = results.iter().filter(|r| r.is_err()).count();
    let status = match failed {
        0 => ok,
        n if n == results.len() => 400,
        _ => 207,
    };
    (status, json!({"data": results.into_iter().map(|r| r.unwrap_or_else(|e| e)).collect::<Vec<_>>()}))
}

/// The module and `data[]` of an insert or update, or the error Zoho answers.
fn records_request(version: &str, module: &str, body: &Bytes) -> Result<(&'static str, Vec<Value>), Response> {
    let module = check(version, module)?;
    Ok((module, data_array(&parse(body)?)?))
}

fn data_array(body: &Value) -> Result<Vec<Value>, Response> {
    let Some(data) = body.get("data").and_then(Value::as_array) else {
        return Err(errors::error(
            400,
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": "data", "json_path": "$.data"}),
        ));
    };
    if data.is_empty() {
        return Err(errors::error(
            400,
            "MANDATORY_NOT_FOUND",
            "required field not found",
            json!({"api_name": "data", "json_path": "$.data"}),
        ));
    }
    if data.len() > BATCH_MAX {
        return Err(errors::error(400, "LIMIT_EXCEEDED", "the number of records exceeded the limit", json!({"limit": BATCH_MAX})));
    }
    Ok(data.clone())
}

pub async fn insert(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (module, data) = match records_request(&version, &module, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let lar_id = parse(&body).ok().and_then(|b| b.get("lar_id").cloned());
    sim.with(&caller, |acct, now| {
        let assign_to = match lead_rule(acct, module, lar_id.as_ref()) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let mut results = vec![];
        for (i, rec) in data.iter().enumerate() {
            results.push(validate(acct, module, rec, i, true, None).map(|(mut fields, who)| {
                if let Some(user) = &assign_to {
                    fields.insert("Owner".into(), json!({"id": user, "name": "Assigned User"}));
                }
                fields.entry("Owner").or_insert(json!({"id": acct.owner_id, "name": "Sim Admin"}));
                let id = new_id(acct);
                let lag = acct.search_lag_ms;
                let mut r = Record {
                    id,
                    fields,
                    created_ms: now,
                    updated_ms: now,
                    deleted_ms: None,
                    indexed_at_ms: now + lag,
                    associations: who.into_iter().collect(),
                    merged_into: None,
                };
                if module == "Events" {
                    r.associations = event_links(&r.fields);
                }
                derive(module, &mut r);
                acct.table(module).insert(r.clone());
                success(acct, &r, "record added")
            }));
        }
        let extra = extra_credits(acct, data.len());
        let (status, body) = multi_status(results, 201);
        with_charge(json(status, body), extra)
    })
}

/// The owner a lead assignment rule (`lar_id`, a top-level key of an insert; CRM-APIS-
/// ACTIVITIES §5.3) gives every inserted lead: the rule's user while they are active (a rule
/// whose user is gone leaves the default owner, the caller). A rule the org does not have is
/// INVALID_DATA (unverified: the harsher case); on other modules than Leads the key is
/// ignored. Without `lar_id` no rule runs (the documented default through the API).
fn lead_rule(acct: &Account, module: &str, lar_id: Option<&Value>) -> Result<Option<String>, Response> {
    let Some(lar) = lar_id.filter(|_| module == "Leads") else { return Ok(None) };
    let id = lar.as_str().map(str::to_string).or_else(|| lar.as_u64().map(|n| n.to_string())).unwrap_or_default();
    let Some(to) = acct.zoho_lead_rules.get(&id) else {
        return Err(errors::error(
            400,
            "INVALID_DATA",
            "the given lar_id is invalid",
            json!({"api_name": "lar_id", "json_path": "$.lar_id"}),
        ));
    };
    let users = crate::users::all(acct);
    let user = users.iter().find(|u| u.id == *to || crate::users::email(acct.crm, u).is_some_and(|e| e.eq_ignore_ascii_case(to)));
    Ok(user.filter(|u| crate::users::is_active(acct.crm, u)).map(|u| u.id.clone()))
}

fn render(r: &Record, fields: Option<&[String]>) -> Value {
    match fields {
        None => Value::Object(r.fields.clone()),
        Some(names) => {
            let mut m = Map::new();
            m.insert("id".into(), json!(r.id));
            for n in names {
                m.insert(n.clone(), r.fields.get(n).cloned().unwrap_or(Value::Null));
            }
            Value::Object(m)
        }
    }
}

fn fields_param(q: &HashMap<String, String>) -> Option<Vec<String>> {
    q.get("fields").map(|f| f.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

/// A deleted or unknown id answers 204 with no body (older documented behaviour; CRM-APIS §3.4).
pub async fn read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, _| match acct.table(module).get(&id).filter(|r| r.live()) {
        Some(r) => json(200, json!({"data": [render(r, fields_param(&q).as_deref())]})),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

fn unmodified_since(headers: &HeaderMap) -> Option<i64> {
    let v = headers.get("if-unmodified-since")?.to_str().ok()?;
    chrono::DateTime::parse_from_rfc3339(v).or_else(|_| chrono::DateTime::parse_from_rfc2822(v)).ok().map(|d| d.timestamp_millis())
}

fn update_record(acct: &mut Account, module: &str, id: &str, rec: &Value, i: usize, since: Option<i64>, now: i64) -> Result<Value, Value> {
    match acct.table(module).get(id) {
        Some(r) if r.live() => {
            if since.is_some_and(|s| r.updated_ms / 1000 > s / 1000) {
                return Err(err_body(
                    "ALREADY_MODIFIED",
                    "the record has been modified since the given time",
                    json!({"id": id, "Modified_Time": zoho_datetime(r.updated_ms)}),
                ));
            }
        }
        _ => return Err(err_body("INVALID_DATA", "the id given seems to be invalid", json!({"id": id}))),
    }
    let (fields, who) = validate(acct, module, rec, i, false, Some(id))?;
    let lag = acct.search_lag_ms;
    let r = acct.table(module).get_mut(id).unwrap();
    if fields.contains_key("Who_Id") {
        r.associations = who.into_iter().collect();
    }
    r.fields.extend(fields);
    if module == "Events" {
        r.associations = event_links(&r.fields);
    }
    r.updated_ms = now;
    r.indexed_at_ms = now + lag;
    derive(module, r);
    let r = r.clone();
    acct.table(module).reindex(id);
    Ok(success(acct, &r, "record updated"))
}

pub async fn update_one(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (module, data) = match records_request(&version, &module, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let since = unmodified_since(&headers);
    sim.with(&caller, |acct, now| match update_record(acct, module, &id, &data[0], 0, since, now) {
        Ok(v) => json(200, json!({"data": [v]})),
        Err(e) if e["code"] == "ALREADY_MODIFIED" => json(412, json!({"data": [e]})),
        Err(e) => json(400, json!({"data": [e]})),
    })
}

pub async fn update_many(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (module, data) = match records_request(&version, &module, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let since = unmodified_since(&headers);
    sim.with(&caller, |acct, now| {
        let mut results = vec![];
        for (i, rec) in data.iter().enumerate() {
            let Some(id) = rec.get("id").and_then(Value::as_str) else {
                results.push(Err(field_err("MANDATORY_NOT_FOUND", "required field not found", "id", i, json!({}))));
                continue;
            };
            results.push(update_record(acct, module, id, rec, i, since, now));
        }
        let extra = extra_credits(acct, data.len());
        let (status, body) = multi_status(results, 200);
        with_charge(json(status, body), extra)
    })
}

fn delete_record(acct: &mut Account, module: &str, id: &str, now: i64) -> Result<Value, Value> {
    match acct.table(module).get_mut(id).filter(|r| r.live()) {
        Some(r) => {
            r.deleted_ms = Some(now);
            Ok(json!({"code": "SUCCESS", "details": {"id": id}, "message": "record deleted", "status": "success"}))
        }
        None => Err(err_body("INVALID_DATA", "the id given seems to be invalid", json!({"id": id}))),
    }
}

pub async fn delete_one(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module, id)): Path<(String, String, String)>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| match delete_record(acct, module, &id, now) {
        Ok(v) => json(200, json!({"data": [v]})),
        Err(e) => json(400, json!({"data": [e]})),
    })
}

pub async fn delete_many(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let ids: Vec<String> =
        q.get("ids").map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()).unwrap_or_default();
    if ids.is_empty() {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", json!({"param": "ids"}));
    }
    if ids.len() > BATCH_MAX {
        return errors::error(400, "LIMIT_EXCEEDED", "the number of records exceeded the limit", json!({"limit": BATCH_MAX}));
    }
    sim.with(&caller, |acct, now| {
        let results: Vec<Result<Value, Value>> = ids.iter().map(|id| delete_record(acct, module, id, now)).collect();
        let (status, body) = multi_status(results, 200);
        json(status, body)
    })
}

fn page_params(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let per_page = q.get("per_page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(200).clamp(1, 200);
    let page = q.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1);
    Ok((page, per_page))
}

fn page_of(hits: Vec<Value>, page: usize, per_page: usize) -> Response {
    if hits.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let total = hits.len();
    let data: Vec<Value> = hits.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    let count = data.len();
    json(
        200,
        json!({"data": data, "info": {"per_page": per_page, "count": count, "page": page, "sort_by": "id", "sort_order": "desc", "more_records": page * per_page < total}}),
    )
}

pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(fields) = fields_param(&q) else {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", json!({"param": "fields"}));
    };
    let (page, per_page) = match page_params(&q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, _| {
        let hits: Vec<Value> = acct.table(module).live().map(|r| render(r, Some(&fields))).collect();
        page_of(hits, page, per_page)
    })
}

/// One `(field:operator:value)` of a search criteria; `equals` behaves like contains.
fn criterion_matches(r: &Record, c: &str) -> Result<bool, String> {
    let inner = c.trim().trim_start_matches('(').trim_end_matches(')');
    let mut parts = inner.splitn(3, ':');
    let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("invalid criteria {c}"));
    };
    let value = value.replace("\\,", ",").replace("\\(", "(").replace("\\)", ")").to_lowercase();
    let actual = match r.fields.get(field) {
        Some(Value::String(s)) => s.to_lowercase(),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).unwrap_or_default().to_lowercase(),
        Some(v) if !v.is_null() => v.to_string().to_lowercase(),
        _ => return Ok(false),
    };
    Ok(match op {
        "equals" => actual.contains(&value),
        "starts_with" => actual.starts_with(&value),
        "in" => value.split(',').any(|v| actual == v.trim()),
        other => return Err(format!("unsupported operator {other}")),
    })
}

/// Splits `((a)and(b))` into its criteria and connective.
fn split_criteria(c: &str) -> (Vec<String>, bool) {
    let s = c.trim();
    let s = if s.starts_with("((") && s.ends_with("))") { &s[1..s.len() - 1] } else { s };
    let and = s.contains(")and(");
    let parts = s.split(if and { ")and(" } else { ")or(" }).map(|p| format!("({})", p.trim_matches(|ch| ch == '(' || ch == ')'))).collect();
    (parts, and)
}

pub async fn search(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let (page, per_page) = match page_params(&q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if page * per_page > 2_000 {
        return errors::error(400, "LIMIT_REACHED", "search results exceed the limit", json!({"limit": 2000}));
    }
    // Only one parameter is used: criteria > email > phone > word.
    enum Mode {
        Criteria(Vec<String>, bool),
        Email(String),
        Phone(String),
        Word(String),
    }
    let mode = if let Some(c) = q.get("criteria") {
        let (parts, and) = split_criteria(c);
        Mode::Criteria(parts, and)
    } else if let Some(e) = q.get("email") {
        Mode::Email(e.to_lowercase())
    } else if let Some(p) = q.get("phone") {
        if p.chars().count() < 2 || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return errors::error(
                400,
                "INVALID_DATA",
                "invalid data",
                json!({"param": "phone", "reason": "at least 2 characters and no special characters"}),
            );
        }
        Mode::Phone(p.clone())
    } else if let Some(w) = q.get("word") {
        if w.chars().count() < 2 {
            return errors::error(400, "INVALID_DATA", "invalid data", json!({"param": "word"}));
        }
        Mode::Word(w.to_lowercase())
    } else {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", json!({"param": "criteria"}));
    };
    let fields = fields_param(&q);
    sim.with(&caller, |acct, now| {
        let schema = acct.fields(module).cloned().unwrap_or_default();
        let mut hits = vec![];
        for r in acct.table(module).live().filter(|r| r.indexed_at_ms <= now) {
            let hit = match &mode {
                Mode::Criteria(parts, and) => {
                    let mut res = vec![];
                    for p in parts {
                        match criterion_matches(r, p) {
                            Ok(b) => res.push(b),
                            Err(e) => return errors::error(400, "INVALID_QUERY", &e, json!({})),
                        }
                    }
                    if *and {
                        res.iter().all(|b| *b)
                    } else {
                        res.iter().any(|b| *b)
                    }
                }
                Mode::Email(e) => r.str_field("Email").is_some_and(|v| v.to_lowercase() == *e),
                Mode::Phone(p) => {
                    schema.iter().any(|(n, d)| d.kind == FieldType::Phone && r.str_field(n).is_some_and(|v| digits(v).contains(p.as_str())))
                }
                Mode::Word(w) => r.fields.values().filter_map(Value::as_str).any(|v| v.to_lowercase().contains(w.as_str())),
            };
            if hit {
                hits.push(render(r, fields.as_deref()));
            }
        }
        page_of(hits, page, per_page)
    })
}

pub async fn deleted(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((version, module)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let ty = q.get("type").map(String::as_str).unwrap_or("all");
    if !["all", "recycle", "permanent"].contains(&ty) {
        return errors::error(400, "INVALID_DATA", "invalid data", json!({"param": "type"}));
    }
    let (page, per_page) = match page_params(&q) {
        Ok(p) => p,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        // Recycled records are listed for 60 days; purged ones are not kept by this simulator.
        let hits: Vec<Value> = if ty == "permanent" {
            vec![]
        } else {
            let who = actor(acct);
            acct.table(module)
                .iter()
                .filter(|r| r.deleted_ms.is_some_and(|d| now - d <= 60 * crate::clock::DAY_MS))
                .map(|r| {
                    let name = r.str_field("Subject").or(r.str_field("Full_Name")).unwrap_or_default();
                    json!({"deleted_by": who, "id": r.id, "display_name": name, "type": "recycle", "created_by": who, "deleted_time": zoho_datetime(r.deleted_ms.unwrap())})
                })
                .collect()
        };
        page_of(hits, page, per_page)
    })
}

pub async fn coql(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = check(&version, "Calls") {
        return r;
    }
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(q) = body.get("select_query").and_then(Value::as_str) else {
        return errors::error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", json!({"param": "select_query"}));
    };
    let syntax = |msg: String| errors::error(400, "SYNTAX_ERROR", "error occured while parsing the query", json!({"reason": msg}));
    let toks = match lex(q) {
        Ok(t) => t,
        Err(e) => return syntax(e),
    };
    let mut p = Parser { t: toks, i: 0 };
    let parsed = (|| -> Result<_, String> {
        if !p.kw("select") {
            return Err("expected select".into());
        }
        let mut fields = vec![p.word()?];
        while p.peek() == Some(&Tok::Comma) {
            p.i += 1;
            fields.push(p.word()?);
        }
        if !p.kw("from") {
            return Err("expected from".into());
        }
        let module = p.word()?;
        if !p.kw("where") {
            return Err("where clause is mandatory".into());
        }
        let cond = p.expr()?;
        let (mut offset, mut limit) = (0usize, 200usize);
        if p.kw("limit") {
            let a = match p.bump() {
                Some(Tok::Num(n)) => n as usize,
                other => return Err(format!("bad limit {other:?}")),
            };
            if p.peek() == Some(&Tok::Comma) {
                p.i += 1;
                offset = a;
                limit = match p.bump() {
                    Some(Tok::Num(n)) => n as usize,
                    other => return Err(format!("bad limit {other:?}")),
                };
            } else {
                limit = a;
                if p.kw("offset") {
                    offset = match p.bump() {
                        Some(Tok::Num(n)) => n as usize,
                        other => return Err(format!("bad offset {other:?}")),
                    };
                }
            }
        }
        if let Some(t) = p.peek() {
            return Err(format!("unexpected token {t:?}"));
        }
        Ok((fields, module, cond, offset, limit))
    })();
    let (fields, module, cond, offset, limit) = match parsed {
        Ok(x) => x,
        Err(e) => return syntax(e),
    };
    if limit > 2000 {
        return errors::error(400, "LIMIT_EXCEEDED", "limit exceeded", json!({"limit": 2000}));
    }
    let module = match check(&version, &module) {
        Ok(m) => m,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, _| {
        let schema = acct.fields(module).cloned().unwrap_or_default();
        let resolve = |f: &str| schema.keys().find(|k| k.eq_ignore_ascii_case(f)).cloned().ok_or_else(|| format!("invalid column {f}"));
        for f in &fields {
            if let Err(e) = resolve(f) {
                return errors::error(400, "INVALID_QUERY", "invalid query formed", json!({"reason": e, "column_name": f}));
            }
        }
        let mut hits = vec![];
        for r in acct.table(module).live() {
            match eval(&cond, r, &resolve) {
                Ok(true) => hits.push(r),
                Ok(false) => {}
                Err(e) => return errors::error(400, "INVALID_QUERY", "invalid query formed", json!({"reason": e})),
            }
        }
        let total = hits.len();
        let names: Vec<String> = fields.iter().filter_map(|f| resolve(f).ok()).collect();
        let data: Vec<Value> = hits.into_iter().skip(offset).take(limit).map(|r| render(r, Some(&names))).collect();
        // COQL costs 1 credit up to 200 rows, 2 up to 1000, 3 up to 2000.
        let extra = match limit {
            0..=200 => 0,
            201..=1000 => 1,
            _ => 2,
        };
        if data.is_empty() {
            return with_charge(StatusCode::NO_CONTENT.into_response(), extra);
        }
        let count = data.len();
        with_charge(json(200, json!({"data": data, "info": {"count": count, "more_records": offset + count < total}})), extra)
    })
}

/// The settings APIs' `module` query parameter, checked (with the API version).
fn module_param(version: &str, q: &HashMap<String, String>) -> Result<&'static str, Response> {
    let Some(module) = q.get("module") else {
        return Err(errors::error(400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing", json!({"param": "module"})));
    };
    check(version, module)
}

/// `POST /crm/{v}/settings/fields?module=M`: custom fields, at most five per call, each
/// answered on its own (CRM-APIS-ACTIVITIES §6.3). The API name is the label with spaces as
/// underscores; a name taken is DUPLICATE_DATA. `unique` ("Do not allow duplicate values")
/// on Calls and Events is refused with INVALID_DATA unless the account accepts it
/// (`activity_unique_fields`: unverified, so refused by default).
pub async fn create_fields(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let module = match module_param(&version, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return errors::error(400, "INVALID_DATA", "body is not JSON", json!({}));
    };
    let asked: Vec<Value> = body.get("fields").and_then(Value::as_array).cloned().unwrap_or_default();
    if asked.is_empty() || asked.len() > 5 {
        return errors::error(400, "INVALID_DATA", "between one and five fields per call", json!({"api_name": "fields"}));
    }
    sim.with(&caller, |acct, _| {
        let mut answers = vec![];
        for f in &asked {
            let label = f.get("field_label").and_then(Value::as_str).unwrap_or("").trim();
            let data_type = f.get("data_type").and_then(Value::as_str).unwrap_or("");
            let error = |code: &str, message: &str, api_name: &str| {
                json!({"code": code, "details": {"api_name": api_name}, "message": message, "status": "error"})
            };
            if label.is_empty() || data_type != "text" {
                answers.push(error("INVALID_DATA", "field_label and data_type text are required here", "field_label"));
                continue;
            }
            let unique = f.get("unique").is_some_and(|u| !u.is_null());
            if unique && matches!(module, "Calls" | "Events") && !acct.activity_unique_fields {
                answers.push(error("INVALID_DATA", "unique is not supported for this module", "unique"));
                continue;
            }
            let api_name = label.replace(' ', "_");
            if acct.fields(module).is_some_and(|fs| fs.contains_key(&api_name)) {
                answers.push(error("DUPLICATE_DATA", "the field label already exists", "field_label"));
                continue;
            }
            let def = crate::state::FieldDef { kind: FieldType::Text, unique, custom: true, ..Default::default() };
            acct.schema.entry(module.to_string()).or_default().insert(api_name.clone(), def);
            acct.ensure_indexes();
            answers.push(json!({"code": "SUCCESS", "details": {"id": format!("{}", 5_725_767_000_000_000u64 + acct.seq), "api_name": api_name}, "message": "field created", "status": "success"}));
            acct.seq += 1;
        }
        let all_failed = answers.iter().all(|a| a["status"] == "error");
        json(if all_failed { 400 } else { 201 }, json!({"fields": answers}))
    })
}

pub async fn fields(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match module_param(&version, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, _| {
        let fields: Vec<Value> = acct
            .fields(module)
            .into_iter()
            .flatten()
            .map(|(n, d)| {
                let ty = match d.kind {
                    FieldType::Phone => "phone",
                    FieldType::Number => "integer",
                    FieldType::Bool => "boolean",
                    FieldType::Date => "date",
                    FieldType::DateTime => "datetime",
                    FieldType::Picklist => "picklist",
                    FieldType::Lookup => "lookup",
                    FieldType::Json => "textarea",
                    FieldType::Text => "text",
                };
                let values: Vec<Value> = d.options.iter().map(|o| json!({"display_value": o, "actual_value": o})).collect();
                json!({"api_name": n, "field_label": n.replace('_', " "), "data_type": ty, "custom_field": d.custom, "read_only": d.read_only,
                       "system_mandatory": d.required, "unique": if d.unique { json!({"casesensitive": "false"}) } else { Value::Null }, "pick_list_values": values})
            })
            .collect();
        json(200, json!({"fields": fields}))
    })
}

/// `GET /crm/{v}/settings/automation/assignment_rules?module=Leads`: the org's lead
/// assignment rules (`zoho_lead_rules`), each `{id, name, module}`; 204 when it has none.
pub async fn assignment_rules(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let module = match module_param(&version, &q) {
        Ok(m) => m,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, _| {
        let rules: Vec<Value> = if module == "Leads" {
            acct.zoho_lead_rules
                .keys()
                .enumerate()
                .map(|(i, id)| json!({"id": id, "name": format!("Lead rule {}", i + 1), "module": {"api_name": "Leads"}}))
                .collect()
        } else {
            vec![]
        };
        if rules.is_empty() {
            StatusCode::NO_CONTENT.into_response()
        } else {
            json(200, json!({"assignment_rules": rules}))
        }
    })
}
