//! PostgreSQL's side of the sink: how a batch's fact rows and new members
//! are written there. A mapping with `replace_by` replaces its identities'
//! rows by advisory locks, DELETE … RETURNING (keeping each key's creator)
//! and COPY, PostgreSQL's bulk path; without it, chunks are upserted from
//! one JSON document each. Replaced identities and new members travel as
//! one array parameter per column, so each statement's text, and plan, stay
//! the same whatever the batch's size.

use foldhash::{HashMap, HashMapExt};
use sea_orm::DbErr;
use sea_orm::sea_query::{
    Alias, ArrayType, Expr, ExprTrait, Func, InsertStatement, OnConflict, Order, Query,
    SelectStatement, UnionType, Value,
};

use super::aggregate::{Upkeep, read_column};
use super::txn::{Array, Scalar, Txn};
use super::write::{Facts, FoundMembers};
use super::{HASH_COLUMN, Names};
use crate::catalog::Table;
use crate::dimension::Member;
use crate::pipeline::{CopyLine, Prepared};
use crate::plan::{Cell, Row};

/// Rows per JSON document (one bound parameter each).
const JSON_CHUNK: usize = 5000;

/// A batch's fact rows: as the sink writes them, as the preparer encoded
/// them, and their dimension keys.
pub(super) struct FactRows<'a> {
    pub rows: &'a [&'a Row],
    pub prepared: &'a Prepared,
    pub keys: &'a [Vec<i64>],
}

/// Writes the rows: by delete-then-COPY when the preparer made COPY text,
/// else by upsert and a delete of what the replaced events no longer have.
/// The aggregates' upkeep gets the rows a COPY replaces, and computes while
/// the server loads the new ones.
pub(super) async fn write_facts(
    facts: &Facts<'_>,
    txn: &mut Txn,
    batch: &FactRows<'_>,
    audit_key: i64,
    copy_buffer: &mut Vec<u8>,
    upkeep: Option<&mut Upkeep<'_>>,
) -> Result<(), DbErr> {
    if facts.preparer.copy {
        copy_buffer.clear();
        return replace_facts(facts, txn, batch, audit_key, copy_buffer, upkeep).await;
    }
    upsert_facts(facts, txn, batch.rows, batch.keys, audit_key).await?;
    delete_replaced(facts, txn, batch.rows, audit_key).await
}

