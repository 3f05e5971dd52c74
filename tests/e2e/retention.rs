//! Retention: `toka archive` moves the beginning of a real redb log to an
//! archive file, the live log goes on from its anchor snapshot, `toka
//! verify` checks both, and a task running across the cut is still applied
//! exactly once.

use std::path::Path;

use crate::journal::{counting_server, instruct, let_it_finish, run_until_waiting_then_kill};
use crate::{open_host, temp_data, toka};

/// The head's sequence number, from `toka verify` (`ok SEQ DIGEST`).
fn head(data: &Path) -> u64 {
    toka(data, &["verify"])
        .ok()
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("verify prints the head")
}

fn count(run: &crate::Run) -> String {
    run.ok()
        .lines()
        .filter_map(|l| l.split("count = ").nth(1))
        .next_back()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn archiving_moves_the_log_to_a_file_and_the_live_log_goes_on_from_its_anchor() {
    let (tmp, data) = temp_data();
    let archive = |name: &str| tmp.path().join(name);
    let run = toka(&data, &["run", "counter", "--task", "1", "--task", "2"]);
    assert_eq!(count(&run), "3");
    let first_head = head(&data);

    let made = toka(&data, &["archive", "--to", archive("a1").to_str().unwrap()]);
    assert!(
        made.ok()
            .contains(&format!("archived records 1..={first_head}")),
        "{made:#?}"
    );
    assert!(archive("a1").is_file());
    assert!(!tmp.path().join("a1.partial").exists());

    // An archive is never overwritten, and a refused archive changes nothing.
    let again = toka(&data, &["archive", "--to", archive("a1").to_str().unwrap()]);
    assert_eq!(again.code, 2, "{again:#?}");
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    let nothing = toka(&data, &["archive", "--to", archive("a0").to_str().unwrap()]);
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    assert!(
        nothing.stderr.contains("nothing to archive"),
        "{}",
        nothing.stderr
    );
    assert!(!archive("a0").exists());

    let verified = toka(&data, &["verify"]);
    assert!(
        verified.ok().contains(&format!(
            "anchored at the snapshot after record {first_head}"
        )),
        "{verified:#?}"
    );
    let with_archive = toka(
        &data,
        &[
            "verify",
            "--archive",
            archive("a1").to_str().unwrap(),
            "--auth",
        ],
    );
    assert!(
        with_archive.ok().contains(&format!(
            "archive ok: {} holds records 1..={first_head}",
            archive("a1").display()
        )) && with_archive
            .stdout
            .contains("ending at the live log's anchor")
            && with_archive.stdout.contains("auth ok"),
        "{with_archive:#?}"
    );

    // The archived records are gone from the live log, by name.
    let old = toka(&data, &["events", "--from", "1"]);
    assert_eq!(old.code, 2, "{old:#?}");
    assert!(
        old.stderr.contains("record 1 is archived")
            && old
                .stderr
                .contains(&format!("starts at record {}", first_head + 1)),
        "{}",
        old.stderr
    );
    assert!(toka(&data, &["events"]).ok().is_empty());

    // The host starts from the anchor: the count goes on, and snapshots
    // written after it never drop it.
    let run = toka(
        &data,
        &[
            "--snapshot-every",
            "2",
            "run",
            "counter",
            "--task",
            "4",
            "--task",
            "5",
        ],
    );
    assert_eq!(count(&run), "12");
    let events = toka(&data, &["events"]);
    assert!(events.ok().contains("count = 12"), "{events:#?}");
    let second_head = head(&data);
    assert!(toka(&data, &["verify"]).ok().contains(&format!(
        "anchored at the snapshot after record {first_head}"
    )));

    // A second archive continues the first; the two check in order only.
    let kept = toka(
        &data,
        &[
            "archive",
            "--to",
            archive("a2").to_str().unwrap(),
            "--keep",
            "3",
        ],
    );
    let cut = second_head - 3;
    assert!(
        kept.ok()
            .contains(&format!("archived records {}..={cut}", first_head + 1)),
        "{kept:#?}"
    );
    let both = toka(
        &data,
        &[
            "verify",
            "--archive",
            archive("a1").to_str().unwrap(),
            "--archive",
            archive("a2").to_str().unwrap(),
        ],
    );
    assert!(
        both.ok()
            .contains(&format!("anchored at the snapshot after record {cut}"))
            && both.stdout.contains("ending at the live log's anchor"),
        "{both:#?}"
    );
    let swapped = toka(
        &data,
        &[
            "verify",
            "--archive",
            archive("a2").to_str().unwrap(),
            "--archive",
            archive("a1").to_str().unwrap(),
        ],
    );
    assert_eq!(swapped.code, 1, "{swapped:#?}");
    assert!(
        swapped
            .stderr
            .contains("does not continue the archive before it"),
        "{}",
        swapped.stderr
    );
    let tail = toka(&data, &["events", "--from", &(cut + 1).to_string()]);
    assert!(tail.ok().contains("count = 12"), "{tail:#?}");
    assert_eq!(
        count(&toka(&data, &["run", "counter", "--task", "1"])),
        "13"
    );
}

#[test]
fn a_damaged_or_foreign_archive_is_named_and_nothing_is_trusted_from_it() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let good = tmp.path().join("good");
    toka(&data, &["archive", "--to", good.to_str().unwrap()]).ok();
    let bytes = std::fs::read(&good).unwrap();
    let check = |name: &str, bytes: &[u8]| {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        toka(&data, &["verify", "--archive", path.to_str().unwrap()])
    };

    let mut altered = bytes.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 1;
    let run = check("altered", &altered);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("altered"), "{}", run.stderr);

    let run = check("truncated", &bytes[..bytes.len() - 10]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);

    // A frame that claims 4 GiB: refused before anything is allocated.
    let mut huge = b"TOKA-ARCHIVE\0".to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    let run = check("huge", &huge);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("not a valid Toka archive"),
        "{}",
        run.stderr
    );

    let run = check("not-an-archive", b"hello");
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("does not start with TOKA-ARCHIVE"),
        "{}",
        run.stderr
    );

    // Another data dir's archive does not check against this log.
    let (_other_tmp, other) = temp_data();
    toka(&other, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let run = toka(&other, &["verify", "--archive", good.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("another data dir"), "{}", run.stderr);
    // The untouched archive still checks.
    assert!(
        toka(&data, &["verify", "--archive", good.to_str().unwrap()])
            .ok()
            .contains("archive ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_host_keeps_its_log_from_being_archived_under_it() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1"]).ok();
    let host = open_host(&data).await;
    let to = tmp.path().join("a");
    let run = toka(&data, &["archive", "--to", to.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    assert!(!to.exists());
    host.shutdown().await.unwrap();
}

#[test]
fn a_task_running_at_the_cut_keeps_its_journal_and_runs_exactly_once() {
    let (port, paths) = counting_server();
    let url = format!("http://127.0.0.1:{port}/once");
    let (tmp, data) = temp_data();
    let dir = tmp.path().join("inputs");
    std::fs::create_dir(&dir).unwrap();
    instruct(&dir, "http", &url);
    // The task sent its request, got the response journaled, and was
    // killed while waiting: it is running at the cut.
    run_until_waiting_then_kill(&data, &dir);
    let cut = head(&data);
    let first = tmp.path().join("first");
    let archived = toka(&data, &["archive", "--to", first.to_str().unwrap()]);
    assert!(
        archived
            .ok()
            .contains(&format!("archived records 1..={cut}"))
            && archived.stdout.contains("stay for tasks still running"),
        "{archived:#?}"
    );
    assert!(toka(&data, &["verify"]).ok().contains("anchored"));

    // The re-run is answered from the journal the live log kept: the
    // request is not sent again.
    let run = let_it_finish(&data, &dir);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(*paths.lock().unwrap(), ["/once"]);
    let events = toka(&data, &["events", "--json"]);
    assert!(!events.ok().contains("task_failed"), "{events:#?}");
    assert!(events.stdout.contains("task_completed"), "{events:#?}");
    assert!(toka(&data, &["verify", "--auth"]).ok().contains("auth ok"));

    // Once the task ended, the next archive drops its records, and the
    // response body nothing live refers to any more leaves the live store
    // (the first archive holds it).
    let second = tmp.path().join("second");
    let archived = toka(&data, &["archive", "--to", second.to_str().unwrap()]);
    assert!(archived.ok().contains("dropped 1 blobs"), "{archived:#?}");
    let both = toka(
        &data,
        &[
            "verify",
            "--archive",
            first.to_str().unwrap(),
            "--archive",
            second.to_str().unwrap(),
            "--auth",
        ],
    );
    assert!(
        both.ok().contains(&format!(
            "archive ok: {} holds records 1..={cut} and 1 response bodies\n",
            first.display()
        )) && both.stdout.contains("ending at the live log's anchor")
            && both.stdout.contains("auth ok"),
        "{both:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_gone_for_archived_records_and_serves_the_rest() {
    use reqwest::{Method, StatusCode};

    use crate::serve::{Api, Served};

    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let cut = head(&data);
    let to = tmp.path().join("a");
    toka(&data, &["archive", "--to", to.to_str().unwrap()]).ok();
    toka(&data, &["run", "counter", "--task", "3"]).ok();

    let served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    for path in ["/v1/events?from=1", "/v1/log/records?from=1"] {
        let template = path.split('?').next().unwrap();
        let answer = api.get(template, path).await;
        assert_eq!(answer.status, StatusCode::GONE, "{path}: {answer:?}");
        assert_eq!(answer.code(), "archived", "{path}");
        assert!(
            answer.message().contains("record 1 is archived"),
            "{answer:?}"
        );
    }
    let stream = api
        .send(
            Method::GET,
            "/v1/events/stream",
            api.request(Method::GET, "/v1/events/stream?from=1"),
        )
        .await;
    assert_eq!(stream.status, StatusCode::GONE, "{stream:?}");

    // The status says where the live log starts (the dashboard reads from
    // there), and without `from` the events start after the anchor.
    let status = api.get("/v1/status", "/v1/status").await;
    assert_eq!(status.body["log_start"], cut + 1, "{status:?}");
    let page = api.get("/v1/events", "/v1/events").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let first = page.body["events"][0]["seq"].as_u64().unwrap();
    assert_eq!(first, cut + 1, "{page:?}");
    let text = page.body.to_string();
    assert!(text.contains("count = 6"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_host_archives_its_log_while_agents_write_to_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use crate::{agent_bytes, grant, open_host};

    const AGENTS: usize = 8;
    const TASKS: u64 = 5;
    // The agents run rounds of tasks until this many archives were cut
    // while they ran: how many fit in one round depends on the machine.
    const ARCHIVES: usize = 3;
    const MAX_ROUNDS: u64 = 40;
    let (tmp, data) = temp_data();
    let host = Arc::new(open_host(&data).await);
    let bench = host
        .install("test-bench", agent_bytes("test-bench"))
        .await
        .unwrap();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let agent = host
            .spawn(bench, &format!("writer-{i}"), grant(&["observe"]))
            .await
            .unwrap();
        agents.push(agent);
    }
    // Archives are cut again and again while the agents' operations are
    // being applied and appended.
    let idle = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicUsize::new(0));
    let archiver = {
        let (host, idle, cut, dir) = (
            Arc::clone(&host),
            Arc::clone(&idle),
            Arc::clone(&cut),
            tmp.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let (mut made, mut while_busy) = (Vec::new(), 0);
            for n in 0.. {
                let last_round = idle.load(Ordering::SeqCst);
                let to = dir.join(format!("a{n}"));
                match host.archive(&to, 0, &mut |_, _| std::ops::ControlFlow::Continue(())) {
                    Ok(archived) => {
                        assert_eq!(archived.file, to);
                        while_busy += usize::from(!last_round);
                        cut.store(while_busy, Ordering::SeqCst);
                        made.push(to);
                    }
                    Err(toka_host::ArchiveError::Nothing(_)) => assert!(!to.exists()),
                    Err(e) => panic!("archive {n} failed: {e}"),
                }
                if last_round {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (made, while_busy)
        })
    };
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && cut.load(Ordering::SeqCst) < ARCHIVES {
        for agent in &agents {
            for _ in 0..TASKS {
                host.schedule(*agent, "observe 2000").await.unwrap();
            }
        }
        host.run_until_idle().await.unwrap();
        rounds += 1;
    }
    idle.store(true, Ordering::SeqCst);
    let (made, while_busy) = archiver.await.unwrap();
    assert!(
        while_busy >= ARCHIVES,
        "only {while_busy} archives were cut while agents ran {rounds} rounds"
    );
    let (_, state) = host.committed_view().await;
    for agent in &agents {
        let record = state.agent(*agent).unwrap();
        assert_eq!(
            (record.completed, record.failed),
            (rounds * TASKS, 0),
            "{agent}"
        );
    }
    let head = host.head().seq;
    assert_eq!(
        host.log_start().unwrap(),
        head + 1,
        "the last archive took all"
    );
    Arc::into_inner(host)
        .expect("the archiver is done")
        .shutdown()
        .await
        .unwrap();

    // Every archive continues the one before, the last ends at the live
    // log's anchor, and the live log verifies from it.
    let mut args = vec!["verify".to_owned()];
    for file in &made {
        args.extend(["--archive".to_owned(), file.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let verified = toka(&data, &args);
    assert!(
        verified
            .ok()
            .contains(&format!("anchored at the snapshot after record {head}"))
            && verified.stdout.contains("ending at the live log's anchor")
            && verified.stdout.matches("archive ok").count() == made.len(),
        "{verified:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toka_archive_goes_through_a_running_server_and_agents_run_on() {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::serve::{Api, Served};

    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    let cut = head(&data);
    // A failed archive (its directory cannot be made) says why in words
    // naming no path of the host's: a reader sees the job too.
    let archives = data.join("archives");
    std::fs::write(&archives, b"in the way").unwrap();
    let failed = toka(
        &data,
        &["archive", "--to", tmp.path().join("x").to_str().unwrap()],
    );
    assert_eq!(failed.code, 1, "{failed:#?}");
    assert!(
        failed.stderr.contains("nothing was archived")
            && failed.stderr.contains("archives")
            && !failed.stderr.contains(tmp.path().to_str().unwrap()),
        "{}",
        failed.stderr
    );
    std::fs::remove_file(&archives).unwrap();
    // What a server stopped in the middle of an archive left; and a file
    // of the operator's.
    std::fs::create_dir_all(&archives).unwrap();
    std::fs::write(archives.join("log-1-1.toka-archive.partial"), b"half").unwrap();
    std::fs::write(archives.join("notes.txt"), b"mine").unwrap();
    let to = tmp.path().join("online");
    let archived = toka(&data, &["archive", "--to", to.to_str().unwrap()]);
    assert!(
        archived.ok().contains("archiving through the server")
            && archived.stdout.contains("archived records 1..=")
            && archived.stdout.contains(&format!("to {}", to.display())),
        "{archived:#?}"
    );
    assert!(to.is_file());
    let left: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["notes.txt"],
        "the server's copy was moved, the unfinished one removed"
    );
    let job = api.get("/v1/archive", "/v1/archive").await;
    assert_eq!(job.body["state"], "ok", "{job:?}");
    let file = job.body["file"].as_str().unwrap();
    assert!(
        file.starts_with("archives/log-") && !file.contains(tmp.path().to_str().unwrap()),
        "a reader sees the file relative to the data dir: {job:?}"
    );
    let last = job.body["last"].as_u64().unwrap();
    assert!(last >= cut, "{job:?}");
    let gone = api.get("/v1/log/records", "/v1/log/records?from=1").await;
    assert_eq!(gone.status, StatusCode::GONE, "{gone:?}");

    // The agent runs on from the anchor, through the same server.
    let run = toka(&data, &["run", "counter", "--task", "3"]);
    assert_eq!(count(&run), "6", "{run:#?}");

    // Refused by name: an archive file that exists (before anything is
    // asked of the server), nothing to keep back, a reader's token.
    let again = toka(&data, &["archive", "--to", to.to_str().unwrap()]);
    assert_eq!(again.code, 2, "{again:#?}");
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    let fresh = tmp.path().join("none");
    let nothing = toka(
        &data,
        &[
            "archive",
            "--to",
            fresh.to_str().unwrap(),
            "--keep",
            "1000000",
        ],
    );
    assert_eq!(nothing.code, 2, "{nothing:#?}");
    assert!(
        nothing.stderr.contains("nothing to archive"),
        "{}",
        nothing.stderr
    );
    assert!(!fresh.exists());
    let issued = api
        .post(
            "/v1/tokens",
            "/v1/tokens",
            json!({"rights": ["observe"], "operator": "read"}),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{issued:?}");
    let reader = api.with_token(issued.body["token"].as_str().unwrap());
    let refused = reader
        .post("/v1/archive", "/v1/archive", json!({"keep": 0}))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let unknown = api
        .post(
            "/v1/archive",
            "/v1/archive",
            json!({"keep": 0, "to": "/etc/x"}),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{unknown:?}"
    );
    assert!(
        unknown.message().contains("unknown field `to`"),
        "{unknown:?}"
    );

    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    let verified = toka(
        &data,
        &["verify", "--archive", to.to_str().unwrap(), "--auth"],
    );
    assert!(
        verified.ok().contains("ending at the live log's anchor")
            && verified.stdout.contains("auth ok"),
        "{verified:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_no_agent_runs_is_removed_and_its_bytes_go_with_the_next_archive() {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::serve::{Api, Served};

    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1"]).ok();
    // Refused by name, nothing written: an agent runs it; nothing has
    // that name.
    let before = head(&data);
    let in_use = toka(&data, &["component", "remove", "counter"]);
    assert_eq!(in_use.code, 2, "{in_use:#?}");
    assert!(
        in_use.stderr.contains("component `counter`")
            && in_use.stderr.contains("is in use: agent")
            && in_use.stderr.contains("runs it (terminate it first)"),
        "{}",
        in_use.stderr
    );
    let unknown = toka(&data, &["component", "remove", "nothing"]);
    assert_eq!(unknown.code, 2, "{unknown:#?}");
    assert!(
        unknown
            .stderr
            .contains("no component `nothing` is installed"),
        "{}",
        unknown.stderr
    );
    assert_eq!(head(&data), before);

    // Through a running server: one installed by the API, removed by the
    // CLI; the agent terminated by the API.
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    let hello = crate::serve::install(&api, "hello").await;
    assert_eq!(hello.status, StatusCode::CREATED, "{hello:?}");
    let removed = toka(&data, &["component", "remove", "hello"]);
    assert!(
        removed.ok().contains("component `hello` (") && removed.stdout.contains(") removed"),
        "{removed:#?}"
    );
    let agent = api.get("/v1/agents", "/v1/agents").await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    crate::serve::terminate(&api, &agent).await;
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");

    // Without the server: removed, and the archive drops both blobs.
    toka(&data, &["component", "remove", "counter"]).ok();
    let state: serde_json::Value =
        serde_json::from_str(toka(&data, &["state", "--json"]).ok()).unwrap();
    assert_eq!(state["components"], json!([]), "{state}");
    let archive = tmp.path().join("log.toka-archive");
    let archived = toka(&data, &["archive", "--to", archive.to_str().unwrap()]);
    assert!(
        archived
            .ok()
            .contains("dropped 2 blobs nothing kept refers to"),
        "{archived:#?}"
    );
    toka(&data, &["verify", "--archive", archive.to_str().unwrap()]).ok();
    // Installing it again stores its bytes again: a new agent runs.
    let again = toka(&data, &["run", "counter", "--task", "5"]);
    assert_eq!(count(&again), "5", "{again:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopping_mid_archive_stops_it_before_its_cut() {
    use reqwest::StatusCode;
    use toka_kernel::Limits;

    use crate::serve::{Api, Served};

    let (_tmp, data) = temp_data();
    // A log whose archive is still being written when the server is told
    // to stop: 200 000 records, written straight to the data dir's store.
    const RECORDS: u64 = 200_000;
    {
        let dir = toka_host::DataDir::new(&data);
        let root = dir.root_key(None, true).unwrap();
        let store = dir.open_or_create(&Limits::default(), &root).unwrap();
        crate::write_revocations(&store, RECORDS);
    }
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    let job = api
        .post("/v1/archive", "/v1/archive", serde_json::json!({"keep": 0}))
        .await;
    assert_eq!(job.status, StatusCode::ACCEPTED, "{job:?}");
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("did not end in time"), "{stderr}");
    // Nothing archived and nothing left behind: no file, the whole log.
    let left: Vec<_> = std::fs::read_dir(data.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let verified = toka(&data, &["verify"]);
    let line = verified.ok();
    let seq: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(seq > RECORDS && !line.contains("anchored"), "{verified:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_client_lists_downloads_and_deletes_the_archive_files() {
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    use crate::serve::{Api, Served};

    let (tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    let started = api.post("/v1/archive", "/v1/archive", json!({})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let path = format!("/v1/archive/{}", started.body["id"]);
    let mut job = started.body;
    while job["state"] == "running" {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        job = api.get("/v1/archive/{id}", &path).await.body;
    }
    assert_eq!(job["state"], "ok", "{job}");
    let name = job["file"]
        .as_str()
        .unwrap()
        .trim_start_matches("archives/");
    let on_disk = std::fs::read(data.join("archives").join(name)).unwrap();

    // Listed for a reader; the bytes only for an admin.
    let reader = crate::serve::operator(&api, "read").await;
    let listed = reader.get("/v1/archive/files", "/v1/archive/files").await;
    assert_eq!(
        listed.body["items"],
        json!([{"name": name, "bytes": on_disk.len()}]),
        "{listed:?}"
    );
    let file_path = format!("/v1/archive/files/{name}");
    for method in [Method::GET, Method::DELETE] {
        let refused = reader.request(method, &file_path).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    let downloaded = api.request(Method::GET, &file_path).send().await.unwrap();
    assert_eq!(downloaded.status(), StatusCode::OK);
    let bytes = downloaded.bytes().await.unwrap();
    assert!(bytes[..] == on_disk[..], "the download is the file");
    let kept = tmp.path().join("kept.toka-archive");
    std::fs::write(&kept, &bytes).unwrap();
    toka(&data, &["verify", "--archive", kept.to_str().unwrap()]).ok();

    // Only the names the server gives finished archives are served.
    std::fs::write(
        data.join("archives").join("log-1-1.toka-archive.partial"),
        b"x",
    )
    .unwrap();
    for other in [
        "log-1-1.toka-archive.partial",
        "..%2Ftoka.redb",
        "%2E%2E%2Froot.key",
        "log-1-1.toka-archive",
    ] {
        let answer = api
            .request(Method::GET, &format!("/v1/archive/files/{other}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{other}");
    }

    // Deleted once kept elsewhere: gone from the list and the disk.
    let deleted = api.delete("/v1/archive/files/{name}", &file_path).await;
    assert_eq!(deleted.status, StatusCode::OK, "{deleted:?}");
    assert!(!data.join("archives").join(name).exists());
    let listed = api.get("/v1/archive/files", "/v1/archive/files").await;
    assert_eq!(listed.body["items"], json!([]), "{listed:?}");
    let again = api.request(Method::GET, &file_path).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

/// `counter` agents of these names through the API, each having
/// completed a task.
async fn counters(api: &crate::serve::Api, names: &[&str]) -> Vec<String> {
    use crate::serve::{install, run_task, spawn};

    let digest = install(api, "counter").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut agents = Vec::new();
    for name in names {
        let agent = spawn(api, &digest, name, &["observe", "state", "schedule self"]).await;
        assert_eq!(run_task(api, &agent, "5").await["status"], "completed");
        agents.push(agent);
    }
    agents
}

/// `toka_agent_state_bytes` from `/metrics`.
async fn state_held(api: &crate::serve::Api) -> u64 {
    crate::serve::metrics(&api.http, &api.url, &api.token).await["toka_agent_state_bytes"] as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_terminated_agents_gives_their_records_and_state_back() {
    use reqwest::{Method, StatusCode};

    use crate::serve::{Api, Served, operator, run_task, terminate};

    let (_tmp, data) = temp_data();
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    let agents = counters(&api, &["a", "b", "c"]).await;
    for agent in &agents[..2] {
        terminate(&api, agent).await;
    }
    // Forgetting needs admin: a write token is refused.
    let refused = operator(&api, "write")
        .await
        .request(Method::POST, "/v1/agents/forget")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let held = state_held(&api).await;
    let forgot = toka(&data, &["agent", "forget"]);
    assert!(
        forgot.ok().contains("forgot 2 terminated agent(s)"),
        "{forgot:#?}"
    );
    let given_back = held - state_held(&api).await;
    assert!(
        given_back > 2 * 1024,
        "two records and their state: {given_back}"
    );
    for agent in &agents[..2] {
        let gone = api
            .get("/v1/agents/{id}", &format!("/v1/agents/{agent}"))
            .await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{gone:?}");
    }
    let status = api.get("/v1/status", "/v1/status").await;
    assert_eq!(status.body["agents"]["terminated"], 0, "{status:?}");
    assert_eq!(status.body["agents"]["active"], 1, "{status:?}");
    let events = api
        .get("/v1/events", "/v1/events?kind=agent_forgotten")
        .await;
    assert_eq!(
        events.body["events"].as_array().unwrap().len(),
        2,
        "{events:?}"
    );
    // The one left runs on.
    assert_eq!(run_task(&api, &agents[2], "1").await["status"], "completed");
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");

    // The log replays and its operator commands re-check; nothing is left
    // to forget, and asking again appends nothing.
    let verified = toka(&data, &["verify", "--auth"]);
    assert!(verified.ok().contains("auth ok"), "{verified:#?}");
    let before = head(&data);
    let again = toka(&data, &["agent", "forget"]);
    assert!(
        again.ok().contains("forgot 0 terminated agent(s)"),
        "{again:#?}"
    );
    assert_eq!(head(&data), before, "an empty forget appends no record");

    // The next archive takes the forgotten agents' tokens with it (not
    // the operators', nor the one left's: it runs on after a restart,
    // its token read from the store again).
    let archive = data.join("log.toka-archive");
    let archived = toka(&data, &["archive", "--to", archive.to_str().unwrap()]);
    assert!(
        archived
            .ok()
            .contains("dropped 2 tokens of agents and packages gone by then"),
        "{archived:#?}"
    );
    let verified = toka(&data, &["verify", "--auth"]);
    assert!(verified.ok().contains("auth ok"), "{verified:#?}");
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    assert_eq!(run_task(&api, &agents[2], "2").await["status"], "completed");
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

/// Polls `check` every 100 ms until it returns a value, for at most a
/// minute (the policies below tick every second).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_told_to_forgets_and_archives_by_itself() {
    use reqwest::StatusCode;

    use crate::serve::{Api, Served, terminate};

    let (_tmp, data) = temp_data();
    // Bad input first: nothing starts, nothing is written.
    let refused = toka(&data, &["serve", "--archive-keep", "5"]);
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(refused.stderr.contains("--archive-every"), "{refused:#?}");
    for policy in ["--forget-terminated-every", "--archive-every"] {
        let refused = toka(
            &data,
            &["--cluster", "nats://127.0.0.1:1", "serve", policy, "1s"],
        );
        assert_eq!(refused.code, 2, "{refused:#?}");
        assert!(
            refused.stderr.contains(&format!("{policy} is for a host")),
            "{refused:#?}"
        );
    }
    assert!(!data.join("archives").exists());

    let mut served = Served::start_on(
        &data,
        &["--forget-terminated-every", "1s", "--archive-every", "1s"],
    );
    let api = Api::new(&served).await;
    let agents = counters(&api, &["gone", "stays"]).await;
    let (gone, stays) = (&agents[0], &agents[1]);
    terminate(&api, gone).await;

    // Forgotten within a tick or two, by the server alone.
    let path = format!("/v1/agents/{gone}");
    eventually("the terminated agent forgotten", || async {
        let answer = api.get("/v1/agents/{id}", &path).await;
        (answer.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let stays_path = format!("/v1/agents/{stays}");
    assert_eq!(
        api.get("/v1/agents/{id}", &stays_path).await.status,
        StatusCode::OK
    );

    // Archived by itself too: once an archive holds everything, the
    // next periods have nothing to archive and make no file.
    let idle_after = |after: u64| {
        let api = &api;
        eventually("a period with nothing to archive", move || async move {
            let job = api.get("/v1/archive", "/v1/archive").await.body;
            let id = job["id"].as_u64()?;
            (id > after && job["state"] == "nothing").then_some(id)
        })
    };
    // A period started after the forgetting (its record durable: the
    // 404 reads the committed state) finds nothing more.
    let latest = api.get("/v1/archive", "/v1/archive").await.body["id"]
        .as_u64()
        .unwrap_or(0);
    let idle = idle_after(latest).await;
    let files = api.get("/v1/archive/files", "/v1/archive/files").await.body["items"].clone();
    assert!(!files.as_array().unwrap().is_empty(), "{files}");
    idle_after(idle).await;
    let listed = api.get("/v1/archive/files", "/v1/archive/files").await;
    assert_eq!(listed.body["items"], files, "idle periods made no file");
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");

    // The log and the newest archive verify.
    let files = files.as_array().unwrap();
    let name = files[files.len() - 1]["name"].as_str().unwrap();
    let archive = data.join("archives").join(name);
    toka(&data, &["verify", "--archive", archive.to_str().unwrap()]).ok();
    assert!(toka(&data, &["verify", "--auth"]).ok().contains("auth ok"));
}
