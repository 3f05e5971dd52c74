//! Signed packages, the operator's side: the trust store, `toka install`
//! with a narrowed approval, `toka run NAME` with the install token,
//! removing the publisher, upgrades, and every bad package refused with
//! one line and nothing written.

use std::path::{Path, PathBuf};

use serde_json::Value;
use toka_host::{Manifest, Package, SigningKey};

use crate::{agent_path, events_json, toka};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A publisher (`NAME.key`, `NAME.pub` in `dir`).
pub(crate) fn publisher(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(name);
    toka(
        &dir.join("unused"),
        &["package", "keygen", "--out", path(&out)],
    )
    .ok();
    (out.with_extension("key"), out.with_extension("pub"))
}

/// A manifest for the probe agent requesting `rights`.
pub(crate) fn manifest(version: &str, rights: &[&str]) -> Manifest {
    Manifest {
        name: "probe".into(),
        version: version.into(),
        publisher: "acme".into(),
        description: "Does what its task says".into(),
        homepage: None,
        rights: rights.iter().map(|r| (*r).to_owned()).collect(),
        budgets: vec!["memory=32MiB".into()],
    }
}

/// The probe agent packaged with `manifest`, signed with `key`, as a file.
pub(crate) fn package(dir: &Path, file: &str, manifest: &Manifest, key: &Path) -> PathBuf {
    let component = std::fs::read(agent_path("test-probe")).unwrap();
    let key = SigningKey::from_file(key).unwrap();
    let bytes = Package::build(&component, manifest, &key).unwrap();
    let out = dir.join(file);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// The events of one kind.
fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn an_operator_installs_a_narrowed_package_and_removing_its_publisher_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, public) = publisher(dir.path(), "acme");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("in")).unwrap();
    let wide = format!("fs.read {}", shared.display());
    let narrow = format!("fs.read {}", shared.join("in").display());
    let pkg = package(
        dir.path(),
        "probe.wasm",
        &manifest("1.0.0", &["observe", "state", "schedule *", &wide]),
        &key,
    );
    let trusted = toka(&data, &["trust", "add", "acme", path(&public)]);
    assert!(
        trusted.ok().contains("trusted publisher `acme`"),
        "{trusted:?}"
    );
    // Narrowed: no `state`, `schedule children` for `schedule *`, a
    // subdirectory for the requested directory.
    let installed = toka(
        &data,
        &[
            "install",
            path(&pkg),
            "--approve",
            "observe",
            "--approve",
            "schedule children",
            "--approve",
            &narrow,
        ],
    );
    let line = installed.ok();
    assert!(
        line.contains(&format!("granted: observe, schedule children, {narrow};")),
        "{installed:?}"
    );
    assert!(
        installed
            .stderr
            .contains("requests rights: observe, state, schedule *")
    );
    let inspected = toka(&data, &["package", "inspect", path(&pkg)]);
    assert!(
        inspected
            .ok()
            .contains("signed by trusted publisher `acme`"),
        "{inspected:?}"
    );
    let listed = toka(&data, &["trust", "list"]).ok().to_owned();
    assert!(
        listed.contains("acme  ed25519:") && listed.contains("probe 1.0.0"),
        "{listed}"
    );

    // The agent holds exactly the approval: an approved operation runs, one
    // outside it is denied and recorded.
    let run = toka(&data, &["run", "probe", "--task", "observe hi"]);
    assert_eq!(run.ok(), "probe: hi\n");
    let denied = toka(&data, &["run", "probe", "--task", "put k v"]);
    assert_eq!(denied.code, 1, "{denied:?}");
    assert!(
        denied.stderr.contains("missing right `state`"),
        "{}",
        denied.stderr
    );
    let events = events_json(&data);
    let denials = of_kind(&events, "capability_denied");
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0]["operation"], "state");
    let install = &of_kind(&events, "package_installed")[0];
    assert_eq!(install["publisher"], "acme");
    assert_eq!(install["version"], "1.0.0");
    // One agent ran both tasks: `toka run NAME` reuses the package's agent.
    assert_eq!(of_kind(&events, "agent_spawned").len(), 1);

    // Asking the package's token for more than it holds fails by name.
    let more = toka(&data, &["run", "probe", "--name", "p2", "--grant", "state"]);
    assert_eq!(more.code, 2, "{more:?}");
    assert!(
        more.stderr
            .contains("`state` is not among the rights package `probe` was granted"),
        "{}",
        more.stderr
    );

    // The install token works only for the package's component: bound to
    // another component, every operation is denied.
    let token_digest = install["token"].as_str().unwrap().to_owned();
    let state = toka(&data, &["state", "--json"]).ok().to_owned();
    assert!(state.contains(&token_digest), "{state}");

    // Removing the publisher revokes the token: the agent's next operation
    // is denied.
    let removed = toka(&data, &["trust", "remove", "acme"]);
    assert!(
        removed.ok().contains("install token is revoked"),
        "{removed:?}"
    );
    let after = toka(&data, &["run", "probe", "--task", "observe again"]);
    assert_eq!(after.code, 1, "{after:?}");
    assert!(after.stderr.contains("revoked"), "{}", after.stderr);
    let events = events_json(&data);
    assert_eq!(of_kind(&events, "publisher_distrusted").len(), 1);
    assert!(!of_kind(&events, "token_revoked").is_empty());
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "observation_emitted" && e["data"] == "again"),
        "a revoked package's agent still observed"
    );
    // The audit re-derives the install from the log alone.
    let verify = toka(&data, &["verify", "--auth"]);
    assert!(
        verify.ok().contains("1 package installs re-checked"),
        "{verify:?}"
    );
}

