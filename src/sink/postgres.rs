//! PostgreSQL's side of the sink: how a batch's fact rows and new members
//! are written there. A mapping with `replace_by` replaces its identities'
//! rows by advisory locks, DELETE … RETURNING (keeping each key's creator)
//! and COPY, PostgreSQL's bulk path; without it, chunks are upserted from
//! one JSON document each. Replaced identities and new members travel as
//! one array parameter per column, so each statement's text, and plan, stay
//! the same whatever the batch's size.

use foldhash::{HashMap, HashMapExt};
use sea_orm::DbErr;
use sea_orm::sea_query::{ArrayType, Value};

use super::txn::Txn;
use super::write::{Facts, FoundMembers};
use super::{HASH_COLUMN, Names};
use crate::catalog::Table;
use crate::dimension::Member;
use crate::pipeline::{CopyLine, Prepared};
use crate::plan::{Cell, Row};

/// Rows per JSON document (one bound parameter each).
const JSON_CHUNK: usize = 5000;

/// Writes the rows: by delete-then-COPY when the preparer made COPY text,
/// else by upsert and a delete of what the replaced events no longer have.
pub(super) async fn write_facts(
    facts: &Facts<'_>,
    txn: &mut Txn,
    rows: &[&Row],
    prepared: &Prepared,
    keys: &[Vec<i64>],
    audit_key: i64,
    copy_buffer: &mut Vec<u8>,
) -> Result<(), DbErr> {
    if facts.preparer.copy {
        copy_buffer.clear();
        return replace_facts(facts, txn, rows, prepared, keys, audit_key, copy_buffer).await;
    }
    upsert_facts(facts, txn, rows, keys, audit_key).await?;
    delete_replaced(facts, txn, rows, audit_key).await
}

/// PostgreSQL with `replace_by`: the batch's events replace their rows
/// wholesale, so the rows are deleted (keeping each key's
/// `CREATE_AUDIT_KEY`) and the new ones arrive by COPY, PostgreSQL's bulk
/// path. Advisory locks on the replaced identities, taken in one order,
/// make a second writer of the same events wait for the first to commit,
/// and its DELETE then sees the first one's rows.
async fn replace_facts(
    facts: &Facts<'_>,
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
    let names = facts.names;
    let columns = facts.columns();
    let replaced = replaced_arrays(facts, rows);
    let lock = format!(
        "SELECT pg_advisory_xact_lock(h) FROM \
             (SELECT DISTINCT hashtextextended(ROW({})::text, 0) AS h FROM {}) l ORDER BY h",
        replaced.columns, replaced.from
    );
    txn.execute_sql(&lock, replaced.values.clone()).await?;

    let key: Vec<String> = facts
        .plan
        .key
        .iter()
        .map(|k| format!("CAST({} AS TEXT)", names.quoted(k)))
        .collect();
    let create = facts.table.audit.create.as_deref();
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

    for (at, (row, dimension_keys)) in rows.iter().zip(keys).enumerate() {
        // The mapped values were encoded when the batch was prepared.
        data.extend_from_slice(prepared.copy_text(at));
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
    let list: Vec<String> = columns.iter().map(|c| names.quoted(c)).collect();
    let copy = format!(
        "COPY {} ({}) FROM STDIN",
        names.quoted(&facts.table.name),
        list.join(", ")
    );
    txn.copy_in(&copy, data).await?;
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
    let list: Vec<String> = columns.iter().map(|c| names.quoted(c)).collect();
    let list = list.join(", ");
    let key: Vec<String> = facts.plan.key.iter().map(|k| names.quoted(k)).collect();
    let set: Vec<String> = columns
        .iter()
        .filter(|c| {
            !facts.plan.key.iter().any(|k| k == *c)
                && facts.table.audit.create.as_deref() != Some(**c)
        })
        .map(|c| format!("{0} = excluded.{0}", names.quoted(c)))
        .collect();
    let table = names.quoted(&facts.table.name);
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
        let json = serde_json::to_string(&document).map_err(|e| DbErr::Custom(e.to_string()))?;
        txn.execute_sql(&sql, vec![json.into()]).await?;
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
    let Some(audit_update) = facts.table.audit.update.as_deref() else {
        return Ok(());
    };
    if facts.plan.replace_by.is_empty() || rows.is_empty() {
        return Ok(());
    }
    let names = facts.names;
    // One statement for the whole batch.
    let replaced = replaced_arrays(facts, rows);
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
    Ok(())
}

/// The distinct `replace_by` values of the rows as PostgreSQL arrays, one
/// bound parameter per column (`$1`, `$2`, …), and the SQL to find their
/// rows.
fn replaced_arrays(facts: &Facts<'_>, rows: &[&Row]) -> ReplacedArrays {
    let names = facts.names;
    let identities = facts.replaced_identities(rows);
    let mut arrays = Vec::new();
    let (mut params, mut columns, mut matches) = (Vec::new(), Vec::new(), Vec::new());
    for (at, name) in facts.plan.replace_by.iter().enumerate() {
        let integer = facts.table.column(name).is_some_and(|c| c.ty.is_integer());
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
                    cell => Value::String(Some(Cell::to_text(cell))),
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
        table: names.quoted(&facts.table.name),
        from: format!("unnest({}) AS r({})", params.join(", "), aliases.join(", ")),
        columns: columns.join(", "),
        matches: matches.join(" AND "),
        values: arrays,
    }
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
    let text_array = |values: Vec<Value>| Value::Array(ArrayType::String, Some(Box::new(values)));
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
        values.push(audit_key.into());
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
    let created = txn.execute_sql(&insert, values).await? as usize;
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
    for row in txn.query_sql(&select, vec![hashes]).await? {
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
