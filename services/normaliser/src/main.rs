//! normaliser: calls.raw → calls.normalised, emails.raw → emails.normalised, meetings.raw →
//! meetings.normalised, leads.raw → leads.normalised (DESIGN §1–§3). One audit record per
//! input; inputs that cannot be normalised go to sync.dlq with their original bytes and a
//! reason; a lead whose person refused processing is audited as skipped and goes nowhere.

mod activity;
mod lead;
mod normalise;

use clap::Parser;
use crm_common::clock::now_ms;
use crm_common::codec;
use crm_common::config::{CommonArgs, PipelineArgs, Topics};
use crm_common::emit::{Emitter, Subject};
use crm_common::events::{
    ActivityKind, AuditOutcome, CallEvent, ConsentState, DlqReason, EmailDirection, EmailEvent, LeadEvent, MeetingEvent, Stage,
};
use crm_common::kafka::{InMessage, OutRecord};
use crm_common::live_tenants::{LiveTenants, Loaded};
use crm_common::lookups::{self, Lookup, Lookups};
use crm_common::phone;
use crm_common::pipeline::{self, Handler, PipelineConfig, Processed, Transient};

#[derive(Parser)]
#[command(name = "normaliser", about = "raw activities → normalised: phone numbers to E.164, addresses canonical, times to UTC")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The largest calls.raw event accepted, in bytes: a bigger one is dead-lettered as
    /// VALIDATION rather than carried into every later topic and CRM request.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 256 * 1024)]
    max_event_bytes: usize,
    /// Confluent-framed input (`00` + a Schema Registry id) for producers whose serializer
    /// registered crm-sync's schemas: `id=fingerprint` pairs, comma-separated, the
    /// fingerprints as `crm-sync schemas` prints them. Unset: Confluent framing is refused.
    #[arg(long, env = "CONFLUENT_SCHEMA_IDS", default_value = "")]
    confluent_schema_ids: String,
}

struct Normaliser {
    max_event_bytes: usize,
    /// Schema Registry ids accepted on the raw topics, with the schema each stands for.
    confluent: codec::ConfluentSchemas,
    tenants: LiveTenants<()>,
    phones: phone::E164Cache,
    /// Names the activity's customer numbers, addresses and agent for support's lookups.
    lookups: Lookups,
    emit: Emitter,
}

