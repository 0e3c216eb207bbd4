//! Salesforce REST API (CRM-APIS §2): Task as the call record, Contact and Lead, sObject
//! Collections, external-ID upsert, SOQL (query/queryAll), SOSL phone search, deleted-record
//! listing, describe, limits and the OAuth refresh flow. Served under `/salesforce`, which
//! stands in for both the org's instance URL and the login host.

pub mod errors;
pub mod leads;
pub mod limits;
mod oauth;
mod query;
pub mod setup;
mod sobjects;

use crate::faults::FaultKind;
use crate::gate::{self, AuthFailure, Class, CrmApi};
use crate::state::{Account, Caller, Crm, FieldDef, FieldType, Record, Schema, SharedSim};
use axum::extract::Request;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct Salesforce;

pub const COLLECTION_MAX: usize = 200;

/// Key prefixes of the objects modelled (the first three characters of every id).
pub fn prefix(object: &str) -> &'static str {
    match object {
        "Task" => "00T",
        "Event" => "00U",
        "Contact" => "003",
        "Lead" => "00Q",
        "User" => "005",
        "Opportunity" => "006",
        "OpportunityContactRole" => "00K",
        "CustomField" => "00N",
        "PermissionSet" => "0PS",
        "FieldPermissions" => "01k",
        "PermissionSetAssignment" => "0Pa",
        _ => "001",
    }
}

pub fn object_of_id(id: &str) -> Option<&'static str> {
    match id.get(..3)? {
        "00T" => Some("Task"),
        "00U" => Some("Event"),
        "003" => Some("Contact"),
        "00Q" => Some("Lead"),
        "005" => Some("User"),
        "001" => Some("Account"),
        "006" => Some("Opportunity"),
        "00K" => Some("OpportunityContactRole"),
        _ => None,
    }
}

const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The three-character suffix that makes a 15-character id case-insensitively unique.
pub fn id_suffix(id15: &str) -> String {
    const MAP: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let flags = chunk.iter().enumerate().fold(0usize, |acc, (i, c)| if c.is_ascii_uppercase() { acc | (1 << i) } else { acc });
            MAP[flags] as char
        })
        .collect()
}

/// Accepts 15- or 18-character ids; answers the 18-character form.
pub fn normalise_id(id: &str) -> Option<String> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(format!("{id}{}", id_suffix(id))),
        18 if id_suffix(&id[..15]).eq_ignore_ascii_case(&id[15..]) => Some(format!("{}{}", &id[..15], id_suffix(&id[..15]))),
        _ => None,
    }
}

pub fn new_id(acct: &mut Account, object: &str) -> String {
    let mut n = acct.next_seq();
    let mut digits = [b'0'; 7];
    for d in digits.iter_mut().rev() {
        *d = B62[(n % 62) as usize];
        n /= 62;
    }
    let id15 = format!("{}Dn000{}", prefix(object), std::str::from_utf8(&digits).unwrap());
    format!("{id15}{}", id_suffix(&id15))
}

/// The standard Lead statuses (a new org's picklist); the first is the default.
pub const LEAD_STATUSES: &[&str] = &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"];

