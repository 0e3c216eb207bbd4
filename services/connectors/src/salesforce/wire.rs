//! Salesforce's answers as the connector reads them (CRM-APIS §2): save results of sObject
//! Collections, error arrays, SOSL search and SOQL query pages, describe.

use crate::wire::text;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One record's save result in a collection answer (in input order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveResult {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub success: bool,
    /// Upserts only: whether the key was new.
    #[serde(default)]
    pub created: Option<bool>,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

/// An error: `errorCode` in a call's error array, `statusCode` inside save results.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(default, rename = "errorCode", alias = "statusCode", deserialize_with = "text")]
    pub code: String,
    #[serde(default, deserialize_with = "text")]
    pub message: String,
    #[serde(default)]
    pub fields: Vec<String>,
    /// What a duplicate rule matched (`DUPLICATES_DETECTED`). A single record's answer
    /// spells the key `duplicateResut` (two captured bodies agree), a composite result
    /// `duplicateResult`.
    #[serde(default, rename = "duplicateResut", alias = "duplicateResult", skip_serializing_if = "Option::is_none")]
    pub duplicate_result: Option<DuplicateResult>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DuplicateResult {
    #[serde(default, rename = "matchResults")]
    pub match_results: Vec<MatchResult>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MatchResult {
    #[serde(default, rename = "matchRecords")]
    pub match_records: Vec<MatchRecord>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MatchRecord {
    #[serde(default)]
    pub record: MatchedRecord,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MatchedRecord {
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(default, rename = "Id")]
    pub id: Option<String>,
}

impl ApiError {
    pub fn names_field(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f == field)
    }
}

/// An error body: usually an array of errors, sometimes one object (OAuth, gateways).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ErrorBody {
    Many(Vec<ApiError>),
    One(ApiError),
}

impl ErrorBody {
    /// The first error; an empty one where the body held none.
    pub fn first(self) -> ApiError {
        match self {
            ErrorBody::Many(v) => v.into_iter().next().unwrap_or_default(),
            ErrorBody::One(e) => e,
        }
    }
}

/// A SOSL answer.
#[derive(Debug, Deserialize)]
pub struct SearchAnswer {
    #[serde(default, rename = "searchRecords")]
    pub search_records: Vec<Row>,
}

/// A record as SOSL and SOQL return it: its type, id and the fields asked for.
#[derive(Debug, Deserialize)]
pub struct Row {
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Row {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Attributes {
    #[serde(default, rename = "type")]
    pub object: String,
}

/// A SOQL page.
#[derive(Debug, Deserialize)]
pub struct QueryPage {
    #[serde(default)]
    pub records: Vec<Row>,
    #[serde(default = "yes")]
    pub done: bool,
    #[serde(default, rename = "nextRecordsUrl")]
    pub next_records_url: Option<String>,
}

fn yes() -> bool {
    true
}

impl QueryPage {
    /// Where the rest of the answer is, if there is more.
    pub fn next(&self) -> Option<&str> {
        self.next_records_url.as_deref().filter(|_| !self.done)
    }
}

/// A record's id (a create's answer, a read of `?fields=Id`).
#[derive(Debug, Deserialize)]
pub struct Created {
    #[serde(alias = "Id")]
    pub id: String,
}

/// `describe`: the object's fields.
#[derive(Debug, Deserialize)]
pub struct Describe {
    #[serde(default)]
    pub fields: Vec<FieldName>,
    /// Whether the user may create the object's records (object permissions).
    #[serde(default)]
    pub createable: bool,
    /// Whether the user may edit them.
    #[serde(default)]
    pub updateable: bool,
}

#[derive(Debug, Deserialize)]
pub struct FieldName {
    pub name: String,
    /// Usable as an upsert key.
    #[serde(default, rename = "externalId")]
    pub external_id: bool,
    /// Refuses a second record with one value.
    #[serde(default)]
    pub unique: bool,
    /// Whether the user may set it on a create (field-level security, and not computed).
    #[serde(default)]
    pub createable: bool,
}

/// `GET /services/oauth2/userinfo`: who the credentials are.
#[derive(Debug, Deserialize)]
pub struct UserInfo {
    pub user_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_salesforce_sends_them() {
        let saved: Vec<SaveResult> = serde_json::from_str(
            r#"[{"id":"00T1","success":true,"created":false,"errors":[]},
                {"success":false,"errors":[{"statusCode":"ENTITY_IS_DELETED","message":"gone","fields":["WhoId"]}]}]"#,
        )
        .unwrap();
        assert_eq!((saved[0].id.as_deref(), saved[0].created), (Some("00T1"), Some(false)));
        assert!(saved[1].errors[0].code == "ENTITY_IS_DELETED" && saved[1].errors[0].names_field("WhoId"));
        let e: ErrorBody = serde_json::from_str(r#"[{"message":"x","errorCode":"INVALID_FIELD"}]"#).unwrap();
        assert_eq!(e.first().code, "INVALID_FIELD");
        let e: ErrorBody = serde_json::from_str(r#"{"message":"x","errorCode":"INVALID_SESSION_ID"}"#).unwrap();
        assert_eq!(e.first().code, "INVALID_SESSION_ID");
        let page: QueryPage = serde_json::from_str(
            r#"{"totalSize":1,"done":false,"nextRecordsUrl":"/services/data/v66.0/query/01g-2000",
                "records":[{"attributes":{"type":"Task"},"Id":"00T1","IsDeleted":false,"WhoId":null,"Subject":"Call"}]}"#,
        )
        .unwrap();
        assert_eq!(page.next(), Some("/services/data/v66.0/query/01g-2000"));
        assert_eq!((page.records[0].attributes.object.as_str(), page.records[0].field("Subject")), ("Task", Some("Call")));
        assert_eq!(serde_json::from_str::<Created>(r#"{"Id":"003"}"#).unwrap().id, "003");
    }
}
