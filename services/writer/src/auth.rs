//! Credentials for one tenant at one CRM, from the secret TENANTS_CONFIG names: a static
//! token (HubSpot private app, Pipedrive API token) or OAuth (a JSON object with client_id,
//! client_secret and refresh_token), whose access token is refreshed before it expires and
//! once after a 401; a refresh that fails dead-letters the write as AUTH_FAILED. Tokens are
//! sensitive header values and never reach logs or audit.

use crate::api::{Exchange, Failure};
use crm_common::events::DlqReason;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Deserialize)]
struct OAuthSecret {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

struct OAuth {
    token_url: String,
    basic_client_auth: bool,
    client_id: String,
    client_secret: String,
    /// (refresh token, access token and when to refresh it)
    state: Mutex<(String, Option<(String, Instant)>)>,
}

pub struct Credentials {
    header: HeaderName,
    /// "Bearer " for HubSpot; other CRMs use their own scheme.
    scheme: &'static str,
    secret_name: String,
    kind: Kind,
}

/// How a CRM takes credentials.
pub struct AuthStyle {
    /// Header and prefix for a static token (HubSpot private app, Pipedrive API token).
    pub static_header: (HeaderName, &'static str),
    /// Header and prefix for an OAuth access token.
    pub oauth_header: (HeaderName, &'static str),
    /// Where refreshes go.
    pub token_url: String,
    /// Client id and secret in `Authorization: Basic` (Pipedrive) rather than the form.
    pub basic_client_auth: bool,
}

impl AuthStyle {
    /// The same header for both kinds of credentials.
    pub fn bearer(header: HeaderName, scheme: &'static str, token_url: String) -> AuthStyle {
        AuthStyle { static_header: (header.clone(), scheme), oauth_header: (header, scheme), token_url, basic_client_auth: false }
    }
}

enum Kind {
    Static(HeaderValue),
    OAuth(OAuth),
}

fn sensitive(v: &str) -> Option<HeaderValue> {
    let mut h = HeaderValue::from_str(v).ok()?;
    h.set_sensitive(true);
    Some(h)
}

impl Credentials {
    /// Reads the secret `secret_name` from the environment: a token, or an OAuth client as
    /// JSON.
    pub fn from_env(secret_name: &str, style: AuthStyle) -> Result<Credentials, String> {
        let value = std::env::var(secret_name).map_err(|_| format!("the secret {secret_name} named in TENANTS_CONFIG is not set"))?;
        let value = value.trim();
        if value.starts_with('{') {
            let s: OAuthSecret = serde_json::from_str(value)
                .map_err(|e| format!("the secret {secret_name} is not an OAuth client (client_id, client_secret, refresh_token): {:?} error at line {}, column {}", e.classify(), e.line(), e.column()))?;
            let (header, scheme) = style.oauth_header;
            let oauth = OAuth { token_url: style.token_url, basic_client_auth: style.basic_client_auth, client_id: s.client_id, client_secret: s.client_secret, state: Mutex::new((s.refresh_token, None)) };
            Ok(Credentials { header, scheme, secret_name: secret_name.to_string(), kind: Kind::OAuth(oauth) })
        } else {
            let (header, scheme) = style.static_header;
            let v = sensitive(&format!("{scheme}{value}")).ok_or_else(|| format!("the secret {secret_name} does not hold a usable token"))?;
            Ok(Credentials { header, scheme, secret_name: secret_name.to_string(), kind: Kind::Static(v) })
        }
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.kind, Kind::OAuth(_))
    }

    /// The auth header for the next request, refreshing the access token when needed.
    pub async fn header(&self, http: &reqwest::Client, log: &mut Vec<Exchange>) -> Result<(HeaderName, HeaderValue), Failure> {
        match &self.kind {
            Kind::Static(v) => Ok((self.header.clone(), v.clone())),
            Kind::OAuth(o) => {
                let mut state = o.state.lock().await;
                if let Some((token, refresh_at)) = &state.1 {
                    if Instant::now() < *refresh_at {
                        return Ok((self.header.clone(), sensitive(&format!("{}{token}", self.scheme)).expect("token was checked")));
                    }
                }
                let (access, refresh, expires_in) = self.refresh(o, &state.0, http, log).await?;
                // Refresh a minute early, or at half-life for tokens shorter than two minutes.
                let early = Duration::from_secs(60.min(expires_in / 2));
                let refresh_at = Instant::now() + Duration::from_secs(expires_in).saturating_sub(early);
                if let Some(r) = refresh {
                    state.0 = r;
                }
                let value = sensitive(&format!("{}{access}", self.scheme)).ok_or_else(|| auth_failed("the CRM returned an unusable access token".into()))?;
                state.1 = Some((access, refresh_at));
                Ok((self.header.clone(), value))
            }
        }
    }

    /// Forgets the access token (the CRM answered 401): the next request refreshes.
    pub async fn invalidate(&self) {
        if let Kind::OAuth(o) = &self.kind {
            o.state.lock().await.1 = None;
        }
    }

    async fn refresh(&self, o: &OAuth, refresh_token: &str, http: &reqwest::Client, log: &mut Vec<Exchange>) -> Result<(String, Option<String>, u64), Failure> {
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        if !o.basic_client_auth {
            form.extend([("client_id", o.client_id.as_str()), ("client_secret", o.client_secret.as_str())]);
        }
        let body = form.iter().map(|(k, v)| format!("{k}={}", crate::api::urlencode(v))).collect::<Vec<_>>().join("&");
        let t = Instant::now();
        let at_ms = crm_common::emit::now_ms();
        let mut rb = http.post(&o.token_url).header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if o.basic_client_auth {
            rb = rb.basic_auth(&o.client_id, Some(&o.client_secret));
        }
        let resp = rb.body(body).send().await;
        let latency_ms = t.elapsed().as_millis() as i64;
        let path = o.token_url.split("://").nth(1).and_then(|r| r.find('/').map(|i| &r[i..])).unwrap_or("/token").to_string();
        let mut ex = Exchange {
            at_ms,
            endpoint: format!("POST {path}"),
            status: None,
            excerpt: String::new(),
            rate_headers: String::new(),
            latency_ms,
            attempt: 1,
            outcome: String::new(),
            sent: format!("refresh_token grant for the client in secret {} (values not shown)", self.secret_name),
        };
        let result = match resp {
            Err(e) => Err(auth_failed(format!("token refresh failed: {e}"))),
            Ok(r) => {
                let status = r.status().as_u16();
                ex.status = Some(status);
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                match v.get("access_token").and_then(|a| a.as_str()) {
                    Some(a) if status < 300 => {
                        let expires = v.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(1800);
                        ex.excerpt = format!("access token refreshed; expires in {expires} s");
                        Ok((a.to_string(), v.get("refresh_token").and_then(|r| r.as_str()).map(str::to_string), expires))
                    }
                    _ => {
                        // Error bodies name the error, never a token.
                        let why = ["status", "error", "message", "error_description"]
                            .iter()
                            .filter_map(|k| v.get(*k).and_then(|x| x.as_str()))
                            .collect::<Vec<_>>()
                            .join(": ");
                        ex.excerpt = why.clone();
                        Err(auth_failed(format!("token refresh failed ({status}): {why}")))
                    }
                }
            }
        };
        ex.outcome = match &result {
            Ok(_) => "ok".into(),
            Err(f) => format!("{}: {}", f.reason.as_str(), f.detail),
        };
        log.push(ex);
        result
    }
}

fn auth_failed(detail: String) -> Failure {
    Failure { maybe_applied: false, reason: DlqReason::AuthFailed, detail, status: None, excerpt: None }
}
