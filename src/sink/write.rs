//! Writing one batch in one transaction: the audit row, new dimension
//! members, fact rows (upsert on the natural key, then removal of the rows
//! a replaced event no longer has), discards, and the audit counts.
//!
//! Re-delivery is idempotent: an upsert keeps `CREATE_AUDIT_KEY` and moves
//! only `UPDATE_AUDIT_KEY`; rows of a replaced event that this batch did not
//! write still carry an older audit key and are deleted.

use foldhash::{HashMap, HashMapExt};

use sea_orm::sea_query::{
    Alias, ArrayType, Cond, Expr, ExprTrait, OnConflict, Query, SimpleExpr, Value,
};
use sea_orm::{DbBackend, DbErr};

use super::ddl::{HASH_COLUMN, natural_key_hash};
use super::txn::Txn;
use super::{Names, Sink, SinkError};
use crate::catalog::{ColumnType, Table};
use crate::dimension::{Distinct, Member, MemberStore};
use crate::plan::{Cell, Plan, Row};

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
    /// Kafka positions this batch moves to, committed with its rows.
    pub offsets: Vec<NextOffset>,
    /// What the writer would otherwise work out itself: see [`Preparer`].
    pub prepared: Option<Prepared>,
}

/// The part of writing a batch that needs no database, done by the thread
/// that builds the batch (the reader or a consumer), so that the writer,
/// which holds the transaction, has less to do: which rows to write, their
/// distinct dimension members (the member cache is then asked once per
/// member, not per row) and, when they travel by COPY, their mapped values
/// in COPY's text format.
#[derive(Debug, Clone)]
pub struct Preparer {
    replace_by: Vec<usize>,
    key: Vec<usize>,
    dimensions: usize,
    copy: bool,
}

/// A batch's prepared rows.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The rows to write, as (event, row) positions in `Batch::events`.
    rows: Vec<(usize, usize)>,
    /// Their dimension members.
    members: Distinct,
    /// With COPY, each row's mapped values, tab-separated, one row after
    /// another; row `i` ends at `copy_ends[i]`.
    copy_text: Vec<u8>,
    copy_ends: Vec<usize>,
}

impl Preparer {
    /// What a sink of `backend` needs prepared for `plan`'s batches.
    pub fn new(plan: &Plan, backend: DbBackend) -> Preparer {
        let key = column_positions(plan, &plan.key);
        Preparer {
            replace_by: column_positions(plan, &plan.replace_by),
            dimensions: plan.dimensions.len(),
            copy: backend == DbBackend::Postgres
                && !plan.replace_by.is_empty()
                && key.len() == plan.key.len(),
            key,
        }
    }

    /// Prepares `batch` for writing.
    pub fn prepare(&self, batch: &mut Batch) {
        batch.prepared = Some(self.prepared(batch));
    }

    /// The batch's rows to write, their members and, with COPY, their text.
    /// The writer calls it for a batch that comes unprepared.
    fn prepared(&self, batch: &Batch) -> Prepared {
        let rows = latest_rows(&batch.events, &self.replace_by, &self.key);
        let members = Distinct::of(
            rows.iter().map(|&(event, row)| &batch.events[event][row]),
            self.dimensions,
        );
        let mut prepared = Prepared {
            rows,
            members,
            copy_text: Vec::new(),
            copy_ends: Vec::new(),
        };
        if self.copy {
            prepared.copy_ends.reserve(prepared.rows.len());
            for &(event, row) in &prepared.rows {
                let mut line = CopyLine::new(&mut prepared.copy_text);
                for cell in &batch.events[event][row].values {
                    line.cell(cell);
                }
                prepared.copy_ends.push(prepared.copy_text.len());
            }
        }
        prepared
    }
}

