//! The control tables every batch writes — the audit log, the Kafka
//! offsets and the discards — resolved once from the catalog into typed
//! structures, and the statements that write them (the same SeaQuery
//! statements on every backend). Their names are spelled here and nowhere
//! else; [`Control::resolve`] checks that the catalog declares each table
//! and column with a fitting type, so a catalog without them fails when
//! the database is opened, naming what is missing, not at the first batch.

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, LikeExpr, OnConflict, Order, Query, UpdateStatement, Value,
};
use sea_orm::{ConnectionTrait, DbErr};

use super::txn::Txn;
use super::write::CHUNK;
use super::{Names, SinkError};
use crate::catalog::{Catalog, ColumnType};
use crate::pipeline::{Batch, DiscardRecord, NextOffset, Replay};

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
    id: Column,
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
    /// Needed only to replay discards: a catalog from before replays may
    /// leave it out.
    replayed_audit_key: Option<Column>,
}

/// What a replay needs of a `CTL_DISCARD` row.
#[derive(Debug, Clone)]
pub struct StoredDiscard {
    pub id: i64,
    pub payload: Vec<u8>,
    pub error: String,
    /// The batch that discarded it.
    pub audit_key: i64,
}

/// Which discards to replay: those of one mapping not replayed yet, and
/// optionally of one source, with an error containing a text, or
/// discarded in a time range (epoch seconds, `until` excluded).
#[derive(Debug, Clone, Default)]
pub struct DiscardFilter {
    pub mapping: String,
    pub source: Option<String>,
    pub error: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
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

/// `CTL_KAFKA_GAP`: offsets a stored position could no longer read.
#[derive(Debug, Clone)]
pub struct Gaps {
    pub table: Alias,
    cluster: Column,
    topic: Column,
    partition: Column,
    from: Column,
    to: Column,
    kind: Column,
    detected_ts: Column,
}

/// A jump in a partition's consumption, from the next offset martmap held
/// to where it continued: `kind` says why (`retention`: `from..to` deleted
/// before they were loaded; `beyond-end`: `from` is past the partition's
/// end, the topic recreated, and `to` its earliest offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetGap {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    /// The first offset after the gap, where loading continues.
    pub to: i64,
    pub kind: &'static str,
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
    /// Needed only to record offset gaps: a catalog from before them may
    /// leave it out (gaps are then only logged).
    pub gaps: Option<Gaps>,
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
        const GAPS: &str = "CTL_KAFKA_GAP";
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
            id: r.column(DISCARDS, "ID", Integer),
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
            replayed_audit_key: catalog
                .table(DISCARDS)
                .and_then(|t| t.column("REPLAYED_AUDIT_KEY"))
                .is_some()
                .then(|| r.column(DISCARDS, "REPLAYED_AUDIT_KEY", Integer)),
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
        let gaps = catalog.table(GAPS).is_some().then(|| Gaps {
            table: r.table(GAPS),
            cluster: r.column(GAPS, "CLUSTER_NAME", Text),
            topic: r.column(GAPS, "TOPIC", Text),
            partition: r.column(GAPS, "KAFKA_PARTITION", Integer),
            from: r.column(GAPS, "FROM_OFFSET", Integer),
            to: r.column(GAPS, "TO_OFFSET", Integer),
            kind: r.column(GAPS, "KIND", Text),
            detected_ts: r.column(GAPS, "DETECTED_TS", Integer),
        });
        if !r.problems.is_empty() {
            return Err(SinkError::Control(r.problems.join("; ")));
        }
        Ok(Control {
            tables: [AUDIT, OFFSETS, DISCARDS]
                .into_iter()
                .chain(aggregates.is_some().then_some(AGGREGATES))
                .chain(gaps.is_some().then_some(GAPS))
                .collect(),
            audit,
            offsets,
            discards,
            aggregates,
            gaps,
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

    /// Moves a partition's stored next offset from `gap.from` to `gap.to`,
    /// where consumption continues past the gap (backwards, for a topic
    /// recreated): only while it is still `gap.from`.
    pub fn skip(&self, gap: &OffsetGap) -> UpdateStatement {
        Query::update()
            .table(self.table.clone())
            .value(self.next_offset.clone(), gap.to)
            .value(self.update_ts.clone(), now())
            .and_where(Expr::col(self.cluster.clone()).eq(gap.cluster.as_str()))
            .and_where(Expr::col(self.topic.clone()).eq(gap.topic.as_str()))
            .and_where(Expr::col(self.partition.clone()).eq(gap.partition))
            .and_where(Expr::col(self.next_offset.clone()).eq(gap.from))
            .to_owned()
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

impl Gaps {
    /// Records a gap; false when it was recorded before.
    pub async fn record(&self, db: &impl ConnectionTrait, gap: &OffsetGap) -> Result<bool, DbErr> {
        let insert = Query::insert()
            .into_table(self.table.clone())
            .columns([
                self.cluster.clone(),
                self.topic.clone(),
                self.partition.clone(),
                self.from.clone(),
                self.to.clone(),
                self.kind.clone(),
                self.detected_ts.clone(),
            ])
            .values_panic([
                gap.cluster.clone().into(),
                gap.topic.clone().into(),
                gap.partition.into(),
                gap.from.into(),
                gap.to.into(),
                gap.kind.into(),
                now().into(),
            ])
            .on_conflict(
                OnConflict::columns([
                    self.cluster.clone(),
                    self.topic.clone(),
                    self.partition.clone(),
                    self.from.clone(),
                ])
                .do_nothing()
                .to_owned(),
            )
            .to_owned();
        Ok(db.execute(&insert).await?.rows_affected() > 0)
    }
}

impl Discards {
    fn replayed(&self) -> Result<&Column, DbErr> {
        self.replayed_audit_key.as_ref().ok_or_else(|| {
            DbErr::Custom(
                "table `CTL_DISCARD` has no column `REPLAYED_AUDIT_KEY`, which replaying \
                 discards needs; declare it (bigint) as schemas/tables/control.yaml does"
                    .into(),
            )
        })
    }

    /// The discards `filter` selects, oldest first.
    pub async fn pending(
        &self,
        db: &impl ConnectionTrait,
        filter: &DiscardFilter,
    ) -> Result<Vec<StoredDiscard>, DbErr> {
        let mut select = Query::select();
        select
            .from(self.table.clone())
            .expr(Expr::col(self.id.clone()).cast_as("BIGINT"))
            .column(self.payload.clone())
            .column(self.error.clone())
            .expr(Expr::col(self.audit_key.clone()).cast_as("BIGINT"))
            .and_where(Expr::col(self.mapping_name.clone()).eq(filter.mapping.as_str()))
            .and_where(Expr::col(self.replayed()?.clone()).is_null())
            .order_by(self.id.clone(), Order::Asc);
        if let Some(source) = &filter.source {
            select.and_where(Expr::col(self.source.clone()).eq(source.as_str()));
        }
        if let Some(error) = &filter.error {
            let pattern = format!(
                "%{}%",
                error
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            select
                .and_where(Expr::col(self.error.clone()).like(LikeExpr::new(pattern).escape('\\')));
        }
        if let Some(since) = filter.since {
            select.and_where(Expr::col(self.discard_ts.clone()).gte(since));
        }
        if let Some(until) = filter.until {
            select.and_where(Expr::col(self.discard_ts.clone()).lt(until));
        }
        let mut found = Vec::new();
        for row in db.query_all(&select).await? {
            found.push(StoredDiscard {
                id: row.try_get_by_index(0)?,
                payload: row.try_get_by_index(1)?,
                error: row.try_get_by_index(2)?,
                audit_key: row.try_get_by_index(3)?,
            });
        }
        Ok(found)
    }

    /// Marks discards loaded by the batch of `audit_key`, and records the
    /// new errors of those that still fail.
    pub async fn replay(
        &self,
        txn: &mut Txn,
        loaded: &[i64],
        replay: &Replay,
        audit_key: i64,
    ) -> Result<(), DbErr> {
        let replayed = self.replayed()?;
        for chunk in loaded.chunks(CHUNK) {
            let update = Query::update()
                .table(self.table.clone())
                .value(replayed.clone(), audit_key)
                .and_where(Expr::col(self.id.clone()).is_in(chunk.iter().copied()))
                .to_owned();
            txn.execute(&update).await?;
        }
        for (id, error) in &replay.failing {
            let update = Query::update()
                .table(self.table.clone())
                .value(self.error.clone(), error.as_str())
                .and_where(Expr::col(self.id.clone()).eq(*id))
                .to_owned();
            txn.execute(&update).await?;
        }
        Ok(())
    }
}

/// Now, in whole epoch seconds UTC, as every `*_TS` column holds time.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
