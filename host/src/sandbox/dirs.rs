//! One agent instance's sandbox: the limits it runs under and the host
//! directories its token opens to it (never the host's own files).
//!
//! The limits are the host's [`AgentLimits`] narrowed by the token's
//! budgets. The directories are exactly those named by `fs.read PATH` /
//! `fs.write PATH` rights the token grants now (read-only where only read is
//! granted), each visible to the guest at the same path. Everything else a
//! WASI guest could reach is closed: no other files, no environment, no
//! arguments, no sockets; outgoing HTTP goes through the gate per request
//! (see the `http` module).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toka_kernel::AgentId;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::capability::policy::Check;
use crate::capability::rights::{Right, RightOp};
use crate::capability::token::Token;
use crate::sandbox::Effects;
use crate::sandbox::limiter::Limiter;
use crate::sandbox::limits::AgentLimits;
use crate::sandbox::memory::Charge;

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
        effects: &dyn Effects,
        token: &Token,
        host_limits: &AgentLimits,
        protected: &[PathBuf],
        agent: AgentId,
    ) -> Result<Sandbox, String> {
        let budgets = token.budgets().map_err(|e| e.to_string())?;
        let limits = host_limits.narrowed(&budgets).map_err(|e| e.to_string())?;
        let candidates: Vec<Right> = token
            .authority_rights()
            .into_iter()
            .filter(|r| matches!(r.op(), RightOp::FsRead | RightOp::FsWrite))
            .collect();
        for right in &candidates {
            check_fs_right(right, protected).map_err(|e| e.to_string())?;
        }
        let dirs = granted_dirs(effects, agent, &candidates);
        Ok(Sandbox {
            limits,
            candidates,
            dirs,
        })
    }

    /// Whether the directories granted are still exactly these (a token can
    /// be revoked or expire while an instance lives). Cheap when the token
    /// names no directory; otherwise one cached gate decision per right.
    pub(crate) fn still_holds(&self, effects: &dyn Effects, agent: AgentId) -> bool {
        self.candidates.is_empty() || granted_dirs(effects, agent, &self.candidates) == self.dirs
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

    /// The resource limiter for the instance's store, its memories
    /// charged to `charge`.
    pub(crate) fn limiter(&self, charge: Charge) -> Limiter {
        Limiter::new(&self.limits, Some(charge))
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
    effects: &dyn Effects,
    agent: AgentId,
    candidates: &[Right],
) -> BTreeMap<String, FsPerms> {
    let mut dirs = BTreeMap::new();
    for right in candidates {
        let check = Check::literal(right.op().name(), right.target());
        let (Some(path), Ok(())) = (right.target(), effects.authorize(agent, &check, false)) else {
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
