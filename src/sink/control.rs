//! The control tables every batch writes — the audit log, the Kafka
//! offsets and the discards — resolved once from the catalog into typed
//! structures, and the statements that write them (the same SeaQuery
//! statements on every backend). Their names are spelled here and nowhere
//! else; [`Control::resolve`] checks that the catalog declares each table
//! and column with a fitting type, so a catalog without them fails when
//! the database is opened, naming what is missing, not at the first batch.

use sea_orm::DbErr;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, Value};

use super::txn::Txn;
use super::write::CHUNK;
use super::{Names, SinkError};
use crate::catalog::{Catalog, ColumnType};
use crate::pipeline::{Batch, DiscardRecord, NextOffset};

/// One column of a control table, as SQL names it.
type Column = Alias;

/// `CTL_AUDIT_LOG`: one row per committed batch.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pub table: Alias,
    pub audit_key: Column,
    mapping_name: Column,
    mapping_hash: Column,
    source: Column,
    source_chars: usize,
    event_count: Column,
    fact_row_count: Column,
    discard_count: Column,
    new_member_count: Column,
    start_ts: Column,
    end_ts: Column,
}

/// `CTL_KAFKA_OFFSET`: the next offset per cluster, topic and partition.
#[derive(Debug, Clone)]
pub struct KafkaOffsets {
    pub table: Alias,
    cluster: Column,
    topic: Column,
    partition: Column,
    next_offset: Column,
    audit_key: Column,
    update_ts: Column,
}

/// `CTL_DISCARD`: every message that could not be loaded.
#[derive(Debug, Clone)]
pub struct Discards {
    pub table: Alias,
    mapping_name: Column,
    source: Column,
    source_chars: usize,
    partition: Column,
    position: Column,
    message_key: Column,
    payload: Column,
    error: Column,
    discard_ts: Column,
    audit_key: Column,
}

/// `CTL_AGGREGATE`: the aggregates kept up to date, and from which
/// definition.
#[derive(Debug, Clone)]
pub struct AggregateStates {
    pub table: Alias,
    name: Column,
    feature: Column,
    content_hash: Column,
    built_ts: Column,
}

/// Every control table.
#[derive(Debug, Clone)]
pub struct Control {
    /// Their catalog names, for creating them.
    pub tables: Vec<&'static str>,
    pub audit: AuditLog,
    pub offsets: KafkaOffsets,
    pub discards: Discards,
    /// Needed only to maintain aggregates: a catalog from before them may
    /// leave it out.
    pub aggregates: Option<AggregateStates>,
}

/// What a control column must hold.
#[derive(Clone, Copy)]
enum Kind {
    Integer,
    Text,
    Bytes,
}

/// Resolves the columns of one control table, collecting what is missing.
struct Resolver<'a> {
    catalog: &'a Catalog,
    names: Names,
    problems: Vec<String>,
}

impl Resolver<'_> {
    fn table(&mut self, table: &'static str) -> Alias {
        if self.catalog.table(table).is_none() {
            self.problems
                .push(format!("table `{table}` is not declared"));
        }
        self.names.table(table)
    }

    fn column(&mut self, table: &str, column: &str, kind: Kind) -> Column {
        let declared = self.catalog.table(table).and_then(|t| t.column(column));
        match (declared.map(|c| c.ty), kind) {
            (None, _) if self.catalog.table(table).is_none() => {}
            (None, _) => self
                .problems
                .push(format!("table `{table}` has no column `{column}`")),
            (Some(ty), Kind::Integer) if ty.is_integer() => {}
            (Some(ty), Kind::Text) if ty.is_text() => {}
            (Some(ColumnType::Bytes), Kind::Bytes) => {}
            (Some(ty), _) => self.problems.push(format!(
                "column `{table}.{column}` is {ty}, which cannot hold what martmap writes there"
            )),
        }
        self.names.column(column)
    }

    /// The most characters a text column holds (none: unlimited).
    fn chars(&self, table: &str, column: &str) -> usize {
        self.catalog
            .table(table)
            .and_then(|t| t.column(column))
            .and_then(|c| c.ty.max_chars())
            .unwrap_or(usize::MAX)
    }
}

