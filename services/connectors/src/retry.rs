//! Exponential backoff with full jitter (AWS's "full jitter": a random wait between zero and
//! the exponential cap), so replicas that failed together do not retry together.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (1 for the first retry).
    pub fn wait(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.cap);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rand::random::<u64>() % (ms + 1) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_below_a_growing_cap() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) };
        for attempt in 1..30 {
            let cap = Duration::from_millis(100 * (1u64 << attempt.min(20))).min(Duration::from_secs(5));
            for _ in 0..50 {
                assert!(b.wait(attempt) <= cap);
            }
        }
        let spread: std::collections::HashSet<u128> = (0..50).map(|_| b.wait(6).as_millis()).collect();
        assert!(spread.len() > 10, "full jitter spreads retries: {spread:?}");
    }
}
