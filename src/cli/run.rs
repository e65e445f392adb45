//! `martmap run`: consumes every topic bound in an Info Mart options file
//! and loads it, with the offsets of each batch committed in the batch's
//! database transaction.
//!
//! One consumer thread per bound topic interprets messages into batches
//! (a [`Feed`]) and hands them to one async writer; the writer acknowledges
//! each commit, after which the consumer commits the same offsets to Kafka
//! (best effort) and may release partitions in a rebalance.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use martmap::catalog::Catalog;
use martmap::metrics::Metrics;
use martmap::options::{self, KafkaCluster, OptionsFile};
use martmap::pipeline::{Batch, Preparer};
use martmap::pipeline::{Batcher, Message};
use martmap::plan::Plan;
use martmap::sink::{BatchReport, Database, Sink, SinkError};
use martmap::source::kafka::{Membership, Polled, Positions, TopicConsumer, effective_options};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plans};

/// Consume the Kafka topics of an Info Mart options file into the database.
///
/// Every `[kafka-<cluster>]` section is a cluster; each of its
/// `g:topic:<topic>=<MAPPING>` lines is consumed with the mapping of that
/// name (from --mappings). Every other key of the section goes to the Kafka
/// client unchanged (bootstrap.servers, security.protocol, sasl.*, ssl.*,
/// client.id, ...); martmap adds group.id=martmap and
/// auto.offset.reset=earliest unless set, and manages offset commits
/// itself: the offsets of each batch are written in the same database
/// transaction as its rows, and consumption resumes from them.
///
/// With --once, consume until every assigned partition has reached its end,
/// then exit (one ETL cycle); without it, keep consuming.
///
/// Batching is set per section: `g:batch-size=N` messages per batch (one
/// transaction; default 1000) and `g:batch-timeout-ms=MS`, the longest a
/// partial batch waits (default 1000); --batch-size and --batch-ms override
/// both for every section.
///
/// A lost broker is logged once per outage with message id 55-20049 and
/// reconnected to; a lost database pauses consumption and the batch is
/// retried with backoff. Neither loses nor repeats a message.
///
/// One ETL cycle: martmap run --options infomart.ini --once
///
/// As a service: martmap run --options infomart.ini --metrics-addr 127.0.0.1:9464
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The options file with [kafka-<cluster>] sections.
    #[arg(long, value_name = "FILE")]
    options: PathBuf,

    /// Consume up to the end of every assigned partition, then exit.
    #[arg(long)]
    once: bool,

    /// Print the effective configuration of each section, as read back from
    /// librdkafka, with secrets redacted, and exit.
    #[arg(long)]
    print_options: bool,

    /// Directory of mapping files; a binding names a mapping by its `name:`.
    #[arg(long, default_value = "mappings", value_name = "DIR")]
    mappings: PathBuf,

    /// Messages per batch (one transaction each); overrides the section's
    /// `g:batch-size` (default 1000).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,

    /// Longest time a partial batch waits before it is written (without
    /// --once); overrides the section's `g:batch-timeout-ms` (default 1000).
    #[arg(long, value_name = "MS")]
    batch_ms: Option<u64>,

    /// Serve Prometheus metrics at http://ADDR/metrics and the service's
    /// state at http://ADDR/health (200 ok, or 503 naming what is down).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub fn run(args: RunArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    if args.print_options {
        let Some(clusters) = read_clusters(&args, None)? else {
            return Ok(Outcome::Invalid);
        };
        // Read back from librdkafka: what the consumer will really use.
        for cluster in &clusters {
            let effective = effective_options(&cluster.client_options())
                .map_err(|e| format!("[kafka-{}]: {e}", cluster.name))?;
            println!("[kafka-{}]", cluster.name);
            for (key, value) in options::redacted(&effective) {
                println!("{key}={value}");
            }
            for binding in &cluster.topics {
                println!("g:topic:{}={}", binding.topic, binding.mapping);
            }
            println!(
                "g:batch-size={}",
                args.batch_size.unwrap_or(cluster.batch_size)
            );
            println!(
                "g:batch-timeout-ms={}",
                args.batch_ms.unwrap_or(cluster.batch_timeout_ms)
            );
        }
        return Ok(Outcome::Success);
    }
    let Some(plans) = mapping_plans(&args)? else {
        return Ok(Outcome::Invalid);
    };
    let known: Vec<&str> = plans.keys().map(String::as_str).collect();
    let Some(clusters) = read_clusters(&args, Some(&known))? else {
        return Ok(Outcome::Invalid);
    };
    // Only the bound mappings are loaded (and get their tables).
    let mut plans = plans;
    plans.retain(|name, _| {
        clusters
            .iter()
            .any(|cluster| cluster.topics.iter().any(|b| &b.mapping == name))
    });
    let catalog = Catalog::load(&args.catalog.catalog).map_err(|_| "the catalog became invalid")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    runtime.block_on(async move {
        let started = Instant::now();
        let metrics = Arc::new(Metrics::new());
        if let Some(addr) = args.metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            tracing::info!("metrics at http://{addr}/metrics, health at http://{addr}/health");
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(error) = martmap::metrics::serve(listener, metrics).await {
                    tracing::error!(%error, "the metrics server stopped");
                }
            });
        }
        let database = Database::connect(&args.database.url()).await?;
        let result = async {
        let mut sinks: HashMap<String, Sink> = HashMap::new();
        for (name, plan) in &plans {
            sinks.insert(name.clone(), Sink::open(database.clone(), &catalog, plan.clone()).await?);
        }
        // One ETL cycle per topic at a time: an overlapping cycle waits here
        // for the earlier one, then loads what that one left.
        let mut cycle_locks = Vec::new();
        if args.once {
            let mut topics: Vec<(&str, &str)> = clusters
                .iter()
                .flat_map(|c| c.topics.iter().map(move |b| (c.name.as_str(), b.topic.as_str())))
                .collect();
            topics.sort_unstable();
            topics.dedup();
            for (cluster, topic) in topics {
                cycle_locks.push(database.lock_cycle(cluster, topic).await?);
            }
        }
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(2);
        // SIGINT or SIGTERM: every consumer finishes its batch, commits, stops.
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(stop_on_signal(stop.clone()));
        let services = Services {
            jobs,
            database: database.clone(),
            runtime: handle.clone(),
            metrics: metrics.clone(),
        };
        let mut consumers = Vec::new();
        for cluster in &clusters {
            for binding in &cluster.topics {
                let feed = Arc::new(Feed::new(
                    cluster,
                    &binding.topic,
                    plans[&binding.mapping].clone(),
                    sinks[&binding.mapping].preparer(),
                    &args,
                    services.clone(),
                ));
                let batch_time = args.batch_ms.unwrap_or(cluster.batch_timeout_ms);
                let (options, once, batch_time, stop) = (
                    cluster.client_options(),
                    args.once,
                    Duration::from_millis(batch_time),
                    stop.clone(),
                );
                consumers.push(std::thread::spawn(move || consume(&options, feed, once, batch_time, &stop)));
            }
        }
        drop(services);

        let mut totals = BatchReport::default();
        let mut batches = 0usize;
        while let Some(job) = queue.recv().await {
            let sink = sinks.get_mut(&job.mapping).ok_or("a batch for an unknown mapping")?;
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
                    totals.events += report.events + report.discards;
                    totals.rows += report.rows;
                    totals.discards += report.discards;
                    totals.new_members += report.new_members;
                    batches += 1;
                    // The batch goes back to be freed on the thread that allocated it.
                    let _ = job.done.send(Ok(job.batch));
                }
                Err(error) => {
                    let _ = job.done.send(Err(error.to_string()));
                    return Err(error.into());
                }
            }
        }
        for consumer in consumers {
            consumer.join().map_err(|_| "a consumer thread panicked")??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "consumed {} messages: {} fact rows written, {} discarded, {} new dimension members, {} batches in {:.2} s ({:.0} messages/s)",
            totals.events,
            totals.rows,
            totals.discards,
            totals.new_members,
            batches,
            elapsed,
            totals.events as f64 / elapsed.max(1e-9)
        );
        drop(cycle_locks);
        Ok::<_, Box<dyn std::error::Error>>(Outcome::Success)
        }
        .await;
        // Closing the pool checkpoints SQLite's write-ahead log into the
        // database file and removes it: the .db file alone is then whole.
        database.close().await;
        result
    })
}

