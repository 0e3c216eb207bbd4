//! Distributed rate limits (DESIGN §5): the token buckets every writer replica (and, at a
//! lower priority, the reconciler) draws from, in Redis, decided by one Lua script.
//!
//! A CRM's limit is not a smooth refill: HubSpot counts requests in a rolling 10 s window,
//! Pipedrive in 2 s, Salesforce and Zoho over a rolling 24 h, and daily budgets reset at
//! midnight. A classic refill bucket of capacity C lets 2C through in one window (drain it,
//! then it refills), which is exactly what earns 429s. So each limit here is the window
//! itself: a rolling limit keeps one entry per token spent (a sorted set scored by time) and
//! a token comes back when its entry is one window (plus a small margin) old. An entry is
//! scored by when its request was *answered* (`settle`): the CRM counted the request when it
//! arrived, which is no later than its answer, so a token returned one window after the
//! answer can never find its old request still in the CRM's window, however long the request
//! took in transit. Until it is settled an entry is scored a lease ahead (the HTTP timeout),
//! so a writer that dies mid-request keeps its token out of use until the request cannot
//! still be arriving. This is what lets the writers run at ~99% of a limit's pace: a fixed
//! transit margin had to cover the slowest request and cost 9% of HubSpot's 10 s window.
//! a daily limit is a counter that resets at midnight in the account's zone. A take spends
//! from every limit of the set or from none, against Redis's own clock, so replicas on
//! machines with skewed clocks still agree.
//!
//! Three more kinds cover the other CRMs: a *slotted* rolling window counts a long window
//! (Zoho's 24 h credits) in slots rather than token by token; a *reported* limit
//! (Salesforce's org allowance) is whatever the CRM's header last said, probed once per
//! interval when spent; a *concurrent* limit (Zoho's requests in flight) holds a slot per
//! request until `release` or its lease runs out. A request may cost different amounts in
//! each limit of its set (`try_take_each`: a Pipedrive create is one burst token and five
//! budget tokens).
//!
//! A lane about to send several reads of one set takes their tokens together
//! (`try_take_units`, see `pool`): each unit is settled by its own answer, and the units never
//! used are given back (`give_back_soon`), exactly once, gated by the grant's key.
//!
//! The CRM knows better than we do (other apps spend the same budget): `observe` lowers our
//! idea of what is left to what a response's headers say, and `block` stops every replica
//! until the CRM's reset after a 429. Keys hash-tag the tenant.

use crm_common::redis_conn::RedisConn;
use redis::Script;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Takes tokens from every limit of a set, or from none. KEYS: the set's block key, its `nl`
/// limit keys, the `nf` keys to fence, the grant's key when more than one unit is wanted, then
/// the keys of the settles that ride along. ARGV: reserve percent, take id, lease, `nl`, `nf`,
/// fence owner, fence lease, units wanted, hold, whether a grant key is given (1 or 0), five
/// per limit, then settle groups
/// (`SETTLE_FN`). Settles go first (a request answered just before this one was asked for
/// gives its tokens back), then: blocked? every limit willing? every fenced key still ours?
/// Only then is anything spent (and the fenced leases renewed).
///
/// A unit is one request's cost in each limit. Asked for several (a lane's coming reads, see
/// `Api::expect`), it grants as many as every limit has room for, at least one; given a grant
/// key it records how many there, so that the ones never used are given back exactly once
/// (`X` steps). Units held for later are scored `hold` ms further ahead (rolling tokens,
/// concurrency slots): a unit may wait that long before its request goes out. Returns
/// {wait, granted (1) or fenced off (2), lost fence positions, units, Redis's time}.
const TAKE: &str = r"
local reserve_pct = tonumber(ARGV[1])
local id = ARGV[2]
local nl, nf = tonumber(ARGV[4]), tonumber(ARGV[5])
local want, hold = tonumber(ARGV[8]), tonumber(ARGV[9])
-- Rolling tokens are scored this far ahead until `settle` scores them by the answer.
local lease = tonumber(ARGV[3]) + hold
local ki, ai = 2 + nl + nf, 11 + 5 * nl
local grant_key = nil
if ARGV[10] == '1' then
  grant_key = KEYS[ki]
  ki = ki + 1
end
while ai <= #ARGV do
  ki, ai = settle(ki, ai)
end
local blocked = tonumber(redis.call('GET', KEYS[1]) or '0')
if blocked > now then
  return {blocked - now, 0, {}, 0, now}
