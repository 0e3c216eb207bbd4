//! Credentials for one tenant at one CRM, from the secret TENANTS_CONFIG names: a static
//! token (HubSpot private app, Pipedrive API token) or OAuth (a JSON object with client_id,
//! client_secret and refresh_token), whose access token is refreshed before it expires and
//! once after a 401. Tokens are sensitive header values and never reach logs or audit.
//!
//! OAuth state lives in Redis ([`TokenStore`]), shared by every replica and by the
//! reconciler, because three things go wrong when each process keeps its own:
//! - a CRM that rotates refresh tokens (Pipedrive, Salesforce with rotation on) invalidates
//!   the old one at each refresh: a process that dies holding the only copy of the new one
//!   strands the tenant until someone re-authorises;
//! - Zoho lets a refresh token mint 10 access tokens per 10 minutes: replicas that each
//!   refresh on start and after every 401 spend that in minutes;
//! - a refresh storm after an expiry multiplies token-endpoint load by the replica count.
//!
//! So one refresh runs at a time per tenant and CRM (a lock in Redis); the others wait and
//! take the token it stored. What is stored is encrypted (AES-256-GCM, a key from the secret
//! store, the Redis key as associated data), so neither Redis, its dumps nor its AOF hold a
//! token in clear. The secret's refresh token seeds the state; a secret that changes (an
//! operator re-authorised the app) replaces what Redis holds.
//!
//! Secrets come from a file when `CRM_SYNC_SECRETS_DIR` holds one of the secret's name (a
//! Kubernetes Secret mounted as a volume: one file per key, updated in place when the Secret
//! changes), else from the environment variable of that name. A file is read again at most
//! every `SECRET_RECHECK` as requests go out: a rotated token or re-authorised OAuth client is
//! picked up without a restart, and a file that no longer holds usable credentials keeps the
//! last good ones in use and says why.
//!
//! A refresh the CRM refuses (invalid_grant, invalid_client, a revoked token) is permanent:
//! AUTH_FAILED. A token endpoint that is unreachable, slow, answers 5xx or throttles minting
//! is transient: the call retries it with backoff like any other CRM failure.

use crate::exchange::{urlencode, Exchange, Failure, Verdict};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use crm_common::events::DlqReason;
use crm_common::redis_conn::RedisConn;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The environment variable holding the token store's key: 32 bytes, base64.
pub use crm_common::key_names::TOKEN_KEY_ENV;

#[derive(Deserialize)]
struct OAuthSecret {
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

/// Why no access token could be had.
#[derive(Debug, Clone)]
pub enum AuthError {
    /// The CRM refused the grant: retrying cannot help (AUTH_FAILED).
    Refused(Failure),
    /// The token endpoint did not give an answer worth believing (unreachable, 5xx, slow,
    /// throttled): retry later.
    Unavailable(String),
}

/// What this process knows of the tenant's tokens.
#[derive(Default)]
struct Local {
    /// The refresh token to use (the secret's until one is rotated).
    refresh: String,
    /// The access token and when to refresh it (ms since the epoch).
    access: Option<(String, i64)>,
}

struct OAuth {
    token_url: String,
    basic_client_auth: bool,
    client_id: String,
    client_secret: String,
    /// The refresh token the secret holds: what seeds the shared state.
    seed: String,
    state: Mutex<Local>,
}

/// Where secrets are read from as files (one per secret name), before the environment.
pub use crm_common::key_names::SECRETS_DIR_ENV;
/// How often a secret read from a file is read again (Kubernetes updates a mounted Secret
/// within about a minute of a change).
pub const SECRET_RECHECK: Duration = Duration::from_secs(2);

pub struct Credentials {
    style: AuthStyle,
    secret_name: String,
    /// `<crm>:<tenant>`: where the shared OAuth state lives.
    scope: String,
    /// The file the secret is read from; None when it came from the environment.
    file: Option<std::path::PathBuf>,
    /// What the secret holds now, parsed, and when the file was last read.
    current: std::sync::RwLock<std::sync::Arc<Loaded>>,
    checked: std::sync::Mutex<Instant>,
}

/// One version of a secret, parsed.
struct Loaded {
    header: HeaderName,
    /// "Bearer " for HubSpot; other CRMs use their own scheme.
    scheme: &'static str,
    kind: Kind,
    /// A digest of the text it was parsed from: a file read again and unchanged is not parsed.
    digest: [u8; 32],
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.trim().as_bytes()).into()
}

