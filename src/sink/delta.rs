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

use std::borrow::{Borrow, Cow};
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Mutex;

use foldhash::{HashMap, HashMapExt};

use sea_orm::sea_query::{
    Alias, CommonTableExpression, Expr, ExprTrait, Func, InsertStatement, OnConflict, Query,
    SelectStatement, UnionType, Value, WithClause,
};
use sea_orm::{DbBackend, DbErr, StatementBuilder};

use super::Names;
use super::aggregate::scalar_cell;
use super::aggregate::{Place, fact_values, membership};
use super::recompute::{fact_rows, tuples};
use super::txn::{Array, Bound, Txn};
use super::write::{CHUNK, Facts, value};
use crate::aggregate::{Aggregate, ColumnRef, MeasureKind, Operand, TIME_COLUMN, Test};
use crate::calendar::{Calendar, Level};
use crate::catalog::{ColumnType, Table};
use crate::mapping::Constant;
use crate::plan::{Cell, Row};

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

/// A level's bucket key and a group's values.
type Bucket = (i64, Vec<Cell>);

/// Each interval's level keys (`Interval::keys`), remembered across
/// batches: working them out takes the time zone's rules, thousands of
/// instructions, and a batch meets hundreds of intervals.
pub(super) struct LevelKeys {
    calendar: Calendar,
    known: Mutex<HashMap<i64, [i64; 7]>>,
}

impl LevelKeys {
    /// More intervals than this (ten years) and the memo starts over.
    const MAX: usize = 10 * 366 * 96;

    pub(super) fn new(calendar: Calendar) -> Self {
        LevelKeys {
            calendar,
            known: Mutex::default(),
        }
    }

    /// The level keys of the interval holding `key`.
    fn get(&self, key: i64) -> [i64; 7] {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= Self::MAX {
            known.clear();
        }
        let calendar = self.calendar;
        *known
            .entry(key)
            .or_insert_with(|| calendar.interval(key).keys)
    }
}

/// A join's referenced columns, and its stored rows by join values.
type Matches = (Vec<String>, HashMap<Vec<Cell>, Vec<Vec<Cell>>>);

/// The measures of the affected rows, per level (in `aggregate.levels`
/// order), bucket and group.
#[derive(Debug, Default)]
pub(super) struct Contribution {
    levels: Vec<HashMap<Bucket, Vec<i64>>>,
}

/// Reads every fact row whose identity is one of `identities` (joined) and
/// sums what it contributes to each level.
pub(super) async fn contribution(
    txn: &mut Txn,
    names: Names,
    level_keys: &LevelKeys,
    aggregate: &Aggregate,
    fact: &Table,
    plan: &DeltaPlan,
    identities: &BTreeSet<Vec<Cell>>,
) -> Result<Contribution, DbErr> {
    let (tuples, _) = tuples(aggregate);
    let identities: Vec<&Vec<Cell>> = identities.iter().collect();
    let fact_col = |column: &str| Expr::col((Alias::new("f"), names.column(column)));
    let types: Vec<ColumnType> = plan
        .identity
        .iter()
        .map(|c| fact.column(c).map_or(ColumnType::Text, |c| c.ty))
        .collect();
    let columns: Vec<Expr> = plan.identity.iter().map(|c| fact_col(c)).collect();
    let tuples_of: Vec<&[Cell]> = identities.iter().map(|v| v.as_slice()).collect();
    let mut sums = Accumulator::new(level_keys, aggregate, identities.len());
    let mut row = Contributing::default();
    for condition in membership(txn.is_postgres(), &columns, &types, &tuples_of) {
        let mut select = fact_rows(names, aggregate, Level::Subhr, &tuples, true);
        select.and_where(condition);
        for read in txn.query(&select).await? {
            // As `fact_rows` lays it out: `b`, the groups, per measure its
            // flag and, for sums, its value (deltas keep no minima or
            // maxima), then the tuples' columns.
            let mut cells = read.into_iter().map(scalar_cell);
            let Some(Cell::Int(time)) = cells.next() else {
                continue;
            };
            row.clear();
            row.time = time;
            row.groups
                .extend(cells.by_ref().take(aggregate.group_by.len()));
            for measure in &aggregate.measures {
                let pass = cells.next() == Some(Cell::Int(1));
                let amount = match measure.kind {
                    MeasureKind::Sum(_) => match cells.next() {
                        Some(Cell::Int(value)) => Some(value),
                        _ => None,
                    },
                    _ => Some(1),
                };
                row.amounts.push(amount.filter(|_| pass));
            }
            row.tuples.extend(cells);
            sums.add(&row);
        }
    }
    Ok(sums.finish())
}

/// Whether a batch's rows are the whole after-state of the identities it
/// affects, and every fact column the aggregate reads is one the batch
/// carries (a mapped column or a dimension key): the delta identity is the
/// mapping's `replace_by` (or, without one, its key). And the aggregate
/// joins no table the batch writes: its joined rows are read while the
/// batch's own are not yet written.
pub(super) fn covers_batch(plan: &DeltaPlan, aggregate: &Aggregate, facts: &Facts<'_>) -> bool {
    let mapping: &[String] = if facts.plan.replace_by.is_empty() {
        &facts.plan.key
    } else {
        &facts.plan.replace_by
    };
    let mut identity = plan.identity.clone();
    let mut mapping = mapping.to_vec();
    identity.sort();
    mapping.sort();
    let carried = |column: &str| !matches!(Place::of(facts, column), Place::Absent);
    identity == mapping
        && fact_columns(aggregate).iter().all(|c| carried(c))
        && aggregate.joins.iter().all(|j| j.table != facts.table.name)
}

