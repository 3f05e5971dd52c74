//! Torn writes, tampering, snapshots, and following a live log.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use toka_host::{Host, HostConfig, RedbStore, RootKey, Stopped};
use toka_kernel::{Limits, Quotas, Rules};

use crate::{agent_bytes, events_json, grant, outcome, temp_data, toka};

const SNAPSHOTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshots");

/// A redb storage backend in memory that can be told to fail: after a
/// budget of bytes, a write stores only what fits (a torn write) and errors;
/// syncs fail while the fault is armed. Clones share the bytes and the knobs.
#[derive(Debug, Clone, Default)]
struct FaultyDisk {
    inner: Arc<Mutex<Disk>>,
}

#[derive(Debug, Default)]
struct Disk {
    bytes: Vec<u8>,
    /// Bytes that may still be written before writes fail (None: no fault).
    budget: Option<usize>,
}

impl FaultyDisk {
    fn arm(&self, budget: usize) {
        self.inner.lock().unwrap().budget = Some(budget);
    }

    fn disarm(&self) {
        self.inner.lock().unwrap().budget = None;
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.lock().unwrap().bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let disk = self.inner.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > disk.bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&disk.bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.lock().unwrap().bytes.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        match self.inner.lock().unwrap().budget {
            Some(_) => Err(io::Error::other("injected: sync failed")),
            None => Ok(()),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.inner.lock().unwrap();
        let start = offset as usize;
        let take = match disk.budget {
            Some(budget) => budget.min(data.len()),
            None => data.len(),
        };
        if disk.bytes.len() < start + take {
            disk.bytes.resize(start + take, 0);
        }
        disk.bytes[start..start + take].copy_from_slice(&data[..take]);
        if let Some(budget) = &mut disk.budget {
            *budget -= take;
            if take < data.len() {
                return Err(io::Error::other("injected: torn write"));
            }
        }
        Ok(())
    }
}

/// A host on the faulty disk (created empty when `create`), rooted in the
/// key stored at `key`.
async fn host_on(disk: &FaultyDisk, key: &std::path::Path, create: bool) -> Host {
    let root = RootKey::load(key).expect("root key");
    let init = create.then(|| (Limits::default(), root.public().to_bytes()));
    let store = RedbStore::with_backend(
        disk.clone(),
        "faulty-disk",
        init.as_ref().map(|(l, k)| (l, k.as_slice())),
    )
    .expect("open store");
    Host::open(Arc::new(store), root, HostConfig::default())
        .await
        .expect("open host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_stops_the_host_keeps_nothing_half_applied_and_recovers() {
    let disk = FaultyDisk::default();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("root.key");
    RootKey::load_or_create(&key).unwrap();
    let host = host_on(&disk, &key, true).await;
    let component = host
        .install("counter", agent_bytes("counter"))
        .await
        .unwrap();
    let agent = host
        .spawn(component, "counter", grant(&["observe", "state"]))
        .await
        .unwrap();
    assert_eq!(outcome(&host, agent, "5").await, Ok("5".into()));
    let durable_head = host.head();

    // The disk starts tearing writes: the next commit fails half-way.
    disk.arm(100);
    // The operator's command returns once durable: it (or the run) fails.
    let err = match host.schedule(agent, "10").await {
        Err(e) => e,
        Ok(_) => host.run_until_idle().await.unwrap_err(),
    };
    assert!(
        err.to_string()
            .starts_with("the host stopped: committing the log failed"),
        "{err}"
    );
    // It refuses everything from now on, rather than running on unlogged.
    assert!(matches!(
        host.schedule(agent, "1").await,
        Err(toka_host::HostError::Stopped(Stopped(_)))
    ));
    drop(host);

    // The disk works again. What recovers is exactly what was committed.
    disk.disarm();
    let host = host_on(&disk, &key, false).await;
    assert_eq!(
        host.head(),
        durable_head,
        "the failed batch left nothing behind"
    );
    let count = host
        .state(|s| s.agent(agent).unwrap().state["count"].clone())
        .await;
    assert_eq!(count, 5u64.to_le_bytes());
    // And it carries on.
    assert_eq!(outcome(&host, agent, "2").await, Ok("7".into()));
    host.shutdown().await.unwrap();
}

#[test]
fn a_record_altered_through_redb_is_named_by_verify() {
    let (_tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let events = events_json(&data);
    let target = events
        .iter()
        .find(|e| e["kind"] == "observation_emitted")
        .and_then(|e| e["seq"].as_u64())
        .expect("an observation");
    {
        // A valid redb write: the file is fine, the record's content is not.
        let db = redb::Database::open(data.join("toka.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            // The log's rows are frames of consecutive records, each a
            // u32 LE length and the record (docs/format.md).
            let mut table = tx
                .open_table(TableDefinition::<u64, &[u8]>::new("log"))
                .unwrap();
            let (first, mut frame) = {
                let (first, frame) = table
                    .range(..=target)
                    .unwrap()
                    .next_back()
                    .unwrap()
                    .unwrap();
                (first.value(), frame.value().to_vec())
            };
            let mut at = 0;
            for _ in first..target {
                at += 4 + u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
            }
            let len = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
            let pos = at + 4 + len - 40; // inside the body, before the hash
            frame[pos] ^= 0x01;
            table.insert(first, frame.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let verify = toka(&data, &["verify"]);
    assert_eq!(verify.code, 1, "{verify:#?}");
    assert!(
        verify.stderr.contains(&format!(
            "verification failed: the log does not verify: record {target}: record hash mismatch"
        )),
        "{}",
        verify.stderr
    );
    // A host starts on it (start-up checks the chain's links, not every
    // hash; see docs/format.md), and the evidence stays: records appended
    // afterwards do not hide the altered one from verify.
    toka(&data, &["run", "counter", "--task", "1"]).ok();
    let verify = toka(&data, &["verify"]);
    assert_eq!(verify.code, 1, "{verify:#?}");
    assert!(
        verify
            .stderr
            .contains(&format!("record {target}: record hash mismatch")),
        "{}",
        verify.stderr
    );
}

/// Rewrites the data dir's log as data format 1 stored it: one `events`
/// row per record, no `log` table.
fn to_format_1(data: &Path) {
    let db = redb::Database::open(data.join("toka.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let log = TableDefinition::<u64, &[u8]>::new("log");
        let mut rows = Vec::new();
        for entry in tx.open_table(log).unwrap().iter().unwrap() {
            let (first, frame) = entry.unwrap();
            let (mut seq, frame) = (first.value(), frame.value());
            let mut at = 0;
            while at < frame.len() {
                let len = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap()) as usize;
                rows.push((seq, frame[at + 4..at + 4 + len].to_vec()));
                (seq, at) = (seq + 1, at + 4 + len);
            }
        }
        tx.delete_table(log).unwrap();
        let mut events = tx
            .open_table(TableDefinition::<u64, &[u8]>::new("events"))
            .unwrap();
        for (seq, record) in &rows {
            events.insert(*seq, record.as_slice()).unwrap();
        }
        tx.open_table(TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("format", &1u16.to_le_bytes()[..])
            .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_data_dir_of_format_1_is_read_as_it_is_and_moved_into_frames_by_a_writer() {
    let (_tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1", "--task", "2"]).ok();
    let before = events_json(&data);
    to_format_1(&data);

    // Readers read it without writing to it.
    let verify = toka(&data, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
    assert_eq!(events_json(&data), before);
    let file = || std::fs::read(data.join("toka.redb")).unwrap();
    let untouched = file();
    toka(&data, &["verify"]).ok();
    assert!(file() == untouched, "a reader changed a format-1 file");

    // A writer moves the log into frames first, says so, and carries on.
    let run = toka(&data, &["run", "counter", "--task", "3"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stderr
            .contains("moving the log into frames (data format 3)"),
        "{}",
        run.stderr
    );
    let after = events_json(&data);
    assert_eq!(after[..before.len()], before[..]);
    assert!(after.len() > before.len());
    let db = redb::ReadOnlyDatabase::open(data.join("toka.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(
        tx.open_table(TableDefinition::<u64, &[u8]>::new("events"))
            .is_err(),
        "the rows are gone once moved"
    );
    let format = tx
        .open_table(TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(format, 3u16.to_le_bytes());
    drop((tx, db));
    let verify = toka(&data, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:#?}");
    let run = toka(&data, &["run", "counter", "--task", "4"]);
    assert!(!run.stderr.contains("moving the log"), "{}", run.stderr);
}

#[test]
fn snapshots_are_used_checked_and_replay_goes_back_in_time() {
    let (_tmp, data) = temp_data();
    toka(
        &data,
        &[
            "--snapshot-every",
            "5",
            "run",
            "counter",
            "--task",
            "1",
            "--task",
            "2",
            "--task",
            "3",
        ],
    )
    .ok();
    let written = toka(&data, &["snapshot"]);
    assert!(
        written.ok().starts_with("snapshot written at record "),
        "{}",
        written.stdout
    );
    let verify = toka(&data, &["verify"]);
    assert!(
        verify
            .ok()
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("snapshots ok: ")),
        "{}",
        verify.stdout
    );

    // State after the first task (record numbers from the log).
    let events = events_json(&data);
    let first_done = events
        .iter()
        .find(|e| e["kind"] == "task_completed")
        .and_then(|e| e["seq"].as_u64())
        .unwrap();
    let then: serde_json::Value = serde_json::from_str(
        toka(
            &data,
            &["replay", "--to", &first_done.to_string(), "--json"],
        )
        .ok(),
    )
    .unwrap();
    assert_eq!(then["head"]["seq"], first_done);
    assert_eq!(then["agents"][0]["completed"], 1);
    let now: serde_json::Value =
        serde_json::from_str(toka(&data, &["state", "--json"]).ok()).unwrap();
    assert_eq!(now["agents"][0]["completed"], 3);
    let past_end = toka(&data, &["replay", "--to", "100000"]);
    assert_eq!(past_end.code, 2, "{past_end:#?}");

    // A snapshot swapped for another valid one (from another log) is caught.
    let (_other_tmp, other) = temp_data();
    toka(&other, &["run", "counter", "--task", "9"]).ok();
    toka(&other, &["snapshot"]).ok();
    let foreign = {
        let db = redb::Database::open(other.join("toka.redb")).unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(SNAPSHOTS).unwrap();
        let (_, v) = table.iter().unwrap().next().unwrap().unwrap();
        v.value().to_vec()
    };
    {
        let db = redb::Database::open(data.join("toka.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(SNAPSHOTS).unwrap();
            let seq = table.iter().unwrap().next().unwrap().unwrap().0.value();
            table.insert(seq, foreign.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let verify = toka(&data, &["verify"]);
    assert_eq!(verify.code, 1, "{verify:#?}");
    assert!(
        verify.stderr.contains("does not match the log"),
        "{}",
        verify.stderr
    );
}

#[test]
fn events_follow_streams_what_another_process_commits() {
    let (_tmp, data) = temp_data();
    toka(&data, &["run", "counter", "--task", "1"]).ok();
    let mut follower = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(&data)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Waits (generously) for a line containing `text`; what it read.
    let wait_for = |text: &str| -> Vec<String> {
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match seen.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    read.push(line);
                    if found {
                        return read;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("the follower never printed `{text}`: {read:?}")
    };
    // The follower has read the log so far ...
    wait_for("counter observed: count = 1");
    // ... and sees what a writer in another process commits now.
    toka(&data, &["run", "counter", "--task", "41"]).ok();
    wait_for("counter observed: count = 42");
    let _ = follower.kill();
    let _ = follower.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_is_snapshotted_off_the_lock_and_its_snapshots_verify() {
    // A state over 1 MiB: 400 keys of ~3.9 kB. Snapshots every 50 records
    // (held back, once the state is large, until as many bytes as the
    // state's are logged).
    let mut config = HostConfig::new();
    config.snapshot_every(50).rules(Rules {
        quotas: Quotas::UNLIMITED,
        ..Rules::default()
    });
    let arena = crate::Arena::new(config).await;
    let probe = arena.agent("test-probe", grant(&["state"])).await;
    let value = "v".repeat(3_900);
    let put_all = || async {
        let before = arena.host.metrics().events_of("task_completed");
        for key in 0..400 {
            arena
                .host
                .schedule(probe, &format!("put k{key} {value}"))
                .await
                .unwrap();
        }
        arena.host.run_until_idle().await.unwrap();
        assert_eq!(
            arena.host.metrics().events_of("task_completed") - before,
            400
        );
    };
    put_all().await;
    // The state passed 1 MiB by the 282nd key: a snapshot since was
    // large, and the replica took over (it may have taken one already:
    // each put logs ~7.9 kB, its task's description and its value).
    let large = arena.host.metrics();
    assert!(
        large.snapshots > large.snapshots_off_lock,
        "small states are snapshotted by the writer: {large:?}"
    );
    let large_head = arena.host.head().seq;
    // Written twice more (~3 MB logged each time, twice the state): the
    // snapshots are the replica's, none is encoded under the lock.
    put_all().await;
    put_all().await;
    // One asked for (`toka snapshot`, `POST /v1/snapshot`): the replica's
    // too, at least at everything committed.
    let committed = arena.host.head().seq;
    let asked = arena.host.snapshot().await.unwrap();
    assert!(asked >= committed, "{asked} < {committed}");
    let after = arena.host.metrics();
    assert!(
        after.snapshots_off_lock >= large.snapshots_off_lock + 2,
        "{after:?}"
    );
    assert_eq!(
        after.snapshots - after.snapshots_off_lock,
        large.snapshots - large.snapshots_off_lock,
        "none under the lock since"
    );
    let head = arena.host.head().seq;
    // Readers' copies of the state come from the replica now: all that is
    // committed, the last puts included.
    let (keys, completed) = arena
        .host
        .state(|s| {
            let agent = s.agent(probe).expect("the probe");
            (agent.state.len(), agent.completed)
        })
        .await;
    assert_eq!((keys, completed), (400, 1_200));

    // Every stored snapshot holds exactly the replayed state at its
    // record (`finish` verifies the log), and the host starts from the
    // newest, which the replica wrote (none was written under the lock
    // since `large_head`).
    let store = Arc::clone(&arena.store);
    arena.finish().await;
    let verified = toka_host::verify(&*store).unwrap();
    assert!(verified.snapshots >= 2, "{verified:?}");
    let (recovered, from) = toka_host::recover(&*store).unwrap();
    assert!(from > large_head && from <= head, "recovered from {from}");
    assert!(recovered.head().seq >= head);
}
