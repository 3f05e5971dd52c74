//! Per-agent store state (the wasmtime-wasi view pattern) and the host side
//! of the `kernel` interface.

use toka_kernel::{AgentId, EntityId, KernelError, OpKey, Operation, TaskId, TaskSpec};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::toka::agent::kernel;
use crate::bindings::wit;
use crate::capture::Capture;
use crate::limits::AgentLimits;
use crate::sequencer::{Request, Sequencer};

/// The data of one agent's wasmtime `Store`.
pub(crate) struct AgentCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    agent: AgentId,
    sequencer: Sequencer,
    /// The task being handled, and the index its next operation gets.
    task: Option<(TaskId, u32)>,
    stdout: Capture,
    stderr: Capture,
    log_lines: u32,
    limits: AgentLimits,
}

impl AgentCtx {
    /// A deny-by-default context: no preopened directories, no environment,
    /// no arguments, no network, stdin closed, stdout/stderr captured.
    pub(crate) fn new(agent: AgentId, sequencer: Sequencer, limits: &AgentLimits) -> Self {
        let stdout = Capture::new(limits.stdout_bytes);
        let stderr = Capture::new(limits.stderr_bytes);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            agent,
            sequencer,
            task: None,
            stdout,
            stderr,
            log_lines: 0,
            limits: limits.clone(),
        }
    }

    /// Marks the start of a task: its operations carry `(task, 0)`, `(task, 1)`, ...
    pub(crate) fn begin_task(&mut self, task: TaskId) {
        self.task = Some((task, 0));
        self.log_lines = 0;
    }

    /// Marks the end of the task and hands back what the guest printed.
    pub(crate) fn end_task(&mut self) -> [(&'static str, Vec<u8>, u64); 2] {
        self.task = None;
        let (out, out_dropped) = self.stdout.take();
        let (err, err_dropped) = self.stderr.take();
        [("stdout", out, out_dropped), ("stderr", err, err_dropped)]
    }
}

impl WasiView for AgentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for AgentCtx {}

impl kernel::Host for AgentCtx {
    async fn submit(
        &mut self,
        op: wit::Operation,
    ) -> wasmtime::Result<Result<wit::Receipt, wit::Error>> {
        let cause = self.task.map(|(task, index)| OpKey { task, index });
        let request = match into_request(self.agent, op) {
            Ok(request) => request,
            Err(e) => return Ok(Err(e)),
        };
        match self
            .sequencer
            .submit_agent(self.agent, cause, request)
            .await
        {
            Ok(Ok(receipt)) => {
                if let Some((_, index)) = &mut self.task {
                    *index += 1;
                }
                Ok(Ok(wit::Receipt {
                    seq: receipt.seq,
                    created: receipt.created.map(wit_id),
                }))
            }
            Ok(Err(rejected)) => Ok(Err(to_wit_error(rejected))),
            // The host is going down: end the guest's call.
            Err(stopped) => Err(wasmtime::Error::msg(stopped.to_string())),
        }
    }

    fn self_id(&mut self) -> wasmtime::Result<wit::EntityId> {
        Ok(wit_id(self.agent))
    }

    fn get_state(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.sequencer.read(|k| {
            k.state()
                .agent(self.agent)
                .and_then(|a| a.state.get(&key).cloned())
        }))
    }

    fn state_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.sequencer.read(|k| {
            k.state()
                .agent(self.agent)
                .map(|a| a.state.keys().cloned().collect())
                .unwrap_or_default()
        }))
    }

    fn log(&mut self, level: wit::LogLevel, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > self.limits.log_lines_per_task {
            return Ok(());
        }
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

/// Translates the WIT operation into what the sequencer applies.
fn into_request(origin: AgentId, op: wit::Operation) -> Result<Request, wit::Error> {
    Ok(Request::Op(match op {
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
            return Ok(Request::Spawn {
                component: s.component,
                name: s.name,
                rights: s.rights,
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
    }))
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
pub(crate) fn to_wit_error(e: KernelError) -> wit::Error {
    match e {
        KernelError::CapabilityDenied {
            operation, reason, ..
        } => wit::Error::CapabilityDenied(format!("{operation}: {reason}")),
        KernelError::UnknownEntity { kind, id } => {
            wit::Error::UnknownEntity(format!("no {kind} {id}"))
        }
        KernelError::LimitExceeded { limit, max, actual } => {
            wit::Error::LimitExceeded(format!("{limit} would be {actual}, the limit is {max}"))
        }
        KernelError::UnsupportedOperation { family } => wit::Error::Unsupported(format!(
            "no handler is registered for extension family `{family}`"
        )),
        KernelError::InvalidOperation { operation, message } => {
            wit::Error::InvalidOperation(format!("{operation}: {message}"))
        }
        other => wit::Error::Other(other.to_string()),
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
}
