//! SQLite's side of the sink: how a batch's fact rows and new members are
//! written there. Rows go as multi-row INSERT … ON CONFLICT statements built
//! by SeaQuery, in chunks under SQLite's limit on bound parameters; the rows
//! a replaced event no longer has are deleted by audit key.

use foldhash::{HashMap, HashMapExt};
use sea_orm::DbErr;
use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, OnConflict, Query, SimpleExpr, Value};

use super::txn::Txn;
use super::write::{CHUNK, Facts, FoundMembers, value};
use super::{HASH_COLUMN, Names};
use crate::catalog::{ColumnType, Table};
use crate::dimension::Member;
use crate::plan::{Cell, Row};

/// Writes the rows: upserts them on the key, then deletes the rows of
/// their `replace_by` identities that they no longer have.
pub(super) async fn write_facts(
    facts: &Facts<'_>,
    txn: &mut Txn,
    rows: &[&Row],
    keys: &[Vec<i64>],
    audit_key: i64,
) -> Result<(), DbErr> {
    upsert_facts(facts, txn, rows, keys, audit_key).await?;
    delete_replaced(facts, txn, rows, audit_key).await
}

/// Upserts the rows on the mapping's key, in multi-row INSERTs.
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
    let audit = &facts.table.audit;
    let types: Vec<ColumnType> = columns
        .iter()
        .map(|c| facts.table.column(c).map_or(ColumnType::BigInt, |c| c.ty))
        .collect();
    let updated: Vec<Alias> = columns
        .iter()
        .filter(|c| !facts.plan.key.iter().any(|k| k == *c) && audit.create.as_deref() != Some(**c))
        .map(|c| names.column(c))
        .collect();
    let conflict = OnConflict::columns(facts.plan.key.iter().map(|k| names.column(k)))
        .update_columns(updated)
        .to_owned();
    let audits = usize::from(audit.create.is_some()) + usize::from(audit.update.is_some());
    for (chunk_rows, chunk_keys) in rows.chunks(CHUNK).zip(keys.chunks(CHUNK)) {
        let mut insert = Query::insert();
        insert
            .into_table(names.table(&facts.table.name))
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

/// Deletes the rows of this batch's events that the events no longer have:
/// those of their identities still carrying an older audit key.
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
    let types: Vec<ColumnType> = facts
        .plan
        .replace_by
        .iter()
        .map(|name| facts.table.column(name).map_or(ColumnType::Text, |c| c.ty))
        .collect();
    let columns: Vec<Alias> = facts
        .plan
        .replace_by
        .iter()
        .map(|name| names.column(name))
        .collect();
    let identities = facts.replaced_identities(rows);
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
            .from_table(names.table(&facts.table.name))
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

/// Creates the members not in the table yet (multi-row INSERTs that skip
/// existing hashes), then reads every member's id, in chunks.
pub(super) async fn find_or_create(
    txn: &mut Txn,
    names: Names,
    table: &Table,
    members: &[&Member],
    hashes: &[String],
    audit_key: i64,
) -> Result<FoundMembers, DbErr> {
    let types: Vec<ColumnType> = table
        .natural_key
        .iter()
        .map(|c| table.column(c).map_or(ColumnType::Text, |c| c.ty))
        .collect();
    let mut created = 0;
    for (chunk, chunk_hashes) in members.chunks(CHUNK).zip(hashes.chunks(CHUNK)) {
        let mut columns: Vec<Alias> = table.natural_key.iter().map(|c| names.column(c)).collect();
        columns.push(names.column(HASH_COLUMN));
        columns.extend(table.audit.create.as_deref().map(|c| names.column(c)));
        let mut insert = Query::insert();
        insert.into_table(names.table(&table.name)).columns(columns);
        for (member, hash) in chunk.iter().zip(chunk_hashes) {
            let mut values: Vec<SimpleExpr> = member
                .iter()
                .zip(&types)
                .map(|(value, ty)| typed(value, *ty).map(SimpleExpr::from))
                .collect::<Result<_, _>>()?;
            values.push(hash.clone().into());
            if table.audit.create.is_some() {
                values.push(audit_key.into());
            }
            insert.values_panic(values);
        }
        insert.on_conflict(
            OnConflict::column(names.column(HASH_COLUMN))
                .do_nothing()
                .to_owned(),
        );
        created += txn.execute(&insert).await? as usize;
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
        for row in txn.query(&select).await? {
            ids.insert(row[1].text()?, row[0].int()?);
        }
    }
    Ok(FoundMembers { ids, created })
}

/// A member's natural key value bound with its column's type: integer
/// columns get integers (the plan made them from integers, and validation
/// holds `absent` to one).
fn typed(value: &str, ty: ColumnType) -> Result<Value, DbErr> {
    if !ty.is_integer() {
        return Ok(Value::String(Some(value.to_owned())));
    }
    value
        .parse::<i64>()
        .map(|number| Value::BigInt(Some(number)))
        .map_err(|_| {
            DbErr::Custom(format!(
                "member value `{value}` of an {ty} column is not an integer"
            ))
        })
}

/// Whether an SQLite result code is the file's state rather than the
/// statement's: busy, locked, I/O error, full, cannot open (extended codes
/// keep the primary one in the low byte). Such a batch is worth retrying.
pub(super) fn transient(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14))
}
