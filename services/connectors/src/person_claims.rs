//! The second key of a lead write (issue 22): one claim per person, `(tenant, CRM, email)`
//! (the phone where a lead has no email), besides the lead's own idempotency key.
//!
//! Why a second key: two sources can submit the same new person at the same moment (a form
//! and an ad platform's lead form, each with its own lead id, so each its own idempotency
//! key). Both writers search, neither finds the person (nobody has them yet, and HubSpot's
//! search shows a new contact seconds later anyway), and both create: two people. A lead's
//! own key cannot stop that; a key per person can. While one writer holds it, every other
//! write of that person waits; and when it is done the claim keeps the CRM record the
//! person is, so the next lead of theirs reads that record by id instead of trusting a
//! search that may not show it yet.
//!
//! The claim is a hash under the same naming as the activity claims
//! (`<prefix>:{tenant}:claim:<tenant>:person:<crm>:<digest>`) with the same `owner` and
//! `until` fields, so the writer's lease renewal and the fencing of each request
//! (`claims::FENCE_FN`) cover it like any other key: a writer that lost it meanwhile sends
//! nothing. `record` names the person (`contact:<id>` or `lead:<id>`). The email is
//! never in Redis: the key holds its SHA-256.
//!
//! `take` decides, atomically:
//! - another writer's live lease → `Busy` (wait: it is writing this person now);
//! - a lease whose writer died mid-write (it ran out) → `Lapsed`: its create may still land,
//!   so the caller waits out the late-write horizon and the search's lag before searching;
//! - otherwise → `Free`, with the record the person was last written as, if any.

use crate::claims::Claims;
use crate::person::PersonObject;
use redis::Script;
use sha2::{Digest, Sha256};
use std::time::Duration;

const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, lease, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'owner', 'until', 'record', 'at')
local cur, untl, rec, at = h[1], tonumber(h[2] or '0'), h[3] or '', tonumber(h[4] or '0')
if cur and cur ~= owner and untl > now then
  return {'busy', untl - now, rec}
end
local state = 'free'
if cur and cur ~= owner then state = 'lapsed' end
redis.call('HSET', KEYS[1], 'owner', owner, 'until', now + lease)
redis.call('PEXPIRE', KEYS[1], keep)
-- How long ago the record was written (-1: never).
local age = -1
if rec ~= '' and at > 0 then age = now - at end
return {state, age, rec}
";

// Ends our lease; with a record, remembers it as the person, and when (a merge or a delete
// since can make it stale: the writer reads it by id first and searches when it is gone).
const GIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, keep, rec = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('HGET', KEYS[1], 'owner') ~= owner then return 0 end
if rec ~= '' then redis.call('HSET', KEYS[1], 'record', rec, 'at', now) end
redis.call('HDEL', KEYS[1], 'owner', 'until')
redis.call('PEXPIRE', KEYS[1], keep)
return 1
";

// The reconciler found the person a claim remembers gone from the CRM: merged into another
// (ARGV[2], `object:id`) or deleted (ARGV[2] empty). Changes the record only while it is still
// the one found gone (ARGV[1]): a writer that learned another since knows better. A lease
// held meanwhile is left alone (its writer's `give` stands); `at` stays, so the writer's
// choice between reading by id and searching is unchanged.
const FOLLOW: &str = r"
if redis.call('HGET', KEYS[1], 'record') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'record', 'at')
else
  redis.call('HSET', KEYS[1], 'record', ARGV[2])
end
return 1
";

/// The person a claim remembers: the record, and how long ago it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub object: PersonObject,
    pub id: String,
    pub age: Duration,
}

/// What `take` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonClaim {
    /// Ours now; the person this key was last written as, if any.
    Free { known: Option<Known> },
    /// Ours now, but the writer before us died holding it: its write may still land.
    Lapsed { known: Option<Known> },
    /// Another writer is writing this person; try again after this long.
    Busy { retry_after: Duration },
}

/// The person claims, over the activity claims' store and lease.
#[derive(Clone)]
pub struct PersonClaims {
    claims: Claims,
    retention: Duration,
    take: std::sync::Arc<Script>,
    give: std::sync::Arc<Script>,
    follow: std::sync::Arc<Script>,
}

