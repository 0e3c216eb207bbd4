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
pub fn refresh(w: &mut World, crm: Crm, refresh_token: &str, client: Option<(&str, &str)>, now: i64, prefix: &str) -> Result<Minted, MintError> {
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
    let access = random_token(prefix);
    w.tokens.insert(
        access.clone(),
        Token { crm, account: account.clone(), kind: TokenKind::Oauth, app: app.clone(), issued_ms: now, expires_at_ms: Some(now + ttl * 1000), revoked: false, refresh_token: Some(refresh_token.to_string()) },
    );
    Ok(Minted { access_token: access, refresh_token: refresh_token.to_string(), expires_in_s: ttl, account, app })
}

pub fn new_refresh_token(w: &mut World, crm: Crm, account: &str, client_id: &str, client_secret: &str, app: &str, ttl_s: i64) -> String {
    let rt = random_token("rt-");
    w.refresh_tokens.insert(
        rt.clone(),
        RefreshToken { crm, account: account.to_string(), client_id: client_id.into(), client_secret: client_secret.into(), app: app.into(), revoked: false, access_ttl_s: ttl_s, minted: Default::default() },
    );
    rt
}
