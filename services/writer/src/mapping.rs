//! The values a contract's `source` names, derived from a call. Connectors turn a
//! contract's (field, source) pairs into the CRM's body; values are strings, as HubSpot
//! wants them, and each connector converts where its CRM wants another type.

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
];

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
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
        "title" => Some(format!("{} call {} {}", if inbound { "Inbound" } else { "Outbound" }, if inbound { "from" } else { "to" }, c.customer_e164)),
        "notes" => c.notes.clone(),
        "agent_email" => c.agent_email.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::{fixtures::normalised_call, Crm};

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
    }
}
