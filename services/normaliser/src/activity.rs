//! The normaliser's rules for emails and meetings, free of Kafka: an event and its tenant in,
//! the normalised record or the reason it cannot be one out.
//!
//! Addresses become canonical (`crm_common::email`); times are UTC, with the source's zone
//! kept for display; an all-day meeting's days become UTC instants through its zone; bodies
//! are cut to an excerpt the CRMs can hold; phone numbers an attendee record or a location
//! carries become E.164.

use crate::normalise::{check_id, rejection, Rejection};
use chrono::{NaiveDate, TimeZone};
use crm_common::email::{self, bare_message_id, AddressError};
use crm_common::events::{DlqReason, EmailAddress, EmailEvent, MeetingEvent, NormalisedAttendee, NormalisedEmail, NormalisedMeeting};
use crm_common::phone::E164Cache;
use crm_common::tenants::ResolvedTenant;
use std::collections::HashSet;

/// The longest body or description excerpt kept, in characters: Salesforce's long text
/// fields (Task and Event `Description`, EmailMessage `TextBody`) hold 32,000, the least of
/// the four CRMs' activity text fields.
pub const MAX_TEXT_CHARS: usize = 32_000;

/// The first `MAX_TEXT_CHARS` characters of `text` (cut at a character boundary), and
/// whether anything was cut.
pub fn excerpt(text: Option<&str>) -> (Option<String>, bool) {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return (None, false) };
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((cut, _)) => (Some(text[..cut].to_string()), true),
        None => (Some(text.to_string()), false),
    }
}

/// The DLQ entry shows the value's shape, masked (its payload holds the original bytes);
/// the audit record, which data teams read widely, names only the field and what is wrong
/// with it.
fn bad_address(field: &str, raw: &str, e: AddressError) -> Rejection {
    let shown = email::mask_shape(&raw.chars().take(128).collect::<String>());
    Rejection { reason: DlqReason::Validation, detail: format!("{field} {shown:?} {e}"), audit_detail: format!("{field} {e}") }
}

fn one(field: &str, raw: &str) -> Result<EmailAddress, Rejection> {
    email::parse_one(raw).map_err(|e| bad_address(field, raw, e))
}

/// Every address in a list of captured values, each once (the first kept), in order.
fn list(field: &str, raws: &[String]) -> Result<Vec<EmailAddress>, Rejection> {
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, raw) in raws.iter().enumerate() {
        for a in email::parse_list(raw).map_err(|e| bad_address(&format!("{field}[{i}]"), raw, e))? {
            if seen.insert(a.email.clone()) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The other parties: each canonical address once, in order, without the actor's.
fn participants<'a>(actor: &str, all: impl Iterator<Item = &'a EmailAddress>) -> Vec<String> {
    let mut seen = HashSet::from([actor.to_string()]);
    all.filter(|a| seen.insert(a.email.clone())).map(|a| a.email.clone()).collect()
}

fn trimmed(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// A source's zone: an IANA name or a UTC offset (`+01:00`, `-0530`, `Z`).
#[derive(Debug, Clone, Copy)]
pub enum Zone {
    Named(chrono_tz::Tz),
    Offset(chrono::FixedOffset),
}

pub fn zone(field: &str, raw: &str) -> Result<Zone, Rejection> {
    let t = raw.trim();
    if let Ok(tz) = t.parse::<chrono_tz::Tz>() {
        return Ok(Zone::Named(tz));
    }
    if t.eq_ignore_ascii_case("z") {
        return Ok(Zone::Offset(chrono::FixedOffset::east_opt(0).expect("zero")));
    }
    let offset = (|| {
        let (sign, rest) = match t.as_bytes().first()? {
            b'+' => (1, &t[1..]),
            b'-' => (-1, &t[1..]),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) || (rest.contains(':') && rest.find(':') != Some(2)) {
            return None;
        }
        let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
        if h > 14 || m > 59 {
            return None;
        }
        chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60))
    })();
    offset.map(Zone::Offset).ok_or_else(|| {
        Rejection::validation(format!(
            "{field} {:?} is neither an IANA time zone name nor a UTC offset like +01:00",
            raw.chars().take(64).collect::<String>()
        ))
    })
}

