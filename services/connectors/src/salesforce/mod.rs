//! The Salesforce connector (CRM-APIS §2): calls as Tasks (`TaskSubtype = 'Call'`) carrying
//! the idempotency key in an external-ID field (the contract's `key_field`, e.g.
//! `CrmSyncKey__c`). Creates are sObject Collections upserts by that key (≤200 per call), so
//! a create that meets a record a dead writer already made updates it instead of making a
//! second one; updates go by record id (a Task someone deleted is not re-created). Every
//! answer's `Sforce-Limit-Info` sets the org's allowance in the bucket; an exhausted
//! allowance is 403 REQUEST_LIMIT_EXCEEDED. Contacts and leads are found by phone with SOSL
//! (`IN PHONE FIELDS` ignores formatting), then compared in E.164.

pub mod errors;
pub mod limits;

use crate::api::{urlencode, Api, Exchange, Failure, Reply, Request, RequestClass};
use crate::auth::{AuthStyle, Credentials};
use crate::connector::{Connector, Inspect, Item, ItemResult, Live, Wanted};
use crate::contract::{Contract, WriteKind};
use crm_common::events::{Crm, CrmWriteRequest, DlqReason};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};

const COLLECTION_MAX: usize = 200;
/// The REST API version pinned (Spring '26).
pub const API_VERSION: &str = "v66.0";

pub struct Salesforce {
    pub contract: Contract,
    /// The org's instance URL when a tenant names none (it should: instance URLs differ
    /// per org).
    pub default_base_url: String,
}

pub struct Tenant {
    base_url: String,
    auth: Credentials,
    policy: limits::SalesforcePolicy,
    region: phonenumber::country::Id,
}

/// Phone fields SOSL searches and we compare, per object.
const CONTACT_PHONES: &[&str] = &["Phone", "MobilePhone", "HomePhone", "OtherPhone"];
const LEAD_PHONES: &[&str] = &["Phone", "MobilePhone"];

impl Salesforce {
    fn data(&self, path: &str) -> String {
        format!("/services/data/{API_VERSION}{path}")
    }

    fn object(&self) -> &str {
        &self.contract.object
    }

    async fn call(&self, api: &Api, t: &Tenant, req: Request, log: &mut Vec<Exchange>) -> Result<Reply, Failure> {
        api.call(&t.policy, &t.base_url, &t.auth, &req, log).await
    }

    /// One save result of a collection, for one item.
    fn saved(&self, r: &Value, status: u16, record_id: Option<&str>) -> ItemResult {
        if r.get("success").and_then(Value::as_bool) == Some(true) {
            let id = r.get("id").and_then(Value::as_str).or(record_id).unwrap_or_default().to_string();
            // An upsert that found the key already there updated a record a lost write made.
            let created = r.get("created").and_then(Value::as_bool).unwrap_or(record_id.is_none());
            return ItemResult::Written { record_id: id, created };
        }
        let (code, message, fields) = errors::first_error(r.get("errors").unwrap_or(&Value::Null));
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut reason = errors::reason_of(&code, &fields).unwrap_or(DlqReason::Validation);
        let mut detail = format!("{code}: {message}");
        if record_id.is_some() && matches!(code.as_str(), "ENTITY_IS_DELETED" | "NOT_FOUND") && !fields.contains(&"WhoId") {
            // Someone deleted the Task in Salesforce: their decision stands.
            reason = DlqReason::Validation;
            detail = format!("the Task was deleted in Salesforce; not re-created ({detail})");
        }
        if matches!(code.as_str(), "UNABLE_TO_LOCK_ROW") {
            detail = format!("{detail} (row lock)");
        }
        ItemResult::Failed(Failure {
            reason,
            detail,
            status: Some(status),
            excerpt: Some(r.to_string()),
            maybe_applied: false,
            fenced_off: vec![],
        })
    }

    /// Runs a collection call; a failure of the whole call is every item's.
    async fn collection(&self, api: &Api, t: &Tenant, req: Request, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let reply = match self.call(api, t, req, log).await {
            Ok(r) => r,
            Err(f) => return items.iter().map(|_| ItemResult::Failed(f.clone())).collect(),
        };
        let results = reply.json();
        let results = results.as_array().cloned().unwrap_or_default();
        // Save results come back in input order, one per record.
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match results.get(i) {
                Some(r) => self.saved(r, reply.status, item.record_id.as_deref()),
                None => ItemResult::Failed(Failure::new(
                    DlqReason::RetriesExhausted,
                    "Salesforce's collection answer had no save result for this record",
                )),
            })
            .collect()
    }

    fn record(&self, item: &Item, kind: WriteKind) -> Value {
        let mut fields = self.contract.values(&item.req, kind);
        fields.insert("attributes".into(), json!({"type": self.object()}));
        if kind == WriteKind::Create {
            if let Some(c) = &item.contact_id {
                fields.insert("WhoId".into(), json!(c));
            }
        }
        Value::Object(fields)
    }

    async fn upsert(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let records: Vec<Value> = items.iter().map(|i| self.record(i, WriteKind::Create)).collect();
        let path = self.data(&format!("/composite/sobjects/{}/{}", self.object(), self.contract.key_field));
        let req = Request::new(Method::PATCH, path, RequestClass::Upsert)
            .body(json!({"allOrNone": false, "records": records}))
            .fenced(items.iter().map(|i| i.req.idempotency_key.as_str()));
        self.collection(api, t, req, items, log).await
    }

    async fn update(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let records: Vec<Value> = items
            .iter()
            .map(|i| {
                let mut r = self.record(i, WriteKind::Update);
                r["Id"] = json!(i.record_id);
                r
            })
            .collect();
        let req = Request::new(Method::PATCH, self.data("/composite/sobjects"), RequestClass::Upsert)
            .body(json!({"allOrNone": false, "records": records}))
            .fenced(items.iter().map(|i| i.req.idempotency_key.as_str()));
        self.collection(api, t, req, items, log).await
    }
}

