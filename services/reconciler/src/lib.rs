//! The reconciler (DESIGN §7, §8): for one tenant in one CRM, compares what the audit store
//! says was written with what the CRM holds now, and acts per the field-ownership contract.
//!
//! A pass:
//! 1. checks the CRM's schema still has every field the contract names (a removed custom
//!    field is reported before writes start failing, or, at Zoho, silently lose it);
//! 2. takes each activity's latest successful write from the audit store, kind by kind
//!    (calls, and the emails and meetings the CRM's writer writes and can read back), and
//!    re-reads its write request from `crm.writes.<crm>` (the values to compare, the bytes
//!    to re-send);
//! 3. reads the records from the CRM, in batches, through the writer's own connector and
//!    token buckets, leaving a share of every limit to live writes;
//! 4. per record: matching; owned fields changed (restorable ones are put back, others
//!    dead-lettered); deleted by someone (dead-lettered, or re-created when the tenant says
//!    so); missing altogether (re-created through the writer's idempotent path: the request
//!    goes back to `crm.writes.<crm>` with the RECREATE header); its contact merged (the
//!    writer's contact cache follows the merge) or deleted (dead-lettered);
//! 5. audits every finding and action (stage RECONCILER), and stores the parity report.
//!
//! Leads are not records crm-sync owns but people: their pass (`people`) reads back the
//! person each lead was written as, and follows one merged or converted, or dead-letters
//! one deleted.
//!
//! A record whose write is in flight (a lease held, or a newer version DONE than the audit
//! store shows yet) is left for the next pass, so the reconciler never undoes a write.

pub mod compare;
mod people;

use compare::{changed_fields, contact_drift, missing_fields, ContactDrift};
use crm_common::audit_store::{AuditStore, ParityReport, Written};
use crm_common::clock::now_ms;
use crm_common::codec;
use crm_common::config::Topics;
use crm_common::emit::{CrmAnswer, Emitter, Subject, Why};
use crm_common::events::{ActivityKind, AuditOutcome, Crm, DlqReason, WriteRequest};
use crm_common::kafka::{InMessage, Kafka, OutRecord, RECREATE};
use crm_common::live_tenants::LiveTenants;
use crm_common::tenants::OnDeleted;
use crm_connectors::api::{Api, Exchange};
use crm_connectors::claims::Claims;
use crm_connectors::connector::{Attribution, Inspect, Live, TenantOf, Wanted};
use crm_connectors::contacts::ContactCache;
use crm_connectors::person_claims::PersonClaims;
use crm_connectors::tenant_clients::Clients;
use rdkafka::producer::FutureProducer;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Kinds of finding, as the parity report and audit name them.
pub mod kind {
    pub const FIELD_CHANGED: &str = "field_changed";
    pub const DELETED: &str = "deleted";
    pub const MISSING: &str = "missing";
    pub const CONTACT_MERGED: &str = "contact_merged";
    pub const CONTACT_DELETED: &str = "contact_deleted";
    pub const FIELD_REMOVED: &str = "field_removed";
    pub const IN_FLIGHT: &str = "in_flight";
    pub const SOURCE_GONE: &str = "source_gone";
    /// Written without a contact, and still none matches.
    pub const UNASSOCIATED: &str = "unassociated";
    /// Written without a contact; one matches now, and the record was associated with it.
    pub const LATE_ASSOCIATED: &str = "late_associated";
    /// Attribution pass: the owner is not the one written (a person reassigned it; repaired
    /// only where the tenant's contract owns the owner).
    pub const OWNER_CHANGED: &str = "owner_changed";
    /// Attribution pass: a company or deal written is no longer associated.
    pub const CONTEXT_CHANGED: &str = "context_changed";
    /// People pass (leads): the person a lead was written as was merged into, or converted
    /// to, another (the writer's person claim follows).
    pub const PERSON_MERGED: &str = "person_merged";
    /// The person is gone and several people have the lead's email or phone now.
    pub const PERSON_AMBIGUOUS: &str = "person_ambiguous";
    /// The person was deleted in the CRM (dead-lettered once; never re-created).
    pub const PERSON_DELETED: &str = "person_deleted";
}

pub struct Reconciler<C: Inspect> {
    pub connector: Arc<C>,
    /// The writers' client, with `reserve_pct` set: it waits rather than spend the share of
    /// each limit kept for live writes.
    pub api: Api,
    pub claims: Claims,
    /// The writers' person claims (leads): they follow a person merged or converted, and
    /// forget one deleted.
    pub person_claims: PersonClaims,
    pub contacts: ContactCache,
    pub store: AuditStore,
    pub producer: FutureProducer,
    pub kafka: Kafka,
    pub topics: Topics,
    /// The tenants file as the reconciler follows it, with a client per tenant connected to
    /// this CRM: a pass uses the config as it is when the pass starts.
    pub tenants: LiveTenants<Clients<C>>,
    /// Writes younger than this are left alone (the audit-sink and the writer settle).
    pub settle: Duration,
}

/// One record under check: what was written, the request behind it (while the topic keeps
/// it), and what its audit rows and dead letters are about.
struct Checked<'a> {
    kind: ActivityKind,
    w: &'a Written,
    msg: Option<&'a InMessage>,
    req: Option<&'a WriteRequest>,
    /// The message its audit rows hang on (the request, or a stand-in for the pass).
    input: InMessage,
    subject: Subject<'a>,
    /// Findings already dead-lettered by earlier passes: (record id, operation).
    known: &'a HashSet<(String, String)>,
    /// Whose it is and what it relates to now (attribution passes only).
    attribution: Option<&'a Attribution>,
    v: Verdict,
}

