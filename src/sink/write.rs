//! Writing one batch in one transaction: the audit row, new dimension
//! members, fact rows (upsert on the natural key, then removal of the rows
//! a replaced event no longer has), discards, and the audit counts.
//!
//! Re-delivery is idempotent: an upsert keeps `CREATE_AUDIT_KEY` and moves
//! only `UPDATE_AUDIT_KEY`; rows of a replaced event that this batch did not
//! write still carry an older audit key and are deleted.

use std::collections::BTreeSet;

use foldhash::HashMap;

use sea_orm::DbErr;
use sea_orm::sea_query::Value;

use super::aggregate::{fact_values, scalar_cell};
use super::control::now;
use super::ddl::natural_key_hash;
use super::txn::{Scalar, Txn};
use super::{Backend, Names, Sink, SinkError, postgres, sqlite};
use crate::catalog::{ColumnType, Table};
use crate::dimension::{Member, MemberStore};
use crate::pipeline::{Batch, Preparer, Replay};
use crate::plan::{Cell, Plan, Row};

/// Rows per INSERT statement: well under SQLite's and PostgreSQL's limits
/// on bound parameters for the widest tables.
pub(super) const CHUNK: usize = 400;

/// The fact table as a batch's rows fill it: what every backend needs to
/// write them.
pub(super) struct Facts<'a> {
    pub names: Names,
    pub table: &'a Table,
    pub plan: &'a Plan,
    pub preparer: &'a Preparer,
}

impl Facts<'_> {
    /// The columns a row fills, in order: the mapping's columns, the
    /// dimension keys, then the audit keys.
    pub fn columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self
            .plan
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        columns.extend(self.plan.dimensions.iter().map(|d| d.key_column.as_str()));
        columns.extend(self.table.audit.create.as_deref());
        columns.extend(self.table.audit.update.as_deref());
        columns
    }

    /// The audit column that tells the rows a replaced event no longer has
    /// (older than this batch), when the batch replaces any: the mapping
    /// has `replace_by`, the table an update audit column, and there are
    /// rows.
    pub fn replaces(&self, rows: &[&Row]) -> Option<&str> {
        let update = self.table.audit.update.as_deref()?;
        (!self.plan.replace_by.is_empty() && !rows.is_empty()).then_some(update)
    }

    /// The distinct `replace_by` values of the rows: the events this batch
    /// replaces, sorted.
    pub fn replaced_identities<'r>(&self, rows: &[&'r Row]) -> Vec<Vec<&'r Cell>> {
        let positions = &self.preparer.replace_by;
        let identity = |row: &'r Row| positions.iter().map(move |&i| &row.values[i]);
        let mut identities: Vec<Vec<&Cell>> = Vec::new();
        for (at, &row) in rows.iter().enumerate() {
            // An event's rows are adjacent and share its identity.
            if at == 0 || !identity(row).eq(identity(rows[at - 1])) {
                identities.push(identity(row).collect());
            }
        }
        identities.sort_unstable();
        identities.dedup();
        identities
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BatchReport {
    pub audit_key: i64,
    pub events: usize,
    pub rows: usize,
    pub discards: usize,
    pub new_members: usize,
    /// Replayed discards left out: their identity was loaded since.
    pub superseded: usize,
}

