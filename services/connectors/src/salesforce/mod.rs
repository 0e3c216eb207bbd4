//! The Salesforce connector (CRM-APIS §2): calls as Tasks (`TaskSubtype = 'Call'`) carrying
//! the idempotency key in an external-ID field (the contract's `key_field`, e.g.
//! `CrmSyncKey__c`). Creates are sObject Collections upserts by that key (≤200 per call), so
//! a create that meets a record a dead writer already made updates it instead of making a
//! second one; updates go by record id (a Task someone deleted is not re-created). Every
//! answer's `Sforce-Limit-Info` sets the org's allowance in the bucket; an exhausted
//! allowance is 403 REQUEST_LIMIT_EXCEEDED. Contacts and leads are found by phone with SOSL
//! (`IN PHONE FIELDS` ignores formatting), then compared in E.164.
//!
//! Meetings are Events (`contracts/salesforce.meeting.toml`) and emails are Tasks of
//! subtype Email (`contracts/salesforce.email.toml`), upserted by the same key; their
//! participants are matched to Contacts by SOQL on `Email` (case-insensitive, no index lag)
//! and related through `EventWhoIds` / `TaskWhoIds` (shared activities, up to 50 contacts; a
//! lead cannot be related with other people, so leads are not matched by address). Emails
//! are Tasks rather than EmailMessage: a Task upserts by our key like calls do, relates up to
//! 50 contacts, and needs no Enhanced Email; EmailMessage (headers kept, but read-only once
//! sent and no external-id upsert) is the richer object, not used yet.

pub mod errors;
pub mod limits;
mod people;
pub mod wire;

use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::auth::AuthStyle;
use crate::client::{endpoints, TenantClient};
use crate::connector::{
    missing_are, not_yet_linked, Attribution, Connector, Inspect, Item, ItemResult, KeyFieldCheck, Live, Provisioned, Schema, TenantOf,
    Wanted, WriteAccess,
};
use crate::context::{ContactContext, OpenDeal};
use crate::contract::{Contracts, WriteKind};
use crm_common::events::{ActivityKind, Crm, DlqReason, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use wire::{Created, Describe, QueryPage, SaveResult, SearchAnswer};

const COLLECTION_MAX: usize = 200;
/// The permission set `tenants provision` grants the integration user its fields through.
const PERMISSION_SET: &str = "crm_sync";
/// The REST API version pinned (Spring '26).
pub const API_VERSION: &str = "v66.0";

pub struct Salesforce {
    /// Every kind's contract (meetings where the deployment has theirs).
    pub contracts: Contracts,
    /// The org's instance URL when a tenant names none (it should: instance URLs differ
    /// per org).
    pub default_base_url: String,
}

type Tenant = TenantClient<limits::SalesforcePolicy>;

/// The most people an Event or Task relates through EventWhoIds / TaskWhoIds
/// (CRM-APIS-ACTIVITIES §1.2, §2.2).
const EVENT_WHO_MAX: usize = 50;

/// The JunctionIdList relating a kind's record to its people: Events' for meetings, Tasks'
/// for emails; a call's Task has one WhoId.
fn people_field(kind: ActivityKind) -> Option<&'static str> {
    match kind {
        ActivityKind::Meeting => Some("EventWhoIds"),
        ActivityKind::Email => Some("TaskWhoIds"),
        _ => None,
    }
}
/// Addresses per SOQL `Email IN (...)`.
const EMAILS_PER_QUERY: usize = 50;

/// A SOQL string literal.
/// A Salesforce date-time ("2026-01-05T10:30:00.000+0000") as epoch ms.
fn sf_time_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|d| d.timestamp_millis())
}