/// Midnight at the start of `date` in `zone`, as epoch ms UTC. Where a zone's clocks skip
/// midnight (a DST change at 00:00), the day starts at the first instant that exists.
fn start_of_day(date: NaiveDate, zone: Zone) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    let first = |r: chrono::LocalResult<i64>| r.earliest();
    let at = match zone {
        Zone::Named(tz) => first(tz.from_local_datetime(&midnight).map(|d| d.timestamp_millis())),
        Zone::Offset(o) => first(o.from_local_datetime(&midnight).map(|d| d.timestamp_millis())),
    };
    // A gap at midnight: an hour later exists in every zone.
    at.unwrap_or_else(|| start_of_day_after_gap(midnight, zone))
}

fn start_of_day_after_gap(midnight: chrono::NaiveDateTime, zone: Zone) -> i64 {
    let later = midnight + chrono::Duration::hours(1);
    match zone {
        Zone::Named(tz) => tz.from_local_datetime(&later).earliest().map_or(later.and_utc().timestamp_millis(), |d| d.timestamp_millis()),
        Zone::Offset(o) => o.from_local_datetime(&later).earliest().map_or(later.and_utc().timestamp_millis(), |d| d.timestamp_millis()),
    }
}

fn date(field: &str, raw: &str) -> Result<NaiveDate, Rejection> {
    NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
        .map_err(|e| Rejection::validation(format!("{field} {:?} is not a YYYY-MM-DD date: {e}", raw.chars().take(32).collect::<String>())))
}

pub fn normalise_email(ev: &EmailEvent, now_ms: i64) -> Result<NormalisedEmail, Rejection> {
    let message_id = bare_message_id(&ev.message_id);
    check_id("message_id", message_id)?;
    let from = one("from", &ev.from)?;
    let to = list("to", &ev.to)?;
    let cc = list("cc", &ev.cc)?;
    let bcc = list("bcc", &ev.bcc)?;
    let actor = one("actor_email", &ev.actor_email)?;
    if let Some(tz) = &ev.time_zone {
        zone("time_zone", tz)?;
    }
    let in_reply_to = ev.in_reply_to.as_deref().map(bare_message_id).filter(|s| !s.is_empty()).map(str::to_string);
    let (body_excerpt, body_truncated) = excerpt(ev.body_text.as_deref());
    let participants = participants(&actor.email, std::iter::once(&from).chain(&to).chain(&cc).chain(&bcc));
    Ok(NormalisedEmail {
        tenant_id: ev.tenant_id.clone(),
        message_id: message_id.to_string(),
        source: ev.source.clone(),
        version: ev.version,
        thread_id: trimmed(&ev.thread_id),
        in_reply_to,
        direction: ev.direction,
        from,
        to,
        cc,
        bcc,
        subject: trimmed(&ev.subject),
        body_excerpt,
        body_truncated,
        sent_at: ev.sent_at,
        time_zone: trimmed(&ev.time_zone),
        actor_id: ev.actor_id.clone(),
        actor_email: actor.email,
        participants,
        attributes: ev.attributes.clone(),
        normalised_at: now_ms,
    })
}

/// The first phone number in free text (a location's dial-in), in E.164, if one reads as
/// valid: a run of digits with the usual separators, at least 7 digits long.
fn phone_in_text(text: &str, phones: &E164Cache, tenant: &ResolvedTenant) -> Option<String> {
    let mut runs = vec![];
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once('\n')) {
        let joins = c.is_ascii_digit() || (c == '+' && cur.trim().is_empty()) || (!cur.is_empty() && " -.()/".contains(c));
        if joins {
            cur.push(c);
        } else {
            if cur.chars().filter(char::is_ascii_digit).count() >= 7 {
                runs.push(cur.trim().to_string());
            }
            cur.clear();
        }
    }
    runs.iter().find_map(|r| phones.to_e164(r, Some(tenant.default_region)).ok())
}

