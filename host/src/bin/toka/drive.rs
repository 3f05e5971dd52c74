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

/// Opens (or creates) the host on the data dir at `data`. Also returns
/// whether the data dir was created now, so a caller that fails on bad input
/// can remove it again and leave nothing half-written.
pub(crate) async fn open(data: &std::path::Path) -> Result<(Host, bool), crate::Failure> {
    let dir = toka_host::DataDir::new(data);
    let created = !dir.exists();
    let store = dir
        .open_or_create(&toka_kernel::Limits::default())
        .map_err(crate::Failure::input)?;
    let host = Host::open(Arc::new(store), toka_host::HostConfig::default()).await?;
    Ok((host, created))
}

/// Undoes [`open`]'s creation of a data dir after bad input.
pub(crate) async fn discard(host: Host, data: &std::path::Path, created: bool) {
    let _ = host.shutdown().await;
    if created {
        let _ = std::fs::remove_dir_all(data);
    }
}
