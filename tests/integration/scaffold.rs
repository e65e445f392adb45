//! `martmap scaffold`: from sample events to files that validate and load
//! their samples with no discard, on SQLite and PostgreSQL.
//!
//! Each directory under `tests/cases/scaffold/` holds `samples.jsonl` of one
//! shape (a flat event; orders with items; survey responses with sections
//! of answers beside tags and reviewers) and `expected.snap`, the proposal
//! (`--dry-run`). The co-browse sample's loadable events are scaffolded
//! too (pinned in `cobrowse/expected.snap`) and compared with the shipped
//! mapping.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::database::{assert_success, backends, load_with, query};
use crate::{golden, martmap, repository};

/// Each case: its name, and the arrays of its grain, outermost first.
const CASES: [(&str, &[&str]); 3] = [
    ("flat", &[]),
    ("orders", &["items"]),
    ("survey", &["sections", "answers"]),
];

fn scaffold_into(out: &Path, name: &str, samples: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["scaffold", "--name", name, "--out"])
        .arg(out)
        .arg(samples)
        .current_dir(repository())
        .output()
        .expect("martmap runs")
}

/// A copy of the shipped catalog (control and calendar tables included)
/// that scaffolded files can join.
fn catalog_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for sub in ["tables", "events"] {
        let to = dir.path().join("schemas").join(sub);
        std::fs::create_dir_all(&to).expect("catalog directory");
        for entry in std::fs::read_dir(repository().join("schemas").join(sub)).expect("catalog") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// Fact rows the samples make: the latest event per id, one row per
/// innermost item of `arrays`, one per parent without items.
fn expected_rows(samples: &[Value], id: &str, arrays: &[&str]) -> usize {
    fn rows(item: &Value, arrays: &[&str]) -> usize {
        let Some((first, rest)) = arrays.split_first() else {
            return 1;
        };
        match item.get(*first).and_then(Value::as_array) {
            Some(items) if !items.is_empty() => items.iter().map(|i| rows(i, rest)).sum(),
            _ => 1,
        }
    }
    let mut latest: indexmap::IndexMap<String, &Value> = indexmap::IndexMap::new();
    for sample in samples {
        latest.insert(sample[id].to_string(), sample);
    }
    latest.values().map(|event| rows(event, arrays)).sum()
}

fn samples(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("samples")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("a JSON event"))
        .collect()
}

fn count(url: &str, sql: &str) -> usize {
    query(url, sql)[0][0]
        .as_deref()
        .expect("a count")
        .parse()
        .expect("a number")
}

/// Scaffolds `file` as `name` into a copy of the catalog, validates the
/// mapping, loads `file` on both databases with no discard; returns the
/// fact rows per backend.
fn scaffold_and_load(name: &str, file: &Path) -> Vec<usize> {
    scaffold_and_load_summing(name, file, None)
        .into_iter()
        .map(|(rows, _)| rows)
        .collect()
}

/// [`scaffold_and_load`], with the sum of a fact column per backend.
fn scaffold_and_load_summing(name: &str, file: &Path, sum: Option<&str>) -> Vec<(usize, f64)> {
    let out = catalog_copy();
    let output = scaffold_into(out.path(), name, file);
    assert_success(&output);
    let upper = name.to_ascii_uppercase();
    let mapping = out.path().join(format!("mappings/{upper}.yaml"));
    let catalog = out.path().join("schemas");
    let validated = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["validate-mapping", "--catalog"])
        .arg(&catalog)
        .arg(&mapping)
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_success(&validated);
    let mut counts = Vec::new();
    let purpose = if sum.is_some() { "sum" } else { "rows" };
    for (_dir, url) in backends(&format!("scaffold_{name}_{purpose}")) {
        let loaded = load_with(
            &url,
            catalog.to_str().expect("path"),
            mapping.to_str().expect("path"),
            &[file.to_str().expect("path")],
        );
        assert_success(&loaded);
        assert_eq!(
            count(&url, "SELECT CAST(COUNT(*) AS TEXT) FROM ctl_discard"),
            0,
            "{name} on {url}: no discard\n{}",
            String::from_utf8_lossy(&loaded.stdout)
        );
        let rows = count(
            &url,
            &format!("SELECT CAST(COUNT(*) AS TEXT) FROM {upper}_FACT"),
        );
        let total = sum.map_or(0.0, |column| {
            query(
                &url,
                &format!("SELECT CAST(SUM({column}) AS TEXT) FROM {upper}_FACT"),
            )[0][0]
                .as_deref()
                .expect("a sum")
                .parse()
                .expect("a number")
        });
        counts.push((rows, total));
    }
    counts
}

#[test]
fn scaffolded_proposals_are_pinned_validate_and_load_their_samples() {
    for (case, arrays) in CASES {
        let dir = repository().join("tests/cases/scaffold").join(case);
        let file = dir.join("samples.jsonl");
        let relative = format!("tests/cases/scaffold/{case}/samples.jsonl");
        let settings = golden(&dir);
        let args = ["scaffold", "--name", case, "--dry-run", relative.as_str()];
        settings.bind(|| insta::assert_snapshot!("expected", martmap(&args)));

        let events = samples(&file);
        let id = events[0]
            .as_object()
            .and_then(|event| event.keys().find(|key| key.ends_with("Id")).cloned())
            .expect("an id attribute");
        let expected = expected_rows(&events, &id, arrays);
        assert_eq!(
            scaffold_and_load(case, &file),
            [expected, expected],
            "{case}"
        );
    }
}

