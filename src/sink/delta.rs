//! Keeping an aggregate from the rows a batch changes, instead of
//! recomputing the buckets it touches from the whole fact table.
//!
//! An aggregate qualifies when its measures add up across disjoint sets of
//! fact rows: counts and sums (not minima and maxima), and distinct tuples
//! that all share some fact columns, its *identity* (for co-browse,
//! `SESSION_ID`): rows of one identity value never share a tuple with rows
//! of another. A batch then affects a set of identity values: those of its
//! rows and of the rows they replace, or, for a batch of a joined table,
//! those of the facts joined to the changed join values. The contribution
//! of every fact row with an affected identity — its measures per level,
//! bucket and group, computed here from one SELECT — is taken before the
//! batch's writes and after them; the difference is added to the level
//! tables (`INSERT … ON CONFLICT DO UPDATE SET m = m + excluded.m`), and
//! rows whose presence measure falls to zero are deleted. Cost follows the
//! batch, not the buckets: a backfill of unordered history is as cheap per
//! batch as a stream in time order.

use std::collections::{HashMap, HashSet};

use sea_orm::DbErr;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, Value};

use super::aggregate::{fact_rows, tuples};
use super::txn::{Scalar, Txn};
use super::write::{CHUNK, value};
use super::{Names, postgres};
use crate::aggregate::{Aggregate, MeasureKind, TIME_COLUMN};
use crate::calendar::{Calendar, Level};
use crate::catalog::{ColumnType, Table};
use crate::plan::Cell;

/// How an aggregate is kept by deltas: the identity columns, and the
/// measure whose zero means "no fact row in this group".
#[derive(Debug, Clone)]
pub(super) struct DeltaPlan {
    pub identity: Vec<String>,
    presence: usize,
}

impl DeltaPlan {
    /// The plan for an aggregate over `fact`, when its measures allow one.
    pub fn of(aggregate: &Aggregate, fact: &Table) -> Option<DeltaPlan> {
        let mut identity: Option<Vec<String>> = None;
        for measure in &aggregate.measures {
            let tuple = match &measure.kind {
                MeasureKind::Min(_) | MeasureKind::Max(_) => return None,
                MeasureKind::CountDistinct(columns) => columns,
                _ => &measure.once_per,
            };
            if tuple.is_empty() {
                continue;
            }
            let columns: Vec<String> = tuple
                .iter()
                .filter(|c| c.join.is_none())
                .map(|c| c.column.clone())
                .collect();
            identity = Some(match identity {
                None => columns,
                Some(shared) => shared.into_iter().filter(|c| columns.contains(c)).collect(),
            });
        }
        let identity = identity.unwrap_or_else(|| fact.primary_key.clone());
        let not_null = |column: &str| fact.column(column).is_some_and(|c| !c.nullable);
        if identity.is_empty() || !identity.iter().all(|c| not_null(c)) {
            return None;
        }
        let presence = aggregate.measures.iter().position(|m| {
            m.filters.is_empty()
                && match &m.kind {
                    MeasureKind::Count => true,
                    MeasureKind::CountDistinct(columns) => columns
                        .iter()
                        .all(|c| c.join.is_none() && not_null(&c.column)),
                    _ => false,
                }
        })?;
        Some(DeltaPlan { identity, presence })
    }
}

/// The measures of the affected rows, per level (in `aggregate.levels`
/// order), bucket and group.
#[derive(Debug, Default)]
pub(super) struct Contribution {
    levels: Vec<HashMap<(i64, Vec<Scalar>), Vec<i64>>>,
}

