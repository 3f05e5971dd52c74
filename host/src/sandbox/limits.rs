//! Per-agent sandbox limits the host enforces.
//!
//! The log-level size and count limits (task description, observation and
//! state sizes, queue length, operations per task, ...) are the kernel's
//! [`toka_kernel::Limits`], fixed when a data dir is created so the log
//! always replays the same. These are the ones a host applies to running
//! guests; a run can override them, and a token can narrow them further with
//! `budget` facts (see [`AgentLimits::narrowed`]).

use std::time::Duration;

use crate::capability::budget::Budget;

/// What one agent may consume, with documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    /// Bytes of all the linear memories of the agent's instance together.
    /// Default 64 MiB. Growing past it traps.
    pub memory_bytes: u64,
    /// Elements of all the tables of the agent's instance together.
    /// Default 20 000.
    pub table_elements: usize,
    /// Core and component instances in the agent's store. Default 32.
    pub instances: usize,
    /// Fuel (roughly, WebAssembly instructions) per task, deterministic;
    /// `None` (the default) runs without fuel metering, which would cost up
    /// to a third on loop-heavy guest code (BENCHMARKS.md); the deadline
    /// still stops a runaway task. Set it to meter fuel (and to run agents
    /// whose tokens carry a fuel budget).
    pub fuel_per_task: Option<u64>,
    /// Wall-clock time per task (checked at epoch ticks, every 10 ms).
    /// Default 30 s.
    pub deadline_per_task: Duration,
    /// Bytes of observations one task may emit in all. Default 64 MiB.
    pub observation_bytes_per_task: u64,
    /// Bytes of its own state the agent may read a second (`get-state`,
    /// `state-keys`; each read counts 1 KiB more, each key listed 32
    /// bytes), a second's worth at once; past it a read waits. The pace is
    /// the agent's, not its instance's: a new instance (after a fault, or
    /// for an agent gone cold) goes on from where the last one left it.
    /// An agent's tree (the agent the operator spawned and its
    /// descendants) reads at most four agents' worth together.
    /// Reads copy out of the state under the lock every agent's operations
    /// take. Default 64 MiB.
    pub state_read_bytes_per_second: u64,
    /// Operations and HTTP requests refused a second (by the capability
    /// gate or the kernel), a second's worth at once; past it the refused
    /// call waits. A refusal
    /// is decided under the lock every agent's operations take, and counts
    /// against no quota of operations (it is not applied). Kept past the
    /// instance, and shared by the tree at four agents' worth, as the
    /// reads' pace is. Default 100.
    pub refusals_per_second: u64,
    /// Bytes of stdout captured per task; the rest is dropped. Default 64 KiB.
    pub stdout_bytes: usize,
    /// Bytes of stderr captured per task; the rest is dropped. Default 64 KiB.
    pub stderr_bytes: usize,
    /// `kernel.log` lines forwarded per task; the rest are dropped. Default 1000.
    pub log_lines_per_task: u32,
    /// Bytes of one `kernel.log` line; a longer one is cut (marked `...`).
    /// Default 4 KiB.
    pub log_line_bytes: usize,
    /// Bytes of `kernel.log` lines (64 more for each line) the agent may
    /// have forwarded to the host's log a second, a second's worth at
    /// once; a line past it is dropped (the task's end says how many
    /// were). Shared by the tree at four agents' worth, as the reads' pace
    /// is. Default 256 KiB.
    pub log_bytes_per_second: u64,
    /// Faults in a row (traps, fuel, memory, deadline) after which the agent
    /// is quarantined until `toka agent resume`. Default 3.
    pub quarantine_after: u32,
    /// Bytes of one outbound HTTP request's body; a larger one is refused
    /// before it is journaled. Room for one is taken from the host's
    /// memory for agents while the agent writes it. Default 1 MiB.
    pub http_request_bytes: u64,
    /// Bytes of one outbound HTTP response's body, which the journal keeps
    /// (charged to the agent's log bytes); a larger response is refused
    /// with an error naming the limit, and the refusal recorded. Room for
    /// one is taken from the host's memory for agents
    /// ([`HostConfig::memory_budget`](crate::HostConfig::memory_budget))
    /// for each request out, and the response's own bytes until the agent
    /// drops it. Default 1 MiB.
    pub http_response_bytes: u64,
    /// Time for one outbound HTTP request, from connecting to the last
    /// byte of the response; the agent's own timeouts can only be shorter.
    /// Default 60 s (the task's deadline still applies).
    pub http_timeout: Duration,
    /// Outbound HTTP requests one agent may have outstanding at once (from
    /// handing one over until it drops the response); one more fails at
    /// once with `connection-limit-reached`. Default 16.
    pub http_in_flight: usize,
    /// Resources the instance may hold at once in the host: open files
    /// and directories, streams, pollables, `wasi:http` header maps,
    /// requests, responses and bodies. Each lives in the host's memory,
    /// not the agent's (a header map up to 16 KiB, a request's path and
    /// authority up to 8 KiB each, an unsent body's buffer 32 KiB), so
    /// without a bound an agent could park gigabytes there; one more
    /// traps. Default 256 (an agent with 16 requests in flight holds about
    /// 130): about 8 MiB per instance at most. What header maps, paths,
    /// authorities and unsent bodies hold is also charged to the host's memory for
    /// agents ([`HostConfig::memory_budget`](crate::HostConfig::memory_budget)),
    /// under the agent's tree's share; so are responses, up to
    /// [`http_response_bytes`](Self::http_response_bytes) each.
    pub handles: usize,
}

