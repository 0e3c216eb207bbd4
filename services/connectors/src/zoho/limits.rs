//! Zoho CRM's limits (CRM-APIS §3.5) as buckets: API credits per org over a rolling 24 hours
//! (inserts and updates cost a credit per ten records), a cap on requests in progress at
//! once per org and app, and a per-minute pace. All three answer the same 429 with nothing
//! to tell them apart and no Retry-After, so each is kept here rather than learnt from 429s;
//! `X-API-CREDITS-REMAINING` (sent once half the credits are spent) corrects the credits.
//! A 429 that still comes (other apps spend the same credits) blocks for a while that grows
//! with each 429 in a row and resets at the first success.

use crate::api::{Policy, Reply, RequestClass, Verdict};
use crate::bucket::{BucketSet, Limit};
use crm_common::overrides::{numbers, with_overrides};
use crm_common::tenants::CrmConnection;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub credits_per_24h: u64,
    pub concurrency: u64,
    pub per_minute: u64,
    /// Zoho's rule, not a tenant's setting.
    #[serde(skip, default = "ten")]
    pub records_per_credit: u64,
}

fn ten() -> u64 {
    10
}

/// An edition's limits for `users` (the tenant's `limits.users`), then the overrides.
pub fn plan(conn: &CrmConnection) -> Result<Plan, String> {
    let users = conn.limits.get("users").copied().unwrap_or(0);
    let (credits, concurrency) = match conn.plan.to_ascii_lowercase().as_str() {
        "free" => (5_000, 5),
        "standard" | "starter" => ((50_000 + 250 * users).min(100_000), 10),
        "professional" => ((50_000 + 500 * users).min(3_000_000), 15),
        "enterprise" | "zoho_one" => ((50_000 + 1_000 * users).min(5_000_000), 20),
        "ultimate" | "crm_plus" => (50_000 + 2_000 * users, 25),
        other => return Err(format!("unknown Zoho edition '{other}' (free, standard, professional, enterprise, ultimate)")),
    };
    let p = Plan { credits_per_24h: credits, concurrency, per_minute: 150, records_per_credit: 10 };
    with_overrides(p, &numbers(&conn.limits), &["users"])
}

pub struct ZohoPolicy {
    pub tenant_id: String,
    pub plan: Plan,
    /// How long a request may hold a concurrency slot (the HTTP timeout and a margin): a
    /// writer that dies mid-request gives its slot back after this.
    pub slot_lease: Duration,
    /// 429s in a row.
    pub throttled: AtomicU32,
}

impl ZohoPolicy {
    /// The block after the n-th 429 in a row: 2 s, 4 s, … up to 5 minutes.
    pub fn backoff(n: u32) -> Duration {
        Duration::from_secs(2u64.saturating_pow(n.clamp(1, 9)).min(300))
    }
}

impl Policy for ZohoPolicy {
    fn buckets(&self, _class: RequestClass) -> BucketSet {
        BucketSet {
            tenant_id: self.tenant_id.clone(),
            crm: "zoho".into(),
            limits: vec![
                // Counted in 10-minute slots: a day of credits is too many tokens to keep one
                // by one, and a credit is back at most 10 minutes after Zoho frees it.
                Limit::Slotted {
                    name: "credits".into(),
                    max: self.plan.credits_per_24h,
                    window: Duration::from_secs(86_400),
                    slot: Duration::from_secs(600),
                },
                Limit::Rolling {
                    name: "minute".into(),
                    max: self.plan.per_minute,
                    window: Duration::from_secs(60),
                    // Tokens count from their request's answer (`TokenBuckets::settle`).
                    margin: Duration::from_millis(100),
                },
                Limit::Concurrent {
                    name: "in_flight".into(),
                    max: self.plan.concurrency,
                    lease: self.slot_lease,
                    poll: Duration::from_millis(25),
                },
            ],
        }
    }

    fn costs(&self, _class: RequestClass, records: u64, set: &BucketSet) -> Vec<u64> {
        let credits = records.div_ceil(self.plan.records_per_credit.max(1)).max(1);
        set.limits.iter().map(|l| if l.name() == "credits" { credits } else { 1 }).collect()
    }