/// Reads every fact row whose identity is one of `identities` (joined) and
/// sums what it contributes to each level.
pub(super) async fn contribution(
    txn: &mut Txn,
    names: Names,
    calendar: &Calendar,
    aggregate: &Aggregate,
    fact: &Table,
    plan: &DeltaPlan,
    identities: &HashSet<Vec<Cell>>,
) -> Result<Contribution, DbErr> {
    let (tuples, tuple_of) = tuples(aggregate);
    let identities: Vec<&Vec<Cell>> = identities.iter().collect();
    let fact_col = |column: &str| Expr::col((Alias::new("f"), names.column(column)));
    let types: Vec<ColumnType> = plan
        .identity
        .iter()
        .map(|c| fact.column(c).map_or(ColumnType::Text, |c| c.ty))
        .collect();
    let mut rows: Vec<Vec<Scalar>> = Vec::new();
    let chunk = if txn.is_postgres() && plan.identity.len() == 1 {
        identities.len().max(1)
    } else {
        CHUNK
    };
    for part in identities.chunks(chunk) {
        let condition = match plan.identity.as_slice() {
            [column] if txn.is_postgres() => postgres::any_of(
                fact_col(column),
                part.iter().map(|values| &values[0]),
                types[0].is_integer(),
            ),
            [column] => fact_col(column).is_in(part.iter().map(|v| value(&v[0], types[0]))),
            columns => Expr::tuple(columns.iter().map(|c| fact_col(c))).in_tuples(part.iter().map(
                |values| {
                    sea_orm::sea_query::ValueTuple::Many(
                        values
                            .iter()
                            .zip(&types)
                            .map(|(v, ty)| value(v, *ty))
                            .collect(),
                    )
                },
            )),
        };
        let mut select = fact_rows(names, aggregate, Level::Subhr, &tuples, true);
        select.and_where(condition);
        rows.extend(txn.query(&select).await?);
    }

    // Column positions in each row: b, groups, then per measure w (and v),
    // then the tuples' columns.
    let groups = aggregate.group_by.len();
    let mut at = 1 + groups;
    let mut flag = Vec::new();
    let mut val = Vec::new();
    for measure in &aggregate.measures {
        flag.push(at);
        at += 1;
        let valued = matches!(measure.kind, MeasureKind::Sum(_));
        val.push(valued.then_some(at));
        at += usize::from(valued);
    }
    let mut tuple_at = Vec::new();
    for tuple in &tuples {
        tuple_at.push(at..at + tuple.len());
        at += tuple.len();
    }

    let measures = aggregate.measures.len();
    let mut level_keys: HashMap<i64, [i64; 7]> = HashMap::new();
    // Per level, bucket and group: running sums, and per measure the
    // distinct tuples seen (with their value, for once-per sums).
    type Key = (i64, Vec<Scalar>);
    let mut sums: Vec<HashMap<Key, Vec<i64>>> = vec![HashMap::new(); aggregate.levels.len()];
    let mut seen: Vec<HashMap<(Key, usize), HashMap<Vec<Scalar>, i64>>> =
        vec![HashMap::new(); aggregate.levels.len()];
    for row in &rows {
        let Scalar::Int(time_key) = row[0] else {
            continue;
        };
        let keys = *level_keys
            .entry(time_key)
            .or_insert_with(|| calendar.interval(time_key).keys);
        let group: Vec<Scalar> = row[1..1 + groups].to_vec();
        for (l, level) in aggregate.levels.iter().enumerate() {
            let key = (keys[*level as usize], group.clone());
            let totals = sums[l]
                .entry(key.clone())
                .or_insert_with(|| vec![0; measures]);
            for (m, measure) in aggregate.measures.iter().enumerate() {
                if row[flag[m]] != Scalar::Int(1) {
                    continue;
                }
                let amount = match val[m].map(|v| &row[v]) {
                    Some(Scalar::Int(amount)) => Some(*amount),
                    Some(_) => None,
                    None => Some(1),
                };
                match tuple_of[m] {
                    None => {
                        if let (Some(amount), MeasureKind::Count | MeasureKind::Sum(_)) =
                            (amount, &measure.kind)
                        {
                            totals[m] += amount;
                        }
                    }
                    Some(k) => {
                        let tuple = row[tuple_at[k].clone()].to_vec();
                        let distinct = seen[l].entry((key.clone(), m)).or_default();
                        if let Some(amount) = amount {
                            distinct.entry(tuple).or_insert(amount);
                        }
                    }
                }
            }
        }
    }
    for (l, per_measure) in seen.into_iter().enumerate() {
        for ((key, m), distinct) in per_measure {
            let total = match aggregate.measures[m].kind {
                MeasureKind::CountDistinct(_) => distinct.len() as i64,
                _ => distinct.values().sum(),
            };
            if let Some(totals) = sums[l].get_mut(&key) {
                totals[m] += total;
            }
        }
    }
    Ok(Contribution { levels: sums })
}

