//! Audit and dead-letter emission, the one place that builds AuditRecord and DeadLetter
//! messages for every stage (DESIGN §6, §8). Both are produced like any other output, so
//! an input's offset is committed only once its audit and DLQ records are acknowledged.

use crate::clock::now_ms;
use crate::codec;
use crate::config::Topics;
use crate::events::{ActivityKind, AuditOutcome, AuditRecord, Crm, DeadLetter, DlqReason, Stage};
use crate::kafka::{InMessage, OutRecord};
use std::collections::HashMap;

/// The most of an input a dead letter carries (broker messages are 1 MiB by default).
pub const MAX_DLQ_PAYLOAD: usize = 512 * 1024;

/// The UUIDv5 namespace of dead-letter ids (a random constant of crm-sync's own).
const DLQ_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1e_47a2_9b0d_4f8e_a3c6_2d71_e08f_b915);

/// Builds a stage's audit and DLQ records.
#[derive(Clone)]
pub struct Emitter {
    pub stage: Stage,
    pub topics: Topics,
}

/// What a CRM last answered before a write was dead-lettered.
#[derive(Debug, Clone, Default)]
pub struct CrmAnswer {
    pub status: Option<i32>,
    pub excerpt: Option<String>,
    pub attempt: i32,
}

/// Why something is dead-lettered: the reason, the entry's detail, and the detail its audit
/// record shows (the same, or masked where the tenant keeps numbers out of audit).
pub struct Why {
    pub reason: DlqReason,
    pub detail: String,
    pub audit_detail: String,
}

/// What an audit record is about, beyond the input message.
pub struct Subject<'a> {
    pub tenant_id: &'a str,
    pub call_id: Option<&'a str>,
    pub crm: Option<Crm>,
    pub version: Option<i64>,
    /// The activity's kind, when the input could be decoded.
    pub kind: Option<ActivityKind>,
}

impl Emitter {
    pub fn new(stage: Stage, topics: Topics) -> Emitter {
        Emitter { stage, topics }
    }

    /// A pipeline stage's dead letter is named by what failed: the input's place in its
    /// topic, the stage, the CRM and the reason. A stage that dies before committing meets
    /// the same input again and dead-letters it again; with the same id, the audit store
    /// keeps one entry, so `crm-sync dlq list` shows one failure once. The reconciler's
    /// inputs are re-reads of old write requests that can fail again after a replay, so its
    /// entries stay unique.
    fn dlq_id(&self, input: &InMessage, crm: Option<Crm>, reason: DlqReason) -> String {
        if self.stage == Stage::Reconciler {
            return uuid::Uuid::new_v4().to_string();
        }
        let name = format!(
            "{}/{}/{}/{}/{}/{}",
            input.topic,
            input.partition,
            input.offset,
            self.stage.as_str(),
            crm.map(Crm::as_str).unwrap_or(""),
            reason.as_str()
        );
        uuid::Uuid::new_v5(&DLQ_NAMESPACE, name.as_bytes()).to_string()
    }

    /// An audit record for `input` with the common fields filled; callers set the rest.
    pub fn audit(&self, input: &InMessage, subject: &Subject, operation: &str, outcome: AuditOutcome, detail: String) -> AuditRecord {
        AuditRecord {
            audit_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: subject.tenant_id.to_string(),
            call_id: subject.call_id.map(str::to_string),
            kind: subject.kind,
            crm: subject.crm,
            stage: self.stage,
            operation: operation.to_string(),
            outcome,
            reason: None,
            detail,
            attempt: 1,
            version: subject.version,
            idempotency_key: None,
            crm_status: None,
            crm_response_excerpt: None,
            crm_record_id: None,
            latency_ms: None,
            input_topic: input.topic.clone(),
            input_partition: input.partition,
            input_offset: input.offset,
            occurred_at: now_ms(),
            trace_id: input.trace_id.clone(),
            attributes: HashMap::new(),
        }
    }

    pub fn audit_record(&self, record: &AuditRecord) -> OutRecord {
        OutRecord::new(&self.topics.audit, &record.tenant_id, codec::encode(record).expect("AuditRecord always encodes"), &record.trace_id)
    }

    /// The DLQ entry for `input` (original bytes kept) and its DEAD_LETTERED audit record.
    pub fn dead_letter(
        &self,
        input: &InMessage,
        subject: &Subject,
        operation: &str,
        reason: DlqReason,
        detail: String,
        audit_detail: String,
    ) -> [OutRecord; 2] {
        self.dead_letter_after(input, subject, operation, Why { reason, detail, audit_detail }, CrmAnswer::default())
    }

