//! HubSpot's answers classified (CRM-APIS §1.6): what is retried, what blocks the bucket and
//! for how long, and which DLQ reason a permanent failure carries.

use super::wire::ErrorBody;
use crate::api::{until_midnight, Reply, Verdict};
use crm_common::events::DlqReason;
use std::time::Duration;

/// The reason for a per-record or whole-call error body.
pub fn reason_of(body: &ErrorBody) -> (DlqReason, String) {
    let (category, sub, message) = (body.category.as_str(), body.sub_category.as_str(), &body.message);
    let reason = match category {
        "VALIDATION_ERROR" if message.contains("PROPERTY_DOESNT_EXIST") || message.contains("does not exist") => DlqReason::FieldRemoved,
        "VALIDATION_ERROR" if sub.contains("INVALID_OBJECT_IDS") => DlqReason::ContactDeleted,
        "MISSING_SCOPES" => DlqReason::PermissionDenied,
        "INVALID_AUTHENTICATION" | "EXPIRED_AUTHENTICATION" => DlqReason::AuthFailed,
        _ => DlqReason::Validation,
    };
    (reason, format!("{category}: {message}"))
}

pub fn classify(reply: &Reply, tz_offset_min: i32) -> Verdict {
    // Not every error body is JSON (a gateway's 502 page): those classify by status alone.
    let body: ErrorBody = reply.parse().unwrap_or_default();
    match reply.status {
        200..=299 => Verdict::Ok,
        429 => {
            let policy = body.policy_name.as_str();
            let retry_after = reply.header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
            let wait = match policy {
                "DAILY" => until_midnight(crm_common::clock::now_ms(), tz_offset_min),
                "SECONDLY" => retry_after.unwrap_or(Duration::from_secs(1)),
                // TEN_SECONDLY_ROLLING: a slot frees within the window; the bucket knows
                // exactly when, so block briefly and let it decide.
                _ => retry_after.unwrap_or(Duration::from_secs(1)),
            };
            Verdict::Throttled { wait }
        }
        423 => Verdict::Transient("423 Locked (clears in about 2 s)".into()),
        500..=599 => Verdict::Transient(format!("{} {}", reply.status, body.message)),
        401 => Verdict::Permanent(DlqReason::AuthFailed, reason_of(&body).1),
        403 => Verdict::Permanent(DlqReason::PermissionDenied, reason_of(&body).1),
        404 => Verdict::Permanent(DlqReason::Validation, format!("404 {}", reason_of(&body).1)),
        _ => {
            let (reason, detail) = reason_of(&body);
            Verdict::Permanent(reason, format!("{} {detail}", reply.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply::of(status, body)
    }

    #[test]
    fn bodies_captured_from_hubspot_classify() {
        let daily = reply(
            429,
            r#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","policyName":"DAILY"}"#,
        );
        assert!(matches!(classify(&daily, 0), Verdict::Throttled { wait } if wait > Duration::ZERO && wait <= Duration::from_secs(86_400)));
        let burst = reply(429, r#"{"policyName":"TEN_SECONDLY_ROLLING"}"#);
        assert_eq!(classify(&burst, 0), Verdict::Throttled { wait: Duration::from_secs(1) });
        assert!(matches!(classify(&reply(502, ""), 0), Verdict::Transient(_)));
        assert!(matches!(classify(&reply(423, ""), 0), Verdict::Transient(_)));
        let removed = reply(
            400,
            r#"{"category":"VALIDATION_ERROR","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"x\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"x\"}]"}"#,
        );
        assert!(matches!(classify(&removed, 0), Verdict::Permanent(DlqReason::FieldRemoved, _)));
        let scopes =
            reply(403, r#"{"category":"MISSING_SCOPES","message":"This app hasn't been granted all required scopes to make this call."}"#);
        assert!(matches!(classify(&scopes, 0), Verdict::Permanent(DlqReason::PermissionDenied, _)));
        let expired = reply(
            401,
            r#"{"category":"EXPIRED_AUTHENTICATION","message":"The OAuth token used to make this call expired 75 second(s) ago."}"#,
        );
        assert!(matches!(classify(&expired, 0), Verdict::Permanent(DlqReason::AuthFailed, _)));
        let gone: ErrorBody = serde_json::from_str(r#"{"category":"VALIDATION_ERROR","subCategory":"crm.associations.INVALID_OBJECT_IDS","message":"Could not find object ids: [5] of type contacts"}"#).unwrap();
        assert_eq!(reason_of(&gone).0, DlqReason::ContactDeleted);
    }
}