impl Sink {
    /// Commits one batch, or nothing.
    pub async fn write(&mut self, batch: &Batch) -> Result<BatchReport, SinkError> {
        let mut txn = Txn::begin(&self.db.connection).await?;
        let names = self.db.names;
        // Replayed discards: those whose identity was loaded again since
        // they were discarded are left out.
        let kept;
        let (batch, loaded, superseded) = match &batch.replay {
            None => (batch, Vec::new(), 0),
            Some(replay) => {
                let (batch_kept, loaded) = self.without_superseded(&mut txn, batch, replay).await?;
                let superseded = replay.events.len() - loaded.len();
                kept = batch_kept;
                (&kept, loaded, superseded)
            }
        };
        let control = &*self.db.control;
        let (mapping, hash) = (&self.plan.mapping, &self.plan.content_hash);
        let audit_key = control
            .audit
            .insert(&mut txn, mapping, hash, batch, now())
            .await?;

        let unprepared;
        let prepared = match &batch.prepared {
            Some(prepared) => prepared,
            None => {
                unprepared = self.preparer.prepared(batch);
                &unprepared
            }
        };
        let rows: Vec<&Row> = prepared
            .rows()
            .iter()
            .map(|&(event, row)| &batch.events[event][row])
            .collect();
        let mut store = TxnStore {
            txn: &mut txn,
            backend: self.backend,
            names,
            tables: &self.dimensions,
            audit_key,
        };
        let resolved = self.members.resolve(&mut store, prepared.members()).await?;
        let facts = Facts {
            names,
            table: &self.fact,
            plan: &self.plan,
            preparer: &self.preparer,
        };
        let keys = &resolved.keys;
        let aggregation = self.db.aggregation.clone();
        let mut upkeep = match &aggregation {
            Some(aggregation) => Some(aggregation.before(&mut txn, &facts, &rows, keys).await?),
            None => None,
        };
        match self.backend {
            Backend::Sqlite => {
                sqlite::write_facts(&facts, &mut txn, &rows, keys, audit_key).await?
            }
            Backend::Postgres => {
                let buffer = &mut self.copy_buffer;
                let upkeep = upkeep.as_mut();
                let batch = postgres::FactRows {
                    rows: &rows,
                    prepared,
                    keys,
                };
                postgres::write_facts(&facts, &mut txn, &batch, audit_key, buffer, upkeep).await?
            }
        }
        let days = match upkeep {
            Some(upkeep) => upkeep.finish(&mut txn).await?,
            None => Vec::new(),
        };
        let discards = &control.discards;
        discards
            .insert(&mut txn, mapping, &batch.discards, audit_key)
            .await?;
        let offsets = &control.offsets;
        offsets.store(&mut txn, &batch.offsets, audit_key).await?;
        if let Some(replay) = &batch.replay {
            discards
                .replay(&mut txn, &loaded, replay, audit_key)
                .await?;
        }

        let report = BatchReport {
            audit_key,
            events: batch.events.len(),
            rows: rows.len(),
            discards: batch.discards.len(),
            new_members: resolved.created,
            superseded,
        };
        control
            .audit
            .finish(&mut txn, audit_key, report.rows, report.new_members)
            .await?;
        txn.commit().await?;
        self.members.keep(resolved);
        if let Some(aggregation) = &aggregation {
            aggregation.filled(days);
        }
        Ok(report)
    }

    /// A replay batch without the events whose `replace_by` identity has
    /// rows written after the event was discarded, or by the very batch
    /// that discarded it (a newer version, or one the database cannot
    /// order against it: the replay must not overwrite it), and the
    /// discard ids it keeps. On
    /// PostgreSQL the identities' locks are taken first, so no writer of
    /// them commits between this check and the batch's writes.
    async fn without_superseded(
        &self,
        txn: &mut Txn,
        batch: &Batch,
        replay: &Replay,
    ) -> Result<(Batch, Vec<i64>), DbErr> {
        let written_by = self
            .fact
            .audit
            .update
            .as_ref()
            .or(self.fact.audit.create.as_ref());
        let identity = |rows: &[Row]| -> Option<Vec<Cell>> {
            let row = rows.first()?;
            Some(
                self.preparer
                    .replace_by
                    .iter()
                    .map(|&i| row.values[i].clone())
                    .collect(),
            )
        };
        let mut newest: HashMap<Vec<Cell>, i64> = HashMap::default();
        if let (Some(written_by), false) = (written_by, self.plan.replace_by.is_empty()) {
            let facts = Facts {
                names: self.db.names,
                table: &self.fact,
                plan: &self.plan,
                preparer: &self.preparer,
            };
            let rows: Vec<&Row> = batch
                .events
                .iter()
                .filter_map(|rows| rows.first())
                .collect();
            if self.backend == Backend::Postgres {
                postgres::lock_identities(&facts, txn, &rows).await?;
            }
            let identities: BTreeSet<Vec<Cell>> = batch
                .events
                .iter()
                .filter_map(|rows| identity(rows))
                .collect();
            let columns: Vec<&str> = self.plan.replace_by.iter().map(String::as_str).collect();
            let mut selected = columns.clone();
            selected.push(written_by);
            let found = fact_values(
                txn,
                self.db.names,
                &self.fact,
                &columns,
                &identities,
                &selected,
            )
            .await?;
            for mut row in found {
                let Some(Scalar::Int(audit_key)) = row.pop() else {
                    continue;
                };
                let key: Vec<Cell> = row.into_iter().map(scalar_cell).collect();
                let newest = newest.entry(key).or_insert(audit_key);
                *newest = (*newest).max(audit_key);
            }
        }
        let mut kept = Batch {
            source: batch.source.clone(),
            replay: Some(Replay {
                failing: replay.failing.clone(),
                ..Replay::default()
            }),
            ..Batch::default()
        };
        let mut loaded = Vec::new();
        for (rows, &(id, discarded_by)) in batch.events.iter().zip(&replay.events) {
            let newer = identity(rows)
                .and_then(|identity| newest.get(&identity))
                .is_some_and(|written| *written >= discarded_by);
            if !newer {
                kept.events.push(rows.clone());
                loaded.push(id);
            }
        }
        Ok((kept, loaded))
    }

