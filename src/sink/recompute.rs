//! Recomputing an aggregate's buckets from the facts: the level rows of
//! the touched buckets are deleted and inserted again by one `INSERT …
//! SELECT … GROUP BY` whose ranges on the time key use its index; levels
//! that roll up are summed from the finer level's rows instead. The path
//! for aggregates that deltas cannot keep (`delta.rs`), and for rebuilds.
//! All SeaQuery, the same statements on every backend.

use std::collections::BTreeSet;

use sea_orm::DbErr;
use sea_orm::sea_query::{
    Alias, Asterisk, Cond, Expr, ExprTrait, Func, JoinType, OverStatement, Query, SelectStatement,
    WindowStatement,
};

use super::Names;
use super::txn::Txn;
use super::write::CHUNK;
use crate::aggregate::{Aggregate, ColumnRef, Filter, MeasureKind, Operand, TIME_COLUMN, Test};
use crate::calendar::{self, Level};
use crate::mapping::Constant;

/// The fact's alias in the aggregation query, and each join's.
const FACT: &str = "f";
const CALENDAR: &str = "d";
fn join_alias(at: usize) -> String {
    format!("j{at}")
}

fn column_expr(names: Names, aggregate: &Aggregate, reference: &ColumnRef) -> Expr {
    let alias = reference.join.map_or_else(|| FACT.to_owned(), join_alias);
    let col = Expr::col((Alias::new(alias), names.column(&reference.column)));
    match reference
        .join
        .and_then(|at| aggregate.joins[at].no_match(&reference.column))
    {
        Some(no_match) => Func::coalesce([col, constant(no_match)]).into(),
        None => col,
    }
}

fn constant(value: &Constant) -> Expr {
    match value {
        Constant::Int(n) => Expr::val(*n),
        Constant::Text(text) => Expr::val(text.clone()),
    }
}

fn filter_expr(names: Names, aggregate: &Aggregate, filter: &Filter) -> Expr {
    let column = column_expr(names, aggregate, &filter.column);
    match &filter.test {
        Test::Equals(value) => column.eq(constant(value)),
        Test::AtLeast(n) => column.gte(*n),
        Test::AtMost(n) => column.lte(*n),
    }
}

fn operand_expr(names: Names, aggregate: &Aggregate, operand: &Operand) -> Expr {
    match operand {
        Operand::Column(column) => column_expr(names, aggregate, column),
        Operand::Difference(a, b) => {
            column_expr(names, aggregate, a).sub(column_expr(names, aggregate, b))
        }
    }
}

/// Deletes the level's rows of the buckets (all rows when `None`) and
/// inserts them again from the facts.
pub(super) async fn recompute(
    txn: &mut Txn,
    names: Names,
    aggregate: &Aggregate,
    level: Level,
    buckets: Option<&BTreeSet<(i64, i64)>>,
) -> Result<(), DbErr> {
    let table = names.table(&aggregate.table_name(level));
    let ranges = buckets.map(merged);
    match buckets {
        Some(buckets) => {
            let starts: Vec<i64> = buckets.iter().map(|(start, _)| *start).collect();
            for chunk in starts.chunks(CHUNK) {
                let delete = Query::delete()
                    .from_table(table.clone())
                    .and_where(Expr::col(names.column(TIME_COLUMN)).is_in(chunk.iter().copied()))
                    .to_owned();
                txn.execute(&delete).await?;
            }
        }
        None => {
            txn.execute(&Query::delete().from_table(table.clone()).to_owned())
                .await?;
        }
    }
    if let (Some(finer), Some(buckets)) = (aggregate.rolled_up_from(level), buckets) {
        for &(start, end) in buckets {
            let mut insert = Query::insert();
            insert
                .into_table(table.clone())
                .columns(columns(names, aggregate));
            insert
                .select_from(roll_up(names, aggregate, finer, start, end))
                .map_err(|error| DbErr::Custom(error.to_string()))?;
            txn.execute(&insert).await?;
        }
        return Ok(());
    }
    let chunks: Vec<Option<&[(i64, i64)]>> = match &ranges {
        Some(ranges) => ranges.chunks(CHUNK).map(Some).collect(),
        None => vec![None],
    };
    for chunk in chunks {
        let select = aggregation_query(names, aggregate, level, chunk);
        let mut insert = Query::insert();
        insert
            .into_table(table.clone())
            .columns(columns(names, aggregate));
        insert
            .select_from(select)
            .map_err(|error| DbErr::Custom(error.to_string()))?;
        txn.execute(&insert).await?;
    }
    Ok(())
}

/// The columns of a level table, in order.
fn columns(names: Names, aggregate: &Aggregate) -> Vec<Alias> {
    std::iter::once(TIME_COLUMN)
        .chain(aggregate.group_by.iter().map(|g| g.name.as_str()))
        .chain(aggregate.measures.iter().map(|m| m.name.as_str()))
        .map(|c| names.column(c))
        .collect()
}