impl<'a> Checked<'a> {
    /// `w` under check as `kind`, with the request read at its offset, if any.
    fn new(
        kind: ActivityKind,
        w: &'a Written,
        (msg, req): (Option<&'a InMessage>, Option<&'a WriteRequest>),
        (tenant, crm): (&'a str, Crm),
        known: &'a HashSet<(String, String)>,
    ) -> Checked<'a> {
        Checked {
            kind,
            w,
            msg,
            req,
            input: msg.cloned().unwrap_or_else(|| pass_input(tenant, crm)),
            subject: Subject { tenant_id: tenant, call_id: Some(&w.call_id), crm: Some(crm), version: Some(w.version), kind: Some(kind) },
            known,
            attribution: None,
            v: Verdict::default(),
        }
    }
}

/// The message at `w`'s offset on `topic` and the write request in it, if it is `w`'s (same
/// kind and key): the topic may no longer keep it, or hold another there.
fn request_at<'m>(
    messages: &'m HashMap<(i32, i64), InMessage>,
    topic: &str,
    w: &Written,
    kind: ActivityKind,
) -> (Option<&'m InMessage>, Option<WriteRequest>) {
    let msg = messages.get(&(w.partition, w.offset)).filter(|_| w.topic == topic);
    let req = msg
        .and_then(|m| m.payload.as_deref())
        .and_then(WriteRequest::from_payload)
        .filter(|r| r.kind() == kind && r.idempotency_key() == w.idempotency_key);
    (msg, req)
}

/// What one record's check came to.
#[derive(Default)]
struct Verdict {
    drifted: bool,
    repaired: bool,
    dead_lettered: bool,
    deferred: bool,
}

/// The work of one pass: outputs to produce, counts.
struct Pass<'a> {
    emit: Emitter,
    crm: Crm,
    tenant: &'a str,
    out: Vec<OutRecord>,
    findings: BTreeMap<String, i64>,
    /// An attribution pass: owners and associations are checked too.
    attribution: bool,
}

impl Pass<'_> {
    fn note(&mut self, kind: &str) {
        *self.findings.entry(kind.to_string()).or_default() += 1;
    }
}

/// A stand-in input for findings that belong to no message (the schema check).
fn pass_input(tenant: &str, crm: Crm) -> InMessage {
    InMessage {
        topic: format!("reconciler/{}", crm.as_str()),
        partition: -1,
        offset: -1,
        key: Some(tenant.as_bytes().to_vec()),
        payload: None,
        timestamp_ms: Some(now_ms()),
        headers: vec![],
        trace_id: crm_common::kafka::new_trace_id(),
    }
}

/// What the writer matched contacts by for this request (the contact cache's keys): a
/// call's customer number, an email's or meeting's participant addresses.
fn matched_by(r: &WriteRequest) -> Vec<&str> {
    match r {
        WriteRequest::Call(c) => vec![c.call.customer_e164.as_str()],
        other => other.participants().iter().map(String::as_str).collect(),
    }
}

/// One record's verdict in the pass's counts.
fn tally(report: &mut ParityReport, v: &Verdict) {
    if !v.drifted {
        report.matching += 1;
        return;
    }
    report.drifted += 1;
    if v.deferred {
        report.deferred += 1;
    } else if v.dead_lettered {
        report.dead_lettered += 1;
    } else if v.repaired {
        report.repaired += 1;
    }
}

fn fields_text(fields: &[&str]) -> String {
    fields.join(", ")
}

impl<C: Inspect> Reconciler<C> {
    fn crm(&self) -> Crm {
        self.connector.crm()
    }

    /// One pass over `tenant`'s writes to this CRM since `from_ms`. Never fails: a pass that
    /// cannot finish says why in the report's `error`.
    pub async fn pass(&self, tenant: &str, from_ms: i64) -> ParityReport {
        self.pass_as(tenant, from_ms, false).await
    }

    /// The attribution check (RECONCILE_ATTRIBUTION_EVERY, weekly, over
    /// RECONCILE_ATTRIBUTION_LOOKBACK, 30 days): a pass that also reads each record's owner
    /// and the companies and deals it relates to, and reports where they are no longer what
    /// was written; it repairs only fields the contract owns (an owned, restorable owner).
    pub async fn attribution_pass(&self, tenant: &str, from_ms: i64) -> ParityReport {
        self.pass_as(tenant, from_ms, true).await
    }

    async fn pass_as(&self, tenant: &str, from_ms: i64, attribution: bool) -> ParityReport {
        let crm = self.crm();
        let mut report = ParityReport {
            run_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.to_string(),
            crm: crm.as_str().to_string(),
            started_ms: now_ms(),
            window_from_ms: from_ms,
            ..Default::default()
        };
        let mut pass = Pass {
            emit: Emitter::new(crm_common::events::Stage::Reconciler, self.topics.clone()),
            crm,
            tenant,
            out: vec![],
            findings: BTreeMap::new(),
            attribution,
        };
        if let Err(e) = self.run(&mut pass, &mut report).await {
            tracing::error!(tenant, crm = crm.as_str(), "reconciliation pass stopped: {e:#}");
            report.error = Some(format!("{e:#}"));
        }
        report.findings = std::mem::take(&mut pass.findings);
        // Audit and dead letters go out whatever happened, so nothing found is lost.
        if let Err(e) = self.produce(std::mem::take(&mut pass.out)).await {
            report.error.get_or_insert(format!("could not produce findings: {e:#}"));
        }
        report.finished_ms = now_ms();
        if let Err(e) = self.store.record_run(&report).await {
            tracing::error!(tenant, crm = crm.as_str(), error = %e, "could not store the parity report");
        }
        metrics::record(&report);
        tracing::info!(
            tenant,
            crm = crm.as_str(),
            checked = report.checked,
            matching = report.matching,
            drifted = report.drifted,
            repaired = report.repaired,
            dead_lettered = report.dead_lettered,
            deferred = report.deferred,
            "reconciliation pass"
        );
        report
    }