impl Normaliser {
    /// `input` normalised or dead-lettered; None when its tenant is not in `cfg` and the
    /// file is to be read again first (`recheck`).
    fn one(&self, input: &InMessage, cfg: &Loaded<()>, recheck: bool) -> Option<Processed> {
        let anonymous = Subject { tenant_id: "", call_id: None, crm: None, version: None, kind: None };
        let size = input.payload.as_ref().map_or(0, Vec::len);
        if size > self.max_event_bytes {
            let detail = format!("oversized: the event is {size} bytes; the limit is {} (MAX_EVENT_BYTES)", self.max_event_bytes);
            return Some(dead(self.emit.dead_letter(input, &anonymous, "normalise", DlqReason::Validation, detail.clone(), detail)));
        }
        let bytes = input.payload.as_deref().unwrap_or_default();
        // Each raw topic carries one contract; the record's own fingerprint must say so.
        let topics = &self.emit.topics;
        let decoded = match topics.raw_kind(&input.topic) {
            Some(ActivityKind::Email) => {
                codec::decode_with::<EmailEvent>(bytes, Some(&self.confluent)).map(Raw::Email).map_err(|e| ("an EmailEvent", e))
            }
            Some(ActivityKind::Meeting) => {
                codec::decode_with::<MeetingEvent>(bytes, Some(&self.confluent)).map(Raw::Meeting).map_err(|e| ("a MeetingEvent", e))
            }
            Some(ActivityKind::Lead) => {
                codec::decode_with::<LeadEvent>(bytes, Some(&self.confluent)).map(Raw::Lead).map_err(|e| ("a LeadEvent", e))
            }
            _ => codec::decode_with::<CallEvent>(bytes, Some(&self.confluent)).map(Raw::Call).map_err(|e| ("a CallEvent", e)),
        };
        let raw = match decoded {
            Ok(raw) => raw,
            Err((what, e)) => {
                let detail = format!("{} message is not {what}: {e}", input.topic);
                return Some(dead(self.emit.dead_letter(input, &anonymous, "normalise", DlqReason::SchemaInvalid, detail.clone(), detail)));
            }
        };
        let (tenant_id, source_id, version, kind) = raw.subject();
        let subject = Subject { tenant_id, call_id: Some(source_id), crm: None, version: Some(version), kind: Some(kind) };
        // A person who refused processing is not processed further, whatever else is wrong
        // with the lead (an unknown tenant, a bad id): no record, no dead letter holding their
        // data, no lookup names; its lead id finds this audit record.
        if matches!(&raw, Raw::Lead(ev) if ev.consent_to_processing == ConsentState::Denied) {
            let detail = "the person refused processing (consent_to_processing DENIED): written to no CRM".to_string();
            let audit = self.emit.audit(input, &subject, "normalise", AuditOutcome::Skipped, detail);
            return Some(Processed { outputs: vec![self.emit.audit_record(&audit)], outcome: "skipped" });
        }
        let Some(tenant) = cfg.tenants.get(tenant_id) else {
            // A tenant added a moment ago is not refused for the reload interval: the file
            // is read again first (a removed one is refused at once).
            if recheck && !cfg.removed.contains_key(tenant_id) {
                return None;
            }
            // Debug-quoted: an id is input, and may hold anything.
            let detail = cfg.why_unknown(tenant_id);
            let why = crm_common::emit::Why { reason: DlqReason::TenantNotConfigured, detail: detail.clone(), audit_detail: detail };
            let noted = self.raw_lookups(&raw, None);
            return Some(dead(self.emit.dead_letter_noting(input, &subject, "normalise", why, Default::default(), noted)));
        };
        let now = now_ms();
        let normalised = match &raw {
            Raw::Call(ev) => normalise::normalise(ev, tenant, &self.phones, now).map(|call| {
                let shown = |n: &str| normalise::shown_number(tenant, n);
                let detail = format!("normalised {} → {} (region {})", shown(&call.from_e164), shown(&call.to_e164), call.region_used);
                let lookup = self.lookups.attribute(
                    tenant_id,
                    [
                        Lookup::Phone(&call.customer_e164),
                        Lookup::Agent(&call.agent_id),
                        Lookup::Agent(call.agent_email.as_deref().unwrap_or("")),
                    ],
                );
                let attributes = vec![
                    ("region_used", call.region_used.clone()),
                    ("source", call.source.clone()),
                    (lookups::ATTRIBUTE, lookup),
                    (lookups::ACTIVITY_AT, call.started_at.to_string()),
                ];
                let record = codec::encode(&call).expect("NormalisedCall always encodes");
                Normalised { topic: &topics.calls_normalised, subject_id: None, record, detail, attributes }
            }),
            Raw::Email(ev) => activity::normalise_email(ev, now).map(|email| {
                let sent = if email.direction == EmailDirection::Sent { "a sent" } else { "a received" };
                let cut = if email.body_truncated { "; body cut to its excerpt" } else { "" };
                let detail = format!("normalised {sent} email: {}{cut}", parties(email.participants.len()));
                let lookup = self.lookups.attribute(
                    tenant_id,
                    email
                        .participants
                        .iter()
                        .map(|a| Lookup::Email(a))
                        .chain([Lookup::Agent(&email.actor_id), Lookup::Agent(&email.actor_email)]),
                );
                let record = codec::encode(&email).expect("NormalisedEmail always encodes");
                Normalised::activity(
                    topics.normalised(ActivityKind::Email),
                    email.message_id,
                    &email.source,
                    email.participants.len(),
                    record,
                    detail,
                )
                .looked_up_by(lookup, email.sent_at)
            }),
            Raw::Meeting(ev) => activity::normalise_meeting(ev, tenant, &self.phones, now).map(|m| {
                let all_day = if m.all_day { ", all day" } else { "" };
                let detail = format!("normalised a {:?} meeting: {}{all_day}", m.status, parties(m.participants.len()));
                // Attendees' numbers and a dial-in number in the location are customers' numbers too.
                let phones = m.attendees.iter().filter_map(|a| a.phone_e164.as_deref()).chain(m.location_e164.as_deref());
                let lookup = self.lookups.attribute(
                    tenant_id,
                    m.participants
                        .iter()
                        .map(|a| Lookup::Email(a))
                        .chain(phones.map(Lookup::Phone))
                        .chain([Lookup::Agent(&m.actor_id), Lookup::Agent(&m.actor_email)]),
                );
                let record = codec::encode(&m).expect("NormalisedMeeting always encodes");
                Normalised::activity(topics.normalised(ActivityKind::Meeting), m.source_id, &m.source, m.participants.len(), record, detail)
                    .looked_up_by(lookup, m.start_at)
            }),
            Raw::Lead(ev) => lead::normalise_lead(ev, tenant, &self.phones, now).map(|l| self.lead(l, tenant)),
        };
        let n = match normalised {
            Ok(n) => n,
            Err(r) => {
                // Found by support by its agent, and by its customer's number where that
                // number could be read, though it went no further.
                let why = crm_common::emit::Why { reason: r.reason, detail: r.detail, audit_detail: r.audit_detail };
                let noted = self.raw_lookups(&raw, Some(tenant));
                return Some(dead(self.emit.dead_letter_noting(input, &subject, "normalise", why, Default::default(), noted)));
            }
        };
        // Emails and meetings are known downstream by their normalised source id (a
        // Message-ID without brackets, an iCalUID with its occurrence).
        let subject = Subject { call_id: Some(n.subject_id.as_deref().unwrap_or(source_id)), ..subject };
        let mut audit = self.emit.audit(input, &subject, "normalise", AuditOutcome::Succeeded, n.detail);
        audit.attributes.extend(n.attributes.into_iter().map(|(k, v)| (k.to_string(), v)));
        let mut out = OutRecord::new(n.topic, tenant_id, n.record, &input.trace_id);
        // A backfilled event stays marked as one down the pipeline (the deduper lets it past
        // its mark).
        if let Some(run) = input.header(crm_common::kafka::BACKFILL) {
            out.headers.push((crm_common::kafka::BACKFILL.to_string(), String::from_utf8_lossy(run).into_owned()));
            audit.attributes.insert("backfill".into(), String::from_utf8_lossy(run).into_owned());
        }
        Some(Processed { outputs: vec![out, self.emit.audit_record(&audit)], outcome: "normalised" })
    }
}

