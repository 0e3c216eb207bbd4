//! Persons beyond search (CRM-APIS-ACTIVITIES §5.4, §6.4): created and updated through v2
//! with their custom fields, listed by id, and the person fields that name those custom
//! fields. What a lead writer meets at Pipedrive:
//!
//! - **No uniqueness**: a second person with one email is accepted (nothing refuses it).
//! - **Custom fields** are keyed by a 40-character hash per company (`field_code`), never by
//!   name: `custom_fields: {"<code>": value}` on create and update (`null` clears one). A
//!   client finds the code by the field's name in `GET /api/v2/personFields`. A key that is
//!   no custom person field of the company is refused (unverified: the harsher case; the SDK
//!   documents only that the keys are the hashes).
//! - **Update** (`PATCH /api/v2/persons/{id}`) replaces `emails` and `phones` whole when
//!   given, merges `custom_fields`, and moves `update_time`; search sees the change after the
//!   account's lag. The owner must be an active user.
//! - **v2 has no first or last name** on persons: `name` only (the SDK's AddPersonRequest).
//! - **New custom fields** through `POST /api/v1/personFields` (`name`, `field_type`; the
//!   simulator takes text types, `varchar`/`text`); the answer carries the field's `key`,
//!   its code. Pipedrive does not refuse a second field of one name; the simulator keeps
//!   one per name (a client that creates twice is not caught here: crm-sync reads first).

use super::errors;
use super::{derive, pd_time};
use crate::gate::json;
use crate::state::{Account, Caller, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// What a v2 person create or update may carry.
pub const WRITABLE: &[&str] = &["name", "owner_id", "org_id", "emails", "phones", "visible_to", "label_ids", "custom_fields"];

/// The most ids one list asks for.
const IDS_MAX: usize = 100;

/// A custom field's code: 40 hex characters derived from its name (stable per name, as a
/// company's codes are stable per field).
pub fn field_code(name: &str) -> String {
    let mut out = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0u64..3 {
        for b in name.bytes().chain(round.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(40);
    out
}

/// The company's custom person fields: code → name.
fn custom_fields(acct: &Account) -> HashMap<String, String> {
    acct.fields("persons").into_iter().flatten().filter(|(_, d)| d.custom).map(|(name, _)| (field_code(name), name.clone())).collect()
}

/// Checks a create's or update's body: known keys, `name` text, lists where lists go, custom
/// fields by code, an owner who is an active user. Err: Pipedrive's 400.
pub fn check(acct: &Account, body: &Map<String, Value>, creating: bool) -> Result<(), Response> {
    for k in body.keys() {
        if !WRITABLE.contains(&k.as_str()) {
            return Err(errors::validation(&format!("Parameter '{k}' is not allowed for this request")));
        }
    }
    match body.get("name") {
        None if creating => return Err(errors::validation("name is required")),
        Some(v) if v.as_str().is_none_or(|s| s.trim().is_empty()) => return Err(errors::validation("name must be a non-empty string")),
        _ => {}
    }
    for list in ["emails", "phones"] {
        if let Some(v) = body.get(list) {
            let ok = v.as_array().is_some_and(|a| a.iter().all(|e| e.get("value").and_then(Value::as_str).is_some()));
            if !ok {
                return Err(errors::validation(&format!("{list} must be a list of {{value, label, primary}}")));
            }
        }
    }
    if let Some(cf) = body.get("custom_fields") {
        let Some(cf) = cf.as_object() else { return Err(errors::validation("custom_fields must be an object")) };
        let known = custom_fields(acct);
        for (code, v) in cf {
            if !known.contains_key(code) {
                return Err(errors::validation(&format!("custom field '{code}' is not a person field of this company")));
            }
            if !(v.is_string() || v.is_number() || v.is_null()) {
                return Err(errors::validation(&format!("custom field '{code}' takes text or a number")));
            }
        }
    }
    if let Some(o) = body.get("owner_id") {
        let id = o.as_u64().map(|n| n.to_string()).or_else(|| o.as_str().map(str::to_string)).unwrap_or_default();
        if crate::users::check_owner(acct, &id).is_err() {
            return Err(errors::validation(&format!("owner_id {id} is not an active user of this company")));
        }
    }
    Ok(())
}

/// `custom_fields` of `body` merged into the record's (a null clears one).
fn merge_custom(fields: &mut Map<String, Value>, body: &Map<String, Value>) {
    let Some(cf) = body.get("custom_fields").and_then(Value::as_object) else { return };
    let mut now = fields.get("custom_fields").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in cf {
        if v.is_null() {
            now.remove(k);
        } else {
            now.insert(k.clone(), v.clone());
        }
    }
    fields.insert("custom_fields".into(), Value::Object(now));
}

/// A new person's fields from a checked body.
pub fn new_fields(body: &Map<String, Value>) -> Map<String, Value> {
    let mut fields: Map<String, Value> = body.iter().filter(|(k, _)| *k != "custom_fields").map(|(k, v)| (k.clone(), v.clone())).collect();
    merge_custom(&mut fields, body);
    fields
}

fn ok(data: Value) -> Response {
    json(200, json!({"success": true, "data": data}))
}

/// `PATCH /api/v2/persons/{id}`.
pub async fn update(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return errors::validation("the body is not a JSON object");
    };
    sim.with(&caller, |acct, now| {
        if !acct.table("persons").get(&id).is_some_and(Record::live) {
            return errors::not_found("Person");
        }
        if let Err(r) = check(acct, &body, false) {
            return r;
        }
        let lag = acct.search_lag_ms;
        let r = acct.table("persons").get_mut(&id).expect("checked");
        for (k, v) in body.iter().filter(|(k, _)| *k != "custom_fields") {
            r.fields.insert(k.clone(), v.clone());
        }
        merge_custom(&mut r.fields, &body);
        r.updated_ms = now;
        r.indexed_at_ms = now + lag;
        derive("persons", r);
        let out = Value::Object(r.fields.clone());
        acct.table("persons").reindex(&id);
        ok(out)
    })
}

/// `GET /api/v2/persons?ids=1,2`: live persons, those ids only when given (at most 100),
/// in id order.
pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ids: Option<Vec<String>> = q.get("ids").map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect());
    if ids.as_ref().is_some_and(|i| i.len() > IDS_MAX) {
        return errors::validation(&format!("ids takes at most {IDS_MAX}"));
    }
    sim.with(&caller, |acct, _| {
        let data: Vec<Value> = acct
            .table("persons")
            .live()
            .filter(|r| ids.as_ref().is_none_or(|i| i.contains(&r.id)))
            .map(|r| Value::Object(r.fields.clone()))
            .collect();
        json(200, json!({"success": true, "data": data, "additional_data": {"next_cursor": Value::Null}}))
    })
}

