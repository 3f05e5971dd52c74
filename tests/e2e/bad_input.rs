//! Bad input: one clear line naming the problem, a non-zero exit, and
//! nothing half-written.

use std::path::Path;

use redb::{Database, TableDefinition};

use crate::{Run, agent_path, temp_data, toka};

/// Asserts exit code 2 and exactly one stderr line, starting with `error: `
/// and containing `needle`.
#[track_caller]
fn assert_refused(run: &Run, needle: &str) {
    assert_eq!(run.code, 2, "{run:#?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run:#?}");
    assert!(lines[0].starts_with("error: "), "{run:#?}");
    assert!(
        lines[0].contains(needle),
        "expected `{needle}` in {:?}",
        lines[0]
    );
    assert!(run.stdout.is_empty(), "{run:#?}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn bad_agents_are_refused_before_anything_is_created() {
    let (tmp, data) = temp_data();
    let cases = [
        (
            tmp.path().join("missing.wasm").display().to_string(),
            "missing.wasm: no such file".to_owned(),
        ),
        (
            write(tmp.path(), "text.wasm", b"this is not wasm"),
            "not a WebAssembly file".to_owned(),
        ),
        (
            // The smallest valid core module: magic and version 1.
            write(tmp.path(), "core.wasm", b"\0asm\x01\0\0\0"),
            "a core WebAssembly module, not a component; build the agent with `cargo build --target wasm32-wasip2`"
                .to_owned(),
        ),
        (
            // A component preamble followed by noise.
            write(
                tmp.path(),
                "noise.wasm",
                b"\0asm\x0d\0\x01\0\x9f\x13\xee\x02\x41\x41\x00\xff\x7f",
            ),
            "not a valid component: ".to_owned(),
        ),
        (
            agent_path("hostile-sockets").to_owned(),
            "imports wasi:sockets/".to_owned(),
        ),
        (
            agent_path("test-cli").to_owned(),
            "not a Toka agent: it does not export `toka:agent/handler@0.1.0` (it exports wasi:cli/run".to_owned(),
        ),
        (
            "no-such-agent".to_owned(),
            "no such file, and no bundled agent of that name (bundled: counter, hello, llm-planner, planner, worker)"
                .to_owned(),
        ),
    ];
    for (agent, needle) in &cases {
        let run = toka(&data, &["run", agent, "--task", "x"]);
        assert_refused(&run, needle);
        assert!(!data.exists(), "`run {agent}` left a data dir behind");
    }
}

#[test]
fn a_bad_agent_leaves_an_existing_log_untouched() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "a"]).ok();
    let before = toka(&data, &["verify"]).ok().to_owned();
    let core = write(tmp.path(), "core.wasm", b"\0asm\x01\0\0\0");
    assert_refused(&toka(&data, &["run", &core]), "core WebAssembly module");
    assert_eq!(toka(&data, &["verify"]).ok(), before);
}

#[test]
fn unusable_data_dirs_are_named() {
    let (tmp, _) = temp_data();

    let missing = tmp.path().join("nothing-here");
    for cmd in ["events", "state", "verify"] {
        assert_refused(&toka(&missing, &[cmd]), "no Toka data dir at");
        assert!(!missing.exists());
    }

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    assert_refused(
        &toka(&foreign, &["run", "hello"]),
        "is not a Toka data dir (it has no toka.redb and is not empty)",
    );
    assert!(!foreign.join("toka.redb").exists());

    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    assert_refused(&toka(&file, &["run", "hello"]), "is not a directory");

    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("toka.redb"), vec![0x42; 8192]).unwrap();
    assert_refused(
        &toka(&junk, &["state"]),
        "not a Toka data file: not a redb database",
    );

    let alien = tmp.path().join("alien");
    std::fs::create_dir(&alien).unwrap();
    {
        let db = Database::create(alien.join("toka.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TableDefinition::<u64, u64>::new("other"))
            .unwrap();
        tx.commit().unwrap();
    }
    assert_refused(
        &toka(&alien, &["verify"]),
        "not a Toka data file: a redb file without Toka's metadata",
    );
}

#[test]
fn a_data_dir_from_a_newer_release_is_refused_with_its_format() {
    let (_tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "a"]).ok();
    {
        let db = Database::open(data.join("toka.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("format", &99u16.to_le_bytes()[..])
            .unwrap();
        tx.commit().unwrap();
    }
    for args in [&["verify"][..], &["run", "hello", "--task", "b"]] {
        assert_refused(
            &toka(&data, args),
            "written by a newer Toka (data format 99; this build reads up to 3); upgrade toka to open it",
        );
    }
}

#[test]
fn bad_usage_exits_2() {
    let (_tmp, data) = temp_data();
    let run = toka(&data, &["run"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(run.stderr.contains("Usage: toka run"), "{}", run.stderr);
    let run = toka(&data, &["demo", "--workers", "0"]);
    assert_eq!(run.code, 2, "{run:#?}");
    for flag in ["--memory-budget", "--state-budget"] {
        for (budget, why) in [
            ("0", "a budget of 0 bytes would run no agent"),
            ("lots", "`lots` is not a size"),
        ] {
            let run = toka(&data, &[flag, budget, "demo"]);
            assert_eq!(run.code, 2, "{run:#?}");
            assert!(
                run.stderr.contains(&format!(
                    "invalid value '{budget}' for '{flag} <SIZE>': {why}"
                )),
                "{}",
                run.stderr
            );
        }
    }
    let run = toka(&data, &["--disk-reserve", "lots", "demo"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .contains("invalid value 'lots' for '--disk-reserve <SIZE>': `lots` is not a size"),
        "{}",
        run.stderr
    );
    assert!(!data.exists());
    // `0` is no limit, as the help says; `0s` too.
    for timeout in ["0", "0s"] {
        let run = toka(
            &data,
            &["run", "hello", "--task", timeout, "--timeout", timeout],
        );
        assert!(run.ok().contains(&format!("Hello, {timeout}!")), "{run:#?}");
    }
    let run = toka(&data, &["run", "hello", "--timeout", "soon"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr.contains("`soon` is not a duration"),
        "{}",
        run.stderr
    );
}