    async fn produce(&self, out: Vec<OutRecord>) -> anyhow::Result<()> {
        crm_common::kafka::publish_all(&self.producer, &out).await.map(|_| ())
    }

    async fn run(&self, pass: &mut Pass<'_>, report: &mut ParityReport) -> anyhow::Result<()> {
        let crm = self.crm();
        let cfg = self.tenants.current();
        let client = match cfg.stage.clients.get(pass.tenant).map(|c| c.as_ref()) {
            Some(Ok(c)) => c,
            Some(Err(why)) => anyhow::bail!("no client for this tenant: {why}"),
            None => anyhow::bail!("{}", cfg.stage.why_not(pass.tenant, crm)),
        };
        // The kinds this tenant syncs to this CRM, of those the reconciler can read back.
        let syncs = cfg.tenants.get(pass.tenant).and_then(|t| t.crms.get(&crm)).map(|c| c.activities.clone()).unwrap_or_default();
        // One schema read per object: Salesforce's calls and emails are both Tasks.
        let mut schemas: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
        for kind in self.connector.inspects().into_iter().filter(|k| syncs.contains(k)) {
            self.run_kind(pass, report, client, kind, &mut schemas).await?;
        }
        if syncs.contains(&ActivityKind::Lead) {
            self.run_people(pass, report, client).await?;
        }
        Ok(())
    }

    /// The pass over one kind's records (each kind is its own object, with its contract).
    async fn run_kind(
        &self,
        pass: &mut Pass<'_>,
        report: &mut ParityReport,
        client: &TenantOf<C>,
        kind: ActivityKind,
        schemas: &mut HashMap<String, Option<BTreeSet<String>>>,
    ) -> anyhow::Result<()> {
        let crm = self.crm();
        let contract = self.connector.contract_for_tenant(pass.tenant, kind);
        let mut log: Vec<Exchange> = vec![];

        // 1. The schema still has the contract's fields.
        let schema = match schemas.get(&contract.object) {
            Some(known) => known.clone(),
            None => {
                let read = self
                    .connector
                    .schema(&self.api, client, kind, &mut log)
                    .await
                    .map_err(|f| anyhow::anyhow!("schema read ({}): {}", kind.as_str(), f.detail))?
                    .map(|s| s.fields);
                schemas.insert(contract.object.clone(), read.clone());
                read
            }
        };
        if let Some(schema) = schema {
            let missing = missing_fields(contract, &schema);
            let file = if kind == ActivityKind::Call { crm.as_str().to_string() } else { format!("{}.{}", crm.as_str(), kind.as_str()) };
            for f in &missing {
                pass.note(kind::FIELD_REMOVED);
                let own = contract.fields.get(f).map(|r| format!("{:?}", r.ownership).to_lowercase()).unwrap_or_default();
                let detail = format!("the {} {} schema has no field {f} ({own} in contracts/{file}.toml): writes that set it will fail or lose it; restore the field or change the contract", crm.as_str(), contract.object);
                tracing::error!(tenant = pass.tenant, crm = crm.as_str(), field = %f, "{detail}");
                let input = pass_input(pass.tenant, crm);
                let subject = Subject { tenant_id: pass.tenant, call_id: None, crm: Some(crm), version: None, kind: Some(kind) };
                let mut a = pass.emit.audit(&input, &subject, "reconcile.schema", AuditOutcome::DriftFound, detail);
                a.reason = Some(DlqReason::FieldRemoved.as_str().to_string());
                a.attributes.insert("field".into(), f.clone());
                pass.out.push(pass.emit.audit_record(&a));
            }
            // Named as the contract names them; another kind's with its object first.
            let key_gone = missing.contains(&contract.key_field);
            for f in missing {
                let name = if kind == ActivityKind::Call { f } else { format!("{}.{f}", contract.object) };
                if !report.missing_fields.contains(&name) {
                    report.missing_fields.push(name);
                }
            }
            if key_gone {
                anyhow::bail!(
                    "the key field {} is gone from the CRM's {}: records cannot be matched to activities until it is back",
                    contract.key_field,
                    contract.object
                );
            }
        }

        // 2. What was written, and the requests behind it.
        let until = now_ms() - self.settle.as_millis() as i64;
        let written = self.store.written(pass.tenant, crm.as_str(), kind, report.window_from_ms, until).await?;
        if written.is_empty() {
            return Ok(());
        }
        let topic = self.topics.crm_writes(crm);
        let messages = self.requests(&topic, &written).await?;

        // 3. What the CRM holds.
        let wanted: Vec<Wanted> =
            written.iter().map(|w| Wanted { record_id: w.record_id.clone(), linked_contact: w.linked_contact.clone() }).collect();
        let mut live = HashMap::new();
        for chunk in wanted.chunks(500) {
            let got = self
                .connector
                .read(&self.api, client, kind, chunk, &mut log)
                .await
                .map_err(|f| anyhow::anyhow!("reading {} records: {}: {}", kind.as_str(), f.reason.as_str(), f.detail))?;
            live.extend(got);
        }
        let ids: Vec<String> = written.iter().map(|w| w.call_id.clone()).collect();
        let known = self.store.reconciler_dead_letters(pass.tenant, crm.as_str(), &ids).await?;
        // Attribution: whose each record is and what it relates to, where the writer set any.
        let mut attributions: HashMap<String, Attribution> = HashMap::new();
        if pass.attribution {
            let asked: Vec<String> = written
                .iter()
                .filter(|w| w.owner_id.is_some() || w.company_id.is_some() || w.deal_id.is_some())
                .filter(|w| matches!(live.get(&w.record_id), Some(Live::Present { .. })))
                .map(|w| w.record_id.clone())
                .collect();
            for chunk in asked.chunks(500) {
                let got = self.connector.attribution(&self.api, client, kind, chunk, &mut log).await.map_err(|f| {
                    anyhow::anyhow!("reading {} records' owners and associations: {}: {}", kind.as_str(), f.reason.as_str(), f.detail)
                })?;
                attributions.extend(got);
            }
        }

        // 4. Each record.
        let on_deleted =
            self.tenants.current().tenants.get(pass.tenant).and_then(|t| t.crms.get(&crm)).map(|c| c.on_deleted).unwrap_or_default();
        for w in &written {
            report.checked += 1;
            let (msg, req) = request_at(&messages, &topic, w, kind);
            let state = live.get(&w.record_id).cloned().unwrap_or(Live::Absent);
            let rec = Checked {
                attribution: attributions.get(&w.record_id),
                ..Checked::new(kind, w, (msg, req.as_ref()), (pass.tenant, crm), &known)
            };
            let v = self.check(pass, client, rec, state, on_deleted).await;
            tally(report, &v);
        }
        Ok(())
    }

