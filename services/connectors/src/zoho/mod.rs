//! The Zoho CRM connector (CRM-APIS §3): calls in the Calls module, created with the
//! multi-record insert (≤100 per call, per-record results) and updated by id. Zoho has no
//! upsert for Calls and no external ids there, so a custom field (the contract's
//! `key_field`) carries the idempotency key, and a COQL query by that field, which does not
//! lag behind writes the way search does, finds a record before anything is written again:
//! in recovery after an expired lease, and after an insert timed out or met a 5xx. Contacts
//! are found by phone with the module search (digits only), then compared in E.164.
//!
//! Meetings (`contracts/zoho.meeting.toml`) are records of the Events module on the same
//! path: the key in a custom field, read back with COQL. Matched attendees are the event's
//! Participants (type contact), the first its Who_Id; a later version reads the event and
//! sends the union when it grows. A cancelled meeting gets the contract's title prefix, and
//! the cancel action where Zoho takes it (invitees, not yet ended).
//!
//! Emails (`contracts/zoho.email.toml`) cannot be inserted: `associate_email` attaches each
//! to one record's Emails related list (the first participant that is a contact; an email
//! with none is skipped, audited), keyed by its Message-ID, which `email_available` finds
//! before anything is sent again (after `ZOHO_SEARCH_LAG`: whether it lags is not known).
//! An associated email cannot be edited: a later version changes nothing. Contacts are
//! matched to addresses with the module search, ten addresses per search.

pub mod errors;
pub mod limits;
mod people;
pub mod wire;