end
local wait = 0
local units = want
-- First pass: would every limit allow one unit, and how many?
for i = 2, 1 + nl do
  local base = 11 + (i - 2) * 5
  local kind, max, span, margin, n = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  -- Background work leaves this share of each limit to live writes.
  local reserve = math.ceil(max * reserve_pct / 100)
  local used = nil
  if n == 0 then
    -- this request costs nothing here
  elseif kind == 'R' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span - margin)
    used = redis.call('ZCARD', KEYS[i])
    if used + n + reserve > max then
      local need = used + n + reserve - max
      local old = redis.call('ZRANGE', KEYS[i], need - 1, need - 1, 'WITHSCORES')
      local w = span
      if old[2] then w = tonumber(old[2]) + span + margin - now + 1 end
      if w > wait then wait = w end
    end
  elseif kind == 'S' then
    -- A long rolling window counted in slots (Zoho's 24 h credits): a token comes back when
    -- its whole slot has left the window, never earlier.
    local h = redis.call('HGETALL', KEYS[i])
    local oldest = nil
    used = 0
    for j = 1, #h, 2 do
      local slot, c = tonumber(h[j]), tonumber(h[j + 1])
      if (slot + 1) * margin + span <= now then
        redis.call('HDEL', KEYS[i], h[j])
      else
        used = used + c
        if oldest == nil or slot < oldest then oldest = slot end
      end
    end
    if used + n + reserve > max then
      local w = span
      if oldest then w = (oldest + 1) * margin + span - now + 1 end
      if w > wait then wait = w end
    end
  elseif kind == 'C' then
    -- Holders are scored by lease expiry: a crashed holder's slot comes back by itself.
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    used = redis.call('ZCARD', KEYS[i])
    if used + n + reserve > max then
      -- Slots free when requests finish, not on a schedule: look again shortly.
      if margin > wait then wait = margin end
    end
  elseif kind == 'P' then
    local h = redis.call('HMGET', KEYS[i], 'used', 'probe')
    used = tonumber(h[1] or '0')
    if used + n + reserve > max then
      -- Only the CRM knows when its window frees: once per recheck interval one live
      -- request goes as a probe, and its answer's header sets the count again.
      local last = tonumber(h[2] or '0')
      if last == 0 then
        redis.call('HSET', KEYS[i], 'probe', now)
        if span > wait then wait = span end
      elseif now - last >= span and reserve_pct == 0 then
        redis.call('HSET', KEYS[i], 'probe', now)
        -- The probe is one request, never more.
        used = max - n - reserve
      else
        -- Background work never probes: it looks again a whole interval later.
        local w = last + span - now
        if w < 1 then w = span end
        if w > wait then wait = w end
      end
    end
  else
    local day = math.floor((now + span * 60000) / 86400000)
    local d = redis.call('HMGET', KEYS[i], 'day', 'used')
    used = 0
    if tonumber(d[1]) == day then used = tonumber(d[2]) end
    if used + n + reserve > max then
      local w = (day + 1) * 86400000 - span * 60000 - now
      if w > wait then wait = w end
    end
  end
  if used then
    units = math.min(units, math.floor((max - reserve - used) / n))
  end
end
if wait > 0 then
  return {wait, 0, {}, 0, now}
end
if units < 1 then units = 1 end
-- Fencing (DESIGN §4): a write goes out only while this writer still leases every key it
-- carries. Checked here, right before spending, so a lost lease costs no token.
if nf > 0 then
  local held = fence(2 + nl, nf, ARGV[6], tonumber(ARGV[7]), now)
  local lost = {}
  for j = 1, nf do
    if held[j] == 0 then lost[#lost + 1] = j end
  end
  if #lost > 0 then
    return {0, 2, lost, 0, now}
  end
end
-- Second pass: spend.
for i = 2, 1 + nl do
  local base = 11 + (i - 2) * 5
  local kind, span, margin, n = ARGV[base], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]) * units
  if n == 0 then
    -- nothing to spend
  elseif kind == 'R' then
    for j = 1, n do
      redis.call('ZADD', KEYS[i], now + lease, id .. ':' .. j)
    end
    redis.call('PEXPIRE', KEYS[i], lease + span + margin + 1000)
  elseif kind == 'S' then
    redis.call('HINCRBY', KEYS[i], math.floor(now / margin), n)
    redis.call('PEXPIRE', KEYS[i], span + margin + 1000)
  elseif kind == 'C' then
    for j = 1, n do
      redis.call('ZADD', KEYS[i], now + span + hold, id .. ':' .. j)
    end
    redis.call('PEXPIRE', KEYS[i], span + hold + 1000)
  elseif kind == 'P' then
    redis.call('HINCRBY', KEYS[i], 'used', n)
    redis.call('PEXPIRE', KEYS[i], 2 * 86400000)
  else
    local day = math.floor((now + span * 60000) / 86400000)
    local d = redis.call('HMGET', KEYS[i], 'day', 'used')
    if tonumber(d[1]) ~= day then
      redis.call('HSET', KEYS[i], 'day', day, 'used', n)
    else
      redis.call('HINCRBY', KEYS[i], 'used', n)
    end
    redis.call('PEXPIRE', KEYS[i], 2 * 86400000)
  end
end
if grant_key then
  -- What the unused units' return (`X` steps, gated by this key) may give back, once.
  redis.call('SET', grant_key, units, 'PX', lease + 60000)
end
return {0, 1, {}, units, now}
";

