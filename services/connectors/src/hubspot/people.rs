//! A lead's person at HubSpot (CRM-APIS-ACTIVITIES §5.1): HubSpot keeps no leads apart from
//! contacts, so every person is a contact. Found through contacts search (by `email`, which
//! HubSpot compares case-insensitively and holds unique; by number on the digits-only
//! searchable properties, then compared in E.164), read by id, created and updated one at a
//! time. Search lags behind writes (`HUBSPOT_SEARCH_LAG`): a contact created seconds ago is
//! not found by it, which is what the person claim (`person_claims`) and the unique email
//! cover: a create that meets the address is answered "Existing ID", and that contact is
//! the person.

use super::wire::{ErrorBody, Object, Page, Property};
use super::{Hubspot, Tenant};
use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::people::{Assign, People, PersonCreated, PersonKey};
use crate::person::{Candidate, PersonObject};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};

const CONTACTS: &str = "/crm/v3/objects/contacts";

/// A contact as a lead write sees it: its values of the asked fields, and when it last
/// changed (`lastmodifieddate`, else the object's `updatedAt`).
fn candidate(o: Object, fields: &[String]) -> Candidate {
    let changed = o.property("lastmodifieddate").or(o.updated_at.as_deref()).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let values: Map<String, Value> = fields.iter().filter_map(|f| o.properties.get(f).map(|v| (f.clone(), v.clone()))).collect();
    Candidate { object: PersonObject::Contact, id: o.id, updated_at_ms: changed.map_or(0, |d| d.timestamp_millis()), fields: values }
}

/// The properties a read asks for: the fields, and what matching and ordering read.
fn asked(fields: &[String], extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = fields.to_vec();
    all.extend(extra.iter().map(|s| s.to_string()));
    all.sort();
    all.dedup();
    all
}

/// The contact a refused create names: HubSpot's 409 "Contact already exists. Existing ID:
/// 123" (its `context.id`, else the message's number).
fn existing_id(excerpt: &str) -> Option<String> {
    if let Ok(e) = serde_json::from_str::<ErrorBody>(excerpt) {
        if let Some(id) = e.context.id {
            return Some(id);
        }
    }
    let (_, rest) = excerpt.split_once("Existing ID: ")?;
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!id.is_empty()).then_some(id)
}

