//! `GET /crm/v{n}/users` (CRM-APIS-ACTIVITIES §3.3): the org's users by `type`, paged
//! (`per_page` at most 200). There is no email filter: a client pages and matches itself.
//! An empty page is a 204, as Zoho answers empty listings.

use super::errors;
use crate::gate::json;
use crate::state::{Caller, Record, SharedSim};
use crate::users;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;

fn render(r: &Record, active: bool) -> Value {
    let f = |k: &str| r.fields.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": r.id, "email": f("email"), "full_name": f("full_name"), "first_name": f("first_name"), "last_name": f("last_name"),
        "status": if active { "active" } else { "disabled" }, "confirm": r.fields.get("confirm").cloned().unwrap_or(json!(true)),
        "role": {"name": "CEO", "id": "5725767000000026005"}, "profile": {"name": "Administrator", "id": "5725767000000026011"},
        "zuid": f("zuid")
    })
}

pub async fn list(
    State(sim): State<SharedSim>,
    Extension(caller): Extension<Caller>,
    Path(version): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !version.starts_with('v') {
        return errors::error(404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one", json!({}));
    }
    let per_page = q.get("per_page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(200);
    let page = q.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1);
    if per_page == 0 || per_page > 200 || page == 0 {
        return errors::error(400, "INVALID_DATA", "invalid data", json!({"param": if page == 0 { "page" } else { "per_page" }}));
    }
    let kind = q.get("type").map(String::as_str).unwrap_or("AllUsers");
    let want: fn(bool) -> bool = match kind {
        "AllUsers" => |_| true,
        "ActiveUsers" | "ActiveConfirmedUsers" | "ConfirmedUsers" => |a| a,
        "DeactiveUsers" => |a| !a,
        _ => return errors::error(400, "INVALID_DATA", "invalid data", json!({"param": "type"})),
    };
    sim.with(&caller, |acct, _| {
        let crm = acct.crm;
        let all: Vec<Value> = users::all(acct)
            .into_iter()
            .filter(|r| want(users::is_active(crm, r)))
            .skip((page - 1) * per_page)
            .take(per_page + 1)
            .map(|r| render(r, users::is_active(crm, r)))
            .collect();
        if all.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        let more = all.len() > per_page;
        let users: Vec<Value> = all.into_iter().take(per_page).collect();
        let count = users.len();
        json(200, json!({"users": users, "info": {"per_page": per_page, "count": count, "page": page, "more_records": more}}))
    })
}
