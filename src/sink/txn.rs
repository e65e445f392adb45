//! The transaction one batch runs in. SQLite goes through sea-orm's
//! transaction. PostgreSQL goes through a sqlx transaction taken from
//! sea-orm's own connection pool, because fact rows travel there by COPY,
//! which sea-orm does not expose. Both run the same SeaQuery statements;
//! only [`Txn::copy_in`] is PostgreSQL's alone.

use std::borrow::Borrow;

use sea_orm::sea_query::{PostgresQueryBuilder, Value, Values};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, StatementBuilder, TransactionOptions, TransactionTrait,
};
use sea_query_sqlx::SqlxValues;
use sqlx::{Column as _, Row as _, TypeInfo as _};

use crate::plan::Cell;

pub(super) enum Txn {
    SeaOrm(DatabaseTransaction),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// A column of values bound as one PostgreSQL array parameter.
pub(super) enum Array {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl Array {
    /// The cells as BIGINT values (`integer`: NULL for a cell that is not
    /// an integer) or as TEXT (NULL for NULL).
    pub fn of<C: Borrow<Cell>>(cells: impl Iterator<Item = C>, integer: bool) -> Array {
        if integer {
            Array::Int(
                cells
                    .map(|cell| match cell.borrow() {
                        Cell::Int(number) => Some(*number),
                        _ => None,
                    })
                    .collect(),
            )
        } else {
            Array::Text(
                cells
                    .map(|cell| match cell.borrow() {
                        Cell::Null => None,
                        cell => Some(cell.to_text()),
                    })
                    .collect(),
            )
        }
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        match self {
            Array::Int(values) => values.len(),
            Array::Text(values) => values.len(),
        }
    }

    /// Its value at `at` as a cell (NULL past its end).
    pub fn cell(&self, at: usize) -> Cell {
        match self {
            Array::Int(values) => match values.get(at) {
                Some(Some(value)) => Cell::Int(*value),
                _ => Cell::Null,
            },
            Array::Text(values) => match values.get(at) {
                Some(Some(value)) => Cell::Text(value.as_str().into()),
                _ => Cell::Null,
            },
        }
    }

    /// Its SQL type.
    pub fn sql_type(&self) -> &'static str {
        match self {
            Array::Int(_) => "bigint[]",
            Array::Text(_) => "text[]",
        }
    }
}

/// PostgreSQL SQL with its parameters, whole arrays, bound: binding
/// encodes them, which can then happen while the server is busy.
pub(super) struct Bound(sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>);

impl Bound {
    /// `sql` with `values` as its parameters, in order.
    pub fn values(sql: String, values: Vec<Value>) -> Bound {
        let arguments =
            sqlx::IntoArguments::<sqlx::Postgres>::into_arguments(SqlxValues(Values(values)));
        Bound(sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments))
    }

    /// `sql` with `arrays` as its parameters, in order.
    pub fn arrays(sql: String, arrays: Vec<Array>) -> Bound {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for array in arrays {
            query = match array {
                Array::Int(values) => query.bind(values),
                Array::Text(values) => query.bind(values),
            };
        }
        Bound(query)
    }
}

/// A value read back from a query: every id is cast to BIGINT in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Scalar {
    Null,
    Int(i64),
    Text(String),
}

impl Scalar {
    pub fn int(&self) -> Result<i64, DbErr> {
        match self {
            Scalar::Int(value) => Ok(*value),
            other => Err(DbErr::Type(format!("expected an integer, read {other:?}"))),
        }
    }

    pub fn text(&self) -> Result<String, DbErr> {
        match self {
            Scalar::Text(text) => Ok(text.clone()),
            Scalar::Int(value) => Ok(value.to_string()),
            Scalar::Null => Err(DbErr::Type("expected text, read NULL".into())),
        }
    }
}