/// The next offset to consume of one partition, after this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextOffset {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    /// The offset of the batch's first message from this partition.
    pub first: i64,
    pub offset: i64,
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
            .rows
            .iter()
            .map(|&(event, row)| &batch.events[event][row])
            .collect();
        let mut store = TxnStore {
            txn: &mut txn,
            names,
            tables: &self.dimensions,
            audit_key,
        };
        let resolved = self.members.resolve(&mut store, &prepared.members).await?;
        if self.replaces_by_copy() {
            let mut data = std::mem::take(&mut self.copy_buffer);
            data.clear();
            self.replace_facts_postgres(
                &mut txn,
                &rows,
                prepared,
                &resolved.keys,
                audit_key,
                &mut data,
            )
            .await?;
            self.copy_buffer = data;
        } else {
            self.upsert_facts(&mut txn, &rows, &resolved.keys, audit_key)
                .await?;
            self.delete_replaced(&mut txn, &rows, audit_key).await?;
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

    /// The distinct `replace_by` values of the rows: the events this batch
    /// replaces, sorted.
    fn replaced_identities<'r>(&self, rows: &[&'r Row]) -> Vec<Vec<&'r Cell>> {
        let positions = &self.preparer.replace_by;
        let mut identities: Vec<Vec<&Cell>> = rows
            .iter()
            .map(|row| positions.iter().map(|&i| &row.values[i]).collect())
            .collect();
        identities.sort();
        identities.dedup();
        identities
    }

    /// The distinct `replace_by` values of the rows as PostgreSQL arrays, one
    /// bound parameter per column (`$1`, `$2`, …), and the SQL to find their
    /// rows.
    fn replaced_arrays(&self, rows: &[&Row]) -> ReplacedArrays {
        let names = self.db.names;
        let identities = self.replaced_identities(rows);
        let mut arrays = Vec::new();
        let (mut params, mut columns, mut matches) = (Vec::new(), Vec::new(), Vec::new());
        for (at, name) in self.plan.replace_by.iter().enumerate() {
            let integer = self.fact.column(name).is_some_and(|c| c.ty.is_integer());
            let cells = identities.iter().map(|identity| identity[at]);
            let (ty, sql_type, values): (ArrayType, &str, Vec<Value>) = if integer {
                let values = cells
                    .map(|cell| match cell {
                        Cell::Int(number) => Value::BigInt(Some(*number)),
                        _ => Value::BigInt(None),
                    })
                    .collect();
                (ArrayType::BigInt, "bigint", values)
            } else {
                let values = cells
                    .map(|cell| match cell {
                        Cell::Null => Value::String(None),
                        cell => Value::String(Some(cell_text(cell))),
                    })
                    .collect();
                (ArrayType::String, "text", values)
            };
            arrays.push(Value::Array(ty, Some(Box::new(values))));
            params.push(format!("${}::{sql_type}[]", at + 1));
            columns.push(format!("r.c{at}"));
            matches.push(format!("{} = r.c{at}", names.quoted(name)));
        }
        let aliases: Vec<String> = (0..columns.len()).map(|at| format!("c{at}")).collect();
        ReplacedArrays {
            table: names.quoted(&self.fact.name),
            from: format!("unnest({}) AS r({})", params.join(", "), aliases.join(", ")),
            columns: columns.join(", "),
            matches: matches.join(" AND "),
            values: arrays,
        }
    }

    /// The fact columns a row fills, in order: the mapping's columns, the
    /// dimension keys, then the audit keys.
    fn fact_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self
            .plan
            .columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        columns.extend(self.plan.dimensions.iter().map(|d| d.key_column.as_str()));
        columns.extend(self.fact.audit.create.as_deref());
        columns.extend(self.fact.audit.update.as_deref());
        columns
    }

    /// Whether the batch's events replace their rows by delete-then-COPY:
    /// PostgreSQL, with `replace_by` and a key of mapped columns.
    fn replaces_by_copy(&self) -> bool {
        self.preparer.copy
    }

    /// How this sink's batches are to be prepared.
    pub fn preparer(&self) -> Preparer {
        self.preparer.clone()
    }

    async fn upsert_facts(
        &self,
        txn: &mut Txn,
        rows: &[&Row],
        keys: &[Vec<i64>],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        let names = self.db.names;
        let columns = self.fact_columns();
        let audit = &self.fact.audit;
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

    /// PostgreSQL with `replace_by`: the batch's events replace their rows
    /// wholesale, so the rows are deleted (keeping each key's
    /// `CREATE_AUDIT_KEY`) and the new ones arrive by COPY, PostgreSQL's bulk
    /// path. Advisory locks on the replaced identities, taken in one order,
    /// make a second writer of the same events wait for the first to commit,
    /// and its DELETE then sees the first one's rows.
    async fn replace_facts_postgres(
        &self,
        txn: &mut Txn,
        rows: &[&Row],
        prepared: &Prepared,
        keys: &[Vec<i64>],
        audit_key: i64,
        data: &mut Vec<u8>,
    ) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        let names = self.db.names;
        let columns = self.fact_columns();
        let replaced = self.replaced_arrays(rows);
        let lock = format!(
            "SELECT pg_advisory_xact_lock(h) FROM \
             (SELECT DISTINCT hashtextextended(ROW({})::text, 0) AS h FROM {}) l ORDER BY h",
            replaced.columns, replaced.from
        );
        txn.execute_sql(&lock, replaced.values.clone()).await?;

        let key: Vec<String> = self
            .plan
            .key
            .iter()
            .map(|k| format!("CAST({} AS TEXT)", names.quoted(k)))
            .collect();
        let create = self.fact.audit.create.as_deref();
        let returning = match create {
            Some(create) => format!(
                "{}, CAST({} AS BIGINT)",
                key.join(", "),
                names.quoted(create)
            ),
            None => key.join(", "),
        };
        let delete = format!(
            "DELETE FROM {} WHERE {} RETURNING {returning}",
            replaced.table,
            replaced.rows(None),
        );
        let mut created_by: HashMap<Vec<String>, i64> = HashMap::new();
        for row in txn.query_sql(&delete, replaced.values).await? {
            if let Some((last, key)) = row.split_last().filter(|_| create.is_some()) {
                created_by.insert(
                    key.iter().map(|k| k.text()).collect::<Result<_, _>>()?,
                    last.int()?,
                );
            }
        }

        let key_positions = &self.preparer.key;
        for (at, (row, dimension_keys)) in rows.iter().zip(keys).enumerate() {
            // The mapped values were encoded when the batch was prepared.
            let start = at
                .checked_sub(1)
                .map_or(0, |before| prepared.copy_ends[before]);
            data.extend_from_slice(&prepared.copy_text[start..prepared.copy_ends[at]]);
            let mut line = CopyLine::after_values(data);
            for id in dimension_keys {
                line.int(*id);
            }
            if create.is_some() {
                // Rows that existed keep their creator; new rows are this batch's.
                let created = if created_by.is_empty() {
                    audit_key
                } else {
                    let key: Vec<String> = key_positions
                        .iter()
                        .map(|&i| cell_text(&row.values[i]))
                        .collect();
                    created_by.get(&key).copied().unwrap_or(audit_key)
                };
                line.int(created);
            }
            if self.fact.audit.update.is_some() {
                line.int(audit_key);
            }
            line.end();
        }
        let list: Vec<String> = columns.iter().map(|c| names.quoted(c)).collect();
        let copy = format!(
            "COPY {} ({}) FROM STDIN",
            names.quoted(&self.fact.name),
            list.join(", ")
        );
        txn.copy_in(&copy, data).await?;
        Ok(())
    }

    /// PostgreSQL: each chunk is one JSON document that the server expands
    /// with `json_populate_recordset`, so a statement binds one parameter
    /// instead of one per cell, and its text (hence its plan) is reused.
    async fn upsert_facts_postgres(
        &self,
        txn: &mut Txn,
        columns: &[&str],
        rows: &[&Row],
        keys: &[Vec<i64>],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        let names = self.db.names;
        let list: Vec<String> = columns.iter().map(|c| names.quoted(c)).collect();
        let list = list.join(", ");
        let key: Vec<String> = self.plan.key.iter().map(|k| names.quoted(k)).collect();
        let set: Vec<String> = columns
            .iter()
            .filter(|c| {
                !self.plan.key.iter().any(|k| k == *c)
                    && self.fact.audit.create.as_deref() != Some(**c)
            })
            .map(|c| format!("{0} = excluded.{0}", names.quoted(c)))
            .collect();
        let table = names.quoted(&self.fact.name);
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
            txn.execute_sql(&sql, vec![json.into()]).await?;
        }
        Ok(())
    }

    /// Deletes the rows of this batch's events that the events no longer have.
    async fn delete_replaced(
        &self,
        txn: &mut Txn,
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
        if names.backend == DbBackend::Postgres {
            // One statement for the whole batch.
            let replaced = self.replaced_arrays(rows);
            let older = format!(
                "{} <> ${}",
                names.quoted(audit_update),
                replaced.values.len() + 1
            );
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                replaced.table,
                replaced.rows(Some(&older))
            );
            let mut values = replaced.values;
            values.push(audit_key.into());
            txn.execute_sql(&sql, values).await?;
            return Ok(());
        }
        let identities = self.replaced_identities(rows);
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

