//! `martmap scaffold`: a first event schema, catalog tables and mapping
//! inferred from sample events (DESIGN §9). Pure: samples in, the three
//! files' text and what it could not decide out; the CLI reads and writes.
//!
//! The decisions, each explained in a comment of the written files:
//! - the grain: the deepest chain of arrays of objects (reached through
//!   objects) becomes the scope chain, every explode `outer` so that no
//!   parent is lost; other arrays are left out, and said so;
//! - types from the values seen: booleans and 0/1 integers are flags,
//!   integers `integer` or `bigint`, epoch milliseconds in a plausible range
//!   and ISO-8601 strings with an offset `epoch_seconds`, strings
//!   `varchar(n)` from the longest seen with headroom; the root's first
//!   timestamp also gives a `DATE_TIME_KEY` (15-minute intervals);
//! - dimensions: the low-cardinality text attributes of one object form a
//!   get-or-create dimension (`NO_VALUE` for absent ones); the others,
//!   ids included, stay in the fact;
//! - keys: an id-like root attribute present in every event, plus each
//!   explode's position in its parent; `replace_by` on that id, so a later
//!   event of the same id replaces its rows.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use indexmap::IndexMap;
use serde_json::Value;

/// Distinct text values remembered per attribute, for cardinality.
const DISTINCT_CAP: usize = 64;
/// At most this many distinct values make text a dimension attribute.
const LOW_CARDINALITY: usize = 20;
/// PostgreSQL's identifier limit (SQLite has none).
const IDENTIFIER_LIMIT: usize = 63;
/// Epoch milliseconds taken as timestamps: 2000-01-01 to 2100-01-01.
const EPOCH_MS: std::ops::RangeInclusive<i64> = 946_684_800_000..=4_102_444_800_000;

/// What scaffolding proposes.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The mapping's name (upper case), as `g:topic:<topic>=<NAME>` names it.
    pub name: String,
    /// The event schema's name: `schemas/events/<event>.schema.json`.
    pub event: String,
    pub schema: String,
    pub tables: String,
    pub mapping: String,
    /// What it could not decide, left out or widened, for the summary.
    pub notes: Vec<String>,
}

/// Why no proposal can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaffoldError {
    #[error("no sample events: give one or more files of JSON events, one per line")]
    NoSamples,
    #[error(
        "conflicting types at `{path}`: {found}; a path must hold one kind of value (objects, arrays or scalars)"
    )]
    Conflict { path: String, found: String },
    #[error("the samples carry no attribute to load")]
    Empty,
    #[error(
        "no attribute is present in every sample event, so there is nothing to key the fact on; \
         give samples that share an id"
    )]
    NoKey,
}

/// What was seen at one path across the samples.
#[derive(Debug, Default)]
struct Stats {
    present: u64,
    nulls: u64,
    bools: u64,
    ints: u64,
    min: i64,
    max: i64,
    fractions: u64,
    strings: u64,
    iso: u64,
    max_chars: usize,
    distinct: HashSet<String>,
    many: bool,
    objects: u64,
    fields: IndexMap<String, Stats>,
    arrays: u64,
    items: Option<Box<Stats>>,
}

impl Stats {
    fn add(&mut self, value: &Value) {
        self.present += 1;
        match value {
            Value::Null => self.nulls += 1,
            Value::Bool(_) => self.bools += 1,
            Value::Number(n) => match n.as_i64() {
                Some(i) => {
                    if self.ints == 0 {
                        (self.min, self.max) = (i, i);
                    }
                    self.ints += 1;
                    self.min = self.min.min(i);
                    self.max = self.max.max(i);
                }
                None => self.fractions += 1,
            },
            Value::String(text) => {
                self.strings += 1;
                self.max_chars = self.max_chars.max(text.chars().count());
                if crate::convert::parse_iso8601(text).is_some() {
                    self.iso += 1;
                }
                if !self.many && !self.distinct.contains(text.as_str()) {
                    if self.distinct.len() < DISTINCT_CAP {
                        self.distinct.insert(text.clone());
                    } else {
                        self.many = true;
                    }
                }
            }
            Value::Object(members) => {
                self.objects += 1;
                for (name, member) in members {
                    self.fields.entry(name.clone()).or_default().add(member);
                }
            }
            Value::Array(items) => {
                self.arrays += 1;
                let stats = self.items.get_or_insert_with(Default::default);
                for item in items {
                    stats.add(item);
                }
            }
        }
    }

