//! The normaliser's rules for leads, free of Kafka: a LeadEvent and its tenant in, the
//! normalised lead, a lead not to be processed, or the reason it cannot be one out.
//!
//! A lead is matched to a CRM person by its email, then its phone, so both become canonical
//! as for activities (`crm_common::email`, E.164). A lead needs one of the two: a person
//! without either cannot be matched, and creating one would make the duplicates this is
//! built to prevent. One bad value of the two does not stop a lead that has the other; it is
//! left out and named in `dropped_fields`. The country becomes ISO 3166-1 alpha-2 and also
//! reads a national phone number; names, company and title are trimmed.
//!
//! Consent is read first: a person who refused processing is not normalised at all (no
//! record on leads.normalised, no dead letter holding the payload, no lookup names), only
//! audited as skipped. The normaliser checks that before anything else about the event (its
//! tenant included); here it is refused again, so no caller can normalise such a lead.

use crate::normalise::{check_id, shown_number, Rejection};
use crm_common::email::{self, AddressError};
use crm_common::events::{ConsentState, DroppedField, LeadAttribution, LeadEvent, NormalisedLead};
use crm_common::phone::{self, E164Cache};
use crm_common::tenants::ResolvedTenant;
use std::str::FromStr;

/// Common country abbreviations that are no ISO 3166-1 code, and what forms mean by them.
const ABBREVIATIONS: &[(&str, &str)] = &[("UK", "GB"), ("UAE", "AE"), ("DRC", "CD"), ("ROK", "KR")];

/// The ISO 3166-1 alpha-2 code of a country as forms capture it: an alpha-2 or alpha-3 code,
/// a numeric code, or an English name, in any case, with or without accents, spaces, dots or
/// a leading "the" ("united states", "U.S.A.", "Côte d'Ivoire", "Korea, Republic of").
pub fn country_code(raw: &str) -> Option<&'static str> {
    let folded = deunicode::deunicode(raw.trim());
    // ISO's inverted names ("Korea, Republic of") read in order.
    let ordered = match folded.split_once(',') {
        Some((a, b)) if !b.trim().is_empty() => format!("{} {}", b.trim(), a.trim()),
        _ => folded,
    };
    let lower = ordered.to_ascii_lowercase();
    let without_the = lower.strip_prefix("the ").unwrap_or(&lower);
    let squashed: String = without_the.chars().filter(char::is_ascii_alphanumeric).collect();
    if squashed.is_empty() {
        return None;
    }
    let upper = squashed.to_ascii_uppercase();
    if let Some((_, code)) = ABBREVIATIONS.iter().find(|(a, _)| *a == upper) {
        return Some(code);
    }
    celes::Country::from_str(&squashed).ok().map(|c| c.alpha2)
}

/// Trimmed, each run of white space one space; None when nothing is left.
pub fn tidy(s: Option<&str>) -> Option<String> {
    let joined = s?.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(joined).filter(|s| !s.is_empty())
}

/// Why an address is refused, without the address (dropped_fields are read widely).
fn address_problem(e: &AddressError) -> String {
    match e {
        AddressError::Domain(_) => "has a domain that is not a valid host name".into(),
        AddressError::Unparseable(_) => "is not an RFC 5322 address".into(),
        other => other.to_string(),
    }
}

