//! The compiled plan of one mapping and its interpreter: event bytes in,
//! rows or a discard reason out. Pure: no I/O, no catalog or mapping lookups
//! at run time. `mapping::compile` builds a [`Plan`] from a validated
//! mapping; sources hand payloads to [`Plan::apply`]; the sink writes rows.

pub mod coverage;
mod interpret;
mod select;

pub use interpret::{Discard, Member, Row};
pub use select::{Selector, Step, StepMismatch};

/// A column value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cell {
    Null,
    Int(i64),
    /// Shared: a session's text is cloned into each of its rows.
    Text(std::sync::Arc<str>),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The value as text, the way PostgreSQL prints it (NULL as empty).
    pub fn to_text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(number) => number.to_string(),
            Cell::Text(text) => text.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// A string, or a JSON integer as its decimal text; cut to the column size.
    String,
    /// A JSON integer.
    Int,
    /// A JSON number, fractions included, as its JSON text (a `double`
    /// column reads it).
    Number,
    /// true/false or 0/1, stored as 1/0.
    Flag,
    /// Epoch milliseconds or ISO-8601 with offset, stored as whole epoch seconds.
    EpochSeconds,
    /// Like `EpochSeconds`, floored to the start of an interval of this many seconds.
    DateTimeKey { interval: u32 },
}

impl Conversion {
    pub fn name(self) -> String {
        match self {
            Conversion::String => "string".into(),
            Conversion::Int => "int".into(),
            Conversion::Number => "number".into(),
            Conversion::Flag => "flag".into(),
            Conversion::EpochSeconds => "epoch_seconds".into(),
            Conversion::DateTimeKey { interval } => format!("date_time_key: {interval}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPart {
    /// Lower case, without port or user info.
    Host,
    /// `/` when empty.
    Path,
    /// Without `?`; absent when empty.
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimensionKind {
    /// Fixed members seeded with the schema; any other value is `otherwise`.
    Static {
        members: Vec<String>,
        otherwise: String,
    },
    /// Members created on first sight; absent attributes take `absent`.
    GetOrCreate { absent: String },
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mapping: String,
    /// SHA-256 of the mapping file's text, recorded with every batch.
    pub content_hash: String,
    pub fact: String,
    /// Root first, the grain last; each scope's parent is the one before it.
    pub scopes: Vec<PlanScope>,
    /// Every value computed per scope item: fact columns and dimension
    /// natural key columns alike.
    pub values: Vec<ValuePlan>,
    /// The fact columns the rows carry, in order, each an index into `values`.
    pub columns: Vec<(String, usize)>,
    pub dimensions: Vec<PlanDimension>,
    pub key: Vec<String>,
    pub replace_by: Vec<String>,
    /// Every attribute path the mapping reads, absolute (for drift reports).
    pub reads: Vec<coverage::Read>,
}

#[derive(Debug, Clone)]
pub struct PlanScope {
    pub name: String,
    pub each: Selector,
    /// The `each` path as written, for locating errors (`$.segments[*]`).
    pub each_text: String,
    pub outer: bool,
    /// Indexes into `Plan::values` of the values read in this scope.
    pub values: Vec<usize>,
}

/// How one value is computed.
#[derive(Debug, Clone)]
pub struct ValuePlan {
    /// The target column, for messages.
    pub column: String,
    pub scope: usize,
    /// Its position in its scope's `values`.
    pub slot: usize,
    pub path: Option<(Selector, String)>,
    pub convert: Conversion,
    pub default: Option<Default>,
    /// The value when the scope is empty (an outer explode selected nothing).
    pub missing: Cell,
    pub required: bool,
    /// An empty string at `path` is stored as NULL (no default applies).
    pub empty_is_null: bool,
    /// What the target column holds: a value that does not fit discards
    /// the event here, where its path is known, never at the database.
    pub target: Target,
}

/// A target column's type as the interpreter checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An integer column: `name` is its SQL type, for messages.
    Integer {
        name: &'static str,
        min: i64,
        max: i64,
    },
    /// Text; longer values are cut to `max_chars` characters.
    Text {
        max_chars: Option<usize>,
    },
    Bytes,
}

impl Target {
    /// Whether an integer fits: always true for non-integer columns, whose
    /// conversions do not yield integers (validation sees to that).
    pub fn fits(self, value: i64) -> bool {
        match self {
            Target::Integer { min, max, .. } => (min..=max).contains(&value),
            _ => true,
        }
    }
}

/// A derived value, used when the path is absent.
#[derive(Debug, Clone)]
pub enum Default {
    Constant(Cell),
    Position(usize),
    Ordinal(usize),
    UrlPart(UrlPart, Selector, String),
    Quantified {
        all: bool,
        path: Selector,
        equals: Cell,
    },
}

#[derive(Debug, Clone)]
pub struct PlanDimension {
    /// The fact column receiving the surrogate key.
    pub key_column: String,
    pub table: String,
    pub kind: DimensionKind,
    /// Natural key columns of the dimension, each with its index into `Plan::values`.
    pub columns: Vec<(String, usize)>,
    /// The deepest scope its columns read: the member changes only with it.
    pub level: usize,
}