    /// The write requests at the offsets the audit store names for `written` (those on
    /// `topic` the broker still keeps), by (partition, offset).
    async fn requests(&self, topic: &str, written: &[Written]) -> anyhow::Result<HashMap<(i32, i64), InMessage>> {
        let wanted_offsets: Vec<(i32, i64)> = written.iter().filter(|w| w.topic == topic).map(|w| (w.partition, w.offset)).collect();
        let (kafka, t) = (self.kafka.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || crm_common::kafka::reader::fetch_at(&kafka, &t, &wanted_offsets, Duration::from_secs(30)))
            .await?
    }

    /// Whether this record's write is settled: DONE at the version the audit store shows,
    /// as this record, with no write holding the key.
    async fn settled(&self, tenant: &str, w: &Written) -> bool {
        match self.claims.state(tenant, &w.idempotency_key).await {
            Ok((done, rid, leased)) => !leased && done.is_none_or(|d| d <= w.version) && rid.as_deref().is_none_or(|r| r == w.record_id),
            // Unsure: act next time.
            Err(_) => false,
        }
    }

    /// One record: matching, drifted (fields, contact) or gone (deleted, missing), and what
    /// the contract lets the reconciler do about it.
    async fn check(&self, pass: &mut Pass<'_>, client: &TenantOf<C>, mut rec: Checked<'_>, state: Live, on_deleted: OnDeleted) -> Verdict {
        match state {
            Live::Present { fields, contact_id } => self.check_present(pass, client, &mut rec, &fields, contact_id.as_deref()).await,
            Live::Deleted => self.check_gone(pass, &mut rec, true, on_deleted).await,
            Live::Absent => self.check_gone(pass, &mut rec, false, on_deleted).await,
        }
        rec.v
    }

    /// A record still there: its owned fields and its contact, against what was written.
    async fn check_present(
        &self,
        pass: &mut Pass<'_>,
        client: &TenantOf<C>,
        rec: &mut Checked<'_>,
        fields: &Map<String, Value>,
        contact_id: Option<&str>,
    ) {
        // Written without a contact and still without one: match again (the contact may
        // have been created since, or the CRM's search lagged at write time).
        if rec.w.linked_contact.is_none() && contact_id.is_none() {
            if let Some(req) = rec.req {
                self.late_match(pass, client, rec, req).await;
            }
        }
        let contract = self.connector.contract_for_tenant(pass.tenant, rec.kind);
        if pass.attribution {
            self.check_attribution(pass, rec, contract).await;
        }
        // An owned owner is compared with the one the writer set (its audit's owner_id).
        let resolved = crm_connectors::contract::Resolved { owner_id: rec.w.owner_id.as_deref() };
        let changed = rec.req.map(|r| changed_fields(contract, &contract.owned_values_with(r, &resolved), fields)).unwrap_or_default();
        let contact = contact_drift(rec.w.linked_contact.as_deref(), contact_id);
        if changed.is_empty() && contact == ContactDrift::Same {
            return;
        }
        rec.v.drifted = true;
        if !self.settled(pass.tenant, rec.w).await {
            pass.note(kind::IN_FLIGHT);
            rec.v.deferred = true;
            return;
        }
        if !changed.is_empty() {
            pass.note(kind::FIELD_CHANGED);
            let (restorable, kept): (Vec<_>, Vec<_>) = changed.iter().partition(|c| c.restorable);
            if !restorable.is_empty() {
                self.restore_fields(pass, client, rec, &restorable).await;
            }
            if !kept.is_empty() {
                let names: Vec<&str> = kept.iter().map(|c| c.field.as_str()).collect();
                let detail = format!(
                    "owned field(s) {} of record {} changed in {} outside crm-sync; the contract does not let the reconciler restore them",
                    fields_text(&names),
                    rec.w.record_id,
                    pass.crm.as_str()
                );
                self.dead_letter(pass, rec, "reconcile.field_changed", DlqReason::Validation, detail, CrmAnswer::default());
            }
        }
        match contact {
            ContactDrift::Same => {}
            ContactDrift::MovedTo(now) => self.follow_merge(pass, rec, now).await,
            ContactDrift::Gone => {
                pass.note(kind::CONTACT_DELETED);
                // A replay must match again.
                for m in rec.req.map(matched_by).unwrap_or_default() {
                    let _ = self.contacts.forget(pass.tenant, pass.crm.as_str(), m).await;
                }
                let detail = format!(
                    "record {} lost its contact {}: the contact was deleted in {}",
                    rec.w.record_id,
                    rec.w.linked_contact.clone().unwrap_or_default(),
                    pass.crm.as_str()
                );
                self.dead_letter(pass, rec, "reconcile.contact_deleted", DlqReason::ContactDeleted, detail, CrmAnswer::default());
            }
        }
    }

