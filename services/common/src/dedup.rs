//! The deduper's idempotency marks (DESIGN §4), in Redis: one hash per (tenant, call) holding
//! the highest version seen and the input (topic/partition/offset) that set it, expiring after
//! the source's dedup window. One Lua script decides atomically:
//!
//! - no mark: set it → `New` (emit);
//! - the mark was set by this very input → `Redelivered` (emit again: the service died between
//!   marking and the broker acknowledging the output, and a mark must never cause loss);
//! - a higher version → `Update` (emit; the mark moves to this input);
//! - otherwise → `Repeat` (suppress, and say which input marked it).
//!
//! Keys hash-tag the tenant (`{tenant}`) so one tenant's marks live on one Redis Cluster slot.
//! A batch's marks go out as one pipeline: one round trip, and Redis runs them in request
//! order, which matters when a batch holds several versions of one call. Any Redis error
//! fails the whole batch so the caller commits nothing; re-running a batch that was partly
//! applied is safe because each input that marked finds its own mark (`Redelivered`).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, Script, ServerErrorKind};
use std::time::Duration;

const MARK: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'in')
local v = tonumber(ARGV[1])
if not cur[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'in', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0, -1, ''}
end
local cv = tonumber(cur[1])
if cur[2] == ARGV[2] then
  return {3, cv, cur[2]}
end
if v > cv then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'in', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, cv, cur[2]}
end
return {2, cv, cur[2]}
";

/// Most marks in one pipeline; bigger batches are split (still in order, one after another).
const PIPELINE_MAX: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    New,
    /// This input set the mark before and is being delivered again: emit again.
    Redelivered,
    /// A higher version of a known call: emit as an update.
    Update { previous_version: i64, previous_input: String },
    /// Seen inside the window at this version or higher: suppress.
    Repeat { marked_version: i64, marked_by: String },
}

impl Mark {
    pub fn emit(&self) -> bool {
        !matches!(self, Mark::Repeat { .. })
    }

    /// A label for metrics and audit attributes.
    pub fn label(&self) -> &'static str {
        match self {
            Mark::New => "new",
            Mark::Redelivered => "redelivered",
            Mark::Update { .. } => "update",
            Mark::Repeat { .. } => "repeat",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MarkRequest {
    pub tenant_id: String,
    pub call_id: String,
    pub version: i64,
    /// Identifies the input message: "topic/partition/offset".
    pub input: String,
    pub window_ms: u64,
}

#[derive(Clone)]
pub struct DedupStore {
    conn: ConnectionManager,
    prefix: String,
    script: Script,
}

/// `url` without its password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

impl DedupStore {
    /// Connects lazily: a service starts while Redis is down, and its first batch fails
    /// (and is retried) until Redis answers. `prefix` namespaces every key (tests and dev runs
    /// give each run its own).
    pub fn lazy(url: &str, prefix: &str) -> redis::RedisResult<DedupStore> {
        let client = redis::Client::open(url)?;
        // Fail a request within seconds rather than hanging a batch on a dead socket; the
        // pipeline loop retries the batch with its own backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(DedupStore { conn, prefix: prefix.to_string(), script: Script::new(MARK) })
    }

    /// Connects now and fails if Redis does not answer a PING.
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<DedupStore> {
        let store = DedupStore::lazy(url, prefix)?;
        let mut conn = store.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(store)
    }

    pub fn key(&self, tenant_id: &str, call_id: &str) -> String {
        format!("{}:{{{}}}:dedup:{}", self.prefix, tenant_id, call_id)
    }

    /// Marks every request; results in request order.
    pub async fn mark_many(&self, reqs: &[MarkRequest]) -> redis::RedisResult<Vec<Mark>> {
        let mut marks = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(PIPELINE_MAX) {
            marks.extend(self.mark_pipeline(chunk).await?);
        }
        Ok(marks)
    }

    async fn mark_pipeline(&self, reqs: &[MarkRequest]) -> redis::RedisResult<Vec<Mark>> {
        if reqs.is_empty() {
            return Ok(vec![]);
        }
        let mut pipe = redis::pipe();
        for r in reqs {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(1)
                .arg(self.key(&r.tenant_id, &r.call_id))
                .arg(r.version)
                .arg(&r.input)
                .arg(r.window_ms.max(1));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(i64, i64, String)> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            // A fresh or restarted Redis has no scripts cached: every EVALSHA failed, nothing
            // ran. Load the script and send the pipeline again.
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(MARK).query_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .map(|(code, v, by)| match code {
                0 => Mark::New,
                1 => Mark::Update { previous_version: v, previous_input: by },
                3 => Mark::Redelivered,
                _ => Mark::Repeat { marked_version: v, marked_by: by },
            })
            .collect())
    }

    /// Deletes every key under this store's prefix (dev runs and benchmarks clean up after
    /// themselves). SCAN, not KEYS, so a large Redis is not blocked.
    pub async fn delete_all(&self) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_url("redis://:s3cret@redis:6379/0"), "redis://:***@redis:6379/0");
        assert_eq!(redact_url("rediss://user:s3cret@redis:6380"), "rediss://user:***@redis:6380");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }

    #[test]
    fn keys_are_hash_tagged_by_tenant() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // Lazy: no connection is made, so this stays a pure test.
            let s = DedupStore::lazy("redis://127.0.0.1:1", "p").unwrap();
            assert_eq!(s.key("acme", "c:1"), "p:{acme}:dedup:c:1");
        });
    }
}
