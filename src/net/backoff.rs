//! Exponential backoff with jitter: each delay is drawn between half and all of a ceiling
//! that doubles per attempt up to a maximum, so replicas that failed together do not retry
//! together.

use std::time::{Duration, SystemTime};

/// Delays between attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// The first ceiling is `first`; ceilings double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::delay(self.first, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure starts from `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before retry number `attempt` (0-based), between half and all of its ceiling.
    pub fn delay(first: Duration, max: Duration, attempt: u32) -> Duration {
        let ceiling = first.saturating_mul(1 << attempt.min(16)).min(max);
        ceiling / 2 + ceiling.mul_f64(jitter() / 2.0)
    }
}

/// A number in [0, 1) from the clock's sub-second nanoseconds: enough to spread replicas.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for ceiling in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        assert_eq!(backoff.attempts(), 8);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
