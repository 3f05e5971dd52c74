//! What a server does by itself so that a host running for months stays
//! bounded without an operator's cron: forget terminated agents
//! ([`ServeConfig::forget_terminated_every`](crate::ServeConfig::forget_terminated_every)) and archive the log
//! ([`ServeConfig::archive_every`](crate::ServeConfig::archive_every)) at intervals. Both are off by default:
//! forgetting takes agents out of the API's answers, and archive files
//! pile up in the data dir until the operator takes them away.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::app::App;

/// Runs the policies `app`'s configuration asks for until the server
/// closes; returns at once when it asks for none.
pub(crate) async fn run(app: Arc<App>) {
    let (forget, archive) = (
        app.config.forget_every,
        app.config.archive_every.filter(|_| archivable(&app)),
    );
    if forget.is_none() && archive.is_none() {
        return;
    }
    let closing = closed(app.closing.clone());
    tokio::pin!(closing);
    let mut forget_tick = forget.map(interval);
    let mut archive_tick = archive.map(interval);
    loop {
        tokio::select! {
            // Closing first: no new work once the server closes.
            biased;
            () = &mut closing => return,
            _ = tick(&mut forget_tick) => forget_now(&app).await,
            _ = tick(&mut archive_tick) => archive_now(&app),
        }
    }
}

/// Resolves once the server closes (or its closing signal is gone).
async fn closed(mut closing: tokio::sync::watch::Receiver<bool>) {
    while !*closing.borrow_and_update() {
        if closing.changed().await.is_err() {
            return;
        }
    }
}

/// Whether the server can archive: it has a data dir and its own log (a
/// cluster cell's log is JetStream's).
fn archivable(app: &App) -> bool {
    if app.config.data_dir.is_none() || app.store.cell().is_some() {
        tracing::warn!("archive_every needs a data dir of the server's own; not archiving");
        return false;
    }
    true
}

/// An interval whose first tick is one period from now (not at once: a
/// server that starts does not archive first thing).
fn interval(every: Duration) -> tokio::time::Interval {
    let every = every.max(Duration::from_secs(1));
    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
    // A late tick (the host was busy) is one tick, not a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The next tick of `interval`; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Forgets the terminated agents there are to forget (nothing is written
/// when there are none).
async fn forget_now(app: &App) {
    match app.host.as_host().forget_terminated().await {
        Ok(forgotten) if forgotten.agents > 0 => tracing::info!(
            agents = forgotten.agents,
            state_bytes = forgotten.state_bytes,
            "forgot terminated agents"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "forgetting terminated agents failed"),
    }
}

/// Starts an archive job of the records up to `--archive-keep` before the
/// head, as `POST /v1/archive` does, unless one runs (an operator's, or
/// the last period's).
fn archive_now(app: &App) {
    let Some(data) = &app.config.data_dir else {
        return;
    };
    match app
        .archives
        .start(Arc::clone(&app.host), data, app.config.archive_keep)
    {
        Ok(job) => tracing::info!(job = job.id, "archiving the log"),
        Err(running) => tracing::info!(
            job = running.id,
            "an archive is being made; this period's is skipped"
        ),
    }
}