/// PostgreSQL with `replace_by`: the batch's events replace their rows
/// wholesale, so the rows are deleted (keeping each key's
/// `CREATE_AUDIT_KEY`, and handing the columns the aggregates read to
/// their upkeep) and the new ones arrive by COPY, PostgreSQL's bulk path.
/// Advisory locks on the replaced identities, taken in one order, make a
/// second writer of the same events wait for the first to commit, and its
/// DELETE then sees the first one's rows.
async fn replace_facts(
    facts: &Facts<'_>,
    txn: &mut Txn,
    batch: &FactRows<'_>,
    audit_key: i64,
    data: &mut Vec<u8>,
    mut upkeep: Option<&mut Upkeep<'_>>,
) -> Result<(), DbErr> {
    let rows = batch.rows;
    if rows.is_empty() {
        return Ok(());
    }
    let names = facts.names;
    let columns = facts.columns();
    // The aggregates' turns first, when their upkeep left them to the write.
    let replaced = replaced_arrays(facts, rows);
    let first: &[String] = upkeep.as_deref().map_or(&[], Upkeep::locks);
    let lock = replaced.lock(first);
    // While the server takes them, the aggregates' read of the joined rows
    // is prepared (the statement is sent first).
    let prepare = async {
        if let Some(upkeep) = upkeep.as_deref_mut() {
            upkeep.prepare();
        }
    };
    let (locked, ()) = tokio::join!(biased; txn.execute(&lock), prepare);
    locked?;

    // DELETE … RETURNING each row's key as text, its creator, and the
    // columns the aggregates read.
    let mut returning: Vec<Expr> = facts
        .plan
        .key
        .iter()
        .map(|k| Expr::col(names.column(k)).cast_as(Alias::new("TEXT")))
        .collect();
    let create = facts.table.audit.create.as_deref();
    returning.extend(create.map(|c| Expr::col(names.column(c)).cast_as(Alias::new("BIGINT"))));
    let read: &[String] = upkeep.as_deref().map_or(&[], Upkeep::returning);
    returning.extend(
        read.iter()
            .map(|column| read_column(names, facts.table, None, column)),
    );
    let read = read.len();
    let delete = Query::delete()
        .from_table(names.table(&facts.table.name))
        .cond_where(replaced.rows(None))
        .returning(Query::returning().exprs(returning))
        .to_owned();
    let mut created_by: HashMap<Vec<String>, i64> = HashMap::new();
    let mut deleted: Vec<Vec<Scalar>> = Vec::new();
    for mut row in txn.query(&delete).await? {
        deleted.push(row.split_off(row.len() - read));
        if let Some((last, key)) = row.split_last().filter(|_| create.is_some()) {
            created_by.insert(
                key.iter().map(|k| k.text()).collect::<Result<_, _>>()?,
                last.int()?,
            );
        }
    }
    // The COPY's data is written while the server reads the joined rows.
    let read = async {
        match upkeep.as_deref_mut() {
            Some(upkeep) => upkeep.replaced(txn, deleted).await,
            None => Ok(()),
        }
    };
    let (read, ()) = tokio::join!(biased; read, async {
        copy_data(facts, batch, audit_key, &created_by, data)
    });
    read?;

    let list: Vec<String> = columns.iter().map(|c| names.quoted(c)).collect();
    let copy = format!(
        "COPY {} ({}) FROM STDIN",
        names.quoted(&facts.table.name),
        list.join(", ")
    );
    txn.copy_in(&copy, data, || upkeep.map_or((), Upkeep::compute))
        .await?;
    Ok(())
}

/// The batch's rows in COPY's text format: the values encoded when the
/// batch was prepared, then the dimension keys and the audit keys (rows
/// that existed keep their creator, `created_by`).
fn copy_data(
    facts: &Facts<'_>,
    batch: &FactRows<'_>,
    audit_key: i64,
    created_by: &HashMap<Vec<String>, i64>,
    data: &mut Vec<u8>,
) {
    let create = facts.table.audit.create.as_deref();
    for (at, (row, dimension_keys)) in batch.rows.iter().zip(batch.keys).enumerate() {
        // The mapped values were encoded when the batch was prepared.
        data.extend_from_slice(batch.prepared.copy_text(at));
        let mut line = CopyLine::after_values(data);
        for id in dimension_keys {
            line.int(*id);
        }
        if create.is_some() {
            // Rows that existed keep their creator; new rows are this batch's.
            let created = if created_by.is_empty() {
                audit_key
            } else {
                created_by
                    .get(&facts.preparer.key_text(row))
                    .copied()
                    .unwrap_or(audit_key)
            };
            line.int(created);
        }
        if facts.table.audit.update.is_some() {
            line.int(audit_key);
        }
        line.end();
    }
}

/// Takes the advisory locks of the rows' `replace_by` identities, which
/// writers of the same identities take too (see [`replace_facts`]).
pub(super) async fn lock_identities(
    facts: &Facts<'_>,
    txn: &mut Txn,
    rows: &[&Row],
) -> Result<(), DbErr> {
    if !rows.is_empty() {
        txn.execute(&replaced_arrays(facts, rows).lock(&[])).await?;
    }
    Ok(())
}

