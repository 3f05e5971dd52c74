//! Long jobs the API starts and reports on: verifying the log (`POST
//! /v1/verify`) and archiving it (`POST /v1/archive`). One of each kind
//! runs at a time (each reads the whole log); `GET` reports its progress
//! and result. The last few of each kind are kept.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use toka_host::{ArchiveError, ArchiveFileError, EventStore, Host, PublicKey};

use crate::views::{ArchiveJob, VerifyJob};

/// The directory of the data dir archives are written into.
pub(crate) const ARCHIVES: &str = "archives";

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes what archives a server stopped in the middle of left in `dir`
/// (`NAME.partial`: an archive is renamed to its name once complete).
/// Called before an archive starts, when no other one is being written.
fn remove_partials(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".toka-archive.partial")
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::warn!(file = %entry.path().display(), error = %e, "removing an unfinished archive");
        }
    }
}

/// Finished jobs kept per kind for `GET /v1/{verify,archive}/{id}`.
const JOBS_KEPT: usize = 8;

/// What a kind of job reports.
pub(crate) trait Job: Clone + Send + 'static {
    /// Its id.
    fn id(&self) -> u64;
    /// Whether it still runs.
    fn running(&self) -> bool;
    /// It ended without a result, for `why`.
    fn failed(&mut self, why: String);
}

impl Job for VerifyJob {
    fn id(&self) -> u64 {
        self.id
    }
    fn running(&self) -> bool {
        self.state == "running"
    }
    fn failed(&mut self, why: String) {
        self.state = "failed".into();
        self.problems.push(why);
    }
}

impl Job for ArchiveJob {
    fn id(&self) -> u64 {
        self.id
    }
    fn running(&self) -> bool {
        self.state == "running"
    }
    fn failed(&mut self, why: String) {
        self.state = "failed".into();
        self.problem = Some(why);
    }
}

/// The jobs of one kind, newest last.
#[derive(Debug)]
pub(crate) struct Jobs<J> {
    jobs: Mutex<VecDeque<J>>,
    /// Set when the server stops: a job that can stop early does.
    stopping: AtomicBool,
}

impl<J> Default for Jobs<J> {
    fn default() -> Self {
        Self {
            jobs: Mutex::new(VecDeque::new()),
            stopping: AtomicBool::new(false),
        }
    }
}

impl<J: Job> Jobs<J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<J>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job with this id.
    pub(crate) fn get(&self, id: u64) -> Option<J> {
        self.lock().iter().find(|j| j.id() == id).cloned()
    }

    /// The newest job.
    pub(crate) fn latest(&self) -> Option<J> {
        self.lock().back().cloned()
    }

    /// Adds the job `make(id)` and runs `run(id)` on a blocking thread,
    /// unless one runs: then that one is the error.
    fn begin(
        self: &Arc<Self>,
        make: impl FnOnce(u64) -> J,
        run: impl FnOnce(&Self, u64) + Send + 'static,
    ) -> Result<J, Box<J>>
    where
        J: Sync,
    {
        let mut jobs = self.lock();
        if let Some(running) = jobs.iter().find(|j| j.running()) {
            return Err(Box::new(running.clone()));
        }
        let id = jobs.back().map_or(1, |j| j.id() + 1);
        let job = make(id);
        jobs.push_back(job.clone());
        while jobs.len() > JOBS_KEPT {
            jobs.pop_front();
        }
        drop(jobs);
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // A job that panicked is over: it must not keep the next one
            // of its kind from starting.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&this, id)));
            if ran.is_err() {
                this.update(id, |j| {
                    j.failed("the job panicked (see the server's log)".into())
                });
            }
        });
        Ok(job)
    }

    /// Asks the running job to stop where it can, and waits up to `bound`
    /// for it to end; whether it did.
    pub(crate) async fn stop(&self, bound: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let until = Instant::now() + bound;
        while self.lock().iter().any(Job::running) {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut J)) {
        if let Some(job) = self.lock().iter_mut().find(|j| j.id() == id) {
            f(job);
        }
    }
}

impl Jobs<VerifyJob> {
    /// Starts a verification, or returns the one running.
    pub(crate) fn start(
        self: &Arc<Self>,
        store: Arc<dyn EventStore>,
        root: PublicKey,
        auth: bool,
    ) -> VerifyJob {
        let make = |id| VerifyJob {
            id,
            state: "running".into(),
            auth,
            done: 0,
            total: 0,
            state_digest: None,
            snapshots: None,
            decisions: None,
            problems: Vec::new(),
            seconds: None,
        };
        self.begin(make, move |jobs, id| jobs.verify(id, &*store, root, auth))
            .unwrap_or_else(|running| *running)
    }

