//! Agents as actors: one store, one task at a time, in FIFO order.

use std::sync::Arc;

use toka_kernel::{AgentId, Digest, EntityId, Operation, TaskId};
use tokio::sync::Notify;
use wasmtime::Store;

use crate::agent_ctx::{AgentCtx, wit_id};
use crate::bindings::{Agent, wit};
use crate::host::HostInner;
use crate::sandbox::{Exceeded, Sandbox, describe_failure, summary};
use crate::sequencer::Attachments;

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

/// A live instance of the agent's component.
pub(crate) struct Instance {
    store: Store<AgentCtx>,
    agent: Agent,
    sandbox: Sandbox,
}

/// Runs `agent`'s tasks until it is terminated or the host shuts down.
pub(crate) async fn run(inner: Arc<HostInner>, agent: AgentId, wake: Arc<Notify>) {
    let mut instance: Option<Instance> = None;
    loop {
        match next_step(&inner, agent) {
            Step::Stop => break,
            Step::Wait => wake.notified().await,
            Step::Run {
                task,
                description,
                started,
            } => {
                run_task(&inner, agent, task, description, started, &mut instance).await;
            }
        }
        if inner.sequencer.stopped().is_some() {
            break;
        }
    }
    inner.forget_actor(agent);
}

fn next_step(inner: &HostInner, agent: AgentId) -> Step {
    let committed = inner.sequencer.committed();
    inner.sequencer.read(|kernel| {
        let state = kernel.state();
        let Some(record) = state.agent(agent).filter(|a| a.is_active()) else {
            return Step::Stop;
        };
        // A task still running here was interrupted by a restart: run it
        // again; its journal answers what it already did.
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
    started: bool,
    instance: &mut Option<Instance>,
) {
    // A revoked or expired token closes the directories it opened: start a
    // new instance without them.
    if instance
        .as_ref()
        .is_some_and(|i| !i.sandbox.still_holds(&inner.sequencer, agent))
    {
        *instance = None;
    }
    if instance.is_none() {
        match instantiate(inner, agent).await {
            Ok(i) => *instance = Some(i),
            Err(reason) => {
                let reason = inner.clip_reason(&format!("the agent could not start: {reason}"));
                finish(
                    inner,
                    agent,
                    Operation::FailTask {
                        task,
                        reason: reason.clone(),
                    },
                )
                .await;
                fault(inner, agent, reason).await;
                return;
            }
        }
    }
    let Some(live) = instance.as_mut() else {
        return;
    };
    if !started && !finish(inner, agent, Operation::StartTask { task }).await {
        return;
    }
    let Some(start) = inner.sequencer.run_started_at(task) else {
        return;
    };

    live.store.data_mut().begin_task(task, start);
    let limits = live.sandbox.limits.clone();
    if let Some(fuel) = limits.fuel_per_task
        && let Err(e) = live.store.set_fuel(fuel)
    {
        tracing::warn!(agent = %agent.short(), error = %e, "could not set the task's fuel");
    }
    let call = tokio::time::timeout(
        limits.deadline_per_task,
        live.agent.toka_agent_handler().call_handle_task(
            &mut live.store,
            &wit::Task {
                id: wit_id(task),
                description,
            },
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(wasmtime::Error::new(Exceeded::Deadline(
            limits.deadline_per_task,
        )))
    });
    let end = live.store.data_mut().end_task();
    let panic_line = log_output(agent, task, &end.printed);

    let max_output = inner.sequencer.read(|k| k.limits().max_output as usize);
    let (op, fault) = match call {
        // A diverged re-run is the host's finding, not the agent's fault.
        _ if end.diverged.is_some() => {
            *instance = None;
            let reason = inner.clip_reason(end.diverged.as_deref().unwrap_or_default());
            (Operation::FailTask { task, reason }, None)
        }
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
    finish(inner, agent, op).await;
    if let Some(reason) = fault {
        self::fault(inner, agent, reason).await;
    }
}

/// Records a fault; quarantines the agent once it faulted
/// [`AgentLimits::quarantine_after`](crate::AgentLimits::quarantine_after)
/// times in a row.
async fn fault(inner: &HostInner, agent: AgentId, reason: String) {
    if !finish(
        inner,
        agent,
        Operation::RecordFault {
            agent,
            reason: reason.clone(),
        },
    )
    .await
    {
        return;
    }
    let threshold = inner.agent_limits.quarantine_after;
    let faults = inner
        .sequencer
        .read(|k| k.state().agent(agent).map_or(0, |a| a.consecutive_faults));
    if threshold > 0 && faults >= threshold {
        let reason = inner.clip_reason(&format!("{faults} faults in a row; the last: {reason}"));
        tracing::info!(agent = %agent.short(), %reason, "agent quarantined; `toka agent resume` lets it run again");
        finish(inner, agent, Operation::QuarantineAgent { agent, reason }).await;
    }
}

/// Submits a host record on the agent's behalf; false if it was refused.
async fn finish(inner: &HostInner, agent: AgentId, op: Operation) -> bool {
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

/// A new instance of `agent`'s component in its sandbox, initialized;
/// instantiation and `init` run within the sandbox's limits and deadline.
pub(crate) async fn instantiate(inner: &HostInner, agent: AgentId) -> Result<Instance, String> {
    let component: Digest = inner
        .sequencer
        .read(|k| k.state().agent(agent).map(|a| a.component))
        .ok_or("the agent is gone")?;
    let sandbox = Sandbox::of(&inner.sequencer, &inner.agent_limits, agent)?;
    let pre = inner.prepared(component).await?;
    let ctx = AgentCtx::new(agent, inner.sequencer.clone(), &sandbox, inner.entropy)?;
    let mut store = Store::new(inner.components.engine(), ctx);
    store.limiter(|ctx| &mut ctx.limiter);
    store.epoch_deadline_async_yield_and_update(1);
    let limits = &sandbox.limits;
    if let Some(fuel) = limits.fuel_per_task {
        store.set_fuel(fuel).map_err(|e| summary(&e))?;
    }
    let start = async {
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("instantiation failed: {}", describe_failure(&e, limits)))?;
        match bindings.toka_agent_handler().call_init(&mut store).await {
            Ok(Ok(())) => Ok(bindings),
            Ok(Err(reason)) => Err(format!("init failed: {reason}")),
            Err(trap) => Err(format!("init failed: {}", describe_failure(&trap, limits))),
        }
    };
    let bindings = tokio::time::timeout(limits.deadline_per_task, start)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "init failed: {}",
                Exceeded::Deadline(limits.deadline_per_task)
            ))
        })?;
    // Output printed during init belongs to no task; log it and move on.
    let end = store.data_mut().end_task();
    log_output(agent, EntityId::SYSTEM, &end.printed);
    Ok(Instance {
        store,
        agent: bindings,
        sandbox,
    })
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
            text.trim_end()
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