/// Writes a batch; while the database is unavailable (a transient failure),
/// waits with backoff and writes it again. Consumers stop meanwhile, as the
/// writer takes no new batch, and no offset moves: nothing of a failed
/// attempt was committed. A stop request ends the waiting.
async fn write_with_retry(
    sink: &mut Sink,
    batch: &Batch,
    stop: &AtomicBool,
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
                return Ok(report);
            }
            Err(error) if error.is_transient() && !stop.load(Ordering::SeqCst) => {
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
                // Sleep in short steps, so that a stop request is heard.
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
    fn new(
        cluster: &KafkaCluster,
        topic: &str,
        plan: Plan,
        preparer: Preparer,
        args: &RunArgs,
        services: Services,
    ) -> Self {
        let (done, acks) = mpsc::channel();
        Feed {
            cluster: cluster.name.clone(),
            topic: topic.to_owned(),
            mapping: plan.mapping.clone(),
            batch_size: args.batch_size.unwrap_or(cluster.batch_size).max(1),
            batcher: Mutex::new(Batcher::for_cluster(plan, &cluster.name).preparing(preparer)),
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
}

/// The consumer thread of one topic.
fn consume(
    options: &[(String, String)],
    feed: Arc<Feed>,
    once: bool,
    batch_time: Duration,
    stop: &AtomicBool,
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
            Polled::Error(error) => match broker_trouble(&error) {
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
                None => tracing::warn!(topic = consumer.topic(), %error, "Kafka client error"),
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
        if cycle_done || stop.load(Ordering::SeqCst) {
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

/// Sets `stop` at the first SIGINT or SIGTERM.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    super::signalled().await;
    tracing::warn!("stopping: finishing the current batches");
    stop.store(true, Ordering::SeqCst);
}

/// What a client error says is wrong with the brokers, if anything (as
/// opposed to, say, a message-level error): the cause an operator should
/// look at, naming the options involved.
fn broker_trouble(error: &str) -> Option<&'static str> {
    if error.contains("Authentication") || error.contains("SASL") {
        Some(
            "authentication with the broker failed; check security.protocol and the sasl.* options",
        )
    } else if error.contains("SSL") {
        Some("TLS with the broker failed; check security.protocol and the ssl.* options")
    } else if [
        "BrokerTransportFailure",
        "AllBrokersDown",
        "Broker transport failure",
        "brokers are down",
        "Connection refused",
    ]
    .iter()
    .any(|sign| error.contains(sign))
    {
        Some("broker unreachable")
    } else {
        None
    }
}

/// The options file's Kafka clusters, or `None` when it has problems
/// (rendered to standard error, as `validate-mapping --options` renders
/// them). Bindings are checked against the mappings when `known` is given.
fn read_clusters(
    args: &RunArgs,
    known: Option<&[&str]>,
) -> Result<Option<Vec<KafkaCluster>>, Box<dyn std::error::Error>> {
    use martmap::diagnostic::{Problem, SourceFile, render};
    let text = std::fs::read_to_string(&args.options)
        .map_err(|e| format!("cannot read {}: {e}", args.options.display()))?;
    let file = SourceFile::new(args.options.display().to_string(), text);
    let errors = match OptionsFile::parse(&file.text) {
        Ok(parsed) => {
            let (clusters, mut errors) = parsed.clusters();
            if let Some(known) = known {
                errors.extend(options::check_mappings(&clusters, known));
            }
            if errors.is_empty() {
                return Ok(Some(clusters));
            }
            errors
        }
        Err(errors) => errors,
    };
    let problems: Vec<Problem> = errors
        .into_iter()
        .map(|error| Problem::new(&file, error))
        .collect();
    eprint!("{}", render(problems, args.color.enabled()));
    Ok(None)
}

/// The compiled plan of every mapping in `--mappings`, by name, or `None`
/// when one has problems (rendered to standard error).
fn mapping_plans(
    args: &RunArgs,
) -> Result<Option<HashMap<String, Plan>>, Box<dyn std::error::Error>> {
    let Some(compiled) = load_plans(&args.mappings, &args.catalog, args.color)? else {
        return Ok(None);
    };
    Ok(Some(
        compiled
            .into_iter()
            .map(|plan| (plan.mapping.clone(), plan))
            .collect(),
    ))
}
