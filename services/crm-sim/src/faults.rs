//! Faults injected through the admin API: throttles, server errors, timeouts and added latency,
//! each at a rate, optionally limited to a number of firings and to endpoints whose label
//! contains a string. `after_write` makes the CRM apply the request and then fail, which is
//! the case that makes blind retries create duplicates.

use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The CRM's own throttle answer (429, or Salesforce's 403 REQUEST_LIMIT_EXCEEDED).
    #[serde(alias = "429")]
    Throttle,
    #[serde(rename = "500")]
    Status500,
    #[serde(rename = "502")]
    Status502,
    #[serde(rename = "503")]
    Status503,
    #[serde(rename = "504")]
    Status504,
    /// Hold the request for `latency_ms` (default 30 s), then answer 504: longer than any
    /// sane client timeout.
    Timeout,
    /// Add `latency_ms` and then answer normally.
    Latency,
    /// A late write: hold the answer for `latency_ms` (default 30 s, past the client's
    /// timeout) and answer 504 if anyone is still listening; apply the request
    /// `apply_after_ms` after it arrived (default: `latency_ms` + 2 s), whether or not the
    /// client is still there. Set it past the client's timeout to play a CRM that finishes
    /// an insert after its client gave up.
    LateWrite,
    /// A success (200) whose body is not the CRM's answer: `{}`, no record, no id. With
    /// `after_write` the request was applied first. Whether a real CRM ever answers so is
    /// unknown; a proxy or a partial outage can, and a writer must not take it for "nothing
    /// was written".
    Garbled,
}

impl FaultKind {
    pub fn status(self) -> u16 {
        match self {
            FaultKind::Throttle => 429,
            FaultKind::Status500 => 500,
            FaultKind::Status502 => 502,
            FaultKind::Status503 => 503,
            FaultKind::Status504 | FaultKind::Timeout | FaultKind::LateWrite => 504,
            FaultKind::Latency | FaultKind::Garbled => 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub kind: FaultKind,
    /// Probability per matching request, 0..=1.
    #[serde(default = "one")]
    pub rate: f64,
    /// Fire at most this many times, then the rule is spent.
    #[serde(default)]
    pub count: Option<u64>,
    /// Only requests whose endpoint label ("POST /hubspot/crm/v3/objects/calls") contains this
    /// (or, ending in `$`, ends with the rest: "POST /zoho/crm/{version}/Contacts$").
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Apply the request first, then answer with the fault.
    #[serde(default)]
    pub after_write: bool,
    /// late_write: when the request is applied, after it arrived.
    #[serde(default)]
    pub apply_after_ms: Option<u64>,
    #[serde(default)]
    pub fired: u64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy)]
pub struct Firing {
    pub kind: FaultKind,
    pub latency_ms: u64,
    pub after_write: bool,
    pub apply_after_ms: u64,
}

/// Picks the first live rule that matches and fires; spent rules are dropped.
pub fn pick(rules: &mut Vec<FaultRule>, endpoint: &str, rng: &mut StdRng) -> Option<Firing> {
    let mut hit = None;
    for r in rules.iter_mut() {
        let matches = |e: &str| match e.strip_suffix('$') {
            Some(end) => endpoint.ends_with(end),
            None => endpoint.contains(e),
        };
        if r.endpoint.as_deref().is_some_and(|e| !matches(e)) {
            continue;
        }
        if r.count.is_some_and(|c| r.fired >= c) {
            continue;
        }
        if r.rate < 1.0 && !rng.random_bool(r.rate.clamp(0.0, 1.0)) {
            continue;
        }
        r.fired += 1;
        let default_latency = if matches!(r.kind, FaultKind::Timeout | FaultKind::LateWrite) { 30_000 } else { 0 };
        let latency_ms = r.latency_ms.unwrap_or(default_latency);
        hit = Some(Firing {
            kind: r.kind,
            latency_ms,
            after_write: r.after_write,
            apply_after_ms: r.apply_after_ms.unwrap_or(latency_ms + 2_000),
        });
        break;
    }
    rules.retain(|r| r.count.is_none_or(|c| r.fired < c));
    hit
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rule(kind: FaultKind, count: Option<u64>, endpoint: Option<&str>) -> FaultRule {
        FaultRule {
            kind,
            rate: 1.0,
            count,
            endpoint: endpoint.map(str::to_string),
            latency_ms: None,
            after_write: false,
            apply_after_ms: None,
            fired: 0,
        }
    }

    #[test]
    fn counted_rules_fire_then_disappear() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut rules = vec![rule(FaultKind::Status503, Some(2), None)];
        assert!(pick(&mut rules, "GET /x", &mut rng).is_some());
        assert!(pick(&mut rules, "GET /x", &mut rng).is_some());
        assert!(rules.is_empty());
        assert!(pick(&mut rules, "GET /x", &mut rng).is_none());
    }

    #[test]
    fn endpoint_filter_and_rate() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut rules = vec![rule(FaultKind::Throttle, None, Some("batch"))];
        assert!(pick(&mut rules, "POST /calls", &mut rng).is_none());
        assert_eq!(pick(&mut rules, "POST /calls/batch/create", &mut rng).unwrap().kind, FaultKind::Throttle);
        let mut half = vec![FaultRule { rate: 0.5, ..rule(FaultKind::Status500, None, None) }];
        let fired = (0..1000).filter(|_| pick(&mut half, "x", &mut rng).is_some()).count();
        assert!((400..600).contains(&fired), "{fired}");
    }

    #[test]
    fn kinds_parse_from_status_names() {
        let k: FaultKind = serde_json::from_str("\"429\"").unwrap();
        assert_eq!(k, FaultKind::Throttle);
        let k: FaultKind = serde_json::from_str("\"503\"").unwrap();
        assert_eq!(k.status(), 503);
    }
}
