//! A small world builder shared by the kernel's integration tests.

#![allow(
    dead_code,
    reason = "each test file uses a different subset of the helpers"
)]
#![allow(unreachable_pub, reason = "test helper module")]

use toka_kernel::{
    AgentId, AgentSpec, Applied, Authorization, Budgets, Command, ComponentSpec, Digest, EntityId,
    Event, Kernel, KernelError, Limits, OpKey, Operation, PackageRecord, TaskId, TaskSpec,
    Timestamp,
};

/// A kernel, a clock that ticks once per command, and the bytes of every
/// record applied so far.
pub struct World {
    pub kernel: Kernel,
    pub now: u64,
    pub log: Vec<Vec<u8>>,
}

impl World {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self::with_kernel(Kernel::new(limits))
    }

    pub fn with_kernel(kernel: Kernel) -> Self {
        Self {
            kernel,
            now: 1_000,
            log: Vec::new(),
        }
    }

    /// Applies `command`, keeping its record's bytes when it is accepted.
    pub fn apply(&mut self, command: Command) -> Result<Applied, KernelError> {
        let applied = self.kernel.apply(command)?;
        self.log.push(applied.bytes.clone());
        Ok(applied)
    }

    fn tick(&mut self) -> Timestamp {
        self.now += 1;
        Timestamp(self.now)
    }

    /// Applies a command from the system on its own authority.
    pub fn system(&mut self, op: Operation) -> Result<Applied, KernelError> {
        let time = self.tick();
        self.apply(Command::system(EntityId::SYSTEM, time, op))
    }

    /// Applies a host-written command on `agent`'s behalf (e.g. task lifecycle).
    pub fn host_for(&mut self, agent: AgentId, op: Operation) -> Result<Applied, KernelError> {
        let time = self.tick();
        self.apply(Command::system(agent, time, op))
    }

    /// Applies an agent's own command, authorized by its bound token.
    pub fn agent(&mut self, agent: AgentId, op: Operation) -> Result<Applied, KernelError> {
        self.agent_in(agent, None, op)
    }

    /// Applies an agent's own command submitted while running `cause`.
    pub fn agent_in(
        &mut self,
        agent: AgentId,
        cause: Option<OpKey>,
        op: Operation,
    ) -> Result<Applied, KernelError> {
        let time = self.tick();
        self.apply(Command {
            origin: agent,
            time,
            auth: Authorization::Token,
            cause,
            op,
        })
    }

    /// Installs a component named `name` (its digest derives from the name).
    pub fn install(&mut self, name: &str) -> Digest {
        let digest = Digest::of(name.as_bytes());
        self.system(Operation::InstallComponent {
            component: Box::new(ComponentSpec {
                digest,
                name: name.to_owned(),
                size: name.len() as u64,
            }),
        })
        .expect("install");
        digest
    }

    /// Spawns a child of `parent` running a fresh component, on
    /// `parent`'s own authority.
    pub fn spawn_child(&mut self, parent: AgentId, name: &str) -> AgentId {
        let component = self.install(&format!("{name}-component"));
        let applied = self
            .agent(
                parent,
                Operation::SpawnAgent {
                    spec: Box::new(spec(component, name)),
                },
            )
            .expect("spawn child");
        spawned(&applied.events)
    }

    /// Asserts that replaying the log from its first record reaches the
    /// kernel's state.
    pub fn assert_replays(&self) {
        let replayed = toka_kernel::replay_log(&self.log, Limits::default(), Default::default())
            .expect("the log replays");
        assert_eq!(replayed.state().digest(), self.kernel.state().digest());
    }

    /// Spawns an agent of a fresh component, as the system.
    pub fn spawn_root(&mut self, name: &str) -> AgentId {
        let component = self.install(&format!("{name}-component"));
        let applied = self
            .system(Operation::SpawnAgent {
                spec: Box::new(spec(component, name)),
            })
            .expect("spawn");
        spawned(&applied.events)
    }

    pub fn schedule(&mut self, agent: AgentId, description: &str) -> TaskId {
        let applied = self
            .system(Operation::ScheduleTask {
                agent,
                spec: TaskSpec {
                    description: description.to_owned(),
                },
            })
            .expect("schedule");
        scheduled(&applied.events)
    }

    pub fn start(&mut self, agent: AgentId, task: TaskId) {
        self.host_for(agent, Operation::StartTask { task })
            .expect("start");
    }

    /// Asserts that `op` from `origin` (authorized as `auth`) is rejected with
    /// `expected` and that neither the state nor the chain head changed.
    pub fn assert_rejected(
        &mut self,
        origin: EntityId,
        auth: Authorization,
        op: Operation,
        expected: KernelError,
    ) {
        let before = (self.kernel.state().clone(), self.kernel.head());
        let time = self.tick();
        let err = self
            .kernel
            .apply(Command {
                origin,
                time,
                auth,
                cause: None,
                op,
            })
            .expect_err("command should be rejected");
        assert_eq!(err, expected);
        assert_eq!(
            (self.kernel.state().clone(), self.kernel.head()),
            before,
            "a rejected command changed the kernel"
        );
    }

    /// The authorization an agent's own operations carry.
    pub fn token_of(&self, agent: AgentId) -> Authorization {
        assert!(
            self.kernel.state().agent(agent).is_some(),
            "no agent {agent}"
        );
        Authorization::Token
    }
}

/// An install of package `name` at `version` from `publisher`, whose
/// component's digest derives from both and whose install token is
/// `token` (its revocation id derives from it).
pub fn package_install(name: &str, version: &str, publisher: &str, token: u8) -> Operation {
    let component = Digest::of(format!("{name}-{version}").as_bytes());
    Operation::InstallPackage {
        component: Box::new(ComponentSpec {
            digest: component,
            name: name.into(),
            size: 10,
        }),
        package: Box::new(PackageRecord {
            name: name.into(),
            version: version.into(),
            publisher: publisher.into(),
            component,
            signed_hash: "00".repeat(32),
            manifest: b"{}".to_vec(),
            approved: vec!["observe".into()],
            token: Digest::of(&[token]),
            revocation_ids: vec![vec![token; 64]],
            budgets: Budgets::default(),
        }),
    }
}

pub fn spec(component: Digest, name: &str) -> AgentSpec {
    AgentSpec {
        component,
        name: name.to_owned(),
        token: Digest::of(format!("token of {name}").as_bytes()),
        rights: Vec::new(),
    }
}

/// The agent of the single `AgentSpawned` event in `events`.
pub fn spawned(events: &[Event]) -> AgentId {
    match events {
        [Event::AgentSpawned { agent, .. }] => *agent,
        other => panic!("expected one AgentSpawned, got {other:?}"),
    }
}

/// The task of the single `TaskScheduled` event in `events`.
pub fn scheduled(events: &[Event]) -> TaskId {
    match events {
        [Event::TaskScheduled { task, .. }] => *task,
        other => panic!("expected one TaskScheduled, got {other:?}"),
    }
}
