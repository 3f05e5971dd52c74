//! The host: opens the log, runs agents, and is the library's entry point.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use toka_kernel::{
    AgentId, ChainHead, Digest, EntityId, Kernel, Operation, RULES_VERSION, Rules, TaskId,
    WorldState,
};

use crate::capability::budget::Budget;
use crate::capability::gate::Gate;
use crate::capability::policy::Denied;
use crate::capability::rights::{OperatorLevel, Right};
use crate::capability::root_key::RootKey;
use crate::capability::token::{Token, TokenError};
use crate::log::committed::{Committed, CommittedRecord};
use crate::log::recovery::{LogReader, recover_sized};
use crate::runtime::acting::{Acting, Grant, HostParts};
use crate::runtime::bus::{Bus, Subscription};
use crate::runtime::config::HostConfig;
use crate::runtime::error::HostError;
use crate::runtime::inner::HostInner;
use crate::runtime::mail::CellMail;
use crate::runtime::metrics::HostMetrics;
use crate::runtime::sequencer::Stopped;
use crate::runtime::sequencer::{Attachments, Options, Sequencer};
use crate::runtime::tasks::{TaskFound, TaskInfo};
use crate::runtime::ticker::start_ticker;
use crate::sandbox::components::Components;
use crate::sandbox::memory::MemoryUsage;
use crate::store::event_store::{EventStore, StoreTokens};
use crate::store::secrets::SecretStore;

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
    /// Tells the epoch ticker to stop once no instance runs.
    ticker: Option<Arc<AtomicBool>>,
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
        let (kernel, last_snapshot) = recover_sized(store.as_ref())?;
        let kernel_rules = kernel.state().rules().cloned();
        let places = crate::sandbox::places::Places::new(config.max_instances, config.tree_share());
        let memory = {
            let (total, per_tree) = config.memory_shares();
            crate::sandbox::memory::MemoryBudget::new(total, per_tree)
        };
        let pool = config.pooling.then(|| crate::sandbox::components::Pool {
            // Instances with a place, and the warm ones without.
            instances: u32::try_from(config.max_instances.saturating_add(config.warm_instances))
                .unwrap_or(u32::MAX),
            memory_bytes: config.agent_limits.memory_bytes,
            table_elements: config.agent_limits.table_elements,
            per_component: u32::try_from(config.agent_limits.instances).unwrap_or(u32::MAX),
        });
        let components = Components::new(
            config.agent_limits.fuel_per_task.is_some(),
            pool,
            crate::runtime::guest::add_imports,
        )
        .map_err(|e| HostError::Wasmtime(format!("{e:#}")))?
        .keeping(config.compiled_code);
        let tokens = Arc::new(StoreTokens(Arc::clone(&store)));
        let gate = Gate::new(root.public(), tokens, kernel.limits());
        let options = Options {
            snapshot_every: config.snapshot_every,
            last_snapshot,
            #[cfg(feature = "bench")]
            skip_gate: config.skip_gate,
            #[cfg(not(feature = "bench"))]
            skip_gate: false,
            state_budget: config.state_shares(kernel.limits().max_state_bytes),
            disk_reserve: config.disk_reserve,
        };
        let sequencer = Sequencer::new(kernel, gate, Arc::clone(&store), config.clock, options);
        let data_id = match store.data_id()? {
            Some(id) => id,
            // A store opened read-only before it had an id: requests get
            // keys from its root key instead (still per installation).
            None => {
                let derived = root.derive_secret("toka 2026-12 data dir id");
                derived[..16].try_into().expect("16 of 32 bytes")
            }
        };
        let outbound = Arc::new(crate::runtime::outbound::Outbound::new(
            sequencer.clone(),
            Arc::clone(&config.secrets),
            data_id,
            config.outbound_connections,
        ));
        let bus = Arc::new(Bus::new());
        let adopt = rules_to_adopt(kernel_rules, config.rules);
        let config_starts = config.start_agents;
        let inner = Arc::new(HostInner {
            sequencer,
            outbound,
            components,
            agent_limits: config.agent_limits,
            places,
            warm: crate::runtime::instance::Warm::new(config.warm_instances),
            kept_paces: Arc::default(),
            memory,
            draining: AtomicBool::new(false),
            held: tokio::sync::Notify::new(),
            waiters: crate::runtime::tasks::Waiters::default(),
            archiving: std::sync::Mutex::new(()),
            operator_tokens: crate::capability::presented::PresentedTokens::default(),
            protected_paths: config.protected_paths,
            agents_started: AtomicBool::new(config.start_agents),
            entropy: root.derive_secret("toka 2026-11 guest task randomness"),
            store: Arc::clone(&store),
            bus,
            actors: crate::runtime::roster::Roster::default(),
            runtime: tokio::runtime::Handle::current(),
        });

        let router = Arc::clone(&inner);
        let ended = Arc::clone(&inner);
        let writer = inner.sequencer.start_writer(
            store,
            Box::new(move |batch: Arc<Committed>| router.route(batch)),
            Box::new(move || ended.writer_ended()),
        )?;
        let ticker = start_ticker(inner.components.engine().clone(), Arc::clone(&inner.places))?;
        let host = Host {
            inner,
            root: Arc::new(root),
            writer: Some(writer),
            ticker: Some(ticker),
        };
        if let Some(rules) = adopt {
            let adopted = host
                .inner
                .sequencer
                .submit_system(
                    EntityId::SYSTEM,
                    Operation::AdoptRules {
                        rules: Box::new(rules),
                    },
                    Attachments::default(),
                )
                .await??;
            host.inner.sequencer.wait_durable(adopted.seq).await?;
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

    /// The host's command methods on the authority of an operator's token
    /// (see [`Host::operator_token`]): each command is checked for the
    /// level it needs when it is applied, and its record names the token.
    #[must_use]
    pub fn as_operator(&self, token: Token) -> Acting<'_> {
        Acting::new(self.parts(), Some(token))
    }

    /// The host's command methods on its own authority (the operator at
    /// this host: the CLI, a program embedding the library) — among them
    /// those [`Host`] has no shortcut for: the trust store and packages
    /// ([`Acting::trust`], [`Acting::install_package`], ...).
    #[must_use]
    pub fn as_host(&self) -> Acting<'_> {
        Acting::new(self.parts(), None)
    }

    fn acting(&self) -> Acting<'_> {
        self.as_host()
    }

    fn parts(&self) -> HostParts<'_> {
        HostParts {
            inner: &self.inner,
            root: &self.root,
        }
    }

    /// Installs a component under `name` and returns its digest (see
    /// [`Acting::install`]).
    ///
    /// # Errors
    ///
    /// [`HostError::Component`] when the bytes are not a component this host
    /// can run as an agent; nothing is stored then.
    pub async fn install(&self, name: &str, bytes: Vec<u8>) -> Result<Digest, HostError> {
        self.acting().install(name, bytes).await
    }

    /// Spawns a root agent (parent: the system) running `component`, bound
    /// to the token `grant` describes (see [`Acting::spawn`]).
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
        self.acting().spawn(component, name, grant).await
    }

    /// Checks `grant` exactly as [`Host::spawn`] does, without recording
    /// anything: so a command can refuse a bad token before it writes.
    ///
    /// # Errors
    ///
    /// As [`Host::spawn`] for the token.
    pub fn check_grant(&self, grant: &Grant) -> Result<(), HostError> {
        self.parts().token_for(grant.clone()).map(drop)
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
        self.parts().compile(digest, bytes.into()).await?;
        Ok(digest)
    }

    /// Revokes every token carrying `revocation_id` (see [`Acting::revoke`]).
    ///
    /// # Errors
    ///
    /// [`HostError::UnknownRevocationId`] when no stored token carries the id
    /// (unless `force`); [`HostError::Kernel`] when it is already revoked.
    pub async fn revoke(&self, revocation_id: Vec<u8>, force: bool) -> Result<(), HostError> {
        self.acting().revoke(revocation_id, force).await
    }

    /// The verified token with this digest (from the store or the gate's cache).
    ///
    /// # Errors
    ///
    /// [`TokenError`] when it is not stored or does not verify.
    pub fn token(&self, digest: &Digest) -> Result<Token, TokenError> {
        self.inner.sequencer.token(digest)
    }

    /// The token an API client presents (base64 text or raw bytes),
    /// verified: rooted in this host's key, within the size limit, cheap to
    /// evaluate, not expired and not revoked. A token presented before is
    /// not verified again (until it falls out of a bounded cache); expiry
    /// and revocation are checked every time.
    ///
    /// Whether it carries the operator level a request needs is
    /// [`Host::authorize_operator`]'s question.
    ///
    /// # Errors
    ///
    /// [`TokenError`] naming what is wrong.
    pub fn operator_token(&self, presented: &[u8]) -> Result<Token, TokenError> {
        let max = self.parts().state_limits().max_token as usize;
        let root = self.root.public();
        let now = self.inner.sequencer.now();
        let token = self.inner.operator_tokens.get_or_verify(presented, || {
            let token = Token::parse(presented, root, max)?;
            token.admit(now)?;
            Ok(token)
        })?;
        token.check_not_expired(now)?;
        if self.parts().is_revoked(&token) {
            return Err(TokenError::Revoked);
        }
        Ok(token)
    }

    /// Whether `token` allows what `level` allows, now: its operator right
    /// (`admin` includes `write` includes `read`), its checks (expiry)
    /// at the host's current logical time, and revocations applied so far.
    /// Decisions are cached by the capability gate.
    ///
    /// # Errors
    ///
    /// [`Denied`] naming what is missing.
    pub fn authorize_operator(&self, token: &Token, level: OperatorLevel) -> Result<(), Denied> {
        self.parts().authorize_operator(token, level)
    }

    /// Mints a token signed by the host's root key, granting `rights`
    /// within `budgets`, expiring at `expires` if given (what `toka token
    /// issue` and `POST /v1/tokens` do).
    ///
    /// # Errors
    ///
    /// [`HostError::ProtectedPath`] for an `fs.*` right reaching into a
    /// path the host keeps to itself; [`HostError::Token`] when biscuit
    /// refuses the block.
    pub fn mint(
        &self,
        rights: &[Right],
        budgets: &[Budget],
        expires: Option<std::time::SystemTime>,
    ) -> Result<Token, HostError> {
        for right in rights {
            crate::sandbox::dirs::check_fs_right(right, &self.inner.protected_paths)?;
        }
        Ok(Token::issue(&self.root, rights, budgets, expires)?)
    }

    /// Queues a task for `agent` on the host's authority (see
    /// [`Acting::schedule`]).
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or terminated, its
    /// queue is full, or the description is too long.
    pub async fn schedule(&self, agent: AgentId, description: &str) -> Result<TaskId, HostError> {
        self.acting().schedule(agent, description).await
    }

    /// Terminates `agent` on the host's authority.
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or already terminated.
    pub async fn terminate(&self, agent: AgentId, reason: &str) -> Result<(), HostError> {
        self.acting().terminate(agent, reason).await
    }

    /// Lets a quarantined agent run tasks again (see
    /// [`Acting::resume_agent`]).
    ///
    /// # Errors
    ///
    /// [`HostError::Kernel`] when the agent is unknown or not quarantined.
    pub async fn resume_agent(&self, agent: AgentId) -> Result<(), HostError> {
        self.acting().resume_agent(agent).await
    }

    /// The task with this id: queued or running (from the committed
    /// state), or ended (found through the store's index of task ends).
    /// `None` when no such task was ever scheduled (or it ended before the
    /// index existed).
    ///
    /// # Errors
    ///
    /// [`HostError::Store`] or [`HostError::Log`] when the log cannot be
    /// read back.
    pub async fn task(&self, task: TaskId) -> Result<Option<TaskInfo>, HostError> {
        let found = self.find_task(task).await?;
        self.read_found(task, found)
    }

    /// Where `task` is: held in memory (queued, running, or among the
    /// recently ended), ended longer ago ([`TaskFound::InLog`]: read it
    /// with [`Host::task_from_log`]), or unknown. What a server answers
    /// from without replaying the log on a thread that serves others.
    ///
    /// # Errors
    ///
    /// [`HostError::Store`] when the index of task ends cannot be read.
    pub async fn find_task(&self, task: TaskId) -> Result<TaskFound, HostError> {
        if let Some(info) = self.state(|s| TaskInfo::unfinished(s, task)).await {
            return Ok(TaskFound::Held(info));
        }
        if let Some(info) = self.inner.waiters.recently_ended(task) {
            return Ok(TaskFound::Held(info));
        }
        Ok(match self.inner.store.task_end(task)? {
            Some(_) => TaskFound::InLog,
            None => TaskFound::Unknown,
        })
    }

    /// An ended task read back from the log: this replays the log from
    /// the snapshot before its end (as a page of events from there does),
    /// on the caller's thread.
    ///
    /// # Errors
    ///
    /// As [`Host::task`].
    pub fn task_from_log(&self, task: TaskId) -> Result<Option<TaskInfo>, HostError> {
        let Some(seq) = self.inner.store.task_end(task)? else {
            return Ok(None);
        };
        Ok(self.log_events(seq, 1)?.iter().find_map(|record| {
            record
                .events
                .iter()
                .find_map(|e| TaskInfo::ended(record.seq, e).filter(|i| i.id == task))
        }))
    }

    fn read_found(&self, task: TaskId, found: TaskFound) -> Result<Option<TaskInfo>, HostError> {
        match found {
            TaskFound::Held(info) => Ok(Some(info)),
            TaskFound::InLog => self.task_from_log(task),
            TaskFound::Unknown => Ok(None),
        }
    }

    /// Waits up to `timeout` for `task` to end, and returns it as it is
    /// then (ended, or still queued or running when the time ran out).
    /// `None` when there is no such task.
    ///
    /// # Errors
    ///
    /// As [`Host::task`].
    pub async fn wait_task(
        &self,
        task: TaskId,
        timeout: std::time::Duration,
    ) -> Result<Option<TaskInfo>, HostError> {
        let found = self.wait_for_task(task, timeout).await?;
        self.read_found(task, found)
    }

    /// As [`Host::wait_task`], but where the task is, as
    /// [`Host::find_task`] says it.
    ///
    /// # Errors
    ///
    /// As [`Host::find_task`].
    pub async fn wait_for_task(
        &self,
        task: TaskId,
        timeout: std::time::Duration,
    ) -> Result<TaskFound, HostError> {
        // Its end is committed without lingering while someone waits.
        let _awaiting = self.inner.sequencer.awaiting_ends(task);
        // Registered before looking: an end committed after the look
        // wakes the waiter.
        let ended = self.inner.waiters.wait(task);
        let unfinished = self
            .inner
            .sequencer
            .read(|k| TaskInfo::unfinished(k.state(), task));
        let Some(info) = unfinished else {
            // Ended (or never scheduled): once what was applied is durable,
            // the committed state and the index know which.
            drop(ended);
            self.inner.waiters.gave_up(task);
            self.wait_durable(self.head().seq).await?;
            return self.find_task(task).await;
        };
        match tokio::time::timeout(timeout, ended).await {
            Ok(Ok(ended)) => Ok(TaskFound::Held(TaskInfo {
                description: info.description,
                scheduled_seq: info.scheduled_seq,
                ..ended
            })),
            // Timed out, or the host stopped: the task as it is now.
            Ok(Err(_)) | Err(_) => {
                self.inner.waiters.gave_up(task);
                self.find_task(task).await
            }
        }
    }

    /// The secrets the host injects into agents' outbound requests.
    #[must_use]
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.outbound.secrets
    }

    /// Agents with an actor now: running a task or about to. An agent
    /// without work has none (and holds no instance), so this is 0 when
    /// the host is idle.
    #[must_use]
    pub fn running_actors(&self) -> usize {
        self.inner.actors.len()
    }

    /// Instances kept warm for agents without work, at most
    /// [`HostConfig::warm_instances`](crate::HostConfig::warm_instances);
    /// they hold no place for an instance.
    #[must_use]
    pub fn warm_instances(&self) -> usize {
        self.inner.warm.len()
    }

    /// The linear memory of the live instances: the budget, a tree's
    /// share, what they hold now and the most they held at once (see
    /// [`HostConfig::memory_budget`](crate::HostConfig::memory_budget)).
    #[must_use]
    pub fn memory(&self) -> MemoryUsage {
        self.inner.memory.usage()
    }

    /// What the agents hold in the kernel's state (their state keys and
    /// values, a fixed charge per agent record, the tasks not yet ended,
    /// the running tasks' journals),
    /// the budget and a tree's share (see
    /// [`HostConfig::state_budget`](crate::HostConfig::state_budget)).
    #[must_use]
    pub fn state_usage(&self) -> crate::StateUsage {
        self.inner.sequencer.state_usage()
    }

    /// The free space of the data dir's disk as last seen (after a
    /// commit, every 200 ms at most; `None` for a store that cannot tell),
    /// and the reserve below which agents' operations are refused (see
    /// [`HostConfig::disk_reserve`](crate::HostConfig::disk_reserve)).
    #[must_use]
    pub fn disk(&self) -> (Option<u64>, u64) {
        self.inner.sequencer.disk()
    }

    /// The host's counters since it opened: commits and committed events.
    #[must_use]
    pub fn metrics(&self) -> HostMetrics {
        self.inner.sequencer.metrics()
    }

    /// Stops starting tasks and waits up to `grace` for the running ones
    /// to end, for a graceful shutdown: what is queued stays queued, and a
    /// task still running when the time is up runs again when the host
    /// next opens the store (its applied operations answered from the
    /// log). Returns how many tasks were still running.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.held.notify_waiters();
        let running = || {
            self.inner.sequencer.read(|k| {
                k.state()
                    .agents()
                    .filter(|(_, a)| a.running.is_some())
                    .count()
            })
        };
        let mut published = self.inner.sequencer.published();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let now = running();
            if now == 0 || self.inner.sequencer.stopped().is_some() {
                return now;
            }
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return running(),
            }
        }
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
            // Listen before looking: an actor that ends after the look (with
            // nothing more to publish) still wakes this loop.
            let ended = self.inner.actors.ended();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let done = *published.borrow_and_update();
            // An agent with work has an actor: while one runs, the host is
            // not idle, and the agents need not be looked through.
            let idle = self.inner.actors.is_empty()
                && self.inner.sequencer.read(|k| {
                    k.head().seq == done
                        && k.state().agents().all(|(_, a)| {
                            a.running.is_none() && (a.queue.is_empty() || !a.is_active())
                        })
                });
            if idle {
                return Ok(());
            }
            if self.inner.actors.is_empty() {
                // Nothing runs: what is left is to commit what was
                // applied, at once rather than after the writer lingers.
                self.inner.sequencer.hurry();
            }
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        return Err(HostError::Stopped(crate::runtime::sequencer::Stopped(
                            "the log writer is gone".into(),
                        )));
                    }
                }
                () = &mut ended => {}
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

    /// Resolves once the host stopped accepting operations — its log
    /// writer failed (a cell's log refused the append: another host took
    /// the cell over) or it is shutting down — with the reason.
    /// The future lives on its own, so it can outlast a borrow of the host.
    pub fn stopped(&self) -> impl Future<Output = Stopped> + Send + 'static {
        let sequencer = self.inner.sequencer.clone();
        let mut published = sequencer.published();
        async move {
            loop {
                if let Some(stopped) = sequencer.stopped() {
                    return stopped;
                }
                if published.changed().await.is_err() {
                    return sequencer
                        .stopped()
                        .unwrap_or_else(|| Stopped("the host is gone".into()));
                }
            }
        }
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

    /// The committed state as [`Host::state`] reads it, shared, with the
    /// chain head it is the state after: for a caller that keeps what it
    /// computes from it until the head moves.
    pub async fn committed_view(&self) -> (ChainHead, Arc<WorldState>) {
        self.inner.sequencer.committed_view().await
    }

    /// The committed state encoded as a snapshot (see docs/format.md; read
    /// it back with [`decode_snapshot`](crate::decode_snapshot)), with
    /// the chain head it is the state after: for a client that follows the
    /// log itself from there.
    pub async fn encoded_state(&self) -> (ChainHead, Vec<u8>) {
        let (head, state) = self.inner.sequencer.committed_view().await;
        let bytes = crate::store::snapshot::encode_state(head, &state);
        (head, bytes)
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
        let mut reader = self.log_reader(from)?;
        self.read_log(&mut reader, limit)
    }

    /// The first record the live log holds: 1, or the record after the
    /// anchor once the log's beginning is archived (`toka archive`).
    ///
    /// # Errors
    ///
    /// [`HostError::Store`] when the store cannot be read.
    pub fn log_start(&self) -> Result<u64, HostError> {
        Ok(self
            .inner
            .store
            .anchor()?
            .map_or(1, |anchor| anchor.snapshot + 1))
    }

    /// Archives the log while the host runs: the records up to `keep`
    /// before the head go to the new file `to` (checked by replaying them,
    /// with the response bodies they reference), then leave the live
    /// store, which starts at a snapshot of the state after the last one
    /// archived — as [`archive`](crate::archive) does offline. Agents run
    /// on meanwhile; only the cut itself (storing the anchor) holds the log
    /// writer back, and then each of the short transactions that delete
    /// what was archived ([`Archived::writer_wait`](crate::Archived::writer_wait)).
    /// One archive at a time. Blocks: call it off the async runtime.
    ///
    /// Calls `progress(done, total)` every
    /// [`PROGRESS_EVERY`](crate::PROGRESS_EVERY) records, and once all are
    /// written: a [`ControlFlow::Break`](std::ops::ControlFlow::Break)
    /// stops it there, before the cut (a server stopping).
    ///
    /// # Errors
    ///
    /// As [`archive`](crate::archive),
    /// [`ArchiveError::Busy`](crate::ArchiveError::Busy) while another
    /// archive is being made, and
    /// [`ArchiveError::Stopped`](crate::ArchiveError::Stopped) when
    /// `progress` stopped it; the store is unchanged and no file is left
    /// behind.
    pub fn archive(
        &self,
        to: &std::path::Path,
        keep: u64,
        progress: &mut dyn FnMut(u64, u64) -> std::ops::ControlFlow<()>,
    ) -> Result<crate::Archived, crate::ArchiveError> {
        let _turn = match self.inner.archiving.try_lock() {
            Ok(turn) => turn,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(crate::ArchiveError::Busy),
        };
        let store = self.inner.store.as_ref();
        let mut written = crate::log::archive::write(store, to, keep, progress)?;
        // The records kept, looked at before the writer is held: the cut
        // looks only at those appended since.
        written.look(store)?;
        let mut archived = self
            .inner
            .sequencer
            .without_appends(|| written.cut(store))?;
        crate::log::archive::delete_archived(store, &mut archived);
        tracing::info!(
            first = archived.first,
            last = archived.last,
            file = %archived.file.display(),
            writer_wait_ms = archived.writer_wait.as_secs_f64() * 1e3,
            "archived the log while running"
        );
        Ok(archived)
    }

    /// A reader of the log whose next record is `from`: keep it to read on
    /// in linear time (positioning it costs a replay from the newest
    /// snapshot before `from`).
    ///
    /// # Errors
    ///
    /// As [`Host::log_events`].
    pub fn log_reader(&self, from: u64) -> Result<LogReader, HostError> {
        Ok(LogReader::new(self.inner.store.as_ref(), from)?)
    }

    /// Up to `limit` committed records from `reader`'s place on, with their
    /// events; the reader moves past them.
    ///
    /// # Errors
    ///
    /// As [`Host::log_events`].
    pub fn read_log(
        &self,
        reader: &mut LogReader,
        limit: usize,
    ) -> Result<Vec<CommittedRecord>, HostError> {
        self.read_log_within(reader, limit, usize::MAX)
    }

    /// As [`Host::read_log`], but no record past the one that brings those
    /// read to `max_bytes` as stored (see [`LogReader::read_within`]): for
    /// a page a client asked for, whose records' events the caller holds.
    ///
    /// # Errors
    ///
    /// As [`Host::log_events`].
    pub fn read_log_within(
        &self,
        reader: &mut LogReader,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<CommittedRecord>, HostError> {
        let durable = self.inner.sequencer.committed();
        let mut out = Vec::new();
        if limit > 0 {
            reader.read_within(self.inner.store.as_ref(), durable, max_bytes, |record| {
                out.push(record);
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    /// The tip of the log (applied, possibly not yet durable).
    #[must_use]
    pub fn head(&self) -> ChainHead {
        self.inner.sequencer.read(Kernel::head)
    }

    /// The cluster cell this host's log is, if it is one's.
    #[must_use]
    pub fn cell(&self) -> Option<toka_kernel::Cell> {
        self.inner.store.cell()
    }

    /// A handle on the cell's mail for the cluster's carriers (see
    /// [`CellMail`]).
    #[must_use]
    pub fn mail(&self) -> CellMail {
        CellMail::new(Arc::clone(&self.inner))
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

    /// The journaled requests of `task` (index and request), for the HTTP
    /// benchmark. Not an API.
    ///
    /// # Errors
    ///
    /// When a record cannot be read.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub fn bench_journaled_requests(
        &self,
        task: toka_kernel::TaskId,
    ) -> Result<Vec<(u32, toka_kernel::HttpRequest)>, String> {
        let exchanges: Vec<(u32, u64)> = self.inner.sequencer.read(|k| {
            (0..)
                .map_while(|i| k.state().exchange(task, i).map(|e| (i, e.request)))
                .collect()
        });
        exchanges
            .into_iter()
            .map(
                |(index, seq)| match self.inner.sequencer.recorded_op(seq)? {
                    Operation::HttpRequest { request, .. } => Ok((index, *request)),
                    other => Err(format!("record {seq} is a {}", other.kind())),
                },
            )
            .collect()
    }

    /// Answers a re-run's request from the journal, as the sandbox asks it
    /// (for the HTTP benchmark; the task must be running, with its agents
    /// not started). Not an API.
    ///
    /// # Errors
    ///
    /// When the journal has no answer for it.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub async fn bench_journal_answer(
        &self,
        agent: AgentId,
        task: toka_kernel::TaskId,
        index: u32,
        request: toka_kernel::HttpRequest,
    ) -> Result<usize, String> {
        match self
            .inner
            .sequencer
            .journal_request(agent, task, index, request)
            .await
            .map_err(|e| e.0)?
        {
            crate::sandbox::Journaled::Answered { body, .. } => Ok(body.len()),
            other => Err(format!(
                "request {index} was not answered from the journal: {other:?}"
            )),
        }
    }

    /// Instantiates `agent`'s component exactly as its actor does (store,
    /// WASI context, instance, `init`) and drops it. For benchmarks.
    #[cfg(feature = "bench")]
    #[doc(hidden)]
    pub async fn bench_instantiate(&self, agent: AgentId) -> Result<(), String> {
        let place = crate::runtime::actor::take_place(&self.inner, agent).await?;
        crate::runtime::actor::instantiate(&self.inner, agent, place)
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
        // The writer closes the bus after its last batch, so subscribers
        // receive that batch first.
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .ok();
        }
        match failure {
            Some(stopped) => Err(stopped.into()),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.inner.sequencer.close();
        self.inner.held.notify_waiters();
        self.inner.places.close();
        // The ticker ticks on until no instance holds a place: a guest
        // computing now yields at its next epoch deadline, where the check
        // raced against its call (`actor::abandoned`) ends it, instead of
        // running on with no tick to yield at (keeping its worker thread,
        // and the runtime's shutdown, waiting for ever).
        if let Some(stop) = self.ticker.take() {
            stop.store(true, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::capability::rights::Right;
    use crate::{Grant, Host, HostConfig, MemoryStore, RootKey};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_component_leaves_the_compiled_cache() {
        let store = Arc::new(crate::MemoryStore::new(toka_kernel::Limits::default()));
        let host = Host::open(
            store,
            crate::RootKey::generate(),
            crate::HostConfig::default(),
        )
        .await
        .unwrap();
        let bytes = std::fs::read(toka_agents::path("test-bench").unwrap()).unwrap();
        let digest = host.install("bench", bytes).await.unwrap();
        let components = &host.inner.components;
        assert!(components.cached(&digest).is_some(), "installing compiles");
        host.as_host().remove_component(digest).await.unwrap();
        let head = host.head().seq;
        host.inner.sequencer.wait_published(head).await.unwrap();
        assert!(components.cached(&digest).is_none());
        host.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_cache_of_one_audits_as_a_large_one() {
        // Agents of three tokens take turns in the log: with one token
        // kept, each record reads its token from the store again.
        let store = Arc::new(MemoryStore::new(toka_kernel::Limits::default()));
        let root = RootKey::generate();
        let public = root.public();
        let host = Host::open(Arc::clone(&store) as _, root, HostConfig::default())
            .await
            .unwrap();
        let bytes = std::fs::read(toka_agents::path("hello").unwrap()).unwrap();
        let hello = host.install("hello", bytes).await.unwrap();
        let observe: Right = "observe".parse().unwrap();
        let mut agents = Vec::new();
        for name in ["a", "b", "c"] {
            let grant = Grant::Rights(vec![observe.clone()]);
            agents.push(host.spawn(hello, name, grant).await.unwrap());
        }
        for round in 0..3 {
            for &agent in &agents {
                host.schedule(agent, &format!("{round}")).await.unwrap();
            }
            host.run_until_idle().await.unwrap();
        }
        host.shutdown().await.unwrap();
        let large =
            crate::log::audit::audit_once(store.as_ref(), public, 4096, &mut |_, _| {}).unwrap();
        let one = crate::log::audit::audit_once(store.as_ref(), public, 1, &mut |_, _| {}).unwrap();
        assert!(large.allowed >= 9, "{large:?}");
        assert!(large.mismatches.is_empty(), "{large:?}");
        assert_eq!(one, large);
    }
}
