//! An open database: connecting (SQLite, the embedded default, or
//! PostgreSQL), creating the catalog's tables, the ETL cycle lock, the
//! stored Kafka offsets, and closing, which for SQLite checkpoints the
//! write-ahead log into the database file.

use std::sync::Arc;

use sea_orm::sea_query::{Func, PostgresQueryBuilder, Query, Table as DdlTable};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use super::aggregate::Aggregation;
use super::control::{DiscardFilter, OffsetGap, StoredDiscard};
use super::evolve::SchemaPlan;
use super::{Names, SinkError, control, txn};
use crate::aggregate::Aggregate;
use crate::calendar::{self, Calendar};
use crate::catalog::{Catalog, Table};
use crate::options::DateTimeOptions;

/// An open database (cheap to clone: the connection is a pool).
#[derive(Clone)]
pub struct Database {
    pub connection: DatabaseConnection,
    pub names: Names,
    /// The control tables, resolved from the catalog.
    pub(super) control: Arc<control::Control>,
    /// The SQLite file, when it is one.
    file: Option<std::path::PathBuf>,
    /// The calendar and the enabled aggregates every batch maintains.
    pub(super) aggregation: Option<Arc<Aggregation>>,
}

/// What `Database::aggregate` sets up: the options' calendar and features,
/// and every aggregate file.
#[derive(Debug, Clone)]
pub struct AggregateSetup {
    pub date_time: DateTimeOptions,
    /// The aggregates to maintain: those whose feature is enabled. Any
    /// other aggregate maintained so far is no longer.
    pub aggregates: Vec<Aggregate>,
    /// The `enable-<feature>` flags of `[agg-feature]`.
    pub features: Vec<String>,
    /// Recompute every enabled aggregate, even one that is up to date.
    pub rebuild: bool,
}

/// What setting up the aggregates did.
#[derive(Debug, Default)]
pub struct AggregateReport {
    /// Intervals added to the calendar ahead of today.
    pub calendar_intervals: usize,
    /// Aggregates computed from the stored facts (new, changed or asked for).
    pub built: Vec<String>,
    /// Aggregates no longer maintained: their feature is not enabled.
    pub dropped: Vec<String>,
    /// Aggregates maintained by every batch.
    pub maintained: Vec<String>,
}

/// Held while one ETL cycle loads a topic, so that an overlapping cycle
/// waits for it instead of loading the same messages; released when
/// dropped, and by the operating system or the server when the process
/// dies, so a crashed cycle never blocks the next.
pub enum CycleLock {
    /// An exclusive lock on a file beside the SQLite database.
    File(std::fs::File),
    /// A session-level advisory lock, held by a connection of its own.
    Postgres(sqlx::PgConnection),
    /// Nothing to share: an in-memory database.
    None,
}