use crate::api::{urlencode, Api, Exchange, Failure, Reply, Request, RequestClass};
use crate::auth::AuthStyle;
use crate::client::{endpoints, TenantClient};
use crate::connector::{
    create_reading_before_resending, missing_are, not_yet_linked, Attribution, Connector, Inspect, Item, ItemResult, Live,
    ReadBeforeResend, TenantOf, Wanted,
};
use crate::connector::{KeyFieldCheck, Provisioned, Schema};
use crate::context::{ContactContext, OpenDeal};
use crate::contract::{Contracts, WriteKind};
use crm_common::events::{ActivityKind, Crm, DlqReason, EmailAddress, MeetingStatus, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU32;
use std::time::Duration;
use wire::{Availability, Data, Event, Fields, Lookup, Outcome, Row};

const BATCH_MAX: usize = 100;
/// Values per COQL `in (…)`.
const COQL_IN_MAX: usize = 50;
/// Emails per `associate_email` call (the OAS's `maxItems`).
const EMAILS_MAX: usize = 50;
/// Criteria per search (Zoho takes up to ten in one `criteria`).
const CRITERIA_MAX: usize = 10;
/// The most pages of users read in one lookup (200 each): an org's seats, with room.
const USER_PAGES_MAX: usize = 50;
const API: &str = "/crm/v7";
const CONTACT_PHONES: &[&str] = &["Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"];

pub struct Zoho {
    /// Every kind's contract (calls; emails and meetings where the deployment has theirs).
    pub contracts: Contracts,
    /// The data centre's API domain when a tenant names none.
    pub default_base_url: String,
    pub default_token_url: String,
    /// The writer's HTTP timeout: how long a request may hold a concurrency slot.
    pub http_timeout: Duration,
    /// How far `email_available` may lag behind `associate_email` (unknown: taken as
    /// search's lag, the harsher case).
    pub search_lag: Duration,
}

type Tenant = TenantClient<limits::ZohoPolicy>;

/// A COQL string literal.
fn coql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A value inside a search `criteria`: its commas and parentheses escaped.
fn criteria_value(s: &str) -> String {
    s.replace('\\', "\\\\").replace(',', "\\,").replace('(', "\\(").replace(')', "\\)")
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
    /// The one result of a single-record write (a contact, a lead's person): Ok with it on
    /// success, else its Failure (the answer kept whole, DUPLICATE_DATA's record with it).
    async fn one_result(&self, api: &Api, t: &Tenant, req: &Request, log: &mut Vec<Exchange>) -> Result<Outcome, Failure> {
        let reply = t.call(api, req, log).await?;
        let r = reply.parse::<Data<Outcome>>()?.rows().into_iter().next().unwrap_or_default();
        if r.succeeded() {
            Ok(r)
        } else {
            Err(failed(r, reply.status))
        }
    }

    /// The module a kind's records live in (Calls, Events; Emails is a related list).
    fn module(&self, kind: ActivityKind) -> &str {
        &self.contract_of(kind).object
    }

    fn record(&self, item: &Item, kind: WriteKind) -> Value {
        let mut fields = item.values(self, kind);
        match kind {
            WriteKind::Create => {
                if let Some(c) = item.linked_contacts().first() {
                    fields.insert("Who_Id".into(), json!({"id": c}));
                }
                if item.req.kind() == ActivityKind::Meeting && !item.contacts.is_empty() {
                    let people: Vec<Value> = item.contacts.iter().map(|c| json!({"type": "contact", "participant": c})).collect();
                    fields.insert("Participants".into(), json!(people));
                }
                // One "what": the chosen deal, else the contact's account.
                let what = match (&item.context.deal, &item.context.company) {
                    (Some(d), _) => Some((d, "Deals")),
                    (None, Some(a)) => Some((a, "Accounts")),
                    _ => None,
                };
                if let Some((id, module)) = what {
                    fields.insert("What_Id".into(), json!({"id": id}));
                    fields.insert("$se_module".into(), json!(module));
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
        if r.code == "DUPLICATE_DATA" && r.field() == item.contract(self).key_field {
            if let Some(dup) = &r.details.duplicate_record {
                return ItemResult::Written { record_id: dup.id.clone(), created: false };
            }
        }
        let deleted = item.record_id.is_some() && r.code == "INVALID_DATA" && r.field().is_empty() && r.details.id.is_some();
        let mut f = failed(r, status);
        if deleted {
            // The call was deleted in Zoho: that decision stands.
            f.reason = DlqReason::Validation;
            f.detail = format!("the {} was deleted in Zoho; not re-created ({})", item.req.kind().as_str(), f.detail);
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
        self.write_records(method, class, items, items.iter().map(|i| self.record(i, kind)).collect())
    }

    /// `records` (one per item, in order) to the items' module, fenced on their keys.
    fn write_records(&self, method: Method, class: RequestClass, items: &[&Item], records: Vec<Value>) -> Request {
        let kind = items.first().map_or(ActivityKind::Call, |i| i.req.kind());
        Request::new(method, format!("{API}/{}", self.module(kind)), class)
            .body(json!({"data": records, "trigger": []}))
            .fenced(items.iter().map(|i| i.req.idempotency_key()))
    }

    async fn insert(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let req = self.write_request(Method::POST, RequestClass::Create, items, WriteKind::Create).not_replay_safe();
        let out = self.multi(api, t, req, items, log).await;
        self.cancel_written(api, t, items, &out, &HashSet::new(), log).await;
        out
    }

    /// Records of `kind` holding these keys: key → record id (COQL, which sees writes at once).
    async fn held_keys(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        keys: &[&str],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        let contract = self.contract_of(kind);
        let kf = &contract.key_field;
        for chunk in keys.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|k| coql_str(k)).collect::<Vec<_>>().join(", ");
            let q = format!("select id, {kf} from {} where {kf} in ({list}) limit 200", contract.object);
            // 204: nothing matched.
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                if let (Some(k), Some(id)) = (r.field(kf), &r.id) {
                    found.entry(k.to_string()).or_insert_with(|| id.clone());
                }
            }
        }
        Ok(found)
    }

    /// Which of these emails Zoho holds already (key → the record it hangs on: its related
    /// list does not carry the Message-ID, so the email's own id cannot be found again).
    /// One `email_available` per email.
    async fn held_emails(
        &self,
        api: &Api,
        t: &Tenant,
        reqs: &[&WriteRequest],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for r in reqs {
            let WriteRequest::Email { email, .. } = r else { continue };
            let mid = format!("<{}>", email.message_id);
            let req = Request::get(format!("{API}/actions/email_available?orginal_message_id={}", urlencode(&mid)), RequestClass::Read);
            let a: Availability = t.fetch(api, &req, log).await?;
            if a.available {
                // The record it hangs on; failing that, the Message-ID names it in Zoho.
                let at = a.record.and_then(|r| r.id).unwrap_or(mid);
                found.insert(r.idempotency_key().to_string(), at);
            }
        }
        Ok(found)
    }

    /// Emails attached to their first matched contact, `EMAILS_MAX` per call to each
    /// contact; one with no contact is skipped (Zoho keeps emails only on a record).
    async fn associate(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let mut out: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut by_contact: Vec<(String, Vec<usize>)> = vec![];
        for (i, item) in items.iter().enumerate() {
            match item.linked_contacts().first() {
                None => {
                    out[i] = Some(ItemResult::Skipped {
                        why: format!(
                            "no participant's address is a Zoho contact ({} searched), and Zoho keeps an email only on a record: not written; a replay once a contact has the address writes it",
                            item.req.participants().len()
                        ),
                    })
                }
                Some(c) => match by_contact.iter_mut().find(|(k, _)| k == c) {
                    Some((_, v)) => v.push(i),
                    None => by_contact.push((c.clone(), vec![i])),
                },
            }
        }
        for (contact, idx) in by_contact {
            for chunk in idx.chunks(EMAILS_MAX) {
                let batch: Vec<&Item> = chunk.iter().map(|&i| items[i]).collect();
                let emails: Vec<Value> = batch.iter().map(|i| self.email(i)).collect();
                let req = Request::new(
                    Method::POST,
                    format!("{API}/Contacts/{}/actions/associate_email", urlencode(&contact)),
                    RequestClass::Create,
                )
                .body(json!({"Emails": emails}))
                .not_replay_safe()
                .fenced(batch.iter().map(|i| i.req.idempotency_key()));
                let answer = match t.call(api, &req, log).await {
                    Ok(reply) => reply.parse::<Data<Outcome>>().map(|d| (reply.status, d.rows())),
                    Err(f) => Err(f),
                };
                let results: Vec<ItemResult> = match answer {
                    Ok((status, rows)) => {
                        let mut rows = rows.into_iter();
                        batch.iter().map(|_| self.associated(rows.next(), status)).collect()
                    }
                    Err(mut f) => {
                        // INVALID_DATA naming the record: the contact it was to hang on is
                        // gone (deleted or merged away); a replay matches again.
                        let answer = f.excerpt.as_deref().and_then(|e| serde_json::from_str::<Outcome>(e).ok());
                        if f.status == Some(400)
                            && answer.is_some_and(|o| o.code == "INVALID_DATA" && o.details.id.as_deref() == Some(contact.as_str()))
                        {
                            f.reason = DlqReason::ContactDeleted;
                        }
                        batch.iter().map(|_| ItemResult::Failed(f.clone())).collect()
                    }
                };
                for (&i, r) in chunk.iter().zip(results) {
                    out[i] = Some(r);
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no answer for this email", None))))
            .collect()
    }

    /// One email's entry of an `associate_email` answer.
    fn associated(&self, r: Option<Outcome>, status: u16) -> ItemResult {
        match r {
            None => ItemResult::Failed(Failure::unknown_outcome("Zoho's answer had no entry for this email", Some(status))),
            Some(r) if r.succeeded() => match r.details.message_id {
                Some(id) => ItemResult::Written { record_id: id, created: true },
                None => ItemResult::Failed(Failure::unknown_outcome("Zoho associated the email without its message id", Some(status))),
            },
            Some(r) => ItemResult::Failed(failed(r, status)),
        }
    }

    /// An email as `associate_email` takes it: the contract's fields, and From, To and Cc
    /// as Zoho's `{user_name, email}` (Bcc is left out: the recipients never saw it).
    fn email(&self, item: &Item) -> Value {
        let mut fields = item.values(self, WriteKind::Create);
        if let WriteRequest::Email { email, .. } = &item.req {
            let person = |a: &EmailAddress| json!({"user_name": a.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| a.email.clone()), "email": a.email});
            let mut to: Vec<Value> = email.to.iter().map(person).collect();
            if to.is_empty() {
                // Zoho wants a To; a message sent to Bcc only was the actor's.
                to.push(json!({"user_name": email.actor_email, "email": email.actor_email}));
            }
            fields.insert("from".into(), person(&email.from));
            fields.insert("to".into(), json!(to));
            fields.insert("cc".into(), json!(email.cc.iter().map(person).collect::<Vec<_>>()));
        }
        Value::Object(fields)
    }

    /// Meetings to update: each event read first where attendees matched (setting
    /// Participants replaces them: the union is sent, only when it grows; an empty Who_Id
    /// is filled), then one multi-record PUT, then the cancel action for those cancelled now.
    async fn update_meetings(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let mut out: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut records = vec![];
        let mut sending = vec![];
        let mut cancelled_already = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let mut record = self.record(item, WriteKind::Update);
            let id = item.record_id.clone().unwrap_or_default();
            // Without matched contacts there is nothing to add and no cancel action to take
            // (Zoho refuses it without invitees): no read.
            if !item.contacts.is_empty() {
                let read = Request::get(format!("{API}/{}/{}", self.module(ActivityKind::Meeting), urlencode(&id)), RequestClass::Read);
                let now = match t.fetch::<Data<Event>>(api, &read, log).await {
                    Ok(d) => d.rows().into_iter().next(),
                    Err(f) => {
                        out[i] = Some(ItemResult::Failed(f));
                        continue;
                    }
                };
                // 204: the event is not there (deleted in Zoho).
                let Some(now) = now else {
                    out[i] = Some(ItemResult::Failed(Failure {
                        status: Some(204),
                        ..Failure::new(DlqReason::Validation, "the meeting was deleted in Zoho; not re-created")
                    }));
                    continue;
                };
                if now.cancelled {
                    cancelled_already.insert(id.clone());
                }
                let linked = now.contact_participants();
                let new = not_yet_linked(&linked, &item.contacts);
                if !new.is_empty() {
                    let mut all = now.participants_as_sent();
                    all.extend(new.iter().map(|c| json!({"type": "contact", "participant": c})));
                    record["Participants"] = json!(all);
                }
                if now.who.is_none() {
                    if let Some(c) = item.contacts.first() {
                        record["Who_Id"] = json!({"id": c});
                    }
                }
            }
            records.push(record);
            sending.push(i);
        }
        if !sending.is_empty() {
            let batch: Vec<&Item> = sending.iter().map(|&i| items[i]).collect();
            let req = self.write_records(Method::PUT, RequestClass::Update, &batch, records);
            let results = self.multi(api, t, req, &batch, log).await;
            self.cancel_written(api, t, &batch, &results, &cancelled_already, log).await;
            for (&i, r) in sending.iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::Failed(Failure::unknown_outcome("no answer for this meeting", None))))
            .collect()
    }

    /// The cancel action on each written meeting the calendar cancelled (and Zoho does not
    /// show cancelled yet). Zoho refuses it for a meeting without invitees or already over:
    /// then the title's prefix is the mark. Its answer does not change the write's outcome
    /// (the record is written; the exchange is audited either way).
    async fn cancel_written(
        &self,
        api: &Api,
        t: &Tenant,
        items: &[&Item],
        results: &[ItemResult],
        already: &HashSet<String>,
        log: &mut Vec<Exchange>,
    ) {
        for (item, r) in items.iter().zip(results) {
            let (WriteRequest::Meeting { meeting, .. }, ItemResult::Written { record_id, .. }) = (&item.req, r) else { continue };
            if meeting.status != MeetingStatus::Cancelled || already.contains(record_id) {
                continue;
            }
            // Zoho refuses it for a meeting already over or without invitees: no request
            // spent on a known refusal.
            if meeting.end_at <= crm_common::clock::now_ms() || item.contacts.is_empty() {
                continue;
            }
            let req = Request::new(Method::POST, format!("{API}/Events/{}/actions/cancel", urlencode(record_id)), RequestClass::Update)
                .body(json!({"data": [{"send_cancelling_mail": false}]}))
                .fenced([item.req.idempotency_key()]);
            if let Err(f) = t.call(api, &req, log).await {
                tracing::info!(record = %record_id, detail = %f.detail, "Zoho did not take the cancel action; the title marks the meeting cancelled");
            }
        }
    }
}

impl ReadBeforeResend for Zoho {
    async fn send(&self, api: &Api, t: &Tenant, batch: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        match batch.first().map(|i| i.req.kind()) {
            Some(ActivityKind::Email) => self.associate(api, t, batch, log).await,
            _ => self.insert(api, t, batch, log).await,
        }
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
        if kind == ActivityKind::Email {
            return self.held_emails(api, t, reqs, log).await;
        }
        let keys: Vec<&str> = reqs.iter().map(|r| r.idempotency_key()).collect();
        self.held_keys(api, t, kind, &keys, log).await
    }
}

impl Connector for Zoho {
    type Policy = limits::ZohoPolicy;

    fn build(contracts: Contracts, urls: &crate::CrmUrls, http_timeout: std::time::Duration) -> Self {
        Self {
            contracts,
            default_base_url: urls.zoho_api_url.clone(),
            default_token_url: urls.zoho_token_url.clone(),
            http_timeout,
            search_lag: urls.zoho_search_lag,
        }
    }

    fn crm(&self) -> Crm {
        Crm::Zoho
    }

    fn supported_kinds(&self) -> &'static [ActivityKind] {
        &[ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]
    }

    fn read_back_lag(&self, kind: ActivityKind) -> Duration {
        if kind == ActivityKind::Email {
            self.search_lag
        } else {
            Duration::ZERO
        }
    }

    /// The module search, `CRITERIA_MAX` addresses per search (`(Email:equals:…)or…`), its
    /// hits compared with the addresses case-insensitively here. It lags behind writes (a
    /// contact created a moment ago is not found yet).
    async fn find_contacts_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for chunk in emails.chunks(CRITERIA_MAX) {
            let criteria = chunk.iter().map(|e| format!("(Email:equals:{})", criteria_value(e))).collect::<Vec<_>>().join("or");
            let criteria = if chunk.len() > 1 { format!("({criteria})") } else { criteria };
            let req = Request::get(
                format!("{API}/Contacts/search?criteria={}&fields=id,Email&per_page=200", urlencode(&criteria)),
                RequestClass::Search,
            );
            // 204: nobody has any of them.
            for r in t.fetch::<Data<Row>>(api, &req, log).await?.rows() {
                let (Some(id), Some(addr)) = (&r.id, r.field("Email")) else { continue };
                if let Some(e) = chunk.iter().find(|e| e.eq_ignore_ascii_case(addr.trim())) {
                    found.entry(e.clone()).or_insert_with(|| id.clone());
                }
            }
        }
        Ok(found)
    }

    /// Contacts' accounts (`Account_Name`) and their deals not in a closed stage (a deal's
    /// `Contact_Name`), by COQL: two queries per 50 contacts. A stage whose name starts with
    /// "Closed" (Closed Won, Closed Lost, Closed-Lost to Competition) is closed; stage
    /// metadata (`forecast_type`) is not read (unverified).
    async fn find_context(
        &self,
        api: &Api,
        t: &Tenant,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, ContactContext>, Failure> {
        let mut out: HashMap<String, ContactContext> = HashMap::new();
        let lookup_id = |v: Option<&Value>| {
            v.and_then(|v| v.get("id").or(Some(v)))
                .and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_u64().map(|n| n.to_string())))
        };
        for chunk in contacts.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|c| coql_str(c)).collect::<Vec<_>>().join(", ");
            let q = format!("select id, Account_Name from Contacts where id in ({list}) limit 200");
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                let Some(id) = r.id else { continue };
                out.entry(id).or_default().company = lookup_id(r.fields.get("Account_Name"));
            }
            let q = format!("select id, Contact_Name, Stage, Modified_Time from Deals where Contact_Name in ({list}) limit 2000");
            for d in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                let (Some(id), Some(contact)) = (d.id.clone(), lookup_id(d.fields.get("Contact_Name"))) else { continue };
                if d.field("Stage").is_some_and(|s| s.trim_start().to_ascii_lowercase().starts_with("closed")) {
                    continue;
                }
                let updated_ms =
                    d.field("Modified_Time").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map_or(0, |t| t.timestamp_millis());
                out.entry(contact).or_default().open_deals.push(OpenDeal { id, updated_ms });
            }
        }
        Ok(out)
    }

    /// Zoho's users API has no email filter: the active users are listed (200 a page, the
    /// most it gives) and matched here; every one found is returned, so the writer caches
    /// them all and a tenant's owners cost a listing per TTL (CRM-APIS-ACTIVITIES §3.3).
    async fn find_owners_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let _ = emails;
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for page in 1..=USER_PAGES_MAX {
            let req = Request::get(format!("{API}/users?type=ActiveUsers&page={page}&per_page=200"), RequestClass::List);
            // 204: no users of that type.
            let users: wire::Users = t.fetch(api, &req, log).await?;
            for u in users.users {
                if u.status.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("active")) {
                    continue;
                }
                if let Some(e) = u.email.as_deref().map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty()) {
                    seen.entry(e).or_default().push(u.id);
                }
            }
            if !users.info.more_records {
                break;
            }
        }
        Ok(seen.into_iter().filter(|(_, ids)| ids.len() == 1).map(|(e, mut ids)| (e, ids.remove(0))).collect())
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
        let r =
            self.one_result(api, t, &req, log).await.map_err(|f| Failure { detail: format!("creating a contact: {}", f.detail), ..f })?;
        r.details.id.ok_or_else(|| Failure::unknown_outcome("creating a contact: Zoho answered SUCCESS without the contact's id", None))
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
        Ok(self.held(api, t, req.kind(), &[req], 0, log).await?.remove(req.idempotency_key()))
    }

    fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    async fn create_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        create_reading_before_resending(self, api, t, items, log).await
    }

    async fn update_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        match items.first().map(|i| i.req.kind()) {
            // An associated email cannot be edited in Zoho: it stays as it was sent.
            Some(ActivityKind::Email) => {
                items.iter().map(|i| ItemResult::Written { record_id: i.record_id.clone().unwrap_or_default(), created: false }).collect()
            }
            Some(ActivityKind::Meeting) => self.update_meetings(api, t, items, log).await,
            _ => {
                let req = self.write_request(Method::PUT, RequestClass::Update, items, WriteKind::Update);
                self.multi(api, t, req, items, log).await
            }
        }
    }
}

