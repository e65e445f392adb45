//! Info Mart's DATE_TIME calendar: one row per 15-minute interval, keyed by
//! the UTC epoch seconds of its start, with local calendar attributes and
//! roll-up keys in one IANA time zone.
//!
//! A roll-up key is the UTC epoch seconds of the *local* start of the
//! enclosing hour, day, week (starting Sunday), month, quarter or year.
//! Days are whole local dates, so a day has 92, 96 or 100 intervals around
//! DST changes. An hour is a run of intervals with the same local date,
//! hour and UTC offset: when clocks go back, the repeated hour is two
//! buckets; when Lord Howe's clocks jump 30 minutes, the hour they jump
//! into starts at the jump. Pure: time-zone rules come from chrono-tz.

use chrono::{
    DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike,
};
use chrono_tz::Tz;

/// The length of one calendar interval, in seconds.
pub const INTERVAL: i64 = 900;

/// The calendar table and its columns, as the catalog declares them.
pub const TABLE: &str = "DATE_TIME";

/// An aggregation level: the calendar column holding its key, and the
/// suffix of the aggregate table kept at that level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Subhr,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Subhr,
        Level::Hour,
        Level::Day,
        Level::Week,
        Level::Month,
        Level::Quarter,
        Level::Year,
    ];

    /// The name used in aggregate files and table names (`AGT_X_HOUR`).
    pub fn name(self) -> &'static str {
        match self {
            Level::Subhr => "SUBHR",
            Level::Hour => "HOUR",
            Level::Day => "DAY",
            Level::Week => "WEEK",
            Level::Month => "MONTH",
            Level::Quarter => "QRTR",
            Level::Year => "YEAR",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.name() == name)
    }

    /// The DATE_TIME column holding this level's key.
    pub fn column(self) -> &'static str {
        match self {
            Level::Subhr => "DATE_TIME_KEY",
            Level::Hour => "DATE_TIME_HOUR_KEY",
            Level::Day => "DATE_TIME_DAY_KEY",
            Level::Week => "DATE_TIME_WEEK_KEY",
            Level::Month => "DATE_TIME_MONTH_KEY",
            Level::Quarter => "DATE_TIME_QUARTER_KEY",
            Level::Year => "DATE_TIME_YEAR_KEY",
        }
    }
}

/// A calendar cell: DATE_TIME columns are integers or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Int(i64),
    Text(String),
}

/// One DATE_TIME row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// UTC epoch seconds of the interval's start.
    pub key: i64,
    /// Local wall time of the start.
    pub local: NaiveDateTime,
    /// Local time minus UTC, in seconds.
    pub utc_offset: i32,
    /// The key of each level, `Level::ALL` order (SUBHR first, = `key`).
    pub keys: [i64; 7],
}

impl Interval {
    pub fn level_key(&self, level: Level) -> i64 {
        self.keys[level as usize]
    }

    /// The row's columns and values, as DATE_TIME declares them.
    pub fn attributes(&self) -> Vec<(&'static str, Attribute)> {
        let date = self.local.date();
        let int = |n: i64| Attribute::Int(n);
        let text = |s: String| Attribute::Text(s);
        let mut row = vec![
            ("CAL_DATE", text(date.format("%Y-%m-%d").to_string())),
            ("CAL_YEAR_NUM", int(date.year().into())),
            ("CAL_QUARTER_NUM", int(quarter(date).into())),
            ("CAL_MONTH_NUM", int(date.month().into())),
            ("CAL_WEEK_NUM", int(week_number(date))),
            (
                "CAL_DAY_NUM_IN_WEEK",
                int(i64::from(date.weekday().number_from_sunday())),
            ),
            ("CAL_DAY_NUM_IN_MONTH", int(date.day().into())),
            ("CAL_DAY_NAME", text(date.format("%A").to_string())),
            ("CAL_MONTH_NAME", text(date.format("%B").to_string())),
            (
                "LABEL_HH24_MI",
                text(self.local.format("%H:%M").to_string()),
            ),
            ("UTC_OFFSET_MIN", int(i64::from(self.utc_offset / 60))),
        ];
        row.extend(
            Level::ALL
                .iter()
                .map(|level| (level.column(), int(self.level_key(*level)))),
        );
        row
    }
}

/// The calendar of one time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub zone: Tz,
}

