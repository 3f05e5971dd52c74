//! Agents that call the network: the llm-planner against a local
//! OpenAI-compatible endpoint, journaled requests across a real crash,
//! secrets the agent never sees, and the `toka secret` commands.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use toka_host::{AgentLimits, Host, HostConfig, SecretStore};
use toka_kernel::{AgentId, Event};

use crate::servers::{Echo, Llm, Reply, SUMMARY, plan};
use crate::{agent_bytes, agent_path, grant, open_host_with, temp_data, toka};

const KEY: &str = "sk-test-9f8e7d6c5b4a-SECRET";

/// A host on a redb data dir whose secrets hold `OPENAI_API_KEY`.
async fn keyed_host(data: &Path, limits: AgentLimits) -> Host {
    std::fs::create_dir_all(data).unwrap();
    let secrets = SecretStore::open(data).unwrap();
    secrets.set("OPENAI_API_KEY", KEY).unwrap();
    let mut config = HostConfig::new();
    config.agent_limits(limits).secrets(Arc::new(secrets));
    open_host_with(data, config).await
}

/// The llm-planner's rights for an endpoint on `port`, plus `extra`.
fn planner_rights(port: u16, extra: &[String]) -> Vec<String> {
    // `schedule *`: the workers report back by scheduling onto the
    // planner, and a right's target is relative to its holder, so only `*`
    // covers the planner's id for them (each worker is delegated that id
    // alone).
    let mut rights: Vec<String> = ["observe", "state", "spawn worker", "schedule *"]
        .iter()
        .map(|r| (*r).to_owned())
        .collect();
    rights.push(format!("http 127.0.0.1:{port}"));
    rights.extend(extra.iter().cloned());
    rights
}

async fn spawn_planner(host: &Host, name: &str, rights: &[String]) -> AgentId {
    host.install("worker", agent_bytes("worker")).await.unwrap();
    let component = host
        .install("llm-planner", agent_bytes("llm-planner"))
        .await
        .unwrap();
    let rights: Vec<&str> = rights.iter().map(String::as_str).collect();
    host.spawn(component, name, grant(&rights)).await.unwrap()
}

