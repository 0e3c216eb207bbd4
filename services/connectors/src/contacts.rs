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
//! ([`KeyNames`], `Purpose::CacheKeys`), so `SCAN`, `MONITOR`, slow logs and key-space dashboards show no customer.

pub use crm_common::key_names::{KeyNames, Purpose};
use crm_common::redis_conn::RedisConn;
use std::time::Duration;

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
