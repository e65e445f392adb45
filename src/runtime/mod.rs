//! The runtime: sources, batcher and sink put to work, with the protocol
//! that makes delivery exactly-once. `load` reads JSON Lines files on a
//! thread of its own and hands prepared batches to the writer; `kafka`
//! runs one consumer thread per bound topic, acknowledges each committed
//! batch to it (then, and only then, its offsets go to Kafka) and gates
//! rebalances on those acknowledgements. The writer retries a batch that
//! failed for the database's state, with backoff; the bounded channel then
//! stops the readers, so nothing is read that cannot be written.
//!
//! The binary's `cli` parses arguments, calls in here and renders; nothing
//! here prints or parses a command line. A stop request ([`Stop`]) is the
//! library's view of SIGINT/SIGTERM.

pub mod kafka;
pub mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::metrics::Metrics;
use crate::pipeline::Batch;
use crate::sink::{BatchReport, Sink, SinkError};

/// What committed batches added up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages committed, loaded or discarded.
    pub events: usize,
    pub rows: usize,
    pub discards: usize,
    pub new_members: usize,
    pub batches: usize,
    /// Attribute paths the mapping does not read, by the sampled loaded
    /// events that carried each (see `Batch::unread`).
    pub unread: BTreeMap<String, u64>,
}

impl Totals {
    /// Adds what another run committed.
    pub fn merge(&mut self, other: Totals) {
        self.events += other.events;
        self.rows += other.rows;
        self.discards += other.discards;
        self.new_members += other.new_members;
        self.batches += other.batches;
        for (path, events) in other.unread {
            *self.unread.entry(path).or_default() += events;
        }
    }

    /// Adds a committed batch.
    pub fn add(&mut self, batch: &Batch, report: &BatchReport) {
        self.events += report.events + report.discards;
        self.rows += report.rows;
        self.discards += report.discards;
        self.new_members += report.new_members;
        self.batches += 1;
        for (path, events) in &batch.unread {
            *self.unread.entry(path.clone()).or_default() += events;
        }
    }
}

/// A request to stop: readers stop reading, the batch being written is
/// committed, and the runtime returns.
#[derive(Debug, Default)]
pub struct Stop {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Returns once a stop is requested.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

/// Writes a batch; while the database is unavailable (a transient failure),
/// waits with backoff and writes it again. Readers stop meanwhile, as the
/// writer takes no new batch, and no offset moves: nothing of a failed
/// attempt was committed. A stop request ends the waiting.
pub async fn write_with_retry(
    sink: &mut Sink,
    batch: &Batch,
    stop: &Stop,
    metrics: &Metrics,
) -> Result<BatchReport, SinkError> {
    let mut wait = Duration::from_millis(250);
    let mut outage: Option<Instant> = None;
    loop {
        match sink.write(batch).await {
            Ok(report) => {
                if let Some(since) = outage {
                    metrics.database_down(false);
                    tracing::warn!(
                        down_for = ?since.elapsed(),
                        "database available again; consumption resumes"
                    );
                }
                tracing::debug!(
                    audit_key = report.audit_key,
                    events = report.events + report.discards,
                    rows = report.rows,
                    "batch committed"
                );
                return Ok(report);
            }
            Err(error) if error.is_transient() && !stop.requested() => {
                if outage.is_none() {
                    tracing::error!(
                        %error,
                        "database unavailable: consumption paused, no offset moves; retrying with backoff"
                    );
                    outage = Some(Instant::now());
                    metrics.database_down(true);
                } else {
                    tracing::debug!(%error, "database still unavailable; retrying in {wait:?}");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.wait() => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(error) => {
                metrics.database_down(false);
                return Err(error);
            }
        }
    }
}
