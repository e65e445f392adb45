//! A batch and the work on it that needs no database: which rows to write
//! (the latest per key, or per `replace_by` identity), their distinct
//! dimension members and, for a bulk path, their values in PostgreSQL's
//! COPY text format. The batcher's thread does it (see [`Preparer`]), so
//! the writer, which holds the transaction, only adds keys.

use foldhash::{HashMap, HashMapExt};

use crate::dimension::Distinct;
use crate::plan::{Cell, Member, Plan, Row};

/// What one batch holds: each loaded event's rows, and the discarded ones.
#[derive(Debug, Default)]
pub struct Batch {
    /// Where the events came from (file names, or `topic` for Kafka).
    pub source: String,
    pub events: Vec<Vec<Row>>,
    pub discards: Vec<DiscardRecord>,
    /// Kafka positions this batch moves to, committed with its rows.
    pub offsets: Vec<NextOffset>,
    /// What the writer would otherwise work out itself: see [`Preparer`].
    pub prepared: Option<Prepared>,
    /// When the events are discards replayed: which they are.
    pub replay: Option<Replay>,
    /// Attribute paths the mapping does not read, each with the number of
    /// the batch's sampled loaded events that carried it.
    pub unread: Vec<(String, u64)>,
}

/// A batch of replayed discards (`martmap replay-discards`): which
/// `CTL_DISCARD` rows its events come from, and those that still fail.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    /// Per event of the batch (in order): its discard's id, and the audit
    /// key of the batch that discarded it.
    pub events: Vec<(i64, i64)>,
    /// Discards that still fail, with their new error.
    pub failing: Vec<(i64, String)>,
}

/// The part of writing a batch that needs no database, done by the thread
/// that builds the batch (the reader or a consumer), so that the writer,
/// which holds the transaction, has less to do: which rows to write, their
/// distinct dimension members (the member cache is then asked once per
/// member, not per row) and, when they travel by COPY, their mapped values
/// in COPY's text format.
#[derive(Debug, Clone)]
pub struct Preparer {
    /// Positions in a row of the `replace_by` columns.
    pub replace_by: Vec<usize>,
    /// Where a row holds each key column.
    pub key: Vec<KeyPart>,
    dimensions: usize,
    /// Whether rows travel as COPY text.
    pub copy: bool,
}

/// A batch's prepared rows.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The rows to write, as (event, row) positions in `Batch::events`.
    rows: Vec<(usize, usize)>,
    /// Their dimension members.
    members: Distinct,
    /// With COPY, each row's mapped values, tab-separated, one row after
    /// another; row `i` ends at `copy_ends[i]`.
    copy_text: Vec<u8>,
    copy_ends: Vec<usize>,
}

impl Prepared {
    /// The rows to write, as (event, row) positions in `Batch::events`.
    pub fn rows(&self) -> &[(usize, usize)] {
        &self.rows
    }

    /// The distinct dimension members of those rows.
    pub fn members(&self) -> &Distinct {
        &self.members
    }

    /// With COPY, the mapped values of row `at` of [`Prepared::rows`] in
    /// COPY text, without the line's end.
    pub fn copy_text(&self, at: usize) -> &[u8] {
        let start = at.checked_sub(1).map_or(0, |before| self.copy_ends[before]);
        &self.copy_text[start..self.copy_ends[at]]
    }
}

impl Preparer {
    /// What `plan`'s batches need prepared. With `bulk` (the sink can
    /// load rows as COPY text), a mapping whose events replace their rows
    /// (`replace_by`) and whose key is all mapped columns gets its rows'
    /// COPY text. The sink says which (`Sink::preparer`).
    pub fn new(plan: &Plan, bulk: bool) -> Preparer {
        let key = KeyPart::of_key(plan);
        let mapped_key = key.iter().all(|part| matches!(part, KeyPart::Value(_)));
        Preparer {
            replace_by: column_positions(plan, &plan.replace_by),
            copy: bulk && !plan.replace_by.is_empty() && mapped_key,
            key,
            dimensions: plan.dimensions.len(),
        }
    }

    /// With COPY, the key of `row` as text (every key column is mapped).
    pub fn key_text(&self, row: &Row) -> Vec<String> {
        self.key
            .iter()
            .filter_map(|part| match part {
                KeyPart::Value(at) => Some(row.values[*at].to_text()),
                KeyPart::Member(_) => None,
            })
            .collect()
    }

    /// Prepares `batch` for writing.
    pub fn prepare(&self, batch: &mut Batch) {
        batch.prepared = Some(self.prepared(batch));
    }

