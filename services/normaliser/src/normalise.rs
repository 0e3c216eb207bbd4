//! The normaliser's rules, free of Kafka: a CallEvent and its tenant in, a NormalisedCall
//! or the reason it cannot be one out.

use crm_common::events::{CallDirection, CallEvent, DlqReason, NormalisedCall};
use crm_common::phone::{self, E164Cache, PhoneError};
use crm_common::tenants::ResolvedTenant;

#[derive(Debug, PartialEq)]
pub struct Rejection {
    pub reason: DlqReason,
    /// For the DLQ: may name raw values (the DLQ holds the original bytes anyway).
    pub detail: String,
    /// For audit: phone numbers masked unless the tenant allows them.
    pub audit_detail: String,
}

/// The longest call id accepted: ids go into Redis keys, idempotency keys and CRM fields.
pub const MAX_ID_LEN: usize = 256;

/// An id is 1–256 bytes of printable characters without spaces: it becomes part of keys
/// (`tenant:call:crm`), CRM fields and log lines, where a newline or a space would forge or
/// split them.
pub fn check_id(field: &str, id: &str) -> Result<(), Rejection> {
    let why = if id.is_empty() {
        Some("is empty".to_string())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("is {} bytes; the limit is {MAX_ID_LEN}", id.len()))
    } else {
        id.chars().find(|c| c.is_control() || c.is_whitespace()).map(|c| format!("holds {c:?}, a control or space character"))
    };
    match why {
        None => Ok(()),
        Some(why) => {
            let shown: String = id.chars().take(64).collect();
            let detail = format!("{field} {shown:?} {why}");
            Err(Rejection { reason: DlqReason::Validation, audit_detail: detail.clone(), detail })
        }
    }
}

impl Rejection {
    /// A VALIDATION rejection whose detail holds nothing to mask.
    pub fn validation(detail: String) -> Rejection {
        Rejection { reason: DlqReason::Validation, audit_detail: detail.clone(), detail }
    }
}

pub fn normalise(ev: &CallEvent, tenant: &ResolvedTenant, phones: &E164Cache, now_ms: i64) -> Result<NormalisedCall, Rejection> {
    check_id("call_id", &ev.call_id)?;
    let (region, region_code) = match ev.region_hint.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
        Some(hint) => match phone::region(hint) {
            Ok(r) => (r, hint.to_ascii_uppercase()),
            Err(e) => {
                let detail = format!("region_hint: {e}");
                return Err(Rejection { reason: DlqReason::Validation, audit_detail: detail.clone(), detail });
            }
        },
        None => (tenant.default_region, format!("{:?}", tenant.default_region)),
    };
    let number = |field: &str, raw: &str| phones.to_e164(raw, Some(region)).map_err(|e| rejection(field, raw, &region_code, &e, tenant));
    let from_e164 = number("from_number", &ev.from_number)?;
    let to_e164 = number("to_number", &ev.to_number)?;
    let customer_e164 = match ev.direction {
        CallDirection::Inbound => from_e164.clone(),
        CallDirection::Outbound => to_e164.clone(),
    };
    Ok(NormalisedCall {
        tenant_id: ev.tenant_id.clone(),
        call_id: ev.call_id.clone(),
        source: ev.source.clone(),
        version: ev.version,
        direction: ev.direction,
        from_e164,
        to_e164,
        customer_e164,
        from_raw: ev.from_number.clone(),
        to_raw: ev.to_number.clone(),
        region_used: region_code,
        started_at: ev.started_at,
        ended_at: ev.ended_at,
        duration_s: ev.duration_s,
        outcome: ev.outcome,
        agent_id: ev.agent_id.clone(),
        agent_email: ev.agent_email.clone(),
        recording_url: ev.recording_url.clone(),
        notes: ev.notes.clone(),
        attributes: ev.attributes.clone(),
        normalised_at: now_ms,
    })
}

/// A number as audit and dead letters show it: masked unless the tenant allows it in clear.
pub fn shown_number(tenant: &ResolvedTenant, number: &str) -> String {
    if tenant.show_phone_numbers_in_audit {
        number.to_string()
    } else {
        phone::mask(number)
    }
}

