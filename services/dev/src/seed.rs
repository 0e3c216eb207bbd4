//! What people make in a CRM, as crm-sim's admin API takes it (tests and benches seed
//! accounts with these): users (owners), companies, deals and the links between them, in
//! each CRM's own field names. One place, so the tests' and the benches' accounts agree.

use crm_common::events::Crm;
use serde_json::{json, Value};

/// The table of a CRM's users (owners).
pub fn users_table(crm: Crm) -> &'static str {
    match crm {
        Crm::Hubspot => "owners",
        Crm::Salesforce => "User",
        _ => "users",
    }
}

/// A user with this address, active or deactivated.
pub fn user(crm: Crm, name: &str, email: &str, active: bool) -> Value {
    match crm {
        Crm::Hubspot => json!({"email": email, "firstName": name, "lastName": "Rep", "userId": 77, "archived": !active}),
        Crm::Salesforce => json!({"Email": email, "Name": name, "IsActive": active, "UserType": "Standard"}),
        Crm::Zoho => json!({"email": email, "full_name": name, "status": if active { "active" } else { "disabled" }}),
        _ => json!({"email": email, "name": name, "active_flag": active}),
    }
}

/// The fields that deactivate a user.
pub fn deactivated(crm: Crm) -> Value {
    match crm {
        Crm::Hubspot => json!({"archived": true}),
        Crm::Salesforce => json!({"IsActive": false}),
        Crm::Zoho => json!({"status": "disabled"}),
        _ => json!({"active_flag": false}),
    }
}

/// The table of companies (accounts, organisations) and one named `name`.
pub fn company(crm: Crm, name: &str) -> (&'static str, Value) {
    match crm {
        Crm::Hubspot => ("companies", json!({"name": name, "domain": "customer.example"})),
        Crm::Salesforce => ("Account", json!({"Name": name})),
        Crm::Zoho => ("Accounts", json!({"Account_Name": name})),
        _ => ("organizations", json!({"name": name})),
    }
}

/// The table of deals (opportunities).
pub fn deals_table(crm: Crm) -> &'static str {
    match crm {
        Crm::Hubspot => "deals",
        Crm::Salesforce => "Opportunity",
        Crm::Zoho => "Deals",
        _ => "deals",
    }
}

/// A deal of `contact`'s at `company`, open or lost. HubSpot and Salesforce tie it to the
/// contact with a separate record ([`deal_link`]).
pub fn deal(crm: Crm, name: &str, contact: &str, company: &str, open: bool) -> Value {
    let n = |id: &str| id.parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(id));
    match crm {
        Crm::Hubspot => {
            json!({"dealname": name, "pipeline": "default", "dealstage": if open { "appointmentscheduled" } else { "closedlost" }})
        }
        Crm::Salesforce => {
            json!({"Name": name, "AccountId": company, "StageName": if open { "Prospecting" } else { "Closed Lost" }, "CloseDate": "2027-01-31"})
        }
        Crm::Zoho => {
            json!({"Deal_Name": name, "Stage": if open { "Qualification" } else { "Closed Lost" }, "Contact_Name": {"id": contact}, "Account_Name": {"id": company}})
        }
        _ => json!({"title": name, "status": if open { "open" } else { "lost" }, "person_id": n(contact), "org_id": n(company)}),
    }
}

/// The fields that close a deal as won.
pub fn won(crm: Crm) -> Value {
    match crm {
        Crm::Hubspot => json!({"dealstage": "closedwon"}),
        Crm::Salesforce => json!({"StageName": "Closed Won"}),
        Crm::Zoho => json!({"Stage": "Closed Won"}),
        _ => json!({"status": "won"}),
    }
}

/// Where the link from a contact to its deal lives, where it is a record of its own:
/// (admin path under the account, body). HubSpot: a typed association (contact → deal, 4);
/// Salesforce: an OpportunityContactRole. None where the deal names its contact.
pub fn deal_link(crm: Crm, contact: &str, deal: &str) -> Option<(&'static str, Value)> {
    match crm {
        Crm::Hubspot => Some(("links", json!({"from": ["contacts", contact], "to": ["deals", deal], "type_id": 4}))),
        Crm::Salesforce => Some((
            "objects/OpportunityContactRole",
            json!({"ContactId": contact, "OpportunityId": deal, "IsPrimary": true, "Role": "Decision Maker"}),
        )),
        _ => None,
    }
}

/// How a contact gets its (primary) company: a typed association to POST under `links`
/// (HubSpot), or the contact's fields to PATCH.
pub enum CompanyLink {
    Link(Value),
    Fields(Value),
}

pub fn company_link(crm: Crm, contact: &str, company: &str) -> CompanyLink {
    match crm {
        Crm::Hubspot => CompanyLink::Link(json!({"from": ["contacts", contact], "to": ["companies", company], "type_id": 1})),
        Crm::Salesforce => CompanyLink::Fields(json!({"AccountId": company})),
        Crm::Zoho => CompanyLink::Fields(json!({"Account_Name": {"id": company, "name": "Customer Co"}})),
        _ => CompanyLink::Fields(json!({"org_id": company.parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(company))})),
    }
}
