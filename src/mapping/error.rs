//! Every mistake `validate-mapping` can find in a mapping file, each with a
//! stable code (`martmap::mapping::*`), a label on the exact span and a help
//! line. Validation collects all of them; `main` renders them.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum MappingError {
    #[error("invalid YAML: {message}")]
    #[diagnostic(
        code(martmap::mapping::yaml_syntax),
        help(
            "mapping files are plain YAML: mappings, lists and scalars, without anchors, aliases or tags"
        )
    )]
    YamlSyntax {
        message: String,
        #[label("here")]
        span: SourceSpan,
    },

    #[error("duplicate key `{key}`")]
    #[diagnostic(
        code(martmap::mapping::duplicate_key),
        help("YAML keys are unique within a mapping; keep one of the two")
    )]
    DuplicateKey {
        key: String,
        #[label("written again here")]
        span: SourceSpan,
        #[label("first written here")]
        first: SourceSpan,
    },

    #[error("unknown key `{key}` in {context}")]
    #[diagnostic(code(martmap::mapping::unknown_key))]
    UnknownKey {
        key: String,
        context: String,
        #[label("unknown key")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{context} has no `{key}`")]
    #[diagnostic(code(martmap::mapping::missing_key))]
    MissingKey {
        key: &'static str,
        context: String,
        #[label("`{key}` is required here")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{key}` must be {expected}, found {found}")]
    #[diagnostic(code(martmap::mapping::invalid_type))]
    InvalidType {
        key: String,
        expected: &'static str,
        found: String,
        #[label("expected {expected}")]
        span: SourceSpan,
    },

    #[error("invalid JSONPath `{path}`: {reason}")]
    #[diagnostic(
        code(martmap::mapping::jsonpath_syntax),
        help(
            "paths are RFC 9535 JSONPath relative to their scope, e.g. `$.id`, `$.segments[*]`, `$['odd name']`"
        )
    )]
    JsonPathSyntax {
        path: String,
        reason: String,
        #[label("{reason}")]
        span: SourceSpan,
    },

    #[error("path `{path}` may select several values, but a column holds one")]
    #[diagnostic(
        code(martmap::mapping::path_not_singular),
        help(
            "use names and indexes only (`$.a.b`, `$.list[0]`); to explode an array, declare a scope for it"
        )
    )]
    PathNotSingular {
        path: String,
        #[label("selects many")]
        span: SourceSpan,
    },

    #[error("unknown scope `{name}`")]
    #[diagnostic(code(martmap::mapping::unknown_scope))]
    UnknownScope {
        name: String,
        #[label("not a scope of this mapping")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("scope `{name}` is its own ancestor: {cycle}")]
    #[diagnostic(
        code(martmap::mapping::scope_cycle),
        help("scopes form a chain from the root scope (the one without `in`) down to the grain")
    )]
    ScopeCycle {
        name: String,
        cycle: String,
        #[label("part of a cycle")]
        span: SourceSpan,
    },

    #[error("{problem}")]
    #[diagnostic(
        code(martmap::mapping::scope_shape),
        help(
            "declare exactly one root scope without `in`, and at most one scope `in` each scope: the innermost is the fact's grain"
        )
    )]
    ScopeShape {
        problem: String,
        #[label("here")]
        span: SourceSpan,
    },

    #[error("unknown table `{name}`")]
    #[diagnostic(code(martmap::mapping::unknown_table))]
    UnknownTable {
        name: String,
        #[label("not in the catalog")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("table `{table}` is a {role} table, not a {expected} table")]
    #[diagnostic(code(martmap::mapping::table_role))]
    TableRole {
        table: String,
        role: String,
        expected: &'static str,
        #[label("expected a {expected} table")]
        span: SourceSpan,
    },

    #[error("unknown column `{column}` in table `{table}`")]
    #[diagnostic(code(martmap::mapping::unknown_column))]
    UnknownColumn {
        column: String,
        table: String,
        #[label("not a column of {table}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown event schema `{name}`")]
    #[diagnostic(code(martmap::mapping::unknown_event))]
    UnknownEvent {
        name: String,
        #[label("no events/{name}.schema.json in the catalog")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("unknown conversion `{name}`")]
    #[diagnostic(code(martmap::mapping::unknown_conversion))]
    UnknownConversion {
        name: String,
        #[label("not a conversion")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("conversion `{conversion}` yields {yields}, but column `{column}` is {column_type}")]
    #[diagnostic(code(martmap::mapping::conversion_type))]
    ConversionType {
        conversion: String,
        yields: &'static str,
        column: String,
        column_type: String,
        #[label("incompatible with {column_type}")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("{what} yields {yields}, but column `{column}` is {column_type}")]
    #[diagnostic(
        code(martmap::mapping::value_type),
        help("text columns take strings; integer columns take integers, flags and times")
    )]
    ValueType {
        what: String,
        yields: &'static str,
        column: String,
        column_type: String,
        #[label("incompatible with {column_type}")]
        span: SourceSpan,
    },

    #[error("NOT NULL column `{column}` of `{table}` is never bound")]
    #[diagnostic(code(martmap::mapping::unbound_not_null))]
    UnboundNotNull {
        column: String,
        table: String,
        #[label("{table} needs a value for {column}")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("key column `{column}` is not bound")]
    #[diagnostic(
        code(martmap::mapping::unbound_key),
        help("bind it under `columns:` (or as a dimension key); every row needs its key")
    )]
    UnboundKey {
        column: String,
        #[label("no binding for {column}")]
        span: SourceSpan,
    },

    #[error("`replace_by` column `{column}` is not part of `key`")]
    #[diagnostic(
        code(martmap::mapping::replace_by),
        help(
            "`replace_by` names the leading key columns that identify one event's rows, e.g. the session id"
        )
    )]
    ReplaceBy {
        column: String,
        #[label("not in key")]
        span: SourceSpan,
    },

    #[error("`replace_by` column `{column}` is a dimension key")]
    #[diagnostic(
        code(martmap::mapping::replace_by_dimension),
        help(
            "an event's identity is read from the event: name columns bound in `columns:`, such as the session id"
        )
    )]
    ReplaceByDimension {
        column: String,
        #[label("filled by dimension lookup")]
        span: SourceSpan,
    },

    #[error("column `{column}` is bound more than once")]
    #[diagnostic(
        code(martmap::mapping::duplicate_binding),
        help("a column takes its value from one place: `columns:` or a dimension, not both")
    )]
    DuplicateBinding {
        column: String,
        #[label("second binding")]
        span: SourceSpan,
        #[label("first binding")]
        first: SourceSpan,
    },

    #[error("dimension key column `{column}` is not a column of fact table `{fact}`")]
    #[diagnostic(code(martmap::mapping::dimension_key_missing))]
    DimensionKeyMissing {
        column: String,
        fact: String,
        #[label("the surrogate key lands in {fact}.{column}")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("dimension `{dimension}` must be either `static` or `get_or_create`")]
    #[diagnostic(
        code(martmap::mapping::dimension_kind),
        help(
            "`static: {{members: [...], otherwise: ...}}` for fixed members, `get_or_create: {{absent: NO_VALUE}}` for members created on first sight"
        )
    )]
    DimensionKind {
        dimension: String,
        #[label("declare exactly one of the two")]
        span: SourceSpan,
    },

    #[error("natural key column `{column}` of `{table}` is not matched")]
    #[diagnostic(
        code(martmap::mapping::unbound_natural_key),
        help("a member is found by all of its natural key columns: bind each under `match:`")
    )]
    UnboundNaturalKey {
        column: String,
        table: String,
        #[label("{column} missing from match")]
        span: SourceSpan,
    },

    #[error("`otherwise` member `{value}` is not among the members")]
    #[diagnostic(code(martmap::mapping::static_otherwise))]
    StaticOtherwise {
        value: String,
        #[label("not in members")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("member `{member}` is not a seeded row of `{table}`.`{column}`")]
    #[diagnostic(code(martmap::mapping::unknown_member))]
    UnknownMember {
        member: String,
        table: String,
        column: String,
        #[label("not seeded in the catalog")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("path `{path}` cannot exist in event `{event}`: {reason}")]
    #[diagnostic(code(martmap::mapping::path_not_in_event))]
    PathNotInEvent {
        path: String,
        event: String,
        reason: String,
        #[label("not in the event schema")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("scope `{scope}` is not `{from}` or one of its parents")]
    #[diagnostic(
        code(martmap::mapping::scope_not_in_reach),
        help("a position or ordinal is taken of the column's own scope or a scope enclosing it")
    )]
    ScopeNotInReach {
        scope: String,
        from: String,
        #[label("out of reach of scope {from}")]
        span: SourceSpan,
    },

    #[error("`{key}` must not be empty")]
    #[diagnostic(code(martmap::mapping::empty))]
    Empty {
        key: &'static str,
        #[label("empty")]
        span: SourceSpan,
    },
}
