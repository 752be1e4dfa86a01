//! A request rate limit: at most one request per interval, spread out rather than bursty.

use std::time::Duration;

use tokio::time::Instant;

/// Paces requests to `per_second`.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    next: Instant,
}

impl RateLimit {
    pub fn per_second(per_second: f64) -> RateLimit {
        RateLimit {
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            next: Instant::now(),
        }
    }

    /// Waits for the next slot.
    pub async fn acquire(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spread_to_the_rate() {
        let mut limit = RateLimit::per_second(10.0);
        let start = Instant::now();
        for _ in 0..21 {
            limit.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