impl Loaded {
    fn parse(secret_name: &str, style: &AuthStyle, text: &str) -> Result<Loaded, String> {
        let value = text.trim();
        let digest = digest(text);
        if value.starts_with('{') {
            let s: OAuthSecret = serde_json::from_str(value)
                .map_err(|e| format!("the secret {secret_name} is not an OAuth client (client_id, client_secret, refresh_token): {:?} error at line {}, column {}", e.classify(), e.line(), e.column()))?;
            let (header, scheme) = style.oauth_header.clone();
            let oauth = OAuth {
                token_url: style.token_url.clone(),
                basic_client_auth: style.basic_client_auth,
                client_id: s.client_id,
                client_secret: s.client_secret,
                seed: s.refresh_token.clone(),
                state: Mutex::new(Local { refresh: s.refresh_token, access: None }),
            };
            Ok(Loaded { header, scheme, kind: Kind::OAuth(oauth), digest })
        } else {
            let (header, scheme) = style.static_header.clone();
            let v =
                sensitive(&format!("{scheme}{value}")).ok_or_else(|| format!("the secret {secret_name} does not hold a usable token"))?;
            Ok(Loaded { header, scheme, kind: Kind::Static(v), digest })
        }
    }

    fn value(&self, access: &str) -> Result<(HeaderName, HeaderValue), AuthError> {
        sensitive(&format!("{}{access}", self.scheme))
            .map(|v| (self.header.clone(), v))
            .ok_or_else(|| AuthError::Refused(auth_failed("the CRM returned an unusable access token".into())))
    }
}

/// How a CRM takes credentials.
#[derive(Clone)]
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

fn now_ms() -> i64 {
    crm_common::clock::now_ms()
}

/// A credentials scope, `<crm>:<tenant>`, as (crm, tenant).
fn scope_parts(scope: &str) -> (&str, &str) {
    scope.split_once(':').unwrap_or(("", scope))
}

/// The OAuth state every replica shares, in Redis, encrypted.
#[derive(Clone)]
pub struct TokenStore {
    conn: RedisConn,
    prefix: String,
    cipher: Aes256Gcm,
    /// Distinguishes this process's refresh lock from another's.
    owner: String,
}

