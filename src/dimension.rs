//! Dimension resolution: natural key values → surrogate keys.
//!
//! [`Members`] caches every member seen, per dimension of a plan, and asks a
//! [`MemberStore`] (implemented by the database sink) only for the members it
//! has not seen. New cache entries are kept aside until the batch's
//! transaction commits ([`Members::keep`]), so a rolled-back batch never
//! leaves ids in the cache that the database does not hold.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

pub use crate::plan::Member;
use crate::plan::Row;

/// Where members live: finds the ids of existing members and creates the
/// missing ones (race-safe), returning every id asked for.
pub trait MemberStore {
    type Error;

    /// The ids of `members` of dimension `dimension`, creating those that do
    /// not exist. Returns them in order, with how many were created.
    fn find_or_create(
        &mut self,
        dimension: usize,
        members: &[&Member],
    ) -> impl std::future::Future<Output = Result<(Vec<i64>, usize), Self::Error>>;
}

/// A batch's distinct members per dimension, and which of them each row has:
/// the cache is then asked once per member, not once per row.
#[derive(Debug, Default)]
pub struct Distinct {
    rows: usize,
    /// Per dimension, the members in first-seen order.
    members: Vec<Vec<Member>>,
    /// Per dimension, per row, the position of its member in `members`.
    of_row: Vec<Vec<usize>>,
}

impl Distinct {
    pub fn of<'r>(rows: impl IntoIterator<Item = &'r Row>, dimensions: usize) -> Distinct {
        let mut distinct = Distinct {
            rows: 0,
            members: vec![Vec::new(); dimensions],
            of_row: vec![Vec::new(); dimensions],
        };
        let mut seen: Vec<HashMap<&Member, usize>> = vec![HashMap::new(); dimensions];
        let mut previous: Vec<Option<(&Member, usize)>> = vec![None; dimensions];
        for row in rows {
            distinct.rows += 1;
            for (dimension, member) in row.members.iter().enumerate() {
                // Rows of one session or page share their member: skip hashing it again.
                let at = match previous[dimension] {
                    Some((last, at)) if Arc::ptr_eq(last, member) => at,
                    _ => {
                        let members = &mut distinct.members[dimension];
                        *seen[dimension].entry(member).or_insert_with(|| {
                            members.push(member.clone());
                            members.len() - 1
                        })
                    }
                };
                previous[dimension] = Some((member, at));
                distinct.of_row[dimension].push(at);
            }
        }
        distinct
    }
}

/// The member cache of one plan.
#[derive(Debug, Default)]
pub struct Members {
    known: Vec<HashMap<Member, i64>>,
}

/// The surrogate keys of a batch's rows, and what the batch learnt.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Per row, per dimension, the surrogate key.
    pub keys: Vec<Vec<i64>>,
    /// How many members the store created.
    pub created: usize,
    learnt: Vec<(usize, Member, i64)>,
}

impl Members {
    pub fn new(dimensions: usize) -> Self {
        Members {
            known: vec![HashMap::new(); dimensions],
        }
    }

    /// Seeds the cache with members known to exist (static dimensions).
    pub fn preload(&mut self, dimension: usize, members: impl IntoIterator<Item = (Member, i64)>) {
        self.known[dimension].extend(members);
    }

    pub fn get(&self, dimension: usize, member: &Member) -> Option<i64> {
        self.known[dimension].get(member).copied()
    }

    /// The surrogate keys of every row, asking `store` for unseen members.
    pub async fn resolve<S: MemberStore>(
        &self,
        store: &mut S,
        distinct: &Distinct,
    ) -> Result<Resolved, S::Error> {
        let mut resolved = Resolved::default();
        let mut keys = vec![vec![0i64; self.known.len()]; distinct.rows];
        for (dimension, known) in self.known.iter().enumerate() {
            let members = &distinct.members[dimension];
            let mut ids: Vec<i64> = Vec::with_capacity(members.len());
            let mut unseen: Vec<usize> = Vec::new();
            for (at, member) in members.iter().enumerate() {
                match known.get(member) {
                    Some(&id) => ids.push(id),
                    None => {
                        ids.push(0);
                        unseen.push(at);
                    }
                }
            }
            if !unseen.is_empty() {
                let asked: Vec<&Member> = unseen.iter().map(|&at| &members[at]).collect();
                let (found, created) = store.find_or_create(dimension, &asked).await?;
                resolved.created += created;
                for (&at, id) in unseen.iter().zip(found) {
                    ids[at] = id;
                    resolved.learnt.push((dimension, members[at].clone(), id));
                }
            }
            for (row, &at) in distinct.of_row[dimension].iter().enumerate() {
                keys[row][dimension] = ids[at];
            }
        }
        resolved.keys = keys;
        Ok(resolved)
    }

    /// Keeps what a committed batch learnt.
    pub fn keep(&mut self, resolved: Resolved) {
        for (dimension, member, id) in resolved.learnt {
            self.known[dimension].insert(member, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that numbers members in order of creation.
    #[derive(Default)]
    struct Counting {
        created: Vec<Member>,
        asked: usize,
    }

    impl MemberStore for Counting {
        type Error = ();

        async fn find_or_create(
            &mut self,
            _: usize,
            members: &[&Member],
        ) -> Result<(Vec<i64>, usize), ()> {
            self.asked += 1;
            let mut ids = Vec::new();
            let mut created = 0;
            for member in members {
                let at = match self.created.iter().position(|m| m == *member) {
                    Some(at) => at,
                    None => {
                        created += 1;
                        self.created.push((*member).clone());
                        self.created.len() - 1
                    }
                };
                ids.push(at as i64 + 1);
            }
            Ok((ids, created))
        }
    }

    fn row(member: &str) -> Row {
        Row {
            values: Vec::new(),
            members: vec![vec![Arc::from(member)].into()],
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn asks_once_per_unseen_member_and_caches_after_keep() {
        let mut members = Members::new(1);
        let mut store = Counting::default();
        let rows = [row("a"), row("b"), row("a")];
        let distinct = Distinct::of(&rows, 1);
        let first = block_on(members.resolve(&mut store, &distinct)).unwrap();
        assert_eq!(
            (first.keys.clone(), first.created, store.asked),
            (vec![vec![1], vec![2], vec![1]], 2, 1)
        );
        members.keep(first);
        let again = block_on(members.resolve(&mut store, &distinct)).unwrap();
        assert_eq!(
            (again.keys, again.created, store.asked),
            (vec![vec![1], vec![2], vec![1]], 0, 1)
        );
    }

    #[test]
    fn a_batch_that_is_not_kept_leaves_the_cache_alone() {
        let members = Members::new(1);
        let mut store = Counting::default();
        let rows = [row("a")];
        let _rolled_back = block_on(members.resolve(&mut store, &Distinct::of(&rows, 1))).unwrap();
        assert_eq!(members.get(0, &Member::from(vec![Arc::from("a")])), None);
    }
}