impl Normaliser {
    /// A normalised lead on its way out: found by its email and phone.
    fn lead(&self, l: crm_common::events::NormalisedLead, tenant: &crm_common::tenants::ResolvedTenant) -> Normalised<'_> {
        let mut keys = vec![];
        if let Some(e) = &l.email {
            keys.push(format!("email {}", crm_common::email::mask_shape(e)));
        }
        if let Some(p) = &l.phone_e164 {
            keys.push(format!("phone {}", normalise::shown_number(tenant, p)));
        }
        let dropped = l.dropped_fields.iter().map(|d| format!("; {} left out: {}", d.field, d.reason)).collect::<String>();
        let detail = format!("normalised a lead from {}: matched by {}{dropped}", l.source, keys.join(" and "));
        let lookup = self
            .lookups
            .attribute(&l.tenant_id, l.email.as_deref().map(Lookup::Email).into_iter().chain(l.phone_e164.as_deref().map(Lookup::Phone)));
        let mut attributes = vec![("source", l.source.clone())];
        if !l.dropped_fields.is_empty() {
            attributes.push(("dropped_fields", l.dropped_fields.iter().map(|d| d.field.as_str()).collect::<Vec<_>>().join(",")));
        }
        let record = codec::encode(&l).expect("NormalisedLead always encodes");
        let topic = self.emit.topics.normalised(ActivityKind::Lead);
        Normalised { topic, subject_id: Some(l.lead_id), record, detail, attributes }.looked_up_by(lookup, l.submitted_at)
    }

    /// The lookup names of an event that is not normalised: its agent (id and address), a
    /// call's customer number where it reads as one (E.164, or national in the call's hint or
    /// the tenant's region), and when it happened.
    fn raw_lookups(&self, raw: &Raw, tenant: Option<&crm_common::tenants::ResolvedTenant>) -> Vec<(&'static str, String)> {
        let (tenant_id, ..) = raw.subject();
        let (names, at) = match raw {
            Raw::Call(ev) => {
                let customer = if ev.direction == crm_common::events::CallDirection::Inbound { &ev.from_number } else { &ev.to_number };
                let region = ev.region_hint.as_deref().and_then(|r| phone::region(r).ok()).or(tenant.map(|t| t.default_region));
                let e164 = self.phones.to_e164(customer, region).unwrap_or_default();
                let agent_email = ev.agent_email.as_deref().unwrap_or("");
                (
                    self.lookups.attribute(tenant_id, [Lookup::Phone(&e164), Lookup::Agent(&ev.agent_id), Lookup::Agent(agent_email)]),
                    ev.started_at,
                )
            }
            Raw::Email(ev) => {
                (self.lookups.attribute(tenant_id, [Lookup::Agent(&ev.actor_id), Lookup::Agent(&ev.actor_email)]), ev.sent_at)
            }
            Raw::Meeting(ev) => (
                self.lookups.attribute(tenant_id, [Lookup::Agent(&ev.actor_id), Lookup::Agent(&ev.actor_email)]),
                ev.start_at.unwrap_or_default(),
            ),
            // A lead refused has no valid email or phone to be found by (its lead id finds it).
            Raw::Lead(_) => (String::new(), 0),
        };
        if names.is_empty() {
            return vec![];
        }
        let mut out = vec![(lookups::ATTRIBUTE, names)];
        if at > 0 {
            out.push((lookups::ACTIVITY_AT, at.to_string()));
        }
        out
    }
}

