//! `toka token` and tokens on the command line, including every kind of bad
//! token: each is one clear error, exit 2, and nothing applied.

use std::path::Path;

use redb::ReadableTable;

use crate::{Run, events_json, temp_data, toka};

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[track_caller]
fn assert_refused(run: &Run, needle: &str) {
    assert_eq!(run.code, 2, "{run:#?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run:#?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "expected `{needle}` in {run:#?}"
    );
}

#[test]
fn issue_inspect_run_attenuate_and_revoke() {
    let (tmp, data) = temp_data();
    let public = toka(&data, &["token", "public-key"]);
    assert!(public.ok().starts_with("ed25519/"), "{}", public.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("root.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let issued = toka(
        &data,
        &[
            "token",
            "issue",
            "--right",
            "observe",
            "--right",
            "schedule self",
            "--expires",
            "30d",
        ],
    );
    let token = write(tmp.path(), "agent.token", issued.ok());
    let inspected = toka(&data, &["token", "inspect", &token]);
    let text = inspected.ok();
    assert!(text.contains("right(\"observe\");"), "{text}");
    assert!(text.contains("right(\"schedule\", \"self\");"), "{text}");
    assert!(text.contains("check if time($time), $time <= "), "{text}");
    assert!(
        text.contains("signature: valid for root key ed25519/"),
        "{text}"
    );

    // The data dir held only root.key; run creates the log beside it.
    let run = toka(
        &data,
        &["run", "hello", "--token", &token, "--task", "tokens"],
    );
    assert_eq!(run.ok(), "hello: Hello, tokens!\n");

    let narrowed = toka(&data, &["token", "attenuate", &token, "--right", "observe"]);
    let observer = write(tmp.path(), "observer.token", narrowed.ok());
    let inspected = toka(&data, &["token", "inspect", &observer]);
    assert!(inspected.ok().contains("block 1:"), "{}", inspected.stdout);
    assert!(
        inspected.stdout.contains("delegated(\"observe\");"),
        "{}",
        inspected.stdout
    );
    assert_refused(
        &toka(&data, &["token", "attenuate", &token, "--right", "spawn *"]),
        "cannot keep `spawn *`: missing right `spawn *`",
    );

    // Revoke the authority block: the token, and the one attenuated from it, stop working.
    let id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("revocation id: "))
        .expect("a revocation id")
        .to_owned();
    assert_eq!(
        toka(&data, &["token", "revoke", &id]).ok(),
        format!("revoked {id}\n")
    );
    // A revoked token is refused when it is presented, before anything is
    // written; the agent already bound to it is denied at its next operation.
    let before = events_json(&data).len();
    let run = toka(
        &data,
        &[
            "run", "hello", "--token", &observer, "--name", "again", "--task", "x",
        ],
    );
    assert_eq!(run.code, 2, "{run:#?}");
    assert_eq!(run.stderr, "error: the token has been revoked\n");
    assert_eq!(events_json(&data).len(), before, "nothing was written");

    let audit = toka(&data, &["verify", "--auth"]);
    assert!(audit.ok().contains("auth ok: "), "{}", audit.stdout);
}

#[test]
fn bad_tokens_and_rights_are_refused_and_change_nothing() {
    let (tmp, data) = temp_data();
    toka(&data, &["run", "hello", "--task", "seed"]).ok();
    let before = toka(&data, &["verify"]).ok().to_owned();

    let good = toka(&data, &["token", "issue", "--right", "observe"])
        .ok()
        .trim()
        .to_owned();
    let (_other_tmp, other) = temp_data();
    let foreign = toka(&other, &["token", "issue", "--right", "observe"])
        .ok()
        .to_owned();
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let huge_rights: Vec<String> = (0..300)
        .map(|i| format!("spawn component-with-a-long-name-{i:04}"))
        .collect();
    let mut issue_huge = vec!["token", "issue"];
    for r in &huge_rights {
        issue_huge.extend(["--right", r.as_str()]);
    }
    let huge = toka(&data, &issue_huge).ok().to_owned();

    let cases = [
        (
            write(tmp.path(), "foreign", foreign),
            "does not verify against the root key",
        ),
        (
            write(tmp.path(), "truncated", &good[..good.len() / 3]),
            "not a capability token",
        ),
        (write(tmp.path(), "flipped", flipped), "token"),
        (write(tmp.path(), "huge", huge), "over the limit of 8192"),
        (
            write(tmp.path(), "garbage", "hello, world"),
            "not a capability token",
        ),
    ];
    for (file, needle) in &cases {
        let run = toka(&data, &["run", "hello", "--token", file, "--task", "x"]);
        assert_refused(&run, needle);
    }

    // An expired token, minted with a TTL already in the past.
    let key_text = std::fs::read_to_string(data.join("root.key")).unwrap();
    let private: biscuit_auth::PrivateKey = key_text.trim().parse().unwrap();
    let expired = biscuit_auth::Biscuit::builder()
        .code("right(\"observe\"); check if time($time), $time <= 2020-01-01T00:00:00Z")
        .unwrap()
        .build(&biscuit_auth::KeyPair::from(&private))
        .unwrap()
        .to_base64()
        .unwrap();
    let file = write(tmp.path(), "expired", expired);
    assert_refused(
        &toka(&data, &["run", "hello", "--token", &file, "--task", "x"]),
        "the token has expired",
    );

    assert_refused(
        &toka(
            &data,
            &["run", "hello", "--grant", "fly away", "--task", "x"],
        ),
        "`fly away` is not a right: unknown operation `fly`",
    );
    assert_refused(
        &toka(&data, &["token", "issue", "--right", "schedule"]),
        "`schedule` needs a target",
    );
    assert_refused(
        &toka(&data, &["token", "revoke", "abc"]),
        "is not a revocation id: expected 128 hex digits",
    );
    assert_refused(
        &toka(&data, &["token", "revoke", &"ab".repeat(64)]),
        "no token in this data dir has revocation id abab",
    );

    assert_eq!(toka(&data, &["verify"]).ok(), before, "nothing was applied");
}

#[test]
fn the_audit_names_decisions_a_tampered_token_store_no_longer_supports() {
    let (_tmp, data) = temp_data();
    toka(
        &data,
        &["run", "hello", "--grant", "observe", "--task", "a"],
    )
    .ok();
    assert!(
        toka(&data, &["verify", "--auth"])
            .ok()
            .contains("auth ok: 1 allowed and 0 denied")
    );

    // Swap the agent's token bytes for another valid token through redb.
    let other = toka(&data, &["token", "issue", "--right", "state"])
        .ok()
        .trim()
        .to_owned();
    {
        let db = redb::Database::open(data.join("toka.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut tokens = tx
                .open_table(redb::TableDefinition::<&[u8; 32], &[u8]>::new("tokens"))
                .unwrap();
            let key: [u8; 32] = {
                let mut iter = tokens.iter().unwrap();
                let (k, _) = iter.next().unwrap().unwrap();
                *k.value()
            };
            tokens.insert(&key, other.as_bytes()).unwrap();
        }
        tx.commit().unwrap();
    }
    let audit = toka(&data, &["verify", "--auth"]);
    assert_eq!(audit.code, 1, "{audit:#?}");
    assert!(
        audit.stdout.starts_with("ok "),
        "the chain itself is intact: {}",
        audit.stdout
    );
    assert!(
        audit.stdout.contains("auth mismatch at record ")
            && audit.stdout.contains("have another digest"),
        "{}",
        audit.stdout
    );
    assert!(
        audit
            .stderr
            .contains("1 of 1 authorization decisions do not reproduce"),
        "{}",
        audit.stderr
    );
}
