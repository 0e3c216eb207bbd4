//! The HubSpot connector (CRM-APIS §1): calls as `calls` objects carrying the idempotency key
//! in a property (the contract's `key_field`), created with `batch/create` (≤100 per call,
//! associations inline) and updated with `batch/update` (owned fields only).
//!
//! Whether HubSpot enforces a unique property on calls is unverified and doubtful (the
//! property-create spec lists no write scope for activity objects), so this connector is
//! exactly-once without it: a create is not replay-safe, and before any create goes again
//! (after a timeout or a 5xx, or in recovery) the key is read back through search, once the
//! late-write horizon and search's index lag (`HUBSPOT_SEARCH_LAG`) have passed. Where the
//! property is unique after all, a create that meets its own key ("Existing ID") is the
//! record a lost write made and is taken as written. Contacts are found by phone through
//! search on HubSpot's digits-only derived properties, then compared in E.164.

pub mod errors;
pub mod limits;
mod people;
pub mod wire;

use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::auth::AuthStyle;
use crate::client::{endpoints, TenantClient};
use crate::connector::{
    create_reading_before_resending, not_yet_linked, Attribution, Connector, Inspect, Item, ItemResult, Live, Lookups, Provisioned,
    ReadBeforeResend, TenantOf, Wanted,
};
use crate::connector::{KeyFieldCheck, Schema, WriteAccess};
use crate::context::{ContactContext, OpenDeal};
use crate::contract::{Contracts, WriteKind};
use crm_common::events::{ActivityKind, Crm, DlqReason, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use wire::{Batch, ErrorBody, Object, Page, Property};

/// The property group crm-sync's properties are made in (`crm-sync tenants provision`).
const PROPERTY_GROUP: &str = "crm_sync";

/// HubSpot's default association types to a contact (HUBSPOT_DEFINED; CRM-APIS §1,
/// CRM-APIS-ACTIVITIES §1.1, §2.1): call 194, email 198, meeting 200. (A lead is a contact
/// itself, never associated to one: no lead write asks for these.)
fn to_contact(kind: ActivityKind) -> i64 {
    match kind {
        ActivityKind::Email => 198,
        ActivityKind::Meeting => 200,
        ActivityKind::Call | ActivityKind::Unknown | ActivityKind::Lead => 194,
    }
}
/// Association type ids from an activity to the contact's company and to a deal
/// (HUBSPOT_DEFINED: calls 182/206, emails 186/210, meetings 188/212).
fn to_company(kind: ActivityKind) -> i64 {
    match kind {
        ActivityKind::Email => 186,
        ActivityKind::Meeting => 188,
        ActivityKind::Call | ActivityKind::Unknown | ActivityKind::Lead => 182,
    }
}

fn to_deal(kind: ActivityKind) -> i64 {
    match kind {
        ActivityKind::Email => 210,
        ActivityKind::Meeting => 212,
        ActivityKind::Call | ActivityKind::Unknown | ActivityKind::Lead => 206,
    }
}

/// The contact → company association type that marks the primary company.
const PRIMARY_COMPANY: i64 = 1;

const BATCH_MAX: usize = 100;

pub struct Hubspot {
    /// Every kind's contract (emails and meetings where the deployment has theirs).
    pub contracts: Contracts,
    /// Where the real API lives; a tenant's `base_url` (crm-sim) overrides it.
    pub default_base_url: String,
    /// How far search lags behind writes: a read-back waits this long beyond the
    /// late-write horizon before it trusts "not found".
    pub search_lag: std::time::Duration,
}

/// Keys per search for held keys (`IN` values).
const SEARCH_IN_MAX: usize = 50;

type Tenant = TenantClient<limits::HubspotPolicy>;

/// A batch input's failure, from its error entry.
fn input_failed(e: &ErrorBody, reason: DlqReason, detail: String, status: u16) -> ItemResult {
    ItemResult::Failed(Failure { status: Some(status), excerpt: serde_json::to_string(e).ok(), ..Failure::new(reason, detail) })
}

impl Hubspot {
    fn properties(&self, item: &Item, kind: WriteKind) -> Map<String, Value> {
        item.values(self, kind)
    }

    /// The object holding this kind (`calls`, `emails`, `meetings`).
    fn object_of(&self, kind: ActivityKind) -> &str {
        &self.contract_of(kind).object
    }

    fn key_field_of(&self, kind: ActivityKind) -> &str {
        &self.contract_of(kind).key_field
    }

    /// What a create associates: a call's contact, or every matched participant, and the
    /// first contact's company and chosen deal.
    fn associations(item: &Item) -> Vec<Value> {
        let kind = item.req.kind();
        let to = |id: &str, type_id: i64| json!({"to": {"id": id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]});
        let mut out: Vec<Value> = item.linked_contacts().iter().map(|c| to(c, to_contact(kind))).collect();
        out.extend(item.context.company.iter().map(|c| to(c, to_company(kind))));
        out.extend(item.context.deal.iter().map(|d| to(d, to_deal(kind))));
        out
    }

    /// After an email's or meeting's update: associates the participants matched now that
    /// the record is not yet associated with (a meeting's new attendee). Associations are
    /// only ever added: one a person removed in HubSpot, or one to a participant who left
    /// the meeting, is theirs to keep or drop.
    async fn associate_new(&self, api: &Api, t: &Tenant, item: &Item, record_id: &str, log: &mut Vec<Exchange>) -> Result<(), Failure> {
        if item.contacts.is_empty() {
            return Ok(());
        }
        let object = self.object_of(item.req.kind());
        let now: Object = t
            .fetch(
                api,
                &Request::get(
                    format!("/crm/v3/objects/{object}/{}?properties=hs_object_id&associations=contacts", urlencode(record_id)),
                    RequestClass::Read,
                ),
                log,
            )
            .await?;
        let have: Vec<String> = now.associations.contacts.map(|c| c.results.into_iter().map(|c| c.id).collect()).unwrap_or_default();
        for c in not_yet_linked(&have, &item.contacts) {
            let req = Request::new(
                Method::PUT,
                format!("/crm/v4/objects/{object}/{}/associations/default/contacts/{}", urlencode(record_id), urlencode(&c)),
                RequestClass::Update,
            )
            .fenced([item.req.idempotency_key()]);
            t.call(api, &req, log).await?;
        }
        Ok(())
    }

    /// One `batch/<action>` call for `items`, fenced on their keys; a failure of the whole
    /// call is every item's. Creates are not replay-safe (no key HubSpot is known to enforce).
    async fn batch(
        &self,
        api: &Api,
        t: &Tenant,
        class: RequestClass,
        inputs: Vec<Value>,
        items: &[&Item],
        log: &mut Vec<Exchange>,
    ) -> Result<(u16, Batch), Failure> {
        let action = if class == RequestClass::Create { "create" } else { "update" };
        // The writer hands over one kind per call.
        let object = self.object_of(items.first().map_or(ActivityKind::Call, |i| i.req.kind()));
        let mut req = Request::new(Method::POST, format!("/crm/v3/objects/{object}/batch/{action}"), class)
            .body(json!({"inputs": inputs}))
            .fenced(items.iter().map(|i| i.req.idempotency_key()));
        if class == RequestClass::Create {
            req = req.not_replay_safe();
        }
        let reply = t.call(api, &req, log).await?;
        Ok((reply.status, reply.parse()?))
    }

    /// Records of `kind` holding these keys, through search (which lags behind writes):
    /// key → id.
    async fn held_keys(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        keys: &[&str],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let kf = self.key_field_of(kind);
        let object = self.object_of(kind);
        let mut found = HashMap::new();
        for chunk in keys.chunks(SEARCH_IN_MAX) {
            let body = json!({
                "filterGroups": [{"filters": [{"propertyName": kf, "operator": "IN", "values": chunk}]}],
                "properties": [kf],
                "limit": 200
            });
            let req = Request::new(Method::POST, format!("/crm/v3/objects/{object}/search"), RequestClass::Search).body(body);
            let page: Page<Object> = t.fetch(api, &req, log).await?;
            for r in &page.results {
                if let Some(k) = r.property(kf) {
                    found.entry(k.to_string()).or_insert_with(|| r.id.clone());
                }
            }
            if page.has_more() {
                // More than a page for ≤50 keys: several records per key. What was read
                // names a record for each key it found; the rest cannot be ruled out.
                let missing = chunk.iter().filter(|k| !found.contains_key(**k)).count();
                if missing > 0 {
                    return Err(Failure {
                        maybe_applied: true,
                        ..Failure::new(
                            DlqReason::RetriesExhausted,
                            "the search for written keys ran past one page: cannot tell which are absent",
                        )
                    });
                }
            }
        }
        Ok(found)
    }

    async fn create(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let inputs: Vec<Value> = items
            .iter()
            .map(|i| {
                json!({"properties": self.properties(i, WriteKind::Create), "associations": Self::associations(i), "objectWriteTraceId": i.req.idempotency_key()})
            })
            .collect();
        let (status, answer) = match self.batch(api, t, RequestClass::Create, inputs, items, log).await {
            Ok(a) => a,
            Err(f) => return items.iter().map(|_| ItemResult::Failed(f.clone())).collect(),
        };
        let key_field = self.key_field_of(items.first().map_or(ActivityKind::Call, |i| i.req.kind()));
        let mut by_key: HashMap<String, ItemResult> = HashMap::new();
        for r in answer.results {
            let key = r.property(key_field).unwrap_or_default().to_string();
            by_key.insert(key, ItemResult::Written { record_id: r.id, created: true });
        }
        for e in &answer.errors {
            let Some(key) = &e.context.object_write_trace_id else { continue };
            let result = match (e.category.as_str(), &e.context.id) {
                // Our own key is already there: a write that reached HubSpot before a crash
                // or a timeout. That record is ours.
                ("CONFLICT", Some(id)) => ItemResult::Written { record_id: id.clone(), created: false },
                _ => {
                    let (reason, detail) = errors::reason_of(e);
                    input_failed(e, reason, detail, status)
                }
            };
            by_key.insert(key.clone(), result);
        }
        items
            .iter()
            .map(|i| {
                by_key.remove(i.req.idempotency_key()).unwrap_or_else(|| {
                    ItemResult::Failed(Failure::unknown_outcome(
                        "HubSpot's batch answer named neither a result nor an error for this record",
                        Some(status),
                    ))
                })
            })
            .collect()
    }

    async fn update(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let inputs: Vec<Value> =
            items.iter().map(|i| json!({"id": i.record_id, "properties": self.properties(i, WriteKind::Update)})).collect();
        let (status, answer) = match self.batch(api, t, RequestClass::Update, inputs, items, log).await {
            Ok(a) => a,
            Err(f) => return items.iter().map(|_| ItemResult::Failed(f.clone())).collect(),
        };
        let mut by_id: HashMap<String, ItemResult> = HashMap::new();
        for r in answer.results {
            by_id.insert(r.id.clone(), ItemResult::Written { record_id: r.id, created: false });
        }
        for e in &answer.errors {
            let (mut reason, mut detail) = errors::reason_of(e);
            if e.category == "OBJECT_NOT_FOUND" {
                // Someone deleted the record in HubSpot: their decision stands; not re-created.
                reason = DlqReason::Validation;
                detail = format!("the record was deleted in HubSpot; not re-created ({detail})");
            }
            for id in &e.context.ids {
                by_id.insert(id.clone(), input_failed(e, reason, detail.clone(), status));
            }
        }
        let mut out = vec![];
        for i in items {
            let id = i.record_id.clone().unwrap_or_default();
            let mut r = by_id.remove(&id).unwrap_or(ItemResult::Written { record_id: id.clone(), created: false });
            if matches!(r, ItemResult::Written { .. }) {
                if let Err(f) = self.associate_new(api, t, i, &id, log).await {
                    r = ItemResult::Failed(f);
                }
            }
            out.push(r);
        }
        out
    }

    /// One record of `kind` by id (`GET /crm/v3/objects/<object>/<id>?<query>`).
    fn one(&self, kind: ActivityKind, record_id: &str, query: &str) -> Request {
        Request::get(format!("/crm/v3/objects/{}/{}?{query}", self.object_of(kind), urlencode(record_id)), RequestClass::Read)
    }

    /// `batch/read` of these ids on `object` (≤100), with these properties.
    async fn batch_read(
        &self,
        api: &Api,
        t: &Tenant,
        object: &str,
        ids: &[&str],
        props: Value,
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Object>, Failure> {
        let inputs: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
        let req = Request::new(Method::POST, format!("/crm/v3/objects/{object}/batch/read"), RequestClass::Read)
            .body(json!({"inputs": inputs, "properties": props}));
        Ok(t.fetch::<Batch>(api, &req, log).await?.results)
    }
}

impl ReadBeforeResend for Hubspot {
    async fn send(&self, api: &Api, t: &Tenant, batch: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        self.create(api, t, batch, log).await
    }

    async fn held(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        reqs: &[&WriteRequest],
        _sent_at_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let keys: Vec<&str> = reqs.iter().map(|r| r.idempotency_key()).collect();
        self.held_keys(api, t, kind, &keys, log).await
    }
}

impl Connector for Hubspot {
    type Policy = limits::HubspotPolicy;

    fn build(contracts: Contracts, urls: &crate::CrmUrls, _http_timeout: std::time::Duration) -> Self {
        Self { contracts, default_base_url: urls.hubspot_api_url.clone(), search_lag: urls.hubspot_search_lag }
    }

    fn crm(&self) -> Crm {
        Crm::Hubspot
    }

    fn supported_kinds(&self) -> &'static [ActivityKind] {
        &[ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]
    }

    /// `email IN [...]` on contacts, 50 addresses per search. HubSpot compares the stored
    /// address case-insensitively; an address only in a contact's additional emails is not
    /// found (search reads the primary `email`). Search lags behind writes: a contact
    /// created moments ago is not found yet (the activity is logged without it).
    async fn find_contacts_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for chunk in emails.chunks(SEARCH_IN_MAX) {
            let body = json!({
                "filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN", "values": chunk}]}],
                "properties": ["email"],
                "limit": 100
            });
            let req = Request::new(Method::POST, "/crm/v3/objects/contacts/search", RequestClass::Search).body(body);
            let page: Page<Object> = t.fetch(api, &req, log).await?;
            for r in page.results {
                if let Some(e) = r.property("email") {
                    found.entry(e.trim().to_lowercase()).or_insert(r.id.clone());
                }
            }
        }
        Ok(found)
    }

    /// Contacts' primary companies and open deals: the v4 association batch reads
    /// (contacts → companies, contacts → deals; 100 contacts each), then the deals' state
    /// (`hs_is_closed`, last change) by batch read. Three requests for up to 100 contacts.
    async fn find_context(
        &self,
        api: &Api,
        t: &Tenant,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, ContactContext>, Failure> {
        let mut out: HashMap<String, ContactContext> = HashMap::new();
        for chunk in contacts.chunks(BATCH_MAX) {
            let inputs: Vec<Value> = chunk.iter().map(|c| json!({"id": c})).collect();
            let read = |to: &str| {
                Request::new(Method::POST, format!("/crm/v4/associations/contacts/{to}/batch/read"), RequestClass::Read)
                    .body(json!({"inputs": inputs}))
            };
            let companies: wire::AssociationsBatch = t.fetch(api, &read("companies"), log).await?;
            for r in companies.results {
                let primary = r.to.iter().find(|a| a.association_types.iter().any(|t| t.type_id == PRIMARY_COMPANY));
                out.entry(r.from.id).or_default().company = primary.map(|a| a.to_object_id.clone());
            }
            let deals: wire::AssociationsBatch = t.fetch(api, &read("deals"), log).await?;
            let mut deal_of: HashMap<String, Vec<String>> = HashMap::new();
            for r in deals.results {
                for a in r.to {
                    deal_of.entry(a.to_object_id).or_default().push(r.from.id.clone());
                }
            }
            let ids: Vec<&String> = deal_of.keys().collect();
            for ids in ids.chunks(BATCH_MAX) {
                let body = json!({"inputs": ids.iter().map(|d| json!({"id": d})).collect::<Vec<_>>(), "properties": ["hs_is_closed", "hs_lastmodifieddate"]});
                let req = Request::new(Method::POST, "/crm/v3/objects/deals/batch/read", RequestClass::Read).body(body);
                let found: Batch = t.fetch(api, &req, log).await?;
                for d in found.results {
                    if d.property("hs_is_closed") == Some("true") {
                        continue;
                    }
                    let updated_ms = d
                        .property("hs_lastmodifieddate")
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map_or(0, |t| t.timestamp_millis());
                    for c in deal_of.get(&d.id).into_iter().flatten() {
                        out.entry(c.clone()).or_default().open_deals.push(OpenDeal { id: d.id.clone(), updated_ms });
                    }
                }
            }
        }
        Ok(out)
    }

    /// `GET /crm/v3/owners?email=` per address (HubSpot filters owners by one email;
    /// archived owners, deactivated users, are not asked for and cannot own a record).
    async fn find_owners_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for e in emails {
            let req = Request::get(format!("/crm/v3/owners?email={}&archived=false&limit=100", urlencode(e)), RequestClass::Read);
            let page: Page<wire::Owner> = t.fetch(api, &req, log).await?;
            let mut ids =
                page.results.into_iter().filter(|o| !o.archived && o.email.as_deref().is_some_and(|m| m.trim().eq_ignore_ascii_case(e)));
            if let (Some(o), None) = (ids.next(), ids.next()) {
                found.insert(e.clone(), o.id);
            }
        }
        Ok(found)
    }

    fn batch_max(&self) -> usize {
        BATCH_MAX
    }

    /// A search per number, one per `SEARCH_IN_MAX` addresses; an owner lookup per
    /// email; three batch reads per 100 contexts (`find_context`).
    fn expected_requests(&self, l: &Lookups) -> Vec<(RequestClass, u64)> {
        vec![
            (RequestClass::Search, l.numbers + l.addresses.div_ceil(SEARCH_IN_MAX as u64)),
            (RequestClass::Read, l.owners + 3 * l.contexts.div_ceil(BATCH_MAX as u64)),
        ]
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<TenantOf<Self>, String> {
        // A private-app token, or an OAuth client whose refreshes go to /oauth/v1/token.
        let (base_url, token_url) = endpoints(conn, &self.default_base_url, None, "/oauth/v1/token");
        TenantClient::connect(Crm::Hubspot, tenant, conn, base_url, AuthStyle::bearer(AUTHORIZATION, "Bearer ", token_url), |_| {
            Ok(limits::HubspotPolicy { tenant_id: tenant.id.clone(), plan: limits::plan(conn)?, tz_offset_min: conn.tz_offset_min })
        })
    }

    async fn find_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(None) };
        let body = |value: &str| {
            let group = |prop: &str| json!({"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]});
            json!({
                "filterGroups": [group("hs_searchable_calculated_phone_number"), group("hs_searchable_calculated_mobile_number")],
                "properties": ["phone", "mobilephone"],
                "limit": 20
            })
        };
        let req = Request::new(Method::POST, "/crm/v3/objects/contacts/search", RequestClass::Search)
            .body(body(&digits))
            .audited_as(body(&crm_common::phone::mask(&digits)));
        let page: Page<Object> = t.fetch(api, &req, log).await?;
        // The digits match ignores country codes: confirm in E.164 with the tenant's region.
        let found = page
            .results
            .into_iter()
            .find(|r| ["phone", "mobilephone"].iter().any(|p| r.property(p).is_some_and(|raw| t.same_number(raw, e164))));
        Ok(found.map(|r| r.id))
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let req = Request::new(Method::POST, "/crm/v3/objects/contacts", RequestClass::Create)
            .body(json!({"properties": {"phone": e164}, "associations": []}))
            .not_replay_safe();
        Ok(t.fetch::<Object>(api, &req, log).await?.id)
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &WriteRequest,
        _since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        Ok(self.held_keys(api, t, req.kind(), &[req.idempotency_key()], log).await?.remove(req.idempotency_key()))
    }

    fn read_back_lag(&self, _kind: ActivityKind) -> std::time::Duration {
        self.search_lag
    }

    /// Contacts are read back through the same lagging search.
    fn contact_read_back_lag(&self) -> std::time::Duration {
        self.search_lag
    }

    fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    async fn create_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        create_reading_before_resending(self, api, t, items, log).await
    }

    async fn update_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        self.update(api, t, items, log).await
    }
}

