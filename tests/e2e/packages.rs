//! Signed packages, the publisher's side: `toka package keygen`, `build`,
//! `inspect`, `verify`, with real agent components, and interop with the
//! reference `wasmsign2` CLI in both directions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Run, agent_path, toka};

const MANIFEST: &str = r#"name = "greeter"
version = "1.0.0"
publisher = "acme"
description = "Says hello"
rights = ["observe", "state"]

[budgets]
memory = "16MiB"
"#;

/// `toka package ...` (no data dir involved: a data dir path that is never
/// created).
fn package(dir: &Path, args: &[&str]) -> Run {
    let run = toka(&dir.join("no-data-dir"), &[&["package"], args].concat());
    assert!(
        !dir.join("no-data-dir").exists(),
        "a publisher command made a data dir"
    );
    run
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A publisher's key pair and a signed package of the hello agent.
fn published(dir: &Path) -> (PathBuf, PathBuf) {
    let manifest = dir.join("toka.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    package(dir, &["keygen", "--out", path(&dir.join("acme"))]).ok();
    let pkg = dir.join("greeter.wasm");
    let built = package(
        dir,
        &[
            "build",
            agent_path("hello"),
            "--manifest",
            path(&manifest),
            "--key",
            path(&dir.join("acme.key")),
            "-o",
            path(&pkg),
        ],
    );
    assert!(built.ok().contains("greeter 1.0.0 by acme"), "{built:?}");
    (pkg, dir.join("acme.pub"))
}

#[test]
fn a_publisher_builds_inspects_and_verifies_a_signed_package() {
    let dir = tempfile::tempdir().unwrap();
    let (pkg, public) = published(dir.path());
    let inspect = package(dir.path(), &["inspect", path(&pkg), "--key", path(&public)]);
    let text = inspect.ok();
    for needle in [
        "name:        greeter",
        "publisher:   acme",
        "rights:      observe, state",
        "budgets:     memory=16MiB",
        "signature:   present",
        "signed by:",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let verify = package(dir.path(), &["verify", path(&pkg), "--key", path(&public)]);
    assert!(
        verify.ok().starts_with("ok: greeter 1.0.0 by acme"),
        "{verify:?}"
    );
    // The package still runs as the component it wraps.
    let data = dir.path().join("data");
    let run = toka(&data, &["run", path(&pkg), "--task", "world"]);
    assert_eq!(run.ok(), "greeter: Hello, world!\n");
}

#[test]
fn a_changed_byte_another_key_or_a_bad_manifest_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pkg, public) = published(dir.path());
    let bytes = std::fs::read(&pkg).unwrap();
    // Another publisher's key.
    package(
        dir.path(),
        &["keygen", "--out", path(&dir.path().join("mallory"))],
    )
    .ok();
    let other = dir.path().join("mallory.pub");
    let wrong = package(dir.path(), &["verify", path(&pkg), "--key", path(&other)]);
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("does not verify"), "{}", wrong.stderr);
    // One byte of code or manifest changed after signing: every position
    // we try is caught (by the parser or by the signature).
    let step = bytes.len() / 40;
    for i in (9..bytes.len()).step_by(step.max(1)) {
        let mut changed = bytes.clone();
        changed[i] ^= 0x20;
        let tampered = dir.path().join("tampered.wasm");
        std::fs::write(&tampered, &changed).unwrap();
        let run = package(
            dir.path(),
            &["verify", path(&tampered), "--key", path(&public)],
        );
        assert_ne!(
            run.code,
            0,
            "a change at byte {i} of {} went unnoticed",
            bytes.len()
        );
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    assert_eq!(
        std::fs::read(&pkg).unwrap(),
        bytes,
        "the package was changed"
    );
    // A manifest asking for an unknown right or a malformed budget, or too
    // large: one line, exit 2, no package written.
    let out = dir.path().join("bad.wasm");
    for (manifest, needle) in [
        (
            MANIFEST.replace("\"state\"", "\"root access\""),
            "root access",
        ),
        (MANIFEST.replace("\"16MiB\"", "\"plenty\""), "memory=plenty"),
        (
            format!("{MANIFEST}#{}\n", "x".repeat(70_000)),
            "at most 65536",
        ),
        (
            MANIFEST.replace("publisher = \"acme\"\n", ""),
            "no `publisher`",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, manifest).unwrap();
        let run = package(
            dir.path(),
            &[
                "build",
                agent_path("hello"),
                "--manifest",
                path(&file),
                "--key",
                path(&dir.path().join("acme.key")),
                "-o",
                path(&out),
            ],
        );
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains(needle),
            "{needle:?} not in {}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1);
        assert!(!out.exists(), "a package was written for a bad manifest");
    }
    // Not WebAssembly; no manifest at all.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "hello").unwrap();
    let run = package(dir.path(), &["inspect", path(&notes)]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("not a WebAssembly file"),
        "{}",
        run.stderr
    );
    let run = package(dir.path(), &["inspect", agent_path("hello")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no manifest"), "{}", run.stderr);
    // keygen never overwrites a key.
    let again = package(
        dir.path(),
        &["keygen", "--out", path(&dir.path().join("acme"))],
    );
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("exists already"));
}

/// The reference CLI (`cargo install wasmsign2-cli`; `.ci/run` installs it
/// when missing).
fn wasmsign2() -> Command {
    let installed = Command::new("wasmsign2").arg("--version").output();
    assert!(
        installed.is_ok_and(|o| o.status.success()),
        "the interop test needs the wasmsign2 CLI: cargo install wasmsign2-cli --version 0.2.8"
    );
    Command::new("wasmsign2")
}

#[test]
fn packages_interoperate_with_the_reference_wasmsign2_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (pkg, public) = published(dir.path());
    // What `toka package build` signed, the reference CLI verifies.
    let verified = wasmsign2()
        .args(["verify", "-i", path(&pkg), "-K", path(&public)])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // A package signed by the reference CLI with another publisher's key
    // verifies with that key here.
    let keys = dir.path().join("ref");
    let made = wasmsign2()
        .args([
            "keygen",
            "-k",
            path(&keys.with_extension("key")),
            "-K",
            path(&keys.with_extension("pub")),
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let resigned = dir.path().join("resigned.wasm");
    let signed = wasmsign2()
        .args([
            "sign",
            "-i",
            path(&pkg),
            "-o",
            path(&resigned),
            "-k",
            path(&keys.with_extension("key")),
        ])
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let ours = package(
        dir.path(),
        &[
            "verify",
            path(&resigned),
            "--key",
            path(&keys.with_extension("pub")),
        ],
    );
    assert!(ours.ok().starts_with("ok: greeter"), "{ours:?}");
    // The reference CLI adds its signature beside the first (the format
    // holds several): the first publisher's still verifies.
    let old = package(
        dir.path(),
        &["verify", path(&resigned), "--key", path(&public)],
    );
    assert!(old.ok().starts_with("ok: greeter"), "{old:?}");
    // An operator who trusts only the reference CLI's key installs the
    // package it signed (it carries a manifest).
    let data = dir.path().join("data");
    toka(
        &data,
        &["trust", "add", "refpub", path(&keys.with_extension("pub"))],
    )
    .ok();
    let installed = toka(&data, &["install", path(&resigned), "--yes"]);
    assert!(
        installed.ok().contains("package greeter 1.0.0 installed"),
        "{installed:?}"
    );
    assert!(
        installed.stderr.contains("trusted publisher `refpub`"),
        "{installed:?}"
    );
}