impl Txn {
    pub async fn begin(connection: &DatabaseConnection) -> Result<Txn, DbErr> {
        match connection.get_database_backend() {
            DbBackend::Postgres => {
                let pool = connection.get_postgres_connection_pool();
                Ok(Txn::Postgres(pool.begin().await.map_err(sqlx_error)?))
            }
            // Every transaction here writes. IMMEDIATE takes SQLite's write
            // lock at BEGIN, waiting on the busy timeout; a deferred
            // transaction that read first would instead fail at once to
            // upgrade its lock when another process wrote meanwhile.
            _ => {
                let options = TransactionOptions {
                    sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                    ..TransactionOptions::default()
                };
                Ok(Txn::SeaOrm(connection.begin_with_options(options).await?))
            }
        }
    }

    /// Whether this is PostgreSQL's transaction (arrays may be bound).
    pub fn is_postgres(&self) -> bool {
        matches!(self, Txn::Postgres(_))
    }

    /// The backend statements are built for.
    pub fn backend(&self) -> DbBackend {
        match self {
            Txn::SeaOrm(txn) => txn.get_database_backend(),
            Txn::Postgres(_) => DbBackend::Postgres,
        }
    }

    /// Runs a statement; returns the rows it affected.
    pub async fn execute<S: StatementBuilder>(&mut self, statement: &S) -> Result<u64, DbErr> {
        match self {
            Txn::SeaOrm(txn) => Ok(txn.execute(statement).await?.rows_affected()),
            Txn::Postgres(_) => {
                let built = statement.build(&DbBackend::Postgres);
                self.execute_sql(&built.sql, built.values.map_or_else(Vec::new, |v| v.0))
                    .await
            }
        }
    }

    /// Runs SQL written for this backend, with `$n` (PostgreSQL) or `?`
    /// (SQLite) placeholders.
    pub async fn execute_sql(&mut self, sql: &str, values: Vec<Value>) -> Result<u64, DbErr> {
        match self {
            Txn::SeaOrm(txn) => {
                let backend = txn.get_database_backend();
                let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
                Ok(txn.execute_raw(statement).await?.rows_affected())
            }
            Txn::Postgres(txn) => {
                let query = sqlx::query_with(
                    sqlx::AssertSqlSafe(sql.to_owned()),
                    SqlxValues(Values(values)),
                );
                Ok(query
                    .execute(&mut **txn)
                    .await
                    .map_err(sqlx_error)?
                    .rows_affected())
            }
        }
    }

    /// Runs a statement whose parameters are bound already (PostgreSQL);
    /// returns the rows it affected.
    pub async fn execute_bound(&mut self, bound: Bound) -> Result<u64, DbErr> {
        let Txn::Postgres(txn) = self else {
            return Err(DbErr::Custom("array parameters are for PostgreSQL".into()));
        };
        Ok(bound
            .0
            .execute(&mut **txn)
            .await
            .map_err(sqlx_error)?
            .rows_affected())
    }

    /// Every row a statement returns.
    pub async fn query<S: StatementBuilder>(
        &mut self,
        statement: &S,
    ) -> Result<Vec<Vec<Scalar>>, DbErr> {
        match self {
            Txn::SeaOrm(txn) => {
                let rows = txn.query_all(statement).await?;
                rows.iter()
                    .map(|row| {
                        (0..row.column_names().len())
                            .map(|at| match row.try_get_by_index::<Option<i64>>(at) {
                                Ok(value) => Ok(value.map_or(Scalar::Null, Scalar::Int)),
                                Err(_) => Ok(row
                                    .try_get_by_index::<Option<String>>(at)?
                                    .map_or(Scalar::Null, Scalar::Text)),
                            })
                            .collect()
                    })
                    .collect()
            }
            Txn::Postgres(_) => {
                let (sql, values) = statement_sql(statement);
                self.query_sql(&sql, values).await
            }
        }
    }

