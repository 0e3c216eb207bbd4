//! Pipedrive API v2 (CRM-APIS §4): activities (the call record: no batch endpoint, no unique
//! fields, no upsert), persons with their search, custom fields and updates (`persons`), and
//! the OAuth refresh flow. v1 activities are retired and answer 410. Served under `/pipedrive`, which stands in for both
//! `https://{company}.pipedrive.com` and `https://oauth.pipedrive.com`.

mod activities;
pub mod errors;
pub mod limits;
mod oauth;
pub mod persons;

use crate::faults::FaultKind;
use crate::gate::{self, AuthFailure, Class, CrmApi};
use crate::state::{Account, Caller, Crm, FieldDef, FieldType, Record, Schema, SharedSim};
use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct Pipedrive;

pub const ACTIVITY_TYPES: &[&str] = &["call", "meeting", "task", "deadline", "email", "lunch"];

pub fn pd_time(ms: i64) -> String {
    crate::clock::iso_s(ms)
}

pub fn schema() -> Schema {
    use FieldType::*;
    let ro = FieldDef::read_only;
    let mut common = BTreeMap::new();
    for f in ["id", "add_time", "update_time", "is_deleted", "creator_user_id"] {
        common.insert(f.to_string(), ro(Text));
    }
    common.insert("owner_id".into(), FieldDef::of(Number));
    common.insert("org_id".into(), FieldDef::of(Number));
    let mut activities = common.clone();
    activities.insert("subject".into(), FieldDef::of(Text));
    activities.insert("type".into(), FieldDef::picklist(ACTIVITY_TYPES));
    for f in ["deal_id", "project_id", "priority"] {
        activities.insert(f.into(), FieldDef::of(Number));
    }
    activities.insert("lead_id".into(), FieldDef::of(Text));
    activities.insert("due_date".into(), FieldDef::of(Date));
    activities.insert("due_time".into(), FieldDef::of(Text));
    activities.insert("duration".into(), FieldDef::of(Text));
    activities.insert("busy".into(), FieldDef::of(Bool));
    activities.insert("done".into(), FieldDef::of(Bool));
    activities.insert("location".into(), FieldDef::of(Json));
    activities.insert("participants".into(), FieldDef::of(Json));
    activities.insert("attendees".into(), FieldDef::of(Json));
    activities.insert("public_description".into(), FieldDef::of(Text));
    activities.insert("note".into(), FieldDef::of(Text));
    activities.insert("person_id".into(), ro(Number));
    activities.insert("marked_as_done_time".into(), ro(Text));
    let mut persons = common;
    persons.insert("name".into(), FieldDef::of(Text));
    persons.insert("first_name".into(), FieldDef::of(Text));
    persons.insert("last_name".into(), FieldDef::of(Text));
    persons.insert("phones".into(), FieldDef::of(Json));
    persons.insert("emails".into(), FieldDef::of(Json));
    persons.insert("visible_to".into(), FieldDef::of(Number));
    Schema::from([("activities".into(), activities), ("persons".into(), persons)])
}

/// Fields Pipedrive computes: id, times, person_id from the primary participant.
pub fn derive(object: &str, r: &mut Record) {
    let f = &mut r.fields;
    f.insert("id".into(), json!(r.id.parse::<u64>().unwrap_or(0)));
    f.insert("add_time".into(), json!(pd_time(r.created_ms)));
    f.insert("update_time".into(), json!(pd_time(r.updated_ms)));
    f.insert("is_deleted".into(), json!(r.deleted_ms.is_some()));
    f.entry("creator_user_id").or_insert(json!(1000001));
    match object {
        "persons" => {
            if !f.contains_key("name") {
                let name =
                    [f.get("first_name"), f.get("last_name")].into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
                f.insert("name".into(), json!(name));
            }
            // Phones are a list of {value, label, primary}; a bare string is taken as one.
            if let Some(Value::String(s)) = f.get("phones").cloned() {
                f.insert("phones".into(), json!([{"value": s, "label": "work", "primary": true}]));
            }
        }
        "activities" => {
            // The primary participant is the person; else (merged away) the first linked.
            let primary = f
                .get("participants")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().find(|p| p.get("primary") == Some(&json!(true))))
                .and_then(|p| p.get("person_id").and_then(Value::as_u64))
                .map(|p| p.to_string())
                .filter(|p| r.associations.contains(p));
            if let Some(p) = primary.as_ref().or_else(|| r.associations.iter().next()) {
                let pid: u64 = p.parse().unwrap_or(0);
                f.insert("person_id".into(), json!(pid));
                let mut parts = f.get("participants").and_then(Value::as_array).cloned().unwrap_or_default();
                if !parts.iter().any(|x| x.get("person_id").and_then(Value::as_u64) == Some(pid)) {
                    parts.retain(|x| x.get("primary") != Some(&json!(true)));
                    parts.insert(0, json!({"person_id": pid, "primary": true}));
                    f.insert("participants".into(), json!(parts));
                }
            }
        }
        _ => {}
    }
}