impl Calendar {
    pub fn new(zone: Tz) -> Self {
        Calendar { zone }
    }

    /// The interval starting at `key` (floored to an interval start).
    pub fn interval(&self, key: i64) -> Interval {
        let key = key.div_euclid(INTERVAL) * INTERVAL;
        let at = self.at(key);
        let date = at.date_naive();
        let week = date - Days::new(date.weekday().num_days_from_sunday().into());
        let month = date.with_day(1).unwrap_or(date);
        let quarter_month = (quarter(date) - 1) * 3 + 1;
        let quarter = month.with_month(quarter_month).unwrap_or(month);
        let year = month.with_month(1).unwrap_or(month);
        Interval {
            key,
            local: at.naive_local(),
            utc_offset: at.offset().fix().local_minus_utc(),
            keys: [
                key,
                self.hour_start(key),
                self.day_start(date),
                self.day_start(week),
                self.day_start(month),
                self.day_start(quarter),
                self.day_start(year),
            ],
        }
    }

    /// The key of `level`'s bucket holding the interval `key`.
    pub fn level_key(&self, level: Level, key: i64) -> i64 {
        self.interval(key).level_key(level)
    }

    /// The bucket of `level` holding the interval `key`, as UTC seconds
    /// `[start, end)`: exactly the interval keys whose level key is `start`.
    pub fn bucket(&self, level: Level, key: i64) -> (i64, i64) {
        let interval = self.interval(key);
        let start = interval.level_key(level);
        let date = interval.local.date();
        let end = match level {
            Level::Subhr => interval.key + INTERVAL,
            Level::Hour => {
                let mut next = interval.key + INTERVAL;
                while self.hour_start(next) == start {
                    next += INTERVAL;
                }
                next
            }
            Level::Day => self.day_start(date + Days::new(1)),
            Level::Week => {
                let sunday = date - Days::new(date.weekday().num_days_from_sunday().into());
                self.day_start(sunday + Days::new(7))
            }
            Level::Month => self.day_start(first_of_month(date) + Months::new(1)),
            Level::Quarter => {
                let first = first_of_month(date)
                    .with_month((quarter(date) - 1) * 3 + 1)
                    .unwrap_or(date);
                self.day_start(first + Months::new(3))
            }
            Level::Year => {
                let first = first_of_month(date).with_month(1).unwrap_or(date);
                self.day_start(first + Months::new(12))
            }
        };
        (start, end)
    }

    /// The local date of an instant.
    pub fn date(&self, seconds: i64) -> NaiveDate {
        self.at(seconds).date_naive()
    }