    fn scalars(&self) -> u64 {
        self.bools + self.ints + self.fractions + self.strings
    }

    /// An array whose items are objects: a candidate explode.
    fn object_items(&self) -> Option<&Stats> {
        self.items.as_deref().filter(|items| items.objects > 0)
    }
}

/// How a leaf attribute is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Flag,
    Int { big: bool },
    Number,
    Timestamp,
    Text { chars: usize },
}

/// One leaf attribute of a scope's items.
#[derive(Debug)]
struct Leaf<'s> {
    /// Names from the scope's item to the leaf.
    names: Vec<&'s str>,
    stats: &'s Stats,
    kind: Kind,
}

impl Leaf<'_> {
    fn path(&self) -> String {
        path_of(&self.names)
    }
}

/// The relative path through `names`, in the normal form of
/// `plan::coverage` (`$.creator.userAgent`).
fn path_of(names: &[&str]) -> String {
    let mut path = "$".to_owned();
    for name in names {
        crate::plan::coverage::push_name(&mut path, name);
    }
    path
}

/// One explode of the grain.
struct Scope<'s> {
    name: String,
    /// Its `each`, relative to the parent's item (`$` for the root).
    each: String,
    item: &'s Stats,
}

/// Proposes the files for events named `name` from `samples` (each a JSON
/// object).
pub fn scaffold(name: &str, samples: &[Value]) -> Result<Proposal, ScaffoldError> {
    if samples.is_empty() {
        return Err(ScaffoldError::NoSamples);
    }
    let mut root = Stats::default();
    for sample in samples {
        root.add(sample);
    }
    let upper = identifier(name);
    let event = name.to_ascii_lowercase().replace(['_', ' '], "-");
    let mut notes = Vec::new();

    // The grain: the deepest chain of arrays of objects.
    let mut scopes = vec![Scope {
        name: "event".into(),
        each: "$".into(),
        item: &root,
    }];
    loop {
        let current = scopes.last().expect("the root").item;
        let mut arrays = Vec::new();
        object_arrays(current, &mut Vec::new(), &mut arrays);
        // The deepest; of equally deep ones, the first.
        let deepest = arrays.iter().map(|(_, items)| depth(items)).max();
        let Some((names, items)) = arrays
            .iter()
            .find(|(_, items)| Some(depth(items)) == deepest)
            .map(|(names, items)| (names.clone(), *items))
        else {
            break;
        };
        let each = path_of(&names) + "[*]";
        let base = singular(names.last().copied().unwrap_or("item"));
        let taken: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
        let scope_name = unique_lower(&base, &taken);
        scopes.push(Scope {
            name: scope_name,
            each,
            item: items,
        });
    }

    // Leaves per scope, and what is left out.
    let mut leaves: Vec<Vec<Leaf>> = Vec::new();
    for (at, scope) in scopes.iter().enumerate() {
        let next = scopes.get(at + 1).map(|s| s.each.as_str());
        let mut found = Vec::new();
        collect(
            scope.item,
            &mut Vec::new(),
            next,
            &scope.each,
            &mut found,
            &mut notes,
        )?;
        leaves.push(found);
    }
    if leaves.iter().all(Vec::is_empty) {
        return Err(ScaffoldError::Empty);
    }

    // The event id: an id-like root attribute present in every event.
    let events = samples.len() as u64;
    let id = leaves[0]
        .iter()
        .position(|leaf| {
            leaf.names.len() == 1
                && id_like(leaf.names[0])
                && leaf.stats.present - leaf.stats.nulls == events
                && matches!(leaf.kind, Kind::Text { .. } | Kind::Int { .. })
        })
        .or_else(|| {
            notes.push(
                "no id-like root attribute (id, …Id, …_id, uuid, guid) in every event: the key is \
                 the first root attribute present in every event, and a later event does not \
                 replace an earlier one's rows (no replace_by); choose the key yourself"
                    .into(),
            );
            leaves[0]
                .iter()
                .position(|leaf| leaf.stats.present - leaf.stats.nulls == events)
        });

    let mut fact = Table::new(format!("{upper}_FACT"));
    let mut mapping_columns = String::new();
    let mut dimensions_text = String::new();
    let mut dimension_tables: Vec<Table> = Vec::new();
    let mut key: Vec<String> = Vec::new();
    let mut replace_by: Vec<String> = Vec::new();

    for (at, (scope, found)) in scopes.iter().zip(&leaves).enumerate() {
        let prefix = if at == 0 {
            String::new()
        } else {
            format!("{}_", identifier(&scope.name))
        };
        if at > 0 {
            let column = fact.column(&format!("{prefix}POSITION"), "integer not null".into());
            fact.explain(
                &column,
                format!(
                    "the {}'s 0-based position in its array; -1: none",
                    scope.name
                ),
            );
            writeln!(
                mapping_columns,
                "  # The item's 0-based position in its parent's array (-1: none).\n  \
                 {column}: {{from: {}, default: {{position: {}}}, missing: -1}}",
                scope.name, scope.name
            )
            .ok();
            key.push(column);
        }
        // The calendar's timestamp: the root's first, one named like a
        // start if there is one.
        let timestamps: Vec<usize> = (0..found.len())
            .filter(|i| found[*i].kind == Kind::Timestamp && found[*i].names.len() == 1)
            .collect();
        let first_timestamp = timestamps
            .iter()
            .copied()
            .find(|i| {
                let name = found[*i].names[0].to_ascii_lowercase();
                ["start", "begin", "created", "placed", "submitted", "opened"]
                    .iter()
                    .any(|word| name.contains(word))
            })
            .or(timestamps.first().copied());
        // Dimensions: low-cardinality text of one object.
        let mut groups: IndexMap<Vec<&str>, Vec<&Leaf>> = IndexMap::new();
        for (index, leaf) in found.iter().enumerate() {
            let is_id = at == 0 && Some(index) == id;
            if !is_id && low_cardinality(leaf) {
                let object = leaf.names[..leaf.names.len() - 1].to_vec();
                groups.entry(object).or_default().push(leaf);
            }
        }
        let in_dimension = |leaf: &Leaf| {
            groups
                .get(&leaf.names[..leaf.names.len() - 1])
                .is_some_and(|members| members.iter().any(|m| std::ptr::eq(*m, leaf)))
        };
        for (index, leaf) in found.iter().enumerate() {
            if in_dimension(leaf) {
                continue;
            }
            let is_id = at == 0 && Some(index) == id;
            let column = fact.column(
                &format!("{prefix}{}", snake_path(&leaf.names)),
                sql_type(&leaf.kind, is_id),
            );
            fact.explain(&column, why(leaf, is_id));
            let mut binding = format!(
                "{{from: {}, path: \"{}\"{}",
                scope.name,
                leaf.path(),
                convert(&leaf.kind)
            );
            if is_id {
                binding.push_str(", required: true");
                key.insert(0, column.clone());
                if id_like(leaf.names[0]) {
                    replace_by.push(column.clone());
                }
            }
            binding.push('}');
            writeln!(mapping_columns, "  {column}: {binding}").ok();
            if at == 0 && Some(index) == first_timestamp {
                let column = fact.column("DATE_TIME_KEY", "integer".into());
                fact.explain(
                    &column,
                    format!("start of the 15-minute interval of {}", leaf.path()),
                );
                writeln!(
                    mapping_columns,
                    "  # The 15-minute interval of the first timestamp, for the calendar.\n  \
                     {column}: {{from: {}, path: \"{}\", convert: {{date_time_key: 900}}}}",
                    scope.name,
                    leaf.path()
                )
                .ok();
            }
        }
        for (object, members) in &groups {
            let group = if object.is_empty() {
                if at == 0 {
                    "DETAIL".to_owned()
                } else {
                    identifier(&scope.name)
                }
            } else {
                format!("{prefix}{}", snake_path(object))
            };
            let mut table = Table::new(unique_table(
                &format!("{upper}_{group}"),
                &dimension_tables,
                &fact.name,
            ));
            let key_column = fact.column(&format!("{group}_KEY"), "integer not null".into());
            fact.explain(&key_column, format!("the member of {}", table.name));
            table.column("ID", "integer not null".into());
            writeln!(
                dimensions_text,
                "  # Low-cardinality text of {}: one member per distinct combination.\n  \
                 {key_column}:\n    table: {}\n    get_or_create: {{absent: NO_VALUE}}\n    match:",
                if object.is_empty() {
                    format!("the {} itself", scope.name)
                } else {
                    format!("`{}` in the {}", object.join("."), scope.name)
                },
                table.name
            )
            .ok();
            let mut natural = Vec::new();
            for leaf in members {
                let chars = match leaf.kind {
                    Kind::Text { chars } => chars,
                    _ => 255,
                };
                let column = table.column(
                    &snake_path(&leaf.names[object.len()..]),
                    format!("{} not null", text_type(chars.max("NO_VALUE".len()))),
                );
                table.explain(
                    &column,
                    format!(
                        "{}; {} distinct values seen",
                        why(leaf, false),
                        leaf.stats.distinct.len()
                    ),
                );
                writeln!(
                    dimensions_text,
                    "      {column}: {{from: {}, path: \"{}\"}}",
                    scope.name,
                    leaf.path()
                )
                .ok();
                natural.push(column);
            }
            table.column("CREATE_AUDIT_KEY", "bigint not null".into());
            table.natural_key = natural;
            dimension_tables.push(table);
        }
    }
    if id.is_none() {
        return Err(ScaffoldError::NoKey);
    }
    // Key columns are NOT NULL.
    for column in &key {
        if let Some(ty) = fact.columns.get_mut(column)
            && !ty.ends_with("not null")
        {
            ty.push_str(" not null");
        }
    }
    fact.column("CREATE_AUDIT_KEY", "bigint not null".into());
    fact.column("UPDATE_AUDIT_KEY", "bigint not null".into());

    let grain = scopes.last().map_or("event", |s| s.name.as_str());
    let tables = tables_text(&fact, &dimension_tables, &key, grain);
    let mapping = mapping_text(
        &upper,
        &event,
        &fact.name,
        &scopes,
        &key,
        &replace_by,
        &mapping_columns,
        &dimensions_text,
    );
    let mut mapping = mapping;
    if !notes.is_empty() {
        mapping.push_str("\n# Not decided, left out or widened:\n");
        for note in &notes {
            mapping.push_str(&format!("# - {note}\n"));
        }
    }
    let schema = serde_json::to_string_pretty(&schema_of(&event, &root, true))
        .expect("a JSON value serialises");
    Ok(Proposal {
        name: upper,
        event,
        schema: schema + "\n",
        tables,
        mapping,
        notes,
    })
}

