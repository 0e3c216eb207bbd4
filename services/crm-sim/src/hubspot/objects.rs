//! Contacts and the activity objects (calls, emails, meetings): single and batch create,
//! read, update, archive, upsert by a unique property, associations and the properties API.

use super::errors::{self, batch_error, property_error};
use super::{CALL_TO_CONTACT, CONTACT_TO_CALL, EMAIL_TO_CONTACT, MEETING_TO_CONTACT};
use crate::clock::iso_ms;
use crate::gate::json;
use crate::state::{Account, Caller, FieldType, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};

pub const BATCH_MAX: usize = 100;

/// The object types this simulator holds, and the name HubSpot uses for them in messages.
fn object_type(object: &str) -> Option<(&'static str, &'static str)> {
    match object {
        "calls" | "call" | "0-48" => Some(("calls", "CALL")),
        "emails" | "email" | "0-49" => Some(("emails", "EMAIL")),
        "meetings" | "meeting" | "0-47" => Some(("meetings", "MEETING")),
        "contacts" | "contact" | "0-1" => Some(("contacts", "CONTACT")),
        "companies" | "company" | "0-2" => Some(("companies", "COMPANY")),
        "deals" | "deal" | "0-3" => Some(("deals", "DEAL")),
        _ => None,
    }
}

/// The association type from an activity object to a contact, and its label on read.
fn to_contact(table: &str) -> Option<(i64, &'static str)> {
    match table {
        "calls" => Some((CALL_TO_CONTACT, "call_to_contact")),
        "emails" => Some((EMAIL_TO_CONTACT, "email_to_contact")),
        "meetings" => Some((MEETING_TO_CONTACT, "meeting_to_contact")),
        _ => None,
    }
}

/// What HubSpot's messages call a record of `table` ("Call already exists").
fn noun(table: &str) -> &'static str {
    match table {
        "contacts" => "Contact",
        "emails" => "Email",
        "meetings" => "Meeting",
        _ => "Call",
    }
}

/// `hs_email_headers` must be JSON (a non-JSON value is 400 VALIDATION_ERROR naming
/// INVALID_JSON, CRM-APIS-ACTIVITIES §1.1); its from/to fill the read-only properties.
fn email_headers(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if v.is_object() {
        Ok(v)
    } else {
        Err("expected a JSON object".into())
    }
}

pub fn unknown_object(object: &str) -> Response {
    errors::validation(&format!("Unable to infer object type from: {object}"))
}

pub fn parse_body(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|e| errors::validation(&format!("Invalid input JSON on line {}, column {}: {}", e.line(), e.column(), e)))
}

/// A failure of one input, rendered as a single-endpoint error or a batch `errors[]` entry.
pub struct Failure {
    pub status: u16,
    pub category: &'static str,
    pub message: String,
    pub context: Map<String, Value>,
    pub sub_category: Option<&'static str>,
}

impl Failure {
    fn new(status: u16, category: &'static str, message: String) -> Self {
        Failure { status, category, message, context: Map::new(), sub_category: None }
    }
    fn ctx(mut self, k: &str, v: Value) -> Self {
        self.context.insert(k.into(), v);
        self
    }
    pub fn response(self) -> Response {
        let mut extra = json!({"context": self.context});
        if let Some(s) = self.sub_category {
            extra["subCategory"] = json!(s);
        }
        errors::error(self.status, self.category, &self.message, extra)
    }
    fn batch(self) -> Value {
        let mut v = batch_error(self.category, self.message, self.context);
        if let Some(s) = self.sub_category {
            v["subCategory"] = json!(s);
        }
        v
    }
}

/// HubSpot holds every property value as a string.
fn as_hs_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Epoch ms or ISO 8601, to the ISO form HubSpot reads back.
fn parse_datetime(s: &str) -> Option<String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(iso_ms(ms));
    }
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| iso_ms(d.timestamp_millis()))
}