impl Default for AgentLimits {
    /// The defaults, as documented on each field.
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            table_elements: 20_000,
            instances: 32,
            fuel_per_task: None,
            deadline_per_task: Duration::from_secs(30),
            observation_bytes_per_task: 64 * 1024 * 1024,
            state_read_bytes_per_second: 64 * 1024 * 1024,
            refusals_per_second: 100,
            stdout_bytes: 64 * 1024,
            stderr_bytes: 64 * 1024,
            log_lines_per_task: 1000,
            log_line_bytes: 4096,
            log_bytes_per_second: 256 << 10,
            quarantine_after: 3,
            http_request_bytes: 1 << 20,
            http_response_bytes: 1 << 20,
            http_timeout: Duration::from_secs(60),
            http_in_flight: 16,
            handles: 256,
        }
    }
}

/// Why a token's budgets cannot be applied on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// The token sets a fuel budget but the host does not meter fuel.
    #[error(
        "the token sets a fuel budget ({budget}) but this host does not meter fuel; run it with a fuel limit"
    )]
    FuelNotMetered {
        /// The budget.
        budget: Budget,
    },
}

impl AgentLimits {
    /// These limits, narrowed by a token's budgets: each limit becomes the
    /// smaller of itself and the budget; a budget never raises a limit.
    ///
    /// # Errors
    ///
    /// A fuel budget on limits without fuel metering: the host cannot
    /// enforce it, so the agent does not run (start the host with fuel).
    pub fn narrowed(&self, budgets: &[Budget]) -> Result<AgentLimits, LimitsError> {
        let mut limits = self.clone();
        for budget in budgets {
            match *budget {
                Budget::Memory(bytes) => limits.memory_bytes = limits.memory_bytes.min(bytes),
                Budget::Fuel(fuel) => match limits.fuel_per_task {
                    Some(f) => limits.fuel_per_task = Some(f.min(fuel)),
                    None => return Err(LimitsError::FuelNotMetered { budget: *budget }),
                },
                Budget::DeadlineMs(ms) => {
                    limits.deadline_per_task =
                        limits.deadline_per_task.min(Duration::from_millis(ms));
                }
                Budget::ObservationBytes(bytes) => {
                    limits.observation_bytes_per_task =
                        limits.observation_bytes_per_task.min(bytes);
                }
                // Quotas: the kernel charges them (see `toka_kernel::Quotas`).
                Budget::LogBytes(_)
                | Budget::LogRate(_)
                | Budget::Tasks(_)
                | Budget::TaskRate(_)
                | Budget::OpRate(_)
                | Budget::Children(_) => {}
            }
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_only_narrow() {
        let host = AgentLimits {
            fuel_per_task: Some(1_000_000),
            ..AgentLimits::default()
        };
        let budgets = [
            Budget::Memory(1 << 20),
            Budget::Fuel(u64::MAX),
            Budget::DeadlineMs(500),
            Budget::ObservationBytes(u64::MAX),
        ];
        let narrowed = host.narrowed(&budgets).unwrap();
        assert_eq!(narrowed.memory_bytes, 1 << 20);
        assert_eq!(
            narrowed.fuel_per_task,
            Some(1_000_000),
            "a larger budget does not raise a limit"
        );
        assert_eq!(narrowed.deadline_per_task, Duration::from_millis(500));
        assert_eq!(
            narrowed.observation_bytes_per_task,
            host.observation_bytes_per_task
        );
        assert_eq!(host.narrowed(&[]).unwrap(), host);
    }

    #[test]
    fn a_fuel_budget_needs_a_metering_host() {
        let err = AgentLimits::default()
            .narrowed(&[Budget::Fuel(10)])
            .unwrap_err();
        assert!(err.to_string().contains("does not meter fuel"), "{err}");
    }
}
