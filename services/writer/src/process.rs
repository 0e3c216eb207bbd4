//! What a lane does with a batch of one tenant's writes (DESIGN §4–§7), of every kind: claim
//! each key, recover expired claims by a lookup, match contacts (a call's by phone, an
//! email's or meeting's participants by address), write through the connector (batched,
//! one kind per call), record DONE, and audit every CRM call; permanent failures go to the
//! DLQ with their reason and release the claim so a replay can try again.

use crate::owners::{self, Owner};
use crm_common::emit::{CrmAnswer, Emitter, Subject, Why};
use crm_common::events::{ActivityKind, AuditOutcome, Crm, DlqReason, WriteRequest};
use crm_common::kafka::{InMessage, OutRecord, Ticket, RECREATE};
use crm_common::live_tenants::LiveTenants;
use crm_common::tenants::NoContact;
use crm_connectors::api::{Api, Exchange, Failure, RequestClass};
use crm_connectors::claims::{Claim, Claims, Recovery};
use crm_connectors::connector::{Item, ItemResult, Lookups, TenantOf};
use crm_connectors::contacts::ContactCache;
use crm_connectors::context::{self, ContactContext};
use crm_connectors::contract::WriteKind;
use crm_connectors::people::People;
use crm_connectors::places;
use crm_connectors::tenant_clients::Clients;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub struct Work {
    pub input: InMessage,
    pub req: WriteRequest,
    pub ticket: Ticket,
}

/// A finished input: what to produce before its offset may be committed.
pub struct Done {
    pub ticket: Ticket,
    pub outputs: Vec<OutRecord>,
    pub outcome: &'static str,
    /// The kind of activity written (None: the input said no kind it could be read as).
    pub activity: Option<crm_common::events::ActivityKind>,
}

pub struct Shared<C: People> {
    pub connector: Arc<C>,
    /// The kinds this writer writes (`Connector::kinds`, decided at start).
    pub kinds: Vec<ActivityKind>,
    pub api: Api,
    pub claims: Claims,
    pub contacts: ContactCache,
    /// Actors' CRM users by email ([`ContactCache::owners`]).
    pub owners: ContactCache,
    /// Contacts' companies and open deals ([`ContactCache::context`]).
    pub context: ContactCache,
    /// The tenants file as this writer follows it, with a client per tenant connected to
    /// its CRM.
    pub tenants: LiveTenants<Clients<C>>,
    /// TENANT_WAIT: how long a write for a tenant this writer has no client for waits for
    /// the tenants file to give it one (the deduper reloaded first).
    pub tenant_wait: Duration,
    pub emit: Emitter,
    pub crm: Crm,
    /// Where every lane batch's `finish` pipeline goes: lanes finishing together share a
    /// round trip (its scripts: the claims' DONE and the buckets' settle).
    pub finishing: crm_common::redis_group::GroupCommit,
    /// Leads' second claims, one per person (`crate::leads`).
    pub person_claims: crm_connectors::person_claims::PersonClaims,
}

/// Retries a Redis operation until it succeeds: losing or double-writing is worse than
/// waiting, and a lane waiting on Redis holds back only its own tenant.
pub(crate) async fn patiently<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::error!(error = %e, "Redis failed during {what}; retrying");
                places::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The steps written: (idempotency key, version, record id), for DONE.
fn written(steps: &[Step]) -> Vec<(&str, i64, &str)> {
    steps
        .iter()
        .filter_map(|s| match &s.settled {
            Some(Settled::Written { record_id, .. }) => Some((s.work.req.idempotency_key(), s.work.req.version(), record_id.as_str())),
            _ => None,
        })
        .collect()
}

/// The record the reconciler found gone and asked to be created again (the RECREATE header).
fn recreating(w: &Work) -> Option<&str> {
    w.input.header(RECREATE).and_then(|v| std::str::from_utf8(v).ok()).filter(|v| !v.is_empty())
}

/// One item on its way through the batch.
pub(crate) struct Step {
    pub(crate) work: Work,
    pub(crate) log: Vec<Exchange>,
    item: Option<Item>,
    /// Set when the item is settled before the write.
    pub(crate) settled: Option<Settled>,
    pub(crate) note: Option<String>,
    /// How the record's owner was decided, where the write sets one.
    owner: Option<Owner>,
    /// What the audit says about the record's company and deal, where it is not the plain
    /// answer (several open deals, a failed lookup).
    context_note: Option<String>,
    /// A lead's person, `contact:<id>` or `lead:<id>` (`leads::PERSON_ATTRIBUTE`).
    pub(crate) person: Option<String>,
}

/// Whom a create is logged against, and how that was decided.
#[derive(Debug, Clone, PartialEq)]
enum Contact {
    /// A contact with the customer's number exists.
    Found(String),
    /// None has the number; the tenant logs such calls without a contact.
    Unassociated,
    /// None had the number; the tenant's policy created this one.
    Created(String),
}

impl Contact {
    fn id(&self) -> Option<String> {
        match self {
            Contact::Found(id) | Contact::Created(id) => Some(id.clone()),
            Contact::Unassociated => None,
        }
    }

    /// What the write's audit says about its contact.
    fn note(&self) -> Option<String> {
        match self {
            Contact::Found(_) => None,
            Contact::Unassociated => Some("no contact has the customer's number: logged without a contact".into()),
            Contact::Created(id) => Some(format!("no contact had the customer's number: created contact {id}")),
        }
    }

    /// The same customer's next call in the batch: a contact created for the first call is
    /// simply the contact of the rest.
    fn for_the_next_call(self) -> Contact {
        match self {
            Contact::Created(id) => Contact::Found(id),
            other => other,
        }
    }
}

/// The batch's calls' numbers: matched to contacts in this batch, read from the contact cache
/// (a number not here was not cached), and learned from the CRM (to be cached).
#[derive(Default)]
struct CallContacts {
    matched: HashMap<String, Contact>,
    cached: HashMap<String, Option<String>>,
    fresh: Vec<(String, Option<String>)>,
}

/// What a batch learned from the CRM, to be cached at once (`Shared::finish`): matches by
/// number or address, owners by email, contexts (`CachedContext` as JSON) by number or
/// address.
#[derive(Default)]
struct Learned {
    contacts: Vec<(String, Option<String>)>,
    owners: Vec<(String, Option<String>)>,
    context: Vec<(String, Option<String>)>,
}

/// What `Shared::read_round` read: each key's claim (None: its answer could not be read), and
/// the cache's entries for the contacts and owners the round's writes may need (by what was
/// matched: Some(Some(id)) known, Some(None) known to have none, None not cached).
#[derive(Default)]
struct RoundRead {
    claims: Vec<Option<Claim>>,
    contacts: HashMap<String, Option<Option<String>>>,
    owners: HashMap<String, Option<Option<String>>>,
    /// The context cache's entries (`CachedContext` as JSON) under the same numbers and
    /// addresses as `contacts`: only those it holds.
    context: HashMap<String, Option<String>>,
}

/// A contact's company and deals as the context cache holds them: under each number or
/// address that matched the contact, so that a batch reads them with its claims, before it
/// knows its contacts' ids; an entry counts only for the contact it names (a number can come
/// to match another contact).
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedContext {
    contact: String,
    #[serde(flatten)]
    context: ContactContext,
}

/// The batch's participant addresses matched to contacts (address → contact id, or None
/// when no contact has it), and the search failure that left some unmatched.
#[derive(Default)]
struct Addresses {
    known: HashMap<String, Option<String>>,
    failed: Option<Failure>,
    /// Matches learned from the CRM, to be cached.
    fresh: Vec<(String, Option<String>)>,
}

