//! Drift between a mapping and the events it reads: the attribute paths
//! events carry that the mapping does not read, and the paths it reads
//! that no event carried.
//!
//! Paths are absolute from the event's root, in one normal form: names as
//! `.name` (or `['odd name']`), every array element as `[*]`. An event
//! carries the path of each of its leaves (scalars, nulls, empty arrays and
//! objects). A mapping reads the absolute path of every value and default
//! (its scope's `each` paths, then its own), and the whole subtree below
//! it; a scope's `each` path reads only the array itself, its items being
//! read by the values of that scope.

use std::collections::BTreeMap;

use serde_json::Value;

/// An absolute path a mapping reads, and what reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub path: String,
    /// `column SESSION_ID`, `COBROWSE_PAGE.PAGE_DOMAIN default`, `scope page`.
    pub by: String,
    /// Whether the leaves below `path` are read too (values), or only the
    /// array itself (a scope's items).
    pub subtree: bool,
}

/// Appends a member name to a path in normal form: `.name`, or
/// `['odd name']` when it is not a plain identifier.
pub fn push_name(path: &mut String, name: &str) {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        path.push('.');
        path.push_str(name);
    } else {
        path.push_str("['");
        path.push_str(&name.replace('\\', "\\\\").replace('\'', "\\'"));
        path.push_str("']");
    }
}

/// What the events of a sample or a stream carried, against one mapping.
#[derive(Debug, Clone)]
pub struct Coverage {
    reads: Vec<Read>,
    /// Events that carried each read path (or something below it).
    carried: Vec<u64>,
    /// Paths carried but not read: events carrying each, and an example.
    unread: BTreeMap<String, Unread>,
    /// Distinct unread paths kept at most; more are counted in `dropped`.
    cap: usize,
    /// Occurrences of unread paths beyond the cap.
    pub dropped: u64,
    pub events: u64,
}

/// A path events carried that the mapping does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub events: u64,
    /// Of `events`, those since the last [`Coverage::drain`].
    pending: u64,
    /// The first value seen there, as JSON, cut to 60 characters.
    pub example: String,
}

impl Coverage {
    /// Coverage of the paths in `reads`, keeping at most `cap` distinct
    /// unread paths.
    pub fn new(reads: Vec<Read>, cap: usize) -> Coverage {
        Coverage {
            carried: vec![0; reads.len()],
            reads,
            unread: BTreeMap::new(),
            cap,
            dropped: 0,
            events: 0,
        }
    }

    /// Counts the paths one event carries.
    pub fn add(&mut self, event: &Value) {
        self.events += 1;
        let mut leaves: BTreeMap<String, &Value> = BTreeMap::new();
        collect_leaves(event, &mut "$".to_owned(), &mut leaves);
        let mut hit = vec![false; self.reads.len()];
        for (path, value) in leaves {
            let mut read = false;
            for (at, candidate) in self.reads.iter().enumerate() {
                if below(&candidate.path, &path) {
                    hit[at] = true;
                    read |= candidate.subtree;
                }
                read |= is_empty_array_of(candidate, &path);
            }
            if read {
                continue;
            }
            if let Some(unread) = self.unread.get_mut(&path) {
                unread.events += 1;
                unread.pending += 1;
            } else if self.unread.len() < self.cap {
                self.unread.insert(
                    path,
                    Unread {
                        events: 1,
                        pending: 1,
                        example: example(value),
                    },
                );
            } else {
                self.dropped += 1;
            }
        }
        for (count, hit) in self.carried.iter_mut().zip(hit) {
            *count += u64::from(hit);
        }
    }

    /// The unread paths carried since the last drain, with how many
    /// events carried each.
    pub fn drain(&mut self) -> Vec<(String, u64)> {
        self.unread
            .iter_mut()
            .filter(|(_, unread)| unread.pending > 0)
            .map(|(path, unread)| (path.clone(), std::mem::take(&mut unread.pending)))
            .collect()
    }

    /// Paths carried but not read, in path order.
    pub fn unread(&self) -> impl Iterator<Item = (&str, &Unread)> {
        self.unread
            .iter()
            .map(|(path, unread)| (path.as_str(), unread))
    }

    /// Paths read that no event carried, each with what reads it (one
    /// line per path: several readers are joined).
    pub fn never_carried(&self) -> Vec<(&str, String)> {
        let mut found: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (read, count) in self.reads.iter().zip(&self.carried) {
            if *count == 0 {
                found.entry(&read.path).or_default().push(&read.by);
            }
        }
        // A path read by one reader and carried under another is carried.
        found.retain(|path, _| {
            self.reads
                .iter()
                .zip(&self.carried)
                .all(|(read, count)| read.path != *path || *count == 0)
        });
        found
            .into_iter()
            .map(|(path, by)| (path, by.join(", ")))
            .collect()
    }
}

/// Whether `path` is `at` or below it.
fn below(at: &str, path: &str) -> bool {
    path.strip_prefix(at)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Whether `path` is the empty array a scope explodes (its items, when it
/// has some, are read by that scope's values).
fn is_empty_array_of(read: &Read, path: &str) -> bool {
    !read.subtree && read.path.strip_suffix("[*]") == Some(path)
}

fn collect_leaves<'v>(value: &'v Value, path: &mut String, into: &mut BTreeMap<String, &'v Value>) {
    let length = path.len();
    match value {
        Value::Object(members) if !members.is_empty() => {
            for (name, member) in members {
                push_name(path, name);
                collect_leaves(member, path, into);
                path.truncate(length);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            path.push_str("[*]");
            for item in items {
                collect_leaves(item, path, into);
            }
            path.truncate(length);
        }
        _ => {
            into.entry(path.clone()).or_insert(value);
        }
    }
}

fn example(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(path: &str, subtree: bool) -> Read {
        Read {
            path: path.into(),
            by: format!("reader of {path}"),
            subtree,
        }
    }

    #[test]
    fn leaves_are_counted_once_per_event_and_matched_against_reads() {
        let mut coverage = Coverage::new(
            vec![
                read("$.id", true),
                read("$.items[*]", false),
                read("$.items[*].sku", true),
                read("$.never", true),
                read("$.creator", true),
            ],
            10,
        );
        coverage.add(&json!({
            "id": "a", "items": [{"sku": 1, "qty": 2}, {"sku": 3, "qty": 4}],
            "creator": {"name": "x", "os": {"v": 1}}, "odd key": null
        }));
        coverage.add(&json!({"id": "b", "items": [], "tags": ["t"]}));
        let unread: Vec<(&str, u64, &str)> = coverage
            .unread()
            .map(|(path, u)| (path, u.events, u.example.as_str()))
            .collect();
        assert_eq!(
            unread,
            [
                ("$.items[*].qty", 1, "2"),
                ("$.tags[*]", 1, "\"t\""),
                ("$['odd key']", 1, "null"),
            ]
        );
        assert_eq!(
            coverage.never_carried(),
            [("$.never", "reader of $.never".to_owned())]
        );
        assert_eq!(coverage.events, 2);
    }

    #[test]
    fn distinct_unread_paths_are_capped() {
        let mut coverage = Coverage::new(vec![], 2);
        coverage.add(&json!({"a": 1, "b": 2, "c": 3}));
        coverage.add(&json!({"a": 1, "d": 4}));
        assert_eq!(coverage.unread().count(), 2);
        assert_eq!(coverage.dropped, 2);
    }
}
