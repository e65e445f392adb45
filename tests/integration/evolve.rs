//! Schema evolution on SQLite and PostgreSQL: a database loaded with the
//! shipped catalog meets a catalog that grew (applied by `load`, rows kept,
//! the plan pinned by `init-db --dry-run`), and catalogs whose changes
//! could lose or break data (each refused with exit 1 before anything
//! changes, its message pinned). Golden files: `tests/cases/evolve/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::database::{assert_success, backends, load, query};
use crate::{golden, repository};

const SAMPLE: &str = "samples/cobrowse-sessions.jsonl";

/// A text replacement in a copied file: (`"tables"` or `"mapping"`, from, to).
type Edit<'a> = (&'a str, &'a str, &'a str);

/// A copy of the shipped catalog (and the co-browse mapping) with
/// `edits` applied to `tables/cobrowse.yaml` and `COBROWSE.yaml`, each a
/// (file, from, to) text replacement that must match.
fn catalog(dir: &Path, edits: &[Edit]) -> (PathBuf, PathBuf) {
    let schemas = dir.join("schemas");
    copy_dir(&repository().join("schemas"), &schemas);
    let mapping = dir.join("COBROWSE.yaml");
    std::fs::copy(repository().join("mappings/COBROWSE.yaml"), &mapping).expect("copy mapping");
    for (file, from, to) in edits {
        let path = match *file {
            "mapping" => mapping.clone(),
            _ => schemas.join("tables/cobrowse.yaml"),
        };
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{from:?} is not in {}", path.display());
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    }
    (schemas, mapping)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn martmap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_martmap"))
        .args(args)
        .current_dir(repository())
        .env("NO_COLOR", "1")
        .output()
        .expect("martmap runs")
}

fn load_with(url: &str, schemas: &Path, mapping: &Path) -> Output {
    let (schemas, mapping) = (schemas.to_str().unwrap(), mapping.to_str().unwrap());
    martmap(&[
        "load",
        "--database-url",
        url,
        "--catalog",
        schemas,
        "--mapping",
        mapping,
        SAMPLE,
    ])
}

fn dry_run(url: &str, schemas: &Path, mapping: &Path) -> Output {
    let mappings = mapping.parent().unwrap().to_str().unwrap();
    let schemas = schemas.to_str().unwrap();
    martmap(&[
        "init-db",
        "--dry-run",
        "--database-url",
        url,
        "--catalog",
        schemas,
        "--mappings",
        mappings,
    ])
}