/// The arrays of objects reachable from `stats` through objects.
fn object_arrays<'s>(
    stats: &'s Stats,
    names: &mut Vec<&'s str>,
    into: &mut Vec<(Vec<&'s str>, &'s Stats)>,
) {
    for (name, field) in &stats.fields {
        names.push(name);
        if let Some(items) = field.object_items() {
            into.push((names.clone(), items));
        } else if field.objects > 0 {
            object_arrays(field, names, into);
        }
        names.pop();
    }
}

/// How many arrays of objects nest below `items`, itself included.
fn depth(items: &Stats) -> usize {
    let mut arrays = Vec::new();
    object_arrays(items, &mut Vec::new(), &mut arrays);
    1 + arrays.iter().map(|(_, a)| depth(a)).max().unwrap_or(0)
}

/// The leaves of a scope's items: scalars reached through objects. The
/// next scope's array is skipped (its items are that scope's); other
/// arrays are left out with a note.
fn collect<'s>(
    stats: &'s Stats,
    names: &mut Vec<&'s str>,
    next: Option<&str>,
    each: &str,
    into: &mut Vec<Leaf<'s>>,
    notes: &mut Vec<String>,
) -> Result<(), ScaffoldError> {
    for (name, field) in &stats.fields {
        names.push(name);
        let path = path_of(names);
        let shown = if each == "$" {
            path.clone()
        } else {
            format!("{each}{}", &path[1..])
        };
        let kinds = [
            (field.objects > 0, "objects"),
            (field.arrays > 0, "arrays"),
            (field.scalars() > 0, "scalars"),
        ];
        let found: Vec<&str> = kinds
            .iter()
            .filter(|(seen, _)| *seen)
            .map(|(_, k)| *k)
            .collect();
        if found.len() > 1 {
            return Err(ScaffoldError::Conflict {
                path: shown,
                found: found.join(" and "),
            });
        }
        if field.arrays > 0 {
            let array = format!("{path}[*]");
            if Some(array.as_str()) != next {
                let what = if field.object_items().is_some() {
                    "an array of objects beside the grain's chain (a fact row per item of two \
                     unrelated arrays would multiply them)"
                } else {
                    "an array of scalars"
                };
                notes.push(format!(
                    "left out `{shown}[*]`: {what}; map it with a mapping of its own if it matters"
                ));
            }
        } else if field.objects > 0 {
            collect(field, names, next, each, into, notes)?;
        } else {
            match kind(field) {
                Ok(kind) => {
                    if matches!(kind, Kind::Text { .. }) && field.ints > 0 && field.strings > 0 {
                        notes.push(format!(
                            "`{shown}`: integers and strings seen, widened to text"
                        ));
                    }
                    if kind == Kind::Number && field.ints > 0 {
                        notes.push(format!(
                            "`{shown}`: integers and fractions seen, widened to a number (double)"
                        ));
                    }
                    if field.scalars() == 0 {
                        notes.push(format!(
                            "`{shown}`: only null seen; proposed as text, check its type"
                        ));
                    }
                    into.push(Leaf {
                        names: names.clone(),
                        stats: field,
                        kind,
                    });
                }
                Err(why) => notes.push(format!("left out `{shown}`: {why}")),
            }
        }
        names.pop();
    }
    Ok(())
}