impl Database {
    /// Connects; an `sqlite://` file is created when missing. The catalog
    /// must declare the control tables (checked here).
    pub async fn connect(url: &str, catalog: &Catalog) -> Result<Database, SinkError> {
        use sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
        let mut options = ConnectOptions::new(url);
        options.sqlx_logging(false);
        if url.starts_with("sqlite:") {
            // One writer: SQLite serialises writes anyway; one connection
            // avoids "database is locked" between our own connections. sqlx
            // sets the busy timeout before its pragmas, so processes opening
            // one file at once wait for each other instead of failing.
            options.max_connections(1).map_sqlx_sqlite_opts(|sqlite| {
                sqlite
                    .create_if_missing(true)
                    .busy_timeout(std::time::Duration::from_secs(30))
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
            });
        }
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // martmap's statements are small and planned per batch; compiling
            // them with LLVM (PostgreSQL's JIT, chosen by estimated cost, which
            // stale statistics inflate) took longer than running them.
            options.map_sqlx_postgres_opts(|postgres| postgres.options([("jit", "off")]));
        }
        // Switching a new SQLite file to WAL takes an exclusive lock that does
        // not wait on the busy timeout; another process opening the same
        // file at that instant sees "database is locked". Wait and retry.
        let mut wait = std::time::Duration::from_millis(50);
        let started = std::time::Instant::now();
        let connection = loop {
            match sea_orm::Database::connect(options.clone()).await {
                Err(error)
                    if sqlite_busy(&error)
                        && started.elapsed() < std::time::Duration::from_secs(30) =>
                {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                }
                result => break result?,
            }
        };
        let backend = connection.get_database_backend();
        let file = match backend {
            DbBackend::Sqlite => {
                use std::str::FromStr;
                sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .ok()
                    .map(|options| options.get_filename().to_owned())
                    .filter(|path| path.as_os_str() != ":memory:")
            }
            _ => None,
        };
        let names = Names { backend };
        Ok(Database {
            connection,
            names,
            control: Arc::new(control::Control::resolve(catalog, names)?),
            file,
            aggregation: None,
        })
    }

    /// Waits until no other ETL cycle loads `topic` of `cluster` into this
    /// database, then holds it until the returned lock is dropped.
    pub async fn lock_cycle(&self, cluster: &str, topic: &str) -> Result<CycleLock, SinkError> {
        let mut waiting = false;
        let mut wait = |holder: &str| {
            if !std::mem::replace(&mut waiting, true) {
                tracing::warn!(
                    cluster,
                    topic,
                    "another ETL cycle is loading this topic ({holder}); waiting for it to finish"
                );
            }
        };
        if self.backend() == DbBackend::Postgres {
            let pool = self.connection.get_postgres_connection_pool();
            let mut connection = pool.acquire().await.map_err(txn::sqlx_error)?.detach();
            let name = format!("{cluster}/{topic}");
            loop {
                let (sql, values) = Query::select()
                    .expr(
                        Func::cust("pg_try_advisory_lock")
                            .arg(Func::cust("hashtext").arg("martmap:cycle"))
                            .arg(Func::cust("hashtext").arg(name.as_str())),
                    )
                    .build(PostgresQueryBuilder);
                let (locked,): (bool,) = sqlx::query_as_with(
                    sqlx::AssertSqlSafe(sql),
                    sea_query_sqlx::SqlxValues(values),
                )
                .fetch_one(&mut connection)
                .await
                .map_err(txn::sqlx_error)?;
                if locked {
                    return Ok(CycleLock::Postgres(connection));
                }
                wait("a PostgreSQL advisory lock");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        let Some(file) = &self.file else {
            return Ok(CycleLock::None);
        };
        let mut path = file.clone().into_os_string();
        path.push("-lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SinkError::Lock(format!("{}: {e}", path.display())))?;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(CycleLock::File(lock)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    wait(&format!("lock file {}", path.display()));
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(SinkError::Lock(format!("{}: {e}", path.display())));
                }
            }
        }
    }

    pub fn backend(&self) -> DbBackend {
        self.names.backend
    }

    /// Closes every connection, waiting for those in use. For SQLite this
    /// checkpoints the write-ahead log into the database file and removes
    /// it, so the file alone holds every committed batch. Call it on every
    /// way out: a pool merely dropped at exit leaves the log behind.
    pub async fn close(&self) {
        if let Err(error) = self.connection.close_by_ref().await {
            tracing::warn!(%error, "closing the database connections failed");
        }
    }

    /// Makes the named tables (and the control tables) follow the catalog:
    /// creates those that do not exist and applies the safe changes to
    /// those that do (see `evolve`), in one transaction; refuses, before
    /// any change, when one could lose or break data.
    pub async fn create_tables<'c>(
        &self,
        catalog: &'c Catalog,
        tables: impl IntoIterator<Item = &'c str>,
    ) -> Result<Vec<&'c Table>, SinkError> {
        let tables = self.tables(catalog, tables)?;
        // PostgreSQL: processes starting at once take turns (`CREATE TABLE
        // IF NOT EXISTS` fails when another session creates the same table
        // at that instant). SQLite: the write lock is taken at BEGIN; a
        // deferred transaction would fail to upgrade its read lock when
        // another process wrote meanwhile.
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let txn = self.connection.begin_with_options(options).await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(hashtext('martmap:ddl'))")
                .await?;
        }
        let plan = SchemaPlan::read(&txn, self.names, &tables).await?;
        if !plan.refusals.is_empty() {
            return Err(SinkError::SchemaRefused(plan.refusals));
        }
        for change in plan.describe() {
            tracing::info!(change, "schema");
        }
        for statement in plan.statements(self.backend(), self.names, &tables, true) {
            txn.execute_raw(statement).await?;
        }
        txn.commit().await?;
        Ok(tables)
    }

    /// What [`Database::create_tables`] would do, without doing it: the
    /// plan, and the SQL it would run.
    pub async fn schema_plan<'c>(
        &self,
        catalog: &'c Catalog,
        tables: impl IntoIterator<Item = &'c str>,
    ) -> Result<(SchemaPlan, Vec<String>), SinkError> {
        let tables = self.tables(catalog, tables)?;
        let plan = SchemaPlan::read(&self.connection, self.names, &tables).await?;
        let sql = plan
            .statements(self.backend(), self.names, &tables, false)
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok((plan, sql))
    }

    /// Records an offset gap in `CTL_KAFKA_GAP` and moves the partition's
    /// stored offset to where consumption continues, in one transaction;
    /// false when the gap was recorded before, so it is reported once.
    /// (Without that table in the catalog only the offset moves, and every
    /// finding is reported.)
    pub async fn record_gap(&self, gap: &OffsetGap) -> Result<bool, SinkError> {
        let txn = self.connection.begin().await?;
        let new = match &self.control.gaps {
            Some(gaps) => gaps.record(&txn, gap).await?,
            None => true,
        };
        txn.execute(&self.control.offsets.skip(gap)).await?;
        txn.commit().await?;
        Ok(new)
    }

    /// The discards `filter` selects, oldest first.
    pub async fn pending_discards(
        &self,
        filter: &DiscardFilter,
    ) -> Result<Vec<StoredDiscard>, SinkError> {
        Ok(self
            .control
            .discards
            .pending(&self.connection, filter)
            .await?)
    }

    /// The named tables and the control tables, each once.
    fn tables<'c>(
        &self,
        catalog: &'c Catalog,
        tables: impl IntoIterator<Item = &'c str>,
    ) -> Result<Vec<&'c Table>, SinkError> {
        let mut names: Vec<&str> = Vec::new();
        for name in self.control.tables.iter().copied().chain(tables) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .map(|name| {
                catalog
                    .table(name)
                    .ok_or_else(|| SinkError::MissingTable(name.to_owned()))
            })
            .collect()
    }
}

