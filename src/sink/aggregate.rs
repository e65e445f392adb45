//! The calendar and the aggregates, kept exact in each batch's transaction.
//!
//! Before a batch writes its facts, the buckets it will change are read:
//! the time keys of the rows it replaces (by `replace_by`, else by key) and
//! of its new rows, and, for a batch of a table an aggregate joins, the
//! time keys of the facts joined to the old and new join values. After the
//! facts are written, the DATE_TIME days those keys fall in are filled, and
//! each touched bucket of each level is recomputed from the facts: deleted,
//! then inserted again by one `INSERT … SELECT … GROUP BY` whose ranges on
//! the time key use its index. Distinct counts and once-per values number
//! the rows of each tuple with `ROW_NUMBER()` and take the first. All of
//! it is SeaQuery, the same statements on every backend.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use chrono::NaiveDate;
use sea_orm::sea_query::{
    Alias, Asterisk, Cond, Expr, ExprTrait, Func, Index, JoinType, OnConflict, OverStatement,
    Query, SelectStatement, WindowStatement,
};
use sea_orm::{ConnectionTrait, DbErr};

use super::delta::{self, Contribution, DeltaPlan};
use super::txn::{Scalar, Txn};
use super::write::{CHUNK, Facts, value};
use super::{Names, SinkError, ddl, postgres};
use crate::aggregate::{Aggregate, ColumnRef, Filter, MeasureKind, Operand, TIME_COLUMN, Test};
use crate::calendar::{self, Attribute, Calendar, INTERVAL, Level};
use crate::catalog::{Catalog, ColumnType, Role, Table};
use crate::mapping::Constant;
use crate::plan::{Cell, Conversion, Row};

/// What is aggregated in one database: the calendar, the enabled
/// aggregates, and which calendar days are known to be filled.
pub struct Aggregation {
    pub calendar: Calendar,
    /// Extend the calendar when fewer days remain; fill this far ahead.
    pub days_ahead: (u64, u64),
    pub aggregates: Vec<Aggregate>,
    /// Each aggregate's fact table, and how it is kept by deltas (None:
    /// its touched buckets are recomputed).
    facts: Vec<Table>,
    /// Each aggregate's joined tables, in join order.
    joined: Vec<Vec<Table>>,
    deltas: Vec<Option<DeltaPlan>>,
    table: Option<Table>,
    filled: Mutex<BTreeSet<NaiveDate>>,
    /// The last day the calendar is known to be filled to, ahead of today.
    ahead: Mutex<Option<NaiveDate>>,
}

/// How a batch of one fact table touches one aggregate.
#[derive(Debug, Clone)]
enum Touch {
    /// It writes the aggregate's fact.
    Fact,
    /// It writes the table of these joins.
    Joined(Vec<usize>),
}

/// What a batch changes in one aggregate, read before its facts are written.
enum Change {
    /// The interval keys whose buckets are recomputed.
    Buckets(BTreeSet<i64>),
    /// The affected identities, and what their rows contributed before.
    Delta {
        identities: HashSet<Vec<Cell>>,
        old: Contribution,
        /// The after-state is the batch's own rows (no read back).
        in_memory: bool,
    },
}

/// What a batch changes, per aggregate (index into `Aggregation::aggregates`).
#[derive(Default)]
pub(super) struct Touched {
    changes: Vec<(usize, Change)>,
}

impl Aggregation {
    pub fn new(
        calendar: Calendar,
        days_ahead: (u64, u64),
        aggregates: Vec<Aggregate>,
        catalog: &Catalog,
    ) -> Aggregation {
        let table = catalog
            .tables
            .values()
            .find(|t| t.role == Role::Calendar && t.name == calendar::TABLE)
            .cloned();
        let facts: Vec<Table> = aggregates
            .iter()
            .map(|a| {
                catalog
                    .table(&a.fact)
                    .cloned()
                    .expect("validated against the catalog")
            })
            .collect();
        let joined = aggregates
            .iter()
            .map(|a| {
                a.joins
                    .iter()
                    .map(|j| {
                        catalog
                            .table(&j.table)
                            .cloned()
                            .expect("validated against the catalog")
                    })
                    .collect()
            })
            .collect();
        let deltas = aggregates
            .iter()
            .zip(&facts)
            .map(|(aggregate, fact)| DeltaPlan::of(aggregate, fact))
            .collect();
        Aggregation {
            calendar,
            days_ahead,
            aggregates,
            facts,
            joined,
            deltas,
            table,
            filled: Mutex::new(BTreeSet::new()),
            ahead: Mutex::new(None),
        }
    }