/// One bucket `[start, end)` of a level summed from the finer level's
/// rows: counts and sums add up, minima and maxima of minima and maxima.
fn roll_up(
    names: Names,
    aggregate: &Aggregate,
    finer: Level,
    start: i64,
    end: i64,
) -> SelectStatement {
    let mut select = Query::select();
    select.expr(Expr::val(start));
    for group in &aggregate.group_by {
        select.expr(Expr::col(names.column(&group.name)));
    }
    for measure in &aggregate.measures {
        let column = Expr::col(names.column(&measure.name));
        select.expr(match measure.kind {
            MeasureKind::Min(_) => Func::min(column),
            MeasureKind::Max(_) => Func::max(column),
            _ => Func::sum(column),
        });
    }
    let key = || Expr::col(names.column(TIME_COLUMN));
    select
        .from(names.table(&aggregate.table_name(finer)))
        .and_where(key().gte(start))
        .and_where(key().lt(end))
        .add_group_by(
            aggregate
                .group_by
                .iter()
                .map(|g| Expr::col(names.column(&g.name))),
        )
        // Without group-by columns, an empty range would still yield a row.
        .and_having(Func::count(Expr::col(Asterisk)).gt(0));
    select
}

/// Adjacent or overlapping buckets as one range.
fn merged(buckets: &BTreeSet<(i64, i64)>) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for &(start, end) in buckets {
        match ranges.last_mut() {
            Some(last) if start <= last.1 => last.1 = Ord::max(last.1, end),
            _ => ranges.push((start, end)),
        }
    }
    ranges
}

/// The distinct tuples of an aggregate's measures (`count_distinct`
/// columns, or `once_per`), and each measure's, by index.
pub(super) fn tuples(aggregate: &Aggregate) -> (Vec<&[ColumnRef]>, Vec<Option<usize>>) {
    let mut tuples: Vec<&[ColumnRef]> = Vec::new();
    let tuple_of = aggregate
        .measures
        .iter()
        .map(|measure| {
            let columns: &[ColumnRef] = match &measure.kind {
                MeasureKind::CountDistinct(columns) => columns,
                _ => &measure.once_per,
            };
            if columns.is_empty() {
                return None;
            }
            Some(
                tuples
                    .iter()
                    .position(|t| *t == columns)
                    .unwrap_or_else(|| {
                        tuples.push(columns);
                        tuples.len() - 1
                    }),
            )
        })
        .collect();
    (tuples, tuple_of)
}

/// One row per (joined) fact row, aliased `f` (joins `j0`, …): its
/// `level` bucket `b`, groups `g0…`, per measure its filter flag `w0…`
/// (1/0) and value `v0…`, and the columns `tK_J` of each tuple. With
/// `typed`, every integer comes out as BIGINT, as they are read back.
pub(super) fn fact_rows(
    names: Names,
    aggregate: &Aggregate,
    level: Level,
    tuples: &[&[ColumnRef]],
    typed: bool,
) -> SelectStatement {
    let fact_col = |column: &str| Expr::col((Alias::new(FACT), names.column(column)));
    let read = |expr: Expr, integer: bool| {
        if typed && integer {
            expr.cast_as("BIGINT")
        } else {
            expr
        }
    };
    let integer = |reference: &ColumnRef| {
        aggregate
            .column_type(reference)
            .is_some_and(|column| column.ty.is_integer())
    };
    // Intervals are the facts' own keys; coarser buckets come from DATE_TIME.
    let bucket = match level {
        Level::Subhr => fact_col(&aggregate.time_key),
        _ => Expr::col((Alias::new(CALENDAR), names.column(level.column()))),
    };
    let mut rows = Query::select();
    rows.expr_as(read(bucket, true), Alias::new("b"));
    for (at, group) in aggregate.group_by.iter().enumerate() {
        let expr = column_expr(names, aggregate, &group.source);
        rows.expr_as(
            read(expr, integer(&group.source)),
            Alias::new(format!("g{at}")),
        );
    }
    for (at, measure) in aggregate.measures.iter().enumerate() {
        let mut condition = Cond::all();
        for filter in &measure.filters {
            condition = condition.add(filter_expr(names, aggregate, filter));
        }
        if let MeasureKind::CountDistinct(columns) = &measure.kind {
            for column in columns {
                condition = condition.add(column_expr(names, aggregate, column).is_not_null());
            }
        }
        let flag: Expr = Expr::case(condition, 1).finally(0).into();
        rows.expr_as(read(flag, true), Alias::new(format!("w{at}")));
        if let MeasureKind::Sum(operand) | MeasureKind::Min(operand) | MeasureKind::Max(operand) =
            &measure.kind
        {
            let expr = operand_expr(names, aggregate, operand);
            rows.expr_as(read(expr, true), Alias::new(format!("v{at}")));
        }
    }
    for (k, tuple) in tuples.iter().enumerate() {
        for (j, column) in tuple.iter().enumerate() {
            let expr = column_expr(names, aggregate, column);
            rows.expr_as(read(expr, integer(column)), Alias::new(format!("t{k}_{j}")));
        }
    }
    rows.from_as(names.table(&aggregate.fact), Alias::new(FACT));
    if level != Level::Subhr {
        rows.join_as(
            JoinType::InnerJoin,
            names.table(calendar::TABLE),
            Alias::new(CALENDAR),
            Expr::col((Alias::new(CALENDAR), names.column(Level::Subhr.column())))
                .equals((Alias::new(FACT), names.column(&aggregate.time_key))),
        );
    }
    for (at, join) in aggregate.joins.iter().enumerate() {
        let alias = Alias::new(join_alias(at));
        let mut on = Cond::all();
        for (joined, fact) in &join.on {
            on = on.add(
                Expr::col((alias.clone(), names.column(joined)))
                    .equals((Alias::new(FACT), names.column(fact))),
            );
        }
        rows.join_as(JoinType::LeftJoin, names.table(&join.table), alias, on);
    }
    rows
}