/// Lower our count of what is left in one limit to what the CRM reported (for a reported
/// limit: set it). A Lua function, so `OBSERVE` (one limit) and `SETTLE` (an answer's
/// settling and everything its headers said, in one round trip) share it.
const OBSERVE_FN: &str = r"
local function observe(key, kind, max, span, margin, remaining, id, now)
  local target = max - remaining
  if kind == 'C' then
    return 0
  elseif kind == 'S' then
    local h = redis.call('HGETALL', key)
    local used = 0
    for j = 1, #h, 2 do
      if (tonumber(h[j]) + 1) * margin + span > now then used = used + tonumber(h[j + 1]) end
    end
    if target > used then
      redis.call('HINCRBY', key, math.floor(now / margin), target - used)
      redis.call('PEXPIRE', key, span + margin + 1000)
      return target - used
    end
    return 0
  elseif kind == 'R' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span - margin)
    local used = redis.call('ZCARD', key)
    for j = 1, target - used do
      redis.call('ZADD', key, now, id .. ':o' .. j)
    end
    redis.call('PEXPIRE', key, span + margin + 1000)
    return math.max(target - used, 0)
  elseif kind == 'P' then
    -- The CRM's report is the count: set it, up or down, but only from an answer no older
    -- than the one that set it last. Answers are settled out of the order they came in (one
    -- rides its tenant's next take, another waits for the flusher, a resent pipeline applies
    -- one twice): an older answer's lower count is stale, and believing it would send
    -- requests into an allowance already spent.
    local h = redis.call('HMGET', key, 'used', 'seen')
    local used = tonumber(h[1] or '0')
    if now < tonumber(h[2] or '0') then return 0 end
    redis.call('HSET', key, 'used', target, 'seen', now)
    if target < max then redis.call('HDEL', key, 'probe') end
    redis.call('PEXPIRE', key, 2 * 86400000)
    return target - used
  else
    local day = math.floor((now + span * 60000) / 86400000)
    local d = redis.call('HMGET', key, 'day', 'used')
    local used = 0
    if tonumber(d[1]) == day then used = tonumber(d[2]) end
    if target > used then
      redis.call('HSET', key, 'day', day, 'used', target)
      redis.call('PEXPIRE', key, 2 * 86400000)
      return target - used
    end
    return 0
  end
end
";

const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// One limit: KEYS[1]; ARGV: kind, max, span, margin, remaining, id.
const OBSERVE: &str = r"
return observe(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], now)
";

/// Requests that took tokens have been answered: each one's rolling tokens are scored by its
/// answer (the CRM counted it by then), its concurrency slots are given back; a token already
/// gone (its lease ran out) stays gone. Then what the answer's headers said is left corrects
/// each limit it named (`observe`): settling first, so the request's own token is counted
/// once. One group of ARGV per answer, from `ARGV[ai]`: the take's id, how many ms ago it was
/// answered (a settle that rides a later take is scored by its answer, not by that take:
/// Redis's clock now, less the time the writer measured since, is never before the answer),
/// the number of steps, then per step (one key each, from `KEYS[ki]`):
/// - `S kind n first`: settle the take's tokens `first`..`first+n-1` (a unit of a grant of
///   several is its own range);
/// - `O kind max span margin remaining`: observe;
/// - `G`: the key is a grant's (`TAKE`): the group's `X` steps apply only if it was still
///   there (it is deleted), so a grant's unused units are given back once, however often the
///   group is sent;
/// - `X kind n first at span margin`: give back `n` tokens never used, from `first`, of a take
///   made at Redis time `at` (a counter is lowered in the slot or day it was spent in).
///
/// Returns where the next group starts.
const SETTLE_FN: &str = r"
local function settle(ki, ai)
  local id, at, steps = ARGV[ai], now - tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  local skip = false
  ai = ai + 3
  for s = 1, steps do
    local key = KEYS[ki]
    local step = ARGV[ai]
    if step == 'S' then
      local kind, n, first = ARGV[ai + 1], tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3])
      for j = first, first + n - 1 do
        local member = id .. ':' .. j
        if kind == 'R' then
          if redis.call('ZSCORE', key, member) then redis.call('ZADD', key, 'XX', at, member) end
        elseif kind == 'C' then
          redis.call('ZREM', key, member)
        end
      end
      ai = ai + 4
    elseif step == 'G' then
      skip = redis.call('DEL', key) == 0
      ai = ai + 1
    elseif step == 'X' then
      local kind, n, first, taken = ARGV[ai + 1], tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3]), tonumber(ARGV[ai + 4])
      local span, margin = tonumber(ARGV[ai + 5]), tonumber(ARGV[ai + 6])
      if skip then
        -- given back already
      elseif kind == 'R' or kind == 'C' then
        for j = first, first + n - 1 do
          redis.call('ZREM', key, id .. ':' .. j)
        end
      elseif kind == 'S' then
        local slot = math.floor(taken / margin)
        local c = tonumber(redis.call('HGET', key, slot) or '0')
        if c > 0 then redis.call('HINCRBY', key, slot, -math.min(c, n)) end
      elseif kind == 'P' then
        local used = tonumber(redis.call('HGET', key, 'used') or '0')
        if used > 0 then redis.call('HSET', key, 'used', math.max(used - n, 0)) end
      else
        local day = math.floor((taken + span * 60000) / 86400000)
        local d = redis.call('HMGET', key, 'day', 'used')
        if tonumber(d[1]) == day then
          redis.call('HSET', key, 'used', math.max(tonumber(d[2]) - n, 0))
        end
      end
      ai = ai + 7
    else
      observe(key, ARGV[ai + 1], tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3]), tonumber(ARGV[ai + 4]), tonumber(ARGV[ai + 5]), id, at)
      ai = ai + 6
    end
    ki = ki + 1
  end
  return ki, ai
end
";