pub fn schema() -> Schema {
    use FieldType::*;
    let ro = FieldDef::read_only;
    let mut common = BTreeMap::new();
    for f in ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        common.insert(f.to_string(), ro(Text));
    }
    common.insert("IsDeleted".into(), ro(Bool));
    common.insert("OwnerId".into(), FieldDef::of(Lookup));

    let mut task = common.clone();
    task.insert("Subject".into(), FieldDef::of(Text));
    task.insert(
        "TaskSubtype".into(),
        FieldDef { create_only: true, ..FieldDef::picklist(&["Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"]) },
    );
    task.insert("Status".into(), FieldDef::picklist(&["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"]));
    task.insert("Priority".into(), FieldDef::picklist(&["High", "Normal", "Low"]));
    task.insert("WhoId".into(), FieldDef::of(Lookup));
    // A JunctionIdList like Event's: up to 50 contacts or one lead (shared activities).
    task.insert("TaskWhoIds".into(), FieldDef::of(Json));
    task.insert("WhatId".into(), FieldDef::of(Lookup));
    task.insert("ActivityDate".into(), FieldDef::of(Date));
    task.insert("CallType".into(), FieldDef::picklist(&["Inbound", "Outbound", "Internal"]));
    task.insert("CallDurationInSeconds".into(), FieldDef::of(Number));
    task.insert("CallDisposition".into(), FieldDef::of(Text));
    task.insert("CallObject".into(), FieldDef::of(Text));
    task.insert("Description".into(), FieldDef::of(Json));
    task.insert("IsClosed".into(), ro(Bool));
    // The account a "what" implies (the Account itself, an Opportunity's account).
    task.insert("AccountId".into(), ro(Lookup));

    let mut contact = common.clone();
    contact.insert("FirstName".into(), FieldDef::of(Text));
    contact.insert("LastName".into(), FieldDef::required(Text));
    contact.insert("Name".into(), ro(Text));
    contact.insert("Email".into(), FieldDef::of(Text));
    contact.insert("AccountId".into(), FieldDef::of(Lookup));
    for f in ["Title", "MailingCountry", "LeadSource", "Department"] {
        contact.insert(f.into(), FieldDef::of(Text));
    }
    contact.insert("MasterRecordId".into(), ro(Text));
    for f in ["Phone", "MobilePhone", "HomePhone", "OtherPhone", "AssistantPhone"] {
        contact.insert(f.into(), FieldDef::of(Phone));
    }
    let mut lead = common;
    lead.insert("FirstName".into(), FieldDef::of(Text));
    lead.insert("LastName".into(), FieldDef::required(Text));
    lead.insert("Company".into(), FieldDef::required(Text));
    lead.insert("Name".into(), ro(Text));
    lead.insert("Email".into(), FieldDef::of(Text));
    lead.insert("MasterRecordId".into(), ro(Text));
    // Set by lead conversion (not modelled as an action); a converted lead is read-only.
    lead.insert("IsConverted".into(), ro(Bool));
    for f in ["Title", "Country", "LeadSource", "Website", "Industry"] {
        lead.insert(f.into(), FieldDef::of(Text));
    }
    // Required, with the org's default status applied when a create leaves it out.
    lead.insert("Status".into(), FieldDef::picklist(LEAD_STATUSES));
    for f in ["Phone", "MobilePhone"] {
        lead.insert(f.into(), FieldDef::of(Phone));
    }
    // Event (CRM-APIS-ACTIVITIES §2.2): times in UTC; EventWhoIds relates up to 50 contacts
    // or one lead (shared activities), answered by the create like the JunctionIdList it is.
    let mut event = common_event();
    event.insert("OwnerId".into(), FieldDef::of(Lookup));
    // Users: the owners an activity's OwnerId names (CRM-APIS-ACTIVITIES §3.2). Email is not
    // unique; Username is.
    let mut user = BTreeMap::new();
    for f in ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        user.insert(f.to_string(), ro(Text));
    }
    for f in ["Email", "Name", "Username", "UserType"] {
        user.insert(f.to_string(), FieldDef::of(Text));
    }
    user.insert("IsActive".into(), FieldDef::of(Bool));
    event.insert("AccountId".into(), ro(Lookup));
    // Accounts, opportunities and the contact roles that tie contacts to opportunities
    // (CRM-APIS-ACTIVITIES §4.2). IsClosed follows the stage (Closed Won, Closed Lost).
    let mut base = BTreeMap::new();
    for f in ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        base.insert(f.to_string(), ro(Text));
    }
    base.insert("IsDeleted".into(), ro(Bool));
    let mut account = base.clone();
    account.insert("Name".into(), FieldDef::required(Text));
    account.insert("OwnerId".into(), FieldDef::of(Lookup));
    let mut opportunity = base.clone();
    for f in ["Name", "StageName", "CloseDate"] {
        opportunity.insert(f.into(), FieldDef::required(Text));
    }
    opportunity.insert("AccountId".into(), FieldDef::of(Lookup));
    opportunity.insert("Amount".into(), FieldDef::of(Number));
    opportunity.insert("IsClosed".into(), ro(Bool));
    opportunity.insert("IsWon".into(), ro(Bool));
    let mut role = base;
    role.insert("ContactId".into(), FieldDef::required(Lookup));
    role.insert("OpportunityId".into(), FieldDef::required(Lookup));
    role.insert("IsPrimary".into(), FieldDef::of(Bool));
    role.insert("Role".into(), FieldDef::of(Text));
    Schema::from([
        ("Account".into(), account),
        ("Opportunity".into(), opportunity),
        ("OpportunityContactRole".into(), role),
        ("Task".into(), task),
        ("Event".into(), event),
        ("Contact".into(), contact),
        ("Lead".into(), lead),
        ("User".into(), user),
    ])
}

