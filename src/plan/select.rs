//! Evaluating a mapping's JSONPaths against one event.
//!
//! Paths of names, indexes and `[*]` (all that co-browse needs, and most
//! mappings) are compiled to [`Step`]s and walked directly; anything richer
//! (filters, slices, descendants) is handed to jsonpath-rust. Compiled steps
//! are strict where DESIGN §2 asks for it: a name applied to a value that is
//! neither an object nor null, or `[*]` applied to something that is not an
//! array, is a type error that discards the event, not an empty selection.
//!
//! Events are serde_json_borrow values (strings borrowed from the payload,
//! members in order); of duplicate member names the last counts, as in
//! serde_json.

use jsonpath_rust::parser::model::{JpQuery, Segment, Selector as JpSelector};
use jsonpath_rust::query::js_path_process;
use serde_json_borrow::{ObjectAsVec, Value};

use crate::convert::{Mismatch, describe};

/// A compiled path.
#[derive(Debug, Clone)]
pub enum Selector {
    Steps(Vec<Step>),
    Query(Box<JpQuery>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Name(String),
    Index(i64),
    Each,
}

/// A step that met a value of the wrong type: where, and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMismatch {
    /// The relative path up to the offending value (`$.creator`).
    pub at: String,
    pub mismatch: Mismatch,
}

impl Selector {
    pub fn compile(query: &JpQuery) -> Selector {
        let steps: Option<Vec<Step>> = query
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Selector(JpSelector::Name(name)) => Some(Step::Name(name.clone())),
                Segment::Selector(JpSelector::Index(index)) => Some(Step::Index(*index)),
                Segment::Selector(JpSelector::Wildcard) => Some(Step::Each),
                _ => None,
            })
            .collect();
        match steps {
            Some(steps) => Selector::Steps(steps),
            None => Selector::Query(Box::new(query.clone())),
        }
    }

    /// Whether the path is `$` itself.
    pub fn is_identity(&self) -> bool {
        matches!(self, Selector::Steps(steps) if steps.is_empty())
    }

    /// The one value a singular path selects; `None` when absent or null.
    pub fn get<'v>(&self, value: &'v Value<'v>) -> Result<Option<&'v Value<'v>>, StepMismatch> {
        let found = match self {
            Selector::Steps(steps) => step_one(steps, value)?,
            Selector::Query(_) => {
                let mut found = Vec::with_capacity(1);
                self.select(value, &mut found)?;
                found.into_iter().next()
            }
        };
        Ok(found.filter(|value| !value.is_null()))
    }

    /// Every value the path selects, in document order, into `out`.
    pub fn select<'v>(
        &self,
        value: &'v Value<'v>,
        out: &mut Vec<&'v Value<'v>>,
    ) -> Result<(), StepMismatch> {
        match self {
            Selector::Steps(steps) => walk(steps, 0, value, out),
            Selector::Query(query) => {
                // jsonpath-rust reads serde_json's own values: it queries a
                // copy, and each result's counterpart in the event is found.
                // It only fails on a function's runtime error, and never
                // selects anything then.
                let copy = serde_json::Value::from(value);
                if let Ok(found) = js_path_process(query, &copy) {
                    out.extend(
                        found
                            .into_iter()
                            .filter_map(|found| counterpart(&copy, value, found.val())),
                    );
                }
                Ok(())
            }
        }
    }
}

/// An object's member; of duplicate names the last, as serde_json keeps it.
fn member<'v>(members: &'v ObjectAsVec<'v>, name: &str) -> Option<&'v Value<'v>> {
    members
        .as_vec()
        .iter()
        .rev()
        .find(|(key, _)| &**key == name)
        .map(|(_, value)| value)
}

/// The node of `value` at the place where `copy` (a serde_json copy of
/// `value`) holds `target`.
fn counterpart<'v>(
    copy: &serde_json::Value,
    value: &'v Value<'v>,
    target: &serde_json::Value,
) -> Option<&'v Value<'v>> {
    if std::ptr::eq(copy, target) {
        return Some(value);
    }
    match (copy, value) {
        (serde_json::Value::Array(copies), Value::Array(items)) => copies
            .iter()
            .zip(items)
            .find_map(|(copy, item)| counterpart(copy, item, target)),
        (serde_json::Value::Object(copies), Value::Object(members)) => copies
            .iter()
            .find_map(|(name, copy)| counterpart(copy, member(members, name)?, target)),
        _ => None,
    }
}

/// `walk` for paths that select at most one value, without collecting.
fn step_one<'v>(
    steps: &[Step],
    mut value: &'v Value<'v>,
) -> Result<Option<&'v Value<'v>>, StepMismatch> {
    for (at, step) in steps.iter().enumerate() {
        let next = match (step, value) {
            (_, Value::Null) => return Ok(None),
            (Step::Name(name), Value::Object(members)) => member(members, name),
            (Step::Index(index), Value::Array(items)) => {
                let resolved = if *index < 0 {
                    items.len() as i64 + index
                } else {
                    *index
                };
                usize::try_from(resolved).ok().and_then(|i| items.get(i))
            }
            (Step::Each, _) => {
                let mut found = Vec::new();
                walk(steps, at, value, &mut found)?;
                return Ok(found.into_iter().next());
            }
            (Step::Name(_), _) => return Err(mismatch(steps, at, "an object", value)),
            (Step::Index(_), _) => return Err(mismatch(steps, at, "an array", value)),
        };
        match next {
            Some(next) => value = next,
            None => return Ok(None),
        }
    }
    Ok(Some(value))
}

