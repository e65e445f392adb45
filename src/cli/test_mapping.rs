//! `martmap test-mapping`: the rows a mapping makes of sample events, with
//! no database — the mapping author's unit test.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use martmap::plan::coverage::{Coverage, Unread};
use martmap::plan::{Cell, Plan};
use serde_json::Value;

use super::{CatalogArgs, Color, Format, Outcome, load_plan};

/// Show the rows a mapping makes of sample events, without a database.
///
/// Each EVENT file holds one JSON event (`.json`), or one event per line
/// (`.jsonl`). For each event it prints the fact row(s) — columns, and per
/// dimension the natural key values of the member — or why the event would
/// be discarded. With --expect, the rows are compared with a file written by
/// `--format json`, and any difference is shown as a diff (exit code 1).
///
/// With --coverage it prints no rows but what drifted between the mapping
/// and the events: every attribute path the events carry that the mapping
/// does not read (with how many events carry it and an example value), and
/// every path the mapping reads that no event carried. Arrays are written
/// `[*]`.
///
/// Examples:
///   martmap test-mapping mappings/COBROWSE.yaml session.json --expect session.rows.json
///   martmap test-mapping --coverage mappings/COBROWSE.yaml samples/cobrowse-sessions.jsonl
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct TestMappingArgs {
    /// The mapping file.
    #[arg(value_name = "MAPPING")]
    mapping: PathBuf,

    /// Event files: one JSON event per `.json` file, one per line in `.jsonl`.
    #[arg(required = true, value_name = "EVENT")]
    events: Vec<PathBuf>,

    /// Compare the rows with this file (the JSON that `--format json` prints).
    #[arg(long, value_name = "FILE", conflicts_with = "coverage")]
    expect: Option<PathBuf>,

    /// Report attribute paths the events carry that the mapping does not
    /// read, and paths it reads that no event carried, instead of rows.
    #[arg(long)]
    coverage: bool,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// Output format of the rows.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,

    /// Colour in diagnostics.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

pub fn run(args: TestMappingArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let Some(plan) = load_plan(&args.mapping, &args.catalog, args.color)? else {
        return Ok(Outcome::Invalid);
    };
    if args.coverage {
        return coverage(&plan, &args);
    }
    let mut results = Vec::new();
    for path in &args.events {
        for (label, payload) in events(path)? {
            results.push((
                label,
                plan.apply(&payload).map_err(|discard| discard.to_string()),
            ));
        }
    }
    let records: Vec<Record> = results
        .iter()
        .map(|(label, result)| record(&plan, label, result))
        .collect();
    // Compared as JSON values: key order does not matter, content does.
    let document = serde_json::to_value(&records)?;
    let mut stdout = std::io::stdout().lock();

    if let Some(expect) = &args.expect {
        let text = std::fs::read_to_string(expect)
            .map_err(|e| format!("cannot read {}: {e}", expect.display()))?;
        let expected: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", expect.display()))?;
        if expected == document {
            writeln!(stdout, "rows match {}", expect.display())?;
            return Ok(Outcome::Success);
        }
        let (old, new) = (
            serde_json::to_string_pretty(&expected)?,
            serde_json::to_string_pretty(&document)?,
        );
        let diff = similar::TextDiff::from_lines(&old, &new);
        let expect_name = expect.display().to_string();
        write!(
            stdout,
            "{}",
            diff.unified_diff().header(&expect_name, "actual rows")
        )?;
        return Ok(Outcome::Invalid);
    }
    match args.format {
        Format::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&records)?)?,
        Format::Human => {
            for (label, result) in &results {
                match result {
                    Ok(rows) => {
                        writeln!(stdout, "{label}: {} row(s)", rows.len())?;
                        for (number, row) in rows.iter().enumerate() {
                            writeln!(stdout, "  row {}", number + 1)?;
                            let fields = row_fields(&plan, row);
                            let width =
                                fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
                            for (name, value) in fields {
                                writeln!(stdout, "    {name:<width$}  {value}")?;
                            }
                        }
                    }
                    Err(reason) => writeln!(stdout, "{label}: discarded: {reason}")?,
                }
            }
        }
    }
    Ok(Outcome::Success)
}

/// At most this many distinct unread paths are listed.
const COVERAGE_CAP: usize = 10_000;

