//! Exactly-once re-runs: answering a re-run task's operations from the log.
//!
//! A task interrupted by a crash runs again. Its operations carry their
//! position `(task, index)`; for each index the first run got an answer
//! for, the re-run gets the same answer:
//! - an applied operation is answered with its receipt, from the task's
//!   journal in the kernel state (nothing is applied twice);
//! - a refused one is answered with the same refusal: the index it took
//!   is a gap in the journal, and the details (what was asked, the answer)
//!   are in the `RecordRefusals` record written with the operation after
//!   the gap. A run of identical refusals is one entry, so a flood of
//!   refusals costs at most one record per applied operation.
//!
//! A re-run that asks for something else than the first run did at an index
//! has diverged: the task fails, naming both.

use std::sync::Arc;

use toka_kernel::{
    AgentId, Command, Digest, EntityId, Gap, JournalEntry, OpKey, Operation, Record, Refusal,
    RefusalKind, Run, TaskId, WorldState,
};

use super::core::{Attachments, Core, Receipt, Refused, Request, Sequencer, request_digest};
use super::rewrites::Before;
use crate::capability::rights::Right;
use crate::store::event_store::EventStore;
use crate::text::clip;

impl Core {
    /// The answer for a re-run's operation at `key` if the first run got
    /// one: `Some(Ok(..))` the same answer, `Some(Err(why))` a divergence,
    /// `None` when the index is new (apply it).
    pub(super) fn journal_answer(
        &self,
        key: OpKey,
        request: &Request,
    ) -> Option<Result<Result<Receipt, Refused>, String>> {
        let run = self.kernel.state().task(key.task)?.status.run()?;
        // The common case, a first run: nothing recorded at this index yet.
        if key.index >= run.next_index {
            return None;
        }
        if let Some(entry) = run.entry(key.index) {
            return Some(self.applied_answer(key, entry.clone(), request).map(Ok));
        }
        let gap = *run.gap(key.index)?;
        Some(self.refused_answer(key, gap, request).map(Err))
    }

    /// Answers a re-run's operation from the log, if it is the one recorded.
    fn applied_answer(
        &self,
        key: OpKey,
        entry: JournalEntry,
        request: &Request,
    ) -> Result<Receipt, String> {
        let recorded = self.read_record(key, entry.seq)?;
        let same = match (request, &recorded.command.op) {
            (Request::Op(op), recorded) => op == recorded,
            (Request::Spawn(spawn), recorded_op) if let Some(spec) = recorded_op.spawned() => {
                let names_it = spawn.component == spec.component.to_string()
                    || self
                        .kernel
                        .state()
                        .component(&spec.component)
                        .is_some_and(|c| c.name == spawn.component);
                let normalized: Result<Vec<String>, _> = spawn
                    .rights
                    .iter()
                    .map(|r| r.parse::<Right>().map(|r| r.to_string()))
                    .collect();
                names_it
                    && spawn.name == spec.name
                    && normalized.is_ok_and(|r| r == spec.rights)
                    && self.same_budgets(&spawn.budgets, spec.token, recorded.command.origin)
            }
            _ => false,
        };
        if !same {
            return Err(format!(
                "the re-run diverged at operation {} of task {}: the log has {}, the re-run submitted {}",
                key.index,
                key.task,
                describe(&recorded.command.op),
                describe_request(request)
            ));
        }
        Ok(Receipt {
            seq: entry.seq,
            created: entry.created(),
        })
    }