/// Checks and normalises `properties` against the object's schema.
fn validate(acct: &Account, table: &str, props: &Value, creating: bool) -> Result<Map<String, Value>, Failure> {
    let Some(props) = props.as_object() else {
        return Err(Failure::new(400, "VALIDATION_ERROR", "Invalid input JSON: properties must be an object".into()));
    };
    let schema = acct.schema_of(table);
    let mut out = Map::new();
    let mut errs = vec![];
    for (name, v) in props {
        let Some(def) = schema.get(name) else {
            errs.push(property_error(name, "PROPERTY_DOESNT_EXIST", format!("Property \"{name}\" does not exist")));
            continue;
        };
        let Some(s) = as_hs_string(v) else {
            errs.push(property_error(name, "INVALID_TYPE", format!("Property \"{name}\" must be a string")));
            continue;
        };
        if def.read_only {
            errs.push(property_error(
                name,
                "READ_ONLY_VALUE",
                format!("Property \"{name}\" is a read only property; its value cannot be set."),
            ));
            continue;
        }
        let value = match def.kind {
            _ if s.is_empty() => s,
            FieldType::Number if s.parse::<f64>().is_err() => {
                errs.push(property_error(name, "INVALID_INTEGER", format!("{s} was not a valid number.")));
                continue;
            }
            FieldType::DateTime => match parse_datetime(&s) {
                Some(d) => d,
                None => {
                    errs.push(property_error(name, "INVALID_DATE", format!("{s} was not a valid long or ISO 8601 date.")));
                    continue;
                }
            },
            FieldType::Text if name == "hs_email_headers" && table == "emails" => match email_headers(&s) {
                Ok(_) => s,
                Err(e) => {
                    errs.push(property_error(name, "INVALID_JSON", format!("{name} was not valid JSON: {e}")));
                    continue;
                }
            },
            // An owner must be one of the portal's active owners (an archived owner's id
            // is refused: unverified, the integrators' INVALID_OWNER_ID, the harsher case).
            _ if name == "hubspot_owner_id" && crate::users::check_owner(acct, &s).is_err() => {
                errs.push(property_error(name, "INVALID_OWNER_ID", format!("{s} is not a valid owner id")));
                continue;
            }
            FieldType::Picklist if !def.options.contains(&s) => {
                errs.push(property_error(
                    name,
                    "INVALID_OPTION",
                    format!("{s} was not one of the allowed options: {}", def.options.join(", ")),
                ));
                continue;
            }
            _ => s,
        };
        out.insert(name.clone(), Value::String(value));
    }
    if creating && table == "meetings" && out.get("hs_timestamp").and_then(Value::as_str).is_none_or(str::is_empty) {
        // "hs_timestamp … defaults to hs_meeting_start_time" (the meetings guide).
        if let Some(start) = out.get("hs_meeting_start_time").cloned() {
            out.insert("hs_timestamp".into(), start);
        }
    }
    if creating {
        for (name, def) in schema {
            if def.required && out.get(name).and_then(Value::as_str).is_none_or(str::is_empty) {
                errs.push(property_error(name, "REQUIRED", format!("Property \"{name}\" is required")));
            }
        }
    }
    if !errs.is_empty() {
        return Err(Failure::new(400, "VALIDATION_ERROR", errors::property_message(&errs)));
    }
    Ok(out)
}

/// Activity objects, where HubSpot may not enforce a unique property (unverified and
/// doubtful, CRM-APIS-ACTIVITIES §6.1).
fn is_activity(table: &str) -> bool {
    matches!(table, "calls" | "emails" | "meetings" | "notes" | "tasks")
}

/// Whether HubSpot refuses a second record with the same value of `prop`: for unique
/// properties of contacts and other objects, and for activity objects only where the
/// account's switch (`enforce_activity_unique`, off by default) says it does.
pub fn unique_enforced(acct: &Account, table: &str, prop: &str) -> bool {
    acct.schema_of(table).get(prop).is_some_and(|d| d.unique) && (!is_activity(table) || acct.enforce_activity_unique)
}

/// A live contact other than `except` whose email is `email` in any case: HubSpot's contact
/// email is its dedupe key, and whether it compares case-insensitively is [U]; crm-sim does
/// (the harsher case: "Jane@X.com" and "jane@x.com" cannot be two contacts).
fn email_holder(acct: &Account, email: &Value, except: Option<&str>) -> Option<String> {
    let wanted = email.as_str().map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty())?;
    let contacts = acct.objects.get("contacts")?;
    contacts
        .iter()
        .find(|r| r.live() && Some(r.id.as_str()) != except && r.str_field("email").is_some_and(|e| e.trim().to_lowercase() == wanted))
        .map(|r| r.id.clone())
}

/// A contact's lifecycle stage moves forward only (CRM-APIS-ACTIVITIES §5.1): an update to
/// an earlier stage than the contact's is silently not applied (200, the old stage kept),
/// unless the stage is first cleared (`""`) in a request of its own. [S]/[U] which of the
/// two secondary sources holds; crm-sim models the one a writer can get wrong.
fn lifecycle(current: Option<&Value>, props: &mut Map<String, Value>) {
    let rank = |v: Option<&Value>| v.and_then(Value::as_str).and_then(|s| super::LIFECYCLE_STAGES.iter().position(|x| *x == s));
    if let (Some(now), Some(next)) = (rank(current), rank(props.get("lifecyclestage"))) {
        if next < now {
            props.remove("lifecyclestage");
        }
    }
}

/// Unique properties: a second live record with the same value is refused.
fn check_unique(acct: &Account, table: &str, props: &Map<String, Value>, except: Option<&str>) -> Result<(), Failure> {
    for (name, v) in props {
        if unique_enforced(acct, table, name) {
            let holder = if table == "contacts" && name == "email" {
                email_holder(acct, v, except)
            } else {
                acct.unique_holder(table, name, v, except)
            };
            if let Some(existing) = holder {
                return Err(Failure::new(409, "CONFLICT", format!("{} already exists. Existing ID: {existing}", noun(table)))
                    .ctx("id", json!([existing]))
                    .ctx("property", json!(name)));
            }
        }
    }
    Ok(())
}

