//! A lead's person at Pipedrive (CRM-APIS-ACTIVITIES §5.4): a person (Pipedrive's leads are
//! deals-to-be hung on a person or organisation, not people; crm-sync writes the person).
//!
//! - Found with `persons/search` (`fields=email&exact_match=true`: case-insensitive; or
//!   `fields=phone` by the national digits, confirmed in E.164 in the tenant's region), then
//!   read together by id (`GET /api/v2/persons?ids=`), since search answers no custom fields
//!   and no time of change.
//! - **No uniqueness**: nothing refuses a second person with one address, so the person
//!   claim (`person_claims`) is all that stops two sources making two persons, and a create of
//!   unknown outcome is searched for before anything is sent again (`person::write_lead`).
//! - The contract names fields as a lead write sees them: `name`, `email` (the primary
//!   address), `phone` (the primary number), `owner_id`, and custom fields **by name**; a
//!   custom field's key is a 40-character hash per company, found by name in
//!   `GET /api/v2/personFields` (kept per company for `FIELDS_TTL`). A field the company
//!   does not have fails the lead `VALIDATION`, naming it.
//! - v2 persons have a `name` only (no first or last name).

use super::wire::{Envelope, PersonField, PersonRecord, Phone, SearchHits};
use super::{Pipedrive, Tenant};
use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::people::{Assign, People, PersonCreated, PersonKey};
use crate::person::{Candidate, PersonObject};
use crm_common::events::DlqReason;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a company's custom person fields are kept before they are read again.
pub(super) const FIELDS_TTL: Duration = Duration::from_secs(600);
/// Search hits read per search (exact matches: a handful).
const SEARCH_LIMIT: usize = 50;

/// The fields a lead write names that are the person's own, not custom.
const STANDARD: &[&str] = &["name", "email", "phone", "owner_id"];

/// A company's custom person fields, name → code.
type Codes = HashMap<String, String>;

/// Each company's custom person fields (by its API host), and when they were read.
#[derive(Default)]
pub struct FieldCodes(std::sync::Mutex<HashMap<String, (Instant, Codes)>>);

fn primary(list: &[Phone]) -> Option<&str> {
    list.iter().filter_map(Phone::value).map(str::trim).find(|v| !v.is_empty())
}

/// A person as a lead write sees it: `fields`' values, custom ones by name.
fn candidate(p: PersonRecord, fields: &[String], codes: &HashMap<String, String>) -> Candidate {
    let changed = p.update_time.as_deref().and_then(super::pd_time_ms).unwrap_or(0);
    let mut values = Map::new();
    for f in fields {
        let v = match f.as_str() {
            "name" => p.name.clone().map(Value::String),
            "email" => primary(&p.emails).map(|s| Value::String(s.to_string())),
            "phone" => primary(&p.phones).map(|s| Value::String(s.to_string())),
            "owner_id" => p.owner_id.clone().map(Value::String),
            custom => codes.get(custom).and_then(|code| p.custom_fields.get(code)).filter(|v| !v.is_null()).cloned(),
        };
        if let Some(v) = v {
            values.insert(f.clone(), v);
        }
    }
    Candidate { object: PersonObject::Contact, id: p.id, updated_at_ms: changed, fields: values }
}

/// A create's or update's body from a lead write's values: addresses and numbers as
/// Pipedrive's lists (the one value, primary), custom fields by their codes.
fn body(values: &Map<String, Value>, codes: &HashMap<String, String>) -> Result<Value, Failure> {
    let mut b = Map::new();
    let mut custom = Map::new();
    for (f, v) in values {
        match f.as_str() {
            "name" => {
                b.insert("name".into(), v.clone());
            }
            "email" => {
                b.insert("emails".into(), json!([{"value": v, "primary": true, "label": "work"}]));
            }
            "phone" => {
                b.insert("phones".into(), json!([{"value": v, "primary": true, "label": "work"}]));
            }
            "owner_id" => {
                b.insert("owner_id".into(), v.as_str().and_then(|s| s.parse::<u64>().ok()).map_or(v.clone(), Value::from));
            }
            name => match codes.get(name) {
                Some(code) => {
                    custom.insert(code.clone(), v.clone());
                }
                None => return Err(no_field(name)),
            },
        }
    }
    if !custom.is_empty() {
        b.insert("custom_fields".into(), Value::Object(custom));
    }
    Ok(Value::Object(b))
}