/// Settle groups only (see `SETTLE_FN`): the answers no take carried along.
const SETTLE: &str = r"
local ki, ai = 1, 1
while ai <= #ARGV do
  ki, ai = settle(ki, ai)
end
return 0
";

const BLOCK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > cur then
  redis.call('SET', KEYS[1], untl, 'PX', tonumber(ARGV[1]) + 1000)
end
return untl
";

/// One limit of a CRM, as its plan sets it.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    /// At most `max` in any `window`. `margin` keeps a token out of use a little longer than
    /// the window, so a request that took long to arrive is not counted twice by the CRM.
    Rolling { name: String, max: u64, window: Duration, margin: Duration },
    /// At most `max` per calendar day in the account's zone (minutes east of UTC).
    Daily { name: String, max: u64, tz_offset_min: i32 },
    /// A window only the CRM can see into (Salesforce's rolling 24 h allocation): the count
    /// is whatever the CRM last reported (`observe` sets it, both ways), plus what was taken
    /// since. When it is spent, takers look again after `recheck`.
    Reported { name: String, max: u64, recheck: Duration },
    /// At most `max` in any `window`, counted in slots of `slot` (a window of a day holds
    /// too many tokens to keep each one): a token comes back when its slot has left the
    /// window, so the count errs by at most one slot on the safe side.
    Slotted { name: String, max: u64, window: Duration, slot: Duration },
    /// At most `max` requests in progress at once (Zoho's concurrency cap per org and app).
    /// A slot is held from the take until `release`, or until `lease` passes (a writer that
    /// died mid-request); a taker that finds no slot looks again after `poll`.
    Concurrent { name: String, max: u64, lease: Duration, poll: Duration },
}

impl Limit {
    pub fn name(&self) -> &str {
        match self {
            Limit::Rolling { name, .. }
            | Limit::Daily { name, .. }
            | Limit::Reported { name, .. }
            | Limit::Slotted { name, .. }
            | Limit::Concurrent { name, .. } => name,
        }
    }

    pub fn max(&self) -> u64 {
        match self {
            Limit::Rolling { max, .. }
            | Limit::Daily { max, .. }
            | Limit::Reported { max, .. }
            | Limit::Slotted { max, .. }
            | Limit::Concurrent { max, .. } => *max,
        }
    }

    fn args(&self) -> [String; 4] {
        match self {
            Limit::Rolling { max, window, margin, .. } => {
                ["R".into(), max.to_string(), window.as_millis().to_string(), margin.as_millis().to_string()]
            }
            Limit::Daily { max, tz_offset_min, .. } => ["D".into(), max.to_string(), tz_offset_min.to_string(), "0".into()],
            Limit::Reported { max, recheck, .. } => ["P".into(), max.to_string(), recheck.as_millis().to_string(), "0".into()],
            Limit::Slotted { max, window, slot, .. } => {
                ["S".into(), max.to_string(), window.as_millis().to_string(), slot.as_millis().max(1).to_string()]
            }
            Limit::Concurrent { max, lease, poll, .. } => {
                ["C".into(), max.to_string(), lease.as_millis().to_string(), poll.as_millis().to_string()]
            }
        }
    }
}

/// The limits one kind of request spends from, for one tenant at one CRM: e.g. HubSpot
/// writes spend from the 10-second burst and the daily allowance; searches from the
/// per-second search limit and the daily allowance.
#[derive(Debug, Clone)]
pub struct BucketSet {
    pub tenant_id: String,
    pub crm: String,
    pub limits: Vec<Limit>,
}

/// The outcome of one attempt to take tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    Granted,
    /// Not now: try again after this long (a window's oldest token coming back, midnight,
    /// or the end of a block after a 429).
    Wait(Duration),
    /// Nothing taken: these keys of the take's fence (their positions in it) are no longer
    /// leased to this writer.
    FencedOff(Vec<usize>),
}

/// Keys a request may go out only while this writer leases them (DESIGN §4): checked, and
/// renewed, in the same script that takes its tokens. Built by `Claims::fence_of`.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The claims' Redis keys (same tenant, so the same slot as its buckets).
    pub keys: Vec<String>,
    pub owner: String,
    /// Each lease is renewed to this long from now.
    pub lease: Duration,
}

/// A take of several units (`TokenBuckets::try_take_units`).
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    /// Units granted (at least one).
    pub units: u64,
    /// Redis's time at the take, in ms: where a counter's unused units are given back.
    pub at_ms: i64,
}

/// What one take asks for: one of several (`TokenBuckets::take_many`), or the one a
/// `try_take_*` makes.
#[derive(Clone, Copy)]
pub struct TakeArgs<'a> {
    pub set: &'a BucketSet,
    /// One unit's tokens per limit.
    pub costs: &'a [u64],
    /// Units wanted (as many as fit, at least one).
    pub want: u64,
    /// How long a unit may wait for its request (its tokens are leased that much longer).
    pub hold: Duration,
    pub reserve_pct: u64,
    pub id: &'a str,
    /// Checked and renewed before anything is spent (for a write's units).
    pub fence: Option<&'a Fence>,
    /// Record the grant (its key), so that its unused units can be given back.
    pub grant: bool,
}

/// A `TAKE` call's keys and arguments.
struct TakeCall {
    keys: Vec<String>,
    args: Vec<String>,
}