    /// The attribution check of one record: its owner against the one written, unless the
    /// contract owns it (then the owned-field comparison restores it), and the company and
    /// deal written against what it relates to now. Reported (DRIFT_FOUND), never repaired:
    /// a person's reassignment or re-association is theirs.
    async fn check_attribution(&self, pass: &mut Pass<'_>, rec: &mut Checked<'_>, contract: &crm_connectors::contract::Contract) {
        let Some(now) = rec.attribution else { return };
        let crm = pass.crm.as_str();
        let owner_owned = contract
            .owner_field()
            .and_then(|f| contract.fields.get(f))
            .is_some_and(|r| r.ownership == crm_connectors::contract::Ownership::Owned && r.restorable);
        if let Some(want) = rec.w.owner_id.clone() {
            if now.owner.as_deref() != Some(want.as_str()) && !owner_owned {
                pass.note(kind::OWNER_CHANGED);
                rec.v.drifted = true;
                let detail = format!(
                    "record {} is owned by {} in {crm}, not {want} as written: reassigned by a person; the contract leaves the owner to people, so it is reported, not repaired",
                    rec.w.record_id,
                    now.owner.as_deref().unwrap_or("no one")
                );
                let attrs = [("owner_written", want), ("owner_now", now.owner.clone().unwrap_or_default())];
                self.audit(pass, rec, "reconcile.attribution", AuditOutcome::DriftFound, detail, &attrs);
            }
        }
        let want = self.connector.written_relations(rec.w.company_id.as_deref(), rec.w.deal_id.as_deref());
        let gone: Vec<&String> = want.iter().filter(|r| !now.related.contains(*r)).collect();
        if !gone.is_empty() {
            pass.note(kind::CONTEXT_CHANGED);
            rec.v.drifted = true;
            let now_text = now.related.iter().cloned().collect::<Vec<_>>().join(", ");
            let detail = format!(
                "record {} is no longer associated with {} in {crm} (now: {}): changed by a person, reported, not repaired",
                rec.w.record_id,
                gone.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", "),
                if now_text.is_empty() { "none" } else { now_text.as_str() }
            );
            self.audit(pass, rec, "reconcile.attribution", AuditOutcome::DriftFound, detail, &[("related_now", now_text.clone())]);
        }
    }

    /// A record written without a contact: its customer's number (a call) or participants'
    /// addresses (an email, a meeting) searched again, and the record associated with the
    /// contacts that match now (associations are only ever added, so no contract field is
    /// touched). The contact cache learns them, so the writer's next activities with them
    /// are associated at once. Counted as `late_associated`, or `unassociated` when still
    /// none matches; a search or association that fails is audited and tried next pass.
    async fn late_match(&self, pass: &mut Pass<'_>, client: &TenantOf<C>, rec: &mut Checked<'_>, req: &WriteRequest) {
        if !self.settled(pass.tenant, rec.w).await {
            return;
        }
        let crm = pass.crm.as_str();
        let mut log = vec![];
        let found: Result<Vec<(String, String)>, crm_connectors::api::Failure> = match req {
            WriteRequest::Call(c) => {
                let e164 = c.call.customer_e164.clone();
                self.connector
                    .find_contact(&self.api, client, &e164, &mut log)
                    .await
                    .map(|o| o.into_iter().map(|id| (e164.clone(), id)).collect())
            }
            other if other.participants().is_empty() => Ok(vec![]),
            other => {
                let wanted = other.participants();
                self.connector
                    .find_contacts_by_email(&self.api, client, wanted, &mut log)
                    .await
                    .map(|m| wanted.iter().filter_map(|a| m.get(a).map(|id| (a.clone(), id.clone()))).collect())
            }
        };
        let matched = match found {
            Ok(m) => m,
            Err(f) => {
                self.audit_exchanges(pass, rec, &log);
                pass.note(kind::UNASSOCIATED);
                tracing::warn!(record = %rec.w.record_id, error = %f.detail, "late match: the contact search failed; next pass tries again");
                return;
            }
        };
        let mut contacts: Vec<String> = vec![];
        for (_, id) in &matched {
            if !contacts.contains(id) {
                contacts.push(id.clone());
            }
        }
        if contacts.is_empty() {
            self.audit_exchanges(pass, rec, &log);
            pass.note(kind::UNASSOCIATED);
            return;
        }
        let r = self.connector.associate(&self.api, client, rec.kind, &rec.w.record_id, &contacts, &mut log).await;
        self.audit_exchanges(pass, rec, &log);
        match r {
            Ok(()) => {
                pass.note(kind::LATE_ASSOCIATED);
                for (m, id) in &matched {
                    let _ = self.contacts.put(pass.tenant, crm, m, Some(id)).await;
                }
                let detail = format!(
                    "record {} was written without a contact; {} now match{}: associated",
                    rec.w.record_id,
                    contacts.join(", "),
                    if contacts.len() == 1 { "es" } else { "" }
                );
                self.audit(
                    pass,
                    rec,
                    "reconcile.late_associated",
                    AuditOutcome::Repaired,
                    detail,
                    &[("contact_id", contacts[0].clone()), ("contact_ids", contacts.join(","))],
                );
                rec.v.drifted = true;
                rec.v.repaired = true;
            }
            Err(f) => {
                pass.note(kind::UNASSOCIATED);
                let detail = format!("could not associate record {} with {}: {}", rec.w.record_id, contacts.join(", "), f.detail);
                self.audit(pass, rec, "reconcile.late_associated", AuditOutcome::DriftFound, detail, &[]);
            }
        }
    }

    /// Puts restorable owned fields back as written; a refusal is dead-lettered.
    async fn restore_fields(&self, pass: &mut Pass<'_>, client: &TenantOf<C>, rec: &mut Checked<'_>, restorable: &[&compare::Changed]) {
        let names: Vec<&str> = restorable.iter().map(|c| c.field.as_str()).collect();
        let fields: Map<String, Value> = restorable.iter().map(|c| (c.field.clone(), c.expected.clone())).collect();
        let mut log = vec![];
        let r = self.connector.restore(&self.api, client, rec.kind, &rec.w.record_id, &fields, &mut log).await;
        self.audit_exchanges(pass, rec, &log);
        match r {
            Ok(()) => {
                let detail = format!(
                    "restored {} on record {} (changed in {} outside crm-sync)",
                    fields_text(&names),
                    rec.w.record_id,
                    pass.crm.as_str()
                );
                self.audit(pass, rec, "reconcile.restore", AuditOutcome::Repaired, detail, &[("fields", fields_text(&names))]);
                rec.v.repaired = true;
            }
            Err(f) => {
                let detail = format!("could not restore {} on record {}: {}", fields_text(&names), rec.w.record_id, f.detail);
                let answer = CrmAnswer { status: f.status.map(i32::from), excerpt: f.excerpt.clone(), attempt: 1 };
                self.dead_letter(pass, rec, "reconcile.restore", f.reason, detail, answer);
            }
        }
    }

    /// The record's contact was merged into `now`: new calls with this number go to the
    /// surviving contact (the cache follows), and the move is audited.
    async fn follow_merge(&self, pass: &mut Pass<'_>, rec: &mut Checked<'_>, now: String) {
        pass.note(kind::CONTACT_MERGED);
        let linked = rec.w.linked_contact.clone().unwrap_or_default();
        let crm = pass.crm.as_str();
        for m in rec.req.map(matched_by).unwrap_or_default() {
            if let Ok(Some(Some(cached))) = self.contacts.get(pass.tenant, crm, m).await {
                if cached == linked {
                    let _ = self.contacts.put(pass.tenant, crm, m, Some(&now)).await;
                }
            }
        }
        let detail =
            format!("contact {linked} was merged into {now}: record {} now hangs under {now}; the contact cache follows", rec.w.record_id);
        self.audit(
            pass,
            rec,
            "reconcile.contact_merged",
            AuditOutcome::Repaired,
            detail,
            &[("contact_id", now.clone()), ("merged_from", linked)],
        );
        rec.v.repaired = true;
    }

    /// A record deleted in the CRM (`deleted`) or not there at all: dead-lettered where the
    /// tenant lets people's deletions stand, else its write request goes back to be created
    /// again (when the topic still holds it).
    async fn check_gone(&self, pass: &mut Pass<'_>, rec: &mut Checked<'_>, deleted: bool, on_deleted: OnDeleted) {
        rec.v.drifted = true;
        pass.note(if deleted { kind::DELETED } else { kind::MISSING });
        if !self.settled(pass.tenant, rec.w).await {
            pass.note(kind::IN_FLIGHT);
            rec.v.deferred = true;
            return;
        }
        let (w, crm) = (rec.w, pass.crm.as_str());
        if deleted && on_deleted == OnDeleted::DeadLetter {
            let detail = format!(
                "record {} was deleted in {crm} outside crm-sync; not re-created (the tenant's on_deleted = \"dead_letter\"); replaying this entry re-creates it",
                w.record_id
            );
            self.dead_letter(pass, rec, "reconcile.deleted", DlqReason::Validation, detail, CrmAnswer::default());
            return;
        }
        let state = if deleted { "deleted" } else { "missing" };
        let Some(m) = rec.msg.filter(|m| m.payload.is_some()) else {
            // The request is gone from the topic (retention): the record cannot be sent
            // again from here.
            pass.note(kind::SOURCE_GONE);
            let detail = format!(
                "record {} is {state} in {crm} and its write request ({}/{}/{}) is no longer kept: re-send the call with `crm-sync backfill`",
                w.record_id, w.topic, w.partition, w.offset
            );
            self.audit(pass, rec, "reconcile.recreate", AuditOutcome::DriftFound, detail, &[]);
            rec.v.deferred = true;
            return;
        };
        let mut again = OutRecord::new(&m.topic, pass.tenant, m.payload.clone().unwrap_or_default(), &m.trace_id);
        again.headers.push((RECREATE.to_string(), w.record_id.clone()));
        pass.out.push(again);
        let detail = format!(
            "record {} is {state} in {crm}: its write request went back to {} to be created again (the writer's claim keeps it to one record)",
            w.record_id, m.topic
        );
        self.audit(pass, rec, "reconcile.recreate", AuditOutcome::Repaired, detail, &[]);
        rec.v.repaired = true;
    }

    fn audit_exchanges(&self, pass: &mut Pass<'_>, rec: &Checked<'_>, log: &[Exchange]) {
        for ex in log {
            let mut a = pass.emit.audit(&rec.input, &rec.subject, &ex.endpoint, ex.audit_outcome(), ex.audit_detail());
            a.idempotency_key = Some(rec.w.idempotency_key.clone());
            a.crm_status = ex.status.map(i32::from);
            a.crm_record_id = Some(rec.w.record_id.clone());
            a.latency_ms = Some(ex.latency_ms);
            a.attempt = ex.attempt as i32;
            a.occurred_at = ex.at_ms;
            pass.out.push(pass.emit.audit_record(&a));
        }
    }

    fn audit(&self, pass: &mut Pass<'_>, rec: &Checked<'_>, op: &str, outcome: AuditOutcome, detail: String, attrs: &[(&str, String)]) {
        let mut a = pass.emit.audit(&rec.input, &rec.subject, op, outcome, detail);
        a.idempotency_key = Some(rec.w.idempotency_key.clone());
        a.crm_record_id = Some(rec.w.record_id.clone());
        for (k, v) in attrs {
            a.attributes.insert(k.to_string(), v.clone());
        }
        pass.out.push(pass.emit.audit_record(&a));
    }

    /// A dead letter for a finding, once per (record, kind): a deletion someone meant stays
    /// deleted, and later passes only count it.
    fn dead_letter(&self, pass: &mut Pass<'_>, rec: &mut Checked<'_>, op: &str, reason: DlqReason, detail: String, crm: CrmAnswer) {
        rec.v.dead_lettered = true;
        let w = rec.w;
        if rec.known.contains(&(w.record_id.clone(), op.to_string())) {
            return;
        }
        // Details and the CRM's answer may hold a customer's number or address.
        let show = self.tenants.current().tenants.get(pass.tenant).is_some_and(|t| t.show_phone_numbers_in_audit);
        let detail = crm_common::tenants::mask_text(show, &detail);
        let crm = CrmAnswer { excerpt: crm.excerpt.map(|e| crm_common::tenants::mask_text(show, &e)), ..crm };
        let why = Why { reason, detail: detail.clone(), audit_detail: detail };
        let [dl, mut audit] = pass.emit.dead_letter_after(&rec.input, &rec.subject, op, why, crm);
        // The audit row carries the record id, which is how later passes know it is done.
        if let Ok(mut a) = codec::decode::<crm_common::events::AuditRecord>(&audit.payload) {
            a.idempotency_key = Some(w.idempotency_key.clone());
            a.crm_record_id = Some(w.record_id.clone());
            audit = pass.emit.audit_record(&a);
        }
        pass.out.push(dl);
        pass.out.push(audit);
    }
}