/// The lead normalised, or why it cannot be. A lead whose person refused processing is
/// refused here too (the caller skips those before it gets here, and says so in audit).
pub fn normalise_lead(ev: &LeadEvent, tenant: &ResolvedTenant, phones: &E164Cache, now_ms: i64) -> Result<NormalisedLead, Rejection> {
    match ev.consent_to_processing {
        ConsentState::Denied => {
            return Err(Rejection::validation("the person refused processing (consent_to_processing DENIED): not normalised".into()))
        }
        ConsentState::Unknown => {
            return Err(Rejection::validation(
                "consent_to_processing is a state this build does not know: nothing is written for it until crm-sync knows it".into(),
            ))
        }
        ConsentState::Granted | ConsentState::NotAsked => {}
    }
    check_id("lead_id", &ev.lead_id)?;
    let mut dropped = vec![];
    let mut drop = |field: &str, reason: String| dropped.push(DroppedField { field: field.into(), reason });

    let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let country = given(&ev.country).and_then(|c| {
        let code = country_code(&c);
        if code.is_none() {
            drop("country", "names no ISO 3166-1 country".into());
        }
        code
    });
    let email_given = given(&ev.email);
    let email = email_given.as_deref().and_then(|raw| match email::parse_one(raw) {
        Ok(a) => Some(a.email),
        Err(e) => {
            drop("email", format!("not an address: it {}", address_problem(&e)));
            None
        }
    });
    // A national number is read in the lead's own country where the phone library knows it.
    let region = country.and_then(|c| phone::region(c).ok()).unwrap_or(tenant.default_region);
    let phone_given = given(&ev.phone);
    let phone_e164 = phone_given.as_deref().and_then(|raw| match phones.to_e164(raw, Some(region)) {
        Ok(n) => Some(n),
        Err(e) => {
            drop("phone", format!("cannot be made E.164 (region {region:?}): {e}"));
            None
        }
    });
    if email.is_none() && phone_e164.is_none() {
        return Err(no_key(&dropped, email_given.as_deref(), phone_given.as_deref(), tenant));
    }
    let first_name = tidy(ev.first_name.as_deref());
    let last_name = tidy(ev.last_name.as_deref());
    let full_name = tidy(ev.full_name.as_deref())
        .or_else(|| tidy(Some(&[first_name.as_deref(), last_name.as_deref()].map(|n| n.unwrap_or("")).join(" "))));
    let a = &ev.attribution;
    let t = |v: &Option<String>| tidy(v.as_deref());
    Ok(NormalisedLead {
        tenant_id: ev.tenant_id.clone(),
        lead_id: ev.lead_id.clone(),
        source: ev.source.clone(),
        source_type: ev.source_type,
        version: ev.version,
        submitted_at: ev.submitted_at,
        email,
        phone_region: phone_e164.as_ref().map(|_| format!("{region:?}")),
        phone_e164,
        first_name,
        last_name,
        full_name,
        company: tidy(ev.company.as_deref()),
        job_title: tidy(ev.job_title.as_deref()),
        country: country.map(str::to_string),
        consent_to_processing: ev.consent_to_processing,
        consent: ev.consent.clone(),
        attribution: LeadAttribution {
            utm_source: t(&a.utm_source),
            utm_medium: t(&a.utm_medium),
            utm_campaign: t(&a.utm_campaign),
            utm_term: t(&a.utm_term),
            utm_content: t(&a.utm_content),
            campaign_id: t(&a.campaign_id),
            ad_id: t(&a.ad_id),
            form_id: t(&a.form_id),
            page_url: t(&a.page_url),
        },
        answers: ev.answers.clone(),
        attributes: ev.attributes.clone(),
        dropped_fields: dropped,
        normalised_at: now_ms,
    })
}