fn mismatch(steps: &[Step], at: usize, expected: &'static str, value: &Value) -> StepMismatch {
    StepMismatch {
        at: path_text(&steps[..at]),
        mismatch: Mismatch {
            expected,
            found: describe(value),
        },
    }
}

fn walk<'v>(
    steps: &[Step],
    at: usize,
    value: &'v Value<'v>,
    out: &mut Vec<&'v Value<'v>>,
) -> Result<(), StepMismatch> {
    let Some(step) = steps.get(at) else {
        out.push(value);
        return Ok(());
    };
    if value.is_null() {
        return Ok(()); // null is absent: nothing below it
    }
    let wrong = |expected: &'static str| mismatch(steps, at, expected, value);
    match step {
        Step::Name(name) => match value {
            Value::Object(members) => match member(members, name) {
                Some(member) => walk(steps, at + 1, member, out),
                None => Ok(()),
            },
            _ => Err(wrong("an object")),
        },
        Step::Index(index) => match value {
            Value::Array(items) => {
                let resolved = if *index < 0 {
                    items.len() as i64 + index
                } else {
                    *index
                };
                match usize::try_from(resolved).ok().and_then(|i| items.get(i)) {
                    Some(item) => walk(steps, at + 1, item, out),
                    None => Ok(()),
                }
            }
            _ => Err(wrong("an array")),
        },
        Step::Each => match value {
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| walk(steps, at + 1, item, out)),
            _ => Err(wrong("an array")),
        },
    }
}

/// `$.a[0][*]` — steps written back as a path, for messages.
pub fn path_text(steps: &[Step]) -> String {
    let mut text = String::from("$");
    for step in steps {
        match step {
            Step::Name(name) => {
                text.push('.');
                text.push_str(name);
            }
            Step::Index(index) => text.push_str(&format!("[{index}]")),
            Step::Each => text.push_str("[*]"),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonpath_rust::parser::parse_json_path;
    use serde_json::json;

    fn check(path: &str, event: serde_json::Value, expected: Result<Vec<serde_json::Value>, &str>) {
        let selector = Selector::compile(&parse_json_path(path).unwrap());
        let event = Value::from(&event);
        let mut found = Vec::new();
        let got = selector
            .select(&event, &mut found)
            .map(|()| {
                found
                    .into_iter()
                    .map(serde_json::Value::from)
                    .collect::<Vec<_>>()
            })
            .map_err(|e| {
                format!(
                    "{}: expected {}, found {}",
                    e.at, e.mismatch.expected, e.mismatch.found
                )
            });
        assert_eq!(got, expected.map_err(str::to_owned), "{path}");
    }

    #[test]
    fn walks_names_indexes_and_arrays() {
        let event = json!({"a": {"b": [1, 2, 3]}, "n": null});
        check(
            "$.a.b[*]",
            event.clone(),
            Ok(vec![json!(1), json!(2), json!(3)]),
        );
        check("$.a.b[-1]", event.clone(), Ok(vec![json!(3)]));
        check("$.missing.x", event.clone(), Ok(vec![]));
        check("$.n.x", event.clone(), Ok(vec![]));
        check("$", event.clone(), Ok(vec![event.clone()]));
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let event = json!({"segments": "none", "creator": 7});
        check(
            "$.segments[*]",
            event.clone(),
            Err("$.segments: expected an array, found string \"none\""),
        );
        check(
            "$.creator.userAgent",
            event,
            Err("$.creator: expected an object, found number 7"),
        );
    }

    #[test]
    fn falls_back_to_jsonpath_rust_for_filters() {
        let event = json!({"items": [{"k": 1}, {"k": 2}, {"k": 3}]});
        check(
            "$.items[?@.k > 1].k",
            event.clone(),
            Ok(vec![json!(2), json!(3)]),
        );
        check("$..k", event, Ok(vec![json!(1), json!(2), json!(3)]));
    }

    #[test]
    fn of_duplicate_member_names_the_last_counts() {
        let text = r#"{"a": 1, "b": {"c": "first"}, "a": 2, "b": {"c": "last"}}"#;
        let event: Value = serde_json::from_str(text).unwrap();
        for (path, expected) in [("$.a", json!(2)), ("$.b.c", json!("last"))] {
            let selector = Selector::compile(&parse_json_path(path).unwrap());
            let found = selector.get(&event).unwrap().map(serde_json::Value::from);
            assert_eq!(found, Some(expected), "{path}");
        }
        // Through jsonpath-rust as well.
        let selector = Selector::compile(&parse_json_path("$[?@.c == 'last'].c").unwrap());
        let mut found = Vec::new();
        selector.select(&event, &mut found).unwrap();
        assert_eq!(found, [&Value::Str("last".into())]);
    }
}
