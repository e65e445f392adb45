//! Resolves a raw aggregate against the catalog, reporting every problem:
//! unknown tables, joins, columns and levels (with suggestions), measures
//! over non-integer columns, filters of the wrong type, group-by columns
//! that may be NULL, and column names used twice.

use crate::calendar::Level;
use crate::catalog::{Catalog, Column, ColumnType, Role, Table};
use crate::diagnostic::suggest;
use crate::mapping::{Constant, MappingError, Sp};

use super::read::{RawAggregate, RawKind, RawOperand, RawTest};
use super::{
    Aggregate, AggregateError, ColumnRef, Filter, Group, Join, Measure, MeasureKind, Operand,
    TIME_COLUMN, Test,
};

/// Validates `raw`; `hash` identifies the file's text.
pub fn validate(
    raw: &RawAggregate,
    catalog: &Catalog,
    hash: String,
) -> Result<Aggregate, Vec<AggregateError>> {
    let mut v = Validator {
        catalog,
        errors: Vec::new(),
        fact: None,
        joins: Vec::new(),
        read: Vec::new(),
    };
    let fact = raw
        .fact
        .as_ref()
        .and_then(|name| v.table(name, Some(Role::Fact)));
    v.fact = fact;
    for join in &raw.joins {
        let table = join.table.as_ref().and_then(|name| v.table(name, None));
        v.joins.push((join.alias.value.clone(), table));
    }
    let joins: Vec<Join> = raw
        .joins
        .iter()
        .zip(0..)
        .map(|(join, at)| v.join(join, at))
        .collect();

    let time_key = raw.time_key.as_ref().and_then(|column| {
        let spec = v.column(&v.fact_ref(column))?;
        v.integer(column, spec.ty, "the time key");
        Some(column.value.clone())
    });

    let mut levels = Vec::new();
    if let Some(list) = &raw.levels {
        for name in &list.value {
            match Level::from_name(&name.value) {
                Some(level) if levels.contains(&level) => v.errors.push(AggregateError::Invalid {
                    message: format!("level `{}` is listed twice", name.value),
                    span: name.span,
                    help: None,
                }),
                Some(level) => levels.push(level),
                None => v.errors.push(AggregateError::UnknownLevel {
                    level: name.value.clone(),
                    span: name.span,
                    help: suggest(&name.value, Level::ALL.iter().map(|l| l.name())),
                }),
            }
        }
        if list.value.is_empty() {
            v.errors.push(AggregateError::Invalid {
                message: "no level is listed".into(),
                span: list.span,
                help: Some("list at least one of SUBHR, HOUR, DAY, WEEK, MONTH, QRTR, YEAR".into()),
            });
        }
        levels.sort();
    }

    let mut columns: Vec<(String, Column)> = Vec::new();
    if let (Some(fact), Some(time_key)) = (v.fact, &time_key)
        && let Some(spec) = fact.column(time_key)
    {
        columns.push((
            TIME_COLUMN.to_owned(),
            Column {
                ty: spec.ty,
                nullable: false,
            },
        ));
    }
    let mut names: Vec<String> = vec![TIME_COLUMN.to_owned()];
    let mut unique = |v: &mut Validator, name: &Sp<String>| {
        if names.contains(&name.value) {
            v.errors.push(AggregateError::DuplicateColumn {
                column: name.value.clone(),
                span: name.span,
            });
        }
        names.push(name.value.clone());
    };

    let mut group_by = Vec::new();
    for (name, source) in &raw.group_by {
        unique(&mut v, name);
        let Some(source_ref) = v.reference(source) else {
            continue;
        };
        let Some(spec) = v.column(&source_ref) else {
            continue;
        };
        let source_ref = source_ref.value;
        let no_match = source_ref
            .join
            .and_then(|at| joins.get(at))
            .and_then(|join| join.no_match(&source_ref.column));
        let nullable = match source_ref.join {
            None => spec.nullable,
            Some(_) => no_match.is_none(),
        };
        if nullable {
            let help = match source_ref.join {
                None => "group by a NOT NULL column; the aggregate's key cannot hold NULL".into(),
                Some(at) => format!(
                    "rows without a match in `{}` have no value: give it under `no_match`, e.g. `no_match: {{{}: 0}}`",
                    raw.joins[at].alias.value, source_ref.column
                ),
            };
            v.errors.push(AggregateError::NullableGroup {
                column: source.value.clone(),
                span: source.span,
                help,
            });
        }
        columns.push((
            name.value.clone(),
            Column {
                ty: spec.ty,
                nullable: false,
            },
        ));
        group_by.push(Group {
            name: name.value.clone(),
            source: source_ref,
        });
    }

    let mut measures = Vec::new();
    for raw_measure in &raw.measures {
        unique(&mut v, &raw_measure.name);
        let kind = raw_measure.kind.as_ref().and_then(|kind| v.kind(kind));
        let filters: Vec<Filter> = raw_measure
            .filters
            .iter()
            .filter_map(|(column, test)| v.filter(column, test))
            .collect();
        let once_per: Vec<ColumnRef> = raw_measure
            .once_per
            .iter()
            .filter_map(|column| v.known(column))
            .collect();
        if let Some(kind) = kind {
            columns.push((
                raw_measure.name.value.clone(),
                Aggregate::measure_column(&kind),
            ));
            measures.push(Measure {
                name: raw_measure.name.value.clone(),
                kind,
                filters,
                once_per,
            });
        }
    }
    if raw.measures.is_empty() {
        v.errors.push(AggregateError::Invalid {
            message: "the aggregate has no measures".into(),
            span: raw.span,
            help: Some("declare at least one: `measures: {ROWS: {count: rows}}`".into()),
        });
    }
    if let Some(feature) = &raw.feature
        && !is_feature_name(&feature.value)
    {
        v.errors.push(AggregateError::Invalid {
            message: format!("`{}` is not a feature name", feature.value),
            span: feature.span,
            help: Some(
                "a feature is lower-case letters, digits and dashes, as in `enable-cobrowse`"
                    .into(),
            ),
        });
    }

    let (errors, read_types) = (v.errors, v.read);
    match (raw.name.as_ref(), raw.feature.as_ref(), fact, time_key) {
        (Some(name), Some(feature), Some(fact), Some(time_key)) if errors.is_empty() => {
            Ok(Aggregate {
                name: name.value.clone(),
                feature: feature.value.clone(),
                fact: fact.name.clone(),
                time_key,
                levels,
                joins,
                group_by,
                measures,
                roll_up: raw.roll_up,
                content_hash: hash,
                columns,
                read_types,
            })
        }
        _ if errors.is_empty() => Err(vec![AggregateError::Invalid {
            message: "the aggregate is incomplete".into(),
            span: raw.span,
            help: None,
        }]),
        _ => Err(errors),
    }
}