    /// The batch's rows to write, their members and, with COPY, their text.
    /// The writer calls it for a batch that comes unprepared.
    pub fn prepared(&self, batch: &Batch) -> Prepared {
        let rows = latest_rows(&batch.events, &self.replace_by, &self.key);
        let members = Distinct::of(
            rows.iter().map(|&(event, row)| &batch.events[event][row]),
            self.dimensions,
        );
        let mut prepared = Prepared {
            rows,
            members,
            copy_text: Vec::new(),
            copy_ends: Vec::new(),
        };
        if self.copy {
            prepared.copy_ends.reserve(prepared.rows.len());
            for &(event, row) in &prepared.rows {
                let mut line = CopyLine::new(&mut prepared.copy_text);
                for cell in &batch.events[event][row].values {
                    line.cell(cell);
                }
                prepared.copy_ends.push(prepared.copy_text.len());
            }
        }
        prepared
    }
}

/// The next offset to consume of one partition, after this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextOffset {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    /// The offset of the batch's first message from this partition.
    pub first: i64,
    pub offset: i64,
}

/// A message that could not be loaded, kept whole.
#[derive(Debug, Clone)]
pub struct DiscardRecord {
    pub source: String,
    pub partition: Option<i32>,
    /// Offset in a partition, or line number in a file.
    pub position: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Where a key column's value is in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    /// A mapped column: its position in `Row::values`.
    Value(usize),
    /// A dimension key column: the dimension's position in `Row::members`
    /// (one member, one surrogate key).
    Member(usize),
}

/// A key column's value in one row.
#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyValue<'r> {
    Value(&'r Cell),
    Member(&'r Member),
}

impl KeyPart {
    /// The key parts of `plan`'s key, in its order.
    fn of_key(plan: &Plan) -> Vec<KeyPart> {
        plan.key
            .iter()
            .filter_map(|name| {
                let value = plan.columns.iter().position(|(column, _)| column == name);
                let member = || plan.dimensions.iter().position(|d| &d.key_column == name);
                value
                    .map(KeyPart::Value)
                    .or_else(|| member().map(KeyPart::Member))
            })
            .collect()
    }

    fn of(self, row: &Row) -> KeyValue<'_> {
        match self {
            KeyPart::Value(at) => KeyValue::Value(&row.values[at]),
            KeyPart::Member(at) => KeyValue::Member(&row.members[at]),
        }
    }
}

/// Positions in the plan's fact columns of the named columns.
fn column_positions(plan: &Plan, names: &[String]) -> Vec<usize> {
    names
        .iter()
        .filter_map(|name| plan.columns.iter().position(|(column, _)| column == name))
        .collect()
}

/// The rows a batch writes, as (event, row) positions in `events`. With
/// `replace_by` (positions of its columns in a row), only the last event of
/// each identity counts, and since its columns are part of the key, equal
/// keys can only meet within one event. Without it, every event counts and
/// the last row of each key wins.
fn latest_rows(events: &[Vec<Row>], replace_by: &[usize], key: &[KeyPart]) -> Vec<(usize, usize)> {
    fn values<'r>(row: &'r Row, positions: &[usize]) -> Vec<&'r Cell> {
        positions.iter().map(|&i| &row.values[i]).collect()
    }
    let mut kept: Vec<usize> = (0..events.len())
        .filter(|&event| !events[event].is_empty())
        .collect();
    if !replace_by.is_empty() {
        let mut last: HashMap<Vec<&Cell>, usize> = HashMap::with_capacity(kept.len());
        for &event in &kept {
            last.insert(values(&events[event][0], replace_by), event);
        }
        kept.retain(|&event| last.get(&values(&events[event][0], replace_by)) == Some(&event));
    }
    let mut rows: Vec<(usize, usize)> =
        Vec::with_capacity(kept.iter().map(|&event| events[event].len()).sum());
    let mut by_key: HashMap<Vec<KeyValue>, usize> = HashMap::new();
    for event in kept {
        let start = if replace_by.is_empty() { 0 } else { rows.len() };
        if !replace_by.is_empty() {
            by_key.clear();
        }
        let event_rows = &events[event];
        for (at, row) in event_rows.iter().enumerate() {
            // Most events have a handful of rows: compare, do not hash.
            let earlier = if event_rows.len() <= 16 && !replace_by.is_empty() {
                rows[start..]
                    .iter()
                    .position(|&(_, seen)| {
                        let seen = &event_rows[seen];
                        key.iter().all(|part| part.of(seen) == part.of(row))
                    })
                    .map(|p| start + p)
            } else {
                let row_key: Vec<KeyValue> = key.iter().map(|part| part.of(row)).collect();
                let found = by_key.get(&row_key).copied();
                if found.is_none() {
                    by_key.insert(row_key, rows.len());
                }
                found
            };
            match earlier {
                Some(earlier) => rows[earlier] = (event, at),
                None => rows.push((event, at)),
            }
        }
    }
    rows
}