fn no_field(name: &str) -> Failure {
    Failure::new(
        DlqReason::Validation,
        format!(
            "Pipedrive has no person field named {name:?}: create it (a custom person field, Settings → Data fields), or take it out of \
             the lead contract; then replay"
        ),
    )
}

impl Pipedrive {
    /// The company's custom person fields, name → code (read again after `FIELDS_TTL`, or
    /// when `fresh` asks: a field the contract names was not among them).
    async fn field_codes(&self, api: &Api, t: &Tenant, fresh: bool, log: &mut Vec<Exchange>) -> Result<HashMap<String, String>, Failure> {
        let company = t.base_url.clone();
        if !fresh {
            let kept = self.person_fields.0.lock().expect("person fields").get(&company).cloned();
            if let Some((_, codes)) = kept.filter(|(at, _)| at.elapsed() < FIELDS_TTL) {
                return Ok(codes);
            }
        }
        let req = Request::get("/api/v2/personFields?limit=500", RequestClass::Schema);
        let fields: Envelope<Vec<PersonField>> = t.fetch(api, &req, log).await?;
        let codes: HashMap<String, String> =
            fields.data.into_iter().filter(|f| f.is_custom_field).map(|f| (f.field_name, f.field_code)).collect();
        self.person_fields.0.lock().expect("person fields").insert(company, (Instant::now(), codes.clone()));
        Ok(codes)
    }

    /// The codes of the custom fields `names` holds, read again once if one is missing.
    async fn codes_for<'a>(
        &self,
        api: &Api,
        t: &Tenant,
        names: impl Iterator<Item = &'a str> + Clone,
        log: &mut Vec<Exchange>,
    ) -> Result<HashMap<String, String>, Failure> {
        let custom = names.filter(|n| !STANDARD.contains(n));
        let codes = self.field_codes(api, t, false, log).await?;
        if custom.clone().all(|n| codes.contains_key(n)) {
            return Ok(codes);
        }
        self.field_codes(api, t, true, log).await
    }

    async fn read_people(
        &self,
        api: &Api,
        t: &Tenant,
        ids: &[String],
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Candidate>, Failure> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let codes = self.codes_for(api, t, fields.iter().map(String::as_str), log).await?;
        let req = Request::get(format!("/api/v2/persons?ids={}&limit=100", ids.join(",")), RequestClass::Read);
        let people: Envelope<Vec<PersonRecord>> = t.fetch(api, &req, log).await?;
        Ok(people.data.into_iter().filter(|p| ids.contains(&p.id)).map(|p| candidate(p, fields, &codes)).collect())
    }
}

impl People for Pipedrive {
    async fn find_people(
        &self,
        api: &Api,
        t: &Tenant,
        key: PersonKey<'_>,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Candidate>, Failure> {
        let req = match key {
            PersonKey::Email(email) => Request::get(
                format!("/api/v2/persons/search?term={}&fields=email&exact_match=true&limit={SEARCH_LIMIT}", urlencode(email)),
                RequestClass::Search,
            ),
            PersonKey::Phone(e164) => {
                let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(vec![]) };
                Request::get(format!("/api/v2/persons/search?term={digits}&fields=phone&limit={SEARCH_LIMIT}"), RequestClass::Search)
                    .audited_as(json!({"term": crm_common::phone::mask(&digits), "fields": "phone"}))
            }
        };
        let hits: Envelope<SearchHits> = t.fetch(api, &req, log).await?;
        let mut ids = vec![];
        for hit in hits.data.items {
            let p = hit.item;
            let matched = match key {
                PersonKey::Email(email) => p.emails.iter().filter_map(Phone::value).any(|e| e.trim().eq_ignore_ascii_case(email)),
                PersonKey::Phone(e164) => p.phones.iter().filter_map(Phone::value).any(|raw| t.same_number(raw, e164)),
            };
            if let (true, Some(id)) = (matched, p.id) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        self.read_people(api, t, &ids, fields, log).await
    }