/// A refresh token and an access token as the store holds them (decrypted).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    pub refresh: Option<String>,
    pub access: Option<String>,
    pub refresh_at_ms: i64,
    /// A digest of the secret's refresh token this state grew from.
    pub seed: String,
}

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl TokenStore {
    /// `key_b64`: 32 bytes, base64 (the secret store's value of CRM_SYNC_TOKEN_KEY).
    pub fn new(conn: RedisConn, prefix: &str, key_b64: &str) -> Result<TokenStore, String> {
        let key = base64::engine::general_purpose::STANDARD.decode(key_b64.trim()).map_err(|_| format!("{TOKEN_KEY_ENV} is not base64"))?;
        TokenStore::with_key(conn, prefix, &key)
    }

    /// `key`: 32 bytes.
    fn with_key(conn: RedisConn, prefix: &str, key: &[u8]) -> Result<TokenStore, String> {
        if key.len() != 32 {
            return Err(format!("{TOKEN_KEY_ENV} must hold 32 bytes (base64 of a 256-bit key); it holds {}", key.len()));
        }
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| format!("{TOKEN_KEY_ENV}: unusable key"))?;
        Ok(TokenStore { conn, prefix: prefix.to_string(), cipher, owner: uuid::Uuid::new_v4().simple().to_string() })
    }

    /// With the deployment key where the secret store puts it (`$CRM_SYNC_SECRETS_DIR` file
    /// or the variable: `crm_common::key_names::deployment_key`). None when it is not set.
    pub fn from_env(conn: RedisConn, prefix: &str) -> Result<Option<TokenStore>, String> {
        match crm_common::key_names::deployment_key()? {
            Some(k) => TokenStore::with_key(conn, prefix, &k).map(Some),
            None => Ok(None),
        }
    }

    /// `<prefix>:{tenant}:oauth:<crm>`.
    pub fn key(&self, scope: &str) -> String {
        let (crm, tenant) = scope_parts(scope);
        crm_common::redis_keys::oauth(&self.prefix, tenant, crm)
    }

    fn lock_key(&self, scope: &str) -> String {
        let (crm, tenant) = scope_parts(scope);
        crm_common::redis_keys::oauth_lock(&self.prefix, tenant, crm)
    }

    fn seal(&self, key: &str, field: &str, plain: &str) -> String {
        let nonce_bytes: [u8; 12] = rand::random();
        let aad = format!("{key}#{field}");
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), Payload { msg: plain.as_bytes(), aad: aad.as_bytes() })
            .expect("AES-GCM encrypts any input");
        let mut out = nonce_bytes.to_vec();
        out.extend(sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn open(&self, key: &str, field: &str, sealed: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
        if raw.len() < 12 {
            return None;
        }
        let aad = format!("{key}#{field}");
        let plain = self.cipher.decrypt(Nonce::from_slice(&raw[..12]), Payload { msg: &raw[12..], aad: aad.as_bytes() }).ok()?;
        String::from_utf8(plain).ok()
    }

    /// A digest of a secret's refresh token, keyed so it says nothing without the key.
    fn seed_of(&self, refresh_token: &str) -> String {
        let sealed_zero = self.cipher.encrypt(Nonce::from_slice(&[0u8; 12]), &b"seed"[..]).expect("encrypts");
        let mut h = Sha256::new();
        h.update(&sealed_zero);
        h.update(refresh_token.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub async fn load(&self, scope: &str) -> redis::RedisResult<Stored> {
        let key = self.key(scope);
        let mut conn = self.conn.clone();
        let (refresh, access, at, seed): (Option<String>, Option<String>, Option<i64>, Option<String>) =
            redis::cmd("HMGET").arg(&key).arg("refresh").arg("access").arg("refresh_at_ms").arg("seed").query_async(&mut conn).await?;
        Ok(Stored {
            refresh: refresh.and_then(|r| self.open(&key, "refresh", &r)),
            access: access.and_then(|a| self.open(&key, "access", &a)),
            refresh_at_ms: at.unwrap_or(0),
            seed: seed.unwrap_or_default(),
        })
    }

    pub async fn save(&self, scope: &str, s: &Stored) -> redis::RedisResult<()> {
        let key = self.key(scope);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key).arg("refresh_at_ms").arg(s.refresh_at_ms).arg("seed").arg(&s.seed);
        if let Some(r) = &s.refresh {
            cmd.arg("refresh").arg(self.seal(&key, "refresh", r));
        }
        match &s.access {
            Some(a) => {
                cmd.arg("access").arg(self.seal(&key, "access", a));
            }
            None => {
                cmd.arg("access").arg("");
            }
        }
        cmd.query_async::<()>(&mut conn).await
    }

    /// Marks the stored access token stale if it is still `access` (a 401 answered it).
    async fn stale(&self, scope: &str, access: &str) -> redis::RedisResult<()> {
        let s = self.load(scope).await?;
        if s.access.as_deref() == Some(access) {
            let mut conn = self.conn.clone();
            redis::cmd("HSET").arg(self.key(scope)).arg("refresh_at_ms").arg(0).query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    async fn lock(&self, scope: &str, hold: Duration) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let got: Option<String> = redis::cmd("SET")
            .arg(self.lock_key(scope))
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(got.is_some())
    }

    async fn unlock(&self, scope: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::Script::new(UNLOCK).key(self.lock_key(scope)).arg(&self.owner).invoke_async::<i64>(&mut conn).await.map(|_| ())
    }
}

impl Credentials {
    /// Reads the secret `secret_name`: from `$CRM_SYNC_SECRETS_DIR/<secret_name>` when that
    /// file exists, else from the environment. It holds a token, or an OAuth client as JSON.
    /// `scope` (`<crm>:<tenant>`) names where shared OAuth state lives.
    pub fn from_env(secret_name: &str, style: AuthStyle, scope: String) -> Result<Credentials, String> {
        let crm_common::secrets::Secret { text, file } = crm_common::secrets::read(secret_name)?.ok_or_else(|| {
            format!("the secret {secret_name} named in TENANTS_CONFIG is not set (neither a file in {SECRETS_DIR_ENV} nor a variable)")
        })?;
        let loaded = Loaded::parse(secret_name, &style, &text)?;
        Ok(Credentials {
            style,
            secret_name: secret_name.to_string(),
            scope,
            file,
            current: std::sync::RwLock::new(std::sync::Arc::new(loaded)),
            checked: std::sync::Mutex::new(Instant::now()),
        })
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.loaded().kind, Kind::OAuth(_))
    }

    /// The credentials in use: a secret read from a file is read again when `SECRET_RECHECK`
    /// has passed, and a changed one replaces them (an unusable one is refused, loudly).
    fn loaded(&self) -> std::sync::Arc<Loaded> {
        self.reload(false);
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A 401 answered these credentials: the secret's file is read again at once (an
    /// operator may have rotated the token and revoked the old one a moment ago). True when a
    /// second try can help: OAuth (it refreshes) or credentials that just changed.
    pub fn retry_after_401(&self) -> bool {
        self.reload(true) || self.is_oauth()
    }

    /// Reads the secret's file again (when `force`, or `SECRET_RECHECK` has passed) and puts
    /// changed, usable credentials in use. True when they changed.
    fn reload(&self, force: bool) -> bool {
        let Some(path) = &self.file else { return false };
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if !force && checked.elapsed() < SECRET_RECHECK {
                return false;
            }
            *checked = Instant::now();
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(secret = %self.secret_name, path = %path.display(), error = %e, "could not read the secret again; the credentials read before stay in use");
                return false;
            }
        };
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if digest(&text) == current.digest {
            return false;
        }
        match Loaded::parse(&self.secret_name, &self.style, &text) {
            Ok(fresh) => {
                tracing::info!(secret = %self.secret_name, scope = %self.scope, "the secret changed: its new credentials are in use");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(fresh);
                true
            }
            Err(why) => {
                tracing::error!(scope = %self.scope, "the secret changed but cannot be used; the credentials read before stay in use: {why}");
                false
            }
        }
    }

    /// The credential itself, without its scheme, and whether it is an OAuth access token
    /// (else a static token): for a CRM's token introspection, which is sent it.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        store: Option<&TokenStore>,
        log: &mut Vec<Exchange>,
    ) -> Result<(String, bool), AuthError> {
        let (_, value) = self.header(http, store, log).await?;
        let text = value.to_str().map_err(|_| AuthError::Refused(auth_failed("the credential is not text".into())))?;
        Ok((text.strip_prefix(self.loaded().scheme).unwrap_or(text).to_string(), self.is_oauth()))
    }

    /// The auth header for the next request, refreshing the access token when needed
    /// (through `store` when given, shared with every replica).
    pub async fn header(
        &self,
        http: &reqwest::Client,
        store: Option<&TokenStore>,
        log: &mut Vec<Exchange>,
    ) -> Result<(HeaderName, HeaderValue), AuthError> {
        let l = self.loaded();
        let o = match &l.kind {
            Kind::Static(v) => return Ok((l.header.clone(), v.clone())),
            Kind::OAuth(o) => o,
        };
        let mut local = o.state.lock().await;
        if let Some((token, refresh_at)) = &local.access {
            if now_ms() < *refresh_at {
                return l.value(token);
            }
        }
        let Some(store) = store else {
            // No shared store (a tool run without one): this process refreshes for itself.
            let refresh = local.refresh.clone();
            let minted = self.refresh(o, &refresh, http, log).await?;
            if let Some(r) = &minted.refresh {
                local.refresh = r.clone();
            }
            local.access = Some((minted.access.clone(), minted.refresh_at_ms));
            return l.value(&minted.access);
        };
        let seed = store.seed_of(&o.seed);
        let started = Instant::now();
        loop {
            let stored = store.load(&self.scope).await.map_err(|e| AuthError::Unavailable(format!("token store: {e}")))?;
            let ours = stored.seed == seed;
            if let (true, Some(r)) = (ours, &stored.refresh) {
                // This process's copy of the live refresh token, for when Redis loses it.
                local.refresh.clone_from(r);
            }
            if let (true, Some(access)) = (ours, &stored.access) {
                if now_ms() < stored.refresh_at_ms {
                    local.access = Some((access.clone(), stored.refresh_at_ms));
                    return l.value(access);
                }
            }
            // One refresh at a time per tenant and CRM; the lock outlives a slow token call.
            if !store.lock(&self.scope, Duration::from_secs(30)).await.map_err(|e| AuthError::Unavailable(format!("token store: {e}")))? {
                if started.elapsed() > Duration::from_secs(35) {
                    return Err(AuthError::Unavailable("another replica's token refresh has not finished".into()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // Holding the lock: read again (a refresh may have just finished), then mint.
            let result = async {
                let stored = store.load(&self.scope).await.map_err(|e| AuthError::Unavailable(format!("token store: {e}")))?;
                let ours = stored.seed == seed;
                if let (true, Some(access)) = (ours, &stored.access) {
                    if now_ms() < stored.refresh_at_ms {
                        return Ok((access.clone(), stored.refresh_at_ms, stored.refresh.clone()));
                    }
                }
                // The secret seeds the state; a rotated refresh token in Redis supersedes it
                // while the secret is unchanged. State that is gone (Redis lost its data) is
                // not a new secret: where the CRM rotates, the secret's token died at the
                // first refresh, and the live one is the copy this process last saw.
                let lost = stored.seed.is_empty();
                let refresh = match (ours, &stored.refresh) {
                    (true, Some(r)) => r.clone(),
                    _ if ours || lost => local.refresh.clone(),
                    _ => o.seed.clone(),
                };
                if lost && local.refresh != o.seed {
                    tracing::warn!(scope = %self.scope, "the shared OAuth state is gone (Redis lost its data?): refreshing with this process's copy of the refresh token");
                }
                let minted = self.refresh(o, &refresh, http, log).await?;
                let next = Stored { refresh: Some(minted.refresh.clone().unwrap_or(refresh)), access: Some(minted.access.clone()), refresh_at_ms: minted.refresh_at_ms, seed: seed.clone() };
                // A rotated refresh token must not be lost: keep trying to store it.
                let mut wait = Duration::from_millis(100);
                while let Err(e) = store.save(&self.scope, &next).await {
                    tracing::error!(error = %e, "could not store the refreshed OAuth tokens; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Ok((minted.access, minted.refresh_at_ms, next.refresh))
            }
            .await;
            let _ = store.unlock(&self.scope).await;
            let (access, at, refresh) = result?;
            if let Some(r) = refresh {
                local.refresh = r;
            }
            local.access = Some((access.clone(), at));
            return l.value(&access);
        }
    }

    /// Forgets the access token (the CRM answered 401): the next request refreshes.
    pub async fn invalidate(&self, store: Option<&TokenStore>) {
        let l = self.loaded();
        if let Kind::OAuth(o) = &l.kind {
            let old = o.state.lock().await.access.take();
            if let (Some(store), Some((access, _))) = (store, old) {
                if let Err(e) = store.stale(&self.scope, &access).await {
                    tracing::warn!(error = %e, "could not mark the shared access token stale");
                }
            }
        }
    }

    async fn refresh(&self, o: &OAuth, refresh_token: &str, http: &reqwest::Client, log: &mut Vec<Exchange>) -> Result<Minted, AuthError> {
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        if !o.basic_client_auth {
            form.extend([("client_id", o.client_id.as_str()), ("client_secret", o.client_secret.as_str())]);
        }
        let body = form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
        let t = Instant::now();
        let at_ms = now_ms();
        let mut rb = http.post(&o.token_url).header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if o.basic_client_auth {
            rb = rb.basic_auth(&o.client_id, Some(&o.client_secret));
        }
        let resp = rb.body(body).send().await;
        let path = o.token_url.split("://").nth(1).and_then(|r| r.find('/').map(|i| &r[i..])).unwrap_or("/token").to_string();
        let mut ex = Exchange {
            at_ms,
            endpoint: format!("POST {path}"),
            status: None,
            excerpt: String::new(),
            rate_headers: String::new(),
            stated_limits: vec![],
            latency_ms: 0,
            attempt: 1,
            outcome: Verdict::Ok,
            answered_absent: false,
            sent: format!("refresh_token grant for the client in secret {} (values not shown)", self.secret_name),
        };
        let result = match resp {
            Err(e) if e.is_timeout() => {
                Err(AuthError::Unavailable(format!("token refresh timed out after {} ms", t.elapsed().as_millis())))
            }
            Err(e) => Err(AuthError::Unavailable(format!("token refresh failed: {}", without_url(&e)))),
            Ok(r) => {
                let status = r.status().as_u16();
                ex.status = Some(status);
                let text = r.text().await.unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match (v.get("access_token").and_then(|a| a.as_str()), refusal(status, &v)) {
                    (Some(a), _) if status < 300 => {
                        let expires = v.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(1800);
                        ex.excerpt = format!("access token refreshed; expires in {expires} s");
                        // Refresh a minute early, or at half-life for tokens shorter than two minutes.
                        let early = 60.min(expires / 2);
                        let refresh_at_ms = now_ms() + (expires.saturating_sub(early) * 1000) as i64;
                        let rotated = v.get("refresh_token").and_then(|r| r.as_str()).filter(|r| *r != refresh_token).map(str::to_string);
                        if rotated.is_some() {
                            ex.excerpt.push_str("; refresh token rotated");
                        }
                        Ok(Minted { access: a.to_string(), refresh: rotated, refresh_at_ms })
                    }
                    (_, Refusal::Refused(why)) => {
                        ex.excerpt = why.clone();
                        Err(AuthError::Refused(auth_failed(format!("token refresh failed ({status}): {why}"))))
                    }
                    (_, Refusal::Transient(why)) => {
                        ex.excerpt = why.clone();
                        Err(AuthError::Unavailable(format!("token endpoint answered {status}: {why}")))
                    }
                }
            }
        };
        ex.latency_ms = t.elapsed().as_millis() as i64;
        ex.outcome = match &result {
            Ok(_) => Verdict::Ok,
            Err(AuthError::Refused(f)) => Verdict::Permanent(f.reason, f.detail.clone()),
            Err(AuthError::Unavailable(why)) => Verdict::Transient(why.clone()),
        };
        log.push(ex);
        result
    }
}

struct Minted {
    access: String,
    /// A new refresh token, where the CRM rotated it.
    refresh: Option<String>,
    refresh_at_ms: i64,
}

/// What a token endpoint's answer without an access token means.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// The grant or the client was refused: only a person can fix it.
    Refused(String),
    /// Down, overloaded or throttling: worth another try later.
    Transient(String),
}

/// Error codes that refuse the grant itself (RFC 6749 §5.2, Zoho's `invalid_code`).
const REFUSED_GRANT: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "invalid_code",
    "invalid_request",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied_revoked",
];

/// Classifies a token endpoint's answer that carried no access token. Error bodies name the
/// error, never a token.
fn refusal(status: u16, v: &serde_json::Value) -> Refusal {
    let why = ["status", "error", "message", "error_description"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(|x| x.as_str()))
        .collect::<Vec<_>>()
        .join(": ");
    let why = if why.is_empty() { format!("HTTP {status} without an access token") } else { why };
    let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
    let description = v.get("error_description").and_then(|e| e.as_str()).unwrap_or("").to_ascii_lowercase();
    // Zoho answers a throttled mint (10 access tokens per refresh token per 10 minutes) with
    // HTTP 200 and "Access Denied" (Zoho CRM v8 "Token Validity"; Kaizen #43).
    let throttled = status == 429 || description.contains("too many requests") || error.eq_ignore_ascii_case("access denied");
    if throttled || status >= 500 || status == 408 || status == 425 {
        return Refusal::Transient(why);
    }
    if REFUSED_GRANT.contains(&error) || matches!(status, 400 | 401 | 403) || (status < 300 && !error.is_empty()) {
        return Refusal::Refused(why);
    }
    // Anything else (a 404 from a wrong token URL, a 200 without a token) will not mend itself.
    Refusal::Refused(why)
}

/// The error and its causes ("connection refused" sits a few sources down).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s = format!("{s}: {c}");
        src = c.source();
    }
    s
}

fn auth_failed(detail: String) -> Failure {
    Failure { maybe_applied: false, fenced_off: vec![], reason: DlqReason::AuthFailed, detail, status: None, excerpt: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refused_grants_are_permanent_and_outages_transient() {
        assert!(matches!(
            refusal(400, &json!({"error": "invalid_grant", "error_description": "expired access/refresh token"})),
            Refusal::Refused(_)
        ));
        assert!(matches!(refusal(401, &json!({"error": "invalid_client"})), Refusal::Refused(_)));
        assert!(matches!(refusal(200, &json!({"error": "invalid_code"})), Refusal::Refused(_)), "Zoho's refusal comes with 200");
        assert!(matches!(refusal(503, &json!({})), Refusal::Transient(_)));
        assert!(matches!(refusal(502, &serde_json::Value::Null), Refusal::Transient(_)));
        assert!(matches!(refusal(429, &json!({"error": "rate_limited"})), Refusal::Transient(_)));
        let zoho_throttle = json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time."});
        assert!(matches!(refusal(400, &zoho_throttle), Refusal::Transient(_)), "Zoho's mint throttle passes");
        assert!(matches!(refusal(200, &json!({"error": "Access Denied"})), Refusal::Transient(_)), "as Zoho documents it: HTTP 200");
    }
}
