//! Messages in, batches out: the stage between a source and the sink.
//!
//! A [`Batcher`] interprets each [`Message`] with the plan and collects its
//! rows, or its discard with the exact payload and where it came from, into
//! a [`Batch`] for the sink, and prepares it (`batch`). It knows no source
//! and no database.

mod batch;

pub use batch::{Batch, CopyLine, DiscardRecord, KeyPart, NextOffset, Prepared, Preparer, Replay};

use crate::plan::Plan;
use crate::plan::coverage::Coverage;

/// One event as a source delivers it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The file name, or the topic.
    pub source: String,
    pub partition: Option<i32>,
    /// The offset in the partition, or the line number in the file.
    pub position: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Collects interpreted messages into batches.
pub struct Batcher {
    plan: Plan,
    batch: Batch,
    events: usize,
    /// The Kafka cluster the messages come from; their offsets then travel
    /// with the batch.
    cluster: Option<String>,
    preparer: Option<Preparer>,
    /// Drift: the sampled loaded events' attribute paths against the
    /// mapping's (`None`: not counted).
    drift: Option<Drift>,
}

/// Every `every`-th loaded event's attribute paths, against the mapping's.
struct Drift {
    coverage: Coverage,
    every: u64,
    loaded: u64,
}

/// Distinct unread attribute paths counted per mapping at most: the rest
/// are left out (metric labels stay bounded).
const DRIFT_PATHS: usize = 100;

/// One loaded event in this many has its attribute paths counted: a full
/// parse of every event would cost more than the drift report is worth.
pub const DRIFT_SAMPLE: u64 = 64;

impl Batcher {
    pub fn new(plan: Plan) -> Self {
        Batcher {
            plan,
            batch: Batch::default(),
            events: 0,
            cluster: None,
            preparer: None,
            drift: None,
        }
    }

    /// Counts the attribute paths of one loaded event in `every` that the
    /// mapping does not read (`Batch::unread`); 0 counts none.
    pub fn counting_drift(self, every: u64) -> Self {
        let drift = (every > 0).then(|| Drift {
            coverage: Coverage::new(self.plan.reads.clone(), DRIFT_PATHS),
            every,
            loaded: 0,
        });
        Batcher { drift, ..self }
    }

    /// Prepares each batch for its sink as it is handed over, on this
    /// batcher's thread rather than the writer's.
    pub fn preparing(self, preparer: Preparer) -> Self {
        Batcher {
            preparer: Some(preparer),
            ..self
        }
    }

    /// A batcher for messages of one Kafka cluster: each batch also carries
    /// the next offset of every partition it read, to commit with its rows.
    pub fn for_cluster(plan: Plan, cluster: &str) -> Self {
        Batcher {
            cluster: Some(cluster.to_owned()),
            ..Batcher::new(plan)
        }
    }

    /// Interprets one message into the current batch.
    pub fn push(&mut self, message: Message) {
        self.events += 1;
        if !self
            .batch
            .source
            .split(", ")
            .any(|source| source == message.source)
        {
            if !self.batch.source.is_empty() {
                self.batch.source.push_str(", ");
            }
            self.batch.source.push_str(&message.source);
        }
        if let (Some(cluster), Some(partition)) = (&self.cluster, message.partition) {
            let next = message.position + 1;
            let offsets = &mut self.batch.offsets;
            match offsets
                .iter_mut()
                .find(|o| o.partition == partition && o.topic == message.source)
            {
                Some(offset) => offset.offset = offset.offset.max(next),
                None => offsets.push(NextOffset {
                    cluster: cluster.clone(),
                    topic: message.source.clone(),
                    partition,
                    first: message.position,
                    offset: next,
                }),
            }
        }
        match self.plan.apply(&message.payload) {
            Ok(rows) => {
                self.batch.events.push(rows);
                if let Some(drift) = &mut self.drift {
                    if drift.loaded % drift.every == 0
                        && let Ok(event) = serde_json::from_slice(&message.payload)
                    {
                        drift.coverage.add(&event);
                    }
                    drift.loaded += 1;
                }
            }
            Err(discard) => self.batch.discards.push(DiscardRecord {
                source: message.source,
                partition: message.partition,
                position: message.position,
                key: message.key,
                payload: message.payload,
                error: discard.to_string(),
            }),
        }
    }

    /// Messages in the current batch.
    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Hands over the current batch and starts a new one.
    pub fn take(&mut self) -> Batch {
        self.events = 0;
        let mut batch = std::mem::take(&mut self.batch);
        if let Some(drift) = &mut self.drift {
            batch.unread = drift.coverage.drain();
        }
        if let Some(preparer) = &self.preparer {
            preparer.prepare(&mut batch);
        }
        batch
    }
}
