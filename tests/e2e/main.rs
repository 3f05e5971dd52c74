//! End-to-end tests: the real `toka` binary and the real host library, with
//! agents compiled to `wasm32-wasip2` components, on redb files in temporary
//! data dirs.

mod bad_input;
mod capabilities;
mod cluster;
mod crash;
mod dashboard;
mod demo;
mod durability;
mod faults;
mod hardening;
mod hostile;
mod install;
mod journal;
mod outbound;
mod packages;
mod recovery;
mod restart;
mod retention;
mod scale;
mod serve;
mod servers;
mod tokens;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use toka_host::{DataDir, EventStore, Grant, Host, HostConfig};

/// What one `toka` invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "toka failed: {self:#?}");
        &self.stdout
    }
}

/// How long a command a test runs may take before the test fails (and the
/// command is killed): far beyond what any takes here, so only a hang
/// meets it, as one failed test instead of a suite that never ends.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// Runs `command` to its end as [`Command::output`] does, but kills it and
/// panics with what it printed so far if it runs longer than `limit`.
#[track_caller]
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).ok();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let Some(status) = status else {
        panic!(
            "{command:?} ran longer than {limit:?} and was killed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs the `toka` binary with `--data data` and `args`.
pub fn toka(data: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = output_within(
        Command::new(env!("CARGO_BIN_EXE_toka"))
            .arg("--data")
            .arg(data)
            .args(args)
            .env_remove("RUST_LOG"),
        COMMAND_LIMIT,
    );
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// `toka events --json`, parsed.
pub fn events_json(data: &Path) -> Vec<Value> {
    toka(data, &["events", "--json"])
        .ok()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect()
}

/// A fresh temporary directory; the data dir is a path inside it that does
/// not exist yet.
/// Appends `records` operators' revocations (each a distinct id) to an
/// empty `store`, in batches of 10 000, as a host would have committed
/// them: a long log made in a moment.
pub fn write_revocations(store: &dyn EventStore, records: u64) {
    use toka_kernel::{Command, EntityId, Kernel, Limits, Operation, Timestamp};
    let mut kernel = Kernel::new(Limits::default());
    let mut batch = toka_host::Batch::default();
    for i in 0..records {
        let op = Operation::RevokeToken {
            revocation_id: i.to_le_bytes().to_vec(),
        };
        let applied = kernel
            .apply(Command::system(EntityId::SYSTEM, Timestamp(i), op))
            .unwrap();
        batch.records.push((applied.seq, applied.bytes));
        if batch.records.len() == 10_000 || i + 1 == records {
            batch.head = kernel.head();
            store.append(std::mem::take(&mut batch)).unwrap();
        }
    }
}

pub fn temp_data() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

/// The path of a compiled agent.
pub fn agent_path(name: &str) -> &'static str {
    toka_agents::path(name).unwrap_or_else(|| panic!("no compiled agent named {name}"))
}

/// The bytes of a compiled agent.
pub fn agent_bytes(name: &str) -> Vec<u8> {
    std::fs::read(agent_path(name)).expect("read agent")
}

/// Opens a host on the redb store in `data` (created if needed, with its
/// root key in the data dir).
pub async fn open_host(data: &Path) -> Host {
    open_host_with(data, HostConfig::default()).await
}

/// [`open_host`] with a configuration (e.g. a manual clock).
pub async fn open_host_with(data: &Path, config: HostConfig) -> Host {
    let dir = DataDir::new(data);
    let root = dir.root_key(None, true).expect("root key");
    let store = dir
        .open_or_create(&toka_kernel::Limits::default(), &root)
        .expect("open data dir");
    Host::open(Arc::new(store), root, config)
        .await
        .expect("open host")
}

/// Schedules `description` for `agent`, runs until idle, and returns the
/// task's output, or its failure reason (read from the log, so a bus that
/// dropped batches under a flood does not hide it).
pub async fn outcome(
    host: &Host,
    agent: toka_kernel::AgentId,
    description: &str,
) -> Result<String, String> {
    let from = host.head().seq + 1;
    let task = host.schedule(agent, description).await.expect("schedule");
    host.run_until_idle().await.expect("run");
    let records = host.log_events(from, usize::MAX).expect("read the log");
    find_outcome(&records, task)
        .unwrap_or_else(|| panic!("task {description:?} neither completed nor failed"))
}

/// Schedules `description` for `agent` and waits for that task alone
/// (whatever else runs meanwhile), returning its output or failure reason.
pub async fn served(
    host: &Host,
    agent: toka_kernel::AgentId,
    description: &str,
) -> Result<String, String> {
    use tokio::sync::broadcast::error::RecvError;
    let from = host.head().seq + 1;
    let mut rx = host.subscribe();
    let task = host.schedule(agent, description).await.expect("schedule");
    loop {
        let found = match rx.recv().await {
            Ok(batch) => find_outcome(&batch.records, task),
            // The bus dropped batches: the log has them.
            Err(RecvError::Lagged(_)) => find_outcome(
                &host.log_events(from, usize::MAX).expect("read the log"),
                task,
            ),
            Err(RecvError::Closed) => panic!("the host stopped before task {description:?} ended"),
        };
        if let Some(outcome) = found {
            return outcome;
        }
    }
}

/// The outcome of `task` among `records`, if it is there.
fn find_outcome(
    records: &[toka_host::CommittedRecord],
    task: toka_kernel::TaskId,
) -> Option<Result<String, String>> {
    records
        .iter()
        .flat_map(|r| &r.events)
        .find_map(|event| match event {
            toka_kernel::Event::TaskCompleted {
                task: t, output, ..
            } if *t == task => Some(Ok(String::from_utf8_lossy(output).into_owned())),
            toka_kernel::Event::TaskFailed {
                task: t, reason, ..
            } if *t == task => Some(Err(reason.clone())),
            _ => None,
        })
}

/// A grant of the given rights.
pub fn grant(rights: &[&str]) -> Grant {
    Grant::Rights(rights.iter().map(|r| r.parse().expect("right")).collect())
}

/// A host on a redb file in a temporary dir, with `hello` running as a
/// bystander whose tasks must keep being served.
#[derive(Debug)]
pub struct Arena {
    _tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub store: Arc<toka_host::RedbStore>,
    pub host: Host,
    pub bystander: toka_kernel::AgentId,
}

impl Arena {
    /// A host with these sandbox limits (and the default configuration).
    pub async fn with_limits(limits: toka_host::AgentLimits) -> Self {
        Self::new(HostConfig::new().agent_limits(limits).clone()).await
    }

    /// A host with `config`.
    pub async fn new(config: HostConfig) -> Self {
        let (tmp, data) = temp_data();
        let dir = DataDir::new(&data);
        let root = dir.root_key(None, true).expect("root key");
        let store = Arc::new(
            dir.open_or_create(&toka_kernel::Limits::default(), &root)
                .expect("open data dir"),
        );
        let host = Host::open(Arc::clone(&store) as Arc<dyn EventStore>, root, config)
            .await
            .expect("open host");
        let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
        let bystander = host
            .spawn(hello, "bystander", grant(&["observe"]))
            .await
            .unwrap();
        let arena = Self {
            _tmp: tmp,
            data,
            store,
            host,
            bystander,
        };
        arena.bystander_serves().await;
        arena
    }

    /// Installs the compiled agent `name` and spawns it with `grant`.
    pub async fn agent(&self, name: &str, grant: Grant) -> toka_kernel::AgentId {
        self.agent_named(name, name, grant).await
    }

    /// Installs the compiled agent `component` and spawns it as `name`
    /// with `grant` (for several agents of one component).
    pub async fn agent_named(
        &self,
        component: &str,
        name: &str,
        grant: Grant,
    ) -> toka_kernel::AgentId {
        let installed = self
            .host
            .install(component, agent_bytes(component))
            .await
            .unwrap();
        self.host.spawn(installed, name, grant).await.unwrap()
    }

    /// The bystander completes a task, as if nothing happened.
    pub async fn bystander_serves(&self) {
        assert_eq!(
            served(&self.host, self.bystander, "neighbour").await,
            Ok("Hello, neighbour!".to_owned())
        );
    }

    /// Shuts the host down, checks that the log verifies from its first
    /// record, and returns every event in log order.
    pub async fn finish(self) -> Vec<Logged> {
        self.bystander_serves().await;
        self.host.shutdown().await.unwrap();
        let verified = toka_host::verify(&*self.store).expect("the log verifies");
        let mut events = Vec::new();
        toka_host::replay(&*self.store, |applied| {
            events.extend(applied.events.iter().map(|event| Logged {
                seq: applied.seq,
                origin: applied.origin,
                event: event.clone(),
            }));
        })
        .unwrap();
        assert_eq!(verified.records, self.store.head().unwrap().seq);
        drop(self.store);
        // And the CLI agrees, from the file alone.
        let run = toka(&self.data, &["verify"]);
        assert!(run.ok().starts_with("ok "), "{run:?}");
        events
    }
}

/// An event, with the sequence number and origin of its record.
#[derive(Debug)]
pub struct Logged {
    pub seq: u64,
    pub origin: toka_kernel::EntityId,
    pub event: toka_kernel::Event,
}
