//! Contact matches cached in Redis (`<prefix>:{tenant}:contact:<crm>:<name of matched>` → the
//! contact id, or "-" when the CRM has none), with a TTL: a search costs scarce tokens, and
//! most activities are with people seen before. `<matched>` is what was matched: a call's
//! number in E.164 (it starts with '+') or an email's or meeting's canonical address (it
//! holds an '@' and never starts with '+'), so the two never meet. Misses are cached for a
//! shorter time, since people add contacts.
//!
//! The same cache, in its own key space (`<prefix>:{tenant}:owner:<crm>:<email>`), holds
//! actors' CRM users by the actor's canonical email ([`ContactCache::owners`]): the users
//! list changes rarely, and a lookup per activity would spend the budget the writes need.
//!
//! No number or address appears in a key name: `<matched>` is written as a keyed hash of it
//! ([`KeyNames`]), so `SCAN`, `MONITOR`, slow logs and key-space dashboards show no customer.

use crm_common::redis_conn::RedisConn;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// How cache keys name what was matched: `HMAC-SHA256(tenant's salt, matched)`, its first
/// 128 bits in hex, where a tenant's salt is `HMAC-SHA256(deployment secret, tenant id)`. The
/// deployment secret is derived from `CRM_SYNC_TOKEN_KEY` (the key that seals OAuth tokens,
/// from the secret store), so someone who reads Redis cannot test numbers against the names;
/// a tenant's salt of its own keeps one tenant's names from telling anything about another's.
/// Every writer and the reconciler derive the same names, so they share entries.
#[derive(Clone)]
pub struct KeyNames {
    secret: Arc<[u8]>,
}

impl KeyNames {
    pub fn new(deployment_key: &[u8]) -> KeyNames {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(deployment_key).expect("HMAC takes any key");
        m.update(b"crm-sync: names of cache keys");
        KeyNames { secret: m.finalize().into_bytes().to_vec().into() }
    }

    /// From `CRM_SYNC_TOKEN_KEY`. Without it (no tenant uses OAuth) the names are still no
    /// number in clear, but anyone with the code can test a number against them: said once,
    /// at start.
    pub fn from_env() -> KeyNames {
        use base64::Engine;
        let key = std::env::var(crate::auth::TOKEN_KEY_ENV)
            .ok()
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k.trim()).ok())
            .filter(|k| k.len() == 32);
        match key {
            Some(k) => KeyNames::new(&k),
            None => {
                tracing::warn!(
                    "{} is not set: cache keys hash customers' numbers and addresses without a secret (set it to key them)",
                    crate::auth::TOKEN_KEY_ENV
                );
                KeyNames::new(b"")
            }
        }
    }

    /// The name of `matched` (a number, an address, a contact id) in `tenant`'s keys.
    pub fn name(&self, tenant: &str, matched: &str) -> String {
        let mut salt = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key");
        salt.update(tenant.as_bytes());
        let salt = salt.finalize().into_bytes();
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&salt).expect("HMAC takes any key");
        m.update(matched.as_bytes());
        m.finalize().into_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a cache holds: contacts by number or address, or CRM users (owners) by address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matches {
    Contacts,
    Owners,
    /// A contact's company and open deals ([`crate::context::ContactContext`] as JSON, with
    /// the contact's id), by each number or address that matched the contact: read with the
    /// contact matches, before the contact's id is known (the writer's `CachedContext`).
    Context,
}

#[derive(Clone)]
pub struct ContactCache {
    pub conn: RedisConn,
    pub prefix: String,
    /// How keys name what was matched (never in clear).
    pub names: KeyNames,
    pub ttl: Duration,
    pub miss_ttl: Duration,
    pub matches: Matches,
}

impl ContactCache {
    /// The contact cache.
    pub fn contacts(conn: RedisConn, prefix: String, names: KeyNames, ttl: Duration, miss_ttl: Duration) -> ContactCache {
        ContactCache { conn, prefix, names, ttl, miss_ttl, matches: Matches::Contacts }
    }

    /// The owner cache: an actor's CRM user by the actor's canonical email.
    pub fn owners(conn: RedisConn, prefix: String, names: KeyNames, ttl: Duration, miss_ttl: Duration) -> ContactCache {
        ContactCache { conn, prefix, names, ttl, miss_ttl, matches: Matches::Owners }
    }

    /// The context cache: a contact's company and open deals, by contact id.
    pub fn context(conn: RedisConn, prefix: String, names: KeyNames, ttl: Duration) -> ContactCache {
        ContactCache { conn, prefix, names, ttl, miss_ttl: ttl, matches: Matches::Context }
    }

