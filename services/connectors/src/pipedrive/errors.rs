//! Pipedrive's answers classified (CRM-APIS §4.6). Errors come in the envelope
//! `{success:false, error, error_info, code?}`; a client that keeps sending after 429s may
//! instead meet a Cloudflare HTML page with 403.

use super::wire::ErrorBody;
use crate::api::{until_midnight, Reply, Verdict};
use crm_common::events::DlqReason;
use std::time::Duration;

/// How long a Cloudflare block is waited out before trying again.
const CLOUDFLARE_BLOCK: Duration = Duration::from_secs(300);

pub fn reason_of(body: &ErrorBody, status: u16) -> (DlqReason, String) {
    let (error, code) = (body.error.as_str(), body.code.as_str());
    let reason = match status {
        401 => DlqReason::AuthFailed,
        // 402: the company account is not open (trial over, unpaid); 403: not allowed.
        402 | 403 => DlqReason::PermissionDenied,
        // A person matched (and cached) was deleted since.
        _ if error.starts_with("Person with id") && error.contains("not found") => DlqReason::ContactDeleted,
        // A field our contract names is gone (a custom field's key deleted).
        _ if error.contains("is not allowed for this request") => DlqReason::FieldRemoved,
        _ => DlqReason::Validation,
    };
    let detail = if code.is_empty() { format!("{status} {error}") } else { format!("{status} {code}: {error}") };
    (reason, detail)
}

pub fn classify(reply: &Reply, tz_offset_min: i32) -> Verdict {
    // Not Pipedrive's JSON envelope (Cloudflare's HTML block page, say): `None`.
    let envelope: Option<ErrorBody> = reply.parse().ok();
    match reply.status {
        200..=299 => Verdict::Ok,
        429 => {
            // The company's budget is spent: nothing goes out until the reset at midnight.
            if reply.header("x-daily-ratelimit-token-remaining").map(str::trim) == Some("0") {
                return Verdict::Throttled { wait: until_midnight(crm_common::clock::now_ms(), tz_offset_min) };
            }
            let secs = |h: &str| reply.header(h).and_then(|v| v.trim().parse::<u64>().ok()).filter(|s| *s > 0);
            let wait = secs("retry-after").or_else(|| secs("x-ratelimit-reset")).unwrap_or(2);
            Verdict::Throttled { wait: Duration::from_secs(wait) }
        }
        // Cloudflare's block page is HTML, not Pipedrive's JSON.
        403 if envelope.is_none() => Verdict::Throttled { wait: CLOUDFLARE_BLOCK },
        500..=599 => Verdict::Transient(format!("{} {}", reply.status, envelope.unwrap_or_default().error)),
        status => {
            let (reason, detail) = reason_of(&envelope.unwrap_or_default(), status);
            Verdict::Permanent(reason, detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn reply(status: u16, body: &str) -> Reply {
        Reply::of(status, body)
    }

    #[test]
    fn bodies_from_crm_apis_classify() {
        let mut burst = reply(429, r#"{"success":false,"error":"Request over limit","errorCode":429}"#);
        burst.headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(classify(&burst, 0), Verdict::Throttled { wait: Duration::from_secs(3) });
        burst.headers.insert("x-daily-ratelimit-token-remaining", HeaderValue::from_static("0"));
        assert!(
            matches!(classify(&burst, 0), Verdict::Throttled { wait } if wait > Duration::from_secs(3)),
            "a spent budget waits for midnight"
        );
        assert_eq!(
            classify(&reply(403, "<html>Attention Required! | Cloudflare</html>"), 0),
            Verdict::Throttled { wait: CLOUDFLARE_BLOCK }
        );
        let forbidden =
            reply(403, r#"{"success":false,"error":"You do not have permissions to perform this action","code":"ERR_FORBIDDEN"}"#);
        assert!(matches!(classify(&forbidden, 0), Verdict::Permanent(DlqReason::PermissionDenied, _)));
        assert!(matches!(
            classify(&reply(401, r#"{"success":false,"error":"unauthorized access","errorCode":401}"#), 0),
            Verdict::Permanent(DlqReason::AuthFailed, _)
        ));
        let person = reply(400, r#"{"success":false,"error":"Person with id 7 not found","code":"ERR_INVALID_INPUT"}"#);
        assert!(matches!(classify(&person, 0), Verdict::Permanent(DlqReason::ContactDeleted, _)));
        let field = reply(
            400,
            r#"{"success":false,"error":"Validation failed: Parameter 'x' is not allowed for this request","code":"ERR_SCHEMA_VALIDATION_FAILED"}"#,
        );
        assert!(matches!(classify(&field, 0), Verdict::Permanent(DlqReason::FieldRemoved, _)));
        assert!(matches!(
            classify(&reply(402, r#"{"success":false,"error":"Company account is not open"}"#), 0),
            Verdict::Permanent(DlqReason::PermissionDenied, _)
        ));
        assert!(matches!(classify(&reply(503, "{}"), 0), Verdict::Transient(_)));
        assert!(matches!(classify(&reply(410, r#"{"success":false,"error":"gone"}"#), 0), Verdict::Permanent(DlqReason::Validation, _)));
    }
}