fn common_event() -> BTreeMap<String, FieldDef> {
    use FieldType::*;
    let ro = FieldDef::read_only;
    let mut event = BTreeMap::new();
    for f in ["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"] {
        event.insert(f.to_string(), ro(Text));
    }
    event.insert("IsDeleted".into(), ro(Bool));
    event.insert("Subject".into(), FieldDef::of(Text));
    event.insert("StartDateTime".into(), FieldDef::of(DateTime));
    event.insert("EndDateTime".into(), FieldDef::of(DateTime));
    event.insert("ActivityDateTime".into(), FieldDef::of(DateTime));
    event.insert("ActivityDate".into(), FieldDef::of(Date));
    event.insert("DurationInMinutes".into(), FieldDef::of(Number));
    event.insert("IsAllDayEvent".into(), FieldDef::of(Bool));
    event.insert("Location".into(), FieldDef::of(Text));
    event.insert("Description".into(), FieldDef::of(Json));
    event.insert("ShowAs".into(), FieldDef::picklist(&["Busy", "Free", "OutOfOffice"]));
    event.insert("EventSubtype".into(), FieldDef { create_only: true, ..FieldDef::picklist(&["Event"]) });
    event.insert("WhoId".into(), FieldDef::of(Lookup));
    event.insert("WhatId".into(), FieldDef::of(Lookup));
    // A JunctionIdList: taken off the body before the field checks, answered on reads.
    event.insert("EventWhoIds".into(), FieldDef::of(Json));
    event
}

/// Fields Salesforce computes: Id, audit dates, IsDeleted, Name; WhoId follows a merge.
pub fn derive(object: &str, r: &mut Record) {
    let f = &mut r.fields;
    f.insert("Id".into(), json!(r.id));
    f.insert("CreatedDate".into(), json!(sf_datetime(r.created_ms)));
    f.insert("LastModifiedDate".into(), json!(sf_datetime(r.updated_ms)));
    f.insert("SystemModstamp".into(), json!(sf_datetime(r.updated_ms)));
    f.insert("IsDeleted".into(), json!(r.deleted_ms.is_some()));
    match object {
        "User" => {
            // Every Salesforce user has these; an admin-made one may leave them out.
            f.entry("IsActive").or_insert(json!(true));
            f.entry("UserType").or_insert(json!("Standard"));
            if !f.contains_key("Username") {
                let name = f.get("Email").and_then(Value::as_str).map(|e| format!("{e}.sim")).unwrap_or_else(|| format!("{}@sim", r.id));
                f.insert("Username".into(), json!(name));
            }
        }
        "Opportunity" => {
            let stage = f.get("StageName").and_then(Value::as_str).unwrap_or_default().to_string();
            f.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            f.insert("IsWon".into(), json!(stage == "Closed Won"));
        }
        "Contact" | "Lead" => {
            let name =
                [f.get("FirstName"), f.get("LastName")].into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
            f.insert("Name".into(), json!(name));
            if let Some(m) = &r.merged_into {
                f.insert("MasterRecordId".into(), json!(m));
            }
            // Every lead is unconverted until converted, however it was made (the admin API
            // seeds records as a person types them).
            if object == "Lead" {
                f.entry("IsConverted").or_insert(json!(false));
            }
        }
        "Event" => {
            // WhoId is the primary person; EventWhoIds every related person.
            if !f.contains_key("WhoId") {
                if let Some(who) = r.associations.iter().next() {
                    f.insert("WhoId".into(), json!(who));
                }
            }
            f.insert("EventWhoIds".into(), json!(r.associations.iter().collect::<Vec<_>>()));
        }
        "Task" => {
            // The primary person stays while it is still related (a merge moves it).
            let kept = f.get("WhoId").and_then(Value::as_str).is_some_and(|w| r.associations.contains(w));
            if !kept {
                if let Some(who) = r.associations.iter().next() {
                    f.insert("WhoId".into(), json!(who));
                }
            }
            f.insert("TaskWhoIds".into(), json!(r.associations.iter().collect::<Vec<_>>()));
            let closed = f.get("Status").and_then(Value::as_str) == Some("Completed");
            f.insert("IsClosed".into(), json!(closed));
        }
        _ => {}
    }
}

pub fn sf_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

impl CrmApi for Salesforce {
    const CRM: Crm = Crm::Salesforce;

    fn credential(req: &Request) -> Option<String> {
        gate::auth_scheme(req, "Bearer").or_else(|| gate::auth_scheme(req, "OAuth"))
    }

    fn auth_failure(_f: AuthFailure) -> Response {
        errors::error(401, "INVALID_SESSION_ID", "Session expired or invalid", &[])
    }

    fn class(method: &Method, route: &str, _path: &str) -> Class {
        if route.contains("/search") {
            return Class::Search;
        }
        if route.ends_with("/limits") || route.contains("/describe") || route.ends_with("/userinfo") {
            return Class::Meta;
        }
        if route.contains("/query") || route.contains("/deleted") {
            return Class::List;
        }
        Class::of_method(method)
    }