/// How a scalar attribute is stored, or why it cannot be.
fn kind(stats: &Stats) -> Result<Kind, &'static str> {
    let only = |count: u64| count > 0 && count == stats.scalars();
    if stats.fractions > 0 {
        // Integers and fractions widen to a number.
        return if stats.fractions + stats.ints == stats.scalars() {
            Ok(Kind::Number)
        } else {
            Err("numbers mixed with other values")
        };
    }
    let bits = stats.ints == 0 || (stats.min >= 0 && stats.max <= 1);
    if stats.bools > 0 && !(bits && stats.strings == 0) {
        return Err("booleans mixed with other values");
    }
    if stats.bools > 0 || (only(stats.ints) && bits) {
        return Ok(Kind::Flag);
    }
    // Epoch milliseconds and ISO-8601 strings, mixed.
    let epoch = stats.ints == 0 || (EPOCH_MS.contains(&stats.min) && EPOCH_MS.contains(&stats.max));
    if stats.strings > 0 && stats.iso == stats.strings && epoch {
        return Ok(Kind::Timestamp);
    }
    if only(stats.ints) {
        if EPOCH_MS.contains(&stats.min) && EPOCH_MS.contains(&stats.max) {
            return Ok(Kind::Timestamp);
        }
        let big = stats.min < i32::MIN.into() || stats.max > i32::MAX.into();
        return Ok(Kind::Int { big });
    }
    // Strings, integers as their decimal text, or nothing but nulls.
    let digits = if stats.ints > 0 {
        stats.max.to_string().len().max(stats.min.to_string().len())
    } else {
        0
    };
    Ok(Kind::Text {
        chars: stats.max_chars.max(digits),
    })
}

