//! Writing one batch in one transaction: the audit row, new dimension
//! members, fact rows (upsert on the natural key, then removal of the rows
//! a replaced event no longer has), discards, and the audit counts.
//!
//! Re-delivery is idempotent: an upsert keeps `CREATE_AUDIT_KEY` and moves
//! only `UPDATE_AUDIT_KEY`; rows of a replaced event that this batch did not
//! write still carry an older audit key and are deleted.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, OnConflict, Query, SimpleExpr, Value};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionTrait,
};

use super::ddl::{HASH_COLUMN, natural_key_hash};
use super::{Names, Sink, SinkError};
use crate::catalog::{ColumnType, Table};
use crate::dimension::{Member, MemberStore};
use crate::plan::{Cell, Row};

/// Rows per INSERT statement: well under SQLite's and PostgreSQL's limits
/// on bound parameters for the widest tables.
const CHUNK: usize = 400;

/// Rows per JSON document on PostgreSQL (one bound parameter each).
const JSON_CHUNK: usize = 5000;

/// What one batch holds: each loaded event's rows, and the discarded ones.
#[derive(Debug, Default)]
pub struct Batch {
    /// Where the events came from (file names, or `topic` for Kafka).
    pub source: String,
    pub events: Vec<Vec<Row>>,
    pub discards: Vec<DiscardRecord>,
}

/// A message that could not be loaded, kept whole.
#[derive(Debug, Clone)]
pub struct DiscardRecord {
    pub source: String,
    pub partition: Option<i32>,
    /// Offset in a partition, or line number in a file.
    pub position: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
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
        let txn = self.db.connection.begin().await?;
        let names = self.db.names;
        let started = now();
        let audit_key = self.insert_audit(&txn, batch, started).await?;

        let rows = self.latest_rows(batch);
        let mut store = TxnStore {
            txn: &txn,
            names,
            tables: &self.dimensions,
            audit_key,
        };
        let resolved = self.members.resolve(&mut store, &rows).await?;
        self.upsert_facts(&txn, &rows, &resolved.keys, audit_key)
            .await?;
        self.delete_replaced(&txn, &rows, audit_key).await?;
        insert_discards(&txn, names, &self.plan.mapping, &batch.discards, audit_key).await?;

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

    async fn insert_audit(
        &self,
        txn: &DatabaseTransaction,
        batch: &Batch,
        started: i64,
    ) -> Result<i64, DbErr> {
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
        let row = txn
            .query_one(&insert)
            .await?
            .ok_or_else(|| DbErr::RecordNotInserted)?;
        row.try_get_by_index(0)
    }