impl Database {
    /// Sets up the calendar and the aggregates before any batch: creates
    /// DATE_TIME and fills it ahead, creates the tables of the enabled
    /// aggregates and computes those that are new or changed (a backfill
    /// from the stored facts), and stops maintaining those whose feature
    /// is no longer enabled. Every later batch keeps the enabled ones exact.
    pub async fn aggregate(
        &mut self,
        catalog: &Catalog,
        setup: AggregateSetup,
    ) -> Result<AggregateReport, SinkError> {
        let mut report = AggregateReport::default();
        let calendar_table = catalog.table(calendar::TABLE).map(|t| t.name.as_str());
        self.create_tables(catalog, calendar_table).await?;
        let enabled: Vec<Aggregate> = setup
            .aggregates
            .into_iter()
            .filter(|a| setup.features.contains(&a.feature))
            .collect();
        let days = (
            setup.date_time.min_days_ahead,
            setup.date_time.max_days_ahead,
        );
        let aggregation =
            Aggregation::new(Calendar::new(setup.date_time.zone), days, enabled, catalog)?;
        let recorded = match &self.control.aggregates {
            Some(states) => {
                let mut txn = txn::Txn::begin(&self.connection).await?;
                let recorded = states.recorded(&mut txn).await?;
                txn.commit().await?;
                recorded
            }
            None => Vec::new(),
        };
        if self.control.aggregates.is_none()
            && let Some(aggregate) = aggregation.aggregates.first()
        {
            return Err(SinkError::Control(format!(
                "table `CTL_AGGREGATE` is not declared, and aggregate `{}` needs it",
                aggregate.name
            )));
        }
        // An aggregate computed now (new, changed, or asked for) gets its
        // tables anew: a changed file may have changed their columns.
        let stale: Vec<bool> = aggregation
            .aggregates
            .iter()
            .map(|aggregate| {
                setup.rebuild
                    || !recorded.iter().any(|(name, hash)| {
                        *name == aggregate.name && *hash == aggregate.content_hash
                    })
            })
            .collect();
        for (at, (aggregate, stale)) in aggregation.aggregates.iter().zip(&stale).enumerate() {
            self.create_tables(catalog, aggregate.reads()).await?;
            if *stale {
                for level in calendar::Level::ALL {
                    let drop = DdlTable::drop()
                        .table(self.names.table(&aggregate.table_name(level)))
                        .if_exists()
                        .to_owned();
                    self.connection.execute(&drop).await?;
                }
            }
            aggregation.create(&self.connection, self.names, at).await?;
        }

        let mut txn = txn::Txn::begin(&self.connection).await?;
        aggregation.check_zone(&mut txn, self.names).await?;
        report.calendar_intervals = aggregation.fill_ahead(&mut txn, self.names).await?;
        txn.commit().await?;

        let Some(states) = &self.control.aggregates else {
            self.aggregation = Some(Arc::new(aggregation));
            return Ok(report);
        };
        for (aggregate, stale) in aggregation.aggregates.iter().zip(stale) {
            if !stale {
                report.maintained.push(aggregate.name.clone());
                continue;
            }
            let mut txn = txn::Txn::begin(&self.connection).await?;
            aggregation.rebuild(&mut txn, self.names, aggregate).await?;
            let (name, feature) = (&aggregate.name, &aggregate.feature);
            states
                .record(&mut txn, name, feature, &aggregate.content_hash)
                .await?;
            txn.commit().await?;
            report.built.push(name.clone());
            report.maintained.push(name.clone());
        }
        for (name, _) in &recorded {
            if !aggregation.aggregates.iter().any(|a| a.name == *name) {
                let mut txn = txn::Txn::begin(&self.connection).await?;
                states.forget(&mut txn, name).await?;
                txn.commit().await?;
                report.dropped.push(name.clone());
            }
        }
        self.aggregation = Some(Arc::new(aggregation));
        Ok(report)
    }

    /// The stored next offsets of one cluster's topic, by partition: where
    /// consumption resumes.
    pub async fn stored_offsets(
        &self,
        cluster: &str,
        topic: &str,
    ) -> Result<Vec<(i32, i64)>, SinkError> {
        let select = self.control.offsets.stored(cluster, topic);
        let rows = self.connection.query_all(&select).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get_by_index::<i64>(0)? as i32,
                    row.try_get_by_index::<i64>(1)?,
                ))
            })
            .collect::<Result<_, DbErr>>()
            .map_err(SinkError::from)
    }
}

/// Whether connecting failed because another SQLite connection holds the
/// file (SQLITE_BUSY or SQLITE_LOCKED, by result code).
fn sqlite_busy(error: &DbErr) -> bool {
    let (DbErr::Conn(sea_orm::RuntimeErr::SqlxError(error))
    | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(error))) = error
    else {
        return false;
    };
    let sqlx::Error::Database(error) = &**error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<u32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}
