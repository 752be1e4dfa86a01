//! The clock seam: epoch milliseconds for the times cluster objects take and release
//! addresses, and for anything else that must be tested without waiting.
//!
//! Production reads the system clock. Tests use [`TokioClock`], which follows tokio's clock, so
//! a test with paused time (`start_paused`) moves this clock with `tokio::time::advance` instead
//! of sleeping.

use std::fmt::Debug;
use std::sync::Arc;

/// Epoch milliseconds now.
pub trait Clock: Debug + Send + Sync {
    fn now_ms(&self) -> i64;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64)
    }
}

/// Starts at the system time it was created at, then follows tokio's clock (which a test can
/// pause and advance).
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            start_ms: SystemClock.now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}
