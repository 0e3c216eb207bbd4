//! The values a contract's `source` names, derived from an activity, as text; the
//! contract's `type` makes numbers and booleans of them where a CRM wants those. Each kind
//! has its own sources (a call's, an email's, a meeting's), and a contract names only its
//! kind's. Formats are the CRMs' own (CRM-APIS §1.3, §2.3, §3.3, §4.3;
//! CRM-APIS-ACTIVITIES): times in UTC.

use crate::contract::WriteKind;
use crm_common::events::{
    ActivityKind, CallDirection, CallOutcome, CrmWriteRequest, EmailAddress, EmailDirection, MeetingStatus, NormalisedEmail,
    NormalisedLead, NormalisedMeeting, WriteRequest,
};

/// The attribute a producer sets to link back to the activity in its own system (a call
/// in the dialer's UI, a message in the mail archive): `attributes["source_url"]`.
pub const SOURCE_URL_ATTRIBUTE: &str = "source_url";

/// Where the activity came from: the source system, its own id there, the recording (a
/// call's) and the link back, as each CRM's records can carry them.
pub struct Provenance<'a> {
    pub system: &'a str,
    pub id: &'a str,
    pub recording_url: Option<&'a str>,
    pub link: Option<&'a str>,
}

pub fn provenance(req: &WriteRequest) -> Provenance<'_> {
    let (system, id, recording, attributes) = match req {
        WriteRequest::Call(c) => (c.call.source.as_str(), c.call_id.as_str(), c.call.recording_url.as_deref(), &c.call.attributes),
        WriteRequest::Email { email, .. } => (email.source.as_str(), email.message_id.as_str(), None, &email.attributes),
        WriteRequest::Meeting { meeting, .. } => (meeting.source.as_str(), meeting.event_id.as_str(), None, &meeting.attributes),
        WriteRequest::Lead { lead, .. } => (lead.source.as_str(), lead.lead_id.as_str(), None, &lead.attributes),
    };
    Provenance {
        system,
        id,
        recording_url: recording.filter(|u| !u.trim().is_empty()),
        link: attributes.get(SOURCE_URL_ATTRIBUTE).map(String::as_str).filter(|u| is_web_link(u)),
    }
}

/// Only http(s) links are written: a producer's attribute is untrusted text.
fn is_web_link(u: &str) -> bool {
    let u = u.trim();
    (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(char::is_whitespace) && u.len() <= 2048
}

/// The lines a record's body or description carries where its CRM has no field for them
/// (a contract field with `append_source = true`): "Logged by crm-sync from aircall (call
/// c-123)", the recording and the link back.
pub fn provenance_text(req: &WriteRequest) -> String {
    let p = provenance(req);
    let mut out = format!("Logged by crm-sync from {} ({} {})", p.system, req.kind().as_str(), p.id);
    if let Some(r) = p.recording_url {
        out.push_str(&format!("\nRecording: {r}"));
    }
    if let Some(l) = p.link {
        out.push_str(&format!("\nIn {}: {l}", p.system));
    }
    out
}

/// Sources every kind has: where the activity came from (see [`provenance`]).
pub const PROVENANCE_SOURCES: &[&str] = &["source_system", "source_record_id", "source_url", "provenance"];

/// The sources a contract for `kind` may name (besides [`PROVENANCE_SOURCES`]).
pub fn sources(kind: ActivityKind) -> &'static [&'static str] {
    match kind {
        ActivityKind::Email => EMAIL_SOURCES,
        ActivityKind::Meeting => MEETING_SOURCES,
        ActivityKind::Call | ActivityKind::Unknown => SOURCES,
        ActivityKind::Lead => LEAD_SOURCES,
    }
}

/// The value of `source` for `req` in a write of this kind; None when the activity has
/// none (left out, never blanked).
pub fn value(req: &WriteRequest, source: &str, write: WriteKind) -> Option<String> {
    match source {
        "source_system" => return Some(provenance(req).system.to_string()).filter(|s| !s.is_empty()),
        "source_record_id" => return Some(provenance(req).id.to_string()),
        "source_url" => return provenance(req).link.map(str::to_string),
        "provenance" => return Some(provenance_text(req)),
        _ => {}
    }
    match req {
        WriteRequest::Call(c) => call_value(c, source),
        WriteRequest::Email { req, email } => email_value(&req.idempotency_key, email, source),
        WriteRequest::Meeting { req, meeting } => meeting_value(&req.idempotency_key, meeting, source, write),
        WriteRequest::Lead { lead, .. } => lead_value(lead, source),
    }
}

