//! The mapping language's vocabulary in one table, as jaq keeps its native
//! functions: every conversion and every derived default, with its
//! argument, the kind of value it yields and what it means. The reader
//! takes its keys from here, validation checks each use against the
//! column's type and suggests from here, and a test checks
//! `schemas/mapping.schema.json` against it. A new word is a row here plus
//! its meaning in the interpreter.

use super::model::ValueKind;
use crate::plan::Conversion;

/// What a word takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argument {
    /// Nothing: `convert: flag`.
    None,
    /// A positive number of seconds: `convert: {date_time_key: 900}`.
    Seconds,
    /// A scope's name: `default: {position: segment}`.
    Scope,
    /// A JSONPath relative to the binding's scope: `default: {url_host: "$.url"}`.
    Path,
    /// A JSONPath and a constant to compare with:
    /// `default: {any: "$.segments[*].mode", equals: WRITE}`.
    PathEquals,
}

/// One word of the language.
#[derive(Debug, Clone, Copy)]
pub struct Word {
    pub name: &'static str,
    pub argument: Argument,
    pub yields: ValueKind,
    pub meaning: &'static str,
}

const fn word(
    name: &'static str,
    argument: Argument,
    yields: ValueKind,
    meaning: &'static str,
) -> Word {
    Word {
        name,
        argument,
        yields,
        meaning,
    }
}

/// `convert:` — how the JSON value at `path` becomes the column's value.
pub const CONVERSIONS: &[Word] = &[
    word(
        "string",
        Argument::None,
        ValueKind::Text,
        "a string, or a JSON integer as its decimal text; cut to the column's size",
    ),
    word("int", Argument::None, ValueKind::Integer, "a JSON integer"),
    word(
        "number",
        Argument::None,
        ValueKind::Number,
        "a JSON number, fractions included (double columns)",
    ),
    word(
        "flag",
        Argument::None,
        ValueKind::Integer,
        "true/false or 0/1, stored as 1/0",
    ),
    word(
        "epoch_seconds",
        Argument::None,
        ValueKind::Integer,
        "epoch milliseconds or ISO-8601 with an offset, as whole epoch seconds UTC",
    ),
    word(
        "date_time_key",
        Argument::Seconds,
        ValueKind::Integer,
        "like epoch_seconds, floored to the start of an interval of this many seconds",
    ),
];

/// `default:` — a value derived when `path` is absent (besides a constant).
pub const DERIVATIONS: &[Word] = &[
    word(
        "position",
        Argument::Scope,
        ValueKind::Integer,
        "the 0-based position of the scope's item in its parent's items",
    ),
    word(
        "ordinal",
        Argument::Scope,
        ValueKind::Integer,
        "the 0-based running count of the scope's items across the event",
    ),
    word(
        "url_host",
        Argument::Path,
        ValueKind::Text,
        "the host of the URL at the path: lower case, without port or user info",
    ),
    word(
        "url_path",
        Argument::Path,
        ValueKind::Text,
        "the path of the URL at the path; `/` when empty",
    ),
    word(
        "url_query",
        Argument::Path,
        ValueKind::Text,
        "the query of the URL at the path, without `?`; absent when empty",
    ),
    word(
        "any",
        Argument::PathEquals,
        ValueKind::Integer,
        "1 when any value at the path equals `equals`, else 0",
    ),
    word(
        "all",
        Argument::PathEquals,
        ValueKind::Integer,
        "1 when every value at the path equals `equals`, else 0",
    ),
];

/// The key that goes with `any` and `all`.
pub const EQUALS: &str = "equals";

/// The names of `words`.
pub fn names(words: &[Word]) -> impl Iterator<Item = &'static str> + '_ {
    words.iter().map(|word| word.name)
}

/// The word of `words` named `name`.
pub fn find(words: &[Word], name: &str) -> Option<Word> {
    words.iter().copied().find(|word| word.name == name)
}

/// The word a compiled conversion came from.
pub fn conversion(conversion: Conversion) -> Word {
    let name = match conversion {
        Conversion::String => "string",
        Conversion::Int => "int",
        Conversion::Number => "number",
        Conversion::Flag => "flag",
        Conversion::EpochSeconds => "epoch_seconds",
        Conversion::DateTimeKey { .. } => "date_time_key",
    };
    find(CONVERSIONS, name).expect("every conversion is in the vocabulary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_conversion_has_its_word() {
        for conversion in [
            Conversion::String,
            Conversion::Int,
            Conversion::Number,
            Conversion::Flag,
            Conversion::EpochSeconds,
            Conversion::DateTimeKey { interval: 900 },
        ] {
            assert!(
                conversion
                    .name()
                    .starts_with(super::conversion(conversion).name)
            );
        }
    }
}
