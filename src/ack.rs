//! Acknowledgements: knowing when every sink has durably written a batch.
//!
//! A source creates one [`AckToken`] per batch with the action to run once the batch is fully
//! delivered (save a file position, later: store a Kafka offset). Each holder of the batch gets
//! a [`AckToken::share`]d token and either acknowledges it or drops it. The action runs when the
//! last token is acknowledged; if any token is dropped unacknowledged, it never runs, so a
//! position is never saved past a record some sink did not write.
//!
//! Sinks write batches in order and the action of batch N+1 cannot run before every sink has
//! finished batch N, so actions run in batch order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

type Action = Box<dyn FnOnce() + Send>;

struct Shared {
    failed: AtomicBool,
    on_delivered: Mutex<Option<Action>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.failed.load(Ordering::Acquire) {
            let action = self.on_delivered.get_mut().take();
            if let Some(action) = action {
                action();
            }
        }
    }
}

/// One holder's share of a batch's acknowledgement.
pub struct AckToken {
    shared: Arc<Shared>,
    acked: bool,
}

impl AckToken {
    /// A token whose batch runs `on_delivered` once every share is acknowledged.
    pub fn new(on_delivered: impl FnOnce() + Send + 'static) -> AckToken {
        AckToken {
            shared: Arc::new(Shared {
                failed: AtomicBool::new(false),
                on_delivered: Mutex::new(Some(Box::new(on_delivered))),
            }),
            acked: false,
        }
    }

    /// A token with nothing to do on delivery (a source without positions, such as stdin).
    pub fn none() -> AckToken {
        AckToken::new(|| {})
    }

    /// Another share of the same batch, for another holder.
    pub fn share(&self) -> AckToken {
        AckToken {
            shared: self.shared.clone(),
            acked: false,
        }
    }

    /// This holder is done with the batch.
    pub fn ack(mut self) {
        self.acked = true;
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.acked {
            self.shared.failed.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("acked", &self.acked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counted() -> (AckToken, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        (
            AckToken::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
            runs,
        )
    }

    #[test]
    fn runs_once_when_every_share_is_acknowledged() {
        let (root, runs) = counted();
        let (a, b) = (root.share(), root.share());
        root.ack();
        a.ack();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        b.ack();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn never_runs_when_a_share_is_dropped() {
        let (root, runs) = counted();
        let (a, b) = (root.share(), root.share());
        root.ack();
        drop(a);
        b.ack();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }
}