impl Addresses {
    /// The contacts these participants match, in their order, each once; Err when the
    /// search that would have matched one of them failed.
    fn contacts_of(&self, participants: &[String]) -> Result<Vec<String>, Failure> {
        let mut ids: Vec<String> = vec![];
        for addr in participants {
            match self.known.get(addr) {
                Some(Some(id)) if !ids.contains(id) => ids.push(id.clone()),
                Some(_) => {}
                None => {
                    return Err(self.failed.clone().unwrap_or_else(|| {
                        Failure::new(DlqReason::RetriesExhausted, format!("participant {addr} was not matched (a writer bug)"))
                    }))
                }
            }
        }
        Ok(ids)
    }
}

pub(crate) enum Settled {
    Duplicate {
        record_id: String,
    },
    Superseded {
        by_version: i64,
    },
    Failed(Failure),
    Written {
        record_id: String,
        created: bool,
    },
    /// Not written by design (the CRM has nowhere to put it): audited, not dead-lettered.
    Skipped {
        why: String,
    },
}

fn settled(r: ItemResult) -> Settled {
    match r {
        ItemResult::Written { record_id, created } => Settled::Written { record_id, created },
        ItemResult::Failed(f) => Settled::Failed(f),
        ItemResult::Skipped { why } => Settled::Skipped { why },
    }
}

/// Several records failed together for one reason that may belong to one of them (a
/// validation error or a missing contact), rather than each for its own.
fn whole_call_rejected(results: &[ItemResult]) -> bool {
    let mut failures = results.iter().map(|r| match r {
        ItemResult::Failed(f) if matches!(f.reason, DlqReason::Validation | DlqReason::ContactDeleted) => Some(&f.detail),
        _ => None,
    });
    let Some(Some(first)) = failures.next() else { return false };
    results.len() > 1 && failures.all(|d| d == Some(first))
}

