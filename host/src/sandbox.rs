//! One agent instance's sandbox: the limits it runs under and the host
//! directories its token opens to it.
//!
//! The limits are the host's [`AgentLimits`] narrowed by the token's
//! budgets. The directories are exactly those named by `fs.read PATH` /
//! `fs.write PATH` rights the token grants now (read-only where only read is
//! granted), each visible to the guest at the same path. Everything else a
//! WASI guest could reach is closed: no other files, no environment, no
//! arguments, no sockets; outgoing HTTP goes through the gate per request
//! (see `http_gate`).

use std::collections::BTreeMap;
use std::time::Duration;

use toka_kernel::AgentId;
use wasmtime::{ResourceLimiter, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::gate::Check;
use crate::limits::AgentLimits;
use crate::rights::{Right, RightOp};
use crate::sequencer::Sequencer;
use crate::units::Size;

/// What an instance of one agent may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sandbox {
    /// The effective limits.
    pub(crate) limits: AgentLimits,
    /// The `fs.*` rights of the token's authority block: what the token
    /// could grant; each is checked against the gate.
    candidates: Vec<Right>,
    /// The directories granted now, by path: writable or read-only.
    dirs: BTreeMap<String, FsPerms>,
}

impl Sandbox {
    /// The sandbox `agent` gets now, from its token and the host's limits.
    ///
    /// # Errors
    ///
    /// Why the agent cannot run: its token cannot be read, states a budget
    /// this host cannot enforce, ...
    pub(crate) fn of(
        sequencer: &Sequencer,
        host_limits: &AgentLimits,
        agent: AgentId,
    ) -> Result<Sandbox, String> {
        let digest = sequencer
            .read(|k| k.state().agent(agent).map(|a| a.token))
            .ok_or("the agent is gone")?;
        let token = sequencer.token(&digest)?;
        let budgets = token.budgets().map_err(|e| e.to_string())?;
        let limits = host_limits.narrowed(&budgets)?;
        let candidates: Vec<Right> = token
            .authority_rights()
            .into_iter()
            .filter(|r| matches!(r.op(), RightOp::FsRead | RightOp::FsWrite))
            .collect();
        let dirs = granted_dirs(sequencer, agent, &candidates);
        Ok(Sandbox {
            limits,
            candidates,
            dirs,
        })
    }

    /// Whether the directories granted are still exactly these (a token can
    /// be revoked or expire while an instance lives). Cheap when the token
    /// names no directory; otherwise one cached gate decision per right.
    pub(crate) fn still_holds(&self, sequencer: &Sequencer, agent: AgentId) -> bool {
        self.candidates.is_empty() || granted_dirs(sequencer, agent, &self.candidates) == self.dirs
    }

    /// Opens the granted directories in `wasi`.
    ///
    /// # Errors
    ///
    /// Naming a directory that cannot be opened (e.g. it does not exist).
    pub(crate) fn preopen(&self, wasi: &mut WasiCtxBuilder) -> Result<(), String> {
        for (path, perms) in &self.dirs {
            wasi.preopened_dir(path, path, *perms)
                .map_err(|e| format!("cannot open the granted directory {path}: {e:#}"))?;
        }
        Ok(())
    }

    /// The resource limiter for the instance's store.
    pub(crate) fn limiter(&self) -> Limiter {
        Limiter {
            memory_bytes: self.limits.memory_bytes,
            table_elements: self.limits.table_elements,
            instances: self.limits.instances,
        }
    }
}

