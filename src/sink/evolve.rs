//! The database follows the catalog. Before anything is written, the live
//! schema of each table a command uses is read (PostgreSQL's
//! `information_schema`, SQLite's `pragma_table_info`) and compared with
//! the catalog: what is safe is applied — new tables, new nullable
//! columns, wider types, a dropped NOT NULL, and then the indexes and
//! static members `ddl` creates when missing — and what could lose or
//! break data (a narrower or different type, a column the catalog no
//! longer declares, a new or tightened NOT NULL, another key) is refused
//! before any change, with what the operator can do.
//!
//! PostgreSQL alters columns in place, in one transaction. SQLite adds
//! columns in place; it cannot alter one, so a widened type or a dropped
//! NOT NULL rebuilds the table (create it anew, copy every row, swap), in
//! the same transaction.

use std::fmt;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, Table as DdlTable};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use super::Names;
use super::ddl::{self, HASH_COLUMN};
use crate::catalog::{Column, ColumnType, Role, Table};

/// A column as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveColumn {
    name: String,
    /// The declared type, when it is one martmap creates.
    ty: Option<ColumnType>,
    declared: String,
    nullable: bool,
}

/// A table as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveTable {
    columns: Vec<LiveColumn>,
    primary_key: Vec<String>,
}

/// A safe change to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTable,
    AddColumn {
        column: String,
    },
    /// A wider type: a larger integer, a longer varchar, text.
    Widen {
        column: String,
        from: String,
    },
    DropNotNull {
        column: String,
    },
    /// Static members the database lacks.
    AddMembers {
        count: usize,
    },
}

/// A change refused: it could lose or break data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub table: String,
    pub column: Option<String>,
    /// What differs.
    pub what: String,
    /// What the operator can do.
    pub help: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "{}.{}: {}", self.table, column, self.what)?,
            None => write!(f, "{}: {}", self.table, self.what)?,
        }
        write!(f, "\n    help: {}", self.help)
    }
}

/// What it takes for the database to follow the catalog.
#[derive(Debug, Default)]
pub struct SchemaPlan {
    /// Per table (catalog name), its safe changes.
    pub changes: Vec<(String, Vec<Change>)>,
    pub refusals: Vec<Refusal>,
}

impl SchemaPlan {
    /// Compares the live schema of `tables` with the catalog.
    pub async fn read(
        db: &impl ConnectionTrait,
        names: Names,
        tables: &[&Table],
    ) -> Result<SchemaPlan, DbErr> {
        let mut plan = SchemaPlan::default();
        for table in tables {
            let live = introspect(db, names, table).await?;
            let changes = match live {
                None => vec![Change::CreateTable],
                Some(live) => {
                    let backend = db.get_database_backend();
                    let mut changes = compare(backend, names, table, &live, &mut plan);
                    let count = missing_members(db, names, table).await?;
                    if count > 0 {
                        changes.push(Change::AddMembers { count });
                    }
                    changes
                }
            };
            if !changes.is_empty() {
                plan.changes.push((table.name.clone(), changes));
            }
        }
        Ok(plan)
    }

    /// The statements that apply the plan: each changed table's changes,
    /// then what `ddl` creates when missing (the table, its indexes, its
    /// static members). With `every_table`, the latter for unchanged
    /// tables too (no-ops, unless an index was dropped by hand).
    pub fn statements(
        &self,
        backend: DbBackend,
        names: Names,
        tables: &[&Table],
        every_table: bool,
    ) -> Vec<Statement> {
        let mut statements = Vec::new();
        for table in tables {
            let changes = self.changes.iter().find(|(name, _)| *name == table.name);
            if let Some((_, changes)) = changes {
                statements.extend(change_statements(backend, names, table, changes));
            }
            if changes.is_some() || every_table {
                statements.extend(ddl::statements(backend, &names, table));
            }
        }
        statements
    }

    /// The plan in words, one line per change.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (table, changes) in &self.changes {
            for change in changes {
                lines.push(match change {
                    Change::CreateTable => format!("{table}: new table"),
                    Change::AddColumn { column } => format!("{table}.{column}: new column"),
                    Change::Widen { column, from } => {
                        format!("{table}.{column}: wider type (was {from})")
                    }
                    Change::DropNotNull { column } => {
                        format!("{table}.{column}: may now be NULL")
                    }
                    Change::AddMembers { count } => {
                        format!("{table}: {count} new static member(s)")
                    }
                });
            }
        }
        lines
    }
}

