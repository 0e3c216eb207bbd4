//! Rust mirrors of the records in `schemas/`. Field names and order follow the .avsc files;
//! the codec's round-trip tests fail if the two drift apart.

use crate::schemas::RecordType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

mod lead;
pub use lead::{ConsentState, DroppedField, LeadAttribution, LeadEvent, LeadSourceType, NormalisedLead};

/// A type that travels on Kafka as one of our Avro records.
pub trait AvroRecord: Serialize + for<'de> Deserialize<'de> {
    const RECORD: RecordType;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallOutcome {
    Answered,
    NoAnswer,
    Busy,
    Voicemail,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Crm {
    Unknown,
    Hubspot,
    Salesforce,
    Zoho,
    Pipedrive,
}

impl Crm {
    pub const CONNECTED: [Crm; 4] = [Crm::Hubspot, Crm::Salesforce, Crm::Zoho, Crm::Pipedrive];

    /// The lower-case name used in topics (`crm.writes.hubspot`), flags and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Crm::Unknown => "unknown",
            Crm::Hubspot => "hubspot",
            Crm::Salesforce => "salesforce",
            Crm::Zoho => "zoho",
            Crm::Pipedrive => "pipedrive",
        }
    }
}

/// The idempotency key of one call at one CRM (DESIGN §4): `<tenant_id>:<call_id>:<crm>`.
/// Tenant ids cannot hold ':' (TENANTS_CONFIG refuses them) and CRM names never do, so the
/// key reads back unambiguously whatever the call id holds.
pub fn idempotency_key(tenant_id: &str, call_id: &str, crm: Crm) -> String {
    [tenant_id, ":", call_id, ":", crm.as_str()].concat()
}

impl std::str::FromStr for Crm {
    type Err = String;
    fn from_str(s: &str) -> Result<Crm, String> {
        Crm::CONNECTED
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown CRM '{s}' (expected hubspot, salesforce, zoho or pipedrive)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    Unknown,
    Normaliser,
    Deduper,
    Writer,
    Reconciler,
    AuditSink,
    Operator,
    Backfill,
}

impl Stage {
    /// The Avro symbol (as stored and shown).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Unknown => "UNKNOWN",
            Stage::Normaliser => "NORMALISER",
            Stage::Deduper => "DEDUPER",
            Stage::Writer => "WRITER",
            Stage::Reconciler => "RECONCILER",
            Stage::AuditSink => "AUDIT_SINK",
            Stage::Operator => "OPERATOR",
            Stage::Backfill => "BACKFILL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditOutcome {
    Unknown,
    Succeeded,
    Duplicate,
    Throttled,
    Retrying,
    DeadLettered,
    Skipped,
    DriftFound,
    Repaired,
}

impl AuditOutcome {
    /// The Avro symbol (as stored and shown).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Unknown => "UNKNOWN",
            AuditOutcome::Succeeded => "SUCCEEDED",
            AuditOutcome::Duplicate => "DUPLICATE",
            AuditOutcome::Throttled => "THROTTLED",
            AuditOutcome::Retrying => "RETRYING",
            AuditOutcome::DeadLettered => "DEAD_LETTERED",
            AuditOutcome::Skipped => "SKIPPED",
            AuditOutcome::DriftFound => "DRIFT_FOUND",
            AuditOutcome::Repaired => "REPAIRED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DlqReason {
    Unknown,
    SchemaInvalid,
    InvalidPhone,
    TenantNotConfigured,
    ContactDeleted,
    FieldRemoved,
    Validation,
    PermissionDenied,
    AuthFailed,
    RetriesExhausted,
    /// The activity's actor has no CRM user (by email, or in the tenant's `owners` map) and
    /// the tenant chose `on_unmapped_actor = "dead_letter"`: held for review, replayed once
    /// the actor is mapped.
    ActorUnmapped,
    /// A lead matched several people in the CRM (by its email, or else its phone) and the
    /// tenant chose `on_ambiguous_match = "dead_letter"`: held for review, replayed once
    /// the duplicates are merged in the CRM.
    AmbiguousMatch,
}

impl DlqReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Unknown => "UNKNOWN",
            DlqReason::SchemaInvalid => "SCHEMA_INVALID",
            DlqReason::InvalidPhone => "INVALID_PHONE",
            DlqReason::TenantNotConfigured => "TENANT_NOT_CONFIGURED",
            DlqReason::ContactDeleted => "CONTACT_DELETED",
            DlqReason::FieldRemoved => "FIELD_REMOVED",
            DlqReason::Validation => "VALIDATION",
            DlqReason::PermissionDenied => "PERMISSION_DENIED",
            DlqReason::AuthFailed => "AUTH_FAILED",
            DlqReason::RetriesExhausted => "RETRIES_EXHAUSTED",
            DlqReason::ActorUnmapped => "ACTOR_UNMAPPED",
            DlqReason::AmbiguousMatch => "AMBIGUOUS_MATCH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub tenant_id: String,
    pub call_id: String,
    pub source: String,
    pub version: i64,
    pub direction: CallDirection,
    pub from_number: String,
    pub to_number: String,
    pub region_hint: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_s: Option<i32>,
    pub outcome: Option<CallOutcome>,
    pub agent_id: String,
    pub agent_email: Option<String>,
    pub recording_url: Option<String>,
    pub notes: Option<String>,
    pub attributes: HashMap<String, String>,
}