impl<C: People> Shared<C> {
    fn subject<'a>(&self, r: &'a WriteRequest) -> Subject<'a> {
        Subject {
            tenant_id: r.tenant_id(),
            call_id: Some(r.source_id()),
            crm: Some(self.crm),
            version: Some(r.version()),
            kind: Some(r.kind()),
        }
    }

    /// Text for the audit and DLQ topics: phone numbers masked unless the tenant shows
    /// them, email addresses always (a dead letter's payload keeps both, for replay).
    fn masked(&self, tenant: &str, text: &str) -> String {
        let show = self.tenants.current().tenants.get(tenant).is_some_and(|t| t.show_phone_numbers_in_audit);
        crm_common::tenants::mask_text(show, text)
    }

    /// One audit record per CRM call.
    fn audit_exchange(&self, w: &Work, ex: &Exchange, record_id: Option<&str>) -> OutRecord {
        let mut a = self.emit.audit(&w.input, &self.subject(&w.req), &ex.endpoint, ex.audit_outcome(), ex.audit_detail());
        a.idempotency_key = Some(w.req.idempotency_key().to_string());
        a.attempt = ex.attempt as i32;
        a.crm_status = ex.status.map(i32::from);
        a.crm_response_excerpt = Some(self.masked(w.req.tenant_id(), &ex.excerpt));
        a.latency_ms = Some(ex.latency_ms);
        a.occurred_at = ex.at_ms;
        a.crm_record_id = record_id.map(str::to_string);
        if !ex.rate_headers.is_empty() {
            a.attributes.insert("rate_limit".into(), ex.rate_headers.clone());
        }
        if !ex.sent.is_empty() {
            a.attributes.insert("sent".into(), self.masked(w.req.tenant_id(), &ex.sent));
        }
        self.emit.audit_record(&a)
    }

    /// Claims the step's key. Busy (another writer holds a live lease) is answered, not
    /// waited for here: a batch waits for a key only while it holds none (`write_claimed`). A
    /// request the reconciler re-sent because its record is gone (the RECREATE header names
    /// it) creates again while the claim still names that record.
    async fn claim(&self, w: &Work) -> (Claim, std::time::Instant) {
        let req = &w.req;
        let mut reclaimed = false;
        loop {
            let c = patiently("claim", || self.claims.claim(req.tenant_id(), req.idempotency_key(), req.version(), req.era_ms())).await;
            match c {
                Claim::AlreadyDone { record_id } if !reclaimed && recreating(w) == Some(record_id.as_str()) => {
                    reclaimed = true;
                    patiently("reclaim", || self.claims.reclaim(req.tenant_id(), req.idempotency_key(), &record_id)).await;
                }
                other => return (other, std::time::Instant::now()),
            }
        }
    }

    /// What a round of a batch reads from Redis before it plans, in one round trip: the claims
    /// of these steps' keys (one step per key), and the cache's entries for every contact
    /// (calls' numbers, emails' and meetings' participants) and owner (actors' emails) their
    /// writes may need. The caches are read for every step claimed, though a step found
    /// already written needs none of them: a key more in an MGET costs little, a round trip
    /// more per batch much (most batches of a cold tenant hold one record). What an earlier
    /// round of the batch learned from the CRM is not cached yet (`process` caches it with
    /// DONE): it overrides what is read.
    async fn read_round(&self, tenant_id: &str, steps: &[Step], which: &[usize], learned: &Learned) -> RoundRead {
        let crm = self.crm.as_str();
        let keys: Vec<(&str, i64, i64)> = which
            .iter()
            .map(|&i| {
                let r = &steps[i].work.req;
                (r.idempotency_key(), r.version(), r.era_ms())
            })
            .collect();
        let mut contacts: Vec<String> = vec![];
        let mut owners: Vec<String> = vec![];
        let cfg = self.tenants.current();
        let conn = cfg.tenants.get(tenant_id).and_then(|t| t.crms.get(&self.crm));
        for &i in which {
            let req = &steps[i].work.req;
            let wanted = match req {
                WriteRequest::Call(call) => std::slice::from_ref(&call.call.customer_e164),
                _ => req.participants(),
            };
            for m in wanted {
                if !contacts.contains(m) {
                    contacts.push(m.clone());
                }
            }
            let actor = req.actor();
            if conn.is_some_and(|c| owners::mapped(c, &actor).is_none()) {
                if let Some(e) = owners::email_of(&actor) {
                    if !owners.contains(&e) {
                        owners.push(e);
                    }
                }
            }
        }
        let mut p = redis::pipe();
        if !keys.is_empty() {
            self.claims.add_claim_many(&mut p, tenant_id, &keys);
        }
        if !contacts.is_empty() {
            self.contacts.add_get_many(&mut p, tenant_id, crm, &contacts);
        }
        if !owners.is_empty() {
            self.owners.add_get_many(&mut p, tenant_id, crm, &owners);
        }
        if !contacts.is_empty() {
            self.context.add_get_many(&mut p, tenant_id, crm, &contacts);
        }
        let mut read = RoundRead::default();
        if p.is_empty() {
            return read;
        }
        let answers: Vec<redis::Value> = patiently("claim", || {
            let p = &p;
            async move { crm_common::redis_conn::query_with_script(self.claims.conn(), p, self.claims.claim_script()).await }
        })
        .await;
        let mut answers = answers.into_iter();
        // A malformed answer (a Redis that is not one) reads as an error for every claim and
        // nothing cached: the claims are asked again one by one.
        let mut next = |wanted: bool| if wanted { answers.next() } else { None };
        let claimed = next(!keys.is_empty()).map(|a| self.claims.claims_from(a));
        let contact_hits = next(!contacts.is_empty()).map(ContactCache::hits_from).and_then(Result::ok).unwrap_or_default();
        let owner_hits = next(!owners.is_empty()).map(ContactCache::hits_from).and_then(Result::ok).unwrap_or_default();
        let context_hits = next(!contacts.is_empty()).map(ContactCache::hits_from).and_then(Result::ok).unwrap_or_default();
        read.claims = match claimed {
            Some(Ok(c)) if c.len() == keys.len() => c.into_iter().map(Some).collect(),
            _ => vec![None; keys.len()],
        };
        read.context = contacts.iter().zip(context_hits).filter_map(|(m, hit)| hit.map(|json| (m.clone(), json))).collect();
        read.contacts = contacts.into_iter().zip(contact_hits).collect();
        read.owners = owners.into_iter().zip(owner_hits).collect();
        for (m, id) in &learned.contacts {
            read.contacts.insert(m.clone(), Some(id.clone()));
        }
        for (e, id) in &learned.owners {
            read.owners.insert(e.clone(), Some(id.clone()));
        }
        read
    }

    /// The claims `read_round` read, with the few that need more (a record the reconciler
    /// asked to create again, an answer that could not be read) carried on one by one as
    /// `claim` does. A key another writer is writing now stays Busy.
    async fn claims_followed_up(&self, steps: &[Step], which: &[usize], first: Vec<Option<Claim>>) -> Vec<(Claim, std::time::Instant)> {
        let at = std::time::Instant::now();
        futures::future::join_all(which.iter().zip(first).map(|(&i, c)| async move {
            let w = &steps[i].work;
            match c {
                None => self.claim(w).await,
                Some(Claim::AlreadyDone { record_id }) if recreating(w) == Some(record_id.as_str()) => self.claim(w).await,
                Some(other) => (other, at),
            }
        }))
        .await
    }

    /// Turns a claim into an item to write, or settles the step. `calls` holds the numbers
    /// this batch has matched already (a number is searched, or created, once).
    async fn plan(
        &self,
        t: &TenantOf<C>,
        step: &mut Step,
        (claim, claimed_at): (Claim, std::time::Instant),
        calls: &mut CallContacts,
        addresses: &Addresses,
    ) {
        let req = step.work.req.clone();
        let record_id = match claim {
            Claim::AlreadyDone { record_id } => {
                step.settled = Some(Settled::Duplicate { record_id });
                return;
            }
            Claim::Update { record_id } => Some(record_id),
            Claim::Create => None,
            Claim::Recover { record_id, since_ms, why, settle } => {
                // The last write under this key may have reached the CRM, or may still be
                // landing: wait until it can no longer land, then ask the CRM first.
                let until = claimed_at + settle + self.connector.read_back_lag(req.kind());
                let wait = until.saturating_duration_since(std::time::Instant::now());
                tracing::info!(key = %req.idempotency_key(), why = why.as_str(), wait_ms = wait.as_millis() as u64, "recovering: looking the key up once a possibly lost write can no longer land");
                places::sleep(wait).await;
                crm_common::telemetry::crm_metrics().retry(self.crm.as_str(), why.as_str());
                match self.connector.lookup(&self.api, t, &req, since_ms, &mut step.log).await {
                    Ok(Some(found)) => {
                        step.note = Some(format!("recovered ({}): the CRM already holds record {found} for this key", why.as_str()));
                        Some(found)
                    }
                    Ok(None) => {
                        if why == Recovery::Forgotten {
                            step.note = Some("looked up first (the claim store may have forgotten this activity): not in the CRM".into());
                        }
                        record_id
                    }
                    Err(mut f) => {
                        // A lookup that failed or was cut short says nothing: the write may
                        // be there. Keep the claim "maybe applied" so a replay looks again.
                        f.maybe_applied = true;
                        f.detail =
                            format!("looking the key up before writing again failed, so the earlier write may be in the CRM: {}", f.detail);
                        step.settled = Some(Settled::Failed(f));
                        return;
                    }
                }
            }
            Claim::Busy { .. } => unreachable!("write_open sets busy keys aside before planning"),
        };
        let mut item = Item { req, record_id, contact_id: None, contacts: vec![], owner_id: None, context: Default::default() };
        match &item.req {
            // A call's contact is matched once, on create (people may move it later).
            WriteRequest::Call(call) if item.record_id.is_none() => {
                let e164 = call.call.customer_e164.clone();
                if let Some(known) = calls.matched.get(&e164) {
                    step.note = known.note();
                    item.contact_id = known.id();
                } else if let Some(found) = self.contact(t, call, step, calls).await {
                    if let Some(note) = found.note() {
                        step.note = Some(note);
                    }
                    item.contact_id = found.id();
                    calls.matched.insert(e164, found.for_the_next_call());
                }
            }
            WriteRequest::Call(_) => {}
            // An email's or meeting's participants are matched on every version: a
            // meeting's new attendee is associated when it arrives.
            _ => match addresses.contacts_of(item.req.participants()) {
                Ok(ids) => {
                    item.contact_id = ids.first().cloned();
                    if ids.is_empty() && !item.req.participants().is_empty() && item.record_id.is_none() {
                        step.note = Some(format!(
                            "no contact has any participant's address ({} searched): logged without a contact",
                            item.req.participants().len()
                        ));
                    }
                    item.contacts = ids;
                }
                Err(f) => step.settled = Some(Settled::Failed(f)),
            },
        }
        if step.settled.is_none() {
            step.item = Some(item);
        }
    }

    /// Matches every participant address of these steps' emails and meetings to contacts:
    /// the cache first (read with the round's claims), then the CRM's search for the rest, as
    /// few searches as it allows (HubSpot and Salesforce: 50 addresses each), the answers to be cached
    /// (misses for a shorter time) with the rest the batch learns (`Shared::finish`). Each
    /// search's audit goes to every step that asked it. Nothing is created for an address no
    /// contact has (a person at an address is not yet a contact sales wants).
    async fn match_addresses(
        &self,
        t: &TenantOf<C>,
        steps: &mut [Step],
        asking: &[usize],
        cached: &HashMap<String, Option<Option<String>>>,
    ) -> Addresses {
        let mut out = Addresses::default();
        let mut wanted: Vec<String> = vec![];
        for &i in asking {
            for a in steps[i].work.req.participants() {
                if !wanted.contains(a) {
                    wanted.push(a.clone());
                }
            }
        }
        if wanted.is_empty() {
            return out;
        }
        let mut ask: Vec<String> = vec![];
        for addr in wanted {
            match cached.get(&addr).cloned().flatten() {
                Some(hit) => {
                    out.known.insert(addr, hit);
                }
                None => ask.push(addr),
            }
        }
        if ask.is_empty() {
            return out;
        }
        let mut log = vec![];
        match self.connector.find_contacts_by_email(&self.api, t, &ask, &mut log).await {
            Ok(found) => {
                let fresh: Vec<(String, Option<String>)> = ask.iter().map(|a| (a.clone(), found.get(a).cloned())).collect();
                out.known.extend(fresh.iter().cloned());
                out.fresh = fresh;
            }
            Err(f) => out.failed = Some(f),
        }
        for &i in asking {
            if steps[i].work.req.participants().iter().any(|a| ask.contains(a)) {
                steps[i].log.extend(log.iter().cloned());
            }
        }
        out
    }

    /// Decides the owner of every planned record whose write sets one (the contract has an
    /// `owner_id` field for it: by default creates only): the tenant's map, else the actor's
    /// email matched to a CRM user, the cache first (read with the round's claims) and then the
    /// CRM's users API for the rest (every answer cached, misses for a shorter time), else the tenant's
    /// `on_unmapped_actor`. A lookup that fails settles its steps with that failure, as a
    /// failed contact search does. Each lookup's audit goes to the steps that needed it.
    async fn resolve_owners(
        &self,
        t: &TenantOf<C>,
        tenant_id: &str,
        steps: &mut [Step],
        planned: &[usize],
        cached: &HashMap<String, Option<Option<String>>>,
        learned: &mut Learned,
    ) {
        let cfg = self.tenants.current();
        let Some(conn) = cfg.tenants.get(tenant_id).and_then(|t| t.crms.get(&self.crm)) else { return };
        let crm = self.crm.as_str();
        let needs: Vec<usize> = planned
            .iter()
            .copied()
            .filter(|&i| {
                let item = steps[i].item.as_ref().expect("planned");
                let write = if item.record_id.is_none() { WriteKind::Create } else { WriteKind::Update };
                item.contract(&*self.connector).writes_owner(write)
            })
            .collect();
        let mut wanted: Vec<String> = vec![];
        for &i in &needs {
            let actor = steps[i].work.req.actor();
            if owners::mapped(conn, &actor).is_none() {
                if let Some(e) = owners::email_of(&actor) {
                    if !wanted.contains(&e) {
                        wanted.push(e);
                    }
                }
            }
        }
        let mut by_email: HashMap<String, Option<String>> = HashMap::new();
        let mut ask: Vec<String> = vec![];
        // Read with the round's claims (`read_round`); an address it did not read (none
        // should be missing) is read now.
        let unread: Vec<String> = wanted.iter().filter(|e| !cached.contains_key(*e)).cloned().collect();
        let late = patiently("owner cache", || self.owners.get_many(tenant_id, crm, &unread)).await;
        let late: HashMap<String, Option<Option<String>>> = unread.into_iter().zip(late).collect();
        for e in wanted {
            match cached.get(&e).or_else(|| late.get(&e)).cloned().flatten() {
                Some(hit) => {
                    by_email.insert(e, hit);
                }
                None => ask.push(e),
            }
        }
        let mut failed: Option<Failure> = None;
        let mut log = vec![];
        if !ask.is_empty() {
            match self.connector.find_owners_by_email(&self.api, t, &ask, &mut log).await {
                Ok(found) => {
                    // Every user the answer named is cached (a CRM that lists its users
                    // answers for more than was asked), and each address asked but not
                    // found as a miss.
                    let mut fresh: Vec<(String, Option<String>)> = found.iter().map(|(e, id)| (e.clone(), Some(id.clone()))).collect();
                    fresh.extend(ask.iter().filter(|e| !found.contains_key(*e)).map(|e| (e.clone(), None)));
                    learned.owners.extend(fresh.iter().cloned());
                    by_email.extend(fresh);
                }
                Err(f) => failed = Some(f),
            }
        }
        for &i in &needs {
            let actor = steps[i].work.req.actor();
            let asked = owners::email_of(&actor).is_some_and(|e| ask.contains(&e)) && owners::mapped(conn, &actor).is_none();
            if asked {
                steps[i].log.extend(log.iter().cloned());
                match &failed {
                    // The users cannot be read, and will not be by retrying (a missing scope):
                    // the actor is unmapped, and the tenant's choice holds.
                    Some(f) if matches!(f.reason, DlqReason::PermissionDenied | DlqReason::Validation) => {
                        match owners::users_unreadable(conn, crm, &actor, &f.detail) {
                            Ok(owner) => {
                                if let Some(item) = steps[i].item.as_mut() {
                                    item.owner_id = owner.id().map(str::to_string);
                                }
                                steps[i].owner = Some(owner);
                            }
                            Err(f) => steps[i].settled = Some(Settled::Failed(f)),
                        }
                        continue;
                    }
                    // Still failing after the retry limit: visible, and a replay tries again.
                    Some(f) => {
                        steps[i].settled = Some(Settled::Failed(Failure {
                            detail: format!("looking up the actor's {crm} user failed: {}", f.detail),
                            maybe_applied: false,
                            ..f.clone()
                        }));
                        continue;
                    }
                    None => {}
                }
            }
            match owners::decide(conn, crm, &actor, &by_email) {
                Ok(owner) => {
                    if let Some(item) = steps[i].item.as_mut() {
                        item.owner_id = owner.id().map(str::to_string);
                    }
                    steps[i].owner = Some(owner);
                }
                Err(f) => steps[i].settled = Some(Settled::Failed(f)),
            }
        }
    }

    /// The company and deal each planned create is associated with besides its contacts:
    /// its first contact's context (cached under the numbers and addresses that matched the
    /// contact, `WRITER_CONTEXT_TTL`, and read with the round's claims; the rest read from the
    /// CRM for the batch at once) chosen by the tenant's `deal_rule`. A lookup that
    /// fails leaves the records to be written with their contacts alone, and their audit
    /// says so: context enriches a record, it never holds one back.
    async fn resolve_context(
        &self,
        t: &TenantOf<C>,
        tenant_id: &str,
        steps: &mut [Step],
        planned: &[usize],
        read: &RoundRead,
        learned: &mut Learned,
    ) {
        let cfg = self.tenants.current();
        let Some(conn) = cfg.tenants.get(tenant_id).and_then(|t| t.crms.get(&self.crm)) else { return };
        let needs: Vec<usize> = planned
            .iter()
            .copied()
            .filter(|&i| steps[i].item.as_ref().is_some_and(|it| it.record_id.is_none() && it.contact_id.is_some()))
            .collect();
        if needs.is_empty() {
            return;
        }
        // Who each number or address is now: as read with the round, or learned since.
        let mut matched: HashMap<&str, &str> = HashMap::new();
        for (m, hit) in &read.contacts {
            if let Some(Some(id)) = hit {
                matched.insert(m, id);
            }
        }
        for (m, id) in &learned.contacts {
            match id {
                Some(id) => matched.insert(m, id),
                None => matched.remove(m.as_str()),
            };
        }
        // The cache's entries, read with the round's claims; what an earlier round of the
        // batch learned is not cached until the batch's end.
        let mut entries: HashMap<String, Option<String>> = read.context.clone();
        entries.extend(learned.context.iter().cloned());
        // Per contact wanted: the context, when an entry of a number or address that matches it
        // holds it, and the numbers or addresses to cache it under.
        let mut wanted: Vec<(String, Vec<String>)> = vec![];
        let mut known: HashMap<String, ContactContext> = HashMap::new();
        for &i in &needs {
            let contact = steps[i].item.as_ref().and_then(|it| it.contact_id.clone()).expect("filtered");
            let req = &steps[i].work.req;
            let candidates = match req {
                WriteRequest::Call(call) => std::slice::from_ref(&call.call.customer_e164),
                _ => req.participants(),
            };
            let theirs: Vec<String> = candidates.iter().filter(|m| matched.get(m.as_str()) == Some(&contact.as_str())).cloned().collect();
            let hit = theirs.iter().find_map(|m| {
                let json = entries.get(m)?.as_deref()?;
                serde_json::from_str::<CachedContext>(json).ok().filter(|c| c.contact == contact)
            });
            if let Some(hit) = hit {
                known.insert(contact, hit.context);
                continue;
            }
            match wanted.iter_mut().find(|(c, _)| *c == contact) {
                Some((_, under)) => under.extend(theirs.into_iter().filter(|m| !under.contains(m)).collect::<Vec<_>>()),
                None => wanted.push((contact, theirs)),
            }
        }
        let ask: Vec<String> = wanted.iter().map(|(c, _)| c.clone()).filter(|c| !known.contains_key(c)).collect();
        let mut log = vec![];
        let mut failed: Option<Failure> = None;
        if !ask.is_empty() {
            match self.connector.find_context(&self.api, t, &ask, &mut log).await {
                Ok(found) => {
                    // A contact the CRM gave no context for has none (a lead, say): cached
                    // as empty like the rest, under each number or address that matched it.
                    for (c, under) in &wanted {
                        let context = found.get(c).cloned().unwrap_or_default();
                        let json = serde_json::to_string(&CachedContext { contact: c.clone(), context: context.clone() }).ok();
                        learned.context.extend(under.iter().map(|m| (m.clone(), json.clone())));
                        known.insert(c.clone(), context);
                    }
                }
                Err(f) => {
                    tracing::warn!(tenant = tenant_id, error = %f.detail, "reading contacts' companies and deals failed: writing without them");
                    failed = Some(f);
                }
            }
        }
        for &i in &needs {
            let contact = steps[i].item.as_ref().and_then(|it| it.contact_id.clone()).expect("filtered");
            if ask.contains(&contact) {
                steps[i].log.extend(log.iter().cloned());
            }
            let Some(ctx) = known.get(&contact) else {
                if let Some(f) = &failed {
                    steps[i].context_note = Some(format!("written without company or deal: reading them failed: {}", f.detail));
                }
                continue;
            };
            let chosen = context::choose(ctx, conn.deal_rule);
            if let Some(why) = &chosen.no_deal_because {
                steps[i].context_note = Some(format!("no deal associated: {why}"));
            }
            if let Some(item) = steps[i].item.as_mut() {
                item.context = chosen;
            }
        }
    }

    /// Marks DONE every record the batch wrote and caches what it learned from the CRM
    /// (contacts, owners, companies and deals), in one pipeline (a tenant's keys share a
    /// slot) that goes with the other lanes' finishing at the same time, retried until Redis
    /// takes it: both are idempotent, as `GroupCommit` needs. The cache is written after
    /// the writes rather than before them: a later round of the same batch reads what an
    /// earlier one learned from `learned` itself (`read_round`), and a batch that dies before
    /// this point loses only cache entries.
    async fn finish(&self, tenant_id: &str, written: &[(&str, i64, &str)], learned: &Learned) {
        let crm = self.crm.as_str();
        let mut p = redis::pipe();
        self.claims.add_done_many(&mut p, tenant_id, written);
        self.contacts.add_puts(&mut p, tenant_id, crm, &learned.contacts);
        self.owners.add_puts(&mut p, tenant_id, crm, &learned.owners);
        self.context.add_puts(&mut p, tenant_id, crm, &learned.context);
        // The tokens taken ahead and not used go back, and the batch's last answers are
        // settled, in the same round trip (both may run twice: see `add_settles`).
        self.api.give_back(tenant_id);
        self.api.buckets.add_settles(&mut p, tenant_id);
        if p.is_empty() {
            return;
        }
        // Other lanes finishing now share the round trip (`GroupCommit`).
        patiently("done", || self.finishing.send(p.clone())).await;
    }

    /// The customer's contact, found or (by the tenant's policy) created; None when that
    /// failed, with the step settled as failed. The cache was read for the round at once
    /// (`read_round`); what is learned here is cached with the batch's DONE (`process`).
    async fn contact(
        &self,
        t: &TenantOf<C>,
        req: &crm_common::events::CrmWriteRequest,
        step: &mut Step,
        calls: &mut CallContacts,
    ) -> Option<Contact> {
        let e164 = &req.call.customer_e164;
        let found = match calls.cached.get(e164) {
            Some(hit) => hit.clone(),
            None => match self.connector.find_contact(&self.api, t, e164, &mut step.log).await {
                Ok(found) => {
                    calls.fresh.push((e164.clone(), found.clone()));
                    found
                }
                Err(f) => {
                    step.settled = Some(Settled::Failed(f));
                    return None;
                }
            },
        };
        if let Some(id) = found {
            return Some(Contact::Found(id));
        }
        let policy = self
            .tenants
            .current()
            .tenants
            .get(&req.tenant_id)
            .and_then(|t| t.crms.get(&self.crm))
            .map(|c| c.on_no_contact)
            .unwrap_or_default();
        match policy {
            NoContact::LogUnassociated => Some(Contact::Unassociated),
            NoContact::CreateContact => match self.create_contact_reading_back(t, e164, &mut step.log).await {
                Ok(id) => {
                    calls.fresh.push((e164.clone(), Some(id.clone())));
                    Some(Contact::Created(id))
                }
                Err(f) => {
                    step.settled = Some(Settled::Failed(f));
                    None
                }
            },
        }
    }

    /// Claims, plans and writes the open steps of one tenant's batch. A key another writer
    /// holds (a replica still working on what a rebalance moved, a zombie) is waited for only
    /// while this batch holds no lease: two writers with overlapping batches of a tenant
    /// would otherwise each renew their own keys and wait for the other's for ever (the
    /// reliability suite saw a tenant's lane stop so, until a restart). So the keys that are
    /// free are written first and marked DONE, leases that were not written run out
    /// unrenewed, and only then does the batch wait for the busy keys and claim them again.
    async fn write_claimed(&self, t: &TenantOf<C>, tenant_id: &str, steps: &mut [Step]) -> Learned {
        let mut learned = Learned::default();
        let mut open: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].settled.is_none()).collect();
        loop {
            let busy = self.write_open(t, tenant_id, steps, open, &mut learned).await;
            let Some(wait) = busy.iter().map(|(_, retry_after)| *retry_after).min() else {
                return learned;
            };
            self.finish(tenant_id, &written(steps), &learned).await;
            tracing::info!(
                tenant = tenant_id,
                keys = busy.len(),
                wait_ms = wait.as_millis() as u64,
                "another writer holds keys of this batch: the rest is written, then they are waited for holding no lease"
            );
            places::sleep(wait.min(Duration::from_secs(5))).await;
            open = busy.into_iter().map(|(i, _)| i).collect();
        }
    }

    /// `write_claimed`'s work on the steps `open`, keeping their leases alive meanwhile. A
    /// write held back by fencing goes round again: a key whose lease another writer took is
    /// claimed anew (it finds the key DONE, recovers it, or finds it busy); one that was merely
    /// in the same request is sent again. Returns the steps whose keys another writer holds,
    /// with how long its lease has to run; their leases were never ours.
    async fn write_open(
        &self,
        t: &TenantOf<C>,
        tenant_id: &str,
        steps: &mut [Step],
        mut to_claim: Vec<usize>,
        learned: &mut Learned,
    ) -> Vec<(usize, Duration)> {
        let keys: Vec<String> = to_claim.iter().map(|&i| steps[i].work.req.idempotency_key().to_string()).collect();
        let renewal = self.keep_leases(tenant_id, keys);
        let mut to_write: Vec<usize> = vec![];
        let mut busy: Vec<(usize, Duration)> = vec![];
        let mut round = 0;
        while !to_claim.is_empty() || !to_write.is_empty() {
            round += 1;
            // Claims are independent (one step per key is left): ask Redis for all of them
            // at once rather than a round trip per record, with the cache entries the writes
            // may need.
            let mut read = self.read_round(tenant_id, steps, &to_claim, learned).await;
            let claims = self.claims_followed_up(steps, &to_claim, std::mem::take(&mut read.claims)).await;
            // Keys another writer holds are set aside for `write_claimed` to wait for.
            let mut claimed = Vec::with_capacity(to_claim.len());
            let mut kept = Vec::with_capacity(to_claim.len());
            for (i, (claim, at)) in to_claim.drain(..).zip(claims) {
                match claim {
                    Claim::Busy { retry_after } => busy.push((i, retry_after)),
                    claim => {
                        claimed.push(i);
                        kept.push((claim, at));
                    }
                }
            }
            to_claim = claimed;
            let claims = kept;
            // Every address the batch's emails and meetings will write with, matched at once
            // (searches are the scarcest budget): not those already written at this version.
            let asking: Vec<usize> =
                to_claim.iter().zip(&claims).filter(|(_, (c, _))| !matches!(c, Claim::AlreadyDone { .. })).map(|(&i, _)| i).collect();
            self.expect_lookups(tenant_id, steps, &to_claim, &claims, &read);
            let writes = self.expected_writes(steps, &to_claim, &claims);
            self.api.take_ahead(&t.policy, tenant_id, &writes).await;
            let mut addresses = self.match_addresses(t, steps, &asking, &read.contacts).await;
            let mut calls = CallContacts {
                cached: read.contacts.iter().filter_map(|(m, hit)| hit.clone().map(|h| (m.clone(), h))).collect(),
                ..Default::default()
            };
            let mut again = vec![];
            for (&i, claim) in to_claim.iter().zip(claims) {
                if steps[i].work.req.kind() == ActivityKind::Lead {
                    // A lead is a person, written here, one at a time (`crate::leads`).
                    self.write_lead(t, &mut steps[i], claim).await;
                    if round < 5 && matches!(&steps[i].settled, Some(Settled::Failed(f)) if f.is_fenced()) {
                        tracing::warn!(key = %steps[i].work.req.idempotency_key(), round, "a lead's lease was lost before its write went out: claiming again");
                        steps[i].settled = None;
                        again.push(i);
                    }
                    continue;
                }
                self.plan(t, &mut steps[i], claim, &mut calls, &addresses).await;
            }
            learned.contacts.append(&mut calls.fresh);
            learned.contacts.append(&mut addresses.fresh);
            let planned: Vec<usize> = to_claim.iter().copied().filter(|&i| steps[i].item.is_some() && steps[i].settled.is_none()).collect();
            self.resolve_owners(t, tenant_id, steps, &planned, &read.owners, learned).await;
            self.resolve_context(t, tenant_id, steps, &planned, &read, learned).await;
            to_write.extend(to_claim.drain(..).filter(|&i| steps[i].item.is_some() && steps[i].settled.is_none()));
            to_claim.append(&mut again);
            to_write.sort_unstable();
            let ready = std::mem::take(&mut to_write);
            self.write_ready(t, steps, &ready).await;
            for i in ready {
                let Some(Settled::Failed(f)) = &steps[i].settled else { continue };
                if !f.is_fenced() {
                    continue;
                }
                let key = steps[i].work.req.idempotency_key();
                if f.fenced_off.iter().any(|k| k == key) {
                    tracing::warn!(key = %key, round, "lease lost before the write went out (paused, or waited too long): abandoned here; claiming again");
                    crm_common::telemetry::crm_metrics().retry(self.crm.as_str(), "lease_lost");
                    steps[i].note = Some(
                        "this writer's lease was taken over before its write went out: the write was abandoned and the key claimed again"
                            .into(),
                    );
                    steps[i].item = None;
                    steps[i].settled = None;
                    to_claim.push(i);
                } else {
                    // Not sent because a neighbour in its request lost its lease.
                    steps[i].settled = None;
                    to_write.push(i);
                }
            }
        }
        renewal.abort();
        busy
    }

    /// Tells the API what this round will ask the CRM, from what its cache read missed: the
    /// calls' numbers and participants' addresses no contact is cached for, the actors' emails
    /// no owner is, the contacts whose context is not. Their tokens are then taken together
    /// (`Api::expect`; what is not used goes back with the batch's DONE).
    fn expect_lookups(&self, tenant_id: &str, steps: &[Step], which: &[usize], claims: &[(Claim, std::time::Instant)], read: &RoundRead) {
        let mut numbers: HashSet<&str> = HashSet::new();
        let mut addresses: HashSet<&str> = HashSet::new();
        let mut contexts: HashSet<&str> = HashSet::new();
        let known_none = |m: &str| matches!(read.contacts.get(m), Some(Some(None)));
        let cached = |m: &str| matches!(read.contacts.get(m), Some(Some(_)));
        for (&i, (claim, _)) in which.iter().zip(claims) {
            let req = &steps[i].work.req;
            let wanted = match (req, claim) {
                (_, Claim::AlreadyDone { .. }) => continue,
                // A call's contact is matched on create only.
                (WriteRequest::Call(_), Claim::Update { .. }) => continue,
                (WriteRequest::Call(call), _) => {
                    let m = call.call.customer_e164.as_str();
                    if !cached(m) {
                        numbers.insert(m);
                    }
                    std::slice::from_ref(&call.call.customer_e164)
                }
                (_, _) => {
                    addresses.extend(req.participants().iter().map(String::as_str).filter(|a| !cached(a)));
                    req.participants()
                }
            };
            contexts.extend(wanted.iter().map(String::as_str).filter(|m| !known_none(m) && !read.context.contains_key(*m)));
        }
        let lookups = Lookups {
            numbers: numbers.len() as u64,
            addresses: addresses.len() as u64,
            owners: read.owners.values().filter(|hit| hit.is_none()).count() as u64,
            contexts: contexts.len() as u64,
        };
        for (class, n) in self.connector.expected_requests(&lookups) {
            self.api.expect(tenant_id, class, n);
        }
    }

    /// The write requests this round is expected to send, as `write_ready` will chunk them
    /// (by kind, `batch_max` or one per record), each with its class and keys, for
    /// `Api::take_ahead`. Not a key being recovered: it is looked up first, which may take long.
    fn expected_writes(&self, steps: &[Step], which: &[usize], claims: &[(Claim, std::time::Instant)]) -> Vec<(RequestClass, Vec<String>)> {
        let creates: HashSet<usize> = which.iter().zip(claims).filter(|(_, (c, _))| matches!(c, Claim::Create)).map(|(&i, _)| i).collect();
        // Leads are written one by one by the person rules (`crate::leads`), their requests
        // paid for as they go.
        let writing = which
            .iter()
            .zip(claims)
            .filter(|(&i, (c, _))| matches!(c, Claim::Create | Claim::Update { .. }) && steps[i].work.req.kind() != ActivityKind::Lead)
            .map(|(&i, _)| i);
        let mut out = vec![];
        for chunk in self.write_chunks(steps, writing) {
            let keyed: Vec<(String, bool)> =
                chunk.iter().map(|i| (steps[*i].work.req.idempotency_key().to_string(), creates.contains(i))).collect();
            out.extend(self.connector.write_requests(&keyed));
        }
        out
    }

    /// The steps `which` as `write_ready` sends them: one kind per call (each kind is its own
    /// object in the CRM), in read order within a kind, the CRM's batch at a time (one record
    /// per call where every record is its own call, so that each call's audit is its own).
    fn write_chunks(&self, steps: &[Step], which: impl IntoIterator<Item = usize>) -> Vec<Vec<usize>> {
        let per_call = if self.connector.one_call_per_record() { 1 } else { self.connector.batch_max().max(1) };
        let mut by_kind: Vec<(ActivityKind, Vec<usize>)> = vec![];
        for i in which {
            let kind = steps[i].work.req.kind();
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, v)) => v.push(i),
                None => by_kind.push((kind, vec![i])),
            }
        }
        by_kind.iter().flat_map(|(_, v)| v.chunks(per_call).map(<[usize]>::to_vec)).collect()
    }

    /// Renews the batch's leases every third of a lease while the batch is being written,
    /// so a live writer waiting out a throttle or a retry keeps its keys.
    pub(crate) fn keep_leases(&self, tenant_id: &str, keys: Vec<String>) -> tokio::task::JoinHandle<()> {
        let claims = self.claims.clone();
        let tenant = tenant_id.to_string();
        let every = (claims.lease() / 3).max(std::time::Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                if let Err(e) = claims.fence(&tenant, &refs).await {
                    tracing::warn!(error = %e, "could not renew leases (retried)");
                }
            }
        })
    }

    /// Writes the planned items among `ready`, in the CRM's batches, one kind per call
    /// (each kind is its own object in the CRM), in read order within a kind.
    async fn write_ready(&self, t: &TenantOf<C>, steps: &mut [Step], ready: &[usize]) {
        // A request's audit goes to every record it carried: with one call per record,
        // each chunk is that record alone.
        for chunk in self.write_chunks(steps, ready.iter().copied()) {
            let items: Vec<Item> = chunk.iter().map(|&i| steps[i].item.clone().expect("ready")).collect();
            let mut shared_log = vec![];
            let results = self.connector.write(&self.api, t, &items, &mut shared_log).await;
            if whole_call_rejected(&results) {
                // One bad record can fail a whole batch call: write them one by one so
                // only the bad one goes to the DLQ.
                for (&i, item) in chunk.iter().zip(&items) {
                    let mut log = shared_log.clone();
                    let r = self.connector.write(&self.api, t, std::slice::from_ref(item), &mut log).await;
                    steps[i].log.extend(log);
                    steps[i].settled = Some(settled(r.into_iter().next().expect("one result")));
                }
                continue;
            }
            for (&i, result) in chunk.iter().zip(results) {
                steps[i].log.extend(shared_log.iter().cloned());
                steps[i].settled = Some(settled(result));
            }
        }
    }

    /// Creates a contact for `e164`. A create whose outcome is unknown (a timeout, a 5xx) is
    /// not sent again blindly: once it can no longer land (the late-write horizon, and the
    /// lag of the index the read uses), the contact is read back by its exact number, and
    /// only a read that completed and found none lets the create go again.
    async fn create_contact_reading_back(&self, t: &TenantOf<C>, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let first = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let f = match self.connector.create_contact(&self.api, t, e164, log).await {
                Ok(id) => return Ok(id),
                Err(f) if f.maybe_applied => f,
                Err(f) => return Err(f),
            };
            places::sleep(self.api.backoff.wait(attempt).max(self.api.late_write_horizon() + self.connector.contact_read_back_lag())).await;
            match self.connector.find_created_contact(&self.api, t, e164, log).await {
                Ok(Some(id)) => return Ok(id),
                Ok(None) if first.elapsed() < self.api.retry_limit => continue,
                Ok(None) => return Err(Failure { maybe_applied: false, ..f }),
                Err(e) => {
                    return Err(Failure {
                        maybe_applied: false,
                        detail: format!("{}; reading the contact back failed: {}", f.detail, e.detail),
                        ..f
                    })
                }
            }
        }
    }

    /// Handles one lane batch (one tenant, in read order): one Done per Work, in the same order.
    pub async fn process(&self, batch: Vec<Work>) -> Vec<Done> {
        let tenant_id = batch[0].req.tenant_id().to_string();
        // Within a batch only the newest version of an activity is written; older ones are
        // done.
        let mut newest: HashMap<String, i64> = HashMap::new();
        for w in &batch {
            let v = newest.entry(w.req.idempotency_key().to_string()).or_insert(w.req.version());
            *v = (*v).max(w.req.version());
        }
        let mut seen_newest: HashMap<String, bool> = HashMap::new();
        let mut steps: Vec<Step> = batch
            .into_iter()
            .map(|work| {
                let top = newest[work.req.idempotency_key()];
                let first_top =
                    work.req.version() == top && !seen_newest.insert(work.req.idempotency_key().to_string(), true).unwrap_or(false);
                let settled = (!first_top).then_some(Settled::Superseded { by_version: top });
                Step { work, log: vec![], item: None, settled, note: None, owner: None, context_note: None, person: None }
            })
            .collect();

        let mut learned = Learned::default();
        // The deduper sent this write, so its tenants file connects the tenant to this CRM:
        // a writer that has not reloaded yet waits for its own file to say so.
        let mut cfg = self.tenants.current();
        if !cfg.stage.settled(&tenant_id) {
            cfg = self.tenants.wait_until(self.tenant_wait, |l| l.stage.settled(&tenant_id)).await;
        }
        match cfg.stage.clients.get(&tenant_id).map(|c| c.as_ref()) {
            None => {
                for s in steps.iter_mut().filter(|s| s.settled.is_none()) {
                    s.settled = Some(Settled::Failed(Failure {
                        maybe_applied: false,
                        fenced_off: vec![],
                        reason: DlqReason::TenantNotConfigured,
                        detail: cfg.stage.why_not(&tenant_id, self.crm),
                        status: None,
                        excerpt: None,
                    }));
                }
            }
            Some(Err(why)) => {
                for s in steps.iter_mut().filter(|s| s.settled.is_none()) {
                    s.settled = Some(Settled::Failed(Failure {
                        maybe_applied: false,
                        fenced_off: vec![],
                        reason: DlqReason::AuthFailed,
                        detail: why.clone(),
                        status: None,
                        excerpt: None,
                    }));
                }
            }
            Some(Ok(t)) => learned = self.write_claimed(t, &tenant_id, &mut steps).await,
        }

        // Every record written is marked DONE before any output is built, in the round trip
        // that caches what the batch learned.
        self.finish(&tenant_id, &written(&steps), &learned).await;
        let mut done = Vec::with_capacity(steps.len());
        for s in steps {
            done.push(self.settle(s).await);
        }
        done
    }

    async fn settle(&self, s: Step) -> Done {
        let w = &s.work;
        let req = &w.req;
        let mut outputs: Vec<OutRecord> = vec![];
        let record_id = match &s.settled {
            Some(Settled::Written { record_id, .. }) | Some(Settled::Duplicate { record_id }) => Some(record_id.as_str()),
            _ => None,
        };
        for ex in &s.log {
            outputs.push(self.audit_exchange(w, ex, if ex.outcome.is_ok() { record_id } else { None }));
        }
        let subject = self.subject(req);
        let linked_contact = s.item.as_ref().and_then(|i| i.contact_id.clone());
        let all_contacts = s.item.as_ref().map(|i| i.contacts.clone()).unwrap_or_default();
        let (tenant_id, key, version) = (req.tenant_id(), req.idempotency_key(), req.version());
        let outcome = match s.settled.expect("every step settles") {
            Settled::Written { record_id, created } => {
                // DONE was marked for the whole batch before settling.
                let what = if created { "created" } else { "updated" };
                let mut detail = format!("{what} {} {} record {record_id} (version {version})", self.crm.as_str(), req.kind().as_str());
                if let Some(n) = &s.note {
                    detail = format!("{detail}; {n}");
                }
                if let Some(Owner::Unmapped { why }) = &s.owner {
                    detail = format!("{detail}; no owner set, the integration's user owns it: {why}");
                }
                if let Some(n) = &s.context_note {
                    detail = format!("{detail}; {n}");
                }
                let mut a = self.emit.audit(&w.input, &subject, "write", AuditOutcome::Succeeded, self.masked(tenant_id, &detail));
                a.idempotency_key = Some(key.to_string());
                a.crm_record_id = Some(record_id);
                // The reconciler compares it with the record's contact now (merges).
                if let Some(c) = linked_contact {
                    a.attributes.insert("contact_id".into(), c);
                }
                // Every contact an email or meeting was associated with (this write added
                // the ones it did not have yet).
                if !all_contacts.is_empty() {
                    a.attributes.insert("contact_ids".into(), all_contacts.join(","));
                }
                if let Some(gone) = w.input.header(RECREATE) {
                    a.attributes.insert("recreated".into(), String::from_utf8_lossy(gone).into_owned());
                }
                // Whose record it was made (support's "why is this under the integration
                // user?"; the attribution check compares it with the owner now).
                // The company and deal it was associated with (the attribution check and
                // support's "why is it on this deal?").
                if let Some(item) = &s.item {
                    if let Some(c) = &item.context.company {
                        a.attributes.insert("company_id".into(), c.clone());
                    }
                    if let Some(d) = &item.context.deal {
                        a.attributes.insert("deal_id".into(), d.clone());
                    }
                }
                if let Some(p) = &s.person {
                    a.attributes.insert(crate::leads::PERSON_ATTRIBUTE.into(), p.clone());
                }
                if let Some(o) = &s.owner {
                    a.attributes.insert("owner_from".into(), o.from().into());
                    if let Some(id) = o.id() {
                        a.attributes.insert("owner_id".into(), id.into());
                    }
                }
                outputs.push(self.emit.audit_record(&a));
                if created {
                    "created"
                } else {
                    "updated"
                }
            }
            Settled::Duplicate { record_id } => {
                let mut a = self.emit.audit(
                    &w.input,
                    &subject,
                    "write",
                    AuditOutcome::Duplicate,
                    format!("already written as record {record_id} at this version or newer: skipped"),
                );
                a.idempotency_key = Some(key.to_string());
                a.crm_record_id = Some(record_id);
                outputs.push(self.emit.audit_record(&a));
                "duplicate"
            }
            Settled::Superseded { by_version } => {
                let mut a = self.emit.audit(
                    &w.input,
                    &subject,
                    "write",
                    AuditOutcome::Skipped,
                    format!("version {version} superseded by version {by_version} in the same batch"),
                );
                a.idempotency_key = Some(key.to_string());
                outputs.push(self.emit.audit_record(&a));
                "superseded"
            }
            Settled::Skipped { why } => {
                // Nothing was written: the claim goes, so a replay (once a contact exists)
                // writes it.
                patiently("release", || self.claims.release(tenant_id, key)).await;
                let mut a = self.emit.audit(&w.input, &subject, "write", AuditOutcome::Skipped, self.masked(tenant_id, &why));
                a.idempotency_key = Some(key.to_string());
                outputs.push(self.emit.audit_record(&a));
                "skipped"
            }
            Settled::Failed(f) => {
                // A write whose outcome is unknown keeps its claim: when the lease has run
                // out, a replay recovers by lookup instead of writing a second record.
                if !f.maybe_applied {
                    patiently("release", || self.claims.release(tenant_id, key)).await;
                }
                let mut f = f;
                if f.reason == DlqReason::Validation && matches!(s.owner, Some(Owner::ByEmail(_))) {
                    // The CRM may refuse an owner deactivated since it was cached: the
                    // replay looks the actor up again rather than send the same owner.
                    if let Some(e) = owners::email_of(&req.actor()) {
                        patiently("owner cache", || self.owners.forget(tenant_id, self.crm.as_str(), &e)).await;
                        f.detail = format!(
                            "{} (the actor's cached {} user was forgotten: a replay looks them up again)",
                            f.detail,
                            self.crm.as_str()
                        );
                    }
                }
                if f.reason == DlqReason::ContactDeleted {
                    // The cached contact is gone: a replay must match again.
                    let matched: Vec<&str> = match req {
                        WriteRequest::Call(c) => vec![c.call.customer_e164.as_str()],
                        other => other.participants().iter().map(String::as_str).collect(),
                    };
                    for m in matched {
                        patiently("contact cache", || self.contacts.forget(tenant_id, self.crm.as_str(), m)).await;
                    }
                }
                let detail = self.masked(tenant_id, &f.detail);
                let answer = CrmAnswer {
                    status: f.status.map(i32::from),
                    excerpt: f.excerpt.as_deref().map(|e| self.masked(tenant_id, e)),
                    attempt: s.log.last().map_or(1, |e| e.attempt as i32),
                };
                let [dlq, audit] = self.emit.dead_letter_after(
                    &w.input,
                    &subject,
                    "write",
                    Why { reason: f.reason, detail: detail.clone(), audit_detail: detail },
                    answer,
                );
                outputs.push(dlq);
                outputs.push(audit);
                "dead_lettered"
            }
        };
        Done { ticket: w.ticket.clone(), outputs, outcome, activity: Some(req.kind()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: DlqReason, detail: &str) -> ItemResult {
        ItemResult::Failed(Failure {
            maybe_applied: false,
            fenced_off: vec![],
            reason,
            detail: detail.into(),
            status: Some(400),
            excerpt: None,
        })
    }

    #[test]
    fn participants_map_to_their_contacts_in_order_once_each() {
        let mut a = Addresses::default();
        a.known.insert("jane@x.example".into(), Some("c1".into()));
        a.known.insert("ops@x.example".into(), Some("c2".into()));
        a.known.insert("alias@x.example".into(), Some("c1".into()));
        a.known.insert("nobody@y.example".into(), None);
        let p = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(a.contacts_of(&p(&["ops@x.example", "nobody@y.example", "jane@x.example", "alias@x.example"])).unwrap(), ["c2", "c1"]);
        assert!(a.contacts_of(&p(&["nobody@y.example"])).unwrap().is_empty(), "no contact: logged without one");
        a.failed = Some(Failure::new(DlqReason::PermissionDenied, "403 on the contact search"));
        let f = a.contacts_of(&p(&["jane@x.example", "unasked@z.example"])).unwrap_err();
        assert_eq!(f.reason, DlqReason::PermissionDenied, "the search's own failure, not a guess");
    }

    #[test]
    fn a_batch_rejected_as_a_whole_is_retried_one_by_one() {
        let whole = vec![failed(DlqReason::Validation, "400 bad value"), failed(DlqReason::Validation, "400 bad value")];
        assert!(whole_call_rejected(&whole));
        let each_own = vec![failed(DlqReason::Validation, "record 1 bad"), failed(DlqReason::Validation, "record 2 bad")];
        assert!(!whole_call_rejected(&each_own), "per-record errors are already precise");
        assert!(!whole_call_rejected(&[failed(DlqReason::Validation, "x")]), "a single record is its own answer");
        let removed = vec![failed(DlqReason::FieldRemoved, "gone"), failed(DlqReason::FieldRemoved, "gone")];
        assert!(!whole_call_rejected(&removed), "a removed field fails every record alike");
        let mixed = vec![failed(DlqReason::Validation, "x"), ItemResult::Written { record_id: "1".into(), created: true }];
        assert!(!whole_call_rejected(&mixed));
    }
}
