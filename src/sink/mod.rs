//! The database sink: the only code that talks to a database (through
//! sea-orm, with SeaQuery for the catalog-driven tables).
//!
//! [`Database::connect`] opens SQLite (the embedded default) or PostgreSQL;
//! [`Sink::open`] creates a plan's tables, the control tables and the static
//! members; [`Sink::write`] commits one [`Batch`] — fact rows, new dimension
//! members, discards and its audit row — in one transaction, so a failure
//! leaves no partial batch. In PostgreSQL, names are lower case so analysts
//! can write plain unquoted SQL.

mod aggregate;
mod control;
mod database;
mod date_time;
mod ddl;
mod delta;
mod evolve;
mod postgres;
mod recompute;
mod sqlite;
mod txn;
mod write;

use std::sync::Arc;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::catalog::{Catalog, Role, Table};
use crate::dimension::Members;
use crate::pipeline::Preparer;
use crate::plan::{DimensionKind, Plan};

pub use aggregate::Aggregation;
pub use control::{DiscardFilter, OffsetGap, StoredDiscard};
pub use database::{AggregateReport, AggregateSetup, CycleLock, Database};
pub use ddl::{HASH_COLUMN, natural_key_hash};
pub use evolve::{Change, Refusal, SchemaPlan};
pub use write::BatchReport;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error(
        "the catalog's control tables do not fit: {0}; declare them as schemas/tables/control.yaml does"
    )]
    Control(String),
    #[error("cannot lock the ETL cycle: {0}")]
    Lock(String),
    #[error("table `{0}` is not in the catalog")]
    MissingTable(String),
    #[error(
        "static member `{member}` of `{table}` is not in the database; run init-db with the current catalog"
    )]
    MissingMember { table: String, member: String },
    #[error(
        "partition {partition} of `{topic}` is already loaded past offset {first}, where this batch starts; \
         it was rolled back: another consumer took the partition in a rebalance (a restart \
         resumes from the stored offsets)"
    )]
    OffsetsMoved {
        topic: String,
        partition: i32,
        first: i64,
    },
    #[error(
        "the database does not follow the catalog, and changing it could lose or break data; \
         nothing was changed:\n{}",
        .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n")
    )]
    SchemaRefused(Vec<Refusal>),
    #[error(
        "DATE_TIME was filled for another time zone than date-time-tz={zone}; its rows would \
         disagree: set date-time-tz back, or empty DATE_TIME and run `martmap aggregate --rebuild`"
    )]
    CalendarZone { zone: String },
}

impl SinkError {
    /// Whether the failure is the database's state rather than the batch's
    /// content: a lost connection, a server shutting down or restarting, a
    /// busy or full SQLite file, a deadlock. Such a batch is worth retrying
    /// as it is; any other failure would fail again.
    pub fn is_transient(&self) -> bool {
        let SinkError::Database(error) = self else {
            return false;
        };
        let runtime = match error {
            DbErr::ConnectionAcquire(_) => return true,
            DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
            _ => return false,
        };
        let sea_orm::RuntimeErr::SqlxError(error) = runtime else {
            return false;
        };
        match &**error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(error) => {
                let backend = if error
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    Backend::Postgres
                } else {
                    Backend::Sqlite
                };
                error.code().is_some_and(|code| backend.transient(&code))
            }
            _ => false,
        }
    }
}

impl Backend {
    /// Whether a database error code of this backend names a condition of
    /// the server, not of the statement (each backend's file says which).
    fn transient(self, code: &str) -> bool {
        match self {
            Backend::Sqlite => sqlite::transient(code),
            Backend::Postgres => postgres::transient(code),
        }
    }
}

/// The databases martmap writes to. What differs between them in writing
/// a batch (fact rows, new members) lives in one file each, `sqlite.rs` and
/// `postgres.rs`, dispatched from here and from `write.rs`; everything else
/// is the same SeaQuery statements on both. A third backend is a third
/// file, a variant here and an entry in the tests' backend matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(backend: DbBackend) -> Backend {
        match backend {
            DbBackend::Postgres => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

/// How catalog names become SQL names on one backend.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    backend: DbBackend,
}

impl Names {
    /// The name as created: lower case in PostgreSQL, as declared elsewhere.
    pub fn raw(&self, name: &str) -> String {
        match self.backend {
            DbBackend::Postgres => name.to_lowercase(),
            _ => name.to_owned(),
        }
    }

    pub fn table(&self, name: &str) -> Alias {
        Alias::new(self.raw(name))
    }