/// The searchable digits HubSpot derives from a phone property: no formatting, no country
/// code, no leading zeros (CRM-APIS §1.2; the exact rules are not published).
pub fn searchable_digits(raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.starts_with('+') {
        if let Ok(n) = phonenumber::parse(None, trimmed) {
            return n.national().value().to_string();
        }
    }
    crate::state::digits(trimmed).trim_start_matches('0').to_string()
}

pub fn derive(table: &str, r: &mut Record) {
    let id = r.id.clone();
    let (created, updated) = (iso_ms(r.created_ms), iso_ms(r.updated_ms));
    let f = &mut r.fields;
    f.insert("hs_object_id".into(), json!(id));
    if table == "contacts" {
        f.insert("createdate".into(), json!(created));
        f.insert("lastmodifieddate".into(), json!(updated));
        for (src, dst) in [("phone", "hs_searchable_calculated_phone_number"), ("mobilephone", "hs_searchable_calculated_mobile_number")] {
            match f.get(src).and_then(Value::as_str).map(searchable_digits).filter(|d| !d.is_empty()) {
                Some(d) => f.insert(dst.into(), json!(d)),
                None => f.remove(dst),
            };
        }
    } else {
        f.insert("hs_createdate".into(), json!(created));
        f.insert("hs_lastmodifieddate".into(), json!(updated));
    }
    if table == "deals" {
        // Closed when in a closed stage (HubSpot's default pipeline: closedwon, closedlost).
        let closed = f.get("dealstage").and_then(Value::as_str).is_some_and(|s| s == "closedwon" || s == "closedlost");
        f.insert("hs_is_closed".into(), json!(closed.to_string()));
    }
    if table == "emails" {
        let headers = f.get("hs_email_headers").and_then(Value::as_str).and_then(|h| email_headers(h).ok()).unwrap_or(Value::Null);
        let person = |p: &Value, side: &str, f: &mut Map<String, Value>| {
            for (from, to) in [("email", "email"), ("firstName", "firstname"), ("lastName", "lastname")] {
                match p.get(from).and_then(Value::as_str) {
                    Some(v) => f.insert(format!("hs_email_{side}_{to}"), json!(v)),
                    None => f.remove(&format!("hs_email_{side}_{to}")),
                };
            }
        };
        person(headers.get("from").unwrap_or(&Value::Null), "from", f);
        // The first recipient, as HubSpot's single-valued to_* properties hold.
        person(headers.pointer("/to/0").unwrap_or(&Value::Null), "to", f);
    }
}

fn default_properties(table: &str) -> &'static [&'static str] {
    if table == "contacts" {
        &["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"]
    } else {
        &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"]
    }
}

/// A SimplePublicObject: only the properties asked for (or the defaults), as HubSpot does.
pub fn render(r: &Record, table: &str, props: Option<&[String]>, with_assoc: bool) -> Value {
    let mut properties = Map::new();
    let names: Vec<String> = match props {
        Some(p) => p.to_vec(),
        None => default_properties(table).iter().map(|s| s.to_string()).collect(),
    };
    for n in names {
        properties.insert(n.clone(), r.fields.get(&n).cloned().unwrap_or(Value::Null));
    }
    let mut v = json!({
        "id": r.id, "properties": properties, "createdAt": iso_ms(r.created_ms),
        "updatedAt": iso_ms(r.updated_ms), "archived": !r.live(),
    });
    if let Some(d) = r.deleted_ms {
        v["archivedAt"] = json!(iso_ms(d));
    }
    if with_assoc && !r.associations.is_empty() {
        let (key, ty) = match to_contact(table) {
            Some((_, label)) => ("contacts", label),
            None => ("calls", "contact_to_call"),
        };
        let results: Vec<Value> = r.associations.iter().map(|id| json!({"id": id, "type": ty})).collect();
        v["associations"] = json!({ key: {"results": results} });
    }
    v
}

/// Everything a write sets, rendered back (HubSpot echoes the written properties).
fn render_written(r: &Record, table: &str) -> Value {
    let names: Vec<String> = r.fields.keys().cloned().collect();
    render(r, table, Some(&names), false)
}

fn new_id(acct: &mut Account) -> String {
    crate::crms::new_id(crate::state::Crm::Hubspot, acct, "")
}

/// Resolves a contact id for an association: merged contacts resolve to their survivor.
fn live_contact(acct: &mut Account, id: &str) -> Option<String> {
    let t = acct.table("contacts");
    let mut cur = t.get(id)?;
    for _ in 0..8 {
        match (&cur.merged_into, cur.live()) {
            (_, true) => return Some(cur.id.clone()),
            (Some(next), false) => cur = t.get(next)?,
            (None, false) => return None,
        }
    }
    None
}