#[test]
fn an_upgrade_keeps_the_agents_state_and_asks_only_for_new_rights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, public) = publisher(dir.path(), "acme");
    toka(&data, &["trust", "add", "acme", path(&public)]).ok();
    let v1 = package(
        dir.path(),
        "v1.wasm",
        &manifest("1.0.0", &["observe", "state"]),
        &key,
    );
    toka(&data, &["install", path(&v1), "--yes"]).ok();
    toka(&data, &["run", "probe", "--task", "put greeting hello"]).ok();

    let v2 = package(
        dir.path(),
        "v2.wasm",
        &manifest("2.0.0", &["observe", "state", "schedule self"]),
        &key,
    );
    // Without an approval of the new right: refused, naming it.
    let refused = toka(&data, &["install", path(&v2)]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("new rights: schedule self"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .lines()
            .last()
            .unwrap()
            .contains("requests schedule self without")
            || refused.stderr.contains("schedule self and no approval"),
        "{}",
        refused.stderr
    );
    // Approving only the new right keeps the old ones.
    let upgraded = toka(&data, &["install", path(&v2), "--approve", "schedule self"]);
    let line = upgraded.ok();
    assert!(
        line.contains(
            "upgraded from 1.0.0 (1 agent(s) rebound); granted: observe, state, schedule self;"
        ),
        "{upgraded:?}"
    );
    // The same agent, its state kept, runs the new component.
    let state: Value = serde_json::from_str(toka(&data, &["state", "--json"]).ok()).unwrap();
    let agents = state["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{state}");
    let v2_digest = Package::read(std::fs::read(&v2).unwrap()).unwrap().digest();
    assert_eq!(agents[0]["component"], v2_digest.to_string(), "{state}");
    assert!(state.to_string().contains("greeting"), "{state}");
    toka(&data, &["run", "probe", "--task", "observe still here"]).ok();
    // The same version again: refused, nothing written.
    let again = toka(&data, &["install", path(&v2), "--yes"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("2.0.0 is already installed"),
        "{}",
        again.stderr
    );
    // Uninstalling terminates the agent and revokes the token.
    let gone = toka(&data, &["uninstall", "probe"]);
    assert!(gone.ok().contains("uninstalled"), "{gone:?}");
    let events = events_json(&data);
    assert_eq!(of_kind(&events, "package_uninstalled").len(), 1);
    assert_eq!(of_kind(&events, "agent_terminated").len(), 1);
    // Nothing runs either version any more: the upgrade removed 1.0.0,
    // the uninstall 2.0.0, and the archive that takes those records drops
    // their bytes from the store.
    let v1_digest = Package::read(std::fs::read(&v1).unwrap()).unwrap().digest();
    let removed: Vec<&str> = of_kind(&events, "component_removed")
        .iter()
        .map(|e| e["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        [v1_digest.to_string(), v2_digest.to_string()],
        "{events:?}"
    );
    let state: Value = serde_json::from_str(toka(&data, &["state", "--json"]).ok()).unwrap();
    assert_eq!(state["components"], serde_json::json!([]), "{state}");
    let archive = dir.path().join("log.toka-archive");
    let archived = toka(&data, &["archive", "--to", path(&archive)]);
    assert!(
        archived
            .ok()
            .contains("dropped 2 blobs nothing kept refers to"),
        "{archived:?}"
    );
    toka(&data, &["verify", "--auth"]).ok();
    toka(&data, &["verify", "--archive", path(&archive)]).ok();
}

/// The log's head, or `None` without a data dir.
fn head(data: &Path) -> Option<String> {
    data.exists().then(|| {
        toka(data, &["verify"])
            .ok()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    })
}

#[test]
fn bad_packages_are_refused_with_one_line_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, public) = publisher(dir.path(), "acme");
    let (other, _) = publisher(dir.path(), "mallory");
    let good = package(
        dir.path(),
        "good.wasm",
        &manifest("1.0.0", &["observe"]),
        &key,
    );
    let bytes = std::fs::read(&good).unwrap();

    // Before any publisher is trusted: refused, and no data dir is made.
    let untrusted = toka(&data, &["install", path(&good), "--yes"]);
    assert_eq!(untrusted.code, 2, "{untrusted:?}");
    assert!(
        untrusted
            .stderr
            .contains("not signed by a trusted publisher")
    );
    assert!(!data.exists(), "a refused install made a data dir");
    toka(&data, &["trust", "add", "acme", path(&public)]).ok();
    let before = head(&data);

    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // Signed by a key not in the trust store.
    let theirs = package(
        dir.path(),
        "theirs.wasm",
        &manifest("1.0.0", &["observe"]),
        &other,
    );
    cases.push((
        "another key".into(),
        std::fs::read(theirs).unwrap(),
        "not signed by a trusted publisher",
    ));
    // Unsigned: a component with a manifest section and no signature.
    let unsigned = {
        let mut module = wasmsign2::Module::deserialize(&mut std::io::Cursor::new(&bytes)).unwrap();
        module.sections.retain(|s| !s.is_signature_header());
        let mut out = Vec::new();
        module.serialize(&mut out).unwrap();
        out
    };
    cases.push(("unsigned".into(), unsigned, "is not signed"));
    // A corrupt signature section: the signature header's payload cut.
    let corrupt = {
        let mut module = wasmsign2::Module::deserialize(&mut std::io::Cursor::new(&bytes)).unwrap();
        for section in &mut module.sections {
            if section.is_signature_header() {
                *section = wasmsign2::Section::Custom(wasmsign2::CustomSection::new(
                    "signature".into(),
                    vec![1, 2, 3],
                ));
            }
        }
        let mut out = Vec::new();
        module.serialize(&mut out).unwrap();
        out
    };
    cases.push(("corrupt signature".into(), corrupt, "signature"));
    // One byte of code, or of the manifest, changed after signing.
    let at = bytes.len() / 2;
    let mut code = bytes.clone();
    code[at] ^= 0x01;
    cases.push(("a code byte".into(), code, ""));
    let manifest_at = bytes
        .windows(b"Does what".len())
        .position(|w| w == b"Does what")
        .unwrap();
    let mut changed = bytes.clone();
    changed[manifest_at] = b'd';
    cases.push((
        "a manifest byte".into(),
        changed,
        "not signed by a trusted publisher",
    ));
    // Signed, but requesting an unknown right, a malformed budget, or with
    // a manifest over the limit.
    let mut unknown = manifest("1.0.0", &["observe"]);
    unknown.rights.push("root access".into());
    let mut budget = manifest("1.0.0", &["observe"]);
    budget.budgets = vec!["memory=plenty".into()];
    let mut large = manifest("1.0.0", &["observe"]);
    large.description = "x".repeat(70_000);
    for (what, m, needle) in [
        ("an unknown right", unknown, "root access"),
        ("a bad budget", budget, "memory=plenty"),
        ("a large manifest", large, "at most 65536"),
    ] {
        let signed = package(dir.path(), "bad.wasm", &m, &key);
        cases.push((what.into(), std::fs::read(signed).unwrap(), needle));
    }
    // Another world: a signed core module, not an agent component.
    let core = wat_free_core_module();
    let other_world = Package::build(
        &core,
        &manifest("1.0.0", &["observe"]),
        &SigningKey::from_file(&key).unwrap(),
    )
    .unwrap();
    cases.push(("another world".into(), other_world, "component"));
    // 14 bytes declaring a section of 4 GiB.
    let declared = b"\0asm\x0d\0\x01\0\x01\xff\xff\xff\xff\x0f".to_vec();
    cases.push((
        "a section longer than the file".into(),
        declared.clone(),
        "a section at byte 14 declares 4294967295 bytes, past the end of the file",
    ));

    for (what, bad, needle) in cases {
        let file = dir.path().join("bad-input.wasm");
        std::fs::write(&file, &bad).unwrap();
        let run = toka(&data, &["install", path(&file), "--yes"]);
        assert_eq!(run.code, 2, "{what}: {run:?}");
        let error: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(error.len(), 1, "{what}: {}", run.stderr);
        assert!(
            error[0].contains(needle),
            "{what}: {needle:?} not in {}",
            run.stderr
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            bad,
            "{what}: the file changed"
        );
        assert_eq!(head(&data), before, "{what}: the log changed");
    }
    // Under a limit on the address space (`ulimit -v`, which the host
    // supports), the same 14 bytes are refused, not an abort: nothing
    // allocates the 4 GiB they declare (before, `toka` aborted here).
    let file = dir.path().join("declared.wasm");
    std::fs::write(&file, &declared).unwrap();
    let limited = crate::output_within(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -v 3000000 && exec \"$@\"", "sh"])
            .arg(env!("CARGO_BIN_EXE_toka"))
            .args(["--data", path(&data), "install", path(&file), "--yes"]),
        crate::COMMAND_LIMIT,
    );
    let stderr = String::from_utf8_lossy(&limited.stderr);
    assert_eq!(limited.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("declares 4294967295 bytes"), "{stderr}");
    assert_eq!(head(&data), before);
    // An approval wider than the request, or none at all without a
    // terminal: refused, nothing written.
    for (args, needle) in [
        (
            vec!["--approve", "fs.read /"],
            "wider than anything the package requests",
        ),
        (vec!["--approve", "state"], "wider than anything"),
        (vec![], "no approval was given"),
    ] {
        let run = toka(&data, &[&["install", path(&good)][..], &args].concat());
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
        assert_eq!(head(&data), before, "{args:?}: the log changed");
    }
    // A package file run directly is the operator's own authority, and
    // `toka run` says so.
    let direct = toka(&data, &["run", path(&good), "--task", "observe mine"]);
    assert_eq!(direct.ok(), "good: mine\n");
    assert!(
        direct.stderr.contains("on your own authority"),
        "{}",
        direct.stderr
    );
}

