//! Aggregate files: declarative summaries of a fact table per calendar
//! level, Info Mart's RAA as data.
//!
//! An aggregate (`aggregates/*.yaml`) names its feature (enabled by
//! `enable-<feature>` in `[agg-feature]`), its source fact, the time key
//! that attributes rows to calendar intervals, its levels, left joins to
//! other catalog tables, group-by columns and measures. It becomes one
//! table per level, `<NAME>_<LEVEL>`, keyed by `DATE_TIME_KEY` (that
//! level's key) and the group-by columns. Stages as for mappings:
//! [`read`] keeps positions, [`validate`] resolves against the catalog.
//! The sink keeps the tables exact in each batch's transaction.

mod error;
mod read;
mod validate;

use std::path::Path;

use crate::calendar::Level;
use crate::catalog::{Audit, Catalog, Column, ColumnType, Role, Table};
use crate::diagnostic::{Problem, SourceFile};
use crate::mapping::Constant;

pub use error::AggregateError;
pub use read::{RawAggregate, read};
pub use validate::validate;

/// The calendar key column of every aggregate table.
pub const TIME_COLUMN: &str = "DATE_TIME_KEY";

/// A validated aggregate.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub name: String,
    pub feature: String,
    pub fact: String,
    /// The fact column holding each row's calendar interval key.
    pub time_key: String,
    pub levels: Vec<Level>,
    pub joins: Vec<Join>,
    pub group_by: Vec<Group>,
    pub measures: Vec<Measure>,
    /// Each level above the finest is summed from a finer level's table
    /// instead of the facts: declared by the author, who vouches that each
    /// distinct tuple (`count_distinct`, `once_per`) falls in one interval.
    pub roll_up: bool,
    /// SHA-256 of the file's text: a changed definition is rebuilt.
    pub content_hash: String,
    /// The aggregate table's column types, `DATE_TIME_KEY` first.
    columns: Vec<(String, Column)>,
    /// The type of every column the aggregate reads.
    read_types: Vec<(ColumnRef, Column)>,
}

/// `LEFT JOIN <table> AS <alias> ON <table>.<column> = fact.<column> ...`.
#[derive(Debug, Clone)]
pub struct Join {
    pub alias: String,
    pub table: String,
    /// (joined table column, fact column) pairs.
    pub on: Vec<(String, String)>,
    /// The value of a joined column when no row matches.
    pub no_match: Vec<(String, Constant)>,
}

impl Join {
    pub fn no_match(&self, column: &str) -> Option<&Constant> {
        self.no_match
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value)
    }
}

/// A column of the fact (`join` None) or of a joined table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRef {
    pub join: Option<usize>,
    pub column: String,
}

#[derive(Debug, Clone)]
pub struct Group {
    /// The aggregate table's column.
    pub name: String,
    pub source: ColumnRef,
}

#[derive(Debug, Clone)]
pub struct Measure {
    pub name: String,
    pub kind: MeasureKind,
    /// Rows count only when every filter holds.
    pub filters: Vec<Filter>,
    /// Take each distinct tuple of these columns once (a session-level
    /// value repeated on every row of the session).
    pub once_per: Vec<ColumnRef>,
}

#[derive(Debug, Clone)]
pub enum MeasureKind {
    /// Rows.
    Count,
    /// Distinct tuples of these columns (none of them NULL).
    CountDistinct(Vec<ColumnRef>),
    /// The sum, 0 when no row has a value.
    Sum(Operand),
    /// NULL when no row has a value.
    Min(Operand),
    Max(Operand),
}

/// A column, or the difference of two (NULL unless both are known).
#[derive(Debug, Clone)]
pub enum Operand {
    Column(ColumnRef),
    Difference(ColumnRef, ColumnRef),
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub column: ColumnRef,
    pub test: Test,
}

#[derive(Debug, Clone)]
pub enum Test {
    Equals(Constant),
    AtLeast(i64),
    AtMost(i64),
}

impl Aggregate {
    /// The table kept at `level`.
    pub fn table_name(&self, level: Level) -> String {
        format!("{}_{}", self.name, level.name())
    }

    /// The finer level a level is summed from, when it rolls up: the
    /// coarsest listed level whose buckets nest in its buckets (weeks do
    /// not nest in months).
    pub fn rolled_up_from(&self, level: Level) -> Option<Level> {
        if !self.roll_up {
            return None;
        }
        let nested: &[Level] = match level {
            Level::Subhr => &[],
            Level::Hour => &[Level::Subhr],
            Level::Day => &[Level::Hour, Level::Subhr],
            Level::Week | Level::Month => &[Level::Day, Level::Hour, Level::Subhr],
            Level::Quarter => &[Level::Month, Level::Day, Level::Hour, Level::Subhr],
            Level::Year => &[
                Level::Quarter,
                Level::Month,
                Level::Day,
                Level::Hour,
                Level::Subhr,
            ],
        };
        nested
            .iter()
            .copied()
            .find(|finer| self.levels.contains(finer))
    }

