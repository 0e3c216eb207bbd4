//! What the deduper emits for one call once Redis has ruled on it, free of Kafka and Redis:
//! one CrmWriteRequest and one audit record per connected CRM when the call is new, newer or
//! redelivered; one DUPLICATE audit record per connected CRM when it is a repeat, so
//! `crm-sync trace` can answer "why was nothing written to HubSpot?" for each CRM.

use crm_common::clock::now_ms;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::dedup::Mark;
use crm_common::emit::{Emitter, Subject};
use crm_common::events::{idempotency_key, AuditOutcome, CrmWriteRequest, NormalisedCall};
use crm_common::kafka::{InMessage, OutRecord, BACKFILL};
use crm_common::pipeline::Processed;
use crm_common::tenants::ResolvedTenant;

pub struct Fanout {
    pub emit: Emitter,
    pub topics: Topics,
}

pub fn dead(records: [OutRecord; 2]) -> Processed {
    Processed { outputs: records.into(), outcome: "dead_lettered" }
}

impl Fanout {
    pub fn decide(&self, input: &InMessage, call: NormalisedCall, tenant: &ResolvedTenant, mark: &Mark) -> Processed {
        let window = tenant.dedup_window_for(&call.source);
        let (outcome, what) = match mark {
            Mark::New => (AuditOutcome::Succeeded, format!("new call, version {}", call.version)),
            Mark::Update { previous_version, previous_input } => (
                AuditOutcome::Succeeded,
                format!("version {} supersedes version {previous_version} (from {previous_input}): update", call.version),
            ),
            Mark::Redelivered => (
                AuditOutcome::Succeeded,
                format!("version {} again: this input made the mark but its output was not acknowledged before a restart", call.version),
            ),
            Mark::Repeat { marked_version, marked_by } => (
                AuditOutcome::Duplicate,
                format!(
                    "repeat suppressed: version {} arrived after version {marked_version} (from {marked_by}) inside the {} dedup window",
                    call.version,
                    humantime::format_duration(window)
                ),
            ),
        };
        // A backfill re-sends calls that may have been seen: past the mark they go on, and
        // the writer's claim (DONE per key) keeps each to one record.
        let backfill = input.header(BACKFILL).map(|v| String::from_utf8_lossy(v).into_owned());
        let emit = mark.emit() || backfill.is_some();
        let (outcome, what) = match (&backfill, mark) {
            (Some(run), Mark::Repeat { .. }) => {
                (AuditOutcome::Succeeded, format!("backfill {run}: {what}; sent on, the writer's claim decides"))
            }
            _ => (outcome, what),
        };
        let mut outputs = Vec::with_capacity(tenant.crms.len() * 2);
        for &crm in tenant.crms.keys() {
            let key = idempotency_key(&call.tenant_id, &call.call_id, crm);
            let topic = self.topics.crm_writes(crm);
            let subject = Subject {
                tenant_id: &call.tenant_id,
                call_id: Some(&call.call_id),
                crm: Some(crm),
                version: Some(call.version),
                kind: Some(crm_common::events::ActivityKind::Call),
            };
            let detail = if emit { format!("{what} → {topic}") } else { what.clone() };
            let mut audit = self.emit.audit(input, &subject, "dedup", outcome, detail);
            audit.idempotency_key = Some(key.clone());
            audit.attributes.insert("mark".into(), mark.label().into());
            audit.attributes.insert("source".into(), call.source.clone());
            audit.attributes.insert("dedup_window".into(), humantime::format_duration(window).to_string());
            match mark {
                Mark::Update { previous_version, .. } => {
                    audit.attributes.insert("previous_version".into(), previous_version.to_string());
                }
                Mark::Repeat { marked_version, marked_by } => {
                    audit.attributes.insert("marked_version".into(), marked_version.to_string());
                    audit.attributes.insert("marked_by".into(), marked_by.clone());
                }
                Mark::New | Mark::Redelivered => {}
            }
            if let Some(run) = &backfill {
                audit.attributes.insert("backfill".into(), run.clone());
            }
            if emit {
                let request = CrmWriteRequest {
                    tenant_id: call.tenant_id.clone(),
                    call_id: call.call_id.clone(),
                    crm,
                    idempotency_key: key,
                    version: call.version,
                    call: call.clone(),
                    requested_at: now_ms(),
                    trace_id: input.trace_id.clone(),
                };
                outputs.push(OutRecord::new(
                    &topic,
                    &call.tenant_id,
                    codec::encode(&request).expect("CrmWriteRequest always encodes"),
                    &input.trace_id,
                ));
            }
            outputs.push(self.emit.audit_record(&audit));
        }
        Processed { outputs, outcome: mark.label() }
    }