/// The smallest core module: WebAssembly, but no component of any world.
fn wat_free_core_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_token_works_only_for_its_packages_component() {
    use toka_host::{Approval, Grant, PublisherKey};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, public) = publisher(dir.path(), "acme");
    let pkg = package(
        dir.path(),
        "probe.wasm",
        &manifest("1.0.0", &["observe", "spawn hello"]),
        &key,
    );
    let host = crate::open_host(&data).await;
    let operator = host.as_host();
    operator
        .trust("acme", &PublisherKey::from_file(&public).unwrap())
        .await
        .unwrap();
    let review = operator.review(std::fs::read(&pkg).unwrap()).unwrap();
    let installed = operator
        .install_package(&review, &Approval::All)
        .await
        .unwrap();
    host.start_agents();
    // The package's own agent, and a child of it running another component
    // (descendants carry the binding's component in their lineage).
    let other = host
        .install("hello", std::fs::read(agent_path("hello")).unwrap())
        .await
        .unwrap();
    let own = operator
        .spawn_package("probe", "own", None, &[])
        .await
        .unwrap();
    assert_eq!(
        crate::outcome(&host, own, "observe mine").await,
        Ok("observed".into())
    );
    let child: toka_kernel::AgentId = crate::outcome(&host, own, "spawn hello kid observe")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        crate::outcome(&host, child, "world").await,
        Ok("Hello, world!".into())
    );
    // The same token bound to another component: every operation denied.
    let token = host.token(&installed.record.token).unwrap();
    let thief = host
        .spawn(other, "thief", Grant::Token(token.bytes().to_vec()))
        .await
        .unwrap();
    let stolen = crate::outcome(&host, thief, "world").await;
    assert!(
        stolen
            .as_ref()
            .is_err_and(|e| e.contains("install token of another component")),
        "{stolen:?}"
    );
    host.shutdown().await.unwrap();
    let audit = toka(&data, &["verify", "--auth"]);
    assert!(
        audit.ok().contains("1 package installs re-checked"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_through_the_api_need_admin_and_show_on_agents() {
    use crate::serve::{Api, Served};
    use reqwest::{Method, StatusCode};
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = publisher(dir.path(), "acme");
    let pkg = std::fs::read(package(
        dir.path(),
        "probe.wasm",
        &manifest("1.0.0", &["observe", "state"]),
        &key,
    ))
    .unwrap();
    let mut served = Served::start(&[]);
    let admin = Api::new(&served).await;
    let upload = |api: &Api, path: &str| {
        api.request(Method::POST, path)
            .header("content-type", "application/wasm")
            .body(pkg.clone())
    };
    // Lower levels may list, never trust or install.
    let token = |level: &str| {
        toka(&served.data, &["token", "issue", "--operator", level])
            .ok()
            .trim()
            .to_owned()
    };
    for level in ["read", "write"] {
        let api = admin.with_token(&token(level));
        let key_hex = toka_kernel::to_hex(&std::fs::read(&public).unwrap());
        let trust = api
            .post(
                "/v1/publishers",
                "/v1/publishers",
                serde_json::json!({"name": "acme", "key": key_hex}),
            )
            .await;
        assert_eq!(trust.status, StatusCode::FORBIDDEN, "{level}: {trust:?}");
        let install = api
            .send(
                Method::POST,
                "/v1/packages",
                upload(&api, "/v1/packages?yes=true"),
            )
            .await;
        assert_eq!(
            install.status,
            StatusCode::FORBIDDEN,
            "{level}: {install:?}"
        );
        let listed = api.get("/v1/packages", "/v1/packages").await;
        assert_eq!(listed.status, StatusCode::OK);
    }
    // Untrusted: the review names the problem.
    let review = admin
        .send(
            Method::POST,
            "/v1/packages/review",
            upload(&admin, "/v1/packages/review"),
        )
        .await;
    assert_eq!(
        review.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{review:?}"
    );
    assert!(
        review
            .message()
            .contains("not signed by a trusted publisher")
    );
    // The CLI routes through the running server.
    let trusted = toka(&served.data, &["trust", "add", "acme", path(&public)]);
    assert!(
        trusted.ok().contains("trusted publisher `acme`"),
        "{trusted:?}"
    );
    let publishers = admin.get("/v1/publishers", "/v1/publishers").await;
    assert_eq!(publishers.body[0]["name"], "acme", "{publishers:?}");
    let review = admin
        .send(
            Method::POST,
            "/v1/packages/review",
            upload(&admin, "/v1/packages/review"),
        )
        .await;
    assert_eq!(review.status, StatusCode::OK, "{review:?}");
    assert_eq!(
        review.body["new_rights"],
        serde_json::json!(["observe", "state"])
    );
    // Without an approval: refused, naming what needs one; a widening one
    // too.
    let unapproved = admin
        .send(Method::POST, "/v1/packages", upload(&admin, "/v1/packages"))
        .await;
    assert_eq!(
        unapproved.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{unapproved:?}"
    );
    assert!(
        unapproved.message().contains("observe, state"),
        "{unapproved:?}"
    );
    let wider = admin
        .send(
            Method::POST,
            "/v1/packages",
            upload(&admin, "/v1/packages?approve=http%20*"),
        )
        .await;
    assert!(wider.message().contains("wider than anything"), "{wider:?}");
    let installed = admin
        .send(
            Method::POST,
            "/v1/packages",
            upload(&admin, "/v1/packages?approve=observe"),
        )
        .await;
    assert_eq!(installed.status, StatusCode::CREATED, "{installed:?}");
    assert_eq!(installed.body["granted"], serde_json::json!(["observe"]));
    // An agent of the package: its view names the package and publisher.
    let spawned = admin
        .post(
            "/v1/agents",
            "/v1/agents",
            serde_json::json!({"package": "probe", "name": "p1"}),
        )
        .await;
    assert_eq!(spawned.status, StatusCode::CREATED, "{spawned:?}");
    assert_eq!(
        spawned.body["package"],
        serde_json::json!({"name": "probe", "version": "1.0.0", "publisher": "acme"})
    );
    // More than the package was granted: refused by name.
    let more = admin
        .post(
            "/v1/agents",
            "/v1/agents",
            serde_json::json!({"package": "probe", "name": "p2", "rights": ["state"]}),
        )
        .await;
    assert_eq!(more.status, StatusCode::UNPROCESSABLE_ENTITY, "{more:?}");
    assert!(
        more.message().contains("`state` is not among the rights"),
        "{more:?}"
    );
    // `toka run NAME` through the server.
    let run = toka(
        &served.data,
        &["run", "probe", "--name", "p1", "--task", "observe api"],
    );
    assert_eq!(run.ok(), "p1: api\n");
    let gone = toka(&served.data, &["uninstall", "probe"]);
    assert!(gone.ok().contains("uninstalled"), "{gone:?}");
    let listed = admin.get("/v1/packages", "/v1/packages").await;
    assert_eq!(listed.body, serde_json::json!([]));
    assert_eq!(served.stop().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_agent_runs_its_new_component_not_a_warm_instance_of_the_old() {
    use toka_host::{Approval, PublisherKey};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, public) = publisher(dir.path(), "acme");
    // test-bench answers `tasks` with how many tasks its instance has run.
    let bench = |version: &str| {
        let manifest = Manifest {
            name: "bench".into(),
            ..manifest(version, &["observe"])
        };
        let component = std::fs::read(agent_path("test-bench")).unwrap();
        Package::build(&component, &manifest, &SigningKey::from_file(&key).unwrap()).unwrap()
    };
    let host = crate::open_host(&data).await;
    let operator = host.as_host();
    operator
        .trust("acme", &PublisherKey::from_file(&public).unwrap())
        .await
        .unwrap();
    let v1 = operator.review(bench("1.0.0")).unwrap();
    operator.install_package(&v1, &Approval::All).await.unwrap();
    let agent = operator
        .spawn_package("bench", "worker", None, &[])
        .await
        .unwrap();
    assert_eq!(crate::outcome(&host, agent, "tasks").await, Ok("1".into()));
    // Idle between the tasks, its instance was kept warm.
    assert_eq!(crate::outcome(&host, agent, "tasks").await, Ok("2".into()));

    let v2 = operator.review(bench("2.0.0")).unwrap();
    let upgraded = operator.install_package(&v2, &Approval::All).await.unwrap();
    assert_eq!(upgraded.rebound, 1);
    // The warm instance is of the old component: a new one runs.
    assert_eq!(crate::outcome(&host, agent, "tasks").await, Ok("1".into()));
    let component = host
        .state(|s| s.agent(agent).map(|a| a.component))
        .await
        .unwrap();
    assert_eq!(component, upgraded.record.component);
    host.shutdown().await.unwrap();
}
