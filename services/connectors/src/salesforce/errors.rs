//! Salesforce's answers classified (CRM-APIS §2.6). Error bodies are JSON arrays of
//! `{message, errorCode, fields}`; save results inside collections say `statusCode`.

use super::wire::{ApiError, ErrorBody};
use crate::api::{Reply, Verdict};
use crm_common::events::DlqReason;
use std::time::Duration;

/// The reason for one error; None for the codes that are retried.
pub fn reason_of(e: &ApiError) -> Option<DlqReason> {
    let fields: Vec<&str> = e.fields.iter().map(String::as_str).collect();
    Some(match e.code.as_str() {
        "INVALID_FIELD" | "INVALID_FIELD_FOR_INSERT_UPDATE" | "NO_SUCH_COLUMN" => DlqReason::FieldRemoved,
        // A deleted WhoId: the contact the call was to be logged against is gone.
        "ENTITY_IS_DELETED" if fields.contains(&"WhoId") => DlqReason::ContactDeleted,
        "INVALID_CROSS_REFERENCE_KEY" | "FIELD_INTEGRITY_EXCEPTION" if fields.contains(&"WhoId") => DlqReason::ContactDeleted,
        "INSUFFICIENT_ACCESS_OR_READONLY" | "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY" | "API_DISABLED_FOR_ORG" => {
            DlqReason::PermissionDenied
        }
        "INVALID_SESSION_ID" => DlqReason::AuthFailed,
        "UNABLE_TO_LOCK_ROW" | "SERVER_UNAVAILABLE" | "UNKNOWN_EXCEPTION" | "REQUEST_LIMIT_EXCEEDED" => return None,
        _ => DlqReason::Validation,
    })
}

/// `recheck`: how long a spent allowance (403 REQUEST_LIMIT_EXCEEDED) blocks the bucket.
pub fn classify(reply: &Reply, recheck: Duration) -> Verdict {
    // Not every error body is JSON (a gateway's page): those classify by status alone.
    let e = reply.parse::<ErrorBody>().map(ErrorBody::first).unwrap_or_default();
    let (code, message) = (e.code.as_str(), e.message.as_str());
    match reply.status {
        200..=299 => Verdict::Ok,
        // The org's allowance (or its long-request concurrency) is spent: no Retry-After;
        // the bucket, fed by Sforce-Limit-Info, decides when to try again.
        403 if code == "REQUEST_LIMIT_EXCEEDED" => Verdict::Throttled { wait: recheck },
        300 => Verdict::Permanent(DlqReason::Validation, "the external id matches several Tasks (300)".into()),
        // The upsert path names our key field, and the org no longer has it.
        404 if message.contains("external ID field") => Verdict::Permanent(DlqReason::FieldRemoved, format!("404 {code}: {message}")),
        500..=599 => Verdict::Transient(format!("{} {code}: {message}", reply.status)),
        _ if code == "UNABLE_TO_LOCK_ROW" => Verdict::Transient(format!("{code}: {message}")),
        _ => {
            let reason = reason_of(&e).unwrap_or(DlqReason::Validation);
            Verdict::Permanent(reason, format!("{} {code}: {message}", reply.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_(r: &Reply) -> Verdict {
        classify(r, Duration::from_secs(60))
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply::of(status, body)
    }

    #[test]
    fn bodies_from_crm_apis_classify() {
        let quota = reply(403, r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#);
        assert!(matches!(classify_(&quota), Verdict::Throttled { .. }), "403 REQUEST_LIMIT_EXCEEDED is Salesforce's throttle");
        let denied = reply(403, r#"[{"message":"insufficient access","errorCode":"INSUFFICIENT_ACCESS_OR_READONLY"}]"#);
        assert!(matches!(classify_(&denied), Verdict::Permanent(DlqReason::PermissionDenied, _)));
        let removed = reply(400, r#"[{"message":"No such column 'CrmSyncKey__c' on sobject of type Task","errorCode":"INVALID_FIELD"}]"#);
        assert!(matches!(classify_(&removed), Verdict::Permanent(DlqReason::FieldRemoved, _)));
        let session = reply(401, r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#);
        let no_key = reply(
            404,
            r#"[{"errorCode":"NOT_FOUND","message":"Provided external ID field does not exist or is not accessible: CrmSyncKey__c"}]"#,
        );
        assert!(matches!(classify_(&no_key), Verdict::Permanent(DlqReason::FieldRemoved, _)));
        assert!(matches!(classify_(&session), Verdict::Permanent(DlqReason::AuthFailed, _)));
        let who = reply(404, r#"[{"message":"entity is deleted","errorCode":"ENTITY_IS_DELETED","fields":["WhoId"]}]"#);
        assert!(matches!(classify_(&who), Verdict::Permanent(DlqReason::ContactDeleted, _)));
        assert!(matches!(classify_(&reply(503, r#"[{"errorCode":"SERVER_UNAVAILABLE","message":"x"}]"#)), Verdict::Transient(_)));
        assert!(matches!(classify_(&reply(400, r#"[{"errorCode":"UNABLE_TO_LOCK_ROW","message":"x"}]"#)), Verdict::Transient(_)));
        assert!(matches!(classify_(&reply(300, "[]")), Verdict::Permanent(DlqReason::Validation, _)));
        let picklist =
            reply(400, r#"[{"message":"bad value","errorCode":"INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST","fields":["CallType"]}]"#);
        assert!(matches!(classify_(&picklist), Verdict::Permanent(DlqReason::Validation, _)));
        // Save results inside collections say statusCode.
        let save: ApiError =
            serde_json::from_str(r#"{"statusCode": "REQUIRED_FIELD_MISSING", "message": "Subject", "fields": ["Subject"]}"#).unwrap();
        assert_eq!(reason_of(&save), Some(DlqReason::Validation));
    }
}