/// Every fact column an aggregate reads.
pub(super) fn fact_columns(aggregate: &Aggregate) -> Vec<&str> {
    let mut columns: Vec<&str> = vec![aggregate.time_key.as_str()];
    for join in &aggregate.joins {
        columns.extend(join.on.iter().map(|(_, fact)| fact.as_str()));
    }
    columns.extend(
        references(aggregate)
            .into_iter()
            .filter(|r| r.join.is_none())
            .map(|r| r.column.as_str()),
    );
    columns
}

/// Every column reference of groups, filters, values and tuples.
fn references(aggregate: &Aggregate) -> Vec<&ColumnRef> {
    let mut found: Vec<&ColumnRef> = aggregate.group_by.iter().map(|g| &g.source).collect();
    for measure in &aggregate.measures {
        found.extend(measure.filters.iter().map(|f| &f.column));
        found.extend(&measure.once_per);
        match &measure.kind {
            MeasureKind::CountDistinct(columns) => found.extend(columns),
            MeasureKind::Sum(operand) | MeasureKind::Min(operand) | MeasureKind::Max(operand) => {
                match operand {
                    Operand::Column(column) => found.push(column),
                    Operand::Difference(a, b) => found.extend([a, b]),
                }
            }
            MeasureKind::Count => {}
        }
    }
    found
}

/// Fact rows held in memory, and where each fact column is in them.
pub(super) enum InMemory<'a> {
    /// A batch's rows as the sink writes them: the mapped values, and the
    /// dimension keys beside them.
    Batch {
        facts: &'a Facts<'a>,
        rows: &'a [&'a Row],
        keys: &'a [Vec<i64>],
    },
    /// Rows read back: the values of `columns`, in that order.
    Read {
        columns: &'a [String],
        rows: &'a [Vec<Cell>],
    },
}

impl InMemory<'_> {
    /// Where a fact column's value is in these rows.
    fn resolve(&self, column: &str) -> Resolved {
        match self {
            InMemory::Batch { facts, .. } => match Place::of(facts, column) {
                Place::Value(at) => Resolved::Value(at),
                Place::Key(at) => Resolved::Key(at),
                Place::Absent => Resolved::Null,
            },
            InMemory::Read { columns, .. } => columns
                .iter()
                .position(|c| c == column)
                .map_or(Resolved::Null, Resolved::Value),
        }
    }

    fn len(&self) -> usize {
        match self {
            InMemory::Batch { rows, .. } => rows.len(),
            InMemory::Read { rows, .. } => rows.len(),
        }
    }

    /// Calls `f` with each row's values and dimension keys.
    fn each(&self, mut f: impl FnMut(&[Cell], &[i64])) {
        match self {
            InMemory::Batch { rows, keys, .. } => {
                for (row, keys) in rows.iter().zip(*keys) {
                    f(&row.values, keys);
                }
            }
            InMemory::Read { rows, .. } => rows.iter().for_each(|row| f(row, &[])),
        }
    }

    /// Whether any row holds a value in each of fact `columns`.
    pub fn any_values(&self, columns: &[&str]) -> bool {
        let at: Vec<Resolved> = columns.iter().map(|c| self.resolve(c)).collect();
        let mut any = false;
        self.each(|row, keys| {
            any = any || at.iter().all(|r| !r.eval(row, keys, &[]).is_null());
        });
        any
    }

    /// The distinct values of fact `columns` in these rows, without NULLs.
    pub fn values(&self, columns: &[&str]) -> BTreeSet<Vec<Cell>> {
        let at: Vec<Resolved> = columns.iter().map(|c| self.resolve(c)).collect();
        let mut values = BTreeSet::new();
        let mut last: Option<Vec<Cell>> = None;
        self.each(|row, keys| {
            // An event's rows are adjacent and mostly share these values
            // (the same text, shared): compared in place, not copied.
            if let Some(last) = &last
                && at
                    .iter()
                    .zip(last)
                    .all(|(r, v)| *r.eval(row, keys, &[]) == *v)
            {
                return;
            }
            let tuple: Vec<Cell> = at
                .iter()
                .map(|r| r.eval(row, keys, &[]).into_owned())
                .collect();
            if tuple.iter().all(|v| !v.is_null()) {
                values.insert(tuple.clone());
            }
            last = Some(tuple);
        });
        values
    }
}

/// The stored rows of an aggregate's joined tables that rows in memory
/// join to: per join, the columns the aggregate reads from it, and its
/// rows (those columns) by join values.
pub(super) struct Joined {
    matches: Vec<Matches>,
}

/// What is read of one joined table.
struct JoinRead {
    /// The columns the aggregate reads of it.
    used: Vec<String>,
    /// Its join columns.
    on: Vec<String>,
    /// Both, as selected: the join columns first.
    selected: Vec<String>,
    /// The fact columns that hold the join values.
    fact_side: Vec<String>,
    /// The join values the rows in memory hold.
    values: BTreeSet<Vec<Cell>>,
}

/// The read of the joined rows that rows in memory join to, prepared
/// before it runs: the join values (CPU), and on PostgreSQL its statement,
/// bound, so both can be made while the server is busy with another.
pub(super) struct JoinedRead {
    reads: Vec<JoinRead>,
    bound: Option<Box<BoundRead>>,
}