/// Parity as OpenTelemetry gauges (`crm_sync.reconcile.records{tenant, crm, state}`), the
/// last pass's figures per tenant and CRM.
pub mod metrics {
    use crm_common::audit_store::ParityReport;
    use opentelemetry::KeyValue;
    use std::sync::OnceLock;

    fn gauge() -> &'static opentelemetry::metrics::Gauge<i64> {
        static G: OnceLock<opentelemetry::metrics::Gauge<i64>> = OnceLock::new();
        G.get_or_init(|| {
            opentelemetry::global::meter("crm-sync")
                .i64_gauge("crm_sync.reconcile.records")
                .with_description(
                    "Records in the last reconciliation pass, by state: checked, matching, drifted, repaired, dead_lettered, deferred",
                )
                .build()
        })
    }

    pub fn record(r: &ParityReport) {
        let g = gauge();
        for (state, n) in [
            ("checked", r.checked),
            ("matching", r.matching),
            ("drifted", r.drifted),
            ("repaired", r.repaired),
            ("dead_lettered", r.dead_lettered),
            ("deferred", r.deferred),
        ] {
            g.record(
                n as i64,
                &[KeyValue::new("tenant", r.tenant_id.clone()), KeyValue::new("crm", r.crm.clone()), KeyValue::new("state", state)],
            );
        }
        g.record(
            r.missing_fields.len() as i64,
            &[KeyValue::new("tenant", r.tenant_id.clone()), KeyValue::new("crm", r.crm.clone()), KeyValue::new("state", "missing_fields")],
        );
    }
}

