//! Agents as actors: one store, one task at a time, in FIFO order.

use std::sync::Arc;

use toka_kernel::{AgentId, Digest, EntityId, Operation, TaskId};
use tokio::sync::Notify;
use wasmtime::Store;

use crate::agent_ctx::{AgentCtx, wit_id};
use crate::bindings::{Agent, wit};
use crate::host::HostInner;
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
                finish(inner, agent, Operation::RecordFault { agent, reason }).await;
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
    let call = live
        .agent
        .toka_agent_handler()
        .call_handle_task(
            &mut live.store,
            &wit::Task {
                id: wit_id(task),
                description,
            },
        )
        .await;
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
            // A trapped instance cannot be entered again: start afresh next time.
            *instance = None;
            let mut reason = format!("trapped: {}", trap_summary(&trap));
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
        finish(inner, agent, Operation::RecordFault { agent, reason }).await;
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

pub(crate) async fn instantiate(inner: &HostInner, agent: AgentId) -> Result<Instance, String> {
    let component: Digest = inner
        .sequencer
        .read(|k| k.state().agent(agent).map(|a| a.component))
        .ok_or("the agent is gone")?;
    let pre = inner.prepared(component).await?;
    let mut store = Store::new(
        inner.components.engine(),
        AgentCtx::new(
            agent,
            inner.sequencer.clone(),
            &inner.agent_limits,
            inner.entropy,
        ),
    );
    store.epoch_deadline_async_yield_and_update(1);
    let agent_bindings = pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| format!("instantiation failed: {}", trap_summary(&e)))?;
    match agent_bindings
        .toka_agent_handler()
        .call_init(&mut store)
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(format!("init failed: {reason}")),
        Err(trap) => return Err(format!("init trapped: {}", trap_summary(&trap))),
    }
    // Output printed during init belongs to no task; log it and move on.
    let end = store.data_mut().end_task();
    log_output(agent, EntityId::SYSTEM, &end.printed);
    Ok(Instance {
        store,
        agent: agent_bindings,
    })
}

/// The first line of a wasmtime error (the trap, without the backtrace).
fn trap_summary(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    let text = if top == root || top.starts_with("error while executing") {
        root
    } else {
        format!("{top}: {root}")
    };
    text.lines().next().unwrap_or_default().to_owned()
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
