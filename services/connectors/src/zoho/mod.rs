//! The Zoho CRM connector (CRM-APIS §3): calls in the Calls module, created with the
//! multi-record insert (≤100 per call, per-record results) and updated by id. Zoho has no
//! upsert for Calls and no external ids there, so a custom field (the contract's
//! `key_field`) carries the idempotency key, and a COQL query by that field, which does not
//! lag behind writes the way search does, finds a record before anything is written again:
//! in recovery after an expired lease, and after an insert timed out or met a 5xx. Contacts
//! are found by phone with the module search (digits only), then compared in E.164.

pub mod errors;
pub mod limits;
pub mod wire;

use crate::api::{urlencode, Api, Exchange, Failure, Reply, Request, RequestClass};
use crate::auth::AuthStyle;
use crate::client::{endpoints, TenantClient};
use crate::connector::{
    create_reading_before_resending, missing_are, Connector, Inspect, Item, ItemResult, Live, ReadBeforeResend, TenantOf, Wanted,
};
use crate::contract::{Contracts, WriteKind};
use crm_common::events::{Crm, DlqReason, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use wire::{Data, Fields, Lookup, Outcome, Row};

const BATCH_MAX: usize = 100;
/// Values per COQL `in (…)`.
const COQL_IN_MAX: usize = 50;
const API: &str = "/crm/v7";
const CONTACT_PHONES: &[&str] = &["Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"];

pub struct Zoho {
    /// Every kind's contract (Zoho writes calls only, so far).
    pub contracts: Contracts,
    /// The data centre's API domain when a tenant names none.
    pub default_base_url: String,
    pub default_token_url: String,
    /// The writer's HTTP timeout: how long a request may hold a concurrency slot.
    pub http_timeout: Duration,
}

type Tenant = TenantClient<limits::ZohoPolicy>;

/// A COQL string literal.
fn coql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A COQL query (it sees writes at once).
fn coql(q: String) -> Request {
    Request::new(Method::POST, format!("{API}/coql"), RequestClass::Read).body(json!({"select_query": q}))
}

/// An error result of one record, or of the whole call.
fn failed(e: Outcome, status: u16) -> Failure {
    let (reason, detail) = errors::reason_of(&e);
    Failure { status: Some(status), excerpt: serde_json::to_string(&e).ok(), ..Failure::new(reason, detail) }
}

impl Zoho {
    fn module(&self) -> &str {
        &self.contract().object
    }

    fn record(&self, item: &Item, kind: WriteKind) -> Value {
        let mut fields = self.contract().values(&item.req, kind);
        match kind {
            WriteKind::Create => {
                if let Some(c) = &item.contact_id {
                    fields.insert("Who_Id".into(), json!({"id": c}));
                }
            }
            WriteKind::Update => {
                fields.insert("id".into(), json!(item.record_id));
            }
        }
        Value::Object(fields)
    }

    /// One record's entry of a multi-record answer.
    fn result(&self, r: Option<Outcome>, status: u16, item: &Item) -> ItemResult {
        let Some(r) = r else {
            return ItemResult::Failed(Failure::unknown_outcome("Zoho's answer had no entry for this record", Some(status)));
        };
        if r.succeeded() {
            return match r.details.id.as_deref().or(item.record_id.as_deref()) {
                Some(id) => ItemResult::Written { record_id: id.to_string(), created: item.record_id.is_none() },
                None => ItemResult::Failed(Failure::unknown_outcome("Zoho answered SUCCESS without the record's id", Some(status))),
            };
        }
        // The key field marked unique: the record a lost write made is ours.
        if r.code == "DUPLICATE_DATA" && r.field() == self.contract().key_field {
            if let Some(dup) = &r.details.duplicate_record {
                return ItemResult::Written { record_id: dup.id.clone(), created: false };
            }
        }
        let deleted = item.record_id.is_some() && r.code == "INVALID_DATA" && r.field().is_empty() && r.details.id.is_some();
        let mut f = failed(r, status);
        if deleted {
            // The call was deleted in Zoho: that decision stands.
            f.reason = DlqReason::Validation;
            f.detail = format!("the call was deleted in Zoho; not re-created ({})", f.detail);
        }
        ItemResult::Failed(f)
    }

    /// A multi-record write (`PUT` or `POST` on the module): one result per item, in order.
    async fn multi(&self, api: &Api, t: &Tenant, req: Request, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let answer = match t.call(api, &req, log).await {
            Ok(reply) => reply.parse::<Data<Outcome>>().map(|d| (reply.status, d.rows())),
            Err(f) => Err(f),
        };
        match answer {
            Ok((status, rows)) => {
                let mut rows = rows.into_iter();
                items.iter().map(|item| self.result(rows.next(), status, item)).collect()
            }
            Err(f) => items.iter().map(|_| ItemResult::Failed(f.clone())).collect(),
        }
    }

    /// Sends `data` to the module (`POST` creates, `PUT` updates), fenced on the items' keys.
    /// `trigger: []`: no workflows, approvals or blueprints fire for logged calls.
    fn write_request(&self, method: Method, class: RequestClass, items: &[&Item], kind: WriteKind) -> Request {
        let records: Vec<Value> = items.iter().map(|i| self.record(i, kind)).collect();
        Request::new(method, format!("{API}/{}", self.module()), class)
            .body(json!({"data": records, "trigger": []}))
            .fenced(items.iter().map(|i| i.req.idempotency_key()))
    }

    async fn insert(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let req = self.write_request(Method::POST, RequestClass::Create, items, WriteKind::Create).not_replay_safe();
        self.multi(api, t, req, items, log).await
    }

    /// Records holding these keys: key → record id (COQL, which sees writes at once).
    async fn held_keys(&self, api: &Api, t: &Tenant, keys: &[&str], log: &mut Vec<Exchange>) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        let kf = &self.contract().key_field;
        for chunk in keys.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|k| coql_str(k)).collect::<Vec<_>>().join(", ");
            let q = format!("select id, {kf} from {} where {kf} in ({list}) limit 200", self.module());
            // 204: nothing matched.
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                if let (Some(k), Some(id)) = (r.field(kf), &r.id) {
                    found.entry(k.to_string()).or_insert_with(|| id.clone());
                }
            }
        }
        Ok(found)
    }
}