/// A raw event of any kind.
enum Raw {
    Call(CallEvent),
    Email(EmailEvent),
    Meeting(MeetingEvent),
    Lead(LeadEvent),
}

impl Raw {
    /// (tenant, source id, version, kind): a Message-ID without its brackets, a meeting's
    /// event id (its normalised source id is known only once it is normalised).
    fn subject(&self) -> (&str, &str, i64, ActivityKind) {
        match self {
            Raw::Call(e) => (&e.tenant_id, &e.call_id, e.version, ActivityKind::Call),
            Raw::Email(e) => (&e.tenant_id, crm_common::email::bare_message_id(&e.message_id), e.version, ActivityKind::Email),
            Raw::Meeting(e) => (&e.tenant_id, &e.event_id, e.version, ActivityKind::Meeting),
            Raw::Lead(e) => (&e.tenant_id, &e.lead_id, e.version, ActivityKind::Lead),
        }
    }
}

/// A normalised record on its way out, with what its audit record says.
struct Normalised<'a> {
    topic: &'a str,
    subject_id: Option<String>,
    record: Vec<u8>,
    detail: String,
    attributes: Vec<(&'static str, String)>,
}

impl<'a> Normalised<'a> {
    /// An email or a meeting: known downstream by its normalised source id.
    fn activity(topic: &'a str, source_id: String, source: &str, participants: usize, record: Vec<u8>, detail: String) -> Normalised<'a> {
        let attributes = vec![("source", source.to_string()), ("participants", participants.to_string())];
        Normalised { topic, subject_id: Some(source_id), record, detail, attributes }
    }

    /// With its lookup names and the activity's own time (`crm-sync trace --phone` …).
    fn looked_up_by(mut self, lookup: String, activity_at: i64) -> Normalised<'a> {
        self.attributes.push((lookups::ATTRIBUTE, lookup));
        self.attributes.push((lookups::ACTIVITY_AT, activity_at.to_string()));
        self
    }
}

/// "1 other party", "3 other parties".
fn parties(n: usize) -> String {
    format!("{n} other part{}", if n == 1 { "y" } else { "ies" })
}

fn dead(records: [OutRecord; 2]) -> Processed {
    Processed { outputs: records.into(), outcome: "dead_lettered" }
}

impl Handler for Normaliser {
    async fn handle(&self, batch: &[InMessage]) -> Result<Vec<Processed>, Transient> {
        let cfg = self.tenants.current();
        let mut out = pipeline::map_in_parallel(batch, |m| self.one(m, &cfg, true));
        if out.iter().any(Option::is_none) {
            let cfg = self.tenants.recheck();
            for (m, o) in batch.iter().zip(out.iter_mut()).filter(|(_, o)| o.is_none()) {
                *o = self.one(m, &cfg, false);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("decided without a recheck")).collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = crm_common::telemetry::init("normaliser", &cli.common)?;
    let tenants = cli.common.live_tenants::<()>(Box::new(|_, _| Ok(())))?;
    tracing::info!(tenants = tenants.current().tenants.len(), "tenants loaded");
    let confluent =
        codec::ConfluentSchemas::from_config(&cli.confluent_schema_ids).map_err(|e| anyhow::anyhow!("CONFLUENT_SCHEMA_IDS: {e}"))?;
    let handler = Normaliser {
        max_event_bytes: cli.max_event_bytes,
        confluent,
        tenants,
        phones: phone::E164Cache::new(100_000),
        lookups: Lookups::from_env(),
        emit: Emitter::new(Stage::Normaliser, cli.common.topics.clone()),
    };
    let cfg = PipelineConfig {
        service: "normaliser",
        input_topics: Topics::KINDS.iter().map(|k| cli.common.topics.raw(*k).to_string()).collect(),
        common: cli.common,
        args: cli.pipeline,
    };
    pipeline::run(cfg, handler, crm_common::shutdown::service()).await
}
