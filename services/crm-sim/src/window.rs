//! Usage counters the four CRMs' limits are built from: a rolling window (HubSpot's ten
//! seconds, Pipedrive's two, Salesforce's and Zoho's 24 hours: each unit is freed exactly one
//! window after it was spent) and a calendar day that resets at midnight.

use crate::clock::day_start;
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Rolling {
    pub window_ms: i64,
    events: VecDeque<(i64, u64)>,
    sum: u64,
}

impl Rolling {
    pub fn new(window_ms: i64) -> Self {
        Rolling { window_ms, events: VecDeque::new(), sum: 0 }
    }

    fn prune(&mut self, now: i64) {
        while let Some(&(t, n)) = self.events.front() {
            if t + self.window_ms <= now {
                self.events.pop_front();
                self.sum -= n;
            } else {
                break;
            }
        }
    }

    pub fn used(&mut self, now: i64) -> u64 {
        self.prune(now);
        self.sum
    }

    /// Spends `n` if that keeps usage within `limit`; otherwise how long until it would.
    pub fn try_take(&mut self, now: i64, n: u64, limit: u64) -> Result<(), i64> {
        self.prune(now);
        if self.sum + n <= limit {
            if n > 0 {
                self.events.push_back((now, n));
                self.sum += n;
            }
            return Ok(());
        }
        Err(self.wait_for(now, self.sum + n - limit.min(self.sum + n)))
    }

    /// Spends regardless of the limit (a charge settled after the request ran).
    pub fn take(&mut self, now: i64, n: u64) {
        self.prune(now);
        if n > 0 {
            self.events.push_back((now, n));
            self.sum += n;
        }
    }

    /// Milliseconds until `need` units have been freed.
    fn wait_for(&self, now: i64, need: u64) -> i64 {
        let mut freed = 0;
        for &(t, n) in &self.events {
            freed += n;
            if freed >= need {
                return (t + self.window_ms - now).max(1);
            }
        }
        self.window_ms
    }

    /// Milliseconds until the oldest unit in the window is freed (0 when empty).
    pub fn next_free_ms(&mut self, now: i64) -> i64 {
        self.prune(now);
        self.events.front().map(|&(t, _)| (t + self.window_ms - now).max(0)).unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct Daily {
    pub tz_offset_min: i32,
    day: i64,
    used: u64,
}

impl Daily {
    pub fn new(tz_offset_min: i32) -> Self {
        Daily { tz_offset_min, day: i64::MIN, used: 0 }
    }

    fn roll(&mut self, now: i64) {
        let d = day_start(now, self.tz_offset_min);
        if d != self.day {
            self.day = d;
            self.used = 0;
        }
    }

    pub fn used(&mut self, now: i64) -> u64 {
        self.roll(now);
        self.used
    }

    pub fn try_take(&mut self, now: i64, n: u64, limit: u64) -> Result<(), i64> {
        self.roll(now);
        if self.used + n <= limit {
            self.used += n;
            Ok(())
        } else {
            Err(self.ms_to_reset(now))
        }
    }

    pub fn take(&mut self, now: i64, n: u64) {
        self.roll(now);
        self.used += n;
    }

    pub fn ms_to_reset(&self, now: i64) -> i64 {
        day_start(now, self.tz_offset_min) + crate::clock::DAY_MS - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_frees_each_unit_one_window_after_it_was_spent() {
        let mut w = Rolling::new(10_000);
        for _ in 0..50 {
            w.try_take(0, 1, 100).unwrap();
        }
        for _ in 0..50 {
            w.try_take(5_000, 1, 100).unwrap();
        }
        assert_eq!(w.try_take(9_999, 1, 100), Err(1));
        assert!(w.try_take(10_000, 50, 100).is_ok());
        assert_eq!(w.try_take(10_000, 1, 100), Err(5_000));
    }

    #[test]
    fn weighted_units_wait_for_enough_to_free() {
        let mut w = Rolling::new(1_000);
        w.take(0, 7);
        w.take(500, 3);
        assert_eq!(w.try_take(600, 5, 10), Err(400));
        assert_eq!(w.try_take(1_000, 5, 10), Ok(()));
    }

    #[test]
    fn daily_resets_at_midnight() {
        let mut d = Daily::new(0);
        let day = crate::clock::DAY_MS;
        assert!(d.try_take(day - 1, 2, 2).is_ok());
        assert_eq!(d.try_take(day - 1, 1, 2), Err(1));
        assert!(d.try_take(day, 2, 2).is_ok());
    }
}
