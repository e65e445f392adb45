//! The interpreter: explodes an event along the plan's scope chain, computes
//! each scope item's values once, and emits one row per leaf item. Any type
//! error, unparseable timestamp or missing required value discards the whole
//! event with a message naming the concrete path (`$.segments[1].index`),
//! what was expected and what was found.

use std::sync::Arc;

use serde_json_borrow::Value;

use super::{Cell, Conversion, Default, DimensionKind, Plan, Target, UrlPart, ValuePlan};
use crate::convert::{self, Mismatch};

/// One fact row: the plan's fact columns in order, and per dimension the
/// natural key values of its member (static members already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub values: Vec<Cell>,
    pub members: Vec<Member>,
}

/// A dimension member's natural key values, shared by the rows that have it
/// (and each value with the cell it came from).
pub type Member = Arc<[Arc<str>]>;

/// Why an event cannot be loaded. Its `Display` is the stored error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("not UTF-8: invalid bytes at offset {0}")]
    NotUtf8(usize),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("the event must be a JSON object, found {0}")]
    NotAnObject(String),
    #[error("`{path}`: expected {expected}, found {found}")]
    WrongType {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("`{path}` is required (column {column}) but is absent or empty")]
    Required { path: String, column: String },
    #[error("`{path}`: {value} does not fit column {column} ({ty}: {min} to {max})")]
    OutOfRange {
        path: String,
        column: String,
        value: i64,
        ty: &'static str,
        min: i64,
        max: i64,
    },
}

/// Where the interpreter is in one event: per scope depth, the current item.
struct Walk<'v> {
    items: Vec<Item<'v>>,
    /// Per depth, the values of the scope's `values`, in that order.
    computed: Vec<Vec<Cell>>,
    /// Per depth, how many items have been seen in the whole event.
    ordinals: Vec<usize>,
    /// Per dimension, the member of the current items.
    members: Vec<Member>,
    /// The last URL split, keyed by the address of its JSON value: a page's
    /// host, path and query come from one parse.
    last_url: std::cell::RefCell<Option<(usize, Option<convert::UrlParts>)>>,
    rows: Vec<Row>,
}

#[derive(Clone, Copy)]
enum Item<'v> {
    /// An outer scope that selected nothing.
    Empty,
    Value {
        value: &'v Value<'v>,
        position: usize,
        ordinal: usize,
    },
}

impl Plan {
    /// Interprets one event. It is parsed by serde_json into a tree whose
    /// strings borrow from `payload`: fewer allocations than serde_json's
    /// own `Value`, the bulk of the cost of interpreting.
    pub fn apply(&self, payload: &[u8]) -> Result<Vec<Row>, Discard> {
        let text =
            std::str::from_utf8(payload).map_err(|error| Discard::NotUtf8(error.valid_up_to()))?;
        let event: Value =
            serde_json::from_str(text).map_err(|error| Discard::Json(error.to_string()))?;
        self.apply_value(&event)
    }

    /// Interprets one already parsed event.
    pub fn apply_value(&self, event: &Value) -> Result<Vec<Row>, Discard> {
        if !event.is_object() {
            return Err(Discard::NotAnObject(convert::describe(event)));
        }
        let depth = self.scopes.len();
        let mut walk = Walk {
            items: vec![Item::Empty; depth],
            computed: vec![Vec::new(); depth],
            ordinals: vec![0; depth],
            members: vec![Arc::from(Vec::new()); self.dimensions.len()],
            last_url: std::cell::RefCell::new(None),
            rows: Vec::new(),
        };
        self.explode(0, event, &mut walk)?;
        Ok(walk.rows)
    }