    fn permission(class: Class, route: &str, path: &str) -> Option<&'static str> {
        // Setup through the API: the user permissions Salesforce names for each.
        if route.contains("/tooling/") {
            return Some("CustomizeApplication");
        }
        if path.ends_with("/sobjects/PermissionSetAssignment") {
            return Some("AssignPermissionSets");
        }
        if path.ends_with("/sobjects/PermissionSet") || path.ends_with("/sobjects/FieldPermissions") {
            return Some("ManagePermissionSets");
        }
        // Object-level CRUD on Task, as a profile or permission set grants it.
        match class {
            Class::Create => Some("Task.create"),
            Class::Update => Some("Task.edit"),
            Class::Delete => Some("Task.delete"),
            Class::Meta => None,
            _ => Some("Task.read"),
        }
    }

    fn permission_denied(_permission: &str) -> Response {
        errors::error(403, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id", &[])
    }

    fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
        limits::admit(acct, caller, class, now)
    }

    fn finish(acct: &mut Account, _caller: &Caller, _class: Class, _charge: u64, now: i64, headers: &mut HeaderMap) {
        limits::headers(acct, now, headers)
    }

    fn fault(kind: FaultKind, _acct: &mut Account, _caller: &Caller, _class: Class, _now: i64) -> Response {
        match kind {
            FaultKind::Throttle => errors::error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", &[]),
            FaultKind::Status500 => errors::error(
                500,
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)",
                &[],
            ),
            FaultKind::Status503 => errors::error(503, "SERVER_UNAVAILABLE", "Server is unavailable, please try again later.", &[]),
            other => gate::gateway_error(other.status()),
        }
    }
}

pub fn router(sim: SharedSim) -> Router {
    let v = "/services/data/{version}";
    let api = Router::new()
        .route(&format!("{v}/limits"), get(sobjects::limits))
        .route(&format!("{v}/limits/"), get(sobjects::limits))
        .route(&format!("{v}/sobjects/{{sobject}}"), post(sobjects::create))
        .route(&format!("{v}/sobjects/{{sobject}}/"), post(sobjects::create))
        .route(&format!("{v}/sobjects/{{sobject}}/describe"), get(sobjects::describe))
        .route(&format!("{v}/sobjects/{{sobject}}/describe/"), get(sobjects::describe))
        .route(&format!("{v}/sobjects/{{sobject}}/deleted"), get(sobjects::deleted))
        .route(&format!("{v}/sobjects/{{sobject}}/deleted/"), get(sobjects::deleted))
        .route(&format!("{v}/sobjects/{{sobject}}/{{id}}"), get(sobjects::read).patch(sobjects::update).delete(sobjects::delete))
        .route(&format!("{v}/sobjects/{{sobject}}/{{field}}/{{value}}"), get(sobjects::read_by_ext).patch(sobjects::upsert))
        .route(
            &format!("{v}/composite/sobjects"),
            post(sobjects::collection_create).patch(sobjects::collection_update).delete(sobjects::collection_delete),
        )
        .route(&format!("{v}/composite/sobjects/{{sobject}}"), get(sobjects::collection_read))
        .route(&format!("{v}/composite/sobjects/{{sobject}}/{{field}}"), axum::routing::patch(sobjects::collection_upsert))
        .route(&format!("{v}/query"), get(query::query))
        .route(&format!("{v}/query/"), get(query::query))
        .route(&format!("{v}/queryAll"), get(query::query_all))
        .route(&format!("{v}/queryAll/"), get(query::query_all))
        .route(&format!("{v}/search"), get(query::search))
        .route(&format!("{v}/search/"), get(query::search))
        .route(&format!("{v}/tooling/sobjects/CustomField"), post(setup::create_custom_field))
        .route(&format!("{v}/tooling/sobjects/CustomField/"), post(setup::create_custom_field))
        .route("/services/oauth2/userinfo", get(setup::userinfo))
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), gate::gate::<Salesforce>));
    let oauth = Router::new().route("/services/oauth2/token", post(oauth::token));
    api.merge(oauth).with_state(sim)
}

/// `v66.0` → 66; anything else is not an API version.
pub fn api_version(v: &str) -> Option<u32> {
    let rest = v.strip_prefix('v')?;
    let (major, minor) = rest.split_once('.')?;
    (minor == "0").then_some(())?;
    major.parse().ok().filter(|m| (20..=70).contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_suffix_matches_salesforce() {
        // A documented pair: 001A0000006Vm9r → 001A0000006Vm9rIAC.
        assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
        assert_eq!(normalise_id("001A0000006Vm9r").unwrap(), "001A0000006Vm9rIAC");
        assert!(normalise_id("001A0000006Vm9rXXX").is_none());
        assert!(normalise_id("bad id").is_none());
    }

    #[test]
    fn versions() {
        assert_eq!(api_version("v66.0"), Some(66));
        assert_eq!(api_version("66.0"), None);
        assert_eq!(api_version("v66.1"), None);
    }
}