impl AvroRecord for CallEvent {
    const RECORD: RecordType = RecordType::CallEvent;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedCall {
    pub tenant_id: String,
    pub call_id: String,
    pub source: String,
    pub version: i64,
    pub direction: CallDirection,
    pub from_e164: String,
    pub to_e164: String,
    pub customer_e164: String,
    pub from_raw: String,
    pub to_raw: String,
    pub region_used: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub duration_s: Option<i32>,
    pub outcome: Option<CallOutcome>,
    pub agent_id: String,
    pub agent_email: Option<String>,
    pub recording_url: Option<String>,
    pub notes: Option<String>,
    pub attributes: HashMap<String, String>,
    pub normalised_at: i64,
}

impl AvroRecord for NormalisedCall {
    const RECORD: RecordType = RecordType::NormalisedCall;
}

/// What an activity is: the kinds crm-sync carries. A lead is not an activity (it creates or
/// updates a person) but travels the same pipeline, with the same keys, audit and DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActivityKind {
    Unknown,
    Call,
    Email,
    Meeting,
    Lead,
}

impl std::str::FromStr for ActivityKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ActivityKind, String> {
        [ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown activity kind '{s}' (expected call, email, meeting or lead)"))
    }
}

impl ActivityKind {
    /// The lower-case name used in idempotency keys, topics and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Unknown => "unknown",
            ActivityKind::Call => "call",
            ActivityKind::Email => "email",
            ActivityKind::Meeting => "meeting",
            ActivityKind::Lead => "lead",
        }
    }
}