/// Exit code and output, with the test's own paths and URL taken out.
fn shown(output: &Output, url: &str, dir: &Path) -> String {
    let text = format!(
        "exit code: {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.replace(url, "<database>")
        .replace(&dir.display().to_string(), "<dir>")
}

fn rows(url: &str) -> usize {
    query(url, "SELECT CAST(COUNT(*) AS TEXT) FROM COBROWSE_FACT")[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

fn snapshot(name: &str, text: &str) {
    let settings = golden(repository().join("tests/cases/evolve"));
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// The catalog gains a nullable column and a wider varchar: the dry run
/// prints the plan, `load` applies it keeping every row, and then the
/// database follows the catalog.
#[test]
fn a_grown_catalog_is_applied_by_load_keeping_every_row() {
    let mut pinned = String::new();
    for (guard, url) in backends("evolve_grow") {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (schemas, mapping) = catalog(
            dir.path(),
            &[
                (
                    "tables",
                    "      END_REASON: varchar(64)\n",
                    "      END_REASON: varchar(128)\n",
                ),
                (
                    "tables",
                    "      PAGE_END_TIME_TS: bigint\n",
                    "      PAGE_END_TIME_TS: bigint\n      REVIEW_NOTE: varchar(256)\n",
                ),
            ],
        );
        assert_success(&load(&url, &[SAMPLE]));
        let before = rows(&url);

        let plan = dry_run(&url, &schemas, &mapping);
        pinned.push_str(&shown(&plan, &url, dir.path()));
        assert_eq!(rows(&url), before, "a dry run changes nothing");

        let output = load_with(&url, &schemas, &mapping);
        assert_success(&output);
        assert_eq!(rows(&url), before, "every row is kept");
        let notes = query(
            &url,
            "SELECT CAST(COUNT(*) AS TEXT) FROM COBROWSE_FACT WHERE REVIEW_NOTE IS NULL",
        );
        assert_eq!(notes[0][0].as_deref(), Some(before.to_string().as_str()));
        // A 100-character end reason fits now.
        let long = "x".repeat(100);
        query(
            &url,
            &format!("UPDATE COBROWSE_FACT SET END_REASON = '{long}'"),
        );

        let again = dry_run(&url, &schemas, &mapping);
        assert_success(&again);
        assert_eq!(
            String::from_utf8_lossy(&again.stdout),
            "-- the database follows the catalog: no change\n"
        );
        drop(guard);
    }
    snapshot("grown-catalog-dry-run", &pinned);
}

/// Each change that could lose or break data is refused with exit 1 on
/// both backends, before anything changes.
#[test]
fn unsafe_catalog_changes_are_refused_before_any_change() {
    let cases: &[(&str, &[Edit])] = &[
        (
            "narrower-varchar",
            &[(
                "tables",
                "      PAGE_URL: varchar(1024)\n",
                "      PAGE_URL: varchar(256)\n",
            )],
        ),
        (
            "other-type",
            &[
                (
                    "tables",
                    "      PAGE_START_TIME_TS: bigint\n",
                    "      PAGE_START_TIME_TS: varchar(32)\n",
                ),
                (
                    "mapping",
                    "PAGE_START_TIME_TS: {from: page, path: \"$.startTime\", convert: epoch_seconds}",
                    "PAGE_START_TIME_TS: {from: page, path: \"$.id\"}",
                ),
            ],
        ),
        (
            "dropped-column",
            &[
                ("tables", "      PAGE_END_TIME_TS: bigint\n", ""),
                (
                    "mapping",
                    "  PAGE_END_TIME_TS: {from: page, path: \"$.endTime\", convert: epoch_seconds}\n",
                    "",
                ),
            ],
        ),
        (
            "new-not-null-column",
            &[
                (
                    "tables",
                    "      PAGE_END_TIME_TS: bigint\n",
                    "      PAGE_END_TIME_TS: bigint\n      SESSION_KEY: varchar(64) not null\n",
                ),
                (
                    "mapping",
                    "  PAGE_END_TIME_TS:",
                    "  SESSION_KEY: {from: session, path: \"$.id\", required: true}\n  PAGE_END_TIME_TS:",
                ),
            ],
        ),
        (
            "not-null-on-a-nullable-column",
            &[
                (
                    "tables",
                    "      SESSION_TOKEN: varchar(64)\n",
                    "      SESSION_TOKEN: varchar(64) not null\n",
                ),
                (
                    "mapping",
                    "SESSION_TOKEN: {from: session, path: \"$.token\"}",
                    "SESSION_TOKEN: {from: session, path: \"$.token\", missing: NONE}",
                ),
            ],
        ),
        (
            "changed-key",
            &[
                (
                    "tables",
                    "    primary_key: [SESSION_ID, SEGMENT_INDEX, PAGE_INDEX]",
                    "    primary_key: [SESSION_ID, PAGE_INDEX, SEGMENT_INDEX]",
                ),
                (
                    "mapping",
                    "key: [SESSION_ID, SEGMENT_INDEX, PAGE_INDEX]",
                    "key: [SESSION_ID, PAGE_INDEX, SEGMENT_INDEX]",
                ),
            ],
        ),
    ];
    let databases = backends("evolve_refuse");
    for (_, url) in &databases {
        assert_success(&load(url, &[SAMPLE]));
    }
    for (name, edits) in cases {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (schemas, mapping) = catalog(dir.path(), edits);
        let mut pinned = String::new();
        for (_, url) in &databases {
            let before = rows(url);
            let output = load_with(url, &schemas, &mapping);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{name}: {}",
                shown(&output, url, dir.path())
            );
            pinned.push_str(&shown(&output, url, dir.path()));
            let plan = dry_run(url, &schemas, &mapping);
            assert_eq!(
                plan.status.code(),
                Some(1),
                "{name}: the dry run refuses too"
            );
            assert_eq!(rows(url), before, "{name}: nothing changed");
        }
        snapshot(name, &pinned);
    }
}