/// PostgreSQL: each chunk is one JSON document that the server expands
/// with `json_populate_recordset`, so a statement binds one parameter
/// instead of one per cell, and its text (hence its plan) is reused.
async fn upsert_facts(
    facts: &Facts<'_>,
    txn: &mut Txn,
    rows: &[&Row],
    keys: &[Vec<i64>],
    audit_key: i64,
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let names = facts.names;
    let columns = facts.columns();
    let updated = columns.iter().filter(|c| {
        !facts.plan.key.iter().any(|k| k == *c) && facts.table.audit.create.as_deref() != Some(**c)
    });
    // INSERT INTO fact (…) SELECT … FROM json_populate_recordset(NULL::fact, ?::json) r
    // ON CONFLICT (key) DO UPDATE SET …: one bound parameter per chunk.
    let statement = |json: String| -> Result<InsertStatement, DbErr> {
        let record = Func::cust("json_populate_recordset")
            .arg(Expr::cust(format!(
                "NULL::{}",
                names.quoted(&facts.table.name)
            )))
            .arg(Expr::val(json).cast_as("json"));
        let select = Query::select()
            .columns(columns.iter().map(|c| names.column(c)))
            .from_function(record, Alias::new("r"))
            .to_owned();
        Ok(Query::insert()
            .into_table(names.table(&facts.table.name))
            .columns(columns.iter().map(|c| names.column(c)))
            .select_from(select)
            .map_err(|e| DbErr::Custom(e.to_string()))?
            .on_conflict(
                OnConflict::columns(facts.plan.key.iter().map(|k| names.column(k)))
                    .update_columns(updated.clone().map(|c| names.column(c)))
                    .to_owned(),
            )
            .to_owned())
    };
    let json_names: Vec<String> = columns.iter().map(|c| names.raw(c)).collect();
    for (chunk_rows, chunk_keys) in rows.chunks(JSON_CHUNK).zip(keys.chunks(JSON_CHUNK)) {
        let document = JsonRows {
            names: &json_names,
            rows: chunk_rows,
            keys: chunk_keys,
            audit_key,
        };
        let json = serde_json::to_string(&document).map_err(|e| DbErr::Custom(e.to_string()))?;
        txn.execute(&statement(json)?).await?;
    }
    Ok(())
}

/// Deletes the rows of this batch's events that the events no longer have,
/// in one statement for the whole batch.
async fn delete_replaced(
    facts: &Facts<'_>,
    txn: &mut Txn,
    rows: &[&Row],
    audit_key: i64,
) -> Result<(), DbErr> {
    let Some(audit_update) = facts.replaces(rows) else {
        return Ok(());
    };
    let names = facts.names;
    // One statement for the whole batch.
    let replaced = replaced_arrays(facts, rows);
    let older = Expr::col(names.column(audit_update)).ne(audit_key);
    let delete = Query::delete()
        .from_table(names.table(&facts.table.name))
        .cond_where(replaced.rows(Some(older)))
        .to_owned();
    txn.execute(&delete).await?;
    Ok(())
}

/// `column = ANY($1)` with the cells as one bound array (bigint[] or
/// text[]): one statement and one parameter however many values.
pub(super) fn any_of<'c>(
    column: Expr,
    cells: impl Iterator<Item = &'c Cell>,
    integer: bool,
) -> Expr {
    Expr::cust_with_exprs("$1 = ANY($2)", [column, array(cells, integer)])
}

/// The cells as one bound array, cast to bigint[] or text[].
pub(super) fn array<'c>(cells: impl Iterator<Item = &'c Cell>, integer: bool) -> Expr {
    let array = Array::of(cells, integer);
    let sql_type = array.sql_type();
    let (ty, values): (ArrayType, Vec<Value>) = match array {
        Array::Int(values) => (
            ArrayType::BigInt,
            values.into_iter().map(Value::BigInt).collect(),
        ),
        Array::Text(values) => (
            ArrayType::String,
            values.into_iter().map(Value::String).collect(),
        ),
    };
    Expr::val(Value::Array(ty, Some(Box::new(values)))).cast_as(Alias::new(sql_type))
}