/// PostgreSQL's one statement for all joins, and how its result is laid
/// out: per slot, whether it is BIGINT; per join, its first slot and width.
struct BoundRead {
    bound: Bound,
    integer: Vec<bool>,
    offsets: Vec<usize>,
    widths: Vec<usize>,
}

impl JoinedRead {
    /// The join values `rows` hold, per join of `aggregate`.
    pub fn new(aggregate: &Aggregate, rows: &InMemory<'_>) -> JoinedRead {
        let refs = references(aggregate);
        let reads = (aggregate.joins.iter().enumerate())
            .map(|(j, join)| {
                let mut used: Vec<String> = Vec::new();
                for reference in refs.iter().filter(|r| r.join == Some(j)) {
                    if !used.contains(&reference.column) {
                        used.push(reference.column.clone());
                    }
                }
                let fact_side: Vec<String> = join.on.iter().map(|(_, f)| f.clone()).collect();
                let on: Vec<String> = join.on.iter().map(|(c, _)| c.clone()).collect();
                let columns: Vec<&str> = fact_side.iter().map(String::as_str).collect();
                let values = rows.values(&columns);
                let selected = on.iter().chain(&used).cloned().collect();
                JoinRead {
                    used,
                    on,
                    selected,
                    fact_side,
                    values,
                }
            })
            .collect();
        JoinedRead { reads, bound: None }
    }

    /// Adds the join values of more rows; a statement bound before is
    /// bound again when they hold new ones.
    pub fn add(&mut self, rows: &InMemory<'_>) {
        for read in &mut self.reads {
            let columns: Vec<&str> = read.fact_side.iter().map(String::as_str).collect();
            for tuple in rows.values(&columns) {
                if read.values.insert(tuple) {
                    self.bound = None;
                }
            }
        }
    }

    /// Builds and binds PostgreSQL's statement for all joins (one `UNION
    /// ALL` branch per join, each in its own columns), unless bound.
    pub fn bind(&mut self, names: Names, joined: &[Table]) {
        if self.bound.is_some() {
            return;
        }
        let reads = &self.reads;
        // Each join's columns in slots of their own, BIGINT or TEXT (a
        // branch's NULLs typed as the slot, which its DISTINCT needs).
        let widths: Vec<usize> = reads.iter().map(|read| read.selected.len()).collect();
        let integer: Vec<bool> = (reads.iter().zip(joined))
            .flat_map(|(read, table)| {
                (read.selected.iter()).map(|c| table.column(c).is_some_and(|c| c.ty.is_integer()))
            })
            .collect();
        let mut union: Option<SelectStatement> = None;
        let mut offset = 0;
        for (j, read) in reads.iter().enumerate() {
            let (columns, values) = (&read.selected, &read.values);
            if !values.is_empty() {
                let table = &joined[j];
                let mut branch = Query::select();
                // Rows that hold the table's primary key are distinct.
                let keyed = !table.primary_key.is_empty()
                    && (table.primary_key.iter()).all(|k| columns.contains(k));
                if !keyed {
                    branch.distinct();
                }
                branch.expr_as(Expr::val(j as i64), Alias::new("j"));
                for (slot, integer) in integer.iter().enumerate() {
                    let ty = if *integer { "BIGINT" } else { "TEXT" };
                    let value = match slot.checked_sub(offset) {
                        Some(at) if at < widths[j] => {
                            Expr::col(names.column(&columns[at])).cast_as(Alias::new(ty))
                        }
                        _ => Expr::cust(format!("NULL::{ty}")),
                    };
                    branch.expr_as(value, Alias::new(format!("c{slot}")));
                }
                branch.from(names.table(&table.name));
                let on: Vec<Expr> = read.on.iter().map(|c| Expr::col(names.column(c))).collect();
                let types: Vec<ColumnType> = (read.on.iter())
                    .map(|c| table.column(c).map_or(ColumnType::Text, |c| c.ty))
                    .collect();
                let tuples: Vec<&[Cell]> = values.iter().map(Vec::as_slice).collect();
                for condition in membership(true, &on, &types, &tuples) {
                    let branch = branch.clone().and_where(condition).to_owned();
                    match &mut union {
                        None => union = Some(branch),
                        Some(union) => {
                            union.union(UnionType::All, branch);
                        }
                    }
                }
            }
            offset += widths[j];
        }
        let Some(union) = union else { return };
        // Read back as one row per join, each slot one array (a row per
        // joined row costs the driver thousands of instructions). The
        // aggregates of one group take its rows in one order.
        let arrays = (0..integer.len())
            .map(|slot| Func::cust("array_agg").arg(Expr::col(Alias::new(format!("c{slot}")))));
        let select = Query::select()
            .column(Alias::new("j"))
            .exprs(arrays)
            .from_subquery(union, Alias::new("u"))
            .group_by_col(Alias::new("j"))
            .to_owned();
        let offsets: Vec<usize> = (widths.iter())
            .scan(0, |at, width| {
                *at += width;
                Some(*at - width)
            })
            .collect();
        let built = StatementBuilder::build(&select, &DbBackend::Postgres);
        let values = built.values.map_or_else(Vec::new, |v| v.0);
        self.bound = Some(Box::new(BoundRead {
            bound: Bound::values(built.sql, values),
            integer,
            offsets,
            widths,
        }));
    }