    /// The rows to write: of events with the same `replace_by` values only
    /// the last counts, and of rows with the same key only the last.
    fn latest_rows<'b>(&self, batch: &'b Batch) -> Vec<&'b Row> {
        let replace_by = self.column_positions(&self.plan.replace_by);
        let key = self.column_positions(&self.plan.key);
        let mut last_event: HashMap<Vec<&Cell>, usize> = HashMap::new();
        for (at, rows) in batch.events.iter().enumerate() {
            if let Some(row) = rows.first() {
                last_event.insert(replace_by.iter().map(|&i| &row.values[i]).collect(), at);
            }
        }
        let mut by_key: HashMap<Vec<&Cell>, usize> = HashMap::new();
        let mut rows: Vec<&Row> = Vec::new();
        for (at, event_rows) in batch.events.iter().enumerate() {
            let Some(first) = event_rows.first() else {
                continue;
            };
            let identity: Vec<&Cell> = replace_by.iter().map(|&i| &first.values[i]).collect();
            if last_event.get(&identity) != Some(&at) {
                continue;
            }
            for row in event_rows {
                let row_key: Vec<&Cell> = key.iter().map(|&i| &row.values[i]).collect();
                match by_key.get(&row_key) {
                    Some(&earlier) => rows[earlier] = row,
                    None => {
                        by_key.insert(row_key, rows.len());
                        rows.push(row);
                    }
                }
            }
        }
        rows
    }

    /// Positions in the plan's fact columns of the named columns.
    fn column_positions(&self, names: &[String]) -> Vec<usize> {
        names
            .iter()
            .filter_map(|name| {
                self.plan
                    .columns
                    .iter()
                    .position(|(column, _)| column == name)
            })
            .collect()
    }

    async fn upsert_facts(
        &self,
        txn: &DatabaseTransaction,
        rows: &[&Row],
        keys: &[Vec<i64>],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        let names = self.db.names;
        let mut columns: Vec<&str> = self
            .plan
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        columns.extend(self.plan.dimensions.iter().map(|d| d.key_column.as_str()));
        let audit = &self.fact.audit;
        columns.extend(audit.create.as_deref());
        columns.extend(audit.update.as_deref());
        let types: Vec<ColumnType> = columns
            .iter()
            .map(|c| self.fact.column(c).map_or(ColumnType::BigInt, |c| c.ty))
            .collect();
        let updated: Vec<Alias> = columns
            .iter()
            .filter(|c| {
                !self.plan.key.iter().any(|k| k == *c) && audit.create.as_deref() != Some(**c)
            })
            .map(|c| names.column(c))
            .collect();
        let conflict = OnConflict::columns(self.plan.key.iter().map(|k| names.column(k)))
            .update_columns(updated)
            .to_owned();
        let audits = usize::from(audit.create.is_some()) + usize::from(audit.update.is_some());
        if names.backend == DbBackend::Postgres {
            return self
                .upsert_facts_postgres(txn, &columns, rows, keys, audit_key)
                .await;
        }
        for (chunk_rows, chunk_keys) in rows.chunks(CHUNK).zip(keys.chunks(CHUNK)) {
            let mut insert = Query::insert();
            insert
                .into_table(names.table(&self.fact.name))
                .columns(columns.iter().map(|c| names.column(c)));
            for (row, dimension_keys) in chunk_rows.iter().zip(chunk_keys) {
                let mut values: Vec<SimpleExpr> = row
                    .values
                    .iter()
                    .zip(&types)
                    .map(|(cell, ty)| value(cell, *ty).into())
                    .collect();
                let offset = row.values.len();
                values.extend(
                    dimension_keys
                        .iter()
                        .enumerate()
                        .map(|(d, id)| value(&Cell::Int(*id), types[offset + d]).into()),
                );
                values.extend(std::iter::repeat_n(SimpleExpr::from(audit_key), audits));
                insert.values_panic(values);
            }
            insert.on_conflict(conflict.clone());
            txn.execute(&insert).await?;
        }
        Ok(())
    }

    /// PostgreSQL: each chunk is one JSON document that the server expands
    /// with `json_populate_recordset`, so a statement binds one parameter
    /// instead of one per cell, and its text (hence its plan) is reused.
    async fn upsert_facts_postgres(
        &self,
        txn: &DatabaseTransaction,
        columns: &[&str],
        rows: &[&Row],
        keys: &[Vec<i64>],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        let names = self.db.names;
        let quote = |name: &str| format!("\"{}\"", names.raw(name).replace('"', "\"\""));
        let list: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let list = list.join(", ");
        let key: Vec<String> = self.plan.key.iter().map(|k| quote(k)).collect();
        let set: Vec<String> = columns
            .iter()
            .filter(|c| {
                !self.plan.key.iter().any(|k| k == *c)
                    && self.fact.audit.create.as_deref() != Some(**c)
            })
            .map(|c| format!("{0} = excluded.{0}", quote(c)))
            .collect();
        let table = quote(&self.fact.name);
        let sql = format!(
            "INSERT INTO {table} ({list}) SELECT {list} FROM json_populate_recordset(NULL::{table}, $1::json) \
             ON CONFLICT ({}) DO UPDATE SET {}",
            key.join(", "),
            set.join(", ")
        );
        let json_names: Vec<String> = columns.iter().map(|c| names.raw(c)).collect();
        for (chunk_rows, chunk_keys) in rows.chunks(JSON_CHUNK).zip(keys.chunks(JSON_CHUNK)) {
            let document = JsonRows {
                names: &json_names,
                rows: chunk_rows,
                keys: chunk_keys,
                audit_key,
            };
            let json =
                serde_json::to_string(&document).map_err(|e| DbErr::Custom(e.to_string()))?;
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                &sql,
                [json.into()],
            ))
            .await?;
        }
        Ok(())
    }

    /// Deletes the rows of this batch's events that the events no longer have.
    async fn delete_replaced(
        &self,
        txn: &DatabaseTransaction,
        rows: &[&Row],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        let Some(audit_update) = self.fact.audit.update.as_deref() else {
            return Ok(());
        };
        if self.plan.replace_by.is_empty() || rows.is_empty() {
            return Ok(());
        }
        let names = self.db.names;
        let positions = self.column_positions(&self.plan.replace_by);
        let mut identities: Vec<Vec<&Cell>> = rows
            .iter()
            .map(|row| positions.iter().map(|&i| &row.values[i]).collect())
            .collect();
        identities.sort();
        identities.dedup();
        let types: Vec<ColumnType> = self
            .plan
            .replace_by
            .iter()
            .map(|name| self.fact.column(name).map_or(ColumnType::Text, |c| c.ty))
            .collect();
        let columns: Vec<Alias> = self
            .plan
            .replace_by
            .iter()
            .map(|name| names.column(name))
            .collect();
        if let ([column], DbBackend::Postgres) = (self.plan.replace_by.as_slice(), names.backend) {
            // One statement for the whole batch: the identities as one JSON array.
            let texts: Vec<String> = identities
                .iter()
                .map(|identity| match identity[0] {
                    Cell::Text(text) => text.to_string(),
                    Cell::Int(number) => number.to_string(),
                    Cell::Null => String::new(),
                })
                .collect();
            let json = serde_json::to_string(&texts).map_err(|e| DbErr::Custom(e.to_string()))?;
            let quote = |name: &str| format!("\"{}\"", names.raw(name).replace('"', "\"\""));
            let (table, column, audit) =
                (quote(&self.fact.name), quote(column), quote(audit_update));
            // The ids are cast to the column's type so that its index is used.
            let element = if types[0].is_integer() {
                "CAST(id AS BIGINT)"
            } else {
                "id"
            };
            let sql = format!(
                "DELETE FROM {table} WHERE {column} IN (SELECT {element} FROM json_array_elements_text($1::json) id) \
                 AND {audit} <> $2"
            );
            let values = [json.into(), audit_key.into()];
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                &sql,
                values,
            ))
            .await?;
            return Ok(());
        }
        for chunk in identities.chunks(CHUNK) {
            // `key IN (...)`, or `(a, b) IN ((...), ...)`: both use the key's index.
            let replaced = match columns.as_slice() {
                [column] => Expr::col(column.clone())
                    .is_in(chunk.iter().map(|identity| value(identity[0], types[0]))),
                _ => Expr::tuple(columns.iter().map(|c| Expr::col(c.clone()))).in_tuples(
                    chunk.iter().map(|identity| {
                        sea_orm::sea_query::ValueTuple::Many(
                            identity
                                .iter()
                                .zip(&types)
                                .map(|(cell, ty)| value(cell, *ty))
                                .collect(),
                        )
                    }),
                ),
            };
            let delete = Query::delete()
                .from_table(names.table(&self.fact.name))
                .cond_where(
                    Cond::all()
                        .add(replaced)
                        .add(Expr::col(names.column(audit_update)).ne(audit_key)),
                )
                .to_owned();
            txn.execute(&delete).await?;
        }
        Ok(())
    }
}

