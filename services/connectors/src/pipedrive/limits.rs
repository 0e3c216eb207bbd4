//! Pipedrive's limits (CRM-APIS §4.5) as buckets: a rolling two-second burst per token
//! (larger for OAuth), search's own burst, and the company's daily token budget, shared by
//! every user, token and app and reset at midnight server time, which each endpoint spends
//! at its own cost. `x-ratelimit-remaining` corrects the burst and
//! `x-daily-ratelimit-token-remaining` the budget.

use crate::api::{Policy, Reply, RequestClass, StatedLimit, Verdict};
use crate::bucket::{BucketSet, Limit};
use crm_common::overrides::{numbers, with_overrides};
use crm_common::tenants::CrmConnection;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub burst_per_2s: u64,
    pub search_per_2s: u64,
    pub daily_tokens: u64,
    /// API v2 token costs: get one, list, create, update, search (Pipedrive's, not a setting).
    #[serde(skip, default = "v2_costs")]
    pub costs: [u64; 5],
}

fn v2_costs() -> [u64; 5] {
    [1, 10, 5, 5, 20]
}

/// A plan's limits for `seats` (the tenant's `limits.seats`) and the kind of credentials,
/// then the overrides.
pub fn plan(conn: &CrmConnection, oauth: bool) -> Result<Plan, String> {
    let seats = conn.limits.get("seats").copied().unwrap_or(1).max(1);
    let (mult, api, oauth_burst) = match conn.plan.to_ascii_lowercase().as_str() {
        "lite" | "essential" => (1, 20, 80),
        "growth" | "advanced" => (2, 40, 160),
        "professional" => (3, 80, 320),
        "premium" | "power" => (5, 100, 400),
        "ultimate" | "enterprise" => (7, 120, 480),
        other => return Err(format!("unknown Pipedrive plan '{other}' (lite, growth, professional, premium, ultimate)")),
    };
    let p = Plan {
        burst_per_2s: if oauth { oauth_burst } else { api },
        search_per_2s: 10,
        daily_tokens: 30_000 * mult * seats,
        costs: v2_costs(),
    };
    with_overrides(p, &numbers(&conn.limits), &["seats"])
}

pub struct PipedrivePolicy {
    pub tenant_id: String,
    pub plan: Plan,
    pub tz_offset_min: i32,
}

fn num(reply: &Reply, name: &str) -> Option<u64> {
    reply.header(name).and_then(|v| v.trim().parse().ok())
}

impl PipedrivePolicy {
    fn cost(&self, class: RequestClass) -> u64 {
        let i = match class {
            RequestClass::Read => 0,
            RequestClass::List => 1,
            RequestClass::Create => 2,
            RequestClass::Update => 3,
            _ => 4,
        };
        self.plan.costs[i]
    }
}

impl Policy for PipedrivePolicy {
    fn buckets(&self, class: RequestClass) -> BucketSet {
        let window = Duration::from_secs(2);
        // A token counts from its request's answer (`TokenBuckets::settle`), by which
        // Pipedrive has counted it: the margin only covers clock rounding.
        let margin = Duration::from_millis(20);
        let mut limits = vec![
            Limit::Rolling { name: "burst".into(), max: self.plan.burst_per_2s, window, margin },
            Limit::Daily { name: "budget".into(), max: self.plan.daily_tokens, tz_offset_min: self.tz_offset_min },
        ];
        if class == RequestClass::Search {
            limits.push(Limit::Rolling { name: "search".into(), max: self.plan.search_per_2s, window, margin });
        }
        BucketSet { tenant_id: self.tenant_id.clone(), crm: "pipedrive".into(), limits }
    }

    fn costs(&self, class: RequestClass, _records: u64, set: &BucketSet) -> Vec<u64> {
        set.limits.iter().map(|l| if l.name() == "budget" { self.cost(class) } else { 1 }).collect()
    }

    fn observed(&self, reply: &Reply, _class: RequestClass) -> Vec<(String, u64)> {
        let mut out = vec![];
        if let Some(r) = num(reply, "x-ratelimit-remaining") {
            out.push(("burst".to_string(), r));
        }
        if let Some(r) = num(reply, "x-daily-ratelimit-token-remaining") {
            out.push(("budget".to_string(), r));
        }
        out
    }

    /// `x-ratelimit-limit` (the token's burst per 2 s; a search's own limiter states its own)
    /// and `x-daily-ratelimit-token-limit` (the company's daily budget, when sent).
    fn stated_limits(&self, reply: &Reply, class: RequestClass) -> Vec<StatedLimit> {
        let mut out = vec![];
        if class != RequestClass::Search {
            if let Some(max) = num(reply, "x-ratelimit-limit") {
                out.push(StatedLimit { limit: "burst", setting: "burst_per_2s", max });
            }
        }
        if let Some(max) = num(reply, "x-daily-ratelimit-token-limit") {
            out.push(StatedLimit { limit: "budget", setting: "daily_tokens", max });
        }
        out
    }

    fn classify(&self, reply: &Reply) -> Verdict {
        super::errors::classify(reply, self.tz_offset_min)
    }

    fn rate_headers(&self, reply: &Reply) -> String {
        reply.headers_text(&[
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-daily-ratelimit-token-remaining",
            "retry-after",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    use crate::client::test_connection as conn;

    #[test]
    fn plans_seats_credentials_and_overrides() {
        let p = plan(&conn("growth", &[("seats", 5)]), false).unwrap();
        assert_eq!((p.burst_per_2s, p.daily_tokens), (40, 300_000));
        assert_eq!(plan(&conn("growth", &[]), true).unwrap().burst_per_2s, 160, "OAuth apps get a larger burst");
        assert_eq!(plan(&conn("lite", &[("daily_tokens", 50)]), false).unwrap().daily_tokens, 50);
        assert!(plan(&conn("platinum", &[]), false).unwrap_err().contains("platinum"));
    }

    #[test]
    fn each_endpoint_spends_its_cost_from_the_budget_and_one_from_the_bursts() {
        let p = PipedrivePolicy { tenant_id: "initech".into(), plan: plan(&conn("growth", &[]), false).unwrap(), tz_offset_min: 60 };
        let search = p.buckets(RequestClass::Search);
        assert_eq!(search.limits.iter().map(|l| l.name()).collect::<Vec<_>>(), vec!["burst", "budget", "search"]);
        assert_eq!(p.costs(RequestClass::Search, 1, &search), vec![1, 20, 1]);
        let create = p.buckets(RequestClass::Create);
        assert_eq!(p.costs(RequestClass::Create, 1, &create), vec![1, 5]);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("38"));
        h.insert("x-daily-ratelimit-token-remaining", HeaderValue::from_static("1000"));
        let r = Reply { status: 200, headers: h, body: String::new() };
        assert_eq!(p.observed(&r, RequestClass::Create), vec![("burst".to_string(), 38), ("budget".to_string(), 1000)]);
    }
}