/// The idempotency key of one activity at one CRM. Calls keep DESIGN §4's
/// `<tenant_id>:<call_id>:<crm>`: records already in customers' CRMs carry it, and another key
/// would write them again on any replay or backfill. Emails and meetings name their kind,
/// `<tenant_id>:<kind>:<source id>:<crm>`, so a Message-ID can never meet a call id.
pub fn activity_key(tenant_id: &str, kind: ActivityKind, source_id: &str, crm: Crm) -> String {
    match kind {
        ActivityKind::Call => idempotency_key(tenant_id, source_id, crm),
        kind => [tenant_id, ":", kind.as_str(), ":", source_id, ":", crm.as_str()].concat(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmailDirection {
    Sent,
    Received,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeetingStatus {
    Confirmed,
    Tentative,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttendeeResponse {
    NeedsAction,
    Accepted,
    Declined,
    Tentative,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailEvent {
    pub tenant_id: String,
    pub message_id: String,
    pub source: String,
    pub version: i64,
    pub thread_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub direction: EmailDirection,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: Option<String>,
    pub body_text: Option<String>,
    pub sent_at: i64,
    pub time_zone: Option<String>,
    pub actor_id: String,
    pub actor_email: String,
    pub attributes: HashMap<String, String>,
}

impl AvroRecord for EmailEvent {
    const RECORD: RecordType = RecordType::EmailEvent;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingAttendee {
    pub address: String,
    pub response: AttendeeResponse,
    pub optional: bool,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingEvent {
    pub tenant_id: String,
    pub event_id: String,
    pub ical_uid: Option<String>,
    pub recurrence_id: Option<String>,
    pub source: String,
    pub version: i64,
    pub status: MeetingStatus,
    pub title: Option<String>,
    pub description_text: Option<String>,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub all_day: bool,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
    pub time_zone: Option<String>,
    pub location: Option<String>,
    pub conference_url: Option<String>,
    pub organizer: String,
    pub attendees: Vec<MeetingAttendee>,
    pub actor_id: String,
    pub actor_email: String,
    pub attributes: HashMap<String, String>,
}

impl AvroRecord for MeetingEvent {
    const RECORD: RecordType = RecordType::MeetingEvent;
}

/// An address as crm-sync matches it (canonical `email`), with the display name split off
/// and the value as captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    pub email: String,
    pub name: Option<String>,
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedEmail {
    pub tenant_id: String,
    pub message_id: String,
    pub source: String,
    pub version: i64,
    pub thread_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub direction: EmailDirection,
    pub from: EmailAddress,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub bcc: Vec<EmailAddress>,
    pub subject: Option<String>,
    pub body_excerpt: Option<String>,
    pub body_truncated: bool,
    pub sent_at: i64,
    pub time_zone: Option<String>,
    pub actor_id: String,
    pub actor_email: String,
    pub participants: Vec<String>,
    pub attributes: HashMap<String, String>,
    pub normalised_at: i64,
}

impl AvroRecord for NormalisedEmail {
    const RECORD: RecordType = RecordType::NormalisedEmail;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedAttendee {
    pub address: EmailAddress,
    pub response: AttendeeResponse,
    pub optional: bool,
    pub phone_e164: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalisedMeeting {
    pub tenant_id: String,
    pub source_id: String,
    pub event_id: String,
    pub ical_uid: Option<String>,
    pub recurrence_id: Option<String>,
    pub source: String,
    pub version: i64,
    pub status: MeetingStatus,
    pub title: Option<String>,
    pub description_excerpt: Option<String>,
    pub description_truncated: bool,
    pub start_at: i64,
    pub end_at: i64,
    pub all_day: bool,
    pub time_zone: Option<String>,
    pub location: Option<String>,
    pub location_e164: Option<String>,
    pub conference_url: Option<String>,
    pub organizer: EmailAddress,
    pub attendees: Vec<NormalisedAttendee>,
    pub actor_id: String,
    pub actor_email: String,
    pub participants: Vec<String>,
    pub attributes: HashMap<String, String>,
    pub normalised_at: i64,
}

impl AvroRecord for NormalisedMeeting {
    const RECORD: RecordType = RecordType::NormalisedMeeting;
}

/// One email or meeting for one CRM (calls keep [`CrmWriteRequest`]); exactly one of
/// `email` and `meeting` is set, as `kind` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityWriteRequest {
    pub tenant_id: String,
    pub kind: ActivityKind,
    pub source_id: String,
    pub crm: Crm,
    pub idempotency_key: String,
    pub version: i64,
    pub email: Option<NormalisedEmail>,
    pub meeting: Option<NormalisedMeeting>,
    pub lead: Option<NormalisedLead>,
    pub requested_at: i64,
    pub trace_id: String,
}

impl AvroRecord for ActivityWriteRequest {
    const RECORD: RecordType = RecordType::ActivityWriteRequest;
}

/// One write for one CRM, of any kind: what a writer's lane carries. An email or meeting
/// request is taken apart once here, so its body is there by construction (a request whose
/// `kind` names a body it lacks is refused with the reason, never unwrapped later).
///
/// An email's and a meeting's parts are boxed: inline, the largest variant made every
/// request 1.7 KB wherever one is held (a writer holds up to `WRITER_MAX_BUFFERED` of
/// them, each lane's queue and batch sized by it), where a call's is a third of that.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a call, the common request, is kept inline: boxed it would take the same memory plus a pointer and an allocation"
)]
pub enum WriteRequest {
    Call(CrmWriteRequest),
    Email {
        req: Box<ActivityWriteRequest>,
        email: Box<NormalisedEmail>,
    },
    Meeting {
        req: Box<ActivityWriteRequest>,
        meeting: Box<NormalisedMeeting>,
    },
    /// A person to create or update from a lead source (not an activity: see
    /// `crm_connectors::person`).
    Lead {
        req: Box<ActivityWriteRequest>,
        lead: Box<NormalisedLead>,
    },
}

impl From<CrmWriteRequest> for WriteRequest {
    fn from(r: CrmWriteRequest) -> Self {
        WriteRequest::Call(r)
    }
}

/// An ActivityWriteRequest that cannot be written, and why (its kind and body disagree,
/// or its key is not the one its parts make).
#[derive(Debug)]
pub struct Malformed {
    pub req: Box<ActivityWriteRequest>,
    pub why: String,
}

/// A message of `crm.writes.<crm>` decoded: a call's request or an email's or meeting's
/// (told apart by their fingerprints), before an activity is taken apart.
pub enum WritePayload {
    Call(Box<CrmWriteRequest>),
    Activity(Box<ActivityWriteRequest>),
}

/// Decodes either record type of `crm.writes.<crm>`; Err says why it is neither.
pub fn decode_write(payload: &[u8]) -> Result<WritePayload, String> {
    let call_error = match crate::codec::decode::<CrmWriteRequest>(payload) {
        Ok(req) => return Ok(WritePayload::Call(Box::new(req))),
        Err(e) => e,
    };
    crate::codec::decode::<ActivityWriteRequest>(payload)
        .map(|a| WritePayload::Activity(Box::new(a)))
        .map_err(|_| format!("neither a CrmWriteRequest nor an ActivityWriteRequest: {call_error}"))
}

impl WriteRequest {
    /// The request a `crm.writes.<crm>` message holds, whatever its kind; None when it holds
    /// none that is whole (the writer dead-letters those with the reason).
    pub fn from_payload(payload: &[u8]) -> Option<WriteRequest> {
        match decode_write(payload).ok()? {
            WritePayload::Call(c) => Some(WriteRequest::Call(*c)),
            WritePayload::Activity(a) => WriteRequest::try_from(*a).ok(),
        }
    }
}

impl TryFrom<ActivityWriteRequest> for WriteRequest {
    type Error = Malformed;
    fn try_from(mut req: ActivityWriteRequest) -> Result<Self, Malformed> {
        let want = activity_key(&req.tenant_id, req.kind, &req.source_id, req.crm);
        if req.idempotency_key != want {
            let why = format!("idempotency_key {:?} is not the key its parts make ({want:?})", req.idempotency_key);
            return Err(Malformed { req: Box::new(req), why });
        }
        let set = |b: bool| if b { "set" } else { "null" };
        match (req.kind, req.email.take(), req.meeting.take(), req.lead.take()) {
            (ActivityKind::Email, Some(email), None, None) => Ok(WriteRequest::Email { req: Box::new(req), email: Box::new(email) }),
            (ActivityKind::Meeting, None, Some(meeting), None) => {
                Ok(WriteRequest::Meeting { req: Box::new(req), meeting: Box::new(meeting) })
            }
            (ActivityKind::Lead, None, None, Some(lead)) => Ok(WriteRequest::Lead { req: Box::new(req), lead: Box::new(lead) }),
            (kind, e, m, l) => {
                let why = format!(
                    "an ActivityWriteRequest of kind {} must carry exactly its own body (email: {}, meeting: {}, lead: {})",
                    kind.as_str(),
                    set(e.is_some()),
                    set(m.is_some()),
                    set(l.is_some()),
                );
                // The request goes back whole, bodies and all, for its dead letter.
                (req.email, req.meeting, req.lead) = (e, m, l);
                Err(Malformed { req: Box::new(req), why })
            }
        }
    }
}

impl WriteRequest {
    pub fn kind(&self) -> ActivityKind {
        match self {
            WriteRequest::Call(_) => ActivityKind::Call,
            WriteRequest::Email { .. } => ActivityKind::Email,
            WriteRequest::Meeting { .. } => ActivityKind::Meeting,
            WriteRequest::Lead { .. } => ActivityKind::Lead,
        }
    }

    pub fn tenant_id(&self) -> &str {
        match self {
            WriteRequest::Call(c) => &c.tenant_id,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => &req.tenant_id,
        }
    }

    pub fn idempotency_key(&self) -> &str {
        match self {
            WriteRequest::Call(c) => &c.idempotency_key,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => &req.idempotency_key,
        }
    }

    /// The source's id: a call's id, an email's Message-ID, a meeting's iCalUID (and
    /// occurrence) or event id.
    pub fn source_id(&self) -> &str {
        match self {
            WriteRequest::Call(c) => &c.call_id,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => &req.source_id,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            WriteRequest::Call(c) => c.version,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => req.version,
        }
    }

    pub fn crm(&self) -> Crm {
        match self {
            WriteRequest::Call(c) => c.crm,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => req.crm,
        }
    }

    pub fn requested_at(&self) -> i64 {
        match self {
            WriteRequest::Call(c) => c.requested_at,
            WriteRequest::Email { req, .. } | WriteRequest::Meeting { req, .. } | WriteRequest::Lead { req, .. } => req.requested_at,
        }
    }

    pub fn call(&self) -> Option<&CrmWriteRequest> {
        match self {
            WriteRequest::Call(c) => Some(c),
            _ => None,
        }
    }

    /// The earliest time any write for this activity can have happened, as the source
    /// says (never the time of processing alone, which a replay or backfill moves): a
    /// call's start, an email's sending. A meeting is written when it is scheduled, before
    /// it starts, and its schema carries no time of scheduling: the earlier of its start
    /// and when it was normalised (`normalised_at`, which a deduper re-sending the same
    /// normalised message keeps; the request's own time moves with every re-send, and a
    /// re-send after the claim store lost its data was then taken as never written: a
    /// second Zoho or Pipedrive meeting under tansu faults), else the request's time. Known
    /// gap: a meeting scheduled further ahead than the claims' retention, whose claim
    /// expired, and replayed before it starts, is taken as a fresh create (no lookup first)
    /// where the CRM enforces no unique key. A meeting's later version (2 on) has no era of
    /// its own: an earlier version may have been written at any time before this one was
    /// normalised, so 0 (a claim store that forgot it looks it up first, since the beginning;
    /// a second meeting under tansu faults when its update came after the store lost its data).
    pub fn era_ms(&self) -> i64 {
        let requested = self.requested_at().max(0);
        let source = match self {
            WriteRequest::Call(c) => c.call.started_at,
            WriteRequest::Email { email, .. } => email.sent_at,
            // A lead's person may have been written by any earlier version, at any time.
            WriteRequest::Lead { req, .. } if req.version > 1 => return 0,
            WriteRequest::Lead { lead, .. } => lead.submitted_at,
            WriteRequest::Meeting { req, .. } if req.version > 1 => return 0,
            WriteRequest::Meeting { meeting, .. } => {
                let known = if meeting.normalised_at > 0 { meeting.normalised_at } else { requested };
                if meeting.start_at > 0 && known > 0 {
                    meeting.start_at.min(known)
                } else {
                    meeting.start_at
                }
            }
        };
        if source > 0 {
            source
        } else {
            requested
        }
    }

    /// The tenant's user the activity belongs to (a call's agent, the mailbox or calendar
    /// owner): their id at the source and their address, when the source gave one.
    pub fn actor(&self) -> Actor<'_> {
        match self {
            WriteRequest::Call(c) => Actor { id: &c.call.agent_id, email: c.call.agent_email.as_deref().filter(|e| !e.is_empty()) },
            WriteRequest::Email { email, .. } => {
                Actor { id: &email.actor_id, email: Some(email.actor_email.as_str()).filter(|e| !e.is_empty()) }
            }
            WriteRequest::Meeting { meeting, .. } => {
                Actor { id: &meeting.actor_id, email: Some(meeting.actor_email.as_str()).filter(|e| !e.is_empty()) }
            }
            // A lead has no actor: the tenant's lead owner rule decides whose it is.
            WriteRequest::Lead { .. } => Actor { id: "", email: None },
        }
    }

    /// The other parties' canonical email addresses (every party but the actor), the ones
    /// matched to contacts; none for a call (matched by the customer's number).
    pub fn participants(&self) -> &[String] {
        match self {
            WriteRequest::Call(_) => &[],
            WriteRequest::Email { email, .. } => &email.participants,
            WriteRequest::Meeting { meeting, .. } => &meeting.participants,
            WriteRequest::Lead { .. } => &[],
        }
    }
}

/// Whose activity it is, as the source names them (see [`WriteRequest::actor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor<'a> {
    pub id: &'a str,
    pub email: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmWriteRequest {
    pub tenant_id: String,
    pub call_id: String,
    pub crm: Crm,
    pub idempotency_key: String,
    pub version: i64,
    pub call: NormalisedCall,
    pub requested_at: i64,
    pub trace_id: String,
}

impl AvroRecord for CrmWriteRequest {
    const RECORD: RecordType = RecordType::CrmWriteRequest;
}

/// A `CrmWriteRequest`'s fields before its call, borrowed: with the call's datum and
/// [`CrmWriteRequestTail`], `codec::encode_around` writes the request without copying or
/// re-encoding the call (the deduper, once per CRM). A test holds the bytes equal to the
/// owned request's.
#[derive(Debug, Serialize)]
pub struct CrmWriteRequestHead<'a> {
    pub tenant_id: &'a str,
    pub call_id: &'a str,
    pub crm: Crm,
    pub idempotency_key: &'a str,
    pub version: i64,
}

/// `CrmWriteRequest`'s schema cut at its call, for `codec::encode_around` with
/// [`CrmWriteRequestHead`] and [`CrmWriteRequestTail`].
pub static CALL_IN_WRITE_REQUEST: crate::codec::Cut = crate::codec::Cut::new(RecordType::CrmWriteRequest, "call");

/// A `CrmWriteRequest`'s fields after its call (see [`CrmWriteRequestHead`]).
#[derive(Debug, Serialize)]
pub struct CrmWriteRequestTail<'a> {
    pub requested_at: i64,
    pub trace_id: &'a str,
}

/// A `NormalisedCall` read in place (`codec::decode_view`): every field is read and checked,
/// its strings borrowed from the message rather than copied. What the deduper needs of a
/// call is public; the rest is read so that a call it passes on decodes. A field the schema
/// gains and this view lacks is refused, not skipped unread (the tests read a full call).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "read to check the datum, not to use")]
pub struct NormalisedCallView<'a> {
    pub tenant_id: &'a str,
    pub call_id: &'a str,
    pub source: &'a str,
    pub version: i64,
    direction: CallDirection,
    from_e164: &'a str,
    to_e164: &'a str,
    customer_e164: &'a str,
    from_raw: &'a str,
    to_raw: &'a str,
    region_used: &'a str,
    started_at: i64,
    ended_at: Option<i64>,
    duration_s: Option<i32>,
    outcome: Option<CallOutcome>,
    agent_id: &'a str,
    #[serde(borrow)]
    agent_email: Option<&'a str>,
    #[serde(borrow)]
    recording_url: Option<&'a str>,
    #[serde(borrow)]
    notes: Option<&'a str>,
    attributes: CheckedStrMap,
    normalised_at: i64,
}

/// A map of strings read and checked (each key and value valid UTF-8) but not kept: a view
/// has no use for it, and a `HashMap` cost a third of reading the view.
#[derive(Debug)]
struct CheckedStrMap;

impl<'de> Deserialize<'de> for CheckedStrMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CheckedStrMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CheckedStrMap, A::Error> {
                while map.next_entry::<&'de str, &'de str>()?.is_some() {}
                Ok(CheckedStrMap)
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub audit_id: String,
    pub tenant_id: String,
    pub call_id: Option<String>,
    pub crm: Option<Crm>,
    pub stage: Stage,
    pub operation: String,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub detail: String,
    pub attempt: i32,
    pub version: Option<i64>,
    pub idempotency_key: Option<String>,
    pub crm_status: Option<i32>,
    pub crm_response_excerpt: Option<String>,
    pub crm_record_id: Option<String>,
    pub latency_ms: Option<i64>,
    pub input_topic: String,
    pub input_partition: i32,
    pub input_offset: i64,
    pub occurred_at: i64,
    pub trace_id: String,
    pub attributes: HashMap<String, String>,
    #[serde(default)]
    pub kind: Option<ActivityKind>,
}

impl AvroRecord for AuditRecord {
    const RECORD: RecordType = RecordType::AuditRecord;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub dlq_id: String,
    pub tenant_id: String,
    pub call_id: Option<String>,
    pub crm: Option<Crm>,
    pub stage: Stage,
    pub reason: DlqReason,
    pub detail: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    #[serde(with = "opt_bytes")]
    pub source_key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes_vec")]
    pub payload: Vec<u8>,
    pub attempt: i32,
    pub replay_count: i32,
    pub crm_status: Option<i32>,
    pub crm_response_excerpt: Option<String>,
    pub failed_at: i64,
    pub trace_id: String,
    #[serde(default)]
    pub kind: Option<ActivityKind>,
}

impl AvroRecord for DeadLetter {
    const RECORD: RecordType = RecordType::DeadLetter;
}

/// Avro `bytes` must be serialised as serde bytes, not as a sequence of u8.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_str<E>(self, v: &str) -> Result<Vec<u8>, E> {
                Ok(v.as_bytes().to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = vec![];
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }
    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    /// Bytes inside the union, read as bytes (not as a newtype struct around them, which
    /// Avro has no notion of).
    struct Owned(Vec<u8>);
    impl<'de> Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Owned, D::Error> {
            super::serde_bytes_vec::deserialize(d).map(Owned)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Owned>::deserialize(d)?.map(|o| o.0))
    }
}

