//! The people pass (issue 22): the people a tenant's leads were written as, read back.
//!
//! A lead's record is a person the CRM's users work with: they merge duplicates, convert
//! leads into contacts, delete spam and people who asked to be forgotten. None of that is
//! drift to undo (the lead contract fills and moves fields, it restores none), but each
//! leaves the writer's person claim (`crm_connectors::person_claims`) remembering a record
//! that is gone, and support asking where a lead went. Per person, read once a pass however
//! many leads they sent:
//! - there under the same id: matching;
//! - there under another id (HubSpot answers a merged contact's old id with the survivor),
//!   or gone while exactly one person has the lead's email (else its phone) now (Salesforce,
//!   Zoho and Pipedrive delete a merge's loser; a Salesforce lead converted is a contact):
//!   moved. The person claim follows, and each of their leads is audited REPAIRED
//!   (`reconcile.person_merged`, attribute `person` the record now), which later passes
//!   read as the lead's person;
//! - gone while several people match: `person_ambiguous`, reported; the claim forgets them,
//!   and their next lead is resolved by the tenant's `on_ambiguous_match`;
//! - gone while nobody matches: deleted. The claim forgets them, and each of their leads is
//!   dead-lettered once (CONTACT_DELETED, `reconcile.person_deleted`). Never re-created by
//!   the reconciler, whatever `on_deleted` says: deleting a person is how a CRM's users
//!   erase them. Replaying the entry writes the lead again, as a new person.
//!
//! A lead whose write is in flight is left for the next pass; one whose request is no
//! longer kept cannot be searched for by its email (`source_gone`).

use crate::{kind, request_at, Checked, Pass, Reconciler};
use crm_common::audit_store::{ParityReport, Written};
use crm_common::clock::now_ms;
use crm_common::emit::CrmAnswer;
use crm_common::events::{ActivityKind, AuditOutcome, DlqReason, NormalisedLead, WriteRequest};
use crm_connectors::api::{Exchange, Failure};
use crm_connectors::connector::{Inspect, TenantOf};
use crm_connectors::people::PersonKey;
use crm_connectors::person::{resolve, OnAmbiguous, PersonObject, Resolution};
use crm_connectors::person_claims::{parse_record, person_key, record_text};
use std::collections::{BTreeMap, BTreeSet, HashMap};

type Person = (PersonObject, String);

/// What became of one person since their lead was written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Here,
    /// Merged into, or converted to, this person.
    Moved(Person),
    /// Gone, and this many people have the lead's email (or phone) now.
    Ambiguous(usize),
    Deleted,
    /// Gone, and the lead's request (its email and phone) is no longer kept.
    Unsearchable,
}

/// The lead a write request carries.
fn lead_of(req: Option<&WriteRequest>) -> Option<&NormalisedLead> {
    match req {
        Some(WriteRequest::Lead { lead, .. }) => Some(lead),
        _ => None,
    }
}

/// What the person claim of a lead's person is keyed by: its email, else its phone.
fn claim_address(lead: &NormalisedLead) -> Option<&str> {
    lead.email.as_deref().or(lead.phone_e164.as_deref()).filter(|w| !w.trim().is_empty())
}

impl<C: Inspect> Reconciler<C> {
    /// The pass over the people `pass.tenant`'s leads to this CRM were written as.
    pub(crate) async fn run_people(&self, pass: &mut Pass<'_>, report: &mut ParityReport, client: &TenantOf<C>) -> anyhow::Result<()> {
        let crm = self.crm();
        let until = now_ms() - self.settle.as_millis() as i64;
        let written = self.store.written(pass.tenant, crm.as_str(), ActivityKind::Lead, report.window_from_ms, until).await?;
        if written.is_empty() {
            return Ok(());
        }
        let topic = self.topics.crm_writes(crm);
        let messages = self.requests(&topic, &written).await?;
        let ids: Vec<String> = written.iter().map(|w| w.call_id.clone()).collect();
        let known = self.store.reconciler_dead_letters(pass.tenant, crm.as_str(), &ids).await?;
        // Who is still there under the id written, read in batches; only the others are read
        // one by one and searched for.
        let mut wanted: BTreeMap<PersonObject, BTreeSet<String>> = BTreeMap::new();
        for w in &written {
            let (object, id) = self.person_of(w);
            wanted.entry(object).or_default().insert(id);
        }
        let mut fates: HashMap<Person, Fate> = HashMap::new();
        for (object, ids) in wanted {
            let ids: Vec<String> = ids.into_iter().collect();
            let here = self.connector.people_here(&self.api, client, object, &ids, &mut vec![]).await.map_err(|f| {
                anyhow::anyhow!("reading the {} people leads were written as: {}: {}", object.as_str(), f.reason.as_str(), f.detail)
            })?;
            fates.extend(here.into_iter().map(|id| ((object, id), Fate::Here)));
        }
        for w in &written {
            report.checked += 1;
            let (msg, req) = request_at(&messages, &topic, w, ActivityKind::Lead);
            let lead = lead_of(req.as_ref());
            let person = self.person_of(w);
            // Read once per person; a search needs a lead whose request is still kept.
            let (fate, log) = match fates.get(&person) {
                Some(f) if *f != Fate::Unsearchable || lead.is_none() => (f.clone(), vec![]),
                _ => {
                    let mut log = vec![];
                    let fate = self.fate(client, &person, lead, &mut log).await.map_err(|f| {
                        anyhow::anyhow!("reading person {}: {}: {}", record_text(Some(&person)), f.reason.as_str(), f.detail)
                    })?;
                    fates.insert(person.clone(), fate.clone());
                    (fate, log)
                }
            };
            if fate == Fate::Here {
                report.matching += 1;
                continue;
            }
            let mut rec = Checked::new(ActivityKind::Lead, w, (msg, req.as_ref()), (pass.tenant, crm), &known);
            rec.v.drifted = true;
            self.audit_exchanges(pass, &rec, &log);
            if !self.settled(pass.tenant, w).await {
                pass.note(kind::IN_FLIGHT);
                rec.v.deferred = true;
            } else {
                self.act_on(pass, &mut rec, lead, &person, fate).await;
            }
            crate::tally(report, &rec.v);
        }
        Ok(())
    }

