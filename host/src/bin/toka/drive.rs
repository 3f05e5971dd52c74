//! Running a host until idle while handling what it publishes.

use std::sync::Arc;

use toka_host::{Committed, Host, HostError};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Runs `host` until it is idle, calling `on_batch` with every committed
/// batch `rx` receives, in order; then drains what is left.
pub(crate) async fn until_idle(
    host: &Host,
    rx: &mut tokio::sync::broadcast::Receiver<Arc<Committed>>,
    mut on_batch: impl FnMut(&Committed),
) -> Result<(), HostError> {
    let idle = host.run_until_idle();
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            received = rx.recv() => match received {
                Ok(batch) => on_batch(&batch),
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => break,
            },
            result = &mut idle => {
                result?;
                break;
            }
        }
    }
    // Idle means every batch was published: whatever is queued is the rest.
    loop {
        match rx.try_recv() {
            Ok(batch) => on_batch(&batch),
            Err(TryRecvError::Lagged(n)) => lagged(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
        }
    }
}

fn lagged(batches: u64) {
    eprintln!(
        "warning: output fell behind and skipped {batches} batches of events; `toka events` has them all"
    );
}

/// A host opened by the CLI, and what it created to do so.
pub(crate) struct Opened {
    pub(crate) host: Host,
    created_dir: bool,
    created_store: bool,
}

/// Opens (or creates) the host on the data dir. Remembers what it created,
/// so a caller that then fails on bad input can [`discard`] it and leave
/// nothing half-written.
pub(crate) async fn open(place: &crate::Place) -> Result<Opened, crate::Failure> {
    let dir = place.dir();
    let created_dir = !dir.path().exists();
    let created_store = !dir.exists();
    let root = place.root_key(true)?;
    let store = dir
        .open_or_create(&toka_kernel::Limits::default(), &root)
        .map_err(crate::Failure::input)?;
    let config = toka_host::HostConfig {
        snapshot_every: place.snapshot_every,
        agent_limits: place.agent_limits.clone(),
        ..toka_host::HostConfig::default()
    };
    let host = Host::open(Arc::new(store), root, config).await;
    match host {
        Ok(host) => Ok(Opened {
            host,
            created_dir,
            created_store,
        }),
        Err(e) => {
            undo(&dir, created_dir, created_store);
            Err(e.into())
        }
    }
}

/// Shuts the host down and removes what [`open`] created.
pub(crate) async fn discard(opened: Opened, place: &crate::Place) {
    let _ = opened.host.shutdown().await;
    undo(&place.dir(), opened.created_dir, opened.created_store);
}

fn undo(dir: &toka_host::DataDir, created_dir: bool, created_store: bool) {
    if created_dir {
        let _ = std::fs::remove_dir_all(dir.path());
    } else if created_store {
        let _ = std::fs::remove_file(dir.db_path());
    }
}
