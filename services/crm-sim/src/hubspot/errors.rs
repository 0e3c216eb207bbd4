//! HubSpot's error envelope (CRM-APIS §1.6):
//! `{status:"error", message, correlationId, category, subCategory?, context?, errors?, links?}`.

use crate::gate::json;
use axum::response::Response;
use serde_json::{json, Map, Value};

pub fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn error(status: u16, category: &str, message: &str, extra: Value) -> Response {
    json(status, body(category, message, extra))
}

pub fn body(category: &str, message: &str, extra: Value) -> Value {
    let mut b = json!({"status": "error", "message": message, "correlationId": correlation_id(), "category": category});
    if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
        o.extend(e);
    }
    b
}

pub fn throttled(policy: &str, message: &str) -> Response {
    json(
        429,
        json!({"status": "error", "message": message, "errorType": "RATE_LIMIT", "correlationId": correlation_id(), "policyName": policy, "requestId": correlation_id()}),
    )
}

pub fn not_found(object_type: &str, id: &str) -> Response {
    error(404, "OBJECT_NOT_FOUND", &format!("resource not found: {object_type} {id}"), json!({"context": {"id": [id]}}))
}

pub fn validation(message: &str) -> Response {
    error(400, "VALIDATION_ERROR", message, Value::Null)
}

/// One invalid property, as HubSpot lists it inside "Property values were not valid: [...]".
pub fn property_error(name: &str, error: &str, message: String) -> Value {
    json!({"isValid": false, "message": message, "error": error, "name": name, "localizedErrorMessage": message})
}

pub fn property_message(errors: &[Value]) -> String {
    format!("Property values were not valid: {}", Value::Array(errors.to_vec()))
}

/// The 400 for invalid properties on a single-object endpoint.
pub fn invalid_properties(errors: &[Value]) -> Response {
    validation(&property_message(errors))
}

pub fn missing_scopes(scope: &str) -> Response {
    error(
        403,
        "MISSING_SCOPES",
        "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
        json!({
            "errors": [{"message": "One or more of the following scopes are required.", "context": {"requiredGranularScopes": [scope]}}],
            "links": {"scopes": "https://developers.hubspot.com/scopes"}
        }),
    )
}

/// An entry of a batch's `errors[]`.
pub fn batch_error(category: &str, message: String, context: Map<String, Value>) -> Value {
    json!({"status": "error", "category": category, "message": message, "context": context})
}
