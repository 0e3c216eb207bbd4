//! Audit and dead-letter emission, the one place that builds AuditRecord and DeadLetter
//! messages for every stage (DESIGN §6, §8). Both are produced like any other output, so
//! an input's offset is committed only once its audit and DLQ records are acknowledged.

use crate::codec;
use crate::config::Topics;
use crate::events::{AuditOutcome, AuditRecord, Crm, DeadLetter, DlqReason, Stage};
use crate::pipeline::{InMessage, OutRecord};
use std::collections::HashMap;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The most of an input a dead letter carries (broker messages are 1 MiB by default).
pub const MAX_DLQ_PAYLOAD: usize = 512 * 1024;

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

/// What an audit record is about, beyond the input message.
pub struct Subject<'a> {
    pub tenant_id: &'a str,
    pub call_id: Option<&'a str>,
    pub crm: Option<Crm>,
    pub version: Option<i64>,
}

impl Emitter {
    pub fn new(stage: Stage, topics: Topics) -> Emitter {
        Emitter { stage, topics }
    }

    /// An audit record for `input` with the common fields filled; callers set the rest.
    pub fn audit(
        &self,
        input: &InMessage,
        subject: &Subject,
        operation: &str,
        outcome: AuditOutcome,
        detail: String,
    ) -> AuditRecord {
        AuditRecord {
            audit_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: subject.tenant_id.to_string(),
            call_id: subject.call_id.map(str::to_string),
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
        OutRecord::new(
            &self.topics.audit,
            &record.tenant_id,
            codec::encode(record).expect("AuditRecord always encodes"),
            &record.trace_id,
        )
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
        self.dead_letter_after(input, subject, operation, reason, detail, audit_detail, CrmAnswer::default())
    }

    /// A dead letter after calls to a CRM: the entry and its audit record also carry the
    /// CRM's last status, its answer and the attempt count, for whoever reviews it.
    #[allow(clippy::too_many_arguments)]
    pub fn dead_letter_after(
        &self,
        input: &InMessage,
        subject: &Subject,
        operation: &str,
        reason: DlqReason,
        detail: String,
        audit_detail: String,
        crm: CrmAnswer,
    ) -> [OutRecord; 2] {
        let tenant = if subject.tenant_id.is_empty() {
            input.key_str().unwrap_or_default()
        } else {
            subject.tenant_id.to_string()
        };
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
            dlq_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.clone(),
            call_id: subject.call_id.map(str::to_string),
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
        let mut audit = self.audit(
            input,
            &Subject { tenant_id: &tenant, ..*subject },
            operation,
            AuditOutcome::DeadLettered,
            audit_detail,
        );
        audit.reason = Some(reason.as_str().to_string());
        audit.attempt = dl.attempt;
        crate::telemetry::crm_metrics().dead_letter(self.stage.as_str(), reason.as_str(), subject.crm.map(Crm::as_str));
        audit.crm_status = crm.status;
        audit.attributes.insert("dlq_id".into(), dl.dlq_id.clone());
        [
            OutRecord::new(
                &self.topics.dlq,
                &tenant,
                codec::encode(&dl).expect("DeadLetter always encodes"),
                &input.trace_id,
            ),
            self.audit_record(&audit),
        ]
    }
}
