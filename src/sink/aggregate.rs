//! The calendar and the aggregates, kept exact in each batch's transaction:
//! the orchestration. `Aggregation` holds what one database aggregates;
//! `Database::aggregate` sets it up (tables, backfill, the calendar ahead)
//! and every batch's `Upkeep` runs around its fact writes.
//!
//! Before a batch writes its facts (with the aggregate's turn taken on
//! PostgreSQL), `Aggregation::before` reads what it will change: the
//! identities it affects and their rows' contribution (`delta.rs`), or,
//! for an aggregate deltas cannot keep, the time keys of the rows it
//! replaces and adds and of the facts joined to the join values it changes
//! (`recompute.rs`). Where the batch's rows are the whole after-state of
//! their identities, the contributions are summed in memory instead: the
//! rows replaced are the ones PostgreSQL's COPY path deletes, which it
//! hands back (`Upkeep::replaced`), and the sums run while the server loads
//! the COPY (`Upkeep::compute`). After the writes, `Upkeep::finish` fills
//! the calendar days of the batch's keys (`date_time.rs`) and applies the
//! change: the contributions' difference added, or the touched buckets
//! recomputed.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::NaiveDate;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Index, IndexType, Query};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use super::delta::{self, Built, Contribution, DeltaPlan, InMemory, Joined, JoinedRead, LevelKeys};
use super::recompute::recompute;
use super::txn::{Scalar, Txn};
use super::write::{CHUNK, Facts, value};
use super::{Names, SinkError, ddl, postgres};
use crate::aggregate::Aggregate;
use crate::calendar::{self, Calendar, INTERVAL};
use crate::catalog::{Catalog, ColumnType, Role, Table};
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
    /// DATE_TIME, when the catalog declares it.
    pub(super) table: Option<Table>,
    /// The local days known to be filled.
    pub(super) filled: Mutex<BTreeSet<NaiveDate>>,
    /// The last day the calendar is known to be filled to, ahead of today.
    pub(super) ahead: Mutex<Option<NaiveDate>>,
    /// The calendar's level keys of the intervals batches met.
    level_keys: LevelKeys,
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
    /// Kept by deltas read from the database: the affected identities, and
    /// what their rows contributed before the writes.
    Read {
        identities: BTreeSet<Vec<Cell>>,
        old: Contribution,
    },
    /// Kept by deltas computed in memory: the batch's rows are the whole
    /// after-state of its identities.
    InMemory(InMemoryChange),
}

/// A delta computed from rows in memory: the batch's, and those it
/// replaces.
struct InMemoryChange {
    /// What the replaced rows contributed, read before the writes; `None`
    /// when it is summed from the rows the write hands back instead
    /// (PostgreSQL's COPY path deletes them with RETURNING).
    old: Option<Contribution>,
    /// The read of the joined rows, prepared before it runs.
    read: Option<JoinedRead>,
    joined: Option<Joined>,
    /// The statements that apply it, built once it is summed.
    statements: Option<Result<Vec<Built>, DbErr>>,
}

/// One batch's upkeep of the aggregates, from before its facts are written
/// to after: [`Aggregation::before`] reads what the batch will change; a
/// write that deletes the rows it replaces runs [`Upkeep::prepare`] while
/// the server takes its locks, hands the deleted rows to
/// [`Upkeep::replaced`] (reading the joined rows then, while the
/// connection is free) and runs [`Upkeep::compute`] while the server loads
/// the new rows; [`Upkeep::finish`] does whatever of that is left and
/// applies the change.
pub(super) struct Upkeep<'a> {
    aggregation: &'a Aggregation,
    facts: &'a Facts<'a>,
    rows: &'a [&'a Row],
    keys: &'a [Vec<i64>],
    /// What the batch changes, per aggregate (index into `aggregates`).
    changes: Vec<(usize, Change)>,
    /// The fact columns the write returns of the rows it replaces, and
    /// those rows once it handed them back.
    returning: Vec<String>,
    replaced: Vec<Vec<Cell>>,
    /// The aggregates' turns (advisory lock keys) the write takes first,
    /// with its identities' locks.
    locks: Vec<String>,
    /// Whether the joined rows are read (after the replaced rows came).
    joined: bool,
    /// The backend the statements are built for.
    backend: DbBackend,
}