    /// A configured tenant with no CRM connected: nothing to write, but say so.
    pub fn no_crms(&self, input: &InMessage, call: &NormalisedCall) -> Processed {
        let subject = Subject {
            tenant_id: &call.tenant_id,
            call_id: Some(&call.call_id),
            crm: None,
            version: Some(call.version),
            kind: Some(crm_common::events::ActivityKind::Call),
        };
        let audit = self.emit.audit(
            input,
            &subject,
            "dedup",
            AuditOutcome::Skipped,
            format!("tenant '{}' has no CRM connected in TENANTS_CONFIG: nothing to write", call.tenant_id),
        );
        Processed { outputs: vec![self.emit.audit_record(&audit)], outcome: "no_crms" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::events::{AuditRecord, Crm, Stage};
    use crm_common::tenants::Tenants;

    fn input() -> InMessage {
        InMessage {
            topic: "calls.normalised".into(),
            partition: 2,
            offset: 41,
            key: Some(b"acme".to_vec()),
            payload: None,
            timestamp_ms: None,
            headers: vec![],
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    fn call(version: i64) -> NormalisedCall {
        crm_common::events::fixtures::normalised_call("acme", "c:1", version)
    }

    fn fanout() -> (Fanout, Tenants) {
        let tenants = Tenants::parse(
            "[tenants.acme]\ndefault_region = \"US\"\ndedup_window = \"90m\"\n\
             [tenants.acme.crms.hubspot]\nplan = \"pro\"\ncredentials_secret = \"A\"\n\
             [tenants.acme.crms.zoho]\nplan = \"pro\"\ncredentials_secret = \"B\"\n",
        )
        .unwrap();
        (Fanout { emit: Emitter::new(Stage::Deduper, Topics::default()), topics: Topics::default() }, tenants)
    }

    fn audits(p: &Processed) -> Vec<AuditRecord> {
        p.outputs.iter().filter(|o| o.topic == "sync.audit").map(|o| codec::decode(&o.payload).unwrap()).collect()
    }

    #[test]
    fn a_new_call_goes_to_every_connected_crm_with_its_key() {
        let (f, t) = fanout();
        let p = f.decide(&input(), call(1), t.get("acme").unwrap(), &Mark::New);
        assert_eq!(p.outcome, "new");
        let writes: Vec<(String, CrmWriteRequest)> = p
            .outputs
            .iter()
            .filter(|o| o.topic.starts_with("crm.writes."))
            .map(|o| (o.topic.clone(), codec::decode(&o.payload).unwrap()))
            .collect();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].0, "crm.writes.hubspot");
        assert_eq!(writes[0].1.idempotency_key, "acme:c:1:hubspot");
        assert_eq!(writes[1].0, "crm.writes.zoho");
        assert_eq!((writes[1].1.crm, writes[1].1.version), (Crm::Zoho, 1));
        assert_eq!(writes[1].1.trace_id, input().trace_id, "the trace carries on");
        assert!(p.outputs.iter().all(|o| o.key == "acme"), "keyed by tenant");
        let a = audits(&p);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].outcome, AuditOutcome::Succeeded);
        assert_eq!(a[0].idempotency_key.as_deref(), Some("acme:c:1:hubspot"));
        assert_eq!((a[0].input_partition, a[0].input_offset), (2, 41));
    }

    #[test]
    fn a_repeat_writes_nothing_and_says_why_per_crm() {
        let (f, t) = fanout();
        let mark = Mark::Repeat { marked_version: 3, marked_by: "calls.normalised/2/7".into() };
        let p = f.decide(&input(), call(2), t.get("acme").unwrap(), &mark);
        assert_eq!(p.outcome, "repeat");
        assert!(p.outputs.iter().all(|o| o.topic == "sync.audit"));
        let a = audits(&p);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|a| a.outcome == AuditOutcome::Duplicate));
        assert!(a[0].detail.contains("1h 30m"), "names the window: {}", a[0].detail);
        assert!(a[0].detail.contains("calls.normalised/2/7"), "{}", a[0].detail);
        assert_eq!(a[1].attributes["marked_version"], "3");
    }

    #[test]
    fn updates_and_redeliveries_are_emitted() {
        let (f, t) = fanout();
        let up = Mark::Update { previous_version: 1, previous_input: "calls.normalised/2/3".into() };
        let p = f.decide(&input(), call(2), t.get("acme").unwrap(), &up);
        assert_eq!(p.outputs.iter().filter(|o| o.topic.starts_with("crm.writes.")).count(), 2);
        assert_eq!(audits(&p)[0].attributes["previous_version"], "1");
        let p = f.decide(&input(), call(2), t.get("acme").unwrap(), &Mark::Redelivered);
        assert_eq!(p.outcome, "redelivered");
        assert_eq!(p.outputs.iter().filter(|o| o.topic.starts_with("crm.writes.")).count(), 2);
    }
}
