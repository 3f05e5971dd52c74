//! Exactly-once re-runs against real divergence: a task killed mid-way is
//! run again after its inputs changed, and the host must notice that the
//! re-run asks for something else than the first run did — for an applied
//! operation, a spawn's budgets, and a refused operation — instead of
//! applying anything twice. And revocation takes effect in the middle of a
//! task.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use toka_kernel::Event;

use crate::{agent_bytes, agent_path, events_json, grant, open_host, temp_data, toka};

/// Writes the agent's instructions into `dir`.
pub(crate) fn instruct(dir: &Path, mode: &str, value: &str) {
    std::fs::write(dir.join("mode"), mode).unwrap();
    std::fs::write(dir.join("value"), value).unwrap();
}

/// Starts `toka run test-diverge` with a task reading `dir`, waits until it
/// printed `waiting` (so everything before is durable), and kills it.
pub(crate) fn run_until_waiting_then_kill(data: &Path, dir: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(data)
        .args([
            // The task spins until told to go: no deadline may end it first,
            // however loaded the machine is.
            "--deadline",
            "10m",
            "run",
            agent_path("test-diverge"),
            "--name",
            "test-diverge",
            "--grant",
            "observe",
            "--grant",
            "spawn test-diverge",
            "--grant",
            &format!("fs.read {}", dir.display()),
            "--grant",
            "http 127.0.0.1",
            "--task",
            &dir.display().to_string(),
            "--timeout",
            "0s",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in stdout.lines().map_while(Result::ok) {
        let waiting = line.ends_with(": waiting");
        seen.push(line);
        if waiting {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.ends_with(": waiting")),
        "the agent never got to wait: {seen:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Lets the agent finish and runs the host again: the interrupted task runs
/// again. Returns the run.
pub(crate) fn let_it_finish(data: &Path, dir: &Path) -> crate::Run {
    std::fs::write(dir.join("go"), "").unwrap();
    toka(
        data,
        &[
            "run",
            agent_path("test-diverge"),
            "--name",
            "test-diverge",
            "--timeout",
            "0s",
        ],
    )
}

fn scenario(mode: &str, first: &str, second: &str) -> (crate::Run, Vec<serde_json::Value>) {
    let (tmp, data) = temp_data();
    let dir = tmp.path().join("inputs");
    std::fs::create_dir(&dir).unwrap();
    instruct(&dir, mode, first);
    run_until_waiting_then_kill(&data, &dir);
    instruct(&dir, mode, second);
    let run = let_it_finish(&data, &dir);
    assert!(toka(&data, &["verify", "--auth"]).ok().contains("auth ok"));
    let events = events_json(&data);
    let told: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"],
                e["reason"].as_str().or(e["data"].as_str()).unwrap_or("")
            )
        })
        .collect();
    eprintln!("{mode} {first} -> {second}: {told:#?}");
    (run, events)
}

fn failures(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "task_failed")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

fn kinds(events: &[serde_json::Value], kind: &str) -> usize {
    events.iter().filter(|e| e["kind"] == kind).count()
}

/// A loopback server answering `200 ok` and counting requests by path.
pub(crate) fn counting_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let paths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&paths);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            seen.lock().unwrap().push(path);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, paths)
}

#[test]
fn a_re_run_sends_a_journaled_request_never_again_and_another_one_diverges() {
    let (port, paths) = counting_server();
    let (a, b) = (
        format!("http://127.0.0.1:{port}/a"),
        format!("http://127.0.0.1:{port}/b"),
    );
    // The same request: answered from the journal, sent once in all.
    let (run, events) = scenario("http", &a, &a);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(failures(&events).is_empty(), "{:?}", failures(&events));
    assert_eq!(*paths.lock().unwrap(), ["/a"]);
    assert_eq!(kinds(&events, "http_requested"), 1);
    assert_eq!(kinds(&events, "http_responded"), 1);

    // Another request at the same index: the task fails naming both, and
    // the second one is never sent.
    paths.lock().unwrap().clear();
    let (_, events) = scenario("http", &a, &b);
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("diverged at request 0")
            && failed[0].contains(&format!("the log has GET {a}"))
            && failed[0].contains(&format!("the re-run sent GET {b}")),
        "{failed:?}"
    );
    assert_eq!(*paths.lock().unwrap(), ["/a"]);
}

#[test]
fn a_re_run_that_asks_for_the_same_is_answered_from_the_journal() {
    for (mode, value) in [
        ("observe", "same"),
        ("spawn", "memory=8MiB"),
        ("refuse", "00000000000000000000000000000007"),
    ] {
        let (run, events) = scenario(mode, value, value);
        assert_eq!(run.code, 0, "{mode}: {run:?}");
        assert!(
            failures(&events).is_empty(),
            "{mode}: {:?}",
            failures(&events)
        );
        assert_eq!(kinds(&events, "task_completed"), 1, "{mode}");
        // Nothing before the crash was applied twice.
        assert_eq!(
            kinds(&events, "agent_spawned"),
            1 + usize::from(mode == "spawn")
        );
        let waiting = events
            .iter()
            .filter(|e| e["kind"] == "observation_emitted" && e["data"] == "waiting")
            .count();
        assert_eq!(waiting, 1, "{mode}");
        if mode == "refuse" {
            // The refusal was answered from the log: the gate was not asked
            // again, so it was denied (and recorded) once.
            assert_eq!(kinds(&events, "capability_denied"), 1);
            assert_eq!(kinds(&events, "refusals_recorded"), 1);
        }
    }
}

