//! Commands from outside the agents, on someone's authority: the host's
//! own caller, or an operator with a token (an API client).
//!
//! [`Host`](crate::Host)'s command methods act on the host's authority;
//! [`Host::as_operator`](crate::Host::as_operator) gives the same methods on an operator token's
//! authority. An operator's command is checked in the sequencer, in order
//! with everything else (a revocation ordered before it denies it), for the
//! level the operation needs (see [`OperatorLevel`]), and its record names
//! the token ([`Authorization::Operator`](toka_kernel::Authorization::Operator)),
//! so `toka verify --auth` re-checks it.

use std::sync::Arc;

use toka_kernel::{
    AgentId, AgentSpec, ComponentSpec, Digest, KernelError, Operation, TaskId, TaskSpec,
};

use crate::capability::budget::Budget;
use crate::capability::policy::Denied;
use crate::capability::rights::{OperatorLevel, Right, RightOp};
use crate::capability::root_key::RootKey;
use crate::capability::token::{Token, TokenError};
use crate::runtime::error::HostError;
use crate::runtime::inner::HostInner;
use crate::runtime::sequencer::{Attachments, By, Receipt, Stopped};

/// The capability token a root agent (one the operator spawns) gets.
#[derive(Debug, Clone)]
pub enum Grant {
    /// A token the host mints, signed by its root key, granting these rights.
    Rights(Vec<Right>),
    /// A token the host mints granting `rights` within `budgets`.
    Budgeted {
        /// The rights.
        rights: Vec<Right>,
        /// The budgets (see [`Budget`]).
        budgets: Vec<Budget>,
    },
    /// A token minted elsewhere (`toka token issue`, the `biscuit` tool):
    /// base64 text or raw bytes. It must be rooted in the host's key.
    Token(Vec<u8>),
}

/// The command methods of a [`Host`](crate::Host) on someone's authority
/// (see [`Host::as_operator`](crate::Host::as_operator)).
pub struct Acting<'h> {
    pub(super) host: HostParts<'h>,
    pub(super) by: By,
}

impl std::fmt::Debug for Acting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acting")
            .field("by", &self.by)
            .finish_non_exhaustive()
    }
}

/// What commands need of the host.
#[derive(Clone, Copy)]
pub(crate) struct HostParts<'h> {
    pub(crate) inner: &'h Arc<HostInner>,
    pub(crate) root: &'h RootKey,
}

/// What [`Acting::forget_terminated`] forgot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Forgotten {
    /// Terminated agents whose records left the state.
    pub agents: u64,
    /// Bytes of state keys and values they held.
    pub state_bytes: u64,
}

impl<'h> Acting<'h> {
    pub(crate) fn new(host: HostParts<'h>, operator: Option<Token>) -> Self {
        let by = match operator {
            Some(token) => By::Operator(Box::new(token)),
            None => By::Host,
        };
        Self { host, by }
    }

    /// Installs a component under `name` and returns its digest. Installing
    /// bytes that are already installed returns the same digest and changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`HostError::Component`] when the bytes are not a component this host
    /// can run as an agent; [`HostError::Denied`] for an operator without
    /// `write`. Nothing is stored then.
    pub async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<Digest, HostError> {
        toka_kernel::validate_name("component", name, &self.host.state_limits())?;
        self.require(OperatorLevel::Write)?;
        let digest = Digest::of(&bytes);
        if self.host.applied(|s| s.component(&digest).is_some()) {
            return Ok(digest);
        }
        let bytes: Arc<[u8]> = bytes.into();
        self.host.compile(digest, Arc::clone(&bytes)).await?;
        let component = ComponentSpec {
            digest,
            name: name.to_owned(),
            size: bytes.len() as u64,
        };
        let attachments = Attachments {
            blob: Some((digest, bytes)),
            ..Attachments::default()
        };
        self.submit(
            Operation::InstallComponent {
                component: Box::new(component),
            },
            attachments,
        )
        .await?;
        Ok(digest)
    }

    /// Removes the installed component `component`: it can no longer be
    /// spawned, its name (if the name still points at it) names nothing,
    /// and its bytes leave the store with the next archive of the log
    /// ([`Host::archive`](crate::Host::archive)).
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when it is not installed, a package ships it
    /// or an agent that is not terminated runs it (the message names one);
    /// [`HostError::Denied`] for an operator without `write`.
    pub async fn remove_component(&self, component: Digest) -> Result<(), HostError> {
        let op = Operation::RemoveComponent { component };
        self.submit(op, Attachments::default()).await.map(drop)
    }

