//! `run`: every bound Kafka topic consumed into the database, with the
//! offsets of each batch committed in the batch's own transaction.
//!
//! One consumer thread per bound topic interprets messages into batches (a
//! `Feed`) and hands them to one async writer; the writer acknowledges each
//! commit, after which the consumer commits the same offsets to Kafka (best
//! effort, for lag tools) and may release partitions in a rebalance. An ETL
//! cycle (`once`) takes every partition itself, under the sink's cycle
//! lock, and ends when each has reached its end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::pipeline::{Batch, Batcher, DRIFT_SAMPLE, Message, Preparer};
use crate::plan::Plan;
use crate::sink::{Database, OffsetGap, Sink, SinkError};
use crate::source::kafka::{Gap, GapKind, Membership, Polled, Positions, TopicConsumer, Trouble};

use super::{Stop, Totals, write_with_retry};

/// One bound topic, as the options file (and the command line) set it up.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The `[kafka-<cluster>]` section's name.
    pub cluster: String,
    /// The Kafka client's options, as librdkafka takes them.
    pub client_options: Vec<(String, String)>,
    pub topic: String,
    /// The `name:` of the mapping it is consumed with.
    pub mapping: String,
    /// Messages per batch (one transaction each).
    pub batch_size: usize,
    /// The longest a partial batch waits (not in an ETL cycle, which writes
    /// what it holds at the end).
    pub batch_time: Duration,
}

/// Why `run` stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("topic {topic}: {error}")]
    Consumer { topic: String, error: String },
    #[error("a consumer thread panicked")]
    ConsumerPanicked,
    #[error("topic {0} is bound to a mapping that has no sink")]
    NoSink(String),
}

/// Consumes every binding with the sink of its mapping (by mapping name)
/// until a stop is requested or, with `once`, until every partition has
/// reached its end. The totals count what was committed.
pub async fn run(
    database: &Database,
    mut sinks: HashMap<String, Sink>,
    bindings: &[Binding],
    once: bool,
    metrics: Arc<Metrics>,
    stop: Arc<Stop>,
) -> Result<Totals, RunError> {
    // One ETL cycle per topic at a time: an overlapping cycle waits here for
    // the earlier one, then loads what that one left.
    let mut cycle_locks = Vec::new();
    if once {
        let mut topics: Vec<(&str, &str)> = bindings
            .iter()
            .map(|b| (b.cluster.as_str(), b.topic.as_str()))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        for (cluster, topic) in topics {
            cycle_locks.push(database.lock_cycle(cluster, topic).await?);
        }
    }
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(2);
    let services = Services {
        jobs,
        database: database.clone(),
        runtime: tokio::runtime::Handle::current(),
        metrics: metrics.clone(),
    };
    let mut consumers = Vec::new();
    for binding in bindings {
        let sink = sinks
            .get(&binding.mapping)
            .ok_or_else(|| RunError::NoSink(binding.topic.clone()))?;
        let feed = Arc::new(Feed::new(
            binding,
            sink.plan().clone(),
            sink.preparer(),
            services.clone(),
        ));
        let (options, batch_time, stop) = (
            binding.client_options.clone(),
            binding.batch_time,
            stop.clone(),
        );
        let topic = binding.topic.clone();
        consumers.push((
            topic,
            std::thread::spawn(move || consume(&options, feed, once, batch_time, &stop)),
        ));
    }
    drop(services);

    let mut totals = Totals::default();
    while let Some(job) = queue.recv().await {
        let sink = sinks
            .get_mut(&job.mapping)
            .ok_or_else(|| RunError::NoSink(job.topic.clone()))?;
        let writing = Instant::now();
        match write_with_retry(sink, &job.batch, &stop, &metrics).await {
            Ok(report) => {
                metrics.batch(
                    &job.topic,
                    report.events + report.discards,
                    report.rows,
                    report.discards,
                    writing.elapsed(),
                );
                metrics.unread(&job.topic, &job.batch.unread);
                totals.add(&job.batch, &report);
                // The batch goes back to be freed on the thread that allocated it.
                let _ = job.done.send(Ok(job.batch));
            }
            Err(error) => {
                let _ = job.done.send(Err(error.to_string()));
                return Err(error.into());
            }
        }
    }
    for (topic, consumer) in consumers {
        consumer
            .join()
            .map_err(|_| RunError::ConsumerPanicked)?
            .map_err(|error| RunError::Consumer { topic, error })?;
    }
    drop(cycle_locks);
    Ok(totals)
}

