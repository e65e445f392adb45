//! The catalog: target tables and event shapes, read from the `schemas/`
//! directory as data.
//!
//! `schemas/tables/*.yaml` declare tables (columns with types, sizes and
//! nullability, keys, audit columns, seeded rows); `schemas/events/*.schema.json`
//! are JSON Schemas of the events mappings read. Adding a topic's tables is a
//! new YAML file here, never Rust code. The catalog is checked as it loads:
//! every key column exists, seeded rows fit their columns. Nothing in here
//! knows about any particular table.

mod event;
mod table;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use crate::diagnostic::{Problem, SourceFile};

pub use event::{EventSchema, PathStep, SchemaMismatch};
pub use table::{Audit, Column, ColumnType, Role, SeedValue, Table};

/// Every table and event schema of one `schemas/` directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
    pub tables: IndexMap<String, Table>,
    pub events: IndexMap<String, EventSchema>,
}

/// Why the catalog could not be loaded.
#[derive(Debug, Error, Diagnostic)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    #[diagnostic(
        code(martmap::catalog::io),
        help("point --catalog (or $MARTMAP_CATALOG) at a directory holding tables/ and events/")
    )]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error("invalid catalog file: {message}")]
    #[diagnostic(code(martmap::catalog::syntax))]
    Syntax {
        message: String,
        #[label("here")]
        span: Option<SourceSpan>,
    },

    #[error("table `{table}` is declared twice")]
    #[diagnostic(
        code(martmap::catalog::duplicate_table),
        help("first declared in {first}")
    )]
    DuplicateTable { table: String, first: String },

    #[error("table `{table}`: {message}")]
    #[diagnostic(code(martmap::catalog::invalid_table))]
    InvalidTable { table: String, message: String },
}

impl Catalog {
    /// Loads `dir/tables/*.yaml` and `dir/events/*.schema.json`, reporting
    /// every problem of every file.
    pub fn load(dir: &Path) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut catalog = Catalog {
            dir: dir.to_path_buf(),
            tables: IndexMap::new(),
            events: IndexMap::new(),
        };
        let mut origin: IndexMap<String, String> = IndexMap::new();

        for path in files_in(&dir.join("tables"), ".yaml", &mut problems) {
            let Some(file) = read_source(&path, &mut problems) else {
                continue;
            };
            match table::parse_tables(&file.text) {
                Ok(tables) => {
                    for table in tables {
                        if let Some(first) = origin.get(&table.name) {
                            problems.push(Problem::new(
                                &file,
                                CatalogError::DuplicateTable {
                                    table: table.name,
                                    first: first.clone(),
                                },
                            ));
                            continue;
                        }
                        problems.extend(table.check().into_iter().map(|e| Problem::new(&file, e)));
                        origin.insert(table.name.clone(), file.name.clone());
                        catalog.tables.insert(table.name.clone(), table);
                    }
                }
                Err(error) => problems.push(Problem::new(&file, error)),
            }
        }
        for path in files_in(&dir.join("events"), ".schema.json", &mut problems) {
            let Some(file) = read_source(&path, &mut problems) else {
                continue;
            };
            let name = file_stem(&path, ".schema.json");
            match EventSchema::parse(&name, &file.text) {
                Ok(schema) => {
                    catalog.events.insert(name, schema);
                }
                Err(error) => problems.push(Problem::new(&file, error)),
            }
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }
}

/// The files of `dir` whose names end in `suffix`, sorted so that loading is
/// deterministic.
fn files_in(dir: &Path, suffix: &str, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            problems.push(Problem::detached(CatalogError::Io {
                path: dir.display().to_string(),
                source,
            }));
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.to_str().is_some_and(|name| name.ends_with(suffix)))
        .collect();
    paths.sort();
    paths
}

fn read_source(path: &Path, problems: &mut Vec<Problem>) -> Option<SourceFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(SourceFile::new(path.display().to_string(), text)),
        Err(source) => {
            problems.push(Problem::detached(CatalogError::Io {
                path: path.display().to_string(),
                source,
            }));
            None
        }
    }
}

fn file_stem(path: &Path, suffix: &str) -> String {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    name.strip_suffix(suffix).unwrap_or(name).to_owned()
}