    /// Reads the rows of the joined tables that the join values match: on
    /// PostgreSQL in one statement for all joins, elsewhere one per join.
    pub async fn run(
        mut self,
        txn: &mut Txn,
        names: Names,
        joined: &[Table],
    ) -> Result<Joined, DbErr> {
        // Each join's rows as its selected columns.
        let mut found: Vec<Vec<Vec<Cell>>> = vec![Vec::new(); self.reads.len()];
        if txn.is_postgres() {
            self.bind(names, joined);
            if let Some(read) = self.bound.take() {
                for (j, mut slots) in txn.query_arrays(read.bound, &read.integer).await? {
                    let j = usize::try_from(j).unwrap_or(usize::MAX);
                    let (Some(at), Some(width)) = (read.offsets.get(j), read.widths.get(j)) else {
                        return Err(DbErr::Custom(format!("the joined rows of join {j}")));
                    };
                    let columns: Vec<Array> = slots.drain(*at..*at + *width).collect();
                    let rows = columns.first().map_or(0, Array::len);
                    for row in 0..rows {
                        found[j].push(columns.iter().map(|column| column.cell(row)).collect());
                    }
                }
            }
        } else {
            for (j, read) in self.reads.iter().enumerate() {
                if read.values.is_empty() {
                    continue;
                }
                let on: Vec<&str> = read.on.iter().map(String::as_str).collect();
                let columns: Vec<&str> = read.selected.iter().map(String::as_str).collect();
                let rows = fact_values(txn, names, &joined[j], &on, &read.values, &columns).await?;
                found[j] = (rows.into_iter())
                    .map(|row| row.into_iter().map(scalar_cell).collect())
                    .collect();
            }
        }
        let mut matches: Vec<Matches> = Vec::new();
        for (read, rows) in self.reads.into_iter().zip(found) {
            let mut by_values: HashMap<Vec<Cell>, Vec<Vec<Cell>>> =
                HashMap::with_capacity(rows.len());
            for mut row in rows {
                let rest = row.split_off(read.on.len());
                by_values.entry(row).or_default().push(rest);
            }
            matches.push((read.used, by_values));
        }
        Ok(Joined { matches })
    }
}