    /// The intervals of the local dates `from..=to`, in order.
    pub fn days(&self, from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = i64> + use<> {
        let (start, end) = (self.day_start(from), self.day_start(to + Days::new(1)));
        let first = start.div_euclid(INTERVAL) * INTERVAL;
        let first = if first < start {
            first + INTERVAL
        } else {
            first
        };
        (first..end).step_by(INTERVAL as usize)
    }

    /// UTC seconds of the first instant of the local date: midnight, or,
    /// when midnight is skipped by a DST change, the end of the gap.
    pub fn day_start(&self, date: NaiveDate) -> i64 {
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        (0..=96)
            .find_map(|quarter| {
                let local = midnight + chrono::Duration::minutes(15 * quarter);
                self.zone.from_local_datetime(&local).earliest()
            })
            .map_or_else(|| midnight.and_utc().timestamp(), |at| at.timestamp())
    }

    /// The first interval of the run holding `key` with the same local date,
    /// hour and UTC offset.
    fn hour_start(&self, key: i64) -> i64 {
        let identity = |at: DateTime<Tz>| {
            (
                at.date_naive(),
                at.hour(),
                at.offset().fix().local_minus_utc(),
            )
        };
        let this = identity(self.at(key));
        let mut start = key;
        while identity(self.at(start - INTERVAL)) == this {
            start -= INTERVAL;
        }
        start
    }

    fn at(&self, seconds: i64) -> DateTime<Tz> {
        self.zone
            .timestamp_opt(seconds, 0)
            .single()
            .unwrap_or_else(|| self.zone.timestamp_opt(0, 0).unwrap())
    }
}

fn quarter(date: NaiveDate) -> u32 {
    (date.month() - 1) / 3 + 1
}

fn first_of_month(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

/// Week of the year, weeks starting Sunday; days before the first Sunday
/// are week 0 (`%U`).
fn week_number(date: NaiveDate) -> i64 {
    date.format("%U").to_string().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar(zone: &str) -> Calendar {
        Calendar::new(zone.parse().unwrap())
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn utc(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp()
    }

    fn intervals_per_day(zone: &str, day: &str) -> usize {
        let day = date(day);
        calendar(zone).days(day, day).count()
    }

    #[test]
    fn days_have_92_96_or_100_intervals_around_dst() {
        assert_eq!(intervals_per_day("UTC", "2026-03-08"), 96);
        assert_eq!(intervals_per_day("America/New_York", "2026-03-08"), 92);
        assert_eq!(intervals_per_day("America/New_York", "2026-11-01"), 100);
        assert_eq!(intervals_per_day("America/New_York", "2026-11-02"), 96);
        assert_eq!(intervals_per_day("Europe/Paris", "2026-03-29"), 92);
        assert_eq!(intervals_per_day("Europe/Paris", "2026-10-25"), 100);
        assert_eq!(intervals_per_day("Asia/Kathmandu", "2026-06-01"), 96);
        assert_eq!(intervals_per_day("Asia/Kolkata", "2026-06-01"), 96);
        // Lord Howe moves its clocks by 30 minutes.
        assert_eq!(intervals_per_day("Australia/Lord_Howe", "2026-10-04"), 94);
        assert_eq!(intervals_per_day("Australia/Lord_Howe", "2026-04-05"), 98);
    }

    #[test]
    fn every_interval_of_a_day_has_that_days_key() {
        for zone in ["America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"] {
            let calendar = calendar(zone);
            for day in ["2026-03-08", "2026-04-05", "2026-10-04", "2026-11-01"] {
                let day = date(day);
                let start = calendar.day_start(day);
                for key in calendar.days(day, day) {
                    let interval = calendar.interval(key);
                    assert_eq!(interval.local.date(), day, "{zone} {key}");
                    assert_eq!(interval.level_key(Level::Day), start, "{zone} {key}");
                    assert_eq!(
                        calendar.bucket(Level::Day, key).1,
                        calendar.day_start(day + Days::new(1))
                    );
                }
            }
        }
    }

    #[test]
    fn new_york_hours_at_the_transitions() {
        let calendar = calendar("America/New_York");
        // Spring forward: 01:45 EST is followed by 03:00 EDT.
        let before = utc("2026-03-08T06:45:00Z");
        let after = utc("2026-03-08T07:00:00Z");
        assert_eq!(
            calendar.level_key(Level::Hour, before),
            utc("2026-03-08T06:00:00Z")
        );
        assert_eq!(calendar.interval(after).local.hour(), 3);
        assert_eq!(calendar.level_key(Level::Hour, after), after);
        assert_eq!(
            calendar.level_key(Level::Day, after),
            utc("2026-03-08T05:00:00Z")
        );
        // Fall back: 01:00-02:00 happens twice, as two hour buckets.
        let first = utc("2026-11-01T05:15:00Z"); // 01:15 EDT
        let second = utc("2026-11-01T06:15:00Z"); // 01:15 EST
        assert_eq!(
            calendar.level_key(Level::Hour, first),
            utc("2026-11-01T05:00:00Z")
        );
        assert_eq!(
            calendar.level_key(Level::Hour, second),
            utc("2026-11-01T06:00:00Z")
        );
        assert_eq!(
            calendar.bucket(Level::Hour, first),
            (utc("2026-11-01T05:00:00Z"), utc("2026-11-01T06:00:00Z"))
        );
        assert_eq!(
            calendar.level_key(Level::Day, second),
            utc("2026-11-01T04:00:00Z")
        );
        assert_eq!(
            calendar.bucket(Level::Day, second).1,
            utc("2026-11-02T05:00:00Z")
        );
    }

    #[test]
    fn paris_day_and_month_keys_are_local() {
        let calendar = calendar("Europe/Paris");
        let at = utc("2026-03-29T01:30:00Z"); // 03:30 CEST, just after the jump
        let interval = calendar.interval(at);
        assert_eq!(interval.local.hour(), 3);
        assert_eq!(interval.level_key(Level::Hour), utc("2026-03-29T01:00:00Z"));
        assert_eq!(interval.level_key(Level::Day), utc("2026-03-28T23:00:00Z"));
        assert_eq!(
            interval.level_key(Level::Month),
            utc("2026-02-28T23:00:00Z")
        );
        assert_eq!(interval.level_key(Level::Year), utc("2025-12-31T23:00:00Z"));
        // 2026-03-29 is a Sunday: the week starts that day.
        assert_eq!(interval.level_key(Level::Week), utc("2026-03-28T23:00:00Z"));
        assert_eq!(
            calendar.bucket(Level::Month, at).1,
            utc("2026-03-31T22:00:00Z")
        );
    }

    #[test]
    fn kathmandu_hours_start_at_quarter_past() {
        let calendar = calendar("Asia/Kathmandu");
        let at = utc("2026-06-01T05:00:00Z"); // 10:45 local
        let interval = calendar.interval(at);
        assert_eq!(interval.attributes()[9].1, Attribute::Text("10:45".into()));
        assert_eq!(interval.level_key(Level::Hour), utc("2026-06-01T04:15:00Z"));
        assert_eq!(
            calendar.bucket(Level::Hour, at),
            (utc("2026-06-01T04:15:00Z"), utc("2026-06-01T05:15:00Z"))
        );
        assert_eq!(interval.level_key(Level::Day), utc("2026-05-31T18:15:00Z"));
        assert_eq!(interval.utc_offset, 5 * 3600 + 45 * 60);
    }

    #[test]
    fn kolkata_hours_start_at_half_past() {
        let calendar = calendar("Asia/Kolkata");
        let at = utc("2026-06-01T05:00:00Z"); // 10:30 local
        assert_eq!(
            calendar.level_key(Level::Hour, at),
            utc("2026-06-01T04:30:00Z")
        );
        assert_eq!(
            calendar.level_key(Level::Quarter, at),
            utc("2026-03-31T18:30:00Z")
        );
    }

    #[test]
    fn lord_howe_half_hour_shifts() {
        let calendar = calendar("Australia/Lord_Howe");
        // 2026-10-04: 02:00 +10:30 becomes 02:30 +11:00.
        let jump = utc("2026-10-03T15:30:00Z");
        let interval = calendar.interval(jump);
        assert_eq!(interval.local.format("%H:%M").to_string(), "02:30");
        assert_eq!(interval.level_key(Level::Hour), jump);
        assert_eq!(
            calendar.bucket(Level::Hour, jump),
            (jump, jump + 2 * INTERVAL)
        );
        assert_eq!(
            calendar.level_key(Level::Hour, jump - INTERVAL),
            jump - 4 * INTERVAL
        );
        // 2026-04-05: 02:00 +11:00 becomes 01:30 +10:30; 01:30-02:00 twice.
        let back = utc("2026-04-04T15:00:00Z"); // 01:30 +10:30 (second time)
        let interval = calendar.interval(back);
        assert_eq!(interval.local.format("%H:%M").to_string(), "01:30");
        assert_eq!(interval.level_key(Level::Hour), back);
        assert_eq!(
            calendar.level_key(Level::Hour, back - INTERVAL),
            utc("2026-04-04T14:00:00Z")
        );
        assert_eq!(interval.level_key(Level::Day), utc("2026-04-04T13:00:00Z"));
    }

    #[test]
    fn attributes_follow_info_marts_columns() {
        let calendar = calendar("America/New_York");
        let row = calendar.interval(utc("2026-11-30T15:10:00Z")).attributes();
        let get = |name: &str| row.iter().find(|(c, _)| *c == name).unwrap().1.clone();
        assert_eq!(get("CAL_DATE"), Attribute::Text("2026-11-30".into()));
        assert_eq!(get("LABEL_HH24_MI"), Attribute::Text("10:00".into()));
        assert_eq!(get("CAL_DAY_NAME"), Attribute::Text("Monday".into()));
        assert_eq!(get("CAL_DAY_NUM_IN_WEEK"), Attribute::Int(2));
        assert_eq!(get("CAL_QUARTER_NUM"), Attribute::Int(4));
        assert_eq!(get("CAL_WEEK_NUM"), Attribute::Int(48));
        assert_eq!(
            get("DATE_TIME_WEEK_KEY"),
            Attribute::Int(utc("2026-11-29T05:00:00Z"))
        );
        assert_eq!(get("UTC_OFFSET_MIN"), Attribute::Int(-300));
    }
}
