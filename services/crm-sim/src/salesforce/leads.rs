//! What Salesforce does to people written through the API besides the field checks
//! (CRM-APIS-ACTIVITIES §5.2): lead assignment rules, duplicate rules, converted leads.
//!
//! - **Assignment rules** (`Sforce-Auto-Assign: TRUE | FALSE | <AssignmentRule Id>`,
//!   developer.salesforce.com …/api_rest/headers_autoassign.htm): without the header the
//!   default is TRUE, and the org's active lead rule gives the lead its owner, overriding
//!   an `OwnerId` the request set; FALSE keeps the request's owner. The simulator applies it
//!   to Lead creates and updates (the header's doc names both; whether a rule re-runs on an
//!   update without the header is [U], so the harsher case is modelled: it does).
//! - **Duplicate rules** (`Sforce-Duplicate-Rule-Header: allowSave=true; …`,
//!   …/headers_duplicaterules.htm): with an active rule, a Lead or Contact whose email a
//!   live Contact or unconverted Lead already has is refused with `DUPLICATES_DETECTED`. A
//!   "block" rule refuses always; an "allow with alert" rule refuses through the API too
//!   unless `allowSave=true` [S]. The single-record answer spells the key `duplicateResut`
//!   (two captured bodies agree, [S]); a composite result spells it `duplicateResult`. The
//!   real rules match fuzzily on names and company as well; the simulator matches the email
//!   alone (case-insensitive), so a test knows which writes collide.
//! - **Converted leads** (`IsConverted = true`) are read-only: an update is refused
//!   (`CANNOT_UPDATE_CONVERTED_LEAD`).
//!
//! An account has neither rule until the admin API sets one (`sf_lead_rules`): real orgs
//! differ, and a test says which it models.

use super::errors::Fail;
use crate::state::Account;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What an org does with leads, as its admin set it up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadRules {
    /// The active lead assignment rule gives every lead to this user: a User's Id or Email
    /// (a test seeds the user and names it by address before its id exists).
    #[serde(default)]
    pub assign_to: Option<String>,
    /// The active duplicate rule for leads and contacts, matched by email.
    #[serde(default)]
    pub duplicates: Option<DuplicateAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateAction {
    /// Refused, whatever the request says.
    Block,
    /// Refused through the API unless the request says `allowSave=true`.
    Alert,
}

/// What a request's headers ask of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// `Sforce-Auto-Assign` is not FALSE (absent means TRUE).
    pub auto_assign: bool,
    /// `Sforce-Duplicate-Rule-Header` says `allowSave=true`.
    pub allow_save: bool,
    /// `Sforce-Auto-Assign` is neither TRUE, FALSE nor an AssignmentRule id (15 or 18
    /// letters and digits, key prefix 01Q): the write fails MALFORMED_ID (the SOAP
    /// AssignmentRuleHeader's documented answer; what REST answers an id of another object
    /// is [U], so the harsher case is modelled: refused too).
    pub malformed: bool,
}

impl Default for Asked {
    /// What a request without either header gets.
    fn default() -> Asked {
        Asked { auto_assign: true, allow_save: false, malformed: false }
    }
}

pub fn asked(h: &HeaderMap) -> Asked {
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or_default().to_string();
    let assign = header("sforce-auto-assign");
    let rules = header("sforce-duplicate-rule-header");
    let allow_save = rules.split(';').any(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case("allowSave") && v.trim().eq_ignore_ascii_case("true")
    });
    let named = !assign.is_empty() && !assign.eq_ignore_ascii_case("true") && !assign.eq_ignore_ascii_case("false");
    let rule_id = matches!(assign.len(), 15 | 18) && assign.starts_with("01Q") && assign.chars().all(|c| c.is_ascii_alphanumeric());
    Asked { auto_assign: !assign.eq_ignore_ascii_case("false"), allow_save, malformed: named && !rule_id }
}

fn email_of(fields: &Map<String, Value>) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Email"))
        .and_then(|(_, v)| v.as_str())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_lowercase)
}

/// Live Contacts and unconverted Leads with this email, but `except`.
fn holders(acct: &mut Account, email: &str, except: Option<&str>) -> Vec<(&'static str, String)> {
    let mut out = vec![];
    for object in ["Lead", "Contact"] {
        for r in acct.table(object).iter().filter(|r| r.live() && Some(r.id.as_str()) != except) {
            let converted = r.fields.get("IsConverted").and_then(Value::as_bool).unwrap_or(false);
            if !converted && email_of(&r.fields).as_deref() == Some(email) {
                out.push((object, r.id.clone()));
            }
        }
    }
    out
}

/// Before a Lead or Contact is created or updated: converted leads refuse, duplicates are
/// refused as the rule says, and the assignment rule sets a lead's owner. `id` is the
/// record updated (None on create); `fields` the checked fields, which the rule may change.
pub fn before_write(acct: &mut Account, object: &str, id: Option<&str>, fields: &mut Map<String, Value>, asked: Asked) -> Result<(), Fail> {
    if !matches!(object, "Lead" | "Contact") {
        return Ok(());
    }
    if asked.malformed {
        return Err(Fail::new("MALFORMED_ID", "Sforce-Auto-Assign: invalid AssignmentRule id", &[]));
    }
    if let (Some(id), "Lead") = (id, object) {
        let converted = acct.table("Lead").get(id).and_then(|r| r.fields.get("IsConverted")).and_then(Value::as_bool).unwrap_or(false);
        if converted {
            return Err(Fail::new("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", &[]));
        }
    }
    let rules = acct.sf_setup.lead_rules.clone();
    if let (Some(action), Some(email)) = (rules.duplicates, email_of(fields)) {
        let found = holders(acct, &email, id);
        if !found.is_empty() && (action == DuplicateAction::Block || !asked.allow_save) {
            return Err(duplicates(object, action, &found));
        }
    }
    if let (Some(to), "Lead", true) = (&rules.assign_to, object, asked.auto_assign) {
        let user = acct.table("User").iter().find(|u| {
            u.live() && (u.id == *to || u.fields.get("Email").and_then(Value::as_str).is_some_and(|e| e.eq_ignore_ascii_case(to)))
        });
        if let Some(u) = user.map(|u| u.id.clone()) {
            fields.insert("OwnerId".into(), json!(u));
        }
    }
    Ok(())
}

/// `DUPLICATES_DETECTED` with the duplicate result Salesforce attaches.
fn duplicates(object: &str, action: DuplicateAction, found: &[(&'static str, String)]) -> Fail {
    let rule = format!("Standard_{object}_Duplicate_Rule");
    let matches: Vec<Value> = ["Lead", "Contact"]
        .iter()
        .filter_map(|entity| {
            let records: Vec<Value> = found
                .iter()
                .filter(|(o, _)| o == entity)
                .map(|(o, id)| json!({"matchConfidence": 100.0, "record": {"attributes": {"type": o}, "Id": id}}))
                .collect();
            (!records.is_empty()).then(|| {
                json!({"entityType": entity, "matchEngine": "FuzzyMatchEngine", "matchRecords": records,
                       "rule": format!("Standard_{entity}_Match_Rule_v1_0"), "size": records.len(), "success": true})
            })
        })
        .collect();
    let message = "Use one of these records?";
    let result = json!({"allowSave": action == DuplicateAction::Alert, "duplicateRule": rule, "duplicateRuleEntityType": object,
                        "errorMessage": message, "matchResults": matches});
    Fail::new("DUPLICATES_DETECTED", message, &[]).with_duplicates(result)
}