    fn explode<'v>(
        &self,
        depth: usize,
        parent: &'v Value<'v>,
        walk: &mut Walk<'v>,
    ) -> Result<(), Discard> {
        let scope = &self.scopes[depth];
        let mut items = Vec::new();
        scope.each.select(parent, &mut items).map_err(|error| {
            let at = self.location(depth.saturating_sub(1), walk, &error.at);
            wrong_type(at, error.mismatch)
        })?;
        if items.is_empty() {
            if scope.outer {
                return self.empty_from(depth, walk);
            }
            return Ok(());
        }
        for (position, value) in items.into_iter().enumerate() {
            let ordinal = walk.ordinals[depth];
            walk.ordinals[depth] += 1;
            walk.items[depth] = Item::Value {
                value,
                position,
                ordinal,
            };
            self.compute(depth, walk)?;
            if depth + 1 < self.scopes.len() {
                self.explode(depth + 1, value, walk)?;
            } else {
                self.emit(walk);
            }
        }
        Ok(())
    }

    /// Scope `depth` and all below it are empty: one row with their
    /// `missing` values.
    fn empty_from(&self, depth: usize, walk: &mut Walk) -> Result<(), Discard> {
        for level in depth..self.scopes.len() {
            walk.items[level] = Item::Empty;
            self.compute(level, walk)?;
        }
        self.emit(walk);
        Ok(())
    }

    fn compute(&self, depth: usize, walk: &mut Walk) -> Result<(), Discard> {
        let mut cells = std::mem::take(&mut walk.computed[depth]);
        cells.clear();
        for &index in &self.scopes[depth].values {
            cells.push(self.value(&self.values[index], walk)?);
        }
        walk.computed[depth] = cells;
        // A member changes only with the deepest scope its columns read.
        for (at, dimension) in self.dimensions.iter().enumerate() {
            if dimension.level == depth {
                let values: Vec<Arc<str>> = dimension
                    .columns
                    .iter()
                    .map(|(_, index)| {
                        let value = &self.values[*index];
                        member_value(&dimension.kind, &walk.computed[value.scope][value.slot])
                    })
                    .collect();
                walk.members[at] = values.into();
            }
        }
        Ok(())
    }

    fn value(&self, plan: &ValuePlan, walk: &Walk) -> Result<Cell, Discard> {
        let Item::Value { value: item, .. } = walk.items[plan.scope] else {
            return Ok(plan.missing.clone());
        };
        let found = match &plan.path {
            Some((selector, text)) => selector
                .get(item)
                .map_err(|error| {
                    wrong_type(self.location(plan.scope, walk, &error.at), error.mismatch)
                })?
                .map(|value| (value, text)),
            None => None,
        };
        let given = match found {
            Some((value, text)) => {
                Some(convert_value(plan.convert, value).map_err(|mismatch| {
                    wrong_type(self.location(plan.scope, walk, text), mismatch)
                })?)
            }
            None => None,
        };
        let cell = match given {
            // A given empty string means "none": NULL, and no default.
            Some(Cell::Text(text)) if plan.empty_is_null && text.is_empty() => Cell::Null,
            Some(cell) => cell,
            None => match &plan.default {
                Some(default) => self.derive(default, plan.scope, item, walk)?,
                None => Cell::Null,
            },
        };
        let path = || plan.path.as_ref().map_or("$", |(_, text)| text.as_str());
        let cell = match (cell, plan.target) {
            (
                Cell::Text(text),
                Target::Text {
                    max_chars: Some(max),
                },
            ) if text.len() > max => Cell::Text(convert::truncate(text.to_string(), max).into()),
            (Cell::Int(value), Target::Integer { name, min, max }) if !plan.target.fits(value) => {
                return Err(Discard::OutOfRange {
                    path: self.location(plan.scope, walk, path()),
                    column: plan.column.clone(),
                    value,
                    ty: name,
                    min,
                    max,
                });
            }
            (cell, _) => cell,
        };
        let empty = match &cell {
            Cell::Null => true,
            Cell::Text(text) => text.is_empty(),
            Cell::Int(_) => false,
        };
        if plan.required && empty {
            return Err(Discard::Required {
                path: self.location(plan.scope, walk, path()),
                column: plan.column.clone(),
            });
        }
        Ok(cell)
    }

    fn derive(
        &self,
        default: &Default,
        scope: usize,
        item: &Value,
        walk: &Walk,
    ) -> Result<Cell, Discard> {
        Ok(match default {
            Default::Constant(cell) => cell.clone(),
            Default::Position(of) | Default::Ordinal(of) => match walk.items[*of] {
                Item::Empty => Cell::Null,
                Item::Value {
                    position, ordinal, ..
                } => {
                    let n = if matches!(default, Default::Position(_)) {
                        position
                    } else {
                        ordinal
                    };
                    Cell::Int(n as i64)
                }
            },
            Default::UrlPart(part, selector, text) => {
                let at = |error_at: &str| self.location(scope, walk, error_at);
                let Some(value) = selector
                    .get(item)
                    .map_err(|e| wrong_type(at(&e.at), e.mismatch))?
                else {
                    return Ok(Cell::Null);
                };
                let address = std::ptr::from_ref(value) as usize;
                let mut last = walk.last_url.borrow_mut();
                if !matches!(&*last, Some((seen, _)) if *seen == address) {
                    let url =
                        convert::text(value).map_err(|mismatch| wrong_type(at(text), mismatch))?;
                    *last = Some((address, convert::url_parts(&url)));
                }
                let Some((_, Some(parts))) = &*last else {
                    return Ok(Cell::Null);
                };
                let part = match part {
                    UrlPart::Host => parts.host.clone(),
                    UrlPart::Path => Some(parts.path.clone()),
                    UrlPart::Query => parts.query.clone(),
                };
                part.map_or(Cell::Null, |text| Cell::Text(text.into()))
            }
            Default::Quantified { all, path, equals } => {
                let mut found = Vec::new();
                path.select(item, &mut found)
                    .map_err(|e| wrong_type(self.location(scope, walk, &e.at), e.mismatch))?;
                let matches = |value: &Value| match equals {
                    Cell::Text(text) => value.as_str() == Some(&**text),
                    Cell::Int(number) => value.as_i64() == Some(*number),
                    Cell::Null => value.is_null(),
                };
                let mut present = found.into_iter().filter(|value| !value.is_null());
                let result = if *all {
                    present.all(matches)
                } else {
                    present.any(matches)
                };
                Cell::Int(i64::from(result))
            }
        })
    }

    fn emit(&self, walk: &mut Walk) {
        let cell = |index: usize| {
            let value = &self.values[index];
            walk.computed[value.scope][value.slot].clone()
        };
        let values = self.columns.iter().map(|(_, index)| cell(*index)).collect();
        let members = walk.members.clone();
        walk.rows.push(Row { values, members });
    }

    /// The concrete path of `relative` read in the current item of scope
    /// `depth`: `$.segments[1]` + `$.index` → `$.segments[1].index`.
    fn location(&self, depth: usize, walk: &Walk, relative: &str) -> String {
        let mut text = String::from("$");
        for level in 0..=depth.min(self.scopes.len() - 1) {
            let each = self.scopes[level].each_text.trim_start_matches('$');
            match walk.items[level] {
                Item::Value { position, .. } if level <= depth => {
                    text.push_str(&each.replacen("[*]", &format!("[{position}]"), 1));
                }
                _ => text.push_str(each),
            }
        }
        text.push_str(relative.trim_start_matches('$'));
        text
    }
}

