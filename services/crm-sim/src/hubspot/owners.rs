//! `GET /crm/v3/owners` (CRM-APIS-ACTIVITIES §3.1): the portal's owners, filtered by one
//! `email` (matched case-insensitively; HubSpot's matching is unverified), `archived`
//! choosing deactivated owners instead of active ones, paged by `limit`/`after`. An owner's
//! `id` is what `hubspot_owner_id` takes; its `userId` is another number.

use crate::clock::iso_ms;
use crate::gate::json;
use crate::state::{Caller, Record, SharedSim};
use crate::users;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;

fn render(r: &Record) -> Value {
    let f = |k: &str| r.fields.get(k).cloned().unwrap_or(Value::Null);
    let user = f("userId");
    json!({
        "id": r.id, "email": f("email"), "firstName": f("firstName"), "lastName": f("lastName"),
        "userId": user, "userIdIncludingInactive": user, "type": r.fields.get("type").cloned().unwrap_or(json!("PERSON")),
        "teams": [], "archived": !users::is_active(crate::Crm::Hubspot, r),
        "createdAt": iso_ms(r.created_ms), "updatedAt": iso_ms(r.updated_ms)
    })
}

pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let archived = q.get("archived").is_some_and(|v| v == "true");
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).clamp(1, 500);
    let after = q.get("after").and_then(|a| a.parse::<usize>().ok()).unwrap_or(0);
    let email = q.get("email").map(|e| e.trim().to_string()).filter(|e| !e.is_empty());
    sim.with(&caller, |acct, _| {
        let hits: Vec<Value> = users::all(acct)
            .into_iter()
            .filter(|r| users::is_active(acct.crm, r) != archived)
            .filter(|r| email.as_deref().is_none_or(|e| users::email(acct.crm, r).is_some_and(|m| m.trim().eq_ignore_ascii_case(e))))
            .skip(after)
            .take(limit + 1)
            .map(render)
            .collect();
        let more = hits.len() > limit;
        let results: Vec<Value> = hits.into_iter().take(limit).collect();
        let mut body = json!({"results": results});
        if more {
            body["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        json(200, body)
    })
}
