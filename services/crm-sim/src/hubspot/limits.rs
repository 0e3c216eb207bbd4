//! HubSpot's limits (CRM-APIS §1.5): a rolling ten-second burst per app, a daily allowance per
//! account shared by its private apps (reset at midnight in the account's zone), and a separate
//! per-second limiter on the search endpoints. OAuth (public) apps get their own burst and no
//! daily cap or daily headers. Search answers carry no rate-limit headers.

use super::errors;
use crate::gate::{set_header, Class};
use crate::state::{Account, Caller};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

pub const BURST_WINDOW_MS: i64 = 10_000;
pub const SEARCH_WINDOW_MS: i64 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per rolling 10 s per private app.
    pub burst_per_10s: u64,
    /// Requests per rolling 10 s per public OAuth app per account.
    pub oauth_burst_per_10s: u64,
    /// Requests per day per account (private apps).
    pub daily: u64,
    /// Search requests per second per account.
    pub search_per_s: u64,
}

pub fn preset(plan: &str) -> Result<Limits, String> {
    let (burst, daily) = match plan {
        "free" | "starter" => (100, 250_000),
        "professional" => (190, 650_000),
        "enterprise" => (190, 1_000_000),
        "api-add-on" | "api_limit_increase" => (250, 2_000_000),
        other => return Err(format!("unknown HubSpot plan {other:?} (free, starter, professional, enterprise, api-add-on)")),
    };
    Ok(Limits { burst_per_10s: burst, oauth_burst_per_10s: 110, daily, search_per_s: 5 })
}

fn limits(acct: &Account) -> Limits {
    acct.limits.hubspot().clone()
}

fn burst_scope(caller: &Caller) -> String {
    format!("{}:{}", if caller.oauth { "oauth" } else { "app" }, caller.app)
}

fn burst_limit(l: &Limits, caller: &Caller) -> u64 {
    if caller.oauth {
        l.oauth_burst_per_10s
    } else {
        l.burst_per_10s
    }
}

pub fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
    let l = limits(acct);
    let daily_applies = !caller.oauth;
    if daily_applies && acct.usage.daily.used(now) >= l.daily {
        return Err(errors::throttled("DAILY", "You have reached your daily limit."));
    }
    if class == Class::Search {
        if acct.usage.search("account", SEARCH_WINDOW_MS).try_take(now, 1, l.search_per_s).is_err() {
            return Err(errors::throttled("SECONDLY", "You have reached your secondly limit."));
        }
    } else if acct.usage.burst(&burst_scope(caller), BURST_WINDOW_MS).try_take(now, 1, burst_limit(&l, caller)).is_err() {
        return Err(errors::throttled("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."));
    }
    if daily_applies {
        acct.usage.daily.take(now, 1);
    }
    Ok(())
}

pub fn headers(acct: &mut Account, caller: &Caller, class: Class, now: i64, h: &mut HeaderMap) {
    if class == Class::Search {
        return;
    }
    let l = limits(acct);
    let max = burst_limit(&l, caller);
    let used = acct.usage.burst(&burst_scope(caller), BURST_WINDOW_MS).used(now);
    set_header(h, "x-hubspot-ratelimit-max", max);
    set_header(h, "x-hubspot-ratelimit-remaining", max.saturating_sub(used));
    set_header(h, "x-hubspot-ratelimit-interval-milliseconds", BURST_WINDOW_MS);
    if !caller.oauth {
        set_header(h, "x-hubspot-ratelimit-daily", l.daily);
        set_header(h, "x-hubspot-ratelimit-daily-remaining", l.daily.saturating_sub(acct.usage.daily.used(now)));
        // Legacy per-second pair, still sent.
        set_header(h, "x-hubspot-ratelimit-secondly", max / 10);
        set_header(h, "x-hubspot-ratelimit-secondly-remaining", (max.saturating_sub(used)) / 10);
    }
}