/// Records as the stages write them, for the tests of the stages that read them (unit tests
/// in the services and the integration tests share these).
pub mod fixtures {
    use super::{
        activity_key, ActivityKind, ActivityWriteRequest, AttendeeResponse, CallDirection, CallEvent, CallOutcome, Crm, EmailAddress,
        EmailDirection, EmailEvent, MeetingAttendee, MeetingEvent, MeetingStatus, NormalisedAttendee, NormalisedCall, NormalisedEmail,
        NormalisedMeeting,
    };

    /// A raw CallEvent from a PBX: a minute-long answered inbound call that starts `minute`
    /// minutes after 2026-01-01T00:00Z.
    pub fn raw_call(tenant: &str, call_id: &str, minute: i64) -> CallEvent {
        CallEvent {
            tenant_id: tenant.into(),
            call_id: call_id.into(),
            source: "pbx".into(),
            version: 1,
            direction: CallDirection::Inbound,
            from_number: "(415) 555-2671".into(),
            to_number: "+1 650 253 0000".into(),
            region_hint: None,
            started_at: 1_767_225_600_000 + minute * 60_000,
            ended_at: Some(1_767_225_660_000 + minute * 60_000),
            duration_s: Some(60),
            outcome: Some(CallOutcome::Answered),
            agent_id: "agent-1".into(),
            agent_email: None,
            recording_url: None,
            notes: None,
            attributes: Default::default(),
        }
    }