/// The directories the gate grants `agent` among `candidates`, by path; a
/// path granted for writing is writable even if also granted for reading.
fn granted_dirs(
    sequencer: &Sequencer,
    agent: AgentId,
    candidates: &[Right],
) -> BTreeMap<String, FsPerms> {
    let mut dirs = BTreeMap::new();
    for right in candidates {
        let check = Check::literal(right.op().name(), right.target());
        let (Some(path), Ok(())) = (
            right.target(),
            sequencer.authorize_effect(agent, &check, false),
        ) else {
            continue;
        };
        let perms = if right.op() == RightOp::FsWrite {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        dirs.entry(path.to_owned())
            .and_modify(|p| {
                if perms == FsPerms::ReadWrite {
                    *p = perms;
                }
            })
            .or_insert(perms);
    }
    dirs
}

/// A limit an instance ran into; the task fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exceeded {
    /// A linear memory would grow past the limit.
    #[error("out of memory: growing linear memory to {} passes the limit of {}", Size(*desired), Size(*limit))]
    Memory {
        /// The size asked for, in bytes.
        desired: u64,
        /// [`AgentLimits::memory_bytes`].
        limit: u64,
    },
    /// A table would grow past the limit.
    #[error("table limit: growing a table to {desired} elements passes the limit of {limit}")]
    Table {
        /// The elements asked for.
        desired: usize,
        /// [`AgentLimits::table_elements`].
        limit: usize,
    },
    /// The task ran longer than its deadline.
    #[error("deadline exceeded: the task ran longer than {}", seconds(*.0))]
    Deadline(Duration),
}

/// Enforces [`AgentLimits`] on a store's memories, tables and instances.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: u64,
    table_elements: usize,
    instances: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_bytes {
            // A trap, not a failed `memory.grow`: the task fails with a
            // reason that names the limit instead of a guest abort.
            return Err(wasmtime::Error::new(Exceeded::Memory {
                desired,
                limit: self.memory_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::new(Exceeded::Table {
                desired,
                limit: self.table_elements,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    // One memory and one table per core instance at most, in practice.
    fn memories(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }
}

/// Why a guest call failed, as the log records it: the limit it ran into,
/// or the trap, in words.
pub(crate) fn describe_failure(e: &wasmtime::Error, limits: &AgentLimits) -> String {
    if let Some(exceeded) = e.downcast_ref::<Exceeded>() {
        return exceeded.to_string();
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => {
                return format!(
                    "out of fuel: the task used all {} units of its fuel",
                    limits.fuel_per_task.unwrap_or_default()
                );
            }
            Trap::StackOverflow => {
                return "call stack exhausted (recursion too deep)".to_owned();
            }
            _ => {}
        }
    }
    format!("trapped: {}", summary(e))
}

/// The first line of a wasmtime error (the trap, without the backtrace).
pub(crate) fn summary(e: &wasmtime::Error) -> String {
    let root = e.root_cause().to_string();
    let top = e.to_string();
    let text = if top == root || top.starts_with("error while executing") {
        root
    } else {
        format!("{top}: {root}")
    };
    text.lines().next().unwrap_or_default().to_owned()
}

/// A duration as whole seconds, or milliseconds under 10 s.
fn seconds(d: Duration) -> String {
    if d.as_secs() >= 10 || d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_refuses_growth_past_the_limits_by_name() {
        let mut limiter = Limiter {
            memory_bytes: 1 << 20,
            table_elements: 10,
            instances: 2,
        };
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        let err = limiter.memory_growing(1 << 20, 2 << 20, None).unwrap_err();
        assert_eq!(
            describe_failure(&err, &AgentLimits::default()),
            "out of memory: growing linear memory to 2MiB passes the limit of 1MiB"
        );
        assert!(limiter.table_growing(0, 10, None).unwrap());
        let err = limiter.table_growing(10, 11, None).unwrap_err();
        assert!(err.to_string().contains("limit of 10"), "{err}");
        assert_eq!(limiter.instances(), 2);
    }

    #[test]
    fn traps_are_described_in_words() {
        let limits = AgentLimits {
            fuel_per_task: Some(500),
            ..AgentLimits::default()
        };
        let fuel = wasmtime::Error::new(Trap::OutOfFuel);
        assert_eq!(
            describe_failure(&fuel, &limits),
            "out of fuel: the task used all 500 units of its fuel"
        );
        let stack = wasmtime::Error::new(Trap::StackOverflow);
        assert!(describe_failure(&stack, &limits).contains("call stack exhausted"));
        let other = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert!(describe_failure(&other, &limits).starts_with("trapped: "));
        assert_eq!(
            Exceeded::Deadline(Duration::from_millis(1500)).to_string(),
            "deadline exceeded: the task ran longer than 1500ms"
        );
        assert_eq!(
            Exceeded::Deadline(Duration::from_secs(30)).to_string(),
            "deadline exceeded: the task ran longer than 30s"
        );
    }
}
