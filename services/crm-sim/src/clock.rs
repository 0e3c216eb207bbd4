//! The simulator's notion of "now". Tests freeze it and step it to land exactly on a rate-limit
//! window's boundary; dev mode and the writer tests leave it on the wall clock, because the
//! writer's own token buckets run on real time and the two must agree.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ClockState {
    /// Wall clock plus an offset (ms); the offset lets a test jump ahead without freezing.
    Real { offset_ms: i64 },
    /// Stands still until advanced.
    Frozen { at_ms: i64 },
}

pub struct Clock(Mutex<ClockState>);

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Default for Clock {
    fn default() -> Self {
        Clock(Mutex::new(ClockState::Real { offset_ms: 0 }))
    }
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        match *self.0.lock().unwrap() {
            ClockState::Real { offset_ms } => wall_ms() + offset_ms,
            ClockState::Frozen { at_ms } => at_ms,
        }
    }

    pub fn state(&self) -> ClockState {
        *self.0.lock().unwrap()
    }

    pub fn freeze(&self, at_ms: Option<i64>) {
        let now = self.now_ms();
        *self.0.lock().unwrap() = ClockState::Frozen { at_ms: at_ms.unwrap_or(now) };
    }

    /// Back to the wall clock, keeping "now" where it is so windows do not jump.
    pub fn unfreeze(&self) {
        let now = self.now_ms();
        *self.0.lock().unwrap() = ClockState::Real { offset_ms: now - wall_ms() };
    }

    pub fn advance(&self, ms: i64) {
        let mut s = self.0.lock().unwrap();
        *s = match *s {
            ClockState::Real { offset_ms } => ClockState::Real { offset_ms: offset_ms + ms },
            ClockState::Frozen { at_ms } => ClockState::Frozen { at_ms: at_ms + ms },
        };
    }
}

pub const DAY_MS: i64 = 86_400_000;

/// Start of the day containing `now`, for a day that begins at midnight in a zone
/// `tz_offset_min` minutes east of UTC.
pub fn day_start(now_ms: i64, tz_offset_min: i32) -> i64 {
    let off = tz_offset_min as i64 * 60_000;
    (now_ms + off).div_euclid(DAY_MS) * DAY_MS - off
}

pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn iso_s(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_start_respects_zone() {
        // 2025-01-15T23:30Z is already the 16th in UTC+1.
        let t = chrono::DateTime::parse_from_rfc3339("2025-01-15T23:30:00Z").unwrap().timestamp_millis();
        assert_eq!(iso_s(day_start(t, 0)), "2025-01-15T00:00:00Z");
        assert_eq!(iso_s(day_start(t, 60)), "2025-01-15T23:00:00Z");
        assert_eq!(iso_s(day_start(t, -480)), "2025-01-15T08:00:00Z");
    }

    #[test]
    fn frozen_clock_moves_only_when_advanced() {
        let c = Clock::default();
        c.freeze(Some(1_000));
        assert_eq!(c.now_ms(), 1_000);
        c.advance(9_999);
        assert_eq!(c.now_ms(), 10_999);
    }
}