    fn touches(&self, fact: &str) -> Vec<(usize, Touch)> {
        self.aggregates
            .iter()
            .enumerate()
            .filter_map(|(at, aggregate)| {
                if aggregate.fact == fact {
                    return Some((at, Touch::Fact));
                }
                let joins: Vec<usize> = (aggregate.joins.iter().enumerate())
                    .filter(|(_, join)| join.table == fact)
                    .map(|(j, _)| j)
                    .collect();
                (!joins.is_empty()).then_some((at, Touch::Joined(joins)))
            })
            .collect()
    }

    /// Reads what the batch's rows will change, before they are written:
    /// the affected identities and their rows' contribution (deltas), or
    /// the interval keys of the buckets to recompute.
    pub(super) async fn before(
        &self,
        txn: &mut Txn,
        facts: &Facts<'_>,
        rows: &[&Row],
        keys: &[Vec<i64>],
    ) -> Result<Touched, DbErr> {
        let mut touched = Touched::default();
        let names = facts.names;
        let touches = self.touches(&facts.table.name);
        // Batches of an aggregate's fact and of its joined tables take
        // turns on PostgreSQL, each reading what the other committed: one
        // writing a session while another writes its interaction's agent
        // would otherwise each miss the other's rows. (SQLite has one
        // writer at a time already.) Always in the same order.
        if txn.is_postgres() {
            for (at, _) in &touches {
                let key = format!("martmap:aggregate:{}", self.aggregates[*at].name);
                let lock = Query::select()
                    .expr(Expr::cust_with_values(
                        "pg_advisory_xact_lock(hashtextextended($1, 0))",
                        [key],
                    ))
                    .to_owned();
                txn.execute(&lock).await?;
            }
        }
        for (at, touch) in touches {
            let aggregate = &self.aggregates[at];
            let fact = &self.facts[at];
            // The fact columns whose values the batch changes: the time key
            // (recompute) or the identity (deltas).
            let selected: Vec<&str> = match &self.deltas[at] {
                Some(delta) => delta.identity.iter().map(String::as_str).collect(),
                None => vec![aggregate.time_key.as_str()],
            };
            let mut found: BTreeSet<Vec<Cell>> = BTreeSet::new();
            // The batch's rows are the whole after-state of its identities
            // when the delta identity is the mapping's own: then only the
            // identities already stored are read before, and nothing after.
            let in_memory = matches!(touch, Touch::Fact)
                && self.deltas[at]
                    .as_ref()
                    .is_some_and(|delta| delta::covers_batch(delta, aggregate, facts));
            let mut stored: HashSet<Vec<Cell>> = HashSet::new();
            match touch {
                Touch::Fact => {
                    for old in old_values(txn, facts, rows, keys, &selected).await? {
                        let old: Vec<Cell> = old.into_iter().map(scalar_cell).collect();
                        stored.insert(old.clone());
                        found.insert(old);
                    }
                    for (row, row_keys) in rows.iter().zip(keys) {
                        found.insert(
                            selected
                                .iter()
                                .map(|c| cell(facts, row, row_keys, c))
                                .collect(),
                        );
                    }
                }
                Touch::Joined(joins) => {
                    for j in joins {
                        let join = &aggregate.joins[j];
                        let joined: Vec<&str> = join.on.iter().map(|(c, _)| c.as_str()).collect();
                        let mut values: BTreeSet<Vec<Cell>> = BTreeSet::new();
                        for old in old_values(txn, facts, rows, keys, &joined).await? {
                            values.insert(old.into_iter().map(scalar_cell).collect());
                        }
                        for (row, row_keys) in rows.iter().zip(keys) {
                            values.insert(
                                joined
                                    .iter()
                                    .map(|c| cell(facts, row, row_keys, c))
                                    .collect(),
                            );
                        }
                        let fact_columns: Vec<&str> =
                            join.on.iter().map(|(_, f)| f.as_str()).collect();
                        for found_row in
                            fact_values(txn, names, fact, &fact_columns, &values, &selected).await?
                        {
                            found.insert(found_row.into_iter().map(scalar_cell).collect());
                        }
                    }
                }
            }
            found.retain(|values| values.iter().all(|v| !v.is_null()));
            if found.is_empty() {
                continue;
            }
            let change = match &self.deltas[at] {
                Some(delta) => {
                    let identities: HashSet<Vec<Cell>> = found.into_iter().collect();
                    let before = if in_memory { &stored } else { &identities };
                    let old = delta::contribution(
                        txn,
                        names,
                        &self.calendar,
                        aggregate,
                        fact,
                        delta,
                        before,
                    )
                    .await?;
                    Change::Delta {
                        identities,
                        old,
                        in_memory,
                    }
                }
                None => Change::Buckets(
                    found
                        .into_iter()
                        .filter_map(|values| match values.first() {
                            Some(Cell::Int(key)) => Some(*key),
                            _ => None,
                        })
                        .collect(),
                ),
            };
            touched.changes.push((at, change));
        }
        Ok(touched)
    }