fn low_cardinality(leaf: &Leaf) -> bool {
    let stats = leaf.stats;
    matches!(leaf.kind, Kind::Text { .. })
        && stats.ints == 0
        && stats.strings > 0
        && !stats.many
        && !id_like(leaf.names.last().copied().unwrap_or(""))
        && stats.distinct.len() <= LOW_CARDINALITY
        && stats.distinct.len() as u64 * 2 <= stats.strings.max(2)
}

fn id_like(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "id"
        || lower.ends_with("_id")
        || name.ends_with("Id")
        || name.ends_with("ID")
        || lower.contains("uuid")
        || lower.contains("guid")
}

fn sql_type(kind: &Kind, key: bool) -> String {
    let ty = match kind {
        Kind::Flag => "smallint".to_owned(),
        Kind::Int { big: false } => "integer".to_owned(),
        Kind::Int { big: true } | Kind::Timestamp => "bigint".to_owned(),
        Kind::Number => "double".to_owned(),
        Kind::Text { chars } => text_type(*chars),
    };
    if key { ty + " not null" } else { ty }
}

fn convert(kind: &Kind) -> &'static str {
    match kind {
        Kind::Flag => ", convert: flag",
        Kind::Timestamp => ", convert: epoch_seconds",
        Kind::Int { .. } | Kind::Number | Kind::Text { .. } => "",
    }
}