/// `TAKE`'s answer: wait, granted (1) or fenced off (2), lost fence positions, units, time.
type TakeAnswer = (i64, i64, Vec<usize>, u64, i64);

fn take_of((wait, granted, lost, units, at_ms): TakeAnswer) -> (Take, u64, i64) {
    let take = match granted {
        1 => Take::Granted,
        2 => Take::FencedOff(lost.into_iter().map(|j| j.saturating_sub(1)).collect()),
        _ => Take::Wait(Duration::from_millis(wait.max(1) as u64)),
    };
    (take, units, at_ms)
}

/// An answer whose settling waits for the next round trip to its tenant's keys: the script
/// arguments of one settle group (`SETTLE_FN`), all but how long ago it was answered.
struct Unsettled {
    keys: Vec<String>,
    id: String,
    /// One step per key, in order (`S kind n` or `O kind max span margin remaining`).
    steps: Vec<String>,
    answered: Instant,
}

impl Unsettled {
    fn push_to(&self, keys: &mut Vec<String>, args: &mut Vec<String>) {
        keys.extend(self.keys.iter().cloned());
        args.extend([self.id.clone(), (self.answered.elapsed().as_millis() as u64).to_string(), self.keys.len().to_string()]);
        args.extend(self.steps.iter().cloned());
    }

    fn add_to(&self, inv: &mut redis::ScriptInvocation<'_>) {
        let (mut keys, mut args) = (vec![], vec![]);
        self.push_to(&mut keys, &mut args);
        inv.key(keys).arg(args);
    }
}

/// Answers not yet settled, by tenant (whose keys share a slot).
#[derive(Default)]
struct Unsettleds {
    by_tenant: std::sync::Mutex<HashMap<String, Vec<Unsettled>>>,
    wake: tokio::sync::Notify,
    flusher: std::sync::OnceLock<()>,
}

/// How long an answer waits for a round trip of its tenant (a take, its lane's DONE) to carry
/// its settling before the flusher sends it (with every other one waiting, in one round trip
/// on one node). Its tokens are scored by the answer either way; only a concurrency slot is
/// held this much longer. 20 ms covers a lane batch's requests to its DONE (the flusher's own
/// round trips were 0.02 per record at 5 ms in `bench tenants --crm zoho`).
pub const SETTLE_WITHIN: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct TokenBuckets {
    conn: RedisConn,
    prefix: String,
    take: Script,
    observe: Script,
    settle: Script,
    block: Script,
    /// How long a rolling token stays scored ahead while its request is unanswered.
    lease: Duration,
    unsettled: Arc<Unsettleds>,
    /// How long `settle_soon` leaves an answer for a take to carry (`SETTLE_WITHIN`).
    settle_within: Duration,
}

impl TokenBuckets {
    /// Buckets whose rolling tokens count from when they are taken until `settle` says when
    /// their request was answered; see `with_lease`.
    pub fn new(conn: RedisConn, prefix: &str) -> TokenBuckets {
        TokenBuckets {
            conn,
            prefix: prefix.to_string(),
            take: Script::new(&[NOW, OBSERVE_FN, SETTLE_FN, crate::claims::FENCE_FN, TAKE].concat()),
            observe: Script::new(&[NOW, OBSERVE_FN, OBSERVE].concat()),
            settle: Script::new(&[NOW, OBSERVE_FN, SETTLE_FN, SETTLE].concat()),
            block: Script::new(BLOCK),
            lease: Duration::ZERO,
            unsettled: Arc::default(),
            settle_within: SETTLE_WITHIN,
        }
    }

    /// Rolling tokens taken are held `lease` ahead until settled: the longest a request can
    /// be on its way (the HTTP client's timeout).
    pub fn with_lease(self, lease: Duration) -> TokenBuckets {
        TokenBuckets { lease, ..self }
    }

    /// Answers wait this long for a take to carry their settling (`settle_soon`).
    pub fn with_settle_within(self, settle_within: Duration) -> TokenBuckets {
        TokenBuckets { settle_within, ..self }
    }

    fn limit_key(&self, set: &BucketSet, limit: &str) -> String {
        crm_common::redis_keys::bucket(&self.prefix, &set.tenant_id, &set.crm, limit)
    }

    fn block_key(&self, set: &BucketSet) -> String {
        crm_common::redis_keys::bucket_blocked(&self.prefix, &set.tenant_id, &set.crm)
    }

