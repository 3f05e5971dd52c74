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
use std::path::{Path, PathBuf};
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
        protected: &[PathBuf],
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
        for right in &candidates {
            check_fs_right(right, protected).map_err(|e| e.to_string())?;
        }
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
            memory_used: 0,
            table_used: 0,
            last_growth: (0, 0),
            host_failure: None,
        }
    }
}

/// An `fs.*` right that would reach a path the host keeps to itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{right}` is refused: it would reach {}, which the host keeps to itself (its data dir, keys and secrets are off limits to agents)",
    kept.display()
)]
pub struct ProtectedPathError {
    /// The right, as written.
    pub right: String,
    /// The protected path it covers or lies inside (symlinks resolved).
    pub kept: PathBuf,
}

/// Refuses an `fs.*` right whose directory covers a protected path or lies
/// inside one, comparing real paths (symlinks resolved, as far as the path
/// exists). Other rights pass.
///
/// # Errors
///
/// [`ProtectedPathError`] naming the right and the protected path.
pub fn check_fs_right(right: &Right, protected: &[PathBuf]) -> Result<(), ProtectedPathError> {
    if !matches!(right.op(), RightOp::FsRead | RightOp::FsWrite) {
        return Ok(());
    }
    let Some(path) = right.target() else {
        return Ok(());
    };
    let granted = resolve(Path::new(path));
    for kept in protected {
        let kept = resolve(kept);
        if kept.starts_with(&granted) || granted.starts_with(&kept) {
            return Err(ProtectedPathError {
                right: right.to_string(),
                kept,
            });
        }
    }
    Ok(())
}

/// `path` with symlinks resolved: its longest existing ancestor made
/// canonical, the rest appended as written.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_path_buf(),
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
    /// The linear memories would grow past the limit (all together).
    #[error("out of memory: growing linear memory to {} passes the limit of {}", Size(*desired), Size(*limit))]
    Memory {
        /// The size of all memories together it asked for, in bytes.
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
    /// The agent (or its tree) ran into a quota; the message names it.
    #[error("{0}")]
    Quota(String),
    /// The token no longer grants a directory the instance has open: the
    /// token was revoked or expired while the task ran.
    #[error("the agent's token no longer grants what its instance holds open (revoked or expired)")]
    Revoked,
}

/// Enforces [`AgentLimits`] on a store's memories, tables and instances:
/// all its memories together, and all its tables together.
#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: u64,
    table_elements: usize,
    instances: usize,
    /// Bytes of all the store's memories now.
    memory_used: u64,
    /// Elements of all the store's tables now.
    table_used: usize,
    /// The last growths approved, undone if the host then fails them.
    last_growth: (u64, usize),
    /// A growth within the limits that the host failed to provide (no
    /// memory, no address space): the host's failure, not the agent's.
    host_failure: Option<String>,
}

/// Linear memories (and tables) one store may have. Components built from
/// Rust have one or two; each reserves address space, so few are allowed.
const MEMORIES_PER_STORE: usize = 4;

impl Limiter {
    /// What the host failed to provide since the last call, if anything.
    pub(crate) fn take_host_failure(&mut self) -> Option<String> {
        self.host_failure.take()
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current as u64 + desired as u64;
        if total > self.memory_bytes {
            // A trap, not a failed `memory.grow`: the task fails with a
            // reason that names the limit instead of a guest abort.
            return Err(wasmtime::Error::new(Exceeded::Memory {
                desired: total,
                limit: self.memory_bytes,
            }));
        }
        self.last_growth.0 = total - self.memory_used;
        self.memory_used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_used -= std::mem::take(&mut self.last_growth.0);
        self.host_failure = Some(format!(
            "the host could not grow a linear memory: {error:#}"
        ));
        // Let the instance see the failed grow; the task's outcome is then
        // the host's condition, not the agent's fault.
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_used - current + desired;
        if total > self.table_elements {
            return Err(wasmtime::Error::new(Exceeded::Table {
                desired: total,
                limit: self.table_elements,
            }));
        }
        self.last_growth.1 = total - self.table_used;
        self.table_used = total;
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_used -= std::mem::take(&mut self.last_growth.1);
        self.host_failure = Some(format!("the host could not grow a table: {error:#}"));
        Ok(())
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_STORE
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
            memory_used: 0,
            table_used: 0,
            last_growth: (0, 0),
            host_failure: None,
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
    fn the_limits_count_all_memories_and_tables_together() {
        // Regression: each memory could take the whole limit, so 32
        // memories held 32 times the memory an agent was granted.
        let mut limiter = Sandbox {
            limits: AgentLimits {
                memory_bytes: 4 << 20,
                table_elements: 100,
                ..AgentLimits::default()
            },
            candidates: Vec::new(),
            dirs: BTreeMap::new(),
        }
        .limiter();
        assert!(limiter.memory_growing(0, 3 << 20, None).unwrap());
        // A second memory gets what the first left over, no more.
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        let err = limiter.memory_growing(0, 64 << 10, None).unwrap_err();
        assert!(
            err.to_string().contains("passes the limit of 4MiB"),
            "{err}"
        );
        assert!(limiter.table_growing(0, 60, None).unwrap());
        assert!(limiter.table_growing(0, 40, None).is_ok());
        assert!(limiter.table_growing(0, 1, None).is_err());
        assert_eq!(limiter.memories(), MEMORIES_PER_STORE);
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
