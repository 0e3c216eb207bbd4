//! The Pipedrive connector (CRM-APIS §4), on API v2 (v1 activities are being retired):
//! calls as `activities` of type call, one request per call (there is no batch create).
//! Activities have no unique or custom fields, so the idempotency key rides in the note
//! after the contract's `key_marker`, and a listing of the activities changed since the
//! write was claimed finds it before anything is written again: in recovery after an
//! expired lease, and after a create timed out or met a 5xx. Persons are found by phone
//! with the person search (digits), then compared in E.164.
//!
//! Meetings and emails are activities of type meeting and email
//! (`contracts/pipedrive.meeting.toml`, `pipedrive.email.toml`; the Mailbox API cannot create
//! mail) on the same path: the key in the note, read-before-resend by listing. Participants
//! are matched to
//! persons by the person search on email (each address its own search: there is no `IN`),
//! compared case-insensitively here, and are the activity's participants (the first
//! primary); a later version reads the participants and sends the union when it grows.

pub mod errors;
pub mod limits;
mod people;
pub mod wire;

use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::auth::AuthStyle;
use crate::client::{endpoints, TenantClient};
use crate::connector::{
    create_reading_before_resending, missing_are, not_yet_linked, Attribution, Connector, Inspect, Item, ItemResult, Live, Lookups,
    ReadBeforeResend, TenantOf, Wanted,
};
use crate::context::{ContactContext, OpenDeal};
use crate::contract::{Contracts, WriteKind};
use crm_common::events::{ActivityKind, Crm, DlqReason, WriteRequest};
use crm_common::tenants::{CrmConnection, ResolvedTenant};
use reqwest::header::{HeaderName, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use wire::{Activity, Created, Envelope, Phone, SearchHits};

/// Activities listed per page, and pages read at most, when looking for a key.
const PAGE: usize = 500;
const MAX_PAGES: usize = 40;
/// Listings start this long before the claim, for clocks that disagree.
const CLOCK_SKEW_MS: i64 = 60_000;

pub struct Pipedrive {
    /// Every kind's contract (meetings where the deployment has theirs).
    pub contracts: Contracts,
    /// The company's API host when a tenant names none (`https://<company>.pipedrive.com`).
    pub default_base_url: String,
    pub default_token_url: String,
    /// Each company's custom person fields by name (their keys are per-company hashes).
    pub person_fields: people::FieldCodes,
}

/// A v2 time (RFC 3339) in epoch milliseconds.
fn pd_time_ms(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t.trim()).ok().map(|d| d.timestamp_millis())
}

type Tenant = TenantClient<limits::PipedrivePolicy>;

