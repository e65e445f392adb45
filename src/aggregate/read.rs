//! The raw aggregate: what the author wrote, with spans, read with the
//! mapping reader so that every structural problem is reported at its
//! place and reading carries on.

use marked_yaml::Node;
use miette::SourceSpan;

use super::AggregateError;
use crate::mapping::{Constant, MappingError, Reader, Sp};

#[derive(Debug, Clone)]
pub struct RawAggregate {
    pub span: SourceSpan,
    pub name: Option<Sp<String>>,
    pub feature: Option<Sp<String>>,
    pub fact: Option<Sp<String>>,
    pub time_key: Option<Sp<String>>,
    pub levels: Option<Sp<Vec<Sp<String>>>>,
    pub joins: Vec<RawJoin>,
    pub group_by: Vec<(Sp<String>, Sp<String>)>,
    pub measures: Vec<RawMeasure>,
    pub roll_up: bool,
}

#[derive(Debug, Clone)]
pub struct RawJoin {
    pub alias: Sp<String>,
    pub table: Option<Sp<String>>,
    pub on: Vec<(Sp<String>, Sp<String>)>,
    pub no_match: Vec<(Sp<String>, Sp<Constant>)>,
}

#[derive(Debug, Clone)]
pub struct RawMeasure {
    pub name: Sp<String>,
    pub kind: Option<RawKind>,
    pub filters: Vec<(Sp<String>, RawTest)>,
    pub once_per: Vec<Sp<String>>,
}

#[derive(Debug, Clone)]
pub enum RawKind {
    Count,
    CountDistinct(Vec<Sp<String>>),
    Sum(RawOperand),
    Min(RawOperand),
    Max(RawOperand),
}

#[derive(Debug, Clone)]
pub enum RawOperand {
    Column(Sp<String>),
    Difference(Sp<String>, Sp<String>),
}

#[derive(Debug, Clone)]
pub enum RawTest {
    Equals(Sp<Constant>),
    AtLeast(Sp<i64>),
    AtMost(Sp<i64>),
}

const AGGREGATE_KEYS: &[&str] = &[
    "name",
    "description",
    "feature",
    "fact",
    "time_key",
    "levels",
    "joins",
    "group_by",
    "measures",
    "roll_up",
];
const JOIN_KEYS: &[&str] = &["table", "on", "no_match"];
pub(super) const MEASURES: &[&str] = &["count", "count_distinct", "sum", "min", "max"];
const MEASURE_KEYS: &[&str] = &[
    "count",
    "count_distinct",
    "sum",
    "min",
    "max",
    "where",
    "once_per",
];
const TEST_KEYS: &[&str] = &["at_least", "at_most"];

/// Reads an aggregate file; the raw aggregate is returned whenever the
/// YAML parses, with every structural problem found.
pub fn read(text: &str) -> (Option<RawAggregate>, Vec<AggregateError>) {
    let (root, mut reader) = Reader::document(text);
    let mut errors = Vec::new();
    let raw = root.map(|root| aggregate(&mut reader, &root, &mut errors));
    errors.extend(reader.errors.drain(..).map(AggregateError::from));
    (raw, errors)
}

fn aggregate(reader: &mut Reader, root: &Node, errors: &mut Vec<AggregateError>) -> RawAggregate {
    let span = reader.line_span(root);
    let mut raw = RawAggregate {
        span,
        name: None,
        feature: None,
        fact: None,
        time_key: None,
        levels: None,
        joins: Vec::new(),
        group_by: Vec::new(),
        measures: Vec::new(),
        roll_up: false,
    };
    let Some(top) = reader.fields(root, "aggregate", span, "the aggregate", AGGREGATE_KEYS) else {
        return raw;
    };
    raw.name = reader
        .required(
            &top,
            "name",
            "name the aggregate; its tables are `<name>_<LEVEL>`",
        )
        .and_then(|node| reader.string("name", node));
    raw.feature = reader
        .required(
            &top,
            "feature",
            "name the feature that enables it: `feature: cobrowse` for `enable-cobrowse` in [agg-feature]",
        )
        .and_then(|node| reader.string("feature", node));
    raw.fact = reader
        .required(&top, "fact", "name the fact table it summarises")
        .and_then(|node| reader.string("fact", node));
    raw.time_key = reader
        .required(
            &top,
            "time_key",
            "name the fact column holding the calendar interval key, e.g. `time_key: START_DATE_TIME_KEY`",
        )
        .and_then(|node| reader.string("time_key", node));
    raw.levels = reader
        .required(
            &top,
            "levels",
            "list the levels kept: `levels: [SUBHR, HOUR, DAY, MONTH]`",
        )
        .and_then(|node| reader.strings("levels", node));
    raw.roll_up = top
        .get("roll_up")
        .and_then(|node| reader.flag("roll_up", node))
        .unwrap_or(false);
    if let Some(node) = top.get("joins") {
        raw.joins = reader.entries(node, "joins", |reader, alias, node| {
            join(reader, alias, node)
        });
    }
    if let Some(node) = top.get("group_by") {
        raw.group_by = reader.entries(node, "group_by", |reader, column, node| {
            reader
                .string(&column.value, node)
                .map(|source| (column, source))
        });
    }
    if let Some(node) = reader.required(
        &top,
        "measures",
        "declare at least one measure: `measures: {ROWS: {count: rows}}`",
    ) {
        raw.measures = reader.entries(node, "measures", |reader, name, node| {
            measure(reader, name, node, errors)
        });
    }
    raw
}