/// What `rows` contribute, joined to the stored rows in `joined` (read for
/// their join values): the same rows, flags and values as [`fact_rows`]
/// would select. CPU only.
pub(super) fn accumulate<'a>(
    level_keys: &LevelKeys,
    aggregate: &'a Aggregate,
    joined: &Joined,
    rows: &InMemory<'_>,
) -> Contribution {
    let matches = &joined.matches;
    // Every distinct column reference resolved once (where its value is in
    // a row in memory or in a joined row, and its `no_match` value), and
    // evaluated once per row into `cells`; the rest refers to it by place.
    let mut refs: Vec<(&ColumnRef, Resolved)> = Vec::new();
    let mut place = |reference: &'a ColumnRef| -> usize {
        if let Some(at) = refs.iter().position(|(r, _)| *r == reference) {
            return at;
        }
        let resolved = match reference.join {
            None => rows.resolve(&reference.column),
            Some(j) => Resolved::Joined {
                join: j,
                at: matches[j]
                    .0
                    .iter()
                    .position(|c| *c == reference.column)
                    .unwrap_or(0),
                no_match: aggregate.joins[j]
                    .no_match(&reference.column)
                    .map(|c| match c {
                        Constant::Int(n) => Cell::Int(*n),
                        Constant::Text(t) => Cell::Text(t.as_str().into()),
                    }),
            },
        };
        refs.push((reference, resolved));
        refs.len() - 1
    };
    let (tuples, _) = tuples(aggregate);
    let time = rows.resolve(&aggregate.time_key);
    let groups: Vec<usize> = aggregate
        .group_by
        .iter()
        .map(|g| place(&g.source))
        .collect();
    let measures: Vec<MeasureEval> = aggregate
        .measures
        .iter()
        .map(|measure| MeasureEval {
            filters: (measure.filters.iter())
                .map(|f| (place(&f.column), &f.test))
                .collect(),
            not_null: match &measure.kind {
                MeasureKind::CountDistinct(columns) => columns.iter().map(&mut place).collect(),
                _ => Vec::new(),
            },
            value: match &measure.kind {
                MeasureKind::Sum(Operand::Column(c)) => Some((place(c), None)),
                MeasureKind::Sum(Operand::Difference(a, b)) => Some((place(a), Some(place(b)))),
                _ => None,
            },
        })
        .collect();
    let tuple_columns: Vec<usize> = (tuples.iter())
        .flat_map(|tuple| tuple.iter())
        .map(&mut place)
        .collect();
    let refs: Vec<Resolved> = refs.into_iter().map(|(_, resolved)| resolved).collect();
    let on: Vec<Vec<Resolved>> = aggregate
        .joins
        .iter()
        .map(|join| join.on.iter().map(|(_, fact)| rows.resolve(fact)).collect())
        .collect();

    let mut sums = Accumulator::new(level_keys, aggregate, rows.len());
    let mut amounts: Vec<Option<i64>> = Vec::with_capacity(measures.len());
    let mut key: Vec<Cell> = Vec::new();
    // Each join's matching rows (one absent row when none matches),
    // combined as the SQL left joins would.
    let mut found: Vec<&[Vec<Cell>]> = vec![&[]; on.len()];
    let mut combo: Vec<Option<&Vec<Cell>>> = vec![None; on.len()];
    let mut at = vec![0usize; on.len()];
    // Each single-column join's last value, whose matches are in `found`.
    let mut last_on: Vec<Option<Cell>> = vec![None; on.len()];
    rows.each(|values, keys| {
        let Cell::Int(time) = *time.eval(values, keys, &[]) else {
            return;
        };
        for (j, columns) in on.iter().enumerate() {
            let rows = match columns.as_slice() {
                [column] => {
                    let value = column.eval(values, keys, &[]);
                    // An event's rows are adjacent and mostly share it.
                    if last_on[j].as_ref() == Some(value.as_ref()) {
                        continue;
                    }
                    let found = matches[j].1.get(std::slice::from_ref(value.as_ref()));
                    let found = found.filter(|_| !value.is_null());
                    last_on[j] = Some(value.into_owned());
                    found
                }
                _ => {
                    key.clear();
                    key.extend(
                        columns
                            .iter()
                            .map(|r| r.eval(values, keys, &[]).into_owned()),
                    );
                    let known = key.iter().all(|v| !v.is_null());
                    matches[j].1.get(key.as_slice()).filter(|_| known)
                }
            };
            found[j] = rows.map_or(&[], Vec::as_slice);
        }
        at.fill(0);
        loop {
            for (j, choice) in at.iter().enumerate() {
                combo[j] = found[j].get(*choice);
            }
            {
                // Each reference evaluated where it is used, borrowed: the
                // rows' text is shared with the reader thread, and a copy
                // costs an atomic count on another core's cache line.
                let cell = |at: usize| refs[at].eval(values, keys, &combo);
                let group = sums.group_id(&groups, cell);
                amounts.clear();
                for measure in &measures {
                    let amount = match measure.value {
                        None => Some(1),
                        Some((a, None)) => match *cell(a) {
                            Cell::Int(value) => Some(value),
                            _ => None,
                        },
                        Some((a, Some(b))) => match (&*cell(a), &*cell(b)) {
                            (Cell::Int(a), Cell::Int(b)) => Some(a - b),
                            _ => None,
                        },
                    };
                    let pass = amount.is_some()
                        && measure.filters.iter().all(|(column, test)| {
                            match (test, &*cell(*column)) {
                                (Test::Equals(Constant::Int(n)), Cell::Int(v)) => v == n,
                                (Test::Equals(Constant::Text(t)), Cell::Text(v)) => **v == **t,
                                (Test::AtLeast(n), Cell::Int(v)) => v >= n,
                                (Test::AtMost(n), Cell::Int(v)) => v <= n,
                                _ => false,
                            }
                        })
                        && measure.not_null.iter().all(|c| !cell(*c).is_null());
                    amounts.push(amount.filter(|_| pass));
                }
                sums.tuple_ids_of(&tuple_columns, cell);
                sums.add_interned(time, group, &amounts);
            }
            // The next combination of the joins' matches.
            let mut j = at.len();
            while j > 0 {
                j -= 1;
                at[j] += 1;
                if at[j] < found[j].len() {
                    break;
                }
                at[j] = 0;
            }
            if at.iter().all(|choice| *choice == 0) {
                break;
            }
        }
    });
    sums.finish()
}

/// How one measure is evaluated on a batch row, its columns by their
/// place among the row's evaluated references.
struct MeasureEval<'a> {
    filters: Vec<(usize, &'a Test)>,
    /// Columns of a distinct count, none of which may be NULL.
    not_null: Vec<usize>,
    /// A sum's column, or the two columns of its difference.
    value: Option<(usize, Option<usize>)>,
}

/// Where a column's value is, for a batch row joined to stored rows.
#[derive(Debug, Clone)]
enum Resolved {
    Value(usize),
    Key(usize),
    Joined {
        join: usize,
        at: usize,
        no_match: Option<Cell>,
    },
    Null,
}

impl Resolved {
    fn eval<'a>(
        &'a self,
        values: &'a [Cell],
        keys: &[i64],
        combo: &[Option<&'a Vec<Cell>>],
    ) -> Cow<'a, Cell> {
        match self {
            Resolved::Value(at) => Cow::Borrowed(&values[*at]),
            Resolved::Key(at) => Cow::Owned(Cell::Int(keys[*at])),
            Resolved::Joined { join, at, no_match } => {
                match (combo[*join].map(|row| &row[*at]), no_match) {
                    (None | Some(Cell::Null), Some(no_match)) => Cow::Borrowed(no_match),
                    (None, None) => Cow::Owned(Cell::Null),
                    (Some(value), _) => Cow::Borrowed(value),
                }
            }
            Resolved::Null => Cow::Owned(Cell::Null),
        }
    }
}

/// One fact row (joined) as it counts: its time key, its groups, per
/// measure what it adds (`None`: the filter fails or the value is
/// unknown; counts add 1), and the columns of its distinct tuples, one
/// tuple after another.
#[derive(Debug, Default)]
struct Contributing {
    time: i64,
    groups: Vec<Cell>,
    amounts: Vec<Option<i64>>,
    tuples: Vec<Cell>,
}

impl Contributing {
    fn clear(&mut self) {
        self.groups.clear();
        self.amounts.clear();
        self.tuples.clear();
    }
}

