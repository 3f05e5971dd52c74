//! Per-agent store state (the wasmtime-wasi view pattern) and the host side
//! of the `kernel` interface.

use toka_kernel::{AgentId, EntityId, Limits, OpKey, Operation, RefusalKind, TaskId, TaskSpec};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::runtime::paces;
use crate::runtime::sequencer::{Halt, Refused, Request, Sequencer, Spawn};
use crate::sandbox::Effects;
use crate::sandbox::bindings::toka::agent::kernel;
use crate::sandbox::bindings::wit;
use crate::sandbox::capture::Capture;
use crate::sandbox::dirs::Sandbox;
use crate::sandbox::http::{HttpGate, Stop, TaskLine};
use crate::sandbox::limiter::Exceeded;
use crate::sandbox::limiter::Limiter;
use crate::sandbox::limits::AgentLimits;
use crate::sandbox::memory::{Charge, HostFailure};
use crate::sandbox::task_inputs::TaskInputs;

/// The data of one agent's wasmtime `Store`.
pub(crate) struct AgentCtx {
    wasi: WasiCtx,
    http: HttpGate,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    agent: AgentId,
    sequencer: Sequencer,
    effects: std::sync::Arc<dyn Effects>,
    /// The task being handled, and the index its next operation gets.
    task: Option<(TaskId, u32)>,
    /// The clocks and randomness the guest sees, reset per task.
    inputs: TaskInputs,
    /// The running task, shared with its outbound requests; says when the
    /// task must stop (a re-run diverged, by an operation here or by a
    /// request; a request ran into a quota): it fails with that.
    line: std::sync::Arc<TaskLine>,
    /// Set when the agent ran into a quota: the task fails with it, and the
    /// quota hit (recorded by the sequencer) counts as its fault.
    quota_hit: Option<String>,
    /// The kernel's limits, to refuse oversized requests before they reach
    /// the sequencer (they are fixed for a log).
    kernel_limits: Limits,
    stdout: Capture,
    stderr: Capture,
    log_lines: u32,
    /// `kernel.log` lines of the task dropped (past the task's lines or
    /// the agent's pace); said once at the task's end.
    log_dropped: u32,
    /// Bytes of observations the task emitted so far.
    observed: u64,
    /// The distinct state keys the task wrote, hashed (keyed per process:
    /// an agent cannot make its keys collide). The kernel remembers each
    /// until the task ends, for a re-run (see [`TASK_KEYS_PER_STATE_KEY`]).
    task_keys: std::collections::HashSet<u64>,
    keys_hasher: std::collections::hash_map::RandomState,
    /// How fast the agent may read its state and be refused (kept across
    /// its tasks, and in `kept_paces` when the instance is dropped).
    paces: super::paces::Paces,
    kept_paces: std::sync::Arc<super::paces::Kept>,
    limits: AgentLimits,
    /// What the instance was opened with, re-checked at every epoch tick.
    sandbox: Sandbox,
}

/// What a task left behind in the agent's context.
pub(crate) struct TaskEnd {
    /// `(stream, bytes, bytes dropped)` for stdout and stderr.
    pub(crate) printed: [(&'static str, Vec<u8>, u64); 2],
    /// Why a re-run of the task diverged from the log, if it did.
    pub(crate) diverged: Option<String>,
    /// The quota the task ran into, if it did.
    pub(crate) quota_hit: Option<String>,
    /// What the host could not hold for the task's HTTP exchanges, if
    /// anything: the task stopped there, as the host's condition.
    pub(crate) host_failure: Option<HostFailure>,
}

impl AgentCtx {
    /// A deny-by-default context: only the directories the sandbox grants,
    /// no environment, no arguments, no sockets, stdin closed, stdout/stderr
    /// captured, HTTP gated per request, and clocks and randomness
    /// deterministic per task (keyed by `entropy`, a host secret); its
    /// memories charged to `memory`; its reads of state and its refusals
    /// paced, with its tree's (`memory.tree`), from where the agent's last
    /// instance left off (`kept_paces`).
    ///
    /// # Errors
    ///
    /// When a granted directory cannot be opened.
    pub(crate) fn new(
        agent: AgentId,
        sequencer: Sequencer,
        effects: std::sync::Arc<dyn Effects>,
        sandbox: &Sandbox,
        entropy: [u8; 32],
        memory: Charge,
        kept_paces: std::sync::Arc<super::paces::Kept>,
    ) -> Result<Self, String> {
        let limits = &sandbox.limits;
        let stdout = Capture::new(limits.stdout_bytes);
        let stderr = Capture::new(limits.stderr_bytes);
        let inputs = TaskInputs::new(entropy, agent);
        let kernel_limits = sequencer.read(|k| k.limits().clone());
        let mut wasi = WasiCtx::builder();
        sandbox.preopen(&mut wasi)?;
        let wasi = wasi
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(inputs.wall_clock())
            .monotonic_clock(inputs.monotonic_clock())
            .secure_random(inputs.random())
            .insecure_random(inputs.random())
            .max_random_size(crate::sandbox::task_inputs::MAX_RANDOM_BYTES)
            .insecure_random_seed(agent.as_u128())
            .build();
        let line = std::sync::Arc::new(TaskLine::default());
        let paces = kept_paces.take(agent, memory.tree, limits);
        Ok(Self {
            wasi,
            http: HttpGate::new(
                agent,
                std::sync::Arc::clone(&effects),
                limits,
                kernel_limits.max_reason as usize,
                std::sync::Arc::clone(&line),
                paces.refusals.clone(),
                memory.clone(),
            ),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits.handles);
                table
            },
            limiter: sandbox.limiter(memory),
            agent,
            sequencer,
            effects,
            task: None,
            inputs,
            line,
            quota_hit: None,
            kernel_limits,
            stdout,
            stderr,
            log_lines: 0,
            log_dropped: 0,
            observed: 0,
            task_keys: std::collections::HashSet::new(),
            keys_hasher: std::collections::hash_map::RandomState::new(),
            paces,
            kept_paces,
            limits: limits.clone(),
            sandbox: sandbox.clone(),
        })
    }

