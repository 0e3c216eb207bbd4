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

use crm_common::redis_conn::RedisConn;
use redis::Script;
use std::time::Duration;

const CLAIM: &str = r"
local function claim(key, epoch_key, v, owner, lease, keep, era, skew, now)
-- The claim store's epoch for this tenant: since when it remembers every claim. A Redis that
-- lost its data has lost this key too, so the first claim after the loss starts a new epoch.
local epoch = tonumber(redis.call('GET', epoch_key) or '0')
if epoch == 0 then
  epoch = now
  redis.call('SET', epoch_key, now)
end
local h = redis.call('HMGET', key, 'done_version', 'record_id', 'owner', 'until', 'at')
local done, rid, cur, untl, at = tonumber(h[1]), h[2], h[3], tonumber(h[4] or '0'), tonumber(h[5] or '0')
if done and done >= v then
  return {'done', rid or '', 0, epoch, 0, now}
end
if cur and cur ~= owner and untl > now then
  return {'busy', rid or '', untl - now, epoch, 0, now}
end
local state = 'create'
if cur then state = 'recover' elseif done then state = 'update' end
-- A create for an activity older than what the store is sure to remember (its epoch, or
-- the claims' retention) may have been written under a claim this store no longer has.
local sure_since = math.max(epoch, now - keep) + skew
local forgotten = state == 'create' and era < sure_since
if forgotten then state = 'forgotten' end
-- A recovering writer learns when the lost write was claimed: it cannot have reached the
-- CRM before that (Pipedrive's lookup lists activities changed since then). A forgotten
-- write with no era (0: a meeting's later version) may have landed at any time: it is kept
-- as -1, since 0 means 'not set' and a recovery of this claim's expired lease would take
-- its own time instead (the reliability suite saw that look past the record the dead
-- writer had created, and a second Pipedrive meeting written).
if state == 'forgotten' then
  at = era
  if at <= 0 then at = -1 end
elseif state ~= 'recover' or at == 0 then
  at = now
end
-- Our own lease: the earlier attempt was ours and ended before now.
local prev = untl
if cur == owner then prev = now end
redis.call('HSET', key, 'owner', owner, 'until', now + lease, 'version', v, 'at', at)
redis.call('PEXPIRE', key, keep)
return {state, rid or '', at, epoch, prev, now}
end

-- KEYS: the tenant's epoch, then the keys to claim; ARGV: owner, lease, retention, clock
-- skew, then a version and an era per key. One answer per key, as `claim` gives it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, lease, keep, skew = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 2, #KEYS do
  out[i - 1] = claim(KEYS[i], KEYS[1], tonumber(ARGV[2 * i + 1]), owner, lease, keep, tonumber(ARGV[2 * i + 2]), skew, now)
end
return out
";

// Fencing: before a write goes out (and on every renewal while it is alive), each key must
// still be leased to this writer; those that are get their lease extended from now. A key
// whose owner changed (another writer recovered it after our lease ran out), that was
// finished or released, or that Redis lost, is no longer ours: its write is abandoned.
// Every key names the same tenant's hash tag, so on Redis Cluster they share a slot.
// A Lua function over KEYS[from .. from + n - 1], so the bucket take that pays for a write
// (`bucket::TAKE`) fences it in the same round trip; 1 per key still ours, 0 per key lost.
pub(crate) const FENCE_FN: &str = r"
local function fence(from, n, owner, lease, now)
  local out = {}
  for i = 1, n do
    local k = KEYS[from + i - 1]
    if redis.call('HGET', k, 'owner') == owner then
      redis.call('HSET', k, 'until', now + lease)
      out[i] = 1
    else
      out[i] = 0
    end
  end
  return out
end
";

const FENCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return fence(1, #KEYS, ARGV[1], tonumber(ARGV[2]), now)
";

const DONE: &str = r"
local owner, keep = ARGV[1], tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  local v, rid = tonumber(ARGV[2 * i + 1]), ARGV[2 * i + 2]
  local done = tonumber(redis.call('HGET', k, 'done_version') or '-1')
  if v > done then
    redis.call('HSET', k, 'done_version', v, 'record_id', rid)
  end
  if redis.call('HGET', k, 'owner') == owner then
    redis.call('HDEL', k, 'owner', 'until', 'version', 'at')
  end
  redis.call('PEXPIRE', k, keep)
end
return #KEYS
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

/// Why a claim must look the CRM up before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A lease ran out with its write unfinished (the writer died, stalled or lost its
    /// partitions), or a write of ours ended with its outcome unknown.
    ExpiredLease,
    /// The activity is older than what the claim store is sure to remember: Redis lost its
    /// data since (a new epoch), or the claim outlived its retention.
    Forgotten,
}

impl Recovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::ExpiredLease => "expired_lease",
            Recovery::Forgotten => "claim_store_forgot",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing written yet: create the record (carrying the key).
    Create,
    /// An older version is in the CRM as `record_id`: update it.
    Update { record_id: String },
    /// A write under this key may have happened: look it up in the CRM by the key before
    /// writing. `record_id` is an older version's record, if any; `since_ms` (Redis time) is
    /// the earliest the lost write can have reached the CRM (≤ 0: any time); `settle` is how long until any
    /// such write has landed (a CRM can apply a create after its client gave up), so a
    /// lookup before then may miss it.
    Recover { record_id: Option<String>, since_ms: i64, why: Recovery, settle: Duration },
    /// Written already at this version or a newer one.
    AlreadyDone { record_id: String },
    /// Another writer holds a live lease on this key; retry after this long.
    Busy { retry_after: Duration },
}

/// How long writes can take to land, for the claims' settle times.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A lease; every fenced write renews it to at least `request_timeout` past the send.
    pub lease: Duration,
    /// How long the writer waits for a CRM's answer.
    pub request_timeout: Duration,
    /// How long after its client gave up a CRM may still apply a create.
    pub late_write_horizon: Duration,
    /// Clocks of sources and Redis may disagree by this much.
    pub clock_skew: Duration,
}

impl Timing {
    /// What a lease is set to: never shorter than a request plus a quarter, so a write sent
    /// under a fresh lease has its answer (or gives up) before the lease runs out.
    pub fn effective_lease(&self) -> Duration {
        self.lease.max(self.request_timeout + self.request_timeout / 4)
    }
}

/// Declares a claim store new (a fresh key prefix, or a fresh Redis, for `crm-sync dev`,
/// benches and tests): nothing was ever written for these tenants before it, so it
/// remembers every claim from the start of time and no create needs a lookup first.
/// Never call this for a store that once held claims: that would make it forget it forgot.
pub async fn declare_fresh_store(conn: &mut RedisConn, prefix: &str, tenants: &[String]) -> redis::RedisResult<()> {
    for t in tenants {
        redis::cmd("SET").arg(crm_common::redis_keys::claims_epoch(prefix, t)).arg(1).arg("NX").query_async::<()>(conn).await?;
    }
    Ok(())
}

#[derive(Clone)]
pub struct Claims {
    conn: RedisConn,
    prefix: String,
    /// This writer's identity in leases (host, pid and a random part).
    owner: String,
    timing: Timing,
    retention: Duration,
    claim: Script,
    fence: Script,
    done: Script,
    reclaim: Script,
    release: Script,
}

impl Claims {
    pub fn new(conn: RedisConn, prefix: &str, owner: &str, timing: Timing, retention: Duration) -> Claims {
        Claims {
            conn,
            prefix: prefix.to_string(),
            owner: owner.to_string(),
            timing,
            retention,
            claim: Script::new(CLAIM),
            fence: Script::new(&[FENCE_FN, FENCE].concat()),
            done: Script::new(DONE),
            reclaim: Script::new(RECLAIM),
            release: Script::new(RELEASE),
        }
    }

    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The deployment's key prefix (`REDIS_KEY_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn lease(&self) -> Duration {
        self.timing.effective_lease()
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// `<prefix>:{tenant}:claims-epoch`: since when this store remembers the tenant's claims.
    pub fn epoch_key(&self, tenant_id: &str) -> String {
        crm_common::redis_keys::claims_epoch(&self.prefix, tenant_id)
    }

    /// `<prefix>:{tenant}:claim:<idempotency key>`.
    pub fn key(&self, tenant_id: &str, idempotency_key: &str) -> String {
        crm_common::redis_keys::claim(&self.prefix, tenant_id, idempotency_key)
    }

    /// Claims the key for `version` of an activity whose own time (a call's start) is
    /// `era_ms`: no write for it can have happened before then.
    pub async fn claim(&self, tenant_id: &str, idempotency_key: &str, version: i64, era_ms: i64) -> redis::RedisResult<Claim> {
        let mut all = self.claim_many(tenant_id, &[(idempotency_key, version, era_ms)]).await?;
        Ok(all.pop().expect("one answer per key"))
    }

    /// `claim` for several keys of one tenant (a batch's records: one step per key), in one
    /// round trip; the answers in their order.
    pub async fn claim_many(&self, tenant_id: &str, keys: &[(&str, i64, i64)]) -> redis::RedisResult<Vec<Claim>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut p = redis::pipe();
        self.add_claim_many(&mut p, tenant_id, keys);
        let (answer,): (redis::Value,) = crm_common::redis_conn::query_with_script(&self.conn, &p, &self.claim).await?;
        self.claims_from(answer)
    }

    /// `claim_many`'s script call, added to `p` (sent by `redis_conn::query_with_script` with
    /// `claim_script`), so that what a batch reads besides its claims (cached contacts,
    /// owners and contexts) goes in the same round trip; `claims_from` reads its answer.
    /// `keys` must not be empty.
    pub fn add_claim_many(&self, p: &mut redis::Pipeline, tenant_id: &str, keys: &[(&str, i64, i64)]) {
        let t = self.timing;
        let mut rkeys = Vec::with_capacity(keys.len() + 1);
        rkeys.push(self.epoch_key(tenant_id));
        rkeys.extend(keys.iter().map(|(k, _, _)| self.key(tenant_id, k)));
        let call = crm_common::redis_conn::add_script_call(p, &self.claim, &rkeys);
        call.arg(&self.owner).arg(self.lease().as_millis() as u64).arg(self.retention.as_millis() as u64);
        call.arg(t.clock_skew.as_millis() as u64);
        for (_, version, era_ms) in keys {
            call.arg(*version).arg(*era_ms);
        }
    }

    /// The claims `add_claim_many` asked for, in their order.
    pub fn claims_from(&self, answer: redis::Value) -> redis::RedisResult<Vec<Claim>> {
        let answers: Vec<(String, String, i64, i64, i64, i64)> = redis::from_redis_value(answer)?;
        Ok(answers.into_iter().map(|a| self.read_claim(a)).collect())
    }

    /// The script `add_claim_many` calls.
    pub fn claim_script(&self) -> &Script {
        &self.claim
    }

    /// One key's answer from the claim script: (state, record id, n, epoch, prev, now).
    fn read_claim(&self, (state, rid, n, epoch, prev, now): (String, String, i64, i64, i64, i64)) -> Claim {
        let t = self.timing;
        let rid = (!rid.is_empty()).then_some(rid);
        let ms = |until: i64| Duration::from_millis((until - now).max(0) as u64);
        let horizon = t.late_write_horizon.as_millis() as i64;
        match state.as_str() {
            "done" => Claim::AlreadyDone { record_id: rid.unwrap_or_default() },
            "busy" => Claim::Busy { retry_after: Duration::from_millis(n.max(1) as u64) },
            // A fenced write went out while its lease outlived the request: it ended by the
            // lease's end, and may still be applied for the horizon after that.
            "recover" => Claim::Recover { record_id: rid, since_ms: n, why: Recovery::ExpiredLease, settle: ms(prev + horizon) },
            // Writes sent before the loss ended by the new epoch plus a request's time.
            "forgotten" => Claim::Recover {
                record_id: None,
                since_ms: n - t.clock_skew.as_millis() as i64,
                why: Recovery::Forgotten,
                settle: ms(epoch + t.request_timeout.as_millis() as i64 + horizon),
            },
            "update" => Claim::Update { record_id: rid.unwrap_or_default() },
            _ => Claim::Create,
        }
    }

    /// Checks, atomically, that each key is still leased to this writer, and renews those
    /// that are: what goes out right after may take a whole request's time and still land
    /// under our lease. Answers, per key, whether it is still ours.
    pub async fn fence(&self, tenant_id: &str, idempotency_keys: &[&str]) -> redis::RedisResult<Vec<bool>> {
        if idempotency_keys.is_empty() {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        let mut inv = self.fence.prepare_invoke();
        for k in idempotency_keys {
            inv.key(self.key(tenant_id, k));
        }
        let held: Vec<i64> = inv.arg(&self.owner).arg(self.lease().as_millis() as u64).invoke_async(&mut conn).await?;
        Ok(held.into_iter().map(|h| h == 1).collect())
    }

    /// The fence of a request carrying these keys, for the take that pays for it
    /// (`TokenBuckets::try_take_fenced`): checked and renewed as `fence` does.
    pub fn fence_of(&self, tenant_id: &str, idempotency_keys: &[String]) -> crate::bucket::Fence {
        crate::bucket::Fence {
            keys: idempotency_keys.iter().map(|k| self.key(tenant_id, k)).collect(),
            owner: self.owner.clone(),
            lease: self.lease(),
        }
    }

    /// The write reached the CRM as `record_id` at `version`.
    pub async fn done(&self, tenant_id: &str, idempotency_key: &str, version: i64, record_id: &str) -> redis::RedisResult<()> {
        self.done_many(tenant_id, &[(idempotency_key, version, record_id)]).await
    }

    /// `done` for several keys of one tenant (a batch's records), in one round trip.
    pub async fn done_many(&self, tenant_id: &str, written: &[(&str, i64, &str)]) -> redis::RedisResult<()> {
        if written.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        self.add_done_many(&mut p, tenant_id, written);
        crm_common::redis_conn::query_with_script::<()>(&self.conn, &p, &self.done).await
    }

    /// `done_many`'s script call, added to `p` (sent by `redis_conn::query_with_script` with
    /// `done_script`), so that what the batch learned is cached in the same round trip. Does
    /// nothing when `written` is empty. Its answer is ignored.
    pub fn add_done_many(&self, p: &mut redis::Pipeline, tenant_id: &str, written: &[(&str, i64, &str)]) {
        if written.is_empty() {
            return;
        }
        let keys: Vec<String> = written.iter().map(|(k, _, _)| self.key(tenant_id, k)).collect();
        let call = crm_common::redis_conn::add_script_call(p, &self.done, &keys);
        call.arg(&self.owner).arg(self.retention.as_millis() as u64);
        for (_, version, record_id) in written {
            call.arg(*version).arg(*record_id);
        }
        call.ignore();
    }

    /// The script `add_done_many` calls.
    pub fn done_script(&self) -> &Script {
        &self.done
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
        let (done, rid, until): (Option<i64>, Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.key(tenant_id, idempotency_key))
            .arg("done_version")
            .arg("record_id")
            .arg("until")
            .query_async(&mut conn)
            .await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        Ok((done, rid, until.is_some_and(|u| u > now)))
    }
}