/// The type for values of up to `chars` characters: `varchar` of twice
/// that, rounded up to a usual size (at least 16), or `text` beyond 4000.
fn text_type(chars: usize) -> String {
    const SIZES: [usize; 9] = [16, 32, 64, 128, 255, 512, 1024, 2048, 4000];
    let wanted = chars.saturating_mul(2);
    match SIZES.iter().find(|size| **size >= wanted) {
        Some(size) => format!("varchar({size})"),
        None => "text".to_owned(),
    }
}

/// `segments` → `segment`, `addresses` → `address`, `categories` → `category`.
fn singular(name: &str) -> String {
    let lower = snake(name).to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = lower.strip_suffix("sses") {
        format!("{stem}ss")
    } else if lower.ends_with("ss") {
        lower
    } else if let Some(stem) = lower.strip_suffix("es").filter(|s| s.ends_with(['x', 'h'])) {
        stem.to_owned()
    } else if let Some(stem) = lower.strip_suffix('s') {
        stem.to_owned()
    } else {
        lower
    }
}

/// `userAgent` → `USER_AGENT`, `page-title` → `PAGE_TITLE`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && previous_lower {
                out.push('_');
            }
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_uppercase());
        } else {
            if !out.ends_with('_') && !out.is_empty() {
                out.push('_');
            }
            previous_lower = false;
        }
    }
    let out = out.trim_end_matches('_').to_owned();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("C_{out}")
    } else {
        out
    }
}

fn snake_path(names: &[&str]) -> String {
    names.iter().map(|n| snake(n)).collect::<Vec<_>>().join("_")
}

/// An upper-case identifier within the database's limit.
fn identifier(name: &str) -> String {
    let mut name = snake(name);
    name.truncate(IDENTIFIER_LIMIT);
    name
}

fn unique_lower(base: &str, taken: &[&str]) -> String {
    let mut name = base.to_owned();
    let mut n = 2;
    while taken.contains(&name.as_str()) {
        name = format!("{base}{n}");
        n += 1;
    }
    name
}

fn unique_table(base: &str, tables: &[Table], fact: &str) -> String {
    unique_identifier(base, |name| {
        name == fact || tables.iter().any(|t| t.name == name)
    })
}

/// `base` as an identifier, with a `_2`, `_3`… suffix while `taken`.
fn unique_identifier(base: &str, taken: impl Fn(&str) -> bool) -> String {
    let base = identifier(base);
    let mut name = base.clone();
    let mut n = 2;
    while taken(&name) {
        let suffix = format!("_{n}");
        let mut stem = base.clone();
        stem.truncate(IDENTIFIER_LIMIT - suffix.len());
        name = stem + &suffix;
        n += 1;
    }
    name
}

/// A table being proposed: columns in order with their declarations,
/// and why each was proposed.
struct Table {
    name: String,
    columns: IndexMap<String, String>,
    comments: IndexMap<String, String>,
    natural_key: Vec<String>,
}

impl Table {
    fn new(name: String) -> Table {
        Table {
            name,
            columns: IndexMap::new(),
            comments: IndexMap::new(),
            natural_key: Vec::new(),
        }
    }

    /// Adds a column named `wanted` (made unique and short enough);
    /// returns its name.
    fn column(&mut self, wanted: &str, declaration: String) -> String {
        let name = unique_identifier(wanted, |name| self.columns.contains_key(name));
        self.columns.insert(name.clone(), declaration);
        name
    }

