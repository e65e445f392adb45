//! `martmap replay-discards`: re-interprets discarded payloads with the
//! current mapping, after the mapping (or the catalog) was fixed.

use std::path::{Path, PathBuf};

use martmap::catalog::Catalog;
use martmap::pipeline::{Batch, Replay};
use martmap::sink::{Database, DiscardFilter, Sink, StoredDiscard};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome, load_plan};

/// Load again the events a mapping discarded, with the mapping as it is
/// now: after fixing a mapping that sent good events to CTL_DISCARD.
///
/// Every discard of the mapping not replayed yet (narrowed by the filters)
/// is interpreted again. Those that now load are written in batches, each
/// in one transaction with its discard rows marked replayed
/// (CTL_DISCARD.REPLAYED_AUDIT_KEY = the batch's audit key); those that
/// still fail keep their row, with the new error. An event is left out
/// when its `replace_by` identity (a session) was loaded again after it was
/// discarded: the replay never overwrites a newer version. Replaying again
/// changes nothing more. Aggregates are kept as by `load` (--options).
///
/// See first: martmap replay-discards --mapping COBROWSE --dry-run
///
/// Then: martmap replay-discards --mapping COBROWSE
///
/// Narrowed: martmap replay-discards --mapping COBROWSE --error "required" --since 2026-11-30T00:00:00Z
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The mapping: a name (read from --mappings DIR) or a file.
    #[arg(long, value_name = "NAME")]
    mapping: String,

    /// Where mapping names are looked up.
    #[arg(long, default_value = "mappings", value_name = "DIR")]
    mappings: PathBuf,

    /// Only discards of this source (a file name, or a topic).
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,

    /// Only discards whose error contains this text.
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,

    /// Only discards made at or after this time (RFC 3339, or epoch seconds).
    #[arg(long, value_name = "TIME", value_parser = epoch_seconds)]
    since: Option<i64>,

    /// Only discards made before this time (RFC 3339, or epoch seconds).
    #[arg(long, value_name = "TIME", value_parser = epoch_seconds)]
    until: Option<i64>,

    /// Say what would load and what would still fail; write nothing.
    #[arg(long)]
    dry_run: bool,

    /// Info Mart style options file, for the aggregates to keep (as `load`).
    #[arg(long, value_name = "FILE")]
    options: Option<PathBuf>,

    #[command(flatten)]
    aggregates: super::aggregate::AggregatesArgs,

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

fn epoch_seconds(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp())
        .map_err(|e| {
            format!("`{text}` is neither RFC 3339 (2026-11-30T08:00:00Z) nor epoch seconds: {e}")
        })
}

/// The source the audit rows of replayed batches name.
const SOURCE: &str = "replay-discards";

/// The mapping file of a name or path.
fn mapping_file(mapping: &str, dir: &Path) -> PathBuf {
    let path = PathBuf::from(mapping);
    if path.is_file() {
        return path;
    }
    dir.join(format!("{mapping}.yaml"))
}

/// What the replay did (or, dry, would do).
#[derive(Default)]
struct Totals {
    discards: usize,
    loaded: usize,
    rows: usize,
    superseded: usize,
    failing: usize,
}

pub fn run(args: ReplayArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let path = mapping_file(&args.mapping, &args.mappings);
    let Some(plan) = load_plan(&path, &args.catalog, args.color)? else {
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
    let filter = DiscardFilter {
        mapping: plan.mapping.clone(),
        source: args.source.clone(),
        error: args.error.clone(),
        since: args.since,
        until: args.until,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let database = Database::connect(&args.database.url(), &catalog).await?;
        let replayed = replay(&database, &catalog, plan.clone(), setup, &filter, &args).await;
        database.close().await;
        let totals = replayed?;
        let name = &plan.mapping;
        if args.dry_run {
            println!(
                "dry run: of {} discarded events of {name}, {} would load ({} fact rows; any whose identity was loaded again since is left out when replaying), {} still fail",
                totals.discards, totals.loaded, totals.rows, totals.failing
            );
        } else {
            println!(
                "replayed {} discarded events of {name}: {} loaded ({} fact rows), {} left out because a newer version of their identity was loaded since, {} still fail (their error updated in CTL_DISCARD)",
                totals.discards, totals.loaded, totals.rows, totals.superseded, totals.failing
            );
        }
        Ok(Outcome::Success)
    })
}

async fn replay(
    database: &Database,
    catalog: &Catalog,
    plan: martmap::plan::Plan,
    setup: martmap::sink::AggregateSetup,
    filter: &DiscardFilter,
    args: &ReplayArgs,
) -> Result<Totals, Box<dyn std::error::Error>> {
    let mut database = database.clone();
    // Opening the sink makes the tables follow the catalog first
    // (REPLAYED_AUDIT_KEY included, in a database from before it).
    let mut sink = None;
    if !args.dry_run {
        let report = database.aggregate(catalog, setup).await?;
        super::aggregate::log(&report);
        sink = Some(Sink::open(database.clone(), catalog, plan.clone()).await?);
    }
    let pending: Vec<StoredDiscard> = database.pending_discards(filter).await?;
    let mut totals = Totals {
        discards: pending.len(),
        ..Totals::default()
    };
    let mut batches: Vec<Batch> = Vec::new();
    let mut batch = Batch {
        source: SOURCE.into(),
        ..Batch::default()
    };
    let mut replay = Replay::default();
    for discard in pending {
        match plan.apply(&discard.payload) {
            Ok(rows) => {
                batch.events.push(rows);
                replay.events.push((discard.id, discard.audit_key));
            }
            Err(error) => {
                totals.failing += 1;
                let error = error.to_string();
                if error != discard.error {
                    replay.failing.push((discard.id, error));
                }
            }
        }
        if batch.events.len() + replay.failing.len() >= args.batch_size {
            batch.replay = Some(std::mem::take(&mut replay));
            batches.push(std::mem::take(&mut batch));
        }
        batch.source = SOURCE.into();
    }
    if !batch.events.is_empty() || !replay.failing.is_empty() {
        batch.replay = Some(replay);
        batches.push(batch);
    }
    let Some(sink) = &mut sink else {
        let events = batches.iter().flat_map(|b| &b.events);
        totals.loaded = events.clone().count();
        totals.rows = events.map(Vec::len).sum();
        return Ok(totals);
    };
    for batch in batches {
        let report = sink.write(&batch).await?;
        totals.loaded += report.events;
        totals.rows += report.rows;
        totals.superseded += report.superseded;
    }
    Ok(totals)
}