    /// Resources the host holds for the instance now (at most
    /// [`AgentLimits::handles`](crate::AgentLimits::handles)).
    pub(crate) fn resources_held(&mut self) -> usize {
        self.table.iter_mut().count()
    }

    /// Why the running task must stop, if it must (one atomic load when
    /// it need not; asked at every operation and epoch tick).
    pub(crate) fn must_stop(&self) -> Option<String> {
        self.line.stopped().map(|stop| match stop {
            Stop::Diverged(why) | Stop::Quota(why) => why,
            Stop::Host(failure) => failure.reason,
        })
    }

    /// Whether the instance's HTTP exchanges hold anything in the host (a
    /// request out, or a response not dropped): such an instance is not
    /// kept warm, or what they hold would stay charged while it idles.
    pub(crate) fn exchanges_held(&self) -> bool {
        self.http.hooks.outstanding() > 0
    }

    /// Whether the token still grants the directories the instance holds
    /// open (cheap when it holds none).
    pub(crate) fn grants_still_hold(&self) -> bool {
        self.sandbox.still_holds(self.effects.as_ref(), self.agent)
    }

    /// Marks the start of a task (started at logical time `start`): its
    /// operations carry `(task, 0)`, `(task, 1)`, ...; its clocks and random
    /// bytes start over.
    pub(crate) fn begin_task(&mut self, task: TaskId, start: toka_kernel::Timestamp) {
        self.task = Some((task, 0));
        self.line.begin(task);
        self.quota_hit = None;
        self.log_lines = 0;
        self.log_dropped = 0;
        self.observed = 0;
        self.task_keys.clear();
        self.inputs.begin(task, start);
    }

    /// Marks the end of the task; hands back what the guest printed and
    /// whether a re-run diverged.
    pub(crate) fn end_task(&mut self) -> TaskEnd {
        if self.log_dropped > 0 {
            tracing::info!(target: "toka::guest", agent = %self.agent.short(), dropped = self.log_dropped, "kernel.log lines dropped (past the task's lines or the agent's pace)");
            self.log_dropped = 0;
        }
        self.task = None;
        // An instance kept for the next task keeps no more room than its
        // header maps and requests hold.
        self.http.held.settle(&mut self.table);
        let (out, out_dropped) = self.stdout.take();
        let (err, err_dropped) = self.stderr.take();
        let (mut diverged, mut host_failure) = (None, None);
        let mut quota_hit = self.quota_hit.take();
        match self.line.end() {
            Some(Stop::Diverged(why)) => diverged = Some(why),
            Some(Stop::Quota(why)) => quota_hit = quota_hit.or(Some(why)),
            Some(Stop::Host(failure)) => host_failure = Some(failure),
            None => {}
        }
        TaskEnd {
            printed: [("stdout", out, out_dropped), ("stderr", err, err_dropped)],
            diverged,
            quota_hit,
            host_failure,
        }
    }

    /// Where the task's next operation goes.
    fn position(&self) -> Option<OpKey> {
        self.task.map(|(task, index)| OpKey { task, index })
    }