/// `GET /api/v2/personFields`: the standard fields a lead writer uses and every custom one,
/// each `{field_code, field_name, field_type, is_custom_field}`.
pub async fn fields(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>) -> Response {
    sim.with(&caller, |acct, now| {
        let mut data: Vec<Value> =
            [("name", "Name", "varchar"), ("emails", "Email", "varchar"), ("phones", "Phone", "phone"), ("owner_id", "Owner", "user")]
                .into_iter()
                .map(|(code, name, ty)| json!({"field_code": code, "field_name": name, "field_type": ty, "is_custom_field": false}))
                .collect();
        let mut custom: Vec<(String, String)> = custom_fields(acct).into_iter().collect();
        custom.sort_by(|a, b| a.1.cmp(&b.1));
        data.extend(custom.into_iter().map(|(code, name)| {
            json!({"field_code": code, "field_name": name, "field_type": "varchar", "is_custom_field": true, "add_time": pd_time(now)})
        }));
        json(200, json!({"success": true, "data": data, "additional_data": {"next_cursor": Value::Null}}))
    })
}

/// `POST /api/v1/personFields`: a custom text field.
pub async fn create_field(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, body: Bytes) -> Response {
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&body) else {
        return errors::validation("the body must be a JSON object");
    };
    let name = b.get("name").and_then(Value::as_str).map(str::trim).unwrap_or_default().to_string();
    let ty = b.get("field_type").and_then(Value::as_str).unwrap_or_default().to_string();
    if name.is_empty() {
        return errors::validation("Name must be given.");
    }
    if !matches!(ty.as_str(), "varchar" | "text") {
        return errors::validation(&format!("field_type {ty:?}: the simulator makes text fields only (varchar, text)"));
    }
    sim.with(&caller, |acct, now| {
        let def = crate::state::FieldDef { kind: crate::state::FieldType::Text, custom: true, ..Default::default() };
        acct.schema.entry("persons".to_string()).or_default().insert(name.clone(), def);
        json(
            201,
            json!({"success": true, "data": {"key": field_code(&name), "name": name, "field_type": ty, "add_time": pd_time(now), "edit_flag": true}}),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::field_code;

    #[test]
    fn codes_are_forty_hex_characters_stable_per_name() {
        let c = field_code("crm_sync_latest_campaign");
        assert_eq!(c.len(), 40);
        assert!(c.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(c, field_code("crm_sync_latest_campaign"));
        assert_ne!(c, field_code("crm_sync_latest_source"));
    }
}
