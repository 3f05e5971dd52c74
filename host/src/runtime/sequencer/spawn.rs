//! Spawning and delegation: a parent's request becomes a child with a token
//! that is the parent's, narrowed to the rights and budgets delegated.
//!
//! Delegation never widens: see [`delegation_check`] for what a parent must
//! hold to hand a right over.

use toka_kernel::{
    AgentId, AgentSpec, Budgets, Command, Digest, EntityId, KernelError, Limit, OpKind, Operation,
    Timestamp,
};

use super::core::{Attachments, By, Core, Declined, Receipt, Spawn};
use crate::capability::budget::{Budget, BudgetError};
use crate::capability::policy::{Check, check_for, delegation_check};
use crate::capability::rights::{Right, RightError};
use crate::capability::token::Token;

/// A spawn ready to apply: the operation, the child's token, and the
/// budgets the kernel enforces for it.
pub(super) struct Prepared {
    pub(super) op: Operation,
    pub(super) child: Token,
    pub(super) budgets: Budgets,
}

impl Core {
    /// Authorizes a spawn and the delegation of each right, and makes the
    /// child's token: the parent's restricted to exactly those rights.
    pub(super) fn prepare_spawn(
        &mut self,
        parent: AgentId,
        token: Digest,
        time: Timestamp,
        spawn: Spawn,
    ) -> Result<Prepared, KernelError> {
        const KIND: OpKind = OpKind::SpawnAgent;
        let invalid = |message: String| KernelError::InvalidOperation {
            operation: KIND,
            message,
        };
        let Spawn {
            component,
            name,
            rights,
            budgets,
            child,
        } = spawn;
        let digest = match self.resolve_component(&component) {
            Ok(digest) => digest,
            Err(unknown) => {
                // Whether a component is installed is not for an agent that
                // may not spawn it to learn: one it may not spawn by that
                // name is refused as an installed one would be.
                let check = Check {
                    operation: "spawn",
                    targets: vec![component],
                };
                self.authorize(parent, token, KIND, &check, None, time)?;
                return Err(unknown);
            }
        };
        let rights: Vec<Right> = rights
            .iter()
            .map(|r| r.parse().map_err(|e: RightError| invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
        let budgets: Vec<Budget> = budgets
            .iter()
            .map(|b| b.parse().map_err(|e: BudgetError| invalid(e.to_string())))
            .collect::<Result<_, _>>()?;
        let mut spec = AgentSpec {
            component: digest,
            name,
            token: Digest::ZERO,
            rights: rights.iter().map(Right::to_string).collect(),
        };
        let op = Operation::SpawnAgent {
            spec: Box::new(spec.clone()),
        };
        if let Some(mut check) = check_for(&op, parent, self.kernel.state()) {
            // Named as the agent gave it (a name, or a digest), first: a
            // denial names that, not what a digest resolved to.
            if let Some(given) = check.targets.iter().position(|t| *t == component) {
                check.targets.swap(0, given);
            }
            self.authorize(parent, token, KIND, &check, None, time)?;
        }
        for right in &rights {
            let check = delegation_check(right, parent, self.kernel.state());
            self.authorize(parent, token, KIND, &check, Some(right), time)?;
        }
        let child = match child.map(|made| *made) {
            Some((parent, child)) if parent == token => child,
            _ => self
                .gate
                .token(&token)
                .and_then(|parent| parent.attenuate(&rights, &budgets))
                .map_err(|e| invalid(format!("could not make the child's token: {e}")))?,
        };
        let max = self.gate.max_token();
        if child.bytes().len() > max {
            return Err(KernelError::LimitExceeded {
                limit: Limit::Token,
                max: max as u64,
                actual: child.bytes().len() as u64,
            });
        }
        let budgets = child
            .budgets()
            .map(|b| crate::capability::budget::kernel_budgets(&b))
            .map_err(|e| invalid(e.to_string()))?;
        spec.token = child.digest();
        self.gate.admit(child.clone());
        Ok(Prepared {
            op: spawn_op(spec, &child),
            child,
            budgets,
        })
    }

    /// Records the budgets of the agent `receipt` created, right after the
    /// spawn, in the same batch.
    pub(super) fn set_budgets(&mut self, receipt: Receipt, budgets: Budgets, time: Timestamp) {
        if budgets.is_empty() || self.kernel.state().rules().is_none() {
            return;
        }
        let agent = receipt
            .created
            .expect("an applied spawn reports the agent it created");
        let op = Operation::SetBudgets {
            agent,
            budgets: Box::new(budgets),
        };
        if let Err(e) = self.apply(
            Command::system(EntityId::SYSTEM, time, op),
            Attachments::default(),
        ) {
            tracing::error!(agent = %agent.short(), error = %e, "could not record a new agent's budgets");
        }
    }

    /// Spawns a root agent on the authority of `by` with `token`, and
    /// records its budgets in the same batch.
    pub(super) fn spawn_root(
        &mut self,
        by: &By,
        spec: AgentSpec,
        token: Token,
        budgets: Budgets,
    ) -> Result<Receipt, Declined> {
        let time = self.stamp();
        let attachments = Attachments {
            token: Some(token.clone()),
            ..Attachments::default()
        };
        let (command, attachments) =
            self.command_by(by, time, spawn_op(spec, &token), attachments)?;
        self.gate.admit(token);
        let receipt = self.apply(command, attachments)?;
        self.set_budgets(receipt, budgets, time);
        Ok(receipt)
    }

    /// A component by name, or by its 64-hex-digit digest.
    fn resolve_component(&self, component: &str) -> Result<Digest, KernelError> {
        let state = self.kernel.state();
        if let Ok(digest) = component.parse::<Digest>()
            && state.component(&digest).is_some()
        {
            return Ok(digest);
        }
        state
            .component_named(component)
            .map(|c| c.digest)
            .ok_or_else(|| {
                super::core::unknown(
                    toka_kernel::EntityKind::Component,
                    format!(
                        "`{}` (no component of that name is installed)",
                        crate::text::clip(component, 64)
                    ),
                )
            })
    }
}

/// The operation spawning `spec`, bound to `token`: its bytes, stored
/// beside the record, are charged to the spawning agent's tree.
fn spawn_op(spec: AgentSpec, token: &Token) -> Operation {
    Operation::SpawnAgentSized {
        spec: Box::new(spec),
        token_bytes: u32::try_from(token.bytes().len()).unwrap_or(u32::MAX),
    }
}
