//! Zoho CRM REST (CRM-APIS §3): the Calls, Contacts and Leads modules, multi-record insert and update
//! (up to 100, 207 on partial success), search (204 when nothing matches, lagging behind
//! writes), COQL (no lag), deleted records, field metadata and the OAuth refresh flow.
//! Served under `/zoho`, which stands in for both the `api_domain` and the accounts host.
//! Any API version `v2`..`v8` is accepted; record shapes are the same.

pub mod errors;
pub mod limits;
mod oauth;
mod records;
mod users;

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

pub struct Zoho;

pub const BATCH_MAX: usize = 100;

pub fn new_id(acct: &mut Account) -> String {
    (5_725_767_000_000_000_000u64 + acct.next_seq()).to_string()
}

pub fn zoho_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

pub fn schema() -> Schema {
    use FieldType::*;
    let ro = FieldDef::read_only;
    let mut common = BTreeMap::new();
    for f in ["id", "Created_Time", "Modified_Time", "Created_By", "Modified_By"] {
        common.insert(f.to_string(), ro(Text));
    }
    common.insert("Owner".into(), FieldDef::of(Lookup));
    let mut calls = common.clone();
    calls.insert("Subject".into(), FieldDef::required(Text));
    calls.insert("Call_Type".into(), FieldDef { required: true, ..FieldDef::picklist(&["Inbound", "Outbound", "Missed"]) });
    calls.insert("Call_Start_Time".into(), FieldDef::of(DateTime));
    calls.insert("Call_Duration".into(), FieldDef::of(Text));
    calls.insert("Call_Duration_in_seconds".into(), ro(Number));
    calls.insert("Who_Id".into(), FieldDef::of(Lookup));
    calls.insert("What_Id".into(), FieldDef::of(Lookup));
    calls.insert("$se_module".into(), FieldDef::of(Text));
    calls.insert("Description".into(), FieldDef::of(Json));
    calls.insert(
        "Call_Purpose".into(),
        FieldDef::picklist(&["-None-", "Prospecting", "Administrative", "Negotiation", "Demo", "Project", "Desk"]),
    );
    calls.insert("Call_Result".into(), FieldDef::of(Text));
    calls.insert("Call_Agenda".into(), FieldDef::of(Text));
    calls.insert("Outbound_Call_Status".into(), FieldDef::picklist(&["Scheduled", "Completed", "Overdue", "Cancelled"]));
    // Events, the UI's "Meetings" (CRM-APIS-ACTIVITIES §2.3): title and times mandatory,
    // Participants by type, `$se_module` with What_Id, a cancel action; no upsert.
    let mut events = common.clone();
    events.insert("Event_Title".into(), FieldDef::required(Text));
    events.insert("Start_DateTime".into(), FieldDef::required(DateTime));
    events.insert("End_DateTime".into(), FieldDef::required(DateTime));
    events.insert("All_day".into(), FieldDef::of(Bool));
    events.insert("Venue".into(), FieldDef::of(Text));
    events.insert("Description".into(), FieldDef::of(Json));
    events.insert("Who_Id".into(), FieldDef::of(Lookup));
    events.insert("What_Id".into(), FieldDef::of(Lookup));
    events.insert("$se_module".into(), FieldDef::of(Text));
    events.insert("Participants".into(), FieldDef::of(Json));
    events.insert("$event_cancelled".into(), ro(Bool));
    let mut contacts = common.clone();
    contacts.insert("First_Name".into(), FieldDef::of(Text));
    contacts.insert("Last_Name".into(), FieldDef::required(Text));
    contacts.insert("Full_Name".into(), ro(Text));
    contacts.insert("Email".into(), FieldDef::of(Text));
    for f in ["Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone"] {
        contacts.insert(f.into(), FieldDef::of(Phone));
    }
    contacts.insert("Account_Name".into(), FieldDef::of(Lookup));
    // Leads (CRM-APIS-ACTIVITIES §5.3): Last_Name and Company mandatory (the default
    // layout's; the harsher case), two phone fields, the lead's own job title and address.
    let mut leads = common.clone();
    leads.insert("First_Name".into(), FieldDef::of(Text));
    leads.insert("Last_Name".into(), FieldDef::required(Text));
    leads.insert("Full_Name".into(), ro(Text));
    leads.insert("Company".into(), FieldDef::required(Text));
    leads.insert("Email".into(), FieldDef::of(Text));
    leads.insert("Designation".into(), FieldDef::of(Text));
    leads.insert("Country".into(), FieldDef::of(Text));
    leads.insert("Lead_Status".into(), FieldDef::of(Text));
    for f in ["Phone", "Mobile"] {
        leads.insert(f.into(), FieldDef::of(Phone));
    }
    contacts.insert("Title".into(), FieldDef::of(Text));
    contacts.insert("Mailing_Country".into(), FieldDef::of(Text));
    // Accounts and Deals (CRM-APIS-ACTIVITIES §4.3): a deal's contact is its Contact_Name.
    let mut accounts = common.clone();
    accounts.insert("Account_Name".into(), FieldDef::required(Text));
    let mut deals = common.clone();
    deals.insert("Deal_Name".into(), FieldDef::required(Text));
    deals.insert("Stage".into(), FieldDef::required(Text));
    deals.insert("Contact_Name".into(), FieldDef::of(Lookup));
    deals.insert("Account_Name".into(), FieldDef::of(Lookup));
    deals.insert("Amount".into(), FieldDef::of(Number));
    deals.insert("Closing_Date".into(), FieldDef::of(Text));
    Schema::from([
        ("Calls".into(), calls),
        ("Events".into(), events),
        ("Contacts".into(), contacts),
        ("Leads".into(), leads),
        ("Accounts".into(), accounts),
        ("Deals".into(), deals),
    ])
}

