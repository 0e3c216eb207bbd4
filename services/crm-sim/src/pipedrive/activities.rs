//! Activities and persons. An activity's person is its primary participant; activities have no
//! unique fields, so a repeated create makes a second activity (CRM-APIS §4.6). Meetings carry
//! `attendees` (calendar guests, external emails too), read back only when asked for with
//! `include_fields=attendees`, and a v2 `location` is an object (CRM-APIS-ACTIVITIES §2.4).

use super::errors;
use super::{derive, pd_time, ACTIVITY_TYPES};
use crate::gate::json;
use crate::state::{digits, Account, Caller, Record, SharedSim};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

const WRITABLE: &[&str] = &[
    "subject",
    "type",
    "owner_id",
    "deal_id",
    "lead_id",
    "org_id",
    "project_id",
    "due_date",
    "due_time",
    "duration",
    "busy",
    "done",
    "location",
    "participants",
    "attendees",
    "public_description",
    "priority",
    "note",
];

fn parse(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(errors::validation("body must be a JSON object")),
    }
}

fn hhmm(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5 && b[2] == b':' && s[..2].parse::<u32>().is_ok_and(|h| h < 24) && s[3..].parse::<u32>().is_ok_and(|m| m < 60)
}

/// Validates an activity body; answers the participant person ids (primary first).
/// The validated fields and the participants' person ids.
type Validated = (Map<String, Value>, Option<Vec<String>>);

fn validate(acct: &mut Account, body: &Map<String, Value>) -> Result<Validated, Response> {
    let mut out = Map::new();
    let mut persons = None;
    for (k, v) in body {
        if !WRITABLE.contains(&k.as_str()) && !acct.fields("activities").is_some_and(|f| f.get(k).is_some_and(|d| d.custom)) {
            return Err(errors::validation(&format!("Parameter '{k}' is not allowed for this request")));
        }
        let ok = match k.as_str() {
            _ if v.is_null() => true,
            "subject" | "public_description" | "note" | "lead_id" => v.is_string(),
            "type" => v.as_str().is_some_and(|t| ACTIVITY_TYPES.contains(&t)),
            "owner_id" | "deal_id" | "org_id" | "project_id" | "priority" => v.is_u64(),
            "due_date" => v.as_str().is_some_and(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()),
            "due_time" | "duration" => v.as_str().is_some_and(hhmm),
            "busy" | "done" => v.is_boolean(),
            // v2: an object with the address as `value` (v1 took a string).
            "location" => v.as_object().is_some_and(|o| o.get("value").is_none_or(Value::is_string)),
            "attendees" => {
                let Some(list) = v.as_array() else { return Err(errors::validation("attendees must be an array")) };
                for a in list {
                    if !a.get("email").and_then(Value::as_str).is_some_and(|e| e.contains('@')) {
                        return Err(errors::validation("attendees[].email must be an email address"));
                    }
                    // The documented status values are not known ([U]): the harsher model
                    // takes only the calendar's usual four.
                    if a.get("status").is_some_and(|s| !s.as_str().is_some_and(|s| ATTENDEE_STATUSES.contains(&s))) {
                        return Err(errors::validation(&format!("attendees[].status must be one of {ATTENDEE_STATUSES:?}")));
                    }
                }
                true
            }
            "participants" => {
                let Some(list) = v.as_array() else { return Err(errors::validation("participants must be an array")) };
                let mut ids = vec![];
                for p in list {
                    let Some(pid) = p.get("person_id").and_then(Value::as_u64) else {
                        return Err(errors::validation("participants[].person_id must be an integer"));
                    };
                    match acct.table("persons").get(&pid.to_string()) {
                        Some(r) if r.live() => {}
                        _ => return Err(errors::error(400, &format!("Person with id {pid} not found"), Some("ERR_INVALID_INPUT"))),
                    }
                    if p.get("primary").and_then(Value::as_bool) == Some(true) {
                        ids.insert(0, pid.to_string());
                    } else {
                        ids.push(pid.to_string());
                    }
                }
                persons = Some(ids);
                true
            }
            _ => true,
        };
        if !ok {
            return Err(errors::validation(&format!("{k}: invalid value {v}")));
        }
        // A deal or organisation named must exist and not be deleted (the harsher case).
        for (key, table, noun) in [("deal_id", "deals", "Deal"), ("org_id", "organizations", "Organization")] {
            if k == key {
                if let Some(id) = v.as_u64() {
                    if !acct.objects.get(table).and_then(|t| t.get(&id.to_string())).is_some_and(Record::live) {
                        return Err(errors::error(400, &format!("{noun} with id {id} not found"), Some("ERR_INVALID_INPUT")));
                    }
                }
            }
        }
        // The owner must be an active user of the company (unverified: the harsher case).
        if k == "owner_id" {
            if let Some(uid) = v.as_u64() {
                if crate::users::check_owner(acct, &uid.to_string()).is_err() {
                    return Err(errors::error(400, &format!("User with id {uid} not found or not active"), Some("ERR_INVALID_INPUT")));
                }
            }
        }
        out.insert(k.clone(), v.clone());
    }
    if let Some(t) = out.get("type").and_then(Value::as_str) {
        if !ACTIVITY_TYPES.contains(&t) {
            return Err(errors::validation(&format!("type: activity type '{t}' does not exist")));
        }
    }
    Ok((out, persons))
}

