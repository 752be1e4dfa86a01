//! A gate that opens once, when the model holds the cluster's initial lists. Async consumers
//! await it; the flow processor, a plain thread, waits with a timeout.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

/// Opens once the initial lists are in the model.
#[derive(Debug)]
pub struct SyncGate {
    open: Mutex<bool>,
    opened: Condvar,
    signal: watch::Sender<bool>,
}

impl Default for SyncGate {
    fn default() -> Self {
        SyncGate {
            open: Mutex::new(false),
            opened: Condvar::new(),
            signal: watch::Sender::new(false),
        }
    }
}

impl SyncGate {
    /// A gate that is already open (no watches to wait for).
    pub fn opened() -> SyncGate {
        let gate = SyncGate::default();
        gate.open();
        gate
    }

    pub fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
        self.signal.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock()
    }

    /// Waits for the gate to open.
    pub async fn wait(&self) {
        let mut receiver = self.signal.subscribe();
        // The sender lives as long as the gate, so this returns only once it is open.
        let _ = receiver.wait_for(|open| *open).await;
    }

    /// Blocks the calling thread up to `timeout` for the gate to open; whether it did.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        let mut open = self.open.lock();
        if !*open {
            let _ = self
                .opened
                .wait_while_for(&mut open, |open| !*open, timeout);
        }
        *open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn async_and_blocking_waiters_see_it_open() {
        let gate = Arc::new(SyncGate::default());
        assert!(!gate.wait_blocking(Duration::from_millis(1)));
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait().await }
        });
        let blocking = std::thread::spawn({
            let gate = gate.clone();
            move || gate.wait_blocking(Duration::from_secs(30))
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        gate.open();
        waiter.await.unwrap();
        assert!(blocking.join().unwrap());
        assert!(gate.is_open());
    }
}
