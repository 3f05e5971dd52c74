//! Agents as actors: one store, one task at a time, in FIFO order.
//!
//! An actor holds a live instance of its agent's component only while the
//! agent has work: it takes one of the host's places for instances
//! ([`HostConfig::max_instances`](crate::HostConfig::max_instances)) before
//! instantiating, and gives it back when the queue is empty. An idle agent
//! costs its kernel state and nothing else.
//!
//! Who is to blame for a failure decides what is recorded. A trap, a limit
//! the agent ran into, a quota, an `init` that fails: the agent's fault,
//! counted towards its quarantine. The host failing to provide what the
//! agent was entitled to (memory or address space within its limits, a
//! stored component that no longer compiles): a host condition, recorded
//! as such, retried a few times, never counted against the agent.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;
use toka_kernel::{AgentId, Digest, EntityId, Operation, TaskId};

use crate::sandbox::places::Place;
use wasmtime::{Store, UpdateDeadline};

use crate::runtime::guest::{AgentCtx, wit_id};
use crate::runtime::inner::HostInner;
use crate::runtime::instance::Instance;
use crate::runtime::sequencer::{Attachments, Unwanted};
use crate::sandbox::bindings::wit;
use crate::sandbox::dirs::Sandbox;
use crate::sandbox::limiter::{Exceeded, describe_failure, summary};
use crate::sandbox::memory::{Charge, HostFailure};

/// Attempts at a task the host failed to run, before it fails the task
/// (as a host condition, not the agent's fault).
const HOST_ATTEMPTS: u32 = 3;
/// The wait before the second attempt; doubled for each further one.
const HOST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What an actor does next.
enum Step {
    /// Run a task: the head of the queue (its scheduling is durable), or,
    /// after a restart, the task that was running (`started`), again.
    Run {
        task: TaskId,
        description: String,
        started: bool,
    },
    /// Nothing runnable yet.
    Wait,
    /// The agent is gone or terminated.
    Stop,
}

/// Why an instance could not be made or a task could not run.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The agent's doing: a fault.
    Agent(String),
    /// The host's: a condition, retried.
    Host(HostFailure),
    /// Nobody wants the instance any more (see [`abandoned`]): nothing to
    /// record.
    Abandoned,
    /// The agent's token was withdrawn (revoked, expired) before or while
    /// its instance started: the task fails, not the agent's fault.
    Withdrawn(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Agent(reason)
            | Failure::Host(HostFailure { reason, .. })
            | Failure::Withdrawn(reason) => f.write_str(reason),
            Failure::Abandoned => f.write_str("abandoned"),
        }
    }
}

impl HostInner {
    /// Starts the agent's actor if it has none (unless this host runs no
    /// agents). An actor looks for work after each task, so one that runs
    /// already needs no signal.
    pub(crate) fn wake(self: &Arc<Self>, agent: AgentId) {
        if !self.agents_started.load(Ordering::SeqCst) {
            return;
        }
        if self.actors.start(agent) {
            self.runtime.spawn(run(Arc::clone(self), agent));
        }
    }
}

