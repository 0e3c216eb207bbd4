//! Access and refresh tokens, shared by the admin API (which issues them) and each CRM's OAuth
//! refresh endpoint (which mints new access tokens from a refresh token).

use crate::state::{Crm, RefreshToken, Token, TokenKind, World};

pub fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Zoho: a refresh token mints at most 10 access tokens per 10 minutes.
pub const ZOHO_MINTS_PER_WINDOW: usize = 10;
pub const ZOHO_MINT_WINDOW_MS: i64 = 600_000;

#[derive(Debug, PartialEq, Eq)]
pub enum MintError {
    UnknownRefreshToken,
    BadClient,
    Throttled,
}

pub struct Minted {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in_s: i64,
    pub account: String,
    pub app: String,
}

/// Mints an access token from a refresh token after checking the client credentials (`None`
/// where the CRM does not require them).
pub fn refresh(
    w: &mut World,
    crm: Crm,
    refresh_token: &str,
    client: Option<(&str, &str)>,
    now: i64,
    prefix: &str,
) -> Result<Minted, MintError> {
    let rt = w.refresh_tokens.get_mut(refresh_token).filter(|r| r.crm == crm && !r.revoked).ok_or(MintError::UnknownRefreshToken)?;
    if let Some((id, secret)) = client {
        if id != rt.client_id || secret != rt.client_secret {
            return Err(MintError::BadClient);
        }
    }
    if crm == Crm::Zoho {
        while rt.minted.front().is_some_and(|&t| t + ZOHO_MINT_WINDOW_MS <= now) {
            rt.minted.pop_front();
        }
        if rt.minted.len() >= ZOHO_MINTS_PER_WINDOW {
            return Err(MintError::Throttled);
        }
    }
    rt.minted.push_back(now);
    let (account, app, ttl) = (rt.account.clone(), rt.app.clone(), rt.access_ttl_s);
    if !w.accounts.contains_key(&(crm, account.clone())) {
        return Err(MintError::UnknownRefreshToken);
    }
    // Rotation: the old refresh token stops working at once; a client that loses the new
    // one (a process that dies before storing it) can no longer refresh.
    let mut refresh_out = refresh_token.to_string();
    if rt.rotate {
        rt.revoked = true;
        let next = crate::state::RefreshToken { revoked: false, minted: rt.minted.clone(), ..rt.clone() };
        refresh_out = random_token("rt-");
        w.refresh_tokens.insert(refresh_out.clone(), next);
    }
    let access = random_token(prefix);
    w.tokens.insert(
        access.clone(),
        Token {
            crm,
            account: account.clone(),
            kind: TokenKind::Oauth,
            app: app.clone(),
            issued_ms: now,
            expires_at_ms: Some(now + ttl * 1000),
            revoked: false,
            refresh_token: Some(refresh_token.to_string()),
        },
    );
    Ok(Minted { access_token: access, refresh_token: refresh_out, expires_in_s: ttl, account, app })
}

pub fn new_refresh_token(w: &mut World, crm: Crm, account: &str, client_id: &str, client_secret: &str, app: &str, ttl_s: i64) -> String {
    let rt = random_token("rt-");
    w.refresh_tokens.insert(
        rt.clone(),
        RefreshToken {
            crm,
            account: account.to_string(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            app: app.into(),
            revoked: false,
            access_ttl_s: ttl_s,
            minted: Default::default(),
            rotate: rotates_by_default(crm),
        },
    );
    rt
}

/// Whether a CRM rotates refresh tokens unless told otherwise: Salesforce (with its connected
/// app's rotation on, as its help recommends) and Pipedrive (unverified: the harsher case).
pub fn rotates_by_default(crm: Crm) -> bool {
    matches!(crm, Crm::Salesforce | Crm::Pipedrive)
}

/// A token endpoint's answer: a configured fault if one fires, else `mint`'s; counted.
pub async fn answer(sim: &crate::state::SharedSim, crm: Crm, mint: impl FnOnce() -> axum::response::Response) -> axum::response::Response {
    if let Some(resp) = fault(sim, crm).await {
        return resp;
    }
    let resp = mint();
    count(sim, crm, resp.status().as_u16());
    resp
}

/// A fault configured on `crm`'s token endpoint, if one fires now: after its delay, the
/// answer to give instead of minting (None: go on and mint, after a `latency` fault's wait).
async fn fault(sim: &crate::state::SharedSim, crm: Crm) -> Option<axum::response::Response> {
    use crate::faults::FaultKind;
    use rand::SeedableRng;
    let firing = {
        let mut w = sim.lock();
        let w = &mut *w;
        let rng = w.token_rng.get_or_insert_with(|| rand::rngs::StdRng::seed_from_u64(7));
        let rules = w.token_faults.entry(crm).or_default();
        crate::faults::pick(rules, "token", rng)
    }?;
    tokio::time::sleep(std::time::Duration::from_millis(firing.latency_ms)).await;
    let resp = match firing.kind {
        FaultKind::Latency => return None,
        FaultKind::Throttle => throttled_mint(crm),
        FaultKind::Garbled => axum::response::IntoResponse::into_response(axum::Json(serde_json::json!({}))),
        other => crate::gate::gateway_error(other.status()),
    };
    count(sim, crm, resp.status().as_u16());
    Some(resp)
}

/// Counts a token endpoint's answer.
pub fn count(sim: &crate::state::SharedSim, crm: Crm, status: u16) {
    *sim.lock().token_answers.entry(crm).or_default().entry(status).or_default() += 1;
}

/// Each CRM's answer when minting is throttled.
pub fn throttled_mint(crm: Crm) -> axum::response::Response {
    use serde_json::json;
    match crm {
        // Zoho's cap of 10 mints per 10 minutes per refresh token (CRM-APIS §3.1).
        // HTTP 200, "Access Denied" (Zoho CRM v8 "Token Validity"; Kaizen #43).
        Crm::Zoho => crate::gate::json(
            200,
            json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time."}),
        ),
        Crm::Hubspot => crate::gate::json(
            429,
            json!({"status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT", "correlationId": uuid::Uuid::new_v4().to_string()}),
        ),
        Crm::Pipedrive => crate::gate::json(429, json!({"success": false, "error": "Too many requests", "errorCode": 429})),
        _ => crate::gate::json(429, json!({"error": "rate_limit_exceeded", "error_description": "too many token requests"})),
    }
}