    /// Whether a re-run's spawn asks for the budgets the first run's child
    /// got: the child's token (stored) against the parent's narrowed by the
    /// request.
    fn same_budgets(&self, requested: &[String], child: Digest, parent: EntityId) -> bool {
        let parsed: Result<Vec<crate::Budget>, _> = requested.iter().map(|b| b.parse()).collect();
        let Ok(requested) = parsed else {
            return false;
        };
        let state = self.kernel.state();
        let Some(parent) = state.agent(parent) else {
            return false;
        };
        let stored = |digest: &Digest| -> Option<crate::Token> {
            let bytes = self.store.token(digest).ok()??;
            crate::Token::parse(&bytes, self.gate.root(), self.gate.max_token()).ok()
        };
        let (Some(child), Some(parent)) = (stored(&child), stored(&parent.token)) else {
            return false;
        };
        let (Ok(got), Ok(held)) = (child.budgets(), parent.budgets()) else {
            return false;
        };
        crate::capability::budget::narrow(&held, &requested) == got
    }

    /// Answers a re-run's operation at an index the first run had refused.
    fn refused_answer(&self, key: OpKey, gap: Gap, request: &Request) -> Result<Refused, String> {
        let Some(details) = gap.details else {
            // The host stopped before it recorded what was refused.
            return Ok(Refused {
                kind: RefusalKind::Other,
                message: format!(
                    "operation {} of task {} was refused when the task first ran",
                    key.index, key.task
                ),
                quota: None,
            });
        };
        let record = self.read_record(key, details)?;
        let Operation::RecordRefusals {
            first, refusals, ..
        } = record.command.op
        else {
            return Err(format!(
                "record {details} does not list the refusals of task {}",
                key.task
            ));
        };
        let mut index = first;
        for refusal in refusals {
            index += refusal.count;
            if key.index >= index {
                continue;
            }
            let digest = request_digest(request);
            if refusal.request != Digest::ZERO && refusal.request != digest {
                return Err(format!(
                    "the re-run diverged at operation {} of task {}: the first run was refused another request there ({}), the re-run submitted {}",
                    key.index,
                    key.task,
                    refusal.message,
                    describe_request(request)
                ));
            }
            return Ok(Refused {
                kind: refusal.kind,
                message: refusal.message,
                quota: None,
            });
        }
        Err(format!(
            "record {details} does not cover operation {} of task {}",
            key.index, key.task
        ))
    }

    fn read_record(&self, key: OpKey, seq: u64) -> Result<Record, String> {
        read_record(&*self.store, key, seq)
    }

    /// Keeps what the gate or the kernel refused a task, until the task's
    /// next applied operation records it. A task not running (it ended
    /// meanwhile, or never ran) has no re-run to meet it: nothing is kept.
    pub(super) fn remember_refusal(&mut self, task: TaskId, request: Digest, refused: &Refused) {
        if self
            .kernel
            .state()
            .task(task)
            .and_then(|t| t.status.run())
            .is_none()
        {
            return;
        }
        let max_reason = self.kernel.limits().max_reason as usize;
        let pending = self.refusals.entry(task).or_default();
        let full = pending.len() >= toka_kernel::MAX_REFUSAL_RUNS;
        match pending.last_mut() {
            Some(last)
                if last.request == request
                    && last.kind == refused.kind
                    && last.message == refused.message =>
            {
                last.count += 1;
            }
            // The last entry stands for everything past the first few.
            Some(last) if full => {
                last.count += 1;
                last.request = Digest::ZERO;
                last.kind = RefusalKind::Other;
                "several operations were refused".clone_into(&mut last.message);
            }
            _ => pending.push(Refusal {
                count: 1,
                request,
                kind: refused.kind,
                message: clip(&refused.message, max_reason),
            }),
        }
    }

    /// After `agent`'s operation in `task` applied: records what was refused
    /// before it, when that left a gap.
    pub(super) fn record_refusals(&mut self, agent: AgentId, task: TaskId) {
        let Some(refusals) = self.refusals.remove(&task) else {
            return;
        };
        let Some(gap) = self
            .kernel
            .state()
            .task(task)
            .and_then(|t| t.status.run())
            .and_then(|run| run.gaps.last().copied())
            .filter(|gap| gap.details.is_none())
        else {
            return;
        };
        let count: u64 = refusals.iter().map(|r| u64::from(r.count)).sum();
        if count != u64::from(gap.count) {
            tracing::warn!(task = %task.short(), count, gap = gap.count, "refusals do not match the gap; not recorded");
            return;
        }
        let time = self.stamp();
        let op = Operation::RecordRefusals {
            task,
            first: gap.first,
            refusals,
        };
        if let Err(e) = self.apply(Command::system(agent, time, op), Attachments::default()) {
            tracing::warn!(task = %task.short(), error = %e, "could not record refusals");
        }
    }
}

