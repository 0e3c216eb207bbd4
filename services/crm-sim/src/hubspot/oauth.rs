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

/// The scopes the simulated HubSpot gates on (`HubSpot::permission(s)`), less those the
/// account revoked: a token's scopes as introspection states them.
fn scopes(w: &mut crate::state::World, account: &str) -> Vec<&'static str> {
    const GATED: [&str; 6] = [
        "crm.objects.contacts.read",
        "crm.objects.contacts.write",
        "crm.objects.owners.read",
        "crm.schemas.contacts.write",
        "sales-email-read",
        "crm.schemas.contacts.read",
    ];
    let revoked = w.account(Crm::Hubspot, account).map(|a| a.revoked.clone()).unwrap_or_default();
    GATED.into_iter().filter(|s| !revoked.contains(*s)).collect()
}

/// A live HubSpot token of `kind` and its scopes, or HubSpot's 404 for an unknown one: what
/// both introspection endpoints look up.
fn introspected(sim: &SharedSim, t: &str, kind: crate::state::TokenKind) -> Result<(crate::state::Token, Vec<&'static str>), Response> {
    let mut w = sim.lock();
    let Some(tok) = w.tokens.get(t).filter(|tok| tok.crm == Crm::Hubspot && !tok.revoked && tok.kind == kind).cloned() else {
        return Err(json(
            404,
            json!({"status": "error", "message": "access token not found", "category": "OBJECT_NOT_FOUND", "correlationId": uuid::Uuid::new_v4().to_string()}),
        ));
    };
    let scopes = scopes(&mut w, &tok.account);
    Ok((tok, scopes))
}

/// `GET /oauth/v1/access-tokens/{token}`: an OAuth access token's metadata.
pub async fn introspect(State(sim): State<SharedSim>, Path(t): Path<String>) -> Response {
    let now = sim.clock.now_ms();
    match introspected(&sim, &t, crate::state::TokenKind::Oauth) {
        Ok((tok, scopes)) => json(
            200,
            json!({"token": t, "hub_id": tok.account, "app_id": tok.app, "expires_in": tok.expires_at_ms.map(|e| ((e - now) / 1000).max(0)), "token_type": "access", "scopes": scopes}),
        ),
        Err(r) => r,
    }
}

/// `POST /oauth/v2/private-apps/get/access-token-info` `{"tokenKey": …}`: a private app's
/// token, its account, app and scopes.
pub async fn private_app_token_info(State(sim): State<SharedSim>, body: axum::body::Bytes) -> Response {
    let Some(t) = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|b| b["tokenKey"].as_str().map(str::to_string)) else {
        return json(400, json!({"status": "error", "message": "tokenKey is required", "category": "VALIDATION_ERROR"}));
    };
    match introspected(&sim, &t, crate::state::TokenKind::Static) {
        Ok((tok, scopes)) => json(200, json!({"userId": 1, "hubId": tok.account, "appId": tok.app, "scopes": scopes})),
        Err(r) => r,
    }
}
