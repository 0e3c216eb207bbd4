//! HubSpot's answers as the connector reads them (CRM-APIS §1): CRM v3 objects, search
//! pages, batch answers with per-input errors, error bodies, the properties schema.

use crate::wire::{first_text, text};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A v3 object: its id and the properties asked for (strings, or null where empty).
#[derive(Debug, Deserialize)]
pub struct Object {
    pub id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Only where asked for (`?associations=contacts`).
    #[serde(default)]
    pub associations: Associations,
    /// When HubSpot last changed the record.
    #[serde(default, rename = "updatedAt")]
    pub updated_at: Option<String>,
}

impl Object {
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).and_then(Value::as_str)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Associations {
    #[serde(default)]
    pub contacts: Option<Page<Id>>,
}

#[derive(Debug, Deserialize)]
pub struct Id {
    #[serde(deserialize_with = "text")]
    pub id: String,
}

/// A CRM owner (`GET /crm/v3/owners`): its id is what `hubspot_owner_id` takes, not its
/// `userId` (CRM-APIS-ACTIVITIES §3.1).
#[derive(Debug, Deserialize)]
pub struct Owner {
    #[serde(deserialize_with = "text")]
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub archived: bool,
}

/// `POST /crm/v4/associations/{from}/{to}/batch/read`: per input record, the records it
/// is associated with and the association types (typeId 1: a contact's primary company).
#[derive(Debug, Default, Deserialize)]
pub struct AssociationsBatch {
    #[serde(default)]
    pub results: Vec<AssociatedFrom>,
}

#[derive(Debug, Deserialize)]
pub struct AssociatedFrom {
    pub from: Id,
    #[serde(default)]
    pub to: Vec<AssociatedTo>,
}

#[derive(Debug, Deserialize)]
pub struct AssociatedTo {
    #[serde(rename = "toObjectId", deserialize_with = "text")]
    pub to_object_id: String,
    #[serde(rename = "associationTypes", default)]
    pub association_types: Vec<AssociationType>,
}

#[derive(Debug, Deserialize)]
pub struct AssociationType {
    #[serde(rename = "typeId", default)]
    pub type_id: i64,
}

/// A list of results with the cursor to the next page, if any.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub results: Vec<T>,
    #[serde(default)]
    pub paging: Option<Paging>,
}

impl<T> Page<T> {
    pub fn has_more(&self) -> bool {
        self.paging.as_ref().and_then(|p| p.next.as_ref()).is_some()
    }
}

#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub next: Option<Value>,
}

/// A batch answer: the inputs that succeeded, and an error per group of inputs that did not
/// (HTTP 207 when both).
#[derive(Debug, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub results: Vec<Object>,
    #[serde(default)]
    pub errors: Vec<ErrorBody>,
}

/// An error: of a whole call (the body of a 4xx), or of batch inputs (inside `errors`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "text")]
    pub category: String,
    #[serde(default, rename = "subCategory", deserialize_with = "text")]
    pub sub_category: String,
    #[serde(default, deserialize_with = "text")]
    pub message: String,
    /// On 429s: which limit (DAILY, SECONDLY, TEN_SECONDLY_ROLLING).
    #[serde(default, rename = "policyName", deserialize_with = "text")]
    pub policy_name: String,
    #[serde(default)]
    pub context: ErrorContext,
}

/// Which inputs a batch error concerns.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ErrorContext {
    /// The create input's `objectWriteTraceId` (we send the idempotency key).
    #[serde(default, rename = "objectWriteTraceId", deserialize_with = "first_text")]
    pub object_write_trace_id: Option<String>,
    /// The record that already holds a unique value (a create that met its own key).
    #[serde(default, deserialize_with = "first_text")]
    pub id: Option<String>,
    /// The records an update error concerns.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// One property of the object's schema.
#[derive(Debug, Deserialize)]
pub struct Property {
    pub name: String,
    /// Whether HubSpot refuses a second record with one value.
    #[serde(default, rename = "hasUniqueValue")]
    pub has_unique_value: bool,
}

/// What HubSpot says of a token: `GET /oauth/v1/access-tokens/{token}` (OAuth) or `POST
/// /oauth/v2/private-apps/get/access-token-info` (a private app's), both with `scopes`.
#[derive(Debug, serde::Deserialize)]
pub struct TokenInfo {
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_with_results_and_errors_reads() {
        let b: Batch = serde_json::from_str(
            r#"{"status":"COMPLETE","results":[{"id":"1","properties":{"k":"a:1:hubspot","hs_timestamp":null}}],
                "errors":[{"status":"error","category":"CONFLICT","message":"Existing ID","context":{"objectWriteTraceId":["a:2:hubspot"],"id":["9"]}},
                          {"category":"OBJECT_NOT_FOUND","subCategory":{"x":1},"message":"gone","context":{"ids":["5","6"]}}]}"#,
        )
        .unwrap();
        assert_eq!(b.results[0].property("k"), Some("a:1:hubspot"));
        assert_eq!(b.results[0].property("hs_timestamp"), None);
        assert_eq!(b.errors[0].context.object_write_trace_id.as_deref(), Some("a:2:hubspot"));
        assert_eq!(b.errors[0].context.id.as_deref(), Some("9"));
        assert_eq!(b.errors[1].context.ids, ["5", "6"]);
        assert_eq!(b.errors[1].sub_category, r#"{"x":1}"#);
        let p: Page<Object> = serde_json::from_str(r#"{"total":3,"results":[],"paging":{"next":{"after":"2"}}}"#).unwrap();
        assert!(p.has_more());
    }
}
