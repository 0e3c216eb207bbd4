//! What the deduper emits for one activity once Redis has ruled on it, free of Kafka and
//! Redis: one write request and one audit record per connected CRM that takes the activity's
//! kind when it is new, newer or redelivered; one DUPLICATE audit record per such CRM when it
//! is a repeat, so `crm-sync trace` can answer "why was nothing written to HubSpot?" for each
//! CRM.

use crate::activity::Activity;
use crm_common::clock::now_ms;
use crm_common::config::Topics;
use crm_common::dedup::Mark;
use crm_common::emit::{Emitter, Subject};
use crm_common::events::AuditOutcome;
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
    pub fn decide(&self, input: &InMessage, act: &Activity, tenant: &ResolvedTenant, mark: &Mark) -> Processed {
        let window = humantime::format_duration(tenant.dedup_window_for(act.source())).to_string();
        let (kind, version) = (act.kind(), act.version());
        let (outcome, what) = match mark {
            Mark::New => (AuditOutcome::Succeeded, format!("new {}, version {version}", kind.as_str())),
            Mark::Update { previous_version, previous_input } => (
                AuditOutcome::Succeeded,
                format!("version {version} supersedes version {previous_version} (from {previous_input}): update"),
            ),
            Mark::Redelivered => (
                AuditOutcome::Succeeded,
                format!("version {version} again: this input made the mark but its output was not acknowledged before a restart"),
            ),
            Mark::Repeat { marked_version, marked_by } => (
                AuditOutcome::Duplicate,
                format!(
                    "repeat suppressed: version {version} arrived after version {marked_version} (from {marked_by}) inside the {window} dedup window"
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
        let crms: Vec<_> = tenant.crms_taking(kind).collect();
        if crms.is_empty() {
            return self.no_crms(input, act, tenant);
        }
        let mut outputs = Vec::with_capacity(crms.len() * 2);
        for crm in crms {
            let key = act.key(crm);
            let topic = self.topics.crm_writes(crm);
            let subject = Subject {
                tenant_id: act.tenant_id(),
                call_id: Some(act.source_id()),
                crm: Some(crm),
                version: Some(version),
                kind: Some(kind),
            };
            let detail = if emit { [what.as_str(), " → ", &topic].concat() } else { what.clone() };
            let mut audit = self.emit.audit(input, &subject, "dedup", outcome, detail);
            audit.idempotency_key = Some(key.clone());
            audit.attributes.insert("mark".into(), mark.label().into());
            audit.attributes.insert("source".into(), act.source().to_string());
            audit.attributes.insert("dedup_window".into(), window.clone());
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
                outputs.push(OutRecord::new(&topic, act.tenant_id(), act.request(crm, &key, now_ms(), &input.trace_id), &input.trace_id));
            }
            outputs.push(self.emit.audit_record(&audit));
        }
        Processed { outputs, outcome: mark.label() }
    }

    /// A configured tenant with no CRM connected, or none that takes this kind (a tenant
    /// syncing calls only, say): nothing to write, but say so.
    pub fn no_crms(&self, input: &InMessage, act: &Activity, tenant: &ResolvedTenant) -> Processed {
        let kind = act.kind();
        let subject = Subject {
            tenant_id: act.tenant_id(),
            call_id: Some(act.source_id()),
            crm: None,
            version: Some(act.version()),
            kind: Some(kind),
        };
        let detail = if tenant.crms.is_empty() {
            format!("tenant '{}' has no CRM connected in TENANTS_CONFIG: nothing to write", tenant.id)
        } else {
            format!(
                "no CRM of tenant '{}' takes {}s (its CRMs' `activities` in TENANTS_CONFIG): nothing to write",
                tenant.id,
                kind.as_str()
            )
        };
        let audit = self.emit.audit(input, &subject, "dedup", AuditOutcome::Skipped, detail);
        Processed { outputs: vec![self.emit.audit_record(&audit)], outcome: "no_crms" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_common::codec;
    use crm_common::events::{ActivityKind, ActivityWriteRequest, AuditRecord, Crm, CrmWriteRequest, Stage};
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

    /// A call as the deduper reads it: from a message written with the current schema.
    fn call(version: i64) -> Activity<'static> {
        let mut m = input();
        m.payload = Some(codec::encode(&crm_common::events::fixtures::normalised_call("acme", "c:1", version)).unwrap());
        let act = Activity::decode(Box::leak(Box::new(m)), &Topics::default()).unwrap();
        assert!(matches!(act, Activity::Call { .. }), "read in place");
        act
    }

    fn fanout() -> (Fanout, Tenants) {
        let tenants = Tenants::parse(
            "[tenants.acme]\ndefault_region = \"US\"\ndedup_window = \"90m\"\n\
             [tenants.acme.crms.hubspot]\nplan = \"pro\"\ncredentials_secret = \"A\"\n\
             [tenants.acme.crms.zoho]\nplan = \"pro\"\ncredentials_secret = \"B\"\nactivities = [\"call\", \"email\"]\n",
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
        let p = f.decide(&input(), &call(1), t.get("acme").unwrap(), &Mark::New);
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
        let p = f.decide(&input(), &call(2), t.get("acme").unwrap(), &mark);
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
        let p = f.decide(&input(), &call(2), t.get("acme").unwrap(), &up);
        assert_eq!(p.outputs.iter().filter(|o| o.topic.starts_with("crm.writes.")).count(), 2);
        assert_eq!(audits(&p)[0].attributes["previous_version"], "1");
        let p = f.decide(&input(), &call(2), t.get("acme").unwrap(), &Mark::Redelivered);
        assert_eq!(p.outcome, "redelivered");
        assert_eq!(p.outputs.iter().filter(|o| o.topic.starts_with("crm.writes.")).count(), 2);
    }

    #[test]
    fn an_email_goes_only_to_the_crms_that_take_emails_with_its_kind_in_the_key() {
        let (f, t) = fanout();
        let req = crm_common::events::fixtures::email_request("acme", "m1", Crm::Zoho);
        let email = Activity::Email(req.email.unwrap());
        assert_eq!(email.mark_id(), "email:m1@mail.acme.example", "an email's mark never meets a call id");
        let p = f.decide(&input(), &email, t.get("acme").unwrap(), &Mark::New);
        let writes: Vec<(String, ActivityWriteRequest)> = p
            .outputs
            .iter()
            .filter(|o| o.topic.starts_with("crm.writes."))
            .map(|o| (o.topic.clone(), codec::decode(&o.payload).unwrap()))
            .collect();
        assert_eq!(writes.len(), 1, "hubspot takes calls only (the default)");
        assert_eq!(writes[0].0, "crm.writes.zoho");
        let w = &writes[0].1;
        assert_eq!((w.kind, w.idempotency_key.as_str()), (ActivityKind::Email, "acme:email:m1@mail.acme.example:zoho"));
        assert!(w.email.is_some() && w.meeting.is_none());
        let a = audits(&p);
        assert_eq!((a.len(), a[0].kind, a[0].call_id.as_deref()), (1, Some(ActivityKind::Email), Some("m1@mail.acme.example")));

        // No CRM of the tenant takes meetings: nothing written, and the audit says why.
        let meeting = Activity::Meeting(crm_common::events::fixtures::meeting_request("acme", "e1", Crm::Zoho).meeting.unwrap());
        let p = f.decide(&input(), &meeting, t.get("acme").unwrap(), &Mark::New);
        assert_eq!(p.outcome, "no_crms");
        let a = audits(&p);
        assert_eq!(a[0].outcome, AuditOutcome::Skipped);
        assert!(a[0].detail.contains("takes meetings"), "{}", a[0].detail);
    }
}
