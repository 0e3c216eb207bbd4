//! The Zoho CRM connector (CRM-APIS §3): calls in the Calls module, created with the
//! multi-record insert (≤100 per call, per-record results) and updated by id. Zoho has no
//! upsert for Calls and no external ids there, so a custom field (the contract's
//! `key_field`) carries the idempotency key, and a COQL query by that field, which does not
//! lag behind writes the way search does, finds a record before anything is written again:
//! in recovery after an expired lease, and after an insert timed out or met a 5xx. Contacts
//! are found by phone with the module search (digits only), then compared in E.164.

pub mod errors;
pub mod limits;

use crate::api::{urlencode, Api, Exchange, Failure, Reply, Request, RequestClass};
use crate::auth::{AuthStyle, Credentials};
use crate::connector::{create_reading_before_resending, Connector, Inspect, Item, ItemResult, Live, ReadBeforeResend, Wanted};
use crate::contract::{Contract, WriteKind};
use crm_common::events::{Crm, CrmWriteRequest, DlqReason};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

const BATCH_MAX: usize = 100;
/// Values per COQL `in (…)`.
const COQL_IN_MAX: usize = 50;
const API: &str = "/crm/v7";
const CONTACT_PHONES: &[&str] = &["Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"];

pub struct Zoho {
    pub contract: Contract,
    /// The data centre's API domain when a tenant names none.
    pub default_base_url: String,
    pub default_token_url: String,
    /// The writer's HTTP timeout: how long a request may hold a concurrency slot.
    pub http_timeout: Duration,
}

pub struct Tenant {
    base_url: String,
    auth: Credentials,
    policy: limits::ZohoPolicy,
    region: phonenumber::country::Id,
}

