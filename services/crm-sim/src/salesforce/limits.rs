//! Salesforce's limits (CRM-APIS §2.5): a rolling 24-hour allocation of API requests per org,
//! shared by every integration, reported on every response in `Sforce-Limit-Info`; and a cap
//! on concurrent long-running requests (20 s or more). Both answer 403
//! `REQUEST_LIMIT_EXCEEDED`, never 429, and there is no Retry-After.

use super::errors;
use crate::gate::{set_header, Class};
use crate::state::{Account, Caller};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// API requests per rolling 24 hours per org.
    pub daily_requests: u64,
    /// Concurrent requests that have run for `long_running_ms` or more.
    pub long_running_concurrency: u64,
    pub long_running_ms: i64,
}

pub fn preset(edition: &str, licenses: u64) -> Result<Limits, String> {
    let (daily, conc) = match edition {
        "developer" | "trial" => (15_000, 5),
        "professional" | "enterprise" => (100_000 + 1_000 * licenses, 25),
        "unlimited" | "performance" => (100_000 + 5_000 * licenses, 25),
        other => return Err(format!("unknown Salesforce edition {other:?} (developer, professional, enterprise, unlimited, performance)")),
    };
    Ok(Limits { daily_requests: daily, long_running_concurrency: conc, long_running_ms: 20_000 })
}

pub fn limits(acct: &Account) -> Limits {
    acct.limits.salesforce().clone()
}

pub fn admit(acct: &mut Account, _caller: &Caller, _class: Class, now: i64) -> Result<(), Response> {
    let l = limits(acct);
    let long = acct.in_flight.values().filter(|&&start| now - start >= l.long_running_ms).count() as u64;
    if long >= l.long_running_concurrency {
        return Err(errors::error(403, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.", &[]));
    }
    if acct.usage.day_rolling.try_take(now, 1, l.daily_requests).is_err() {
        return Err(errors::error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", &[]));
    }
    Ok(())
}

pub fn used(acct: &mut Account, now: i64) -> (u64, u64) {
    (acct.usage.day_rolling.used(now), limits(acct).daily_requests)
}

pub fn headers(acct: &mut Account, now: i64, h: &mut HeaderMap) {
    let (used, max) = used(acct, now);
    set_header(h, "sforce-limit-info", format!("api-usage={used}/{max}"));
}
