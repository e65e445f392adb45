//! Golden tests of `martmap validate-mapping`.
//!
//! Each directory under `tests/cases/validate/` is one case: its `*.yaml`
//! files are the mappings checked, `options.ini` (if present) is passed with
//! `--options`, `schemas/` (if present) is the catalog instead of the
//! shipped one, and `args` (if present) lists more arguments, one per line.
//! `expected.snap` beside them holds the exit code and the exact output.
//!
//! To add a case, create its directory and run
//! `INSTA_UPDATE=always cargo test --test integration`, then read the new
//! `expected.snap` before committing it.

use std::path::Path;

use crate::{golden, martmap, repository};

#[test]
fn validate_mapping_golden_cases() {
    // `?*`: every entry directly under the base, but not the base itself.
    insta::glob!("../cases/validate", "?*", |case| {
        if !case.is_dir() {
            return;
        }
        let mut settings = golden(case);
        settings.remove_snapshot_suffix();
        settings.bind(|| insta::assert_snapshot!("expected", martmap(&arguments(case))));
    });
}

/// The command line for one case directory, with paths relative to the
/// repository root as a user would type them.
fn arguments(case: &Path) -> Vec<String> {
    let relative = |path: &Path| {
        path.strip_prefix(repository())
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut args = vec![
        "validate-mapping".to_owned(),
        "--color".to_owned(),
        "never".to_owned(),
    ];
    if case.join("schemas").is_dir() {
        args.extend(["--catalog".to_owned(), relative(&case.join("schemas"))]);
    }
    if case.join("options.ini").is_file() {
        args.extend(["--options".to_owned(), relative(&case.join("options.ini"))]);
    }
    let mut mappings: Vec<String> = std::fs::read_dir(case)
        .expect("case directory is readable")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| relative(&path))
        .collect();
    mappings.sort();
    args.extend(mappings);
    if let Ok(extra) = std::fs::read_to_string(case.join("args")) {
        args.extend(
            extra
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(str::to_owned),
        );
    }
    args
}

#[test]
fn the_shipped_mapping_is_valid() {
    let output = martmap(&["validate-mapping", "mappings/COBROWSE.yaml"]);
    assert!(output.starts_with("exit code: 0\n"), "{output}");
    assert!(
        output.contains("mapping COBROWSE loads event cobrowse-session into COBROWSE_FACT"),
        "{output}"
    );
}

#[test]
fn json_format_gives_file_line_column_code_and_help() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args([
            "validate-mapping",
            "--format",
            "json",
            "tests/cases/validate/unknown-column/mapping.yaml",
        ])
        .current_dir(repository())
        .output()
        .expect("martmap runs");
    assert_eq!(output.status.code(), Some(1));
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(document["valid"], false);
    assert_eq!(
        document["problems"][0],
        serde_json::json!({
            "file": "tests/cases/validate/unknown-column/mapping.yaml",
            "line": 20,
            "column": 3,
            "severity": "error",
            "code": "martmap::mapping::unknown_column",
            "message": "unknown column `SESION_TOKEN` in table `COBROWSE_FACT`",
            "label": "not a column of COBROWSE_FACT",
            "help": "did you mean `SESSION_TOKEN`?",
        })
    );
}
