//! The architecture's rules, checked on the source (as rust-analyzer's tidy
//! tests do): only `sink` talks to a database, only `source::kafka` knows
//! rdkafka, and the library never imports the binary's `cli`. A rule
//! broken here is a design change: argue it in ARCHITECTURE.md first.

use std::path::{Path, PathBuf};

use crate::repository;

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("readable folder") {
            let path: PathBuf = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path
                    .strip_prefix(dir)
                    .expect("under src")
                    .display()
                    .to_string();
                let text = std::fs::read_to_string(&path).expect("readable source");
                found.push((relative, text));
            }
        }
    }
    found.sort();
    found
}

/// The code of a file without its comments (line comments and doc
/// comments, which may name crates freely).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files (relative to `src/`) outside `allowed` whose code names `word`.
fn offenders(word: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    sources(&repository().join("src"))
        .into_iter()
        .filter(|(path, text)| !allowed(path) && code(text).contains(word))
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_the_sink_talks_to_a_database() {
    for word in ["sea_orm", "sqlx", "sea_query"] {
        let found = offenders(word, |path| path.starts_with("sink/"));
        assert!(found.is_empty(), "`{word}` outside src/sink/: {found:?}");
    }
}

#[test]
fn only_the_kafka_source_knows_rdkafka() {
    let found = offenders("rdkafka", |path| path.starts_with("source/kafka"));
    assert!(
        found.is_empty(),
        "`rdkafka` outside src/source/kafka: {found:?}"
    );
}

#[test]
fn the_library_never_imports_the_cli() {
    let found = offenders("cli::", |path| {
        path.starts_with("cli/") || path == "main.rs"
    });
    assert!(found.is_empty(), "the library imports the CLI: {found:?}");
}

#[test]
fn the_rules_can_fail() {
    // The checks see what they look for: this very rule's subject exists.
    assert!(!offenders("sea_orm", |_| false).is_empty());
    assert!(!offenders("rdkafka", |_| false).is_empty());
    assert!(!offenders("cli::", |_| false).is_empty());
}