/// Whole-second RFC 3339, as `updated_since` wants it.
fn rfc3339_secs(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Pipedrive {
    fn activities(&self) -> String {
        format!("/api/v2/{}", self.contract().object)
    }

    async fn create(&self, api: &Api, t: &Tenant, item: &Item, log: &mut Vec<Exchange>) -> ItemResult {
        let mut body = item.values(self, WriteKind::Create);
        // v2: persons are linked as participants, the first primary (person_id is
        // read-only): a call's contact, or a meeting's matched attendees.
        let participants: Vec<Value> = item
            .linked_contacts()
            .iter()
            .filter_map(|c| c.parse::<u64>().ok())
            .enumerate()
            .map(|(i, person)| json!({"person_id": person, "primary": i == 0}))
            .collect();
        if !participants.is_empty() {
            body.insert("participants".into(), json!(participants));
        }
        // The person's organisation and the chosen deal.
        for (field, id) in [("org_id", &item.context.company), ("deal_id", &item.context.deal)] {
            if let Some(n) = id.as_deref().and_then(|i| i.parse::<u64>().ok()) {
                body.insert(field.into(), json!(n));
            }
        }
        let req = Request::new(Method::POST, self.activities(), RequestClass::Create)
            .body(Value::Object(body))
            .not_replay_safe()
            .fenced([item.req.idempotency_key()]);
        match t.fetch::<Envelope<Created>>(api, &req, log).await {
            Ok(Envelope { data: Created { id: Some(id) }, .. }) => ItemResult::Written { record_id: id, created: true },
            Ok(_) => ItemResult::Failed(Failure::unknown_outcome("Pipedrive answered the create without the activity's id", None)),
            Err(f) => ItemResult::Failed(f),
        }
    }

    async fn update(&self, api: &Api, t: &Tenant, item: &Item, log: &mut Vec<Exchange>) -> ItemResult {
        let id = item.record_id.clone().unwrap_or_default();
        let mut body = item.values(self, WriteKind::Update);
        if item.req.kind() != ActivityKind::Call && !item.contacts.is_empty() {
            // Setting participants replaces them: send the union, and only when it grows.
            let read = Request::get(format!("{}/{}", self.activities(), urlencode(&id)), RequestClass::Read);
            let now = match t.fetch::<Envelope<Activity>>(api, &read, log).await {
                Ok(a) => a.data.participants(),
                Err(mut f) => {
                    if f.status == Some(404) {
                        f.reason = DlqReason::Validation;
                        f.detail = format!("the activity was deleted in Pipedrive; not re-created ({})", f.detail);
                    }
                    return ItemResult::Failed(f);
                }
            };
            let wanted: Vec<u64> = item.contacts.iter().filter_map(|c| c.parse().ok()).collect();
            let new = not_yet_linked(&now, &wanted);
            if !new.is_empty() {
                let all: Vec<Value> = now.iter().chain(&new).enumerate().map(|(i, p)| json!({"person_id": p, "primary": i == 0})).collect();
                body.insert("participants".into(), json!(all));
            }
        }
        let req = Request::new(Method::PATCH, format!("{}/{}", self.activities(), urlencode(&id)), RequestClass::Update)
            .body(Value::Object(body))
            .fenced([item.req.idempotency_key()]);
        match t.call(api, &req, log).await {
            Ok(_) => ItemResult::Written { record_id: id, created: false },
            Err(mut f) if f.status == Some(404) => {
                // Someone deleted the activity in Pipedrive: that decision stands.
                f.reason = DlqReason::Validation;
                f.detail = format!("the activity was deleted in Pipedrive; not re-created ({})", f.detail);
                ItemResult::Failed(f)
            }
            Err(f) => ItemResult::Failed(f),
        }
    }

    /// Activities changed since `since_ms` that carry one of `keys`: key → activity id. A
    /// listing that stops before its end (the page cap) cannot say a key is absent: Err.
    async fn held_keys(
        &self,
        api: &Api,
        t: &Tenant,
        keys: &[&str],
        since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        let mut cursor: Option<String> = None;
        let since =
            if since_ms > 0 { format!("&updated_since={}", urlencode(&rfc3339_secs(since_ms - CLOCK_SKEW_MS))) } else { String::new() };
        for _ in 0..MAX_PAGES {
            let page = cursor.as_ref().map(|c| format!("&cursor={}", urlencode(c))).unwrap_or_default();
            let req = Request::get(format!("{}?limit={PAGE}{since}{page}", self.activities()), RequestClass::List);
            let listed: Envelope<Vec<Activity>> = t.fetch(api, &req, log).await?;
            for a in &listed.data {
                let key = a.fields.get(&self.contract().key_field).and_then(Value::as_str).and_then(|text| self.contract().key_in(text));
                if let (Some(k), Some(id)) = (key, &a.id) {
                    if keys.contains(&k) {
                        found.entry(k.to_string()).or_insert_with(|| id.clone());
                    }
                }
            }
            if found.len() == keys.len() {
                break;
            }
            cursor = listed.additional_data.next_cursor;
            if cursor.is_none() {
                return Ok(found);
            }
        }
        if found.len() == keys.len() {
            return Ok(found);
        }
        Err(Failure {
            maybe_applied: true,
            ..Failure::new(
                DlqReason::RetriesExhausted,
                format!("the activities changed since the write was claimed run past {MAX_PAGES} pages of {PAGE}: cannot tell whether {} of {} keys are there", keys.len() - found.len(), keys.len()),
            )
        })
    }
}

impl ReadBeforeResend for Pipedrive {
    async fn send(&self, api: &Api, t: &Tenant, batch: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let mut out = vec![];
        for item in batch {
            out.push(self.create(api, t, item, log).await);
        }
        out
    }

    async fn held(
        &self,
        api: &Api,
        t: &Tenant,
        _kind: crm_common::events::ActivityKind,
        reqs: &[&WriteRequest],
        sent_at_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let keys: Vec<&str> = reqs.iter().map(|r| r.idempotency_key()).collect();
        self.held_keys(api, t, &keys, sent_at_ms, log).await
    }
}

impl Connector for Pipedrive {
    type Policy = limits::PipedrivePolicy;

    fn build(contracts: Contracts, urls: &crate::CrmUrls, _http_timeout: std::time::Duration) -> Self {
        Self {
            contracts,
            default_base_url: urls.pipedrive_api_url.clone(),
            default_token_url: urls.pipedrive_token_url.clone(),
            person_fields: Default::default(),
        }
    }

    fn crm(&self) -> Crm {
        Crm::Pipedrive
    }

    fn supported_kinds(&self) -> &'static [ActivityKind] {
        &[ActivityKind::Call, ActivityKind::Email, ActivityKind::Meeting, ActivityKind::Lead]
    }

    /// One person search per address (`fields=email`; Pipedrive has no `IN`), its hits
    /// compared with the address case-insensitively here: whether `exact_match` ignores
    /// case is not documented, so it is not relied on.
    async fn find_contacts_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for e in emails {
            let req = Request::get(format!("/api/v2/persons/search?term={}&fields=email&limit=20", urlencode(e)), RequestClass::Search);
            let hits: Envelope<SearchHits> = t.fetch(api, &req, log).await?;
            let person = hits
                .data
                .items
                .into_iter()
                .map(|h| h.item)
                .find(|p| p.emails.iter().filter_map(Phone::value).any(|v| v.trim().eq_ignore_ascii_case(e)));
            if let Some(id) = person.and_then(|p| p.id) {
                found.insert(e.clone(), id);
            }
        }
        Ok(found)
    }

    /// Each person's organisation (`org_id`, from the person) and open deals
    /// (`GET /api/v2/deals?person_id=&status=open`, newest change first): two requests per
    /// person, so the writer's cache carries the weight.
    async fn find_context(
        &self,
        api: &Api,
        t: &Tenant,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, ContactContext>, Failure> {
        let mut out = HashMap::new();
        for c in contacts {
            let read = Request::get(format!("/api/v2/persons/{}", urlencode(c)), RequestClass::Read);
            let person: Envelope<wire::Person> = t.fetch(api, &read, log).await?;
            let mut ctx = ContactContext { company: person.data.org_id, open_deals: vec![] };
            let mut cursor: Option<String> = None;
            loop {
                let mut path =
                    format!("/api/v2/deals?person_id={}&status=open&sort_by=update_time&sort_direction=desc&limit=100", urlencode(c));
                if let Some(cur) = &cursor {
                    path.push_str(&format!("&cursor={}", urlencode(cur)));
                }
                let page: Envelope<Vec<wire::Deal>> = t.fetch(api, &Request::get(path, RequestClass::List), log).await?;
                for d in page.data {
                    let Some(id) = d.id else { continue };
                    let updated_ms = d.update_time.as_deref().and_then(pd_time_ms).unwrap_or(0);
                    ctx.open_deals.push(OpenDeal { id, updated_ms });
                }
                cursor = page.additional_data.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            out.insert(c.clone(), ctx);
        }
        Ok(out)
    }

    /// `GET /v1/users/find?term=&search_by_email=1` per address (v2 has no users find); an
    /// inactive or deleted user cannot own an activity (CRM-APIS-ACTIVITIES §3.4).
    async fn find_owners_by_email(
        &self,
        api: &Api,
        t: &Tenant,
        emails: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let mut found = HashMap::new();
        for e in emails {
            let req = Request::get(format!("/api/v1/users/find?term={}&search_by_email=1", urlencode(e)), RequestClass::List);
            // `data` is null when no user matches.
            let users: Envelope<Option<Vec<wire::User>>> = t.fetch(api, &req, log).await?;
            let mut ids = users
                .data
                .unwrap_or_default()
                .into_iter()
                .filter(|u| u.active_flag && !u.is_deleted && u.email.as_deref().is_some_and(|m| m.trim().eq_ignore_ascii_case(e)));
            if let (Some(u), None) = (ids.next(), ids.next()) {
                found.insert(e.clone(), u.id);
            }
        }
        Ok(found)
    }

    /// By the classes the lookups are sent as: Pipedrive prices each class differently, and a
    /// unit taken ahead is drawn only by a request of its own costs (a `users/find` is a
    /// list, 10 budget tokens, not a read). A person search per number and per address; a
    /// users find per owner; a person read and a deals list per contact's context.
    fn expected_requests(&self, l: &Lookups) -> Vec<(RequestClass, u64)> {
        vec![(RequestClass::Search, l.numbers + l.addresses), (RequestClass::Read, l.contexts), (RequestClass::List, l.owners + l.contexts)]
    }

    fn batch_max(&self) -> usize {
        // No batch create; lanes still plan whole batches, written one call at a time.
        100
    }

    fn one_call_per_record(&self) -> bool {
        true
    }

    fn tenant(&self, tenant: &ResolvedTenant, conn: &CrmConnection) -> Result<TenantOf<Self>, String> {
        let (base_url, token_url) = endpoints(conn, &self.default_base_url, Some(&self.default_token_url), "/oauth/token");
        let style = AuthStyle {
            static_header: (HeaderName::from_static("x-api-token"), ""),
            oauth_header: (AUTHORIZATION, "Bearer "),
            token_url,
            basic_client_auth: true,
        };
        TenantClient::connect(Crm::Pipedrive, tenant, conn, base_url, style, |auth| {
            Ok(limits::PipedrivePolicy {
                tenant_id: tenant.id.clone(),
                plan: limits::plan(conn, auth.is_oauth())?,
                tz_offset_min: conn.tz_offset_min,
            })
        })
    }

    async fn find_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<Option<String>, Failure> {
        // Phones are free text there: search the national number's digits, then compare.
        let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(None) };
        let req = Request::get(format!("/api/v2/persons/search?term={digits}&fields=phone&limit=20"), RequestClass::Search)
            .audited_as(json!({"term": crm_common::phone::mask(&digits), "fields": "phone"}));
        let hits: Envelope<SearchHits> = t.fetch(api, &req, log).await?;
        let found = hits
            .data
            .items
            .into_iter()
            .map(|h| h.item)
            .find(|p| p.phones.iter().filter_map(Phone::value).any(|raw| t.same_number(raw, e164)));
        Ok(found.and_then(|p| p.id))
    }

    async fn create_contact(&self, api: &Api, t: &Tenant, e164: &str, log: &mut Vec<Exchange>) -> Result<String, Failure> {
        let body = json!({"name": "Unknown caller", "phones": [{"value": e164, "label": "work", "primary": true}]});
        let req = Request::new(Method::POST, "/api/v2/persons", RequestClass::Create).body(body).not_replay_safe();
        let created: Envelope<Created> = t.fetch(api, &req, log).await?;
        created.data.id.ok_or_else(|| Failure::unknown_outcome("Pipedrive answered the person create without its id", None))
    }

    async fn lookup(
        &self,
        api: &Api,
        t: &Tenant,
        req: &WriteRequest,
        since_ms: i64,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<String>, Failure> {
        Ok(self.held_keys(api, t, &[req.idempotency_key()], since_ms, log).await?.remove(req.idempotency_key()))
    }

    fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    async fn create_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        create_reading_before_resending(self, api, t, items, log).await
    }

    /// One call per record (there is no batch update).
    async fn update_records(&self, api: &Api, t: &Tenant, items: &[&Item], log: &mut Vec<Exchange>) -> Vec<ItemResult> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(self.update(api, t, item, log).await);
        }
        out
    }
}

