//! `martmap scaffold`: onboarding a topic from sample events.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use martmap::scaffold::{Proposal, scaffold};
use martmap::source::file::read_lines;
use serde_json::Value;

use super::Outcome;

/// Propose an event schema, catalog tables and a mapping from sample events.
///
/// Reads JSON events (one per line; `-` reads standard input) and infers:
/// the grain (the deepest chain of arrays of objects, one fact row per
/// innermost item), column types and sizes from the values seen
/// (timestamps recognised), get-or-create dimensions from low-cardinality
/// text, the key (an id-like attribute plus each item's position) and
/// `replace_by`. Each decision is explained in a comment of the files. It
/// writes, under --out:
///
///   schemas/events/<name>.schema.json   the events' JSON Schema
///   schemas/tables/<name>.yaml          the fact and dimension tables
///   mappings/<NAME>.yaml                the mapping
///
/// and prints the `g:topic:<topic>=<NAME>` line for the options file and
/// what it could not decide. Existing files are never overwritten.
///
/// Example (then `martmap validate-mapping mappings/ORDERS.yaml` and
/// `martmap load --mapping mappings/ORDERS.yaml orders.jsonl`):
///   martmap scaffold --name orders --topic all-orders orders.jsonl
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ScaffoldArgs {
    /// The events' name: the mapping is its upper-case form (`orders` →
    /// ORDERS, fact table ORDERS_FACT).
    #[arg(long)]
    name: String,

    /// The Kafka topic the events come from, for the `g:topic` line
    /// (default: the name).
    #[arg(long)]
    topic: Option<String>,

    /// The directory to write `schemas/` and `mappings/` files under.
    #[arg(long, default_value = ".", value_name = "DIR")]
    out: PathBuf,

    /// Print the files instead of writing them.
    #[arg(long)]
    dry_run: bool,

    /// Files of sample events, one JSON object per line (`-`: standard input).
    #[arg(required = true, value_name = "SAMPLE")]
    samples: Vec<PathBuf>,
}

pub fn run(args: ScaffoldArgs) -> Result<Outcome, Box<dyn std::error::Error>> {
    let samples = match read_samples(&args.samples) {
        Ok(samples) => samples,
        Err(problem) => {
            eprintln!("martmap: {problem}");
            return Ok(Outcome::Invalid);
        }
    };
    let proposal = match scaffold(&args.name, &samples) {
        Ok(proposal) => proposal,
        Err(problem) => {
            eprintln!("martmap: {problem}");
            return Ok(Outcome::Invalid);
        }
    };
    let files = files(&proposal);
    if args.dry_run {
        for (path, text) in &files {
            println!("--- {}", path.display());
            print!("{text}");
        }
    } else {
        for (path, _) in &files {
            let target = args.out.join(path);
            if target.exists() {
                eprintln!(
                    "martmap: {} exists; scaffold never overwrites a file (use --dry-run to see the proposal, or another --name)",
                    target.display()
                );
                return Ok(Outcome::Invalid);
            }
        }
        for (path, text) in &files {
            let target = args.out.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&target, text)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            println!("wrote {}", target.display());
        }
    }
    let topic = args.topic.as_deref().unwrap_or(&proposal.event);
    println!(
        "\nscaffolded mapping {} from {} sample event(s); bind it in the options file's [kafka-<cluster>] section with:\n  g:topic:{topic}={}",
        proposal.name,
        samples.len(),
        proposal.name
    );
    if !proposal.notes.is_empty() {
        println!("\nnot decided, left out or widened (see the comments in the files):");
        for note in &proposal.notes {
            println!("  - {note}");
        }
    }
    Ok(Outcome::Success)
}

/// The files of a proposal, relative to the output directory.
fn files(proposal: &Proposal) -> [(PathBuf, &str); 3] {
    [
        (
            Path::new("schemas/events").join(format!("{}.schema.json", proposal.event)),
            &proposal.schema,
        ),
        (
            Path::new("schemas/tables").join(format!("{}.yaml", proposal.event)),
            &proposal.tables,
        ),
        (
            Path::new("mappings").join(format!("{}.yaml", proposal.name)),
            &proposal.mapping,
        ),
    ]
}

/// Every sample event, each a JSON object; the first problem names its
/// file and line.
fn read_samples(paths: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut samples = Vec::new();
    for path in paths {
        let mut problem = None;
        read_lines(path, |message| {
            let at = format!("{}:{}", message.source, message.position);
            match serde_json::from_slice::<Value>(&message.payload) {
                Ok(value @ Value::Object(_)) => {
                    samples.push(value);
                    return ControlFlow::Continue(());
                }
                Ok(value) => {
                    let found = match value {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    };
                    problem = Some(format!("{at}: an event is a JSON object, found {found}"));
                }
                Err(e) => problem = Some(format!("{at}: not JSON: {e}")),
            }
            ControlFlow::Break(())
        })
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if let Some(problem) = problem {
            return Err(problem);
        }
    }
    Ok(samples)
}
