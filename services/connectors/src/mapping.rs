//! The values a contract's `source` names, derived from a call, as text; the contract's
//! `type` makes numbers and booleans of them where a CRM wants those. Formats are the
//! CRMs' own (CRM-APIS §1.3, §2.3, §3.3, §4.3): times in UTC.

use crm_common::events::{CallDirection, CallOutcome, CrmWriteRequest};

pub const SOURCES: &[&str] = &[
    "idempotency_key",
    "started_at_iso",
    "started_at_ms",
    "ended_at_iso",
    "direction",
    "hubspot_call_status",
    "duration_ms",
    "duration_s",
    "from_e164",
    "to_e164",
    "customer_e164",
    "recording_url",
    "title",
    "notes",
    "agent_email",
    "call_id",
    "call_type",
    "zoho_call_type",
    "disposition",
    "task_status",
    "started_date",
    "started_at_offset",
    "started_time_hhmm",
    "duration_mmss",
    "duration_hhmm",
    "ended",
];

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_default()
}

fn utc(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

/// The value of `source` for this request; None when the call has none (an open call has
/// no duration yet), in which case the field is left out rather than blanked.
pub fn value(req: &CrmWriteRequest, source: &str) -> Option<String> {
    let c = &req.call;
    let inbound = c.direction == CallDirection::Inbound;
    match source {
        "idempotency_key" => Some(req.idempotency_key.clone()),
        "started_at_iso" => Some(iso(c.started_at)),
        "started_at_ms" => Some(c.started_at.to_string()),
        "ended_at_iso" => c.ended_at.map(iso),
        "direction" => Some(if inbound { "INBOUND" } else { "OUTBOUND" }.into()),
        "hubspot_call_status" => Some(
            match c.outcome {
                None => "IN_PROGRESS",
                Some(CallOutcome::Answered) | Some(CallOutcome::Voicemail) => "COMPLETED",
                Some(CallOutcome::NoAnswer) => "NO_ANSWER",
                Some(CallOutcome::Busy) => "BUSY",
                Some(CallOutcome::Failed) => "FAILED",
            }
            .into(),
        ),
        "duration_ms" => c.duration_s.map(|s| (i64::from(s) * 1000).to_string()),
        "duration_s" => c.duration_s.map(|s| s.to_string()),
        "from_e164" => Some(c.from_e164.clone()),
        "to_e164" => Some(c.to_e164.clone()),
        "customer_e164" => Some(c.customer_e164.clone()),
        "recording_url" => c.recording_url.clone(),
        "title" => Some(format!(
            "{} call {} {}",
            if inbound { "Inbound" } else { "Outbound" },
            if inbound { "from" } else { "to" },
            c.customer_e164
        )),
        "notes" => c.notes.clone(),
        "agent_email" => c.agent_email.clone(),
        "call_id" => Some(c.call_id.clone()),
        // Salesforce CallType, Pipedrive and the like.
        "call_type" => Some(if inbound { "Inbound" } else { "Outbound" }.into()),
        // Zoho: an inbound call nobody answered is "Missed"; Inbound and Outbound calls need
        // a non-zero duration there.
        "zoho_call_type" => Some(
            match (inbound, c.outcome) {
                (true, Some(CallOutcome::NoAnswer | CallOutcome::Busy | CallOutcome::Failed)) => "Missed",
                (true, _) => "Inbound",
                (false, _) => "Outbound",
            }
            .into(),
        ),
        "disposition" => c.outcome.map(|o| {
            match o {
                CallOutcome::Answered => "Answered",
                CallOutcome::Voicemail => "Left voicemail",
                CallOutcome::NoAnswer => "No answer",
                CallOutcome::Busy => "Busy",
                CallOutcome::Failed => "Failed",
            }
            .into()
        }),
        // Salesforce Task Status.
        "task_status" => Some(if c.ended_at.is_some() { "Completed" } else { "In Progress" }.into()),
        "started_date" => utc(c.started_at).map(|d| d.format("%Y-%m-%d").to_string()),
        "started_at_offset" => utc(c.started_at).map(|d| d.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()),
        "started_time_hhmm" => utc(c.started_at).map(|d| d.format("%H:%M").to_string()),
        // Zoho's "mm:ss"; it rejects zero for answered calls, so an open call logs 00:01
        // until its end arrives as an update.
        "duration_mmss" => {
            let s = c.duration_s.unwrap_or(0).max(1);
            Some(format!("{:02}:{:02}", s / 60, s % 60))
        }
        // Pipedrive's "HH:MM", rounded up to the minute.
        "duration_hhmm" => c.duration_s.map(|s| {
            let m = (s + 59) / 60;
            format!("{:02}:{:02}", (m / 60).min(23), if m / 60 > 23 { 59 } else { m % 60 })
        }),
        "ended" => Some(c.ended_at.is_some().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::{fixtures::normalised_call, CallOutcome, Crm};

    fn req(version: i64) -> CrmWriteRequest {
        CrmWriteRequest {
            tenant_id: "acme".into(),
            call_id: "c1".into(),
            crm: Crm::Hubspot,
            idempotency_key: "acme:c1:hubspot".into(),
            version,
            call: normalised_call("acme", "c1", version),
            requested_at: 0,
            trace_id: "t".into(),
        }
    }

    #[test]
    fn every_source_is_known_and_values_follow_the_call() {
        let open = req(1);
        assert_eq!(value(&open, "started_at_iso").unwrap(), "2026-01-01T00:00:00.000Z");
        assert_eq!(value(&open, "hubspot_call_status").unwrap(), "IN_PROGRESS");
        assert_eq!(value(&open, "duration_ms"), None, "an open call has no duration: left out, not blanked");
        let ended = req(2);
        assert_eq!(value(&ended, "duration_ms").unwrap(), "60000");
        assert_eq!(value(&ended, "hubspot_call_status").unwrap(), "COMPLETED");
        assert_eq!(value(&ended, "title").unwrap(), "Inbound call from +14155552671");
        for s in SOURCES {
            let _ = value(&ended, s);
        }
        assert_eq!(value(&ended, "unknown"), None);
        assert_eq!(value(&ended, "duration_mmss").unwrap(), "01:00");
        assert_eq!(value(&open, "duration_mmss").unwrap(), "00:01", "Zoho rejects a zero duration");
        assert_eq!(value(&ended, "duration_hhmm").unwrap(), "00:01");
        assert_eq!(value(&open, "duration_hhmm"), None);
        assert_eq!(value(&ended, "started_at_offset").unwrap(), "2026-01-01T00:00:00+00:00");
        assert_eq!(value(&ended, "started_date").unwrap(), "2026-01-01");
        assert_eq!(value(&ended, "started_time_hhmm").unwrap(), "00:00");
        assert_eq!(value(&ended, "task_status").unwrap(), "Completed");
        assert_eq!(value(&open, "task_status").unwrap(), "In Progress");
        assert_eq!((value(&open, "ended").unwrap(), value(&ended, "ended").unwrap()), ("false".into(), "true".into()));
        assert_eq!(value(&ended, "zoho_call_type").unwrap(), "Inbound");
        let mut missed = req(2);
        missed.call.outcome = Some(CallOutcome::NoAnswer);
        assert_eq!(value(&missed, "zoho_call_type").unwrap(), "Missed");
        assert_eq!(value(&missed, "disposition").unwrap(), "No answer");
    }
}