    fn observed(&self, reply: &Reply, _class: RequestClass) -> Vec<(String, u64)> {
        reply
            .header("x-api-credits-remaining")
            .and_then(|v| v.trim().parse().ok())
            .map(|r| vec![("credits".to_string(), r)])
            .unwrap_or_default()
    }

    fn classify(&self, reply: &Reply) -> Verdict {
        let v = super::errors::classify(reply);
        match &v {
            Verdict::Throttled { .. } => {
                let n = self.throttled.fetch_add(1, Ordering::Relaxed) + 1;
                Verdict::Throttled { wait: Self::backoff(n) }
            }
            Verdict::Ok => {
                self.throttled.store(0, Ordering::Relaxed);
                v
            }
            _ => v,
        }
    }

    fn rate_headers(&self, reply: &Reply) -> String {
        reply.headers_text(&["x-api-credits-remaining", "x-accesstoken-reset"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Request;
    use reqwest::header::{HeaderMap, HeaderValue};
    use serde_json::json;

    use crate::client::test_connection as conn;

    fn policy() -> ZohoPolicy {
        ZohoPolicy {
            tenant_id: "globex".into(),
            plan: plan(&conn("professional", &[("users", 10)])).unwrap(),
            slot_lease: Duration::from_secs(35),
            throttled: AtomicU32::new(0),
        }
    }

    #[test]
    fn editions_users_and_overrides() {
        let p = plan(&conn("professional", &[("users", 10)])).unwrap();
        assert_eq!((p.credits_per_24h, p.concurrency, p.per_minute), (55_000, 15, 150));
        assert_eq!(plan(&conn("standard", &[("users", 1000)])).unwrap().credits_per_24h, 100_000, "capped");
        assert_eq!(plan(&conn("free", &[("concurrency", 2)])).unwrap().concurrency, 2);
        assert!(plan(&conn("gold", &[])).unwrap_err().contains("gold"));
        assert!(plan(&conn("free", &[("burst", 1)])).unwrap_err().contains("burst"));
    }

    #[test]
    fn inserts_cost_a_credit_per_ten_records_and_429s_escalate() {
        let p = policy();
        let set = p.buckets(RequestClass::Create);
        let keys: Vec<String> = (0..25).map(|i| format!("t:call:c{i}:zoho")).collect();
        let insert = Request::new(reqwest::Method::POST, "/crm/v7/Calls", RequestClass::Create)
            .body(json!({"data": vec![json!({}); 25]}))
            .fenced(keys.iter().map(String::as_str));
        assert_eq!(insert.records(), 25);
        assert_eq!(p.costs(insert.class, insert.records(), &set), vec![3, 1, 1]);
        let read = Request::get("/crm/v7/Calls/1", RequestClass::Read);
        assert_eq!(p.costs(read.class, read.records(), &set), vec![1, 1, 1]);
        let throttle = Reply { status: 429, headers: HeaderMap::new(), body: r#"{"code":"TOO_MANY_REQUESTS","status":"error"}"#.into() };
        let waits: Vec<Verdict> = (0..3).map(|_| p.classify(&throttle)).collect();
        assert_eq!(
            waits,
            vec![
                Verdict::Throttled { wait: Duration::from_secs(2) },
                Verdict::Throttled { wait: Duration::from_secs(4) },
                Verdict::Throttled { wait: Duration::from_secs(8) }
            ]
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-credits-remaining", HeaderValue::from_static("120"));
        let ok = Reply { status: 200, headers: h, body: "{}".into() };
        assert_eq!(p.classify(&ok), Verdict::Ok);
        assert_eq!(p.classify(&throttle), Verdict::Throttled { wait: Duration::from_secs(2) }, "a success resets the escalation");
        assert_eq!(p.observed(&ok, RequestClass::Create), vec![("credits".to_string(), 120)]);
        assert_eq!(ZohoPolicy::backoff(20), Duration::from_secs(300));
    }
}