/// Fields Zoho computes: id, times, Full_Name, duration in seconds; Who_Id follows a merge.
pub fn derive(object: &str, r: &mut Record) {
    let f = &mut r.fields;
    f.insert("id".into(), json!(r.id));
    f.insert("Created_Time".into(), json!(zoho_datetime(r.created_ms)));
    f.insert("Modified_Time".into(), json!(zoho_datetime(r.updated_ms)));
    let admin = json!({"name": "Sim Admin", "id": "5725767000000000001", "email": "admin@example.com"});
    f.entry("Created_By").or_insert(admin.clone());
    f.insert("Modified_By".into(), admin);
    match object {
        "Contacts" | "Leads" => {
            let name =
                [f.get("First_Name"), f.get("Last_Name")].into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(" ");
            f.insert("Full_Name".into(), json!(name));
        }
        "Calls" => {
            if let Some(who) = r.associations.iter().next() {
                let name = f.get("Who_Id").and_then(|w| w.get("name")).cloned().unwrap_or(Value::Null);
                f.insert("Who_Id".into(), json!({"id": who, "name": name}));
            }
            if let Some(secs) = f.get("Call_Duration").and_then(Value::as_str).and_then(duration_secs) {
                f.insert("Call_Duration_in_seconds".into(), json!(secs));
            }
        }
        _ => {}
    }
}

/// "mm:ss" (Zoho's docs also say "HH:mm"; both read as two numbers, the first in minutes).
pub fn duration_secs(s: &str) -> Option<u64> {
    let (a, b) = s.split_once(':')?;
    if a.is_empty() || a.len() > 4 || b.len() != 2 || !a.chars().all(|c| c.is_ascii_digit()) || !b.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (m, sec): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    (sec < 60).then_some(m * 60 + sec)
}

impl CrmApi for Zoho {
    const CRM: Crm = Crm::Zoho;

    fn credential(req: &Request) -> Option<String> {
        gate::auth_scheme(req, "Zoho-oauthtoken")
    }

    fn auth_failure(f: AuthFailure) -> Response {
        match f {
            AuthFailure::Missing => errors::error(401, "AUTHENTICATION_FAILURE", "Authentication failed", json!({})),
            _ => errors::error(401, "INVALID_TOKEN", "invalid oauth token", json!({})),
        }
    }

    fn class(method: &Method, route: &str, _path: &str) -> Class {
        if route.ends_with("/search") {
            return Class::Search;
        }
        if route.contains("/settings/") {
            return if *method == Method::POST { Class::Create } else { Class::Meta };
        }
        if route.ends_with("/coql") || route.ends_with("/deleted") || (*method == Method::GET && route.ends_with("{module}")) {
            return Class::List;
        }
        Class::of_method(method)
    }

