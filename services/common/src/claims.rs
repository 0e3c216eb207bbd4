//! The writers' idempotency protocol (DESIGN §4): claim → write carrying the key → DONE with
//! the CRM record id, in Redis, one hash per idempotency key (`tenant:call:crm`):
//!
//! - `done_version`, `record_id`: what the CRM holds for this key, as far as we know;
//! - `owner`, `until`, `version`: a write in progress (a lease), by which writer, until when.
//!
//! `claim` decides, atomically:
//! - DONE at this version or higher → `AlreadyDone` (skip, audit as duplicate);
//! - a live lease held by another writer → `Busy` (wait; it is being written right now);
//! - a lease that expired (its writer died mid-write), or our own → `Recover`: the write may
//!   or may not have reached the CRM, so look the record up by key before writing again;
//! - otherwise → `Create`, or `Update { record_id }` when an older version is DONE.
//!
//! Keys hash-tag the tenant and expire after `retention` (the CRM's own key field keeps
//! protecting the record after that: recovery looks it up there).

use redis::aio::ConnectionManager;
use redis::Script;
use std::time::Duration;

const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v, owner, lease, keep = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'done_version', 'record_id', 'owner', 'until', 'at')
local done, rid, cur, untl, at = tonumber(h[1]), h[2], h[3], tonumber(h[4] or '0'), tonumber(h[5] or '0')
if done and done >= v then
  return {'done', rid or '', 0}
end
if cur and cur ~= owner and untl > now then
  return {'busy', rid or '', untl - now}
end
local state = 'create'
if cur then state = 'recover' elseif done then state = 'update' end
-- A recovering writer learns when the lost write was claimed: it cannot have reached the
-- CRM before that (Pipedrive's lookup lists activities changed since then).
if state ~= 'recover' or at == 0 then at = now end
redis.call('HSET', KEYS[1], 'owner', owner, 'until', now + lease, 'version', v, 'at', at)
redis.call('PEXPIRE', KEYS[1], keep)
return {state, rid or '', at}
";

const DONE: &str = r"
local v, owner, rid, keep = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local done = tonumber(redis.call('HGET', KEYS[1], 'done_version') or '-1')
if v > done then
  redis.call('HSET', KEYS[1], 'done_version', v, 'record_id', rid)
end
if redis.call('HGET', KEYS[1], 'owner') == owner then
  redis.call('HDEL', KEYS[1], 'owner', 'until', 'version', 'at')
end
redis.call('PEXPIRE', KEYS[1], keep)
return 1
";

// The reconciler found the record DONE names gone from the CRM and asked for it again:
// forget it, so the next claim creates. Only if DONE still names that record (a second
// request finds the new one and is a duplicate) and nobody is writing it now.
const RECLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'record_id', 'owner', 'until')
if h[1] ~= ARGV[1] then return 0 end
if h[2] and tonumber(h[3] or '0') > now then return 0 end
redis.call('HDEL', KEYS[1], 'done_version', 'record_id')
return 1
";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'owner', 'until', 'version', 'at')
  if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
  return 1
end
return 0
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing written yet: create the record (carrying the key).
    Create,
    /// An older version is in the CRM as `record_id`: update it.
    Update { record_id: String },
    /// A write under this key may have happened (lease expired or ours): look it up in the
    /// CRM by the key before writing. `record_id` is an older version's record, if any;
    /// `since_ms` (Redis time) is when the lost write was first claimed.
    Recover { record_id: Option<String>, since_ms: i64 },
    /// Written already at this version or a newer one.
    AlreadyDone { record_id: String },
    /// Another writer holds a live lease on this key; retry after this long.
    Busy { retry_after: Duration },
}

#[derive(Clone)]
pub struct Claims {
    conn: ConnectionManager,
    prefix: String,
    /// This writer's identity in leases (host, pid and a random part).
    owner: String,
    lease: Duration,
    retention: Duration,
    claim: Script,
    done: Script,
    reclaim: Script,
    release: Script,
}

impl Claims {
    pub fn new(conn: ConnectionManager, prefix: &str, owner: &str, lease: Duration, retention: Duration) -> Claims {
        Claims {
            conn,
            prefix: prefix.to_string(),
            owner: owner.to_string(),
            lease,
            retention,
            claim: Script::new(CLAIM),
            done: Script::new(DONE),
            reclaim: Script::new(RECLAIM),
            release: Script::new(RELEASE),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// `<prefix>:{tenant}:claim:<idempotency key>`.
    pub fn key(&self, tenant_id: &str, idempotency_key: &str) -> String {
        format!("{}:{{{}}}:claim:{}", self.prefix, tenant_id, idempotency_key)
    }

    pub async fn claim(&self, tenant_id: &str, idempotency_key: &str, version: i64) -> redis::RedisResult<Claim> {
        let mut conn = self.conn.clone();
        let (state, rid, wait): (String, String, i64) = self
            .claim
            .key(self.key(tenant_id, idempotency_key))
            .arg(version)
            .arg(&self.owner)
            .arg(self.lease.as_millis() as u64)
            .arg(self.retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let rid = (!rid.is_empty()).then_some(rid);
        Ok(match state.as_str() {
            "done" => Claim::AlreadyDone { record_id: rid.unwrap_or_default() },
            "busy" => Claim::Busy { retry_after: Duration::from_millis(wait.max(1) as u64) },
            "recover" => Claim::Recover { record_id: rid, since_ms: wait },
            "update" => Claim::Update { record_id: rid.unwrap_or_default() },
            _ => Claim::Create,
        })
    }

    /// The write reached the CRM as `record_id` at `version`.
    pub async fn done(&self, tenant_id: &str, idempotency_key: &str, version: i64, record_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .done
            .key(self.key(tenant_id, idempotency_key))
            .arg(version)
            .arg(&self.owner)
            .arg(record_id)
            .arg(self.retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Gives up our lease without a write (a permanent failure went to the DLQ): a replay
    /// can claim again at once.
    pub async fn release(&self, tenant_id: &str, idempotency_key: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self.release.key(self.key(tenant_id, idempotency_key)).arg(&self.owner).invoke_async(&mut conn).await?;
        Ok(n == 1)
    }

    /// Forgets that this key was written as `gone_record_id` (the reconciler found that
    /// record deleted or missing in the CRM and re-sent the request), so the next claim
    /// creates again. False when the key now names another record, or a write holds it.
    pub async fn reclaim(&self, tenant_id: &str, idempotency_key: &str, gone_record_id: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let n: i64 = self.reclaim.key(self.key(tenant_id, idempotency_key)).arg(gone_record_id).invoke_async(&mut conn).await?;
        Ok(n == 1)
    }

    /// What the claim says now, without changing it: (DONE version, record id, whether a
    /// write holds a live lease). The reconciler leaves a record alone while it is in flight.
    pub async fn state(&self, tenant_id: &str, idempotency_key: &str) -> redis::RedisResult<(Option<i64>, Option<String>, bool)> {
        let mut conn = self.conn.clone();
        let (done, rid, until): (Option<i64>, Option<String>, Option<i64>) =
            redis::cmd("HMGET").arg(self.key(tenant_id, idempotency_key)).arg("done_version").arg("record_id").arg("until").query_async(&mut conn).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Ok((done, rid, until.is_some_and(|u| u > now)))
    }
}