fn ok(data: Value) -> Response {
    json(200, json!({"success": true, "data": data}))
}

/// Guests' answers an attendee may carry.
pub const ATTENDEE_STATUSES: &[&str] = &["accepted", "declined", "tentative", "noreply"];

/// An activity as v2 answers: `attendees` only when `include_fields=attendees` asked for it.
fn render_with(r: &Record, attendees: bool) -> Value {
    let mut f = r.fields.clone();
    if !attendees {
        f.remove("attendees");
    }
    Value::Object(f)
}

fn render(r: &Record) -> Value {
    render_with(r, false)
}

fn wants_attendees(q: &HashMap<String, String>) -> bool {
    q.get("include_fields").is_some_and(|f| f.split(',').any(|x| x.trim() == "attendees"))
}

pub async fn create(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        let (mut fields, persons) = match validate(acct, &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let ty = fields.get("type").and_then(Value::as_str).unwrap_or("task").to_string();
        fields.insert("type".into(), json!(ty));
        fields.entry("subject").or_insert(json!(format!("{}{}", ty[..1].to_uppercase(), &ty[1..])));
        fields.entry("owner_id").or_insert(json!(acct.owner_id.parse::<u64>().unwrap_or(1)));
        fields.entry("done").or_insert(json!(false));
        fields.entry("busy").or_insert(json!(false));
        if fields.get("done") == Some(&json!(true)) {
            fields.insert("marked_as_done_time".into(), json!(pd_time(now)));
        }
        let id = acct.next_seq().to_string();
        let lag = acct.search_lag_ms;
        let mut r = Record {
            id,
            fields,
            created_ms: now,
            updated_ms: now,
            deleted_ms: None,
            indexed_at_ms: now + lag,
            associations: Default::default(),
            merged_into: None,
        };
        // Every participant is linked; person_id is the primary one.
        r.associations.extend(persons.into_iter().flatten());
        derive("activities", &mut r);
        acct.table("activities").insert(r.clone());
        ok(render(&r))
    })
}

fn live_activity<'a>(acct: &'a mut Account, id: &str) -> Option<&'a mut Record> {
    acct.table("activities").get_mut(id).filter(|r| r.live())
}

pub async fn read(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let attendees = wants_attendees(&q);
    sim.with(&caller, |acct, _| match live_activity(acct, &id) {
        Some(r) => ok(render_with(r, attendees)),
        None => errors::not_found("Activity"),
    })
}