impl People for Hubspot {
    async fn find_people(
        &self,
        api: &Api,
        t: &Tenant,
        key: PersonKey<'_>,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Candidate>, Failure> {
        match key {
            PersonKey::Email(email) => {
                let body = json!({
                    "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}],
                    "properties": asked(fields, &["email", "lastmodifieddate"]),
                    "limit": 100
                });
                let req = Request::new(Method::POST, format!("{CONTACTS}/search"), RequestClass::Search).body(body);
                let page: Page<Object> = t.fetch(api, &req, log).await?;
                // Search matches the address case-insensitively; so does this check.
                Ok(page
                    .results
                    .into_iter()
                    .filter(|o| o.property("email").is_some_and(|e| e.trim().eq_ignore_ascii_case(email)))
                    .map(|o| candidate(o, fields))
                    .collect())
            }
            PersonKey::Phone(e164) => {
                let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(vec![]) };
                let body = |value: &str| {
                    let group = |prop: &str| json!({"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]});
                    json!({
                        "filterGroups": [group("hs_searchable_calculated_phone_number"), group("hs_searchable_calculated_mobile_number")],
                        "properties": asked(fields, &["phone", "mobilephone", "lastmodifieddate"]),
                        "limit": 100
                    })
                };
                let req = Request::new(Method::POST, format!("{CONTACTS}/search"), RequestClass::Search)
                    .body(body(&digits))
                    .audited_as(body(&crm_common::phone::mask(&digits)));
                let page: Page<Object> = t.fetch(api, &req, log).await?;
                // The digits match ignores country codes: confirm in E.164 with the tenant's region.
                Ok(page
                    .results
                    .into_iter()
                    .filter(|o| ["phone", "mobilephone"].iter().any(|p| o.property(p).is_some_and(|raw| t.same_number(raw, e164))))
                    .map(|o| candidate(o, fields))
                    .collect())
            }
        }
    }

    /// A contact by id; None when HubSpot has no live contact with it (archived, purged).
    /// A merged-away id is answered with the contact it was merged into (its own id).
    async fn read_person(
        &self,
        api: &Api,
        t: &Tenant,
        _object: PersonObject,
        id: &str,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Option<Candidate>, Failure> {
        let props = asked(fields, &["lastmodifieddate"]).join(",");
        let req = Request::get(format!("{CONTACTS}/{}?properties={}", urlencode(id), urlencode(&props)), RequestClass::Read);
        Ok(t.fetch_if_present::<Object>(api, req, log).await?.map(|o| candidate(o, fields)))
    }

    /// The contact properties (`/crm/v3/properties/contacts`); HubSpot has no other people.
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
        let page: Page<Property> = t.fetch(api, &Request::get("/crm/v3/properties/contacts", RequestClass::Schema), log).await?;
        Ok(Some(("contacts", page.results.into_iter().map(|p| p.name).collect())))
    }

    const PEOPLE_PER_READ: usize = super::BATCH_MAX;

    /// `POST /crm/v3/objects/contacts/batch/read`, 100 ids a request: a merged contact's old
    /// id is not among the answers (its survivor is read by that id alone).
    async fn people_in(
        &self,
        api: &Api,
        t: &Tenant,
        _object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashSet<String>, Failure> {
        let asked: Vec<&str> = ids.iter().map(String::as_str).collect();
        let found = self.batch_read(api, t, "contacts", &asked, json!(["hs_object_id"]), log).await?;
        Ok(found.into_iter().map(|o| o.id).filter(|id| ids.contains(id)).collect())
    }

    /// HubSpot has no lead assignment rules an API create can ask for: `Assign::Crm` leaves
    /// the owner empty (HubSpot's workflows may set one); a rule id is refused when the
    /// tenants file is read.
    async fn create_person(
        &self,
        api: &Api,
        t: &Tenant,
        values: &Map<String, Value>,
        _assign: Assign<'_>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<PersonCreated, Failure> {
        let req = Request::new(Method::POST, CONTACTS, RequestClass::Create)
            .body(json!({"properties": values}))
            .fenced(fence.iter().map(String::as_str))
            .not_replay_safe();
        match t.fetch::<Object>(api, &req, log).await {
            Ok(o) => Ok(PersonCreated::Created(PersonObject::Contact, o.id)),
            Err(f) if f.status == Some(409) => match f.excerpt.as_deref().and_then(existing_id) {
                Some(id) => Ok(PersonCreated::Exists(PersonObject::Contact, id)),
                None => Err(f),
            },
            Err(f) => Err(f),
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
        let req = Request::new(Method::PATCH, format!("{CONTACTS}/{}", urlencode(id)), RequestClass::Update)
            .body(json!({"properties": values}))
            .fenced(fence.iter().map(String::as_str));
        t.call(api, &req, log).await.map(|_| ())
    }

    fn people_lag(&self) -> std::time::Duration {
        self.search_lag
    }

    fn reads_cost_more_than_searches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_create_names_the_existing_contact() {
        let body =
            r#"{"status":"error","message":"Contact already exists. Existing ID: 751","category":"CONFLICT","context":{"id":["751"]}}"#;
        assert_eq!(existing_id(body).as_deref(), Some("751"));
        assert_eq!(existing_id("Contact already exists. Existing ID: 42 (cut").as_deref(), Some("42"));
        assert_eq!(existing_id(r#"{"message":"Property values were not valid"}"#), None);
    }

    #[test]
    fn a_contact_reads_as_a_candidate_with_only_the_asked_fields() {
        let o: Object = serde_json::from_value(json!({
            "id": "7", "updatedAt": "2026-01-02T00:00:00Z",
            "properties": {"email": "a@x.example", "firstname": "Ada", "lastmodifieddate": "2026-01-01T00:00:00.000Z", "hs_object_id": "7"}
        }))
        .unwrap();
        let c = candidate(o, &["email".into(), "firstname".into(), "lastname".into()]);
        assert_eq!(c.updated_at_ms, 1_767_225_600_000, "lastmodifieddate first");
        assert_eq!(c.fields.keys().collect::<Vec<_>>(), ["email", "firstname"]);
    }
}
