//! Zoho's error shape `{code, details, message, status:"error"}`, top-level or per record
//! inside `data[]` (CRM-APIS §3.6).

use crate::gate::json;
use axum::response::Response;
use serde_json::{json, Value};

pub fn body(code: &str, message: &str, details: Value) -> Value {
    json!({"code": code, "details": details, "message": message, "status": "error"})
}

pub fn error(status: u16, code: &str, message: &str, details: Value) -> Response {
    json(status, body(code, message, details))
}

pub fn too_many_requests() -> Response {
    error(429, "TOO_MANY_REQUESTS", "The number of requests made has exceeded the limit", json!({}))
}

pub fn invalid_module(module: &str) -> Response {
    error(400, "INVALID_MODULE", "the module name given seems to be invalid", json!({"module": module}))
}
