//! `martmap load`: JSON Lines files (or stdin) through one mapping into the
//! database, in batches of one transaction each, with progress and a summary.
//!
//! Reading and interpreting run on their own thread and hand finished batches
//! to the writer, so parsing the next batch overlaps writing this one.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use martmap::catalog::Catalog;
use martmap::pipeline::Batch;
use martmap::pipeline::Batcher;
use martmap::plan::Plan;
use martmap::sink::{BatchReport, Database, Sink};
use martmap::source::file::read_lines;

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plan};

/// Load JSON Lines events into the database through one mapping.
///
/// One event per line; blank lines are skipped. An event that cannot be
/// loaded goes to CTL_DISCARD with its line number, exact payload and the
/// reason, and the load goes on. Each batch commits in one transaction with
/// its audit row (CTL_AUDIT_LOG); loading the same events again changes
/// nothing but UPDATE_AUDIT_KEY. Missing tables are created first.
///
/// Exit code 0 when the load ran (even with discards), 1 for an invalid
/// mapping, 2 when the database or a file failed.
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

    /// Events per batch (one transaction each).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    batch_size: usize,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Default)]
struct Totals {
    events: usize,
    rows: usize,
    discards: usize,
    new_members: usize,
    batches: usize,
}

impl Totals {
    fn add(&mut self, report: &BatchReport) {
        self.events += report.events + report.discards;
        self.rows += report.rows;
        self.discards += report.discards;
        self.new_members += report.new_members;
        self.batches += 1;
    }
}

pub fn run(args: LoadArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let Some(plan) = load_plan(&args.mapping, &args.catalog, args.color)? else {
        return Ok(Outcome::Invalid);
    };
    let catalog = Catalog::load(&args.catalog.catalog).map_err(|_| "the catalog became invalid")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let database = Database::connect(&args.database.url()).await?;
        let result = load_files(&database, &catalog, plan, &args).await;
        // Closing the pool checkpoints SQLite's write-ahead log into the
        // database file and removes it: the .db file alone is then whole.
        database.close().await;
        result
    })
}

async fn load_files(
    database: &Database,
    catalog: &Catalog,
    plan: Plan,
    args: &LoadArgs,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut sink = Sink::open(database.clone(), catalog, plan.clone()).await?;

    let (sender, mut batches) = tokio::sync::mpsc::channel::<Batch>(2);
    // Written batches come back to be freed on the thread that allocated
    // them, where the allocator reuses their memory at once.
    let (spent_sender, spent) = std::sync::mpsc::channel::<Batch>();
    let (files, size) = (args.files.clone(), args.batch_size.max(1));
    let preparer = sink.preparer();
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut batcher = Batcher::new(plan).preparing(preparer);
        for file in &files {
            let mut writer_gone = false;
            read_lines(file, |message| {
                batcher.push(message);
                if batcher.len() >= size {
                    // The writer hangs up after a failure it reports, or
                    // when it is told to stop.
                    writer_gone = sender.blocking_send(batcher.take()).is_err();
                    spent.try_iter().for_each(drop);
                }
                if writer_gone {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
            if writer_gone {
                return Ok(());
            }
        }
        if !batcher.is_empty() {
            let _ = sender.blocking_send(batcher.take());
        }
        Ok(())
    });

    let progress = Progress::new();
    let mut totals = Totals::default();
    let mut signalled = std::pin::pin!(super::signalled());
    loop {
        let batch = tokio::select! {
            batch = batches.recv() => batch,
            () = &mut signalled => {
                // The batch being written has committed; what the reader
                // holds was never written. Loading again is safe.
                progress.finish();
                return Err(format!(
                    "interrupted after {} events in {} batches, all committed; \
                     loading the same files again finishes the load (events already \
                     loaded change nothing but UPDATE_AUDIT_KEY)",
                    totals.events, totals.batches
                )
                .into());
            }
        };
        let Some(batch) = batch else { break };
        let report = sink.write(&batch).await?;
        tracing::debug!(
            audit_key = report.audit_key,
            events = report.events + report.discards,
            rows = report.rows,
            "batch committed"
        );
        let _ = spent_sender.send(batch); // the reader may have finished
        totals.add(&report);
        progress.update(&totals, started);
    }
    reader.join().map_err(|_| "the reader thread panicked")??;
    progress.finish();

    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "loaded {} events into {}: {} fact rows written, {} discarded, {} new dimension members, {} batches in {:.2} s ({:.0} events/s)",
        totals.events,
        sink.plan().fact,
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
    Ok(Outcome::Success)
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