/// A COQL string literal.
fn coql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Zoho {
    fn module(&self) -> &str {
        &self.contract.object
    }

    async fn call(&self, api: &Api, t: &Tenant, req: Request, log: &mut Vec<Exchange>) -> Result<Reply, Failure> {
        api.call(&t.policy, &t.base_url, &t.auth, &req, log).await
    }

    fn record(&self, item: &Item, kind: WriteKind) -> Value {
        let mut fields = self.contract.values(&item.req, kind);
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
    fn result(&self, r: Option<&Value>, status: u16, item: &Item) -> ItemResult {
        let Some(r) = r else {
            return ItemResult::Failed(Failure::new(DlqReason::RetriesExhausted, "Zoho's answer had no entry for this record"));
        };
        if r.get("status").and_then(Value::as_str) == Some("success") {
            let id = r.pointer("/details/id").and_then(Value::as_str).or(item.record_id.as_deref()).unwrap_or_default().to_string();
            return ItemResult::Written { record_id: id, created: item.record_id.is_none() };
        }
        let code = r.get("code").and_then(Value::as_str).unwrap_or("");
        let field = r.pointer("/details/api_name").and_then(Value::as_str).unwrap_or("");
        // The key field marked unique: the record a lost write made is ours.
        if code == "DUPLICATE_DATA" && field == self.contract.key_field {
            if let Some(id) = r.pointer("/details/duplicate_record/id").and_then(Value::as_str) {
                return ItemResult::Written { record_id: id.to_string(), created: false };
            }
        }
        let (mut reason, mut detail) = errors::reason_of(r, &self.contract.key_field);
        if item.record_id.is_some() && code == "INVALID_DATA" && field.is_empty() && r.pointer("/details/id").is_some() {
            // The call was deleted in Zoho: that decision stands.
            reason = DlqReason::Validation;
            detail = format!("the call was deleted in Zoho; not re-created ({detail})");
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

    async fn multi(&self, api: &Api, t: &Tenant, req: Request, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let reply = match self.call(api, t, req, log).await {
            Ok(r) => r,
            Err(f) => return items.iter().map(|_| ItemResult::Failed(f.clone())).collect(),
        };
        let body = reply.json();
        let data = body.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
        items.iter().enumerate().map(|(i, item)| self.result(data.get(i), reply.status, item)).collect()
    }

    async fn insert(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let records: Vec<Value> = items.iter().map(|i| self.record(i, WriteKind::Create)).collect();
        // `trigger: []`: no workflows, approvals or blueprints fire for logged calls.
        let req = Request::new(Method::POST, format!("{API}/{}", self.module()), RequestClass::Create)
            .body(json!({"data": records, "trigger": []}))
            .not_replay_safe()
            .fenced(items.iter().map(|i| i.req.idempotency_key.as_str()));
        self.multi(api, t, req, items, log).await
    }

    /// Records holding these keys: key → record id (COQL, which sees writes at once).
    async fn held_keys(&self, api: &Api, t: &Tenant, keys: &[&str], log: &mut Vec<Exchange>) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        let kf = &self.contract.key_field;
        for chunk in keys.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|k| coql_str(k)).collect::<Vec<_>>().join(", ");
            let q = format!("select id, {kf} from {} where {kf} in ({list}) limit 200", self.module());
            let req = Request::new(Method::POST, format!("{API}/coql"), RequestClass::Read).body(json!({"select_query": q}));
            let reply = self.call(api, t, req, log).await.map_err(|mut f| {
                if f.detail.contains(kf.as_str()) && f.detail.contains("INVALID_QUERY") {
                    f.reason = DlqReason::FieldRemoved;
                }
                f
            })?;
            // 204: nothing matched.
            for r in reply.json().get("data").and_then(Value::as_array).into_iter().flatten() {
                if let (Some(k), Some(id)) = (r.get(kf.as_str()).and_then(Value::as_str), r.get("id").and_then(Value::as_str)) {
                    found.entry(k.to_string()).or_insert_with(|| id.to_string());
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
        batch: &[&Item],
        _sent_at_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let keys: Vec<&str> = batch.iter().map(|i| i.req.idempotency_key.as_str()).collect();
        self.held_keys(api, t, &keys, log).await
    }
}

impl Connector for Zoho {
    type Tenant = Tenant;

    fn build(contract: Contract, urls: &crate::CrmUrls, http_timeout: std::time::Duration) -> Self {
        Self { contract, default_base_url: urls.zoho_api_url.clone(), default_token_url: urls.zoho_token_url.clone(), http_timeout }
    }

    fn crm(&self) -> Crm {
        Crm::Zoho
    }

    fn batch_max(&self) -> usize {
        BATCH_MAX
    }

    fn credentials<'a>(&self, t: &'a Tenant) -> &'a Credentials {
        &t.auth
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<Tenant, String> {
        let plan = limits::plan(conn)?;
        let (base_url, token_url) = match &conn.base_url {
            Some(b) => {
                let b = b.trim_end_matches('/').to_string();
                let token = conn.token_url.clone().unwrap_or_else(|| format!("{b}/oauth/v2/token"));
                (b, token)
            }
            None => (self.default_base_url.clone(), conn.token_url.clone().unwrap_or_else(|| self.default_token_url.clone())),
        };
        let auth = Credentials::from_env(
            &conn.credentials_secret,
            AuthStyle::bearer(AUTHORIZATION, "Zoho-oauthtoken ", token_url),
            format!("zoho:{}", tenant.id),
        )?;
        Ok(Tenant {
            base_url,
            auth,
            policy: limits::ZohoPolicy {
                tenant_id: tenant.id.clone(),
                plan,
                slot_lease: self.http_timeout + Duration::from_secs(5),
                throttled: AtomicU32::new(0),
            },
            region: tenant.default_region,
        })
    }

    async fn find_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(None) };
        let fields = format!("id,{}", CONTACT_PHONES.join(","));
        let req = Request::get(format!("{API}/Contacts/search?phone={digits}&fields={fields}&per_page=20"), RequestClass::Search)
            .audited_as(json!({"phone": crm_common::phone::mask(&digits)}));
        let reply = self.call(api, t, req, log).await?;
        // 204 No Content: nobody has the number.
        let found = reply.json().get("data").and_then(Value::as_array).into_iter().flatten().find_map(|r| {
            CONTACT_PHONES
                .iter()
                .any(|f| {
                    r.get(*f)
                        .and_then(Value::as_str)
                        .and_then(|raw| crm_common::phone::to_e164(raw, Some(t.region)).ok())
                        .is_some_and(|n| n == e164)
                })
                .then(|| r.get("id").and_then(Value::as_str).map(str::to_string))
                .flatten()
        });
        Ok(found)
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let req = Request::new(Method::POST, format!("{API}/Contacts"), RequestClass::Create)
            .body(json!({"data": [{"Last_Name": "Unknown caller", "Phone": e164}], "trigger": []}))
            .not_replay_safe();
        let reply = self.call(api, t, req, log).await?;
        let body = reply.json();
        match body.pointer("/data/0/details/id").and_then(Value::as_str) {
            Some(id) if body.pointer("/data/0/status").and_then(Value::as_str) == Some("success") => Ok(id.to_string()),
            _ => {
                let e = body.pointer("/data/0").cloned().unwrap_or(body);
                let (reason, detail) = errors::reason_of(&e, &self.contract.key_field);
                Err(Failure {
                    reason,
                    detail: format!("creating a contact: {detail}"),
                    status: Some(reply.status),
                    excerpt: Some(e.to_string()),
                    maybe_applied: false,
                    fenced_off: vec![],
                })
            }
        }
    }

    async fn find_created_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        // COQL sees writes at once; the contact was created with Phone = the E.164 value.
        let q = format!("select id from Contacts where Phone = {} limit 1", coql_str(e164));
        let req = Request::new(Method::POST, format!("{API}/coql"), RequestClass::Read)
            .body(json!({"select_query": q}))
            .audited_as(json!({"select_query": "select id from Contacts where Phone = '…' limit 1"}));
        let reply = self.call(api, t, req, log).await?;
        Ok(reply.json().pointer("/data/0/id").and_then(Value::as_str).map(str::to_string))
    }

    fn contact_read_back_lag(&self) -> Duration {
        Duration::ZERO
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &CrmWriteRequest,
        _since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        Ok(self.held_keys(api, t, &[req.idempotency_key.as_str()], log).await?.remove(&req.idempotency_key))
    }

    fn contract(&self) -> &Contract {
        &self.contract
    }

    async fn write(&self, api: &Api, t: &Tenant, items: &[Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let creates: Vec<&Item> = items.iter().filter(|i| i.record_id.is_none()).collect();
        let updates: Vec<&Item> = items.iter().filter(|i| i.record_id.is_some()).collect();
        let mut created =
            if creates.is_empty() { vec![] } else { create_reading_before_resending(self, api, t, &creates, log).await }.into_iter();
        let mut updated = if updates.is_empty() {
            vec![]
        } else {
            let records: Vec<Value> = updates.iter().map(|i| self.record(i, WriteKind::Update)).collect();
            let req = Request::new(Method::PUT, format!("{API}/{}", self.module()), RequestClass::Update)
                .body(json!({"data": records, "trigger": []}))
                .fenced(updates.iter().map(|i| i.req.idempotency_key.as_str()));
            self.multi(api, t, req, &updates, log).await
        }
        .into_iter();
        items.iter().map(|i| if i.record_id.is_none() { created.next() } else { updated.next() }.expect("one result per item")).collect()
    }
}

