//! Contact matches cached in Redis (`<prefix>:{tenant}:contact:<crm>:<e164>` → the contact
//! id, or "-" when the CRM has none), with a TTL: a search costs scarce tokens, and most
//! calls are with numbers seen before. Misses are cached for a shorter time, since people
//! add contacts.

use redis::aio::ConnectionManager;
use std::time::Duration;

#[derive(Clone)]
pub struct ContactCache {
    pub conn: ConnectionManager,
    pub prefix: String,
    pub ttl: Duration,
    pub miss_ttl: Duration,
}

impl ContactCache {
    fn key(&self, tenant: &str, crm: &str, e164: &str) -> String {
        crm_common::redis_keys::contact(&self.prefix, tenant, crm, e164)
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

    pub async fn forget(&self, tenant: &str, crm: &str, e164: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("DEL").arg(self.key(tenant, crm, e164)).query_async::<()>(&mut c).await
    }
}