    /// Fills the calendar for the batch's keys and recomputes the touched
    /// buckets, after the facts are written. Returns the days it filled,
    /// to be remembered once the transaction commits.
    pub(super) async fn after(
        &self,
        txn: &mut Txn,
        facts: &Facts<'_>,
        rows: &[&Row],
        row_keys: &[Vec<i64>],
        touched: Touched,
    ) -> Result<Vec<NaiveDate>, DbErr> {
        let names = facts.names;
        let mut keys: BTreeSet<i64> = BTreeSet::new();
        for (at, (_, value)) in facts.plan.columns.iter().enumerate() {
            if matches!(
                facts.plan.values[*value].convert,
                Conversion::DateTimeKey { interval } if i64::from(interval) % INTERVAL == 0
            ) {
                keys.extend(rows.iter().filter_map(|row| match row.values[at] {
                    Cell::Int(key) => Some(key),
                    _ => None,
                }));
            }
        }
        for (_, change) in &touched.changes {
            if let Change::Buckets(found) = change {
                keys.extend(found.iter().copied());
            }
        }
        let days = self.fill_days(txn, names, &keys).await?;
        self.fill_ahead(txn, names).await?;
        for (at, change) in touched.changes {
            let aggregate = &self.aggregates[at];
            match change {
                Change::Buckets(found) => {
                    for &level in &aggregate.levels {
                        let buckets: BTreeSet<(i64, i64)> = found
                            .iter()
                            .map(|key| self.calendar.bucket(level, *key))
                            .collect();
                        recompute(txn, names, aggregate, level, Some(&buckets)).await?;
                    }
                }
                Change::Delta {
                    identities,
                    old,
                    in_memory,
                } => {
                    let (fact, delta) = (&self.facts[at], self.deltas[at].as_ref());
                    let delta = delta.expect("a delta change has a delta plan");
                    let new = if in_memory {
                        let joined = &self.joined[at];
                        let batch = delta::BatchRows {
                            facts,
                            rows,
                            keys: row_keys,
                        };
                        delta::batch_contribution(
                            txn,
                            names,
                            &self.calendar,
                            aggregate,
                            joined,
                            &batch,
                        )
                        .await?
                    } else {
                        delta::contribution(
                            txn,
                            names,
                            &self.calendar,
                            aggregate,
                            fact,
                            delta,
                            &identities,
                        )
                        .await?
                    };
                    delta::apply(txn, names, aggregate, delta, old, new).await?;
                }
            }
        }
        Ok(days)
    }

    /// Remembers days filled by a committed transaction.
    pub(super) fn filled(&self, days: Vec<NaiveDate>) {
        self.filled.lock().unwrap().extend(days);
    }

