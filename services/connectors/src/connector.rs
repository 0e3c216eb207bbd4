//! What a CRM connector provides: the write path ([`Connector`]: contacts, lookups by key,
//! writes) for the writer runtime, and the inspect side ([`Inspect`]: reads, restores,
//! schema) for the reconciler. Each connector is a folder with the
//! same parts: `mod.rs` (client: requests and the parsing of answers), `limits.rs` (rate-limit
//! policy and header parsing), `errors.rs` (classification), and the contract file in
//! `contracts/<crm>.toml` for field mapping; its tests run against crm-sim.

use crate::api::{Api, Exchange, Failure, Policy, Reply, Request, RequestClass};
use crate::client::TenantClient;
use crate::contract::{Contract, Contracts};
use crm_common::events::{ActivityKind, Crm, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// One write, planned by the runtime after its claim.
#[derive(Debug, Clone)]
pub struct Item {
    pub req: WriteRequest,
    /// Some: update this record; None: create.
    pub record_id: Option<String>,
    /// The CRM contact to associate: a call's (creates only), or an email's or meeting's
    /// first matched participant.
    pub contact_id: Option<String>,
    /// Every contact an email's or meeting's participants matched, `contact_id` first (on
    /// creates and updates: a meeting's new attendee is associated when it changes); empty
    /// for a call.
    pub contacts: Vec<String>,
    /// The CRM user who owns the record: the actor's, resolved by the writer (the tenant's
    /// `owners` map, else the actor's email through the CRM's users). None: the CRM's
    /// default (the integration's user). Written only where the contract has a field with
    /// `source = "owner_id"` for this write.
    pub owner_id: Option<String>,
    /// The company and deal a create associates the record with (the first contact's,
    /// by the tenant's `deal_rule`); none where no contact was matched.
    pub context: crate::context::Context,
}

impl Item {
    /// The contract for this item's kind. The writer only hands a connector the kinds it
    /// has contracts for ([`Connector::kinds`]).
    pub fn contract<'c, C: Connector + ?Sized>(&self, c: &'c C) -> &'c Contract {
        c.contract_for_tenant(self.req.tenant_id(), self.req.kind())
    }

    /// The fields this write of the item sets, as its contract says: the activity's values
    /// and what the writer resolved for it (its owner).
    pub fn values<C: Connector + ?Sized>(&self, c: &C, kind: crate::contract::WriteKind) -> Map<String, Value> {
        self.contract(c).values_with(&self.req, kind, &crate::contract::Resolved { owner_id: self.owner_id.as_deref() })
    }

    /// The contacts the record is linked to: an email's or meeting's matched participants,
    /// else a call's contact.
    pub fn linked_contacts(&self) -> &[String] {
        if self.contacts.is_empty() {
            self.contact_id.as_slice()
        } else {
            &self.contacts
        }
    }
}

/// Of the contacts `wanted`, those a record does not link yet (`linked`, read from the
/// CRM): an update only ever adds to a record's people, and sends nothing when none is new.
pub fn not_yet_linked<T: PartialEq + Clone>(linked: &[T], wanted: &[T]) -> Vec<T> {
    let mut out: Vec<T> = vec![];
    for w in wanted {
        if !linked.contains(w) && !out.contains(w) {
            out.push(w.clone());
        }
    }
    out
}

#[derive(Debug, Clone)]
pub enum ItemResult {
    Written {
        record_id: String,
        created: bool,
    },
    Failed(Failure),
    /// Not written, by design, and not a failure: the CRM has nowhere to put this activity
    /// (Zoho keeps an email only on a record, and no participant is a contact). Audited as
    /// SKIPPED with `why`; the claim is let go, so a replay once a contact exists writes it.
    Skipped {
        why: String,
    },
}

/// What the CRM holds now for a record crm-sync wrote (the reconciler's read).
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    /// The record's contract fields as the CRM returns them, and the contact it hangs under
    /// now (a merge moves it).
    Present { fields: Map<String, Value>, contact_id: Option<String> },
    /// In the CRM's recycle bin or archive: someone deleted it there.
    Deleted,
    /// Not there at all: purged, or it never landed.
    Absent,
}

/// Every record asked about and not found by a read is `missing` (absent, or taken as
/// deleted where the CRM cannot tell): a read answers for every id.
pub fn missing_are(mut found: HashMap<String, Live>, wanted: &[Wanted], missing: Live) -> HashMap<String, Live> {
    for w in wanted {
        found.entry(w.record_id.clone()).or_insert_with(|| missing.clone());
    }
    found
}