fn soql_text(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Phone fields SOSL searches and we compare, per object.
const CONTACT_PHONES: &[&str] = &["Phone", "MobilePhone", "HomePhone", "OtherPhone"];
const LEAD_PHONES: &[&str] = &["Phone", "MobilePhone"];

/// What a collection said about one record: its save result, or why there is none.
type Saved = Result<SaveResult, Failure>;

impl Salesforce {
    fn data(&self, path: &str) -> String {
        format!("/services/data/{API_VERSION}{path}")
    }

    /// The sObject holding this kind (Task for calls, Event for meetings).
    fn object_of(&self, kind: ActivityKind) -> &str {
        &self.contract_of(kind).object
    }

    fn key_field_of(&self, kind: ActivityKind) -> &str {
        &self.contract_of(kind).key_field
    }

    /// The people a record of `kind` relates now (`EventWhoIds`, `TaskWhoIds`), to add to
    /// rather than replace: setting the list on an update replaces the whole set.
    async fn related_people(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_id: &str,
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<String>, Failure> {
        let field = people_field(kind).unwrap_or("EventWhoIds");
        let path = self.data(&format!("/sobjects/{}/{}?fields=Id,{field}", self.object_of(kind), urlencode(record_id)));
        let row: wire::Row = t.fetch(api, &Request::get(path, RequestClass::Read), log).await?;
        Ok(match row.fields.get(field) {
            Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => vec![],
        })
    }

    /// One save result of a collection, for one item.
    fn saved(&self, r: Saved, status: u16, record_id: Option<&str>) -> ItemResult {
        let r = match r {
            Ok(r) => r,
            Err(f) => return ItemResult::Failed(f),
        };
        if r.success {
            let id = r.id.as_deref().or(record_id).unwrap_or_default().to_string();
            // An upsert that found the key already there updated a record a lost write made.
            let created = r.created.unwrap_or(record_id.is_none());
            return ItemResult::Written { record_id: id, created };
        }
        let excerpt = serde_json::to_string(&r).ok();
        let e = r.errors.into_iter().next().unwrap_or_default();
        let mut reason = errors::reason_of(&e).unwrap_or(DlqReason::Validation);
        let mut detail = format!("{}: {}", e.code, e.message);
        if record_id.is_some() && matches!(e.code.as_str(), "ENTITY_IS_DELETED" | "NOT_FOUND") && !e.names_field("WhoId") {
            // Someone deleted the record in Salesforce: their decision stands.
            reason = DlqReason::Validation;
            detail = format!("the record was deleted in Salesforce; not re-created ({detail})");
        }
        if e.code == "UNABLE_TO_LOCK_ROW" {
            detail = format!("{detail} (row lock)");
        }
        ItemResult::Failed(Failure { status: Some(status), excerpt, ..Failure::new(reason, detail) })
    }

    /// Runs a collection call: each item's save result (in input order, one per record), or
    /// the failure of the whole call as every item's.
    async fn collection(&self, api: &Api, t: &Tenant, req: Request, n: usize, log: &mut Vec<Exchange>) -> (u16, Vec<Saved>) {
        let answer = match t.call(api, &req, log).await {
            Ok(reply) => reply.parse::<Vec<SaveResult>>().map(|r| (reply.status, r)),
            Err(f) => Err(f),
        };
        match answer {
            Ok((status, results)) => {
                let mut results = results.into_iter();
                let missing =
                    || Failure::unknown_outcome("Salesforce's collection answer had no save result for this record", Some(status));
                (status, (0..n).map(|_| results.next().ok_or_else(missing)).collect())
            }
            Err(f) => (f.status.unwrap_or(0), (0..n).map(|_| Err(f.clone())).collect()),
        }
    }

    /// Every row a SOQL query answers, following `nextRecordsUrl`.
    async fn soql(&self, api: &Api, t: &Tenant, q: &str, log: &mut Vec<Exchange>) -> Result<Vec<wire::Row>, Failure> {
        let mut rows = vec![];
        let mut path = self.data(&format!("/query/?q={}", urlencode(q)));
        loop {
            let page: QueryPage = t.fetch(api, &Request::get(path, RequestClass::Read).audited_as(json!({ "q": q })), log).await?;
            let next = page.next().map(str::to_string);
            rows.extend(page.records);
            match next {
                Some(n) => path = n,
                None => return Ok(rows),
            }
        }
    }

    /// One record of a collection. `people`: an Event's or email Task's people to set (on
    /// create the matched contacts; on update those and the ones it relates already), or None.
    fn record(&self, item: &Item, kind: WriteKind, people: Option<&[String]>) -> Value {
        let contract = item.contract(self);
        let mut fields = item.values(self, kind);
        fields.insert("attributes".into(), json!({"type": contract.object}));
        match kind {
            WriteKind::Create => {
                if let Some(c) = &item.contact_id {
                    fields.insert("WhoId".into(), json!(c));
                }
                // One "what": the chosen opportunity, else the contact's account (the
                // opportunity brings its account as the activity's AccountId).
                if let Some(what) = item.context.deal.as_ref().or(item.context.company.as_ref()) {
                    fields.insert("WhatId".into(), json!(what));
                }
            }
            WriteKind::Update => {
                fields.insert("Id".into(), json!(item.record_id));
            }
        }
        if let (Some(p), Some(field)) = (people.filter(|p| !p.is_empty()), people_field(item.req.kind())) {
            fields.insert(field.into(), json!(p.iter().take(EVENT_WHO_MAX).collect::<Vec<_>>()));
        }
        Value::Object(fields)
    }

    /// Upserts by key: each item's save result.
    async fn upsert(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> (u16, Vec<Saved>) {
        let records: Vec<Value> =
            items.iter().map(|i| self.record(i, WriteKind::Create, people_field(i.req.kind()).map(|_| i.contacts.as_slice()))).collect();
        // The writer hands over one kind per call.
        let kind = items.first().map_or(ActivityKind::Call, |i| i.req.kind());
        let path = self.data(&format!("/composite/sobjects/{}/{}", self.object_of(kind), self.key_field_of(kind)));
        let req = Request::new(Method::PATCH, path, RequestClass::Upsert)
            .body(json!({"allOrNone": false, "records": records}))
            .fenced(items.iter().map(|i| i.req.idempotency_key()));
        self.collection(api, t, req, items.len(), log).await
    }

    async fn update(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        // A meeting's people are read first; one whose read fails (its Event deleted, say)
        // fails alone and is left out of the collection.
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut records: Vec<Value> = vec![];
        let mut sent: Vec<usize> = vec![];
        for (n, i) in items.iter().enumerate() {
            let people = match (i.req.kind(), &i.record_id) {
                (kind, Some(id)) if people_field(kind).is_some() && !i.contacts.is_empty() => {
                    match self.related_people(api, t, kind, id, log).await {
                        Ok(mut now) => {
                            let new = not_yet_linked(&now, &i.contacts);
                            // Nothing new: leave the relations as they are.
                            (!new.is_empty()).then(|| {
                                now.extend(new);
                                now
                            })
                        }
                        Err(mut f) => {
                            if f.status == Some(404) {
                                f.reason = DlqReason::Validation;
                                f.detail = format!("the record was deleted in Salesforce; not re-created ({})", f.detail);
                            }
                            results[n] = Some(ItemResult::Failed(f));
                            continue;
                        }
                    }
                }
                _ => None,
            };
            records.push(self.record(i, WriteKind::Update, people.as_deref()));
            sent.push(n);
        }
        if !sent.is_empty() {
            let req = Request::new(Method::PATCH, self.data("/composite/sobjects"), RequestClass::Upsert)
                .body(json!({"allOrNone": false, "records": records}))
                .fenced(sent.iter().map(|&n| items[n].req.idempotency_key()));
            let (status, saved) = self.collection(api, t, req, sent.len(), log).await;
            for (r, &n) in saved.into_iter().zip(&sent) {
                results[n] = Some(self.saved(r, status, items[n].record_id.as_deref()));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no save result for this record", None))))
            .collect()
    }

    /// An upsert that landed on a record a lost write made, and was refused for a
    /// create-only field in its body (TaskSubtype): the record is found by key and updated
    /// like any other.
    async fn update_found_by_key(&self, api: &Api, t: &Tenant, item: &Item, refused: ItemResult, log: &mut Vec<Exchange>) -> ItemResult {
        match self.lookup(api, t, &item.req, 0, log).await {
            Ok(Some(id)) => {
                let item = Item { record_id: Some(id), ..item.clone() };
                match self.update(api, t, &[&item], log).await.pop() {
                    Some(ItemResult::Written { record_id, .. }) => ItemResult::Written { record_id, created: false },
                    Some(other) => other,
                    None => ItemResult::Failed(Failure::new(DlqReason::RetriesExhausted, "no save result")),
                }
            }
            Ok(None) => refused,
            Err(f) => ItemResult::Failed(f),
        }
    }
}

/// An upsert that met an existing record with a create-only field (TaskSubtype) in the body.
fn met_existing_with_create_only(r: &Saved) -> bool {
    matches!(r, Ok(s) if !s.success && s.errors.first().is_some_and(|e| e.code == "INVALID_FIELD_FOR_INSERT_UPDATE"))
}

impl Connector for Salesforce {
    type Policy = limits::SalesforcePolicy;

    fn build(contracts: Contracts, urls: &crate::CrmUrls, _http_timeout: std::time::Duration) -> Self {
        Self { contracts, default_base_url: urls.salesforce_api_url.clone() }
    }

    fn crm(&self) -> Crm {
        Crm::Salesforce
    }

    fn supported_kinds(&self) -> &'static [ActivityKind] {
        &[ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]
    }

    /// `SELECT Id, Email FROM Contact WHERE Email IN (...)`, 50 addresses per query: SOQL
    /// compares text case-insensitively and reads the records themselves (no index lag).
    /// Where several contacts share an address, the first is taken.
    async fn find_contacts_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for chunk in emails.chunks(EMAILS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|e| soql_text(e)).collect();
            let q = format!("SELECT Id, Email FROM Contact WHERE Email IN ({}) ORDER BY CreatedDate LIMIT 2000", list.join(", "));
            // The query is audited (addresses masked there), so support sees what was asked.
            let req = Request::get(self.data(&format!("/query/?q={}", urlencode(&q))), RequestClass::Search).audited_as(json!({ "q": q }));
            let page: QueryPage = t.fetch(api, &req, log).await?;
            for r in page.records {
                if let Some(e) = r.field("Email") {
                    found.entry(e.trim().to_lowercase()).or_insert(r.id.clone());
                }
            }
        }
        Ok(found)
    }

    /// Contacts' accounts (`Contact.AccountId`) and open opportunities through their contact
    /// roles (`OpportunityContactRole`, then `Opportunity` where `IsClosed = false`), 50
    /// contacts per query: three queries. A Lead (`00Q`) gets none: an activity whose WhoId is
    /// a lead may name no WhatId.
    async fn find_context(
        &self,
        api: &Api,
        t: &Tenant,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, ContactContext>, Failure> {
        let ids: Vec<&String> = contacts.iter().filter(|c| c.starts_with("003")).collect();
        let mut out: HashMap<String, ContactContext> = HashMap::new();
        for chunk in ids.chunks(EMAILS_PER_QUERY) {
            let list = chunk.iter().map(|c| soql_text(c)).collect::<Vec<_>>().join(", ");
            for r in self.soql(api, t, &format!("SELECT Id, AccountId FROM Contact WHERE Id IN ({list})"), log).await? {
                out.entry(r.id.clone()).or_default().company = r.field("AccountId").filter(|a| !a.is_empty()).map(str::to_string);
            }
            let roles = self
                .soql(api, t, &format!("SELECT Id, ContactId, OpportunityId FROM OpportunityContactRole WHERE ContactId IN ({list})"), log)
                .await?;
            let mut of_opp: HashMap<String, Vec<String>> = HashMap::new();
            for r in &roles {
                if let (Some(c), Some(o)) = (r.field("ContactId"), r.field("OpportunityId")) {
                    of_opp.entry(o.to_string()).or_default().push(c.to_string());
                }
            }
            let opps: Vec<&String> = of_opp.keys().collect();
            for opps in opps.chunks(EMAILS_PER_QUERY) {
                let list = opps.iter().map(|o| soql_text(o)).collect::<Vec<_>>().join(", ");
                let q = format!("SELECT Id, LastModifiedDate FROM Opportunity WHERE Id IN ({list}) AND IsClosed = false");
                for o in self.soql(api, t, &q, log).await? {
                    let updated_ms = o.field("LastModifiedDate").and_then(sf_time_ms).unwrap_or(0);
                    for c in of_opp.get(&o.id).into_iter().flatten() {
                        out.entry(c.clone()).or_default().open_deals.push(OpenDeal { id: o.id.clone(), updated_ms });
                    }
                }
            }
        }
        Ok(out)
    }

    /// SOQL on `User`: active standard users with these addresses (`=`/`IN` on text is
    /// case-insensitive). User.Email is not unique (Username is): an address two active
    /// users share names no one and is left out (CRM-APIS-ACTIVITIES §3.2).
    async fn find_owners_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in emails.chunks(EMAILS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|e| soql_text(e)).collect();
            let q = format!(
                "SELECT Id, Email FROM User WHERE Email IN ({}) AND IsActive = true AND UserType = 'Standard' LIMIT 2000",
                list.join(", ")
            );
            let req = Request::get(self.data(&format!("/query/?q={}", urlencode(&q))), RequestClass::Read).audited_as(json!({ "q": q }));
            let page: QueryPage = t.fetch(api, &req, log).await?;
            for r in page.records {
                if let Some(e) = r.field("Email") {
                    seen.entry(e.trim().to_lowercase()).or_default().push(r.id.clone());
                }
            }
        }
        Ok(seen.into_iter().filter(|(_, ids)| ids.len() == 1).map(|(e, mut ids)| (e, ids.remove(0))).collect())
    }

    fn batch_max(&self) -> usize {
        COLLECTION_MAX
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<TenantOf<Self>, String> {
        // My Domain hosts serve the token endpoint too; a sandbox names test.salesforce.com.
        let (base_url, token_url) = endpoints(conn, &self.default_base_url, None, "/services/oauth2/token");
        TenantClient::connect(Crm::Salesforce, tenant, conn, base_url, AuthStyle::bearer(AUTHORIZATION, "Bearer ", token_url), |_| {
            let plan = limits::plan(conn)?;
            Ok(limits::SalesforcePolicy { tenant_id: tenant.id.clone(), allocation: plan.daily_api_requests, recheck: plan.recheck() })
        })
    }

    async fn find_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(None) };
        let sosl = |term: &str| {
            format!(
                "FIND {{{term}}} IN PHONE FIELDS RETURNING Contact(Id, {}), Lead(Id, {}) LIMIT 20",
                CONTACT_PHONES.join(", "),
                LEAD_PHONES.join(", ")
            )
        };
        let req = Request::get(self.data(&format!("/search/?q={}", urlencode(&sosl(&digits)))), RequestClass::Search)
            .audited_as(json!({"q": sosl(&crm_common::phone::mask(&digits))}));
        let hits = t.fetch::<SearchAnswer>(api, &req, log).await?.search_records;
        // Contacts before leads: a call is logged against the person the team works with.
        let matching = |object: &str, fields: &[&str]| {
            hits.iter()
                .find(|r| r.attributes.object == object && fields.iter().any(|f| r.field(f).is_some_and(|raw| t.same_number(raw, e164))))
                .map(|r| r.id.clone())
        };
        Ok(matching("Contact", CONTACT_PHONES).or_else(|| matching("Lead", LEAD_PHONES)))
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let req = Request::new(Method::POST, self.data("/sobjects/Contact/"), RequestClass::Create)
            .body(json!({"LastName": "Unknown caller", "Phone": e164}))
            .not_replay_safe();
        Ok(t.fetch::<Created>(api, &req, log).await?.id)
    }

    async fn find_created_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        // SOQL `=` is exact and sees writes at once; the contact was created with Phone = e164.
        let q = format!("SELECT Id FROM Contact WHERE Phone = '{}' LIMIT 1", e164.replace('\\', "\\\\").replace('\'', "\\'"));
        let req = Request::get(self.data(&format!("/query/?q={}", urlencode(&q))), RequestClass::Read)
            .audited_as(json!({"q": "SELECT Id FROM Contact WHERE Phone = '…' LIMIT 1"}));
        Ok(t.fetch::<QueryPage>(api, &req, log).await?.records.into_iter().next().map(|r| r.id))
    }

    fn contact_read_back_lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &WriteRequest,
        _since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        let kind = req.kind();
        let path = self.data(&format!(
            "/sobjects/{}/{}/{}?fields=Id",
            self.object_of(kind),
            self.key_field_of(kind),
            urlencode(req.idempotency_key())
        ));
        Ok(t.fetch_if_present::<Created>(api, Request::get(path, RequestClass::Read), log).await?.map(|r| r.id))
    }

    fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    /// Upserts by our key. An upsert whose outcome is unknown (an answer that cannot be
    /// read, a record it leaves out) is sent again, with backoff, until the retry limit:
    /// by key, a second upsert meets the first's record instead of making another.
    async fn create_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let first = std::time::Instant::now();
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let batch: Vec<&Item> = pending.iter().map(|&i| items[i]).collect();
            let (status, saved) = self.upsert(api, t, &batch, log).await;
            let mut again = vec![];
            for (&i, r) in pending.iter().zip(saved) {
                let met_existing = met_existing_with_create_only(&r);
                let result = self.saved(r, status, None);
                let result = if met_existing { self.update_found_by_key(api, t, items[i], result, log).await } else { result };
                match result {
                    ItemResult::Failed(f) if f.maybe_applied && !f.is_fenced() && first.elapsed() < api.retry_limit => again.push(i),
                    r => results[i] = Some(r),
                }
            }
            pending = again;
            if !pending.is_empty() {
                attempt += 1;
                tokio::time::sleep(api.backoff.wait(attempt)).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no save result for this record", None))))
            .collect()
    }

    async fn update_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        self.update(api, t, items, log).await
    }
}