    fn verify(&self, id: u64, store: &dyn EventStore, root: PublicKey, auth: bool) {
        let started = Instant::now();
        let mut progress = |done: u64, total: u64| {
            self.update(id, |j| {
                j.done = done;
                j.total = total;
            });
        };
        let verified = toka_host::verify_reporting(store, &mut progress);
        let mut problems = Vec::new();
        let mut result = None;
        match verified {
            Ok(v) => result = Some(v),
            Err(e) => problems.push(e.to_string()),
        }
        let mut decisions = None;
        if auth && result.is_some() {
            match toka_host::audit_reporting(store, root, &mut progress) {
                Ok(report) => {
                    decisions = Some(report.allowed + report.denied + report.operator);
                    problems.extend(
                        report
                            .mismatches
                            .iter()
                            .map(|m| format!("record {}: {}", m.seq, m.problem)),
                    );
                }
                Err(e) => problems.push(format!("audit: {e}")),
            }
        }
        self.update(id, |j| {
            j.state = if problems.is_empty() { "ok" } else { "failed" }.into();
            if let Some(v) = &result {
                j.done = v.records;
                j.total = j.total.max(v.records);
                j.state_digest = Some(v.state_digest.to_string());
                j.snapshots = Some(v.snapshots as u64);
            }
            j.decisions = decisions;
            j.problems = problems;
            j.seconds = Some(started.elapsed().as_secs_f64());
        });
    }
}

impl ArchiveJob {
    /// Job `id`, just started, keeping `keep` records.
    fn started(id: u64, keep: u64) -> Self {
        ArchiveJob {
            id,
            state: "running".into(),
            keep,
            done: 0,
            total: 0,
            file: None,
            first: None,
            last: None,
            kept_from: None,
            bodies: None,
            bytes: None,
            blobs_dropped: None,
            tokens_dropped: None,
            writer_wait_seconds: None,
            problem: None,
            seconds: None,
        }
    }
}

impl Jobs<ArchiveJob> {
    /// Starts archiving `host`'s log into a new file in the data dir
    /// `data`'s [`ARCHIVES`] directory, keeping `keep` records; the one
    /// running is the error.
    pub(crate) fn start(
        self: &Arc<Self>,
        host: Arc<Host>,
        data: &std::path::Path,
        keep: u64,
    ) -> Result<ArchiveJob, Box<ArchiveJob>> {
        let dir = data.join(ARCHIVES);
        self.begin(
            |id| ArchiveJob::started(id, keep),
            move |jobs, id| jobs.archive(id, &host, &dir, keep),
        )
    }

