//! Times as operators type them on the command line (`trace --since`, `dlq list --since`,
//! `backfill --from`): one reading for every command.

/// A time given as RFC 3339, a UTC date, a UTC date and time, or a time ago ("2h").
pub fn at(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{NaiveDate, NaiveDateTime};
    let t = text.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.to_utc());
    }
    for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    match humantime::parse_duration(t) {
        Ok(ago) => chrono::Duration::from_std(ago).ok().and_then(|ago| now.checked_sub_signed(ago)).ok_or_else(|| format!("{t:?} is too long ago")),
        Err(_) => Err(format!("{t:?} is not a time: give RFC 3339 (2026-12-03T15:00:00Z), a UTC date (2026-12-03), date and time (2026-12-03 15:00), or a time ago (2h, 3d)")),
    }
}

/// [`at`], now, in ms since the epoch.
pub fn ms(text: &str) -> Result<i64, String> {
    at(text, chrono::Utc::now()).map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_support_writes_them() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap().to_utc();
        let when = |t: &str| at(t, now).map(|d| d.to_rfc3339());
        assert_eq!(when("2026-12-03T15:00:00+01:00").unwrap(), "2026-12-03T14:00:00+00:00");
        assert_eq!(when("2026-12-03").unwrap(), "2026-12-03T00:00:00+00:00");
        assert_eq!(when("2026-12-03 15:30").unwrap(), "2026-12-03T15:30:00+00:00");
        assert_eq!(when("2h").unwrap(), "2026-12-04T10:00:00+00:00");
        assert_eq!(when("3d").unwrap(), "2026-12-01T12:00:00+00:00");
        assert!(when("yesterday-ish").unwrap_err().contains("is not a time"));
    }

    #[test]
    fn in_ms_for_the_commands_that_count_in_ms() {
        assert_eq!(ms("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000);
        let ago = ms("2h").unwrap();
        assert!((crm_common::clock::now_ms() - ago - 7_200_000).abs() < 1000);
        assert!(ms("yesterday").unwrap_err().contains("yesterday"));
    }
}
