//! Every mistake `validate-mapping` can find in an aggregate file, each
//! with a stable code (`martmap::aggregate::*`; YAML structure and catalog
//! names share the mapping's codes), a label and a help line.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use crate::mapping::MappingError;

#[derive(Debug, Error, Diagnostic)]
pub enum AggregateError {
    /// YAML structure, unknown keys, unknown tables and columns: the same
    /// problems as in a mapping file.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Structure(#[from] MappingError),

    #[error("cannot read {path}: {source}")]
    #[diagnostic(code(martmap::aggregate::io))]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error("aggregate `{name}` is declared twice")]
    #[diagnostic(
        code(martmap::aggregate::duplicate_name),
        help("each aggregate names its tables; give this one another `name`")
    )]
    DuplicateName {
        name: String,
        #[label("this file declares it again")]
        span: SourceSpan,
    },

    #[error("unknown level `{level}`")]
    #[diagnostic(code(martmap::aggregate::unknown_level))]
    UnknownLevel {
        level: String,
        #[label("not a calendar level")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown join `{alias}`")]
    #[diagnostic(code(martmap::aggregate::unknown_join))]
    UnknownJoin {
        alias: String,
        #[label("not declared under `joins`")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("`{column}` is {ty}, but {what} needs an integer column")]
    #[diagnostic(code(martmap::aggregate::not_integer))]
    NotInteger {
        column: String,
        ty: String,
        what: String,
        #[label("not an integer column")]
        span: SourceSpan,
    },

    #[error("`{column}` ({ty}) cannot be compared with {value}")]
    #[diagnostic(
        code(martmap::aggregate::filter_type),
        help("compare integer columns with numbers and text columns with text")
    )]
    FilterType {
        column: String,
        ty: String,
        value: String,
        #[label("of another type")]
        span: SourceSpan,
    },

    #[error("group-by column `{column}` may be NULL")]
    #[diagnostic(code(martmap::aggregate::nullable_group))]
    NullableGroup {
        column: String,
        #[label("may be NULL")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error(
        "`{column}` of `{table}` and `{other}` of the fact have different types ({ty} and {other_ty})"
    )]
    #[diagnostic(
        code(martmap::aggregate::join_type),
        help("join columns of the same kind: integer with integer, text with text")
    )]
    JoinType {
        column: String,
        table: String,
        other: String,
        ty: String,
        other_ty: String,
        #[label("types differ")]
        span: SourceSpan,
    },

    #[error("column `{column}` is declared twice in the aggregate's table")]
    #[diagnostic(
        code(martmap::aggregate::duplicate_column),
        help(
            "`DATE_TIME_KEY`, the group-by columns and the measures share one table; name each once"
        )
    )]
    DuplicateColumn {
        column: String,
        #[label("declared again")]
        span: SourceSpan,
    },

    #[error("{message}")]
    #[diagnostic(code(martmap::aggregate::invalid))]
    Invalid {
        message: String,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },
}

impl AggregateError {
    /// Where the problem is, for sorting problems in file order.
    pub fn offset(&self) -> usize {
        self.labels()
            .and_then(|mut labels| labels.next())
            .map_or(0, |label| label.offset())
    }
}