    /// A NormalisedCall as the normaliser would write it, for tests of later stages.
    pub fn normalised_call(tenant: &str, call_id: &str, version: i64) -> NormalisedCall {
        NormalisedCall {
            tenant_id: tenant.into(),
            call_id: call_id.into(),
            source: "pbx".into(),
            version,
            direction: CallDirection::Inbound,
            from_e164: "+14155552671".into(),
            to_e164: "+16502530000".into(),
            customer_e164: "+14155552671".into(),
            from_raw: "(415) 555-2671".into(),
            to_raw: "650 253 0000".into(),
            region_used: "US".into(),
            started_at: 1_767_225_600_000,
            ended_at: (version > 1).then_some(1_767_225_660_000),
            duration_s: (version > 1).then_some(60),
            outcome: (version > 1).then_some(CallOutcome::Answered),
            agent_id: "agent-1".into(),
            agent_email: Some("a1@example.com".into()),
            recording_url: None,
            notes: None,
            attributes: std::collections::HashMap::new(),
            normalised_at: 1_767_225_600_100,
        }
    }

    /// A raw EmailEvent: the tenant's user (rep@acme.example) writes to a customer, with a
    /// colleague and a second customer in Cc, `minute` minutes after 2026-01-01T00:00Z.
    pub fn raw_email(tenant: &str, message_id: &str, minute: i64) -> EmailEvent {
        EmailEvent {
            tenant_id: tenant.into(),
            message_id: format!("<{message_id}@mail.acme.example>"),
            source: "gmail-sync".into(),
            version: 1,
            thread_id: Some("thread-1".into()),
            in_reply_to: None,
            direction: EmailDirection::Sent,
            from: "Rep One <rep@Acme.Example>".into(),
            to: vec!["\"Doe, Jane\" <Jane.Doe@Customer.Example>".into()],
            cc: vec!["boss@acme.example".into(), "ops@customer.example".into()],
            bcc: vec![],
            subject: Some("Renewal".into()),
            body_text: Some("Hi Jane,\nthe quote is attached.".into()),
            sent_at: 1_767_225_600_000 + minute * 60_000,
            time_zone: Some("Europe/Paris".into()),
            actor_id: "user-1".into(),
            actor_email: "rep@acme.example".into(),
            attributes: Default::default(),
        }
    }

