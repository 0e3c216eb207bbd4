//! A lead's person at Salesforce (CRM-APIS-ACTIVITIES §5.2): a Contact, or a Lead not yet
//! converted (a converted Lead is read-only and its person is the Contact it became).
//!
//! - Found by email with SOQL on each object (`Email = '…'`: case-insensitive, and it reads
//!   the records themselves, so a person written a moment ago is found; two queries, since
//!   SOSL's `IN EMAIL FIELDS` would take one but reads a lagging index). By number with SOSL
//!   `IN PHONE FIELDS` (formatting ignored), then compared in E.164.
//! - Created as a Lead (the contract's object). `Sforce-Auto-Assign: TRUE` lets the org's
//!   active lead assignment rule choose the owner when the tenant leaves it to the CRM, and
//!   `FALSE` keeps the owner the tenant's rule set (developer.salesforce.com, "Assignment
//!   Rule Header"). Updates always send `FALSE`: without the header Salesforce applies the
//!   rule (TRUE is the default), and an existing person's owner is the CRM's.
//! - A duplicate rule that refuses a create (`DUPLICATES_DETECTED`) names the records it
//!   matched: the first is the person (Contacts before Leads). The rule is never overridden
//!   (`allowSave` is not sent): a second person is what it is there to stop.

use super::wire::{Describe, ErrorBody, QueryPage, Row, SearchAnswer};
use super::{soql_text, Salesforce, Tenant, CONTACT_PHONES, LEAD_PHONES};
use crate::api::{urlencode, Api, Exchange, Failure, Request, RequestClass};
use crate::connector::Connector;
use crate::people::{Assign, People, PersonCreated, PersonKey};
use crate::person::{Candidate, PersonObject};
use crm_common::events::{ActivityKind, DlqReason};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};

pub(super) fn object_name(o: PersonObject) -> &'static str {
    match o {
        PersonObject::Contact => "Contact",
        PersonObject::Lead => "Lead",
    }
}

fn person_object(name: &str) -> Option<PersonObject> {
    match name {
        "Contact" => Some(PersonObject::Contact),
        "Lead" => Some(PersonObject::Lead),
        _ => None,
    }
}

/// A row as a lead write sees it: the fields asked for, and when it last changed.
fn candidate(object: PersonObject, row: Row, fields: &[String]) -> Candidate {
    let changed = row.field("LastModifiedDate").and_then(super::sf_time_ms).unwrap_or(0);
    let values: Map<String, Value> = fields.iter().filter_map(|f| row.fields.get(f).map(|v| (f.clone(), v.clone()))).collect();
    Candidate { object, id: row.id, updated_at_ms: changed, fields: values }
}

fn converted(row: &Row) -> bool {
    row.fields.get("IsConverted").and_then(Value::as_bool).unwrap_or(false)
}

/// The records a `DUPLICATES_DETECTED` refusal matched, Contacts first, as far as the
/// (possibly cut) answer shows them.
fn duplicates_in(excerpt: &str) -> Vec<(PersonObject, String)> {
    let mut found = vec![];
    if let Ok(body) = serde_json::from_str::<ErrorBody>(excerpt) {
        if let Some(d) = body.first().duplicate_result {
            for m in d.match_results {
                for r in m.match_records {
                    if let (Some(o), Some(id)) = (person_object(&r.record.attributes.object), r.record.id) {
                        found.push((o, id));
                    }
                }
            }
        }
    }
    found.sort_by_key(|(o, _)| *o);
    found
}

impl Salesforce {
    fn select(&self, object: PersonObject, fields: &[String]) -> String {
        let mut cols = vec!["Id".to_string(), "LastModifiedDate".to_string()];
        if object == PersonObject::Lead {
            cols.push("IsConverted".into());
        }
        for f in crate::person::fields_on(self.contract_for(ActivityKind::Lead), object, fields) {
            if !cols.contains(&f) {
                cols.push(f);
            }
        }
        cols.join(", ")
    }
}