fn join(reader: &mut Reader, alias: Sp<String>, node: &Node) -> Option<RawJoin> {
    let context = format!("join `{}`", alias.value);
    let fields = reader.fields(node, &alias.value, alias.span, &context, JOIN_KEYS)?;
    let table = reader
        .required(
            &fields,
            "table",
            "name the joined table: `table: IXN_AGENT`",
        )
        .and_then(|node| reader.string("table", node));
    let on = match reader.required(
        &fields,
        "on",
        "pair the joined table's columns with the fact's: `on: {JOINED_COLUMN: FACT_COLUMN}`",
    ) {
        Some(node) => reader.entries(node, "on", |reader, column, node| {
            reader
                .string(&column.value, node)
                .map(|fact| (column, fact))
        }),
        None => Vec::new(),
    };
    let no_match = match fields.get("no_match") {
        Some(node) => reader.entries(node, "no_match", |reader, column, node| {
            reader
                .constant(&column.value, node)
                .map(|value| (column, value))
        }),
        None => Vec::new(),
    };
    Some(RawJoin {
        alias,
        table,
        on,
        no_match,
    })
}

fn measure(
    reader: &mut Reader,
    name: Sp<String>,
    node: &Node,
    errors: &mut Vec<AggregateError>,
) -> Option<RawMeasure> {
    let context = format!("measure `{}`", name.value);
    let fields = reader.fields(node, &name.value, name.span, &context, MEASURE_KEYS)?;
    let chosen: Vec<&str> = MEASURES
        .iter()
        .copied()
        .filter(|key| fields.get(key).is_some())
        .collect();
    let kind = match chosen.as_slice() {
        [key] => {
            let node = fields.get(key)?;
            match *key {
                "count" => match reader.string("count", node) {
                    Some(what) if what.value == "rows" => Some(RawKind::Count),
                    Some(what) => {
                        errors.push(AggregateError::Invalid {
                            message: format!("`count: {}` is not a count", what.value),
                            span: what.span,
                            help: Some(
                                "write `count: rows`, or `count_distinct: [COLUMN, ...]`".into(),
                            ),
                        });
                        None
                    }
                    None => None,
                },
                "count_distinct" => reader
                    .strings("count_distinct", node)
                    .map(|columns| RawKind::CountDistinct(columns.value)),
                "sum" => operand(reader, "sum", node).map(RawKind::Sum),
                "min" => operand(reader, "min", node).map(RawKind::Min),
                _ => operand(reader, "max", node).map(RawKind::Max),
            }
        }
        _ => {
            reader.errors.push(MappingError::MissingKey {
                key: "count",
                context: context.clone(),
                span: name.span,
                help: format!(
                    "a measure has exactly one of {}",
                    crate::diagnostic::quoted_list(MEASURES)
                ),
            });
            None
        }
    };
    let filters = match fields.get("where") {
        Some(node) => reader.entries(node, "where", |reader, column, node| {
            test(reader, &column, node).map(|test| (column, test))
        }),
        None => Vec::new(),
    };
    let once_per = fields
        .get("once_per")
        .and_then(|node| reader.strings("once_per", node))
        .map(|list| list.value)
        .unwrap_or_default();
    Some(RawMeasure {
        name,
        kind,
        filters,
        once_per,
    })
}

fn operand(reader: &mut Reader, key: &str, node: &Node) -> Option<RawOperand> {
    if node.as_mapping().is_none() {
        return reader.string(key, node).map(RawOperand::Column);
    }
    let span = reader.line_span(node);
    let fields = reader.fields(node, key, span, &format!("`{key}`"), &["difference"])?;
    let list = reader
        .required(
            &fields,
            "difference",
            "`{difference: [END_COLUMN, START_COLUMN]}` is END − START",
        )
        .and_then(|node| reader.strings("difference", node))?;
    match <[Sp<String>; 2]>::try_from(list.value) {
        Ok([minuend, subtrahend]) => Some(RawOperand::Difference(minuend, subtrahend)),
        Err(_) => {
            reader.errors.push(MappingError::InvalidType {
                key: "difference".into(),
                expected: "two columns, `[END, START]`",
                found: "another number of columns".into(),
                span: list.span,
            });
            None
        }
    }
}

fn test(reader: &mut Reader, column: &Sp<String>, node: &Node) -> Option<RawTest> {
    if node.as_mapping().is_none() {
        return reader.constant(&column.value, node).map(RawTest::Equals);
    }
    let context = format!("filter on `{}`", column.value);
    let fields = reader.fields(node, &column.value, column.span, &context, TEST_KEYS)?;
    if let Some(node) = fields.get("at_least") {
        return reader.integer("at_least", node).map(RawTest::AtLeast);
    }
    if let Some(node) = fields.get("at_most") {
        return reader.integer("at_most", node).map(RawTest::AtMost);
    }
    reader.errors.push(MappingError::MissingKey {
        key: "at_least",
        context,
        span: column.span,
        help: "compare with a value (`COLUMN: 1`), `{at_least: N}` or `{at_most: N}`".into(),
    });
    None
}