impl Hubspot {
    /// The `crm_sync` property group on `object`, made unless there (another kind's
    /// property, or an earlier run, made it).
    async fn property_group(&self, api: &Api, t: &Tenant, object: &str, log: &mut Vec<Exchange>) -> Result<(), Failure> {
        let group = Request::new(Method::POST, format!("/crm/v3/properties/{object}/groups"), RequestClass::Schema)
            .body(json!({"name": PROPERTY_GROUP, "label": "crm-sync"}));
        match t.fetch::<Value>(api, &group, log).await {
            Ok(_) => Ok(()),
            Err(f) if f.status == Some(409) => Ok(()),
            Err(f) => Err(f),
        }
    }
}

impl Inspect for Hubspot {
    /// `batch/read` for the fields (100 per call); an id it does not find is looked for
    /// among archived records. Batch reads carry no associations, so a call's contact is
    /// read again only when the contact it was linked to is no longer live (merged away
    /// or deleted): one more batch read of those contacts first.
    async fn read(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        wanted: &[Wanted],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Live>, Failure> {
        let props: Vec<&String> = self.contract_of(kind).fields.keys().collect();
        let mut out = HashMap::new();
        for chunk in wanted.chunks(BATCH_MAX) {
            let ids: Vec<&str> = chunk.iter().map(|w| w.record_id.as_str()).collect();
            for r in self.batch_read(api, t, self.object_of(kind), &ids, json!(props), log).await? {
                out.insert(r.id, Live::Present { fields: r.properties, contact_id: None });
            }
        }
        let linked: Vec<&str> = wanted.iter().filter_map(|w| w.linked_contact.as_deref()).collect::<BTreeSet<_>>().into_iter().collect();
        let mut live_contacts: HashSet<String> = HashSet::new();
        for chunk in linked.chunks(BATCH_MAX) {
            live_contacts.extend(self.batch_read(api, t, "contacts", chunk, json!(["hs_object_id"]), log).await?.into_iter().map(|r| r.id));
        }
        for w in wanted {
            match out.get_mut(&w.record_id) {
                Some(Live::Present { contact_id, .. }) => match &w.linked_contact {
                    Some(c) if live_contacts.contains(c) => *contact_id = Some(c.clone()),
                    Some(_) => {
                        let now: Object =
                            t.fetch(api, &self.one(kind, &w.record_id, "properties=hs_object_id&associations=contacts"), log).await?;
                        *contact_id = now.associations.contacts.and_then(|c| c.results.into_iter().next()).map(|c| c.id);
                    }
                    None => {}
                },
                Some(_) => {}
                None => {
                    let read = self.one(kind, &w.record_id, "properties=hs_object_id&archived=true");
                    let live = match t.call_if_present(api, read, log).await? {
                        Some(_) => Live::Deleted,
                        None => Live::Absent,
                    };
                    out.insert(w.record_id.clone(), live);
                }
            }
        }
        Ok(out)
    }

    fn restore_request(&self, kind: ActivityKind, record_id: &str, fields: &Map<String, Value>) -> Request {
        // HubSpot's properties are strings.
        let props: Map<String, Value> = fields.iter().map(|(k, v)| (k.clone(), Value::String(crate::contract::as_text(v)))).collect();
        Request::new(Method::PATCH, format!("/crm/v3/objects/{}/{}", self.object_of(kind), urlencode(record_id)), RequestClass::Update)
            .body(json!({"properties": props}))
    }

    /// One v4 default association per contact.
    async fn associate(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_id: &str,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let object = self.object_of(kind);
        for c in contacts {
            let path = format!("/crm/v4/objects/{object}/{}/associations/default/contacts/{}", urlencode(record_id), urlencode(c));
            t.call(api, &Request::new(Method::PUT, path, RequestClass::Update), log).await?;
        }
        Ok(())
    }

    /// The owner by batch read, companies and deals by the v4 association batch reads.
    async fn attribution(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Attribution>, Failure> {
        let object = self.object_of(kind).to_string();
        let mut out: HashMap<String, Attribution> = HashMap::new();
        for chunk in record_ids.chunks(BATCH_MAX) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let read = Request::new(Method::POST, format!("/crm/v3/objects/{object}/batch/read"), RequestClass::Read)
                .body(json!({"inputs": inputs, "properties": ["hubspot_owner_id"]}));
            let found: Batch = t.fetch(api, &read, log).await?;
            for r in found.results {
                let owner = r.property("hubspot_owner_id").filter(|o| !o.is_empty()).map(str::to_string);
                out.insert(r.id.clone(), Attribution { owner, related: BTreeSet::new() });
            }
            for to in ["companies", "deals"] {
                let req = Request::new(Method::POST, format!("/crm/v4/associations/{object}/{to}/batch/read"), RequestClass::Read)
                    .body(json!({"inputs": inputs}));
                let links: wire::AssociationsBatch = t.fetch(api, &req, log).await?;
                for r in links.results {
                    if let Some(a) = out.get_mut(&r.from.id) {
                        a.related.extend(r.to.into_iter().map(|x| x.to_object_id));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The key property, in a property group of crm-sync's own (HubSpot advises an
    /// integration to group what it creates), with unique values. Whether HubSpot lets an app
    /// create properties on activity objects, and with which scope, is not documented
    /// (CRM-APIS-ACTIVITIES §6.1): a refusal comes back as PERMISSION_DENIED and the caller
    /// says how to make it by hand. Read back: `hasUniqueValue` says whether HubSpot will
    /// refuse a second record with one key.
    async fn provision_key_field(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        let object = self.object_of(kind);
        self.property_group(api, t, object, log).await?;
        let create = self.provision_request(kind).expect("HubSpot provisions");
        let _: Property = t.fetch(api, &create, log).await?;
        // Read back as `tenants check` reads it.
        let name = self.key_field_of(kind);
        let unique = matches!(self.schema(api, t, kind, log).await?.and_then(|s| s.key_field), Some(KeyFieldCheck::Enforced));
        let detail = if unique {
            format!("created {object}.{name}, unique: HubSpot refuses a second record with one key")
        } else {
            format!(
                "created {object}.{name}, but HubSpot does not enforce unique values on {object} for this portal: the claims store alone keeps writes single"
            )
        };
        Ok(Provisioned::Created { unique, detail })
    }

    /// A contact property of the lead contract's (`crm-sync tenants provision`): a text
    /// property in the `crm_sync` group; one of that name there already is taken as made.
    async fn provision_person_field(
        &self,
        api: &Api,
        t: &Tenant,
        object: crate::person::PersonObject,
        name: &str,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        if object != crate::person::PersonObject::Contact {
            return Ok(Provisioned::ByHand("HubSpot's people are contacts only".into()));
        }
        self.property_group(api, t, "contacts", log).await?;
        let req = Request::new(Method::POST, "/crm/v3/properties/contacts", RequestClass::Schema).body(json!({
            "name": name, "label": name, "type": "string", "fieldType": "text", "groupName": PROPERTY_GROUP, "formField": false,
            "description": "Set by crm-sync from lead sources (contracts/hubspot.lead.toml)."
        }));
        let detail = match t.fetch::<Property>(api, &req, log).await {
            Ok(_) => format!("created contacts.{name} (text)"),
            Err(f) if f.status == Some(409) => format!("contacts.{name} exists already"),
            Err(f) => return Err(f),
        };
        Ok(Provisioned::Created { unique: false, detail })
    }

    /// The token's scopes as HubSpot states them (a private app's through
    /// `private-apps/get/access-token-info`, an OAuth access token's through
    /// `oauth/v1/access-tokens`), against those the writes of `kind` need (CRM-APIS §1.1:
    /// the activity objects are gated on the contacts scopes; emails on `sales-email-read`
    /// too, CRM-APIS-ACTIVITIES §1.1). The token goes in the request, never in audit.
    async fn write_access(&self, api: &Api, t: &Tenant, kind: ActivityKind, log: &mut Vec<Exchange>) -> Result<WriteAccess, Failure> {
        let (token, oauth) = match t.auth.token(&api.http, api.tokens.as_ref(), log).await {
            Ok(t) => t,
            Err(crate::auth::AuthError::Refused(f)) => return Err(f),
            Err(crate::auth::AuthError::Unavailable(why)) => return Err(Failure::new(DlqReason::RetriesExhausted, why)),
        };
        let shown = json!("(the token, not shown)");
        let req = if oauth {
            Request::get(format!("/oauth/v1/access-tokens/{}", urlencode(&token)), RequestClass::Schema)
                .shown_as("/oauth/v1/access-tokens/(the token)")
                .audited_as(shown)
        } else {
            Request::new(Method::POST, "/oauth/v2/private-apps/get/access-token-info", RequestClass::Schema)
                .body(json!({"tokenKey": token}))
                .audited_as(json!({"tokenKey": shown}))
        };
        let info: wire::TokenInfo = t.fetch(api, &req, log).await?;
        let mut needed = vec!["crm.objects.contacts.write"];
        if kind == ActivityKind::Email {
            needed.push("sales-email-read");
        }
        let missing: Vec<&str> = needed.iter().copied().filter(|s| !info.scopes.iter().any(|h| h == s)).collect();
        Ok(if missing.is_empty() {
            WriteAccess::Granted(format!("the token has {}", needed.join(" and ")))
        } else {
            WriteAccess::Denied(format!("the token lacks {} (it has {})", missing.join(" and "), info.scopes.join(", ")))
        })
    }

    fn provision_request(&self, kind: ActivityKind) -> Option<Request> {
        let object = self.object_of(kind);
        let body = json!({
            "name": self.key_field_of(kind),
            "label": "crm-sync key",
            "description": "Set by crm-sync: the activity's idempotency key (tenant, source id, CRM). Do not edit.",
            "type": "string",
            "fieldType": "text",
            "groupName": PROPERTY_GROUP,
            "hasUniqueValue": true,
            "formField": false,
        });
        Some(Request::new(Method::POST, format!("/crm/v3/properties/{object}"), RequestClass::Schema).body(body))
    }

    /// The object's properties, the key property's `hasUniqueValue` among them.
    async fn schema(&self, api: &Api, t: &Tenant, kind: ActivityKind, log: &mut Vec<Exchange>) -> Result<Option<Schema>, Failure> {
        let object = self.object_of(kind);
        let key = self.key_field_of(kind);
        let req = Request::get(format!("/crm/v3/properties/{object}"), RequestClass::Schema);
        let page: Page<Property> = t.fetch(api, &req, log).await?;
        let key_field = page.results.iter().find(|p| p.name == key).map(|p| {
            if p.has_unique_value {
                KeyFieldCheck::Enforced
            } else {
                KeyFieldCheck::NotEnforced(format!(
                    "{object}.{key} has no unique values here: HubSpot will not refuse a second record with one key (only new properties can be made unique)"
                ))
            }
        });
        Ok(Some(Schema { fields: page.results.into_iter().map(|p| p.name).collect(), key_field, write: None }))
    }
}
