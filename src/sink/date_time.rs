//! DATE_TIME in the database: the local days of the facts' keys, filled in
//! the batch that needs them, the days ahead of today, and the check that
//! a filled calendar is of the configured zone. The rows themselves are
//! `crate::calendar`'s; this is where they are written.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use sea_orm::DbErr;
use sea_orm::sea_query::{Asterisk, Expr, ExprTrait, Func, OnConflict, Query};

use super::aggregate::Aggregation;
use super::txn::{Scalar, Txn};
use super::write::value;
use super::{Names, SinkError};
use crate::calendar::{Attribute, Calendar, Level};
use crate::catalog::{ColumnType, Table};
use crate::plan::Cell;

/// DATE_TIME rows per INSERT: its 19 columns make 19,000 bound parameters,
/// under both SQLite's (32,766) and PostgreSQL's (65,535) limits; a year
/// ahead is then 36 statements.
const CALENDAR_ROWS_PER_INSERT: usize = 1000;

impl Aggregation {
    /// Inserts the DATE_TIME rows of the local days of `keys` that are not
    /// known to be filled; returns those days.
    pub(super) async fn fill_days(
        &self,
        txn: &mut Txn,
        names: Names,
        keys: &BTreeSet<i64>,
    ) -> Result<Vec<NaiveDate>, DbErr> {
        let Some(table) = &self.table else {
            return Ok(Vec::new());
        };
        let days: BTreeSet<NaiveDate> = keys.iter().map(|k| self.calendar.date(*k)).collect();
        let missing: Vec<NaiveDate> = {
            let filled = self.filled.lock().unwrap();
            days.into_iter().filter(|d| !filled.contains(d)).collect()
        };
        for day in &missing {
            let intervals: Vec<i64> = self.calendar.days(*day, *day).collect();
            insert_intervals(txn, names, table, &self.calendar, &intervals).await?;
        }
        Ok(missing)
    }

    /// Fills the calendar from today to today + max days ahead when any
    /// interval of the next min days is missing: at start, and in a batch
    /// on the first day a long run finds the calendar short. The check reads
    /// the database at most once a day.
    pub(super) async fn fill_ahead(&self, txn: &mut Txn, names: Names) -> Result<usize, DbErr> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let (min, max) = self.days_ahead;
        let today = self.calendar.date(super::control::now());
        let needed = today + chrono::Days::new(min);
        if self
            .ahead
            .lock()
            .unwrap()
            .is_some_and(|until| until >= needed)
        {
            return Ok(0);
        }
        let expected = self.calendar.days(today, needed).count() as i64;
        let (start, end) = (
            self.calendar.day_start(today),
            self.calendar.day_start(needed + chrono::Days::new(1)),
        );
        let key = || Expr::col(names.column(Level::Subhr.column()));
        let count = Query::select()
            .expr(Func::count(Expr::col(Asterisk)).cast_as("BIGINT"))
            .from(names.table(&table.name))
            .and_where(key().gte(start))
            .and_where(key().lt(end))
            .to_owned();
        let rows = txn.query(&count).await?;
        let have = rows
            .first()
            .and_then(|row| row.first())
            .map_or(Ok(0), Scalar::int)?;
        let mut added = 0;
        let until = if have < expected {
            let to = today + chrono::Days::new(max);
            let intervals: Vec<i64> = self.calendar.days(today, to).collect();
            insert_intervals(txn, names, table, &self.calendar, &intervals).await?;
            added = intervals.len();
            to
        } else {
            needed
        };
        *self.ahead.lock().unwrap() = Some(until);
        Ok(added)
    }

    /// Refuses a calendar filled in another time zone: its rows would
    /// disagree with the ones added now.
    pub(super) async fn check_zone(&self, txn: &mut Txn, names: Names) -> Result<(), SinkError> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let Some(key) = max_key(txn, names, table).await? else {
            return Ok(());
        };
        let day = Level::Day.column();
        let select = Query::select()
            .expr(Expr::col(names.column(day)).cast_as("BIGINT"))
            .from(names.table(&table.name))
            .and_where(Expr::col(names.column(Level::Subhr.column())).eq(key))
            .to_owned();
        let rows = txn.query(&select).await?;
        let stored = rows.first().and_then(|row| row.first()).map(Scalar::int);
        let expected = self.calendar.level_key(Level::Day, key);
        match stored {
            Some(Ok(stored)) if stored != expected => Err(SinkError::CalendarZone {
                zone: self.calendar.zone.name().to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

async fn max_key(txn: &mut Txn, names: Names, table: &Table) -> Result<Option<i64>, DbErr> {
    let select = Query::select()
        .expr(Func::max(Expr::col(names.column(Level::Subhr.column()))).cast_as("BIGINT"))
        .from(names.table(&table.name))
        .to_owned();
    let rows = txn.query(&select).await?;
    Ok(rows
        .first()
        .and_then(|row| row.first())
        .and_then(|k| k.int().ok()))
}

/// Inserts DATE_TIME rows, skipping those that exist.
async fn insert_intervals(
    txn: &mut Txn,
    names: Names,
    table: &Table,
    calendar: &Calendar,
    keys: &[i64],
) -> Result<(), DbErr> {
    for chunk in keys.chunks(CALENDAR_ROWS_PER_INSERT) {
        let rows: Vec<Vec<(&str, Attribute)>> = chunk
            .iter()
            .map(|key| calendar.interval(*key).attributes())
            .collect();
        let Some(first) = rows.first() else {
            continue;
        };
        let columns: Vec<&str> = first
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| table.column(c).is_some())
            .collect();
        let mut insert = Query::insert();
        insert
            .into_table(names.table(&table.name))
            .columns(columns.iter().map(|c| names.column(c)));
        for row in &rows {
            let values = row
                .iter()
                .filter(|(c, _)| columns.contains(c))
                .map(|(c, attribute)| {
                    let ty = table.column(c).map_or(ColumnType::BigInt, |c| c.ty);
                    let cell = match attribute {
                        Attribute::Int(n) => Cell::Int(*n),
                        Attribute::Text(text) => Cell::Text(text.as_str().into()),
                    };
                    value(&cell, ty).into()
                });
            insert.values_panic(values);
        }
        insert.on_conflict(
            OnConflict::column(names.column(Level::Subhr.column()))
                .do_nothing()
                .to_owned(),
        );
        txn.execute(&insert).await?;
    }
    Ok(())
}
