//! Running a host until its work is done (or a limit stops it) while
//! handling what it publishes.

use std::sync::Arc;
use std::time::Duration;

use toka_host::{Committed, Host, HostError, Subscription};
use toka_kernel::Event;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// When a run stops even though work is left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Tasks started during the run (0: no bound).
    pub(crate) max_tasks: u64,
    /// Wall-clock time (`None`: no bound).
    pub(crate) timeout: Option<Duration>,
}

impl Bounds {
    /// No bound: run until idle.
    pub(crate) const NONE: Bounds = Bounds {
        max_tasks: 0,
        timeout: None,
    };
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Nothing left to do, except `waiting` tasks queued for quarantined
    /// agents.
    Idle { waiting: usize },
    /// `--max-tasks` tasks started.
    MaxTasks(u64),
    /// `--timeout` passed.
    Timeout(Duration),
}

impl Ending {
    /// The line that says what stopped the run, if it did not simply finish.
    pub(crate) fn explain(self) -> Option<String> {
        match self {
            Ending::Idle { waiting: 0 } => None,
            Ending::Idle { waiting } => Some(format!(
                "stopped: {waiting} task(s) wait for quarantined agents (`toka agent resume` lets them run)"
            )),
            Ending::MaxTasks(n) => Some(format!(
                "stopped: {n} tasks ran, the limit of --max-tasks; what is left runs on the next `toka run`"
            )),
            Ending::Timeout(d) => Some(format!(
                "stopped: the run took {}s, the limit of --timeout; what is left runs on the next `toka run`",
                d.as_secs()
            )),
        }
    }

    /// Whether a limit cut the run short (work for quarantined agents
    /// waits for the operator; it does not make a run fail).
    pub(crate) fn cut_short(self) -> bool {
        !matches!(self, Ending::Idle { .. })
    }
}

/// Runs `host` until it is idle or `bounds` stop it, calling `on_batch` with
/// every committed batch `rx` receives, in order; then drains what is left.
pub(crate) async fn until_idle(
    host: &Host,
    rx: &mut Subscription,
    bounds: Bounds,
    mut on_batch: impl FnMut(&Committed),
) -> Result<Ending, HostError> {
    let idle = host.run_until_idle();
    tokio::pin!(idle);
    let deadline = tokio::time::sleep(bounds.timeout.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut started = 0u64;
    let mut count = |batch: &Committed| {
        started += batch
            .records
            .iter()
            .flat_map(|r| &r.events)
            .filter(|e| matches!(e, Event::TaskStarted { .. }))
            .count() as u64;
        started
    };
    let ending = loop {
        tokio::select! {
            biased;
            received = rx.recv() => match received {
                Ok(batch) => {
                    on_batch(&batch);
                    if bounds.max_tasks > 0 && count(&batch) >= bounds.max_tasks {
                        break Ending::MaxTasks(started);
                    }
                }
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => break Ending::Idle { waiting: 0 },
            },
            result = &mut idle => {
                result?;
                break Ending::Idle { waiting: 0 };
            }
            () = &mut deadline, if bounds.timeout.is_some() => {
                break Ending::Timeout(bounds.timeout.unwrap_or_default());
            }
        }
    };
    // Whatever is queued was published before we stopped: handle it too.
    loop {
        match rx.try_recv() {
            Ok(batch) => on_batch(&batch),
            Err(TryRecvError::Lagged(n)) => lagged(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    Ok(match ending {
        Ending::Idle { .. } => Ending::Idle {
            waiting: host
                .state(|s| {
                    s.agents()
                        .filter(|(_, a)| {
                            matches!(a.status, toka_kernel::AgentStatus::Quarantined { .. })
                        })
                        .map(|(_, a)| a.queue.len())
                        .sum()
                })
                .await,
        },
        other => other,
    })
}

fn lagged(batches: u64) {
    eprintln!(
        "warning: output fell behind and skipped {batches} batches of events; `toka events` has them all"
    );
}

/// A host opened by the CLI, and what it created to do so.
pub(crate) struct Opened {
    pub(crate) host: Host,
    /// The store the host writes (readers such as the server's log
    /// endpoints read it too).
    pub(crate) store: Arc<toka_host::RedbStore>,
    created: Created,
}

/// What opening a data dir created (and a failure removes again).
#[derive(Debug, Clone, Copy)]
struct Created {
    dir: bool,
    store: bool,
    key: bool,
}

/// Opens (or creates) the host on the data dir, its agents not started
/// (commands that only write a record never start them; the others call
/// [`Opened::start`]). Remembers what it created, so a caller that then
/// fails on bad input can [`discard`] it and leave nothing half-written.
pub(crate) async fn open(place: &crate::Place) -> Result<Opened, crate::Failure> {
    let dir = place.dir();
    let created = Created {
        dir: !dir.path().exists(),
        store: !dir.exists(),
        key: place.root_key.is_none() && !dir.key_path().exists(),
    };
    let root = match place.root_key(true) {
        Ok(root) => root,
        Err(e) => {
            undo(&dir, created);
            return Err(e);
        }
    };
    let store = match dir.open_or_create(&toka_kernel::Limits::default(), &root) {
        Ok(store) => store,
        Err(e) => {
            undo(&dir, created);
            return Err(crate::Failure::input(e));
        }
    };
    let secrets = match toka_host::SecretStore::open(dir.path()) {
        Ok(secrets) => secrets,
        Err(e) => {
            undo(&dir, created);
            return Err(crate::Failure::input(e));
        }
    };
    // Agents start once the caller subscribed (`Opened::start`), so it sees
    // every event, those of tasks re-run after a crash included.
    let mut config = place.host_config();
    config.start_agents(false).secrets(Arc::new(secrets));
    let store = Arc::new(store);
    let host = Host::open(Arc::clone(&store) as _, root, config).await;
    match host {
        Ok(host) => Ok(Opened {
            host,
            store,
            created,
        }),
        Err(e) => {
            undo(&dir, created);
            Err(e.into())
        }
    }
}

impl Opened {
    /// Subscribes to what the host commits, then starts its agents.
    pub(crate) fn start(&self) -> Subscription {
        let rx = self.host.subscribe();
        self.host.start_agents();
        rx
    }
}

/// The server holding the data dir, if one runs: commands that write go
/// through its API instead of failing on the store's lock. With
/// `--cluster`, the host serving the cell (always: there is no local log).
pub(crate) async fn server(
    place: &crate::Place,
) -> Result<Option<toka_server::client::Client>, crate::Failure> {
    if place.cluster.is_some() {
        return crate::cluster::cell_client(place).await.map(Some);
    }
    toka_server::client::Client::for_data_dir(&place.data)
        .await
        .map_err(crate::Failure::input)
}

/// Shuts the host down and removes what [`open`] created.
pub(crate) async fn discard(opened: Opened, place: &crate::Place) {
    let _ = opened.host.shutdown().await;
    undo(&place.dir(), opened.created);
}

fn undo(dir: &toka_host::DataDir, created: Created) {
    if created.dir {
        let _ = std::fs::remove_dir_all(dir.path());
        return;
    }
    if created.store {
        let _ = std::fs::remove_file(dir.db_path());
    }
    if created.key {
        let _ = std::fs::remove_file(dir.key_path());
    }
}
