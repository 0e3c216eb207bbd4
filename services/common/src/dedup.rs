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
//! Marks for a batch are sent together over one multiplexed connection (many in flight, not one
//! round trip at a time); any Redis error fails the whole call, so the caller commits nothing.

use redis::aio::ConnectionManager;
use redis::Script;

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

impl DedupStore {
    /// `prefix` namespaces every key (tests give each run its own).
    pub async fn connect(url: &str, prefix: &str) -> redis::RedisResult<DedupStore> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(DedupStore { conn, prefix: prefix.to_string(), script: Script::new(MARK) })
    }

    pub fn key(&self, tenant_id: &str, call_id: &str) -> String {
        format!("{}:{{{}}}:dedup:{}", self.prefix, tenant_id, call_id)
    }

    /// Marks every request, all in flight at once; results in request order.
    pub async fn mark_many(&self, reqs: &[MarkRequest]) -> redis::RedisResult<Vec<Mark>> {
        let calls = reqs.iter().map(|r| {
            let mut conn = self.conn.clone();
            let key = self.key(&r.tenant_id, &r.call_id);
            let script = self.script.clone();
            let (version, input, ttl) = (r.version, r.input.clone(), r.window_ms.max(1));
            async move {
                let (code, v, by): (i64, i64, String) = script.key(key).arg(version).arg(input).arg(ttl).invoke_async(&mut conn).await?;
                Ok::<Mark, redis::RedisError>(match code {
                    0 => Mark::New,
                    1 => Mark::Update { previous_version: v, previous_input: by },
                    3 => Mark::Redelivered,
                    _ => Mark::Repeat { marked_version: v, marked_by: by },
                })
            }
        });
        futures::future::try_join_all(calls).await
    }
}