    /// How this sink's batches are to be prepared.
    pub fn preparer(&self) -> Preparer {
        self.preparer.clone()
    }
}

/// Finds and creates dimension members inside the batch's transaction.
struct TxnStore<'a> {
    txn: &'a mut Txn,
    backend: Backend,
    names: Names,
    tables: &'a [Table],
    audit_key: i64,
}

impl MemberStore for TxnStore<'_> {
    type Error = DbErr;

    async fn find_or_create(
        &mut self,
        dimension: usize,
        members: &[&Member],
    ) -> Result<(Vec<i64>, usize), DbErr> {
        let table = &self.tables[dimension];
        let names = self.names;
        let hashes: Vec<String> = members
            .iter()
            .map(|member| natural_key_hash(member))
            .collect();
        let (txn, audit_key) = (&mut *self.txn, self.audit_key);
        let found = match self.backend {
            Backend::Sqlite => {
                sqlite::find_or_create(txn, names, table, members, &hashes, audit_key).await?
            }
            Backend::Postgres => {
                postgres::find_or_create(txn, names, table, members, &hashes, audit_key).await?
            }
        };
        let ids = hashes
            .iter()
            .map(|hash| {
                found.ids.get(hash).copied().ok_or_else(|| {
                    DbErr::RecordNotFound(format!("member {hash} of {}", table.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ids, found.created))
    }
}

/// What one dimension's lookup found: id by natural key hash, and how many
/// members it created.
pub(super) struct FoundMembers {
    pub ids: HashMap<String, i64>,
    pub created: usize,
}

/// A cell as a SQL value of the column's type (PostgreSQL is strict).
/// Integers fit: the plan discarded every event whose values do not.
pub(super) fn value(cell: &Cell, ty: ColumnType) -> Value {
    match (cell, ty) {
        (Cell::Int(n), ColumnType::Double) => Value::Double(Some(*n as f64)),
        // The plan's `number` conversion made the text of a JSON number.
        (Cell::Text(text), ColumnType::Double) => Value::Double(text.parse().ok()),
        (Cell::Null, ColumnType::Double) => Value::Double(None),
        (Cell::Int(n), ColumnType::SmallInt) => Value::SmallInt(Some(*n as i16)),
        (Cell::Int(n), ColumnType::Integer) => Value::Int(Some(*n as i32)),
        (Cell::Int(n), _) => Value::BigInt(Some(*n)),
        (Cell::Text(text), _) => Value::String(Some(text.to_string())),
        (Cell::Null, ColumnType::SmallInt) => Value::SmallInt(None),
        (Cell::Null, ColumnType::Integer) => Value::Int(None),
        (Cell::Null, ColumnType::BigInt) => Value::BigInt(None),
        (Cell::Null, ColumnType::Bytes) => Value::Bytes(None),
        (Cell::Null, _) => Value::String(None),
    }
}