/// A lead's sources: the person (identity), where they came from (attribution), and the
/// form's own answers stay out (a tenant maps consent through `leads.consent_fields`).
pub const LEAD_SOURCES: &[&str] = &[
    "email",
    "phone",
    "first_name",
    "last_name",
    "last_name_or_unknown",
    "full_name",
    "full_name_or_unknown",
    "company",
    "company_or_unknown",
    "job_title",
    "country",
    "lead_source",
    "source_type",
    "lead_id",
    "submitted_at_iso",
    "submitted_at_ms",
    "submitted_date",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "campaign_id",
    "ad_id",
    "form_id",
    "page_url",
];

/// What a CRM that requires a field (Salesforce Lead's LastName and Company) gets when the
/// lead did not say: Salesforce's own convention in its integrations.
pub const NOT_PROVIDED: &str = "[not provided]";

/// The source's full name, else the first and last joined.
fn full_name(l: &NormalisedLead) -> Option<String> {
    let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    text(&l.full_name).or_else(|| {
        let parts: Vec<String> = [text(&l.first_name), text(&l.last_name)].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    })
}

fn lead_value(l: &NormalisedLead, source: &str) -> Option<String> {
    let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let a = &l.attribution;
    match source {
        "email" => text(&l.email),
        "phone" => text(&l.phone_e164),
        "first_name" => text(&l.first_name),
        "last_name" => text(&l.last_name),
        // The family name, else the last word of the full name, else "[not provided]".
        "last_name_or_unknown" => text(&l.last_name)
            .or_else(|| text(&l.full_name).and_then(|n| n.split_whitespace().last().map(str::to_string)))
            .or_else(|| Some(NOT_PROVIDED.into())),
        "full_name" => full_name(l),
        // A person's name where one is required (Pipedrive's): "[not provided]" without one,
        // which a later lead with a name fills.
        "full_name_or_unknown" => full_name(l).or_else(|| Some(NOT_PROVIDED.into())),
        "company" => text(&l.company),
        "company_or_unknown" => text(&l.company).or_else(|| Some(NOT_PROVIDED.into())),
        "job_title" => text(&l.job_title),
        "country" => text(&l.country),
        "lead_source" => text(&Some(l.source.clone())),
        "source_type" => serde_json::to_value(l.source_type).ok().and_then(|v| v.as_str().map(str::to_string)),
        "lead_id" => Some(l.lead_id.clone()),
        "submitted_at_iso" => (l.submitted_at > 0).then(|| iso(l.submitted_at)),
        "submitted_at_ms" => (l.submitted_at > 0).then(|| l.submitted_at.to_string()),
        "submitted_date" => utc(l.submitted_at).map(|d| d.format("%Y-%m-%d").to_string()),
        "utm_source" => text(&a.utm_source),
        "utm_medium" => text(&a.utm_medium),
        "utm_campaign" => text(&a.utm_campaign),
        "utm_term" => text(&a.utm_term),
        "utm_content" => text(&a.utm_content),
        "campaign_id" => text(&a.campaign_id),
        "ad_id" => text(&a.ad_id),
        "form_id" => text(&a.form_id),
        "page_url" => text(&a.page_url).filter(|u| is_web_link(u)),
        _ => None,
    }
}

pub const EMAIL_SOURCES: &[&str] = &[
    "idempotency_key",
    "message_id",
    "thread_id",
    "sent_at_iso",
    "sent_at_ms",
    "sent_at_offset",
    "message_id_header",
    "sent",
    "subject",
    "subject_or_placeholder",
    "email_task_subject",
    "email_summary",
    "sent_date",
    "sent_time_hhmm",
    "body_or_placeholder",
    "body_excerpt",
    "from_email",
    "to_emails",
    "cc_emails",
    "direction",
    "hubspot_email_direction",
    "hubspot_email_headers",
    "actor_email",
];