/// Fractions land in `double` columns as the numbers they are.
#[test]
fn numbers_with_fractions_load_as_doubles() {
    let file = repository().join("tests/cases/scaffold/orders/samples.jsonl");
    let mut latest: indexmap::IndexMap<String, Value> = indexmap::IndexMap::new();
    for event in samples(&file) {
        latest.insert(event["orderId"].to_string(), event);
    }
    let expected: f64 = latest
        .values()
        .flat_map(|order| order["items"].as_array().cloned().unwrap_or_default())
        .map(|item| item["price"].as_f64().expect("a price"))
        .sum();
    for (_, total) in scaffold_and_load_summing("orders", &file, Some("ITEM_PRICE")) {
        assert!((total - expected).abs() < 1e-6, "{total} vs {expected}");
    }
}

/// The co-browse sample's loadable events, scaffolded, give as many fact
/// rows as the shipped mapping does.
#[test]
fn scaffolding_the_cobrowse_sample_loads_as_many_rows_as_the_shipped_mapping() {
    use martmap::catalog::Catalog;
    use martmap::diagnostic::SourceFile;
    let catalog = Catalog::load(&repository().join("schemas")).expect("catalog");
    let text =
        std::fs::read_to_string(repository().join("mappings/COBROWSE.yaml")).expect("mapping");
    let plan = martmap::mapping::load_plan(&SourceFile::new("COBROWSE.yaml", text), &catalog)
        .expect("valid mapping");
    // The sample's deliberately bad events are left out: scaffolding
    // refuses what is not a JSON object, and they are the shipped mapping's
    // discards.
    let sample =
        std::fs::read_to_string(repository().join(crate::database::SAMPLE)).expect("sample");
    let good: Vec<&str> = sample
        .lines()
        .filter(|line| !line.trim().is_empty() && plan.apply(line.as_bytes()).is_ok())
        .collect();
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("cobrowse.jsonl");
    std::fs::write(&file, good.join("\n")).expect("events");

    let settings = golden(repository().join("tests/cases/scaffold/cobrowse"));
    let args = [
        "scaffold",
        "--name",
        "cobrowse_proposal",
        "--topic",
        "all-cobrowse-historical",
        "--dry-run",
        file.to_str().expect("path"),
    ];
    settings.bind(|| insta::assert_snapshot!("expected", martmap(&args)));

    let (_db_dir, url) = crate::database::sqlite_database();
    assert_success(&crate::database::load(
        &url,
        &[file.to_str().expect("path")],
    ));
    let shipped = count(&url, "SELECT CAST(COUNT(*) AS TEXT) FROM cobrowse_fact");
    assert_eq!(
        scaffold_and_load("cobrowse_proposal", &file),
        [shipped, shipped]
    );
}

fn scaffold_stderr(lines: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("samples.jsonl");
    std::fs::write(&file, lines).expect("samples");
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["scaffold", "--name", "bad", "--dry-run"])
        .arg(&file)
        .output()
        .expect("martmap runs");
    let text = String::from_utf8_lossy(&output.stderr).replace(&*file.to_string_lossy(), "FILE");
    (output.status.code(), text)
}

#[test]
fn bad_samples_are_refused_with_where_and_what() {
    assert_eq!(
        scaffold_stderr("\n\n"),
        (
            Some(1),
            "martmap: no sample events: give one or more files of JSON events, one per line\n"
                .into()
        )
    );
    assert_eq!(
        scaffold_stderr("{\"id\": 1}\n[1, 2]\n"),
        (
            Some(1),
            "martmap: FILE:2: an event is a JSON object, found an array\n".into()
        )
    );
    assert_eq!(
        scaffold_stderr("{\"a\": 1}\n{\"b\": 2}\n"),
        (
            Some(1),
            "martmap: no attribute is present in every sample event, so there is nothing to key \
             the fact on; give samples that share an id\n"
                .into()
        )
    );
    let (code, text) = scaffold_stderr("{\"id\": 1}\n{\"id\": \n");
    assert_eq!(code, Some(1));
    assert!(text.starts_with("martmap: FILE:2: not JSON: "), "{text}");
    assert_eq!(
        scaffold_stderr("{\"id\": \"a\", \"who\": {\"name\": \"x\"}}\n{\"id\": \"b\", \"who\": \"y\"}\n"),
        (
            Some(1),
            "martmap: conflicting types at `$.who`: objects and scalars; a path must hold one kind \
             of value (objects, arrays or scalars)\n"
                .into()
        )
    );
}

/// Integers and strings at one path are widened to text and said so; the
/// files still load their samples.
#[test]
fn widened_types_are_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("samples.jsonl");
    std::fs::write(
        &file,
        "{\"ticketId\": \"t-1\", \"code\": 42}\n{\"ticketId\": \"t-2\", \"code\": \"A-7\"}\n",
    )
    .expect("samples");
    let output = Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(["scaffold", "--name", "tickets", "--dry-run"])
        .arg(&file)
        .output()
        .expect("martmap runs");
    assert_success(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("`$.code`: integers and strings seen, widened to text"),
        "{stdout}"
    );
    assert!(stdout.contains("CODE: varchar(16)"), "{stdout}");
    assert_eq!(scaffold_and_load("tickets", &file), [2, 2]);
}
