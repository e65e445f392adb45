//! JSONPath expressions of a mapping, parsed once by jsonpath-rust.
//!
//! Every path in a mapping is relative: `$` is the node of the scope it is
//! evaluated in. A parsed [`JsonPath`] keeps its text for messages and
//! jsonpath-rust's syntax tree, from which validation derives the steps to
//! check against the event schema and the plan derives its evaluator.

use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::{JpQuery, Segment, Selector};
use jsonpath_rust::parser::parse_json_path;
use pest::error::InputLocation;

use crate::catalog::PathStep;

/// A parsed, relative JSONPath.
#[derive(Debug, Clone)]
pub struct JsonPath {
    text: String,
    query: JpQuery,
}

/// Why a path does not parse, and the byte offset in it where it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSyntaxError {
    pub reason: String,
    pub offset: usize,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, PathSyntaxError> {
        match parse_json_path(text) {
            Ok(query) => Ok(JsonPath {
                text: text.to_owned(),
                query,
            }),
            Err(JsonPathError::PestError(error)) => {
                let offset = match error.location {
                    InputLocation::Pos(at) | InputLocation::Span((at, _)) => at,
                };
                Err(PathSyntaxError {
                    reason: describe(&error.variant.message()),
                    offset,
                })
            }
            Err(error) => Err(PathSyntaxError {
                reason: error.to_string(),
                offset: 0,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn query(&self) -> &JpQuery {
        &self.query
    }

    /// Whether the path selects at most one node: names and indexes only.
    pub fn is_singular(&self) -> bool {
        self.query.segments.iter().all(|segment| {
            matches!(
                segment,
                Segment::Selector(Selector::Name(_) | Selector::Index(_))
            )
        })
    }

    /// The path as steps through an event, for checking against its schema.
    pub fn steps(&self) -> Vec<PathStep> {
        let mut steps = Vec::new();
        for segment in &self.query.segments {
            let step = match segment {
                Segment::Selector(Selector::Name(name)) => PathStep::Property(name.clone()),
                Segment::Selector(
                    Selector::Wildcard
                    | Selector::Index(_)
                    | Selector::Slice(..)
                    | Selector::Filter(_),
                ) => PathStep::Item,
                Segment::Selectors(selectors)
                    if selectors.iter().all(|s| !matches!(s, Selector::Name(_))) =>
                {
                    PathStep::Item
                }
                Segment::Selectors(_) | Segment::Descendant(_) => PathStep::Unknown,
            };
            let unknown = step == PathStep::Unknown;
            steps.push(step);
            if unknown {
                break;
            }
        }
        steps
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// pest names grammar rules (`expected jp_query`); say it in a user's words.
fn describe(message: &str) -> String {
    if message.contains("EOI") {
        "unexpected character".to_owned()
    } else if message.contains("jp_query") || message.contains("root") {
        "a path starts with `$`".to_owned()
    } else {
        "expected a name, `*`, an index or a filter after `.` or inside `[ ]`".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<(&[PathStep], bool), usize>) {
        let parsed = JsonPath::parse(text).map(|path| (path.steps(), path.is_singular()));
        match (parsed, expected) {
            (Ok((steps, singular)), Ok((want, want_singular))) => {
                assert_eq!(
                    (steps.as_slice(), singular),
                    (want, want_singular),
                    "{text}"
                )
            }
            (Err(error), Err(offset)) => assert_eq!(error.offset, offset, "{text}: {error:?}"),
            (got, want) => panic!("{text}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn parses_paths_into_steps() {
        use PathStep::*;
        check("$", Ok((&[], true)));
        check("$.id", Ok((&[Property("id".into())], true)));
        check(
            "$.segments[*].mode",
            Ok((
                &[Property("segments".into()), Item, Property("mode".into())],
                false,
            )),
        );
        check(
            "$['odd key'][0]",
            Ok((&[Property("odd key".into()), Item], true)),
        );
        check("$..url", Ok((&[Unknown], false)));
    }

    #[test]
    fn reports_where_a_path_breaks() {
        check("$.segments[*", Err(11));
        check("id", Err(0));
        check("$..", Err(3));
    }
}
