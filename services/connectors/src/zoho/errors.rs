//! Zoho CRM's answers classified (CRM-APIS §3.6). Errors are `{code, details, message,
//! status:"error"}`, at the top level for the whole call or inside `data[i]` for one record
//! of a multi-record call (207 on partial success, 400 when every record failed).

use super::wire::{Data, Outcome};
use crate::api::{Reply, Verdict};
use crm_common::events::DlqReason;
use std::time::Duration;

/// The reason for one error body (top-level or per record), and a readable detail.
pub fn reason_of(e: &Outcome) -> (DlqReason, String) {
    let (code, message, field) = (e.code.as_str(), e.message.as_str(), e.field());
    let reason = match code {
        // A contact that was matched (and cached) and has since been deleted.
        "INVALID_DATA" if field == "Who_Id" => DlqReason::ContactDeleted,
        // So is a participant of a meeting that names one (`{type: contact}`).
        "INVALID_DATA" if field == "Participants" && e.details.id.is_some() => DlqReason::ContactDeleted,
        // COQL names a column the module no longer has: a field of ours (the key field,
        // a contract field the reconciler reads) was removed. Our queries name no other.
        "INVALID_QUERY" if !field.is_empty() => DlqReason::FieldRemoved,
        "NO_PERMISSION" | "AUTHORIZATION_FAILED" | "OAUTH_SCOPE_MISMATCH" | "FEATURE_NOT_SUPPORTED" => DlqReason::PermissionDenied,
        "INVALID_TOKEN" | "AUTHENTICATION_FAILURE" => DlqReason::AuthFailed,
        _ => DlqReason::Validation,
    };
    let detail = if field.is_empty() { format!("{code}: {message}") } else { format!("{code}: {message} ({field})") };
    (reason, detail)
}

/// A multi-record answer whose records carry their own results (including 400 when every
/// record failed): the call itself succeeded.
fn per_record(reply: &Reply) -> bool {
    reply.parse::<Data<Outcome>>().ok().and_then(|d| d.data).is_some_and(|d| d.iter().all(|r| !r.status.is_empty()))
}

pub fn classify(reply: &Reply) -> Verdict {
    // Not every error body is JSON (a gateway's page): those classify by status alone.
    let body: Outcome = reply.parse().unwrap_or_default();
    match reply.status {
        200..=299 => Verdict::Ok,
        400 if per_record(reply) => Verdict::Ok,
        // Credits, concurrency or pace: the policy decides how long (it escalates).
        429 => Verdict::Throttled { wait: Duration::from_secs(2) },
        500..=599 => Verdict::Transient(format!("{} {}", reply.status, body.code)),
        401 => {
            let (reason, detail) = reason_of(&body);
            // A missing scope is a permission, not an expired token: no refresh helps.
            Verdict::Permanent(if reason == DlqReason::PermissionDenied { reason } else { DlqReason::AuthFailed }, format!("401 {detail}"))
        }
        403 => Verdict::Permanent(DlqReason::PermissionDenied, format!("403 {}", reason_of(&body).1)),
        _ => {
            let (reason, detail) = reason_of(&body);
            Verdict::Permanent(reason, format!("{} {detail}", reply.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: serde_json::Value) -> Outcome {
        serde_json::from_value(v).unwrap()
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply::of(status, body)
    }

    #[test]
    fn bodies_from_crm_apis_classify() {
        assert!(matches!(
            classify(&reply(429, r#"{"code":"TOO_MANY_REQUESTS","details":{},"message":"too many requests","status":"error"}"#)),
            Verdict::Throttled { .. }
        ));
        let expired = reply(401, r#"{"code":"INVALID_TOKEN","details":{},"message":"invalid oauth token","status":"error"}"#);
        assert!(matches!(classify(&expired), Verdict::Permanent(DlqReason::AuthFailed, _)));
        let scope = reply(
            401,
            r#"{"code":"OAUTH_SCOPE_MISMATCH","details":{},"message":"invalid oauth scope to access this URL","status":"error"}"#,
        );
        assert!(matches!(classify(&scope), Verdict::Permanent(DlqReason::PermissionDenied, _)));
        let denied = reply(
            403,
            r#"{"code":"NO_PERMISSION","details":{"permissions":["Crm_Implied_Create_Calls"]},"message":"permission denied","status":"error"}"#,
        );
        assert!(matches!(classify(&denied), Verdict::Permanent(DlqReason::PermissionDenied, _)));
        assert!(matches!(classify(&reply(500, r#"{"code":"INTERNAL_ERROR"}"#)), Verdict::Transient(_)));
        let all_failed = reply(
            400,
            r#"{"data":[{"code":"MANDATORY_NOT_FOUND","details":{"api_name":"Subject"},"message":"required field not found","status":"error"}]}"#,
        );
        assert_eq!(classify(&all_failed), Verdict::Ok, "per-record results are read by the connector");
        let who = json(
            serde_json::json!({"code":"INVALID_DATA","details":{"api_name":"Who_Id","id":"5"},"message":"invalid data","status":"error"}),
        );
        assert_eq!(reason_of(&who).0, DlqReason::ContactDeleted);
        let column = json(
            serde_json::json!({"code":"INVALID_QUERY","details":{"reason":"invalid column Crm_Sync_Key","column_name":"Crm_Sync_Key"},"message":"invalid query formed","status":"error"}),
        );
        assert_eq!(reason_of(&column).0, DlqReason::FieldRemoved);
        let dependent = json(
            serde_json::json!({"code":"DEPENDENT_MISMATCH","details":{"api_name":"Call_Duration"},"message":"Call Duration can not be zero.","status":"error"}),
        );
        assert_eq!(
            reason_of(&dependent),
            (DlqReason::Validation, "DEPENDENT_MISMATCH: Call Duration can not be zero. (Call_Duration)".into())
        );
    }
}