    /// Takes `n` tokens from every limit of `set`, or none. `reserve_pct` percent of each
    /// limit (rounded up) must stay unspent afterwards: 0 for live writes, more for
    /// background work (the reconciler), so it never spends what live writes need and never
    /// probes a spent allowance.
    pub async fn try_take(&self, set: &BucketSet, n: u64, reserve_pct: u64) -> redis::RedisResult<Take> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.try_take_each(set, &vec![n; set.limits.len()], reserve_pct, &id).await
    }

    /// Takes `costs[i]` tokens from limit `i` of `set` (a request that costs Pipedrive 5
    /// budget tokens counts once in its burst window), or none. `id` names the take, so
    /// concurrency slots can be given back with `release`.
    pub async fn try_take_each(&self, set: &BucketSet, costs: &[u64], reserve_pct: u64, id: &str) -> redis::RedisResult<Take> {
        self.try_take_fenced(set, costs, reserve_pct, id, None).await
    }

    /// `try_take_each` for a request that carries writes: granted only while every key of
    /// `fence` is still leased to this writer (and those leases renewed), in the same round
    /// trip. The tenant's answers waiting to be settled (`settle_soon`) ride along.
    pub async fn try_take_fenced(
        &self,
        set: &BucketSet,
        costs: &[u64],
        reserve_pct: u64,
        id: &str,
        fence: Option<&Fence>,
    ) -> redis::RedisResult<Take> {
        let t = TakeArgs { set, costs, want: 1, hold: Duration::ZERO, reserve_pct, id, fence, grant: false };
        Ok(self.take(&t).await?.0)
    }

    /// Up to `want` units of `costs` (each unit one request's tokens), at least one, in one
    /// round trip: as many as every limit has room for now. For a lane that knows it is about
    /// to send several requests of one set (`Api::expect`): one take instead of one each.
    /// Each unit is settled on its own (`settle_unit_soon`); those never used must be given
    /// back (`give_back_soon`), or they stay spent until their lease runs out. A unit may be
    /// used up to `hold` after the take (its tokens are leased that much longer). Never fenced:
    /// a write's tokens are taken when it is sent, with its fence.
    pub async fn try_take_units(
        &self,
        set: &BucketSet,
        costs: &[u64],
        want: u64,
        hold: Duration,
        reserve_pct: u64,
        id: &str,
    ) -> redis::RedisResult<Result<Grant, Duration>> {
        let t = TakeArgs { set, costs, want: want.max(1), hold, reserve_pct, id, fence: None, grant: want > 1 };
        Ok(match self.take(&t).await? {
            (Take::Granted, units, at_ms) => Ok(Grant { id: id.to_string(), units: units.max(1), at_ms }),
            (Take::Wait(w), ..) => Err(w),
            // Unfenced, never fenced off: an answer that says so is read as "look again".
            (Take::FencedOff(_), ..) => Err(Duration::from_millis(1)),
        })
    }

    /// One take (see `TAKE`): the outcome, units granted and Redis's time.
    async fn take(&self, t: &TakeArgs<'_>) -> redis::RedisResult<(Take, u64, i64)> {
        let set = t.set;
        let call = self.take_call(t);
        let mut inv = self.take.prepare_invoke();
        for k in &call.keys {
            inv.key(k);
        }
        for a in &call.args {
            inv.arg(a);
        }
        let riding = self.unsettled.take(&set.tenant_id);
        for u in &riding {
            u.add_to(&mut inv);
        }
        let mut conn = self.conn.clone();
        let answer: redis::RedisResult<TakeAnswer> = inv.invoke_async(&mut conn).await;
        match answer {
            Ok(a) => Ok(take_of(a)),
            Err(e) => {
                // Not known to be applied: they go back, for the next take or the flusher
                // (settling twice only scores a token a little later; a grant's return is
                // applied once, whatever happens).
                self.unsettled.put_back(&set.tenant_id, riding);
                Err(e)
            }
        }
    }

    /// Several takes of one tenant in one round trip (a pipeline of `TAKE` calls, each on its
    /// own: one may wait while another is granted); a take that may leave units unused sets
    /// `grant`, so that they can be given back. The tenant's waiting settlings ride the
    /// first. Answers in order: the outcome, units granted and Redis's time.
    pub async fn take_many(&self, tenant: &str, takes: &[TakeArgs<'_>]) -> redis::RedisResult<Vec<(Take, u64, i64)>> {
        if takes.is_empty() {
            return Ok(vec![]);
        }
        let riding = self.unsettled.take(tenant);
        let mut pipe = redis::pipe();
        for (i, t) in takes.iter().enumerate() {
            let mut call = self.take_call(t);
            if i == 0 {
                for u in &riding {
                    u.push_to(&mut call.keys, &mut call.args);
                }
            }
            crm_common::redis_conn::add_script_call(&mut pipe, &self.take, &call.keys).arg(&call.args);
        }
        // Every call is of one script: on NOSCRIPT none ran, and all are sent again.
        match crm_common::redis_conn::query_with_script::<Vec<TakeAnswer>>(&self.conn, &pipe, &self.take).await {
            Ok(answers) => Ok(answers.into_iter().map(take_of).collect()),
            Err(e) => {
                self.unsettled.put_back(tenant, riding);
                Err(e)
            }
        }
    }

    /// The keys and arguments of a `TAKE` call, before any settlings that ride it.
    fn take_call(&self, t: &TakeArgs<'_>) -> TakeCall {
        let set = t.set;
        let mut keys = vec![self.block_key(set)];
        for l in &set.limits {
            keys.push(self.limit_key(set, l.name()));
        }
        let (fence_keys, owner, fence_lease) = match t.fence {
            Some(f) => (f.keys.as_slice(), f.owner.as_str(), f.lease.as_millis() as u64),
            None => (&[][..], "", 0),
        };
        keys.extend(fence_keys.iter().cloned());
        if t.grant {
            keys.push(self.grant_key(set, t.id));
        }
        let mut args: Vec<String> = vec![
            t.reserve_pct.min(100).to_string(),
            t.id.to_string(),
            (self.lease.as_millis() as u64).to_string(),
            set.limits.len().to_string(),
            fence_keys.len().to_string(),
            owner.to_string(),
            fence_lease.to_string(),
            t.want.max(1).to_string(),
            (t.hold.as_millis() as u64).to_string(),
            if t.grant { "1" } else { "0" }.to_string(),
        ];
        for (i, l) in set.limits.iter().enumerate() {
            args.extend(l.args());
            args.push(t.costs.get(i).copied().unwrap_or(1).to_string());
        }
        TakeCall { keys, args }
    }

    fn grant_key(&self, set: &BucketSet, id: &str) -> String {
        crm_common::redis_keys::bucket_grant(&self.prefix, &set.tenant_id, &set.crm, id)
    }

    /// The script arguments that settle unit `unit` (1 for a take of one) of the take `id` of
    /// `set` (see `SETTLE_FN`).
    fn unsettled(&self, set: &BucketSet, id: &str, costs: &[u64], unit: u64, observed: &[(String, u64)]) -> Unsettled {
        let mut u = Unsettled { keys: vec![], id: id.to_string(), steps: vec![], answered: Instant::now() };
        for (i, l) in set.limits.iter().enumerate() {
            let kind = match l {
                Limit::Rolling { .. } => "R",
                Limit::Concurrent { .. } => "C",
                _ => continue,
            };
            let n = costs.get(i).copied().unwrap_or(1);
            u.keys.push(self.limit_key(set, l.name()));
            u.steps.extend(["S".to_string(), kind.to_string(), n.to_string(), ((unit.max(1) - 1) * n + 1).to_string()]);
        }
        for (limit, remaining) in observed {
            let Some(l) = set.limits.iter().find(|l| l.name() == limit) else { continue };
            u.keys.push(self.limit_key(set, limit));
            u.steps.push("O".into());
            u.steps.extend(l.args());
            u.steps.push((*remaining).min(l.max()).to_string());
        }
        u
    }

    /// The request the take `id` paid for has been answered (or will not be sent): its
    /// rolling tokens count from now, and its concurrency slots are given back. `observed`
    /// is what the answer's headers said is left, per limit (see `observe`): applied in the
    /// same round trip.
    pub async fn settle(&self, set: &BucketSet, id: &str, costs: &[u64], observed: &[(String, u64)]) -> redis::RedisResult<()> {
        let u = self.unsettled(set, id, costs, 1, observed);
        if u.keys.is_empty() {
            return Ok(());
        }
        let mut inv = self.settle.prepare_invoke();
        u.add_to(&mut inv);
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await
    }

    /// `settle`, without a round trip of its own: the next take of the same tenant carries
    /// it, or a pipeline of the tenant's that takes it (`add_settles`), or, within
    /// `settle_within`, the flusher, which sends every answer still waiting at once. Its
    /// tokens are scored by when it was answered either way, so the pace a limit allows is
    /// kept; a writer that stops before the flusher runs leaves them to their lease.
    pub fn settle_soon(&self, set: &BucketSet, id: &str, costs: &[u64], observed: &[(String, u64)]) {
        self.settle_unit_soon(set, id, costs, 1, observed)
    }

    /// `settle_soon` for unit `unit` (from 1) of a grant of several (`try_take_units`).
    pub fn settle_unit_soon(&self, set: &BucketSet, id: &str, costs: &[u64], unit: u64, observed: &[(String, u64)]) {
        let u = self.unsettled(set, id, costs, unit, observed);
        if u.keys.is_empty() {
            return;
        }
        self.queue(&set.tenant_id, u);
    }

    /// Gives back the units of `grant` from `used + 1` on, never used, as `settle_soon` sends
    /// a settling (they ride the tenant's next round trip): rolling tokens and concurrency
    /// slots leave their sets, counters are lowered in the slot or day they were spent in.
    /// Applied once, however often it is sent (the grant's key gates it).
    pub fn give_back_soon(&self, set: &BucketSet, costs: &[u64], grant: &Grant, used: u64) {
        if used >= grant.units {
            return;
        }
        let unused = grant.units - used;
        let mut u = Unsettled {
            keys: vec![self.grant_key(set, &grant.id)],
            id: grant.id.clone(),
            steps: vec!["G".into()],
            answered: Instant::now(),
        };
        for (i, l) in set.limits.iter().enumerate() {
            let n = costs.get(i).copied().unwrap_or(1);
            if n == 0 {
                continue;
            }
            let [kind, _max, span, margin] = l.args();
            u.keys.push(self.limit_key(set, l.name()));
            u.steps.extend([
                "X".to_string(),
                kind,
                (n * unused).to_string(),
                (used * n + 1).to_string(),
                grant.at_ms.to_string(),
                span,
                margin,
            ]);
        }
        self.queue(&set.tenant_id, u);
    }

    fn queue(&self, tenant: &str, u: Unsettled) {
        self.unsettled.put_back(tenant, vec![u]);
        self.unsettled.flusher.get_or_init(|| {
            tokio::spawn(flush_unsettled(self.clone()));
        });
        self.unsettled.wake.notify_one();
    }

    /// Adds the settlings waiting for `tenant` to `pipe` (one call of the settle script), for
    /// a round trip the tenant makes anyway (a lane batch's DONE, which is sent until it is
    /// answered). Every step may be applied twice (a pipeline resent after NOSCRIPT):
    /// settling again scores a token a little later, a give-back is gated.
    pub fn add_settles(&self, pipe: &mut redis::Pipeline, tenant: &str) {
        let waiting = self.unsettled.take(tenant);
        if waiting.is_empty() {
            return;
        }
        let (mut keys, mut args) = (vec![], vec![]);
        for u in &waiting {
            u.push_to(&mut keys, &mut args);
        }
        crm_common::redis_conn::add_script_call(pipe, &self.settle, &keys).arg(args).ignore();
    }

    /// The settle script, for `query_with_script` beside another.
    pub fn settle_script(&self) -> &Script {
        &self.settle
    }

    /// Settles every answer waiting now, in one round trip on one node (one per tenant on a
    /// cluster, whose script may touch only one slot).
    pub async fn flush(&self) {
        let all = std::mem::take(&mut *self.unsettled.by_tenant.lock().unwrap_or_else(|e| e.into_inner()));
        if all.is_empty() {
            return;
        }
        let mut groups: Vec<Vec<Unsettled>> = all.into_values().collect();
        if !self.conn.is_cluster() {
            groups = vec![groups.into_iter().flatten().collect()];
        }
        let sent = futures::future::join_all(groups.iter().map(|g| {
            let mut inv = self.settle.prepare_invoke();
            for u in g {
                u.add_to(&mut inv);
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        }))
        .await;
        for e in sent.into_iter().filter_map(Result::err) {
            // Their leases return the tokens, later than need be; the next answers' headers
            // correct the counts.
            tracing::warn!(error = %e, "could not settle requests' tokens");
        }
    }

    /// What the CRM said is left in `limit` (from its rate-limit headers). Lowers our count
    /// when the CRM has seen more use than we have; never raises it, except for a reported
    /// limit, whose count is the CRM's. Returns how much the count moved.
    pub async fn observe(&self, set: &BucketSet, limit: &str, remaining: u64) -> redis::RedisResult<i64> {
        let Some(l) = set.limits.iter().find(|l| l.name() == limit) else { return Ok(0) };
        let mut inv = self.observe.prepare_invoke();
        inv.key(self.limit_key(set, limit));
        for a in l.args() {
            inv.arg(a);
        }
        inv.arg(remaining.min(l.max())).arg(uuid::Uuid::new_v4().simple().to_string());
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await
    }

    /// Stops every take from `set` for `for_how_long` (a 429's Retry-After or the CRM's
    /// reset), across all replicas.
    pub async fn block(&self, set: &BucketSet, for_how_long: Duration) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self.block.key(self.block_key(set)).arg(for_how_long.as_millis() as u64).invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Tokens in use per limit now (for metrics and tests): rolling entries in the window,
    /// or today's count.
    pub async fn used(&self, set: &BucketSet) -> redis::RedisResult<Vec<(String, u64)>> {
        let mut conn = self.conn.clone();
        let mut out = vec![];
        for l in &set.limits {
            let key = self.limit_key(set, l.name());
            let used: u64 = match l {
                Limit::Rolling { window, margin, .. } => {
                    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
                    let now = secs * 1000 + micros / 1000;
                    let from = now.saturating_sub((*window + *margin).as_millis() as u64);
                    redis::cmd("ZCOUNT").arg(&key).arg(format!("({from}")).arg("+inf").query_async(&mut conn).await?
                }
                Limit::Slotted { window, slot, .. } => {
                    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
                    let now = secs * 1000 + micros / 1000;
                    let slots: Vec<(u64, u64)> = redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?;
                    let (w, s) = (window.as_millis() as u64, slot.as_millis().max(1) as u64);
                    slots.iter().filter(|(at, _)| (at + 1) * s + w > now).map(|(_, c)| c).sum()
                }
                Limit::Concurrent { .. } => {
                    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
                    let now = secs * 1000 + micros / 1000;
                    redis::cmd("ZCOUNT").arg(&key).arg(format!("({now}")).arg("+inf").query_async(&mut conn).await?
                }
                Limit::Daily { .. } | Limit::Reported { .. } => {
                    let v: Option<u64> = redis::cmd("HGET").arg(&key).arg("used").query_async(&mut conn).await?;
                    v.unwrap_or(0)
                }
            };
            out.push((l.name().to_string(), used));
        }
        Ok(out)
    }
}

impl Unsettleds {
    fn take(&self, tenant: &str) -> Vec<Unsettled> {
        self.by_tenant.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant).unwrap_or_default()
    }

    fn put_back(&self, tenant: &str, us: Vec<Unsettled>) {
        if us.is_empty() {
            return;
        }
        self.by_tenant.lock().unwrap_or_else(|e| e.into_inner()).entry(tenant.to_string()).or_default().extend(us);
    }
}

/// The flusher behind `settle_soon`: woken by an answer, it waits `settle_within` for takes to
/// carry what they can, then settles the rest.
async fn flush_unsettled(buckets: TokenBuckets) {
    loop {
        buckets.unsettled.wake.notified().await;
        tokio::time::sleep(buckets.settle_within).await;
        buckets.flush().await;
    }
}