impl Aggregation {
    pub fn new(
        calendar: Calendar,
        days_ahead: (u64, u64),
        aggregates: Vec<Aggregate>,
        catalog: &Catalog,
    ) -> Result<Aggregation, SinkError> {
        let calendar_table = catalog
            .tables
            .values()
            .find(|t| t.role == Role::Calendar && t.name == calendar::TABLE)
            .cloned();
        // Validated against a catalog: this one must hold the same tables.
        let table = |name: &str| {
            catalog
                .table(name)
                .cloned()
                .ok_or_else(|| SinkError::MissingTable(name.to_owned()))
        };
        let facts: Vec<Table> = aggregates
            .iter()
            .map(|a| table(&a.fact))
            .collect::<Result<_, _>>()?;
        let joined = aggregates
            .iter()
            .map(|a| a.joins.iter().map(|j| table(&j.table)).collect())
            .collect::<Result<_, _>>()?;
        let deltas = aggregates
            .iter()
            .zip(&facts)
            .map(|(aggregate, fact)| DeltaPlan::of(aggregate, fact))
            .collect();
        Ok(Aggregation {
            calendar,
            days_ahead,
            aggregates,
            facts,
            joined,
            deltas,
            table: calendar_table,
            level_keys: LevelKeys::new(calendar),
            filled: Mutex::new(BTreeSet::new()),
            ahead: Mutex::new(None),
        })
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
    pub(super) async fn before<'a>(
        &'a self,
        txn: &mut Txn,
        facts: &'a Facts<'a>,
        rows: &'a [&'a Row],
        keys: &'a [Vec<i64>],
    ) -> Result<Upkeep<'a>, DbErr> {
        let mut upkeep = Upkeep {
            aggregation: self,
            facts,
            rows,
            keys,
            changes: Vec::new(),
            returning: Vec::new(),
            replaced: Vec::new(),
            locks: Vec::new(),
            joined: false,
            backend: txn.backend(),
        };
        let names = facts.names;
        let touches = self.touches(&facts.table.name);
        // PostgreSQL's COPY path deletes every stored row of the batch's
        // identities before it loads theirs: it can return them.
        let handed_back = txn.is_postgres() && facts.preparer.copy;
        // The batch's rows are the whole after-state of its identities when
        // the delta identity is the mapping's own: then the stored rows of
        // its identities are the ones it replaces, and nothing is read
        // after the write.
        let in_memory = |at: usize, touch: &Touch| {
            let aggregate = &self.aggregates[at];
            matches!(touch, Touch::Fact)
                && (self.deltas[at].as_ref())
                    .is_some_and(|delta| delta::covers_batch(delta, aggregate, facts))
        };
        // Batches of an aggregate's fact and of its joined tables take
        // turns on PostgreSQL, each reading what the other committed: one
        // writing a session while another writes its interaction's agent
        // would otherwise each miss the other's rows. (SQLite has one
        // writer at a time already.) Always in the same order, before the
        // batch's identities. When nothing is read before the write, the
        // write takes them with its identities' locks, in one statement.
        if txn.is_postgres() {
            let keys = (touches.iter())
                .map(|(at, _)| format!("martmap:aggregate:{}", self.aggregates[*at].name));
            if handed_back && touches.iter().all(|(at, touch)| in_memory(*at, touch)) {
                upkeep.locks.extend(keys);
            } else {
                for key in keys {
                    let lock = Query::select()
                        .expr(Expr::cust_with_values(
                            "pg_advisory_xact_lock(hashtextextended($1, 0))",
                            [key],
                        ))
                        .to_owned();
                    txn.execute(&lock).await?;
                }
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
            let in_memory = in_memory(at, &touch);
            // Summed from the rows the write hands back: all it needs to
            // know is whether the batch has an identity at all.
            if in_memory && handed_back {
                if upkeep.batch().any_values(&selected) {
                    for column in delta::fact_columns(aggregate) {
                        if !upkeep.returning.iter().any(|c| c == column) {
                            upkeep.returning.push(column.to_owned());
                        }
                    }
                    upkeep
                        .changes
                        .push((at, Change::InMemory(InMemoryChange::new(None))));
                }
                continue;
            }
            let mut found = match touch {
                Touch::Fact if in_memory => upkeep.batch().values(&selected),
                Touch::Fact => changed(txn, facts, rows, keys, &selected).await?,
                Touch::Joined(joins) => {
                    let mut found = BTreeSet::new();
                    for j in joins {
                        let join = &aggregate.joins[j];
                        let joined: Vec<&str> = join.on.iter().map(|(c, _)| c.as_str()).collect();
                        let values = changed(txn, facts, rows, keys, &joined).await?;
                        let fact_columns: Vec<&str> =
                            join.on.iter().map(|(_, f)| f.as_str()).collect();
                        for found_row in
                            fact_values(txn, names, fact, &fact_columns, &values, &selected).await?
                        {
                            found.insert(found_row.into_iter().map(scalar_cell).collect());
                        }
                    }
                    found
                }
            };
            found.retain(|values| values.iter().all(|v| !v.is_null()));
            if found.is_empty() {
                continue;
            }
            let change = match &self.deltas[at] {
                Some(delta) => {
                    let identities = found;
                    let old = delta::contribution(
                        txn,
                        names,
                        &self.level_keys,
                        aggregate,
                        fact,
                        delta,
                        &identities,
                    )
                    .await?;
                    if in_memory {
                        Change::InMemory(InMemoryChange::new(Some(old)))
                    } else {
                        Change::Read { identities, old }
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
            upkeep.changes.push((at, change));
        }
        Ok(upkeep)
    }

    /// Remembers days filled by a committed transaction.
    pub(super) fn filled(&self, days: Vec<NaiveDate>) {
        self.filled.lock().unwrap().extend(days);
    }

    /// Creates the level tables of aggregate `at` and the fact indexes its
    /// upkeep reads: the join columns (a joined table's batch finds its
    /// facts by them) and, when touched buckets are recomputed, the time
    /// key. (Kept by deltas, it reads facts by their identity, which the
    /// mapping's key or `replace_by` lookups index already; an index costs
    /// every batch's COPY.)
    pub(super) async fn create(
        &self,
        db: &impl ConnectionTrait,
        names: Names,
        at: usize,
    ) -> Result<(), DbErr> {
        let aggregate = &self.aggregates[at];
        for &level in &aggregate.levels {
            ddl::create(db, &names, &aggregate.table(level)).await?;
        }
        // Join columns are only looked up by equality: on PostgreSQL a
        // hash index, a third of a B-tree's cost per written row. (SQLite
        // has B-trees only.)
        let mut indexed: Vec<(&str, IndexType)> = Vec::new();
        if self.deltas[at].is_none() {
            indexed.push((aggregate.time_key.as_str(), IndexType::BTree));
        }
        // Only a fact's rows change under the facts joined to them (a
        // dimension's members are never rewritten).
        for (join, joined) in aggregate.joins.iter().zip(&self.joined[at]) {
            if joined.role == Role::Fact {
                indexed.extend(
                    join.on
                        .iter()
                        .map(|(_, fact)| (fact.as_str(), IndexType::Hash)),
                );
            }
        }
        for (column, kind) in indexed {
            let index = Index::create()
                .if_not_exists()
                .name(names.index(&aggregate.fact, &format!("{column}_IX")))
                .table(names.table(&aggregate.fact))
                .col(names.column(column))
                .index_type(kind)
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

impl InMemoryChange {
    fn new(old: Option<Contribution>) -> Self {
        InMemoryChange {
            old,
            read: None,
            joined: None,
            statements: None,
        }
    }
}

impl<'a> Upkeep<'a> {
    /// The fact columns the write should return of the rows it replaces
    /// (none: it need not).
    pub fn returning(&self) -> &[String] {
        &self.returning
    }

    /// The advisory lock keys the write should take before its
    /// identities' (none: they are taken).
    pub fn locks(&self) -> &[String] {
        &self.locks
    }

    fn batch(&self) -> InMemory<'a> {
        InMemory::Batch {
            facts: self.facts,
            rows: self.rows,
            keys: self.keys,
        }
    }

    /// Prepares the read of the joined rows the batch's rows join to (CPU
    /// only: it runs while the server takes the write's locks).
    pub fn prepare(&mut self) {
        let aggregation = self.aggregation;
        let batch = self.batch();
        for (at, change) in &mut self.changes {
            let Change::InMemory(change) = change else {
                continue;
            };
            let mut read = JoinedRead::new(&aggregation.aggregates[*at], &batch);
            if self.backend == DbBackend::Postgres {
                read.bind(self.facts.names, &aggregation.joined[*at]);
            }
            change.read = Some(read);
        }
    }

    /// Takes the rows the write deleted to replace them (the values of
    /// [`Upkeep::returning`]), and reads the joined rows that they and the
    /// batch's rows join to.
    pub async fn replaced(&mut self, txn: &mut Txn, rows: Vec<Vec<Scalar>>) -> Result<(), DbErr> {
        self.replaced = rows
            .into_iter()
            .map(|row| row.into_iter().map(scalar_cell).collect())
            .collect();
        let mut changes = std::mem::take(&mut self.changes);
        for (at, change) in &mut changes {
            let Change::InMemory(change) = change else {
                continue;
            };
            let aggregation = self.aggregation;
            let aggregate = &aggregation.aggregates[*at];
            let mut read =
                (change.read.take()).unwrap_or_else(|| JoinedRead::new(aggregate, &self.batch()));
            // The replaced rows count only where their contribution was
            // not read before the write.
            if change.old.is_none() && !self.replaced.is_empty() {
                read.add(&InMemory::Read {
                    columns: &self.returning,
                    rows: &self.replaced,
                });
            }
            let joined = &aggregation.joined[*at];
            change.joined = Some(read.run(txn, self.facts.names, joined).await?);
        }
        self.changes = changes;
        self.joined = true;
        Ok(())
    }

    /// Sums what the batch's rows, and the rows handed back, contribute,
    /// and builds the statements that apply the difference: CPU only, so
    /// it runs while the server loads a COPY.
    pub fn compute(&mut self) {
        let aggregation = self.aggregation;
        let batch = self.batch();
        for (at, change) in &mut self.changes {
            let Change::InMemory(change) = change else {
                continue;
            };
            let Some(joined) = &change.joined else {
                continue;
            };
            let aggregate = &aggregation.aggregates[*at];
            let level_keys = &aggregation.level_keys;
            let new = delta::accumulate(level_keys, aggregate, joined, &batch);
            let old = change.old.take().unwrap_or_else(|| {
                let replaced = InMemory::Read {
                    columns: &self.returning,
                    rows: &self.replaced,
                };
                delta::accumulate(level_keys, aggregate, joined, &replaced)
            });
            let plan = aggregation.deltas[*at].as_ref();
            let plan = plan.expect("a delta change has a delta plan");
            let names = self.facts.names;
            change.statements = Some(delta::statements(
                self.backend,
                names,
                aggregate,
                plan,
                old,
                new,
            ));
        }
    }

    /// After the facts are written: fills the calendar for the batch's keys,
    /// then adds each delta or recomputes the touched buckets. Returns the
    /// days it filled, to be remembered once the transaction commits.
    pub async fn finish(mut self, txn: &mut Txn) -> Result<Vec<NaiveDate>, DbErr> {
        if !self.joined {
            // A change left to the write that never came. (The turns are
            // left to it only with such changes; a batch without rows
            // changes nothing, and needs no turn.)
            if !self.returning.is_empty() {
                return Err(DbErr::Custom(
                    "the fact write neither took the aggregates' turn nor handed back the rows it replaced".into(),
                ));
            }
            self.replaced(txn, Vec::new()).await?;
            self.compute();
        }
        let (aggregation, facts, rows) = (self.aggregation, self.facts, self.rows);
        let names = facts.names;
        let mut keys: BTreeSet<i64> = BTreeSet::new();
        for (at, (_, value)) in facts.plan.columns.iter().enumerate() {
            if matches!(
                facts.plan.values[*value].convert,
                Conversion::DateTimeKey { interval } if i64::from(interval) % INTERVAL == 0
            ) {
                let mut last = None;
                for row in rows {
                    // An event's rows are adjacent and mostly share a key.
                    if let Cell::Int(key) = row.values[at]
                        && last != Some(key)
                    {
                        keys.insert(key);
                        last = Some(key);
                    }
                }
            }
        }
        for (_, change) in &self.changes {
            if let Change::Buckets(found) = change {
                keys.extend(found.iter().copied());
            }
        }
        let days = aggregation.fill_days(txn, names, &keys).await?;
        aggregation.fill_ahead(txn, names).await?;
        for (at, change) in self.changes {
            let aggregate = &aggregation.aggregates[at];
            let plan = aggregation.deltas[at].as_ref();
            match change {
                Change::Buckets(found) => {
                    for &level in &aggregate.levels {
                        let buckets: BTreeSet<(i64, i64)> = found
                            .iter()
                            .map(|key| aggregation.calendar.bucket(level, *key))
                            .collect();
                        recompute(txn, names, aggregate, level, Some(&buckets)).await?;
                    }
                }
                Change::Read { identities, old } => {
                    let plan = plan.expect("a delta change has a delta plan");
                    let new = delta::contribution(
                        txn,
                        names,
                        &aggregation.level_keys,
                        aggregate,
                        &aggregation.facts[at],
                        plan,
                        &identities,
                    )
                    .await?;
                    delta::apply(txn, names, aggregate, plan, old, new).await?;
                }
                Change::InMemory(InMemoryChange { statements, .. }) => {
                    let Some(statements) = statements else {
                        return Err(DbErr::Custom("a delta was not computed".into()));
                    };
                    delta::run(txn, statements?).await?;
                }
            }
        }
        Ok(days)
    }
}

/// Where a fact column's value is in a batch row: a mapped value, a
/// dimension key, or neither.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place {
    Value(usize),
    Key(usize),
    Absent,
}

impl Place {
    pub fn of(facts: &Facts<'_>, column: &str) -> Place {
        let plan = facts.plan;
        match plan.columns.iter().position(|(c, _)| c == column) {
            Some(at) => Place::Value(at),
            None => match plan.dimensions.iter().position(|d| d.key_column == column) {
                Some(at) => Place::Key(at),
                None => Place::Absent,
            },
        }
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
pub(super) fn read_column(names: Names, table: &Table, alias: Option<&str>, column: &str) -> Expr {
    let col = match alias {
        Some(alias) => Expr::col((Alias::new(alias), names.column(column))),
        None => Expr::col(names.column(column)),
    };
    match table.column(column).map(|c| c.ty) {
        Some(ty) if ty.is_integer() => col.cast_as("BIGINT"),
        _ => col,
    }
}

/// The values of `columns` a batch changes: those of its rows and of the
/// stored rows they replace or update.
async fn changed(
    txn: &mut Txn,
    facts: &Facts<'_>,
    rows: &[&Row],
    keys: &[Vec<i64>],
    columns: &[&str],
) -> Result<BTreeSet<Vec<Cell>>, DbErr> {
    let mut all = InMemory::Batch { facts, rows, keys }.values(columns);
    for old in old_values(txn, facts, rows, keys, columns).await? {
        all.insert(old.into_iter().map(scalar_cell).collect());
    }
    Ok(all)
}

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
    let identities = InMemory::Batch { facts, rows, keys }.values(&identity);
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