/// An activity's association types to a company and to a deal (HUBSPOT_DEFINED).
fn to_company_and_deal(table: &str) -> Option<(i64, i64)> {
    match table {
        "calls" => Some((182, 206)),
        "emails" => Some((186, 210)),
        "meetings" => Some((188, 212)),
        _ => None,
    }
}

/// A create's inline associations: the contacts it hangs under, and links to companies and
/// deals ((table, id, type)), each type checked against the object pair and each target
/// against what exists.
type Associations = (BTreeSet<String>, Vec<(String, String, i64)>);

fn parse_associations(acct: &mut Account, table: &str, input: &Value) -> Result<Associations, Failure> {
    let mut out = BTreeSet::new();
    let mut links = vec![];
    let Some(list) = input.get("associations") else { return Ok((out, links)) };
    let Some(list) = list.as_array() else {
        return Err(Failure::new(400, "VALIDATION_ERROR", "Invalid input JSON: associations must be an array".into()));
    };
    let expected = to_contact(table).map_or(CONTACT_TO_CALL, |(id, _)| id);
    for a in list {
        let to = a.pointer("/to/id").and_then(as_hs_string).unwrap_or_default();
        let types = a.get("types").and_then(Value::as_array).cloned().unwrap_or_default();
        let type_ids: Vec<Option<i64>> = types
            .iter()
            .map(|t| {
                (t.get("associationCategory").and_then(Value::as_str) == Some("HUBSPOT_DEFINED"))
                    .then(|| t.get("associationTypeId").and_then(Value::as_i64))
                    .flatten()
            })
            .collect();
        // A company or a deal: its own type, and a record that exists.
        if let (Some((company, deal)), [Some(t)]) = (to_company_and_deal(table), type_ids.as_slice()) {
            let target = if *t == company {
                Some("companies")
            } else if *t == deal {
                Some("deals")
            } else {
                None
            };
            if let Some(target) = target {
                if !acct.objects.get(target).and_then(|tb| tb.get(&to)).is_some_and(Record::live) {
                    let mut f = Failure::new(400, "VALIDATION_ERROR", format!("Could not find object ids: [{to}] of type {target}"));
                    f.sub_category = Some("crm.associations.INVALID_OBJECT_IDS");
                    return Err(f.ctx("ids", json!([to])));
                }
                links.push((target.to_string(), to, *t));
                continue;
            }
        }
        let ok_type = !types.is_empty() && type_ids.iter().all(|t| *t == Some(expected));
        if !ok_type {
            return Err(Failure::new(
                400,
                "VALIDATION_ERROR",
                format!(
                    "{} is not a valid association type between {table} and the target object",
                    types.first().and_then(|t| t.get("associationTypeId")).cloned().unwrap_or(Value::Null)
                ),
            ));
        }
        if table == "contacts" {
            continue;
        }
        match live_contact(acct, &to) {
            Some(id) => {
                out.insert(id);
            }
            None => {
                let mut f = Failure::new(400, "VALIDATION_ERROR", format!("Could not find object ids: [{to}] of type contacts"));
                f.sub_category = Some("crm.associations.INVALID_OBJECT_IDS");
                return Err(f.ctx("ids", json!([to])));
            }
        }
    }
    Ok((out, links))
}

fn create_one(acct: &mut Account, table: &str, input: &Value, now: i64) -> Result<Record, Failure> {
    let props = validate(acct, table, input.get("properties").unwrap_or(&Value::Null), true)?;
    check_unique(acct, table, &props, None)?;
    let (associations, links) = parse_associations(acct, table, input)?;
    let id = new_id(acct);
    for (target, to, type_id) in links {
        acct.links.insert(crate::state::Link { from: (table.to_string(), id.clone()), to: (target, to), type_id });
    }
    let lag = acct.search_lag_ms;
    let mut r = Record {
        id: id.clone(),
        fields: props,
        created_ms: now,
        updated_ms: now,
        deleted_ms: None,
        indexed_at_ms: now + lag,
        associations: associations.clone(),
        merged_into: None,
    };
    derive(table, &mut r);
    // A contact's own list holds its calls (what the reconciler's merge check reads); an
    // email's or meeting's contacts are read from the activity.
    for c in associations.iter().filter(|_| table == "calls") {
        if let Some(contact) = acct.table("contacts").get_mut(c) {
            contact.associations.insert(id.clone());
        }
    }
    acct.table(table).insert(r.clone());
    Ok(r)
}

/// Finds a live record by id, or by a unique property when `id_property` is given.
fn find(acct: &mut Account, table: &str, id: &str, id_property: Option<&str>, archived: bool) -> Option<String> {
    if (table, id_property, archived) == ("contacts", Some("email"), false) {
        // The dedupe key is found as it is kept unique: in any case.
        return email_holder(acct, &Value::String(id.to_string()), None);
    }
    let t = acct.table(table);
    match id_property.filter(|p| *p != "hs_object_id") {
        Some(p) => t.find_by(p, id).into_iter().find(|r| r.str_field(p) == Some(id) && r.live() != archived).map(|r| r.id.clone()),
        None => t.get(id).filter(|r| r.live() != archived).map(|r| r.id.clone()),
    }
}