pub fn rejection(field: &str, raw: &str, region: &str, e: &PhoneError, tenant: &ResolvedTenant) -> Rejection {
    let shown = shown_number(tenant, raw);
    Rejection {
        reason: DlqReason::InvalidPhone,
        detail: format!("{field} {shown:?} cannot be made E.164 (region {region}): {e}"),
        audit_detail: format!("{field} {shown:?} cannot be made E.164 (region {region}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::tenants::Tenants;
    use std::collections::HashMap;

    fn tenants() -> Tenants {
        Tenants::parse(
            "[tenants.acme]\ndefault_region = \"GB\"\n[tenants.open]\ndefault_region = \"US\"\nshow_phone_numbers_in_audit = true\n",
        )
        .unwrap()
    }

    fn call(from: &str, to: &str, hint: Option<&str>) -> CallEvent {
        CallEvent {
            tenant_id: "acme".into(),
            call_id: "c1".into(),
            source: "pbx".into(),
            version: 1,
            direction: CallDirection::Outbound,
            from_number: from.into(),
            to_number: to.into(),
            region_hint: hint.map(Into::into),
            started_at: 10,
            ended_at: None,
            duration_s: None,
            outcome: None,
            agent_id: "a".into(),
            agent_email: None,
            recording_url: None,
            notes: None,
            attributes: HashMap::new(),
        }
    }

    #[test]
    fn tenant_region_reads_national_numbers() {
        let t = tenants();
        let n = normalise(&call("020 7946 0958", "+1 (415) 555-2671", None), t.get("acme").unwrap(), &E164Cache::new(10), 5).unwrap();
        assert_eq!(n.from_e164, "+442079460958");
        assert_eq!(n.to_e164, "+14155552671");
        assert_eq!(n.customer_e164, "+14155552671", "outbound: the customer is the called side");
        assert_eq!(n.region_used, "GB");
        assert_eq!(n.from_raw, "020 7946 0958");
        assert_eq!(n.normalised_at, 5);
    }

    #[test]
    fn region_hint_wins_over_tenant_default() {
        let t = tenants();
        // Read as German, 06 12 34 56 78 is a Wiesbaden number, not the French mobile.
        let n = normalise(&call("030 901820", "06 12 34 56 78", Some("de")), t.get("acme").unwrap(), &E164Cache::new(10), 0).unwrap();
        assert_eq!(n.to_e164, "+49612345678");
        // A number invalid for the region rejects the whole call, naming the field.
        let r = normalise(&call("030 901820", "0199 12", Some("DE")), t.get("acme").unwrap(), &E164Cache::new(10), 0).unwrap_err();
        assert_eq!(r.reason, DlqReason::InvalidPhone);
        // Neither the audit nor the dead letter's detail shows it (the payload keeps it).
        assert!(r.detail.contains("to_number \"••••12\""), "{}", r.detail);
        assert!(!r.audit_detail.contains("0199 12"), "audit must mask: {}", r.audit_detail);
        let n = normalise(&call("030 901820", "+33 6 12 34 56 78", Some("DE")), t.get("acme").unwrap(), &E164Cache::new(10), 0).unwrap();
        assert_eq!((n.from_e164.as_str(), n.to_e164.as_str(), n.region_used.as_str()), ("+4930901820", "+33612345678", "DE"));
    }

    #[test]
    fn unmasked_when_the_tenant_allows() {
        let t = tenants();
        let r = normalise(&call("12345", "+14155552671", None), t.get("open").unwrap(), &E164Cache::new(10), 0).unwrap_err();
        assert!(r.audit_detail.contains("\"12345\""), "{}", r.audit_detail);
        assert!(r.detail.contains("\"12345\""), "{}", r.detail);
    }

    #[test]
    fn bad_region_hint_is_a_validation_error() {
        let t = tenants();
        let r =
            normalise(&call("+14155552671", "+14155552671", Some("Atlantis")), t.get("acme").unwrap(), &E164Cache::new(10), 0).unwrap_err();
        assert_eq!(r.reason, DlqReason::Validation);
    }
}