/// An upsert that met an existing record with a create-only field (TaskSubtype) in the body.
fn met_existing_with_create_only(r: &ItemResult) -> bool {
    matches!(r, ItemResult::Failed(f) if f.detail.starts_with("INVALID_FIELD_FOR_INSERT_UPDATE"))
}

impl Connector for Salesforce {
    type Tenant = Tenant;

    fn build(contract: Contract, urls: &crate::CrmUrls, _http_timeout: std::time::Duration) -> Self {
        Self { contract, default_base_url: urls.salesforce_api_url.clone() }
    }

    fn crm(&self) -> Crm {
        Crm::Salesforce
    }

    fn batch_max(&self) -> usize {
        COLLECTION_MAX
    }

    fn credentials<'a>(&self, t: &'a Tenant) -> &'a Credentials {
        &t.auth
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<Tenant, String> {
        let allocation = limits::allocation(conn)?;
        let base_url = conn.base_url.clone().unwrap_or_else(|| self.default_base_url.clone()).trim_end_matches('/').to_string();
        // My Domain hosts serve the token endpoint too; a sandbox names test.salesforce.com.
        let token_url = conn.token_url.clone().unwrap_or_else(|| format!("{base_url}/services/oauth2/token"));
        let auth = Credentials::from_env(
            &conn.credentials_secret,
            AuthStyle::bearer(AUTHORIZATION, "Bearer ", token_url),
            format!("salesforce:{}", tenant.id),
        )?;
        Ok(Tenant {
            base_url,
            auth,
            policy: limits::SalesforcePolicy { tenant_id: tenant.id.clone(), allocation, recheck: limits::recheck(conn) },
            region: tenant.default_region,
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
        let reply = self.call(api, t, req, log).await?;
        let body = reply.json();
        let hits = body.get("searchRecords").and_then(Value::as_array).cloned().unwrap_or_default();
        // Contacts before leads: a call is logged against the person the team works with.
        let matching = |object: &str, fields: &[&str]| {
            hits.iter().find_map(|r| {
                (r.pointer("/attributes/type").and_then(Value::as_str) == Some(object)
                    && fields.iter().any(|f| {
                        r.get(*f)
                            .and_then(Value::as_str)
                            .and_then(|raw| crm_common::phone::to_e164(raw, Some(t.region)).ok())
                            .is_some_and(|n| n == e164)
                    }))
                .then(|| r.get("Id").and_then(Value::as_str).map(str::to_string))
                .flatten()
            })
        };
        Ok(matching("Contact", CONTACT_PHONES).or_else(|| matching("Lead", LEAD_PHONES)))
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let req = Request::new(Method::POST, self.data("/sobjects/Contact/"), RequestClass::Create)
            .body(json!({"LastName": "Unknown caller", "Phone": e164}))
            .not_replay_safe();
        let reply = self.call(api, t, req, log).await?;
        reply.json().get("id").and_then(Value::as_str).map(str::to_string).ok_or_else(|| Failure {
            status: Some(reply.status),
            excerpt: Some(reply.body.chars().take(300).collect()),
            ..Failure::new(DlqReason::Validation, "Salesforce created a contact but returned no id")
        })
    }

    async fn find_created_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        // SOQL `=` is exact and sees writes at once; the contact was created with Phone = e164.
        let q = format!("SELECT Id FROM Contact WHERE Phone = '{}' LIMIT 1", e164.replace('\\', "\\\\").replace('\'', "\\'"));
        let req = Request::get(self.data(&format!("/query/?q={}", urlencode(&q))), RequestClass::Read)
            .audited_as(json!({"q": "SELECT Id FROM Contact WHERE Phone = '…' LIMIT 1"}));
        let reply = self.call(api, t, req, log).await?;
        Ok(reply.json().pointer("/records/0/Id").and_then(Value::as_str).map(str::to_string))
    }

    fn contact_read_back_lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &CrmWriteRequest,
        _since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        let path =
            self.data(&format!("/sobjects/{}/{}/{}?fields=Id", self.object(), self.contract.key_field, urlencode(&req.idempotency_key)));
        match self.call(api, t, Request::get(path, RequestClass::Read), log).await {
            Ok(reply) => Ok(reply.json().get("Id").and_then(Value::as_str).map(str::to_string)),
            Err(f) if f.status == Some(404) => Ok(None),
            Err(f) => Err(f),
        }
    }

    fn contract(&self) -> &Contract {
        &self.contract
    }

    async fn write(&self, api: &Api, t: &Tenant, items: &[Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let creates: Vec<&Item> = items.iter().filter(|i| i.record_id.is_none()).collect();
        let updates: Vec<&Item> = items.iter().filter(|i| i.record_id.is_some()).collect();
        let mut created = if creates.is_empty() { vec![] } else { self.upsert(api, t, &creates, log).await };
        // An upsert that landed on a record a lost write made, and was refused for a
        // create-only field: find the record by key and update it like any other.
        for (i, r) in created.iter_mut().enumerate() {
            if met_existing_with_create_only(r) {
                let found = self.lookup(api, t, &creates[i].req, 0, log).await;
                *r = match found {
                    Ok(Some(id)) => {
                        let item = Item { record_id: Some(id.clone()), ..creates[i].clone() };
                        match self.update(api, t, &[&item], log).await.pop() {
                            Some(ItemResult::Written { record_id, .. }) => ItemResult::Written { record_id, created: false },
                            Some(other) => other,
                            None => ItemResult::Failed(Failure::new(DlqReason::RetriesExhausted, "no save result")),
                        }
                    }
                    Ok(None) => r.clone(),
                    Err(f) => ItemResult::Failed(f),
                };
            }
        }
        let mut created = created.into_iter();
        let mut updated = if updates.is_empty() { vec![] } else { self.update(api, t, &updates, log).await }.into_iter();
        items.iter().map(|i| if i.record_id.is_none() { created.next() } else { updated.next() }.expect("one result per item")).collect()
    }
}