/// Sums rows into each level's buckets and groups, one row at a time.
struct Accumulator<'a> {
    shared_keys: &'a LevelKeys,
    aggregate: &'a Aggregate,
    /// Where each tuple's columns are in a row's `tuples`.
    tuple_at: Vec<Range<usize>>,
    /// Per level, the level it is summed from when it rolls up.
    source: Vec<Option<usize>>,
    level_keys: HashMap<i64, [i64; 7]>,
    /// Groups and tuples are interned: rows repeat them, and keys are then
    /// plain integers. An event's rows are adjacent and mostly repeat the
    /// last row's, which is looked up first.
    group_ids: Interned,
    tuple_ids: Vec<Interned>,
    row_tuples: Vec<usize>,
    /// Per level, bucket and group: running sums.
    sums: Vec<HashMap<(i64, usize), Vec<i64>>>,
    /// Per measure counted once per tuple: its place among the measures of
    /// that tuple, as a slot and a bit in it.
    slot_of: Vec<Option<(usize, u64)>>,
    /// Each slot's tuple.
    slot_tuple: Vec<usize>,
    /// A distinct tuple counts (or adds its value) the first time it is
    /// seen in its level, bucket, group and measure: per level, bucket,
    /// group, slot and tuple, the bits of the measures it has counted for.
    seen: HashMap<(usize, i64, usize, usize, usize), u64>,
    /// This row's bits to count, per slot.
    want: Vec<u64>,
}

/// Values interned to ids, the last one looked up remembered.
#[derive(Default)]
struct Interned {
    ids: HashMap<Vec<Cell>, usize>,
    last: Option<(Vec<Cell>, usize)>,
}

impl Interned {
    fn with_capacity(capacity: usize) -> Self {
        Interned {
            ids: HashMap::with_capacity(capacity),
            last: None,
        }
    }

    /// The id of `values`, given the next free one when new. They are
    /// compared in place with the last ones and copied only when new.
    fn id<C: Borrow<Cell>>(&mut self, values: impl ExactSizeIterator<Item = C> + Clone) -> usize {
        if let Some((last, id)) = &self.last
            && last.len() == values.len()
            && last
                .iter()
                .zip(values.clone())
                .all(|(a, b)| a == b.borrow())
        {
            return *id;
        }
        let values: Vec<Cell> = values.map(|c| c.borrow().clone()).collect();
        let id = match self.ids.get(&values) {
            Some(id) => *id,
            None => {
                let id = self.ids.len();
                self.ids.insert(values.clone(), id);
                id
            }
        };
        self.last = Some((values, id));
        id
    }
}

impl<'a> Accumulator<'a> {
    /// An accumulator for about `rows` rows.
    fn new(shared_keys: &'a LevelKeys, aggregate: &'a Aggregate, rows: usize) -> Self {
        let (tuples, tuple_of) = tuples(aggregate);
        let mut tuple_at = Vec::new();
        let mut at = 0;
        for tuple in &tuples {
            tuple_at.push(at..at + tuple.len());
            at += tuple.len();
        }
        // A level that rolls up is summed from the finest level it nests
        // in that is computed from the rows (the author vouches that each
        // distinct tuple falls in one interval).
        let source: Vec<Option<usize>> = aggregate
            .levels
            .iter()
            .map(|&level| {
                let mut from = aggregate.rolled_up_from(level)?;
                while let Some(finer) = aggregate.rolled_up_from(from) {
                    from = finer;
                }
                aggregate.levels.iter().position(|l| *l == from)
            })
            .collect();
        // The measures counted once per tuple take a bit each in a slot of
        // that tuple, 64 to a slot.
        let mut slot_tuple: Vec<usize> = Vec::new();
        let mut slots: HashMap<(usize, usize), usize> = HashMap::new();
        let mut counted = vec![0; tuples.len()];
        let slot_of = (tuple_of.iter())
            .map(|tuple| {
                let k = (*tuple)?;
                let nth = counted[k];
                counted[k] += 1;
                let slot = *slots.entry((k, nth / 64)).or_insert_with(|| {
                    slot_tuple.push(k);
                    slot_tuple.len() - 1
                });
                Some((slot, 1 << (nth % 64)))
            })
            .collect();
        let computed = source.iter().filter(|s| s.is_none()).count();
        Accumulator {
            shared_keys,
            aggregate,
            tuple_ids: (0..tuple_at.len())
                .map(|_| Interned::with_capacity(rows))
                .collect(),
            tuple_at,
            source,
            level_keys: HashMap::new(),
            group_ids: Interned::default(),
            row_tuples: Vec::new(),
            sums: vec![HashMap::new(); aggregate.levels.len()],
            want: vec![0; slot_tuple.len()],
            seen: HashMap::with_capacity(rows * computed * slot_tuple.len()),
            slot_of,
            slot_tuple,
        }
    }

    fn keys(&mut self, key: i64) -> [i64; 7] {
        let shared = self.shared_keys;
        *self
            .level_keys
            .entry(key)
            .or_insert_with(|| shared.get(key))
    }

    fn add(&mut self, row: &Contributing) {
        let group = self.group_ids.id(row.groups.iter());
        self.intern_tuples(|range| row.tuples[range].iter());
        self.add_interned(row.time, group, &row.amounts);
    }

    /// The id of a row's group, its columns' values given by `cell`.
    fn group_id<C: Borrow<Cell>>(&mut self, columns: &[usize], cell: impl Fn(usize) -> C) -> usize {
        self.group_ids.id(columns.iter().map(|c| cell(*c)))
    }