/// Whose a record is and what it relates to, as the CRM shows it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub owner: Option<String>,
    /// Ids of the companies (accounts, organisations) and deals it is associated with.
    pub related: BTreeSet<String>,
}

/// A record the reconciler asks about: its id, and the contact the writer linked it to.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub record_id: String,
    pub linked_contact: Option<String>,
}

/// What a lane batch must look up in the CRM (its cache read missed these), for
/// `Connector::expected_requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookups {
    /// Calls' numbers to match to contacts.
    pub numbers: u64,
    /// Emails' and meetings' participant addresses to match to contacts.
    pub addresses: u64,
    /// Actors' emails to match to owners.
    pub owners: u64,
    /// Contacts whose company and open deals to read.
    pub contexts: u64,
}

/// A connector's client for one tenant.
pub type TenantOf<C> = TenantClient<<C as Connector>::Policy>;

pub trait Connector: Send + Sync + 'static {
    /// The CRM's rate-limit policy for one tenant (its limits, header parsing, classification).
    type Policy: Policy + 'static;

    /// The connector for a deployment: its field contracts (one per kind it writes), where
    /// the CRM's API and token endpoint live for tenants that name none, and the HTTP
    /// timeout of one request.
    fn build(contracts: Contracts, urls: &crate::CrmUrls, http_timeout: std::time::Duration) -> Self
    where
        Self: Sized;

    fn crm(&self) -> Crm;
    /// The kinds of activity this connector knows how to write (calls, and the kinds whose
    /// objects, associations and contact matching it implements).
    fn supported_kinds(&self) -> &'static [ActivityKind] {
        &[ActivityKind::Call]
    }
    /// The deployment's contracts for this CRM, one per kind.
    fn contracts(&self) -> &Contracts;
    /// The contract for `kind`: its contract when the deployment has one and this connector
    /// supports the kind (calls always have theirs).
    fn contract_for(&self, kind: ActivityKind) -> Option<&Contract> {
        if self.supported_kinds().contains(&kind) {
            self.contracts().get(kind)
        } else {
            None
        }
    }
    /// The kinds this writer writes: supported and given a contract. A tenant whose
    /// connection asks for another kind (`activities` in TENANTS_CONFIG) stops the writer at
    /// start.
    fn kinds(&self) -> Vec<ActivityKind> {
        self.supported_kinds().iter().copied().filter(|&k| self.contract_for(k).is_some()).collect()
    }
    /// Contacts whose email address is one of `emails` (canonical, lower case), address →
    /// contact id, through the CRM's own search (case-insensitive, with its index lag).
    /// Only kinds other than calls use it, and only connectors that support them.
    fn find_contacts_by_email(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, String>, Failure>> + Send {
        let _ = (api, t, emails, log);
        async move {
            Err(Failure::new(
                crm_common::events::DlqReason::Validation,
                format!("writer --crm {} does not match contacts by email", self.crm().as_str()),
            ))
        }
    }
    /// The CRM's active users whose email is one of `emails` (canonical, lower case),
    /// address → the id the CRM takes as an activity's owner (HubSpot's owner id, not its
    /// user id). It may answer for more addresses than asked where the CRM can only list
    /// its users (Zoho): the writer caches them all. An address several active users share
    /// (Salesforce's User.Email is not unique) is left out: there is no telling whose.
    fn find_owners_by_email(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, String>, Failure>> + Send {
        let _ = (api, t, emails, log);
        async move {
            Err(Failure::new(
                crm_common::events::DlqReason::Validation,
                format!("writer --crm {} does not look CRM users up by email", self.crm().as_str()),
            ))
        }
    }
    /// Each of these contacts' company and open deals (contact id → context), as few
    /// requests as the CRM allows. A contact the CRM cannot give context for (a Salesforce
    /// Lead: an activity with a Lead may name no account or opportunity) is left out. A CRM
    /// whose connector reads no context answers nothing: activities are written with their
    /// contacts alone.
    fn find_context(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, crate::context::ContactContext>, Failure>> + Send {
        let _ = (api, t, contacts, log);
        async move { Ok(HashMap::new()) }
    }
    /// How many writes a lane plans together (claims, contact lookups, the batch call).
    fn batch_max(&self) -> usize;
    /// The requests a lane's lookups are expected to take, by class (`Api::expect`: their
    /// tokens are taken together). An estimate: too high holds tokens for a batch's length,
    /// too low takes once more. By default a search per number and per address, a read per
    /// owner and two per contact's context.
    fn expected_requests(&self, l: &Lookups) -> Vec<(RequestClass, u64)> {
        vec![(RequestClass::Search, l.numbers + l.addresses), (RequestClass::Read, l.owners + 2 * l.contexts)]
    }
    /// Whether every record is its own API call (no batch endpoint). Then `write` is given
    /// one record at a time, so each call's audit holds its own requests and no other's.
    fn one_call_per_record(&self) -> bool {
        false
    }
    /// Builds the tenant's client. Err: why it cannot write for this tenant (a missing
    /// secret, say), which dead-letters its writes as AUTH_FAILED.
    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<TenantOf<Self>, String>;
    /// How far behind writes the index that `lookup` and read-backs search for `kind` lags
    /// (HubSpot's search; Zoho's `email_available`); zero where they read the records
    /// themselves (Zoho COQL, Pipedrive's list, Salesforce by external id).
    fn read_back_lag(&self, kind: ActivityKind) -> std::time::Duration {
        let _ = kind;
        std::time::Duration::ZERO
    }
    /// Contacts whose number, normalised to E.164, equals `e164`.
    fn find_contact(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        e164: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<String>, Failure>> + Send;

    /// The contact a create may have made with this number, read where writes show at once
    /// where the CRM has such a read (Zoho COQL, Salesforce SOQL on the exact value we
    /// wrote), else through search after `contact_read_back_lag`.
    fn find_created_contact(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        e164: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<String>, Failure>> + Send {
        self.find_contact(api, t, e164, log)
    }

    /// How far behind writes `find_created_contact` reads (a search index's lag).
    fn contact_read_back_lag(&self) -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }

    fn create_contact(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        e164: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<String, Failure>> + Send;

    /// The record holding `req`'s key, if the CRM has one (recovery after an expired lease).
    /// `since_ms`: when the write that may have landed was first claimed (it cannot have
    /// reached the CRM before), for CRMs that can only list what changed since a time.
    fn lookup(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        req: &WriteRequest,
        since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<String>, Failure>> + Send;

    /// The call contract.
    fn contract(&self) -> &Contract {
        self.contracts().call()
    }

    /// The contract for `kind` where this writer writes it, else the call contract.
    fn contract_of(&self, kind: ActivityKind) -> &Contract {
        self.contract_for(kind).unwrap_or_else(|| self.contract())
    }

    /// [`Connector::contract_of`] as `tenant` has it, with its `fields` overrides (which
    /// never change the object or the key field, only rules).
    fn contract_for_tenant(&self, tenant: &str, kind: ActivityKind) -> &Contract {
        match self.contract_for(kind) {
            Some(_) => self.contracts().for_tenant(tenant, kind).unwrap_or_else(|| self.contract()),
            None => self.contract(),
        }
    }

    /// Creates these records (none has a record id), as few API calls as the CRM allows;
    /// one result per item, in order.
    fn create_records(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        items: &[&Item],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Vec<ItemResult>> + Send;

    /// Updates these records (each has its record id); one result per item, in order.
    fn update_records(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        items: &[&Item],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Vec<ItemResult>> + Send;

    /// The requests `write` sends for one chunk (first attempts: read-backs and retries
    /// aside), each with the idempotency keys it carries, for `Api::take_ahead`: `(key, is a
    /// create)` per record in; one create request for the records without a record yet, one
    /// update request for the rest, split as `write` splits them.
    fn write_requests(&self, chunk: &[(String, bool)]) -> Vec<(RequestClass, Vec<String>)> {
        let keys = |creates: bool| -> Vec<String> { chunk.iter().filter(|(_, c)| *c == creates).map(|(k, _)| k.clone()).collect() };
        [(RequestClass::Create, keys(true)), (RequestClass::Update, keys(false))].into_iter().filter(|(_, k)| !k.is_empty()).collect()
    }

    /// Writes `items`: the creates together, then the updates together; one result per
    /// item, in the order given.
    fn write(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        items: &[Item],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Vec<ItemResult>> + Send {
        async move {
            let (creates, updates): (Vec<&Item>, Vec<&Item>) = items.iter().partition(|i| i.record_id.is_none());
            let created = if creates.is_empty() { vec![] } else { self.create_records(api, t, &creates, log).await };
            let updated = if updates.is_empty() { vec![] } else { self.update_records(api, t, &updates, log).await };
            merge_in_order(items, created, updated)
        }
    }
}

/// The results of the creates and of the updates, put back in the order of `items`. A side
/// that answered for fewer items than it was given (a connector's bug) fails the rest, never
/// panics.
fn merge_in_order(items: &[Item], created: Vec<ItemResult>, updated: Vec<ItemResult>) -> Vec<ItemResult> {
    let (mut created, mut updated) = (created.into_iter(), updated.into_iter());
    items
        .iter()
        .map(|i| {
            let next = if i.record_id.is_none() { created.next() } else { updated.next() };
            next.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("the connector gave no result for this record", None)))
        })
        .collect()
}

/// The inspect side of a connector, for the reconciler: what the CRM holds now for records
/// crm-sync wrote, putting owned fields back, and whether the contract's fields still exist.
/// The writer never needs it; the write path is [`Connector`]. Leads' people are read back
/// through [`People`](crate::people::People).
pub trait Inspect: crate::people::People {
    /// The kinds the reconciler can check here: those written, and read back by id (Zoho's
    /// emails hang on a contact's related list and cannot be).
    /// Leads are not among them: a lead's person is the CRM's record of someone who may
    /// have existed long before crm-sync, merged or converted since; the reconciler's
    /// people pass reads them back (`reconciler::people`), it never restores their fields.
    fn inspects(&self) -> Vec<ActivityKind> {
        self.kinds().into_iter().filter(|k| *k != ActivityKind::Lead).collect()
    }

    /// Reads the records of `kind` in `wanted` (as many per call as the CRM allows), for
    /// the reconciler. Every id asked about has an answer.
    fn read(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        wanted: &[Wanted],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, Live>, Failure>> + Send;

    /// The request that puts `fields` (owned, restorable) back on record `record_id` of
    /// `kind`, nothing else.
    fn restore_request(&self, kind: ActivityKind, record_id: &str, fields: &Map<String, Value>) -> Request;

    /// What a restore's successful answer says: Ok, unless the CRM reports a per-record
    /// failure inside it (Zoho).
    fn restored(&self, reply: &Reply) -> Result<(), Failure> {
        let _ = reply;
        Ok(())
    }

    /// Puts `fields` back on record `record_id`: the request built, sent, its answer read.
    fn restore(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        record_id: &str,
        fields: &Map<String, Value>,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send {
        async move {
            let reply = t.call(api, &self.restore_request(kind, record_id, fields), log).await?;
            self.restored(&reply)
        }
    }

    /// Whose each record is and what it relates to now (the attribution check): its owner
    /// and the ids of the companies and deals it is associated with, as the CRM shows them.
    /// Every id asked about that exists has an answer.
    fn attribution(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        record_ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, Attribution>, Failure>> + Send;

    /// What a create with this company and deal relates the record to, as the CRM shows it
    /// afterwards: both where the CRM associates each (HubSpot, Pipedrive), the deal else the
    /// company where a record has one "what" (Salesforce, Zoho).
    fn written_relations(&self, company: Option<&str>, deal: Option<&str>) -> BTreeSet<String> {
        company.into_iter().chain(deal).map(str::to_string).collect()
    }

    /// Associates record `record_id` of `kind`, written without a contact, with
    /// `contacts` (matched since: a late match), the first as its primary where the CRM has
    /// one. Only ever adds.
    fn associate(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        record_id: &str,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;

    /// Creates `kind`'s key field (the contract's `key_field`) on its object through the
    /// CRM's API, as the CRM's README part says the field must be, and reads it back
    /// (`crm-sync tenants provision`). The default: this CRM's fields are not made by an app
    /// here, and [`Provisioned::ByHand`] says how to make it.
    fn provision_key_field(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Provisioned, Failure>> + Send {
        let _ = (api, t, log);
        let c = self.contract_of(kind);
        std::future::ready(Ok(Provisioned::ByHand(format!(
            "crm-sync does not create {}'s fields through its API yet: create {} on {} by hand ({})",
            self.crm().as_str(),
            c.key_field,
            c.object,
            key_field_spec(self.crm())
        ))))
    }

    /// Creates the custom text field `name` on the CRM's `object` people (`crm-sync tenants
    /// provision` of a lead contract's fields); by hand where the CRM's API does not here.
    fn provision_person_field(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        object: crate::person::PersonObject,
        name: &str,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Provisioned, Failure>> + Send {
        let _ = (api, t, log);
        std::future::ready(Ok(Provisioned::ByHand(format!(
            "crm-sync does not create {}'s fields through its API: create {name} on its {} people by hand",
            self.crm().as_str(),
            object.as_str()
        ))))
    }

    /// Whether these credentials may create and change `kind`'s records, as the CRM says
    /// before anything is written: a read that tells (HubSpot's token scopes, Salesforce's
    /// describe). The default: the CRM does not say.
    fn write_access(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<WriteAccess, Failure>> + Send {
        let _ = (api, t, kind, log);
        std::future::ready(Ok(WriteAccess::NotShown(format!(
            "{} does not say what credentials may write before they write: a missing permission shows at the first write, as PERMISSION_DENIED in the DLQ",
            self.crm().as_str()
        ))))
    }

    /// What [`Inspect::provision_key_field`] would send, for `--dry-run`: method, path and
    /// body; None where nothing is sent.
    fn provision_request(&self, kind: ActivityKind) -> Option<Request> {
        let _ = kind;
        None
    }

    /// What the CRM's schema says of `kind`'s object, from one read: its fields (the check
    /// that a custom field was not removed), what it says of the key field, and what the
    /// credentials may write where the same read says. None for a CRM whose object has no
    /// custom fields to check.
    fn schema(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<Option<Schema>, Failure>> + Send;
}

/// One read of a kind's object's schema ([`Inspect::schema`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub fields: BTreeSet<String>,
    /// What the schema says of the key field; None where the object has none of that name.
    pub key_field: Option<KeyFieldCheck>,
    /// What the credentials may write, where this read says it (Salesforce's describe);
    /// else [`Inspect::write_access`] asks.
    pub write: Option<WriteAccess>,
}

/// Whether credentials may create and change a kind's records, as the CRM says without a
/// write (`crm-sync tenants check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAccess {
    /// They may: what the CRM said.
    Granted(String),
    /// They may not: what is missing.
    Denied(String),
    /// The CRM does not say before a write: what it did say, and how a missing permission
    /// would show.
    NotShown(String),
}

/// What a CRM's schema says of a key field ([`Schema::key_field`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFieldCheck {
    /// The CRM refuses a second record with one key.
    Enforced,
    /// It does not: the claims store alone keeps writes single (what that means here).
    NotEnforced(String),
    /// The writer cannot use it as it is (why, and what to change).
    Unusable(String),
}

/// What `provision_key_field` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// Made; `unique` is whether the CRM says it refuses a second record with one value
    /// (where it does not, the claims store alone keeps writes single).
    Created { unique: bool, detail: String },
    /// Not made by an app here: what to do by hand.
    ByHand(String),
}

/// The key field as each CRM must have it (README, per-CRM parts).
pub fn key_field_spec(crm: Crm) -> &'static str {
    match crm {
        Crm::Hubspot => {
            "a single-line text property with unique values (hasUniqueValue: true), which HubSpot lets only new properties have"
        }
        Crm::Salesforce => "a Text(255) field marked External ID and Unique, on Activity, with field-level access for the integration user",
        Crm::Zoho => "a single-line text field; mark it \"Do not allow duplicate values\" where the module allows it",
        Crm::Pipedrive | Crm::Unknown => "a text field",
    }
}

/// Creates through a CRM that enforces no key of ours (Zoho, Pipedrive), where sending
/// again after a timeout or a 5xx could make a second record.
pub trait ReadBeforeResend: Connector {
    /// Creates some items; those whose outcome is unknown fail with `maybe_applied`.
    fn send(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        batch: &[&Item],
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Vec<ItemResult>> + Send;
    /// Which of these requests' keys (all of one kind) the CRM holds now (key → record
    /// id); `sent_at_ms` is when the first attempt went out.
    fn held(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        kind: ActivityKind,
        reqs: &[&WriteRequest],
        sent_at_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> impl std::future::Future<Output = Result<HashMap<String, String>, Failure>> + Send;
}

/// Sends creates through `c`; before any whose outcome is unknown goes again, waits until
/// it can no longer land (the late-write horizon), asks the CRM which keys it now holds,
/// and sends only the rest, with backoff, until the retry limit. Past it they are
/// dead-lettered still marked `maybe_applied`, so the claim stays and a replay looks the
/// record up first. A read-back that fails or is cut short keeps them `maybe_applied` too:
/// only a read that completed and found nothing lets a create go out again. Every send is
/// fenced (the request carries the items' keys): a writer that lost a lease meanwhile
/// sends nothing for that key.
pub async fn create_reading_before_resending<C: ReadBeforeResend>(
    c: &C,
    api: &Api,
    t: &TenantOf<C>,
    items: &[&Item],
    log: &mut Vec<Exchange>,
) -> Vec<ItemResult> {
    let first = Instant::now();
    let sent_at = crm_common::clock::now_ms();
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let mut pending: Vec<usize> = (0..items.len()).collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        let batch: Vec<&Item> = pending.iter().map(|&i| items[i]).collect();
        let mut out = c.send(api, t, &batch, log).await.into_iter();
        let mut unknown = vec![];
        for &i in &pending {
            // An answer short of a record sent: that record's outcome is unknown.
            let r = out.next().unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no answer for this record", None)));
            match r {
                ItemResult::Failed(f) if f.maybe_applied => unknown.push((i, f)),
                r => results[i] = Some(r),
            }
        }
        pending.clear();
        if unknown.is_empty() {
            break;
        }
        attempt += 1;
        // Give a write that is still on its way time to land before asking: a CRM can apply
        // a create after its client gave up, up to the late-write horizon, and a lagging
        // index shows it later still.
        let kinds: BTreeSet<ActivityKind> = unknown.iter().map(|(i, _)| items[*i].req.kind()).collect();
        let lag = kinds.iter().map(|&k| c.read_back_lag(k)).max().unwrap_or_default();
        tokio::time::sleep(api.backoff.wait(attempt).max(api.late_write_horizon() + lag)).await;
        // Keys are read back per kind (each kind is its own object in the CRM).
        let mut found: Result<HashMap<String, String>, Failure> = Ok(HashMap::new());
        for kind in kinds {
            let asked: Vec<&WriteRequest> = unknown.iter().map(|(i, _)| &items[*i].req).filter(|r| r.kind() == kind).collect();
            match (c.held(api, t, kind, &asked, sent_at, log).await, &mut found) {
                (Ok(more), Ok(all)) => all.extend(more),
                (Err(e), Ok(_)) => found = Err(e),
                (_, Err(_)) => {}
            }
        }
        match found {
            Ok(found) => {
                for (i, mut f) in unknown {
                    if let Some(id) = found.get(items[i].req.idempotency_key()) {
                        results[i] = Some(ItemResult::Written { record_id: id.clone(), created: true });
                    } else if first.elapsed() >= api.retry_limit {
                        f.detail = format!("{} (still failing after {attempt} attempts over {} s)", f.detail, first.elapsed().as_secs());
                        results[i] = Some(ItemResult::Failed(f));
                    } else {
                        pending.push(i);
                    }
                }
            }
            Err(mut why) => {
                // Cannot tell whether they were written: keep them recoverable.
                why.maybe_applied = true;
                for (i, _) in unknown {
                    results[i] = Some(ItemResult::Failed(why.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no answer for this record", None))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(record_id: Option<&str>) -> Item {
        let req = crm_common::events::CrmWriteRequest {
            tenant_id: "acme".into(),
            call_id: "c1".into(),
            crm: Crm::Hubspot,
            idempotency_key: "acme:c1:hubspot".into(),
            version: 1,
            call: crm_common::events::fixtures::normalised_call("acme", "c1", 1),
            requested_at: 0,
            trace_id: "t".into(),
        };
        Item {
            req: req.into(),
            record_id: record_id.map(str::to_string),
            contact_id: None,
            contacts: vec![],
            owner_id: None,
            context: Default::default(),
        }
    }

    fn written(id: &str) -> ItemResult {
        ItemResult::Written { record_id: id.into(), created: false }
    }

    #[test]
    fn results_go_back_in_the_order_given_and_a_missing_one_fails() {
        let items = [item(Some("u1")), item(None), item(Some("u2")), item(None)];
        let out = merge_in_order(&items, vec![written("c1")], vec![written("u1"), written("u2")]);
        let ids: Vec<String> = out
            .iter()
            .map(|r| match r {
                ItemResult::Written { record_id, .. } => record_id.clone(),
                ItemResult::Failed(f) => format!("failed: {:?}", f.reason),
                ItemResult::Skipped { why } => format!("skipped: {why}"),
            })
            .collect();
        assert_eq!(ids, ["u1", "c1", "u2", "failed: RetriesExhausted"]);
    }
}
