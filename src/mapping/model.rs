//! The validated mapping: every name resolved against the catalog, every
//! path parsed, every conversion known to fit its column. It holds no spans
//! and no unchecked strings, so the plan compiler never fails on it.

use crate::catalog::ColumnType;
pub use crate::plan::{Conversion, DimensionKind, UrlPart};

use super::path::JsonPath;

/// Index of a scope in [`Mapping::scopes`].
pub type ScopeId = usize;

#[derive(Debug, Clone)]
pub struct Mapping {
    pub name: String,
    pub description: Option<String>,
    /// The event schema the paths were checked against.
    pub event: String,
    pub fact: String,
    /// Root first; each scope's parent comes before it, and the last one is
    /// the grain of the fact table.
    pub scopes: Vec<Scope>,
    pub key: Vec<String>,
    pub replace_by: Vec<String>,
    /// Fact columns filled from the event.
    pub columns: Vec<Binding>,
    pub dimensions: Vec<Dimension>,
}

/// One level of the explode: `each` selects items relative to the parent
/// scope's item; an `outer` scope yields one empty item when it selects none.
#[derive(Debug, Clone)]
pub struct Scope {
    pub name: String,
    pub each: JsonPath,
    pub parent: Option<ScopeId>,
    pub outer: bool,
}

/// How one target column gets its value.
#[derive(Debug, Clone)]
pub struct Binding {
    pub column: String,
    pub ty: ColumnType,
    /// The scope whose item `path` is evaluated against.
    pub scope: ScopeId,
    pub path: Option<JsonPath>,
    pub convert: Conversion,
    /// Used when `path` is absent or selects nothing (or null).
    pub default: Option<Derivation>,
    /// Used when the scope itself is empty (an outer explode selected nothing).
    pub missing: Option<Constant>,
    /// The whole event is discarded when no value results.
    pub required: bool,
    /// An empty string read at `path` is stored as NULL; no default applies.
    pub empty_is_null: bool,
}

/// The two kinds of values columns hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Integer,
    Text,
    /// A number, fractions included (`double` columns).
    Number,
}

impl ValueKind {
    pub fn of(ty: ColumnType) -> ValueKind {
        if ty.is_integer() {
            ValueKind::Integer
        } else if ty == ColumnType::Double {
            ValueKind::Number
        } else {
            ValueKind::Text
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ValueKind::Integer => "an integer",
            ValueKind::Text => "text",
            ValueKind::Number => "a number",
        }
    }
}

/// A value written in the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constant {
    Int(i64),
    Text(String),
}

impl Constant {
    pub fn kind(&self) -> ValueKind {
        match self {
            Constant::Int(_) => ValueKind::Integer,
            Constant::Text(_) => ValueKind::Text,
        }
    }
}

impl std::fmt::Display for Constant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Constant::Int(value) => write!(f, "{value}"),
            Constant::Text(value) => f.write_str(value),
        }
    }
}

/// Where a value comes from when the event does not carry it.
#[derive(Debug, Clone)]
pub enum Derivation {
    Constant(Constant),
    /// The 0-based position of the scope's item within its parent's items.
    Position(ScopeId),
    /// The 0-based running count of the scope's items across the whole event.
    Ordinal(ScopeId),
    /// A part of the URL found at the path: host, path or query.
    UrlPart(UrlPart, JsonPath),
    /// 1 when any (or all) of the values at the path equal the constant, else 0.
    Quantified {
        all: bool,
        path: JsonPath,
        equals: Constant,
    },
}

impl Derivation {
    pub fn yields(&self) -> ValueKind {
        match self {
            Derivation::Constant(constant) => constant.kind(),
            Derivation::UrlPart(..) => ValueKind::Text,
            Derivation::Position(_) | Derivation::Ordinal(_) | Derivation::Quantified { .. } => {
                ValueKind::Integer
            }
        }
    }
}

/// A dimension lookup: natural values → surrogate key in the fact column.
#[derive(Debug, Clone)]
pub struct Dimension {
    /// The fact column receiving the surrogate key.
    pub key_column: String,
    pub table: String,
    pub kind: DimensionKind,
    /// Natural key columns of the dimension and where their values come from.
    pub matches: Vec<Binding>,
}
