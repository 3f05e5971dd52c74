//! The state writes of re-run tasks, by key (see
//! [`toka_kernel::Replaced`]): a re-run's state read at operation `i` is
//! answered with what the key held before it — the value the task's first
//! write of the key replaced, the value its previous write put (read from
//! the log), or the state as it is — at the cost of a lookup, not a walk of
//! the task's journal.

use std::collections::HashMap;

use toka_kernel::{Replaced, Run, TaskId, WorldState};

/// The state writes of re-run tasks, by key: built once per task from its
/// journal, so a re-run's reads cost a lookup each, not a walk of the
/// journal.
#[derive(Default)]
pub(crate) struct Rewrites {
    tasks: HashMap<TaskId, Writes, toka_kernel::IdHash>,
}

/// One task's writes: for each key, the journal positions that wrote it,
/// ascending.
pub(super) struct Writes {
    /// The journal's length when this was built.
    covers: usize,
    by_key: HashMap<String, Vec<usize>>,
}

/// What a key held before a re-run's operation.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Before {
    /// What the state holds now: the first run did not write it at or
    /// after that operation, nor before.
    Untouched,
    /// This (`None`: the key did not exist).
    Value(Option<Vec<u8>>),
    /// What the task's write at this record put.
    PutAt(u64),
}

impl Rewrites {
    /// `task`'s writes, built from `run` unless they are already (those
    /// of tasks no longer running are dropped then).
    pub(super) fn get(&mut self, state: &WorldState, task: TaskId, run: &Run) -> &Writes {
        let fresh = self
            .tasks
            .get(&task)
            .is_some_and(|w| w.covers == run.journal.len());
        if !fresh {
            self.forget_ended(state);
            let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
            for (at, entry) in run.journal.iter().enumerate() {
                let key = match entry.prior() {
                    Replaced::First(prior) => &prior.key,
                    Replaced::Rewrite(rewrite) => &rewrite.key,
                    Replaced::Nothing => continue,
                };
                by_key.entry(key.clone()).or_default().push(at);
            }
            self.tasks.insert(
                task,
                Writes {
                    covers: run.journal.len(),
                    by_key,
                },
            );
        }
        &self.tasks[&task]
    }

    /// Forgets the writes of tasks no longer running.
    pub(super) fn forget_ended(&mut self, state: &WorldState) {
        if !self.tasks.is_empty() {
            self.tasks
                .retain(|t, _| state.task(*t).is_some_and(|t| t.status.run().is_some()));
        }
    }
}

impl Writes {
    /// What `key` held before the operation at `index`.
    pub(super) fn before(&self, run: &Run, index: u32, key: &str) -> Before {
        let Some(writes) = self.by_key.get(key) else {
            return Before::Untouched;
        };
        let next = writes.partition_point(|at| run.journal[*at].index < index);
        let Some(&at) = writes.get(next) else {
            // Every write of it came earlier: the state holds what the last
            // one left.
            return Before::Untouched;
        };
        match run.journal[at].prior() {
            Replaced::First(prior) => Before::Value(prior.value.clone()),
            Replaced::Rewrite(rewrite) if !rewrite.existed => Before::Value(None),
            Replaced::Rewrite(_) => match next.checked_sub(1).map(|p| writes[p]) {
                Some(previous) => Before::PutAt(run.journal[previous].seq),
                // A task's first write of a key is never a rewrite.
                None => Before::Untouched,
            },
            Replaced::Nothing => Before::Untouched,
        }
    }

    /// Each key written at or after the operation at `index`, and whether
    /// it existed before that operation.
    pub(super) fn keys_before<'a>(
        &'a self,
        run: &'a Run,
        index: u32,
    ) -> impl Iterator<Item = (&'a str, bool)> {
        self.by_key.iter().filter_map(move |(key, writes)| {
            let next = writes.partition_point(|at| run.journal[*at].index < index);
            let existed = match run.journal[*writes.get(next)?].prior() {
                Replaced::First(prior) => prior.value.is_some(),
                Replaced::Rewrite(rewrite) => rewrite.existed,
                Replaced::Nothing => return None,
            };
            Some((key.as_str(), existed))
        })
    }
}

#[cfg(test)]
mod tests {
    use toka_kernel::{Gap, JournalEntry, Prior, Replaced, Rewrite, Run, TaskId, Timestamp};

    use crate::runtime::sequencer::rewrites::{Before, Rewrites};

    fn first(key: &str, value: Option<&[u8]>) -> Replaced {
        Replaced::First(Box::new(Prior {
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        }))
    }

    fn rewrite(key: &str, existed: bool) -> Replaced {
        Replaced::Rewrite(Box::new(Rewrite {
            key: key.into(),
            existed,
        }))
    }

    /// A run whose operation `i` is record `100 + i`.
    fn run(priors: Vec<Replaced>) -> Run {
        let journal: Vec<JournalEntry> = priors
            .into_iter()
            .zip(0u32..)
            .map(|(prior, index)| JournalEntry::new(index, 100 + u64::from(index), None, prior))
            .collect();
        let next = u32::try_from(journal.len()).unwrap();
        // Only the kernel makes runs; its encoding is public.
        let bytes = postcard::to_allocvec(&(99u64, Timestamp(1), journal, Vec::<Gap>::new(), next))
            .unwrap();
        postcard::from_bytes(&bytes).unwrap()
    }

    #[test]
    fn a_re_run_reads_each_key_as_it_was_before_each_operation() {
        // The state held k = "a" when the task started, and no j.
        let run = run(vec![
            first("k", Some(b"a")), // 0: put k = "b"
            Replaced::Nothing,      // 1: observe
            rewrite("k", true),     // 2: delete k
            rewrite("k", false),    // 3: put k = "d"
            first("j", None),       // 4: put j
            rewrite("k", true),     // 5: put k = "e"
        ]);
        let task = TaskId::from_u128(7);
        let state = toka_kernel::WorldState::default();
        let mut rewrites = Rewrites::default();
        let writes = rewrites.get(&state, task, &run);
        let before = |index| writes.before(&run, index, "k");
        assert_eq!(before(0), Before::Value(Some(b"a".to_vec())));
        // What operation 0 put, read from its record.
        assert_eq!(before(1), Before::PutAt(100));
        assert_eq!(before(2), Before::PutAt(100));
        assert_eq!(before(3), Before::Value(None));
        assert_eq!(before(4), Before::PutAt(103));
        assert_eq!(before(5), Before::PutAt(103));
        // After the last write: the state as it is.
        assert_eq!(before(6), Before::Untouched);
        assert_eq!(writes.before(&run, 0, "other"), Before::Untouched);

        let keys = |index| {
            let mut keys: Vec<(String, bool)> = writes
                .keys_before(&run, index)
                .map(|(k, e)| (k.to_owned(), e))
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(keys(0), [("j".into(), false), ("k".into(), true)]);
        assert_eq!(keys(3), [("j".into(), false), ("k".into(), false)]);
        assert_eq!(keys(5), [("k".into(), true)]);
        assert!(keys(6).is_empty());
    }
}