/// The parity report as a table, for `crm-sync reconcile`.
pub fn render_reports(reports: &[ParityReport]) -> String {
    let mut s = format!(
        "{:<16} {:<11} {:>8} {:>9} {:>8} {:>9} {:>14} {:>9}  {}\n",
        "tenant", "crm", "checked", "matching", "drifted", "repaired", "dead-lettered", "deferred", "findings / last pass"
    );
    for r in reports {
        let mut notes: Vec<String> = r.findings.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if !r.missing_fields.is_empty() {
            notes.push(format!("FIELDS MISSING IN THE CRM: {}", r.missing_fields.join(", ")));
        }
        if let Some(e) = &r.error {
            notes.push(format!("STOPPED: {e}"));
        }
        let when = chrono_like(r.finished_ms);
        s.push_str(&format!(
            "{:<16} {:<11} {:>8} {:>9} {:>8} {:>9} {:>14} {:>9}  {} ({when})\n",
            r.tenant_id,
            r.crm,
            r.checked,
            r.matching,
            r.drifted,
            r.repaired,
            r.dead_lettered,
            r.deferred,
            if notes.is_empty() { "in parity".to_string() } else { notes.join("; ") }
        ));
    }
    s
}

fn chrono_like(ms: i64) -> String {
    let t = crm_common::audit_store::ts(ms);
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The reconciler's settings (the `reconciler` service's flags; `crm-sync reconcile` takes
/// the same).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub urls: crm_connectors::CrmUrls,
    /// Directory of the field-ownership contracts (`<crm>.toml`).
    #[arg(long, env = "CONTRACTS_DIR", default_value = "contracts")]
    pub contracts_dir: std::path::PathBuf,
    /// Writes made this long ago or less are checked in each pass.
    #[arg(long, env = "RECONCILE_LOOKBACK", default_value = "24h", value_parser = humantime::parse_duration)]
    pub lookback: Duration,
    /// How often each tenant's attribution check runs (owners and companies/deals of the
    /// records written, over the longer look-back below).
    #[arg(long, env = "RECONCILE_ATTRIBUTION_EVERY", default_value = "7d", value_parser = humantime::parse_duration)]
    pub attribution_every: Duration,
    /// Writes made this long ago or less are checked by the attribution check.
    #[arg(long, env = "RECONCILE_ATTRIBUTION_LOOKBACK", default_value = "30d", value_parser = humantime::parse_duration)]
    pub attribution_lookback: Duration,
    /// Writes younger than this are left for the next pass (the audit store settles).
    #[arg(long, env = "RECONCILE_SETTLE", default_value = "2m", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Percent of each CRM limit the reconciler never spends: it is live writes' share.
    #[arg(long, env = "RECONCILE_RESERVE_PCT", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=95))]
    pub reserve_pct: u64,
    /// Per-request timeout.
    #[arg(long, env = "RECONCILE_HTTP_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_timeout: Duration,
    /// A CRM call still failing this long after its first attempt ends the pass.
    #[arg(long, env = "RECONCILE_RETRY_LIMIT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub retry_limit: Duration,
}