    /// Interns a row's tuples into `row_tuples`, the values of their
    /// `columns` (one tuple after another) given by `cell`.
    fn tuple_ids_of<C: Borrow<Cell>>(&mut self, columns: &[usize], cell: impl Fn(usize) -> C) {
        self.intern_tuples(|range| columns[range].iter().map(|c| cell(*c)));
    }

    /// Interns a row's tuples into `row_tuples`, each tuple's values given
    /// by `values` for its place among the row's tuple columns.
    fn intern_tuples<C, I>(&mut self, values: impl Fn(Range<usize>) -> I)
    where
        C: Borrow<Cell>,
        I: ExactSizeIterator<Item = C> + Clone,
    {
        self.row_tuples.clear();
        for (k, range) in self.tuple_at.iter().enumerate() {
            self.row_tuples
                .push(self.tuple_ids[k].id(values(range.clone())));
        }
    }

    /// Adds a row whose group is `group` and whose tuples' ids are in
    /// `row_tuples`.
    fn add_interned(&mut self, time: i64, group: usize, amounts: &[Option<i64>]) {
        let keys = self.keys(time);
        let measures = self.aggregate.measures.len();
        for (l, level) in self.aggregate.levels.iter().enumerate() {
            if self.source[l].is_some() {
                continue;
            }
            let bucket = keys[*level as usize];
            let totals = self.sums[l]
                .entry((bucket, group))
                .or_insert_with(|| vec![0; measures]);
            // Counts and sums add up at once; what counts once per tuple
            // waits for its slot's bits.
            self.want.fill(0);
            for (m, amount) in amounts.iter().enumerate() {
                match (amount, self.slot_of[m]) {
                    (None, _) => {}
                    (Some(_), Some((slot, bit))) => self.want[slot] |= bit,
                    (Some(amount), None) => totals[m] += amount,
                }
            }
            for (slot, want) in self.want.iter().enumerate() {
                if *want == 0 {
                    continue;
                }
                let tuple = self.row_tuples[self.slot_tuple[slot]];
                let seen = self
                    .seen
                    .entry((l, bucket, group, slot, tuple))
                    .or_insert(0);
                let first = *want & !*seen;
                *seen |= want;
                if first == 0 {
                    continue;
                }
                for (m, at) in self.slot_of.iter().enumerate() {
                    if let (Some((s, bit)), Some(amount)) = (at, amounts[m])
                        && *s == slot
                        && first & bit != 0
                    {
                        totals[m] += amount;
                    }
                }
            }
        }
    }

    /// The sums, with the levels that roll up summed from their source.
    fn finish(self) -> Contribution {
        let Accumulator {
            shared_keys,
            aggregate,
            source,
            mut level_keys,
            group_ids,
            mut sums,
            ..
        } = self;
        let measures = aggregate.measures.len();
        for (l, level) in aggregate.levels.iter().enumerate() {
            let Some(from) = source[l] else { continue };
            let mut rolled: HashMap<(i64, usize), Vec<i64>> = HashMap::new();
            for ((bucket, group), totals) in &sums[from] {
                let keys = level_keys
                    .entry(*bucket)
                    .or_insert_with(|| shared_keys.get(*bucket));
                let into = rolled
                    .entry((keys[*level as usize], *group))
                    .or_insert_with(|| vec![0; measures]);
                for (sum, total) in into.iter_mut().zip(totals) {
                    *sum += total;
                }
            }
            sums[l] = rolled;
        }
        let mut groups_by_id: Vec<Vec<Cell>> = vec![Vec::new(); group_ids.ids.len()];
        for (values, id) in group_ids.ids {
            groups_by_id[id] = values;
        }
        let levels = sums
            .into_iter()
            .map(|level| {
                level
                    .into_iter()
                    .map(|((bucket, group), totals)| {
                        ((bucket, groups_by_id[group].clone()), totals)
                    })
                    .collect()
            })
            .collect();
        Contribution { levels }
    }
}

/// A statement built for its backend.
pub(super) enum Built {
    /// Its SQL and values.
    Values(String, Vec<Value>),
    /// PostgreSQL SQL whose parameters, whole arrays, are bound.
    Bound(Bound),
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
    let backend = txn.backend();
    run(txn, statements(backend, names, aggregate, plan, old, new)?).await
}

/// Runs statements built by [`statements`], in order.
pub(super) async fn run(txn: &mut Txn, statements: Vec<Built>) -> Result<(), DbErr> {
    for statement in statements {
        match statement {
            Built::Values(sql, values) => txn.execute_sql(&sql, values).await?,
            Built::Bound(bound) => txn.execute_bound(bound).await?,
        };
    }
    Ok(())
}