    /// Says why `column` was proposed as it is (a comment beside it).
    fn explain(&mut self, column: &str, why: String) {
        self.comments.insert(column.to_owned(), why);
    }
}

fn tables_text(fact: &Table, dimensions: &[Table], key: &[String], grain: &str) -> String {
    let mut out = String::from(
        "# yaml-language-server: $schema=../catalog.schema.json\n#\n\
         # Proposed by `martmap scaffold` from sample events: check the sizes\n\
         # (varchar: twice the longest value seen) and the nullability.\ntables:\n",
    );
    writeln!(
        out,
        "  {}:\n    role: fact\n    description: One row per {grain} (proposed by martmap scaffold).\n    columns:",
        fact.name
    )
    .ok();
    write_columns(&mut out, fact);
    writeln!(
        out,
        "    primary_key: [{}]\n    audit: {{create: CREATE_AUDIT_KEY, update: UPDATE_AUDIT_KEY}}",
        key.join(", ")
    )
    .ok();
    for table in dimensions {
        writeln!(
            out,
            "\n  {}:\n    role: dimension\n    description: One row per distinct combination, created on first sight (proposed by martmap scaffold).\n    columns:",
            table.name
        )
        .ok();
        write_columns(&mut out, table);
        writeln!(
            out,
            "    primary_key: [ID]\n    surrogate_key: ID\n    natural_key: [{}]\n    audit: {{create: CREATE_AUDIT_KEY}}",
            table.natural_key.join(", ")
        )
        .ok();
    }
    out
}

fn write_columns(out: &mut String, table: &Table) {
    for (column, declaration) in &table.columns {
        match table.comments.get(column) {
            Some(why) => writeln!(out, "      {column}: {declaration}  # {why}"),
            None => writeln!(out, "      {column}: {declaration}"),
        }
        .ok();
    }
}

/// Why a leaf's column has its type, from what was seen.
fn why(leaf: &Leaf, key: bool) -> String {
    let stats = leaf.stats;
    let seen = match &leaf.kind {
        Kind::Flag => "booleans or 0/1 seen".to_owned(),
        Kind::Int { .. } => format!("integers {} to {} seen", stats.min, stats.max),
        Kind::Number if stats.ints > 0 => {
            "integers and fractions seen, widened to a number".to_owned()
        }
        Kind::Number => "numbers with fractions seen".to_owned(),
        Kind::Timestamp => {
            "timestamps seen (epoch milliseconds or ISO-8601), stored as epoch seconds".to_owned()
        }
        Kind::Text { chars } if stats.ints > 0 => {
            format!("text and integers of up to {chars} characters seen")
        }
        Kind::Text { chars } => format!("text of up to {chars} characters seen"),
    };
    if key {
        format!("{seen}; the key, present in every sample")
    } else {
        seen
    }
}

#[allow(clippy::too_many_arguments)]
fn mapping_text(
    name: &str,
    event: &str,
    fact: &str,
    scopes: &[Scope],
    key: &[String],
    replace_by: &[String],
    columns: &str,
    dimensions: &str,
) -> String {
    let mut out = format!(
        "# yaml-language-server: $schema=../schemas/mapping.schema.json\n#\n\
         # Proposed by `martmap scaffold` from sample events. Check it with\n\
         # `martmap validate-mapping`, try it with `martmap test-mapping`.\n\
         name: {name}\ndescription: Events {event} into {fact} (proposed by martmap scaffold).\n\
         event: {event}\nfact: {fact}\n\n"
    );
    if scopes.len() > 1 {
        out.push_str(
            "# The grain: the deepest chain of arrays of objects in the samples, one\n\
             # fact row per innermost item. `outer` keeps a parent without items as\n\
             # one row.\n",
        );
    } else {
        out.push_str("# The grain: one fact row per event (no array of objects in the samples).\n");
    }
    out.push_str("scopes:\n");
    for (at, scope) in scopes.iter().enumerate() {
        if at == 0 {
            writeln!(out, "  {}: {{each: \"$\"}}", scope.name).ok();
        } else {
            writeln!(
                out,
                "  {}: {{each: \"{}\", in: {}, outer: true}}",
                scope.name,
                scope.each,
                scopes[at - 1].name
            )
            .ok();
        }
    }
    writeln!(out, "\nkey: [{}]", key.join(", ")).ok();
    if !replace_by.is_empty() {
        writeln!(
            out,
            "# A later event with the same id replaces all of that id's rows.\nreplace_by: [{}]",
            replace_by.join(", ")
        )
        .ok();
    }
    out.push_str("\ncolumns:\n");
    out.push_str(columns);
    if !dimensions.is_empty() {
        out.push_str("\ndimensions:\n");
        out.push_str(dimensions);
    }
    out
}

