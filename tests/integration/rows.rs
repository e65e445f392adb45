//! Golden row tests of `martmap test-mapping` with the co-browse mapping.
//!
//! Each directory under `tests/cases/rows/` holds one small `event.json`
//! exercising a derivation or edge case of DESIGN §2; `expected.snap`
//! beside it holds the rows (`--format json`). `tests/cases/discards/`
//! holds the discard corpus: one bad event of each kind between good ones.
//! Add a case as for `validate` (see its module doc).

use std::path::Path;

use crate::{golden, martmap, repository};

fn relative(path: &Path) -> String {
    path.strip_prefix(repository())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn cobrowse_rows_golden_cases() {
    insta::glob!("../cases/rows", "?*", |case| {
        if !case.is_dir() {
            return;
        }
        let event = relative(&case.join("event.json"));
        let mut settings = golden(case);
        settings.remove_snapshot_suffix();
        let args = [
            "test-mapping",
            "--format",
            "json",
            "mappings/COBROWSE.yaml",
            event.as_str(),
        ];
        settings.bind(|| insta::assert_snapshot!("expected", martmap(&args)));
    });
}

/// The second shipped mapping, agent handlings: rows of full, partial and
/// agent-less handlings, and the discards of bad ones.
#[test]
fn agent_handling_rows_golden_case() {
    let settings = golden(repository().join("tests/cases/agent-rows"));
    let args = [
        "test-mapping",
        "--format",
        "json",
        "mappings/IXN_AGENT.yaml",
        "tests/cases/agent-rows/events.jsonl",
    ];
    settings.bind(|| insta::assert_snapshot!("expected", martmap(&args)));
}

#[test]
fn discard_corpus_names_every_problem() {
    let settings = golden(repository().join("tests/cases/discards"));
    let args = [
        "test-mapping",
        "mappings/COBROWSE.yaml",
        "tests/cases/discards/corpus.jsonl",
    ];
    settings.bind(|| insta::assert_snapshot!("expected", martmap(&args)));
}

#[test]
fn expect_passes_on_equal_rows_and_diffs_otherwise() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let event = "tests/cases/rows/no-segments/event.json";
    let written = std::process::Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "test-mapping",
            "--format",
            "json",
            "mappings/COBROWSE.yaml",
            event,
        ])
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    let expected = dir.path().join("expected.json");
    std::fs::write(&expected, &written.stdout).expect("write expected rows");
    let expected = expected.display().to_string();

    let same = martmap(&[
        "test-mapping",
        "mappings/COBROWSE.yaml",
        event,
        "--expect",
        expected.as_str(),
    ]);
    assert!(
        same.starts_with("exit code: 0\n") && same.contains("rows match"),
        "{same}"
    );

    let changed = String::from_utf8(written.stdout)
        .expect("UTF-8")
        .replace("\"PAGE_INDEX\": -1", "\"PAGE_INDEX\": 0");
    std::fs::write(&expected, changed).expect("write changed rows");
    let differ = martmap(&[
        "test-mapping",
        "mappings/COBROWSE.yaml",
        event,
        "--expect",
        expected.as_str(),
    ]);
    assert!(differ.starts_with("exit code: 1\n"), "{differ}");
    let has = |sign: char, text: &str| {
        differ
            .lines()
            .any(|line| line.starts_with(sign) && line.contains(text))
    };
    assert!(
        has('-', "\"PAGE_INDEX\": 0,") && has('+', "\"PAGE_INDEX\": -1,"),
        "{differ}"
    );
}

#[test]
fn survey_mapping_runs_through_the_same_engine() {
    let case = "tests/cases/validate/survey-valid";
    let settings = golden(repository().join(case));
    let (catalog, mapping, event) = (
        format!("{case}/schemas"),
        format!("{case}/SURVEY.yaml"),
        format!("{case}/event.json"),
    );
    let args = [
        "test-mapping",
        "--format",
        "json",
        "--catalog",
        &catalog,
        &mapping,
        &event,
    ];
    settings.bind(|| insta::assert_snapshot!("rows", martmap(&args)));
}

/// Drift: `test-mapping --coverage` over co-browse events that carry
/// attributes the mapping does not read (a new top-level field, a nested
/// object under one it reads field by field, fields in segments and pages,
/// an array of tags), and lack some it reads.
#[test]
fn coverage_lists_unread_and_never_carried_paths() {
    let settings = golden(repository().join("tests/cases/coverage"));
    for (name, format) in [("expected", "human"), ("expected-json", "json")] {
        let args = [
            "test-mapping",
            "--coverage",
            "--format",
            format,
            "mappings/COBROWSE.yaml",
            "tests/cases/coverage/events.jsonl",
        ];
        settings.bind(|| insta::assert_snapshot!(name, martmap(&args)));
    }
}
