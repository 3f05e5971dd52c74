//! Health, status and metrics.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use toka_host::{Histogram, OperatorLevel};
use toka_kernel::{AgentStatus, WorldState};

use crate::api::AuthErrors;
use crate::app::App;
use crate::auth::Reader;
use crate::views::{AgentCounts, Head, Health, Status};

/// Whether the server runs (no token needed).
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, description = "The host runs (or is stopping)", body = Health)))]
pub(crate) async fn healthz(State(app): State<Arc<App>>) -> axum::Json<Health> {
    let status = if app.is_closing() { "stopping" } else { "ok" };
    axum::Json(Health {
        status: status.into(),
    })
}

/// The host at a glance.
#[utoipa::path(get, path = "/v1/status", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "The host", body = Status), AuthErrors))]
pub(crate) async fn status(State(app): State<Arc<App>>, who: Reader) -> axum::Json<Status> {
    let level = OperatorLevel::ALL
        .into_iter()
        .rev()
        .find(|l| app.host.authorize_operator(&who.token, *l).is_ok())
        .unwrap_or(OperatorLevel::Read);
    let census = census(&app).await;
    axum::Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        head: head(&app),
        log_start: app.host.log_start().unwrap_or(1),
        root_public_key: app.root.to_string(),
        agents: census.agents,
        queued_tasks: census.queued,
        running_tasks: census.running,
        components: census.components,
        operator: level.name().into(),
    })
}

/// The committed head (read after the state it goes with: never behind it).
pub(crate) fn head(app: &App) -> Head {
    let head = app.store.head().unwrap_or_default();
    Head {
        seq: head.seq,
        hash: head.hash.to_string(),
    }
}

/// The census of the committed state, counted once per state: counting
/// walks every agent, and any `read` client may ask for it (status,
/// metrics) as often as its rate allows.
async fn census(app: &App) -> Census {
    let (head, state) = app.host.committed_view().await;
    app.census
        .get(head.seq, &app.log_readers, move || Census::of(&state))
        .await
}

/// Agents and tasks counted.
#[derive(Clone)]
pub(crate) struct Census {
    agents: AgentCounts,
    queued: u64,
    running: u64,
    max_queue: u64,
    components: u64,
}

impl Census {
    fn of(s: &WorldState) -> Census {
        let mut c = Census {
            agents: AgentCounts::default(),
            queued: 0,
            running: 0,
            max_queue: 0,
            components: s.components().len() as u64,
        };
        for (_, a) in s.agents() {
            match a.status {
                AgentStatus::Active => c.agents.active += 1,
                AgentStatus::Quarantined { .. } => c.agents.quarantined += 1,
                AgentStatus::Terminated { .. } => c.agents.terminated += 1,
            }
            c.queued += a.queue.len() as u64;
            c.max_queue = c.max_queue.max(a.queue.len() as u64);
            c.running += u64::from(a.running.is_some());
        }
        c
    }
}

/// Prometheus metrics, every name prefixed `toka_`.
#[utoipa::path(get, path = "/metrics", tag = "system", security(("bearer" = [])),
    responses((status = 200, description = "Metrics in the Prometheus text format", body = String, content_type = "text/plain"), AuthErrors))]