impl ReadBeforeResend for Zoho {
    async fn send(&self, api: &Api, t: &Tenant, batch: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        self.insert(api, t, batch, log).await
    }

    async fn held(
        &self,
        api: &Api,
        t: &Tenant,
        _kind: crm_common::events::ActivityKind,
        keys: &[&str],
        _sent_at_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        self.held_keys(api, t, keys, log).await
    }
}

impl Connector for Zoho {
    type Policy = limits::ZohoPolicy;

    fn build(contracts: Contracts, urls: &crate::CrmUrls, http_timeout: std::time::Duration) -> Self {
        Self { contracts, default_base_url: urls.zoho_api_url.clone(), default_token_url: urls.zoho_token_url.clone(), http_timeout }
    }

    fn crm(&self) -> Crm {
        Crm::Zoho
    }

    fn batch_max(&self) -> usize {
        BATCH_MAX
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<TenantOf<Self>, String> {
        let (base_url, token_url) = endpoints(conn, &self.default_base_url, Some(&self.default_token_url), "/oauth/v2/token");
        let style = AuthStyle::bearer(AUTHORIZATION, "Zoho-oauthtoken ", token_url);
        TenantClient::connect(Crm::Zoho, tenant, conn, base_url, style, |_| {
            Ok(limits::ZohoPolicy {
                tenant_id: tenant.id.clone(),
                plan: limits::plan(conn)?,
                slot_lease: self.http_timeout + Duration::from_secs(5),
                throttled: AtomicU32::new(0),
            })
        })
    }

    async fn find_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(None) };
        let fields = format!("id,{}", CONTACT_PHONES.join(","));
        let req = Request::get(format!("{API}/Contacts/search?phone={digits}&fields={fields}&per_page=20"), RequestClass::Search)
            .audited_as(json!({"phone": crm_common::phone::mask(&digits)}));
        // 204 No Content: nobody has the number.
        let rows = t.fetch::<Data<Row>>(api, &req, log).await?.rows();
        let found = rows.into_iter().find(|r| CONTACT_PHONES.iter().any(|f| r.field(f).is_some_and(|raw| t.same_number(raw, e164))));
        Ok(found.and_then(|r| r.id))
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let req = Request::new(Method::POST, format!("{API}/Contacts"), RequestClass::Create)
            .body(json!({"data": [{"Last_Name": "Unknown caller", "Phone": e164}], "trigger": []}))
            .not_replay_safe();
        let reply = t.call(api, &req, log).await?;
        let r = reply.parse::<Data<Outcome>>()?.rows().into_iter().next().unwrap_or_default();
        match &r.details.id {
            Some(id) if r.succeeded() => Ok(id.clone()),
            _ => {
                let mut f = failed(r, reply.status);
                f.detail = format!("creating a contact: {}", f.detail);
                Err(f)
            }
        }
    }

    async fn find_created_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        // COQL sees writes at once; the contact was created with Phone = the E.164 value.
        let req = coql(format!("select id from Contacts where Phone = {} limit 1", coql_str(e164)))
            .audited_as(json!({"select_query": "select id from Contacts where Phone = '…' limit 1"}));
        Ok(t.fetch::<Data<Row>>(api, &req, log).await?.rows().into_iter().find_map(|r| r.id))
    }

    fn contact_read_back_lag(&self) -> Duration {
        Duration::ZERO
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &WriteRequest,
        _since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        Ok(self.held_keys(api, t, &[req.idempotency_key()], log).await?.remove(req.idempotency_key()))
    }

    fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    async fn create_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        create_reading_before_resending(self, api, t, items, log).await
    }

    async fn update_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let req = self.write_request(Method::PUT, RequestClass::Update, items, WriteKind::Update);
        self.multi(api, t, req, items, log).await
    }
}

