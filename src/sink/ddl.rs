//! Tables from the catalog, for SQLite and PostgreSQL, via SeaQuery.
//!
//! Each catalog column becomes a column of its type; a table's surrogate key
//! becomes a generated id; dimensions get one more column, the
//! `NATURAL_KEY_HASH` (SHA-256 of the natural key values) with a unique
//! index, so that members are unique and race-safe to create however long
//! their natural keys are (PostgreSQL limits index entries to ~2.7 kB).
//! Seeded rows (static members) are inserted once.

use indexmap::IndexMap;
use sea_orm::sea_query::{
    ColumnDef, Index, OnConflict, Query, Table as DdlTable, TableCreateStatement,
};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use sha2::{Digest, Sha256};

use super::Names;
use crate::catalog::{Column, ColumnType, Role, SeedValue, Table};

/// The sink-managed column holding the hash of a dimension member's natural key.
pub const HASH_COLUMN: &str = "NATURAL_KEY_HASH";

/// SHA-256 (hex) of natural key values, separated by a unit separator.
pub fn natural_key_hash<S: AsRef<str>>(values: &[S]) -> String {
    let mut hasher = Sha256::new();
    for (at, value) in values.iter().enumerate() {
        if at > 0 {
            hasher.update([0x1f]);
        }
        hasher.update(value.as_ref().as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// Creates `table` (and its indexes) when it does not exist, and inserts its
/// seeded rows that are missing.
pub async fn create(db: &impl ConnectionTrait, names: &Names, table: &Table) -> Result<(), DbErr> {
    for statement in statements(db.get_database_backend(), names, table) {
        db.execute_raw(statement).await?;
    }
    Ok(())
}

/// The statements of [`create`], in order: they change nothing that is
/// already there.
pub fn statements(backend: DbBackend, names: &Names, table: &Table) -> Vec<Statement> {
    let mut statements = vec![backend.build(&create_table(backend, names, table, None))];
    if table.role == Role::Dimension {
        let index = Index::create()
            .if_not_exists()
            .unique()
            .name(names.index(&table.name, "natural_key"))
            .table(names.table(&table.name))
            .col(names.column(HASH_COLUMN))
            .to_owned();
        statements.push(backend.build(&index));
    }
    if !table.rows.is_empty() {
        statements.extend(seed(backend, names, table));
    }
    statements
}

/// `CREATE TABLE IF NOT EXISTS` for `table`, under another name if given.
pub fn create_table(
    backend: DbBackend,
    names: &Names,
    table: &Table,
    name: Option<&str>,
) -> TableCreateStatement {
    let mut create = DdlTable::create();
    create
        .table(names.table(name.unwrap_or(&table.name)))
        .if_not_exists();
    for (name, column) in columns(table) {
        let surrogate = table.surrogate_key.as_deref() == Some(name.as_str());
        let mut def = column_def(backend, names, &name, &column, surrogate);
        if surrogate {
            def.primary_key().auto_increment();
        }
        create.col(&mut def);
    }
    if table.surrogate_key.is_none() {
        let mut primary = Index::create();
        for column in &table.primary_key {
            primary.col(names.column(column));
        }
        create.primary_key(&mut primary);
    }
    create
}

/// Every column a table is created with: the catalog's, and a
/// dimension's natural key hash.
pub fn columns(table: &Table) -> Vec<(String, Column)> {
    let mut columns: Vec<(String, Column)> = table
        .columns
        .iter()
        .map(|(name, column)| (name.clone(), column.clone()))
        .collect();
    if table.role == Role::Dimension {
        let hash = Column {
            ty: ColumnType::Varchar(64),
            nullable: false,
        };
        columns.push((HASH_COLUMN.to_owned(), hash));
    }
    columns
}

/// The type a column is created with, as the database reports it back:
/// SQLite's ids are `integer` (the only type that generates them), and
/// SeaQuery declares SQLite's 64-bit integers `integer` too.
pub fn created_type(backend: DbBackend, ty: ColumnType, surrogate: bool) -> ColumnType {
    match (backend, surrogate, ty) {
        (DbBackend::Sqlite, true, _) | (DbBackend::Sqlite, _, ColumnType::BigInt) => {
            ColumnType::Integer
        }
        _ => ty,
    }
}

/// A column as declared: its type and, unless it is the surrogate key
/// (which is NOT NULL as the primary key), its NOT NULL.
pub fn column_def(
    backend: DbBackend,
    names: &Names,
    name: &str,
    column: &Column,
    surrogate: bool,
) -> ColumnDef {
    let mut def = ColumnDef::new(names.column(name));
    match (column.ty, surrogate, backend) {
        // SQLite generates ids only for a column typed exactly INTEGER PRIMARY KEY.
        (_, true, DbBackend::Sqlite) => def.integer(),
        (ColumnType::SmallInt, ..) => def.small_integer(),
        (ColumnType::Integer, ..) => def.integer(),
        (ColumnType::BigInt, ..) => def.big_integer(),
        (ColumnType::Varchar(size), ..) => def.string_len(size as u32),
        (ColumnType::Text, ..) => def.text(),
        (ColumnType::Double, ..) => def.double(),
        (ColumnType::Bytes, _, DbBackend::Postgres) => def.binary(),
        (ColumnType::Bytes, ..) => def.blob(),
    };
    if !surrogate && !column.nullable {
        def.not_null();
    }
    def
}

/// The natural key hash of a dimension's seeded row.
pub fn seed_hash(table: &Table, row: &IndexMap<String, SeedValue>) -> String {
    let natural: Vec<String> = table
        .natural_key
        .iter()
        .map(|column| match row.get(column) {
            Some(SeedValue::Int(number)) => number.to_string(),
            Some(SeedValue::Text(text)) => text.clone(),
            None => String::new(),
        })
        .collect();
    natural_key_hash(&natural)
}

fn seed(backend: DbBackend, names: &Names, table: &Table) -> Vec<Statement> {
    let columns: Vec<&String> = table.rows[0].keys().collect();
    let mut insert = Query::insert();
    insert.into_table(names.table(&table.name));
    let mut targets: Vec<_> = columns.iter().map(|c| names.column(c)).collect();
    let dimension = table.role == Role::Dimension;
    if dimension {
        targets.push(names.column(HASH_COLUMN));
    }
    insert.columns(targets);
    for row in &table.rows {
        let mut values: Vec<sea_orm::sea_query::SimpleExpr> = columns
            .iter()
            .map(|column| match row.get(*column) {
                Some(SeedValue::Int(number)) => (*number).into(),
                Some(SeedValue::Text(text)) => text.clone().into(),
                None => sea_orm::sea_query::Value::String(None).into(),
            })
            .collect();
        if dimension {
            values.push(seed_hash(table, row).into());
        }
        insert.values_panic(values);
    }
    insert.on_conflict(OnConflict::new().do_nothing().to_owned());
    let mut statements = vec![backend.build(&insert)];
    // Seeded ids are explicit; move PostgreSQL's id sequence past them.
    if let (DbBackend::Postgres, Some(key)) = (backend, &table.surrogate_key) {
        let (table_name, key) = (names.raw(&table.name), names.raw(key));
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table_name}', '{key}'), \
             GREATEST((SELECT MAX({key}) FROM {table_name}), 1))"
        );
        statements.push(Statement::from_string(backend, sql));
    }
    statements
}