/// Adds `new − old` to each level table, and deletes the rows of the
/// affected buckets and groups that no fact row contributes to any more.
pub(super) async fn apply(
    txn: &mut Txn,
    names: Names,
    aggregate: &Aggregate,
    plan: &DeltaPlan,
    old: Contribution,
    new: Contribution,
) -> Result<(), DbErr> {
    let measures = aggregate.measures.len();
    for (l, level) in aggregate.levels.iter().enumerate() {
        let table = aggregate.table(*level);
        let table_name = names.table(&table.name);
        let (old, new) = (&old.levels[l], &new.levels[l]);
        let mut changed: Vec<(&(i64, Vec<Scalar>), Vec<i64>)> = Vec::new();
        for key in old
            .keys()
            .chain(new.keys().filter(|k| !old.contains_key(*k)))
        {
            let zero = vec![0; measures];
            let (before, after) = (old.get(key).unwrap_or(&zero), new.get(key).unwrap_or(&zero));
            let delta: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
            if delta.iter().any(|d| *d != 0) {
                changed.push((key, delta));
            }
        }
        if changed.is_empty() {
            continue;
        }
        changed.sort_by(|a, b| a.0.cmp(b.0));
        let columns: Vec<&str> = std::iter::once(TIME_COLUMN)
            .chain(aggregate.group_by.iter().map(|g| g.name.as_str()))
            .chain(aggregate.measures.iter().map(|m| m.name.as_str()))
            .collect();
        let types: Vec<ColumnType> = columns
            .iter()
            .map(|c| table.column(c).map_or(ColumnType::BigInt, |c| c.ty))
            .collect();
        let key_columns = 1 + aggregate.group_by.len();
        let add = OnConflict::columns(columns[..key_columns].iter().map(|c| names.column(c)))
            .values(columns[key_columns..].iter().map(|c| {
                (
                    names.column(c),
                    Expr::col((table_name.clone(), names.column(c)))
                        .add(Expr::col((Alias::new("excluded"), names.column(c)))),
                )
            }))
            .to_owned();
        for chunk in changed.chunks(CHUNK / 2) {
            let mut insert = Query::insert();
            insert
                .into_table(table_name.clone())
                .columns(columns.iter().map(|c| names.column(c)));
            for ((bucket, group), delta) in chunk {
                let mut cells: Vec<Cell> = vec![Cell::Int(*bucket)];
                cells.extend(group.iter().map(|g| match g {
                    Scalar::Int(n) => Cell::Int(*n),
                    Scalar::Text(text) => Cell::Text(text.as_str().into()),
                    Scalar::Null => Cell::Null,
                }));
                cells.extend(delta.iter().map(|d| Cell::Int(*d)));
                let values: Vec<Value> = cells
                    .iter()
                    .zip(&types)
                    .map(|(c, t)| value(c, *t))
                    .collect();
                insert.values_panic(values.into_iter().map(Into::into));
            }
            insert.on_conflict(add.clone());
            txn.execute(&insert).await?;
        }
        // Groups left without rows.
        let presence = names.column(&aggregate.measures[plan.presence].name);
        let buckets: Vec<i64> = {
            let mut buckets: Vec<i64> = changed.iter().map(|((b, _), _)| *b).collect();
            buckets.dedup();
            buckets
        };
        for chunk in buckets.chunks(CHUNK) {
            let delete = Query::delete()
                .from_table(table_name.clone())
                .and_where(Expr::col(names.column(TIME_COLUMN)).is_in(chunk.iter().copied()))
                .and_where(Expr::col(presence.clone()).lte(0))
                .to_owned();
            txn.execute(&delete).await?;
        }
    }
    Ok(())
}