#[test]
fn a_re_run_that_observes_something_else_diverges() {
    let (run, events) = scenario("observe", "first", "second");
    assert_eq!(run.code, 1, "{run:?}");
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("the re-run diverged at operation 0 of task ")
            && failed[0].contains("the log has EmitObservation")
            && failed[0].contains("the re-run submitted EmitObservation"),
        "{}",
        failed[0]
    );
    let observed: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "observation_emitted")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(
        observed,
        ["first", "waiting"],
        "nothing of the re-run applied"
    );
}

#[test]
fn a_re_run_that_spawns_with_other_budgets_diverges() {
    let (run, events) = scenario("spawn", "memory=8MiB", "memory=4MiB");
    assert_eq!(run.code, 1, "{run:?}");
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("the re-run diverged at operation 0 of task "),
        "{}",
        failed[0]
    );
    assert_eq!(
        kinds(&events, "agent_spawned"),
        2,
        "the child was spawned once"
    );
}

#[test]
fn a_re_run_refused_something_else_diverges() {
    let (run, events) = scenario(
        "refuse",
        "00000000000000000000000000000007",
        "00000000000000000000000000000008",
    );
    assert_eq!(run.code, 1, "{run:?}");
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains("diverged at operation 0")
            && failed[0].contains("the first run was refused another request there"),
        "{}",
        failed[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_closes_its_directories_in_the_middle_of_a_task() {
    let (tmp, data) = temp_data();
    let dir = tmp.path().join("inputs");
    std::fs::create_dir(&dir).unwrap();
    instruct(&dir, "observe", "hello");
    let host = open_host(&data).await;
    let component = host
        .install("test-diverge", agent_bytes("test-diverge"))
        .await
        .unwrap();
    let agent = host
        .spawn(
            component,
            "reader",
            grant(&["observe", &format!("fs.read {}", dir.display())]),
        )
        .await
        .unwrap();
    let mut rx = host.subscribe();
    let task = host
        .schedule(agent, &dir.display().to_string())
        .await
        .unwrap();
    // Wait until it spins on the directory, then revoke its token.
    'waiting: loop {
        let batch = rx.recv().await.unwrap();
        for event in batch.records.iter().flat_map(|r| &r.events) {
            if matches!(event, Event::ObservationEmitted { data, .. } if data == b"waiting") {
                break 'waiting;
            }
        }
    }
    let digest = host.state(|s| s.agent(agent).unwrap().token).await;
    let id = host.token(&digest).unwrap().revocation_ids()[0].clone();
    let revoked_at = Instant::now();
    host.revoke(id, false).await.unwrap();
    let reason = loop {
        let batch = rx.recv().await.unwrap();
        if let Some(reason) = batch
            .records
            .iter()
            .flat_map(|r| &r.events)
            .find_map(|e| match e {
                Event::TaskFailed {
                    task: t, reason, ..
                } if *t == task => Some(reason.clone()),
                _ => None,
            })
        {
            break reason;
        }
    };
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    assert!(
        // Found by the epoch tick's directory check or the gate's, which
        // ever looks first.
        reason.starts_with("the agent's token was withdrawn: "),
        "{reason}"
    );
    host.shutdown().await.unwrap();
}

#[test]
fn admin_commands_open_the_log_without_starting_agents() {
    let (tmp, data) = temp_data();
    let dir = tmp.path().join("inputs");
    std::fs::create_dir(&dir).unwrap();
    instruct(&dir, "observe", "once");
    // The task spins until `go` exists: the run stops at its timeout with
    // the task unfinished.
    let run = toka(
        &data,
        &[
            "run",
            agent_path("test-diverge"),
            "--name",
            "spinner",
            "--grant",
            "observe",
            "--grant",
            &format!("fs.read {}", dir.display()),
            "--grant",
            "http 127.0.0.1",
            "--task",
            &dir.display().to_string(),
            "--timeout",
            "2s",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let observed = |data: &Path| kinds(&events_json(data), "observation_emitted");
    let before = observed(&data);
    assert_eq!(before, 2, "`once` and `waiting`");
    std::fs::write(dir.join("go"), "").unwrap();
    // Regression: these resumed every agent with unfinished work, which
    // could run before the revocation was recorded.
    toka(&data, &["snapshot"]).ok();
    let id = "ab".repeat(64);
    toka(&data, &["token", "revoke", "--force", &id]).ok();
    assert_eq!(observed(&data), before, "no agent ran");
    // The next run finishes the task (its first operations answered from
    // the journal).
    toka(
        &data,
        &[
            "run",
            agent_path("test-diverge"),
            "--name",
            "spinner",
            "--timeout",
            "0s",
        ],
    )
    .ok();
    let events = events_json(&data);
    assert_eq!(kinds(&events, "task_completed"), 1);
    assert_eq!(observed(&data), before + 1, "only `done` is new");
}
