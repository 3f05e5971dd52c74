//! A hostile tenant cannot degrade the host: quotas charged to agent
//! trees, `toka run` ending a runaway, memory bounded under a write flood,
//! host failures that are not the agent's fault, data dirs of older
//! releases, and the review's findings. Each test asserts the recorded
//! outcome, a bystander still served, and the log verifying.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use toka_host::{AgentLimits, DataDir, EventStore, Grant, Host, HostConfig};
use toka_kernel::{AgentId, AgentStatus, Event, Quota, Quotas, Rate, Rules};

use crate::{
    Arena, agent_bytes, agent_path, events_json, grant, outcome, output_within, temp_data, toka,
};

fn config_with(rules: Rules, limits: AgentLimits) -> HostConfig {
    HostConfig::new().rules(rules).agent_limits(limits).clone()
}

/// `config` on a host clock that stands still, so a quota's rate refills
/// nothing while the test runs, however long the machine takes: what the
/// burst allows is all there is.
fn still_clock(mut config: HostConfig) -> HostConfig {
    let clock = toka_host::ManualClock::at(1_800_000_000_000);
    config.clock(std::sync::Arc::new(clock));
    config
}

fn quotas(quotas: Quotas) -> Rules {
    Rules {
        quotas,
        ..Rules::default()
    }
}