    /// A raw MeetingEvent: a 30-minute call with two customers, organised by the tenant's
    /// user, `minute` minutes after 2026-01-01T00:00Z.
    pub fn raw_meeting(tenant: &str, event_id: &str, minute: i64) -> MeetingEvent {
        let attendee = |address: &str, response| MeetingAttendee { address: address.into(), response, optional: false, phone: None };
        MeetingEvent {
            tenant_id: tenant.into(),
            event_id: event_id.into(),
            ical_uid: Some(format!("{event_id}@google.com")),
            recurrence_id: None,
            source: "google-calendar".into(),
            version: 1,
            status: MeetingStatus::Confirmed,
            title: Some("Quarterly review".into()),
            description_text: Some("Agenda: renewal".into()),
            start_at: Some(1_767_225_600_000 + minute * 60_000),
            end_at: Some(1_767_227_400_000 + minute * 60_000),
            all_day: false,
            start_date: None,
            end_date: None,
            time_zone: Some("America/New_York".into()),
            location: Some("Dial-in: +1 650-253-0000".into()),
            conference_url: Some("https://meet.google.com/abc-defg-hij".into()),
            organizer: "rep@acme.example".into(),
            attendees: vec![
                attendee("rep@acme.example", AttendeeResponse::Accepted),
                attendee("Jane Doe <jane.doe@customer.example>", AttendeeResponse::Accepted),
                attendee("ops@customer.example", AttendeeResponse::NeedsAction),
            ],
            actor_id: "user-1".into(),
            actor_email: "rep@acme.example".into(),
            attributes: Default::default(),
        }
    }

    fn address(email: &str, name: Option<&str>) -> EmailAddress {
        EmailAddress { email: email.into(), name: name.map(Into::into), raw: email.into() }
    }

    /// A raw LeadEvent: Jane Doe fills in the tenant's demo-request form, `minute` minutes
    /// after 2026-01-01T00:00Z, with a US number written nationally and a UTM-tagged visit.
    pub fn raw_lead(tenant: &str, lead_id: &str, minute: i64) -> super::LeadEvent {
        super::LeadEvent {
            tenant_id: tenant.into(),
            lead_id: lead_id.into(),
            source: "webflow-forms".into(),
            source_type: super::LeadSourceType::Form,
            version: 1,
            submitted_at: 1_767_225_600_000 + minute * 60_000,
            email: Some(" Jane.Doe@Customer.Example ".into()),
            phone: Some("(415) 555-2671".into()),
            first_name: Some(" Jane ".into()),
            last_name: Some("Doe".into()),
            full_name: None,
            company: Some("Customer  Inc.".into()),
            job_title: Some("VP Sales".into()),
            country: Some("United States".into()),
            consent_to_processing: super::ConsentState::Granted,
            consent: std::collections::HashMap::from([("marketing_email".into(), "true".into())]),
            attribution: super::LeadAttribution {
                utm_source: Some("google".into()),
                utm_medium: Some("cpc".into()),
                utm_campaign: Some("spring-demo".into()),
                form_id: Some("demo-request".into()),
                page_url: Some("https://acme.example/demo".into()),
                ..Default::default()
            },
            answers: std::collections::HashMap::from([("team_size".into(), "11-50".into())]),
            attributes: Default::default(),
        }
    }

    /// The lead the normaliser makes of [`raw_lead`].
    pub fn normalised_lead(tenant: &str, lead_id: &str, version: i64) -> super::NormalisedLead {
        let raw = raw_lead(tenant, lead_id, 0);
        super::NormalisedLead {
            tenant_id: tenant.into(),
            lead_id: lead_id.into(),
            source: raw.source,
            source_type: raw.source_type,
            version,
            submitted_at: raw.submitted_at,
            email: Some("jane.doe@customer.example".into()),
            phone_e164: Some("+14155552671".into()),
            phone_region: Some("US".into()),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            full_name: Some("Jane Doe".into()),
            company: Some("Customer Inc.".into()),
            job_title: raw.job_title,
            country: Some("US".into()),
            consent_to_processing: raw.consent_to_processing,
            consent: raw.consent,
            attribution: raw.attribution,
            answers: raw.answers,
            attributes: raw.attributes,
            dropped_fields: vec![],
            normalised_at: 1_767_225_600_100,
        }
    }