/// Writes one row in COPY's text format: tab-separated, `\N` for NULL, and
/// backslash, tab, newline and carriage return escaped.
pub struct CopyLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CopyLine<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        CopyLine { out, first: true }
    }

    /// Continues a line whose first values are already in `out`.
    pub fn after_values(out: &'a mut Vec<u8>) -> Self {
        CopyLine { out, first: false }
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b'\t');
        }
    }

    pub fn int(&mut self, value: i64) {
        self.separate();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn cell(&mut self, cell: &Cell) {
        match cell {
            Cell::Int(value) => self.int(*value),
            Cell::Null => {
                self.separate();
                self.out.extend_from_slice(b"\\N");
            }
            Cell::Text(text) => {
                self.separate();
                let special = |byte: &u8| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r');
                // Most text has nothing to escape: one pass without early exit
                // (which the compiler vectorises) decides, then a plain copy.
                let bytes = text.as_bytes();
                if !bytes.iter().fold(false, |any, byte| any | special(byte)) {
                    self.out.extend_from_slice(bytes);
                    return;
                }
                let mut rest = bytes;
                while let Some(at) = rest.iter().position(special) {
                    self.out.extend_from_slice(&rest[..at]);
                    self.out.extend_from_slice(match rest[at] {
                        b'\\' => b"\\\\",
                        b'\t' => b"\\t",
                        b'\n' => b"\\n",
                        _ => b"\\r",
                    });
                    rest = &rest[at + 1..];
                }
                self.out.extend_from_slice(rest);
            }
        }
    }

    pub fn end(self) {
        self.out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of (session, index, value) with key (session, index).
    fn event(session: &str, rows: &[(i64, &str)]) -> Vec<Row> {
        rows.iter()
            .map(|(index, value)| Row {
                values: vec![
                    Cell::Text(session.into()),
                    Cell::Int(*index),
                    Cell::Text((*value).into()),
                ],
                members: Vec::new(),
            })
            .collect()
    }

    fn check(events: &[Vec<Row>], replace_by: &[usize], expected: &[(&str, i64, &str)]) {
        let got: Vec<(String, i64, String)> =
            latest_rows(events, replace_by, &[KeyPart::Value(0), KeyPart::Value(1)])
                .iter()
                .map(|&(event, row)| match &events[event][row].values[..] {
                    [Cell::Text(s), Cell::Int(i), Cell::Text(v)] => {
                        (s.to_string(), *i, v.to_string())
                    }
                    other => panic!("unexpected row {other:?}"),
                })
                .collect();
        let expected: Vec<(String, i64, String)> = expected
            .iter()
            .map(|(s, i, v)| (s.to_string(), *i, v.to_string()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_later_event_of_a_session_replaces_the_earlier_one() {
        let events = [
            event("a", &[(0, "old"), (1, "old")]),
            event("b", &[(0, "b")]),
            event("a", &[(0, "new")]),
        ];
        check(&events, &[0], &[("b", 0, "b"), ("a", 0, "new")]);
    }

    #[test]
    fn without_replace_by_every_event_counts_and_the_last_row_per_key_wins() {
        let events = [
            event("a", &[(0, "first"), (1, "kept")]),
            event("b", &[(0, "b")]),
            event("a", &[(0, "second")]),
        ];
        check(
            &events,
            &[],
            &[("a", 0, "second"), ("a", 1, "kept"), ("b", 0, "b")],
        );
    }

    #[test]
    fn duplicate_keys_within_an_event_keep_the_last_row() {
        let events = [event("a", &[(0, "x"), (0, "y"), (1, "z")])];
        check(&events, &[0], &[("a", 0, "y"), ("a", 1, "z")]);
    }

    #[test]
    fn a_key_with_a_dimension_key_tells_rows_apart_by_member() {
        let member = |name: &str| -> Member { vec![std::sync::Arc::from(name)].into() };
        let row = |session: &str, question: &str| Row {
            values: vec![Cell::Text(session.into())],
            members: vec![member(question)],
        };
        // Key (SESSION, QUESTION_KEY): the second column is the dimension's.
        let key = [KeyPart::Value(0), KeyPart::Member(0)];
        let events = [vec![row("a", "q1"), row("a", "q2"), row("a", "q1")]];
        assert_eq!(latest_rows(&events, &[0], &key), [(0, 2), (0, 1)]);
        assert_eq!(latest_rows(&events, &[], &key), [(0, 2), (0, 1)]);
    }

    #[test]
    fn copy_lines_escape_and_mark_nulls() {
        let mut out = Vec::new();
        let mut line = CopyLine::new(&mut out);
        line.cell(&Cell::Text("a\tb\\c\nd".into()));
        line.cell(&Cell::Null);
        line.int(-7);
        line.cell(&Cell::Text("".into()));
        line.cell(&Cell::Text("plain text, then\r".into()));
        line.cell(&Cell::Text("no specials".into()));
        line.end();
        assert_eq!(
            out,
            b"a\\tb\\\\c\\nd\t\\N\t-7\t\tplain text, then\\r\tno specials\n"
        );
    }
}