    /// Counts the key a state write of the running task names, refusing a
    /// new one past [`TASK_KEYS_PER_STATE_KEY`] times the keys an agent may
    /// hold. (It depends only on what the task asked before: a re-run
    /// meets it alike.)
    fn count_key(&mut self, op: &wit::Operation) -> Result<(), wit::Error> {
        let key = match op {
            wit::Operation::PutState(e) => &e.key,
            wit::Operation::DeleteState(key) => key,
            _ => return Ok(()),
        };
        if self.task.is_none() {
            return Ok(());
        }
        let max = self.kernel_limits.max_state_keys as usize * TASK_KEYS_PER_STATE_KEY;
        let hash = std::hash::BuildHasher::hash_one(&self.keys_hasher, key);
        if self.task_keys.len() >= max && !self.task_keys.contains(&hash) {
            return Err(wit::Error::LimitExceeded(format!(
                "distinct state keys written in one task would be {}, the limit is {max} ({TASK_KEYS_PER_STATE_KEY} times the keys an agent may hold: the host remembers each until the task ends)",
                max + 1
            )));
        }
        self.task_keys.insert(hash);
        Ok(())
    }

    /// Charges a read of `bytes` to the agent's pace, and waits as long as
    /// it says (see [`paces`]).
    async fn read_paced(&mut self, bytes: u64) {
        paces::pause(self.paces.reads.charge(bytes)).await;
    }
}

/// Adds what the host provides an agent to a linker: WASI (deny-by-default
/// at run time), outgoing `wasi:http`, and the `toka:agent` kernel.
///
/// # Errors
///
/// When wasmtime refuses a definition (it does not).
pub(crate) fn add_imports(
    linker: &mut wasmtime::component::Linker<AgentCtx>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    crate::sandbox::held::bound(linker)?;
    crate::sandbox::bindings::Agent::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        linker,
        |ctx| ctx,
    )
}

impl WasiView for AgentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AgentCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

impl crate::sandbox::held::Holds for AgentCtx {
    fn holds(&mut self) -> (&mut ResourceTable, &mut crate::sandbox::held::Held) {
        (&mut self.table, &mut self.http.held)
    }

    fn host_failed(&mut self, failure: crate::sandbox::memory::HostFailure) {
        self.line.stop(crate::sandbox::http::Stop::Host(failure));
    }
}

impl Drop for AgentCtx {
    fn drop(&mut self) {
        self.kept_paces.keep(self.agent, self.paces.clone());
    }
}

impl wit::Host for AgentCtx {}

impl kernel::Host for AgentCtx {
    async fn submit(
        &mut self,
        op: wit::Operation,
    ) -> wasmtime::Result<Result<wit::Receipt, wit::Error>> {
        // A request of this task diverged, ran into a quota or found no
        // room in the host: the task ends here, as it would for an
        // operation.
        if let Some(why) = self.must_stop() {
            return Err(wasmtime::Error::msg(why));
        }
        let cause = self.position();
        // Refusals that depend only on the request (and on what this task
        // did before) come first, outside the sequencer: nothing is encoded,
        // hashed or cached for them, and a re-run meets them again alike.
        let observed = match &op {
            wit::Operation::Observe(o) => o.data.len() as u64,
            _ => 0,
        };
        if let Err(e) = check_sizes(&op, &self.kernel_limits) {
            return Ok(Err(e));
        }
        let max = self.limits.observation_bytes_per_task;
        if self.observed + observed > max {
            return Ok(Err(wit::Error::LimitExceeded(format!(
                "observation bytes per task would be {}, the limit is {max}",
                self.observed + observed
            ))));
        }
        if let Err(e) = self.count_key(&op) {
            return Ok(Err(e));
        }
        let request = into_request(self.agent, op);
        let answer = self
            .sequencer
            .submit_agent(self.agent, cause, request)
            .await;
        // Whatever the sequencer answered took the index: a re-run gets the
        // same answer there.
        if answer.is_ok()
            && let Some((_, index)) = &mut self.task
        {
            *index += 1;
        }
        match answer {
            Ok(Ok(receipt)) => {
                self.observed += observed;
                Ok(Ok(wit::Receipt {
                    seq: receipt.seq,
                    created: receipt.created.map(wit_id),
                }))
            }
            Ok(Err(refused)) if refused.quota.is_some() => {
                // The task ends: a runaway must not keep asking.
                self.quota_hit = Some(refused.message.clone());
                Err(wasmtime::Error::new(Exceeded::Quota(refused.message)))
            }
            Ok(Err(refused)) => {
                // Decided under the lock, and counted by no quota: paced.
                paces::refused(&self.paces.refusals).await;
                Ok(Err(to_wit_error(refused)))
            }
            // The host is going down: end the guest's call.
            Err(Halt::Stopped(stopped)) => Err(wasmtime::Error::msg(stopped.to_string())),
            // The task cannot go on: end the call; the task fails with this.
            Err(Halt::Diverged(why)) => {
                self.line.stop(Stop::Diverged(why.clone()));
                Err(wasmtime::Error::msg(why))
            }
        }
    }

