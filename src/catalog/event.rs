//! Event schemas: JSON Schemas of the events a mapping reads, used to prove
//! at validation time that every path a mapping reads can exist.
//!
//! Only the structure matters here (`properties`, `items`, `type`, `$ref`,
//! `oneOf`/`anyOf`/`allOf`); values are checked by the interpreter's own type
//! rules at run time. A property name not declared in `properties` cannot
//! exist unless the object schema allows others with `additionalProperties`
//! set to `true` or a schema: the event schema documents what mappings may use.

use miette::SourceSpan;
use serde_json::Value;

use super::CatalogError;

/// One parsed event schema, named after its file (`cobrowse-session`).
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub name: String,
    root: Value,
}

/// One step of a path through an event: a member name, or any element of
/// an array. `Unknown` stops checking (recursive descent, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Property(String),
    Item,
    Unknown,
}

/// Why a path cannot exist in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaMismatch {
    /// The part of the path that does exist, e.g. `$.segments[*]`.
    pub parent: String,
    /// What the next step asked for and why it fails.
    pub reason: String,
    /// The property name asked for, when a name was asked for.
    pub name: Option<String>,
    /// Property names declared where the name was asked for.
    pub candidates: Vec<String>,
}

impl EventSchema {
    pub fn parse(name: &str, text: &str) -> Result<EventSchema, CatalogError> {
        let root: Value = serde_json::from_str(text).map_err(|error| CatalogError::Syntax {
            message: format!("event schema {name}: {error}"),
            span: offset_of(text, error.line(), error.column()).map(SourceSpan::from),
        })?;
        Ok(EventSchema {
            name: name.to_owned(),
            root,
        })
    }

    /// Follows `steps` from the event's root; `Err` names the first step that
    /// cannot match.
    pub fn check_path(&self, steps: &[PathStep]) -> Result<(), SchemaMismatch> {
        let mut here = self.alternatives(&self.root);
        let mut walked = String::from("$");
        for step in steps {
            let mut next = Vec::new();
            match step {
                PathStep::Unknown => return Ok(()),
                PathStep::Property(name) => {
                    let objects: Vec<&Value> = here
                        .iter()
                        .copied()
                        .filter(|node| may_be(node, "object"))
                        .collect();
                    if objects.is_empty() {
                        return Err(self.mismatch(
                            &walked,
                            format!("`{walked}` is not an object"),
                            vec![],
                        ));
                    }
                    let mut declared = Vec::new();
                    for node in objects {
                        match node.get("properties").and_then(|p| p.get(name)) {
                            Some(property) => next.extend(self.alternatives(property)),
                            None if allows_other_properties(node) => return Ok(()),
                            None => declared.extend(
                                node.get("properties")
                                    .and_then(Value::as_object)
                                    .into_iter()
                                    .flat_map(|p| p.keys().cloned()),
                            ),
                        }
                    }
                    if next.is_empty() {
                        let reason = format!("`{walked}` has no property `{name}`");
                        let mut mismatch = self.mismatch(&walked, reason, declared);
                        mismatch.name = Some(name.clone());
                        return Err(mismatch);
                    }
                    walked = if walked == "$" {
                        format!("$.{name}")
                    } else {
                        format!("{walked}.{name}")
                    };
                }
                PathStep::Item => {
                    let arrays: Vec<&Value> = here
                        .iter()
                        .copied()
                        .filter(|node| may_be(node, "array"))
                        .collect();
                    if arrays.is_empty() {
                        return Err(self.mismatch(
                            &walked,
                            format!("`{walked}` is not an array"),
                            vec![],
                        ));
                    }
                    for node in arrays {
                        match node.get("items") {
                            Some(items) => next.extend(self.alternatives(items)),
                            None => return Ok(()),
                        }
                    }
                    walked.push_str("[*]");
                }
            }
            here = next;
        }
        Ok(())
    }

    fn mismatch(&self, walked: &str, reason: String, candidates: Vec<String>) -> SchemaMismatch {
        SchemaMismatch {
            parent: walked.to_owned(),
            reason,
            name: None,
            candidates,
        }
    }

    /// The schema itself and every schema it may stand for: `$ref` targets
    /// and the branches of `oneOf`, `anyOf` and `allOf`.
    fn alternatives<'s>(&'s self, node: &'s Value) -> Vec<&'s Value> {
        let mut found = Vec::new();
        let mut pending = vec![node];
        while let Some(node) = pending.pop() {
            if found.len() > 64 {
                break; // a cyclic $ref; what was found is enough to judge
            }
            if let Some(target) = node.get("$ref").and_then(Value::as_str)
                && let Some(target) = target
                    .strip_prefix('#')
                    .and_then(|ptr| self.root.pointer(ptr))
            {
                pending.push(target);
            }
            for keyword in ["oneOf", "anyOf", "allOf"] {
                if let Some(branches) = node.get(keyword).and_then(Value::as_array) {
                    pending.extend(branches);
                }
            }
            found.push(node);
        }
        found
    }
}

/// Whether a schema node may describe a JSON value of type `ty`.
fn may_be(node: &Value, ty: &str) -> bool {
    if node.get("$ref").is_some()
        || ["oneOf", "anyOf", "allOf"]
            .iter()
            .any(|k| node.get(k).is_some())
    {
        // Decided by the alternatives, which are examined on their own.
        return false;
    }
    match node.get("type") {
        Some(Value::String(declared)) => declared == ty,
        Some(Value::Array(declared)) => declared.iter().any(|d| d == ty),
        _ => match node.get("enum").or_else(|| node.get("const")) {
            Some(Value::Array(values)) => values.iter().any(|v| json_type(v) == ty),
            Some(value) if node.get("const").is_some() => json_type(value) == ty,
            _ => true,
        },
    }
}

fn allows_other_properties(node: &Value) -> bool {
    match node.get("additionalProperties") {
        Some(Value::Bool(allowed)) => *allowed,
        Some(Value::Object(_)) => true,
        _ => node.get("properties").is_none(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The byte offset of a 1-based line and column.
fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    Some((line_start + column.saturating_sub(1)).min(text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r##"{
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "items": {"type": ["array", "null"], "items": {"$ref": "#/$defs/item"}}
        },
        "$defs": {"item": {"type": "object", "properties": {"name": {"type": "string"}}}}
    }"##;

    fn check(steps: &[PathStep], expected: Result<(), &str>) {
        let schema = EventSchema::parse("t", SCHEMA).unwrap();
        let result = schema.check_path(steps).map_err(|mismatch| mismatch.reason);
        assert_eq!(result, expected.map_err(str::to_owned));
    }

    fn name(n: &str) -> PathStep {
        PathStep::Property(n.into())
    }

    #[test]
    fn follows_properties_items_and_refs() {
        check(&[name("id")], Ok(()));
        check(&[name("items"), PathStep::Item, name("name")], Ok(()));
        check(&[name("tags"), name("anything")], Ok(()));
        check(
            &[name("items"), PathStep::Unknown, name("whatever")],
            Ok(()),
        );
    }

    #[test]
    fn names_the_first_impossible_step() {
        check(&[name("idd")], Err("`$` has no property `idd`"));
        check(&[name("id"), name("x")], Err("`$.id` is not an object"));
        check(
            &[name("items"), PathStep::Item, name("nam")],
            Err("`$.items[*]` has no property `nam`"),
        );
        check(&[name("id"), PathStep::Item], Err("`$.id` is not an array"));
    }
}
