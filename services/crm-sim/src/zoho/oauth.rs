//! `POST /oauth/v2/token?grant_type=refresh_token&refresh_token=&client_id=&client_secret=`
//! (parameters in the query string; a form body is accepted too). A refresh token mints at most
//! ten access tokens per ten minutes. A bad refresh token answers HTTP 200 with
//! `{"error":"invalid_code"}` (CRM-APIS §3.1, unverified).

use crate::gate::json;
use crate::state::{Crm, SharedSim};
use crate::tokens::{self, MintError};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::json;
use std::collections::HashMap;

pub async fn token(State(sim): State<SharedSim>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    tokens::answer(&sim, Crm::Zoho, || mint(&sim, q, body)).await
}

fn mint(sim: &SharedSim, mut q: HashMap<String, String>, body: Bytes) -> Response {
    if let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
        for (k, v) in form {
            q.entry(k).or_insert(v);
        }
    }
    let now = sim.clock.now_ms();
    if q.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json(200, json!({"error": "unsupported_grant_type"}));
    }
    let client = (q.get("client_id").map(String::as_str).unwrap_or(""), q.get("client_secret").map(String::as_str).unwrap_or(""));
    let api_domain = sim.url(Crm::Zoho);
    let mut w = sim.lock();
    match tokens::refresh(&mut w, Crm::Zoho, q.get("refresh_token").map(String::as_str).unwrap_or(""), Some(client), now, "1000.") {
        Ok(m) => json(
            200,
            json!({"access_token": m.access_token, "api_domain": api_domain, "token_type": "Bearer", "expires_in": m.expires_in_s}),
        ),
        // HTTP 200 with "Access Denied", as Zoho documents (v8 "Token Validity", Kaizen #43).
        Err(MintError::Throttled) => tokens::throttled_mint(Crm::Zoho),
        Err(MintError::BadClient) => json(200, json!({"error": "invalid_client"})),
        Err(MintError::UnknownRefreshToken) => json(200, json!({"error": "invalid_code"})),
    }
}