/// The person's part of the key: the canonical email (lower case), else the E.164 phone.
pub fn person_key(tenant_id: &str, crm: &str, email_or_phone: &str) -> String {
    let digest = Sha256::digest(email_or_phone.trim().to_lowercase().as_bytes());
    format!("{tenant_id}:person:{crm}:{}", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A person as claims and audit records name them: `contact:<id>` or `lead:<id>` (empty: no one).
pub fn record_text(known: Option<&(PersonObject, String)>) -> String {
    known.map(|(o, id)| format!("{}:{id}", o.as_str())).unwrap_or_default()
}

/// The person `record_text` named; None for anything else.
pub fn parse_record(text: &str) -> Option<(PersonObject, String)> {
    let (object, id) = text.split_once(':')?;
    Some((PersonObject::parse(object)?, id.to_string())).filter(|(_, id)| !id.is_empty())
}

impl PersonClaims {
    /// `retention`: how long a person's record is remembered after their last write.
    pub fn new(claims: Claims, retention: Duration) -> PersonClaims {
        PersonClaims {
            claims,
            retention,
            take: std::sync::Arc::new(Script::new(TAKE)),
            give: std::sync::Arc::new(Script::new(GIVE)),
            follow: std::sync::Arc::new(Script::new(FOLLOW)),
        }
    }

    pub fn lease(&self) -> Duration {
        self.claims.lease()
    }

    pub async fn take(&self, tenant_id: &str, key: &str) -> redis::RedisResult<PersonClaim> {
        let mut conn = self.claims.conn().clone();
        let (state, wait, rec): (String, i64, String) = self
            .take
            .key(self.claims.key(tenant_id, key))
            .arg(self.claims.owner())
            .arg(self.lease().as_millis() as u64)
            .arg(self.retention.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let known = parse_record(&rec).map(|(object, id)| Known { object, id, age: Duration::from_millis(wait.max(0) as u64) });
        Ok(match state.as_str() {
            "busy" => PersonClaim::Busy { retry_after: Duration::from_millis(wait.max(1) as u64) },
            "lapsed" => PersonClaim::Lapsed { known },
            _ => PersonClaim::Free { known },
        })
    }

    /// The next turn of the tenant's round-robin over `n` owners (0-based): one counter per
    /// tenant and CRM in Redis, so replicas take turns between them, fairly.
    pub async fn next_turn(&self, tenant_id: &str, crm: &str, n: usize) -> redis::RedisResult<usize> {
        let mut conn = self.claims.conn().clone();
        let key = crm_common::redis_keys::lead_turn(self.claims.prefix(), tenant_id, crm);
        let count: u64 = redis::cmd("INCR").arg(&key).query_async(&mut conn).await?;
        Ok(((count.saturating_sub(1)) % n.max(1) as u64) as usize)
    }

    /// Ends our lease, remembering `written` as the person when given. False when the lease
    /// was no longer ours (another writer took it over: what it learns stands).
    pub async fn give(&self, tenant_id: &str, key: &str, written: Option<&(PersonObject, String)>) -> redis::RedisResult<bool> {
        let mut conn = self.claims.conn().clone();
        let n: i64 = self
            .give
            .key(self.claims.key(tenant_id, key))
            .arg(self.claims.owner())
            .arg(self.retention.as_millis() as u64)
            .arg(record_text(written))
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}

impl PersonClaims {
    /// The reconciler's answer to a person found gone: the claim that remembers `from` now
    /// names `to` (the person they were merged or converted into), or nobody (deleted: their
    /// next lead searches). False when the claim remembers someone else (or no one) by now.
    pub async fn follow(
        &self,
        tenant_id: &str,
        key: &str,
        from: &(PersonObject, String),
        to: Option<&(PersonObject, String)>,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.claims.conn().clone();
        let n: i64 = self
            .follow
            .key(self.claims.key(tenant_id, key))
            .arg(record_text(Some(from)))
            .arg(record_text(to))
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_the_person_not_their_address() {
        let a = person_key("acme", "hubspot", "Jane@X.example ");
        assert_eq!(a, person_key("acme", "hubspot", "jane@x.example"), "the address as the normaliser canonicalises it");
        assert!(a.starts_with("acme:person:hubspot:") && !a.contains("jane"), "{a}");
        assert_ne!(a, person_key("acme", "salesforce", "jane@x.example"));
        assert_ne!(a, person_key("globex", "hubspot", "jane@x.example"));
    }

    #[test]
    fn records_round_trip_and_junk_is_none() {
        let rec = (PersonObject::Lead, "00Q1".to_string());
        assert_eq!(parse_record(&record_text(Some(&rec))), Some(rec));
        assert_eq!(parse_record(""), None);
        assert_eq!(parse_record("contact:"), None);
        assert_eq!(parse_record("deal:1"), None);
    }
}
