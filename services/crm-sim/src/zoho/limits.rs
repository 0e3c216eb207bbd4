//! Zoho CRM's limits (CRM-APIS §3.5): API credits per org over a rolling 24 hours (each credit
//! freed 24 h after it was spent; inserts and updates cost a credit per ten records), a cap on
//! concurrent requests per org per app, and a per-minute pace (DESIGN §5, about 150). All three
//! answer the same 429 `TOO_MANY_REQUESTS`, with nothing to tell them apart and no Retry-After.
//! `X-API-CREDITS-REMAINING` appears only once half the credits are spent.

use super::errors;
use crate::gate::{set_header, Class};
use crate::state::{Account, Caller};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Credits per rolling 24 hours per org.
    pub credits_per_24h: u64,
    /// Requests in progress at once per org per app.
    pub concurrency: u64,
    /// Requests per rolling minute per org.
    pub per_minute: u64,
    /// Records per credit on insert/update/upsert.
    pub records_per_credit: u64,
}

pub fn preset(edition: &str, users: u64) -> Result<Limits, String> {
    let (credits, conc) = match edition {
        "free" => (5_000, 5),
        "standard" | "starter" => ((50_000 + 250 * users).min(100_000), 10),
        "professional" => ((50_000 + 500 * users).min(3_000_000), 15),
        "enterprise" | "zoho_one" => ((50_000 + 1_000 * users).min(5_000_000), 20),
        "ultimate" | "crm_plus" => (50_000 + 2_000 * users, 25),
        other => return Err(format!("unknown Zoho edition {other:?} (free, standard, professional, enterprise, ultimate)")),
    };
    Ok(Limits { credits_per_24h: credits, concurrency: conc, per_minute: 150, records_per_credit: 10 })
}

pub fn limits(acct: &Account) -> Limits {
    acct.limits.zoho().clone()
}

pub fn admit(acct: &mut Account, _caller: &Caller, _class: Class, now: i64) -> Result<(), Response> {
    let l = limits(acct);
    if acct.in_flight.len() as u64 >= l.concurrency {
        return Err(errors::too_many_requests());
    }
    if acct.usage.day_rolling.used(now) + 1 > l.credits_per_24h {
        return Err(errors::too_many_requests());
    }
    if acct.usage.minute.try_take(now, 1, l.per_minute).is_err() {
        return Err(errors::too_many_requests());
    }
    acct.usage.day_rolling.take(now, 1);
    Ok(())
}

/// Credits a request costs beyond the first: one per `records_per_credit` records.
pub fn extra_credits(acct: &Account, records: usize) -> u64 {
    let per = limits(acct).records_per_credit.max(1);
    (records as u64).div_ceil(per).saturating_sub(1)
}

pub fn finish(acct: &mut Account, caller: &Caller, charge: u64, now: i64, h: &mut HeaderMap) {
    if charge > 0 {
        acct.usage.day_rolling.take(now, charge);
    }
    let l = limits(acct);
    let used = acct.usage.day_rolling.used(now);
    if used * 2 >= l.credits_per_24h {
        set_header(h, "x-api-credits-remaining", l.credits_per_24h.saturating_sub(used));
    }
    if let Some(exp) = caller.expires_at_ms {
        set_header(h, "x-accesstoken-reset", super::zoho_datetime(exp));
    }
}