/// One batch for the writer, and where to say that it committed.
struct Job {
    mapping: String,
    topic: String,
    batch: Batch,
    done: mpsc::Sender<Result<Batch, String>>,
}

/// What every feed shares: the writer's queue, the database (for stored
/// offsets, reached from consumer threads through the runtime), the metrics.
#[derive(Clone)]
struct Services {
    jobs: tokio::sync::mpsc::Sender<Job>,
    database: Database,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

/// The batches of one consumed topic on their way to the writer.
struct Feed {
    cluster: String,
    topic: String,
    mapping: String,
    batch_size: usize,
    batcher: Mutex<Batcher>,
    done: mpsc::Sender<Result<Batch, String>>,
    acks: Mutex<mpsc::Receiver<Result<Batch, String>>>,
    in_flight: AtomicUsize,
    /// Offsets committed to the database and not yet to Kafka.
    committed: Mutex<Vec<(i32, i64)>>,
    failure: Mutex<Option<String>>,
    services: Services,
}

impl Feed {
    fn new(binding: &Binding, plan: Plan, preparer: Preparer, services: Services) -> Self {
        let (done, acks) = mpsc::channel();
        Feed {
            cluster: binding.cluster.clone(),
            topic: binding.topic.clone(),
            mapping: plan.mapping.clone(),
            batch_size: binding.batch_size.max(1),
            batcher: Mutex::new(
                Batcher::for_cluster(plan, &binding.cluster)
                    .preparing(preparer)
                    .counting_drift(DRIFT_SAMPLE),
            ),
            done,
            acks: Mutex::new(acks),
            in_flight: AtomicUsize::new(0),
            committed: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            services,
        }
    }

    fn push(&self, message: Message) {
        let full = {
            let mut batcher = self.batcher.lock().unwrap_or_else(|e| e.into_inner());
            batcher.push(message);
            (batcher.len() >= self.batch_size).then(|| batcher.take())
        };
        if let Some(batch) = full {
            self.send(batch);
        }
    }

    /// Sends the partial batch, if any.
    fn flush(&self) {
        let batch = {
            let mut batcher = self.batcher.lock().unwrap_or_else(|e| e.into_inner());
            (!batcher.is_empty()).then(|| batcher.take())
        };
        if let Some(batch) = batch {
            self.send(batch);
        }
    }