    fn self_id(&mut self) -> wasmtime::Result<wit::EntityId> {
        Ok(wit_id(self.agent))
    }

    async fn get_state(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let value = self
            .sequencer
            .state_value(self.agent, self.position(), &key)
            .map_err(|why| {
                // A re-run that cannot read what its first run wrote cannot
                // go on: the task fails with this.
                self.line.stop(Stop::Diverged(why.clone()));
                wasmtime::Error::msg(why)
            })?;
        let read = key.len() + value.as_ref().map_or(0, Vec::len);
        self.read_paced(read as u64 + paces::PER_READ).await;
        Ok(value)
    }

    async fn state_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        let keys = self.sequencer.state_keys(self.agent, self.position());
        let read: u64 = keys.iter().map(|k| k.len() as u64 + paces::PER_ITEM).sum();
        self.read_paced(read + paces::PER_READ).await;
        Ok(keys)
    }

    fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        let message = crate::text::clip(&message, self.limits.log_line_bytes);
        if self.log_lines > self.limits.log_lines_per_task
            || !self
                .paces
                .logs
                .try_spend(message.len() as u64 + LOG_LINE_COST)
        {
            self.log_dropped += 1;
            return Ok(());
        }
        // One line in the host's log, whatever the agent put in it: a line
        // break could forge another agent's line (or the host's).
        let message = crate::text::one_line(&message);
        let agent = self.agent.short();
        match level {
            wit::LogLevel::Trace => tracing::trace!(target: "toka::guest", %agent, "{message}"),
            wit::LogLevel::Debug => tracing::debug!(target: "toka::guest", %agent, "{message}"),
            wit::LogLevel::Info => tracing::info!(target: "toka::guest", %agent, "{message}"),
            wit::LogLevel::Warn => tracing::warn!(target: "toka::guest", %agent, "{message}"),
            wit::LogLevel::Error => tracing::error!(target: "toka::guest", %agent, "{message}"),
        }
        Ok(())
    }
}

/// How many times the keys an agent may hold one task may write distinct
/// keys of. The kernel keeps, for each key a task writes, what the write
/// replaced (for a re-run) until the task ends; without a bound, a task
/// deleting 100 000 made-up keys of 256 bytes held ~70 MB there, outside
/// the state budget.
pub(crate) const TASK_KEYS_PER_STATE_KEY: usize = 2;

/// What a `kernel.log` line costs the agent's pace beyond its bytes.
const LOG_LINE_COST: u64 = 64;

/// What a right or budget takes in a token beyond its text, at least.
const FACT_BYTES: usize = 8;

/// Refuses a request whose sizes pass the kernel's limits (or the gate's
/// bound on the names it checks) before anything is done with it.
fn check_sizes(op: &wit::Operation, limits: &Limits) -> Result<(), wit::Error> {
    use toka_kernel::Limit;
    let check = |limit: Limit, max: u64, actual: usize| {
        let actual = actual as u64;
        if actual > max {
            return Err(wit::Error::LimitExceeded(format!(
                "{limit} would be {actual}, the limit is {max}"
            )));
        }
        Ok(())
    };
    let name = u64::from(limits.max_name);
    let target = crate::capability::policy::MAX_TARGET as u64;
    match op {
        wit::Operation::Observe(o) => {
            check(
                Limit::Observation,
                limits.max_observation.into(),
                o.data.len(),
            )?;
            if let Some(topic) = &o.topic {
                check(Limit::Topic, limits.max_topic.into(), topic.len())?;
            }
        }
        wit::Operation::ScheduleTask(s) => {
            check(
                Limit::TaskDescription,
                limits.max_task_description.into(),
                s.description.len(),
            )?;
        }
        wit::Operation::SpawnAgent(s) => {
            check(Limit::Name, name, s.name.len())?;
            check(Limit::Name, target, s.component.len())?;
            // A token holds at most `max_token` bytes: so do the rights and
            // budgets that would go into one, each a fact of some bytes
            // more than its text (so a list of empty strings is bounded
            // too: millions of them cost as much to encode and hash).
            let delegated: usize = s
                .rights
                .iter()
                .chain(&s.budgets)
                .map(|entry| entry.len() + FACT_BYTES)
                .sum();
            check(Limit::Token, limits.max_token.into(), delegated)?;
        }
        wit::Operation::TerminateAgent(_) => {}
        wit::Operation::PutState(e) => {
            check(Limit::StateKey, limits.max_state_key.into(), e.key.len())?;
            check(
                Limit::StateValue,
                limits.max_state_value.into(),
                e.value.len(),
            )?;
        }
        wit::Operation::DeleteState(key) => {
            check(Limit::StateKey, limits.max_state_key.into(), key.len())?;
        }
        wit::Operation::Extension(x) => {
            check(Limit::Name, name.min(target), x.family.len())?;
            check(
                Limit::ExtensionPayload,
                limits.max_extension_payload.into(),
                x.payload.len(),
            )?;
        }
    }
    Ok(())
}