pub const MEETING_SOURCES: &[&str] = &[
    "idempotency_key",
    "source_id",
    "start_at_iso",
    "start_at_ms",
    "start_at_offset",
    "end_at_iso",
    "end_at_offset",
    "title",
    "description",
    "location",
    "conference_url",
    "organizer_email",
    "attendee_emails",
    "status",
    "hubspot_meeting_outcome",
    "title_or_cancelled",
    "salesforce_show_as",
    "start_date",
    "start_time_hhmm",
    "duration_hhmm",
    "done_if_cancelled",
    "busy_unless_cancelled",
    "actor_email",
];

/// "Name <address>" as mail headers write it; the bare address without a name.
fn mailbox(a: &EmailAddress) -> String {
    match &a.name {
        Some(n) if !n.is_empty() => format!("{n} <{}>", a.email),
        _ => a.email.clone(),
    }
}

fn list(addrs: &[EmailAddress]) -> String {
    addrs.iter().map(mailbox).collect::<Vec<_>>().join(", ")
}

/// HubSpot's `hs_email_headers` JSON (CRM-APIS-ACTIVITIES §1.1): from, to, cc, bcc, each
/// `{email, firstName, lastName}`; a display name is split at its last space ("Doe, Jane"
/// is "Jane" "Doe").
fn hubspot_headers(e: &NormalisedEmail) -> String {
    fn person(a: &EmailAddress) -> serde_json::Value {
        let (first, last) = match a.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            None => (None, None),
            Some(n) => match n.split_once(',') {
                Some((last, first)) => (Some(first.trim().to_string()), Some(last.trim().to_string())),
                None => match n.rsplit_once(' ') {
                    Some((first, last)) => (Some(first.trim().to_string()), Some(last.trim().to_string())),
                    None => (Some(n.to_string()), None),
                },
            },
        };
        let mut p = serde_json::json!({"email": a.email});
        if let Some(f) = first {
            p["firstName"] = f.into();
        }
        if let Some(l) = last {
            p["lastName"] = l.into();
        }
        p
    }
    let people = |l: &[EmailAddress]| l.iter().map(person).collect::<Vec<_>>();
    serde_json::json!({"from": person(&e.from), "to": people(&e.to), "cc": people(&e.cc), "bcc": people(&e.bcc)}).to_string()
}

fn email_value(key: &str, e: &NormalisedEmail, source: &str) -> Option<String> {
    let sent = e.direction == EmailDirection::Sent;
    match source {
        "idempotency_key" => Some(key.to_string()),
        "message_id" => Some(e.message_id.clone()),
        "thread_id" => e.thread_id.clone(),
        "sent_at_iso" => Some(iso(e.sent_at)),
        "sent_at_ms" => Some(e.sent_at.to_string()),
        "sent_at_offset" => utc(e.sent_at).map(offset),
        // The header's own form, in angle brackets (Zoho's `original_message_id`).
        "message_id_header" => Some(format!("<{}>", e.message_id)),
        "sent" => Some(sent.to_string()),
        "subject" => e.subject.clone(),
        // A Task's Subject, as Salesforce shows logged emails.
        "email_task_subject" => Some(format!("Email: {}", e.subject.as_deref().filter(|s| !s.trim().is_empty()).unwrap_or("(no subject)"))),
        // Who wrote to whom and the text, for a record without header fields.
        "email_summary" => {
            let mut t = format!("From: {}\nTo: {}", mailbox(&e.from), list(&e.to));
            if !e.cc.is_empty() {
                t.push_str(&format!("\nCc: {}", list(&e.cc)));
            }
            t.push_str(&format!("\nSubject: {}\nSent: {}", e.subject.as_deref().unwrap_or(""), iso(e.sent_at)));
            if let Some(b) = e.body_excerpt.as_deref().filter(|b| !b.trim().is_empty()) {
                t.push_str(&format!("\n\n{b}"));
            }
            Some(t)
        }
        "sent_date" => utc(e.sent_at).map(|d| d.format("%Y-%m-%d").to_string()),
        "sent_time_hhmm" => utc(e.sent_at).map(|d| d.format("%H:%M").to_string()),
        "subject_or_placeholder" => Some(e.subject.clone().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "(no subject)".into())),
        // For a CRM that refuses an email without text (Zoho's mandatory `content`).
        "body_or_placeholder" => Some(e.body_excerpt.clone().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| "(no text)".into())),
        "body_excerpt" => e.body_excerpt.clone(),
        "from_email" => Some(mailbox(&e.from)),
        "to_emails" => Some(list(&e.to)),
        "cc_emails" => Some(list(&e.cc)).filter(|s| !s.is_empty()),
        "direction" => Some(if sent { "Sent" } else { "Received" }.into()),
        // HubSpot has no INBOUND/OUTBOUND for emails: a logged sent email is EMAIL.
        "hubspot_email_direction" => Some(if sent { "EMAIL" } else { "INCOMING_EMAIL" }.into()),
        "hubspot_email_headers" => Some(hubspot_headers(e)),
        "actor_email" => Some(e.actor_email.clone()),
        _ => None,
    }
}