/// Positions in the plan's fact columns of the named columns.
fn column_positions(plan: &Plan, names: &[String]) -> Vec<usize> {
    names
        .iter()
        .filter_map(|name| plan.columns.iter().position(|(column, _)| column == name))
        .collect()
}

/// A batch's replaced identities as arrays: see [`Sink::replaced_arrays`].
struct ReplacedArrays {
    /// The fact table, quoted.
    table: String,
    /// `unnest($1::text[], …) AS r(c0, …)`
    from: String,
    /// `r.c0, …`
    columns: String,
    /// `"session_id" = r.c0 AND …`
    matches: String,
    values: Vec<Value>,
}

impl ReplacedArrays {
    /// A condition selecting the fact rows of the replaced identities (that
    /// also meet `condition`) by their `ctid`s, found by one index probe per
    /// identity. The shape fixes the plan: `OFFSET 0` keeps the lateral
    /// subquery from being flattened into a join, which the planner would
    /// otherwise run as a sort or hash of the whole table whenever its
    /// statistics are stale, as they are while a new table fills.
    fn rows(&self, condition: Option<&str>) -> String {
        let condition = condition.map_or(String::new(), |c| format!(" AND {c}"));
        format!(
            "ctid = ANY(ARRAY(SELECT x.ctid FROM {} CROSS JOIN LATERAL \
             (SELECT ctid FROM {} WHERE {}{condition} OFFSET 0) x))",
            self.from, self.table, self.matches
        )
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

/// The rows a batch writes, as (event, row) positions in `events`. With
/// `replace_by` (positions of its columns in a row), only the last event of
/// each identity counts, and since its columns are part of the key, equal
/// keys can only meet within one event. Without it, every event counts and
/// the last row of each key wins.
fn latest_rows(events: &[Vec<Row>], replace_by: &[usize], key: &[usize]) -> Vec<(usize, usize)> {
    fn values<'r>(row: &'r Row, positions: &[usize]) -> Vec<&'r Cell> {
        positions.iter().map(|&i| &row.values[i]).collect()
    }
    let mut kept: Vec<usize> = (0..events.len())
        .filter(|&event| !events[event].is_empty())
        .collect();
    if !replace_by.is_empty() {
        let mut last: HashMap<Vec<&Cell>, usize> = HashMap::with_capacity(kept.len());
        for &event in &kept {
            last.insert(values(&events[event][0], replace_by), event);
        }
        kept.retain(|&event| last.get(&values(&events[event][0], replace_by)) == Some(&event));
    }
    let mut rows: Vec<(usize, usize)> =
        Vec::with_capacity(kept.iter().map(|&event| events[event].len()).sum());
    let mut by_key: HashMap<Vec<&Cell>, usize> = HashMap::new();
    for event in kept {
        let start = if replace_by.is_empty() { 0 } else { rows.len() };
        if !replace_by.is_empty() {
            by_key.clear();
        }
        let event_rows = &events[event];
        for (at, row) in event_rows.iter().enumerate() {
            // Most events have a handful of rows: compare, do not hash.
            let earlier = if event_rows.len() <= 16 && !replace_by.is_empty() {
                rows[start..]
                    .iter()
                    .position(|&(_, seen)| {
                        let seen = &event_rows[seen];
                        key.iter().all(|&i| seen.values[i] == row.values[i])
                    })
                    .map(|p| start + p)
            } else {
                let row_key = values(row, key);
                let found = by_key.get(&row_key).copied();
                if found.is_none() {
                    by_key.insert(row_key, rows.len());
                }
                found
            };
            match earlier {
                Some(earlier) => rows[earlier] = (event, at),
                None => rows.push((event, at)),
            }
        }
    }
    rows
}