fn convert_value(conversion: Conversion, value: &Value) -> Result<Cell, Mismatch> {
    Ok(match conversion {
        Conversion::String => Cell::Text(Arc::from(&*convert::text(value)?)),
        Conversion::Int => Cell::Int(convert::int(value)?),
        Conversion::Number => Cell::Text(Arc::from(convert::number(value)?.as_str())),
        Conversion::Flag => Cell::Int(convert::flag(value)?),
        Conversion::EpochSeconds => Cell::Int(convert::epoch_seconds(value)?),
        Conversion::DateTimeKey { interval } => Cell::Int(convert::interval_start(
            convert::epoch_seconds(value)?,
            interval,
        )),
    })
}

/// The natural key value a dimension member gets for one attribute.
fn member_value(kind: &DimensionKind, cell: &Cell) -> Arc<str> {
    let text = match cell {
        Cell::Null => None,
        Cell::Int(number) => Some(Arc::from(number.to_string())),
        Cell::Text(text) => Some(text.clone()),
    };
    match kind {
        DimensionKind::Static { members, otherwise } => match text {
            Some(text) if members.iter().any(|member| **member == *text) => text,
            _ => Arc::from(otherwise.as_str()),
        },
        DimensionKind::GetOrCreate { absent } => text.unwrap_or_else(|| Arc::from(absent.as_str())),
    }
}

fn wrong_type(path: String, mismatch: Mismatch) -> Discard {
    Discard::WrongType {
        path,
        expected: mismatch.expected,
        found: mismatch.found,
    }
}