    /// The declared type of a column the aggregate reads.
    pub fn column_type(&self, reference: &ColumnRef) -> Option<&Column> {
        self.read_types
            .iter()
            .find(|(r, _)| r == reference)
            .map(|(_, column)| column)
    }

    /// The tables this aggregate reads: its fact, then each joined table.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.fact.as_str()).chain(self.joins.iter().map(|j| j.table.as_str()))
    }

    /// The table of one level, declared as the catalog would.
    pub fn table(&self, level: Level) -> Table {
        let primary_key = std::iter::once(TIME_COLUMN.to_owned())
            .chain(self.group_by.iter().map(|g| g.name.clone()))
            .collect();
        Table {
            name: self.table_name(level),
            role: Role::Aggregate,
            description: Some(format!(
                "{} per {} (aggregate of {}, feature {})",
                self.name,
                level.name(),
                self.fact,
                self.feature
            )),
            columns: self.columns.iter().cloned().collect(),
            primary_key,
            surrogate_key: None,
            natural_key: Vec::new(),
            audit: Audit::default(),
            rows: Vec::new(),
        }
    }

    /// Whether a measure's column may be NULL.
    fn measure_column(kind: &MeasureKind) -> Column {
        let nullable = matches!(kind, MeasureKind::Min(_) | MeasureKind::Max(_));
        Column {
            ty: ColumnType::BigInt,
            nullable,
        }
    }
}

/// Reads and validates one aggregate file.
pub fn load(file: &SourceFile, catalog: &Catalog) -> Result<Aggregate, Vec<Problem>> {
    use sha2::{Digest, Sha256};
    let (raw, mut errors) = read(&file.text);
    let hash = format!("{:x}", Sha256::digest(file.text.as_bytes()));
    match raw.map(|raw| validate(&raw, catalog, hash)) {
        Some(Ok(aggregate)) if errors.is_empty() => return Ok(aggregate),
        Some(Err(more)) => errors.extend(more),
        Some(Ok(_)) | None => {}
    }
    errors.sort_by_key(|error| error.offset());
    Err(errors
        .into_iter()
        .map(|error| Problem::new(file, error))
        .collect())
}

/// An aggregate file as read, with the feature it names (when it can be
/// read that far): enough to tell which files an options file enables
/// without checking the others against the catalog.
#[derive(Debug, Clone)]
pub struct AggregateFile {
    pub file: SourceFile,
    pub name: Option<String>,
    pub feature: Option<String>,
}

/// The aggregate files (`*.yaml`) of a directory, sorted by name. A
/// directory that does not exist holds none.
pub fn files_in(dir: &Path) -> Result<Vec<AggregateFile>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for path in files(dir, &mut problems) {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (raw, _) = read(&text);
                let name = raw
                    .as_ref()
                    .and_then(|r| r.name.as_ref())
                    .map(|n| n.value.clone());
                let feature = raw.and_then(|r| r.feature).map(|f| f.value);
                let file = SourceFile::new(path.display().to_string(), text);
                found.push(AggregateFile {
                    file,
                    name,
                    feature,
                });
            }
            Err(source) => problems.push(Problem::detached(AggregateError::Io {
                path: path.display().to_string(),
                source,
            })),
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

/// Validates the files whose feature is enabled (and those whose feature
/// cannot be read, which might be); every problem of every one of them.
pub fn load_enabled(
    files: &[AggregateFile],
    features: &[String],
    catalog: &Catalog,
) -> Result<Vec<Aggregate>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut aggregates: Vec<Aggregate> = Vec::new();
    for found in files {
        let enabled = found.feature.as_ref().is_none_or(|f| features.contains(f));
        if !enabled || features.is_empty() {
            continue;
        }
        match load(&found.file, catalog) {
            Ok(aggregate) if aggregates.iter().any(|a| a.name == aggregate.name) => {
                problems.push(Problem::new(
                    &found.file,
                    AggregateError::DuplicateName {
                        name: aggregate.name,
                        span: (0, 0).into(),
                    },
                ));
            }
            Ok(aggregate) => aggregates.push(aggregate),
            Err(found) => problems.extend(found),
        }
    }
    if problems.is_empty() {
        Ok(aggregates)
    } else {
        Err(problems)
    }
}

/// Every aggregate file of a directory, validated.
pub fn load_dir(dir: &Path, catalog: &Catalog) -> Result<Vec<Aggregate>, Vec<Problem>> {
    let files = files_in(dir)?;
    let every: Vec<String> = files
        .iter()
        .map(|f| f.feature.clone().unwrap_or_default())
        .collect();
    load_enabled(&files, &every, catalog)
}

/// Whether a YAML text is an aggregate file rather than a mapping: it has
/// a top-level `measures:` key.
pub fn is_aggregate_file(text: &str) -> bool {
    text.lines().any(|line| line.starts_with("measures:"))
}

fn files(dir: &Path, problems: &mut Vec<Problem>) -> Vec<std::path::PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(source) => {
            problems.push(Problem::detached(AggregateError::Io {
                path: dir.display().to_string(),
                source,
            }));
            return Vec::new();
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    paths.sort();
    paths
}