/// The statements of [`apply`], built for `backend` (CPU only: they are
/// built while the server loads a batch's COPY). On PostgreSQL the levels'
/// additions are one statement.
pub(super) fn statements(
    backend: DbBackend,
    names: Names,
    aggregate: &Aggregate,
    plan: &DeltaPlan,
    old: Contribution,
    new: Contribution,
) -> Result<Vec<Built>, DbErr> {
    let postgres = backend == DbBackend::Postgres;
    let build = |statement: &dyn StatementBuilder| -> Built {
        let built = statement.build(&backend);
        Built::Values(built.sql, built.values.map_or_else(Vec::new, |v| v.0))
    };
    let mut statements: Vec<Built> = Vec::new();
    let measures = aggregate.measures.len();
    let columns: Vec<&str> = std::iter::once(TIME_COLUMN)
        .chain(aggregate.group_by.iter().map(|g| g.name.as_str()))
        .chain(aggregate.measures.iter().map(|m| m.name.as_str()))
        .collect();
    let key_columns = 1 + aggregate.group_by.len();
    // PostgreSQL: each level's addition, run together at the end, and the
    // arrays they bind.
    let mut additions: Vec<InsertStatement> = Vec::new();
    let mut arrays: Vec<Array> = Vec::new();
    // Per level whose presence fell somewhere: its table and those buckets.
    let mut emptied: Vec<(Alias, Vec<i64>)> = Vec::new();
    for (l, level) in aggregate.levels.iter().enumerate() {
        let table = aggregate.table(*level);
        let table_name = names.table(&table.name);
        let (old, new) = (&old.levels[l], &new.levels[l]);
        let mut changed: Vec<(&Bucket, Vec<i64>)> = Vec::new();
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
        let types: Vec<ColumnType> = columns
            .iter()
            .map(|c| table.column(c).map_or(ColumnType::BigInt, |c| c.ty))
            .collect();
        let add = OnConflict::columns(columns[..key_columns].iter().map(|c| names.column(c)))
            .values(columns[key_columns..].iter().map(|c| {
                (
                    names.column(c),
                    Expr::col((table_name.clone(), names.column(c)))
                        .add(Expr::col((Alias::new("excluded"), names.column(c)))),
                )
            }))
            .to_owned();
        if postgres {
            // Each column's values as one array parameter (bound as such,
            // not as a value per element), expanded by unnest.
            let mut unnest = Vec::new();
            for (c, ty) in types.iter().enumerate() {
                let cells = changed.iter().map(|((bucket, group), delta)| match c {
                    0 => Cell::Int(*bucket),
                    c if c < key_columns => group[c - 1].clone(),
                    c => Cell::Int(delta[c - key_columns]),
                });
                let array = Array::of(cells, ty.is_integer());
                let placeholder = format!("${}::{}", arrays.len() + 1, array.sql_type());
                arrays.push(array);
                unnest.push(Func::cust("unnest").arg(Expr::cust(placeholder)));
            }
            // Set-returning functions in one select list advance in step.
            let select = Query::select().exprs(unnest).to_owned();
            let mut insert = Query::insert();
            insert
                .into_table(table_name.clone())
                .columns(columns.iter().map(|c| names.column(c)))
                .select_from(select)
                .map_err(|e| DbErr::Custom(e.to_string()))?
                .on_conflict(add);
            additions.push(insert);
        } else {
            for chunk in changed.chunks(CHUNK / 2) {
                let mut insert = Query::insert();
                insert
                    .into_table(table_name.clone())
                    .columns(columns.iter().map(|c| names.column(c)));
                for ((bucket, group), delta) in chunk {
                    let mut cells: Vec<Cell> = vec![Cell::Int(*bucket)];
                    cells.extend(group.iter().cloned());
                    cells.extend(delta.iter().map(|d| Cell::Int(*d)));
                    let values: Vec<Value> = cells
                        .iter()
                        .zip(&types)
                        .map(|(c, t)| value(c, *t))
                        .collect();
                    insert.values_panic(values.into_iter().map(Into::into));
                }
                insert.on_conflict(add.clone());
                statements.push(build(&insert));
            }
        }
        // Groups left without rows: only where the presence fell.
        if changed.iter().any(|(_, delta)| delta[plan.presence] < 0) {
            let mut buckets: Vec<i64> = changed.iter().map(|((b, _), _)| *b).collect();
            buckets.dedup();
            emptied.push((table_name, buckets));
        }
    }
    // `WITH l0 AS (INSERT …), l1 AS (INSERT …) INSERT …`: PostgreSQL runs
    // each data-modifying part once, to completion.
    if let Some(last) = additions.pop() {
        let mut with = WithClause::new();
        for (at, insert) in additions.into_iter().enumerate() {
            with.cte(
                CommonTableExpression::new()
                    .query(insert)
                    .table_name(Alias::new(format!("l{at}")))
                    .to_owned(),
            );
        }
        let built = StatementBuilder::build(&with.query(last), &backend);
        if built.values.is_some_and(|values| !values.0.is_empty()) {
            return Err(DbErr::Custom(
                "a level addition binds values besides its arrays".into(),
            ));
        }
        statements.push(Built::Bound(Bound::arrays(built.sql, arrays)));
    }
    let presence = names.column(&aggregate.measures[plan.presence].name);
    let time = Expr::col(names.column(TIME_COLUMN));
    for (table_name, buckets) in emptied {
        let cells: Vec<Cell> = buckets.iter().map(|b| Cell::Int(*b)).collect();
        let tuples: Vec<&[Cell]> = cells.iter().map(std::slice::from_ref).collect();
        let conditions = membership(
            postgres,
            std::slice::from_ref(&time),
            &[ColumnType::BigInt],
            &tuples,
        );
        for condition in conditions {
            let delete = Query::delete()
                .from_table(table_name.clone())
                .and_where(condition)
                .and_where(Expr::col(presence.clone()).lte(0))
                .to_owned();
            statements.push(build(&delete));
        }
    }
    Ok(statements)
}