    fn archive(&self, id: u64, host: &Host, dir: &std::path::Path, keep: u64) {
        let started = Instant::now();
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let file = dir.join(format!("log-{seconds}-{id}.toka-archive"));
        let made = std::fs::create_dir_all(dir)
            .map_err(|source| {
                ArchiveError::File(ArchiveFileError::Create {
                    path: dir.to_owned(),
                    source,
                })
            })
            .and_then(|()| {
                remove_partials(dir);
                host.archive(&file, keep, &mut |done, total| {
                    self.update(id, |j| {
                        j.done = done;
                        j.total = total;
                    });
                    if self.stopping.load(Ordering::SeqCst) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            });
        self.update(id, |j| {
            j.seconds = Some(started.elapsed().as_secs_f64());
            match made {
                Ok(archived) => {
                    j.state = "ok".into();
                    j.done = archived.last;
                    j.total = archived.last;
                    // Relative to the data dir: readers see no host path.
                    j.file = Some(format!("{ARCHIVES}/{}", file_name(&archived.file)));
                    j.first = Some(archived.first);
                    j.last = Some(archived.last);
                    j.kept_from = Some(archived.anchor.kept_from);
                    j.bodies = Some(archived.bodies);
                    j.bytes = Some(archived.bytes);
                    j.blobs_dropped = Some(archived.blobs_dropped as u64);
                    j.tokens_dropped = Some(archived.tokens_dropped as u64);
                    j.writer_wait_seconds = Some(archived.writer_wait.as_secs_f64());
                }
                Err(e) => {
                    j.state = match e {
                        ArchiveError::Nothing(_) => "nothing",
                        ArchiveError::Stopped => "stopped",
                        _ => "failed",
                    }
                    .into();
                    // Relative to the data dir, as the file: a reader
                    // learns no path of the host's.
                    let at = dir.display().to_string();
                    j.problem = Some(e.to_string().replace(&at, ARCHIVES));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};

    use crate::jobs::{Job, Jobs};
    use crate::views::ArchiveJob;

    fn job(id: u64) -> ArchiveJob {
        ArchiveJob::started(id, 0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_server_stops_an_archive_before_its_cut() {
        use toka_host::EventStore as _;
        use toka_kernel::{Command, EntityId, Kernel, Limits, Operation, Timestamp};

        let store = Arc::new(toka_host::MemoryStore::new(Limits::default()));
        let mut kernel = Kernel::new(Limits::default());
        let mut batch = toka_host::Batch::default();
        for i in 0..3 * toka_host::PROGRESS_EVERY {
            let revocation_id = i.to_le_bytes().to_vec();
            let op = Operation::RevokeToken { revocation_id };
            let applied = kernel
                .apply(Command::system(EntityId::SYSTEM, Timestamp(i), op))
                .unwrap();
            batch.records.push((applied.seq, applied.bytes));
        }
        batch.head = kernel.head();
        store.append(batch).unwrap();
        let host = toka_host::Host::open(
            Arc::clone(&store) as Arc<dyn toka_host::EventStore>,
            toka_host::RootKey::generate(),
            toka_host::HostConfig::default(),
        )
        .await
        .unwrap();
        let (host, head) = (Arc::new(host), store.head().unwrap());
        let data = tempfile::tempdir().unwrap();
        let jobs: Arc<Jobs<ArchiveJob>> = Arc::default();
        // The server stops as the archive starts: it stops at its first
        // look at its progress.
        assert!(jobs.stop(std::time::Duration::ZERO).await);
        let job = jobs.start(Arc::clone(&host), data.path(), 0).unwrap();
        assert!(jobs.stop(std::time::Duration::from_secs(60)).await);
        let ended = jobs.get(job.id).unwrap();
        assert_eq!(ended.state, "stopped", "{ended:?}");
        assert!(ended.done < head.seq, "{ended:?}");
        assert!(
            ended.problem.unwrap().contains("nothing was archived"),
            "{job:?}"
        );
        // The log as it was, and no file left.
        assert_eq!(store.head().unwrap(), head);
        assert!(store.anchor().unwrap().is_none());
        let left = std::fs::read_dir(data.path().join(super::ARCHIVES)).unwrap();
        assert_eq!(left.count(), 0);
    }

    #[tokio::test]
    async fn one_job_of_a_kind_runs_at_a_time_and_the_last_few_are_kept() {
        let jobs: Arc<Jobs<ArchiveJob>> = Arc::default();
        let (go, wait) = mpsc::channel::<()>();
        let (done, ended) = mpsc::channel::<()>();
        let first = jobs
            .begin(job, move |jobs, id| {
                wait.recv().unwrap();
                jobs.update(id, |j| j.state = "ok".into());
                done.send(()).unwrap();
            })
            .unwrap();
        let refused = jobs.begin(job, |_, _| unreachable!("not started"));
        assert_eq!(refused.unwrap_err().id, first.id, "the running one answers");
        go.send(()).unwrap();
        tokio::task::spawn_blocking(move || ended.recv().unwrap())
            .await
            .unwrap();
        assert_eq!(jobs.get(first.id).unwrap().state, "ok");
        for _ in 0..20 {
            let next = jobs.begin(job, |jobs, id| jobs.update(id, |j| j.state = "ok".into()));
            let id = next.unwrap().id;
            while jobs.get(id).unwrap().state == "running" {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(jobs.latest().unwrap().id, first.id + 20);
        assert!(jobs.get(first.id).is_none(), "only the last few are kept");
        let panicked = jobs.begin(job, |_, _| panic!("a bug")).unwrap();
        while jobs.get(panicked.id).unwrap().running() {
            tokio::task::yield_now().await;
        }
        assert_eq!(jobs.get(panicked.id).unwrap().state, "failed");
        assert!(jobs.begin(job, |_, _| {}).is_ok(), "the next one starts");
    }
}
