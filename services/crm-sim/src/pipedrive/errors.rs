//! Pipedrive's envelope: `{success:false, error, error_info, data:null, additional_data:null,
//! code?}` (CRM-APIS §4.6).

use crate::gate::{json, set_header};
use axum::response::Response;
use serde_json::{json, Value};

pub const INFO: &str = "Please check developers.pipedrive.com";

pub fn error(status: u16, message: &str, code: Option<&str>) -> Response {
    let mut b = json!({"success": false, "error": message, "error_info": INFO, "data": Value::Null, "additional_data": Value::Null});
    if let Some(c) = code {
        b["code"] = json!(c);
    }
    json(status, b)
}

pub fn validation(message: &str) -> Response {
    error(400, &format!("Validation failed: {message}"), Some("ERR_SCHEMA_VALIDATION_FAILED"))
}

pub fn not_found(what: &str) -> Response {
    error(404, &format!("{what} not found"), Some("ERR_NOT_FOUND"))
}

pub fn too_many(retry_after_s: i64) -> Response {
    let mut r = json(
        429,
        json!({"success": false, "error": "Request over limit", "errorCode": 429, "error_info": INFO, "data": Value::Null, "additional_data": Value::Null}),
    );
    set_header(r.headers_mut(), "retry-after", retry_after_s.max(1));
    r
}