impl Inspect for Zoho {
    /// Calls and meetings: records read back by id. An email hangs on a contact's related
    /// list, which does not carry the Message-ID: not read back.
    fn inspects(&self) -> Vec<ActivityKind> {
        self.kinds().into_iter().filter(|k| !matches!(k, ActivityKind::Email | ActivityKind::Lead)).collect()
    }

    /// COQL by id (50 per query); ids it does not return are looked for in the recycle bin
    /// (`/deleted`, a few pages), else they are gone for good.
    async fn read(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        wanted: &[Wanted],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Live>, Failure> {
        let mut fields: Vec<&str> =
            self.contract_of(kind).fields.keys().map(String::as_str).filter(|f| *f != "id" && *f != "Who_Id").collect();
        fields.extend(["id", "Who_Id"]);
        let mut out = HashMap::new();
        for chunk in wanted.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|w| coql_str(&w.record_id)).collect::<Vec<_>>().join(", ");
            let q = format!("select {} from {} where id in ({list}) limit 200", fields.join(", "), self.module(kind));
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                let Some(id) = r.id else { continue };
                let contact_id = r.who.as_ref().and_then(Lookup::id).map(str::to_string);
                out.insert(id, Live::Present { fields: r.fields, contact_id });
            }
        }
        let mut missing: HashSet<&str> = wanted.iter().map(|w| w.record_id.as_str()).filter(|id| !out.contains_key(*id)).collect();
        let mut page = 1;
        while !missing.is_empty() && page <= 5 {
            let req =
                Request::get(format!("{API}/{}/deleted?type=recycle&page={page}&per_page=200", self.module(kind)), RequestClass::List);
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

    fn restore_request(&self, kind: ActivityKind, record_id: &str, fields: &Map<String, Value>) -> Request {
        Request::new(Method::PUT, format!("{API}/{}/{}", self.module(kind), urlencode(record_id)), RequestClass::Update)
            .body(json!({"data": [fields], "trigger": []}))
    }

    /// A per-record error comes back inside `data` with a 2xx or 400.
    fn restored(&self, reply: &Reply) -> Result<(), Failure> {
        match reply.parse::<Data<Outcome>>()?.rows().into_iter().next() {
            Some(r) if !r.succeeded() => Err(failed(r, reply.status)),
            _ => Ok(()),
        }
    }

    /// A call's or meeting's Who_Id, and a meeting's contacts as Participants, through the
    /// same PUT as a restore.
    async fn associate(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_id: &str,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let Some(first) = contacts.first() else { return Ok(()) };
        let mut fields = Map::new();
        fields.insert("Who_Id".into(), json!({ "id": first }));
        if kind == ActivityKind::Meeting {
            let people: Vec<Value> = contacts.iter().map(|c| json!({"type": "contact", "participant": c})).collect();
            fields.insert("Participants".into(), json!(people));
        }
        self.restore(api, t, kind, record_id, &fields, log).await
    }

    /// Owner and the one What_Id, by COQL (50 per query).
    async fn attribution(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Attribution>, Failure> {
        let lookup = |v: Option<&Value>| v.and_then(|v| v.get("id").or(Some(v))).and_then(|v| v.as_str().map(str::to_string));
        let mut out = HashMap::new();
        for chunk in record_ids.chunks(COQL_IN_MAX) {
            let list = chunk.iter().map(|c| coql_str(c)).collect::<Vec<_>>().join(", ");
            let q = format!("select id, Owner, What_Id from {} where id in ({list}) limit 200", self.module(kind));
            for r in t.fetch::<Data<Row>>(api, &coql(q), log).await?.rows() {
                let Some(id) = r.id else { continue };
                let related = lookup(r.fields.get("What_Id")).into_iter().collect();
                out.insert(id, Attribution { owner: lookup(r.fields.get("Owner")), related });
            }
        }
        Ok(out)
    }

    fn written_relations(&self, company: Option<&str>, deal: Option<&str>) -> BTreeSet<String> {
        deal.or(company).map(str::to_string).into_iter().collect()
    }

    /// The key field, a single-line text field named after the contract's `key_field`
    /// (Zoho makes the API name from the label), asked for with "Do not allow duplicate
    /// values". Whether Zoho accepts that on Calls and Events is not known
    /// (CRM-APIS-ACTIVITIES §6.3): refused, the field is made without it, and the writes stay
    /// single through the claims and the read-back before any resend, as for every Zoho create.
    /// A custom field of the lead contract's on Leads or Contacts: a text field whose label
    /// is the name with spaces for underscores (Zoho makes the API name of the label so);
    /// one of that name there already is taken as made.
    async fn provision_person_field(
        &self,
        api: &Api,
        t: &Tenant,
        object: crate::person::PersonObject,
        name: &str,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        let module = people::module(object);
        let req = Request::new(Method::POST, format!("{API}/settings/fields?module={module}"), RequestClass::Schema)
            .body(json!({"fields": [{"field_label": name.replace('_', " "), "data_type": "text", "length": 255}]}));
        let answer: wire::FieldsCreated = match t.fetch(api, &req, log).await {
            Ok(a) => a,
            Err(f) if f.excerpt.as_deref().is_some_and(|e| e.contains("DUPLICATE_DATA")) => wire::FieldsCreated { fields: vec![] },
            Err(f) => return Err(f),
        };
        let detail = match answer.fields.first() {
            None => format!("{module}.{name} exists already"),
            Some(f) if f.status == "success" => format!("created {module}.{name} (text)"),
            Some(f) if f.code == "DUPLICATE_DATA" => format!("{module}.{name} exists already"),
            Some(f) => {
                return Err(Failure::new(DlqReason::Validation, format!("Zoho did not create {module}.{name}: {} {}", f.code, f.message)))
            }
        };
        Ok(Provisioned::Created { unique: false, detail })
    }

    async fn provision_key_field(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> Result<Provisioned, Failure> {
        let module = self.module(kind);
        let name = self.contract_of(kind).key_field.clone();
        let create = self.provision_request(kind).expect("Zoho provisions");
        let refused_unique = match t.fetch::<wire::FieldsCreated>(api, &create, log).await {
            Ok(answer) => match answer.fields.first() {
                Some(f) if f.status == "success" => false,
                Some(f) => {
                    return Err(Failure::new(
                        DlqReason::Validation,
                        format!("Zoho did not create {module}.{name}: {} {}", f.code, f.message),
                    ))
                }
                None => {
                    return Err(Failure::new(DlqReason::Validation, format!("Zoho's answer to creating {module}.{name} names no field")))
                }
            },
            Err(f) if f.status == Some(400) && f.excerpt.as_deref().is_some_and(|e| e.contains("\"unique\"")) => true,
            Err(f) => return Err(f),
        };
        if refused_unique {
            let plain = Request::new(Method::POST, format!("{API}/settings/fields?module={module}"), RequestClass::Schema)
                .body(json!({"fields": [{"field_label": name.replace('_', " "), "data_type": "text", "length": 255}]}));
            let answer: wire::FieldsCreated = t.fetch(api, &plain, log).await?;
            if let Some(f) = answer.fields.first().filter(|f| f.status != "success") {
                return Err(Failure::new(DlqReason::Validation, format!("Zoho did not create {module}.{name}: {} {}", f.code, f.message)));
            }
        }
        // Read back as `tenants check` reads it.
        let Some(made) = self.schema(api, t, kind, log).await?.and_then(|s| s.key_field) else {
            return Err(Failure::new(
                DlqReason::Validation,
                format!("Zoho created the field but named it otherwise than {name}: set the contract's key_field to its API name"),
            ));
        };
        let unique = made == KeyFieldCheck::Enforced;
        let detail = if unique {
            format!("created {module}.{name}, with no duplicate values allowed")
        } else {
            format!("created {module}.{name}; Zoho refused \"no duplicate values\" on {module}: the claims and the read-back before any resend keep writes single")
        };
        Ok(Provisioned::Created { unique, detail })
    }

    fn provision_request(&self, kind: ActivityKind) -> Option<Request> {
        let label = self.contract_of(kind).key_field.replace('_', " ");
        let body = json!({"fields": [{"field_label": label, "data_type": "text", "length": 255, "unique": {"casesensitive": "false"}}]});
        Some(Request::new(Method::POST, format!("{API}/settings/fields?module={}", self.module(kind)), RequestClass::Schema).body(body))
    }

    /// The module's fields, the key field's `unique` among them.
    async fn schema(&self, api: &Api, t: &Tenant, kind: ActivityKind, log: &mut Vec<Exchange>) -> Result<Option<Schema>, Failure> {
        let module = self.module(kind);
        let name = &self.contract_of(kind).key_field;
        let req = Request::get(format!("{API}/settings/fields?module={module}"), RequestClass::Schema);
        let fields: Fields = t.fetch(api, &req, log).await?;
        let key_field = fields.fields.iter().find(|f| &f.api_name == name).map(|f| {
            if f.unique.as_ref().is_some_and(|u| !u.is_null()) {
                KeyFieldCheck::Enforced
            } else {
                KeyFieldCheck::NotEnforced(format!(
                    "{module}.{name} allows duplicate values: Zoho will not refuse a second record with one key (the writer reads back before any resend)"
                ))
            }
        });
        Ok(Some(Schema { fields: fields.fields.into_iter().map(|f| f.api_name).collect(), key_field, write: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_values_escape_their_separators() {
        assert_eq!(criteria_value("jane@x.example"), "jane@x.example");
        assert_eq!(criteria_value("a,b(c)@x"), r"a\,b\(c\)@x");
    }

    #[test]
    fn coql_literals_escape_quotes() {
        assert_eq!(coql_str("acme:c1:zoho"), "'acme:c1:zoho'");
        assert_eq!(coql_str("a'b\\c"), r"'a\'b\\c'");
    }
}