    pub fn column(&self, name: &str) -> Alias {
        Alias::new(self.raw(name))
    }

    /// The name as a quoted SQL identifier, for SQL written by hand.
    pub fn quoted(&self, name: &str) -> String {
        format!("\"{}\"", self.raw(name).replace('"', "\"\""))
    }

    pub fn index(&self, table: &str, what: &str) -> String {
        self.raw(&format!("{table}_{what}"))
    }
}

/// The tables a plan writes to.
pub fn plan_tables(plan: &Plan) -> impl Iterator<Item = &str> {
    std::iter::once(plan.fact.as_str()).chain(plan.dimensions.iter().map(|d| d.table.as_str()))
}

/// A plan bound to a database: writes its batches.
pub struct Sink {
    db: Database,
    backend: Backend,
    plan: Plan,
    fact: Table,
    dimensions: Vec<Table>,
    members: Members,
    preparer: Preparer,
    /// The COPY data of the last batch, kept for its capacity.
    copy_buffer: Vec<u8>,
}

impl Sink {
    /// Creates what is missing and loads the static members.
    pub async fn open(db: Database, catalog: &Catalog, plan: Plan) -> Result<Sink, SinkError> {
        db.create_tables(catalog, plan_tables(&plan)).await?;
        let table = |name: &str| {
            catalog
                .table(name)
                .cloned()
                .ok_or_else(|| SinkError::MissingTable(name.to_owned()))
        };
        let fact = table(&plan.fact)?;
        let dimensions = plan
            .dimensions
            .iter()
            .map(|d| table(&d.table))
            .collect::<Result<Vec<_>, _>>()?;
        let mut members = Members::new(plan.dimensions.len());
        for (at, dimension) in plan.dimensions.iter().enumerate() {
            let DimensionKind::Static {
                members: listed,
                otherwise,
            } = &dimension.kind
            else {
                continue;
            };
            let found = static_members(&db, &dimensions[at]).await?;
            for member in listed.iter().chain([otherwise]) {
                if !found
                    .iter()
                    .any(|(values, _)| values.len() == 1 && &values[0] == member)
                {
                    return Err(SinkError::MissingMember {
                        table: dimension.table.clone(),
                        member: member.clone(),
                    });
                }
            }
            members.preload(
                at,
                found
                    .into_iter()
                    .map(|(values, id)| (values.into_iter().map(Arc::from).collect(), id)),
            );
        }
        let backend = Backend::of(db.backend());
        // PostgreSQL loads replaced identities' rows by COPY.
        let preparer = Preparer::new(&plan, backend == Backend::Postgres);
        Ok(Sink {
            db,
            backend,
            plan,
            fact,
            dimensions,
            members,
            preparer,
            copy_buffer: Vec::new(),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// Every row of a static dimension: natural key values and id.
async fn static_members(
    db: &Database,
    table: &Table,
) -> Result<Vec<(Vec<String>, i64)>, SinkError> {
    debug_assert_eq!(table.role, Role::Dimension);
    let names = &db.names;
    let key = table.surrogate_key.as_deref().unwrap_or("ID");
    let mut select = Query::select();
    select
        .from(names.table(&table.name))
        .expr(Expr::col(names.column(key)).cast_as(Alias::new("BIGINT")));
    for column in &table.natural_key {
        select.expr(Expr::col(names.column(column)));
    }
    let rows = db.connection.query_all(&select).await?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get_by_index(0)?;
            // Integer natural key columns are read as integers, as text.
            let values = (0..table.natural_key.len())
                .map(|at| match row.try_get_by_index::<i64>(at + 1) {
                    Ok(number) => Ok(number.to_string()),
                    Err(_) => row.try_get_by_index::<String>(at + 1),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((values, id))
        })
        .collect::<Result<_, DbErr>>()
        .map_err(SinkError::from)
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn server_conditions_are_transient_and_bad_statements_final() {
        for code in ["57P01", "08006", "53300", "40P01", "55000"] {
            assert!(Backend::Postgres.transient(code), "{code}");
        }
        for code in ["23505", "22001", "42P01", "0A000", "P0001", "XX000"] {
            assert!(!Backend::Postgres.transient(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT (517), SQLITE_IOERR_WRITE (778).
        for code in ["5", "517", "778"] {
            assert!(Backend::Sqlite.transient(code), "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE (2067), SQLITE_ERROR (1).
        for code in ["2067", "1"] {
            assert!(!Backend::Sqlite.transient(code), "{code}");
        }
    }
}
