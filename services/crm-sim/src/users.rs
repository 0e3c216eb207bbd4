//! The CRMs' users (owners), as each API shows them (CRM-APIS-ACTIVITIES §3): a table per
//! account, seeded with the integration's own user (the account's `owner_id`, who owns
//! what a write names no owner for) and filled through the admin API
//! (`POST /admin/accounts/{crm}/{account}/objects/{users table}`); a person deactivates one
//! by patching its active flag. Writes that name an owner are checked against it: the
//! owner must be an active user, else the CRM's own error.

use crate::state::{Account, Crm, Record};
use serde_json::{json, Map, Value};

/// The table holding the account's users, by the name its CRM's API uses.
pub fn table(crm: Crm) -> &'static str {
    match crm {
        Crm::Hubspot => "owners",
        Crm::Salesforce => "User",
        Crm::Zoho => "users",
        Crm::Pipedrive => "users",
    }
}

/// Whether a user record is active, in its CRM's terms: HubSpot owners `archived`,
/// Salesforce `IsActive`, Zoho `status`, Pipedrive `active_flag` and `is_deleted`.
pub fn is_active(crm: Crm, r: &Record) -> bool {
    let flag = |name: &str| r.fields.get(name).and_then(Value::as_bool);
    match crm {
        Crm::Hubspot => !flag("archived").unwrap_or(false),
        Crm::Salesforce => flag("IsActive").unwrap_or(true),
        Crm::Zoho => r.fields.get("status").and_then(Value::as_str).is_none_or(|s| s.eq_ignore_ascii_case("active")),
        Crm::Pipedrive => flag("active_flag").unwrap_or(true) && !flag("is_deleted").unwrap_or(false),
    }
}

/// The user's email as stored.
pub fn email(crm: Crm, r: &Record) -> Option<&str> {
    let name = if crm == Crm::Salesforce { "Email" } else { "email" };
    r.fields.get(name).and_then(Value::as_str)
}

/// Why an owner id cannot own a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOwner {
    /// No user has this id.
    Unknown,
    /// The user is deactivated (archived, inactive, deleted).
    Inactive,
}

/// Whether `id` may own a record in this account: an active user.
pub fn check_owner(acct: &Account, id: &str) -> Result<(), NotOwner> {
    let crm = acct.crm;
    let Some(r) = acct.objects.get(table(crm)).and_then(|t| t.get(id)) else {
        return Err(NotOwner::Unknown);
    };
    if is_active(crm, r) {
        Ok(())
    } else {
        Err(NotOwner::Inactive)
    }
}

/// The fields of the integration's own user, the account's default owner.
pub fn integration_user(crm: Crm) -> Map<String, Value> {
    let v = match crm {
        Crm::Hubspot => {
            json!({"email": "integration@crm-sim.invalid", "firstName": "Sim", "lastName": "Integration", "userId": 9000001, "type": "PERSON", "archived": false})
        }
        Crm::Salesforce => {
            json!({"Email": "integration@crm-sim.invalid", "Name": "Sim Integration", "Username": "integration@crm-sim.invalid.org", "IsActive": true, "UserType": "Standard"})
        }
        Crm::Zoho => json!({"email": "integration@crm-sim.invalid", "full_name": "Sim Admin", "status": "active", "confirm": true}),
        Crm::Pipedrive => {
            json!({"email": "integration@crm-sim.invalid", "name": "Sim Integration", "active_flag": true, "is_deleted": false})
        }
    };
    v.as_object().cloned().unwrap_or_default()
}

/// Every user of the account, in id order.
pub fn all(acct: &Account) -> Vec<&Record> {
    acct.objects.get(table(acct.crm)).map(|t| t.iter().collect()).unwrap_or_default()
}

/// Active and inactive users whose email equals `email`, compared case-insensitively (the
/// CRMs' email filters are; HubSpot's is unverified, and exact matching is the harsher).
pub fn by_email<'a>(acct: &'a Account, email: &str) -> Vec<&'a Record> {
    let crm = acct.crm;
    all(acct).into_iter().filter(|r| self::email(crm, r).is_some_and(|e| e.trim().eq_ignore_ascii_case(email.trim()))).collect()
}
