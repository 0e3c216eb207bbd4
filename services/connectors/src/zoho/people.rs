//! A lead's person at Zoho CRM (CRM-APIS-ACTIVITIES §5.3): a record of the Contacts module,
//! or of the Leads module (a converted lead leaves it for the contact it became).
//!
//! - Found with the module search, Contacts then Leads: by `email` (Zoho compares it
//!   case-insensitively; compared again here), by `phone` (digits, formatting ignored; the
//!   hits compared in E.164 with the tenant's region). Search lags behind writes
//!   (`ZOHO_SEARCH_LAG`, `people_lag`): a person crm-sync created a moment ago is the person
//!   claim's to remember, and a create of unknown outcome waits it out before searching.
//! - Read by id (`GET /{module}/{id}?fields=`): a 204 is a person gone (deleted, converted).
//! - Created by insert into Leads, not upsert: an upsert overwrites every field it is given,
//!   and the rules fill only what a person lacks. `lar_id` names the assignment rule when the
//!   tenant leaves owners to the CRM (without it Zoho runs none through the API; the tenants
//!   file requires it). `trigger: ["workflow"]`: the org's workflow rules run on a new or
//!   changed lead as they do for a web form's; approvals and blueprints do not.
//! - An org that holds Email unique refuses a second person with `DUPLICATE_DATA` and names
//!   the record that has it (`duplicate_record`): that is the person, and they are updated.

use super::wire::{AssignmentRules, Data, Fields, Outcome, Row};
use super::{Tenant, Zoho, API, CONTACT_PHONES};
use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::connector::Connector;
use crate::people::{Assign, People, PersonCreated, PersonKey};
use crate::person::{fields_on, Candidate, PersonObject};
use crm_common::events::ActivityKind;
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

const LEAD_PHONES: &[&str] = &["Phone", "Mobile"];
/// Search hits read per module (the most one page holds).
const PER_PAGE: usize = 200;

pub(super) fn module(o: PersonObject) -> &'static str {
    match o {
        PersonObject::Contact => "Contacts",
        PersonObject::Lead => "Leads",
    }
}

fn person_object(module: &str) -> Option<PersonObject> {
    match module {
        "Contacts" => Some(PersonObject::Contact),
        "Leads" => Some(PersonObject::Lead),
        _ => None,
    }
}

fn phones(o: PersonObject) -> &'static [&'static str] {
    match o {
        PersonObject::Contact => CONTACT_PHONES,
        PersonObject::Lead => LEAD_PHONES,
    }
}

/// A record as a lead write sees it: the asked fields, and when it last changed.
fn candidate(object: PersonObject, row: Row, fields: &[String]) -> Option<Candidate> {
    let changed = row.field("Modified_Time").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map_or(0, |t| t.timestamp_millis());
    let values: Map<String, Value> = fields.iter().filter_map(|f| row.fields.get(f).map(|v| (f.clone(), v.clone()))).collect();
    Some(Candidate { object, id: row.id?, updated_at_ms: changed, fields: values })
}

/// `{"data": [values], "trigger": ["workflow"]}`, with the rule that assigns a new lead.
fn body(values: &Map<String, Value>, lar_id: Option<&str>) -> Value {
    let mut b = json!({"data": [values], "trigger": ["workflow"]});
    if let Some(rule) = lar_id {
        b["lar_id"] = json!(rule);
    }
    b
}

impl Zoho {
    /// The fields a read of `object` asks for: those it has, and what matching reads.
    fn person_fields(&self, object: PersonObject, fields: &[String]) -> Vec<String> {
        let mut cols = vec!["id".to_string(), "Modified_Time".to_string(), "Email".to_string()];
        cols.extend(phones(object).iter().map(|p| p.to_string()));
        for f in fields_on(self.contract_for(ActivityKind::Lead), object, fields) {
            if !cols.contains(&f) {
                cols.push(f);
            }
        }
        cols
    }
}