/// The distinct `replace_by` values of the rows as PostgreSQL arrays, one
/// bound parameter per column.
fn replaced_arrays(facts: &Facts<'_>, rows: &[&Row]) -> ReplacedArrays {
    let names = facts.names;
    let identities = facts.replaced_identities(rows);
    let mut arrays = Vec::new();
    let mut matches = Vec::new();
    for (at, name) in facts.plan.replace_by.iter().enumerate() {
        let integer = facts.table.column(name).is_some_and(|c| c.ty.is_integer());
        let cells = identities.iter().map(|identity| identity[at]);
        arrays.push(array(cells, integer));
        matches.push(format!("{} = r.c{at}", names.quoted(name)));
    }
    ReplacedArrays {
        table: names.quoted(&facts.table.name),
        matches: matches.join(" AND "),
        arrays,
    }
}

/// A batch's replaced identities as arrays: see [`replaced_arrays`].
struct ReplacedArrays {
    /// The fact table, quoted.
    table: String,
    /// `"session_id" = r.c0 AND …`
    matches: String,
    /// One array per `replace_by` column, cast to its SQL type.
    arrays: Vec<Expr>,
}

impl ReplacedArrays {
    /// `SELECT pg_advisory_xact_lock(l.h) FROM (SELECT DISTINCT n AS o,
    /// hashtextextended(r::text, 0) AS h FROM unnest(…) AS r UNION ALL
    /// SELECT 0, hashtextextended($key, 0) …) AS l ORDER BY l.o, l.h`: a
    /// transaction lock per identity, taken in one order, after the `n`
    /// keys of `first` (in their order).
    fn lock(&self, first: &[String]) -> SelectStatement {
        let mut hashes = Query::select()
            .distinct()
            .expr_as(Expr::val(first.len() as i64), Alias::new("o"))
            .expr_as(Expr::cust("hashtextextended(r::text, 0)"), Alias::new("h"))
            .from_function(
                Func::cust("unnest").args(self.arrays.iter().cloned()),
                Alias::new("r"),
            )
            .to_owned();
        for (at, key) in first.iter().enumerate() {
            let hash = Expr::cust_with_values("hashtextextended($1, 0)", [key.clone()]);
            let first = Query::select()
                .expr_as(Expr::val(at as i64), Alias::new("o"))
                .expr_as(hash, Alias::new("h"))
                .to_owned();
            hashes.union(UnionType::All, first);
        }
        let column = |name: &str| (Alias::new("l"), Alias::new(name));
        Query::select()
            .expr(Func::cust("pg_advisory_xact_lock").arg(Expr::col(column("h"))))
            .from_subquery(hashes, Alias::new("l"))
            .order_by(column("o"), Order::Asc)
            .order_by(column("h"), Order::Asc)
            .to_owned()
    }

    /// A condition selecting the fact rows of the replaced identities (that
    /// also meet `condition`) by their `ctid`s, found by one index probe per
    /// identity. The shape fixes the plan: `OFFSET 0` keeps the lateral
    /// subquery from being flattened into a join, which the planner would
    /// otherwise run as a sort or hash of the whole table whenever its
    /// statistics are stale, as they are while a new table fills. SeaQuery
    /// has no column list for a function's alias nor such a fence, so the
    /// shape is written here; its values are SeaQuery's expressions
    /// (`$1`… name them, and SeaQuery numbers the bound parameters).
    fn rows(&self, condition: Option<Expr>) -> Expr {
        let count = self.arrays.len();
        let arrays: Vec<String> = (1..=count).map(|n| format!("${n}")).collect();
        let aliases: Vec<String> = (0..count).map(|at| format!("c{at}")).collect();
        let mut exprs = self.arrays.clone();
        let condition = match condition {
            Some(condition) => {
                exprs.push(condition);
                format!(" AND ${}", count + 1)
            }
            None => String::new(),
        };
        Expr::cust_with_exprs(
            format!(
                "ctid = ANY(ARRAY(SELECT x.ctid FROM unnest({}) AS r({}) CROSS JOIN LATERAL \
                 (SELECT ctid FROM {} WHERE {}{condition} OFFSET 0) x))",
                arrays.join(", "),
                aliases.join(", "),
                self.table.replace('$', "$$"),
                self.matches.replace('$', "$$"),
            ),
            exprs,
        )
    }
}