fn meeting_value(key: &str, m: &NormalisedMeeting, source: &str, write: WriteKind) -> Option<String> {
    let cancelled = m.status == MeetingStatus::Cancelled;
    match source {
        "idempotency_key" => Some(key.to_string()),
        "source_id" => Some(m.source_id.clone()),
        "start_at_iso" => Some(iso(m.start_at)),
        "start_at_ms" => Some(m.start_at.to_string()),
        "start_at_offset" => utc(m.start_at).map(offset),
        "end_at_iso" => Some(iso(m.end_at)),
        "end_at_offset" => utc(m.end_at).map(offset),
        "title" => m.title.clone(),
        "description" => m.description_excerpt.clone(),
        "location" => m.location.clone(),
        "conference_url" => m.conference_url.clone(),
        "organizer_email" => Some(m.organizer.email.clone()),
        "attendee_emails" => Some(m.attendees.iter().map(|a| a.address.email.as_str()).collect::<Vec<_>>().join(", ")),
        "status" => Some(
            match m.status {
                MeetingStatus::Confirmed => "Confirmed",
                MeetingStatus::Tentative => "Tentative",
                MeetingStatus::Cancelled => "Cancelled",
            }
            .into(),
        ),
        // The calendar decides whether a meeting is on; whether it was held (COMPLETED,
        // NO_SHOW) is for people to record in HubSpot. So a create writes SCHEDULED or
        // CANCELED, and an update writes CANCELED only: a later version of a meeting that
        // is still on leaves a person's outcome alone.
        "hubspot_meeting_outcome" => match (cancelled, write) {
            (true, _) => Some("CANCELED".into()),
            (false, WriteKind::Create) => Some("SCHEDULED".into()),
            (false, WriteKind::Update) => None,
        },
        // Salesforce and Pipedrive have no cancelled state: a cancelled meeting's title gets
        // "Cancelled: " before it. A create writes the title (prefixed when it is cancelled
        // already); an update writes it only to cancel, so a person's edit of a meeting
        // still on stands.
        "title_or_cancelled" => {
            let title = m.title.clone().filter(|t| !t.trim().is_empty()).unwrap_or_else(|| "Meeting".into());
            match (cancelled, write) {
                (true, _) => Some(format!("Cancelled: {title}")),
                (false, WriteKind::Create) => Some(title),
                (false, WriteKind::Update) => None,
            }
        }
        "salesforce_show_as" => match (cancelled, write) {
            (true, _) => Some("Free".into()),
            (false, WriteKind::Create) => Some("Busy".into()),
            (false, WriteKind::Update) => None,
        },
        // Pipedrive's date, "HH:MM" and "HH:MM" duration (rounded up, at most 23:59).
        "start_date" => utc(m.start_at).map(|d| d.format("%Y-%m-%d").to_string()),
        "start_time_hhmm" => utc(m.start_at).map(|d| d.format("%H:%M").to_string()),
        "duration_hhmm" => Some(hhmm_rounded_up(((m.end_at - m.start_at).max(0) / 1000) as u64)),
        // Pipedrive: a cancelled meeting is marked done and not busy. A meeting still on is
        // not done and busy on create; an update leaves both to people (who mark it done
        // once it was held).
        "done_if_cancelled" => match (cancelled, write) {
            (true, _) => Some("true".into()),
            (false, WriteKind::Create) => Some("false".into()),
            (false, WriteKind::Update) => None,
        },
        "busy_unless_cancelled" => match (cancelled, write) {
            (true, _) => Some("false".into()),
            (false, WriteKind::Create) => Some("true".into()),
            (false, WriteKind::Update) => None,
        },
        "actor_email" => Some(m.actor_email.clone()),
        _ => None,
    }
}