impl CrmApi for Pipedrive {
    const CRM: Crm = Crm::Pipedrive;

    fn credential(req: &Request) -> Option<String> {
        if let Some(t) = req.headers().get("x-api-token").and_then(|v| v.to_str().ok()) {
            return Some(t.to_string());
        }
        if let Some(t) = gate::auth_scheme(req, "Bearer") {
            return Some(t);
        }
        let q = req.uri().query()?;
        q.split('&').find_map(|kv| kv.strip_prefix("api_token=")).map(str::to_string)
    }

    fn auth_failure(_f: AuthFailure) -> Response {
        gate::json(401, json!({"success": false, "error": "unauthorized access", "errorCode": 401, "error_info": errors::INFO}))
    }

    fn class(method: &Method, route: &str, _path: &str) -> Class {
        if route.ends_with("/search") {
            return Class::Search;
        }
        match *method {
            Method::GET if !route.ends_with("{id}") => Class::List,
            _ => Class::of_method(method),
        }
    }

    fn permission(class: Class, route: &str, _path: &str) -> Option<&'static str> {
        if route.contains("/users") {
            return Some("users:read");
        }
        if route.contains("/deals") {
            return Some(if matches!(class, Class::Read | Class::List) { "deals:read" } else { "deals:full" });
        }
        let persons = route.contains("/persons") || route.contains("/personFields");
        Some(match (persons, class) {
            (_, Class::Search) => "search:read",
            (false, Class::Read | Class::List | Class::Meta) => "activities:read",
            (false, _) => "activities:full",
            (true, Class::Read | Class::List | Class::Meta) => "contacts:read",
            (true, _) => "contacts:full",
        })
    }

    fn permission_denied(_permission: &str) -> Response {
        errors::error(403, "You do not have permissions to perform this action", Some("ERR_FORBIDDEN"))
    }

    fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
        limits::admit(acct, caller, class, now)
    }

    fn finish(acct: &mut Account, caller: &Caller, _class: Class, _charge: u64, now: i64, headers: &mut HeaderMap) {
        limits::headers(acct, caller, now, headers)
    }

    fn fault(kind: FaultKind, _acct: &mut Account, _caller: &Caller, _class: Class, _now: i64) -> Response {
        match kind {
            FaultKind::Throttle => errors::too_many(2),
            FaultKind::Status500 => errors::error(500, "Internal server error", None),
            FaultKind::Status503 => errors::error(503, "Service is temporarily unavailable (maintenance)", None),
            other => gate::gateway_error(other.status()),
        }
    }
}

pub fn router(sim: SharedSim) -> Router {
    let api = Router::new()
        .route("/api/v2/activities", post(activities::create).get(activities::list))
        .route("/api/v2/activities/{id}", get(activities::read).patch(activities::update).delete(activities::delete))
        .route("/api/v2/deals", get(activities::list_deals))
        .route("/api/v2/persons", post(activities::create_person).get(persons::list))
        .route("/api/v2/personFields", get(persons::fields))
        .route("/api/v1/personFields", post(persons::create_field))
        .route("/api/v2/persons/search", get(activities::search_persons))
        .route("/api/v2/persons/{id}", get(activities::read_person).patch(persons::update))
        .route("/api/v1/users/find", get(activities::find_users))
        .route("/api/v1/users/me", get(activities::me))
        .route("/api/v1/activities", any(activities::v1_gone))
        .route("/api/v1/activities/{id}", any(activities::v1_gone))
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), gate::gate::<Pipedrive>));
    let oauth = Router::new().route("/oauth/token", post(oauth::token));
    api.merge(oauth).with_state(sim)
}