impl Inspect for Zoho {
    /// COQL by id (50 per query); ids it does not return are looked for in the recycle bin
    /// (`/deleted`, a few pages), else they are gone for good.
    async fn read(&self, api: &Api, t: &Tenant, wanted: &[Wanted], log: &mut Vec<Exchange>) -> Result<HashMap<String, Live>, Failure> {
        let mut fields: Vec<&str> = self.contract().fields.keys().map(String::as_str).filter(|f| *f != "id" && *f != "Who_Id").collect();
        fields.extend(["id", "Who_Id"]);
        let mut out = HashMap::new();
        for chunk in wanted.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|w| coql_str(&w.record_id)).collect::<Vec<_>>().join(", ");
            let q = format!("select {} from {} where id in ({list}) limit 200", fields.join(", "), self.module());
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                let Some(id) = r.id else { continue };
                let contact_id = r.who.as_ref().and_then(Lookup::id).map(str::to_string);
                out.insert(id, Live::Present { fields: r.fields, contact_id });
            }
        }
        let mut missing: HashSet<&str> = wanted.iter().map(|w| w.record_id.as_str()).filter(|id| !out.contains_key(*id)).collect();
        let mut page = 1;
        while !missing.is_empty() && page <= 5 {
            let req = Request::get(format!("{API}/{}/deleted?type=recycle&page={page}&per_page=200", self.module()), RequestClass::List);
            let deleted: Data<Row> = t.fetch(api, &req, log).await?;
            let more = deleted.info.more_records;
            for id in deleted.rows().into_iter().filter_map(|d| d.id) {
                if missing.remove(id.as_str()) {
                    out.insert(id, Live::Deleted);
                }
            }
            if !more {
                break;
            }
            page += 1;
        }
        Ok(missing_are(out, wanted, Live::Absent))
    }

    fn restore_request(&self, record_id: &str, fields: &Map<String, Value>) -> Request {
        Request::new(Method::PUT, format!("{API}/{}/{}", self.module(), urlencode(record_id)), RequestClass::Update)
            .body(json!({"data": [fields], "trigger": []}))
    }

    /// A per-record error comes back inside `data` with a 2xx or 400.
    fn restored(&self, reply: &Reply) -> Result<(), Failure> {
        match reply.parse::<Data<Outcome>>()?.rows().into_iter().next() {
            Some(r) if !r.succeeded() => Err(failed(r, reply.status)),
            _ => Ok(()),
        }
    }

    async fn schema_fields(&self, api: &Api, t: &Tenant, log: &mut Vec<Exchange>) -> Result<Option<BTreeSet<String>>, Failure> {
        let req = Request::get(format!("{API}/settings/fields?module={}", self.module()), RequestClass::Schema);
        Ok(Some(t.fetch::<Fields>(api, &req, log).await?.fields.into_iter().map(|f| f.api_name).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coql_literals_escape_quotes() {
        assert_eq!(coql_str("acme:c1:zoho"), "'acme:c1:zoho'");
        assert_eq!(coql_str("a'b\\c"), r"'a\'b\\c'");
    }
}