impl Inspect for Salesforce {
    /// One `queryAll` per 200 ids: it returns deleted Tasks and Events too (`IsDeleted`,
    /// the recycle bin), and `WhoId`, which follows a contact merge.
    async fn read(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        wanted: &[Wanted],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Live>, Failure> {
        let mut fields: Vec<&str> = self.contract_of(kind).fields.keys().map(String::as_str).collect();
        fields.extend(["Id", "IsDeleted", "WhoId"]);
        let mut out = HashMap::new();
        for chunk in wanted.chunks(COLLECTION_MAX) {
            let ids = chunk.iter().map(|w| format!("'{}'", w.record_id.replace(['\\', '\''], ""))).collect::<Vec<_>>().join(",");
            let soql = format!("SELECT {} FROM {} WHERE Id IN ({ids})", fields.join(", "), self.object_of(kind));
            let mut path = self.data(&format!("/queryAll/?q={}", urlencode(&soql)));
            loop {
                let page: QueryPage = t.fetch(api, &Request::get(path, RequestClass::Read), log).await?;
                let next = page.next().map(str::to_string);
                for r in page.records {
                    let live = if r.fields.get("IsDeleted").and_then(Value::as_bool) == Some(true) {
                        Live::Deleted
                    } else {
                        let contact_id = r.field("WhoId").map(str::to_string);
                        Live::Present { fields: r.fields, contact_id }
                    };
                    out.insert(r.id, live);
                }
                match next {
                    Some(next) => path = next,
                    None => break,
                }
            }
        }
        Ok(missing_are(out, wanted, Live::Absent))
    }

    fn restore_request(&self, kind: ActivityKind, record_id: &str, fields: &Map<String, Value>) -> Request {
        Request::new(
            Method::PATCH,
            self.data(&format!("/sobjects/{}/{}", self.object_of(kind), urlencode(record_id))),
            RequestClass::Update,
        )
        .body(Value::Object(fields.clone()))
    }

    /// A call's Task gets the contact as WhoId; an email's Task or a meeting's Event its
    /// people list (TaskWhoIds, EventWhoIds; up to 50), through the same PATCH as a restore.
    async fn associate(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_id: &str,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let mut fields = Map::new();
        match people_field(kind) {
            Some(field) => {
                fields.insert(field.into(), json!(contacts.iter().take(EVENT_WHO_MAX).collect::<Vec<_>>()));
            }
            None => {
                fields.insert("WhoId".into(), json!(contacts.first()));
            }
        }
        self.restore(api, t, kind, record_id, &fields, log).await
    }

    /// OwnerId and the one WhatId, by SOQL (50 per query).
    async fn attribution(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Attribution>, Failure> {
        let mut out = HashMap::new();
        for chunk in record_ids.chunks(EMAILS_PER_QUERY) {
            let list = chunk.iter().map(|c| soql_text(c)).collect::<Vec<_>>().join(", ");
            let q = format!("SELECT Id, OwnerId, WhatId FROM {} WHERE Id IN ({list})", self.object_of(kind));
            for r in self.soql(api, t, &q, log).await? {
                let related = r.field("WhatId").filter(|w| !w.is_empty()).map(str::to_string).into_iter().collect();
                out.insert(r.id.clone(), Attribution { owner: r.field("OwnerId").map(str::to_string), related });
            }
        }
        Ok(out)
    }

    fn written_relations(&self, company: Option<&str>, deal: Option<&str>) -> BTreeSet<String> {
        deal.or(company).map(str::to_string).into_iter().collect()
    }

    /// The key field on Activity (Task's and Event's custom fields live there) through the
    /// Tooling API, Text(255), External ID and Unique; then field-level access for the
    /// integration user, which a field made so has for nobody (CRM-APIS-ACTIVITIES §6.2):
    /// the permission set `crm_sync` (found, or made), read and edit on `{object}.{key}` in
    /// it, and the set assigned to the user the credentials are. Each step already done
    /// (a field of that name, the grant, the assignment: Salesforce says DUPLICATE_…) is
    /// taken as done, so a second run finishes what a first left half made. Read back.
    async fn provision_key_field(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        let (object, key) = (self.object_of(kind).to_string(), self.key_field_of(kind).to_string());
        let create = self.provision_request(kind).expect("Salesforce provisions");
        done_already(t.fetch(api, &create, log).await, "DUPLICATE_DEVELOPER_NAME")?;
        self.grant_field(api, t, &object, &key, log).await?;
        let access = format!("read and edit for the integration user through the permission set {PERMISSION_SET}");
        match self.schema(api, t, kind, log).await?.and_then(|s| s.key_field) {
            Some(KeyFieldCheck::Enforced) => Ok(Provisioned::Created {
                unique: true,
                detail: format!("created {object}.{key} (on Activity), External ID and Unique, {access}"),
            }),
            Some(KeyFieldCheck::NotEnforced(what)) => {
                Ok(Provisioned::Created { unique: false, detail: format!("created {object}.{key} (on Activity), {access}; {what}") })
            }
            Some(KeyFieldCheck::Unusable(why)) => Err(Failure::new(DlqReason::Validation, why)),
            None => Err(Failure::new(
                DlqReason::PermissionDenied,
                format!("{object}.{key} was made and granted, but the integration user still cannot see it: check its profile's field-level security"),
            )),
        }
    }

    /// A custom field of the lead contract's on Lead or Contact: Text(255) through the
    /// Tooling API, then field-level access for the integration user (`grant_field`); a
    /// field of that name there already is taken as made. A standard field missing is
    /// access, not a field to make.
    async fn provision_person_field(
        &self,
        api: &Api,
        t: &Tenant,
        object: crate::person::PersonObject,
        name: &str,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        let object = people::object_name(object);
        if !name.ends_with("__c") {
            return Ok(Provisioned::ByHand(format!(
                "{object}.{name} is a standard field the integration user cannot see: give it field-level access (its profile or a permission set)"
            )));
        }
        let req = Request::new(Method::POST, self.data("/tooling/sobjects/CustomField"), RequestClass::Schema).body(json!({
            "FullName": format!("{object}.{name}"),
            "Metadata": {
                "label": name.trim_end_matches("__c"),
                "description": "Set by crm-sync from lead sources (contracts/salesforce.lead.toml).",
                "type": "Text", "length": 255
            }
        }));
        let existed = done_already(t.fetch(api, &req, log).await, "DUPLICATE_DEVELOPER_NAME")?;
        self.grant_field(api, t, object, name, log).await?;
        let made = if existed { "exists already" } else { "created (Text 255)" };
        Ok(Provisioned::Created {
            unique: false,
            detail: format!("{object}.{name} {made}, read and edit for the integration user through the permission set {PERMISSION_SET}"),
        })
    }

    fn provision_request(&self, kind: ActivityKind) -> Option<Request> {
        let body = json!({
            "FullName": format!("Activity.{}", self.key_field_of(kind)),
            "Metadata": {
                "label": "crm-sync key",
                "description": "Set by crm-sync: the activity's idempotency key (tenant, source id, CRM). Do not edit.",
                "type": "Text", "length": 255, "externalId": true, "unique": true, "caseSensitive": false
            }
        });
        Some(Request::new(Method::POST, self.data("/tooling/sobjects/CustomField"), RequestClass::Schema).body(body))
    }

    /// One describe: the fields; the key field, which the writer upserts by
    /// (`/composite/sobjects/{object}/{field}`), so it must be an External ID, and Unique to
    /// refuse a second record made by two upserts at once; and what the user may write:
    /// create and edit the object's records (object permissions), and set each contract
    /// field it has on a create (field-level security).
    async fn schema(&self, api: &Api, t: &Tenant, kind: ActivityKind, log: &mut Vec<Exchange>) -> Result<Option<Schema>, Failure> {
        let (object, name) = (self.object_of(kind).to_string(), self.key_field_of(kind).to_string());
        let req = Request::get(self.data(&format!("/sobjects/{object}/describe/")), RequestClass::Schema);
        let describe: Describe = t.fetch(api, &req, log).await?;
        let key_field = describe.fields.iter().find(|f| f.name == name).map(|f| match (f.external_id, f.unique) {
            (true, true) => KeyFieldCheck::Enforced,
            (true, false) => KeyFieldCheck::NotEnforced(format!(
                "{object}.{name} is an External ID but not Unique: two upserts at once could make two records (the claims keep writes single)"
            )),
            (false, _) => KeyFieldCheck::Unusable(format!(
                "{object}.{name} is not an External ID: every upsert by it fails; mark it External ID and Unique (Setup → Object Manager → Activity → Fields)"
            )),
        });
        let may_not: Vec<&str> = [(describe.createable, "create"), (describe.updateable, "edit")]
            .into_iter()
            .filter_map(|(may, what)| (!may).then_some(what))
            .collect();
        let contract = self.contract_of(kind);
        let closed: Vec<&str> =
            describe.fields.iter().filter(|f| contract.fields.contains_key(&f.name) && !f.createable).map(|f| f.name.as_str()).collect();
        let write = if !may_not.is_empty() {
            WriteAccess::Denied(format!("the user may not {} {object} records (object permissions)", may_not.join(" or ")))
        } else if !closed.is_empty() {
            WriteAccess::Denied(format!("the user may not set {} on {object} (field-level security)", closed.join(", ")))
        } else {
            WriteAccess::Granted(format!("the user may create and edit {object} records and set every contract field"))
        };
        Ok(Some(Schema { fields: describe.fields.into_iter().map(|f| f.name).collect(), key_field, write: Some(write) }))
    }

    /// What describe says (`schema`).
    async fn write_access(&self, api: &Api, t: &Tenant, kind: ActivityKind, log: &mut Vec<Exchange>) -> Result<WriteAccess, Failure> {
        let schema = self.schema(api, t, kind, log).await?;
        Ok(schema.and_then(|s| s.write).expect("describe says what the user may write"))
    }
}

impl Salesforce {
    /// Field-level access for the integration user to `{object}.{field}`, which a field made
    /// through the Tooling API has for nobody (CRM-APIS-ACTIVITIES §6.2): the permission set
    /// `crm_sync` (found, or made), read and edit on the field in it, and the set assigned to
    /// the user the credentials are; a grant or assignment there already counts as done.
    async fn grant_field(&self, api: &Api, t: &Tenant, object: &str, field: &str, log: &mut Vec<Exchange>) -> Result<(), Failure> {
        let me: wire::UserInfo = t.fetch(api, &Request::get("/services/oauth2/userinfo", RequestClass::Schema), log).await?;
        let found = self.soql(api, t, &format!("SELECT Id FROM PermissionSet WHERE Name = {}", soql_text(PERMISSION_SET)), log).await?;
        let set = match found.into_iter().next() {
            Some(r) => r.id,
            None => {
                let make = Request::new(Method::POST, self.data("/sobjects/PermissionSet"), RequestClass::Schema).body(json!({
                    "Name": PERMISSION_SET, "Label": "crm-sync",
                    "Description": "Made by crm-sync tenants provision: access to the fields crm-sync writes."
                }));
                t.fetch::<Created>(api, &make, log).await?.id
            }
        };
        let grant = Request::new(Method::POST, self.data("/sobjects/FieldPermissions"), RequestClass::Schema).body(json!({
            "ParentId": set, "SobjectType": object, "Field": format!("{object}.{field}"),
            "PermissionsRead": true, "PermissionsEdit": true
        }));
        done_already(t.fetch(api, &grant, log).await, "DUPLICATE_VALUE")?;
        let assign = Request::new(Method::POST, self.data("/sobjects/PermissionSetAssignment"), RequestClass::Schema)
            .body(json!({"AssigneeId": me.user_id, "PermissionSetId": set}));
        done_already(t.fetch(api, &assign, log).await, "DUPLICATE_VALUE")?;
        Ok(())
    }
}

/// A setup step Salesforce says is done already (`code` in its 400: a field of that name, a
/// grant or assignment there) counts as done: Ok(true); made now: Ok(false).
fn done_already(r: Result<Created, Failure>, code: &str) -> Result<bool, Failure> {
    match r {
        Ok(_) => Ok(false),
        Err(f) if f.status == Some(400) && f.excerpt.as_deref().is_some_and(|e| e.contains(code)) => Ok(true),
        Err(f) => Err(f),
    }
}
