//! The per-CRM pieces the admin API needs: plan presets, schemas, record ids and derived
//! fields, so that records an admin seeds look exactly like records the API creates.

use crate::limits::{with_overrides, Limits};
use crate::state::{Account, Crm, Record, Schema};
use serde_json::Value;

pub fn default_plan(crm: Crm) -> &'static str {
    match crm {
        Crm::Hubspot => "professional",
        Crm::Salesforce => "enterprise",
        Crm::Zoho => "enterprise",
        Crm::Pipedrive => "growth",
    }
}

pub fn defaults(crm: Crm, plan: &str, seats: u64, overrides: Option<&Value>) -> Result<(Limits, Schema), String> {
    Ok(match crm {
        Crm::Hubspot => (Limits::Hubspot(with_overrides(crate::hubspot::limits::preset(plan)?, overrides)?), crate::hubspot::schema()),
        Crm::Salesforce => {
            (Limits::Salesforce(with_overrides(crate::salesforce::limits::preset(plan, seats)?, overrides)?), crate::salesforce::schema())
        }
        Crm::Zoho => (Limits::Zoho(with_overrides(crate::zoho::limits::preset(plan, seats)?, overrides)?), crate::zoho::schema()),
        Crm::Pipedrive => {
            (Limits::Pipedrive(with_overrides(crate::pipedrive::limits::preset(plan, seats)?, overrides)?), crate::pipedrive::schema())
        }
    })
}

/// Object names each CRM uses (the admin API takes them as they are in the CRM's own API).
pub fn objects(crm: Crm) -> &'static [&'static str] {
    match crm {
        Crm::Hubspot => &["contacts", "calls", "emails", "meetings", "owners", "companies", "deals"],
        Crm::Salesforce => &["Contact", "Lead", "Task", "Event", "User", "Account", "Opportunity", "OpportunityContactRole"],
        Crm::Zoho => &["Contacts", "Leads", "Calls", "Events", "users", "Accounts", "Deals"],
        Crm::Pipedrive => &["persons", "activities", "users", "organizations", "deals"],
    }
}

pub fn new_id(crm: Crm, acct: &mut Account, object: &str) -> String {
    match crm {
        Crm::Hubspot => (30_000_000_000u64 + acct.next_seq()).to_string(),
        Crm::Salesforce => crate::salesforce::new_id(acct, object),
        Crm::Zoho => crate::zoho::new_id(acct),
        Crm::Pipedrive => acct.next_seq().to_string(),
    }
}

/// Fields the CRM computes (HubSpot's searchable digits, ids and timestamps).
pub fn derive(crm: Crm, object: &str, r: &mut Record) {
    match crm {
        Crm::Hubspot => crate::hubspot::derive(object, r),
        Crm::Salesforce => crate::salesforce::derive(object, r),
        Crm::Zoho => crate::zoho::derive(object, r),
        Crm::Pipedrive => crate::pipedrive::derive(object, r),
    }
}