/// `--coverage`: the drift report.
fn coverage(plan: &Plan, args: &TestMappingArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let mut coverage = Coverage::new(plan.reads.clone(), COVERAGE_CAP);
    let mut not_json = Vec::new();
    for path in &args.events {
        for (label, payload) in events(path)? {
            match serde_json::from_slice::<Value>(&payload) {
                Ok(event) => coverage.add(&event),
                Err(error) => not_json.push(format!("{label}: not JSON: {error}")),
            }
        }
    }
    let unread: Vec<(&str, &Unread)> = coverage.unread().collect();
    let never = coverage.never_carried();
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let report = serde_json::json!({
                "mapping": plan.mapping,
                "events": coverage.events,
                "unread": unread.iter().map(|(path, u)| serde_json::json!({
                    "path": path, "events": u.events, "example": u.example,
                })).collect::<Vec<_>>(),
                "unread_beyond_cap": coverage.dropped,
                "never_carried": never.iter().map(|(path, by)| serde_json::json!({
                    "path": path, "read_by": by,
                })).collect::<Vec<_>>(),
                "not_json": not_json,
            });
            writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        Format::Human => {
            writeln!(
                stdout,
                "coverage of mapping {} over {} event(s)",
                plan.mapping, coverage.events
            )?;
            writeln!(
                stdout,
                "\nattribute paths the events carry that the mapping does not read: {}",
                unread.len()
            )?;
            let width = unread.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
            for (path, u) in &unread {
                writeln!(
                    stdout,
                    "  {path:<width$}  in {} event(s), e.g. {}",
                    u.events, u.example
                )?;
            }
            if coverage.dropped > 0 {
                writeln!(
                    stdout,
                    "  … and {} occurrence(s) of paths beyond the first {COVERAGE_CAP}",
                    coverage.dropped
                )?;
            }
            writeln!(
                stdout,
                "\npaths the mapping reads that no event carried: {}",
                never.len()
            )?;
            let width = never.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
            for (path, by) in &never {
                writeln!(stdout, "  {path:<width$}  read by {by}")?;
            }
            for line in &not_json {
                writeln!(stdout, "\n{line}")?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// The events of one file, each with a label naming where it came from.
fn events(path: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    if path.extension().is_some_and(|ext| ext == "jsonl") {
        Ok(bytes
            .split(|&byte| byte == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(at, line)| (format!("{name}:{}", at + 1), line.to_vec()))
            .collect())
    } else {
        Ok(vec![(name, bytes)])
    }
}

/// One event's outcome as `--format json` prints it, columns in mapping order.
#[derive(serde::Serialize)]
struct Record {
    event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<Vec<IndexMap<String, Field>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    discarded: Option<String>,
}

/// A fact column's value, or a dimension member's natural key values.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Field {
    Cell(Value),
    Member(IndexMap<String, String>),
}

fn record(plan: &Plan, label: &str, result: &Result<Vec<martmap::plan::Row>, String>) -> Record {
    let rows = result.as_ref().ok().map(|rows| {
        rows.iter()
            .map(|row| {
                let mut fields: IndexMap<String, Field> = plan
                    .columns
                    .iter()
                    .zip(&row.values)
                    .map(|((name, _), cell)| (name.clone(), Field::Cell(cell_json(cell))))
                    .collect();
                for (dimension, member) in plan.dimensions.iter().zip(&row.members) {
                    let natural = dimension
                        .columns
                        .iter()
                        .zip(member.iter())
                        .map(|((c, _), v)| (c.clone(), v.to_string()));
                    fields.insert(
                        dimension.key_column.clone(),
                        Field::Member(natural.collect()),
                    );
                }
                fields
            })
            .collect()
    });
    Record {
        event: label.to_owned(),
        rows,
        discarded: result.as_ref().err().cloned(),
    }
}

/// Column name and shown value, for the human layout.
fn row_fields(plan: &Plan, row: &martmap::plan::Row) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = plan
        .columns
        .iter()
        .zip(&row.values)
        .map(|((name, _), cell)| {
            let shown = match cell {
                Cell::Null => "NULL".to_owned(),
                Cell::Int(number) => number.to_string(),
                Cell::Text(text) => format!("{text:?}"),
            };
            (name.clone(), shown)
        })
        .collect();
    for (dimension, member) in plan.dimensions.iter().zip(&row.members) {
        let natural: Vec<String> = dimension
            .columns
            .iter()
            .zip(member.iter())
            .map(|((column, _), value)| format!("{column}={value:?}"))
            .collect();
        fields.push((
            dimension.key_column.clone(),
            format!("→ {}({})", dimension.table, natural.join(", ")),
        ));
    }
    fields
}

fn cell_json(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(number) => Value::from(*number),
        Cell::Text(text) => Value::from(&**text),
    }
}