impl People for Salesforce {
    async fn find_people(
        &self,
        api: &Api,
        t: &Tenant,
        key: PersonKey<'_>,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Vec<Candidate>, Failure> {
        let mut out = vec![];
        match key {
            PersonKey::Email(email) => {
                for object in [PersonObject::Contact, PersonObject::Lead] {
                    let converted_out = if object == PersonObject::Lead { " AND IsConverted = false" } else { "" };
                    let q = format!(
                        "SELECT {} FROM {} WHERE Email = {}{converted_out} LIMIT 100",
                        self.select(object, fields),
                        object_name(object),
                        soql_text(email)
                    );
                    for row in self.soql(api, t, &q, log).await? {
                        if !converted(&row) {
                            out.push(candidate(object, row, fields));
                        }
                    }
                }
            }
            PersonKey::Phone(e164) => {
                let Some(digits) = crm_common::phone::national_digits(e164) else { return Ok(vec![]) };
                let returning = |object: PersonObject, phones: &[&str]| {
                    let mut cols = self.select(object, fields);
                    for p in phones {
                        if !cols.split(", ").any(|c| c == *p) {
                            cols.push_str(&format!(", {p}"));
                        }
                    }
                    format!("{}({cols})", object_name(object))
                };
                let sosl = |term: &str| {
                    format!(
                        "FIND {{{term}}} IN PHONE FIELDS RETURNING {}, {} LIMIT 100",
                        returning(PersonObject::Contact, CONTACT_PHONES),
                        returning(PersonObject::Lead, LEAD_PHONES)
                    )
                };
                let req = Request::get(self.data(&format!("/search/?q={}", urlencode(&sosl(&digits)))), RequestClass::Search)
                    .audited_as(json!({"q": sosl(&crm_common::phone::mask(&digits))}));
                for row in t.fetch::<SearchAnswer>(api, &req, log).await?.search_records {
                    let Some(object) = person_object(&row.attributes.object) else { continue };
                    let phones = if object == PersonObject::Contact { CONTACT_PHONES } else { LEAD_PHONES };
                    if !converted(&row) && phones.iter().any(|p| row.field(p).is_some_and(|raw| t.same_number(raw, e164))) {
                        out.push(candidate(object, row, fields));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A person by id (SOQL, so a deleted one is simply not there); a converted Lead is no
    /// person any more (None: the caller searches, and finds the Contact it became).
    async fn read_person(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        id: &str,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<Option<Candidate>, Failure> {
        let q = format!("SELECT {} FROM {} WHERE Id = {}", self.select(object, fields), object_name(object), soql_text(id));
        let page: QueryPage = t
            .fetch(
                api,
                &Request::get(self.data(&format!("/query/?q={}", urlencode(&q))), RequestClass::Read).audited_as(json!({ "q": q })),
                log,
            )
            .await?;
        Ok(page.records.into_iter().find(|r| !converted(r)).map(|r| candidate(object, r, fields)))
    }

    const PEOPLE_PER_READ: usize = 200;

    /// SOQL `Id IN (…)`, 200 ids a query; a converted lead is not here (its person is the
    /// contact it became).
    async fn people_in(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<HashSet<String>, Failure> {
        let list = ids.iter().map(|id| soql_text(id)).collect::<Vec<_>>().join(", ");
        let q = format!("SELECT {} FROM {} WHERE Id IN ({list})", self.select(object, &[]), object_name(object));
        Ok(self.soql(api, t, &q, log).await?.into_iter().filter(|r| !converted(r)).map(|r| r.id).collect())
    }

    /// The object's describe (`/sobjects/{Lead|Contact}/describe/`).
    async fn people_fields(
        &self,
        api: &Api,
        t: &Tenant,
        object: PersonObject,
        log: &mut Vec<Exchange>,
    ) -> Result<Option<(&'static str, BTreeSet<String>)>, Failure> {
        let name = object_name(object);
        let req = Request::get(self.data(&format!("/sobjects/{name}/describe/")), RequestClass::Schema);
        let describe: Describe = t.fetch(api, &req, log).await?;
        Ok(Some((name, describe.fields.into_iter().map(|f| f.name).collect())))
    }

    /// `Sforce-Auto-Assign`: TRUE runs the org's active lead assignment rule, an
    /// AssignmentRule id that rule, FALSE none (the tenant's owner is among the values).
    async fn create_person(
        &self,
        api: &Api,
        t: &Tenant,
        values: &Map<String, Value>,
        assign: Assign<'_>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> Result<PersonCreated, Failure> {
        let req = Request::new(Method::POST, self.data("/sobjects/Lead/"), RequestClass::Create)
            .body(values)
            .header(
                "Sforce-Auto-Assign",
                match assign {
                    Assign::Tenant => "FALSE",
                    Assign::Crm => "TRUE",
                    Assign::CrmRule(id) => id,
                },
            )
            .fenced(fence.iter().map(String::as_str))
            .not_replay_safe();
        match t.fetch::<super::wire::Created>(api, &req, log).await {
            Ok(c) => Ok(PersonCreated::Created(PersonObject::Lead, c.id)),
            Err(f) if f.excerpt.as_deref().is_some_and(|e| e.contains("DUPLICATES_DETECTED")) => {
                match duplicates_in(f.excerpt.as_deref().unwrap_or_default()).into_iter().next() {
                    Some((object, id)) => Ok(PersonCreated::Exists(object, id)),
                    None => Err(Failure {
                        reason: DlqReason::Validation,
                        detail: format!(
                            "the org's duplicate rule refused a new Lead and its answer named no record crm-sync could read ({}): \
                             merge or relax the rule, then replay",
                            f.detail
                        ),
                        ..f
                    }),
                }
            }
            Err(f) => Err(f),
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
        let req =
            Request::new(Method::PATCH, self.data(&format!("/sobjects/{}/{}", object_name(object), urlencode(id))), RequestClass::Update)
                .body(values)
                .header("Sforce-Auto-Assign", "FALSE")
                .fenced(fence.iter().map(String::as_str));
        t.call(api, &req, log).await.map(|_| ())
    }

    fn creates_person_as(&self) -> PersonObject {
        PersonObject::Lead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_rules_refusal_names_its_records_contacts_first() {
        let body = r#"[{"duplicateResut":{"allowSave":false,"duplicateRule":"Standard_Lead_Duplicate_Rule","matchResults":[
            {"entityType":"Lead","matchRecords":[{"matchConfidence":100.0,"record":{"attributes":{"type":"Lead"},"Id":"00Q1"}}]},
            {"entityType":"Contact","matchRecords":[{"matchConfidence":100.0,"record":{"attributes":{"type":"Contact"},"Id":"0031"}}]}]},
            "errorCode":"DUPLICATES_DETECTED","fields":[],"message":"Use one of these records?"}]"#;
        assert_eq!(duplicates_in(body), [(PersonObject::Contact, "0031".to_string()), (PersonObject::Lead, "00Q1".to_string())]);
        // A composite answer spells it right; a cut answer names nobody.
        assert_eq!(duplicates_in(&body.replace("duplicateResut", "duplicateResult")).len(), 2);
        assert!(duplicates_in(&body[..200]).is_empty());
    }
}