impl Inspect for Pipedrive {
    /// A custom person field of the lead contract's: `POST /api/v1/personFields`, type
    /// `varchar` (text up to 255). Pipedrive does not refuse a second field of one name, so
    /// only fields `personFields` does not list are made (the caller reads first); the
    /// writers find its code by name.
    async fn provision_person_field(
        &self,
        api: &Api,
        t: &Tenant,
        object: crate::person::PersonObject,
        name: &str,
        log: &mut Vec<Exchange>,
    ) -> Result<crate::connector::Provisioned, Failure> {
        use crate::connector::Provisioned;
        if object != crate::person::PersonObject::Contact {
            return Ok(Provisioned::ByHand("Pipedrive's people are persons only".into()));
        }
        let req =
            Request::new(Method::POST, "/api/v1/personFields", RequestClass::Schema).body(json!({"name": name, "field_type": "varchar"}));
        let _: Envelope<Value> = t.fetch(api, &req, log).await?;
        Ok(Provisioned::Created { unique: false, detail: format!("created persons.{name} (text)") })
    }

    /// The activity list filtered by `ids` (100 per call, one list's cost). Pipedrive hides
    /// deleted activities and cannot tell them from purged ones: a missing one is taken as
    /// deleted by a person, whose decision the reconciler does not undo by default.
    /// Every kind is an activity: one object to read.
    async fn read(
        &self,
        api: &Api,
        t: &Tenant,
        _kind: ActivityKind,
        wanted: &[Wanted],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Live>, Failure> {
        let mut out = HashMap::new();
        for chunk in wanted.chunks(100) {
            let ids = chunk.iter().map(|w| urlencode(&w.record_id)).collect::<Vec<_>>().join(",");
            let req = Request::get(format!("{}?ids={ids}&limit=100", self.activities()), RequestClass::List);
            for a in t.fetch::<Envelope<Vec<Activity>>>(api, &req, log).await?.data {
                let contact_id = a.person().map(str::to_string);
                let Some(id) = a.id else { continue };
                out.insert(id, Live::Present { fields: a.fields, contact_id });
            }
        }
        Ok(missing_are(out, wanted, Live::Deleted))
    }

    fn restore_request(&self, _kind: ActivityKind, record_id: &str, fields: &Map<String, Value>) -> Request {
        Request::new(Method::PATCH, format!("{}/{}", self.activities(), urlencode(record_id)), RequestClass::Update)
            .body(Value::Object(fields.clone()))
    }

    /// Activities' fields are Pipedrive's own (the key rides in the note): nothing a
    /// company admin can remove.
    /// The persons as the activity's participants, the first primary.
    async fn associate(
        &self,
        api: &Api,
        t: &Tenant,
        kind: ActivityKind,
        record_id: &str,
        contacts: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let people: Vec<Value> = contacts
            .iter()
            .filter_map(|c| c.parse::<u64>().ok())
            .enumerate()
            .map(|(i, p)| json!({"person_id": p, "primary": i == 0}))
            .collect();
        let mut fields = Map::new();
        fields.insert("participants".into(), json!(people));
        self.restore(api, t, kind, record_id, &fields, log).await
    }

    /// owner_id, org_id and deal_id of each activity, by the listing with `ids`.
    async fn attribution(
        &self,
        api: &Api,
        t: &Tenant,
        _kind: ActivityKind,
        record_ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, Attribution>, Failure> {
        let text = |v: Option<&Value>| v.and_then(|v| v.as_u64().map(|n| n.to_string()).or_else(|| v.as_str().map(str::to_string)));
        let mut out = HashMap::new();
        for chunk in record_ids.chunks(100) {
            let req = Request::get(format!("{}?ids={}&limit=100", self.activities(), urlencode(&chunk.join(","))), RequestClass::List);
            let page: Envelope<Vec<Activity>> = t.fetch(api, &req, log).await?;
            for a in page.data {
                let Some(id) = a.id.clone() else { continue };
                let related = [text(a.fields.get("org_id")), text(a.fields.get("deal_id"))].into_iter().flatten().collect();
                out.insert(id, Attribution { owner: text(a.fields.get("owner_id")), related });
            }
        }
        Ok(out)
    }

    /// Who the token is (`users/me`): a deactivated user writes nothing. What an active one
    /// may edit (visibility groups, permission sets) Pipedrive says only at a write.
    async fn write_access(
        &self,
        api: &Api,
        t: &Tenant,
        _kind: ActivityKind,
        log: &mut Vec<Exchange>,
    ) -> Result<crate::connector::WriteAccess, Failure> {
        use crate::connector::WriteAccess;
        let me: Envelope<wire::Me> = t.fetch(api, &Request::get("/api/v1/users/me", RequestClass::Read), log).await?;
        let name = me.data.name.unwrap_or_else(|| "(no name)".into());
        Ok(if !me.data.active_flag {
            WriteAccess::Denied(format!("the token's user {name} is deactivated"))
        } else {
            WriteAccess::NotShown(format!(
                "the token's user {name} is active{}; what they may edit Pipedrive says only at a write: a missing permission shows as PERMISSION_DENIED in the DLQ",
                if me.data.is_admin { ", an admin" } else { "" }
            ))
        })
    }

    async fn schema(
        &self,
        _api: &Api,
        _t: &Tenant,
        _kind: ActivityKind,
        _log: &mut Vec<Exchange>,
    ) -> Result<Option<crate::connector::Schema>, Failure> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit taken ahead is drawn only by a request of its own costs, and Pipedrive prices
    /// each class differently: lookups expected as reads (the default) left the owner's
    /// `users/find` and the contact's deals list (both lists) to take their own tokens, behind
    /// the units held for them, which a cold batch then held unused for its whole length.
    #[test]
    fn lookups_are_expected_as_the_classes_they_are_sent_as() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
        let p = Pipedrive {
            contracts: Contracts::load(&dir, "pipedrive").unwrap(),
            default_base_url: String::new(),
            default_token_url: String::new(),
            person_fields: Default::default(),
        };
        let l = Lookups { numbers: 2, addresses: 1, owners: 1, contexts: 2 };
        let mut expected = p.expected_requests(&l);
        expected.sort_by_key(|(c, _)| format!("{c:?}"));
        assert_eq!(
            expected,
            vec![(RequestClass::List, 3), (RequestClass::Read, 2), (RequestClass::Search, 3)],
            "a person search per number and address; users/find per owner (a list); per contact a person read and a deals list"
        );
        use crate::api::Policy;
        let policy = limits::PipedrivePolicy {
            tenant_id: "t".into(),
            plan: limits::Plan { burst_per_2s: 20, search_per_2s: 10, daily_tokens: 1000, costs: [1, 10, 5, 5, 20] },
            tz_offset_min: 0,
        };
        let costs = |c| policy.costs(c, 1, &policy.buckets(c));
        assert_ne!(costs(RequestClass::List), costs(RequestClass::Read), "why the class matters here");
    }

    #[test]
    fn listing_times_are_whole_seconds() {
        assert_eq!(rfc3339_secs(1_767_225_600_999), "2026-01-01T00:00:00Z");
    }
}
