//! `POST /oauth/v1/token` (refresh grant, form-encoded) and `GET /oauth/v1/access-tokens/{t}`.

use crate::gate::json;
use crate::state::{Crm, SharedSim};
use crate::tokens::{self, MintError};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use serde_json::json;
use std::collections::HashMap;

pub async fn token(State(sim): State<SharedSim>, Form(f): Form<HashMap<String, String>>) -> Response {
    tokens::answer(&sim, Crm::Hubspot, || mint(&sim, f)).await
}

fn mint(sim: &SharedSim, f: HashMap<String, String>) -> Response {
    let now = sim.clock.now_ms();
    if f.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return json(
            400,
            json!({"status": "BAD_GRANT_TYPE", "message": "grant_type must be refresh_token in this simulator", "correlationId": uuid::Uuid::new_v4().to_string()}),
        );
    }
    let client = (f.get("client_id").map(String::as_str).unwrap_or(""), f.get("client_secret").map(String::as_str).unwrap_or(""));
    let mut w = sim.lock();
    match tokens::refresh(&mut w, Crm::Hubspot, f.get("refresh_token").map(String::as_str).unwrap_or(""), Some(client), now, "hs-oauth-") {
        Ok(m) => json(
            200,
            json!({"token_type": "bearer", "refresh_token": m.refresh_token, "access_token": m.access_token, "expires_in": m.expires_in_s, "hub_id": m.account, "token_use": "access"}),
        ),
        Err(MintError::BadClient) => json(
            400,
            json!({"status": "BAD_CLIENT_ID", "message": "missing or unknown client id", "correlationId": uuid::Uuid::new_v4().to_string()}),
        ),
        Err(_) => json(
            400,
            json!({"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token", "correlationId": uuid::Uuid::new_v4().to_string()}),
        ),
    }
}

pub async fn introspect(State(sim): State<SharedSim>, Path(t): Path<String>) -> Response {
    let now = sim.clock.now_ms();
    let w = sim.lock();
    match w.tokens.get(&t).filter(|tok| tok.crm == Crm::Hubspot && !tok.revoked) {
        Some(tok) => json(
            200,
            json!({"token": t, "hub_id": tok.account, "app_id": tok.app, "expires_in": tok.expires_at_ms.map(|e| ((e - now) / 1000).max(0)), "token_type": "access", "scopes": ["crm.objects.contacts.read", "crm.objects.contacts.write"]}),
        ),
        None => json(
            404,
            json!({"status": "error", "message": "access token not found", "category": "OBJECT_NOT_FOUND", "correlationId": uuid::Uuid::new_v4().to_string()}),
        ),
    }
}
