//! Cells on NATS JetStream, against a real 3-node `nats-server` cluster on
//! loopback ports (R3 streams) and real `toka serve --cluster` processes:
//! a host killed with SIGKILL hands its cell to a standby and every
//! acknowledged task completes exactly once; a paused host is fenced and
//! steps down; a NATS node killed mid-work loses nothing; tasks sent from
//! one cell to another run once through kills of both cells' hosts.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The lease TTL of the clusters whose hosts fail: short, so the tests
/// are.
const TTL: Duration = Duration::from_secs(2);

/// Three `nats-server` nodes with JetStream, routed to each other.
struct Nats {
    nodes: Vec<Option<Child>>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nats {
    /// Three JetStream nodes in one cluster, each listening. Ports are
    /// picked free and then bound by nats-server: another process can take
    /// one in between (a parallel test's connections), and that node exits;
    /// then all three start again on other ports.
    fn start() -> Nats {
        let started = Instant::now();
        loop {
            let mut nats = Nats::spawn();
            if nats.listening() {
                return nats;
            }
            for node in 0..nats.nodes.len() {
                nats.kill(node);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nats-server did not start (is it on PATH?)"
            );
        }
    }

    fn spawn() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = (0..3)
            .map(|i| {
                let others: Vec<String> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect();
                let child = Command::new("nats-server")
                    .args(["-js", "-a", "127.0.0.1", "-n", &format!("n{i}")])
                    .args(["-p", &ports[i].to_string()])
                    .arg("-sd")
                    .arg(dir.path().join(format!("n{i}")))
                    .args(["--cluster_name", "toka"])
                    .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i])])
                    .args(["--routes", &others.join(",")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("nats-server on PATH (.ci/run installs Debian's nats-server)");
                Some(child)
            })
            .collect();
        Nats {
            nodes,
            ports,
            _dir: dir,
        }
    }

    /// Whether every node runs and takes connections (within 10 s).
    fn listening(&mut self) -> bool {
        let started = Instant::now();
        let mut up = vec![false; self.nodes.len()];
        while started.elapsed() < Duration::from_secs(10) {
            if !self.running() {
                // A node exited: one of its ports was taken.
                return false;
            }
            for (port, up) in self.ports.iter().zip(&mut up) {
                *up = *up || std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok();
            }
            if up.iter().all(|up| *up) {
                // A route port taken shows as an exit soon after.
                std::thread::sleep(Duration::from_millis(200));
                return self.running();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether every node still runs.
    fn running(&mut self) -> bool {
        self.nodes
            .iter_mut()
            .all(|n| n.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}

fn toka_cluster(nats: &Nats, data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(data)
        .args(["--cluster", &nats.urls()])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A cluster of `cells` cells, R3, and the root key file it was created
/// with. Waits for JetStream to elect its leaders first.
fn init(nats: &Nats, tmp: &Path, cells: u32, ttl: Duration) -> PathBuf {
    let admin = tmp.join("admin");
    let started = Instant::now();
    loop {
        let out = toka_cluster(
            nats,
            &admin,
            &[
                "cluster",
                "init",
                "--cells",
                &cells.to_string(),
                "--replicas",
                "3",
                "--lease-ttl",
                &format!("{}s", ttl.as_secs()),
            ],
        );
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "cluster init never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    admin.join("root.key")
}

/// A `toka serve --cluster --cell N` process and what it printed.
struct CellHost {
    child: Child,
    data: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl CellHost {
    /// `toka serve --cluster --cell N`: one cell, standing by until free.
    fn start(nats: &Nats, root_key: &Path, data: PathBuf, cell: u32) -> CellHost {
        CellHost::spawn(nats, root_key, data, &["--cell", &cell.to_string()])
    }

    /// An owner of cell `cell` (serving) and its standby (standing by),
    /// in `tmp/NAME` and `tmp/NAME2`.
    fn pair(
        nats: &Nats,
        root_key: &Path,
        tmp: &Path,
        name: &str,
        cell: u32,
    ) -> (CellHost, CellHost) {
        let owner = CellHost::start(nats, root_key, tmp.join(name), cell);
        owner.serving();
        let standby = CellHost::start(nats, root_key, tmp.join(format!("{name}2")), cell);
        standby
            .wait_for("standing by", Duration::from_secs(30))
            .unwrap();
        (owner, standby)
    }

    fn spawn(nats: &Nats, root_key: &Path, data: PathBuf, extra: &[&str]) -> CellHost {
        let mut child = Command::new(env!("CARGO_BIN_EXE_toka"))
            .arg("--data")
            .arg(&data)
            .arg("--root-key")
            .arg(root_key)
            .args(["--cluster", &nats.urls()])
            .args(extra)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let seen = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        CellHost { child, data, lines }
    }

    fn printed(&self, what: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(what))
    }

    /// Waits until it printed `what`; its output when it did not in time.
    fn wait_for(&self, what: &str, patience: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        while started.elapsed() < patience {
            if self.printed(what) {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(self.lines.lock().unwrap().join("\n"))
    }

    fn serving(&self) -> Duration {
        self.wait_for("toka: serving cell", Duration::from_secs(60))
            .unwrap_or_else(|out| panic!("the host never served its cell: {out}"))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The API of the host, once it serves (and registered in its dir).
    fn api(&self) -> Api {
        let started = Instant::now();
        loop {
            if let Ok(Some((registration, token))) =
                toka_server::registration::Registration::read(&self.data)
                && registration.pid == self.child.id()
            {
                return Api {
                    url: registration.url,
                    token,
                    http: {
                        toka_server::install_crypto();
                        reqwest::Client::new()
                    },
                };
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the host never registered: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CellHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what each of its hosts said last.
        if std::thread::panicking() {
            let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            let from = lines.len().saturating_sub(40);
            eprintln!(
                "--- host {} (last {} lines of its stderr) ---\n{}",
                self.data.display(),
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// Installs the counter agent and spawns one; its id.
    async fn counter(&self, name: &str) -> String {
        self.agent("counter", name, &["state", "observe"]).await
    }

    /// Installs the bundled agent `component` and spawns one with
    /// `rights`; its id.
    async fn agent(&self, component: &str, name: &str, rights: &[&str]) -> String {
        let path = toka_agents::path(component).unwrap();
        let bytes = std::fs::read(path).unwrap();
        let response = self
            .http
            .post(format!("{}/v1/components?name={component}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        let spawned = self
            .call(
                reqwest::Method::POST,
                "/v1/agents",
                Some(json!({"component": component, "name": name, "rights": rights})),
            )
            .await;
        spawned["id"].as_str().unwrap().to_owned()
    }

    /// Schedules `n` tasks; the ids the host acknowledged.
    async fn schedule(&self, agent: &str, n: u32) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 1..=n {
            ids.push(
                self.task(agent, &i.to_string()).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    }

    /// Schedules one task; the host's answer.
    async fn task(&self, agent: &str, description: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/tasks"),
            Some(json!({"description": description})),
        )
        .await
    }

    /// Waits until every task is known to this cell (sent from another,
    /// it arrives a little later).
    async fn until_known(&self, tasks: &[String]) {
        let started = Instant::now();
        for task in tasks {
            loop {
                let answer = self
                    .http
                    .get(format!("{}/v1/tasks/{task}", self.url))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .unwrap();
                if answer.status().is_success() {
                    break;
                }
                let status = answer.status();
                assert_eq!(
                    status,
                    reqwest::StatusCode::NOT_FOUND,
                    "task {task}: {}",
                    answer.text().await.unwrap_or_default()
                );
                if started.elapsed() > Duration::from_secs(90) {
                    // What the cell's log says of what it took in.
                    let mail = self
                        .http
                        .get(format!(
                            "{}/v1/events?kind=task_refused,change_refused,tasks_sent&limit=1000",
                            self.url
                        ))
                        .bearer_auth(&self.token)
                        .send()
                        .await
                        .unwrap()
                        .text()
                        .await
                        .unwrap_or_default();
                    panic!("task {task} never arrived; the cell's mail events: {mail}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Waits for each task to end; their views.
    async fn wait_all(&self, tasks: &[String]) -> Vec<Value> {
        let mut views = Vec::new();
        for task in tasks {
            views.push(
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/tasks/{task}?wait=60s"),
                    None,
                )
                .await,
            );
        }
        views
    }

    /// How many times each task completed, from the whole log.
    async fn completions(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        let mut from = 1;
        loop {
            let page = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/events?from={from}&limit=500&kind=task_completed"),
                    None,
                )
                .await;
            for event in page["events"].as_array().unwrap() {
                *counts
                    .entry(event["task"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            match page["next_from"].as_u64() {
                Some(next) if next > from => from = next,
                _ => return counts,
            }
        }
    }
}

/// Every acknowledged task completed, exactly once, and the counter's sum
/// is the sum of all of them (tasks `1..=n`).
async fn every_task_completed_once(api: &Api, tasks: &[String]) {
    let n = tasks.len() as u64;
    completed_once_summing(api, tasks, n * (n + 1) / 2).await;
}

/// Every task completed, exactly once, and one of them saw the counter at
/// `sum`.
async fn completed_once_summing(api: &Api, tasks: &[String], sum: u64) {
    let views = api.wait_all(tasks).await;
    for view in &views {
        assert_eq!(view["status"], "completed", "{view}");
    }
    let completions = api.completions().await;
    for task in tasks {
        assert_eq!(
            completions.get(task),
            Some(&1),
            "task {task} completed {:?} times",
            completions.get(task)
        );
    }
    let sum = sum.to_string();
    assert!(
        views.iter().any(|v| v["output"] == sum.as_str()),
        "no task saw the full sum {sum}: {views:?}"
    );
}

/// A cluster command pointed at a port where no NATS server listens fails
/// with one error naming the servers and why, after trying for its
/// patience (10 s); it once waited 30 s for a request to time out and
/// named neither.
#[test]
fn a_cluster_nobody_answers_at_is_named_with_the_reason() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let (run, reason) = cannot_connect(&url);
    assert!(
        reason.starts_with("no server answered within 10s; the last attempt: ")
            && reason.contains("refused"),
        "{run:#?}"
    );
    let warned = run.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert_eq!(warned, 1, "one warning while it tries: {run:#?}");
}

/// Runs `toka --cluster url --cell 0 state`, which must fail to connect:
/// exit code 2, nothing on stdout, and a last line naming the servers;
/// returns the run and the reason the line gives.
#[track_caller]
fn cannot_connect(url: &str) -> (crate::Run, String) {
    let tmp = tempfile::tempdir().unwrap();
    let run = crate::toka(
        &tmp.path().join("data"),
        &["--cluster", url, "--cell", "0", "state"],
    );
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    let last = run.stderr.lines().last().unwrap_or_default();
    let reason = last
        .strip_prefix(&format!("error: cannot connect to NATS at {url}: "))
        .unwrap_or_else(|| panic!("{run:#?}"))
        .to_owned();
    (run, reason)
}

/// A server that answers but refuses the connection (here: it wants a
/// user and a password) fails the command at once, with its reason; it is
/// not asked again for 10 s.
#[test]
fn a_server_that_refuses_the_connection_fails_the_command_at_once() {
    let started = Instant::now();
    let nats = loop {
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--user", "toka", "--pass", "not-given"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (.ci/run installs Debian's nats-server)");
        let mut nats = Nats {
            nodes: vec![Some(child)],
            ports: vec![port],
            _dir: tempfile::tempdir().unwrap(),
        };
        if nats.listening() {
            break nats;
        }
        nats.kill(0);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nats-server did not start"
        );
    };
    let (run, reason) = cannot_connect(&nats.urls());
    assert!(reason.contains("authorization violation"), "{run:#?}");
    assert!(!run.stderr.contains("trying again"), "{run:#?}");
}

fn verify(nats: &Nats, tmp: &Path, cell: u32) {
    let out = toka_cluster(
        nats,
        &tmp.join("admin"),
        &["--cell", &cell.to_string(), "verify", "--auth"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("auth ok"),
        "cell {cell} does not verify: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_s_cell_moves_to_a_standby_and_every_acknowledged_task_runs_once() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 4, TTL);
    // A snapshot every 10 records: the standby reads the log after the
    // newest one before it serves, and the rest after.
    let args = ["--cell", "2", "--snapshot-every", "10"];
    let a = CellHost::spawn(&nats, &key, tmp.path().join("a"), &args);
    a.serving();
    let b = CellHost::spawn(&nats, &key, tmp.path().join("b"), &args);
    b.wait_for("standing by", Duration::from_secs(30)).unwrap();
    let api = a.api();
    let agent = api.counter("counter").await;
    let mut tasks = api.schedule(&agent, 10).await;
    every_task_completed_once(&api, &tasks).await;
    tasks.extend(api.schedule(&agent, 30).await);
    // Killed with work acknowledged and in flight.
    a.signal("-KILL");
    let moved = b.serving();
    eprintln!("cell 2 moved to the standby in {moved:?} (lease TTL {TTL:?})");
    assert!(moved < TTL * 15, "the cell took {moved:?} to move");
    // The first ten ended long before the newest snapshot: still found.
    // The counter adds 1..=10, then 1..=30.
    completed_once_summing(&b.api(), &tasks, 55 + 465).await;
    verify(&nats, tmp.path(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_host_is_fenced_off_its_cell_and_steps_down() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 4, TTL);
    // An outside consumer of cell 1's committed events.
    let servers: Vec<async_nats::ServerAddr> =
        nats.urls().split(',').map(|u| u.parse().unwrap()).collect();
    let consumer = async_nats::connect(servers).await.unwrap();
    let mut subscription = consumer.subscribe("toka.events.1").await.unwrap();
    let published = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = Arc::clone(&published);
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        while let Some(message) = subscription.next().await {
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&message.payload).unwrap());
        }
    });
    // Cell 0's counter receives tasks the paused cell sends.
    let t = CellHost::start(&nats, &key, tmp.path().join("t"), 0);
    t.serving();
    let api_t = t.api();
    let target = api_t.counter("target").await;
    let a = CellHost::start(&nats, &key, tmp.path().join("a"), 1);
    a.serving();
    let api_a = a.api();
    let agent = api_a.counter("counter").await;
    let mut tasks = api_a.schedule(&agent, 10).await;
    let mut sent = Vec::new();
    for n in 1..=5 {
        sent.push(
            api_a.task(&target, &n.to_string()).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    a.signal("-STOP");
    // The standby takes the cell once the paused host's lease ran out.
    let b = CellHost::start(&nats, &key, tmp.path().join("b"), 1);
    b.serving();
    let api_b = b.api();
    let on_b = api_b.schedule(&agent, 10).await;
    tasks.extend(on_b.iter().cloned());
    for n in 6..=10 {
        sent.push(
            api_b.task(&target, &n.to_string()).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Resumed past its lease: whatever it still tries to append is refused,
    // and it stops serving the cell.
    a.signal("-CONT");
    a.wait_for("stepped down from cell 1", Duration::from_secs(30))
        .unwrap_or_else(|out| panic!("the paused host did not step down: {out}"));
    let status = {
        let mut a = a;
        let status = a.child.wait().unwrap();
        drop(a);
        status
    };
    assert_eq!(status.code(), Some(1));
    // Tasks 1..=10 again, scheduled on the new owner: the sum is 2 × 55.
    let views = api_b.wait_all(&tasks).await;
    assert!(
        views.iter().all(|v| v["status"] == "completed"),
        "{views:?}"
    );
    let completions = api_b.completions().await;
    assert!(
        tasks.iter().all(|t| completions.get(t) == Some(&1)),
        "{completions:?}"
    );
    assert!(views.iter().any(|v| v["output"] == "110"), "{views:?}");
    verify(&nats, tmp.path(), 1);
    // What the cell sent before and after the pause arrived once.
    api_t.until_known(&sent).await;
    every_task_completed_once(&api_t, &sent).await;
    verify(&nats, tmp.path(), 0);
    // The new owner published what it committed, as the API shows it.
    let published = published.lock().unwrap().clone();
    for task in &on_b {
        assert!(
            published
                .iter()
                .any(|e| e["kind"] == "task_completed" && e["task"] == task.as_str()),
            "no task_completed for {task} among {} published events",
            published.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_work_loses_nothing_acknowledged() {
    let mut nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    // NATS moves a stream's leadership in seconds; the hosts' leases must
    // outlast that, as they would in production.
    let key = init(&nats, tmp.path(), 4, Duration::from_secs(30));
    let hosts: Vec<CellHost> = (0..2)
        .map(|cell| CellHost::start(&nats, &key, tmp.path().join(format!("h{cell}")), cell))
        .collect();
    let mut tasks = Vec::new();
    let mut agents = Vec::new();
    for (cell, host) in hosts.iter().enumerate() {
        host.serving();
        let api = host.api();
        let agent = api.counter("counter").await;
        // Ids carry their cell: none minted in one cell meets another's.
        assert_eq!(agent[..4], format!("{cell:04x}"), "{agent}");
        assert!(!agents.contains(&agent));
        tasks.push(api.schedule(&agent, 15).await);
        agents.push(agent);
    }
    // Tasks across cells in flight too: each host sends the other cell's
    // counter 1..=5.
    for (cell, host) in hosts.iter().enumerate() {
        let api = host.api();
        for n in 1..=5 {
            let sent = api.task(&agents[1 - cell], &n.to_string()).await;
            assert_eq!(sent["status"], "sent", "{sent}");
            tasks[1 - cell].push(sent["id"].as_str().unwrap().to_owned());
        }
    }
    // The node the hosts connected to first goes, with tasks in flight.
    nats.kill(0);
    for ((host, agent), tasks) in hosts.iter().zip(&agents).zip(&mut tasks) {
        let api = host.api();
        let more = api.schedule(agent, 15).await;
        tasks.extend(more);
    }
    for (cell, (host, tasks)) in hosts.iter().zip(&tasks).enumerate() {
        assert!(
            !host.printed("stepped down"),
            "{:?}",
            host.lines.lock().unwrap()
        );
        let api = host.api();
        api.until_known(tasks).await;
        let views = api.wait_all(tasks).await;
        assert!(
            views.iter().all(|v| v["status"] == "completed"),
            "{views:?}"
        );
        let completions = api.completions().await;
        assert!(tasks.iter().all(|t| completions.get(t) == Some(&1)));
        // 1..=15 twice, and 1..=5 from the other cell.
        assert!(views.iter().any(|v| v["output"] == "255"), "{views:?}");
        verify(&nats, tmp.path(), cell as u32);
    }
}

/// Host kills in a row on one cell (100 with `TOKA_LONG_TESTS=1`, 3
/// otherwise), each at a moment of its own while tasks are in flight, sent
/// to it from another cell and from it to another cell among them; every
/// acknowledged task completes exactly once, and both cells verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_kills_in_a_row_lose_no_acknowledged_task() {
    let rounds: u64 = if std::env::var_os("TOKA_LONG_TESTS").is_some() {
        100
    } else {
        3
    };
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 4, TTL);
    // Cell 0 stays up: it sends tasks into the killed cell and receives
    // what the killed cell sends.
    let sender = CellHost::start(&nats, &key, tmp.path().join("s"), 0);
    sender.serving();
    let api_s = sender.api();
    let far = api_s.counter("far").await;
    // The killed cell snapshots every 25 records: each new owner reads the
    // log after the newest snapshot before it serves, the rest after.
    let killed = ["--cell", "3", "--snapshot-every", "25"];
    let mut owner = CellHost::spawn(&nats, &key, tmp.path().join("h0"), &killed);
    owner.serving();
    let agent = owner.api().counter("counter").await;
    let (mut tasks, mut far_tasks) = (Vec::new(), Vec::new());
    let id = |task: Value| task["id"].as_str().unwrap().to_owned();
    for round in 1..=rounds {
        let standby = CellHost::spawn(&nats, &key, tmp.path().join(format!("h{round}")), &killed);
        standby
            .wait_for("standing by", Duration::from_secs(30))
            .unwrap();
        let api = owner.api();
        tasks.extend(api.schedule(&agent, 5).await);
        for n in 1..=5 {
            tasks.push(id(api_s.task(&agent, &n.to_string()).await));
            far_tasks.push(id(api.task(&far, &n.to_string()).await));
        }
        // A moment of its own: up to 50 ms after the last acknowledgement.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        tokio::time::sleep(Duration::from_millis(u64::from(nanos % 50))).await;
        owner.signal("-KILL");
        standby.serving();
        eprintln!("round {round}: {} tasks acknowledged so far", tasks.len());
        owner = standby;
    }
    // Tasks 1..=5 twice (scheduled, and sent from cell 0) in every round.
    let api = owner.api();
    api.until_known(&tasks).await;
    completed_once_summing(&api, &tasks, 30 * rounds).await;
    verify(&nats, tmp.path(), 3);
    // What the killed cell sent, 1..=5 in every round, arrived once.
    api_s.until_known(&far_tasks).await;
    completed_once_summing(&api_s, &far_tasks, 15 * rounds).await;
    verify(&nats, tmp.path(), 0);
}

/// A `toka serve --cluster` host without `--cell`: it serves its share of
/// the cells under `/cells/N/`.
fn spread_host(nats: &Nats, key: &Path, data: PathBuf) -> CellHost {
    CellHost::spawn(nats, key, data, &[])
}

impl CellHost {
    /// The base URL a spread host printed.
    fn base(&self) -> String {
        self.wait_for("toka: serving cells of", Duration::from_secs(60))
            .unwrap_or_else(|out| panic!("the host never served: {out}"));
        let lines = self.lines.lock().unwrap();
        let line = lines
            .iter()
            .find(|l| l.contains("toka: serving cells of"))
            .unwrap();
        let at = line.split(" at ").nth(1).unwrap();
        at.split("/cells/").next().unwrap().to_owned()
    }
}

/// The cells a spread host at `base` serves now.
async fn served(base: &str) -> Vec<u64> {
    let answer: Value = reqwest::get(format!("{base}/cells"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

/// Waits until `check` holds for the cells the hosts serve.
async fn until_served(bases: &[&str], check: impl Fn(&[Vec<u64>]) -> bool) -> Vec<Vec<u64>> {
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for base in bases {
            all.push(served(base).await);
        }
        if check(&all) {
            return all;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "cells never settled: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where `url` sends an authenticated request: asserts a `307`, returns
/// its `Location`.
async fn redirect(client: &reqwest::Client, url: &str, token: &str) -> String {
    let answer = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(
        answer.status(),
        reqwest::StatusCode::TEMPORARY_REDIRECT,
        "{url}"
    );
    answer.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_spread_the_cells_and_a_dead_host_s_cells_move_to_the_others() {
    toka_server::install_crypto();
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 4, TTL);
    let minted = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(tmp.path().join("minter"))
        .arg("--root-key")
        .arg(&key)
        .args(["token", "issue", "--operator", "admin"])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();

    // Alone, a host serves every cell; a second one takes half of them.
    let a = spread_host(&nats, &key, tmp.path().join("a"));
    let base_a = a.base();
    until_served(&[&base_a], |s| s[0] == [0, 1, 2, 3]).await;
    let b = spread_host(&nats, &key, tmp.path().join("b"));
    let base_b = b.base();
    let spread = until_served(&[&base_a, &base_b], |s| s[0].len() == 2 && s[1].len() == 2).await;
    eprintln!("spread: {spread:?}");

    // A cell elsewhere is answered with where it is.
    let cell_on_b = spread[1][0];
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        redirect(
            &no_redirects,
            &format!("{base_a}/cells/{cell_on_b}/v1/status"),
            &token
        )
        .await,
        format!("{base_b}/cells/{cell_on_b}/v1/status")
    );

    // A cell the cluster does not have is not looked up anywhere.
    for path in [
        "/cells/4/v1/status",
        "/cells/4294967295/",
        "/cells/99999999999/v1",
    ] {
        let answer = no_redirects
            .get(format!("{base_a}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::NOT_FOUND, "{path}");
    }

    // Each cell's dashboard, under its prefix (its links are relative).
    let bare = no_redirects
        .get(format!("{base_b}/cells/{cell_on_b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), reqwest::StatusCode::PERMANENT_REDIRECT);
    let page = reqwest::get(format!("{base_b}/cells/{cell_on_b}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("src=\"dashboard/app.js\""), "{page}");
    let script = reqwest::get(format!("{base_b}/cells/{cell_on_b}/dashboard/app.js"))
        .await
        .unwrap();
    assert!(script.status().is_success());

    // Work in every cell, through its owner, and sent from the other cell
    // of the same host: tasks across cells are in flight at the kill.
    let mut work = Vec::new();
    for (base, cells) in [(&base_a, &spread[0]), (&base_b, &spread[1])] {
        let apis: Vec<Api> = cells
            .iter()
            .map(|cell| Api {
                url: format!("{base}/cells/{cell}"),
                token: token.clone(),
                http: reqwest::Client::new(),
            })
            .collect();
        let mut agents = Vec::new();
        for (api, cell) in apis.iter().zip(cells) {
            let agent = api.counter("counter").await;
            assert_eq!(agent[..4], format!("{cell:04x}"));
            agents.push(agent);
        }
        for (i, cell) in cells.iter().enumerate() {
            let mut tasks = apis[i].schedule(&agents[i], 10).await;
            let other = &apis[(i + 1) % apis.len()];
            for n in 11..=15 {
                let sent = other.task(&agents[i], &n.to_string()).await;
                assert_eq!(sent["status"], "sent", "{sent}");
                tasks.push(sent["id"].as_str().unwrap().to_owned());
            }
            work.push((*cell, tasks));
        }
    }
    // A task asked for at another cell's API: answered with its cell.
    let (cell_x, cell_y) = (spread[1][0], spread[1][1]);
    let task_y = &work.iter().find(|(c, _)| *c == cell_y).unwrap().1[0];
    assert_eq!(
        redirect(
            &no_redirects,
            &format!("{base_b}/cells/{cell_x}/v1/tasks/{task_y}"),
            &token
        )
        .await,
        format!("/cells/{cell_y}/v1/tasks/{task_y}")
    );
    a.signal("-KILL");
    until_served(&[&base_b], |s| s[0] == [0, 1, 2, 3]).await;
    for (cell, tasks) in &work {
        let api = Api {
            url: format!("{base_b}/cells/{cell}"),
            token: token.clone(),
            http: reqwest::Client::new(),
        };
        api.until_known(tasks).await;
        every_task_completed_once(&api, tasks).await;
        verify(&nats, tmp.path(), u32::try_from(*cell).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_across_cells_run_once_when_both_cells_hosts_are_killed() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 2, TTL);
    let (a, a2) = CellHost::pair(&nats, &key, tmp.path(), "a", 0);
    let (b, b2) = CellHost::pair(&nats, &key, tmp.path(), "b", 1);

    // The counter lives in cell 1; a probe in cell 0 may schedule it (its
    // token names it) and nothing else.
    let api_b = b.api();
    let counter = api_b.counter("counter").await;
    let other = api_b.counter("other").await;
    assert!(counter.starts_with("0001") && other.starts_with("0001"));
    let api_a = a.api();
    let grant = format!("schedule {counter}");
    let probe = api_a.agent("test-probe", "probe", &[&grant]).await;
    assert!(probe.starts_with("0000"));

    // Each probe task sends the counter one task; the operator sends some
    // through cell 0's host too.
    let mut probe_tasks = Vec::new();
    for n in 1..=20 {
        let task = api_a.task(&probe, &format!("schedule {counter} {n}")).await;
        probe_tasks.push(task["id"].as_str().unwrap().to_owned());
    }
    let denied = api_a.task(&probe, &format!("schedule {other} 1")).await;
    // The origin killed with tasks waiting, running and in its outbox.
    a.signal("-KILL");
    let api_a2 = {
        a2.serving();
        a2.api()
    };
    let mut sent = Vec::new();
    for n in 21..=25 {
        let task = api_a2.task(&counter, &n.to_string()).await;
        assert_eq!(task["status"], "sent", "{task}");
        sent.push(task["id"].as_str().unwrap().to_owned());
    }
    // The target killed while the tasks arrive.
    b.signal("-KILL");

    // In cell 0: every probe task ran once; each sent one task.
    let views = api_a2.wait_all(&probe_tasks).await;
    for view in &views {
        assert_eq!(view["status"], "completed", "{view}");
        let task = view["output"].as_str().unwrap().to_owned();
        assert!(task.starts_with("0001"), "minted in cell 1: {task}");
        sent.push(task);
    }
    let completions = api_a2.completions().await;
    for task in &probe_tasks {
        assert_eq!(completions.get(task), Some(&1), "probe task {task}");
    }
    let denied = api_a2
        .wait_all(&[denied["id"].as_str().unwrap().to_owned()])
        .await;
    assert_eq!(denied[0]["status"], "failed", "{denied:?}");
    assert!(
        denied[0]["reason"].as_str().unwrap().contains("denied"),
        "{denied:?}"
    );

    // In cell 1: every one of the 25 ran exactly once (the counter's sum is
    // 1 + ... + 25), whatever was re-sent after the kills.
    b2.serving();
    let api_b2 = b2.api();
    api_b2.until_known(&sent).await;
    every_task_completed_once(&api_b2, &sent).await;
    // What cell 1 took in is in its log: its inbox stream lets it go.
    inbox_emptied(&nats, 1).await;

    // A host of one cell, asked about another cell's agent, says where it
    // is served; its own cell it also serves under `/cells/0/`.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (a_url, token) = (&api_a2.url, &api_a2.token);
    let location = redirect(&no_follow, &format!("{a_url}/v1/agents/{counter}"), token).await;
    assert_eq!(
        location,
        format!("{}/cells/1/v1/agents/{counter}", api_b2.url)
    );
    let there = no_follow
        .get(&location)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(there.status(), reqwest::StatusCode::OK);
    assert_eq!(there.json::<Value>().await.unwrap()["id"], counter.as_str());
    let here = no_follow
        .get(format!("{a_url}/cells/0/v1/agents/{probe}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(here.status(), reqwest::StatusCode::OK);
    let lost = no_follow
        .get(format!("{a_url}/cells/7/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(lost.status(), reqwest::StatusCode::NOT_FOUND);
    verify(&nats, tmp.path(), 0);
    verify(&nats, tmp.path(), 1);
}

/// Waits until cell `cell`'s inbox stream holds no message (at least one
/// was sent to it first), or panics after 30 s.
async fn inbox_emptied(nats: &Nats, cell: u32) {
    let servers: Vec<async_nats::ServerAddr> =
        nats.urls().split(',').map(|u| u.parse().unwrap()).collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers).await.unwrap());
    let mut stream = js.get_stream(format!("TOKA_INBOX_{cell}")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = stream.info().await.unwrap().state.clone();
        assert!(state.last_sequence > 0, "nothing was sent to cell {cell}");
        if state.messages == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cell {cell}'s inbox still holds {} messages: {state:?}",
            state.messages
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `toka token issue --operator LEVEL` with the cluster's key, offline.
fn operator_token(key: &Path, dir: &Path, level: &str) -> String {
    let minted = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(dir)
        .arg("--root-key")
        .arg(key)
        .args(["token", "issue", "--operator", level])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    String::from_utf8(minted.stdout).unwrap().trim().to_owned()
}

impl Api {
    /// The status `GET /v1/status` answers `token` with.
    async fn status_for(&self, token: &str) -> reqwest::StatusCode {
        self.http
            .get(format!("{}/v1/status", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// `POST /v1/tokens/revoke` for `token` (forced: minted offline, no
    /// cell stores it); the status and the body.
    async fn revoke(&self, token: &str) -> (reqwest::StatusCode, Value) {
        let answer = self
            .http
            .post(format!("{}/v1/tokens/revoke", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"token": token, "force": true}))
            .send()
            .await
            .unwrap();
        (answer.status(), answer.json().await.unwrap())
    }

    /// Waits until `token` is refused; how long it took.
    async fn until_refused(&self, token: &str) -> Duration {
        let started = Instant::now();
        while self.status_for(token).await != reqwest::StatusCode::UNAUTHORIZED {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} still takes the revoked token",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_in_the_configuration_cell_holds_in_every_cell() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 3, TTL);
    let hosts: Vec<CellHost> = (0..3)
        .map(|cell| CellHost::start(&nats, &key, tmp.path().join(format!("h{cell}")), cell))
        .collect();
    let mut apis = Vec::new();
    for host in &hosts {
        host.serving();
        apis.push(host.api());
    }
    // An operator token minted offline with the cluster's key works on
    // every host.
    let stolen = operator_token(&key, &tmp.path().join("minter"), "read");
    for api in &apis {
        assert_eq!(api.status_for(&stolen).await, reqwest::StatusCode::OK);
    }
    // Another cell does not change the cluster's configuration: it says
    // where to, and the token still works.
    let (status, body) = apis[1].revoke(&stolen).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cell 0"),
        "{body}"
    );
    assert_eq!(apis[1].status_for(&stolen).await, reqwest::StatusCode::OK);

    // The CLI works against the cluster through the host of a cell, with
    // an operator token it mints from the cluster's key.
    let admin = tmp.path().join("admin");
    let cli = |args: &[&str]| {
        let mut all = vec!["--root-key", key.to_str().unwrap()];
        all.extend_from_slice(args);
        toka_cluster(&nats, &admin, &all)
    };
    let counter = toka_agents::path("counter").unwrap();
    let ran = cli(&["--cell", "1", "run", counter, "--task", "7"]);
    assert!(ran.status.success(), "{ran:?}");
    let listed = apis[1].call(reqwest::Method::GET, "/v1/agents", None).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"].as_str().unwrap().starts_with("0001")),
        "{listed}"
    );
    let file = tmp.path().join("stolen.token");
    std::fs::write(&file, &stolen).unwrap();
    let inspected = toka_cluster(&nats, &admin, &["token", "inspect", file.to_str().unwrap()]);
    let inspected = String::from_utf8(inspected.stdout).unwrap();
    let id = inspected
        .lines()
        .find_map(|l| l.trim().strip_prefix("revocation id: "))
        .unwrap_or_else(|| panic!("no revocation id in {inspected}"))
        .to_owned();
    let nowhere = cli(&["--cell", "9", "snapshot"]);
    assert_eq!(nowhere.status.code(), Some(2), "{nowhere:?}");
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("no cell 9: the cluster has cells 0..3"),
        "{nowhere:?}"
    );
    let elsewhere = cli(&["--cell", "1", "token", "revoke", &id, "--force"]);
    assert!(!elsewhere.status.success());
    assert!(
        String::from_utf8_lossy(&elsewhere.stderr).contains("cell 0"),
        "{elsewhere:?}"
    );

    // Cell 2's host is down when cell 0 revokes the token (the CLI goes to
    // the configuration cell without --cell).
    hosts[2].signal("-KILL");
    let revoked = cli(&["token", "revoke", &id, "--force"]);
    assert!(revoked.status.success(), "{revoked:?}");
    for api in &apis[..2] {
        let took = api.until_refused(&stolen).await;
        eprintln!(
            "{} refused the revoked token {took:?} after cell 0 answered",
            api.url
        );
    }
    // Whoever serves cell 2 next applies it from its inbox before it
    // serves a request.
    let back = CellHost::start(&nats, &key, tmp.path().join("h2b"), 2);
    back.serving();
    assert_eq!(
        back.api().status_for(&stolen).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    for cell in 0..3 {
        verify(&nats, tmp.path(), cell);
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the
/// `openssl` command: `(certificate, key)`.
pub(crate) fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command (.ci/run installs it)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_cell_served_over_tls_at_the_url_its_host_advertises() {
    toka_server::install_crypto();
    let nats = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = init(&nats, tmp.path(), 2, TTL);
    let (cert, tls_key) = certificate(tmp.path());
    let port = free_port();
    let advertised = format!("https://localhost:{port}");
    let data = tmp.path().join("h");
    let mut child = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(&data)
        .arg("--root-key")
        .arg(&key)
        .args(["--cluster", &nats.urls(), "--cell", "0", "serve"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--advertise",
            &advertised,
        ])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&tls_key)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = loop {
        let line = stderr.next().expect("the host ended").unwrap();
        if line.contains("toka: serving cell 0") {
            break line;
        }
    };
    assert!(serving.contains(&advertised), "{serving}");
    let admin = tmp.path().join("admin");
    let counter = toka_agents::path("counter").unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--root-key", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["run", counter, "--task", "5"]);
        toka_cluster(&nats, &admin, &args)
    };
    // The lease says where the cell is; the CLI trusts the host's
    // certificate only when told to.
    let untrusted = run(&[]);
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    let ran = run(&["--tls-ca", cert.to_str().unwrap()]);
    assert!(ran.status.success(), "{ran:?}");
    assert!(
        String::from_utf8_lossy(&ran.stdout).contains('5'),
        "{ran:?}"
    );
    // Another cell's request at this host: 307 to where that cell is (no
    // host serves cell 1: 503).
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let elsewhere = client
        .get(format!("{advertised}/cells/1/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let listed: Value = client
        .get(format!("{advertised}/cells"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["cells"], json!([0]));
    // A bad --advertise is refused before anything is bound or taken.
    let refused = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(tmp.path().join("bad"))
        .arg("--root-key")
        .arg(&key)
        .args(["--cluster", &nats.urls(), "--cell", "1", "serve"])
        .args(["--listen", "127.0.0.1:0", "--advertise", "https://x:1/path"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--advertise https://x:1/path"), "{said}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn commands_that_do_not_apply_to_a_cluster_say_so_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for args in [
        &["secret", "list"][..],
        &["archive", "--to", "x.archive"],
        &["demo"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_toka"))
            .arg("--data")
            .arg(&data)
            .args(["--cluster", "nats://127.0.0.1:9"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("with --cluster") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
        assert!(!data.exists(), "{args:?} wrote the data dir");
    }
}