impl Control {
    /// The control tables as `catalog` declares them, named for `names`'
    /// backend; every missing table or column, or one of the wrong type,
    /// is reported at once.
    pub fn resolve(catalog: &Catalog, names: Names) -> Result<Control, SinkError> {
        const AUDIT: &str = "CTL_AUDIT_LOG";
        const OFFSETS: &str = "CTL_KAFKA_OFFSET";
        const DISCARDS: &str = "CTL_DISCARD";
        const AGGREGATES: &str = "CTL_AGGREGATE";
        use Kind::{Bytes, Integer, Text};
        let mut r = Resolver {
            catalog,
            names,
            problems: Vec::new(),
        };
        let audit = AuditLog {
            table: r.table(AUDIT),
            audit_key: r.column(AUDIT, "AUDIT_KEY", Integer),
            mapping_name: r.column(AUDIT, "MAPPING_NAME", Text),
            mapping_hash: r.column(AUDIT, "MAPPING_HASH", Text),
            source: r.column(AUDIT, "SOURCE", Text),
            source_chars: r.chars(AUDIT, "SOURCE"),
            event_count: r.column(AUDIT, "EVENT_COUNT", Integer),
            fact_row_count: r.column(AUDIT, "FACT_ROW_COUNT", Integer),
            discard_count: r.column(AUDIT, "DISCARD_COUNT", Integer),
            new_member_count: r.column(AUDIT, "NEW_MEMBER_COUNT", Integer),
            start_ts: r.column(AUDIT, "START_TS", Integer),
            end_ts: r.column(AUDIT, "END_TS", Integer),
        };
        let offsets = KafkaOffsets {
            table: r.table(OFFSETS),
            cluster: r.column(OFFSETS, "CLUSTER_NAME", Text),
            topic: r.column(OFFSETS, "TOPIC", Text),
            partition: r.column(OFFSETS, "KAFKA_PARTITION", Integer),
            next_offset: r.column(OFFSETS, "NEXT_OFFSET", Integer),
            audit_key: r.column(OFFSETS, "AUDIT_KEY", Integer),
            update_ts: r.column(OFFSETS, "UPDATE_TS", Integer),
        };
        let discards = Discards {
            table: r.table(DISCARDS),
            mapping_name: r.column(DISCARDS, "MAPPING_NAME", Text),
            source: r.column(DISCARDS, "SOURCE", Text),
            source_chars: r.chars(DISCARDS, "SOURCE"),
            partition: r.column(DISCARDS, "KAFKA_PARTITION", Integer),
            position: r.column(DISCARDS, "POSITION", Integer),
            message_key: r.column(DISCARDS, "MESSAGE_KEY", Bytes),
            payload: r.column(DISCARDS, "PAYLOAD", Bytes),
            error: r.column(DISCARDS, "ERROR", Text),
            discard_ts: r.column(DISCARDS, "DISCARD_TS", Integer),
            audit_key: r.column(DISCARDS, "AUDIT_KEY", Integer),
        };
        let aggregates = catalog
            .table(AGGREGATES)
            .is_some()
            .then(|| AggregateStates {
                table: r.table(AGGREGATES),
                name: r.column(AGGREGATES, "AGGREGATE_NAME", Text),
                feature: r.column(AGGREGATES, "FEATURE", Text),
                content_hash: r.column(AGGREGATES, "CONTENT_HASH", Text),
                built_ts: r.column(AGGREGATES, "BUILT_TS", Integer),
            });
        if !r.problems.is_empty() {
            return Err(SinkError::Control(r.problems.join("; ")));
        }
        Ok(Control {
            tables: [AUDIT, OFFSETS, DISCARDS]
                .into_iter()
                .chain(aggregates.is_some().then_some(AGGREGATES))
                .collect(),
            audit,
            offsets,
            discards,
            aggregates,
        })
    }
}

impl AuditLog {
    /// Inserts the batch's audit row; returns its key.
    pub async fn insert(
        &self,
        txn: &mut Txn,
        mapping: &str,
        mapping_hash: &str,
        batch: &Batch,
        started: i64,
    ) -> Result<i64, DbErr> {
        let insert = Query::insert()
            .into_table(self.table.clone())
            .columns([
                self.mapping_name.clone(),
                self.mapping_hash.clone(),
                self.source.clone(),
                self.event_count.clone(),
                self.fact_row_count.clone(),
                self.discard_count.clone(),
                self.new_member_count.clone(),
                self.start_ts.clone(),
                self.end_ts.clone(),
            ])
            .values_panic([
                mapping.into(),
                mapping_hash.into(),
                crate::convert::truncate(batch.source.clone(), self.source_chars).into(),
                (batch.events.len() as i64).into(),
                0i64.into(),
                (batch.discards.len() as i64).into(),
                0i64.into(),
                started.into(),
                started.into(),
            ])
            .returning(
                Query::returning()
                    .expr(Expr::col(self.audit_key.clone()).cast_as(Alias::new("BIGINT"))),
            )
            .to_owned();
        let rows = txn.query(&insert).await?;
        rows.first()
            .and_then(|row| row.first())
            .ok_or(DbErr::RecordNotInserted)?
            .int()
    }