fn goal(base_url: &str, extra: &str) -> String {
    format!(r#"{{"goal":"Write a field guide","base_url":"{base_url}","model":"test"{extra}}}"#)
}

/// Every event of the log, in order.
fn logged(host: &Host) -> Vec<Event> {
    host.log_events(1, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.events)
        .collect()
}

/// The secret's bytes, in any form, are not in the redb file.
fn assert_not_in_file(data: &Path, secret: &str) {
    let bytes = std::fs::read(data.join("toka.redb")).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is in the log's file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_planner_plans_through_retries_and_bad_answers_and_sums_up() {
    let (_tmp, data) = temp_data();
    let llm = Llm::start(vec![
        Reply::Status(429, vec![("retry-after", "1".into())]),
        Reply::Status(500, vec![]),
        Reply::Content("Sure! Step one: think.".into()),
        Reply::NoChoices,
        Reply::Content(plan(&["collect the risks", "rank them", "write it up"])),
    ])
    .await;
    let host = keyed_host(&data, AgentLimits::default()).await;
    let secret = format!("secret OPENAI_API_KEY 127.0.0.1:{}", llm.port);
    let planner = spawn_planner(&host, "planner", &planner_rights(llm.port, &[secret])).await;

    let started = crate::outcome(&host, planner, &goal(&llm.base_url, "")).await;
    let started = started.expect("the goal is planned");
    assert!(started.contains("3 steps"), "{started}");
    host.run_until_idle().await.unwrap();

    // The endpoint: 2 retried errors, 2 malformed answers re-asked, the
    // plan, then the summary — every one with the key the host injected.
    let seen = llm.seen();
    let failed: Vec<String> = logged(&host)
        .into_iter()
        .filter_map(|e| match e {
            Event::TaskFailed { reason, .. } => Some(reason),
            Event::CapabilityDenied { denial, .. } => Some(format!("{denial:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(seen.len(), 6, "failures: {failed:#?}");
    assert!(seen[..5].iter().all(|s| s.wants_json()) && !seen[5].wants_json());
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }
    let keys: std::collections::BTreeSet<&str> = seen
        .iter()
        .map(|s| s.header("idempotency-key").expect("an idempotency key"))
        .collect();
    assert_eq!(keys.len(), 6, "one key per request: {keys:?}");
    // The re-ask says what was wrong.
    let reasked = seen[3].body["messages"].to_string();
    assert!(
        reasked.contains("not usable: the answer is not JSON"),
        "{reasked}"
    );

    let events = logged(&host);
    let summaries: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ObservationEmitted {
                agent,
                topic: Some(topic),
                data,
            } if *agent == planner && topic == "summary" => {
                Some(String::from_utf8_lossy(data).into_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(summaries, [SUMMARY]);
    let requests = events
        .iter()
        .filter(|e| matches!(e, Event::HttpRequested { .. }))
        .count();
    let responses: Vec<(Option<u16>, Option<String>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::HttpResponded { status, secret, .. } => Some((*status, secret.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(requests, 6);
    assert_eq!(
        responses.iter().map(|r| r.0).collect::<Vec<_>>(),
        [
            Some(429),
            Some(500),
            Some(200),
            Some(200),
            Some(200),
            Some(200)
        ]
    );
    assert!(
        responses
            .iter()
            .all(|r| r.1.as_deref() == Some("OPENAI_API_KEY"))
    );

    // Three workers, each delegated `observe` and `schedule` back to the
    // planner: never `http` or the secret.
    let workers: Vec<toka_kernel::Digest> = host
        .state(|s| {
            s.agents()
                .filter(|(_, a)| a.parent == planner)
                .map(|(_, a)| a.token)
                .collect()
        })
        .await;
    assert_eq!(workers.len(), 3);
    for digest in workers {
        let token = host.token(&digest).unwrap();
        assert_eq!(
            token.delegated_rights(),
            Some(vec!["observe".to_owned(), format!("schedule {planner}")])
        );
    }
    host.shutdown().await.unwrap();
    let audit = toka(&data, &["verify", "--auth"]);
    assert!(
        audit.ok().contains("journaled responses match"),
        "{audit:?}"
    );
    assert_not_in_file(&data, KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_and_bad_endpoints_are_worded_outcomes_and_harm_nothing() {
    let (_tmp, data) = temp_data();
    let llm = Llm::start(vec![
        // Never a plan: three answers that are not JSON.
        Reply::Content("Here is my plan: first...".into()),
        Reply::Content("{\"plan\": []}".into()),
        Reply::NoChoices,
        // A response over the host's limit.
        Reply::Big(64 * 1024),
        // An answer slower than the agent waits.
        Reply::Hold,
    ])
    .await;
    let limits = AgentLimits {
        http_response_bytes: 16 * 1024,
        ..AgentLimits::default()
    };
    let host = keyed_host(&data, limits).await;
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let bystander = host
        .spawn(hello, "bystander", grant(&["observe"]))
        .await
        .unwrap();
    let secret = format!("secret OPENAI_API_KEY 127.0.0.1:{}", llm.port);
    let planner = spawn_planner(&host, "planner", &planner_rights(llm.port, &[secret])).await;

    let failed = crate::outcome(&host, planner, &goal(&llm.base_url, "")).await;
    let reason = failed.expect_err("no plan");
    assert!(
        reason.contains("no usable plan after 3 attempts")
            && reason.contains("choice list is empty"),
        "{reason}"
    );
    let failed = crate::outcome(&host, planner, &goal(&llm.base_url, "")).await;
    let reason = failed.expect_err("too large");
    assert!(reason.contains("limit of 16384 bytes"), "{reason}");
    let slow = goal(&llm.base_url, r#","timeout_secs":1"#);
    let reason = crate::outcome(&host, planner, &slow)
        .await
        .expect_err("too slow");
    assert!(reason.contains("in time"), "{reason}");
    llm.release();

    // An endpoint nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = spawn_planner(&host, "unreachable", &planner_rights(closed, &[])).await;
    let reason = crate::outcome(
        &host,
        unreachable,
        &goal(&format!("http://127.0.0.1:{closed}/v1"), ""),
    )
    .await
    .expect_err("unreachable");
    assert!(reason.contains("is unreachable"), "{reason}");

    // A secret that is not set, and one bound to a host without `http`.
    let unset = format!("secret NOT_SET 127.0.0.1:{}", llm.port);
    let missing = spawn_planner(&host, "missing", &planner_rights(llm.port, &[unset])).await;
    let reason = crate::outcome(&host, missing, &goal(&llm.base_url, ""))
        .await
        .expect_err("secret not set");
    assert!(reason.contains("host refused the request"), "{reason}");
    let elsewhere = format!("secret OPENAI_API_KEY 127.0.0.1:{closed}");
    let mut rights = planner_rights(llm.port, &[elsewhere]);
    rights.retain(|r| !r.starts_with("http "));
    let no_http = spawn_planner(&host, "no-http", &rights).await;
    let reason = crate::outcome(
        &host,
        no_http,
        &goal(&format!("http://127.0.0.1:{closed}/v1"), ""),
    )
    .await
    .expect_err("no http right");
    assert!(reason.contains("host refused the request"), "{reason}");
    // A goal that is not one.
    let reason = crate::outcome(&host, planner, "plan my week")
        .await
        .expect_err("not JSON");
    assert!(reason.contains("a goal is JSON"), "{reason}");

    // Each outcome is in the log, worded: the refusal names the missing
    // secret, the too-large response its limit.
    let failures: Vec<String> = logged(&host)
        .into_iter()
        .filter_map(|e| match e {
            Event::HttpResponded {
                failure: Some(f), ..
            } => Some(f),
            _ => None,
        })
        .collect();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("too large") && f.contains("16384")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.contains("secret NOT_SET") && f.contains("not set on this host")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|f| f.starts_with("connection")),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|f| f.starts_with("timeout")),
        "{failures:?}"
    );
    let denied = logged(&host).into_iter().any(|e| {
        matches!(e, Event::CapabilityDenied { agent, denial } if agent == no_http && denial.operation == "http")
    });
    assert!(denied, "the request without `http` is a recorded denial");
    // Nobody else noticed.
    assert_eq!(
        crate::outcome(&host, bystander, "still here").await,
        Ok("Hello, still here!".to_owned())
    );
    host.shutdown().await.unwrap();
    toka(&data, &["verify", "--auth"]).ok();
    assert_not_in_file(&data, KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_never_sees_a_secret_whatever_it_tries() {
    let (_tmp, data) = temp_data();
    // The unbound server shows the bound one's request log (`/replay`):
    // what the bound host was sent comes back to a request that carried
    // no secret.
    let bound = Echo::start().await;
    let unbound = Echo::showing(&bound).await;
    let host = keyed_host(&data, AgentLimits::default()).await;
    let component = host
        .install("hostile-secrets", agent_bytes("hostile-secrets"))
        .await
        .unwrap();
    let rights = [
        "observe".to_owned(),
        "state".to_owned(),
        format!("http 127.0.0.1:{}", bound.port),
        format!("http 127.0.0.1:{}", unbound.port),
        format!("secret OPENAI_API_KEY 127.0.0.1:{}", bound.port),
    ];
    let rights: Vec<&str> = rights.iter().map(String::as_str).collect();
    let snoop = host
        .spawn(component, "snoop", grant(&rights))
        .await
        .unwrap();
    let probe = format!("probe OPENAI_API_KEY {} {}", bound.url, unbound.url);
    let seen = crate::outcome(&host, snoop, &probe).await.expect("probed");
    assert!(!seen.contains(KEY), "the agent saw the secret:\n{seen}");
    // Nor in the one encoding the echo server speaks (reversed bytes).
    let backwards: String = seen.chars().rev().collect();
    assert!(
        !backwards.contains(KEY),
        "the agent saw the secret encoded:\n{seen}"
    );
    // The other server showed what the bound host was sent, the secret
    // among it, to a request that carried none: redacted all the same.
    let replayed = seen
        .split("== unbound, showing what the bound host was sent\n")
        .nth(1)
        .unwrap_or_default();
    assert!(
        replayed.starts_with("Ok(") && replayed.contains("Bearer [redacted]"),
        "{seen}"
    );
    // Asked in an encoding: the host asked for a plain answer instead;
    // sent encoded unasked: refused.
    let section = |name: &str| {
        seen.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_default()
            .to_owned()
    };
    let asked = section("unbound, showing it encoded as asked");
    assert!(
        asked.starts_with("Ok(") && asked.contains("Bearer [redacted]"),
        "{seen}"
    );
    let unasked = section("unbound, showing it encoded unasked");
    assert!(unasked.starts_with("Err("), "{seen}");
    // The bound host echoed the injected header back: redacted; its
    // base64 (the echo server adds it) too.
    assert!(seen.contains("Bearer [redacted]"), "{seen}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("Bearer {KEY}"));
    assert!(!seen.contains(&b64[4..b64.len() - 4]), "{seen}");
    // No compressed answer, no partial one, no TRACE with the secret; a
    // body said to be encoded in a second header line is refused, and the
    // line's value (the secret, echoed) is redacted in the record.
    assert!(seen.contains("== trace\nerror: the host refused"), "{seen}");
    assert!(seen.contains("== encoded\nerror: "), "{seen}");
    let encoded: Vec<String> = logged(&host)
        .into_iter()
        .filter_map(|e| match e {
            Event::HttpResponded {
                failure: Some(failure),
                ..
            } if failure.contains("encoded") => Some(failure),
            _ => None,
        })
        .collect();
    assert_eq!(
        encoded,
        [
            "protocol: the response is encoded (Bearer [redacted]); a response to an agent holding a secret must be plain, so the secret can be kept out of it",
            "protocol: the response is encoded (x-reversed); a response to an agent holding a secret must be plain, so the secret can be kept out of it"
        ],
        "{encoded:?}"
    );
    let at_bound = bound.seen();
    assert!(
        at_bound
            .iter()
            .filter(|s| s.header("authorization").is_some_and(|v| v.contains(KEY)))
            .all(|s| s.header("accept-encoding") == Some("identity") && s.header("range").is_none()),
        "{at_bound:?}"
    );
    // The host injected the real value, over the agent's own header.
    let injected: Vec<&str> = at_bound
        .iter()
        .filter_map(|s| s.header("authorization"))
        .collect();
    assert!(!injected.is_empty());
    assert!(
        injected.iter().all(|v| *v == format!("Bearer {KEY}")),
        "{injected:?}"
    );
    // Nothing else ever carried it, and every request of an agent holding
    // a secret asked for a plain answer.
    for request in unbound.seen() {
        assert_eq!(request.header("accept-encoding"), Some("identity"));
        assert!(
            request.headers.iter().all(|(_, v)| !v.contains(KEY)),
            "{request:?}"
        );
    }

    // An agent without the secret right asks the same host: no secret. It
    // may not reach the other echo server either: the redirect there is
    // refused and recorded.
    let plain = [
        "observe".to_owned(),
        "state".to_owned(),
        format!("http 127.0.0.1:{}", bound.port),
    ];
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let other = host
        .spawn(component, "no-secret", grant(&plain))
        .await
        .unwrap();
    let before = bound.seen().len();
    let seen = crate::outcome(&host, other, &probe).await.expect("probed");
    assert!(!seen.contains(KEY));
    assert!(
        bound.seen()[before..]
            .iter()
            .all(|s| s.header("authorization") != Some(format!("Bearer {KEY}").as_str())),
        "a request without the right carried the secret"
    );
    assert!(
        seen.contains("== bound, redirected to unbound\nerror: the host refused"),
        "{seen}"
    );
    let denied = logged(&host)
        .into_iter()
        .filter(|e| {
            matches!(e, Event::CapabilityDenied { agent, denial }
                if *agent == other && denial.operation == "http"
                    && denial.targets.first() == Some(&format!("127.0.0.1:{}", unbound.port)))
        })
        .count();
    assert_eq!(
        denied, 5,
        "the direct request, the redirect and the three replays"
    );
    host.shutdown().await.unwrap();
    toka(&data, &["verify", "--auth"]).ok();
    assert_not_in_file(&data, KEY);
    // Nor does anything the CLI prints.
    let events = toka(&data, &["events", "--json"]);
    assert!(!events.ok().contains(KEY));
}

/// `toka` with stdin.
fn toka_with_stdin(data: &Path, args: &[&str], stdin: &str) -> crate::Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_toka"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    crate::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The planner's `--grant` flags for `toka run`.
fn grants(port: u16) -> Vec<String> {
    planner_rights(port, &[format!("secret OPENAI_API_KEY 127.0.0.1:{port}")])
        .into_iter()
        .flat_map(|r| ["--grant".to_owned(), r])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_answer_was_journaled_sends_nothing_twice() {
    let (_tmp, data) = temp_data();
    // The first answer is journaled; the re-ask is held until the host is
    // killed; after the restart it is answered with a plan.
    let llm = Llm::start(vec![Reply::Content("not a plan".into()), Reply::Hold]).await;
    let set = toka_with_stdin(
        &data,
        &["secret", "set", "OPENAI_API_KEY"],
        &format!("{KEY}\n"),
    );
    assert_eq!(set.ok().trim(), "secret OPENAI_API_KEY set");
    toka(&data, &["run", agent_path("worker"), "--name", "worker"]).ok();

    let (port, base_url, dir) = (llm.port, llm.base_url.clone(), data.clone());
    let run = move |with_goal: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_toka"));
        cmd.arg("--data")
            .arg(&dir)
            .args(["run", agent_path("llm-planner"), "--name", "p"])
            .args(grants(port))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if with_goal {
            cmd.args(["--task", &goal(&base_url, "")]);
        }
        cmd
    };
    let mut first = run(true).spawn().unwrap();
    llm.held().await;
    // Killed while the task waits for its second answer.
    first.kill().unwrap();
    first.wait().unwrap();
    llm.release();

    let second = tokio::task::spawn_blocking(move || run(false).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let seen = llm.seen();
    let keys: Vec<&str> = seen
        .iter()
        .map(|s| s.header("idempotency-key").unwrap())
        .collect();
    // Request 0 was answered from the journal on the re-run: sent once.
    // Request 1 (its answer never recorded) was sent again with the same
    // key; then the summary.
    assert_eq!(seen.len(), 4, "{keys:?}");
    assert_eq!(keys[1], keys[2], "a re-sent request keeps its key");
    assert_ne!(keys[0], keys[1]);
    assert!(!seen[3].wants_json(), "the last request is the summary");
    assert!(stdout.contains(SUMMARY), "{stdout}");

    let events = crate::events_json(&data);
    let responses_for_0 = events
        .iter()
        .filter(|e| e["kind"] == "http_responded" && e["index"] == 0)
        .count();
    assert_eq!(
        responses_for_0, 2,
        "the plan task's and the summary's first requests"
    );
    let plans = events
        .iter()
        .filter(|e| e["kind"] == "observation_emitted" && e["topic"] == "plan")
        .count();
    assert_eq!(plans, 1, "the goal was planned once");
    toka(&data, &["verify", "--auth"]).ok();
    assert_not_in_file(&data, KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_set_from_stdin_listed_without_values_and_removed() {
    let (_tmp, data) = temp_data();
    let set = toka_with_stdin(&data, &["secret", "set", "API_KEY"], "hunter2-value\n");
    assert_eq!(set.ok().trim(), "secret API_KEY set");
    assert!(!set.stdout.contains("hunter2") && !set.stderr.contains("hunter2"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("secrets.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let list = toka(&data, &["secret", "list"]);
    assert!(list.ok().starts_with("API_KEY  13 bytes  set "), "{list:?}");
    assert!(!list.stdout.contains("hunter2"));

    for (args, stdin, problem) in [
        (
            &["secret", "set", "bad name"][..],
            "v",
            "is not a secret name",
        ),
        (&["secret", "set", "EMPTY"][..], "\n", "is empty"),
        (&["secret", "set", "CTRL"][..], "a\u{7}b", "cannot carry"),
        (
            &["secret", "remove", "NOPE"][..],
            "",
            "no secret named NOPE",
        ),
    ] {
        let run = toka_with_stdin(&data, args, stdin);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains(problem), "{args:?}: {run:?}");
    }
    assert_eq!(toka(&data, &["secret", "list"]).ok().lines().count(), 1);

    // Through a running server: admin only, and the value never comes back.
    let served = crate::serve::Served::start_on(&data, &[]);
    let api = crate::serve::Api::new(&served).await;
    let reader = toka(&data, &["token", "issue", "--operator", "read"])
        .ok()
        .trim()
        .to_owned();
    let denied = api
        .with_token(&reader)
        .call(
            reqwest::Method::PUT,
            "/v1/secrets/{name}",
            "/v1/secrets/OTHER",
            Some(serde_json::json!({"value": "x"})),
        )
        .await;
    assert_eq!(denied.status, reqwest::StatusCode::FORBIDDEN);
    let set = api
        .call(
            reqwest::Method::PUT,
            "/v1/secrets/{name}",
            "/v1/secrets/OTHER",
            Some(serde_json::json!({"value": "other-value"})),
        )
        .await;
    assert_eq!(set.status, reqwest::StatusCode::OK);
    assert_eq!(set.body["len"], 11);
    let listed = api.get("/v1/secrets", "/v1/secrets").await;
    assert!(
        !listed.body.to_string().contains("value"),
        "{:?}",
        listed.body
    );
    // The CLI goes through the server.
    let removed = toka(&data, &["secret", "remove", "API_KEY"]);
    assert_eq!(removed.ok().trim(), "secret API_KEY removed");
    let list = toka(&data, &["secret", "list"]);
    assert!(list.ok().starts_with("OTHER  11 bytes"), "{list:?}");
    drop(served);
    let file = std::fs::read_to_string(data.join("secrets.json")).unwrap();
    assert!(file.contains("other-value") && !file.contains("hunter2"));
    // The log never holds a value.
    assert_not_in_file(&data, "other-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toka_demo_llm_runs_the_llm_planner_with_the_key_from_the_secret_store() {
    let (_tmp, data) = temp_data();
    let llm = Llm::start(Vec::new()).await;
    let set = toka_with_stdin(&data, &["secret", "set", "OPENAI_API_KEY"], KEY);
    set.ok();
    let (dir, base_url) = (data.clone(), llm.base_url.clone());
    let run = tokio::task::spawn_blocking(move || {
        toka(
            &dir,
            &[
                "demo",
                "--llm",
                &base_url,
                "--model",
                "test",
                "--workers",
                "2",
            ],
        )
    })
    .await
    .unwrap();
    let stdout = run.ok();
    assert!(stdout.contains("key: secret OPENAI_API_KEY"), "{stdout}");
    assert!(stdout.contains(&format!("summary: {SUMMARY}")), "{stdout}");
    assert!(stdout.contains("0 failed"), "{stdout}");
    let seen = llm.seen();
    assert_eq!(seen.len(), 2, "a plan and a summary");
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some(format!("Bearer {KEY}").as_str()))
    );
    assert_eq!(seen[0].body["model"], "test");
    toka(&data, &["verify", "--auth"]).ok();

    // A bad endpoint is one clear line, and nothing is written.
    let (_tmp2, other) = temp_data();
    let bad = toka(&other, &["demo", "--llm", "ftp://example.com/v1"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("not an http:// or https:// URL"),
        "{bad:?}"
    );
    assert!(!other.exists());
}

/// `hostile-http` installed on `host`, and an agent `name` of it that may
/// reach `127.0.0.1:port`: the component and the agent.
async fn an_http_agent(host: &Host, name: &str, port: u16) -> (toka_kernel::Digest, AgentId) {
    let component = host
        .install("hostile-http", agent_bytes("hostile-http"))
        .await
        .unwrap();
    let right = format!("http 127.0.0.1:{port}");
    let agent = host
        .spawn(component, name, grant(&["observe", &right]))
        .await
        .unwrap();
    (component, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_pile_up_outstanding_requests() {
    // A server that answers slowly: every request the agent hands over at
    // once would be held by the host.
    let (_tmp, data) = temp_data();
    let llm = Llm::start(vec![Reply::Hold; 40]).await;
    let host = keyed_host(&data, AgentLimits::default()).await;
    let (_, flood) = an_http_agent(&host, "flood", llm.port).await;
    let task = host
        .schedule(
            flood,
            &format!("flood 40 127.0.0.1:{} /v1/chat/completions", llm.port),
        )
        .await
        .unwrap();
    // The allowed ones arrive; then let them go.
    llm.held().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrived = llm.seen().len();
    llm.release();
    let info = host
        .wait_task(task, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the flood ends");
    let toka_host::TaskState::Completed { output } = info.state else {
        panic!("{info:?}");
    };
    let output = String::from_utf8(output).unwrap();
    assert!(arrived <= 16, "{arrived} requests were out at once");
    assert!(
        output.contains("ErrorCode::ConnectionLimitReached=24"),
        "{output}"
    );
    host.shutdown().await.unwrap();
    toka(&data, &["verify"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_holding_requests_open_leaves_other_trees_connections() {
    // A host of 4 outbound connections; one agent hands over 16 requests
    // at once to a server that holds them: it holds 3 connections (its
    // tree's share), and another tree's request still goes out (before,
    // the 4 places were all the flood's: the other request waited for
    // one until its timeout).
    let (_tmp, data) = temp_data();
    let slow = Llm::start(vec![Reply::Hold; 16]).await;
    let echo = Echo::start().await;
    let mut config = HostConfig::new();
    config.outbound_connections(4);
    let host = open_host_with(&data, config).await;
    let (component, flood) = an_http_agent(&host, "flood", slow.port).await;
    let flooding = host
        .schedule(
            flood,
            &format!("flood 16 127.0.0.1:{} /v1/chat/completions", slow.port),
        )
        .await
        .unwrap();
    slow.held().await;
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while slow.seen().len() < 3 {
        assert!(std::time::Instant::now() < give_up, "{:?}", slow.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let right = format!("http 127.0.0.1:{}", echo.port);
    let neighbour = host
        .spawn(component, "neighbour", grant(&["observe", &right]))
        .await
        .unwrap();
    let asking = host
        .schedule(neighbour, &format!("get 127.0.0.1:{} /hello", echo.port))
        .await
        .unwrap();
    // Well before the flood's task reaches its deadline (30 s), which
    // would free its places.
    let info = host
        .wait_task(asking, Duration::from_secs(15))
        .await
        .unwrap()
        .expect("the neighbour's request was answered while the flood held its share");
    assert!(
        matches!(info.state, toka_host::TaskState::Completed { .. }),
        "{info:?}"
    );
    assert_eq!(echo.seen().len(), 1);
    // The flood never had more than its share out.
    assert_eq!(slow.seen().len(), 3, "{:?}", slow.seen());
    slow.release();
    host.wait_task(flooding, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the flood ends");
    host.shutdown().await.unwrap();
    toka(&data, &["verify"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_waiting_on_a_request_ends_when_its_agent_is_terminated_or_the_host_stops() {
    // Regression: a task waiting in a host call (here, for an answer the
    // server holds back) was not interrupted by `terminate` or by the host
    // stopping: the epoch callback that ends abandoned tasks runs only
    // while the guest computes, so the task kept its place and its
    // connection until the request's timeout or the task's deadline.
    let (_tmp, data) = temp_data();
    let llm = Llm::start(vec![Reply::Hold; 2]).await;
    let long = Duration::from_secs(300);
    let limits = AgentLimits {
        http_timeout: long,
        deadline_per_task: long,
        ..AgentLimits::default()
    };
    let host = keyed_host(&data, limits).await;
    let component = host
        .install("test-bench", agent_bytes("test-bench"))
        .await
        .unwrap();
    let right = format!("http 127.0.0.1:{}", llm.port);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", llm.port);
    let llm = &llm;
    let arrived = |n: usize| async move {
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while llm.seen().len() < n {
            assert!(
                std::time::Instant::now() < give_up,
                "request {n} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let waiter = host
        .spawn(component, "waiter", grant(&["observe", &right]))
        .await
        .unwrap();
    let task = host
        .schedule(waiter, &format!("get 1 {url}"))
        .await
        .unwrap();
    arrived(1).await;
    host.terminate(waiter, "the test is over").await.unwrap();
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while host.running_actors() > 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the terminated agent's task still waits on its request after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = host
        .wait_task(task, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the task ended");
    assert!(
        matches!(info.state, toka_host::TaskState::Failed { .. }),
        "{info:?}"
    );
    assert!(
        !logged(&host)
            .iter()
            .any(|e| matches!(e, Event::AgentFaulted { .. })),
        "the abandoned task counted as its agent's fault"
    );

    // The host stops without waiting for a request it will never answer.
    let other = host
        .spawn(component, "other", grant(&["observe", &right]))
        .await
        .unwrap();
    host.schedule(other, &format!("get 1 {url}")).await.unwrap();
    arrived(2).await;
    tokio::time::timeout(Duration::from_secs(20), host.shutdown())
        .await
        .expect("the host waited for a held request to stop")
        .unwrap();
    llm.release();
    assert!(toka(&data, &["verify"]).ok().starts_with("ok "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_park_responses_past_its_tree_s_share_of_memory() {
    // A response lives in the host's memory until the agent drops it (up
    // to 1 MiB each by default, 16 outstanding an instance, and a tree
    // holds hundreds of instances): charged to the host's memory for
    // agents, under the tree's share, as linear memories are. Here a
    // budget of 12 MiB, a tree's share of 9 MiB, responses of up to 2 MiB.
    let (_tmp, data) = temp_data();
    let llm = Llm::start(vec![Reply::Big(1536 << 10); 4]).await;
    let mut config = HostConfig::new();
    config
        .agent_limits(AgentLimits {
            memory_bytes: 4 << 20,
            http_response_bytes: 2 << 20,
            ..AgentLimits::default()
        })
        .memory_budget(12 << 20);
    let host = open_host_with(&data, config).await;
    let (component, hoarder) = an_http_agent(&host, "hoarder", llm.port).await;
    let neighbour = host
        .spawn(component, "neighbour", grant(&["observe"]))
        .await
        .unwrap();
    let flood = |n: u32| format!("flood {n} 127.0.0.1:{} /v1/chat/completions", llm.port);
    let ended_for = async |agent: AgentId, description: String| {
        let task = host.schedule(agent, &description).await.unwrap();
        let info = host.wait_task(task, Duration::from_secs(60)).await.unwrap();
        info.expect("the task ends").state
    };
    let ended = async |description: String| ended_for(hoarder, description).await;

    // Two responses of 1.5 MiB held at once: within the share.
    assert_eq!(
        ended(flood(2)).await,
        toka_host::TaskState::Completed {
            output: b"status 200=2".to_vec()
        }
    );
    let memory = host.memory();
    assert!(
        memory.peak >= 4 << 20,
        "room for two responses was taken: {memory:?}"
    );
    let idle = memory.in_use;
    assert!(idle < 4 << 20, "the responses were given back: {memory:?}");

    // Another tree's agent is done, its instance kept warm.
    let _ = ended_for(neighbour, flood(0)).await;
    // Its instance is parked once its actor is done (right after the
    // task's end is applied, which may be seen first).
    host.run_until_idle().await.unwrap();
    assert_eq!(host.warm_instances(), 2);

    // Two responses kept past the task, unread: an instance holding them is
    // not kept warm (they would stay charged while it idles), and dropping
    // it gives their bytes back.
    let park = format!("park 2 127.0.0.1:{} /v1/chat/completions", llm.port);
    assert_eq!(
        ended(park).await,
        toka_host::TaskState::Completed {
            output: b"parked 2".to_vec()
        }
    );
    assert_eq!(host.warm_instances(), 1);
    let in_use = host.memory().in_use;
    assert!(in_use < idle + (1 << 20), "{:?}", host.memory());

    // Eight at once: each takes room for a request's body (1 MiB) and a
    // response (2 MiB), and the third passes the tree's share. The task
    // stops before that request is journaled, as the host's condition (not
    // the agent's fault), is tried again, and fails naming the share.
    let toka_host::TaskState::Failed { reason } = ended(flood(8)).await else {
        panic!("the flood of eight completed");
    };
    assert!(
        reason.starts_with("the host could not run the task: holding an HTTP exchange: the agent's tree holds its share of the host's memory for agents: ")
            && reason.contains("would pass the share of 9MiB"),
        "{reason}"
    );
    let events = logged(&host);
    let conditions = events
        .iter()
        .filter(|e| matches!(e, Event::HostCondition { .. }))
        .count();
    assert!(conditions >= 2, "{conditions} host conditions recorded");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::AgentFaulted { .. })),
        "the agent was blamed"
    );
    // Only the tree's own instances were let go for its share: the
    // neighbour's is still warm.
    assert_eq!(host.warm_instances(), 1);
    // Every reservation was given back; the server never saw more than
    // the share let out in each of the three attempts (two).
    assert!(host.memory().in_use <= in_use, "{:?}", host.memory());
    assert!(
        llm.seen().len() <= 4 + 3 * 2,
        "{} requests",
        llm.seen().len()
    );
    host.shutdown().await.unwrap();
    toka(&data, &["verify"]).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_s_certificate_is_checked_against_the_web_s_roots() {
    // The host sends an agent's requests itself: over TLS, the server's
    // certificate must chain to the web's roots and be for the name. A
    // `toka serve` with a self-signed certificate for 127.0.0.1 is refused
    // whatever the right grants.
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = crate::cluster::certificate(tmp.path());
    let served = crate::serve::Served::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let authority = served.url.trim_end_matches('/').to_owned();
    let port: u16 = authority.rsplit(':').next().unwrap().parse().unwrap();
    assert!(authority.starts_with("https://127.0.0.1:"), "{authority}");
    let (_data_dir, data) = temp_data();
    let host = keyed_host(&data, AgentLimits::default()).await;
    let (_, agent) = an_http_agent(&host, "tls", port).await;
    let task = host
        .schedule(agent, &format!("get {authority} /v1/status"))
        .await
        .unwrap();
    let info = host
        .wait_task(task, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the task ends");
    let toka_host::TaskState::Failed { reason } = &info.state else {
        panic!("{info:?}");
    };
    assert!(reason.contains("ConnectionRefused"), "{reason}");
    let failures: Vec<String> = logged(&host)
        .into_iter()
        .filter_map(|e| match e {
            Event::HttpResponded { failure, .. } => failure,
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("connection: TLS with 127.0.0.1: invalid peer certificate"),
        "{failures:?}"
    );
    host.shutdown().await.unwrap();
}
