//! A lane's leads (issue 22): a lead is not an activity, so it skips the activities' plan
//! (contacts, owners, context, batch writes) and goes through the person rules instead
//! (`crm_connectors::person::write_lead`), one lead at a time, under two claims: the lead's
//! own key (claimed with the batch, like any write) and its person's
//! (`crm_connectors::person_claims`), so that two sources submitting the same new person at
//! once make one person. Every request carries both keys (fencing): a writer that lost
//! either meanwhile sends nothing.

use crate::process::{Settled, Shared, Step};
use crm_common::events::{ConsentState, DlqReason, WriteRequest};
use crm_common::telemetry::PersonResult;
use crm_common::tenants::{LeadOwner, LeadSettings};
use crm_connectors::api::Failure;
use crm_connectors::claims::{Claim, Recovery};
use crm_connectors::connector::TenantOf;
use crm_connectors::people::People;
use crm_connectors::person::{self, LeadOutcome, LeadWrite};
use crm_connectors::person_claims::{person_key, Known, PersonClaim};
use crm_connectors::places;
use std::time::{Duration, Instant};

/// What the audit of a written lead carries besides the detail: the person, as
/// `contact:<id>` or `lead:<id>`.
pub const PERSON_ATTRIBUTE: &str = "person";

impl<C: People> Shared<C> {
    fn lead_settings(&self, tenant_id: &str) -> LeadSettings {
        let cfg = self.tenants.current();
        cfg.tenants.get(tenant_id).and_then(|t| t.crms.get(&self.crm)).map(|c| c.leads.clone()).unwrap_or_default()
    }

    /// The owner of a new person by the tenant's rule: fixed, or the next in its round robin
    /// (counted in Redis, so replicas take turns); None: the CRM's.
    async fn new_owner(&self, tenant_id: &str, rule: &LeadOwner) -> Result<Option<String>, Failure> {
        match rule {
            LeadOwner::Crm => Ok(None),
            LeadOwner::Fixed(user) => Ok(Some(user.clone())),
            LeadOwner::RoundRobin(users) => {
                let turn = crate::process::patiently("lead owner turn", || {
                    self.person_claims.next_turn(tenant_id, self.crm.as_str(), users.len())
                })
                .await;
                Ok(users.get(turn).cloned())
            }
        }
    }

    /// Takes the person's claim, waiting while another writer holds it (no longer than the
    /// retry limit); a claim whose writer died holding it waits until that writer's create
    /// can no longer land and the CRM's search shows it.
    async fn take_person(&self, tenant_id: &str, key: &str) -> Result<Option<Known>, Failure> {
        let start = Instant::now();
        loop {
            match crate::process::patiently("person claim", || self.person_claims.take(tenant_id, key)).await {
                PersonClaim::Free { known } => return Ok(known),
                PersonClaim::Lapsed { known } => {
                    tracing::info!(
                        tenant = tenant_id,
                        "a person's claim lapsed (its writer died mid-write): waiting until its write can no longer land"
                    );
                    places::sleep(self.api.late_write_horizon() + self.connector.people_lag()).await;
                    return Ok(known);
                }
                PersonClaim::Busy { retry_after } if start.elapsed() < self.api.retry_limit => {
                    places::sleep(retry_after.min(Duration::from_secs(1))).await;
                }
                PersonClaim::Busy { .. } => {
                    return Err(Failure::new(
                        DlqReason::RetriesExhausted,
                        format!(
                            "another writer held this person's claim for longer than the retry limit ({} s)",
                            self.api.retry_limit.as_secs()
                        ),
                    ))
                }
            }
        }
    }