    /// Completes the batch's audit row with what it wrote.
    pub async fn finish(
        &self,
        txn: &mut Txn,
        audit_key: i64,
        rows: usize,
        new_members: usize,
    ) -> Result<(), DbErr> {
        let update = Query::update()
            .table(self.table.clone())
            .value(self.fact_row_count.clone(), rows as i64)
            .value(self.new_member_count.clone(), new_members as i64)
            .value(self.end_ts.clone(), now())
            .and_where(Expr::col(self.audit_key.clone()).eq(audit_key))
            .to_owned();
        txn.execute(&update).await?;
        Ok(())
    }
}

impl AggregateStates {
    /// Each recorded aggregate's (name, content hash).
    pub async fn recorded(&self, txn: &mut Txn) -> Result<Vec<(String, String)>, DbErr> {
        let select = Query::select()
            .columns([self.name.clone(), self.content_hash.clone()])
            .from(self.table.clone())
            .to_owned();
        txn.query(&select)
            .await?
            .iter()
            .map(|row| Ok((row[0].text()?, row[1].text()?)))
            .collect()
    }

    /// Records that an aggregate is maintained from this definition.
    pub async fn record(
        &self,
        txn: &mut Txn,
        name: &str,
        feature: &str,
        hash: &str,
    ) -> Result<(), DbErr> {
        let insert = Query::insert()
            .into_table(self.table.clone())
            .columns([
                self.name.clone(),
                self.feature.clone(),
                self.content_hash.clone(),
                self.built_ts.clone(),
            ])
            .values_panic([name.into(), feature.into(), hash.into(), now().into()])
            .on_conflict(
                OnConflict::column(self.name.clone())
                    .update_columns([
                        self.feature.clone(),
                        self.content_hash.clone(),
                        self.built_ts.clone(),
                    ])
                    .to_owned(),
            )
            .to_owned();
        txn.execute(&insert).await?;
        Ok(())
    }

    /// Forgets an aggregate no longer maintained: enabling it again rebuilds it.
    pub async fn forget(&self, txn: &mut Txn, name: &str) -> Result<(), DbErr> {
        let delete = Query::delete()
            .from_table(self.table.clone())
            .and_where(Expr::col(self.name.clone()).eq(name))
            .to_owned();
        txn.execute(&delete).await?;
        Ok(())
    }
}

impl KafkaOffsets {
    /// Stores each partition's next offset, unless the partition was
    /// already committed past the batch's first message: then a consumer
    /// that lost the partition (say, kicked from the group while the
    /// database was away) would load messages its successor already
    /// loaded, and the batch is refused.
    pub async fn store(
        &self,
        txn: &mut Txn,
        offsets: &[NextOffset],
        audit_key: i64,
    ) -> Result<(), SinkError> {
        let at = now();
        let key = [
            self.cluster.clone(),
            self.topic.clone(),
            self.partition.clone(),
        ];
        let updated = [
            self.next_offset.clone(),
            self.audit_key.clone(),
            self.update_ts.clone(),
        ];
        for offset in offsets {
            let mut insert = Query::insert();
            insert
                .into_table(self.table.clone())
                .columns(key.iter().chain(&updated).cloned())
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
                            Expr::col((self.table.clone(), self.next_offset.clone()))
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

    /// The statement reading the stored next offsets of one cluster's
    /// topic: (partition, next offset) as BIGINTs.
    pub fn stored(&self, cluster: &str, topic: &str) -> sea_orm::sea_query::SelectStatement {
        Query::select()
            .from(self.table.clone())
            .expr(Expr::col(self.partition.clone()).cast_as(Alias::new("BIGINT")))
            .expr(Expr::col(self.next_offset.clone()).cast_as(Alias::new("BIGINT")))
            .and_where(Expr::col(self.cluster.clone()).eq(cluster))
            .and_where(Expr::col(self.topic.clone()).eq(topic))
            .to_owned()
    }
}

impl Discards {
    /// Inserts the batch's discards, each with its exact payload.
    pub async fn insert(
        &self,
        txn: &mut Txn,
        mapping: &str,
        discards: &[DiscardRecord],
        audit_key: i64,
    ) -> Result<(), DbErr> {
        let at = now();
        for chunk in discards.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert.into_table(self.table.clone()).columns([
                self.mapping_name.clone(),
                self.source.clone(),
                self.partition.clone(),
                self.position.clone(),
                self.message_key.clone(),
                self.payload.clone(),
                self.error.clone(),
                self.discard_ts.clone(),
                self.audit_key.clone(),
            ]);
            for discard in chunk {
                insert.values_panic([
                    mapping.into(),
                    crate::convert::truncate(discard.source.clone(), self.source_chars).into(),
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
}

/// Now, in whole epoch seconds UTC, as every `*_TS` column holds time.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