    /// Forgets every terminated agent none of whose descendants is alive
    /// (nor a task it scheduled unfinished):
    /// their records and state leave the state (and the state budget);
    /// their history stays in the log. Returns how many, and the bytes of
    /// state they held. Appends nothing when there is nothing to forget.
    ///
    /// # Errors
    ///
    /// [`HostError::Denied`] for an operator without `admin`.
    pub async fn forget_terminated(&self) -> Result<Forgotten, HostError> {
        self.require(OperatorLevel::Admin)?;
        let mut forgotten = Forgotten::default();
        // One record forgets a bounded number: again until one forgets
        // fewer (each holds the log writer for a pass or two over the
        // agents). No record at all when there is nothing to forget.
        loop {
            // What the record forgets, seen in the state it is applied to
            // (under the same lock): the state before it is not read back
            // from the log for it (a replay from a snapshot, for each
            // record, of a state an agent could have grown large).
            let mut this_record = Forgotten::default();
            // The kernel keeps what it found for the record applied next.
            let wanted = |kernel: &mut toka_kernel::Kernel| {
                let found = kernel.forgettable().to_vec();
                for agent in found {
                    this_record.agents += 1;
                    this_record.state_bytes +=
                        kernel.state().agent(agent).map_or(0, |a| a.state_bytes);
                }
                this_record.agents > 0
            };
            if self
                .submit_if(Operation::ForgetTerminated, wanted)
                .await?
                .is_none()
            {
                return Ok(forgotten);
            }
            forgotten.agents += this_record.agents;
            forgotten.state_bytes += this_record.state_bytes;
            if this_record.agents < toka_kernel::FORGOTTEN_PER_RECORD as u64 {
                return Ok(forgotten);
            }
        }
    }

    /// Spawns a root agent (parent: the system) running `component`, bound
    /// to the token `grant` describes. An operator needs `write` to bind a
    /// token made elsewhere, and `admin` to have the host mint one from
    /// rights.
    ///
    /// # Errors
    ///
    /// [`HostError::Token`] for a token that is malformed, too large, not
    /// rooted in the host's key, or expired; [`HostError::Kernel`] when the
    /// component is not installed or the name is not acceptable;
    /// [`HostError::Denied`] for an operator below the level needed.
    /// Nothing is applied then.
    pub async fn spawn(
        &self,
        component: Digest,
        name: &str,
        grant: Grant,
    ) -> Result<AgentId, HostError> {
        toka_kernel::validate_name("agent", name, &self.host.state_limits())?;
        let minted = !matches!(grant, Grant::Token(_));
        self.require(if minted {
            OperatorLevel::Admin
        } else {
            OperatorLevel::Write
        })?;
        let token = self.host.token_for(grant)?;
        let budgets = crate::capability::budget::kernel_budgets(&token.budgets()?);
        let spec = AgentSpec {
            component,
            name: name.to_owned(),
            token: token.digest(),
            rights: Vec::new(),
        };
        let sequencer = &self.host.inner.sequencer;
        let receipt = sequencer
            .spawn_root(&self.by, spec, token, budgets)
            .await??;
        sequencer.wait_durable(receipt.seq).await?;
        created(receipt)
    }

    /// Queues a task for `agent`.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or terminated, its
    /// queue is full, or the description is too long;
    /// [`HostError::Denied`] for an operator without `write`.
    pub async fn schedule(&self, agent: AgentId, description: &str) -> Result<TaskId, HostError> {
        let op = Operation::ScheduleTask {
            agent,
            spec: TaskSpec {
                description: description.to_owned(),
            },
        };
        created(self.submit(op, Attachments::default()).await?)
    }