impl Inspect for Zoho {
    /// COQL by id (50 per query); ids it does not return are looked for in the recycle bin
    /// (`/deleted`, a few pages), else they are gone for good.
    async fn read(&self, api: &Api, t: &Tenant, wanted: &[Wanted], log: &mut Vec<Exchange>) -> Result<HashMap<String, Live>, Failure> {
        let mut fields: Vec<&str> = self.contract.fields.keys().map(String::as_str).filter(|f| *f != "id" && *f != "Who_Id").collect();
        fields.extend(["id", "Who_Id"]);
        let mut out = HashMap::new();
        for chunk in wanted.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|w| coql_str(&w.record_id)).collect::<Vec<_>>().join(", ");
            let q = format!("select {} from {} where id in ({list}) limit 200", fields.join(", "), self.module());
            let req = Request::new(Method::POST, format!("{API}/coql"), RequestClass::Read).body(json!({"select_query": q}));
            let reply = self.call(api, t, req, log).await?;
            for r in reply.json().get("data").and_then(Value::as_array).into_iter().flatten() {
                let Some(id) = r.get("id").and_then(Value::as_str) else { continue };
                let who = r.get("Who_Id");
                let contact_id = who.and_then(|w| w.get("id")).or(who).and_then(Value::as_str).map(str::to_string);
                out.insert(id.to_string(), Live::Present { fields: r.as_object().cloned().unwrap_or_default(), contact_id });
            }
        }
        let mut missing: HashSet<&str> = wanted.iter().map(|w| w.record_id.as_str()).filter(|id| !out.contains_key(*id)).collect();
        let mut page = 1;
        while !missing.is_empty() && page <= 5 {
            let req = Request::get(format!("{API}/{}/deleted?type=recycle&page={page}&per_page=200", self.module()), RequestClass::List);
            let reply = self.call(api, t, req, log).await?;
            let body = reply.json();
            for d in body.get("data").and_then(Value::as_array).into_iter().flatten() {
                if let Some(id) = d.get("id").and_then(Value::as_str) {
                    if missing.remove(id) {
                        out.insert(id.to_string(), Live::Deleted);
                    }
                }
            }
            if body.pointer("/info/more_records").and_then(Value::as_bool) != Some(true) {
                break;
            }
            page += 1;
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
        let req = Request::new(Method::PUT, format!("{API}/{}/{}", self.module(), urlencode(record_id)), RequestClass::Update)
            .body(json!({"data": [fields], "trigger": []}));
        let reply = self.call(api, t, req, log).await?;
        // A per-record error comes back inside `data` with a 2xx or 400.
        match reply.json().pointer("/data/0") {
            Some(r) if r.get("status").and_then(Value::as_str) != Some("success") => {
                let (reason, detail) = errors::reason_of(r, &self.contract.key_field);
                Err(Failure {
                    reason,
                    detail,
                    status: Some(reply.status),
                    excerpt: Some(r.to_string()),
                    maybe_applied: false,
                    fenced_off: vec![],
                })
            }
            _ => Ok(()),
        }
    }

    async fn schema_fields(&self, api: &Api, t: &Tenant, log: &mut Vec<Exchange>) -> Result<Option<BTreeSet<String>>, Failure> {
        let reply =
            self.call(api, t, Request::get(format!("{API}/settings/fields?module={}", self.module()), RequestClass::Schema), log).await?;
        Ok(Some(
            reply
                .json()
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.get("api_name").and_then(Value::as_str))
                .map(str::to_string)
                .collect(),
        ))
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