fn quota_hits(events: &[Event], agent: AgentId) -> Vec<(Quota, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::QuotaExceeded {
                agent: a,
                quota,
                reason,
                ..
            } if *a == agent => Some((*quota, reason.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_meets_its_quota_once_per_task_and_a_repeat_offender_is_quarantined() {
    let limits = AgentLimits {
        quarantine_after: 2,
        ..AgentLimits::default()
    };
    let bench = Arena::new(still_clock(config_with(
        quotas(Quotas {
            log_bytes: Rate::new(64 << 10, 1 << 20),
            ..Quotas::default()
        }),
        limits,
    )))
    .await;
    let flood = bench.agent("hostile-flood", grant(&["observe"])).await;
    for _ in 0..3 {
        bench.host.schedule(flood, "log").await.unwrap();
    }
    bench.host.run_until_idle().await.unwrap();
    let status = bench
        .host
        .state(|s| s.agent(flood).unwrap().status.clone())
        .await;
    assert!(
        matches!(&status, AgentStatus::Quarantined { reason } if reason.starts_with("2 faults in a row")),
        "{status:?}"
    );
    // The agent's log stayed within its burst (plus the host's own records).
    let spent = bench
        .host
        .state(|s| s.agent(flood).unwrap().account.log_bytes_total)
        .await;
    assert!(spent < (1 << 20) + (64 << 10), "{spent}");
    let events = bench
        .finish()
        .await
        .into_iter()
        .map(|l| l.event)
        .collect::<Vec<_>>();
    let hits = quota_hits(&events, flood);
    assert_eq!(
        hits.len(),
        2,
        "once per task; the third waits in quarantine"
    );
    for (quota, reason) in &hits {
        assert_eq!(*quota, Quota::LogBytes);
        assert!(
            reason.contains("quota exceeded: log bytes per second of agent")
                && reason.ends_with("the limit is 1048576"),
            "{reason}"
        );
    }
    let failed: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::TaskFailed { agent, reason, .. } if *agent == flood => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|r| r.starts_with("quota exceeded: log bytes"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_meets_the_default_quotas_within_seconds() {
    let bench = Arena::new(HostConfig::default()).await;
    let flood = bench.agent("hostile-flood", grant(&["observe"])).await;
    let started = Instant::now();
    // Each task writes 1 MiB observations until its per-task budget (64 MiB)
    // is spent; the log quota's burst is 64 MiB too, refilled at 4 MiB/s.
    for _ in 0..4 {
        bench.host.schedule(flood, "megabytes").await.unwrap();
    }
    bench.host.run_until_idle().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let (spent, status) = bench
        .host
        .state(|s| {
            let a = s.agent(flood).unwrap();
            (a.account.log_bytes_total, a.status.clone())
        })
        .await;
    let q = Quotas::default().log_bytes;
    let allowed = q.burst + q.per_second * (took.as_secs() + 1) + (2 << 20);
    assert!(spent <= allowed, "{spent} > {allowed}");
    let events = bench
        .finish()
        .await
        .into_iter()
        .map(|l| l.event)
        .collect::<Vec<_>>();
    let hits = quota_hits(&events, flood);
    assert!(!hits.is_empty(), "the flood met no quota ({status:?})");
    assert!(hits.iter().all(|(q, _)| *q == Quota::LogBytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_cannot_escape_its_roots_quota_by_spawning() {
    let bench = Arena::new(still_clock(config_with(
        quotas(Quotas {
            tasks: Rate::new(1, 50),
            ..Quotas::default()
        }),
        AgentLimits::default(),
    )))
    .await;
    let spawner = bench
        .agent(
            "hostile-flood",
            grant(&["observe", "spawn hello", "schedule children"]),
        )
        .await;
    // Each child is one task: 80 of them would be 80 tasks of this tree.
    let err = outcome(&bench.host, spawner, "spawn-many 80")
        .await
        .unwrap_err();
    assert!(
        err.contains("quota exceeded: tasks per second of agent")
            && err.contains("the limit is 50"),
        "{err}"
    );
    bench.host.run_until_idle().await.unwrap();
    let children = bench
        .host
        .state(|s| s.agents().filter(|(_, a)| a.parent == spawner).count())
        .await;
    assert!((49..=51).contains(&children), "{children}");
    let events = bench
        .finish()
        .await
        .into_iter()
        .map(|l| l.event)
        .collect::<Vec<_>>();
    assert_eq!(quota_hits(&events, spawner).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawner_meets_the_live_children_limit() {
    let bench = Arena::new(config_with(
        Rules {
            max_children: 20,
            ..Rules::default()
        },
        AgentLimits::default(),
    ))
    .await;
    let spawner = bench
        .agent(
            "hostile-flood",
            grant(&["observe", "spawn hello", "schedule children"]),
        )
        .await;
    let err = outcome(&bench.host, spawner, "spawn-many 30")
        .await
        .unwrap_err();
    assert!(
        err.contains("live children of agent") && err.contains("would be 21, the limit is 20"),
        "{err}"
    );
    bench.host.run_until_idle().await.unwrap();
    assert_eq!(
        bench
            .host
            .state(|s| s.agent(spawner).unwrap().live_children)
            .await,
        20
    );
    let events = bench
        .finish()
        .await
        .into_iter()
        .map(|l| l.event)
        .collect::<Vec<_>>();
    assert_eq!(quota_hits(&events, spawner)[0].0, Quota::Children);
}

#[test]
fn toka_run_ends_a_runaway_with_a_line_that_says_why() {
    let (_tmp, data) = temp_data();
    let looping = [
        "run",
        "--grant",
        "observe",
        "--grant",
        "schedule self",
        agent_path("hostile-flood"),
        "--task",
        "loop",
    ];
    let mut args = looping.to_vec();
    args.extend(["--max-tasks", "25"]);
    let run = toka(&data, &args);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("stopped: 25 tasks ran, the limit of --max-tasks"),
        "{}",
        run.stderr
    );
    let mut args = looping.to_vec();
    args.extend(["--timeout", "2s", "--max-tasks", "0"]);
    let started = Instant::now();
    let run = toka(&data, &args);
    assert_eq!(run.code, 1, "{run:?}");
    // The run itself (start-up, compiling the agent, shutting down) takes
    // seconds in a debug build on a loaded machine; a run that went on
    // past its timeout would loop until the test's own limit.
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(
        run.stderr
            .contains("stopped: the run took 2s, the limit of --timeout"),
        "{}",
        run.stderr
    );
    // The log is intact.
    assert!(toka(&data, &["verify"]).ok().starts_with("ok "));
}

/// Runs the test `name` of this binary alone in a child process (so its
/// memory is its own), and returns its output.
fn run_alone(name: &str) -> String {
    let output = output_within(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env("TOKA_TEST_ALONE", "1"),
        crate::COMMAND_LIMIT,
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    text
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The bound the host's memory stays under while an agent floods it.
const FLOOD_RSS_BOUND: u64 = 512 << 20;

#[test]
fn a_write_flood_keeps_the_host_under_its_memory_bound() {
    let output = run_alone("hardening::flood_alone");
    let peak: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("peak rss: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{output}"));
    println!("peak RSS under the write flood: {} MiB", peak >> 20);
    assert!(
        peak < FLOOD_RSS_BOUND,
        "peak RSS {} MiB, the bound is {} MiB",
        peak >> 20,
        FLOOD_RSS_BOUND >> 20
    );
}

/// The flood itself; run by `a_write_flood_keeps_the_host_under_its_memory_bound`
/// in a process of its own (alone, it does nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_alone() {
    if std::env::var_os("TOKA_TEST_ALONE").is_none() {
        return;
    }
    // No quota, a deadline: 1 MiB observations as fast as the host takes them.
    let limits = AgentLimits {
        deadline_per_task: Duration::from_secs(15),
        observation_bytes_per_task: u64::MAX,
        ..AgentLimits::default()
    };
    let bench = Arena::new(config_with(quotas(Quotas::UNLIMITED), limits)).await;
    let flood = bench.agent("hostile-flood", grant(&["observe"])).await;
    let mut slow = bench.host.subscribe(); // never read: it must not pin batches
    let flooding = bench.host.schedule(flood, "megabytes").await.unwrap();
    // The bystander is served while the flood goes on: at least one of its
    // tasks completes before the flood's task has ended (an order of
    // events, not a wall-clock figure, so a loaded machine cannot fail it).
    let mut served_during_flood = 0;
    loop {
        bench.bystander_serves().await;
        if bench.host.state(|s| s.task(flooding).is_none()).await {
            break;
        }
        served_during_flood += 1;
    }
    assert!(
        served_during_flood > 0,
        "the bystander was starved by the flood"
    );
    let written = bench
        .host
        .state(|s| s.agent(flood).unwrap().account.log_bytes_total)
        .await;
    // The subscriber that never reads lagged: the bus dropped what it
    // could not hold instead of keeping it for it.
    assert!(matches!(
        slow.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
    ));
    // The host's peak under the flood, read before `finish` reads every
    // event of the log back into this process (a check of the test's own,
    // whose size follows how much the flood wrote, not the host's memory).
    let peak = peak_rss();
    bench.finish().await;
    println!("flooded {} MiB", written >> 20);
    println!("peak rss: {peak}");
}

/// The fixture's last record hash, as the release that wrote it left it.
const HEAD_HASH: &str = "d8cb2b61a7edca4dd2b6d84c62dee1fd28c6a810122dbe00656658433cf12058";

#[test]
fn a_data_dir_written_before_rules_opens_replays_verifies_and_adopts_them() {
    let (_tmp, data) = temp_data();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/datadir-v1");
    std::fs::create_dir_all(&data).unwrap();
    for file in ["toka.redb", "root.key"] {
        std::fs::copy(fixture.join(file), data.join(file)).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("root.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let verified = toka(&data, &["verify", "--auth"]);
    let out = verified.ok();
    assert!(out.starts_with("ok 102 "), "{out}");
    assert!(out.contains("snapshots ok: 2 match the log"), "{out}");
    assert!(out.contains("auth ok: 26 allowed and 2 denied"), "{out}");
    let state: serde_json::Value =
        serde_json::from_str(toka(&data, &["state", "--json"]).ok()).unwrap();
    assert_eq!(state["head"]["hash"], HEAD_HASH);
    // Read exactly as the release that wrote it printed it.
    let before = events_json(&data);
    let written: Vec<serde_json::Value> = std::fs::read_to_string(fixture.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(before, written);
    // A run under this release records the rules, then applies them.
    toka(&data, &["run", "hello", "--task", "again"]).ok();
    let after = events_json(&data);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the old log is unchanged"
    );
    assert_eq!(after[before.len()]["kind"], "rules_adopted");
    assert_eq!(after[before.len()]["seq"], 103);
    let verified = toka(&data, &["verify", "--auth"]);
    assert!(verified.ok().starts_with("ok "), "{verified:?}");
    // Snapshots of the old format still load: the state matches a replay.
    let state = toka(&data, &["state", "--json"]);
    let state: serde_json::Value = serde_json::from_str(state.ok()).unwrap();
    assert_eq!(state["agents"].as_array().unwrap().len(), 8 + 1);
}

/// What a command that must change nothing could change: the log (every
/// event), the state, and the root key. (The redb file's bytes change when
/// it is merely opened for writing.)
fn files(data: &Path) -> (Vec<serde_json::Value>, String, Option<Vec<u8>>) {
    (
        events_json(data),
        toka(data, &["state", "--json"]).ok().to_owned(),
        std::fs::read(data.join("root.key")).ok(),
    )
}

#[track_caller]
fn assert_refused(run: &crate::Run, needle: &str) {
    assert_eq!(run.code, 2, "{run:#?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run:#?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "`{needle}` in {lines:?}"
    );
}

#[test]
fn bad_input_writes_nothing_to_an_existing_data_dir() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "x"]).ok();
    let before = files(&data);
    let not_wasm = tmp.path().join("not.wasm");
    std::fs::write(&not_wasm, b"not wasm").unwrap();
    let not_wasm = not_wasm.display().to_string();
    // Regression: --with installed the extras before the main component was
    // checked.
    let run = toka(&data, &["run", &not_wasm, "--with", "worker"]);
    assert_refused(&run, "not a WebAssembly file");
    // Regression: a new component was installed before a bad token was refused.
    let token = tmp.path().join("token");
    std::fs::write(&token, "not a token").unwrap();
    let run = toka(
        &data,
        &[
            "run",
            agent_path("test-probe"),
            "--token",
            &token.display().to_string(),
        ],
    );
    assert_refused(&run, "not a capability token");
    let run = toka(&data, &["run", "hello", "--name", "bell\u{7}ring"]);
    assert_refused(&run, "control character");
    let run = toka(&data, &["run", "hello", "--name", "operator"]);
    assert_refused(&run, "`operator` is reserved");
    assert!(files(&data) == before, "nothing was written");
}

#[test]
fn commands_on_a_missing_or_empty_dir_leave_it_as_it_was() {
    let (tmp, data) = temp_data();
    // Regression: `token revoke` on a missing dir created a data dir.
    let id = "ab".repeat(64);
    let run = toka(&data, &["token", "revoke", &id]);
    assert_refused(&run, "no Toka data dir");
    assert!(!data.exists());
    let run = toka(&data, &["snapshot"]);
    assert_refused(&run, "no Toka data dir");
    assert!(!data.exists());
    // Regression: an empty pre-existing dir kept a root.key after bad input.
    std::fs::create_dir(&data).unwrap();
    let bad = tmp.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
    let run = toka(&data, &["run", &bad.display().to_string()]);
    assert_refused(&run, "not a component");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "still empty");
}

#[test]
fn the_data_dir_and_keys_are_off_limits_to_fs_rights() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "x"]).ok();
    let before = files(&data);
    let data_str = data.display().to_string();
    let link = tmp.path().join("innocent");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    for right in [
        format!("fs.read {data_str}"),
        format!("fs.write {data_str}/sub"),
        "fs.read /".to_owned(),
        format!("fs.read {}", tmp.path().display()),
        // Through a symlink: resolved before the check.
        format!("fs.read {}", link.display()),
    ] {
        let run = toka(&data, &["token", "issue", "--right", &right]);
        assert_refused(&run, "which the host keeps to itself");
        let run = toka(&data, &["run", "hello", "--grant", &right]);
        assert_refused(&run, "which the host keeps to itself");
    }
    // A root key kept elsewhere is protected too.
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("root.key");
    std::fs::copy(data.join("root.key"), &key).unwrap();
    let run = toka(
        &data,
        &[
            "--root-key",
            &key.display().to_string(),
            "token",
            "issue",
            "--right",
            &format!("fs.read {}", key_dir.path().display()),
        ],
    );
    assert_refused(&run, "which the host keeps to itself");
    assert!(files(&data) == before, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_elsewhere_cannot_reach_the_data_dir_either() {
    let (_tmp, data) = temp_data();
    let dir = DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let store = Arc::new(
        dir.open_or_create(&toka_kernel::Limits::default(), &root)
            .unwrap(),
    );
    let outside = toka_host::Token::issue(
        &root,
        &[format!("fs.read {}", data.display()).parse().unwrap()],
        &[],
        None,
    )
    .unwrap();
    let config = HostConfig::new()
        .protected_paths(vec![data.clone()])
        .clone();
    let host = Host::open(store as Arc<dyn EventStore>, root, config)
        .await
        .unwrap();
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let head = host.head();
    let err = host
        .spawn(hello, "snoop", Grant::Token(outside.bytes().to_vec()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("which the host keeps to itself"),
        "{err}"
    );
    assert_eq!(host.head(), head, "nothing was written");
    host.shutdown().await.unwrap();
}

#[test]
fn a_token_too_expensive_to_evaluate_is_refused_when_presented() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "x"]).ok();
    let root = DataDir::new(&data).root_key(None, false).unwrap();
    // A block appended offline whose rules join large relations.
    let mut code = String::new();
    for i in 0..60 {
        code.push_str(&format!("n({i});\n"));
    }
    code.push_str("p($a, $b, $c) <- n($a), n($b), n($c);\n");
    code.push_str("q($a, $b, $c, $d) <- p($a, $b, $c), n($d);\n");
    let token = toka_host::Token::issue(&root, &["observe".parse().unwrap()], &[], None).unwrap();
    let block = biscuit_auth::builder::BlockBuilder::new()
        .code(code.as_str())
        .unwrap();
    let appended = biscuit_auth::Biscuit::from(token.bytes().as_ref(), root.public())
        .unwrap()
        .append(block)
        .unwrap();
    let path = tmp.path().join("heavy.token");
    std::fs::write(&path, appended.to_base64().unwrap()).unwrap();
    let before = files(&data);
    let run = toka(
        &data,
        &[
            "run",
            "hello",
            "--name",
            "heavy",
            "--token",
            &path.display().to_string(),
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("the token is too expensive to evaluate")
            || run.stderr.contains("authorization gave up"),
        "{}",
        run.stderr
    );
    assert!(files(&data) == before, "nothing was written");
}

#[test]
fn the_hosts_own_failures_are_host_conditions_not_agent_faults() {
    // The host cannot reserve address space for the instance: that is the
    // host's failure, retried and recorded as such, never the agent's.
    let (_tmp, data) = temp_data();
    toka(&data, &["run", "hello"]).ok();
    let run = output_within(
        Command::new("prlimit")
            .arg("--as=2000000000")
            .arg(env!("CARGO_BIN_EXE_toka"))
            .arg("--data")
            .arg(&data)
            .args(["run", "hello", "--task", "x"])
            .env_remove("RUST_LOG"),
        crate::COMMAND_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the host could not run the task"),
        "{stderr}"
    );
    let events = events_json(&data);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "host_condition").count(), 3);
    assert!(!kinds.contains(&"agent_faulted"), "{kinds:?}");
    assert!(!kinds.contains(&"agent_quarantined"));
    // With room again, the agent runs as before.
    toka(&data, &["run", "hello", "--task", "again"]).ok();
    assert!(toka(&data, &["verify"]).ok().starts_with("ok "));
}

#[test]
fn no_panic_on_absurd_durations_and_a_root_key_others_can_read_is_refused() {
    let (tmp, data) = temp_data();
    let key = tmp.path().join("open.key");
    std::fs::write(&key, format!("ed25519-private/{}\n", "11".repeat(32))).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let run = toka(
        &data,
        &["--root-key", &key.display().to_string(), "run", "hello"],
    );
    assert_refused(&run, "readable by other users");
    assert!(!data.exists(), "nothing was created");
    // Regression: a huge --expires panicked (SystemTime overflow).
    let run = toka(
        &data,
        &[
            "token",
            "issue",
            "--right",
            "observe",
            "--expires",
            "18446744073709551615s",
        ],
    );
    assert_refused(
        &run,
        "--expires 18446744073709551615s is too far in the future",
    );
    // Far, but within what a token can hold: it is issued.
    toka(
        &data,
        &[
            "token",
            "issue",
            "--right",
            "observe",
            "--expires",
            "99999999999999m",
        ],
    )
    .ok();
}

/// A store whose writes fail once `healthy` batches were written: with a
/// panic, or with the error a full disk gives. Its disk's free space is
/// the inner store's, or as [`Failing::set_free`] says.
pub(crate) struct Failing {
    inner: Arc<dyn EventStore>,
    healthy: std::sync::atomic::AtomicU32,
    panics: bool,
    /// `u64::MAX`: ask the inner store.
    free: std::sync::atomic::AtomicU64,
}

impl Failing {
    /// `inner`, failing after `healthy` batches.
    pub(crate) fn over(inner: Arc<dyn EventStore>, healthy: u32, panics: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            healthy: std::sync::atomic::AtomicU32::new(healthy),
            panics,
            free: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// From now on the store's disk has `bytes` free.
    pub(crate) fn set_free(&self, bytes: u64) {
        self.free.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    /// An in-memory store, failing after `healthy` batches.
    fn new(healthy: u32, panics: bool) -> Arc<Self> {
        let memory = toka_host::MemoryStore::new(toka_kernel::Limits::default());
        Self::over(Arc::new(memory), healthy, panics)
    }
}

impl EventStore for Failing {
    fn append(&self, batch: toka_host::Batch) -> Result<(), toka_host::StoreError> {
        let left = self
            .healthy
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            assert!(!self.panics, "the disk went away");
            return Err(toka_host::StoreError::Backend {
                path: "a full disk".into(),
                message: "No space left on device (os error 28)".into(),
            });
        }
        self.inner.append(batch)
    }
    fn records(&self, from: u64) -> Result<toka_host::Records<'_>, toka_host::StoreError> {
        self.inner.records(from)
    }
    fn task_end(&self, task: toka_kernel::TaskId) -> Result<Option<u64>, toka_host::StoreError> {
        self.inner.task_end(task)
    }
    fn snapshots(&self) -> Result<Vec<u64>, toka_host::StoreError> {
        self.inner.snapshots()
    }
    fn snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, toka_host::StoreError> {
        self.inner.snapshot(seq)
    }
    fn put_snapshot(&self, seq: u64, bytes: Vec<u8>) -> Result<(), toka_host::StoreError> {
        self.inner.put_snapshot(seq, bytes)
    }
    fn head(&self) -> Result<toka_kernel::ChainHead, toka_host::StoreError> {
        self.inner.head()
    }
    fn blob(&self, digest: &toka_kernel::Digest) -> Result<Option<Vec<u8>>, toka_host::StoreError> {
        self.inner.blob(digest)
    }
    fn token(
        &self,
        digest: &toka_kernel::Digest,
    ) -> Result<Option<Vec<u8>>, toka_host::StoreError> {
        self.inner.token(digest)
    }
    fn find_token(
        &self,
        wanted: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<toka_kernel::Digest>, toka_host::StoreError> {
        self.inner.find_token(wanted)
    }
    fn anchor(&self) -> Result<Option<toka_host::Anchor>, toka_host::StoreError> {
        self.inner.anchor()
    }
    fn cut(&self, cut: toka_host::Cut) -> Result<(), toka_host::StoreError> {
        self.inner.cut(cut)
    }
    fn blob_digests(&self) -> Result<Vec<toka_kernel::Digest>, toka_host::StoreError> {
        self.inner.blob_digests()
    }
    fn root_public_key(&self) -> Result<Option<Vec<u8>>, toka_host::StoreError> {
        self.inner.root_public_key()
    }
    fn data_id(&self) -> Result<Option<[u8; 16]>, toka_host::StoreError> {
        self.inner.data_id()
    }
    fn limits(&self) -> Result<toka_kernel::Limits, toka_host::StoreError> {
        self.inner.limits()
    }
    fn location(&self) -> String {
        "a store that fails".into()
    }
    fn free_space(&self) -> Option<u64> {
        match self.free.load(std::sync::atomic::Ordering::SeqCst) {
            u64::MAX => self.inner.free_space(),
            set => Some(set),
        }
    }
}

/// A host over `store` (rooted in `root`), with `hello` spawned on it.
pub(crate) async fn hello_on(store: Arc<Failing>, root: toka_host::RootKey) -> (Host, AgentId) {
    let host = Host::open(store as Arc<dyn EventStore>, root, HostConfig::default())
        .await
        .unwrap();
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let agent = host
        .spawn(hello, "hello", grant(&["observe"]))
        .await
        .unwrap();
    (host, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_log_writer_stops_the_host_with_the_reason() {
    // Regression: a panic in the writer thread left every waiter hanging.
    let (host, agent) = hello_on(Failing::new(3, true), toka_host::RootKey::generate()).await;
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Err(e) = host.schedule(agent, "x").await {
                return e.to_string();
            }
            if let Err(e) = host.run_until_idle().await {
                return e.to_string();
            }
        }
    })
    .await
    .expect("the host stopped instead of hanging");
    assert!(
        waited.contains("the log writer panicked: the disk went away"),
        "{waited}"
    );
    let err = host.shutdown().await.unwrap_err();
    assert!(err.to_string().contains("the log writer panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_disk_fails_ends_its_subscriptions_and_waits() {
    // Regression: when the log writer failed (a full disk), the host
    // stopped but never closed its bus: a subscriber (a test waiting for a
    // task, an API client following events) waited for ever.
    let (host, agent) = hello_on(Failing::new(4, false), toka_host::RootKey::generate()).await;
    let mut events = host.subscribe();
    let stopped = host.stopped();
    // Tasks until one is refused: the host stopped.
    let mut scheduled = Vec::new();
    let reason = loop {
        match host.schedule(agent, "x").await {
            Ok(task) => scheduled.push(task),
            Err(e) => break e.to_string(),
        }
    };
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(stopped.await.0.contains("No space left on device"));
    // Bounded only so that a regression fails instead of hanging the suite.
    let bound = Duration::from_secs(60);
    let closed = tokio::time::timeout(bound, async {
        loop {
            match events.recv().await {
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the subscription outlived the host");
    // A caller waiting for a task that will never end is answered with the
    // task as it is, not left waiting out its time.
    let last = *scheduled.last().expect("a task was scheduled");
    let waited = tokio::time::timeout(bound, host.wait_task(last, Duration::from_secs(3600))).await;
    assert!(waited.is_ok(), "wait_task outlived the host");
    let subscribed_after = tokio::time::timeout(bound, host.subscribe().recv()).await;
    assert!(
        matches!(
            subscribed_after,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed))
        ),
        "{subscribed_after:?}"
    );
    let err = host.shutdown().await.unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
}