    /// A lead write request as the deduper would make it from [`normalised_lead`].
    pub fn lead_request(tenant: &str, lead_id: &str, crm: Crm) -> ActivityWriteRequest {
        ActivityWriteRequest {
            tenant_id: tenant.into(),
            kind: ActivityKind::Lead,
            source_id: lead_id.into(),
            crm,
            idempotency_key: activity_key(tenant, ActivityKind::Lead, lead_id, crm),
            version: 1,
            email: None,
            meeting: None,
            lead: Some(normalised_lead(tenant, lead_id, 1)),
            requested_at: 1_767_225_600_200,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    /// An email write request as the deduper would make it from [`raw_email`].
    pub fn email_request(tenant: &str, message_id: &str, crm: Crm) -> ActivityWriteRequest {
        let id = format!("{message_id}@mail.acme.example");
        let email = NormalisedEmail {
            tenant_id: tenant.into(),
            message_id: id.clone(),
            source: "gmail-sync".into(),
            version: 1,
            thread_id: Some("thread-1".into()),
            in_reply_to: None,
            direction: EmailDirection::Sent,
            from: address("rep@acme.example", Some("Rep One")),
            to: vec![address("jane.doe@customer.example", Some("Doe, Jane"))],
            cc: vec![address("ops@customer.example", None)],
            bcc: vec![],
            subject: Some("Renewal".into()),
            body_excerpt: Some("Hi Jane".into()),
            body_truncated: false,
            sent_at: 1_767_225_600_000,
            time_zone: Some("Europe/Paris".into()),
            actor_id: "user-1".into(),
            actor_email: "rep@acme.example".into(),
            participants: vec!["jane.doe@customer.example".into(), "ops@customer.example".into()],
            attributes: Default::default(),
            normalised_at: 1_767_225_600_100,
        };
        ActivityWriteRequest {
            tenant_id: tenant.into(),
            kind: ActivityKind::Email,
            idempotency_key: activity_key(tenant, ActivityKind::Email, &id, crm),
            source_id: id,
            crm,
            version: 1,
            email: Some(email),
            meeting: None,
            lead: None,
            requested_at: 1_767_225_600_200,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    /// A meeting write request as the deduper would make it from [`raw_meeting`].
    pub fn meeting_request(tenant: &str, event_id: &str, crm: Crm) -> ActivityWriteRequest {
        let uid = format!("{event_id}@google.com");
        let attendee =
            |email: &str, response| NormalisedAttendee { address: address(email, None), response, optional: false, phone_e164: None };
        let meeting = NormalisedMeeting {
            tenant_id: tenant.into(),
            source_id: uid.clone(),
            event_id: event_id.into(),
            ical_uid: Some(uid.clone()),
            recurrence_id: None,
            source: "google-calendar".into(),
            version: 2,
            status: MeetingStatus::Cancelled,
            title: Some("Quarterly review".into()),
            description_excerpt: None,
            description_truncated: false,
            start_at: 1_767_225_600_000,
            end_at: 1_767_227_400_000,
            all_day: false,
            time_zone: Some("America/New_York".into()),
            location: Some("Dial-in: +1 650-253-0000".into()),
            location_e164: Some("+16502530000".into()),
            conference_url: None,
            organizer: address("rep@acme.example", None),
            attendees: vec![attendee("jane.doe@customer.example", AttendeeResponse::Declined)],
            actor_id: "user-1".into(),
            actor_email: "rep@acme.example".into(),
            participants: vec!["jane.doe@customer.example".into()],
            attributes: Default::default(),
            normalised_at: 1_767_225_600_100,
        };
        ActivityWriteRequest {
            tenant_id: tenant.into(),
            kind: ActivityKind::Meeting,
            idempotency_key: activity_key(tenant, ActivityKind::Meeting, &uid, crm),
            source_id: uid,
            crm,
            version: 2,
            email: None,
            meeting: Some(meeting),
            lead: None,
            requested_at: 1_767_225_600_200,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }
}

#[cfg(test)]
mod era_tests {
    use super::*;

    #[test]
    fn a_write_request_written_around_its_calls_datum_is_the_owned_requests_bytes() {
        let mut calls = vec![fixtures::normalised_call("acme", "c:1", 3)];
        let mut full = fixtures::normalised_call("acme", "c:2", 7);
        full.attributes.insert("queue".into(), "sales".into());
        full.attributes.insert("ünïcode".into(), "☕".into());
        (full.notes, full.agent_email, full.recording_url) = (Some("called back".into()), Some("a@b.c".into()), Some("https://r/1".into()));
        (full.ended_at, full.duration_s, full.outcome) = (Some(9), Some(-1), Some(CallOutcome::Voicemail));
        calls.push(full);
        // The request's call is the NormalisedCall schema itself, so a call's datum is its bytes.
        let reg = crate::schemas::Registry::global();
        let canonical = |rt| serde_json::from_str::<serde_json::Value>(&reg.current(rt).canonical).unwrap();
        let request = canonical(RecordType::CrmWriteRequest);
        let call_field = request["fields"].as_array().unwrap().iter().find(|f| f["name"] == "call").unwrap();
        assert_eq!(call_field["type"], canonical(RecordType::NormalisedCall));
        let mut bad_utf8_checked = 0;
        for call in calls {
            let owned = CrmWriteRequest {
                tenant_id: call.tenant_id.clone(),
                call_id: call.call_id.clone(),
                crm: Crm::Salesforce,
                idempotency_key: format!("acme:{}:salesforce", call.call_id),
                version: call.version,
                call: call.clone(),
                requested_at: 1_767_225_600_200,
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            };
            let framed = crate::codec::encode(&call).unwrap();
            let datum = crate::codec::current_datum::<NormalisedCall>(&framed).expect("written with the current schema");
            let head = CrmWriteRequestHead {
                tenant_id: &owned.tenant_id,
                call_id: &owned.call_id,
                crm: owned.crm,
                idempotency_key: &owned.idempotency_key,
                version: owned.version,
            };
            let tail = CrmWriteRequestTail { requested_at: owned.requested_at, trace_id: &owned.trace_id };
            let bytes = crate::codec::encode_around(&CALL_IN_WRITE_REQUEST, &head, datum, &tail).unwrap();
            assert_eq!(bytes, crate::codec::encode(&owned).unwrap());
            assert_eq!(crate::codec::decode::<CrmWriteRequest>(&bytes).unwrap(), owned);

            // The view reads what the owned decode reads, borrowing it.
            let view: NormalisedCallView = crate::codec::decode_view::<NormalisedCall, _>(datum).unwrap();
            assert_eq!((view.tenant_id, view.call_id, view.source, view.version), ("acme", call.call_id.as_str(), "pbx", call.version));
            assert!(crate::codec::decode_view::<NormalisedCall, NormalisedCallView>(&datum[..datum.len() - 1]).is_err(), "cut short");
            // Every string is checked as the owned decode checks it, a map's too.
            if let Some(at) = datum.windows(3).position(|w| w == "☕".as_bytes()) {
                let mut bad = datum.to_vec();
                bad[at..at + 3].copy_from_slice(&[0xff; 3]);
                assert!(crate::codec::decode_view::<NormalisedCall, NormalisedCallView>(&bad).is_err(), "invalid UTF-8 in a map");
                let mut framed_bad = framed[..10].to_vec();
                framed_bad.extend_from_slice(&bad);
                assert!(crate::codec::decode::<NormalisedCall>(&framed_bad).is_err());
                bad_utf8_checked += 1;
            }
            let mut longer = datum.to_vec();
            longer.push(0);
            assert!(matches!(
                crate::codec::decode_view::<NormalisedCall, NormalisedCallView>(&longer),
                Err(crate::codec::DecodeError::TrailingBytes(1))
            ));
        }
        assert_eq!(bad_utf8_checked, 1, "the full call has a map value to spoil");
        // A view that lacks a field the schema has is refused (as the call view would be
        // if NormalisedCall gained a field it does not read).
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Short<'a> {
            tenant_id: &'a str,
        }
        let framed = crate::codec::encode(&fixtures::normalised_call("acme", "c:3", 1)).unwrap();
        let datum = crate::codec::current_datum::<NormalisedCall>(&framed).unwrap();
        let err = crate::codec::decode_view::<NormalisedCall, Short>(datum).unwrap_err().to_string();
        assert!(err.contains("call_id"), "{err}");
        // Another record's bytes, or another framing, are not a call's current datum.
        let other = crate::codec::encode(&fixtures::email_request("acme", "m1", Crm::Zoho)).unwrap();
        assert!(crate::codec::current_datum::<NormalisedCall>(&other).is_none());
        assert!(crate::codec::current_datum::<NormalisedCall>(&[0xC3, 0x01, 1]).is_none());
    }

    #[test]
    fn a_write_request_is_the_size_of_a_calls() {
        // A writer holds thousands of these: an email's or meeting's parts stay boxed.
        let (any, call) = (std::mem::size_of::<WriteRequest>(), std::mem::size_of::<CrmWriteRequest>());
        assert!(any <= call + 8, "WriteRequest is {any} bytes, a CrmWriteRequest {call}");
    }

    #[test]
    fn a_meetings_era_does_not_move_when_the_same_meeting_is_sent_again() {
        let mut first = fixtures::meeting_request("acme", "ev1", Crm::Zoho);
        first.version = 1;
        let m = first.meeting.as_mut().unwrap();
        m.start_at = 2_000_000_000_000; // far ahead
        m.normalised_at = 1_800_000_000_000;
        first.requested_at = 1_800_000_000_500;
        let mut again = first.clone();
        // The deduper re-sends it later (its dedup marks lost): a new request time.
        again.requested_at = 1_800_000_090_000;
        let (a, b) = (WriteRequest::try_from(first).unwrap(), WriteRequest::try_from(again).unwrap());
        assert_eq!(a.era_ms(), 1_800_000_000_000);
        assert_eq!(a.era_ms(), b.era_ms(), "the era is when it was normalised, not when it was requested");
        // Without a normalisation time (an old producer), the request's time still bounds it.
        let mut old = fixtures::meeting_request("acme", "ev2", Crm::Zoho);
        old.version = 1;
        let m = old.meeting.as_mut().unwrap();
        m.start_at = 2_000_000_000_000;
        m.normalised_at = 0;
        old.requested_at = 1_800_000_000_500;
        assert_eq!(WriteRequest::try_from(old).unwrap().era_ms(), 1_800_000_000_500);
    }

    /// Version 1 written, then the claim store loses its data, then version 2 is normalised:
    /// its own normalisation time is after the store's new epoch, and read as its era it made
    /// the claim a plain create, a second meeting in the CRM (`reliability` on tansu). An
    /// earlier version may have been written at any time: the era is 0.
    #[test]
    fn a_meetings_later_version_may_follow_a_write_made_at_any_time() {
        let mut update = fixtures::meeting_request("acme", "ev3", Crm::Zoho);
        update.version = 2;
        let m = update.meeting.as_mut().unwrap();
        m.start_at = 2_000_000_000_000;
        m.normalised_at = 1_800_000_000_000;
        assert_eq!(WriteRequest::try_from(update).unwrap().era_ms(), 0);
    }
}
