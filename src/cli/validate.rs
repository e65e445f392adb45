//! `martmap validate-mapping`: loads the catalog and each mapping, checks
//! the options file against them, and reports every problem at once.

use std::io::Write as _;
use std::path::PathBuf;

use martmap::aggregate::{self, Aggregate};
use martmap::catalog::Catalog;
use martmap::diagnostic::{self, Problem, SourceFile};
use martmap::mapping::{self, DimensionKind, Mapping};
use martmap::options::{self, OptionsFile};
use miette::Diagnostic;
use thiserror::Error;

use super::{CatalogArgs, Color, Format, Outcome};

/// Check mapping and aggregate files, and optionally an options file,
/// without touching a database or a broker.
///
/// Every problem is reported in one run, with file, line and column, the
/// offending source line, a stable code and a hint. Checked: YAML syntax,
/// unknown keys, JSONPath syntax, scopes, tables and columns against the
/// catalog, conversions against column types, NOT NULL and key columns,
/// dimension members, and that every path can exist in the event's JSON
/// Schema. Aggregate files (a top-level `measures:`) are checked too:
/// tables, joins, columns and levels, measure and filter types, group-by
/// columns that may be NULL. With --options, each `enable-<feature>` of
/// [agg-feature] must name the feature of an aggregate (given, or in
/// --aggregates). Exit code 0 when everything is valid, 1 otherwise.
///
/// Example: martmap validate-mapping --options infomart.ini mappings/*.yaml aggregates/*.yaml
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Mapping files and aggregate files to check.
    #[arg(required = true, value_name = "FILE")]
    mappings: Vec<PathBuf>,

    /// Directory of aggregate files whose features [agg-feature] may enable.
    #[arg(long, default_value = "aggregates", value_name = "DIR")]
    aggregates: PathBuf,

    /// An Info Mart style options file: each `g:topic:<topic>=<MAPPING>` must
    /// name one of the given mappings, each [kafka-<cluster>] section needs
    /// bootstrap.servers.
    #[arg(long, value_name = "FILE")]
    options: Option<PathBuf>,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Output format of the diagnostics.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// Colour in human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Debug, Error, Diagnostic)]
#[error("cannot read {path}: {source}")]
#[diagnostic(code(martmap::io))]
struct ReadError {
    path: String,
    source: std::io::Error,
}

pub fn run(args: ValidateArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut summary: Vec<String> = Vec::new();

    let catalog = match Catalog::load(&args.catalog.catalog) {
        Ok(catalog) => Some(catalog),
        Err(found) => {
            problems.extend(found);
            None
        }
    };
    let mut valid_names: Vec<String> = Vec::new();
    let mut features: Vec<String> = Vec::new();
    if let Some(catalog) = &catalog {
        for path in &args.mappings {
            let Some(file) = read(path, &mut problems) else {
                continue;
            };
            if aggregate::is_aggregate_file(&file.text) {
                match aggregate::load(&file, catalog) {
                    Ok(aggregate) => {
                        summary.push(describe_aggregate(&file, &aggregate));
                        features.push(aggregate.feature);
                    }
                    Err(found) => problems.extend(found),
                }
                continue;
            }
            match mapping::load(&file, catalog) {
                Ok(mapping) => {
                    summary.push(describe(&file, &mapping));
                    valid_names.push(mapping.name);
                }
                Err(found) => problems.extend(found),
            }
        }
    }
    if let Some(path) = &args.options
        && let Some(file) = read(path, &mut problems)
    {
        // A mapping with problems still has its name; bindings to it are
        // not reported as missing.
        let mut known = valid_names.clone();
        known.extend(args.mappings.iter().filter_map(|path| mapping_name(path)));
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        match OptionsFile::parse(&file.text) {
            Ok(parsed) => {
                let (clusters, mut errors) = parsed.clusters();
                errors.extend(parsed.date_time().1);
                errors.extend(options::check_mappings(&clusters, &known));
                if let Ok(found) = aggregate::files_in(&args.aggregates) {
                    features.extend(found.into_iter().filter_map(|f| f.feature));
                }
                let features: Vec<&str> = features.iter().map(String::as_str).collect();
                errors.extend(parsed.features(Some(&features)).1);
                if errors.is_empty() {
                    let bindings: Vec<String> = clusters
                        .iter()
                        .flat_map(|c| {
                            c.topics
                                .iter()
                                .map(move |t| format!("{}/{} → {}", c.name, t.topic, t.mapping))
                        })
                        .collect();
                    summary.push(format!(
                        "✔ {}: {} Kafka cluster(s), topics {}",
                        file.name,
                        clusters.len(),
                        if bindings.is_empty() {
                            "none".to_owned()
                        } else {
                            bindings.join(", ")
                        }
                    ));
                }
                problems.extend(errors.into_iter().map(|error| Problem::new(&file, error)));
            }
            Err(errors) => {
                problems.extend(errors.into_iter().map(|error| Problem::new(&file, error)))
            }
        }
    }

    let errors = problems.iter().filter(|problem| problem.is_error()).count();
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let records: Vec<_> = problems.iter().map(Problem::record).collect();
            let document = serde_json::json!({ "valid": errors == 0, "problems": records });
            writeln!(stdout, "{}", serde_json::to_string_pretty(&document)?)?;
        }
        Format::Human => {
            for line in &summary {
                writeln!(stdout, "{line}")?;
            }
            let files = args.mappings.len() + usize::from(args.options.is_some());
            if errors == 0 {
                writeln!(stdout, "{files} file(s) valid")?;
            } else {
                let rendered = diagnostic::render(problems, args.color.enabled());
                std::io::stderr().lock().write_all(rendered.as_bytes())?;
                eprintln!("{errors} error(s) in {files} file(s) checked");
            }
        }
    }
    Ok(if errors == 0 {
        Outcome::Success
    } else {
        Outcome::Invalid
    })
}

