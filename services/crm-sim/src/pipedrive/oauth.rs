//! `POST /oauth/token`: client credentials in `Authorization: Basic`, the refresh grant in a
//! form body; the answer carries `api_domain`, where the company's API lives.

use crate::gate::json;
use crate::state::{Crm, SharedSim};
use crate::tokens::{self, MintError};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Form;
use base64::Engine;
use serde_json::json;
use std::collections::HashMap;

pub async fn token(State(sim): State<SharedSim>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Response {
    tokens::answer(&sim, Crm::Pipedrive, || mint(&sim, headers, f)).await
}

fn mint(sim: &SharedSim, headers: HeaderMap, f: HashMap<String, String>) -> Response {
    let now = sim.clock.now_ms();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return json(401, json!({"error": "invalid_client", "error_description": "Client authentication failed"}));
    };
    if f.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json(400, json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}));
    }
    let api_domain = sim.url(Crm::Pipedrive);
    let mut w = sim.lock();
    match tokens::refresh(
        &mut w,
        Crm::Pipedrive,
        f.get("refresh_token").map(String::as_str).unwrap_or(""),
        Some((id, secret)),
        now,
        "pd-oauth-",
    ) {
        Ok(m) => json(
            200,
            json!({"access_token": m.access_token, "token_type": "Bearer", "expires_in": m.expires_in_s, "refresh_token": m.refresh_token, "scope": "base,activities:full,contacts:full,search:read", "api_domain": api_domain}),
        ),
        Err(MintError::BadClient) => json(401, json!({"error": "invalid_client", "error_description": "Client authentication failed"})),
        Err(_) => json(400, json!({"error": "invalid_grant", "error_description": "Invalid grant: refresh_token is invalid"})),
    }
}