    async fn read_person(
        &self,
        api: &Api,
        t: &Tenant,
        _object: PersonObject,
        id: &str,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Option<Candidate>, Failure> {
        // A deleted person is not listed.
        Ok(self.read_people(api, t, &[id.to_string()], fields, log).await?.into_iter().next())
    }

    const PEOPLE_PER_READ: usize = 100;

    /// `GET /api/v2/persons?ids=`, 100 ids a request (a deleted person is not listed).
    async fn people_in(
        &self,
        api: &Api,
        t: &Tenant,
        _object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashSet<String>, Failure> {
        Ok(self.read_people(api, t, ids, &[], log).await?.into_iter().map(|c| c.id).collect())
    }

    /// The person fields (`/api/v2/personFields`): standard ones by code (`name`, `emails`…),
    /// custom ones by name, as the lead contract names them. Pipedrive's people are persons
    /// only.
    async fn people_fields(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<(&'static str, BTreeSet<String>)>, Failure> {
        if object != PersonObject::Contact {
            return Ok(None);
        }
        let req = Request::get("/api/v2/personFields?limit=500", RequestClass::Schema);
        let fields: Envelope<Vec<PersonField>> = t.fetch(api, &req, log).await?;
        let names = fields.data.into_iter().map(|f| if f.is_custom_field { f.field_name } else { f.field_code });
        // The contract's names for the standard lists (`email`, `phone`) besides their codes.
        let aliases = STANDARD.iter().map(|s| s.to_string());
        Ok(Some(("persons", names.chain(aliases).collect())))
    }

    /// Pipedrive has no lead assignment rules: `Assign::Crm` leaves the owner to Pipedrive's
    /// default, the credentials' user.
    async fn create_person(
        &self,
        api: &Api,
        t: &Tenant,
        values: &Map<String, Value>,
        _assign: Assign<'_>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<PersonCreated, Failure> {
        let codes = self.codes_for(api, t, values.keys().map(String::as_str), log).await?;
        let req = Request::new(Method::POST, "/api/v2/persons", RequestClass::Create)
            .body(body(values, &codes)?)
            .fenced(fence.iter().map(String::as_str))
            .not_replay_safe();
        let created: Envelope<super::wire::Created> = t.fetch(api, &req, log).await?;
        match created.data.id {
            Some(id) => Ok(PersonCreated::Created(PersonObject::Contact, id)),
            None => Err(Failure::unknown_outcome("Pipedrive answered the person create without its id", None)),
        }
    }

    async fn update_person(
        &self,
        api: &Api,
        t: &Tenant,
        (_, id): (PersonObject, &str),
        values: &Map<String, Value>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let codes = self.codes_for(api, t, values.keys().map(String::as_str), log).await?;
        let req = Request::new(Method::PATCH, format!("/api/v2/persons/{}", urlencode(id)), RequestClass::Update)
            .body(body(values, &codes)?)
            .fenced(fence.iter().map(String::as_str));
        t.call(api, &req, log).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_sends_lists_and_custom_fields_by_code_and_refuses_an_unknown_field() {
        let codes = HashMap::from([("crm_sync_latest_campaign".to_string(), "a1b2".to_string())]);
        let values: Map<String, Value> = serde_json::from_value(
            json!({"name": "Ann", "email": "ann@x.example", "owner_id": "17", "crm_sync_latest_campaign": "spring"}),
        )
        .unwrap();
        let b = body(&values, &codes).unwrap();
        assert_eq!(b["emails"][0]["value"], "ann@x.example");
        assert_eq!(b["emails"][0]["primary"], true);
        assert_eq!(b["owner_id"], 17);
        assert_eq!(b["custom_fields"]["a1b2"], "spring");
        let mut unknown = values.clone();
        unknown.insert("crm_sync_nope".into(), json!("x"));
        let e = body(&unknown, &codes).unwrap_err();
        assert!(e.detail.contains("crm_sync_nope") && e.reason == DlqReason::Validation, "{}", e.detail);
    }

    #[test]
    fn a_person_reads_as_a_candidate_with_custom_fields_by_name() {
        let codes = HashMap::from([("crm_sync_latest_campaign".to_string(), "a1b2".to_string())]);
        let p: PersonRecord = serde_json::from_value(json!({
            "id": 7, "name": "Ann", "emails": [{"value": "ann@x.example", "primary": true}], "phones": [],
            "owner_id": 17, "update_time": "2026-01-01T00:00:00Z", "custom_fields": {"a1b2": "spring", "zz": "other"}
        }))
        .unwrap();
        let c = candidate(p, &["email".into(), "phone".into(), "owner_id".into(), "crm_sync_latest_campaign".into()], &codes);
        assert_eq!(c.id, "7");
        assert_eq!(c.updated_at_ms, 1_767_225_600_000);
        assert_eq!(c.fields.get("email"), Some(&json!("ann@x.example")));
        assert_eq!(c.fields.get("crm_sync_latest_campaign"), Some(&json!("spring")));
        assert!(!c.fields.contains_key("phone"));
        assert_eq!(c.fields.get("owner_id"), Some(&json!("17")));
    }
}
