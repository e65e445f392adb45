//! The calendar and aggregate options shared by `load`, `run` and
//! `aggregate`, and the `martmap aggregate` command itself.

use std::path::{Path, PathBuf};

use martmap::catalog::Catalog;
use martmap::diagnostic::{Problem, SourceFile, render};
use martmap::options::{self, OptionsFile};
use martmap::sink::{AggregateReport, AggregateSetup, Database};

use super::{CatalogArgs, Color, DatabaseArgs, Outcome};

/// Where aggregate files live.
#[derive(Debug, Clone, clap::Args)]
pub struct AggregatesArgs {
    /// Directory of aggregate files (`*.yaml`), each enabled by its
    /// feature's `enable-<feature>` in the options' [agg-feature].
    #[arg(long, default_value = "aggregates", value_name = "DIR")]
    pub aggregates: PathBuf,
}

/// Reads the options file's [date-time] and [agg-feature] sections (the
/// defaults without a file) and every aggregate file, checking the enabled
/// features against them. Problems are rendered and `None` returned.
pub fn setup(
    options: Option<&Path>,
    aggregates: &AggregatesArgs,
    catalog: &Catalog,
    color: Color,
    rebuild: bool,
) -> Result<Option<AggregateSetup>, Box<dyn std::error::Error>> {
    let mut problems: Vec<Problem> = Vec::new();
    let files = match martmap::aggregate::files_in(&aggregates.aggregates) {
        Ok(files) => files,
        Err(found) => {
            problems.extend(found);
            Vec::new()
        }
    };
    let mut setup = AggregateSetup {
        date_time: options::DateTimeOptions::default(),
        aggregates: Vec::new(),
        features: Vec::new(),
        rebuild,
    };
    if let Some(path) = options {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file = SourceFile::new(path.display().to_string(), text);
        match OptionsFile::parse(&file.text) {
            Ok(parsed) => {
                let (date_time, mut errors) = parsed.date_time();
                let known: Vec<&str> = files.iter().filter_map(|f| f.feature.as_deref()).collect();
                let (features, more) = parsed.features(Some(&known));
                errors.extend(more);
                setup.date_time = date_time;
                setup.features = features;
                problems.extend(errors.into_iter().map(|e| Problem::new(&file, e)));
            }
            Err(errors) => problems.extend(errors.into_iter().map(|e| Problem::new(&file, e))),
        }
    }
    // Only the enabled aggregates are checked against the catalog: another
    // catalog's tables need not hold what a disabled one reads.
    if problems.is_empty() {
        match martmap::aggregate::load_enabled(&files, &setup.features, catalog) {
            Ok(enabled) => setup.aggregates = enabled,
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        eprint!("{}", render(problems, color.enabled()));
        return Ok(None);
    }
    Ok(Some(setup))
}

/// Logs what setting up the aggregates did.
pub fn log(report: &AggregateReport) {
    if report.calendar_intervals > 0 {
        tracing::info!(
            intervals = report.calendar_intervals,
            "DATE_TIME filled ahead"
        );
    }
    for name in &report.built {
        tracing::info!(aggregate = %name, "aggregate computed from the stored facts");
    }
    for name in &report.dropped {
        tracing::warn!(
            aggregate = %name,
            "aggregate no longer maintained: its feature is not enabled in [agg-feature]; \
             its tables are kept as they are, and enabling it again recomputes them"
        );
    }
}

/// Set up the calendar and the aggregates, and recompute them on demand.
///
/// Creates DATE_TIME and fills it ahead (per the options' [date-time]),
/// creates the tables of every aggregate whose feature is enabled in
/// [agg-feature] (`enable-<feature>`), and computes those that are new or
/// whose file changed from the facts already stored. `load` and `run` do
/// the same at their start and then keep the aggregates exact with every
/// batch; this command is for doing it without loading, and with
/// `--rebuild`, for recomputing every enabled aggregate from scratch.
///
/// Example: martmap aggregate --options infomart.ini --rebuild
#[derive(Debug, clap::Args)]
pub struct AggregateArgs {
    /// Recompute every enabled aggregate from the stored facts.
    #[arg(long)]
    rebuild: bool,

    /// Info Mart style options file: [date-time] and [agg-feature]. Without
    /// one, the calendar is UTC and no feature is enabled.
    #[arg(long, value_name = "FILE")]
    options: Option<PathBuf>,

    #[command(flatten)]
    aggregates: AggregatesArgs,

    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub fn run(args: AggregateArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let catalog = match Catalog::load(&args.catalog.catalog) {
        Ok(catalog) => catalog,
        Err(problems) => {
            eprint!("{}", render(problems, args.color.enabled()));
            return Ok(Outcome::Invalid);
        }
    };
    let Some(setup) = setup(
        args.options.as_deref(),
        &args.aggregates,
        &catalog,
        args.color,
        args.rebuild,
    )?
    else {
        return Ok(Outcome::Invalid);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut database = Database::connect(&args.database.url(), &catalog).await?;
        let done = database.aggregate(&catalog, setup).await;
        database.close().await;
        let report = done?;
        log(&report);
        println!(
            "aggregates maintained: {}; computed now: {}; no longer maintained: {}",
            list(&report.maintained),
            list(&report.built),
            list(&report.dropped),
        );
        Ok(Outcome::Success)
    })
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