/// The reconciler's CRM requests on the wire at once (it is background work, paced by its
/// share of each limit).
const RECONCILER_HTTP_CONCURRENCY: usize = 16;

/// The reconciler's client for the CRMs (also `crm-sync tenants check`'s): the writers'
/// buckets and OAuth tokens in Redis, with `reserve_pct` of each limit left to live writes.
pub fn api(conn: crm_common::redis_conn::RedisConn, prefix: &str, opts: &Options) -> anyhow::Result<Api> {
    let (http, in_flight) = Api::http_client(opts.http_timeout, RECONCILER_HTTP_CONCURRENCY)?;
    Ok(Api {
        http,
        in_flight,
        pools: Default::default(),
        buckets: crm_connectors::bucket::TokenBuckets::new(conn.clone(), prefix).with_lease(opts.http_timeout),
        backoff: crm_connectors::retry::Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(30) },
        retry_limit: opts.retry_limit,
        reserve_pct: opts.reserve_pct,
        token_wait_limit: None,
        claims: None,
        tokens: crm_connectors::auth::TokenStore::from_env(conn, prefix).map_err(|e| anyhow::anyhow!(e))?,
    })
}

/// Builds the reconciler for connector `c`: its clients per tenant, Redis, the audit store,
/// a producer.
pub async fn build<C: Inspect>(connector: C, common: &crm_common::config::CommonArgs, opts: &Options) -> anyhow::Result<Reconciler<C>> {
    let connector = Arc::new(connector);
    let tenants = common.live_tenants(crm_connectors::tenant_clients::build(connector.clone()))?;
    let target = common.redis_target()?;
    let redis = target.redacted();
    let conn = crm_common::redis_conn::connect_lazy(&target).map_err(|e| anyhow::anyhow!("REDIS_URL {redis}: {e}"))?;
    let prefix = common.redis_key_prefix.clone();
    let mut store = AuditStore::connect(&common.database_url).await?;
    store.migrate().await?;
    let owner = format!("reconciler-{}-{:08x}", std::process::id(), rand::random::<u32>());
    // Only read (`state`): the reconciler never claims.
    let claims = Claims::new(
        conn.clone(),
        &prefix,
        &owner,
        crm_connectors::claims::Timing {
            lease: Duration::from_secs(60),
            request_timeout: opts.http_timeout,
            late_write_horizon: Duration::ZERO,
            clock_skew: Duration::ZERO,
        },
        Duration::from_secs(60),
    );
    Ok(Reconciler {
        connector,
        api: api(conn.clone(), &prefix, opts)?,
        // Never taken or given here (only followed): the retention is the writers'.
        person_claims: PersonClaims::new(claims.clone(), Duration::ZERO),
        claims,
        contacts: ContactCache::contacts(
            conn,
            prefix,
            crm_connectors::contacts::KeyNames::from_env(crm_connectors::contacts::Purpose::CacheKeys),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        ),
        store,
        producer: Kafka::from_args(common)?.producer()?,
        kafka: Kafka::from_args(common)?,
        topics: common.topics.clone(),
        tenants,
        settle: opts.settle,
    })
}

impl<C: Inspect> Reconciler<C> {
    /// Tenants connected to this CRM.
    pub fn tenant_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.tenants.current().stage.clients.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How often `tenant` is checked in this CRM: its `reconcile_every`, else `default`.
    pub fn cadence(&self, tenant: &str, default: Duration) -> Duration {
        self.tenants
            .current()
            .tenants
            .get(tenant)
            .and_then(|t| t.crms.get(&self.crm()))
            .and_then(|c| c.reconcile_every.as_deref())
            .and_then(|e| humantime::parse_duration(e).ok())
            .unwrap_or(default)
    }

    /// Takes this (tenant, CRM)'s turn for the next `every`, across replicas: true when this
    /// replica should run the pass now.
    pub async fn take_turn(&self, tenant: &str, every: Duration) -> redis::RedisResult<bool> {
        self.take_turn_of(tenant, every, "").await
    }

    /// The same, for the attribution check's own cadence. The first turn comes one period
    /// after a tenant is first seen (a deployment or restart must not start with a 30-day
    /// pass); `crm-sync reconcile --attribution` runs one at once.
    pub async fn take_attribution_turn(&self, tenant: &str, every: Duration) -> redis::RedisResult<bool> {
        let seen = crm_common::redis_keys::reconcile_turn(&self.contacts.prefix, tenant, self.crm().as_str()) + ":attribution-seen";
        let mut conn = self.contacts.conn.clone();
        let first: Option<String> = redis::cmd("SET").arg(&seen).arg(now_ms()).arg("NX").query_async(&mut conn).await?;
        let turn = self.take_turn_of(tenant, every, ":attribution").await?;
        Ok(turn && first.is_none())
    }

    async fn take_turn_of(&self, tenant: &str, every: Duration, which: &str) -> redis::RedisResult<bool> {
        let key = crm_common::redis_keys::reconcile_turn(&self.contacts.prefix, tenant, self.crm().as_str()) + which;
        let mut conn = self.contacts.conn.clone();
        let set: Option<String> =
            redis::cmd("SET").arg(key).arg(now_ms()).arg("NX").arg("PX").arg(every.as_millis() as u64).query_async(&mut conn).await?;
        Ok(set.is_some())
    }
}