    /// Inserts the DATE_TIME rows of the local days of `keys` that are not
    /// known to be filled; returns those days.
    async fn fill_days(
        &self,
        txn: &mut Txn,
        names: Names,
        keys: &BTreeSet<i64>,
    ) -> Result<Vec<NaiveDate>, DbErr> {
        let Some(table) = &self.table else {
            return Ok(Vec::new());
        };
        let days: BTreeSet<NaiveDate> = keys.iter().map(|k| self.calendar.date(*k)).collect();
        let missing: Vec<NaiveDate> = {
            let filled = self.filled.lock().unwrap();
            days.into_iter().filter(|d| !filled.contains(d)).collect()
        };
        for day in &missing {
            let intervals: Vec<i64> = self.calendar.days(*day, *day).collect();
            insert_intervals(txn, names, table, &self.calendar, &intervals).await?;
        }
        Ok(missing)
    }

    /// Fills the calendar from today to today + max days ahead when any
    /// interval of the next min days is missing: at start, and in a batch
    /// on the first day a long run finds the calendar short. The check reads
    /// the database at most once a day.
    pub(super) async fn fill_ahead(&self, txn: &mut Txn, names: Names) -> Result<usize, DbErr> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let (min, max) = self.days_ahead;
        let today = self.calendar.date(super::control::now());
        let needed = today + chrono::Days::new(min);
        if self
            .ahead
            .lock()
            .unwrap()
            .is_some_and(|until| until >= needed)
        {
            return Ok(0);
        }
        let expected = self.calendar.days(today, needed).count() as i64;
        let (start, end) = (
            self.calendar.day_start(today),
            self.calendar.day_start(needed + chrono::Days::new(1)),
        );
        let key = || Expr::col(names.column(Level::Subhr.column()));
        let count = Query::select()
            .expr(Func::count(Expr::col(Asterisk)).cast_as("BIGINT"))
            .from(names.table(&table.name))
            .and_where(key().gte(start))
            .and_where(key().lt(end))
            .to_owned();
        let rows = txn.query(&count).await?;
        let have = rows
            .first()
            .and_then(|row| row.first())
            .map_or(Ok(0), Scalar::int)?;
        let mut added = 0;
        let until = if have < expected {
            let to = today + chrono::Days::new(max);
            let intervals: Vec<i64> = self.calendar.days(today, to).collect();
            insert_intervals(txn, names, table, &self.calendar, &intervals).await?;
            added = intervals.len();
            to
        } else {
            needed
        };
        *self.ahead.lock().unwrap() = Some(until);
        Ok(added)
    }

    /// Refuses a calendar filled in another time zone: its rows would
    /// disagree with the ones added now.
    pub(super) async fn check_zone(&self, txn: &mut Txn, names: Names) -> Result<(), SinkError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let Some(key) = max_key(txn, names, table).await? else {
            return Ok(());
        };
        let day = Level::Day.column();
        let select = Query::select()
            .expr(Expr::col(names.column(day)).cast_as("BIGINT"))
            .from(names.table(&table.name))
            .and_where(Expr::col(names.column(calendar::Level::Subhr.column())).eq(key))
            .to_owned();
        let rows = txn.query(&select).await?;
        let stored = rows.first().and_then(|row| row.first()).map(Scalar::int);
        let expected = self.calendar.level_key(Level::Day, key);
        match stored {
            Some(Ok(stored)) if stored != expected => Err(SinkError::CalendarZone {
                zone: self.calendar.zone.name().to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Creates an aggregate's level tables and the indexes its upkeep reads.
    pub(super) async fn create(
        db: &impl ConnectionTrait,
        names: Names,
        aggregate: &Aggregate,
    ) -> Result<(), DbErr> {
        for &level in &aggregate.levels {
            ddl::create(db, &names, &aggregate.table(level)).await?;
        }
        let mut indexed: Vec<&str> = vec![aggregate.time_key.as_str()];
        for join in &aggregate.joins {
            indexed.extend(join.on.iter().map(|(_, fact)| fact.as_str()));
        }
        for column in indexed {
            let index = Index::create()
                .if_not_exists()
                .name(names.index(&aggregate.fact, &format!("{column}_IX")))
                .table(names.table(&aggregate.fact))
                .col(names.column(column))
                .to_owned();
            db.execute(&index).await?;
        }
        Ok(())
    }

    /// Recomputes every bucket of every level of an aggregate; fills the
    /// calendar for every fact key first.
    pub(super) async fn rebuild(
        &self,
        txn: &mut Txn,
        names: Names,
        aggregate: &Aggregate,
    ) -> Result<(), DbErr> {
        let select = Query::select()
            .distinct()
            .expr(Expr::col(names.column(&aggregate.time_key)).cast_as("BIGINT"))
            .from(names.table(&aggregate.fact))
            .to_owned();
        let keys: BTreeSet<i64> = txn
            .query(&select)
            .await?
            .iter()
            .filter_map(|row| row.first().and_then(|k| k.int().ok()))
            .collect();
        let days = self.fill_days(txn, names, &keys).await?;
        for &level in &aggregate.levels {
            if aggregate.rolled_up_from(level).is_some() {
                let buckets = keys
                    .iter()
                    .map(|k| self.calendar.bucket(level, *k))
                    .collect();
                recompute(txn, names, aggregate, level, Some(&buckets)).await?;
            } else {
                recompute(txn, names, aggregate, level, None).await?;
            }
        }
        self.filled(days);
        Ok(())
    }
}

/// The value of a fact column in a batch row: a mapped column or a
/// dimension key.
pub(super) fn cell(facts: &Facts<'_>, row: &Row, keys: &[i64], column: &str) -> Cell {
    if let Some(at) = facts.plan.columns.iter().position(|(c, _)| c == column) {
        return row.values[at].clone();
    }
    match facts
        .plan
        .dimensions
        .iter()
        .position(|d| d.key_column == column)
    {
        Some(d) => Cell::Int(keys[d]),
        None => Cell::Null,
    }
}

pub(super) fn scalar_cell(scalar: Scalar) -> Cell {
    match scalar {
        Scalar::Null => Cell::Null,
        Scalar::Int(n) => Cell::Int(n),
        Scalar::Text(text) => Cell::Text(text.into()),
    }
}

/// A column read back as BIGINT when it is an integer (PostgreSQL hands
/// integers back only as their own width).
fn read_column(names: Names, table: &Table, alias: Option<&str>, column: &str) -> Expr {
    let col = match alias {
        Some(alias) => Expr::col((Alias::new(alias), names.column(column))),
        None => Expr::col(names.column(column)),
    };
    match table.column(column).map(|c| c.ty) {
        Some(ty) if ty.is_integer() => col.cast_as("BIGINT"),
        _ => col,
    }
}

/// The distinct values of `columns` in the stored rows this batch replaces
/// or updates: those sharing its `replace_by` identities, else its keys.
async fn old_values(
    txn: &mut Txn,
    facts: &Facts<'_>,
    rows: &[&Row],
    keys: &[Vec<i64>],
    columns: &[&str],
) -> Result<Vec<Vec<Scalar>>, DbErr> {
    let identity: Vec<&str> = if facts.plan.replace_by.is_empty() {
        facts.plan.key.iter().map(String::as_str).collect()
    } else {
        facts.plan.replace_by.iter().map(String::as_str).collect()
    };
    let identities: BTreeSet<Vec<Cell>> = rows
        .iter()
        .zip(keys)
        .map(|(row, row_keys)| {
            identity
                .iter()
                .map(|c| cell(facts, row, row_keys, c))
                .collect()
        })
        .collect();
    fact_values(
        txn,
        facts.names,
        facts.table,
        &identity,
        &identities,
        columns,
    )
    .await
}

/// The distinct `selected` values of the facts whose `columns` hold one
/// of `values`.
pub(super) async fn fact_values(
    txn: &mut Txn,
    names: Names,
    fact: &Table,
    columns: &[&str],
    values: &BTreeSet<Vec<Cell>>,
    selected: &[&str],
) -> Result<Vec<Vec<Scalar>>, DbErr> {
    let values: Vec<&[Cell]> = values
        .iter()
        .filter(|tuple| tuple.iter().all(|v| !v.is_null()))
        .map(Vec::as_slice)
        .collect();
    let types: Vec<ColumnType> = columns
        .iter()
        .map(|c| fact.column(c).map_or(ColumnType::Text, |c| c.ty))
        .collect();
    let exprs: Vec<Expr> = columns.iter().map(|c| Expr::col(names.column(c))).collect();
    let mut select = Query::select();
    select.distinct().from(names.table(&fact.name));
    for column in selected {
        select.expr(read_column(names, fact, None, column));
    }
    let mut found = Vec::new();
    for condition in membership(txn.is_postgres(), &exprs, &types, &values) {
        found.extend(
            txn.query(&select.clone().and_where(condition).to_owned())
                .await?,
        );
    }
    Ok(found)
}

async fn max_key(txn: &mut Txn, names: Names, table: &Table) -> Result<Option<i64>, DbErr> {
    let select = Query::select()
        .expr(Func::max(Expr::col(names.column(Level::Subhr.column()))).cast_as("BIGINT"))
        .from(names.table(&table.name))
        .to_owned();
    let rows = txn.query(&select).await?;
    Ok(rows
        .first()
        .and_then(|row| row.first())
        .and_then(|k| k.int().ok()))
}

/// Inserts DATE_TIME rows, skipping those that exist.
async fn insert_intervals(
    txn: &mut Txn,
    names: Names,
    table: &Table,
    calendar: &Calendar,
    keys: &[i64],
) -> Result<(), DbErr> {
    for chunk in keys.chunks(CHUNK / 2) {
        let rows: Vec<Vec<(&str, Attribute)>> = chunk
            .iter()
            .map(|key| calendar.interval(*key).attributes())
            .collect();
        let Some(first) = rows.first() else {
            continue;
        };
        let columns: Vec<&str> = first
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| table.column(c).is_some())
            .collect();
        let mut insert = Query::insert();
        insert
            .into_table(names.table(&table.name))
            .columns(columns.iter().map(|c| names.column(c)));
        for row in &rows {
            let values = row
                .iter()
                .filter(|(c, _)| columns.contains(c))
                .map(|(c, attribute)| {
                    let ty = table.column(c).map_or(ColumnType::BigInt, |c| c.ty);
                    let cell = match attribute {
                        Attribute::Int(n) => Cell::Int(*n),
                        Attribute::Text(text) => Cell::Text(text.as_str().into()),
                    };
                    value(&cell, ty).into()
                });
            insert.values_panic(values);
        }
        insert.on_conflict(
            OnConflict::column(names.column(Level::Subhr.column()))
                .do_nothing()
                .to_owned(),
        );
        txn.execute(&insert).await?;
    }
    Ok(())
}

/// `(columns) IN values` as conditions, one per statement: on PostgreSQL
/// one array parameter for a single column, elsewhere chunks of bound
/// values (a row-value IN for several columns). Values are bound as their
/// columns' declared types.
pub(super) fn membership(
    postgres: bool,
    columns: &[Expr],
    types: &[ColumnType],
    values: &[&[Cell]],
) -> Vec<Expr> {
    if let ([column], true) = (columns, postgres) {
        let cells = values.iter().map(|tuple| &tuple[0]);
        return vec![postgres::any_of(
            column.clone(),
            cells,
            types[0].is_integer(),
        )];
    }
    values
        .chunks(CHUNK)
        .map(|chunk| match columns {
            [column] => column
                .clone()
                .is_in(chunk.iter().map(|tuple| value(&tuple[0], types[0]))),
            _ => Expr::tuple(columns.iter().cloned()).in_tuples(chunk.iter().map(|tuple| {
                sea_orm::sea_query::ValueTuple::Many(
                    tuple
                        .iter()
                        .zip(types)
                        .map(|(v, ty)| value(v, *ty))
                        .collect(),
                )
            })),
        })
        .collect()
}

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
async fn recompute(
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
