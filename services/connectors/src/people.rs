//! The CRM's side of a lead (issue 22): its people, as [`crate::person::write_lead`] finds,
//! reads, creates and updates them. Each CRM that takes leads implements [`People`] in its
//! own `people.rs`; one that does not keeps the defaults, which refuse ("writer --crm X does
//! not write leads"; the tenants file refuses such a connection before any lead is read).

use crate::api::Api;
use crate::client::TenantClient;
use crate::connector::Connector;
use crate::exchange::{Exchange, Failure};
use crate::person::{Candidate, PersonObject};
use crm_common::events::{Crm, DlqReason};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

/// What a lead's person is looked for by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonKey<'a> {
    /// Canonical (lower case).
    Email(&'a str),
    /// E.164.
    Phone(&'a str),
}

/// What a person create answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonCreated {
    Created(PersonObject, String),
    /// Refused: the CRM says this person exists already (its search had not shown them).
    Exists(PersonObject, String),
}

/// Who gives a new person their owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign<'a> {
    /// The tenant's rule: the owner is among the values (or, with none, the CRM's default
    /// owner); the CRM's assignment rules are told not to run where they would.
    Tenant,
    /// The CRM's active lead assignment rule where it runs one unasked (Salesforce's
    /// `Sforce-Auto-Assign: TRUE`), else its default owner.
    Crm,
    /// This assignment rule of the CRM's (Salesforce's rule id in `Sforce-Auto-Assign`,
    /// Zoho's `lar_id`).
    CrmRule(&'a str),
}

fn no_leads(crm: Crm) -> Failure {
    Failure::new(DlqReason::Validation, format!("writer --crm {} does not write leads", crm.as_str()))
}

type Answer<T> = Result<T, Failure>;

pub trait People: Connector {
    /// The people (contacts, and leads where the CRM keeps them apart) `key` names, with
    /// their values of `fields` and when they last changed. An email is matched as the CRM
    /// matches it (case aside); a number in E.164, the CRM's values read in the tenant's
    /// region. Converted or archived people are not people here.
    fn find_people(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        key: PersonKey<'_>,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<Vec<Candidate>>> + Send {
        let _ = (api, t, key, fields, log);
        async move { Err(no_leads(self.crm())) }
    }
    /// One person by id with their values of `fields`; None when they are gone (deleted,
    /// merged away, or a lead converted since: the caller searches again).
    fn read_person(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        object: PersonObject,
        id: &str,
        fields: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<Option<Candidate>>> + Send {
        let _ = (api, t, object, id, fields, log);
        async move { Err(no_leads(self.crm())) }
    }
    /// How many ids one `people_in` read takes: the CRM's batch limit.
    const PEOPLE_PER_READ: usize = 1;
    /// Which of `ids` (people of `object`) are still there under those ids, read as many to
    /// a request as the CRM allows (`PEOPLE_PER_READ` to a `people_in`): the reconciler's
    /// people pass reads every person its leads were written as each pass. The rest are
    /// gone: deleted, merged away, or a lead converted (`read_person` and a search tell
    /// which).
    fn people_here(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<HashSet<String>>> + Send {
        async move {
            let mut here = HashSet::new();
            for chunk in ids.chunks(Self::PEOPLE_PER_READ.max(1)) {
                here.extend(self.people_in(api, t, object, chunk, log).await?);
            }
            Ok(here)
        }
    }
    /// `people_here` for at most `PEOPLE_PER_READ` ids, in one read where the CRM has one.
    /// The default reads one by one.
    fn people_in(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        object: PersonObject,
        ids: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<HashSet<String>>> + Send {
        async move {
            let mut here = HashSet::new();
            for id in ids {
                if let Some(c) = self.read_person(api, t, object, id, &[], log).await? {
                    if c.object == object && c.id == *id {
                        here.insert(c.id);
                    }
                }
            }
            Ok(here)
        }
    }
    /// Creates a person with `values` (the lead contract's object), their owner given as
    /// `assign` says. Each request carries `fence` (the lead's and the person's claim keys).
    /// Not replay-safe: an unknown outcome fails `maybe_applied`. A create the CRM refuses
    /// because the person exists (a unique email, a duplicate rule) answers which person.
    fn create_person(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        values: &Map<String, Value>,
        assign: Assign<'_>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<PersonCreated>> + Send {
        let _ = (api, t, values, assign, fence, log);
        async move { Err(no_leads(self.crm())) }
    }
    /// Sets `values` on a person (never the CRM's assignment rules: an existing person's
    /// owner is the CRM's).
    fn update_person(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        person: (PersonObject, &str),
        values: &Map<String, Value>,
        fence: &[String],
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<()>> + Send {
        let _ = (api, t, person, values, fence, log);
        async move { Err(no_leads(self.crm())) }
    }
    /// The CRM's lead assignment rules a create may name (`Assign::CrmRule`), by id with
    /// their names, for `crm-sync tenants check`; None where the CRM has none an API create
    /// names, or they cannot be listed.
    fn assignment_rules(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<Option<Vec<(String, String)>>>> + Send {
        let _ = (api, t, log);
        async move { Ok(None) }
    }
    /// The fields of the CRM's `object` people, with the object's name as the CRM names it
    /// (the names a lead contract uses): `crm-sync tenants check` looks for the contract's
    /// fields on both where people are two objects (a lead may update a contact though
    /// people are created as leads), and `tenants provision` creates the missing. None
    /// where the CRM has no such object (HubSpot's and Pipedrive's people are contacts only)
    /// or does not list its fields.
    fn people_fields(
        &self,
        api: &Api,
        t: &TenantClient<Self::Policy>,
        object: PersonObject,
        log: &mut Vec<Exchange>,
    ) -> impl Future<Output = Answer<Option<(&'static str, BTreeSet<String>)>>> + Send {
        let _ = (api, t, object, log);
        async move { Ok(None) }
    }
    /// Which of its people a create makes (the lead contract's object): HubSpot a contact,
    /// Salesforce and Zoho a lead.
    fn creates_person_as(&self) -> PersonObject {
        PersonObject::Contact
    }
    /// Whether reading a person by id spends a scarcer budget than searching for them
    /// (HubSpot: a read spends the 10-second burst every write needs, search has a limit of
    /// its own). Then a person the person claim remembers is read by id only while a
    /// search may not show them yet (`people_lag`), and searched for after.
    fn reads_cost_more_than_searches(&self) -> bool {
        false
    }
    /// How far behind writes `find_people` shows people (a search index); zero where it
    /// reads the records themselves (Salesforce SOQL).
    fn people_lag(&self) -> Duration {
        Duration::ZERO
    }
}