    /// Every row SQL returns (PostgreSQL).
    pub async fn query_sql(
        &mut self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<Vec<Scalar>>, DbErr> {
        let Txn::Postgres(txn) = self else {
            return Err(DbErr::Custom("query_sql is for PostgreSQL".into()));
        };
        let rows = sqlx::query_with(
            sqlx::AssertSqlSafe(sql.to_owned()),
            SqlxValues(Values(values)),
        )
        .fetch_all(&mut **txn)
        .await
        .map_err(sqlx_error)?;
        // Which columns are BIGINT, read off the first row's description
        // (trying each cell as an integer first would build a decoding
        // error for every text cell).
        let integers: Vec<bool> = rows.first().map_or_else(Vec::new, |row| {
            (row.columns().iter())
                .map(|column| column.type_info().name() == "INT8")
                .collect()
        });
        rows.iter()
            .map(|row| {
                (integers.iter().enumerate())
                    .map(|(at, integer)| match integer {
                        true => row
                            .try_get::<Option<i64>, _>(at)
                            .map(|value| value.map_or(Scalar::Null, Scalar::Int)),
                        false => row
                            .try_get::<Option<String>, _>(at)
                            .map(|value| value.map_or(Scalar::Null, Scalar::Text)),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(sqlx_error)
            })
            .collect()
    }

    /// Every row a bound statement returns whose first column is a BIGINT
    /// and whose others are arrays, of BIGINT where `integer` says so, of
    /// TEXT elsewhere (PostgreSQL).
    pub async fn query_arrays(
        &mut self,
        bound: Bound,
        integer: &[bool],
    ) -> Result<Vec<(i64, Vec<Array>)>, DbErr> {
        let Txn::Postgres(txn) = self else {
            return Err(DbErr::Custom("query_arrays is for PostgreSQL".into()));
        };
        let rows = bound.0.fetch_all(&mut **txn).await.map_err(sqlx_error)?;
        rows.iter()
            .map(|row| {
                let first = row.try_get::<i64, _>(0).map_err(sqlx_error)?;
                let arrays = (integer.iter().enumerate())
                    .map(|(at, integer)| match integer {
                        true => row.try_get::<Vec<Option<i64>>, _>(at + 1).map(Array::Int),
                        false => row
                            .try_get::<Vec<Option<String>>, _>(at + 1)
                            .map(Array::Text),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(sqlx_error)?;
                Ok((first, arrays))
            })
            .collect()
    }

    /// `COPY … FROM STDIN` with `data` in COPY's text format (PostgreSQL).
    /// `meanwhile` runs once the data is sent, while the server loads it
    /// (most of a COPY's time).
    pub async fn copy_in(
        &mut self,
        statement: &str,
        data: &[u8],
        meanwhile: impl FnOnce(),
    ) -> Result<u64, DbErr> {
        let Txn::Postgres(txn) = self else {
            return Err(DbErr::Custom("COPY is for PostgreSQL".into()));
        };
        let mut copy = txn.copy_in_raw(statement).await.map_err(sqlx_error)?;
        copy.send(data).await.map_err(sqlx_error)?;
        meanwhile();
        copy.finish().await.map_err(sqlx_error)
    }

    pub async fn commit(self) -> Result<(), DbErr> {
        match self {
            Txn::SeaOrm(txn) => txn.commit().await,
            Txn::Postgres(txn) => txn.commit().await.map_err(sqlx_error),
        }
    }
}

fn statement_sql<S: StatementBuilder>(statement: &S) -> (String, Vec<Value>) {
    let built = statement.build(&DbBackend::Postgres);
    let _ = PostgresQueryBuilder; // the builder sea-orm uses for DbBackend::Postgres
    (
        built.sql,
        built.values.map_or_else(Vec::new, |values| values.0),
    )
}

/// Keeps the driver's error whole, so [`super::SinkError::is_transient`] can
/// read its kind and SQLSTATE.
pub(super) fn sqlx_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
}