fn update_one(acct: &mut Account, table: &str, id: &str, props: &Value, now: i64) -> Result<Record, Failure> {
    let mut props = validate(acct, table, props, false)?;
    check_unique(acct, table, &props, Some(id))?;
    if table == "contacts" {
        let current = acct.table(table).get(id).and_then(|r| r.fields.get("lifecyclestage").cloned());
        lifecycle(current.as_ref(), &mut props);
    }
    let lag = acct.search_lag_ms;
    let r = acct.table(table).get_mut(id).expect("caller found it");
    r.fields.extend(props);
    r.updated_ms = now;
    r.indexed_at_ms = now + lag;
    derive(table, r);
    let out = r.clone();
    acct.table(table).reindex(id);
    Ok(out)
}

fn list_param(q: &HashMap<String, String>, k: &str) -> Option<Vec<String>> {
    q.get(k).map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

pub async fn create(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    let input = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if input.get("properties").is_none() {
        return errors::validation("Invalid input JSON: missing required property 'properties'");
    }
    sim.with(&caller, |acct, now| match create_one(acct, table, &input, now) {
        Ok(r) => json(201, render_written(&r, table)),
        Err(f) => f.response(),
    })
}

pub async fn read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((table, ty)) = object_type(&object) else { return unknown_object(&object) };
    let archived = q.get("archived").is_some_and(|v| v == "true");
    let props = list_param(&q, "properties");
    let assoc = q.contains_key("associations");
    sim.with(&caller, |acct, _| {
        if let Some(p) = q.get("idProperty").filter(|p| *p != "hs_object_id" && !unique_enforced(acct, table, p)) {
            return errors::validation(&format!("{p} is not a unique property of {table}; idProperty needs a property with unique values"));
        }
        let mut found = find(acct, table, &id, q.get("idProperty").map(String::as_str), archived);
        // A merged contact's old id answers with the surviving record.
        if found.is_none() && table == "contacts" && !q.contains_key("idProperty") {
            found = live_contact(acct, &id);
        }
        match found {
            Some(rid) => json(200, render(acct.table(table).get(&rid).unwrap(), table, props.as_deref(), assoc)),
            None => errors::not_found(ty, &id),
        }
    })
}

pub async fn update(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some((table, ty)) = object_type(&object) else { return unknown_object(&object) };
    let input = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        if let Some(p) = q.get("idProperty").filter(|p| *p != "hs_object_id" && !unique_enforced(acct, table, p)) {
            return errors::validation(&format!("{p} is not a unique property of {table}; idProperty needs a property with unique values"));
        }
        let Some(rid) = find(acct, table, &id, q.get("idProperty").map(String::as_str), false) else { return errors::not_found(ty, &id) };
        match update_one(acct, table, &rid, input.get("properties").unwrap_or(&Value::Null), now) {
            Ok(r) => json(200, render_written(&r, table)),
            Err(f) => f.response(),
        }
    })
}

pub async fn archive(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    sim.with(&caller, |acct, now| {
        // Archiving is idempotent: an unknown or archived id also answers 204.
        if let Some(r) = acct.table(table).get_mut(&id).filter(|r| r.live()) {
            r.deleted_ms = Some(now);
        }
        StatusCode::NO_CONTENT.into_response()
    })
}

pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    let archived = q.get("archived").is_some_and(|v| v == "true");
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10).clamp(1, 100);
    let after = q.get("after").and_then(|a| a.parse::<usize>().ok()).unwrap_or(0);
    let props = list_param(&q, "properties");
    let assoc = q.contains_key("associations");
    sim.with(&caller, |acct, _| {
        let all: Vec<Value> = acct
            .table(table)
            .iter()
            .filter(|r| r.live() != archived)
            .skip(after)
            .take(limit + 1)
            .map(|r| render(r, table, props.as_deref(), assoc))
            .collect();
        let more = all.len() > limit;
        let results: Vec<Value> = all.into_iter().take(limit).collect();
        let mut body = json!({"results": results});
        if more {
            body["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        json(200, body)
    })
}

pub async fn batch(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some((table, ty)) = object_type(&object) else { return unknown_object(&object) };
    let input = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(inputs) = input.get("inputs").and_then(Value::as_array).cloned() else {
        return errors::validation("Invalid input JSON: missing required property 'inputs'");
    };
    let max = if action == "read" && input.get("propertiesWithHistory").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
        50
    } else {
        BATCH_MAX
    };
    if inputs.len() > max {
        return errors::validation(&format!(
            "The maximum number of inputs supported in a batch is {max}. Please reduce the number of items and try again"
        ));
    }
    let started = crate::clock::iso_ms(sim.clock.now_ms());
    sim.with(&caller, |acct, now| {
        let mut results = vec![];
        let mut errs = vec![];
        let mut status_all = 201;
        match action.as_str() {
            "create" => {
                for i in &inputs {
                    match create_one(acct, table, i, now) {
                        Ok(r) => results.push(render_written(&r, table)),
                        Err(f) => {
                            let trace = i.get("objectWriteTraceId").cloned();
                            let mut e = f.batch();
                            if let Some(t) = trace {
                                e["context"]["objectWriteTraceId"] = json!([t]);
                            }
                            errs.push(e);
                        }
                    }
                }
            }
            "upsert" => {
                status_all = 200;
                for i in &inputs {
                    let (Some(key), Some(id_prop)) = (i.get("id").and_then(as_hs_string), i.get("idProperty").and_then(Value::as_str)) else {
                        errs.push(Failure::new(400, "VALIDATION_ERROR", "upsert inputs need id and idProperty".into()).batch());
                        continue;
                    };
                    if !unique_enforced(acct, table, id_prop) {
                        return errors::validation(&format!("{id_prop} is not a unique property of {table}; upsert needs a property with unique values"));
                    }
                    let props = i.get("properties").cloned().unwrap_or(json!({}));
                    let outcome = match find(acct, table, &key, Some(id_prop), false) {
                        Some(rid) => update_one(acct, table, &rid, &props, now).map(|r| (r, false)),
                        None => {
                            let mut p = props.as_object().cloned().unwrap_or_default();
                            p.insert(id_prop.to_string(), json!(key));
                            create_one(acct, table, &json!({"properties": p}), now).map(|r| (r, true))
                        }
                    };
                    match outcome {
                        Ok((r, new)) => {
                            let mut v = render_written(&r, table);
                            v["new"] = json!(new);
                            results.push(v);
                        }
                        Err(f) => errs.push(f.batch()),
                    }
                }
            }
            "read" => {
                status_all = 200;
                let props: Option<Vec<String>> = input.get("properties").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
                let id_prop = input.get("idProperty").and_then(Value::as_str);
                let mut missing = vec![];
                for i in &inputs {
                    let id = i.get("id").and_then(as_hs_string).unwrap_or_default();
                    match find(acct, table, &id, id_prop, false) {
                        Some(rid) => results.push(render(acct.table(table).get(&rid).unwrap(), table, props.as_deref(), false)),
                        None => missing.push(id),
                    }
                }
                if !missing.is_empty() {
                    let mut ctx = Map::new();
                    ctx.insert("ids".into(), json!(missing));
                    errs.push(batch_error("OBJECT_NOT_FOUND", format!("Could not get some {ty} objects, they may be deleted or not exist. Check that ids are valid."), ctx));
                }
            }
            "update" => {
                status_all = 200;
                for i in &inputs {
                    let id = i.get("id").and_then(as_hs_string).unwrap_or_default();
                    let id_prop = i.get("idProperty").and_then(Value::as_str);
                    match find(acct, table, &id, id_prop, false) {
                        None => {
                            let mut ctx = Map::new();
                            ctx.insert("ids".into(), json!([id]));
                            errs.push(batch_error("OBJECT_NOT_FOUND", format!("Could not update some {ty} objects, they may be deleted or not exist."), ctx));
                        }
                        Some(rid) => match update_one(acct, table, &rid, i.get("properties").unwrap_or(&Value::Null), now) {
                            Ok(r) => results.push(render_written(&r, table)),
                            Err(f) => errs.push(f.batch()),
                        },
                    }
                }
            }
            "archive" => {
                for i in &inputs {
                    let id = i.get("id").and_then(as_hs_string).unwrap_or_default();
                    if let Some(r) = acct.table(table).get_mut(&id).filter(|r| r.live()) {
                        r.deleted_ms = Some(now);
                    }
                }
                return StatusCode::NO_CONTENT.into_response();
            }
            other => return errors::error(404, "OBJECT_NOT_FOUND", &format!("No route for batch action {other}"), Value::Null),
        }
        let completed = iso_ms(now);
        if errs.is_empty() {
            json(status_all, json!({"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": completed}))
        } else {
            let n = errs.len();
            json(207, json!({"status": "COMPLETE", "results": results, "numErrors": n, "errors": errs, "startedAt": started, "completedAt": completed}))
        }
    })
}