impl People for Zoho {
    async fn find_people(
        &self,
        api: &Api,
        t: &Tenant,
        key: PersonKey<'_>,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Candidate>, Failure> {
        let mut out = vec![];
        for object in [PersonObject::Contact, PersonObject::Lead] {
            let cols = self.person_fields(object, fields).join(",");
            let (param, audited) = match key {
                PersonKey::Email(email) => (format!("email={}", urlencode(email)), None),
                PersonKey::Phone(e164) => {
                    let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(vec![]) };
                    (format!("phone={digits}"), Some(json!({"phone": crm_common::phone::mask(&digits)})))
                }
            };
            let mut req = Request::get(
                format!("{API}/{}/search?{param}&fields={}&per_page={PER_PAGE}", module(object), urlencode(&cols)),
                RequestClass::Search,
            );
            if let Some(a) = audited {
                req = req.audited_as(a);
            }
            // 204: nobody.
            for row in t.fetch::<Data<Row>>(api, &req, log).await?.rows() {
                let hit = match key {
                    PersonKey::Email(email) => row.field("Email").is_some_and(|e| e.trim().eq_ignore_ascii_case(email)),
                    PersonKey::Phone(e164) => phones(object).iter().any(|p| row.field(p).is_some_and(|raw| t.same_number(raw, e164))),
                };
                if hit {
                    out.extend(candidate(object, row, fields));
                }
            }
        }
        Ok(out)
    }

    async fn read_person(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        id: &str,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Option<Candidate>, Failure> {
        let cols = self.person_fields(object, fields).join(",");
        let req = Request::get(format!("{API}/{}/{}?fields={}", module(object), urlencode(id), urlencode(&cols)), RequestClass::Read);
        // 204: deleted, or converted (a lead no more).
        Ok(t.fetch::<Data<Row>>(api, &req, log).await?.rows().into_iter().next().and_then(|r| candidate(object, r, fields)))
    }

    async fn create_person(
        &self,
        api: &Api,
        t: &Tenant,
        values: &Map<String, Value>,
        assign: Assign<'_>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<PersonCreated, Failure> {
        let lar_id = match assign {
            Assign::CrmRule(rule) => Some(rule),
            Assign::Crm | Assign::Tenant => None,
        };
        let req = Request::new(Method::POST, format!("{API}/Leads"), RequestClass::Create)
            .body(body(values, lar_id))
            .fenced(fence.iter().map(String::as_str))
            .not_replay_safe();
        match self.one_result(api, t, &req, log).await {
            Ok(r) => match r.details.id {
                Some(id) => Ok(PersonCreated::Created(PersonObject::Lead, id)),
                None => Err(Failure::unknown_outcome("Zoho answered SUCCESS without the lead's id", None)),
            },
            Err(f) => {
                let dup =
                    f.excerpt.as_deref().and_then(|e| serde_json::from_str::<Outcome>(e).ok()).and_then(|o| o.details.duplicate_record);
                let held_by = dup.and_then(|d| Some((person_object(&d.module?.api_name)?, d.id)));
                match held_by {
                    Some((object, id)) => Ok(PersonCreated::Exists(object, id)),
                    None => Err(f),
                }
            }
        }
    }

    async fn update_person(
        &self,
        api: &Api,
        t: &Tenant,
        (object, id): (PersonObject, &str),
        values: &Map<String, Value>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<(), Failure> {
        let req = Request::new(Method::PUT, format!("{API}/{}/{}", module(object), urlencode(id)), RequestClass::Update)
            .body(body(values, None))
            .fenced(fence.iter().map(String::as_str));
        self.one_result(api, t, &req, log).await.map(|_| ())
    }

    /// `GET /settings/automation/assignment_rules?module=Leads` (CRM-APIS-ACTIVITIES §5.3);
    /// 204: the org has none.
    async fn assignment_rules(&self, api: &Api, t: &Tenant, log: &mut Vec<Exchange>) -> Result<Option<Vec<(String, String)>>, Failure> {
        let req = Request::get(format!("{API}/settings/automation/assignment_rules?module=Leads"), RequestClass::Read);
        let rules: AssignmentRules = t.fetch(api, &req, log).await?;
        Ok(Some(rules.assignment_rules.into_iter().map(|r| (r.id, r.name)).collect()))
    }

    const PEOPLE_PER_READ: usize = super::COQL_IN_MAX;

    /// COQL `id in (…)`, 50 ids a query (a converted lead has left the module).
    async fn people_in(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashSet<String>, Failure> {
        let list = ids.iter().map(|id| super::coql_str(id)).collect::<Vec<_>>().join(", ");
        let q = format!("select id from {} where id in ({list}) limit 200", module(object));
        Ok(t.fetch::<Data<Row>>(api, &super::coql(q), log).await?.rows().into_iter().filter_map(|r| r.id).collect())
    }

    /// The module's fields (`/settings/fields?module={Leads|Contacts}`).
    async fn people_fields(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<(&'static str, BTreeSet<String>)>, Failure> {
        let name = module(object);
        let req = Request::get(format!("{API}/settings/fields?module={name}"), RequestClass::Schema);
        let fields: Fields = t.fetch(api, &req, log).await?;
        Ok(Some((name, fields.fields.into_iter().map(|f| f.api_name).collect())))
    }

    fn creates_person_as(&self) -> PersonObject {
        PersonObject::Lead
    }

    fn people_lag(&self) -> Duration {
        self.search_lag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_insert_names_the_person_who_holds_the_address() {
        let body = r#"{"code":"DUPLICATE_DATA","details":{"api_name":"Email","json_path":"$.data[0].Email",
            "duplicate_record":{"id":"5725767000000412001","module":{"api_name":"Contacts","id":"5725767000000002179"},
            "Owner":{"name":"Ann","id":"57"}}},"message":"duplicate data","status":"error"}"#;
        let o: Outcome = serde_json::from_str(body).unwrap();
        let d = o.details.duplicate_record.unwrap();
        assert_eq!(
            (d.id.as_str(), d.module.and_then(|m| person_object(&m.api_name))),
            ("5725767000000412001", Some(PersonObject::Contact))
        );
    }

    #[test]
    fn a_create_names_its_assignment_rule_only_when_asked() {
        let v: Map<String, Value> = serde_json::from_value(json!({"Last_Name": "Lovelace"})).unwrap();
        assert_eq!(body(&v, Some("57001"))["lar_id"], "57001");
        assert!(body(&v, None).get("lar_id").is_none());
        assert_eq!(body(&v, None)["data"][0]["Last_Name"], "Lovelace");
    }
}