/// Translates the WIT operation into what the sequencer applies.
fn into_request(origin: AgentId, op: wit::Operation) -> Request {
    Request::Op(match op {
        wit::Operation::Observe(o) => Operation::EmitObservation {
            topic: o.topic,
            data: o.data,
        },
        wit::Operation::ScheduleTask(s) => Operation::ScheduleTask {
            agent: entity_id(s.agent),
            spec: TaskSpec {
                description: s.description,
            },
        },
        wit::Operation::SpawnAgent(s) => {
            return Request::Spawn(Spawn {
                component: s.component,
                name: s.name,
                rights: s.rights,
                budgets: s.budgets,
                child: None,
            });
        }
        wit::Operation::TerminateAgent(agent) => Operation::TerminateAgent {
            agent: entity_id(agent),
            reason: format!("terminated by agent {origin}"),
        },
        wit::Operation::PutState(e) => Operation::PutState {
            key: e.key,
            value: e.value,
        },
        wit::Operation::DeleteState(key) => Operation::DeleteState { key },
        wit::Operation::Extension(x) => Operation::Extension {
            family: x.family,
            opcode: x.opcode,
            payload: x.payload,
        },
    })
}

pub(crate) fn wit_id(id: EntityId) -> wit::EntityId {
    let v = id.as_u128();
    wit::EntityId {
        hi: (v >> 64) as u64,
        lo: v as u64,
    }
}

pub(crate) fn entity_id(id: wit::EntityId) -> EntityId {
    EntityId::from_u128((u128::from(id.hi) << 64) | u128::from(id.lo))
}

/// The guest-facing form of a refusal: a variant a person can act on. The
/// variant names the category, so the message does not repeat it.
pub(crate) fn to_wit_error(refused: Refused) -> wit::Error {
    let Refused { kind, message, .. } = refused;
    match kind {
        RefusalKind::CapabilityDenied => wit::Error::CapabilityDenied(message),
        RefusalKind::UnknownEntity => wit::Error::UnknownEntity(message),
        RefusalKind::LimitExceeded | RefusalKind::QuotaExceeded => {
            wit::Error::LimitExceeded(message)
        }
        RefusalKind::Unsupported => wit::Error::Unsupported(message),
        RefusalKind::InvalidOperation => wit::Error::InvalidOperation(message),
        RefusalKind::Other => wit::Error::Other(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cross_the_boundary_unchanged() {
        let id = EntityId::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let wire = wit_id(id);
        assert_eq!(
            (wire.hi, wire.lo),
            (0x0102_0304_0506_0708, 0x090a_0b0c_0d0e_0f10)
        );
        assert_eq!(entity_id(wire), id);
    }

    #[test]
    fn a_spawn_s_rights_are_bounded_in_number_as_well_as_in_bytes() {
        let limits = Limits::default();
        let spawn = |rights: Vec<String>| {
            wit::Operation::SpawnAgent(wit::Spawn {
                component: "c".into(),
                name: "n".into(),
                rights,
                budgets: Vec::new(),
            })
        };
        assert!(check_sizes(&spawn(vec!["observe".into(); 100]), &limits).is_ok());
        // A million empty strings: no bytes of text, but a million facts to
        // encode and hash under the sequencer's lock.
        let err = check_sizes(&spawn(vec![String::new(); 1_000_000]), &limits).unwrap_err();
        assert!(
            matches!(&err, wit::Error::LimitExceeded(m) if m.contains("would be 8000000")),
            "{err:?}"
        );
    }
}