    fn send(&self, batch: Batch) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            mapping: self.mapping.clone(),
            topic: self.topic.clone(),
            batch,
            done: self.done.clone(),
        };
        if self.services.jobs.blocking_send(job).is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.fail("the writer stopped".into());
        }
    }

    /// Collects commit acknowledgements; with `wait`, until none is in flight.
    fn collect(&self, wait: bool) {
        let acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            let ack = if wait {
                acks.recv().map_err(|_| ())
            } else {
                match acks.try_recv() {
                    Ok(ack) => Ok(ack),
                    Err(_) => return,
                }
            };
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            match ack {
                Ok(Ok(batch)) => {
                    let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
                    committed.extend(batch.offsets.iter().map(|o| (o.partition, o.offset)));
                }
                Ok(Err(error)) => self.fail(error),
                Err(()) => self.fail("the writer stopped".into()),
            }
        }
    }

    fn take_committed(&self) -> Vec<(i32, i64)> {
        std::mem::take(&mut *self.committed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn fail(&self, error: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The feed as the consumer's rebalance handler.
struct Shared(Arc<Feed>);

impl Positions for Shared {
    fn stored(&self, topic: &str) -> Vec<(i32, i64)> {
        // The database is the truth for progress: without it, do not guess.
        let mut wait = Duration::from_millis(200);
        loop {
            match self.0.services.runtime.block_on(
                self.0
                    .services
                    .database
                    .stored_offsets(&self.0.cluster, topic),
            ) {
                Ok(offsets) => return offsets,
                Err(error) => {
                    tracing::error!(%error, "cannot read stored offsets; retrying in {wait:?}");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn release(&self) {
        self.0.flush();
        self.0.collect(true);
    }

    fn gap(&self, topic: &str, partition: i32, gap: Gap) {
        let recorded = OffsetGap {
            cluster: self.0.cluster.clone(),
            topic: topic.to_owned(),
            partition,
            from: gap.from,
            to: gap.to,
            kind: gap.kind.as_str(),
        };
        let services = &self.0.services;
        // Recorded (and logged) once: found again at the next assignment
        // until a batch moves the stored offset past it.
        match services
            .runtime
            .block_on(services.database.record_gap(&recorded))
        {
            Ok(false) => return,
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "cannot record the offset gap"),
        }
        services.metrics.gap(topic, gap);
        let Gap { from, to, kind } = gap;
        let what = match kind {
            GapKind::Retention => format!(
                "offsets {from} to {} of partition {partition} of {topic} were deleted \
                 (retention) before they were loaded",
                to - 1
            ),
            GapKind::BeyondEnd => format!(
                "the next offset {from} of partition {partition} of {topic} is beyond the \
                 partition's end (the topic was recreated?); messages from offset {to} are \
                 loaded as new"
            ),
        };
        tracing::error!(
            message_id = GAP,
            topic,
            partition,
            from,
            to,
            kind = kind.as_str(),
            "{GAP} {what}; recorded in CTL_KAFKA_GAP, loading continues from offset {to}"
        );
    }
}

/// The message id of an offset gap, for operators' alarms.
const GAP: &str = "MM-20001";

/// The consumer thread of one topic.
fn consume(
    options: &[(String, String)],
    feed: Arc<Feed>,
    once: bool,
    batch_time: Duration,
    stop: &Stop,
) -> Result<(), String> {
    // One ETL cycle takes every partition itself: the database holds the
    // offsets, so it needs no group, and no member that crashed delays it.
    let membership = if once {
        Membership::AllPartitions
    } else {
        Membership::Group
    };
    let mut consumer = TopicConsumer::new(options, &feed.topic, Shared(feed.clone()), membership)
        .map_err(|e| e.to_string())?;
    let mut ended: HashSet<i32> = HashSet::new();
    let mut owned: Vec<i32> = Vec::new();
    let mut last_flush = Instant::now();
    let mut broker_down = false;
    // Other client errors repeat while their cause lasts (an unknown topic,
    // say): each is logged when it first appears.
    let mut last_warning: Option<String> = None;
    let mut last_lag = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Polled::Message(message) => {
                if std::mem::take(&mut broker_down) {
                    tracing::warn!(topic = consumer.topic(), "Kafka connection restored");
                    feed.services.metrics.broker_down(consumer.topic(), false);
                }
                if let Some(partition) = message.partition {
                    ended.remove(&partition);
                }
                feed.push(message);
            }
            Polled::End(partition) => {
                ended.insert(partition);
            }
            Polled::Idle => {}
            Polled::Error(error) => match error.trouble.map(Trouble::advice) {
                // One line per outage, with Info Mart's message id for a Kafka
                // exception in a transformation job, for operators' alarms.
                Some(trouble) if !broker_down => {
                    tracing::error!(
                        message_id = "55-20049",
                        topic = consumer.topic(),
                        %error,
                        "55-20049 Kafka exception: {trouble}; retrying"
                    );
                    broker_down = true;
                    feed.services.metrics.broker_down(consumer.topic(), true);
                }
                Some(_) => {
                    tracing::debug!(topic = consumer.topic(), %error, "Kafka still unavailable")
                }
                None if last_warning.as_deref() != Some(error.text.as_str()) => {
                    tracing::warn!(topic = consumer.topic(), %error, "Kafka client error");
                    last_warning = Some(error.text);
                }
                None => tracing::debug!(topic = consumer.topic(), %error, "Kafka client error"),
            },
        }
        feed.collect(false);
        let committed = feed.take_committed();
        if !committed.is_empty() {
            consumer.commit(&committed);
        }
        if let Some(error) = feed.failure() {
            return Err(error);
        }
        let assigned = consumer.assigned();
        if assigned != owned {
            ended.retain(|partition| assigned.contains(partition));
            for partition in owned.iter().filter(|p| !assigned.contains(p)) {
                feed.services
                    .metrics
                    .forget_lag(consumer.topic(), *partition);
            }
            owned = assigned;
        }
        if last_lag.elapsed() >= Duration::from_secs(1) {
            for &partition in &owned {
                if let Some(lag) = consumer.lag(partition) {
                    feed.services.metrics.lag(consumer.topic(), partition, lag);
                }
            }
            last_lag = Instant::now();
        }
        let cycle_done =
            once && !owned.is_empty() && owned.iter().all(|partition| ended.contains(partition));
        if cycle_done || stop.requested() {
            // Write what is held, wait for its commit, tell Kafka, stop.
            feed.flush();
            feed.collect(true);
            consumer.commit(&feed.take_committed());
            return feed.failure().map_or(Ok(()), Err);
        }
        if !once && last_flush.elapsed() >= batch_time {
            feed.flush();
            last_flush = Instant::now();
        }
    }
}
