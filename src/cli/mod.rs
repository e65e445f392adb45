//! Command-line interface: clap definitions of the subcommands and the
//! dispatch to each. Every subcommand returns an [`Outcome`] or a runtime
//! error; only `main` maps them to exit codes.

mod aggregate;
mod init_db;
mod load;
mod replay;
mod run;
mod scaffold;
mod test_mapping;
mod validate;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Load JSON reporting events from Kafka into a relational star schema,
/// driven by declarative YAML mappings.
///
/// The catalog (`schemas/`) declares target tables and event shapes, each
/// mapping (`mappings/*.yaml`) binds event paths to columns and dimension
/// lookups, and an options file binds topics to mappings exactly as
/// Genesys Info Mart's `[kafka-<cluster>]` sections do.
#[derive(Debug, Parser)]
#[command(name = "martmap", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines on standard error as text, or as one JSON object per line
    /// (for log shippers). MARTMAP_LOG filters them, e.g. `info`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    ValidateMapping(validate::ValidateArgs),
    TestMapping(test_mapping::TestMappingArgs),
    InitDb(init_db::InitDbArgs),
    Load(load::LoadArgs),
    ReplayDiscards(replay::ReplayArgs),
    Run(run::RunArgs),
    Aggregate(aggregate::AggregateArgs),
    Scaffold(scaffold::ScaffoldArgs),
}

/// How a command ended when it ran to completion.
pub enum Outcome {
    Success,
    /// The input had problems; they were reported.
    Invalid,
}

/// Output format of diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Reports with the offending source line and a label under the span.
    Human,
    /// One JSON document: `{"valid": ..., "problems": [...]}`.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether to colour output going to standard error.
    fn enabled(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
            }
        }
    }
}

/// Where the catalog lives; shared by every command that reads mappings.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// Directory of the catalog: `tables/*.yaml` and `events/*.schema.json`.
    #[arg(
        long,
        env = "MARTMAP_CATALOG",
        default_value = "schemas",
        value_name = "DIR"
    )]
    pub catalog: PathBuf,
}

/// Which database; shared by every command that writes.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (created when missing) or `postgres://USER@HOST/DB`.
    /// Defaults to $DATABASE_URL, then to martmap.db in the working directory.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
}

impl DatabaseArgs {
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| "sqlite://martmap.db".to_owned())
    }
}

/// A stop that the first SIGINT or SIGTERM requests, logging `announce`
/// then if given. Call it inside the command's tokio runtime.
pub fn stop_on_signal(announce: Option<&'static str>) -> std::sync::Arc<martmap::runtime::Stop> {
    let stop = std::sync::Arc::new(martmap::runtime::Stop::new());
    let requested = stop.clone();
    tokio::spawn(async move {
        signalled().await;
        if let Some(announce) = announce {
            tracing::warn!("{announce}");
        }
        requested.request();
    });
    stop
}

/// Returns at the first SIGINT or SIGTERM (never, when they cannot be
/// listened for: then SIGKILL stops martmap, which loses nothing committed).
async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for SIGINT/SIGTERM; stop martmap with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Box<dyn std::error::Error>> {
    match cli.command {
        Command::ValidateMapping(args) => validate::run(args),
        Command::TestMapping(args) => test_mapping::run(args),
        Command::InitDb(args) => init_db::run(args),
        Command::Load(args) => load::run(args),
        Command::ReplayDiscards(args) => replay::run(args),
        Command::Run(args) => run::run(args),
        Command::Aggregate(args) => aggregate::run(args),
        Command::Scaffold(args) => scaffold::run(args),
    }
}

/// Compiles every mapping file (`*.yaml`) of `dir`, in name order. `None`
/// when one has problems (rendered to standard error).
pub fn load_plans(
    dir: &std::path::Path,
    catalog: &CatalogArgs,
    color: Color,
) -> Result<Option<Vec<martmap::plan::Plan>>, Box<dyn std::error::Error>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    let mut plans = Vec::with_capacity(paths.len());
    for path in &paths {
        match load_plan(path, catalog, color)? {
            Some(plan) => plans.push(plan),
            None => return Ok(None),
        }
    }
    Ok(Some(plans))
}

/// Loads the catalog and compiles one mapping. Problems are rendered to
/// standard error and `None` returned: the input is invalid.
pub fn load_plan(
    path: &std::path::Path,
    catalog: &CatalogArgs,
    color: Color,
) -> Result<Option<martmap::plan::Plan>, Box<dyn std::error::Error>> {
    use martmap::diagnostic::{SourceFile, render};
    let problems = match martmap::catalog::Catalog::load(&catalog.catalog) {
        Err(problems) => problems,
        Ok(loaded) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file = SourceFile::new(path.display().to_string(), text);
            match martmap::mapping::load_plan(&file, &loaded) {
                Ok(plan) => return Ok(Some(plan)),
                Err(problems) => problems,
            }
        }
    };
    eprint!("{}", render(problems, color.enabled()));
    Ok(None)
}

/// The summary's line on drift: attribute paths the sampled loaded events
/// carried that the mapping does not read, most frequent first.
pub fn print_unread(totals: &martmap::runtime::Totals) {
    if totals.unread.is_empty() {
        return;
    }
    let mut paths: Vec<(&String, &u64)> = totals.unread.iter().collect();
    paths.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = paths
        .iter()
        .take(10)
        .map(|(path, events)| format!("{path} ({events})"))
        .collect();
    let more = paths.len().saturating_sub(shown.len());
    println!(
        "attribute paths the mapping does not read, in sampled events (1 in {}): {}{}; \
         see `martmap test-mapping --coverage`",
        martmap::pipeline::DRIFT_SAMPLE,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    );
}