/// Runs `agent`'s tasks while it has work: an actor without work ends (an
/// idle agent is only its kernel state); the next task scheduled for it
/// starts a new one.
///
/// Scheduling is round-robin across agents with runnable tasks: an actor
/// holds a place for an instance while it runs a task, and while another
/// actor waits for one it gives its place back after each task and queues
/// for one again (the places are shared between agent trees, see
/// [`Places`](crate::sandbox::places::Places)), so a busy agent cannot
/// keep one from the others.
pub(crate) async fn run(inner: Arc<HostInner>, agent: AgentId) {
    let mut instance: Option<Instance> = None;
    loop {
        // Made before the host's state is looked at: a drain or stop after
        // that look wakes a task held below.
        let woken = inner.held.notified();
        if inner.sequencer.stopped().is_some() {
            break;
        }
        match next_step(&inner, agent) {
            Step::Stop => break,
            Step::Wait => {
                // No work: keep the instance warm (or give it and its place
                // back), and end unless work came in while this actor was
                // leaving.
                if let Some(instance) = instance.take() {
                    inner.warm.keep(agent, instance);
                }
                inner.actors.end(agent);
                if matches!(next_step(&inner, agent), Step::Run { .. }) && inner.actors.start(agent)
                {
                    continue;
                }
                return;
            }
            Step::Run {
                task,
                description,
                started,
            } => {
                if let Some(wait) = inner.sequencer.task_hold(agent) {
                    // Not yet (the tree's log-bytes debt): the instance
                    // waits warm, without a place, until the debt is paid,
                    // the host drains, or the agent is terminated,
                    // quarantined or given other budgets (a nudge sent
                    // since the look above is kept for this wait).
                    if let Some(instance) = instance.take() {
                        inner.warm.keep(agent, instance);
                    }
                    let nudges = inner.actors.nudges(agent);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = woken => {}
                        () = nudges.notified() => {}
                    }
                    continue;
                }
                run_task(&inner, agent, task, description, started, &mut instance).await;
                // Someone waits for a place: give this one back and queue
                // for one again (the instance is kept warm meanwhile, if it
                // stays among the most recently kept).
                if inner.places.contended() {
                    if let Some(instance) = instance.take() {
                        inner.warm.keep(agent, instance);
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    // Gone, terminated or quarantined: nothing to keep warm.
    drop(inner.warm.take(agent));
    inner.actors.end(agent);
}

fn next_step(inner: &HostInner, agent: AgentId) -> Step {
    if inner.draining.load(Ordering::SeqCst) {
        // Shutting down gracefully: nothing new starts.
        return Step::Wait;
    }
    let committed = inner.sequencer.committed();
    inner.sequencer.read(|kernel| {
        let state = kernel.state();
        let Some(record) = state.agent(agent).filter(|a| a.is_active()) else {
            return Step::Stop;
        };
        // A task still running here was interrupted by a restart (or by a
        // host condition): run it again; its journal answers what it
        // already did.
        if let Some(task) = record.running
            && let Some(t) = state.task(task)
        {
            return Step::Run {
                task,
                description: t.spec.description.clone(),
                started: true,
            };
        }
        let Some(&task) = record.queue.front() else {
            return Step::Wait;
        };
        match state.task(task) {
            // Start a task only once its scheduling is durable.
            Some(t) if t.scheduled_seq <= committed => Step::Run {
                task,
                description: t.spec.description.clone(),
                started: false,
            },
            _ => Step::Wait,
        }
    })
}

async fn run_task(
    inner: &HostInner,
    agent: AgentId,
    task: TaskId,
    description: String,
    mut started: bool,
    instance: &mut Option<Instance>,
) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match attempt_task(inner, agent, task, &description, started, instance).await {
            Outcome::Done => return,
            Outcome::Host(failure) => {
                *instance = None;
                // The warm instances are a cache; what the host lacked
                // (memory within its budget, address space) may be theirs,
                // or, when only the tree's share was spent, its own.
                if failure.tree_share {
                    inner.warm.clear_tree(tree_of(inner, agent));
                } else {
                    inner.warm.clear();
                }
                let reason = inner.clip_reason(&format!(
                    "the host could not run the task: {}",
                    failure.reason
                ));
                tracing::warn!(agent = %agent.short(), task = %task.short(), attempt, %reason, "host condition");
                record(
                    inner,
                    agent,
                    Operation::RecordHostCondition {
                        agent,
                        reason: reason.clone(),
                    },
                )
                .await;
                if attempt >= HOST_ATTEMPTS || inner.sequencer.stopped().is_some() {
                    record(inner, agent, Operation::FailTask { task, reason }).await;
                    return;
                }
                tokio::time::sleep(HOST_RETRY_DELAY * 2u32.pow(attempt - 1)).await;
                // The task may have started before the host failed it.
                started = inner.sequencer.run_started_at(task).is_some();
            }
        }
    }
}

/// How one attempt at a task ended.
enum Outcome {
    /// Recorded: completed, failed, or the agent faulted (or the host is
    /// stopping and nothing more can be recorded).
    Done,
    /// The host failed; nothing recorded about the task yet.
    Host(HostFailure),
}

async fn attempt_task(
    inner: &HostInner,
    agent: AgentId,
    task: TaskId,
    description: &str,
    started: bool,
    instance: &mut Option<Instance>,
) -> Outcome {
    // An agent whose lifetime log bytes are spent runs nothing more: the
    // records of a task (its output among them) would pass the total.
    if let Some(spent) = inner.sequencer.log_total_spent(agent) {
        *instance = None;
        let reason = inner.clip_reason(&spent);
        record(inner, agent, Operation::FailTask { task, reason }).await;
        return Outcome::Done;
    }
    // An agent whose token no longer stands runs nothing more: asked
    // before an instance is made, and again once it holds one (the token
    // may have been withdrawn while it waited for a place).
    let standing = match inner.sequencer.token_stands(agent).await {
        Err(reason) => Err(Failure::Withdrawn(withdrawn(&reason))),
        Ok(()) => match ready(inner, agent, instance).await {
            Ok(()) => inner
                .sequencer
                .token_stands(agent)
                .await
                .map_err(|reason| Failure::Withdrawn(withdrawn(&reason))),
            failed => failed,
        },
    };
    match standing {
        Ok(()) => {}
        Err(Failure::Host(reason)) => return Outcome::Host(reason),
        Err(Failure::Abandoned) => return Outcome::Done,
        Err(Failure::Withdrawn(reason)) => {
            *instance = None;
            let reason = inner.clip_reason(&reason);
            record(inner, agent, Operation::FailTask { task, reason }).await;
            return Outcome::Done;
        }
        Err(Failure::Agent(reason)) => {
            let reason = inner.clip_reason(&format!("the agent could not start: {reason}"));
            record(
                inner,
                agent,
                Operation::FailTask {
                    task,
                    reason: reason.clone(),
                },
            )
            .await;
            fault(inner, agent, Some(reason)).await;
            return Outcome::Done;
        }
    }
    let Some(live) = instance.as_mut() else {
        return Outcome::Done;
    };
    if !started && !record(inner, agent, Operation::StartTask { task }).await {
        return Outcome::Done;
    }
    let Some(start) = inner.sequencer.run_started_at(task) else {
        return Outcome::Done;
    };

    live.store.data_mut().begin_task(task, start);
    let limits = live.sandbox.limits.clone();
    if let Some(fuel) = limits.fuel_per_task
        && let Err(e) = live.store.set_fuel(fuel)
    {
        tracing::warn!(agent = %agent.short(), error = %e, "could not set the task's fuel");
    }
    let wit_task = wit::Task {
        id: wit_id(task),
        description: description.to_owned(),
    };
    let call = tokio::select! {
        call = tokio::time::timeout(
            limits.deadline_per_task,
            live.agent
                .toka_agent_handler()
                .call_handle_task(&mut live.store, &wit_task),
        ) => call.unwrap_or_else(|_| {
            Err(wasmtime::Error::new(Exceeded::Deadline(
                limits.deadline_per_task,
            )))
        }),
        why = abandoned(inner, agent, Some(task)) => Err(wasmtime::Error::new(match why {
            Unwanted::Abandoned => Exceeded::Abandoned,
            Unwanted::Withdrawn(reason) => Exceeded::Revoked(reason),
        })),
    };
    // A task that failed may have failed because its token was withdrawn
    // meanwhile (an operation denied before `abandoned` looked): then that
    // is the reason, and it is not the agent's fault.
    let withdrawn_meanwhile = match &call {
        Ok(Ok(_)) => None,
        _ => match inner.sequencer.still_wanted(agent, Some(task)) {
            Err(Unwanted::Withdrawn(reason)) => Some(reason),
            _ => None,
        },
    };
    let host_failure = live.store.data_mut().limiter.take_host_failure();
    let end = live.store.data_mut().end_task();
    let panic_line = log_output(agent, task, &end.printed);
    if inner.sequencer.stopped().is_some() {
        // The host is going down: the task runs again when it opens.
        return Outcome::Done;
    }

    let max_output = inner.sequencer.read(|k| k.limits().max_output as usize);
    let (op, fault_reason) = match call {
        // A diverged re-run is the host's finding, not the agent's fault.
        _ if end.diverged.is_some() => {
            *instance = None;
            let reason = inner.clip_reason(end.diverged.as_deref().unwrap_or("diverged"));
            (Operation::FailTask { task, reason }, None)
        }
        // The quota hit is recorded already, and counted as a fault.
        Err(_) if end.quota_hit.is_some() => {
            *instance = None;
            let reason = inner.clip_reason(end.quota_hit.as_deref().unwrap_or("quota"));
            record(inner, agent, Operation::FailTask { task, reason }).await;
            quarantine_if_due(inner, agent, None).await;
            return Outcome::Done;
        }
        // Ended from outside: what ended it is recorded; the agent is not
        // at fault.
        Err(trap) if matches!(trap.downcast_ref::<Exceeded>(), Some(Exceeded::Abandoned)) => {
            *instance = None;
            return Outcome::Done;
        }
        // The agent's token was withdrawn: the task fails, and that is not
        // the agent's fault either.
        Err(trap) if matches!(trap.downcast_ref::<Exceeded>(), Some(Exceeded::Revoked(_))) => {
            *instance = None;
            let reason = inner.clip_reason(&describe_failure(&trap, &limits));
            (Operation::FailTask { task, reason }, None)
        }
        // The host could not hold what one of the task's HTTP requests
        // needed: the task stopped there (at its next operation or epoch
        // tick), whatever the guest did or answered after.
        _ if end.host_failure.is_some() => {
            return Outcome::Host(end.host_failure.expect("checked"));
        }
        Err(trap) if is_hosts(&trap, host_failure.is_some()) => {
            return Outcome::Host(host_failure.unwrap_or_else(|| summary(&trap).into()));
        }
        Ok(Err(_)) | Err(_) if withdrawn_meanwhile.is_some() => {
            *instance = None;
            let reason = withdrawn(withdrawn_meanwhile.as_deref().unwrap_or_default());
            (
                Operation::FailTask {
                    task,
                    reason: inner.clip_reason(&reason),
                },
                None,
            )
        }
        // Below the disk's reserve, an output is refused as agents'
        // operations are: it would be written past the reserve.
        Ok(Ok(_)) if let Some(full) = inner.sequencer.disk_refusal() => (
            Operation::FailTask {
                task,
                reason: inner.clip_reason(&format!("the task's output is refused: {full}")),
            },
            None,
        ),
        Ok(Ok(output)) if output.len() > max_output => {
            let reason = format!(
                "task output is {} bytes, over the limit of {max_output}",
                output.len()
            );
            (Operation::FailTask { task, reason }, None)
        }
        Ok(Ok(output)) => (Operation::CompleteTask { task, output }, None),
        Ok(Err(reason)) => (
            Operation::FailTask {
                task,
                reason: inner.clip_reason(&reason),
            },
            None,
        ),
        Err(trap) => {
            // A trapped (or abandoned) instance cannot be entered again:
            // start afresh next time.
            *instance = None;
            let mut reason = describe_failure(&trap, &limits);
            if let Some(line) = panic_line {
                reason.push_str(&format!(" ({line})"));
            }
            let reason = inner.clip_reason(&reason);
            (
                Operation::FailTask {
                    task,
                    reason: reason.clone(),
                },
                Some(reason),
            )
        }
    };
    record(inner, agent, op).await;
    if fault_reason.is_some() {
        fault(inner, agent, fault_reason).await;
    }
    Outcome::Done
}

/// Whether a failed call is the host's doing: the host failed to provide
/// what the agent was entitled to (a growth within its limits), or the
/// operating system refused the host something (memory, address space,
/// disk). Anything else — a trap, a limit, a misuse of a handle — is the
/// agent's.
fn is_hosts(error: &wasmtime::Error, host_failed: bool) -> bool {
    if host_failed {
        return true;
    }
    if error.downcast_ref::<Exceeded>().is_some()
        || error.downcast_ref::<wasmtime::Trap>().is_some()
    {
        return false;
    }
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some() || cause.to_string().contains("(os error")
    })
}