    fn permission(class: Class, route: &str, path: &str) -> Option<&'static str> {
        if route.ends_with("/users") {
            return Some("users.READ");
        }
        // Creating a field: the ZohoCRM.settings.fields.CREATE scope (CRM-APIS-ACTIVITIES §6.3).
        if route.contains("/settings/fields") && class == Class::Create {
            return Some("settings.fields.CREATE");
        }
        // associate_email needs the emails scope besides the record's module (the v8 page).
        if path.contains("associate_email") || path.ends_with("/Emails") || path.contains("email_available") {
            return Some(if matches!(class, Class::Create | Class::Update) { "Emails.create" } else { "Emails.view" });
        }
        if path.contains("/Leads") {
            return Some(match class {
                Class::Create => "Leads.create",
                Class::Update | Class::Delete => "Leads.edit",
                _ => "Leads.view",
            });
        }
        let contacts = path.contains("/Contacts");
        let events = path.contains("/Events");
        Some(match (class, contacts, events) {
            (Class::Meta, _, _) => return None,
            (Class::Create | Class::Update | Class::Delete, true, _) => "Contacts.edit",
            (_, true, _) => "Contacts.view",
            (Class::Create, _, true) => "Events.create",
            (Class::Update, _, true) => "Events.edit",
            (Class::Delete, _, true) => "Events.delete",
            (_, _, true) => "Events.view",
            (Class::Create, _, _) => "Calls.create",
            (Class::Update, _, _) => "Calls.edit",
            (Class::Delete, _, _) => "Calls.delete",
            _ => "Calls.view",
        })
    }

    fn permission_denied(permission: &str) -> Response {
        let (module, action) = permission.split_once('.').unwrap_or((permission, ""));
        let perm = match action {
            "create" => format!("Crm_Implied_Create_{module}"),
            "edit" => format!("Crm_Implied_Edit_{module}"),
            "delete" => format!("Crm_Implied_Delete_{module}"),
            _ => format!("Crm_Implied_View_{module}"),
        };
        errors::error(403, "NO_PERMISSION", "permission denied", json!({"permissions": [perm]}))
    }

    fn admit(acct: &mut Account, caller: &Caller, class: Class, now: i64) -> Result<(), Response> {
        limits::admit(acct, caller, class, now)
    }

    fn finish(acct: &mut Account, caller: &Caller, _class: Class, charge: u64, now: i64, headers: &mut HeaderMap) {
        limits::finish(acct, caller, charge, now, headers)
    }

    fn fault(kind: FaultKind, _acct: &mut Account, _caller: &Caller, _class: Class, _now: i64) -> Response {
        match kind {
            FaultKind::Throttle => errors::too_many_requests(),
            FaultKind::Status500 => errors::error(500, "INTERNAL_ERROR", "Internal Server Error", json!({})),
            other => gate::gateway_error(other.status()),
        }
    }
}

pub fn router(sim: SharedSim) -> Router {
    let v = "/crm/{version}";
    let api = Router::new()
        .route(&format!("{v}/coql"), post(records::coql))
        .route(&format!("{v}/users"), get(users::list))
        .route(&format!("{v}/settings/fields"), get(records::fields).post(records::create_fields))
        .route(&format!("{v}/settings/automation/assignment_rules"), get(records::assignment_rules))
        .route(&format!("{v}/{{module}}"), post(records::insert).put(records::update_many).delete(records::delete_many).get(records::list))
        .route(&format!("{v}/{{module}}/search"), get(records::search))
        .route(&format!("{v}/{{module}}/deleted"), get(records::deleted))
        .route(&format!("{v}/{{module}}/{{id}}"), get(records::read).put(records::update_one).delete(records::delete_one))
        .route(&format!("{v}/Events/{{id}}/actions/cancel"), post(records::cancel_event))
        .route(&format!("{v}/{{module}}/{{id}}/actions/associate_email"), post(records::associate_email))
        .route(&format!("{v}/{{module}}/{{id}}/Emails"), get(records::related_emails))
        .route(&format!("{v}/actions/email_available"), get(records::email_available))
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), gate::gate::<Zoho>));
    let oauth = Router::new().route("/oauth/v2/token", post(oauth::token));
    api.merge(oauth).with_state(sim)
}

#[cfg(test)]
mod tests {
    use super::duration_secs;

    #[test]
    fn durations() {
        assert_eq!(duration_secs("02:05"), Some(125));
        assert_eq!(duration_secs("125:00"), Some(7500));
        assert_eq!(duration_secs("00:00"), Some(0));
        assert_eq!(duration_secs("2:5"), None);
        assert_eq!(duration_secs("02:75"), None);
        assert_eq!(duration_secs("125"), None);
    }
}