    fn key(&self, tenant: &str, crm: &str, matched: &str) -> String {
        let matched = &self.names.name(tenant, matched);
        match self.matches {
            Matches::Contacts => crm_common::redis_keys::contact(&self.prefix, tenant, crm, matched),
            Matches::Owners => crm_common::redis_keys::owner(&self.prefix, tenant, crm, matched),
            Matches::Context => crm_common::redis_keys::context(&self.prefix, tenant, crm, matched),
        }
    }

    /// Some(Some(id)): a known contact; Some(None): known to have none; None: not cached.
    pub async fn get(&self, tenant: &str, crm: &str, e164: &str) -> redis::RedisResult<Option<Option<String>>> {
        let mut c = self.conn.clone();
        let v: Option<String> = redis::cmd("GET").arg(self.key(tenant, crm, e164)).query_async(&mut c).await?;
        Ok(v.map(|v| (v != "-").then_some(v)))
    }

    pub async fn put(&self, tenant: &str, crm: &str, e164: &str, id: Option<&str>) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = if id.is_some() { self.ttl } else { self.miss_ttl };
        redis::cmd("SET")
            .arg(self.key(tenant, crm, e164))
            .arg(id.unwrap_or("-"))
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut c)
            .await
    }

    /// Several at once (one MGET: the keys share the tenant's hash tag), in order.
    pub async fn get_many(&self, tenant: &str, crm: &str, matched: &[String]) -> redis::RedisResult<Vec<Option<Option<String>>>> {
        if matched.is_empty() {
            return Ok(vec![]);
        }
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        self.add_get_many(&mut p, tenant, crm, matched);
        let (v,): (redis::Value,) = p.query_async(&mut c).await?;
        Self::hits_from(v)
    }

    /// `get_many`'s MGET, added to `p` so a batch's reads go in one round trip (the keys
    /// share the tenant's hash tag); `hits_from` reads its answer. `matched` must not be
    /// empty.
    pub fn add_get_many(&self, p: &mut redis::Pipeline, tenant: &str, crm: &str, matched: &[String]) {
        let keys: Vec<String> = matched.iter().map(|m| self.key(tenant, crm, m)).collect();
        p.cmd("MGET").arg(keys);
    }

    /// The entries an `add_get_many` read, in its order (as `get_many` answers).
    pub fn hits_from(answer: redis::Value) -> redis::RedisResult<Vec<Option<Option<String>>>> {
        let v: Vec<Option<String>> = redis::from_redis_value(answer)?;
        Ok(v.into_iter().map(|v| v.map(|v| (v != "-").then_some(v))).collect())
    }

    /// Several at once, in one pipeline.
    pub async fn put_many(&self, tenant: &str, crm: &str, found: &[(String, Option<String>)]) -> redis::RedisResult<()> {
        if found.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        self.add_puts(&mut p, tenant, crm, found);
        p.query_async::<()>(&mut c).await
    }

    /// Adds `put_many`'s writes to `p`, so several caches are written in one round trip
    /// (the keys share the tenant's hash tag, so one slot).
    pub fn add_puts(&self, p: &mut redis::Pipeline, tenant: &str, crm: &str, found: &[(String, Option<String>)]) {
        for (m, id) in found {
            let ttl = if id.is_some() { self.ttl } else { self.miss_ttl };
            p.cmd("SET").arg(self.key(tenant, crm, m)).arg(id.as_deref().unwrap_or("-")).arg("PX").arg(ttl.as_millis() as u64).ignore();
        }
    }

    pub async fn forget(&self, tenant: &str, crm: &str, e164: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("DEL").arg(self.key(tenant, crm, e164)).query_async::<()>(&mut c).await
    }
}

#[cfg(test)]
mod key_name_tests {
    use super::KeyNames;

    #[test]
    fn a_number_is_named_by_a_keyed_hash_of_its_own_per_tenant() {
        let names = KeyNames::new(b"deployment key");
        let n = names.name("acme", "+14155550199");
        assert_eq!(n.len(), 32, "128 bits in hex: {n}");
        assert!(n.chars().all(|c| c.is_ascii_hexdigit()) && !n.contains("4155550199"));
        assert_eq!(n, KeyNames::new(b"deployment key").name("acme", "+14155550199"), "every replica names it the same");
        assert_ne!(n, names.name("globex", "+14155550199"), "each tenant has its own salt");
        assert_ne!(n, names.name("acme", "+14155550198"));
        assert_ne!(n, KeyNames::new(b"another deployment").name("acme", "+14155550199"), "keyed by the deployment's secret");
    }
}