pub(crate) async fn metrics(State(app): State<Arc<App>>, _who: Reader) -> impl IntoResponse {
    let m = app.host.metrics();
    let Census {
        agents,
        queued,
        running,
        max_queue,
        ..
    } = census(&app).await;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP toka_{name} {help}\n# TYPE toka_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "toka_{name}{labels} {value}");
        }
    };
    metric(
        "log_head",
        "gauge",
        "Sequence number of the last committed record.",
        &[("", head(&app).seq as f64)],
    );
    metric(
        "ops_applied_total",
        "counter",
        "Records (operations) committed since the server started.",
        &[("", m.records as f64)],
    );
    metric(
        "agents",
        "gauge",
        "Agents by status.",
        &[
            ("{status=\"active\"}", agents.active as f64),
            ("{status=\"quarantined\"}", agents.quarantined as f64),
            ("{status=\"terminated\"}", agents.terminated as f64),
        ],
    );
    metric(
        "tasks_queued",
        "gauge",
        "Tasks waiting in agents' queues.",
        &[("", queued as f64)],
    );
    metric(
        "queue_depth_max",
        "gauge",
        "The longest agent queue.",
        &[("", max_queue as f64)],
    );
    metric(
        "tasks_running",
        "gauge",
        "Tasks agents are running.",
        &[("", running as f64)],
    );
    for (name, kind, help) in [
        (
            "denials_total",
            "capability_denied",
            "Operations the capability gate denied.",
        ),
        (
            "quarantines_total",
            "agent_quarantined",
            "Agents quarantined for faulting.",
        ),
        (
            "quota_hits_total",
            "quota_exceeded",
            "Agents that ran into a quota.",
        ),
        ("faults_total", "agent_faulted", "Agent faults."),
        (
            "tasks_completed_total",
            "task_completed",
            "Tasks completed.",
        ),
        ("tasks_failed_total", "task_failed", "Tasks failed."),
    ] {
        metric(name, "counter", help, &[("", m.events_of(kind) as f64)]);
    }
    for (name, value, help) in [
        (
            "tokens_verified_total",
            m.tokens_verified,
            "Tokens whose signatures were verified (tokens the host makes are kept verified).",
        ),
        (
            "capability_checks_total",
            m.checks,
            "Capability checks of operations and effects.",
        ),
        (
            "authorizations_total",
            m.authorizations,
            "Capability checks that ran the authorizer (the others were cached).",
        ),
        (
            "snapshots_total",
            m.snapshots,
            "Snapshots of the state stored.",
        ),
        (
            "snapshots_off_lock_total",
            m.snapshots_off_lock,
            "Snapshots encoded off the sequencer's lock (a large state's, by the snapshot replica).",
        ),
    ] {
        metric(name, "counter", help, &[("", value as f64)]);
    }
    metric(
        "running_actors",
        "gauge",
        "Agents running or about to run a task (an idle agent has no actor).",
        &[("", app.host.running_actors() as f64)],
    );
    metric(
        "warm_instances",
        "gauge",
        "Instances kept for agents that just ran out of work.",
        &[("", app.host.warm_instances() as f64)],
    );
    let (memory, state) = (app.host.memory(), app.host.state_usage());
    for (name, value, help) in [
        (
            "agent_memory_bytes",
            memory.in_use,
            "Bytes of linear memory the live instances hold together.",
        ),
        (
            "agent_memory_peak_bytes",
            memory.peak,
            "The most bytes of linear memory the live instances held at once.",
        ),
        (
            "agent_memory_budget_bytes",
            memory.budget,
            "Bytes of linear memory the live instances may hold together.",
        ),
        (
            "agent_state_bytes",
            state.held,
            "Bytes agents hold in the kernel's state: keys, values, 1 KiB per agent record, tasks not yet ended.",
        ),
        (
            "agent_state_budget_bytes",
            state.budget,
            "Bytes agents may hold in the kernel's state together.",
        ),
    ] {
        metric(name, "gauge", help, &[("", value as f64)]);
    }
    let (free, reserve) = app.host.disk();
    if let Some(free) = free {
        metric(
            "disk_free_bytes",
            "gauge",
            "Bytes free on the data dir's disk, as last seen after a commit.",
            &[("", free as f64)],
        );
    }
    metric(
        "disk_reserve_bytes",
        "gauge",
        "Free disk bytes the host keeps for its own records: below it, agents' operations are refused.",
        &[("", reserve as f64)],
    );
    let samples: Vec<(String, f64)> = m
        .events
        .iter()
        .map(|(kind, n)| (format!("{{kind=\"{kind}\"}}"), *n as f64))
        .collect();
    let samples: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "events_total",
        "counter",
        "Committed events by kind.",
        &samples,
    );
    histogram(
        &mut out,
        "commit_batch_records",
        "Records per committed batch.",
        &m.batch_records,
    );
    histogram(
        &mut out,
        "commit_seconds",
        "Time to commit a batch (write and sync).",
        &m.commit_seconds,
    );
    let open = app.streams.count();
    let _ = writeln!(
        out,
        "# HELP toka_event_streams Open event streams.\n# TYPE toka_event_streams gauge\ntoka_event_streams {open}"
    );
    let _ = writeln!(
        out,
        "# HELP toka_event_stream_readers Event streams catching up that keep their place in the log (a copy of the state each) between reads.\n# TYPE toka_event_stream_readers gauge\ntoka_event_stream_readers {}",
        app.kept_readers.count()
    );
    let _ = writeln!(
        out,
        "# HELP toka_task_waits Requests waiting for a task to end (?wait=).\n# TYPE toka_task_waits gauge\ntoka_task_waits {}",
        app.waits.count()
    );
    let _ = writeln!(
        out,
        "# HELP toka_uploads Uploads in progress (components and packages, read and compiled).\n# TYPE toka_uploads gauge\ntoka_uploads {}",
        app.uploads.count()
    );
    if let Some(c) = app.connections() {
        let _ = writeln!(
            out,
            "# HELP toka_connections Connections the server holds.\n# TYPE toka_connections gauge\ntoka_connections {}\n# HELP toka_connections_refused_total Connections closed as soon as they were accepted (the server's or the client's most held).\n# TYPE toka_connections_refused_total counter\ntoka_connections_refused_total {}\n# HELP toka_connections_gave_way_total Idle connections closed to make room for another client's (the server held its most).\n# TYPE toka_connections_gave_way_total counter\ntoka_connections_gave_way_total {}",
            c.held, c.refused, c.gave_way
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(
        out,
        "# HELP toka_{name} {help}\n# TYPE toka_{name} histogram"
    );
    for (bound, count) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(out, "toka_{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "toka_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "toka_{name}_sum {}", h.sum);
    let _ = writeln!(out, "toka_{name}_count {}", h.count);
}