/// A lead with neither a valid email nor a valid phone. The dead letter shows the values'
/// shapes, masked (its payload holds them); the audit record names only what is wrong.
fn no_key(dropped: &[DroppedField], email: Option<&str>, phone: Option<&str>, tenant: &ResolvedTenant) -> Rejection {
    let why = |field: &str| dropped.iter().find(|d| d.field == field).map_or("missing".to_string(), |d| d.reason.clone());
    let shown_email = email.map(|e| format!(" {:?}", email::mask_shape(&e.chars().take(128).collect::<String>()))).unwrap_or_default();
    let shown_phone = phone.map(|p| format!(" {:?}", shown_number(tenant, p))).unwrap_or_default();
    let head = "a lead needs a valid email or a valid phone to be matched to a person";
    Rejection {
        reason: crm_common::events::DlqReason::Validation,
        detail: format!("{head}: email{shown_email} {}; phone{shown_phone} {}", why("email"), why("phone")),
        audit_detail: format!("{head}: email {}; phone {}", why("email"), why("phone")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::fixtures::raw_lead;
    use crm_common::events::DlqReason;
    use crm_common::tenants::Tenants;

    fn tenant() -> ResolvedTenant {
        Tenants::parse("[tenants.acme]\ndefault_region = \"GB\"\n").unwrap().get("acme").unwrap().clone()
    }

    fn normalised(ev: &LeadEvent) -> NormalisedLead {
        normalise_lead(ev, &tenant(), &E164Cache::new(10), 7).unwrap()
    }

    #[test]
    fn a_lead_gets_canonical_email_phone_country_and_names() {
        let n = normalised(&raw_lead("acme", "l1", 0));
        assert_eq!(n.email.as_deref(), Some("jane.doe@customer.example"));
        // National, read in the lead's country (the US), not the tenant's region (GB).
        assert_eq!(n.phone_e164.as_deref(), Some("+14155552671"));
        assert_eq!(n.phone_region.as_deref(), Some("US"));
        assert_eq!(n.country.as_deref(), Some("US"));
        assert_eq!(
            (n.first_name.as_deref(), n.last_name.as_deref(), n.full_name.as_deref()),
            (Some("Jane"), Some("Doe"), Some("Jane Doe"))
        );
        assert_eq!(n.company.as_deref(), Some("Customer Inc."));
        assert_eq!(n.attribution.utm_campaign.as_deref(), Some("spring-demo"));
        assert_eq!(n.answers["team_size"], "11-50");
        assert_eq!(n.consent["marketing_email"], "true");
        assert!(n.dropped_fields.is_empty(), "{:?}", n.dropped_fields);
        assert_eq!(n.normalised_at, 7);
    }

    #[test]
    fn countries_are_read_as_forms_write_them() {
        for (raw, code) in [
            ("us", "US"),
            ("USA", "US"),
            ("U.S.A.", "US"),
            ("United States of America", "US"),
            ("the Netherlands", "NL"),
            ("Côte d'Ivoire", "CI"),
            ("Korea, Republic of", "KR"),
            ("UK", "GB"),
            ("United Kingdom", "GB"),
            ("deu", "DE"),
            ("276", "DE"),
        ] {
            assert_eq!(country_code(raw), Some(code), "{raw}");
        }
        for raw in ["Atlantis", "", " . ", "ZZ"] {
            assert_eq!(country_code(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn one_bad_key_is_dropped_and_named_while_the_other_carries_the_lead() {
        let mut ev = raw_lead("acme", "l1", 0);
        ev.email = Some("jane at customer".into());
        ev.country = Some("Atlantis".into());
        ev.phone = Some("020 7946 0958".into()); // national, read in the tenant's region now
        let n = normalised(&ev);
        assert_eq!(n.email, None);
        assert_eq!(n.phone_e164.as_deref(), Some("+442079460958"));
        assert_eq!(n.country, None);
        let fields: Vec<&str> = n.dropped_fields.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["country", "email"]);
        assert!(n.dropped_fields.iter().all(|d| !d.reason.contains("jane") && !d.reason.contains("Atlantis")), "{:?}", n.dropped_fields);
        let mut ev = raw_lead("acme", "l1", 0);
        ev.phone = Some("12".into());
        let n = normalised(&ev);
        assert_eq!((n.email.is_some(), n.phone_e164.as_deref(), n.phone_region.as_deref()), (true, None, None));
        assert_eq!(n.dropped_fields[0].field, "phone");
    }

    #[test]
    fn a_lead_without_a_valid_email_or_phone_is_refused_with_both_reasons() {
        let mut ev = raw_lead("acme", "l1", 0);
        ev.email = Some("jane@".into());
        ev.phone = None;
        let r = normalise_lead(&ev, &tenant(), &E164Cache::new(10), 0).unwrap_err();
        assert_eq!(r.reason, DlqReason::Validation);
        assert!(r.audit_detail.contains("email not an address") && r.audit_detail.contains("phone missing"), "{}", r.audit_detail);
        assert!(r.detail.contains("\"j•••@\""), "the dead letter shows the shape: {}", r.detail);
        assert!(!r.audit_detail.contains("jane"), "{}", r.audit_detail);
        ev.email = Some("   ".into());
        ev.phone = Some("+1 415 555 26".into());
        let r = normalise_lead(&ev, &tenant(), &E164Cache::new(10), 0).unwrap_err();
        assert!(r.audit_detail.contains("email missing; phone cannot be made E.164"), "{}", r.audit_detail);
        assert!(!r.detail.contains("415 555"), "masked: {}", r.detail);
    }

    #[test]
    fn consent_decides_before_anything_else() {
        let mut ev = raw_lead("acme", "bad id", 0);
        ev.consent_to_processing = ConsentState::Denied;
        ev.email = None;
        assert!(normalise_lead(&ev, &tenant(), &E164Cache::new(10), 0).unwrap_err().detail.contains("refused processing"));
        ev.consent_to_processing = ConsentState::Unknown;
        assert!(normalise_lead(&ev, &tenant(), &E164Cache::new(10), 0).unwrap_err().detail.contains("does not know"));
        let mut ev = raw_lead("acme", "l1", 0);
        ev.consent_to_processing = ConsentState::NotAsked;
        assert_eq!(normalised(&ev).consent_to_processing, ConsentState::NotAsked);
        ev.lead_id = "has space".into();
        assert!(normalise_lead(&ev, &tenant(), &E164Cache::new(10), 0).unwrap_err().detail.starts_with("lead_id"));
    }

    #[test]
    fn a_full_name_is_kept_as_given_or_made_of_the_parts() {
        let mut ev = raw_lead("acme", "l1", 0);
        ev.full_name = Some("  María   José García ".into());
        assert_eq!(normalised(&ev).full_name.as_deref(), Some("María José García"));
        ev.full_name = None;
        ev.first_name = None;
        ev.last_name = Some(" Doe ".into());
        assert_eq!(normalised(&ev).full_name.as_deref(), Some("Doe"));
        ev.last_name = None;
        assert_eq!(normalised(&ev).full_name, None);
    }
}
