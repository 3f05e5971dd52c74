//! Verification jobs: `POST /v1/verify` starts one (one at a time: it
//! replays the whole log), `GET /v1/verify[/{id}]` reports its progress and
//! result. The last few results are kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use toka_host::{EventStore, PublicKey};

use crate::views::VerifyJob;

/// Finished jobs kept for `GET /v1/verify/{id}`.
const JOBS_KEPT: usize = 8;

/// The jobs, newest last.
#[derive(Debug, Default)]
pub(crate) struct VerifyJobs {
    jobs: Mutex<VecDeque<VerifyJob>>,
}

impl VerifyJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<VerifyJob>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job with this id.
    pub(crate) fn get(&self, id: u64) -> Option<VerifyJob> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }

    /// The newest job.
    pub(crate) fn latest(&self) -> Option<VerifyJob> {
        self.lock().back().cloned()
    }

    /// Starts a job, or returns the one running (`false`: not started).
    pub(crate) fn start(
        self: &Arc<Self>,
        store: Arc<dyn EventStore>,
        root: PublicKey,
        auth: bool,
    ) -> (VerifyJob, bool) {
        let mut jobs = self.lock();
        if let Some(running) = jobs.iter().find(|j| j.state == "running") {
            return (running.clone(), false);
        }
        let id = jobs.back().map_or(1, |j| j.id + 1);
        let job = VerifyJob {
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
        jobs.push_back(job.clone());
        while jobs.len() > JOBS_KEPT {
            jobs.pop_front();
        }
        drop(jobs);
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || this.run(id, &*store, root, auth));
        (job, true)
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut VerifyJob)) {
        if let Some(job) = self.lock().iter_mut().find(|j| j.id == id) {
            f(job);
        }
    }

    fn run(&self, id: u64, store: &dyn EventStore, root: PublicKey, auth: bool) {
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