/// Records a fault (`reason`); quarantines the agent once it faulted
/// [`AgentLimits::quarantine_after`](crate::AgentLimits::quarantine_after)
/// times in a row.
async fn fault(inner: &HostInner, agent: AgentId, reason: Option<String>) {
    let Some(reason) = reason else {
        return;
    };
    if record(
        inner,
        agent,
        Operation::RecordFault {
            agent,
            reason: reason.clone(),
        },
    )
    .await
    {
        quarantine_if_due(inner, agent, Some(reason)).await;
    }
}

/// Quarantines the agent if its faults in a row (quota hits included)
/// reached the threshold; `last` is the latest fault's reason.
async fn quarantine_if_due(inner: &HostInner, agent: AgentId, last: Option<String>) {
    let threshold = inner.agent_limits.quarantine_after;
    let faults = inner
        .sequencer
        .read(|k| k.state().agent(agent).map_or(0, |a| a.consecutive_faults));
    if threshold > 0 && faults >= threshold {
        let last = last.map_or_else(String::new, |r| format!("; the last: {r}"));
        let reason = inner.clip_reason(&format!("{faults} faults in a row{last}"));
        tracing::info!(agent = %agent.short(), %reason, "agent quarantined; `toka agent resume` lets it run again");
        record(inner, agent, Operation::QuarantineAgent { agent, reason }).await;
    }
}

