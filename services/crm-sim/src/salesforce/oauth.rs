//! `POST /services/oauth2/token` with `grant_type=refresh_token` (form-encoded). No
//! `expires_in` in the answer: the session lasts the org's timeout (CRM-APIS §2.1).

use crate::gate::json;
use crate::state::{Crm, SharedSim};
use crate::tokens::{self, MintError};
use axum::extract::State;
use axum::response::Response;
use axum::Form;
use serde_json::json;
use std::collections::HashMap;

pub async fn token(State(sim): State<SharedSim>, Form(f): Form<HashMap<String, String>>) -> Response {
    tokens::answer(&sim, Crm::Salesforce, || mint(&sim, f)).await
}

fn mint(sim: &SharedSim, f: HashMap<String, String>) -> Response {
    let now = sim.clock.now_ms();
    if f.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json(400, json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}));
    }
    let client = f.get("client_id").map(|id| (id.as_str(), f.get("client_secret").map(String::as_str).unwrap_or("")));
    let instance = sim.url(Crm::Salesforce);
    let mut w = sim.lock();
    let asked = f.get("refresh_token").map(String::as_str).unwrap_or("");
    match tokens::refresh(&mut w, Crm::Salesforce, asked, client, now, "00D!sf-") {
        Ok(m) => {
            let mut body = json!({"access_token": m.access_token, "instance_url": instance, "id": format!("{instance}/id/00D000000000001/005000000000001"),
                   "token_type": "Bearer", "issued_at": now.to_string(), "signature": "c2ltLXNpZ25hdHVyZQ==", "scope": "api refresh_token"});
            // With rotation on, the answer carries the new refresh token (the old one is dead).
            if m.refresh_token != asked {
                body["refresh_token"] = json!(m.refresh_token);
            }
            json(200, body)
        }
        Err(MintError::BadClient) => json(400, json!({"error": "invalid_client", "error_description": "invalid client credentials"})),
        Err(_) => json(400, json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})),
    }
}