    /// Queues a task for `agent` once per idempotency `key`: a retry with
    /// the same key and request returns the task the first one scheduled
    /// and records nothing. Returns the task and whether this call
    /// scheduled it.
    ///
    /// # Errors
    ///
    /// As [`Acting::schedule`]; [`HostError::Kernel`] with
    /// [`KernelError::AlreadyScheduled`] when the key scheduled a different
    /// request.
    pub async fn schedule_once(
        &self,
        key: &str,
        agent: AgentId,
        description: &str,
    ) -> Result<(TaskId, bool), HostError> {
        let op = Operation::ScheduleTaskOnce {
            key: key.to_owned(),
            agent,
            spec: TaskSpec {
                description: description.to_owned(),
            },
        };
        match self.submit(op, Attachments::default()).await {
            Ok(receipt) => Ok((created(receipt)?, true)),
            Err(HostError::Kernel(KernelError::AlreadyScheduled {
                task,
                same_request: true,
                ..
            })) => {
                // The first request may still be on its way to the disk:
                // answer the retry once it is durable, as the first is.
                let sequencer = &self.host.inner.sequencer;
                let head = sequencer.read(|k| k.head().seq);
                sequencer.wait_durable(head).await?;
                Ok((task, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Terminates `agent`.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or already
    /// terminated; [`HostError::Denied`] for an operator without `write`.
    pub async fn terminate(&self, agent: AgentId, reason: &str) -> Result<(), HostError> {
        let op = Operation::TerminateAgent {
            agent,
            reason: reason.to_owned(),
        };
        self.submit(op, Attachments::default()).await.map(drop)
    }

    /// Lets a quarantined agent run tasks again (its tasks queued meanwhile
    /// run in order); its count of faults in a row starts over.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or not quarantined;
    /// [`HostError::Denied`] for an operator without `write`.
    pub async fn resume_agent(&self, agent: AgentId) -> Result<(), HostError> {
        let op = Operation::ResumeAgent { agent };
        self.submit(op, Attachments::default()).await.map(drop)
    }

    /// Revokes every token carrying `revocation_id` (and every token
    /// attenuated from one), from the next operation on.
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownRevocationId`] when no stored token carries the id
    /// (unless `force`); [`HostError::Kernel`] when it is already revoked;
    /// [`HostError::Denied`] for an operator without `admin`.
    pub async fn revoke(&self, revocation_id: Vec<u8>, force: bool) -> Result<(), HostError> {
        self.require(OperatorLevel::Admin)?;
        if !force && !self.host.knows_revocation_id(&revocation_id).await? {
            return Err(HostError::UnknownRevocationId(toka_kernel::to_hex(
                &revocation_id,
            )));
        }
        let op = Operation::RevokeToken { revocation_id };
        self.submit(op, Attachments::default()).await.map(drop)
    }

    /// Checks an operator's level before work that the sequencer's own
    /// check would come too late for (compiling, minting).
    pub(super) fn require(&self, level: OperatorLevel) -> Result<(), HostError> {
        match &self.by {
            By::Host => Ok(()),
            By::Operator(token) => Ok(self.host.authorize_operator(token, level)?),
        }
    }

    /// Applies the command and waits until it is durable, so what it did is
    /// in [`Host::state`](crate::Host::state) when it returns.
    pub(super) async fn submit(
        &self,
        op: Operation,
        attachments: Attachments,
    ) -> Result<Receipt, HostError> {
        let sequencer = &self.host.inner.sequencer;
        let receipt = sequencer.submit_by(&self.by, op, attachments).await??;
        sequencer.wait_durable(receipt.seq).await?;
        Ok(receipt)
    }

    /// As [`Acting::submit`], unless `wanted` says (of the kernel as
    /// applied, under the sequencer's lock) that `op` would change nothing:
    /// then nothing is written (`None`).
    async fn submit_if(
        &self,
        op: Operation,
        wanted: impl FnOnce(&mut toka_kernel::Kernel) -> bool,
    ) -> Result<Option<Receipt>, HostError> {
        let sequencer = &self.host.inner.sequencer;
        let submitted = sequencer
            .submit_by_if(&self.by, op, Attachments::default(), wanted)
            .await??;
        if let Some(receipt) = submitted {
            sequencer.wait_durable(receipt.seq).await?;
        }
        Ok(submitted)
    }
}

fn created(receipt: Receipt) -> Result<toka_kernel::EntityId, HostError> {
    receipt
        .created
        .ok_or_else(|| HostError::Wasmtime("the kernel reported no created entity".into()))
}

impl HostParts<'_> {
    /// The kernel limits of the log.
    pub(crate) fn state_limits(&self) -> toka_kernel::Limits {
        self.inner.sequencer.read(|k| k.limits().clone())
    }

    /// Runs `f` on the state as applied (possibly not yet durable).
    pub(crate) fn applied<R>(&self, f: impl FnOnce(&toka_kernel::WorldState) -> R) -> R {
        self.inner.sequencer.read(|k| f(k.state()))
    }

    /// Compiles (and so validates) a component, off the async threads.
    pub(crate) async fn compile(&self, digest: Digest, bytes: Arc<[u8]>) -> Result<(), HostError> {
        use crate::sandbox::components::{Unprepared, Use};
        let load = || Ok::<_, std::convert::Infallible>(bytes);
        let prepared = self.inner.components.prepare(Use::Install, digest, load);
        match prepared.await {
            Ok(_) => Ok(()),
            Err(Unprepared::Invalid(e)) => Err(e.into()),
            Err(Unprepared::Panicked(e)) => Err(HostError::Wasmtime(format!(
                "compiling the component panicked: {e}"
            ))),
            Err(Unprepared::Load(never)) => match never {},
        }
    }

    /// Whether `token` allows `level` now.
    pub(crate) fn authorize_operator(
        &self,
        token: &Token,
        level: OperatorLevel,
    ) -> Result<(), Denied> {
        self.inner.sequencer.authorize_operator(token, level)
    }

    /// The token a root agent gets for `grant`, checked: no operator or
    /// protected-path rights; a presented token is rooted in this host's
    /// key, cheap to evaluate (a timed check), not expired, not revoked.
    pub(crate) fn token_for(&self, grant: Grant) -> Result<Token, HostError> {
        let max = self.state_limits().max_token as usize;
        let token = match grant {
            Grant::Rights(rights) => {
                self.check_agent_rights(&rights)?;
                Token::issue(self.root, &rights, &[], None)?
            }
            Grant::Budgeted { rights, budgets } => {
                self.check_agent_rights(&rights)?;
                Token::issue(self.root, &rights, &budgets, None)?
            }
            Grant::Token(bytes) => {
                let token = Token::parse(&bytes, self.root.public(), max)?;
                token.admit(self.inner.sequencer.now())?;
                self.check_agent_rights(&token.authority_rights())?;
                if self.is_revoked(&token) {
                    return Err(TokenError::Revoked.into());
                }
                token
            }
        };
        Ok(token)
    }

    /// Whether a revocation applied so far covers `token`.
    pub(crate) fn is_revoked(&self, token: &Token) -> bool {
        self.applied(|s| token.revocation_ids().iter().any(|id| s.is_revoked(id)))
    }

    /// Refuses operator rights, and `fs.*` rights that cover or reach into
    /// a protected path.
    pub(crate) fn check_agent_rights(&self, rights: &[Right]) -> Result<(), HostError> {
        no_operator_rights(rights)?;
        for right in rights {
            crate::sandbox::dirs::check_fs_right(right, &self.inner.protected_paths)?;
        }
        Ok(())
    }

    /// Whether a token the host knows carries `id`.
    pub(crate) async fn knows_revocation_id(&self, id: &[u8]) -> Result<bool, HostError> {
        // A token is stored in the batch of the record that binds it: once
        // everything applied until now is durable, the store holds every
        // token the host knows.
        self.inner.sequencer.durable_now().await?;
        // One at a time on a blocking thread; their ids read from their
        // bytes, not verified again (they were when stored): a signature
        // check each, and each admitted to the gate's cache would push out
        // the tokens running agents use.
        let store = Arc::clone(&self.inner.store);
        let wanted = id.to_vec();
        let stored = tokio::task::spawn_blocking(move || {
            let carries = &mut |bytes: &[u8]| Token::stored_revocation_ids(bytes).contains(&wanted);
            Ok::<_, HostError>(store.find_token(carries)?.is_some())
        })
        .await
        .map_err(|e| HostError::Stopped(Stopped(format!("looking for a revocation id: {e}"))))??;
        Ok(stored)
    }
}

/// Refuses operator rights in what an agent would hold.
pub(crate) fn no_operator_rights(rights: &[Right]) -> Result<(), HostError> {
    match rights.iter().find(|r| r.op() == RightOp::Operator) {
        Some(right) => Err(HostError::OperatorRight(right.to_string())),
        None => Ok(()),
    }
}