/// Submits a host record on the agent's behalf; false if it was refused.
async fn record(inner: &HostInner, agent: AgentId, op: Operation) -> bool {
    let kind = op.kind();
    match inner
        .sequencer
        .submit_system(agent, op, Attachments::default())
        .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            // E.g. the agent was terminated while its task ran.
            tracing::debug!(agent = %agent.short(), %kind, error = %e, "host record refused");
            false
        }
        Err(_) => false,
    }
}

/// An instance for `instance`'s agent, holding a place: the one it holds
/// (unless it is stale), else a warm one (unless stale), else a new one.
///
/// An instance is stale when its token no longer holds the directories it
/// opened (revoked or expired), or the agent was upgraded or given another
/// token since it was made.
async fn ready(
    inner: &HostInner,
    agent: AgentId,
    instance: &mut Option<Instance>,
) -> Result<(), Failure> {
    let stale = |i: &Instance| {
        let now = inner
            .sequencer
            .read(|k| k.state().agent(agent).map(|a| (a.component, a.token)));
        now != Some(i.made_for) || !i.sandbox.still_holds(inner.outbound.as_ref(), agent)
    };
    if instance.as_ref().is_some_and(stale) {
        *instance = None;
    }
    if instance.is_some() {
        return Ok(());
    }
    // The place first: an instance out of the warm set holds one.
    let place = take_place(inner, agent)
        .await
        .map_err(|e| Failure::Host(e.into()))?;
    *instance = Some(match inner.warm.take(agent).filter(|i| !stale(i)) {
        Some(mut warm) => {
            warm.place = Some(place);
            warm
        }
        None => instantiate(inner, agent, place).await?,
    });
    Ok(())
}