    /// A dead letter after calls to a CRM: the entry and its audit record also carry the
    /// CRM's last status, its answer and the attempt count, for whoever reviews it.
    pub fn dead_letter_after(&self, input: &InMessage, subject: &Subject, operation: &str, why: Why, crm: CrmAnswer) -> [OutRecord; 2] {
        self.dead_letter_noting(input, subject, operation, why, crm, vec![])
    }

    /// A dead letter whose audit record also carries `attributes` (the normaliser's lookup
    /// names, so support finds a refused activity by its number or agent too).
    pub fn dead_letter_noting(
        &self,
        input: &InMessage,
        subject: &Subject,
        operation: &str,
        why: Why,
        crm: CrmAnswer,
        attributes: Vec<(&'static str, String)>,
    ) -> [OutRecord; 2] {
        let Why { reason, detail, audit_detail } = why;
        let tenant = if subject.tenant_id.is_empty() { input.key_str().unwrap_or_default() } else { subject.tenant_id.to_string() };
        // The entry must fit in one Kafka message beside its envelope, or the broker refuses
        // it and the stage stops: a huge input keeps its head, and says so.
        let mut detail = detail;
        let mut payload = input.payload.clone().unwrap_or_default();
        if payload.len() > MAX_DLQ_PAYLOAD {
            detail.push_str(&format!(
                " (payload truncated to its first {MAX_DLQ_PAYLOAD} of {} bytes; the whole message is at {}[{}]@{} until retention)",
                payload.len(),
                input.topic,
                input.partition,
                input.offset
            ));
            payload.truncate(MAX_DLQ_PAYLOAD);
        }
        let dl = DeadLetter {
            dlq_id: self.dlq_id(input, subject.crm, reason),
            tenant_id: tenant.clone(),
            call_id: subject.call_id.map(str::to_string),
            kind: subject.kind,
            crm: subject.crm,
            stage: self.stage,
            reason,
            detail,
            source_topic: input.topic.clone(),
            source_partition: input.partition,
            source_offset: input.offset,
            source_key: input.key.clone(),
            payload,
            attempt: crm.attempt.max(1),
            replay_count: input.replay_count(),
            crm_status: crm.status,
            crm_response_excerpt: crm.excerpt.clone(),
            failed_at: now_ms(),
            trace_id: input.trace_id.clone(),
        };
        let mut audit = self.audit(input, &Subject { tenant_id: &tenant, ..*subject }, operation, AuditOutcome::DeadLettered, audit_detail);
        audit.reason = Some(reason.as_str().to_string());
        audit.attempt = dl.attempt;
        crate::telemetry::crm_metrics().dead_letter(self.stage.as_str(), reason.as_str(), subject.crm.map(Crm::as_str), subject.kind);
        audit.crm_status = crm.status;
        audit.attributes.insert("dlq_id".into(), dl.dlq_id.clone());
        audit.attributes.extend(attributes.into_iter().map(|(k, v)| (k.to_string(), v)));
        [
            OutRecord::new(&self.topics.dlq, &tenant, codec::encode(&dl).expect("DeadLetter always encodes"), &input.trace_id),
            self.audit_record(&audit),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(offset: i64) -> InMessage {
        InMessage {
            topic: "crm.writes.zoho".into(),
            partition: 3,
            offset,
            key: Some(b"acme".to_vec()),
            payload: Some(b"x".to_vec()),
            timestamp_ms: None,
            headers: vec![],
            trace_id: "0".repeat(32),
        }
    }

    fn id(stage: Stage, offset: i64, reason: DlqReason) -> String {
        let e = Emitter::new(stage, Topics::default());
        let subject = Subject {
            tenant_id: "acme",
            call_id: Some("c1"),
            crm: Some(Crm::Zoho),
            version: Some(1),
            kind: Some(crate::events::ActivityKind::Call),
        };
        let [dl, _] = e.dead_letter(&input(offset), &subject, "write", reason, "d".into(), "d".into());
        codec::decode::<DeadLetter>(&dl.payload).unwrap().dlq_id
    }

    #[test]
    fn a_redelivered_input_is_dead_lettered_under_the_same_id() {
        let first = id(Stage::Writer, 7, DlqReason::Validation);
        assert_eq!(first, id(Stage::Writer, 7, DlqReason::Validation));
        assert_ne!(first, id(Stage::Writer, 8, DlqReason::Validation), "another input");
        assert_ne!(first, id(Stage::Writer, 7, DlqReason::RetriesExhausted), "another failure");
        assert_ne!(first, id(Stage::Normaliser, 7, DlqReason::Validation), "another stage");
        assert_ne!(id(Stage::Reconciler, 7, DlqReason::Validation), id(Stage::Reconciler, 7, DlqReason::Validation));
    }
}
