//! Writing one batch in one transaction: the audit row, new dimension
//! members, fact rows (upsert on the natural key, then removal of the rows
//! a replaced event no longer has), discards, and the audit counts.
//!
//! Re-delivery is idempotent: an upsert keeps `CREATE_AUDIT_KEY` and moves
//! only `UPDATE_AUDIT_KEY`; rows of a replaced event that this batch did not
//! write still carry an older audit key and are deleted.

use foldhash::HashMap;

use sea_orm::DbErr;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, Value};

use super::ddl::natural_key_hash;
use super::txn::Txn;
use super::{Backend, Names, Sink, SinkError, postgres, sqlite};
use crate::catalog::{ColumnType, Table};
use crate::dimension::{Member, MemberStore};
use crate::pipeline::{Batch, DiscardRecord, NextOffset, Preparer};
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

    /// The distinct `replace_by` values of the rows: the events this batch
    /// replaces, sorted.
    pub fn replaced_identities<'r>(&self, rows: &[&'r Row]) -> Vec<Vec<&'r Cell>> {
        let positions = &self.preparer.replace_by;
        let mut identities: Vec<Vec<&Cell>> = rows
            .iter()
            .map(|row| positions.iter().map(|&i| &row.values[i]).collect())
            .collect();
        identities.sort();
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
}

impl Sink {
    /// Commits one batch, or nothing.
    pub async fn write(&mut self, batch: &Batch) -> Result<BatchReport, SinkError> {
        let mut txn = Txn::begin(&self.db.connection).await?;
        let names = self.db.names;
        let started = now();
        let audit_key = self.insert_audit(&mut txn, batch, started).await?;

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
        match self.backend {
            Backend::Sqlite => {
                sqlite::write_facts(&facts, &mut txn, &rows, keys, audit_key).await?
            }
            Backend::Postgres => {
                let buffer = &mut self.copy_buffer;
                postgres::write_facts(&facts, &mut txn, &rows, prepared, keys, audit_key, buffer)
                    .await?
            }
        }
        insert_discards(
            &mut txn,
            names,
            &self.plan.mapping,
            &batch.discards,
            audit_key,
        )
        .await?;
        upsert_offsets(&mut txn, names, &batch.offsets, audit_key).await?;

        let report = BatchReport {
            audit_key,
            events: batch.events.len(),
            rows: rows.len(),
            discards: batch.discards.len(),
            new_members: resolved.created,
        };
        let update = Query::update()
            .table(names.table("CTL_AUDIT_LOG"))
            .value(names.column("FACT_ROW_COUNT"), report.rows as i64)
            .value(names.column("NEW_MEMBER_COUNT"), report.new_members as i64)
            .value(names.column("END_TS"), now())
            .and_where(Expr::col(names.column("AUDIT_KEY")).eq(audit_key))
            .to_owned();
        txn.execute(&update).await?;
        txn.commit().await?;
        self.members.keep(resolved);
        Ok(report)
    }

    async fn insert_audit(&self, txn: &mut Txn, batch: &Batch, started: i64) -> Result<i64, DbErr> {
        let names = self.db.names;
        let insert = Query::insert()
            .into_table(names.table("CTL_AUDIT_LOG"))
            .columns(
                [
                    "MAPPING_NAME",
                    "MAPPING_HASH",
                    "SOURCE",
                    "EVENT_COUNT",
                    "FACT_ROW_COUNT",
                    "DISCARD_COUNT",
                    "NEW_MEMBER_COUNT",
                    "START_TS",
                    "END_TS",
                ]
                .map(|c| names.column(c)),
            )
            .values_panic([
                self.plan.mapping.clone().into(),
                self.plan.content_hash.clone().into(),
                crate::convert::truncate(batch.source.clone(), 1024).into(),
                (batch.events.len() as i64).into(),
                0i64.into(),
                (batch.discards.len() as i64).into(),
                0i64.into(),
                started.into(),
                started.into(),
            ])
            .returning(
                Query::returning()
                    .expr(Expr::col(names.column("AUDIT_KEY")).cast_as(Alias::new("BIGINT"))),
            )
            .to_owned();
        let rows = txn.query(&insert).await?;
        rows.first()
            .and_then(|row| row.first())
            .ok_or(DbErr::RecordNotInserted)?
            .int()
    }

    /// How this sink's batches are to be prepared.
    pub fn preparer(&self) -> Preparer {
        self.preparer.clone()
    }
}

/// Stores each partition's next offset, unless the partition was already
/// committed past the batch's first message: then a consumer that lost the
/// partition (say, kicked from the group while the database was away) would
/// load messages its successor already loaded, and the batch is refused.
async fn upsert_offsets(
    txn: &mut Txn,
    names: Names,
    offsets: &[NextOffset],
    audit_key: i64,
) -> Result<(), SinkError> {
    let at = now();
    let key = ["CLUSTER_NAME", "TOPIC", "KAFKA_PARTITION"].map(|c| names.column(c));
    let updated = ["NEXT_OFFSET", "AUDIT_KEY", "UPDATE_TS"].map(|c| names.column(c));
    let columns = [
        "CLUSTER_NAME",
        "TOPIC",
        "KAFKA_PARTITION",
        "NEXT_OFFSET",
        "AUDIT_KEY",
        "UPDATE_TS",
    ]
    .map(|c| names.column(c));
    for offset in offsets {
        let mut insert = Query::insert();
        insert
            .into_table(names.table("CTL_KAFKA_OFFSET"))
            .columns(columns.clone())
            .values_panic([
                offset.cluster.clone().into(),
                offset.topic.clone().into(),
                offset.partition.into(),
                offset.offset.into(),
                audit_key.into(),
                at.into(),
            ])
            .on_conflict(
                OnConflict::columns(key.clone())
                    .update_columns(updated.clone())
                    .action_and_where(
                        Expr::col((names.table("CTL_KAFKA_OFFSET"), names.column("NEXT_OFFSET")))
                            .lte(offset.first),
                    )
                    .to_owned(),
            );
        if txn.execute(&insert).await? == 0 {
            return Err(SinkError::OffsetsMoved {
                topic: offset.topic.clone(),
                partition: offset.partition,
                first: offset.first,
            });
        }
    }
    Ok(())
}

async fn insert_discards(
    txn: &mut Txn,
    names: Names,
    mapping: &str,
    discards: &[DiscardRecord],
    audit_key: i64,
) -> Result<(), DbErr> {
    let at = now();
    for chunk in discards.chunks(CHUNK) {
        let mut insert = Query::insert();
        insert.into_table(names.table("CTL_DISCARD")).columns(
            [
                "MAPPING_NAME",
                "SOURCE",
                "KAFKA_PARTITION",
                "POSITION",
                "MESSAGE_KEY",
                "PAYLOAD",
                "ERROR",
                "DISCARD_TS",
                "AUDIT_KEY",
            ]
            .map(|c| names.column(c)),
        );
        for discard in chunk {
            insert.values_panic([
                mapping.into(),
                crate::convert::truncate(discard.source.clone(), 1024).into(),
                Value::Int(discard.partition).into(),
                discard.position.into(),
                Value::Bytes(discard.key.clone()).into(),
                Value::Bytes(Some(discard.payload.clone())).into(),
                discard.error.clone().into(),
                at.into(),
                audit_key.into(),
            ]);
        }
        txn.execute(&insert).await?;
    }
    Ok(())
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