/// A new instance of `agent`'s component in its sandbox, holding `place`,
/// initialized; instantiation and `init` run within the sandbox's limits
/// and deadline.
pub(crate) async fn instantiate(
    inner: &HostInner,
    agent: AgentId,
    place: Place,
) -> Result<Instance, Failure> {
    let (component, token): (Digest, Digest) = inner
        .sequencer
        .read(|k| k.state().agent(agent).map(|a| (a.component, a.token)))
        .ok_or_else(|| Failure::Agent("the agent is gone".into()))?;
    let made_for = (component, token);
    let token = inner
        .sequencer
        .token(&token)
        .map_err(|e| Failure::Agent(e.to_string()))?;
    let sandbox = Sandbox::of(
        inner.outbound.as_ref(),
        &token,
        &inner.agent_limits,
        &inner.protected_paths,
        agent,
    )
    .map_err(Failure::Agent)?;
    let pre = inner
        .prepared(component)
        .await
        .map_err(|e| Failure::Host(e.into()))?;
    let memory = Charge {
        budget: Arc::clone(&inner.memory),
        tree: place.tree(),
    };
    let ctx = AgentCtx::new(
        agent,
        inner.sequencer.clone(),
        inner.outbound.clone(),
        &sandbox,
        inner.entropy,
        memory,
        Arc::clone(&inner.kept_paces),
    )
    .map_err(Failure::Agent)?;
    let mut store = Store::new(inner.components.engine(), ctx);
    store.limiter(|ctx| &mut ctx.limiter);
    store.set_max_component_handles(sandbox.limits.handles);
    // What one call may hand the host (strings, lists: the host allocates
    // them outside the agent's memory budget): the largest operation, an
    // observation, and room for the rest; wasmtime's default is 128 MiB.
    let max_observation = inner.sequencer.read(|k| k.limits().max_observation);
    store.set_hostcall_fuel(max_observation as usize + (1 << 20));
    // At every epoch tick: yield to the other agents (and so to
    // [`abandoned`], raced against every call); end the task if the token
    // no longer grants a directory this instance has open, or if the task
    // must stop (a request of it diverged, ran into a quota, or found no
    // room in the host): a guest computing on does not make its next
    // operation.
    store.epoch_deadline_callback(|ctx| {
        if !ctx.data().grants_still_hold() {
            return Err(wasmtime::Error::new(Exceeded::Revoked(
                "it no longer grants a directory the instance holds open".into(),
            )));
        }
        if let Some(why) = ctx.data().must_stop() {
            return Err(wasmtime::Error::msg(why));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store.set_epoch_deadline(1);
    let limits = &sandbox.limits;
    if let Some(fuel) = limits.fuel_per_task {
        store
            .set_fuel(fuel)
            .map_err(|e| Failure::Host(summary(&e).into()))?;
    }
    let start = async {
        let bindings = match pre.instantiate_async(&mut store).await {
            Ok(bindings) => bindings,
            Err(e) => return Err(blame(&mut store, &e, limits, "instantiation failed")),
        };
        match bindings.toka_agent_handler().call_init(&mut store).await {
            Ok(Ok(())) => Ok(bindings),
            Ok(Err(reason)) => Err(Failure::Agent(format!("init failed: {reason}"))),
            Err(trap) => Err(blame(&mut store, &trap, limits, "init failed")),
        }
    };
    let bindings = tokio::select! {
        bindings = tokio::time::timeout(limits.deadline_per_task, start) => {
            bindings.unwrap_or_else(|_| {
                Err(Failure::Agent(format!(
                    "init failed: {}",
                    Exceeded::Deadline(limits.deadline_per_task)
                )))
            })
        }
        why = abandoned(inner, agent, None) => Err(match why {
            Unwanted::Abandoned => Failure::Abandoned,
            Unwanted::Withdrawn(reason) => Failure::Withdrawn(withdrawn(&reason)),
        }),
    }?;
    // Output printed during init belongs to no task; log it and move on.
    let end = store.data_mut().end_task();
    log_output(agent, EntityId::SYSTEM, &end.printed);
    Ok(Instance {
        store,
        agent: bindings,
        sandbox,
        made_for,
        place: Some(place),
    })
}

/// How often a running call is checked for being [`abandoned`].
const ABANDONED_CHECK: Duration = Duration::from_millis(50);

/// Resolves, with the reason, once nobody wants the instance of `agent`
/// to go on with `task` (`None`: its `init`): the agent was terminated or
/// the task ended from outside, the host is stopping, or the agent's token
/// was revoked or expired (see [`Sequencer::still_wanted`]). Raced against
/// each call into the guest, so an unwanted call ends within about
/// [`ABANDONED_CHECK`] whether the guest computes (it yields at every
/// epoch tick) or waits in a host call (an outbound request, a full
/// pending batch): it keeps neither its place nor a CPU until its deadline.
///
/// [`Sequencer::still_wanted`]: crate::runtime::sequencer::Sequencer::still_wanted
async fn abandoned(inner: &HostInner, agent: AgentId, task: Option<TaskId>) -> Unwanted {
    let first = tokio::time::Instant::now() + ABANDONED_CHECK;
    let mut check = tokio::time::interval_at(first, ABANDONED_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        check.tick().await;
        if let Err(why) = inner.sequencer.still_wanted(agent, task) {
            return why;
        }
    }
}

/// The reason a task fails with when its agent's token was withdrawn.
fn withdrawn(reason: &str) -> String {
    Exceeded::Revoked(reason.to_owned()).to_string()
}

/// One of the host's places for instances, for `agent`'s tree (see
/// [`Places`](crate::sandbox::places::Places)).
pub(crate) async fn take_place(inner: &HostInner, agent: AgentId) -> Result<Place, String> {
    inner.places.take(tree_of(inner, agent)).await
}

/// The tree `agent` belongs to (see [`crate::sandbox::places::tree_of`]).
fn tree_of(inner: &HostInner, agent: AgentId) -> AgentId {
    inner
        .sequencer
        .read(|k| crate::sandbox::places::tree_of(k.state(), agent))
}

/// Who is to blame for an error while instantiating or initializing.
fn blame(
    store: &mut Store<AgentCtx>,
    error: &wasmtime::Error,
    limits: &crate::AgentLimits,
    what: &str,
) -> Failure {
    let host_failure = store.data_mut().limiter.take_host_failure();
    if let Some(revoked @ Exceeded::Revoked(_)) = error.downcast_ref::<Exceeded>() {
        return Failure::Withdrawn(revoked.to_string());
    }
    if is_hosts(error, host_failure.is_some()) {
        let failure = host_failure.unwrap_or_else(|| summary(error).into());
        Failure::Host(failure.context(what))
    } else {
        Failure::Agent(format!("{what}: {}", describe_failure(error, limits)))
    }
}

/// Logs what the guest printed; returns the panic message if there is one.
fn log_output(agent: AgentId, task: TaskId, printed: &[(&str, Vec<u8>, u64)]) -> Option<String> {
    let mut panic_line = None;
    for (stream, bytes, dropped) in printed {
        if bytes.is_empty() && *dropped == 0 {
            continue;
        }
        let text = String::from_utf8_lossy(bytes);
        tracing::info!(
            target: "toka::guest",
            agent = %agent.short(),
            task = %task.short(),
            stream,
            dropped,
            "{}",
            crate::text::one_line(text.trim_end())
        );
        if *stream == "stderr" {
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.contains("panicked at") {
                    let message = lines.next().unwrap_or_default().trim();
                    panic_line = Some(format!("guest panicked: {message}"));
                }
            }
        }
    }
    panic_line
}