/// A JSON Schema accepting what the samples held (and null everywhere
/// below the root: absent and null are alike to a mapping).
fn schema_of(event: &str, stats: &Stats, root: bool) -> Value {
    let seen = [
        (stats.bools, "boolean"),
        (stats.ints, "integer"),
        (stats.fractions, "number"),
        (stats.strings, "string"),
        (stats.objects, "object"),
        (stats.arrays, "array"),
    ];
    let mut types: BTreeSet<&str> = seen
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(_, ty)| *ty)
        .collect();
    if !root {
        types.insert("null");
    }
    let mut schema = serde_json::Map::new();
    if root {
        schema.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        schema.insert("$id".into(), format!("{event}.schema.json").into());
        schema.insert(
            "title".into(),
            format!("{event} events (proposed by martmap scaffold from samples)").into(),
        );
        schema.insert("type".into(), "object".into());
    } else {
        schema.insert(
            "type".into(),
            Value::Array(types.iter().map(|t| Value::from(*t)).collect()),
        );
    }
    if stats.objects > 0 {
        let properties: serde_json::Map<String, Value> = stats
            .fields
            .iter()
            .map(|(name, field)| (name.clone(), schema_of(event, field, false)))
            .collect();
        schema.insert("properties".into(), Value::Object(properties));
    }
    if let Some(items) = &stats.items {
        schema.insert("items".into(), schema_of(event, items, false));
    }
    Value::Object(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_identifiers() {
        assert_eq!(snake("userAgent"), "USER_AGENT");
        assert_eq!(snake("page-title"), "PAGE_TITLE");
        assert_eq!(snake("ixnID"), "IXN_ID");
        assert_eq!(snake("2fa"), "C_2FA");
        assert_eq!(singular("segments"), "segment");
        assert_eq!(singular("categories"), "category");
        assert_eq!(singular("boxes"), "box");
        assert_eq!(singular("address"), "address");
        assert_eq!(text_type(10), "varchar(32)");
        assert_eq!(text_type(36), "varchar(128)");
        assert_eq!(text_type(3000), "text");
    }

    #[test]
    fn types_follow_the_values_seen() {
        let stats = |values: &[Value]| {
            let mut stats = Stats::default();
            for value in values {
                stats.add(value);
            }
            stats
        };
        use serde_json::json;
        assert_eq!(kind(&stats(&[json!(true), json!(false)])), Ok(Kind::Flag));
        assert_eq!(kind(&stats(&[json!(0), json!(1)])), Ok(Kind::Flag));
        assert_eq!(
            kind(&stats(&[json!(5), json!(70000)])),
            Ok(Kind::Int { big: false })
        );
        assert_eq!(
            kind(&stats(&[json!(5), json!(7_000_000_000_i64)])),
            Ok(Kind::Int { big: true })
        );
        assert_eq!(
            kind(&stats(&[json!(1_772_352_930_000_i64)])),
            Ok(Kind::Timestamp)
        );
        assert_eq!(
            kind(&stats(&[json!("2026-03-01T08:15:30.125+01:00")])),
            Ok(Kind::Timestamp)
        );
        assert_eq!(
            kind(&stats(&[json!("abc"), json!(12345)])),
            Ok(Kind::Text { chars: 5 })
        );
        assert_eq!(kind(&stats(&[json!(1.5), json!(2)])), Ok(Kind::Number));
        assert!(kind(&stats(&[json!(1.5), json!("x")])).is_err());
        assert!(kind(&stats(&[json!(true), json!("x")])).is_err());
    }
}