/// The statements of one table's changes.
fn change_statements(
    backend: DbBackend,
    names: Names,
    table: &Table,
    changes: &[Change],
) -> Vec<Statement> {
    let columns = ddl::columns(table);
    let def = |name: &str| {
        let (_, column) = columns
            .iter()
            .find(|(n, _)| n == name)
            .expect("a catalog column");
        let surrogate = table.surrogate_key.as_deref() == Some(name);
        ddl::column_def(backend, &names, name, column, surrogate)
    };
    let mut statements = Vec::new();
    let mut rebuild = false;
    for change in changes {
        match change {
            Change::CreateTable | Change::AddMembers { .. } => {}
            Change::AddColumn { column } => {
                let alter = DdlTable::alter()
                    .table(names.table(&table.name))
                    .add_column(def(column))
                    .to_owned();
                statements.push(backend.build(&alter));
            }
            Change::Widen { column, .. } | Change::DropNotNull { column } => {
                if backend == DbBackend::Sqlite {
                    rebuild = true;
                    continue;
                }
                let mut def = def(column);
                if matches!(change, Change::DropNotNull { .. }) {
                    def.null();
                }
                let alter = DdlTable::alter()
                    .table(names.table(&table.name))
                    .modify_column(&mut def)
                    .to_owned();
                statements.push(backend.build(&alter));
            }
        }
    }
    if rebuild {
        // SQLite: a new table of the catalog's shape, every row copied
        // (columns added above included), then swapped in. Its indexes
        // are created again by `ddl` afterwards.
        let scratch = format!("{}__martmap_rebuild", table.name);
        statements.push(backend.build(&ddl::create_table(backend, &names, table, Some(&scratch))));
        let copied: Vec<Alias> = columns.iter().map(|(name, _)| names.column(name)).collect();
        let select = Query::select()
            .columns(copied.clone())
            .from(names.table(&table.name))
            .to_owned();
        let insert = Query::insert()
            .into_table(names.table(&scratch))
            .columns(copied)
            .select_from(select)
            .expect("as many columns selected as inserted")
            .to_owned();
        statements.push(backend.build(&insert));
        let drop = DdlTable::drop().table(names.table(&table.name)).to_owned();
        statements.push(backend.build(&drop));
        let rename = DdlTable::rename()
            .table(names.table(&scratch), names.table(&table.name))
            .to_owned();
        statements.push(backend.build(&rename));
    }
    statements
}

/// The safe changes that make `live` follow `table`; the unsafe ones go to
/// `plan.refusals`.
fn compare(
    backend: DbBackend,
    names: Names,
    table: &Table,
    live: &LiveTable,
    plan: &mut SchemaPlan,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let refuse = |column: Option<&str>, what: String, help: String| Refusal {
        table: table.name.clone(),
        column: column.map(str::to_owned),
        what,
        help,
    };
    let expected = ddl::columns(table);
    for (name, column) in &expected {
        let surrogate = table.surrogate_key.as_deref() == Some(name.as_str());
        let want = ddl::created_type(backend, column.ty, surrogate);
        let Some(found) = live.columns.iter().find(|c| c.name == names.raw(name)) else {
            if column.nullable {
                changes.push(Change::AddColumn {
                    column: name.clone(),
                });
            } else {
                plan.refusals.push(refuse(
                    Some(name),
                    format!("new column `{}` is NOT NULL without a default: the rows already in the table have no value for it", column_spec(column)),
                    format!("declare it nullable (drop `not null`), or add it yourself with a default: ALTER TABLE {} ADD COLUMN {} … DEFAULT … NOT NULL", names.quoted(&table.name), names.quoted(name)),
                ));
            }
            continue;
        };
        match found.ty {
            Some(ty) if ty == want => {}
            Some(ty) if wider(want, ty) => changes.push(Change::Widen {
                column: name.clone(),
                from: found.declared.clone(),
            }),
            _ => {
                let narrower = found.ty.is_some_and(|ty| wider(ty, want));
                plan.refusals.push(refuse(
                    Some(name),
                    format!(
                        "the database has {}, the catalog declares {}{}",
                        found.declared,
                        want,
                        if narrower {
                            ": narrower, stored values may not fit"
                        } else {
                            ": another type, stored values may not convert"
                        }
                    ),
                    format!(
                        "declare `{}` again in the catalog, or convert the column yourself (ALTER TABLE … ALTER COLUMN …) once its values fit",
                        found.declared
                    ),
                ));
                continue;
            }
        }
        // The surrogate key is the primary key (never NULL, whatever
        // SQLite's pragma says of an INTEGER PRIMARY KEY).
        if surrogate {
            continue;
        }
        match (found.nullable, column.nullable) {
            (false, true) => changes.push(Change::DropNotNull {
                column: name.clone(),
            }),
            (true, false) => plan.refusals.push(refuse(
                Some(name),
                "the catalog declares it NOT NULL, the database allows NULL: stored rows may hold NULL".into(),
                format!(
                    "declare it nullable again, or fill its NULLs and then run ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    names.quoted(&table.name),
                    names.quoted(name)
                ),
            )),
            _ => {}
        }
    }
    for found in &live.columns {
        if !expected
            .iter()
            .any(|(name, _)| names.raw(name) == found.name)
        {
            plan.refusals.push(refuse(
                Some(&found.name),
                format!(
                    "the database has this column ({}), the catalog no longer declares it: dropping it would lose its values",
                    found.declared
                ),
                format!(
                    "declare it in the catalog again, or drop it yourself: ALTER TABLE {} DROP COLUMN \"{}\"",
                    names.quoted(&table.name),
                    found.name
                ),
            ));
        }
    }
    let key: Vec<String> = match &table.surrogate_key {
        Some(key) => vec![names.raw(key)],
        None => table.primary_key.iter().map(|k| names.raw(k)).collect(),
    };
    if live.primary_key != key {
        plan.refusals.push(refuse(
            None,
            format!(
                "the database's primary key is ({}), the catalog's is ({}): rows unique under one may collide under the other",
                live.primary_key.join(", "),
                key.join(", ")
            ),
            "declare the database's key again, or move the rows to a new table of the new key yourself".into(),
        ));
    }
    changes
}

