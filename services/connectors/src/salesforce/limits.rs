//! Salesforce's limits (CRM-APIS §2.5) as buckets. The org's allocation is a rolling 24 h
//! window that only Salesforce sees into and that every integration spends: the bucket
//! follows `Sforce-Limit-Info: api-usage=used/max` on every answer (a reported limit), not a
//! local counter. An exhausted allowance answers 403 REQUEST_LIMIT_EXCEEDED, not 429.

use crate::api::{Policy, Reply, RequestClass, StatedLimit, Verdict};
use crate::bucket::{BucketSet, Limit};
use crm_common::overrides::{numbers, with_overrides};
use crm_common::tenants::CrmConnection;
use std::time::Duration;

/// The org's limits as a tenant may set them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// The org's allocation over a rolling 24 h.
    pub daily_api_requests: u64,
    /// How often a spent allowance is probed, in seconds (default a minute): the rolling
    /// window frees calls as the ones from 24 h ago age out, and only a live request's
    /// header tells.
    pub recheck_s: u64,
}

/// The org's allocation by edition and licenses (`licenses` in the tenant's limits), then
/// the tenant's overrides (`daily_api_requests`, `recheck_s`).
pub fn plan(conn: &CrmConnection) -> Result<Plan, String> {
    let licenses = conn.limits.get("licenses").copied().unwrap_or(0);
    let daily_api_requests = match conn.plan.to_ascii_lowercase().as_str() {
        "developer" => 15_000,
        "professional" | "enterprise" => 100_000 + 1_000 * licenses,
        "unlimited" | "performance" => 100_000 + 5_000 * licenses,
        other => return Err(format!("unknown Salesforce edition '{other}' (developer, professional, enterprise, unlimited, performance)")),
    };
    with_overrides(Plan { daily_api_requests, recheck_s: 60 }, &numbers(&conn.limits), &["licenses"])
}

impl Plan {
    /// How often a spent allowance is probed (at least every second).
    pub fn recheck(&self) -> Duration {
        Duration::from_secs(self.recheck_s.max(1))
    }
}

pub fn buckets(tenant_id: &str, allocation: u64, recheck: Duration) -> BucketSet {
    BucketSet {
        tenant_id: tenant_id.to_string(),
        crm: "salesforce".into(),
        limits: vec![Limit::Reported { name: "api".into(), max: allocation, recheck }],
    }
}

pub struct SalesforcePolicy {
    pub tenant_id: String,
    pub allocation: u64,
    pub recheck: Duration,
}

impl Policy for SalesforcePolicy {
    fn buckets(&self, _class: RequestClass) -> BucketSet {
        buckets(&self.tenant_id, self.allocation, self.recheck)
    }

    fn observed(&self, reply: &Reply, _class: RequestClass) -> Vec<(String, u64)> {
        observed(reply)
    }

    /// The org's allocation, the max of `Sforce-Limit-Info: api-usage=used/max`.
    fn stated_limits(&self, reply: &Reply, _class: RequestClass) -> Vec<StatedLimit> {
        api_usage(reply).map(|(_, max)| vec![StatedLimit { limit: "api", setting: "daily_api_requests", max }]).unwrap_or_default()
    }

    fn classify(&self, reply: &Reply) -> Verdict {
        super::errors::classify(reply, self.recheck)
    }

    fn rate_headers(&self, reply: &Reply) -> String {
        reply.headers_text(&["sforce-limit-info"])
    }
}

/// (used, max) from `Sforce-Limit-Info: api-usage=18/5000[, per-app-api-usage=…]`.
pub fn api_usage(reply: &Reply) -> Option<(u64, u64)> {
    let v = reply.header("sforce-limit-info")?;
    let usage = v.split(',').map(str::trim).find_map(|p| p.strip_prefix("api-usage="))?;
    let (used, max) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
}

/// What the header says is left, for the bucket.
pub fn observed(reply: &Reply) -> Vec<(String, u64)> {
    api_usage(reply).map(|(used, max)| vec![("api".to_string(), max.saturating_sub(used))]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    use crate::client::test_connection as conn;

    fn allocation(conn: &CrmConnection) -> Result<u64, String> {
        plan(conn).map(|p| p.daily_api_requests)
    }

    #[test]
    fn allocation_by_edition_and_licenses() {
        assert_eq!(allocation(&conn("enterprise", &[("licenses", 20)])).unwrap(), 120_000);
        assert_eq!(allocation(&conn("Unlimited", &[("licenses", 10)])).unwrap(), 150_000);
        assert_eq!(allocation(&conn("developer", &[])).unwrap(), 15_000);
        assert_eq!(allocation(&conn("enterprise", &[("daily_api_requests", 500)])).unwrap(), 500);
        assert!(allocation(&conn("essentials", &[])).unwrap_err().contains("essentials"));
        assert!(allocation(&conn("enterprise", &[("burst", 1)])).unwrap_err().contains("burst"));
    }

    #[test]
    fn the_limit_info_header_drives_the_bucket() {
        let mut h = HeaderMap::new();
        h.insert("sforce-limit-info", HeaderValue::from_static("api-usage=18/5000, per-app-api-usage=17/250(appName=crm-sync)"));
        let r = Reply { status: 200, headers: h, body: String::new() };
        assert_eq!(api_usage(&r), Some((18, 5000)));
        assert_eq!(observed(&r), vec![("api".to_string(), 4982)]);
        let none = Reply { status: 200, headers: HeaderMap::new(), body: String::new() };
        assert!(observed(&none).is_empty());
        assert!(matches!(buckets("acme", 5000, Duration::from_secs(60)).limits[0], Limit::Reported { max: 5000, .. }));
        assert_eq!(plan(&conn("enterprise", &[("recheck_s", 2)])).unwrap().recheck(), Duration::from_secs(2));
        assert_eq!(plan(&conn("enterprise", &[("recheck_s", 0)])).unwrap().recheck(), Duration::from_secs(1));
    }
}