/// One INSERT of unnested arrays (one bound parameter per
/// column, so the statement's text, and its prepared plan, stay the same
/// whatever the count), then one SELECT of the ids. Members are inserted
/// in hash order, so writers creating the same members at once wait for
/// each other in one order instead of deadlocking.
pub(super) async fn find_or_create(
    txn: &mut Txn,
    names: Names,
    table: &Table,
    members: &[&Member],
    hashes: &[String],
    audit_key: i64,
) -> Result<FoundMembers, DbErr> {
    // One bound array per column: text, or bigint for integer columns.
    let array = |values: Vec<Value>, sql_type: &str| {
        Expr::val(Value::Array(ArrayType::String, Some(Box::new(values))))
            .cast_as(Alias::new(sql_type))
    };
    let text_array = |values: Vec<Value>| array(values, "text[]");
    let mut columns: Vec<Alias> = table.natural_key.iter().map(|c| names.column(c)).collect();
    columns.push(names.column(HASH_COLUMN));
    let mut arrays: Vec<Expr> = table
        .natural_key
        .iter()
        .enumerate()
        .map(|(at, column)| {
            let integer = table.column(column).is_some_and(|c| c.ty.is_integer());
            let values = members.iter().map(|m| m[at].to_string().into()).collect();
            array(values, if integer { "bigint[]" } else { "text[]" })
        })
        .collect();
    arrays.push(text_array(
        hashes.iter().map(|h| h.clone().into()).collect(),
    ));
    // SELECT unnest(…), unnest(…), …[, audit key] ORDER BY <the hash>: set
    // returning functions in a select list run in lockstep, one row per
    // member, and ORDER BY a position names an output column.
    let mut select = Query::select();
    for array in arrays {
        select.expr(Func::cust("unnest").arg(array));
    }
    select.order_by_expr(Expr::cust(columns.len().to_string()), Order::Asc);
    if let Some(create) = table.audit.create.as_deref() {
        columns.push(names.column(create));
        select.expr(Expr::val(audit_key));
    }
    let insert = Query::insert()
        .into_table(names.table(&table.name))
        .columns(columns)
        .select_from(select)
        .map_err(|e| DbErr::Custom(e.to_string()))?
        .on_conflict(
            OnConflict::column(names.column(HASH_COLUMN))
                .do_nothing()
                .to_owned(),
        )
        .to_owned();
    let created = txn.execute(&insert).await? as usize;
    // A second statement sees members that a concurrent writer created
    // and committed meanwhile (the INSERT skipped them).
    let key = table.surrogate_key.as_deref().unwrap_or("ID");
    let any = Expr::cust_with_exprs(
        "$1 = ANY($2)",
        [
            Expr::col(names.column(HASH_COLUMN)),
            text_array(hashes.iter().map(|h| h.clone().into()).collect()),
        ],
    );
    let select = Query::select()
        .expr(Expr::col(names.column(key)).cast_as(Alias::new("BIGINT")))
        .column(names.column(HASH_COLUMN))
        .from(names.table(&table.name))
        .and_where(any)
        .to_owned();
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(members.len());
    for row in txn.query(&select).await? {
        ids.insert(row[1].text()?, row[0].int()?);
    }
    Ok(FoundMembers { ids, created })
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

/// Whether a SQLSTATE names a condition of the server rather than of the
/// statement: connection exceptions (08), transaction rollbacks such as
/// deadlocks (40), insufficient resources (53), objects not in the
/// prerequisite state, such as a database not allowing connections (55),
/// operator intervention such as a shutdown (57) and system errors (58).
/// Anything else (bad data, a constraint, a trigger's exception) would fail
/// again.
pub(super) fn transient(code: &str) -> bool {
    ["08", "40", "53", "55", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
}