pub async fn update(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(id): Path<String>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        if live_activity(acct, &id).is_none() {
            return errors::not_found("Activity");
        }
        let (fields, persons) = match validate(acct, &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let lag = acct.search_lag_ms;
        let r = live_activity(acct, &id).unwrap();
        if fields.get("done") == Some(&json!(true)) && r.fields.get("done") != Some(&json!(true)) {
            r.fields.insert("marked_as_done_time".into(), json!(pd_time(now)));
        }
        r.fields.extend(fields);
        // The participants given replace the list (the harsher reading: a client that
        // sends only new ones drops the rest).
        if let Some(p) = persons {
            r.associations = p.into_iter().collect();
        }
        r.updated_ms = now;
        r.indexed_at_ms = now + lag;
        derive("activities", r);
        let out = render(r);
        acct.table("activities").reindex(&id);
        ok(out)
    })
}

/// Soft delete: the activity is kept (is_deleted) for 30 days, then removed.
pub async fn delete(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    sim.with(&caller, |acct, now| match live_activity(acct, &id) {
        Some(r) => {
            r.deleted_ms = Some(now);
            r.updated_ms = now;
            derive("activities", r);
            ok(json!({"id": id.parse::<u64>().unwrap_or(0)}))
        }
        None => errors::not_found("Activity"),
    })
}

fn parse_since(s: &str) -> Result<i64, Response> {
    if s.contains('.') {
        return Err(errors::validation("updated_since must be RFC 3339 without fractional seconds"));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| errors::validation("updated_since must be an RFC 3339 date-time"))
}

pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        _ => return errors::validation("limit must be between 1 and 500"),
    };
    let since = match q.get("updated_since").map(|s| parse_since(s)).transpose() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let until = match q.get("updated_until").map(|s| parse_since(s)).transpose() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let start: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let ids: Option<Vec<String>> = q.get("ids").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let num = |k: &str| q.get(k).cloned();
    let (person, owner, deal, done) = (num("person_id"), num("owner_id"), num("deal_id"), q.get("done").map(|d| d == "true" || d == "1"));
    let desc = q.get("sort_direction").is_some_and(|d| d == "desc");
    let attendees = wants_attendees(&q);
    sim.with(&caller, |acct, _| {
        let field_is =
            |r: &Record, k: &str, v: &Option<String>| v.as_ref().is_none_or(|v| r.fields.get(k).map(|x| x.to_string()) == Some(v.clone()));
        let mut hits: Vec<&Record> = acct
            .table("activities")
            .live()
            .filter(|r| ids.as_ref().is_none_or(|ids| ids.contains(&r.id)))
            // `person_id` means the activity's *primary* participant (the v2 reference), not any.
            .filter(|r| person.as_ref().is_none_or(|p| field_is(r, "person_id", &Some(p.clone()))))
            .filter(|r| field_is(r, "owner_id", &owner) && field_is(r, "deal_id", &deal))
            .filter(|r| done.is_none_or(|d| r.fields.get("done") == Some(&json!(d))))
            .filter(|r| since.is_none_or(|s| r.updated_ms / 1000 >= s / 1000) && until.is_none_or(|u| r.updated_ms / 1000 < u / 1000))
            .collect();
        if desc {
            hits.reverse();
        }
        let page: Vec<Value> = hits.iter().skip(start).take(limit).map(|r| render_with(r, attendees)).collect();
        let next = (start + limit < hits.len()).then(|| (start + limit).to_string());
        json(200, json!({"success": true, "data": page, "additional_data": {"next_cursor": next}}))
    })
}

pub async fn create_person(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, body: Bytes) -> Response {
    let body = match parse(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    sim.with(&caller, |acct, now| {
        if let Err(r) = super::persons::check(acct, &body, true) {
            return r;
        }
        let id = acct.next_seq().to_string();
        let mut r = Record {
            id,
            fields: super::persons::new_fields(&body),
            created_ms: now,
            updated_ms: now,
            deleted_ms: None,
            indexed_at_ms: now + acct.search_lag_ms,
            associations: Default::default(),
            merged_into: None,
        };
        derive("persons", &mut r);
        acct.table("persons").insert(r.clone());
        ok(render(&r))
    })
}

pub async fn read_person(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>, Path(id): Path<String>) -> Response {
    sim.with(&caller, |acct, _| match acct.table("persons").get(&id).filter(|r| r.live()) {
        Some(r) => ok(render(r)),
        None => errors::not_found("Person"),
    })
}

fn phone_values(r: &Record) -> Vec<String> {
    r.fields
        .get("phones")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.get("value").and_then(Value::as_str).or(p.as_str()).map(str::to_string)).collect())
        .unwrap_or_default()
}