async fn insert_discards(
    txn: &DatabaseTransaction,
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

/// Rows of one PostgreSQL chunk as a JSON array of objects keyed by column:
/// the fact values, then the dimension keys, then the audit keys.
struct JsonRows<'a> {
    names: &'a [String],
    rows: &'a [&'a Row],
    keys: &'a [Vec<i64>],
    audit_key: i64,
}

impl serde::Serialize for JsonRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut rows = serializer.serialize_seq(Some(self.rows.len()))?;
        for (row, keys) in self.rows.iter().zip(self.keys) {
            rows.serialize_element(&JsonRow {
                names: self.names,
                row,
                keys,
                audit_key: self.audit_key,
            })?;
        }
        rows.end()
    }
}

struct JsonRow<'a> {
    names: &'a [String],
    row: &'a Row,
    keys: &'a [i64],
    audit_key: i64,
}

impl serde::Serialize for JsonRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.names.len()))?;
        let mut names = self.names.iter();
        for cell in &self.row.values {
            let name = names
                .next()
                .ok_or_else(|| serde::ser::Error::custom("more cells than columns"))?;
            match cell {
                Cell::Null => map.serialize_entry(name, &())?,
                Cell::Int(number) => map.serialize_entry(name, number)?,
                Cell::Text(text) => map.serialize_entry(name, &**text)?,
            }
        }
        for key in self.keys {
            let name = names
                .next()
                .ok_or_else(|| serde::ser::Error::custom("more keys than columns"))?;
            map.serialize_entry(name, key)?;
        }
        for name in names {
            map.serialize_entry(name, &self.audit_key)?; // the audit columns come last
        }
        map.end()
    }
}