fn is_feature_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

struct Validator<'c> {
    catalog: &'c Catalog,
    errors: Vec<AggregateError>,
    fact: Option<&'c Table>,
    /// Each join's alias and table (None when the table is unknown).
    joins: Vec<(String, Option<&'c Table>)>,
    /// Every column read, with its type.
    read: Vec<(ColumnRef, Column)>,
}

impl<'c> Validator<'c> {
    fn table(&mut self, name: &Sp<String>, role: Option<Role>) -> Option<&'c Table> {
        let Some(table) = self.catalog.table(&name.value) else {
            let candidates = self
                .catalog
                .tables
                .values()
                .filter(|t| role.is_none_or(|role| t.role == role))
                .map(|t| t.name.as_str());
            self.errors
                .push(AggregateError::from(MappingError::UnknownTable {
                    name: name.value.clone(),
                    span: name.span,
                    help: suggest(&name.value, candidates),
                }));
            return None;
        };
        if let Some(role) = role
            && table.role != role
        {
            self.errors
                .push(AggregateError::from(MappingError::TableRole {
                    table: table.name.clone(),
                    role: table.role.to_string(),
                    expected: "fact",
                    span: name.span,
                }));
            return None;
        }
        Some(table)
    }

    fn join(&mut self, raw: &super::read::RawJoin, at: usize) -> Join {
        let table = self.joins[at].1;
        let mut on = Vec::new();
        for (joined, fact_column) in &raw.on {
            let joined_spec = table.and_then(|_| {
                let reference = ColumnRef {
                    join: Some(at),
                    column: joined.value.clone(),
                };
                self.column_at(&reference, joined.span)
                    .map(|spec| (spec, joined))
            });
            let fact_spec = self.column(&self.fact_ref(fact_column));
            if let (Some((joined_spec, joined)), Some(fact_spec)) = (joined_spec, fact_spec)
                && joined_spec.ty.is_integer() != fact_spec.ty.is_integer()
            {
                self.errors.push(AggregateError::JoinType {
                    column: joined.value.clone(),
                    table: table.map(|t| t.name.clone()).unwrap_or_default(),
                    other: fact_column.value.clone(),
                    ty: joined_spec.ty.to_string(),
                    other_ty: fact_spec.ty.to_string(),
                    span: fact_column.span,
                });
            }
            on.push((joined.value.clone(), fact_column.value.clone()));
        }
        if raw.on.is_empty() {
            self.errors.push(AggregateError::Invalid {
                message: format!("join `{}` has no join columns", raw.alias.value),
                span: raw.alias.span,
                help: Some("pair columns under `on: {JOINED_COLUMN: FACT_COLUMN}`".into()),
            });
        }
        let mut no_match = Vec::new();
        for (column, value) in &raw.no_match {
            let reference = ColumnRef {
                join: Some(at),
                column: column.value.clone(),
            };
            if table.is_some()
                && let Some(spec) = self.column_at(&reference, column.span)
            {
                self.check_constant(column, spec.ty, value);
            }
            no_match.push((column.value.clone(), value.value.clone()));
        }
        Join {
            alias: raw.alias.value.clone(),
            table: table.map_or_else(
                || {
                    raw.table
                        .as_ref()
                        .map(|t| t.value.clone())
                        .unwrap_or_default()
                },
                |t| t.name.clone(),
            ),
            on,
            no_match,
        }
    }

    /// A column of the fact, for names that cannot be qualified.
    fn fact_ref(&self, column: &Sp<String>) -> Sp<ColumnRef> {
        Sp {
            value: ColumnRef {
                join: None,
                column: column.value.clone(),
            },
            span: column.span,
        }
    }

    /// `COLUMN` (of the fact) or `alias.COLUMN`.
    fn reference(&mut self, name: &Sp<String>) -> Option<Sp<ColumnRef>> {
        let Some((alias, column)) = name.value.split_once('.') else {
            return Some(self.fact_ref(name));
        };
        let Some(at) = self.joins.iter().position(|(a, _)| a == alias) else {
            self.errors.push(AggregateError::UnknownJoin {
                alias: alias.to_owned(),
                span: (name.span.offset(), alias.len()).into(),
                help: suggest(alias, self.joins.iter().map(|(a, _)| a.as_str())),
            });
            return None;
        };
        self.joins[at].1?;
        Some(Sp {
            value: ColumnRef {
                join: Some(at),
                column: column.to_owned(),
            },
            span: name.span,
        })
    }

    /// A known column, resolved.
    fn known(&mut self, name: &Sp<String>) -> Option<ColumnRef> {
        let reference = self.reference(name)?;
        self.column(&reference)?;
        Some(reference.value)
    }

    fn column(&mut self, reference: &Sp<ColumnRef>) -> Option<Column> {
        self.column_at(&reference.value, reference.span)
    }

    fn column_at(&mut self, reference: &ColumnRef, span: miette::SourceSpan) -> Option<Column> {
        let table = match reference.join {
            None => self.fact?,
            Some(at) => self.joins.get(at)?.1?,
        };
        match table.column(&reference.column) {
            Some(spec) => {
                if !self.read.iter().any(|(r, _)| r == reference) {
                    self.read.push((reference.clone(), spec.clone()));
                }
                Some(spec.clone())
            }
            None => {
                self.errors
                    .push(AggregateError::from(MappingError::UnknownColumn {
                        column: reference.column.clone(),
                        table: table.name.clone(),
                        span,
                        help: suggest(&reference.column, table.column_names()),
                    }));
                None
            }
        }
    }

    fn integer(&mut self, name: &Sp<String>, ty: ColumnType, what: &str) -> bool {
        if !ty.is_integer() {
            self.errors.push(AggregateError::NotInteger {
                column: name.value.clone(),
                ty: ty.to_string(),
                what: what.to_owned(),
                span: name.span,
            });
        }
        ty.is_integer()
    }

    fn kind(&mut self, kind: &RawKind) -> Option<MeasureKind> {
        Some(match kind {
            RawKind::Count => MeasureKind::Count,
            RawKind::CountDistinct(columns) => {
                let resolved: Vec<ColumnRef> =
                    columns.iter().filter_map(|c| self.known(c)).collect();
                if resolved.len() != columns.len() {
                    return None;
                }
                if resolved.is_empty() {
                    return None;
                }
                MeasureKind::CountDistinct(resolved)
            }
            RawKind::Sum(operand) => MeasureKind::Sum(self.operand(operand, "`sum`")?),
            RawKind::Min(operand) => MeasureKind::Min(self.operand(operand, "`min`")?),
            RawKind::Max(operand) => MeasureKind::Max(self.operand(operand, "`max`")?),
        })
    }

    fn operand(&mut self, operand: &RawOperand, what: &str) -> Option<Operand> {
        let integer = |v: &mut Self, name: &Sp<String>| {
            let reference = v.reference(name)?;
            let spec = v.column(&reference)?;
            v.integer(name, spec.ty, what).then_some(reference.value)
        };
        match operand {
            RawOperand::Column(name) => integer(self, name).map(Operand::Column),
            RawOperand::Difference(a, b) => {
                let (a, b) = (integer(self, a), integer(self, b));
                Some(Operand::Difference(a?, b?))
            }
        }
    }

    fn filter(&mut self, name: &Sp<String>, test: &RawTest) -> Option<Filter> {
        let reference = self.reference(name)?;
        let spec = self.column(&reference)?;
        let test = match test {
            RawTest::Equals(value) => {
                self.check_constant(name, spec.ty, value);
                Test::Equals(value.value.clone())
            }
            RawTest::AtLeast(n) => {
                self.integer(name, spec.ty, "`at_least`");
                Test::AtLeast(n.value)
            }
            RawTest::AtMost(n) => {
                self.integer(name, spec.ty, "`at_most`");
                Test::AtMost(n.value)
            }
        };
        Some(Filter {
            column: reference.value,
            test,
        })
    }

    fn check_constant(&mut self, column: &Sp<String>, ty: ColumnType, value: &Sp<Constant>) {
        let fits = match &value.value {
            Constant::Int(_) => ty.is_integer(),
            Constant::Text(_) => ty.is_text(),
        };
        if !fits {
            self.errors.push(AggregateError::FilterType {
                column: column.value.clone(),
                ty: ty.to_string(),
                value: match &value.value {
                    Constant::Int(n) => format!("the number {n}"),
                    Constant::Text(text) => format!("the text `{text}`"),
                },
                span: value.span,
            });
        }
    }
}