fn email_values(r: &Record) -> Vec<String> {
    r.fields
        .get("emails")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.get("value").and_then(Value::as_str).or(p.as_str()).map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Person search. Phone fields match on digits without `exact_match` (a digits term found
/// inside the stored number's digits); with `exact_match` the whole value must be equal,
/// case-insensitively, as typed.
pub async fn search_persons(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let term = q.get("term").cloned().unwrap_or_default();
    let exact = q.get("exact_match").is_some_and(|e| e == "true" || e == "1");
    if term.chars().count() < if exact { 1 } else { 2 } {
        return errors::validation("term must be at least 2 characters (1 with exact_match)");
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        _ => return errors::validation("limit must be between 1 and 500"),
    };
    let start: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let fields: Vec<String> = q
        .get("fields")
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|| vec!["name".into(), "email".into(), "phone".into(), "notes".into(), "custom_fields".into()]);
    let t = term.to_lowercase();
    let td = digits(&term);
    sim.with(&caller, |acct, now| {
        let mut hits = vec![];
        for r in acct.table("persons").live().filter(|r| r.indexed_at_ms <= now) {
            let mut score: f64 = 0.0;
            if fields.iter().any(|f| f == "phone") {
                for p in phone_values(r) {
                    let m = if exact { p.to_lowercase() == t } else { !td.is_empty() && digits(&p).contains(&td) };
                    if m {
                        score = score.max(if digits(&p) == td { 1.0 } else { 0.5 });
                    }
                }
            }
            if fields.iter().any(|f| f == "name") {
                let n = r.str_field("name").unwrap_or_default().to_lowercase();
                if (exact && n == t) || (!exact && n.contains(&t)) {
                    score = score.max(0.8);
                }
            }
            if fields.iter().any(|f| f == "email") && email_values(r).iter().any(|e| if exact { e.to_lowercase() == t } else { e.to_lowercase().contains(&t) }) {
                score = score.max(0.9);
            }
            if score > 0.0 {
                hits.push(json!({"result_score": score, "item": {
                    "id": r.fields.get("id"), "type": "person", "name": r.fields.get("name"), "phones": phone_values(r), "emails": email_values(r),
                    "visible_to": r.fields.get("visible_to").cloned().unwrap_or(json!(3)), "owner": {"id": r.fields.get("owner_id")},
                    "organization": Value::Null, "custom_fields": [], "notes": []}}));
            }
        }
        let total = hits.len();
        let items: Vec<Value> = hits.into_iter().skip(start).take(limit).collect();
        let next = (start + limit < total).then(|| (start + limit).to_string());
        json(200, json!({"success": true, "data": {"items": items}, "additional_data": {"next_cursor": next}}))
    })
}

/// v1 activities are retired (CRM-APIS §4: out of support since 2026-08-01).
pub async fn v1_gone() -> Response {
    errors::error(410, "This endpoint has been retired. Use /api/v2/activities instead.", Some("ERR_GONE"))
}

/// `GET /v1/users/find?term=&search_by_email=1` (CRM-APIS-ACTIVITIES §3.4): users whose
/// email (with `search_by_email=1`) or name contains the term, case-insensitively; `data`
/// is null when none does. v2 has no users find.
pub async fn find_users(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(term) = q.get("term").map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()) else {
        return errors::error(400, "Term is missing", Some("ERR_INVALID_INPUT"));
    };
    let by_email = q.get("search_by_email").is_some_and(|v| v == "1");
    sim.with(&caller, |acct, _| {
        let crm = acct.crm;
        let hits: Vec<Value> = crate::users::all(acct)
            .into_iter()
            .filter(|r| {
                let hay = if by_email { crate::users::email(crm, r) } else { r.fields.get("name").and_then(Value::as_str) };
                hay.is_some_and(|h| h.to_lowercase().contains(&term))
            })
            .map(|r| user_json(r, &acct.owner_id))
            .collect();
        json(200, json!({"success": true, "data": if hits.is_empty() { Value::Null } else { Value::Array(hits) }}))
    })
}