/// Finds and creates dimension members inside the batch's transaction.
struct TxnStore<'a> {
    txn: &'a DatabaseTransaction,
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
        let mut created = 0;
        for (chunk, chunk_hashes) in members.chunks(CHUNK).zip(hashes.chunks(CHUNK)) {
            let mut columns: Vec<Alias> =
                table.natural_key.iter().map(|c| names.column(c)).collect();
            columns.push(names.column(HASH_COLUMN));
            columns.extend(table.audit.create.as_deref().map(|c| names.column(c)));
            let mut insert = Query::insert();
            insert.into_table(names.table(&table.name)).columns(columns);
            for (member, hash) in chunk.iter().zip(chunk_hashes) {
                let mut values: Vec<SimpleExpr> = member.iter().map(|v| v.clone().into()).collect();
                values.push(hash.clone().into());
                if table.audit.create.is_some() {
                    values.push(self.audit_key.into());
                }
                insert.values_panic(values);
            }
            insert.on_conflict(
                OnConflict::column(names.column(HASH_COLUMN))
                    .do_nothing()
                    .to_owned(),
            );
            created += self.txn.execute(&insert).await?.rows_affected() as usize;
        }
        let key = table.surrogate_key.as_deref().unwrap_or("ID");
        let mut ids: HashMap<String, i64> = HashMap::with_capacity(hashes.len());
        for chunk in hashes.chunks(CHUNK) {
            let select = Query::select()
                .from(names.table(&table.name))
                .expr(Expr::col(names.column(key)).cast_as(Alias::new("BIGINT")))
                .column(names.column(HASH_COLUMN))
                .and_where(Expr::col(names.column(HASH_COLUMN)).is_in(chunk.iter().cloned()))
                .to_owned();
            for row in self.txn.query_all(&select).await? {
                ids.insert(row.try_get_by_index(1)?, row.try_get_by_index(0)?);
            }
        }
        let ids = hashes
            .iter()
            .map(|hash| {
                ids.get(hash).copied().ok_or_else(|| {
                    DbErr::RecordNotFound(format!("member {hash} of {}", table.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ids, created))
    }
}

/// A cell as a SQL value of the column's type (PostgreSQL is strict).
fn value(cell: &Cell, ty: ColumnType) -> Value {
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