/// Pipedrive's "HH:MM" for a duration in seconds, rounded up to the minute, at most 23:59.
fn hhmm_rounded_up(s: u64) -> String {
    let m = s.div_ceil(60);
    format!("{:02}:{:02}", (m / 60).min(23), if m / 60 > 23 { 59 } else { m % 60 })
}

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

/// Whole seconds with a numeric UTC offset (`2026-01-01T00:00:00+00:00`), as Zoho writes
/// its date-times.
fn offset(d: chrono::DateTime<chrono::Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// The value of `source` for this call; None when the call has none (an open call has
/// no duration yet), in which case the field is left out rather than blanked.
pub fn call_value(req: &CrmWriteRequest, source: &str) -> Option<String> {
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
        "started_at_offset" => utc(c.started_at).map(offset),
        "started_time_hhmm" => utc(c.started_at).map(|d| d.format("%H:%M").to_string()),
        // Zoho's "mm:ss"; it rejects zero for answered calls, so an open call logs 00:01
        // until its end arrives as an update.
        "duration_mmss" => {
            let s = c.duration_s.unwrap_or(0).max(1);
            Some(format!("{:02}:{:02}", s / 60, s % 60))
        }
        // Pipedrive's "HH:MM", rounded up to the minute.
        "duration_hhmm" => c.duration_s.map(|s| hhmm_rounded_up(s.max(0) as u64)),
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
        assert_eq!(call_value(&open, "started_at_iso").unwrap(), "2026-01-01T00:00:00.000Z");
        assert_eq!(call_value(&open, "hubspot_call_status").unwrap(), "IN_PROGRESS");
        assert_eq!(call_value(&open, "duration_ms"), None, "an open call has no duration: left out, not blanked");
        let ended = req(2);
        assert_eq!(call_value(&ended, "duration_ms").unwrap(), "60000");
        assert_eq!(call_value(&ended, "hubspot_call_status").unwrap(), "COMPLETED");
        assert_eq!(call_value(&ended, "title").unwrap(), "Inbound call from +14155552671");
        for s in SOURCES {
            let _ = call_value(&ended, s);
        }
        assert_eq!(call_value(&ended, "unknown"), None);
        assert_eq!(call_value(&ended, "duration_mmss").unwrap(), "01:00");
        assert_eq!(call_value(&open, "duration_mmss").unwrap(), "00:01", "Zoho rejects a zero duration");
        assert_eq!(call_value(&ended, "duration_hhmm").unwrap(), "00:01");
        assert_eq!(call_value(&open, "duration_hhmm"), None);
        assert_eq!(call_value(&ended, "started_at_offset").unwrap(), "2026-01-01T00:00:00+00:00");
        assert_eq!(call_value(&ended, "started_date").unwrap(), "2026-01-01");
        assert_eq!(call_value(&ended, "started_time_hhmm").unwrap(), "00:00");
        assert_eq!(call_value(&ended, "task_status").unwrap(), "Completed");
        assert_eq!(call_value(&open, "task_status").unwrap(), "In Progress");
        assert_eq!((call_value(&open, "ended").unwrap(), call_value(&ended, "ended").unwrap()), ("false".into(), "true".into()));
        assert_eq!(call_value(&ended, "zoho_call_type").unwrap(), "Inbound");
        let mut missed = req(2);
        missed.call.outcome = Some(CallOutcome::NoAnswer);
        assert_eq!(call_value(&missed, "zoho_call_type").unwrap(), "Missed");
        assert_eq!(call_value(&missed, "disposition").unwrap(), "No answer");
    }
}