fn read(path: &std::path::Path, problems: &mut Vec<Problem>) -> Option<SourceFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(SourceFile::new(path.display().to_string(), text)),
        Err(source) => {
            problems.push(Problem::detached(ReadError {
                path: path.display().to_string(),
                source,
            }));
            None
        }
    }
}

/// The `name:` of a mapping file, when it can be read at all.
fn mapping_name(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let (raw, _) = mapping::read(&text);
    raw?.name.map(|name| name.value)
}

/// What was checked in a valid aggregate, in two lines.
fn describe_aggregate(file: &SourceFile, aggregate: &Aggregate) -> String {
    let levels: Vec<&str> = aggregate.levels.iter().map(|l| l.name()).collect();
    let groups: Vec<&str> = aggregate.group_by.iter().map(|g| g.name.as_str()).collect();
    format!(
        "✔ {}: aggregate {} (feature {}) of {} by {}\n  tables {}_{{{}}}, keyed by DATE_TIME_KEY{}; {} measures, {} joins",
        file.name,
        aggregate.name,
        aggregate.feature,
        aggregate.fact,
        aggregate.time_key,
        aggregate.name,
        levels.join(","),
        groups.iter().map(|g| format!(", {g}")).collect::<String>(),
        aggregate.measures.len(),
        aggregate.joins.len(),
    )
}

/// What was checked in a valid mapping, in two lines.
fn describe(file: &SourceFile, mapping: &Mapping) -> String {
    let chain: Vec<String> = mapping
        .scopes
        .iter()
        .map(|scope| {
            if scope.outer {
                format!("{} (outer)", scope.name)
            } else {
                scope.name.clone()
            }
        })
        .collect();
    let statics = mapping
        .dimensions
        .iter()
        .filter(|d| matches!(d.kind, DimensionKind::Static { .. }))
        .count();
    let paths = mapping.scopes.len()
        + mapping.columns.iter().filter(|b| b.path.is_some()).count()
        + mapping
            .dimensions
            .iter()
            .flat_map(|d| &d.matches)
            .filter(|b| b.path.is_some())
            .count();
    format!(
        "✔ {}: mapping {} loads event {} into {}\n  grain {}; {} columns and {} dimensions ({} static, {} get-or-create) bound; \
         {} paths checked against the event schema; key ({})",
        file.name,
        mapping.name,
        mapping.event,
        mapping.fact,
        chain.join(" > "),
        mapping.columns.len(),
        mapping.dimensions.len(),
        statics,
        mapping.dimensions.len() - statics,
        paths,
        mapping.key.join(", "),
    )
}