    /// The person a lead was last known as: the writer's `person` attribute or the
    /// reconciler's since, else the write's record as the object this CRM creates people in.
    fn person_of(&self, w: &Written) -> Person {
        w.person.as_deref().and_then(parse_record).unwrap_or_else(|| (self.connector.creates_person_as(), w.record_id.clone()))
    }

    /// Reads the person by id; when gone, searches by the lead's email, then its phone.
    async fn fate(
        &self,
        client: &TenantOf<C>,
        person: &Person,
        lead: Option<&NormalisedLead>,
        log: &mut Vec<Exchange>,
    ) -> Result<Fate, Failure> {
        let (object, id) = person;
        if let Some(now) = self.connector.read_person(&self.api, client, *object, id, &[], log).await? {
            return Ok(if (now.object, now.id.as_str()) == (*object, id.as_str()) {
                Fate::Here
            } else {
                Fate::Moved((now.object, now.id))
            });
        }
        let Some(lead) = lead else { return Ok(Fate::Unsearchable) };
        // Who has the lead's address (else its number) now, by the writer's own rules
        // (`person::resolve`: contacts before leads; several of a standing are several).
        let by_email = match lead.email.as_deref() {
            Some(e) => self.connector.find_people(&self.api, client, PersonKey::Email(e), &[], log).await?,
            None => vec![],
        };
        let by_phone = match lead.phone_e164.as_deref() {
            Some(p) if by_email.is_empty() => self.connector.find_people(&self.api, client, PersonKey::Phone(p), &[], log).await?,
            _ => vec![],
        };
        Ok(match resolve(by_email, by_phone, OnAmbiguous::DeadLetter) {
            Resolution::Create => Fate::Deleted,
            Resolution::Update { person, .. } => Fate::Moved((person.object, person.id)),
            Resolution::Ambiguous { ids, .. } => Fate::Ambiguous(ids.len()),
        })
    }

    /// What a lead's person found moved, ambiguous, deleted or unsearchable comes to.
    async fn act_on(&self, pass: &mut Pass<'_>, rec: &mut Checked<'_>, lead: Option<&NormalisedLead>, from: &Person, fate: Fate) {
        let (crm, tenant) = (pass.crm.as_str(), pass.tenant);
        let was = record_text(Some(from));
        // The writer's person claim: it follows the person, or forgets them.
        let key = lead.and_then(claim_address).map(|a| person_key(tenant, crm, a));
        let follow = |to: Option<Person>| {
            let key = key.clone();
            async move {
                if let Some(key) = key {
                    if let Err(e) = self.person_claims.follow(tenant, &key, from, to.as_ref()).await {
                        tracing::warn!(error = %e, "the person claim could not follow: the writer finds them by search instead");
                    }
                }
            }
        };
        match fate {
            Fate::Here => {}
            Fate::Moved(to) => {
                pass.note(kind::PERSON_MERGED);
                follow(Some(to.clone())).await;
                let now = record_text(Some(&to));
                let detail = format!(
                    "the person lead {} was written as ({was}) is {now} in {crm} now (merged or converted): their next lead updates {now}",
                    rec.w.call_id
                );
                self.audit(pass, rec, "reconcile.person_merged", AuditOutcome::Repaired, detail, &[("person", now), ("merged_from", was)]);
                rec.v.repaired = true;
            }
            Fate::Ambiguous(n) => {
                pass.note(kind::PERSON_AMBIGUOUS);
                follow(None).await;
                let detail = format!(
                    "the person lead {} was written as ({was}) is gone from {crm}, and {n} people have its email or phone now: their next lead is matched by the tenant's on_ambiguous_match",
                    rec.w.call_id
                );
                self.audit(pass, rec, "reconcile.person_ambiguous", AuditOutcome::DriftFound, detail, &[]);
            }
            Fate::Deleted => {
                pass.note(kind::PERSON_DELETED);
                follow(None).await;
                let detail = format!(
                    "the person lead {} was written as ({was}) was deleted in {crm}, and nobody has its email or phone now: not re-created (a person deleted in the CRM stays deleted); replaying this entry writes the lead again, as a new person",
                    rec.w.call_id
                );
                self.dead_letter(pass, rec, "reconcile.person_deleted", DlqReason::ContactDeleted, detail, CrmAnswer::default());
            }
            Fate::Unsearchable => {
                pass.note(kind::SOURCE_GONE);
                let detail = format!(
                    "the person lead {} was written as ({was}) is gone from {crm}, and the lead's write request ({}/{}/{}) is no longer kept: whether they were merged or deleted cannot be told from here",
                    rec.w.call_id, rec.w.topic, rec.w.partition, rec.w.offset
                );
                self.audit(pass, rec, "reconcile.person_gone", AuditOutcome::DriftFound, detail, &[]);
                rec.v.deferred = true;
            }
        }
    }
}
