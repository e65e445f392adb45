//! `martmap run`: consumes every topic bound in an Info Mart options file
//! and loads it, with the offsets of each batch committed in the batch's
//! database transaction.
//!
//! The consuming itself is the library's (`runtime::kafka`); this module
//! parses the arguments and the options file, reports its problems as
//! diagnostics, serves metrics and renders the summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use martmap::catalog::Catalog;
use martmap::metrics::Metrics;
use martmap::options::{self, KafkaCluster, OptionsFile};
use martmap::plan::Plan;
use martmap::runtime::Stop;
use martmap::runtime::kafka::{self, Binding};
use martmap::sink::{AggregateSetup, Database, Sink};
use martmap::source::kafka::effective_options;

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
/// With --once, consume every partition up to its end, then exit (one ETL
/// cycle). A cycle joins no consumer group: it takes the partitions itself
/// at the offsets the database holds, so crashed members never delay it,
/// and an overlapping cycle waits for the earlier one. Without --once, keep
/// consuming as a member of the group (several processes share the
/// partitions); set a stable group.instance.id per process for fast
/// restarts (static membership).
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
/// Changes take effect on the next ETL cycle, without a restart: on SIGHUP,
/// or when the options file, a mapping, the catalog or an aggregate file
/// changes, the configuration is read again; a valid one is applied at the
/// next batch boundary (message id MM-10001), an invalid one is reported
/// with its problems (MM-10002) and the running one kept.
///
/// One ETL cycle: martmap run --options infomart.ini --once
///
/// As a service: martmap run --options infomart.ini --metrics-addr 127.0.0.1:9464
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The options file with [kafka-<cluster>] sections.
    #[arg(long, value_name = "FILE")]
    options: PathBuf,

    /// One ETL cycle: consume every partition up to its end, then exit.
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
    aggregates: super::aggregate::AggregatesArgs,

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
    let Some(config) = configure(&args)? else {
        return Ok(Outcome::Invalid);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
        // SIGINT or SIGTERM: every consumer finishes its batch, commits, stops.
        let stop = super::stop_on_signal(Some("stopping: finishing the current batches"));
        // SIGHUP: reload (installed now, so that it never kills the process).
        let hangups = Arc::new(tokio::sync::Notify::new());
        if !args.once {
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let hangups = hangups.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    hangups.notify_one();
                }
            });
        }
        let mut database = Database::connect(&args.database.url(), &config.catalog).await?;
        let consumed = async {
            let mut config = config;
            let mut seen = fingerprint(&args);
            let mut totals = martmap::runtime::Totals::default();
            loop {
                // One generation: consumed with one configuration until a
                // stop, or until a new valid configuration is read.
                let generation = if args.once { stop.clone() } else { Arc::new(Stop::new()) };
                let (next, reloaded) = tokio::sync::oneshot::channel();
                let watcher = (!args.once).then(|| {
                    let watch = Watch {
                        args: args.clone(),
                        seen: seen.clone(),
                        stop: stop.clone(),
                        generation: generation.clone(),
                        hangups: hangups.clone(),
                        metrics: metrics.clone(),
                    };
                    tokio::spawn(watch.run(next))
                });
                let report = database.aggregate(&config.catalog, config.setup.clone()).await?;
                super::aggregate::log(&report);
                let mut sinks = HashMap::new();
                for (name, plan) in &config.plans {
                    let sink = Sink::open(database.clone(), &config.catalog, plan.clone()).await?;
                    sinks.insert(name.clone(), sink);
                }
                let bindings = &config.bindings;
                let run = kafka::run(&database, sinks, bindings, args.once, metrics.clone(), generation);
                totals.merge(run.await?);
                if let Some(watcher) = watcher {
                    watcher.abort();
                }
                match reloaded.await {
                    Ok((new, fingerprint)) if !stop.requested() => {
                        config = new;
                        seen = fingerprint;
                    }
                    _ => break,
                }
            }
            Ok::<_, Box<dyn std::error::Error>>(totals)
        }
        .await;
        // Closing the pool checkpoints SQLite's write-ahead log into the
        // database file and removes it: the .db file alone is then whole.
        database.close().await;
        let totals = consumed?;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "consumed {} messages: {} fact rows written, {} discarded, {} new dimension members, {} batches in {:.2} s ({:.0} messages/s)",
            totals.events,
            totals.rows,
            totals.discards,
            totals.new_members,
            totals.batches,
            elapsed,
            totals.events as f64 / elapsed.max(1e-9)
        );
        super::print_unread(&totals);
        Ok(Outcome::Success)
    })
}

