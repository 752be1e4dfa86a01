//! The processor's end of one sink's queue: wait for room, or, for a sink that drops when
//! full and has stalled, count its overflow as dropped so the other sinks go on.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use super::Batch;

/// How long a sink that drops when full may keep its queue full before it counts as stalled
/// (a healthy sink that is only slower than the source makes room well within this).
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// The processor's end of one sink's queue.
#[derive(Debug)]
pub struct SinkQueue {
    sender: mpsc::Sender<Batch>,
    /// A stalled sink's batches are dropped (counted) instead of waited for.
    drop_when_full: bool,
    dropped: Counter,
    /// Batches in the queue, set after each send.
    queued: Gauge,
    name: String,
    runtime: tokio::runtime::Handle,
    /// The queue stayed full for [`STALLED_AFTER`]; batches are dropped until it has room.
    stalled: std::cell::Cell<bool>,
    last_warned: std::cell::Cell<Option<std::time::Instant>>,
}

impl SinkQueue {
    /// `runtime` runs the sink; the processor waits on it for room in a full queue.
    pub fn new(
        sender: mpsc::Sender<Batch>,
        drop_when_full: bool,
        dropped: Counter,
        queued: Gauge,
        name: &str,
        runtime: tokio::runtime::Handle,
    ) -> SinkQueue {
        SinkQueue {
            sender,
            drop_when_full,
            dropped,
            queued,
            name: name.to_owned(),
            runtime,
            stalled: std::cell::Cell::new(false),
            last_warned: std::cell::Cell::new(None),
        }
    }

    /// Hands `batch` to the sink and waits for room in its queue, except for a sink that
    /// drops when full and has stalled (its queue stayed full for [`STALLED_AFTER`]): then the
    /// batch is counted as dropped and acknowledged (it was deliberately given up). Returns
    /// false when the sink has gone.
    pub fn send(&self, batch: Batch) -> bool {
        let sent = self.send_or_drop(batch);
        self.queued
            .set((self.sender.max_capacity() - self.sender.capacity()) as i64);
        sent
    }

    fn send_or_drop(&self, batch: Batch) -> bool {
        if !self.drop_when_full {
            return self.sender.blocking_send(batch).is_ok();
        }
        let batch = match self.sender.try_send(batch) {
            Ok(()) => {
                self.stalled.set(false);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(batch)) if self.stalled.get() => batch,
            Err(mpsc::error::TrySendError::Full(batch)) => {
                let sent = self.runtime.block_on(async {
                    tokio::time::timeout(STALLED_AFTER, self.sender.reserve()).await
                });
                match sent {
                    Ok(Ok(permit)) => {
                        permit.send(batch);
                        return true;
                    }
                    Ok(Err(_)) => return false,
                    Err(_) => {
                        self.stalled.set(true);
                        batch
                    }
                }
            }
        };
        self.dropped.inc_by(batch.records.len() as u64);
        let now = std::time::Instant::now();
        if self
            .last_warned
            .get()
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(10))
        {
            self.last_warned.set(Some(now));
            tracing::warn!(sink = %self.name, "the sink's queue has been full for a while (its destination is stalled or down); dropping its overflow so the other sinks go on (threatflow_sink_dropped_records_total{{reason=\"destination_full\"}})");
        }
        batch.ack.ack();
        true
    }
}