/// A cell as text, the way PostgreSQL prints it.
fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Null => String::new(),
        Cell::Int(number) => number.to_string(),
        Cell::Text(text) => text.to_string(),
    }
}

/// Writes one row in COPY's text format: tab-separated, `\N` for NULL, and
/// backslash, tab, newline and carriage return escaped.
struct CopyLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CopyLine<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        CopyLine { out, first: true }
    }

    /// Continues a line whose first values are already in `out`.
    fn after_values(out: &'a mut Vec<u8>) -> Self {
        CopyLine { out, first: false }
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b'\t');
        }
    }

    fn int(&mut self, value: i64) {
        self.separate();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn cell(&mut self, cell: &Cell) {
        match cell {
            Cell::Int(value) => self.int(*value),
            Cell::Null => {
                self.separate();
                self.out.extend_from_slice(b"\\N");
            }
            Cell::Text(text) => {
                self.separate();
                let special = |byte: &u8| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r');
                // Most text has nothing to escape: one pass without early exit
                // (which the compiler vectorises) decides, then a plain copy.
                let bytes = text.as_bytes();
                if !bytes.iter().fold(false, |any, byte| any | special(byte)) {
                    self.out.extend_from_slice(bytes);
                    return;
                }
                let mut rest = bytes;
                while let Some(at) = rest.iter().position(special) {
                    self.out.extend_from_slice(&rest[..at]);
                    self.out.extend_from_slice(match rest[at] {
                        b'\\' => b"\\\\",
                        b'\t' => b"\\t",
                        b'\n' => b"\\n",
                        _ => b"\\r",
                    });
                    rest = &rest[at + 1..];
                }
                self.out.extend_from_slice(rest);
            }
        }
    }

    fn end(self) {
        self.out.push(b'\n');
    }
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
    txn: &'a mut Txn,
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
        let found = if names.backend == DbBackend::Postgres {
            self.find_or_create_postgres(table, members, &hashes)
                .await?
        } else {
            self.find_or_create_chunked(table, members, &hashes).await?
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
struct FoundMembers {
    ids: HashMap<String, i64>,
    created: usize,
}

impl TxnStore<'_> {
    /// SQLite: multi-row INSERTs and SELECTs, in chunks under its limit on
    /// bound parameters.
    async fn find_or_create_chunked(
        &mut self,
        table: &Table,
        members: &[&Member],
        hashes: &[String],
    ) -> Result<FoundMembers, DbErr> {
        let names = self.names;
        let mut created = 0;
        for (chunk, chunk_hashes) in members.chunks(CHUNK).zip(hashes.chunks(CHUNK)) {
            let mut columns: Vec<Alias> =
                table.natural_key.iter().map(|c| names.column(c)).collect();
            columns.push(names.column(HASH_COLUMN));
            columns.extend(table.audit.create.as_deref().map(|c| names.column(c)));
            let mut insert = Query::insert();
            insert.into_table(names.table(&table.name)).columns(columns);
            for (member, hash) in chunk.iter().zip(chunk_hashes) {
                let mut values: Vec<SimpleExpr> =
                    member.iter().map(|v| v.to_string().into()).collect();
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
            created += self.txn.execute(&insert).await? as usize;
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
            for row in self.txn.query(&select).await? {
                ids.insert(row[1].text()?, row[0].int()?);
            }
        }
        Ok(FoundMembers { ids, created })
    }

    /// PostgreSQL: one INSERT of unnested arrays (one bound parameter per
    /// column, so the statement's text, and its prepared plan, stay the same
    /// whatever the count), then one SELECT of the ids. Members are inserted
    /// in hash order, so writers creating the same members at once wait for
    /// each other in one order instead of deadlocking.
    async fn find_or_create_postgres(
        &mut self,
        table: &Table,
        members: &[&Member],
        hashes: &[String],
    ) -> Result<FoundMembers, DbErr> {
        let names = self.names;
        let text_array =
            |values: Vec<Value>| Value::Array(ArrayType::String, Some(Box::new(values)));
        let mut columns: Vec<String> = table.natural_key.iter().map(|c| names.quoted(c)).collect();
        columns.push(names.quoted(HASH_COLUMN));
        let mut values: Vec<Value> = (0..table.natural_key.len())
            .map(|at| text_array(members.iter().map(|m| m[at].to_string().into()).collect()))
            .collect();
        values.push(text_array(
            hashes.iter().map(|h| h.clone().into()).collect(),
        ));
        let params: Vec<String> = (1..=values.len())
            .map(|n| format!("${n}::text[]"))
            .collect();
        let mut selected: Vec<String> = (0..values.len()).map(|at| format!("m.c{at}")).collect();
        let aliases: Vec<String> = (0..values.len()).map(|at| format!("c{at}")).collect();
        if let Some(create) = table.audit.create.as_deref() {
            columns.push(names.quoted(create));
            selected.push(format!("${}", values.len() + 1));
            values.push(self.audit_key.into());
        }
        let insert = format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS m({}) ORDER BY m.c{} \
             ON CONFLICT ({}) DO NOTHING",
            names.quoted(&table.name),
            columns.join(", "),
            selected.join(", "),
            params.join(", "),
            aliases.join(", "),
            table.natural_key.len(),
            names.quoted(HASH_COLUMN),
        );
        let created = self.txn.execute_sql(&insert, values).await? as usize;
        // A second statement sees members that a concurrent writer created
        // and committed meanwhile (the INSERT skipped them).
        let key = table.surrogate_key.as_deref().unwrap_or("ID");
        let select = format!(
            "SELECT CAST({} AS BIGINT), {hash} FROM {} WHERE {hash} = ANY($1::text[])",
            names.quoted(key),
            names.quoted(&table.name),
            hash = names.quoted(HASH_COLUMN),
        );
        let hashes = text_array(hashes.iter().map(|h| h.clone().into()).collect());
        let mut ids: HashMap<String, i64> = HashMap::with_capacity(members.len());
        for row in self.txn.query_sql(&select, vec![hashes]).await? {
            ids.insert(row[1].text()?, row[0].int()?);
        }
        Ok(FoundMembers { ids, created })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of (session, index, value) with key (session, index).
    fn event(session: &str, rows: &[(i64, &str)]) -> Vec<Row> {
        rows.iter()
            .map(|(index, value)| Row {
                values: vec![
                    Cell::Text(session.into()),
                    Cell::Int(*index),
                    Cell::Text((*value).into()),
                ],
                members: Vec::new(),
            })
            .collect()
    }

    fn check(events: &[Vec<Row>], replace_by: &[usize], expected: &[(&str, i64, &str)]) {
        let got: Vec<(String, i64, String)> = latest_rows(events, replace_by, &[0, 1])
            .iter()
            .map(|&(event, row)| match &events[event][row].values[..] {
                [Cell::Text(s), Cell::Int(i), Cell::Text(v)] => (s.to_string(), *i, v.to_string()),
                other => panic!("unexpected row {other:?}"),
            })
            .collect();
        let expected: Vec<(String, i64, String)> = expected
            .iter()
            .map(|(s, i, v)| (s.to_string(), *i, v.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_later_event_of_a_session_replaces_the_earlier_one() {
        let events = [
            event("a", &[(0, "old"), (1, "old")]),
            event("b", &[(0, "b")]),
            event("a", &[(0, "new")]),
        ];
        check(&events, &[0], &[("b", 0, "b"), ("a", 0, "new")]);
    }

    #[test]
    fn without_replace_by_every_event_counts_and_the_last_row_per_key_wins() {
        let events = [
            event("a", &[(0, "first"), (1, "kept")]),
            event("b", &[(0, "b")]),
            event("a", &[(0, "second")]),
        ];
        check(
            &events,
            &[],
            &[("a", 0, "second"), ("a", 1, "kept"), ("b", 0, "b")],
        );
    }

    #[test]
    fn duplicate_keys_within_an_event_keep_the_last_row() {
        let events = [event("a", &[(0, "x"), (0, "y"), (1, "z")])];
        check(&events, &[0], &[("a", 0, "y"), ("a", 1, "z")]);
    }

    #[test]
    fn copy_lines_escape_and_mark_nulls() {
        let mut out = Vec::new();
        let mut line = CopyLine::new(&mut out);
        line.cell(&Cell::Text("a\tb\\c\nd".into()));
        line.cell(&Cell::Null);
        line.int(-7);
        line.cell(&Cell::Text("".into()));
        line.cell(&Cell::Text("plain text, then\r".into()));
        line.cell(&Cell::Text("no specials".into()));
        line.end();
        assert_eq!(
            out,
            b"a\\tb\\\\c\\nd\t\\N\t-7\t\tplain text, then\\r\tno specials\n"
        );
    }
}