/// What one configuration of `run` consumes with: the catalog, the plans
/// of the bound mappings, the bindings and the aggregates' setup.
struct Config {
    catalog: Catalog,
    plans: HashMap<String, Plan>,
    bindings: Vec<Binding>,
    setup: AggregateSetup,
}

/// Reads the options file, the mappings, the catalog and the aggregate
/// files into a configuration, or `None` when they have problems
/// (rendered to standard error).
fn configure(args: &RunArgs) -> Result<Option<Config>, Box<dyn std::error::Error>> {
    let Some(plans) = mapping_plans(args)? else {
        return Ok(None);
    };
    let known: Vec<&str> = plans.keys().map(String::as_str).collect();
    let Some(clusters) = read_clusters(args, Some(&known))? else {
        return Ok(None);
    };
    // Only the bound mappings are loaded (and get their tables).
    let mut plans = plans;
    plans.retain(|name, _| {
        clusters
            .iter()
            .any(|cluster| cluster.topics.iter().any(|b| &b.mapping == name))
    });
    let catalog = Catalog::load(&args.catalog.catalog).map_err(|_| "the catalog became invalid")?;
    let Some(setup) = super::aggregate::setup(
        Some(&args.options),
        &args.aggregates,
        &catalog,
        args.color,
        false,
    )?
    else {
        return Ok(None);
    };
    let bindings: Vec<Binding> = clusters
        .iter()
        .flat_map(|cluster| {
            cluster.topics.iter().map(|binding| Binding {
                cluster: cluster.name.clone(),
                client_options: cluster.client_options(),
                topic: binding.topic.clone(),
                mapping: binding.mapping.clone(),
                batch_size: args.batch_size.unwrap_or(cluster.batch_size),
                batch_time: Duration::from_millis(
                    args.batch_ms.unwrap_or(cluster.batch_timeout_ms),
                ),
            })
        })
        .collect();
    Ok(Some(Config {
        catalog,
        plans,
        bindings,
        setup,
    }))
}

/// A digest of every file the configuration is read from: the options
/// file, and the files of the mappings, catalog and aggregates directories.
fn fingerprint(args: &RunArgs) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    let mut files = vec![args.options.clone()];
    for dir in [
        &args.mappings,
        &args.catalog.catalog,
        &args.aggregates.aggregates,
    ] {
        files.extend(files_under(dir));
    }
    files.sort();
    for file in files {
        digest.update(file.display().to_string().as_bytes());
        digest.update(std::fs::read(&file).unwrap_or_default());
    }
    digest.finalize().to_vec()
}

fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Watches the configuration of a running `run` for one generation: on
/// SIGHUP, or when its files change (checked every second), reads it
/// again. A valid one is handed over and the generation stopped at the
/// next batch boundary; an invalid one is reported (once per content) and
/// the running one kept.
struct Watch {
    args: RunArgs,
    seen: Vec<u8>,
    stop: Arc<Stop>,
    generation: Arc<Stop>,
    hangups: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
}

/// Message ids of reloads, for operators' alarms.
const RELOADED: &str = "MM-10001";
const NOT_RELOADED: &str = "MM-10002";

impl Watch {
    async fn run(mut self, next: tokio::sync::oneshot::Sender<(Config, Vec<u8>)>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let asked = tokio::select! {
                () = self.stop.wait() => {
                    self.generation.request();
                    return;
                }
                () = self.hangups.notified() => true,
                _ = tick.tick() => false,
            };
            let now = fingerprint(&self.args);
            if !asked && now == self.seen {
                continue;
            }
            self.seen = now.clone();
            let args = self.args.clone();
            let read =
                tokio::task::spawn_blocking(move || configure(&args).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
            match read {
                Ok(Some(config)) => {
                    self.metrics.reload(true);
                    tracing::warn!(
                        message_id = RELOADED,
                        "{RELOADED} configuration reloaded: it takes effect at the next batch boundary"
                    );
                    let _ = next.send((config, now));
                    self.generation.request();
                    return;
                }
                Ok(None) => {
                    self.metrics.reload(false);
                    tracing::error!(
                        message_id = NOT_RELOADED,
                        "{NOT_RELOADED} configuration not reloaded: it has the problems above; the running one is kept"
                    );
                }
                Err(error) => {
                    self.metrics.reload(false);
                    tracing::error!(
                        message_id = NOT_RELOADED,
                        %error,
                        "{NOT_RELOADED} configuration not reloaded; the running one is kept"
                    );
                }
            }
        }
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
            errors.extend(parsed.date_time().1);
            let files = martmap::aggregate::files_in(&args.aggregates.aggregates).ok();
            let features: Option<Vec<&str>> = files
                .as_ref()
                .map(|files| files.iter().filter_map(|f| f.feature.as_deref()).collect());
            errors.extend(parsed.features(features.as_deref()).1);
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
