//! What counts as drift between what crm-sync wrote and what the CRM holds: pure, so the
//! rules are unit-tested apart from any CRM. Only owned fields are compared; fill_if_empty
//! and read-only fields belong to people once the record exists.

use crm_connectors::contract::{same_value, Contract};
use serde_json::{Map, Value};

/// An owned field whose value in the CRM is not the one crm-sync wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub field: String,
    pub expected: Value,
    pub live: Value,
    /// The contract lets the reconciler put it back.
    pub restorable: bool,
}

/// The owned fields of `expected` (the contract's values for the write request) that the
/// CRM's `live` record no longer holds.
pub fn changed_fields(contract: &Contract, expected: &Map<String, Value>, live: &Map<String, Value>) -> Vec<Changed> {
    expected
        .iter()
        .filter_map(|(field, want)| {
            let now = live.get(field).cloned().unwrap_or(Value::Null);
            (!same_value(want, &now)).then(|| Changed {
                field: field.clone(),
                expected: want.clone(),
                live: now,
                restorable: contract.fields.get(field).is_some_and(|r| r.restorable),
            })
        })
        .collect()
}

/// Contract fields the CRM's schema does not have (a removed custom field).
pub fn missing_fields(contract: &Contract, schema: &std::collections::BTreeSet<String>) -> Vec<String> {
    contract.fields.keys().filter(|f| !schema.contains(*f)).cloned().collect()
}

/// How the record's contact moved since the writer linked it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactDrift {
    /// Same contact (or none was linked).
    Same,
    /// The linked contact was merged: the record hangs under another one now.
    MovedTo(String),
    /// The record no longer hangs under any contact (the contact was deleted).
    Gone,
}

pub fn contact_drift(linked: Option<&str>, now: Option<&str>) -> ContactDrift {
    match (linked, now) {
        (None, _) => ContactDrift::Same,
        (Some(l), Some(n)) if l == n => ContactDrift::Same,
        (Some(_), Some(n)) => ContactDrift::MovedTo(n.to_string()),
        (Some(_), None) => ContactDrift::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> Contract {
        Contract::parse(
            r#"
crm = "hubspot"
object = "calls"
key_field = "k"
[fields.k]
source = "idempotency_key"
ownership = "owned"
[fields.hs_call_duration]
source = "duration_ms"
ownership = "owned"
restorable = true
[fields.hs_timestamp]
source = "started_at_iso"
ownership = "owned"
restorable = true
[fields.hs_call_title]
source = "title"
ownership = "fill_if_empty"
"#,
        )
        .unwrap()
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn echoes_in_another_shape_are_not_drift() {
        let c = contract();
        let expected = map(json!({"k": "t:c:hubspot", "hs_call_duration": "65000", "hs_timestamp": "2026-01-15T10:30:00Z"}));
        let live = map(
            json!({"k": "t:c:hubspot", "hs_call_duration": 65000, "hs_timestamp": "2026-01-15T10:30:00.000Z", "hs_call_title": "edited by a person"}),
        );
        assert!(changed_fields(&c, &expected, &live).is_empty());
    }

    #[test]
    fn a_changed_or_cleared_owned_field_is_drift_with_its_restorability() {
        let c = contract();
        let expected = map(json!({"k": "t:c:hubspot", "hs_call_duration": "65000", "hs_timestamp": "2026-01-15T10:30:00Z"}));
        let live = map(json!({"k": "someone's", "hs_call_duration": "1"}));
        let got = changed_fields(&c, &expected, &live);
        let names: Vec<(&str, bool)> = got.iter().map(|c| (c.field.as_str(), c.restorable)).collect();
        assert_eq!(names, vec![("hs_call_duration", true), ("hs_timestamp", true), ("k", false)]);
        assert_eq!(got[1].live, Value::Null);
    }

    #[test]
    fn long_ids_and_lookups_compare_exactly() {
        use crm_connectors::contract::same_value;
        // Two Zoho user ids that are one f64 apart from nothing: not the same owner.
        assert!(!same_value(&json!("5725767000000034001"), &json!("5725767000000034007")));
        assert!(!same_value(&json!({"id": "5725767000000034001"}), &json!({"id": "5725767000000034007", "name": "Lead"})));
        assert!(same_value(&json!({"id": "5725767000000034001"}), &json!({"id": "5725767000000034001", "name": "Rep"})));
        assert!(same_value(&json!("42"), &json!(42)));
        assert!(same_value(&json!("65000"), &json!(65000.0)));
    }

    #[test]
    fn schema_check_names_what_is_gone() {
        let c = contract();
        let schema = ["hs_call_duration", "hs_timestamp", "hs_call_title"].iter().map(|s| s.to_string()).collect();
        assert_eq!(missing_fields(&c, &schema), vec!["k".to_string()]);
    }

    #[test]
    fn contact_moves() {
        assert_eq!(contact_drift(None, Some("9")), ContactDrift::Same);
        assert_eq!(contact_drift(Some("1"), Some("1")), ContactDrift::Same);
        assert_eq!(contact_drift(Some("1"), Some("2")), ContactDrift::MovedTo("2".into()));
        assert_eq!(contact_drift(Some("1"), None), ContactDrift::Gone);
    }
}