/// `SELECT bucket, groups, measures … GROUP BY bucket, groups` over the
/// facts whose time key is in `ranges`, in three steps: `x`, each fact row
/// (joined) with its bucket, groups, filter flags (1/0), values and the
/// columns of each distinct tuple; `y`, per tuple (partitioned by bucket,
/// groups and tuple: one window, so one sort, shared by every measure over
/// that tuple) the row number and whether any row of the tuple passes each
/// measure's filter; then the sums of the first rows.
fn aggregation_query(
    names: Names,
    aggregate: &Aggregate,
    level: Level,
    ranges: Option<&[(i64, i64)]>,
) -> SelectStatement {
    let fact_col = |column: &str| Expr::col((Alias::new(FACT), names.column(column)));
    let x = |name: &str| Expr::col((Alias::new("x"), Alias::new(name)));
    let y = |name: &str| Expr::col((Alias::new("y"), Alias::new(name)));
    let groups: Vec<String> = (0..aggregate.group_by.len())
        .map(|at| format!("g{at}"))
        .collect();
    let (tuples, tuple_of) = tuples(aggregate);
    let mut rows = fact_rows(names, aggregate, level, &tuples, false);
    if let Some(ranges) = ranges {
        let mut any = Cond::any();
        for &(start, end) in ranges {
            let key = fact_col(&aggregate.time_key);
            any = any.add(key.clone().gte(start).and(key.lt(end)));
        }
        rows.cond_where(any);
    }

    // y: x with, per tuple, its row number and per measure over it whether
    // any of its rows passes the filter (and the value of one that does).
    let mut windowed = Query::select();
    windowed.expr(x("b"));
    for name in &groups {
        windowed.expr(x(name));
    }
    let window = |k: usize| {
        let mut window = WindowStatement::new();
        window.add_partition_by(x("b"));
        for name in &groups {
            window.add_partition_by(x(name));
        }
        for j in 0..tuples[k].len() {
            window.add_partition_by(x(&format!("t{k}_{j}")));
        }
        window
    };
    for (at, measure) in aggregate.measures.iter().enumerate() {
        let (w, v) = (format!("w{at}"), format!("v{at}"));
        let valued = !matches!(
            measure.kind,
            MeasureKind::Count | MeasureKind::CountDistinct(_)
        );
        match tuple_of[at] {
            None => {
                windowed.expr(x(&w));
                if valued {
                    windowed.expr(x(&v));
                }
            }
            Some(k) => {
                windowed.expr_window_as(Func::max(x(&w)), window(k), Alias::new(w.clone()));
                if valued {
                    let passing = Expr::case(x(&w).eq(1), x(&v));
                    windowed.expr_window_as(Func::max(passing), window(k), Alias::new(v));
                }
            }
        }
    }
    for k in 0..tuples.len() {
        windowed.expr_window_as(
            Expr::cust("ROW_NUMBER()"),
            window(k),
            Alias::new(format!("r{k}")),
        );
    }
    windowed.from_subquery(rows, Alias::new("x"));

    // The sums per bucket and groups, of each tuple's first row.
    let mut outer = Query::select();
    outer.expr(y("b"));
    for name in &groups {
        outer.expr(y(name));
    }
    for (at, measure) in aggregate.measures.iter().enumerate() {
        let (w, v) = (format!("w{at}"), format!("v{at}"));
        let mut taken = Cond::all().add(y(&w).eq(1));
        if let Some(k) = tuple_of[at] {
            taken = taken.add(y(&format!("r{k}")).eq(1));
        }
        let expr: Expr = match &measure.kind {
            MeasureKind::Count | MeasureKind::CountDistinct(_) => {
                Func::sum(Expr::case(taken, 1).finally(0)).into()
            }
            MeasureKind::Sum(_) => {
                Func::coalesce([Func::sum(Expr::case(taken, y(&v))).into(), Expr::val(0)]).into()
            }
            MeasureKind::Min(_) => Func::min(Expr::case(taken, y(&v))).into(),
            MeasureKind::Max(_) => Func::max(Expr::case(taken, y(&v))).into(),
        };
        outer.expr(expr);
    }
    outer.from_subquery(windowed, Alias::new("y"));
    outer.add_group_by(std::iter::once(y("b")).chain(groups.iter().map(|name| y(name))));
    outer
}
