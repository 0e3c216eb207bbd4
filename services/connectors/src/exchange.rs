//! One exchange with a CRM, as the driver (`api`) and the token refresh (`auth`) both record
//! it: how it ended (`Verdict`, and the audit outcome that follows from it), the exchange
//! itself (`Exchange`), why a call failed (`Failure`), and how values are put in a URL.

use crm_common::events::{AuditOutcome, DlqReason};
use std::time::Duration;

/// What a connector makes of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Ok,
    /// Over a limit: block the buckets this long; no attempt is counted.
    Throttled {
        wait: Duration,
    },
    /// Worth retrying (5xx, locked, timeouts).
    Transient(String),
    /// Retrying cannot help: to the DLQ with this reason.
    Permanent(DlqReason, String),
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }

    /// What an exchange that ended this way is in the audit: the one mapping the writer and
    /// the reconciler share.
    pub fn audit_outcome(&self) -> AuditOutcome {
        match self {
            Verdict::Ok => AuditOutcome::Succeeded,
            Verdict::Throttled { .. } => AuditOutcome::Throttled,
            Verdict::Transient(_) => AuditOutcome::Retrying,
            Verdict::Permanent(..) => AuditOutcome::DeadLettered,
        }
    }
}

/// The audit record's detail for the exchange: `ok`, `throttled for N ms`, `transient: why`,
/// `REASON: why`.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ok => write!(f, "ok"),
            Verdict::Throttled { wait } => write!(f, "throttled for {} ms", wait.as_millis()),
            Verdict::Transient(why) => write!(f, "transient: {why}"),
            Verdict::Permanent(reason, why) => write!(f, "{}: {why}", reason.as_str()),
        }
    }
}

/// One HTTP exchange, for the audit record of every item it concerned.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the request was sent (ms since the epoch).
    pub at_ms: i64,
    pub endpoint: String,
    pub status: Option<u16>,
    pub excerpt: String,
    pub rate_headers: String,
    /// The limits the answer's headers state (`Policy::stated_limits`).
    pub stated_limits: Vec<crate::api::StatedLimit>,
    pub latency_ms: i64,
    pub attempt: u32,
    /// How it ended.
    pub outcome: Verdict,
    /// A read by key answered "no such record" (404) where the caller asked exactly that
    /// (`Request::absent_is_answer`): the caller gets the 404 and acts on it; the audit
    /// shows the answer, not a failure.
    pub answered_absent: bool,
    /// What was sent, without credentials.
    pub sent: String,
}

impl Exchange {
    /// The audit record's outcome: the verdict's, except that a lookup's "no such record"
    /// succeeded (support reading a trace saw such lookups as DEAD_LETTERED before).
    pub fn audit_outcome(&self) -> crm_common::events::AuditOutcome {
        if self.answered_absent {
            crm_common::events::AuditOutcome::Succeeded
        } else {
            self.outcome.audit_outcome()
        }
    }

    /// The audit record's detail: the verdict (`ok`, `throttled for N ms`, …), or that the
    /// record looked up by key does not exist.
    pub fn audit_detail(&self) -> String {
        if self.answered_absent {
            "not found: no such record (the answer this lookup by key asked for)".into()
        } else {
            self.outcome.to_string()
        }
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: DlqReason,
    pub detail: String,
    pub status: Option<u16>,
    pub excerpt: Option<String>,
    /// A request that is not replay-safe timed out or met a 5xx: the CRM may have applied it.
    pub maybe_applied: bool,
    /// Not sent: this writer no longer holds these keys' leases (another writer recovered
    /// them while this one was paused or waiting). Not a failure of the write: it is
    /// abandoned here and settled by whoever holds the key now.
    pub fenced_off: Vec<String>,
}

impl Failure {
    pub fn new(reason: DlqReason, detail: impl Into<String>) -> Failure {
        Failure { reason, detail: detail.into(), status: None, excerpt: None, maybe_applied: false, fenced_off: vec![] }
    }

    /// A request that went out and came back with an answer that names no outcome for this
    /// record (a success without its id, a batch answer that leaves it out): the CRM may have
    /// written it. Never read as "nothing was written": the claim stays, and the record is
    /// looked up by its key before anything is sent again.
    pub fn unknown_outcome(detail: impl Into<String>, status: Option<u16>) -> Failure {
        Failure { status, maybe_applied: true, ..Failure::new(DlqReason::RetriesExhausted, detail) }
    }

    /// Whether the request was held back by fencing rather than sent.
    pub fn is_fenced(&self) -> bool {
        !self.fenced_off.is_empty()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (keys in paths, form values).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
