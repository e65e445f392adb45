//! `martmap load`: JSON Lines files (or stdin) through one mapping into the
//! database, in batches of one transaction each, with progress and a summary.
//!
//! The load itself is the library's (`runtime::load`); this module parses
//! the arguments, shows progress and renders the summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use martmap::catalog::Catalog;
use martmap::runtime::Totals;
use martmap::runtime::load::load;
use martmap::sink::{Database, Sink};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plan};

/// Load JSON Lines events into the database through one mapping.
///
/// One event per line; blank lines are skipped. An event that cannot be
/// loaded goes to CTL_DISCARD with its line number, exact payload and the
/// reason, and the load goes on. Each batch commits in one transaction with
/// its audit row (CTL_AUDIT_LOG); loading the same events again changes
/// nothing but UPDATE_AUDIT_KEY. First the tables are made to follow the
/// catalog: missing ones created, safe changes applied, and a change that
/// could lose data refused with exit 1 (see `martmap init-db --help`).
///
/// An event with a value its column cannot hold (an integer out of the
/// column's range) is discarded the same way. A batch that fails for the
/// database's state (a busy SQLite file, a lost connection) is written again
/// with backoff. SIGINT or SIGTERM stops after the batch being written;
/// loading the same files again finishes the load. The database is closed
/// on every way out, so an SQLite file alone holds every committed batch.
///
/// Exit code 0 when the load ran (even with discards), 1 for an invalid
/// mapping, 2 when the database or a file failed or the load was
/// interrupted.
///
/// Example: martmap load --mapping mappings/COBROWSE.yaml samples/cobrowse-sessions.jsonl
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The mapping to load with.
    #[arg(long, value_name = "MAPPING")]
    mapping: PathBuf,

    /// JSON Lines files; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Info Mart style options file: its [date-time] calendar zone and
    /// [agg-feature] flags, so that a backfill maintains the same
    /// aggregates as `run`. Without one: UTC, no aggregates.
    #[arg(long, value_name = "FILE")]
    options: Option<PathBuf>,

    #[command(flatten)]
    aggregates: super::aggregate::AggregatesArgs,

    /// Events per batch (one transaction each). Fewer, larger
    /// transactions load faster on both backends, with and without
    /// aggregates; with 2,000 co-browse events a batch, a load peaks at
    /// ~110 MB of memory (README, "Performance").
    #[arg(long, default_value_t = 2000, value_name = "N")]
    batch_size: usize,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub fn run(args: LoadArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let Some(plan) = load_plan(&args.mapping, &args.catalog, args.color)? else {
        return Ok(Outcome::Invalid);
    };
    let catalog = Catalog::load(&args.catalog.catalog).map_err(|_| "the catalog became invalid")?;
    let Some(setup) = super::aggregate::setup(
        args.options.as_deref(),
        &args.aggregates,
        &catalog,
        args.color,
        false,
    )?
    else {
        return Ok(Outcome::Invalid);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = super::stop_on_signal(None);
        let started = Instant::now();
        let mut database = Database::connect(&args.database.url(), &catalog).await?;
        let maintained = match database.aggregate(&catalog, setup).await {
            Ok(report) => {
                super::aggregate::log(&report);
                report.maintained
            }
            Err(error) => {
                database.close().await;
                return Err(error.into());
            }
        };
        let progress = Progress::new();
        let fact = plan.fact.clone();
        let loaded = match Sink::open(database.clone(), &catalog, plan).await {
            Ok(mut sink) => {
                let update = |totals: &Totals| progress.update(totals, started);
                load(&mut sink, &args.files, args.batch_size, &stop, update)
                    .await
                    .map_err(Box::<dyn std::error::Error>::from)
            }
            Err(error) => Err(error.into()),
        };
        progress.finish();
        // Closing the pool checkpoints SQLite's write-ahead log into the
        // database file and removes it: the .db file alone is then whole.
        database.close().await;
        let totals = loaded?;
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "loaded {} events into {fact}: {} fact rows written, {} discarded, {} new dimension members, {} batches in {:.2} s ({:.0} events/s)",
            totals.events,
            totals.rows,
            totals.discards,
            totals.new_members,
            totals.batches,
            elapsed,
            totals.events as f64 / elapsed.max(1e-9),
        );
        if totals.discards > 0 {
            println!("discarded events are in CTL_DISCARD with their payload and the reason");
        }
        super::print_unread(&totals);
        if !maintained.is_empty() {
            println!("aggregates kept exact with every batch: {}", maintained.join(", "));
        }
        Ok(Outcome::Success)
    })
}

/// A progress bar on a terminal; a log line every few seconds elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn update(&self, totals: &Totals, started: Instant) {
        let rate = totals.events as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let message = format!(
            "{} events, {} rows, {} discarded, {:.0} events/s",
            totals.events, totals.rows, totals.discards, rate
        );
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None if self.last_line.get().elapsed() >= Duration::from_secs(5) => {
                eprintln!("martmap: {message}");
                self.last_line.set(Instant::now());
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