pub async fn associate(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, id, to_object, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (Some((table, ty)), Some(("contacts", _))) = (object_type(&object), object_type(&to_object)) else {
        return errors::validation(&format!("Associations from {object} to {to_object} are not modelled"));
    };
    let Some((type_id, _)) = to_contact(table) else {
        return errors::validation(&format!("Associations from {object} to {to_object} are not modelled"));
    };
    sim.with(&caller, |acct, now| {
        if find(acct, table, &id, None, false).is_none() {
            return errors::not_found(ty, &id);
        }
        let Some(contact) = live_contact(acct, &to_id) else { return errors::not_found("CONTACT", &to_id) };
        let lag = acct.search_lag_ms;
        let activity = acct.table(table).get_mut(&id).unwrap();
        activity.associations.insert(contact.clone());
        activity.updated_ms = now;
        activity.indexed_at_ms = now + lag;
        if table == "calls" {
            acct.table("contacts").get_mut(&contact).unwrap().associations.insert(id.clone());
        }
        json(
            200,
            json!({"status": "COMPLETE", "results": [{"from": {"id": id}, "to": {"id": contact}, "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}], "startedAt": iso_ms(now), "completedAt": iso_ms(now)}),
        )
    })
}

fn render_property(name: &str, def: &crate::state::FieldDef, table: &str, enforced: bool) -> Value {
    let (ty, field_type) = match def.kind {
        FieldType::Number => ("number", "number"),
        FieldType::DateTime => ("datetime", "date"),
        FieldType::Picklist => ("enumeration", "select"),
        FieldType::Phone => ("string", "phonenumber"),
        _ => ("string", "text"),
    };
    let options: Vec<Value> =
        def.options.iter().enumerate().map(|(i, o)| json!({"label": o, "value": o, "displayOrder": i, "hidden": false})).collect();
    json!({
        "name": name, "label": name, "type": ty, "fieldType": field_type, "groupName": default_group(table),
        "hasUniqueValue": def.unique && enforced, "calculated": def.read_only, "hubspotDefined": !def.custom,
        "modificationMetadata": {"readOnlyValue": def.read_only, "archivable": def.custom, "readOnlyDefinition": !def.custom},
        "options": options, "archived": false,
    })
}

pub async fn properties(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(object): Path<String>) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    sim.with(&caller, |acct, _| {
        let results: Vec<Value> = acct
            .fields(table)
            .into_iter()
            .flatten()
            .map(|(n, d)| render_property(n, d, table, !is_activity(table) || acct.enforce_activity_unique))
            .collect();
        json(200, json!({"results": results}))
    })
}

/// A schema write (a property or a property group) on `object`: the body read, and refused
/// on activity objects unless the account allows it (`activity_property_create`), before
/// `write` runs on the account with the object's table.
fn schema_write(
    sim: &SharedSim,
    caller: &Caller,
    object: &str,
    body: &Bytes,
    write: impl FnOnce(&mut Account, &'static str, &Value) -> Response,
) -> Response {
    let Some((table, _)) = object_type(object) else { return unknown_object(object) };
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    sim.with(caller, |acct, _| {
        if is_activity(table) && !acct.activity_property_create {
            return errors::missing_scopes(&format!("crm.schemas.{table}.write"));
        }
        write(acct, table, &body)
    })
}

/// `POST /crm/v3/properties/{object}`: a custom property (CRM-APIS-ACTIVITIES §6.1). Name,
/// label, type, fieldType and groupName are required; a name taken is 409; at most 10
/// unique properties per object. On activity objects the create is refused with
/// MISSING_SCOPES unless the account allows it (`activity_property_create`: whether HubSpot
/// lets an app do this, and with which scope, is unverified, so the harsher answer is the
/// default); a unique property made there refuses duplicates only where the account
/// enforces it, as `GET` shows in `hasUniqueValue`.
pub async fn create_property(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    schema_write(&sim, &caller, &object, &body, |acct, table, body| {
        let text = |k: &str| body.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
        let missing: Vec<&str> = ["name", "label", "type", "fieldType", "groupName"].into_iter().filter(|k| text(k).is_none()).collect();
        if !missing.is_empty() {
            return errors::validation(&format!("Property values were not valid: missing {}", missing.join(", ")));
        }
        let name = text("name").expect("checked").to_string();
        let group = text("groupName").expect("checked");
        if group != default_group(table) && !acct.property_groups.get(table).is_some_and(|g| g.contains(group)) {
            return errors::validation(&format!("Property group {group} does not exist for object type {table}"));
        }
        if acct.fields(table).is_some_and(|f| f.contains_key(&name)) {
            return errors::error(409, "CONFLICT", &format!("Property named '{name}' already exists."), Value::Null);
        }
        let unique = body.get("hasUniqueValue").and_then(Value::as_bool).unwrap_or(false);
        if unique && acct.fields(table).into_iter().flatten().filter(|(_, d)| d.unique).count() >= 10 {
            return errors::validation(&format!("Object type {table} already has the maximum of 10 unique value properties"));
        }
        let kind = match (text("type"), text("fieldType")) {
            (Some("string"), Some("text" | "textarea")) => FieldType::Text,
            (Some("number"), Some("number")) => FieldType::Number,
            (Some("datetime"), _) => FieldType::DateTime,
            (t, f) => return errors::validation(&format!("Property type {t:?} with fieldType {f:?} is not supported here")),
        };
        let def = crate::state::FieldDef { kind, unique, custom: true, ..Default::default() };
        acct.schema.entry(table.to_string()).or_default().insert(name.clone(), def.clone());
        acct.ensure_indexes();
        json(201, render_property(&name, &def, table, !is_activity(table) || acct.enforce_activity_unique))
    })
}

/// An object's own property group (`callinformation`, `contactinformation`, …).
fn default_group(table: &str) -> String {
    match table {
        "companies" => "companyinformation".to_string(),
        t => format!("{}information", t.trim_end_matches('s')),
    }
}

/// `GET /crm/v3/properties/{object}/groups`: the object's groups, its own and those made.
pub async fn property_groups(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(object): Path<String>) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    sim.with(&caller, |acct, _| {
        let made = acct.property_groups.get(table).into_iter().flatten().cloned();
        let results: Vec<Value> = std::iter::once(default_group(table))
            .chain(made)
            .enumerate()
            .map(|(i, g)| json!({"name": g, "label": g, "displayOrder": i, "archived": false}))
            .collect();
        json(200, json!({"results": results}))
    })
}

/// `POST /crm/v3/properties/{object}/groups`: a property group (what HubSpot advises an
/// integration to make for its properties); a name taken is 409.
pub async fn create_property_group(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(object): Path<String>,
    body: Bytes,
) -> Response {
    schema_write(&sim, &caller, &object, &body, |acct, table, body| {
        let (Some(name), Some(label)) = (body.get("name").and_then(Value::as_str), body.get("label").and_then(Value::as_str)) else {
            return errors::validation("Property group values were not valid: name and label are required");
        };
        if name == default_group(table) || !acct.property_groups.entry(table.to_string()).or_default().insert(name.to_string()) {
            return errors::error(409, "CONFLICT", &format!("A property group named '{name}' already exists."), Value::Null);
        }
        json(201, json!({"name": name, "label": label, "displayOrder": -1, "archived": false}))
    })
}

pub async fn property(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((object, name)): Path<(String, String)>,
) -> Response {
    let Some((table, _)) = object_type(&object) else { return unknown_object(&object) };
    sim.with(&caller, |acct, _| match acct.fields(table).and_then(|f| f.get(&name)) {
        Some(d) => json(200, render_property(&name, d, table, !is_activity(table) || acct.enforce_activity_unique)),
        None => errors::error(404, "OBJECT_NOT_FOUND", &format!("Unable to find property {name} for object type {table}"), Value::Null),
    })
}

/// `POST /crm/v4/associations/{from}/{to}/batch/read`: each input's associated records of
/// `to` with their association types (a contact's primary company: typeId 1 beside the
/// unlabeled 279). An input with none is an error entry (207), as HubSpot answers.
pub async fn associations_batch_read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (Some((from_table, _)), Some((to_table, _))) = (object_type(&from), object_type(&to)) else {
        return unknown_object(&format!("{from}/{to}"));
    };
    let input = match parse_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ids: Vec<String> = input["inputs"].as_array().into_iter().flatten().filter_map(|i| i.get("id").and_then(as_hs_string)).collect();
    if ids.len() > BATCH_MAX {
        return errors::validation(&format!("Batch size {} exceeds the limit of {BATCH_MAX}", ids.len()));
    }
    sim.with(&caller, |acct, _| {
        let (mut results, mut errs) = (vec![], vec![]);
        for id in ids {
            let linked = acct.linked(from_table, &id, to_table);
            if linked.is_empty() {
                errs.push(batch_error("NO_ASSOCIATIONS_FOUND", format!("No {to_table} is associated with {from_table} {id}."), Map::new()));
                continue;
            }
            let to: Vec<Value> = linked
                .into_iter()
                .map(|(to_id, types)| {
                    let types: Vec<Value> = types
                        .into_iter()
                        .map(|t| json!({"category": "HUBSPOT_DEFINED", "typeId": t, "label": if t == 1 { json!("Primary") } else { Value::Null }}))
                        .collect();
                    json!({"toObjectId": to_id.parse::<u64>().map(Value::from).unwrap_or(json!(to_id)), "associationTypes": types})
                })
                .collect();
            results.push(json!({"from": {"id": id}, "to": to}));
        }
        let status = if errs.is_empty() { 200 } else { 207 };
        json(status, json!({"status": "COMPLETE", "results": results, "errors": errs, "numErrors": errs.len()}))
    })
}

#[cfg(test)]
mod tests {
    use super::searchable_digits;

    #[test]
    fn searchable_digits_drop_formatting_country_code_and_leading_zeros() {
        assert_eq!(searchable_digits("(415) 555-1212"), "4155551212");
        assert_eq!(searchable_digits("+1 415-555-1212"), "4155551212");
        assert_eq!(searchable_digits("+44 20 7946 0958"), "2079460958");
        assert_eq!(searchable_digits("020 7946 0958"), "2079460958");
        assert_eq!(searchable_digits("00004"), "4");
    }
}