impl Inspect for Salesforce {
    /// One `queryAll` per 200 ids: it returns deleted Tasks too (`IsDeleted`, the recycle
    /// bin), and `WhoId`, which follows a contact merge.
    async fn read(&self, api: &Api, t: &Tenant, wanted: &[Wanted], log: &mut Vec<Exchange>) -> Result<HashMap<String, Live>, Failure> {
        let mut fields: Vec<&str> = self.contract.fields.keys().map(String::as_str).collect();
        fields.extend(["Id", "IsDeleted", "WhoId"]);
        let mut out = HashMap::new();
        for chunk in wanted.chunks(COLLECTION_MAX) {
            let ids = chunk.iter().map(|w| format!("'{}'", w.record_id.replace(['\\', '\''], ""))).collect::<Vec<_>>().join(",");
            let soql = format!("SELECT {} FROM {} WHERE Id IN ({ids})", fields.join(", "), self.object());
            let mut path = self.data(&format!("/queryAll/?q={}", urlencode(&soql)));
            loop {
                let reply = self.call(api, t, Request::get(path, RequestClass::Read), log).await?;
                let body = reply.json();
                for r in body.get("records").and_then(Value::as_array).into_iter().flatten() {
                    let Some(id) = r.get("Id").and_then(Value::as_str) else { continue };
                    let live = if r.get("IsDeleted").and_then(Value::as_bool) == Some(true) {
                        Live::Deleted
                    } else {
                        let contact_id = r.get("WhoId").and_then(Value::as_str).map(str::to_string);
                        Live::Present { fields: r.as_object().cloned().unwrap_or_default(), contact_id }
                    };
                    out.insert(id.to_string(), live);
                }
                match body.get("nextRecordsUrl").and_then(Value::as_str) {
                    Some(next) if body.get("done").and_then(Value::as_bool) == Some(false) => path = next.to_string(),
                    _ => break,
                }
            }
        }
        for w in wanted {
            out.entry(w.record_id.clone()).or_insert(Live::Absent);
        }
        Ok(out)
    }

    async fn restore(
        &self,
        api: &Api,
        t: &Tenant,
        record_id: &str,
        fields: &Map<String, Value>,
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let req =
            Request::new(Method::PATCH, self.data(&format!("/sobjects/{}/{}", self.object(), urlencode(record_id))), RequestClass::Update)
                .body(Value::Object(fields.clone()));
        self.call(api, t, req, log).await.map(|_| ())
    }

    async fn schema_fields(&self, api: &Api, t: &Tenant, log: &mut Vec<Exchange>) -> Result<Option<BTreeSet<String>>, Failure> {
        let reply = self
            .call(api, t, Request::get(self.data(&format!("/sobjects/{}/describe/", self.object())), RequestClass::Schema), log)
            .await?;
        Ok(Some(
            reply
                .json()
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect(),
        ))
    }
}
