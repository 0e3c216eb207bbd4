//! Salesforce's error body: a JSON array of `{message, errorCode, fields}` (CRM-APIS §2.6).
//! Save results inside sObject Collections use `statusCode` instead of `errorCode`.

use crate::gate::json;
use axum::response::Response;
use serde_json::{json, Value};

pub fn error(status: u16, code: &str, message: &str, fields: &[&str]) -> Response {
    json(status, json!([{"message": message, "errorCode": code, "fields": fields}]))
}

pub fn not_found() -> Response {
    error(404, "NOT_FOUND", "The requested resource does not exist", &[])
}

/// One failure of a record: rendered top-level (single-record endpoints) or as a save result.
#[derive(Debug, Clone)]
pub struct Fail {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<String>,
    /// A duplicate rule's result (`DUPLICATES_DETECTED`): `duplicateResut` in a single
    /// record's answer (Salesforce's spelling there, [S]), `duplicateResult` in a composite's.
    pub duplicates: Option<Value>,
}

impl Fail {
    pub fn new(code: &'static str, message: impl Into<String>, fields: &[&str]) -> Fail {
        Fail { status: 400, code, message: message.into(), fields: fields.iter().map(|s| s.to_string()).collect(), duplicates: None }
    }
    pub fn with_duplicates(mut self, result: Value) -> Fail {
        self.duplicates = Some(result);
        self
    }
    pub fn status(mut self, s: u16) -> Fail {
        self.status = s;
        self
    }
    pub fn response(&self) -> Response {
        let mut e = json!({"message": self.message, "errorCode": self.code, "fields": self.fields});
        if let Some(d) = &self.duplicates {
            e["duplicateResut"] = d.clone();
        }
        json(self.status, json!([e]))
    }
    pub fn save_result(&self) -> Value {
        let mut e = json!({"statusCode": self.code, "message": self.message, "fields": self.fields});
        if let Some(d) = &self.duplicates {
            e["duplicateResult"] = d.clone();
        }
        json!({"success": false, "errors": [e]})
    }
}
