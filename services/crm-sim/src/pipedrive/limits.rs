//! Pipedrive's limits (CRM-APIS §4.5): a daily token budget per company (30,000 × plan
//! multiplier × seats, shared by every user, token and app, reset at midnight server time),
//! each endpoint costing tokens; a rolling two-second burst per API or OAuth token; search's
//! own burst. 429s carry Retry-After; an exhausted budget shows
//! `x-daily-ratelimit-token-remaining: 0` and lasts until the reset.

use super::errors;
use crate::gate::{set_header, Class};
use crate::state::{Account, Caller};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Costs {
    pub get_one: u64,
    pub list: u64,
    pub create: u64,
    pub update: u64,
    pub delete: u64,
    pub search: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Tokens per day per company.
    pub daily_tokens: u64,
    /// Requests per rolling window per API token.
    pub burst_api_token: u64,
    /// Requests per rolling window per OAuth access token.
    pub burst_oauth: u64,
    /// Search requests per rolling window per token.
    pub search_burst: u64,
    pub burst_window_ms: i64,
    /// The legacy fair-use POST/PUT allowance reported in x-daily-requests-left (not enforced).
    pub fair_use_writes: u64,
    /// v2 endpoint costs (roughly half of v1's).
    pub costs: Costs,
    /// Send the undocumented x-daily-ratelimit-token-* headers seen in production.
    pub token_headers: bool,
}

pub fn preset(plan: &str, seats: u64) -> Result<Limits, String> {
    let (mult, api, oauth) = match plan {
        "lite" | "essential" => (1, 20, 80),
        "growth" | "advanced" => (2, 40, 160),
        "professional" => (3, 80, 320),
        "premium" | "power" => (5, 100, 400),
        "ultimate" | "enterprise" => (7, 120, 480),
        other => return Err(format!("unknown Pipedrive plan {other:?} (lite, growth, professional, premium, ultimate)")),
    };
    Ok(Limits {
        daily_tokens: 30_000 * mult * seats.max(1),
        burst_api_token: api,
        burst_oauth: oauth,
        search_burst: 10,
        burst_window_ms: 2_000,
        fair_use_writes: 10_000,
        costs: Costs { get_one: 1, list: 10, create: 5, update: 5, delete: 3, search: 20 },
        token_headers: true,
    })
}

pub fn limits(acct: &Account) -> Limits {
    acct.limits.pipedrive().clone()
}

fn cost(l: &Limits, class: Class) -> u64 {
    match class {
        Class::Read | Class::Meta => l.costs.get_one,
        Class::List => l.costs.list,
        Class::Create => l.costs.create,
        Class::Update => l.costs.update,
        Class::Delete => l.costs.delete,
        Class::Search => l.costs.search,
    }
}

fn burst_limit(l: &Limits, caller: &Caller) -> u64 {
    if caller.oauth {
        l.burst_oauth
    } else {
        l.burst_api_token
    }
}

fn secs(ms: i64) -> i64 {
    (ms + 999) / 1000
}

pub fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
    let l = limits(acct);
    let c = cost(&l, class);
    if acct.usage.daily.used(now) + c > l.daily_tokens {
        let reset = acct.usage.daily.ms_to_reset(now);
        return Err(errors::too_many(secs(reset)));
    }
    if class == Class::Search {
        if let Err(wait) = acct.usage.search(&caller.token, l.burst_window_ms).try_take(now, 1, l.search_burst) {
            return Err(errors::too_many(secs(wait)));
        }
    }
    if let Err(wait) = acct.usage.burst(&caller.token, l.burst_window_ms).try_take(now, 1, burst_limit(&l, caller)) {
        return Err(errors::too_many(secs(wait)));
    }
    acct.usage.daily.take(now, c);
    if class.is_write() && !caller.oauth {
        let tz = acct.tz_offset_min;
        acct.usage.writes_today.entry(caller.token.clone()).or_insert_with(|| crate::window::Daily::new(tz)).take(now, 1);
    }
    Ok(())
}

pub fn headers(acct: &mut Account, caller: &Caller, now: i64, h: &mut HeaderMap) {
    let l = limits(acct);
    let max = burst_limit(&l, caller);
    let w = acct.usage.burst(&caller.token, l.burst_window_ms);
    let used = w.used(now);
    let reset = if used == 0 { 0 } else { secs(w.next_free_ms(now)) };
    set_header(h, "x-ratelimit-limit", max);
    set_header(h, "x-ratelimit-remaining", max.saturating_sub(used));
    set_header(h, "x-ratelimit-reset", reset);
    if !caller.oauth {
        let tz = acct.tz_offset_min;
        let writes = acct.usage.writes_today.entry(caller.token.clone()).or_insert_with(|| crate::window::Daily::new(tz)).used(now);
        set_header(h, "x-daily-requests-left", l.fair_use_writes.saturating_sub(writes));
    }
    if l.token_headers {
        set_header(h, "x-daily-ratelimit-token-limit", l.daily_tokens);
        set_header(h, "x-daily-ratelimit-token-remaining", l.daily_tokens.saturating_sub(acct.usage.daily.used(now)));
    }
}