impl Sequencer {
    /// The agent's state value at `key`, as the task at `position` saw it
    /// (before its operation `position.index`, if it already applied that).
    ///
    /// # Errors
    ///
    /// Why the log cannot say, for a re-run reading a value its first run
    /// wrote (the record of that write cannot be read).
    pub(crate) fn state_value(
        &self,
        agent: AgentId,
        position: Option<OpKey>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let mut guard = self.lock();
        let core = &mut *guard;
        let state = core.kernel.state();
        let current = || state.agent(agent).and_then(|a| a.state.get(key).cloned());
        let Some((position, run)) = rerun(state, position) else {
            core.rewrites.forget_ended(state);
            return Ok(current());
        };
        let seq =
            match core
                .rewrites
                .get(state, position.task, run)
                .before(run, position.index, key)
            {
                Before::Untouched => return Ok(current()),
                Before::Value(value) => return Ok(value),
                Before::PutAt(seq) => seq,
            };
        // Read outside the lock (records never change): a re-run reading
        // again and again costs its own thread, not every other agent's.
        let store = Arc::clone(&core.store);
        drop(guard);
        match read_record(&*store, position, seq)?.command.op {
            Operation::PutState { key: put, value } if put == key => Ok(Some(value)),
            _ => Err(format!(
                "record {seq} is not the write of `{}` the journal of task {} names",
                clip(key, 64),
                position.task
            )),
        }
    }

    /// The agent's state keys, as the task at `position` saw them.
    pub(crate) fn state_keys(&self, agent: AgentId, position: Option<OpKey>) -> Vec<String> {
        let mut guard = self.lock();
        let core = &mut *guard;
        let state = core.kernel.state();
        let current = || state.agent(agent).into_iter().flat_map(|a| a.state.keys());
        let Some((position, run)) = rerun(state, position) else {
            core.rewrites.forget_ended(state);
            // In order already: no set to build under the lock.
            return current().cloned().collect();
        };
        let mut keys: std::collections::BTreeSet<String> = current().cloned().collect();
        let writes = core.rewrites.get(state, position.task, run);
        for (key, existed) in writes.keys_before(run, position.index) {
            if existed {
                keys.insert(key.to_owned());
            } else {
                keys.remove(key);
            }
        }
        keys.into_iter().collect()
    }
}

/// Record `seq`, which operation `key.index` of task `key.task` needs.
fn read_record(store: &dyn EventStore, key: OpKey, seq: u64) -> Result<Record, String> {
    store
        .record(seq)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("record {seq} is missing from the store"))
        .and_then(|bytes| Record::decode(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "cannot read operation {} of task {}: {e}",
                key.index, key.task
            )
        })
}

/// A re-run's read at `position`, with its task's run, when the first run
/// applied operations at or after it (else the current state answers).
fn rerun(state: &WorldState, position: Option<OpKey>) -> Option<(OpKey, &Run)> {
    let position = position?;
    let run = state.task(position.task)?.status.run()?;
    let last = run.journal.last()?;
    (last.index >= position.index).then_some((position, run))
}

/// An operation, briefly, for divergence messages.
fn describe(op: &Operation) -> String {
    clip(&format!("{op:?}"), 300)
}

fn describe_request(request: &Request) -> String {
    match request {
        Request::Op(op) => describe(op),
        Request::Spawn(spawn) => clip(&format!("{spawn:?}"), 300),
    }
}