    /// Settles a lead's step: the claim read (a lead written at this version already is a
    /// duplicate; one whose last write may have been lost waits until it can no longer land,
    /// then searches like any other), consent, the person claim, and the write.
    pub(crate) async fn write_lead(&self, t: &TenantOf<C>, step: &mut Step, (claim, claimed_at): (Claim, Instant)) {
        let req = step.work.req.clone();
        let WriteRequest::Lead { lead, .. } = &req else { return };
        match claim {
            Claim::AlreadyDone { record_id } => {
                step.settled = Some(Settled::Duplicate { record_id });
                return;
            }
            Claim::Recover { why, settle, .. } => {
                let wait = (claimed_at + settle + self.connector.people_lag()).saturating_duration_since(Instant::now());
                tracing::info!(key = %req.idempotency_key(), why = why.as_str(), wait_ms = wait.as_millis() as u64, "recovering a lead: searching once a possibly lost write can no longer land");
                places::sleep(wait).await;
                crm_common::telemetry::crm_metrics().retry(self.crm.as_str(), why.as_str());
                // A lead's person is always looked for before a write: only a lease that
                // ran out says more (a write may have been lost, and was waited out).
                if why == Recovery::ExpiredLease {
                    step.note = Some(format!("recovered ({}): the person was searched for again", why.as_str()));
                }
            }
            Claim::Create | Claim::Update { .. } => {}
            Claim::Busy { .. } => unreachable!("write_open sets busy keys aside before planning"),
        }
        if lead.consent_to_processing == ConsentState::Denied {
            step.settled = Some(Settled::Skipped { why: "the lead's consent_to_processing is DENIED: not written".into() });
            return;
        }
        let tenant_id = req.tenant_id().to_string();
        let Some(who) = lead.email.as_deref().or(lead.phone_e164.as_deref()).filter(|w| !w.trim().is_empty()) else {
            step.settled = Some(Settled::Failed(Failure::new(
                DlqReason::Validation,
                "the lead has neither an email nor a phone: there is no telling which person it is",
            )));
            return;
        };
        let settings = self.lead_settings(&tenant_id);
        let key = person_key(&tenant_id, self.crm.as_str(), who);
        let known = match self.take_person(&tenant_id, &key).await {
            Ok(k) => k,
            Err(f) => {
                step.settled = Some(Settled::Failed(f));
                return;
            }
        };
        // The record the claim remembers is read by id while a search may not show it yet
        // (it was written: only the index's lag matters, not the late-write horizon), and
        // always where a read costs no more than a search (Salesforce's SOQL by id is one
        // query, its search by email two); at HubSpot, once search shows the person,
        // searching spares the burst every write needs.
        let lag = self.connector.people_lag();
        let known = known.filter(|k| k.age < lag || !self.connector.reads_cost_more_than_searches()).map(|k| (k.object, k.id));
        let renewal = self.keep_leases(&tenant_id, vec![key.clone()]);
        let contract = self.connector.contract_for_tenant(&tenant_id, req.kind());
        let w = LeadWrite {
            contract,
            settings: &settings,
            crm_assigns: settings.owner == LeadOwner::Crm,
            known,
            fence: vec![req.idempotency_key().to_string(), key.clone()],
        };
        let outcome =
            person::write_lead(&*self.connector, &self.api, t, &req, &w, || self.new_owner(&tenant_id, &settings.owner), &mut step.log)
                .await;
        renewal.abort();
        let written = match &outcome {
            Ok(LeadOutcome::Written(lw)) => Some((lw.object, lw.id.clone())),
            _ => None,
        };
        // A create whose outcome is unknown keeps the person's lease: it runs out, and the
        // next writer of this person waits until the create can no longer land.
        if !matches!(&outcome, Err(f) if f.maybe_applied) {
            crate::process::patiently("person claim", || self.person_claims.give(&tenant_id, &key, written.as_ref())).await;
        }
        let result = match &outcome {
            Ok(LeadOutcome::Written(lw)) if lw.created => Some(PersonResult::Created),
            Ok(LeadOutcome::Written(_)) => Some(PersonResult::Updated),
            Ok(LeadOutcome::Ambiguous(_)) => Some(PersonResult::Ambiguous),
            Err(_) => None,
        };
        if let Some(r) = result {
            crm_common::telemetry::crm_metrics().person(self.crm.as_str(), r);
        }
        step.settled = Some(match outcome {
            Ok(LeadOutcome::Written(lw)) => {
                let note = lw.describe();
                step.note = Some(match step.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
                step.person = Some(format!("{}:{}", lw.object.as_str(), lw.id));
                Settled::Written { record_id: lw.id, created: lw.created }
            }
            Ok(LeadOutcome::Ambiguous(r)) => Settled::Failed(Failure::new(DlqReason::AmbiguousMatch, r.describe())),
            Err(f) => Settled::Failed(f),
        });
    }
}
