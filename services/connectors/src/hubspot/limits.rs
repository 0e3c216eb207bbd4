//! HubSpot's rate limits (CRM-APIS §1.5) as token buckets, and its headers.
//! Writes spend from the 10-second burst (per private app) and the daily allowance (per
//! account); searches from the search limiter (per account, per second) and the daily
//! allowance. Search answers carry no rate-limit headers.

use crate::api::{Policy, Reply, RequestClass, StatedLimit, Verdict};
use crate::bucket::{BucketSet, Limit};
use crm_common::overrides::{numbers, with_overrides};
use crm_common::tenants::CrmConnection;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub burst_per_10s: u64,
    pub daily: u64,
    pub search_per_s: u64,
}

/// A plan's limits, then the tenant's overrides.
pub fn plan(conn: &CrmConnection) -> Result<Plan, String> {
    let p = match conn.plan.to_ascii_lowercase().as_str() {
        "free" | "starter" => Plan { burst_per_10s: 100, daily: 250_000, search_per_s: 5 },
        "professional" => Plan { burst_per_10s: 190, daily: 650_000, search_per_s: 5 },
        "enterprise" => Plan { burst_per_10s: 190, daily: 1_000_000, search_per_s: 5 },
        // A public OAuth app: 110 per 10 s per installed account, no daily cap of its own.
        "oauth" => Plan { burst_per_10s: 110, daily: u64::MAX / 4, search_per_s: 5 },
        other => return Err(format!("unknown HubSpot plan '{other}' (free, starter, professional, enterprise, oauth)")),
    };
    with_overrides(p, &numbers(&conn.limits), &[])
}

pub struct HubspotPolicy {
    pub tenant_id: String,
    pub plan: Plan,
    pub tz_offset_min: i32,
}

impl HubspotPolicy {
    fn daily(&self) -> Limit {
        Limit::Daily { name: "daily".into(), max: self.plan.daily, tz_offset_min: self.tz_offset_min }
    }
}

fn num(reply: &Reply, name: &str) -> Option<u64> {
    reply.header(name).and_then(|v| v.trim().parse().ok())
}

impl Policy for HubspotPolicy {
    fn buckets(&self, class: RequestClass) -> BucketSet {
        let limits = if class == RequestClass::Search {
            vec![
                Limit::Rolling {
                    name: "search".into(),
                    max: self.plan.search_per_s,
                    window: Duration::from_secs(1),
                    margin: Duration::from_millis(20),
                },
                self.daily(),
            ]
        } else {
            vec![
                // A token counts from its request's answer (`TokenBuckets::settle`), by
                // which HubSpot has counted it: the margin only covers clock rounding.
                Limit::Rolling {
                    name: "burst".into(),
                    max: self.plan.burst_per_10s,
                    window: Duration::from_secs(10),
                    margin: Duration::from_millis(50),
                },
                self.daily(),
            ]
        };
        BucketSet { tenant_id: self.tenant_id.clone(), crm: "hubspot".into(), limits }
    }

    fn observed(&self, reply: &Reply, class: RequestClass) -> Vec<(String, u64)> {
        let mut out = vec![];
        if class != RequestClass::Search {
            if let Some(r) = num(reply, "x-hubspot-ratelimit-remaining") {
                out.push(("burst".to_string(), r));
            }
        }
        if let Some(r) = num(reply, "x-hubspot-ratelimit-daily-remaining") {
            out.push(("daily".to_string(), r));
        }
        out
    }

    /// `X-HubSpot-RateLimit-Max` per `-Interval-Milliseconds` (the burst, when the interval is
    /// the 10 s the plan counts in) and `-Daily` (private apps only). Search answers state none.
    fn stated_limits(&self, reply: &Reply, class: RequestClass) -> Vec<StatedLimit> {
        let mut out = vec![];
        let ten_seconds = num(reply, "x-hubspot-ratelimit-interval-milliseconds").is_none_or(|ms| ms == 10_000);
        if class != RequestClass::Search && ten_seconds {
            if let Some(max) = num(reply, "x-hubspot-ratelimit-max") {
                out.push(StatedLimit { limit: "burst", setting: "burst_per_10s", max });
            }
        }
        if let Some(max) = num(reply, "x-hubspot-ratelimit-daily") {
            out.push(StatedLimit { limit: "daily", setting: "daily", max });
        }
        out
    }

    fn classify(&self, reply: &Reply) -> Verdict {
        super::errors::classify(reply, self.tz_offset_min)
    }

    fn rate_headers(&self, reply: &Reply) -> String {
        reply.headers_text(&[
            "x-hubspot-ratelimit-max",
            "x-hubspot-ratelimit-remaining",
            "x-hubspot-ratelimit-daily-remaining",
            "retry-after",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn conn(plan: &str, limits: &[(&str, u64)]) -> CrmConnection {
        toml::from_str::<CrmConnection>(&format!("plan = '{plan}'\ncredentials_secret = 'X'\n"))
            .map(|mut c| {
                c.limits = limits.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                c
            })
            .unwrap()
    }

    #[test]
    fn plans_and_overrides() {
        assert_eq!(plan(&conn("professional", &[])).unwrap().burst_per_10s, 190);
        assert_eq!(plan(&conn("Starter", &[])).unwrap().daily, 250_000);
        let p = plan(&conn("professional", &[("burst_per_10s", 20), ("daily", 500)])).unwrap();
        assert_eq!((p.burst_per_10s, p.daily), (20, 500));
        assert!(plan(&conn("platinum", &[])).unwrap_err().contains("platinum"));
        assert!(plan(&conn("starter", &[("per_minute", 1)])).unwrap_err().contains("per_minute"));
    }

    #[test]
    fn headers_correct_burst_and_daily_but_search_has_none() {
        let p = HubspotPolicy { tenant_id: "acme".into(), plan: plan(&conn("starter", &[])).unwrap(), tz_offset_min: 0 };
        let mut h = HeaderMap::new();
        h.insert("x-hubspot-ratelimit-remaining", HeaderValue::from_static("42"));
        h.insert("x-hubspot-ratelimit-daily-remaining", HeaderValue::from_static("1000"));
        let r = Reply { status: 201, headers: h, body: String::new() };
        assert_eq!(p.observed(&r, RequestClass::Create), vec![("burst".to_string(), 42), ("daily".to_string(), 1000)]);
        assert_eq!(p.observed(&r, RequestClass::Search), vec![("daily".to_string(), 1000)]);
        assert_eq!(p.buckets(RequestClass::Search).limits[0].name(), "search");
        assert!(p.rate_headers(&r).contains("x-hubspot-ratelimit-remaining=42"));
    }
}