pub fn normalise_meeting(
    ev: &MeetingEvent,
    tenant: &ResolvedTenant,
    phones: &E164Cache,
    now_ms: i64,
) -> Result<NormalisedMeeting, Rejection> {
    check_id("event_id", &ev.event_id)?;
    let ical_uid = trimmed(&ev.ical_uid);
    let recurrence_id = trimmed(&ev.recurrence_id);
    if let Some(u) = &ical_uid {
        check_id("ical_uid", u)?;
    }
    if let Some(r) = &recurrence_id {
        check_id("recurrence_id", r)?;
    }
    let source_id = match (&ical_uid, &recurrence_id) {
        (Some(u), Some(r)) => format!("{u}/{r}"),
        (Some(u), None) => u.clone(),
        (None, _) => ev.event_id.clone(),
    };
    check_id("source id (ical_uid/recurrence_id)", &source_id)?;

    let tz = ev.time_zone.as_deref().map(|z| zone("time_zone", z)).transpose()?;
    let (start_at, end_at) = if ev.all_day {
        let Some(tz) = tz else {
            return Err(Rejection::validation("an all-day meeting needs time_zone: its days are in it".into()));
        };
        let start = date("start_date", ev.start_date.as_deref().unwrap_or_default())?;
        let end = match &ev.end_date {
            Some(d) => date("end_date", d)?,
            None => start.succ_opt().unwrap_or(start),
        };
        if end <= start {
            return Err(Rejection::validation(format!("end_date {end} is not after start_date {start} (end_date is exclusive)")));
        }
        (start_of_day(start, tz), start_of_day(end, tz))
    } else {
        match (ev.start_at, ev.end_at) {
            (Some(s), Some(e)) if e >= s => (s, e),
            (Some(s), Some(e)) => return Err(Rejection::validation(format!("end_at {e} is before start_at {s}"))),
            (None, _) => return Err(Rejection::validation("start_at is missing (and the meeting is not all-day)".into())),
            (_, None) => return Err(Rejection::validation("end_at is missing (and the meeting is not all-day)".into())),
        }
    };

    let organizer = one("organizer", &ev.organizer)?;
    let actor = one("actor_email", &ev.actor_email)?;
    let mut seen = HashSet::new();
    let mut attendees = vec![];
    for (i, a) in ev.attendees.iter().enumerate() {
        let address = one(&format!("attendees[{i}].address"), &a.address)?;
        let phone_e164 = match a.phone.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => Some(
                phones
                    .to_e164(p, Some(tenant.default_region))
                    .map_err(|e| rejection(&format!("attendees[{i}].phone"), p, &format!("{:?}", tenant.default_region), &e, tenant))?,
            ),
            None => None,
        };
        if seen.insert(address.email.clone()) {
            attendees.push(NormalisedAttendee { address, response: a.response, optional: a.optional, phone_e164 });
        }
    }
    let participants = participants(&actor.email, std::iter::once(&organizer).chain(attendees.iter().map(|a| &a.address)));
    let location = trimmed(&ev.location);
    let location_e164 = location.as_deref().and_then(|l| phone_in_text(l, phones, tenant));
    let (description_excerpt, description_truncated) = excerpt(ev.description_text.as_deref());
    Ok(NormalisedMeeting {
        tenant_id: ev.tenant_id.clone(),
        source_id,
        event_id: ev.event_id.clone(),
        ical_uid,
        recurrence_id,
        source: ev.source.clone(),
        version: ev.version,
        status: ev.status,
        title: trimmed(&ev.title),
        description_excerpt,
        description_truncated,
        start_at,
        end_at,
        all_day: ev.all_day,
        time_zone: trimmed(&ev.time_zone),
        location,
        location_e164,
        conference_url: trimmed(&ev.conference_url),
        organizer,
        attendees,
        actor_id: ev.actor_id.clone(),
        actor_email: actor.email,
        participants,
        attributes: ev.attributes.clone(),
        normalised_at: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::fixtures::{raw_email, raw_meeting};
    use crm_common::events::{AttendeeResponse, MeetingAttendee};
    use crm_common::tenants::Tenants;

    fn tenant() -> ResolvedTenant {
        Tenants::parse("[tenants.acme]\ndefault_region = \"US\"\n").unwrap().get("acme").unwrap().clone()
    }

    #[test]
    fn an_email_gets_canonical_addresses_and_its_other_parties() {
        let mut ev = raw_email("acme", "m1", 0);
        ev.to.push("jane.doe@customer.example".into()); // the same person again
        ev.bcc = vec!["Rep@ACME.example".into()]; // the actor, in Bcc
        let n = normalise_email(&ev, 7).unwrap();
        assert_eq!(n.message_id, "m1@mail.acme.example");
        assert_eq!(n.from.email, "rep@acme.example");
        assert_eq!(n.from.name.as_deref(), Some("Rep One"));
        assert_eq!(n.to.len(), 1, "each address once: {:?}", n.to);
        assert_eq!(n.to[0].email, "jane.doe@customer.example");
        assert_eq!(n.to[0].name.as_deref(), Some("Doe, Jane"));
        assert_eq!(n.actor_email, "rep@acme.example");
        assert_eq!(n.participants, ["jane.doe@customer.example", "boss@acme.example", "ops@customer.example"]);
        assert_eq!(n.subject.as_deref(), Some("Renewal"));
        assert!(!n.body_truncated);
        assert_eq!(n.normalised_at, 7);
    }

    #[test]
    fn an_invalid_address_is_a_validation_error_naming_it() {
        let mut ev = raw_email("acme", "m1", 0);
        ev.cc = vec!["boss@acme.example".into(), "ops at customer".into()];
        let r = normalise_email(&ev, 0).unwrap_err();
        assert_eq!(r.reason, DlqReason::Validation);
        assert!(r.detail.starts_with("cc[1] \"o•• •• ••••••••\""), "the dead letter shows its shape only: {}", r.detail);
        assert!(!r.audit_detail.contains("ops at customer") && r.audit_detail.starts_with("cc[1]"), "{}", r.audit_detail);
        let mut ev = raw_email("acme", "m1", 0);
        ev.from = "a@x.example, b@y.example".into();
        assert!(normalise_email(&ev, 0).unwrap_err().detail.contains("2 addresses where one is expected"));
        let mut ev = raw_email("acme", "m1", 0);
        ev.message_id = "<has space@x>".into();
        assert_eq!(normalise_email(&ev, 0).unwrap_err().reason, DlqReason::Validation);
        let mut ev = raw_email("acme", "m1", 0);
        ev.time_zone = Some("Mars/Olympus".into());
        assert!(normalise_email(&ev, 0).unwrap_err().detail.contains("IANA"));
    }

    #[test]
    fn long_bodies_are_cut_at_a_character_boundary() {
        let mut ev = raw_email("acme", "m1", 0);
        ev.body_text = Some("é".repeat(MAX_TEXT_CHARS + 5));
        let n = normalise_email(&ev, 0).unwrap();
        assert!(n.body_truncated);
        assert_eq!(n.body_excerpt.unwrap().chars().count(), MAX_TEXT_CHARS);
        assert_eq!(excerpt(Some("   ")), (None, false));
    }

    #[test]
    fn a_meeting_is_keyed_by_its_ical_uid_and_occurrence() {
        let t = tenant();
        let phones = E164Cache::new(10);
        let n = normalise_meeting(&raw_meeting("acme", "e1", 0), &t, &phones, 0).unwrap();
        assert_eq!(n.source_id, "e1@google.com");
        assert_eq!(n.participants, ["jane.doe@customer.example", "ops@customer.example"]);
        assert_eq!(n.attendees.len(), 3);
        assert_eq!(n.attendees[1].address.name.as_deref(), Some("Jane Doe"));
        assert_eq!(n.location_e164.as_deref(), Some("+16502530000"));
        let mut occurrence = raw_meeting("acme", "e1_20260105T150000Z", 0);
        occurrence.ical_uid = Some("e1@google.com".into());
        occurrence.recurrence_id = Some("20260105T150000Z".into());
        assert_eq!(normalise_meeting(&occurrence, &t, &phones, 0).unwrap().source_id, "e1@google.com/20260105T150000Z");
        let mut no_uid = raw_meeting("acme", "AAMkAGI2", 0);
        no_uid.ical_uid = None;
        assert_eq!(normalise_meeting(&no_uid, &t, &phones, 0).unwrap().source_id, "AAMkAGI2");
    }

    #[test]
    fn all_day_meetings_start_at_midnight_in_their_zone() {
        let t = tenant();
        let phones = E164Cache::new(10);
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.all_day = true;
        ev.start_at = None;
        ev.end_at = None;
        ev.start_date = Some("2026-03-08".into());
        ev.end_date = Some("2026-03-09".into());
        ev.time_zone = Some("America/New_York".into());
        let n = normalise_meeting(&ev, &t, &phones, 0).unwrap();
        // 2026-03-08T00:00-05:00; DST starts at 02:00 that day, so the day is 23 hours.
        assert_eq!(n.start_at, 1_772_946_000_000);
        assert_eq!(n.end_at - n.start_at, 23 * 3_600_000);
        ev.time_zone = Some("+05:30".into());
        let n = normalise_meeting(&ev, &t, &phones, 0).unwrap();
        assert_eq!(n.start_at, 1_772_908_200_000, "2026-03-08T00:00+05:30");
        ev.time_zone = None;
        assert!(normalise_meeting(&ev, &t, &phones, 0).unwrap_err().detail.contains("needs time_zone"));
        ev.time_zone = Some("UTC".into());
        ev.end_date = Some("2026-03-08".into());
        assert!(normalise_meeting(&ev, &t, &phones, 0).unwrap_err().detail.contains("exclusive"));
    }

    #[test]
    fn a_meeting_without_its_times_or_with_a_bad_attendee_is_refused() {
        let t = tenant();
        let phones = E164Cache::new(10);
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.end_at = None;
        assert!(normalise_meeting(&ev, &t, &phones, 0).unwrap_err().detail.contains("end_at is missing"));
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.end_at = Some(ev.start_at.unwrap() - 1);
        assert!(normalise_meeting(&ev, &t, &phones, 0).unwrap_err().detail.contains("before start_at"));
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.attendees.push(MeetingAttendee { address: "nobody".into(), response: AttendeeResponse::Declined, optional: true, phone: None });
        assert!(normalise_meeting(&ev, &t, &phones, 0).unwrap_err().detail.starts_with("attendees[3].address"));
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.attendees[1].phone = Some("12".into());
        let r = normalise_meeting(&ev, &t, &phones, 0).unwrap_err();
        assert_eq!(r.reason, DlqReason::InvalidPhone);
        let mut ev = raw_meeting("acme", "e1", 0);
        ev.attendees[1].phone = Some("(415) 555-2671".into());
        ev.location = Some("Room 4, no dial-in".into());
        let n = normalise_meeting(&ev, &t, &phones, 0).unwrap();
        assert_eq!(n.attendees[1].phone_e164.as_deref(), Some("+14155552671"));
        assert_eq!(n.location_e164, None);
    }

    #[test]
    fn zones_are_names_or_offsets() {
        for ok in ["Europe/Paris", "UTC", "+01:00", "-0530", "Z", "+14:00"] {
            assert!(zone("z", ok).is_ok(), "{ok}");
        }
        for bad in ["Paris", "+1", "+25:00", "01:00", "+01:000", ""] {
            assert!(zone("z", bad).is_err(), "{bad}");
        }
    }
}