/// Whether `to` holds every value of `from`, so altering is safe.
fn wider(to: ColumnType, from: ColumnType) -> bool {
    use ColumnType::*;
    let rank = |ty: ColumnType| match ty {
        SmallInt => Some(0),
        Integer => Some(1),
        BigInt => Some(2),
        _ => None,
    };
    match (from, to) {
        (Varchar(a), Varchar(b)) => b > a,
        (Varchar(_), Text) => true,
        _ => matches!((rank(from), rank(to)), (Some(a), Some(b)) if b > a),
    }
}

fn column_spec(column: &Column) -> String {
    if column.nullable {
        column.ty.to_string()
    } else {
        format!("{} not null", column.ty)
    }
}

/// The table's columns and primary key as the database has them, or None
/// when it does not exist.
async fn introspect(
    db: &impl ConnectionTrait,
    names: Names,
    table: &Table,
) -> Result<Option<LiveTable>, DbErr> {
    let backend = db.get_database_backend();
    let name = names.raw(&table.name);
    let (columns_sql, key_sql) = match backend {
        DbBackend::Postgres => (
            "SELECT column_name::text, data_type::text, \
             CAST(character_maximum_length AS BIGINT), \
             CAST(CASE WHEN is_nullable = 'YES' THEN 1 ELSE 0 END AS BIGINT) \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position",
            "SELECT k.column_name::text FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k \
             ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema \
             AND k.table_name = c.table_name \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema() \
             AND c.table_name = $1 ORDER BY k.ordinal_position",
        ),
        _ => (
            "SELECT name, lower(type), NULL, CASE WHEN \"notnull\" = 0 THEN 1 ELSE 0 END \
             FROM pragma_table_info(?) ORDER BY cid",
            "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
        ),
    };
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            columns_sql,
            [name.clone().into()],
        ))
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut columns = Vec::new();
    for row in rows {
        let column: String = row.try_get_by_index(0)?;
        let declared: String = row.try_get_by_index(1)?;
        let length: Option<i64> = row.try_get_by_index(2)?;
        let nullable: i64 = row.try_get_by_index(3)?;
        let ty = live_type(&declared, length);
        let declared = match (ty, length) {
            (Some(ty), _) => ty.to_string(),
            (None, Some(length)) => format!("{declared}({length})"),
            (None, None) => declared,
        };
        columns.push(LiveColumn {
            name: column,
            ty,
            declared,
            nullable: nullable == 1,
        });
    }
    let primary_key = db
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            key_sql,
            [name.into()],
        ))
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()?;
    Ok(Some(LiveTable {
        columns,
        primary_key,
    }))
}

/// How many of a dimension's static members the database lacks.
async fn missing_members(
    db: &impl ConnectionTrait,
    names: Names,
    table: &Table,
) -> Result<usize, DbErr> {
    if table.role != Role::Dimension || table.rows.is_empty() {
        return Ok(0);
    }
    let hashes: Vec<String> = table
        .rows
        .iter()
        .map(|row| ddl::seed_hash(table, row))
        .collect();
    let select = Query::select()
        .column(names.column(HASH_COLUMN))
        .from(names.table(&table.name))
        .and_where(Expr::col(names.column(HASH_COLUMN)).is_in(hashes.clone()))
        .to_owned();
    let found: Vec<String> = db
        .query_all(&select)
        .await?
        .iter()
        .map(|row| row.try_get_by_index(0))
        .collect::<Result<_, _>>()?;
    Ok(hashes.iter().filter(|hash| !found.contains(hash)).count())
}

/// A declared type read back as the catalog's type: PostgreSQL's
/// `data_type` (with the varchar length apart) or SQLite's declaration.
fn live_type(declared: &str, length: Option<i64>) -> Option<ColumnType> {
    Some(match declared {
        "smallint" => ColumnType::SmallInt,
        "integer" => ColumnType::Integer,
        "bigint" => ColumnType::BigInt,
        "text" => ColumnType::Text,
        "bytea" | "blob" => ColumnType::Bytes,
        "double precision" | "double" | "real" => ColumnType::Double,
        "character varying" => ColumnType::Varchar(usize::try_from(length?).ok()?),
        other => {
            let size = other.strip_prefix("varchar(")?.strip_suffix(')')?;
            ColumnType::Varchar(size.trim().parse().ok()?)
        }
    })
}