fn user_json(r: &crate::state::Record, me: &str) -> Value {
    json!({
        "id": r.id.parse::<u64>().unwrap_or(0), "name": r.fields.get("name").cloned().unwrap_or(Value::Null),
        "email": r.fields.get("email").cloned().unwrap_or(Value::Null),
        "active_flag": r.fields.get("active_flag").and_then(Value::as_bool).unwrap_or(true),
        "is_deleted": r.fields.get("is_deleted").and_then(Value::as_bool).unwrap_or(false),
        "is_admin": r.fields.get("is_admin").and_then(Value::as_bool).unwrap_or(false),
        "activated": true, "role_id": 1, "timezone_name": "Europe/Tallinn", "is_you": r.id == me, "access": []
    })
}

/// `GET /v1/users/me`: the user the token is (the account's API user).
pub async fn me(State(sim): State<SharedSim>, Extension(caller): Extension<Caller>) -> Response {
    sim.with(&caller, |acct, _| {
        let users = crate::users::all(acct);
        match users.iter().find(|r| r.id == acct.owner_id) {
            Some(r) => json(200, json!({"success": true, "data": user_json(r, &acct.owner_id)})),
            None => json(
                200,
                json!({"success": true, "data": {"id": acct.owner_id.parse::<u64>().unwrap_or(1), "name": "API user", "email": format!("api@{}.example", acct.id),
                       "active_flag": true, "is_deleted": false, "is_admin": true, "activated": true, "is_you": true, "access": []}}),
            ),
        }
    })
}

/// `GET /api/v2/deals` (CRM-APIS-ACTIVITIES §4.4): filtered by `person_id` (the deal's
/// person) and `status` (`open`, `won`, `lost`, `deleted`; a comma list), sorted by
/// `update_time` or `id`, paged by cursor.
pub async fn list_deals(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=500).contains(&l) => l,
        _ => return errors::validation("limit must be between 1 and 500"),
    };
    let statuses: Option<Vec<String>> = q.get("status").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    if let Some(bad) = statuses.iter().flatten().find(|s| !["open", "won", "lost", "deleted"].contains(&s.as_str())) {
        return errors::validation(&format!("status: invalid value {bad}"));
    }
    let person = q.get("person_id").cloned();
    let start: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let by_update = q.get("sort_by").is_some_and(|s| s == "update_time");
    let desc = q.get("sort_direction").is_some_and(|d| d == "desc");
    sim.with(&caller, |acct, _| {
        let mut hits: Vec<&Record> = acct
            .table("deals")
            .iter()
            .filter(|r| {
                let status = if r.live() { r.str_field("status").unwrap_or("open") } else { "deleted" };
                statuses.as_ref().map_or(r.live(), |s| s.iter().any(|x| x == status))
            })
            .filter(|r| person.as_ref().is_none_or(|p| r.fields.get("person_id").map(|v| v.to_string()) == Some(p.clone())))
            .collect();
        if by_update {
            hits.sort_by_key(|r| (r.updated_ms, r.id.parse::<u64>().unwrap_or(0)));
        }
        if desc {
            hits.reverse();
        }
        let total = hits.len();
        let page: Vec<Value> = hits.iter().skip(start).take(limit).map(|r| Value::Object(r.fields.clone())).collect();
        let next = (start + limit < total).then(|| (start + limit).to_string());
        json(200, json!({"success": true, "data": page, "additional_data": {"next_cursor": next}}))
    })
}
