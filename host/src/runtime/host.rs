//! The host: opens the log, runs agents, and is the library's entry point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use toka_kernel::{
    AgentId, AgentSpec, ChainHead, ComponentSpec, Digest, EntityId, Kernel, Limits, Operation,
    RULES_VERSION, Rules, TaskId, TaskSpec, WorldState,
};
use tokio::sync::Semaphore;

use crate::capability::budget::Budget;
use crate::capability::gate::Gate;
use crate::capability::rights::Right;
use crate::capability::root_key::RootKey;
use crate::capability::token::{Token, TokenError};
use crate::log::committed::{Committed, CommittedRecord};
use crate::log::recovery::{read_events, recover};
use crate::runtime::bus::{Bus, Subscription};
use crate::runtime::config::HostConfig;
use crate::runtime::error::HostError;
use crate::runtime::inner::HostInner;
use crate::runtime::sequencer::{Attachments, Options, Sequencer};
use crate::runtime::ticker::start_ticker;
use crate::sandbox::components::Components;
use crate::store::event_store::{EventStore, StoreTokens};

/// A running Toka host over an [`EventStore`].
///
/// Opening replays and verifies the stored log. Agents run as actors on the
/// current tokio runtime; every operation goes through one sequencer and is
/// committed to the store in batches; committed batches are published to
/// [`Host::subscribe`]rs. Call [`Host::shutdown`] to stop cleanly (dropping
/// the host stops it too, without waiting).
pub struct Host {
    inner: Arc<HostInner>,
    root: Arc<RootKey>,
    writer: Option<JoinHandle<()>>,
    ticker: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
}

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

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("store", &self.inner.store.location())
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Opens a host over `store`: replays and verifies the log, then starts
    /// the log writer and the agents that have work queued.
    ///
    /// Must be called within a tokio runtime (agents run on it).
    ///
    /// # Errors
    ///
    /// [`HostError::RootKeyMismatch`] when the store was created for another
    /// root key; [`HostError::Log`] when the
    /// stored log does not verify; [`HostError::Store`] when it cannot be read.
    pub async fn open(
        store: Arc<dyn EventStore>,
        root: RootKey,
        config: HostConfig,
    ) -> Result<Host, HostError> {
        if let Some(stored) = store.root_public_key()?
            && stored != root.public().to_bytes()
        {
            let stored =
                biscuit_auth::PublicKey::from_bytes(&stored, biscuit_auth::Algorithm::Ed25519)
                    .map_or_else(|_| "an unreadable key".to_owned(), |k| k.to_string());
            return Err(HostError::RootKeyMismatch {
                stored,
                given: root.public_string(),
            });
        }
        let (kernel, last_snapshot) = recover(store.as_ref())?;
        let kernel_rules = kernel.state().rules().cloned();
        let components = Components::new(
            config.agent_limits.fuel_per_task.is_some(),
            crate::runtime::guest::add_imports,
        )
        .map_err(|e| HostError::Wasmtime(format!("{e:#}")))?;
        let tokens = Arc::new(StoreTokens(Arc::clone(&store)));
        let gate = Gate::new(root.public(), tokens, kernel.limits());
        let options = Options {
            snapshot_every: config.snapshot_every,
            last_snapshot,
            #[cfg(feature = "bench")]
            skip_gate: config.skip_gate,
            #[cfg(not(feature = "bench"))]
            skip_gate: false,
        };
        let sequencer = Sequencer::new(kernel, gate, Arc::clone(&store), config.clock, options);
        let bus = Arc::new(Bus::new());
        let adopt = rules_to_adopt(kernel_rules, config.rules);
        let config_starts = config.start_agents;
        let inner = Arc::new(HostInner {
            sequencer,
            components,
            agent_limits: config.agent_limits,
            instances: Arc::new(Semaphore::new(config.max_instances.max(1))),
            protected_paths: config.protected_paths,
            agents_started: AtomicBool::new(config.start_agents),
            entropy: root.derive_secret("toka 2026-11 guest task randomness"),
            store: Arc::clone(&store),
            bus,
            actors: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        });

        let router = Arc::clone(&inner);
        let writer = inner.sequencer.start_writer(
            store,
            Box::new(move |batch: Arc<Committed>| router.route(batch)),
        )?;
        let ticker = start_ticker(inner.components.engine().clone())?;
        let host = Host {
            inner,
            root: Arc::new(root),
            writer: Some(writer),
            ticker: Some(ticker),
        };
        if let Some(rules) = adopt {
            let adopted = host
                .submit(
                    EntityId::SYSTEM,
                    Operation::AdoptRules { rules },
                    Attachments::default(),
                )
                .await?;
            // Settled before anyone can subscribe: the record is published.
            host.inner.sequencer.wait_published(adopted.seq).await?;
        }
        if config_starts {
            host.resume();
        }
        Ok(host)
    }

    /// Starts the agents that have work, and every agent that gets work
    /// from now on, when the host was opened without them
    /// ([`HostConfig::start_agents`] off). Does nothing if they run already.
    pub fn start_agents(&self) {
        if !self.inner.agents_started.swap(true, Ordering::SeqCst) {
            self.resume();
        }
    }

    /// After a restart: agents whose task was running when the host stopped
    /// run it again (each operation it already applied is answered from the
    /// log, not applied twice), and agents with queued tasks start.
    fn resume(&self) {
        let pending: Vec<AgentId> = self.inner.sequencer.read(|k| {
            k.state()
                .agents()
                .filter(|(_, a)| a.is_active() && (a.running.is_some() || !a.queue.is_empty()))
                .map(|(id, _)| id)
                .collect()
        });
        for agent in pending {
            self.inner.wake(agent);
        }
    }

    /// Installs a component under `name` and returns its digest. Installing
    /// bytes that are already installed returns the same digest and changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`HostError::Component`] when the bytes are not a component this host
    /// can run as an agent; nothing is stored then.
    pub async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<Digest, HostError> {
        toka_kernel::validate_name("component", name, &self.state_limits())?;
        let digest = Digest::of(&bytes);
        if self
            .inner
            .sequencer
            .read(|k| k.state().component(&digest).is_some())
        {
            return Ok(digest);
        }
        let bytes: Arc<[u8]> = bytes.into();
        let components = self.inner.components.clone();
        let to_compile = Arc::clone(&bytes);
        tokio::task::spawn_blocking(move || components.prepare(digest, &to_compile))
            .await
            .map_err(|e| HostError::Wasmtime(format!("compiling the component panicked: {e}")))??;
        let component = ComponentSpec {
            digest,
            name: name.to_owned(),
            size: bytes.len() as u64,
        };
        let attachments = Attachments {
            blob: Some((digest, bytes)),
            token: None,
        };
        self.submit(
            EntityId::SYSTEM,
            Operation::InstallComponent { component },
            attachments,
        )
        .await?;
        Ok(digest)
    }

    /// Spawns a root agent (parent: the system) running `component`, bound
    /// to the token `grant` describes.
    ///
    /// # Errors
    ///
    /// [`HostError::Token`] for a token that is malformed, too large, not
    /// rooted in the host's key, or expired; [`HostError::Kernel`] when the component is
    /// not installed or the name is not acceptable. Nothing is applied then.
    pub async fn spawn(
        &self,
        component: Digest,
        name: &str,
        grant: Grant,
    ) -> Result<AgentId, HostError> {
        toka_kernel::validate_name("agent", name, &self.state_limits())?;
        let token = self.token_for(grant)?;
        let budgets = crate::capability::budget::kernel_budgets(&token.budgets()?);
        let spec = AgentSpec {
            component,
            name: name.to_owned(),
            token: token.digest(),
            rights: Vec::new(),
        };
        let receipt = self
            .inner
            .sequencer
            .spawn_root(spec, token, budgets)
            .await??;
        self.inner.sequencer.wait_durable(receipt.seq).await?;
        self.created(receipt)
    }

    /// Checks `grant` exactly as [`Host::spawn`] does, without recording
    /// anything: so a command can refuse a bad token before it writes.
    ///
    /// # Errors
    ///
    /// As [`Host::spawn`] for the token.
    pub fn check_grant(&self, grant: &Grant) -> Result<(), HostError> {
        self.token_for(grant.clone()).map(drop)
    }

    /// Checks that `bytes` are a component this host can run as an agent
    /// and compiles it (kept for a later [`Host::install`]), recording
    /// nothing. Returns its digest.
    ///
    /// # Errors
    ///
    /// [`HostError::Component`] naming what is wrong.
    pub async fn validate(&self, bytes: &[u8]) -> Result<Digest, HostError> {
        let digest = Digest::of(bytes);
        let components = self.inner.components.clone();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || components.prepare(digest, &bytes))
            .await
            .map_err(|e| HostError::Wasmtime(format!("compiling the component panicked: {e}")))??;
        Ok(digest)
    }

    /// The token a root agent gets for `grant`, checked: minted tokens name
    /// no protected path; a presented one is rooted in this host's key,
    /// cheap to evaluate (a timed check), not expired, not revoked, and
    /// names no protected path.
    fn token_for(&self, grant: Grant) -> Result<Token, HostError> {
        let max = self.state_limits().max_token as usize;
        Ok(match grant {
            Grant::Rights(rights) => {
                self.check_fs_rights(&rights)?;
                Token::issue(&self.root, &rights, &[], None)?
            }
            Grant::Budgeted { rights, budgets } => {
                self.check_fs_rights(&rights)?;
                Token::issue(&self.root, &rights, &budgets, None)?
            }
            Grant::Token(bytes) => {
                let token = Token::parse(&bytes, self.root.public(), max)?;
                token.admit(self.inner.sequencer.now())?;
                self.check_fs_rights(&token.authority_rights())?;
                let revoked = self.inner.sequencer.read(|k| {
                    let s = k.state();
                    token.revocation_ids().iter().any(|id| s.is_revoked(id))
                });
                if revoked {
                    return Err(TokenError::Revoked.into());
                }
                token
            }
        })
    }

    /// Refuses `fs.*` rights that cover or reach into a protected path.
    fn check_fs_rights(&self, rights: &[Right]) -> Result<(), HostError> {
        for right in rights {
            crate::sandbox::dirs::check_fs_right(right, &self.inner.protected_paths)?;
        }
        Ok(())
    }

    /// Revokes every token carrying `revocation_id` (and every token
    /// attenuated from one), from the next operation on.
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownRevocationId`] when no stored token carries the id
    /// (unless `force`); [`HostError::Kernel`] when it is already revoked.
    pub async fn revoke(&self, revocation_id: Vec<u8>, force: bool) -> Result<(), HostError> {
        if !force && !self.knows_revocation_id(&revocation_id)? {
            return Err(HostError::UnknownRevocationId(toka_kernel::to_hex(
                &revocation_id,
            )));
        }
        let op = Operation::RevokeToken { revocation_id };
        self.submit(EntityId::SYSTEM, op, Attachments::default())
            .await
            .map(drop)
    }

    fn knows_revocation_id(&self, id: &[u8]) -> Result<bool, HostError> {
        for (digest, _) in self.inner.store.tokens()? {
            if let Ok(token) = self.inner.sequencer.token(&digest)
                && token.revocation_ids().iter().any(|r| r == id)
            {
                return Ok(true);
            }
        }
        // Tokens applied but not yet durable are known to the gate too.
        let agents: Vec<Digest> = self
            .inner
            .sequencer
            .read(|k| k.state().agents().map(|(_, a)| a.token).collect());
        Ok(agents.iter().any(|digest| {
            self.inner
                .sequencer
                .token(digest)
                .is_ok_and(|t| t.revocation_ids().iter().any(|r| r == id))
        }))
    }

    /// The verified token with this digest (from the store or the gate's cache).
    ///
    /// # Errors
    ///
    /// [`TokenError`] when it is not stored or does not verify.
    pub fn token(&self, digest: &Digest) -> Result<Token, TokenError> {
        self.inner.sequencer.token(digest)
    }

    fn state_limits(&self) -> Limits {
        self.inner.sequencer.read(|k| k.limits().clone())
    }

    /// Queues a task for `agent` on the operator's authority.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or terminated, its
    /// queue is full, or the description is too long.
    pub async fn schedule(&self, agent: AgentId, description: &str) -> Result<TaskId, HostError> {
        let op = Operation::ScheduleTask {
            agent,
            spec: TaskSpec {
                description: description.to_owned(),
            },
        };
        let receipt = self
            .submit(EntityId::SYSTEM, op, Attachments::default())
            .await?;
        self.created(receipt)
    }

    /// Terminates `agent` on the operator's authority.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or already terminated.
    pub async fn terminate(&self, agent: AgentId, reason: &str) -> Result<(), HostError> {
        let op = Operation::TerminateAgent {
            agent,
            reason: reason.to_owned(),
        };
        self.submit(EntityId::SYSTEM, op, Attachments::default())
            .await
            .map(drop)
    }

    /// Lets a quarantined agent run tasks again (its tasks queued meanwhile
    /// run in order); its count of faults in a row starts over.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or not quarantined.
    pub async fn resume_agent(&self, agent: AgentId) -> Result<(), HostError> {
        let op = Operation::ResumeAgent { agent };
        self.submit(EntityId::SYSTEM, op, Attachments::default())
            .await
            .map(drop)
    }

    /// Applies an operator's command and waits until it is durable, so
    /// what it did is in [`Host::state`] when it returns.
    async fn submit(
        &self,
        origin: EntityId,
        op: Operation,
        attachments: Attachments,
    ) -> Result<crate::runtime::sequencer::Receipt, HostError> {
        let receipt = self
            .inner
            .sequencer
            .submit_system(origin, op, attachments)
            .await??;
        self.inner.sequencer.wait_durable(receipt.seq).await?;
        Ok(receipt)
    }

    fn created(&self, receipt: crate::runtime::sequencer::Receipt) -> Result<EntityId, HostError> {
        receipt
            .created
            .ok_or_else(|| HostError::Wasmtime("the kernel reported no created entity".into()))
    }

    /// Waits until nothing is left to do: every record durable and
    /// published, no task running, no task queued for an active agent.
    ///
    /// # Errors
    ///
    /// [`HostError::Stopped`] when the host stopped (e.g. its store failed).
    pub async fn run_until_idle(&self) -> Result<(), HostError> {
        let mut published = self.inner.sequencer.published();
        loop {
            if let Some(stopped) = self.inner.sequencer.stopped() {
                return Err(stopped.into());
            }
            let done = *published.borrow_and_update();
            let idle = self.inner.sequencer.read(|k| {
                k.head().seq == done
                    && k.state()
                        .agents()
                        .all(|(_, a)| a.running.is_none() && (a.queue.is_empty() || !a.is_active()))
            });
            if idle {
                return Ok(());
            }
            if published.changed().await.is_err() {
                return Err(HostError::Stopped(crate::runtime::sequencer::Stopped(
                    "the log writer is gone".into(),
                )));
            }
        }
    }

    /// Waits until the record at `seq` is durable.
    ///
    /// # Errors
    ///
    /// [`HostError::Stopped`] when the host stopped first.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), HostError> {
        Ok(self.inner.sequencer.wait_durable(seq).await?)
    }

    /// Receives every committed batch from now on, in log order.
    ///
    /// The bus holds recent batches up to a bound in bytes; a subscriber
    /// that falls further behind gets [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged)
    /// with the number of batches it missed, then continues with the oldest
    /// one held. The log has everything: read what was missed from the
    /// store (as `toka events --from` does).
    #[must_use]
    pub fn subscribe(&self) -> Subscription {
        self.inner.bus.subscribe()
    }

    /// Runs `f` on the world state as of the last committed batch: only
    /// what is durable, never the host's work in progress, and at least
    /// everything that was durable when called (so an operator's own
    /// command that returned is in it). `f` runs on a copy, without holding
    /// any of the host's locks.
    pub async fn state<R>(&self, f: impl FnOnce(&WorldState) -> R) -> R {
        let state = self.inner.sequencer.committed_state().await;
        f(&state)
    }

    /// The committed records from sequence number `from` on (at most
    /// `limit` of them), with their events, read from the store: for a
    /// subscriber that fell behind the bus. Costs a replay from the newest
    /// snapshot before `from`.
    ///
    /// # Errors
    ///
    /// [`HostError::Store`] when the store cannot be read,
    /// [`HostError::Log`] when the log does not replay.
    pub fn log_events(&self, from: u64, limit: usize) -> Result<Vec<CommittedRecord>, HostError> {
        let durable = self.inner.sequencer.committed();
        let mut out = Vec::new();
        read_events(self.inner.store.as_ref(), from, |record| {
            if record.seq > durable || out.len() >= limit {
                return false;
            }
            out.push(record);
            true
        })?;
        Ok(out)
    }

    /// The tip of the log (applied, possibly not yet durable).
    #[must_use]
    pub fn head(&self) -> ChainHead {
        self.inner.sequencer.read(Kernel::head)
    }

    /// Writes a snapshot of the state once everything applied is durable,
    /// and returns the sequence number it was taken at.
    ///
    /// # Errors
    ///
    /// [`HostError::Stopped`] when the host stopped or the write failed.
    pub async fn snapshot(&self) -> Result<u64, HostError> {
        Ok(self.inner.sequencer.snapshot_now().await?)
    }

    /// Instantiates `agent`'s component exactly as its actor does (store,
    /// WASI context, instance, `init`) and drops it. For benchmarks.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub async fn bench_instantiate(&self, agent: AgentId) -> Result<(), String> {
        crate::runtime::actor::instantiate(&self.inner, agent)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Stops the host: refuses new operations, commits what is pending, and
    /// stops every agent (a task in progress is abandoned; it is failed as
    /// interrupted when the host opens the store again).
    ///
    /// # Errors
    ///
    /// [`HostError::Stopped`] when the log writer had failed before.
    pub async fn shutdown(mut self) -> Result<(), HostError> {
        let failure = self.inner.sequencer.stopped();
        self.stop();
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .ok();
        }
        // After the writer's last batch, so subscribers receive it first.
        self.inner.bus.close();
        match failure {
            Some(stopped) => Err(stopped.into()),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.inner.sequencer.close();
        for wake in self.inner.actors().values() {
            wake.notify_one();
        }
        if let Some((ticker, stop)) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = ticker.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
        self.inner.bus.close();
    }
}

/// The rules to record when a host opens a log that has `current`, given
/// the configured ones (see [`HostConfig::rules`]).
fn rules_to_adopt(current: Option<Rules>, configured: Option<Rules>) -> Option<Rules> {
    match (current, configured) {
        (current, Some(wanted)) => (current.as_ref() != Some(&wanted)).then_some(wanted),
        (None, None) => Some(Rules::default()),
        (Some(current), None) => (current.version < RULES_VERSION).then_some(Rules {
            version: RULES_VERSION,
            ..current
        }),
    }
}
