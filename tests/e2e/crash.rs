//! Real crashes: `toka` is killed with SIGKILL at random points of a
//! workload, restarted, and checked each time.
//!
//! The default run does a few rounds; `TOKA_LONG_TESTS=1` does 50.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{agent_path, events_json, temp_data, toka};

const STEPS: u64 = 10;

fn rounds() -> u64 {
    if std::env::var_os("TOKA_LONG_TESTS").is_some() {
        50
    } else {
        4
    }
}

/// Enough work that every round is likely to interrupt some (a round kills
/// after 15 observations on average).
fn tasks() -> u64 {
    rounds() * 3
}

/// A small deterministic generator, so a failing round can be reproduced.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// When to kill a run.
enum Kill {
    /// After it printed this many observations.
    AfterLines(u64),
    /// After this many milliseconds (perhaps before it printed anything).
    AfterMillis(u64),
}

/// Starts `toka run` on the journal agent (with the tasks, the first time),
/// kills it with SIGKILL as `kill` says, and returns what it printed and
/// whether it was still running when killed (a run that ends first is not).
fn run_and_kill(data: &Path, first: bool, kill: Kill) -> (Vec<String>, bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_toka"));
    cmd.arg("--data")
        .arg(data)
        .args([
            "--snapshot-every",
            "25",
            "run",
            agent_path("test-journal"),
            "--name",
            "j",
            "--timeout",
            "0s",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if first {
        // Every other task is also refused something at each step: a re-run
        // must get the same refusals at the same indices.
        for i in 0..tasks() {
            let task = if i % 2 == 0 {
                STEPS.to_string()
            } else {
                format!("{STEPS} deny")
            };
            cmd.args(["--task", &task]);
        }
    }
    let mut child = cmd.spawn().expect("start toka");
    let stdout = child.stdout.take().expect("stdout");
    let printed = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let printed = Arc::clone(&printed);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        })
    };
    match kill {
        Kill::AfterMillis(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Kill::AfterLines(lines) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !reader.is_finished()
                && (printed.lock().unwrap().len() as u64) < lines
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let printed = std::mem::take(&mut *printed.lock().unwrap());
    (printed, running)
}

fn count_of(state: &Value) -> u64 {
    state["agents"][0]["completed"].as_u64().expect("completed")
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_applies_nothing_twice() {
    let (_tmp, data) = temp_data();
    let mut rng = Lcg(0x7011_2026);
    let mut seen_outside = BTreeSet::new();
    let mut kills = 0;
    for round in 0..rounds() {
        // Round 0 waits for one observation, so the tasks are surely durable;
        // later rounds kill after some observations, or at some moment
        // (perhaps while the host is still starting or recovering).
        let kill = match (round, rng.below(4)) {
            (0, _) => Kill::AfterLines(1),
            (_, 0) => Kill::AfterMillis(rng.below(800)),
            _ => Kill::AfterLines(1 + rng.below(30)),
        };
        let (printed, killed) = run_and_kill(&data, round == 0, kill);
        kills += u32::from(killed);
        seen_outside.extend(printed);

        // After every crash: the chain verifies (and so do the snapshots),
        // and the state a host recovers (snapshot + tail) is the state the
        // full replay reaches.
        let verify = toka(&data, &["verify"]);
        let digest = verify
            .ok()
            .split_whitespace()
            .nth(2)
            .expect("digest")
            .to_owned();
        let state: Value =
            serde_json::from_str(toka(&data, &["state", "--json"]).ok()).expect("json");
        assert_eq!(
            state["state_digest"],
            digest.as_str(),
            "round {round}: recovered state differs from replay"
        );
    }

    eprintln!(
        "crash test: {kills} of {} rounds killed a running host",
        rounds()
    );
    assert!(
        kills > 0,
        "no round killed a running host; the test proves nothing"
    );

    // Let it finish.
    let last = toka(
        &data,
        &[
            "run",
            agent_path("test-journal"),
            "--name",
            "j",
            "--timeout",
            "0s",
        ],
    );
    for line in last.ok().lines() {
        seen_outside.insert(line.to_owned());
    }

    let state: Value = serde_json::from_str(toka(&data, &["state", "--json"]).ok()).expect("json");
    assert_eq!(count_of(&state), tasks(), "every task completed: {state}");
    assert_eq!(state["agents"][0]["failed"], 0, "{state}");

    let events = events_json(&data);
    // Exactly one observation per step, numbered 1..=tasks*STEPS: nothing
    // lost, nothing applied twice (a re-run that applied its reads or writes
    // again would skip or repeat a number).
    let counts: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "observation_emitted")
        .map(|e| {
            let data = e["data"].as_str().expect("text");
            data.split(' ')
                .nth(1)
                .expect("count")
                .parse()
                .expect("number")
        })
        .collect();
    assert_eq!(counts, (1..=tasks() * STEPS).collect::<Vec<_>>());

    // No (task, op index) was applied twice.
    let mut ops: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["kind"] == "observation_emitted" || e["kind"] == "state_put")
    {
        let cause = &e["cause"];
        let key = (
            cause["task"].as_str().expect("task").to_owned(),
            cause["index"].as_u64().expect("index"),
        );
        *ops.entry(key).or_default() += 1;
    }
    assert!(ops.values().all(|n| *n == 1), "an operation appears twice");
    assert_eq!(ops.len() as u64, 2 * tasks() * STEPS);

    // Everything the killed processes printed (it was durable first) is in the log.
    let logged: BTreeSet<String> = events
        .iter()
        .filter(|e| e["kind"] == "observation_emitted")
        .map(|e| format!("j: {}", e["data"].as_str().expect("text")))
        .collect();
    let missing: Vec<&String> = seen_outside.difference(&logged).collect();
    assert!(
        missing.is_empty(),
        "printed but not in the log: {missing:?}"
    );

    // The refused requests were refused, and recorded as gaps with their
    // reasons where a later operation followed them.
    assert!(
        events.iter().any(|e| e["kind"] == "refusals_recorded"),
        "no refusal was recorded"
    );

    let audit = toka(&data, &["verify", "--auth"]);
    assert!(audit.ok().contains("auth ok"), "{}", audit.stdout);
}
