//! `toka serve`: the real binary on an ephemeral loopback port, driven by a
//! real HTTP client. Every JSON answer is checked against the server's own
//! `/v1/openapi.json` (status documented, body of the documented schema).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{agent_bytes, events_json, grant, temp_data, toka};

/// A `toka serve` process on its own data dir.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) data: PathBuf,
    pub(crate) url: String,
    /// The local admin token the server registered.
    pub(crate) admin: String,
    _dir: Option<tempfile::TempDir>,
}

impl Served {
    /// Starts `toka serve` on a fresh data dir.
    pub(crate) fn start(extra: &[&str]) -> Served {
        let (dir, data) = temp_data();
        let mut served = Served::start_on(&data, extra);
        served._dir = Some(dir);
        served
    }

    /// Starts `toka serve` on `data`, and waits until it registered.
    #[allow(clippy::zombie_processes, reason = "Served's Drop waits for it")]
    pub(crate) fn start_on(data: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_toka"))
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start toka serve");
        let pid = child.id();
        let mut waited = 0;
        loop {
            if let Ok(Some((registration, admin))) =
                toka_server::registration::Registration::read(data)
                && registration.pid == pid
            {
                return Served {
                    child,
                    data: data.to_owned(),
                    url: registration.url,
                    admin,
                    _dir: None,
                };
            }
            if waited >= 600 {
                let _ = child.kill();
                let output = child.wait_with_output();
                panic!("toka serve did not register within a minute: {output:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
            waited += 1;
        }
    }

    /// Sends SIGTERM and waits for the exit; returns its code and stderr.
    pub(crate) fn stop(&mut self) -> (i32, String) {
        use std::io::Read as _;
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that checks every answer against the OpenAPI document.
pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
    doc: Value,
}

/// One answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Answer {
    /// The error's code, for an error answer.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    /// The error's message.
    pub(crate) fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

impl Api {
    pub(crate) async fn new(served: &Served) -> Api {
        // The server's rustls provider (ring), for reqwest's builds too.
        toka_server::install_crypto();
        let http = reqwest::Client::new();
        let doc: Value = http
            .get(format!("{}/v1/openapi.json", served.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            url: served.url.clone(),
            token: served.admin.clone(),
            http,
            doc,
        }
    }

    /// The same client presenting another token.
    pub(crate) fn with_token(&self, token: &str) -> Api {
        Api {
            url: self.url.clone(),
            token: token.to_owned(),
            http: self.http.clone(),
            doc: self.doc.clone(),
        }
    }

    /// An authenticated request to `path`.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// `method` on `path` (matching the document's `template`), with an
    /// optional JSON body; the answer is validated against the document.
    pub(crate) async fn call(
        &self,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(method, template, request).await
    }

    /// Sends a prepared request and validates the answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        template: &str,
        request: reqwest::RequestBuilder,
    ) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = if content_type.starts_with("application/json") {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{template}: not JSON ({e}): {text}"))
        } else {
            Value::String(text)
        };
        if let Err(problem) = self.check(&method, template, status, &content_type, &body) {
            panic!("{method} {template} answered {status} {body}: {problem}");
        }
        Answer { status, body }
    }

    pub(crate) async fn get(&self, template: &str, path: &str) -> Answer {
        self.call(Method::GET, template, path, None).await
    }

    pub(crate) async fn delete(&self, template: &str, path: &str) -> Answer {
        self.call(Method::DELETE, template, path, None).await
    }

    pub(crate) async fn post(&self, template: &str, path: &str, body: Value) -> Answer {
        self.call(Method::POST, template, path, Some(body)).await
    }

    fn check(
        &self,
        method: &Method,
        template: &str,
        status: StatusCode,
        content_type: &str,
        body: &Value,
    ) -> Result<(), String> {
        let operation = &self.doc["paths"][template][method.as_str().to_ascii_lowercase()];
        if operation.is_null() {
            return Err("the document has no such operation".into());
        }
        let response = &operation["responses"][status.as_str()];
        if response.is_null() {
            return Err(format!("status {status} is not documented"));
        }
        let Some(content) = response["content"].as_object() else {
            return Ok(());
        };
        let media = content_type.split(';').next().unwrap_or_default();
        let Some(described) = content.get(media) else {
            return Err(format!(
                "content type {media} is not documented ({:?})",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if media == "application/json" {
            validate(&self.doc, &described["schema"], body, "$")?;
        }
        Ok(())
    }
}

/// Checks `value` against an OpenAPI 3.1 schema (the subset utoipa emits:
/// `$ref`, `type` as a name or a list, `properties`, `required`, `items`,
/// `oneOf`/`anyOf`/`allOf`, `enum`, `minimum`).
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unsupported $ref {reference}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: $ref to a missing schema {name}"));
        }
        return validate(doc, target, value, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options
                .iter()
                .filter(|s| validate(doc, s, value, at).is_ok())
                .count();
            if fits == 0 || (key == "oneOf" && fits > 1 && !value.is_null()) {
                return Err(format!("{at}: {value} fits {fits} of the {key} options"));
            }
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            validate(doc, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| fits_type(t, value)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} is below the minimum {min}"));
    }
    if let Value::Object(object) = value {
        if let Some(required) = schema["required"].as_array() {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{at}: the required `{name}` is missing"));
                }
            }
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                if let Some(v) = object.get(name) {
                    validate(doc, property, v, &format!("{at}.{name}"))?;
                }
            }
            if schema["additionalProperties"] == Value::Bool(false) {
                for name in object.keys() {
                    if !properties.contains_key(name) {
                        return Err(format!("{at}: `{name}` is not in the schema"));
                    }
                }
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(doc, item, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn fits_type(t: &str, value: &Value) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

/// Uploads a bundled component.
pub(crate) async fn install(api: &Api, name: &str) -> Answer {
    install_bytes(api, name, toka_agents::bundled(name).unwrap().to_vec()).await
}

/// Uploads `bytes` as the component `name`.
pub(crate) async fn install_bytes(api: &Api, name: &str, bytes: Vec<u8>) -> Answer {
    api.send(
        Method::POST,
        "/v1/components",
        api.request(Method::POST, &format!("/v1/components?name={name}"))
            .header("content-type", "application/wasm")
            .body(bytes),
    )
    .await
}

/// Spawns a root agent with `rights`.
pub(crate) async fn spawn(api: &Api, component: &str, name: &str, rights: &[&str]) -> String {
    let answer = api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"component": component, "name": name, "rights": rights}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    answer.body["id"].as_str().unwrap().to_owned()
}

/// Terminates `agent` through the API; the answer must be 200.
pub(crate) async fn terminate(api: &Api, agent: &str) -> Answer {
    let path = format!("/v1/agents/{agent}/terminate");
    let answer = api
        .post(
            "/v1/agents/{id}/terminate",
            &path,
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer
}

/// An API client at operator `level`, with a token the API issued.
pub(crate) async fn operator(api: &Api, level: &str) -> Api {
    let issued = api
        .post("/v1/tokens", "/v1/tokens", json!({"operator": level}))
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{issued:?}");
    api.with_token(issued.body["token"].as_str().unwrap())
}

/// Schedules a task and waits for it to end; returns the task's view.
pub(crate) async fn run_task(api: &Api, agent: &str, description: &str) -> Value {
    let scheduled = api
        .post(
            "/v1/agents/{id}/tasks",
            &format!("/v1/agents/{agent}/tasks"),
            json!({"description": description}),
        )
        .await;
    assert_eq!(scheduled.status, StatusCode::CREATED, "{scheduled:?}");
    let task = scheduled.body["id"].as_str().unwrap();
    let done = api
        .get("/v1/tasks/{id}", &format!("/v1/tasks/{task}?wait=30s"))
        .await;
    assert_eq!(done.status, StatusCode::OK);
    done.body
}

async fn head(api: &Api) -> u64 {
    api.get("/v1/status", "/v1/status").await.body["head"]["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_pages_by_cursor_from_where_the_last_page_ended() {
    let mut served = Served::start(&[]);
    let api = Api::new(&served).await;
    let installed = install(&api, "counter").await;
    let digest = installed.body["digest"].as_str().unwrap().to_owned();
    let mut spawned = Vec::new();
    for i in 0..5 {
        spawned.push(spawn(&api, &digest, &format!("paged-{i}"), &["observe"]).await);
    }
    spawned.sort();
    let (mut listed, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/agents?limit=2&cursor={c}"),
            None => "/v1/agents?limit=2".to_owned(),
        };
        let page = api.get("/v1/agents", &path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page:?}");
        listed.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, spawned, "every agent once, in id order");
    assert_eq!(pages, 3);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_as_its_openapi_document_says() {
    let mut served = Served::start(&[
        "--memory-budget",
        "3GiB",
        "--state-budget",
        "1GiB",
        "--disk-reserve",
        "100MiB",
    ]);
    let api = Api::new(&served).await;
    // The document itself: every /v1 resource of the issue is in it.
    for path in [
        "/v1/components",
        "/v1/components/{component}",
        "/v1/agents",
        "/v1/agents/{id}",
        "/v1/agents/{id}/terminate",
        "/v1/agents/forget",
        "/v1/agents/{id}/resume",
        "/v1/agents/{id}/state",
        "/v1/agents/{id}/tasks",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tokens",
        "/v1/tokens/attenuate",
        "/v1/tokens/inspect",
        "/v1/tokens/revoke",
        "/v1/events",
        "/v1/events/stream",
        "/v1/events/tickets",
        "/v1/verify",
        "/v1/snapshot",
        "/v1/archive",
        "/v1/archive/{id}",
        "/v1/archive/files",
        "/v1/archive/files/{name}",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            api.doc["paths"][path].is_object(),
            "{path} is not documented"
        );
    }
    assert_eq!(api.get("/healthz", "/healthz").await.status, StatusCode::OK);

    // Components.
    let installed = install(&api, "counter").await;
    assert_eq!(installed.status, StatusCode::CREATED);
    let digest = installed.body["digest"].as_str().unwrap().to_owned();
    assert_eq!(install(&api, "counter").await.status, StatusCode::OK);
    let list = api.get("/v1/components", "/v1/components").await;
    assert_eq!(list.body["items"][0]["digest"], digest.as_str());
    let one = api
        .get("/v1/components/{component}", "/v1/components/counter")
        .await;
    assert_eq!(one.body["digest"], digest.as_str());

    // Agents and tasks.
    let agent = spawn(
        &api,
        &digest,
        "tally",
        &["observe", "state", "schedule self"],
    )
    .await;
    let task = run_task(&api, &agent, "5").await;
    assert_eq!(task["status"], "completed", "{task}");
    let task_id = task["id"].as_str().unwrap();
    let got = api
        .get("/v1/tasks/{id}", &format!("/v1/tasks/{task_id}"))
        .await;
    assert_eq!(got.body["status"], "completed");
    assert!(got.body["ended_seq"].as_u64().is_some());
    let tasks = api
        .get("/v1/tasks", &format!("/v1/tasks?agent={agent}"))
        .await;
    assert_eq!(tasks.status, StatusCode::OK);
    let agents = api
        .get(
            "/v1/agents",
            &format!("/v1/agents?status=active&parent=system&component={digest}"),
        )
        .await;
    assert_eq!(agents.body["items"].as_array().unwrap().len(), 1);
    let detail = api
        .get("/v1/agents/{id}", &format!("/v1/agents/{agent}"))
        .await;
    assert_eq!(detail.body["completed"], 1);
    assert!(
        detail.body["grants"]["rights"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "observe")
    );
    let state = api
        .get(
            "/v1/agents/{id}/state",
            &format!("/v1/agents/{agent}/state"),
        )
        .await;
    assert_eq!(state.status, StatusCode::OK);
    assert!(
        !state.body["items"].as_array().unwrap().is_empty(),
        "{state:?}"
    );

    // Tokens.
    let issued = api
        .post(
            "/v1/tokens",
            "/v1/tokens",
            json!({"rights": ["observe"], "operator": "read"}),
        )
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{issued:?}");
    let token = issued.body["token"].as_str().unwrap().to_owned();
    let inspected = api
        .post(
            "/v1/tokens/inspect",
            "/v1/tokens/inspect",
            json!({"token": token}),
        )
        .await;
    assert_eq!(inspected.status, StatusCode::OK);
    assert_eq!(inspected.body["rooted_here"], true);
    let narrowed = api
        .post(
            "/v1/tokens/attenuate",
            "/v1/tokens/attenuate",
            json!({"token": token, "rights": ["observe"]}),
        )
        .await;
    assert_eq!(narrowed.status, StatusCode::OK, "{narrowed:?}");

    // The log.
    let events = api.get("/v1/events", "/v1/events?from=1&limit=5").await;
    assert_eq!(events.body["events"].as_array().unwrap().len(), 5);
    assert!(events.body["next_from"].as_u64().is_some());
    let filtered = api
        .get(
            "/v1/events",
            &format!("/v1/events?agent={agent}&kind=task_completed"),
        )
        .await;
    assert_eq!(filtered.body["events"].as_array().unwrap().len(), 1);
    let records = api
        .get("/v1/log/records", "/v1/log/records?from=1&limit=3")
        .await;
    assert_eq!(records.body["records"].as_array().unwrap().len(), 3);
    let encoded = api.get("/v1/log/state", "/v1/log/state").await;
    assert!(encoded.body["snapshot"].as_str().unwrap().len() > 10);
    // Readers asking at once take turns and share one encoding; none gets
    // a state older than what was durable when it asked.
    let seq = |answer: &Answer| answer.body["head"]["seq"].as_u64().unwrap();
    let (a, b, c) = tokio::join!(
        api.get("/v1/log/state", "/v1/log/state"),
        api.get("/v1/log/state", "/v1/log/state"),
        api.get("/v1/log/state", "/v1/log/state"),
    );
    for answer in [&a, &b, &c] {
        assert_eq!(answer.body, encoded.body, "nothing changed in between");
    }
    let done = run_task(&api, &agent, "1").await;
    assert_eq!(done["status"], "completed", "{done:?}");
    let after = api.get("/v1/log/state", "/v1/log/state").await;
    assert!(
        seq(&after) > seq(&encoded),
        "the task's records are durable, so the state holds them: {} then {}",
        seq(&encoded),
        seq(&after)
    );
    let snapshot = api.post("/v1/snapshot", "/v1/snapshot", json!({})).await;
    assert!(snapshot.status.is_success(), "{snapshot:?}");
    let started = api
        .post("/v1/verify", "/v1/verify", json!({"auth": true}))
        .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let job = started.body["id"].as_u64().unwrap();
    let verified = loop {
        let job = api
            .get("/v1/verify/{id}", &format!("/v1/verify/{job}"))
            .await;
        if job.body["state"] != "running" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(verified.body["state"], "ok", "{verified:?}");
    assert!(verified.body["decisions"].as_u64().unwrap() > 0);
    assert_eq!(api.get("/v1/verify", "/v1/verify").await.body["id"], job);
    let ticket = api
        .post("/v1/events/tickets", "/v1/events/tickets", json!({}))
        .await;
    assert_eq!(ticket.status, StatusCode::CREATED);

    // System.
    let status = api.get("/v1/status", "/v1/status").await;
    assert_eq!(status.body["agents"]["active"], 1);
    let metrics = api.get("/metrics", "/metrics").await;
    let text = metrics.body.as_str().unwrap();
    for name in [
        "toka_ops_applied_total",
        "toka_commit_seconds_bucket",
        "toka_commit_batch_records_count",
        "toka_agents{status=\"active\"} 1",
        "toka_tasks_queued",
        "toka_denials_total",
        "toka_quarantines_total",
        "toka_quota_hits_total",
        "toka_tokens_verified_total",
        "toka_capability_checks_total",
        "toka_authorizations_total",
        "toka_running_actors",
        "toka_warm_instances",
        "toka_agent_memory_bytes ",
        "toka_agent_memory_peak_bytes ",
        // As given on the command line.
        "toka_agent_memory_budget_bytes 3221225472\n",
        "toka_agent_state_budget_bytes 1073741824\n",
        "toka_agent_state_bytes ",
        "toka_disk_reserve_bytes 104857600\n",
        // A data dir on a disk: the writer looked at its free space.
        "toka_disk_free_bytes ",
        // The one asked for above, under the lock: the state is small.
        "toka_snapshots_total 1\n",
        "toka_snapshots_off_lock_total 0\n",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("toka_"), "{line}");
    }

    // Terminate; resume of an agent that is not quarantined is a conflict.
    let resumed = api
        .post(
            "/v1/agents/{id}/resume",
            &format!("/v1/agents/{agent}/resume"),
            json!({}),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::CONFLICT);
    // A component an agent runs is not removed; the answer names the agent.
    let in_use = api
        .delete(
            "/v1/components/{component}",
            &format!("/v1/components/{digest}"),
        )
        .await;
    assert_eq!(in_use.status, StatusCode::CONFLICT, "{in_use:?}");
    assert!(
        in_use.message().contains(&format!("agent {agent} runs it")),
        "{in_use:?}"
    );
    let terminated = terminate(&api, &agent).await;
    assert_eq!(terminated.body["status"], "terminated");
    // Removed once no agent runs it: then it is gone by name and digest.
    let removed = api
        .delete("/v1/components/{component}", "/v1/components/counter")
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    assert_eq!(removed.body["digest"], digest.as_str());
    for path in [
        "/v1/components/counter".to_owned(),
        format!("/v1/components/{digest}"),
    ] {
        let gone = api.get("/v1/components/{component}", &path).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{gone:?}");
    }
    // The census is counted once per state, and again once it changed.
    let status = api.get("/v1/status", "/v1/status").await;
    assert_eq!(status.body["agents"]["active"], 0, "{status:?}");
    assert_eq!(status.body["agents"]["terminated"], 1, "{status:?}");

    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_one_clear_error_and_write_nothing() {
    let mut served = Served::start(&["--max-component", "512KiB"]);
    let api = Api::new(&served).await;
    let digest = install(&api, "hello").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = spawn(&api, &digest, "hello", &["observe"]).await;
    let before = head(&api).await;
    let url = &api.url;

    // 400: malformed JSON, with the parse error named.
    let malformed = api
        .send(
            Method::POST,
            "/v1/agents",
            api.request(Method::POST, "/v1/agents")
                .header("content-type", "application/json")
                .body("{\"component\": "),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.code(), "invalid_json");
    assert!(malformed.message().contains("EOF"), "{malformed:?}");
    // 415: not JSON at all.
    let media = api
        .send(
            Method::POST,
            "/v1/agents",
            api.request(Method::POST, "/v1/agents")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(media.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // 422: JSON of the wrong shape; a right that does not parse.
    let shape = api
        .post("/v1/agents", "/v1/agents", json!({"name": 3}))
        .await;
    assert_eq!(shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    let right = api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"component": digest, "name": "x", "rights": ["fly away"]}),
        )
        .await;
    assert_eq!(right.status, StatusCode::UNPROCESSABLE_ENTITY, "{right:?}");
    assert!(right.message().contains("fly away"));
    // 404: unknown ids of every kind; 400: ids that are not ids.
    let nobody = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        api.get("/v1/agents/{id}", &format!("/v1/agents/{nobody}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v1/tasks/{id}", &format!("/v1/tasks/{nobody}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v1/components/{component}", "/v1/components/nothing")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/v1/agents/{id}", "/v1/agents/zzz").await.status,
        StatusCode::BAD_REQUEST
    );
    let unknown = api
        .post(
            "/v1/agents/{id}/tasks",
            &format!("/v1/agents/{nobody}/tasks"),
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/verify/{id}", "/v1/verify/99").await.status,
        StatusCode::NOT_FOUND
    );
    let missing = api
        .http
        .get(format!("{url}/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    // 413: bodies over the limits (JSON 1 MiB, components as configured).
    let big = api
        .post(
            "/v1/agents/{id}/tasks",
            &format!("/v1/agents/{agent}/tasks"),
            json!({"description": "x".repeat(2 << 20)}),
        )
        .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.message().contains("at most"), "{big:?}");
    let huge = api
        .send(
            Method::POST,
            "/v1/components",
            api.request(Method::POST, "/v1/components?name=huge")
                .header("content-type", "application/wasm")
                .body(vec![0u8; 600 << 10]),
        )
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Again and again: the client always reads the answer (the server
    // reads the refused body rather than resetting the connection under
    // it).
    for _ in 0..5 {
        let again = api
            .send(
                Method::POST,
                "/v1/components",
                api.request(Method::POST, "/v1/components?name=huge")
                    .header("content-type", "application/wasm")
                    .body(vec![0u8; 3 << 20]),
            )
            .await;
        assert_eq!(again.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    // 422: a component that is not an agent, with the CLI's reason.
    let plain = std::fs::read(crate::agent_path("test-cli")).unwrap();
    let not_agent = api
        .send(
            Method::POST,
            "/v1/components",
            api.request(Method::POST, "/v1/components?name=plain")
                .header("content-type", "application/wasm")
                .body(plain),
        )
        .await;
    assert_eq!(not_agent.status, StatusCode::UNPROCESSABLE_ENTITY);
    let dir = tempfile::tempdir().unwrap();
    let cli = toka(
        &dir.path().join("d"),
        &["run", crate::agent_path("test-cli")],
    );
    assert_ne!(cli.code, 0);
    let reason = not_agent.message();
    assert!(
        cli.stderr.contains(reason),
        "the API says {reason:?}, the CLI {:?}",
        cli.stderr
    );
    // 401: no token, a forged one, garbage; 403: too little.
    let nobody_api = api.with_token("");
    let none = nobody_api.get("/v1/status", "/v1/status").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let elsewhere = tempfile::tempdir().unwrap();
    let forged = toka(
        &elsewhere.path().join("d"),
        &["token", "issue", "--operator", "admin"],
    )
    .ok()
    .trim()
    .to_owned();
    let forged = api
        .with_token(&forged)
        .get("/v1/status", "/v1/status")
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.with_token("not a token")
            .get("/v1/status", "/v1/status")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let reader = toka(&served.data, &["token", "issue", "--operator", "read"])
        .ok()
        .trim()
        .to_owned();
    let denied = api
        .with_token(&reader)
        .post(
            "/v1/agents/{id}/tasks",
            &format!("/v1/agents/{agent}/tasks"),
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.message().contains("operator write"), "{denied:?}");
    // An agent right is no operator right.
    let agent_token = toka(&served.data, &["token", "issue", "--right", "observe"])
        .ok()
        .trim()
        .to_owned();
    let not_operator = api
        .with_token(&agent_token)
        .get("/v1/status", "/v1/status")
        .await;
    assert_eq!(not_operator.status, StatusCode::FORBIDDEN);
    // An expired operator token.
    let expired = api
        .post(
            "/v1/tokens",
            "/v1/tokens",
            json!({"operator": "read", "expires": "1s"}),
        )
        .await;
    assert_eq!(expired.status, StatusCode::CREATED, "{expired:?}");
    let expired = expired.body["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = api
        .with_token(&expired)
        .get("/v1/status", "/v1/status")
        .await;
    assert_eq!(late.status, StatusCode::UNAUTHORIZED, "{late:?}");

    // A token whose holder appended a block that would join a relation
    // with itself six times (10^12 combinations in one query): refused by
    // its shape before anything evaluates it, as a header and as a body.
    let root = toka_host::DataDir::new(&served.data)
        .root_key(None, false)
        .unwrap();
    let mut code: String = (0..100).map(|i| format!("f({i});\n")).collect();
    code.push_str("check if f($a), f($b), f($c), f($d), f($e), f($f), $a + $b == -1;\n");
    let reader_token = biscuit_auth::Biscuit::from_base64(&reader, root.public()).unwrap();
    // The reader's token with a block of `code` appended, as its holder
    // may offline.
    let appended = |code: &str| {
        reader_token
            .append(
                biscuit_auth::builder::BlockBuilder::new()
                    .code(code)
                    .unwrap(),
            )
            .unwrap()
            .to_base64()
            .unwrap()
    };
    let heavy = appended(&code);
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        api.with_token(&heavy).get("/v1/status", "/v1/status"),
    )
    .await
    .expect("the server hung on a crafted token");
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert!(refused.message().contains("at most"), "{refused:?}");
    let attenuated = tokio::time::timeout(
        Duration::from_secs(60),
        api.post(
            "/v1/tokens/attenuate",
            "/v1/tokens/attenuate",
            json!({"token": heavy, "operator": "read"}),
        ),
    )
    .await
    .expect("the server hung on a crafted token");
    assert!(attenuated.status.is_client_error(), "{attenuated:?}");
    // Within every bound on counts (32 facts, 4 checks of 4 alternatives
    // joining 3 predicates), a block whose checks try 32 × 32 × 32
    // combinations each: half a second an evaluation, for each request
    // presenting it, before its cost was read from its text.
    let mut code: String = (0..32).map(|i| format!("f({i});\n")).collect();
    let never = "f($a), f($b), f($c), $a + $b + $c < 0";
    for _ in 0..4 {
        code.push_str(&format!(
            "check if {never} or {never} or {never} or true;\n"
        ));
    }
    let costly = appended(&code);
    let refused = api
        .with_token(&costly)
        .get("/v1/status", "/v1/status")
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    assert!(
        refused.message().contains("combinations of facts"),
        "{refused:?}"
    );
    // A read client narrowing a token evaluates it once a right kept: no
    // more rights at once than a block of a presented token may hold.
    let many: Vec<String> = (0..100).map(|i| format!("spawn c{i}")).collect();
    let narrowed = api
        .with_token(&reader)
        .post(
            "/v1/tokens/attenuate",
            "/v1/tokens/attenuate",
            json!({"token": reader, "rights": many}),
        )
        .await;
    assert_eq!(
        narrowed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{narrowed:?}"
    );
    assert!(narrowed.message().contains("at most 32"), "{narrowed:?}");

    // Nothing of it was written: only the reads above happened.
    assert_eq!(head(&api).await, before);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_tokens_attenuate_and_revoke_and_the_log_records_who_acted() {
    let mut served = Served::start(&[]);
    let admin = Api::new(&served).await;
    let digest = install(&admin, "hello").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = spawn(&admin, &digest, "hello", &["observe"]).await;
    // A write token, issued through the API; narrowed to read.
    let writer = admin
        .post("/v1/tokens", "/v1/tokens", json!({"operator": "write"}))
        .await
        .body;
    let writer_token = writer["token"].as_str().unwrap().to_owned();
    let writer_api = admin.with_token(&writer_token);
    assert_eq!(
        run_task(&writer_api, &agent, "writer").await["status"],
        "completed"
    );
    // write does not imply admin: it cannot mint a token with rights.
    let mint = writer_api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"component": digest, "name": "x", "rights": ["observe"]}),
        )
        .await;
    assert_eq!(mint.status, StatusCode::FORBIDDEN, "{mint:?}");
    assert!(mint.message().contains("operator admin"));
    let reader = writer_api
        .post(
            "/v1/tokens/attenuate",
            "/v1/tokens/attenuate",
            json!({"token": writer_token, "operator": "read"}),
        )
        .await;
    assert_eq!(reader.status, StatusCode::OK, "{reader:?}");
    let reader_api = admin.with_token(reader.body["token"].as_str().unwrap());
    assert_eq!(
        reader_api.get("/v1/status", "/v1/status").await.status,
        StatusCode::OK
    );
    let refused = reader_api
        .post(
            "/v1/agents/{id}/tasks",
            &format!("/v1/agents/{agent}/tasks"),
            json!({"description": "no"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let remove = reader_api
        .delete(
            "/v1/components/{component}",
            &format!("/v1/components/{digest}"),
        )
        .await;
    assert_eq!(remove.status, StatusCode::FORBIDDEN, "{remove:?}");
    // An attenuation cannot widen.
    let widen = reader_api
        .post(
            "/v1/tokens/attenuate",
            "/v1/tokens/attenuate",
            json!({"token": reader.body["token"], "operator": "admin"}),
        )
        .await;
    assert!(widen.status.is_client_error(), "{widen:?}");
    // A stream opened with the attenuated token...
    let stream = reader_api
        .request(Method::GET, "/v1/events/stream?from=1")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // Revoking the write token revokes what was attenuated from it.
    let id = writer["revocation_ids"][0].as_str().unwrap();
    let revoked = admin
        .post(
            "/v1/tokens/revoke",
            "/v1/tokens/revoke",
            json!({"revocation_id": id}),
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    assert_eq!(
        writer_api.get("/v1/status", "/v1/status").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        reader_api.get("/v1/status", "/v1/status").await.status,
        StatusCode::UNAUTHORIZED
    );
    // ...and ends the streams it opened.
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        read_sse(stream, usize::MAX, Duration::ZERO),
    )
    .await
    .expect("the stream of a revoked token did not end");
    assert!(!read.is_empty());
    // Revoking twice is a conflict.
    let again = admin
        .post(
            "/v1/tokens/revoke",
            "/v1/tokens/revoke",
            json!({"revocation_id": id}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    // Every mutation names the operator token that made it, and the audit
    // re-checks those decisions.
    let events = events_json(&served.data);
    let scheduled: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "task_scheduled")
        .collect();
    assert_eq!(scheduled.len(), 1);
    let verify = toka(&served.data, &["verify", "--auth"]);
    assert!(verify.ok().starts_with("ok "), "{verify:?}");
    // install, spawn, schedule (as admin and as the writer), revoke.
    let operator: u64 = verify
        .stdout
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", verify.stdout));
    assert!(operator >= 4, "{}", verify.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_schedules_once_and_is_recorded() {
    let mut served = Served::start(&[]);
    let api = Api::new(&served).await;
    let digest = install(&api, "hello").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = spawn(&api, &digest, "hello", &["observe"]).await;
    let template = "/v1/agents/{id}/tasks";
    let schedule = |description: &'static str, key: &'static str| {
        api.request(Method::POST, &format!("/v1/agents/{agent}/tasks"))
            .header("idempotency-key", key)
            .json(&json!({"description": description}))
    };
    let first = api
        .send(Method::POST, template, schedule("once", "order-17"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = api
        .send(Method::POST, template, schedule("once", "order-17"))
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body["id"], first.body["id"]);
    let other = api
        .send(Method::POST, template, schedule("twice", "order-17"))
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{other:?}");
    let long_key = "k".repeat(300);
    let too_long = api
        .send(
            Method::POST,
            template,
            api.request(Method::POST, &format!("/v1/agents/{agent}/tasks"))
                .header("idempotency-key", long_key)
                .json(&json!({"description": "x"})),
        )
        .await;
    assert!(too_long.status.is_client_error(), "{too_long:?}");
    let (code, _) = served.stop();
    assert_eq!(code, 0);
    // Once in the log; the key survives a restart.
    let scheduled = events_json(&served.data)
        .into_iter()
        .filter(|e| e["kind"] == "task_scheduled")
        .count();
    assert_eq!(scheduled, 1);
    let mut again = Served::start_on(&served.data, &[]);
    let api = Api::new(&again).await;
    let after = api
        .send(Method::POST, template, {
            api.request(Method::POST, &format!("/v1/agents/{agent}/tasks"))
                .header("idempotency-key", "order-17")
                .json(&json!({"description": "once"}))
        })
        .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body["id"], first.body["id"]);
    assert_eq!(again.stop().0, 0);
}

/// Reads an SSE stream: (id, data) of each message, until `n` or the end.
async fn read_sse(response: reqwest::Response, n: usize, slow: Duration) -> Vec<(u64, Value)> {
    use futures_util::StreamExt as _;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut messages = Vec::new();
    while messages.len() < n {
        // The end of the stream, or the connection closed under it.
        let Some(Ok(chunk)) = stream.next().await else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id {
                messages.push((id, serde_json::from_str(&data).unwrap()));
                if !slow.is_zero() {
                    tokio::time::sleep(slow).await;
                }
            }
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_consumer_misses_nothing_and_resumes_without_gaps() {
    let mut served = Served::start(&[]);
    let api = Api::new(&served).await;
    let digest = install(&api, "hello").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = spawn(&api, &digest, "hello", &["observe"]).await;
    let start = head(&api).await + 1;
    let open = |from: Option<u64>, last: Option<u64>| {
        let mut request = api.request(Method::GET, "/v1/events/stream");
        if let Some(from) = from {
            request = request.query(&[("from", from)]);
        }
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        request.send()
    };
    let slow = open(Some(start), None).await.unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert!(
        slow.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Many records, committed faster than the consumer reads.
    let tasks = 400;
    let mut scheduled = Vec::new();
    for i in 0..tasks {
        let answer = api
            .post(
                "/v1/agents/{id}/tasks",
                &format!("/v1/agents/{agent}/tasks"),
                json!({"description": format!("n{i}")}),
            )
            .await;
        scheduled.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    for task in &scheduled {
        let done = api
            .get("/v1/tasks/{id}", &format!("/v1/tasks/{task}?wait=30s"))
            .await;
        assert_eq!(done.body["status"], "completed");
    }
    let end = head(&api).await;
    let expected = usize::try_from(end - start + 1).unwrap();
    // Half of it slowly, then drop the connection.
    let first = read_sse(slow, expected / 2, Duration::from_millis(2)).await;
    let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (start..start + ids.len() as u64).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    // Resume with Last-Event-ID: the rest, no gap, no duplicate.
    let last = *ids.last().unwrap();
    let rest = read_sse(
        open(None, Some(last)).await.unwrap(),
        expected - first.len(),
        Duration::ZERO,
    )
    .await;
    let rest_ids: Vec<u64> = rest.iter().map(|(id, _)| *id).collect();
    assert_eq!(rest_ids, (last + 1..=end).collect::<Vec<_>>());
    // Every observation arrived, in order, with the record's events.
    let observed = first
        .iter()
        .chain(&rest)
        .flat_map(|(_, record)| record["events"].as_array().unwrap().clone())
        .filter(|e| e["kind"] == "observation_emitted")
        .count();
    assert_eq!(observed, tasks);
    // Filters: only this agent's completions.
    let filtered = api
        .request(Method::GET, "/v1/events/stream")
        .query(&[
            ("from", "1"),
            ("kind", "task_completed"),
            ("agent", agent.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let completions = read_sse(filtered, tasks, Duration::ZERO).await;
    assert!(completions.iter().all(|(_, r)| {
        r["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "task_completed")
    }));
    assert_eq!(
        completions
            .iter()
            .map(|(_, r)| r["events"].as_array().unwrap().len())
            .sum::<usize>(),
        tasks
    );
    // A ticket opens one stream, once.
    let ticket = api
        .post("/v1/events/tickets", "/v1/events/tickets", json!({}))
        .await
        .body["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream = |ticket: String| {
        api.http
            .get(format!("{}/v1/events/stream", api.url))
            .query(&[("ticket", ticket), ("from", "1".into())])
            .send()
    };
    assert_eq!(
        stream(ticket.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        stream(ticket).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(served.stop().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_with_work_in_flight_loses_nothing_and_runs_nothing_twice() {
    let mut served = Served::start(&["--grace", "0s"]);
    let api = Api::new(&served).await;
    let digest = install(&api, "hello").await.body["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = spawn(&api, &digest, "hello", &["observe"]).await;
    let tasks = 300;
    let mut scheduled = Vec::new();
    for i in 0..tasks {
        let answer = api
            .post(
                "/v1/agents/{id}/tasks",
                &format!("/v1/agents/{agent}/tasks"),
                json!({"description": format!("t{i}")}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
        scheduled.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    // Stop while the queue is still being worked through.
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        toka_server::registration::Registration::read(&served.data)
            .unwrap()
            .is_none(),
        "the registration outlived the server"
    );
    let done_before = events_json(&served.data)
        .iter()
        .filter(|e| e["kind"] == "task_completed")
        .count();
    // The next start finishes what was left.
    let mut again = Served::start_on(&served.data, &[]);
    let api = Api::new(&again).await;
    for task in &scheduled {
        let done = api
            .get("/v1/tasks/{id}", &format!("/v1/tasks/{task}?wait=30s"))
            .await;
        assert_eq!(done.body["status"], "completed", "{done:?}");
    }
    assert_eq!(again.stop().0, 0);
    let events = events_json(&served.data);
    let mut completed: BTreeMap<String, usize> = BTreeMap::new();
    let mut observed: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        if e["kind"] == "task_completed" {
            *completed
                .entry(e["task"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if e["kind"] == "observation_emitted" {
            *observed
                .entry(e["cause"]["task"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(
        completed.len(),
        tasks,
        "{done_before} were done before the stop"
    );
    assert!(
        completed.values().all(|n| *n == 1),
        "a task completed twice"
    );
    assert!(
        observed.values().all(|n| *n == 1),
        "a task's observation was made twice"
    );
    assert!(toka(&served.data, &["verify"]).ok().starts_with("ok "));
}

#[test]
fn a_listen_address_in_use_is_one_clear_line_and_writes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, data) = temp_data();
    let run = toka(&data, &["serve", "--listen", &addr]);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&addr) && run.stderr.contains("in use"),
        "{}",
        run.stderr
    );
    assert!(!data.exists(), "the data dir was created");
    // Plain HTTP on a public address is refused unless told otherwise.
    let run = toka(&data, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("without TLS"), "{}", run.stderr);
    assert!(!data.exists());
}

#[test]
fn the_cli_works_through_a_running_server_with_the_same_output() {
    // The same commands on a data dir without a server...
    let (_dir, alone) = temp_data();
    let local = toka(&alone, &["run", "hello", "--task", "one", "--task", "two"]);
    // ...and with one holding it.
    let mut served = Served::start(&[]);
    let remote = toka(
        &served.data,
        &["run", "hello", "--task", "one", "--task", "two"],
    );
    assert_eq!(remote.code, 0, "{remote:?}");
    assert_eq!(remote.stdout, local.ok());
    assert_eq!(remote.stderr, local.stderr);
    // Again: the agent is reused.
    assert_eq!(
        toka(&served.data, &["run", "hello", "--task", "three"]).ok(),
        "hello: Hello, three!\n"
    );
    let state = toka(&served.data, &["state"]);
    assert!(state.ok().contains("completed 3"), "{}", state.stdout);
    let events = toka(&served.data, &["events"]).ok().to_owned();
    assert!(events.contains("hello observed: Hello, three!"));
    assert!(
        toka(&served.data, &["snapshot"])
            .ok()
            .starts_with("snapshot written at record")
    );
    let token = toka(&served.data, &["token", "issue", "--right", "observe"])
        .ok()
        .to_owned();
    let file = served.data.join("t.token");
    std::fs::write(&file, &token).unwrap();
    let inspect = toka(&served.data, &["token", "inspect", file.to_str().unwrap()])
        .ok()
        .to_owned();
    let id = inspect
        .lines()
        .find_map(|l| l.trim().strip_prefix("revocation id: "))
        .unwrap()
        .to_owned();
    assert_eq!(
        toka(&served.data, &["token", "revoke", &id, "--force"]).ok(),
        format!("revoked {id}\n")
    );
    let bad = toka(&served.data, &["agent", "resume", "hello"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("not quarantined"), "{}", bad.stderr);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        toka(&served.data, &["verify", "--auth"])
            .ok()
            .starts_with("ok ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_log_fails_stops_with_the_reason() {
    // A server whose log cannot be written (a full disk) stops with the
    // reason instead of answering on as if it could (regression: only a
    // signal stopped it).
    use toka_host::{DataDir, OperatorLevel};
    let (_tmp, data) = temp_data();
    let dir = DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let redb = dir
        .open_or_create(&toka_kernel::Limits::default(), &root)
        .unwrap();
    // The data dir's redb file, refusing appends after the first few.
    let store = crate::hardening::Failing::over(Arc::new(redb), 5, false);
    let (host, agent) = crate::hardening::hello_on(Arc::clone(&store), root).await;
    let admin = host
        .mint(&[OperatorLevel::Admin.right()], &[], None)
        .unwrap()
        .to_base64();
    let (url, _stop, served) = serve_here(host, store, loopback()).await;
    let http = reqwest::Client::new();
    // A server of a library host, registered in no data dir, has nowhere
    // to write an archive: it says so instead of writing one elsewhere.
    let archive = http
        .post(format!("{url}/v1/archive"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(archive.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = archive.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cannot_archive", "{body}");
    let mut refused = None;
    for _ in 0..100 {
        let answer = http
            .post(format!("{url}/v1/agents/{agent}/tasks"))
            .bearer_auth(&admin)
            .json(&json!({"description": "x"}))
            .send()
            .await;
        match answer {
            Ok(answer) if answer.status() == StatusCode::CREATED => {}
            other => {
                refused = Some(format!("{other:?}"));
                break;
            }
        }
    }
    assert!(
        refused.is_some(),
        "the host took 100 tasks on a failing log"
    );
    // Bounded only so that a regression fails instead of hanging the suite.
    let ended = tokio::time::timeout(Duration::from_secs(60), served)
        .await
        .expect("the server stopped")
        .unwrap();
    let err = ended.unwrap_err().to_string();
    assert!(
        err.contains("committing the log failed") && err.contains("No space left on device"),
        "{err}"
    );
    assert!(
        http.get(format!("{url}/v1/status")).send().await.is_err(),
        "the server still answers"
    );
}

/// Opens `n` TCP connections to `url`'s port from `source` (an address on
/// loopback) and sends nothing on them.
async fn silent_connections(url: &str, source: [u8; 4], n: usize) -> Vec<std::net::TcpStream> {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut connections = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from((source, 0)))
            .unwrap();
        let stream = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap()
            .into_std()
            .unwrap();
        stream.set_nonblocking(false).unwrap();
        connections.push(stream);
    }
    connections
}

/// How many of `connections` the server still holds open: one it closed
/// reads as the end (or a reset) within `within`.
fn still_open(connections: &mut [std::net::TcpStream], within: Duration) -> usize {
    use std::io::Read as _;
    let mut open = 0;
    for connection in connections {
        connection.set_read_timeout(Some(within)).unwrap();
        if let Err(e) = connection.read(&mut [0u8; 1])
            && matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            open += 1;
        }
    }
    open
}

/// Waits until the server closed every one of `groups`' connections, or
/// panics after 30 s.
fn let_go(groups: &mut [&mut Vec<std::net::TcpStream>]) {
    let started = std::time::Instant::now();
    while groups
        .iter_mut()
        .any(|c| still_open(c, Duration::from_millis(100)) > 0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "silent connections held past 30 s"
        );
    }
}

/// The samples `/metrics` of the server at `url` shows, by name (labels
/// included).
/// A server's configuration on a free loopback port.
fn loopback() -> toka_server::ServeConfig {
    toka_server::ServeConfig::new("127.0.0.1:0".parse().unwrap())
}

/// `host` served in this process as `config` says: its URL, the sender
/// that stops it (when it sends or is dropped), and the serving task.
async fn serve_here(
    host: toka_host::Host,
    store: Arc<dyn toka_host::EventStore>,
    config: toka_server::ServeConfig,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), toka_server::ServeError>>,
) {
    let server = toka_server::Server::bind(config).await.unwrap();
    let url = server.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run(host, store, async {
        let _ = stopped.await;
    }));
    toka_server::install_crypto();
    (url, stop, served)
}

pub(crate) async fn metrics(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> BTreeMap<String, f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_token_cannot_hold_the_server_s_connections() {
    // Opening a connection needs no token. Before the bounds, connections
    // that never sent a request were held for ever: a client opening more
    // than the process's limit of open files kept every other client out.
    let mut served = Served::start(&[
        "--max-connections",
        "24",
        "--max-connections-per-client",
        "8",
    ]);
    toka_server::install_crypto();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let check = || async {
        let metrics = metrics(&http, &served.url, &served.admin).await;
        (
            metrics["toka_connections"] as u64,
            metrics["toka_connections_refused_total"] as u64,
        )
    };

    // Until the server holds and has refused what is wanted (it admits
    // connections in tasks of their own, a moment after they open, and
    // the last request's connection goes a moment after its answer): what
    // it holds and refused then.
    let until = |want: (u64, u64)| async move {
        let started = std::time::Instant::now();
        loop {
            let counts = check().await;
            if counts == want || started.elapsed() > Duration::from_secs(8) {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // One client (one address) gets 8 connections; the rest are closed at
    // once. Others are still served.
    let opened = std::time::Instant::now();
    let mut one = silent_connections(&served.url, [127, 0, 0, 2], 20).await;
    let counts = until((9, 12)).await;
    assert_eq!(counts, (9, 12), "the 8 and the request asking");
    assert_eq!(still_open(&mut one, Duration::from_millis(200)), 8);

    // The silent ones are let go 10 s after they opened without sending a
    // request.
    let_go(&mut [&mut one]);
    assert!(opened.elapsed() >= Duration::from_secs(5), "let go early");

    // A client holding 8 event streams (busy connections), and two
    // holding 8 silent ones each, fill the server's 24. Six newcomers, one
    // connection each, still get in: each takes the place of an idle
    // connection of the network (here an address) holding the most (the
    // silent ones, never the streams); so does a request for the metrics. However the server
    // happens to take them, 31 came for 24 places: 7 were refused or
    // made room.
    let streaming = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..8 {
        let stream = streaming
            .get(format!("{}/v1/events/stream", served.url))
            .bearer_auth(&served.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    let mut four = silent_connections(&served.url, [127, 0, 0, 4], 8).await;
    let mut five = silent_connections(&served.url, [127, 0, 0, 5], 8).await;
    let mut newcomers = Vec::new();
    for last in 6..12 {
        newcomers.extend(silent_connections(&served.url, [127, 0, 0, last], 1).await);
    }
    let silent_open = |four: &mut Vec<_>, five: &mut Vec<_>| {
        still_open(four, Duration::from_millis(50)) + still_open(five, Duration::from_millis(50))
    };
    // Until the server closed those that made room (one not closed yet
    // reads as open).
    let started = std::time::Instant::now();
    while silent_open(&mut four, &mut five) > 10 && started.elapsed() < Duration::from_secs(5) {}
    assert_eq!(silent_open(&mut four, &mut five), 10);
    assert_eq!(still_open(&mut newcomers, Duration::from_millis(50)), 6);
    let counts = metrics(&http, &served.url, &served.admin).await;
    assert_eq!(counts["toka_event_streams"], 8.0, "no stream made room");
    assert_eq!(
        counts["toka_connections_refused_total"] + counts["toka_connections_gave_way_total"],
        12.0 + 7.0,
        "{counts:?}"
    );
    assert!(counts["toka_connections_gave_way_total"] >= 1.0);
    let started = std::time::Instant::now();
    while silent_open(&mut four, &mut five) > 9 && started.elapsed() < Duration::from_secs(5) {}
    assert_eq!(
        silent_open(&mut four, &mut five),
        9,
        "the metrics request took one"
    );
    let_go(&mut [&mut four, &mut five, &mut newcomers]);
    drop(streams);

    // A client that speaks is served as before, and a keep-alive
    // connection left idle is let go after its 30 s (not waited for here).
    let status = http
        .get(format!("{}/v1/status", served.url))
        .bearer_auth(&served.admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("closed a connection as soon as it was accepted")
            && stderr.contains("the client holds its most connections (8)")
            && stderr.contains("closed an idle one of the network holding the most"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_catching_up_keep_one_copy_of_the_state_per_token_family() {
    use toka_host::{DataDir, Host, HostConfig, OperatorLevel};
    use toka_kernel::Limits;

    // A log of 60 000 records, written straight to the data dir's store:
    // a stream from its start has far more to send than the sockets hold.
    const RECORDS: u64 = 60_000;
    let (_tmp, data) = temp_data();
    let dir = DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let store: Arc<dyn toka_host::EventStore> =
        Arc::new(dir.open_or_create(&Limits::default(), &root).unwrap());
    crate::write_revocations(store.as_ref(), RECORDS);
    let host = Host::open(Arc::clone(&store), root, HostConfig::new())
        .await
        .unwrap();
    let read = host
        .mint(&[OperatorLevel::Read.right()], &[], None)
        .unwrap()
        .to_base64();
    let (url, stop, served) = serve_here(host, store, loopback()).await;
    let http = reqwest::Client::new();

    // Three streams of one client from the start, none of them read: each
    // stops mid-way once its socket is full, where it would keep its
    // place (a copy of the state) until read on.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = http
            .get(format!("{url}/v1/events/stream?from=1"))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = metrics(&http, &url, &read).await;
    assert_eq!(held["toka_event_streams"], 3.0, "{held:?}");
    assert_eq!(
        held["toka_event_stream_readers"], 1.0,
        "one place in the log kept for the family, not three: {held:?}"
    );
    // Read on, every stream gets every record, in order.
    for stream in &mut streams {
        let mut text = String::new();
        let mut last = 0u64;
        while last < RECORDS {
            let chunk = stream.chunk().await.unwrap().expect("more records");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let message: String = text.drain(..end + 2).collect();
                if let Some(id) = message.lines().find_map(|l| l.strip_prefix("id: ")) {
                    let id: u64 = id.trim().parse().unwrap();
                    assert_eq!(id, last + 1, "{message}");
                    last = id;
                }
            }
        }
    }
    // Caught up, a stream follows the bus and gives its place back (once
    // the server looks for more after the last record it sent).
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while metrics(&http, &url, &read).await["toka_event_stream_readers"] > 0.0 {
        assert!(
            std::time::Instant::now() < give_up,
            "a stream that caught up kept its place in the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(streams);
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_family_cannot_take_every_stream_or_wait() {
    use toka_host::{DataDir, Host, HostConfig, OperatorLevel};

    // A host on redb whose agents do not run: a task stays queued, and a
    // request waiting for it waits its whole `?wait=`.
    let (_tmp, data) = temp_data();
    let dir = DataDir::new(&data);
    let root = dir.root_key(None, true).unwrap();
    let store: Arc<dyn toka_host::EventStore> = Arc::new(
        dir.open_or_create(&toka_kernel::Limits::default(), &root)
            .unwrap(),
    );
    let mut config = HostConfig::new();
    config.start_agents(false);
    let host = Host::open(Arc::clone(&store), root, config).await.unwrap();
    let hello = host.install("hello", agent_bytes("hello")).await.unwrap();
    let agent = host.spawn(hello, "a", grant(&["observe"])).await.unwrap();
    let task = host.schedule(agent, "never runs").await.unwrap();
    let read = || {
        host.mint(&[OperatorLevel::Read.right()], &[], None)
            .unwrap()
            .to_base64()
    };
    // Two clients, each with a root token of its own: two families.
    let (hostile, other) = (read(), read());
    let mut serving = loopback();
    // One address here is every client: connections are not what is
    // bounded in this test.
    serving.max_connections_per_client(1024);
    let (url, stop, served) = serve_here(host, store, serving).await;
    let http = reqwest::Client::new();

    // Streams: 256 in all, a quarter per family. The hostile client holds
    // its 64; its next is refused, naming its share; the other client
    // still opens one.
    let open = |token: String| {
        http.get(format!("{url}/v1/events/stream"))
            .bearer_auth(token)
            .send()
    };
    let mut streams = Vec::new();
    for _ in 0..64 {
        let stream = open(hostile.clone()).await.unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    let refused = open(hostile.clone()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hold 64 event streams, the most one may"),
        "{body}"
    );
    assert_eq!(open(other.clone()).await.unwrap().status(), StatusCode::OK);
    drop(streams);

    // Waits: 256 per family at once. The hostile client's 257th is
    // refused (429, come back later); the other client's still waits.
    let wait = |token: String| {
        http.get(format!("{url}/v1/tasks/{task}?wait=60s"))
            .bearer_auth(token)
            .send()
    };
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..256 {
        waiting.spawn(wait(hostile.clone()));
    }
    // Once the 256 wait (as /metrics counts them; they wait 60 s).
    let started = std::time::Instant::now();
    while metrics(&http, &url, &other).await["toka_task_waits"] < 256.0 {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the 256 never all waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(10), wait(hostile.clone()))
        .await
        .expect("answered at once, not after its 60 s")
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("have 256 requests waiting for tasks, the most one may"),
        "{body}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), wait(other.clone()))
            .await
            .is_err(),
        "another family's wait is still a wait"
    );
    assert!(waiting.try_join_next().is_none(), "the 256 still wait");
    waiting.abort_all();
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

#[test]
fn a_body_sent_a_byte_at_a_time_is_cut() {
    use std::io::{Read as _, Write as _};
    // A client allowed to send a body could send its head and then a byte
    // now and then, holding a request, a handler and a connection for as
    // long as it liked.
    let served = Served::start(&[]);
    let address = served.url.trim_start_matches("http://").to_owned();
    let mut connection = std::net::TcpStream::connect(&address).unwrap();
    let agent = "0".repeat(32);
    write!(
        connection,
        "POST /v1/agents/{agent}/tasks HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        served.admin
    )
    .unwrap();
    let started = std::time::Instant::now();
    connection
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut answer = Vec::new();
    let mut wrote = started;
    // A byte every 2 s, until the server answers (or 60 s pass).
    while started.elapsed() < Duration::from_secs(60) {
        let mut buf = [0u8; 4096];
        match connection.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) if !answer.is_empty() => break,
            Err(_) => {}
        }
        if answer.is_empty() && wrote.elapsed() >= Duration::from_secs(2) {
            let _ = connection.write_all(b" ");
            wrote = std::time::Instant::now();
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("bad_body") && answer.contains("came too slowly"),
        "{answer}"
    );
    // Cut after the grace (10 s), not at once and not never.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_family_cannot_hold_every_upload() {
    use std::io::Write as _;
    // An upload is read whole into memory (up to 64 MiB) before it waits
    // its turn to compile, and may come at 64 KiB a second. Before the
    // bound, one `write` client held as many as it had connections.
    let served = Served::start(&[]);
    let api = Api::new(&served).await;
    let (hostile, other, third) = (
        operator(&api, "write").await,
        operator(&api, "write").await,
        operator(&api, "write").await,
    );
    let address = served.url.trim_start_matches("http://").to_owned();
    // An upload whose body hardly comes: its head and one byte.
    let slow = |token: &str| {
        let mut connection = std::net::TcpStream::connect(&address).unwrap();
        write!(
            connection,
            "POST /v1/components?name=slow HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/wasm\r\nContent-Length: 10000000\r\n\r\n\0"
        )
        .unwrap();
        connection
    };
    let upload = |client: &Api| {
        client
            .request(Method::POST, "/v1/components?name=small")
            .header("content-type", "application/wasm")
            .body(b"not a component".to_vec())
            .send()
    };
    let refused = |client: Api| async move {
        let answer = upload(&client).await.unwrap();
        let retry = answer.headers().get("retry-after").cloned();
        (answer.status(), retry, answer.text().await.unwrap())
    };
    // Until the server holds `n` uploads (it reads their heads a moment
    // after they are sent).
    let holds = |n: f64| {
        let (http, url, admin) = (api.http.clone(), served.url.clone(), served.admin.clone());
        async move {
            let started = std::time::Instant::now();
            while metrics(&http, &url, &admin).await["toka_uploads"] < n {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "uploads not taken"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let hostile_slow = [slow(&hostile.token), slow(&hostile.token)];
    holds(2.0).await;
    let (status, retry, body) = refused(hostile.with_token(&hostile.token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry.is_some(), "no Retry-After");
    assert!(
        body.contains("this token's family has 2 uploads in progress"),
        "{body}"
    );
    // Another family still uploads (an invalid component: refused by the
    // host, not by the bound).
    let answer = upload(&other).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Two families hold all four: a third family waits for one to end.
    let other_slow = [slow(&other.token), slow(&other.token)];
    holds(4.0).await;
    let (status, _, body) = refused(third.with_token(&third.token)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("4 uploads are in progress"), "{body}");
    // An admin's package has places of its own: it is reviewed (and
    // found not to be a package), not refused.
    let review = api
        .request(Method::POST, "/v1/packages/review")
        .header("content-type", "application/wasm")
        .body(b"not a package".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(review.status(), StatusCode::UNPROCESSABLE_ENTITY);
    drop(other_slow);
    let started = std::time::Instant::now();
    let status = loop {
        let status = upload(&third).await.unwrap().status();
        if status != StatusCode::TOO_MANY_REQUESTS || started.elapsed() > Duration::from_secs(5) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    drop(hostile_slow);
}

/// A server on a fresh data dir (started with the `extra` arguments) with
/// the `test-bench` agent installed and one of it, `name`, spawned with
/// `observe`.
async fn a_bench_agent(name: &str, extra: &[&str]) -> (Served, Api, String) {
    let served = Served::start(extra);
    let api = Api::new(&served).await;
    let installed = install_bytes(&api, "test-bench", agent_bytes("test-bench")).await;
    assert_eq!(installed.status, StatusCode::CREATED, "{installed:?}");
    let agent = spawn(&api, "test-bench", name, &["observe"]).await;
    (served, api, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_events_holds_a_bounded_number_of_bytes() {
    // An observation may be 1 MiB. Before the bound a page of events read
    // up to 1 000 records, and held and encoded them all for one request:
    // a gigabyte for a `read` client, given an agent that observes much.
    let (_served, api, agent) = a_bench_agent("big", &[]).await;
    let task = run_task(&api, &agent, "observe 12 1048576").await;
    assert_eq!(task["status"], "completed", "{task}");
    let (mut from, mut pages, mut observed) = (1, 0, 0);
    loop {
        let path = format!("/v1/events?from={from}&limit=1000&kind=observation_emitted");
        let page = api.get("/v1/events", &path).await;
        assert_eq!(page.status, StatusCode::OK);
        let events = page.body["events"].as_array().unwrap().len();
        // 4 MiB read, and the record that passed it; and 4 MiB of JSON, and
        // the record that passed it: an observation of 1 MiB of control
        // characters (`test-bench` observes byte 7) is 6 MiB as JSON text,
        // so a page holds one (five, 30 MiB, before the JSON was counted).
        assert!(events <= 1, "{events} observations of 1 MiB in one page");
        let sent = serde_json::to_vec(&page.body).unwrap().len();
        assert!(sent < 7 << 20, "a page of {sent} bytes");
        observed += events;
        pages += 1;
        match page.body["next_from"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    // None is lost to the bound.
    assert_eq!(observed, 12);
    assert!(pages >= 12, "{pages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_tasks_and_an_agent_s_detail_hold_a_bounded_number_of_bytes() {
    // A queue holds up to 1 024 tasks, each described in up to 4 KiB, six
    // times that as JSON when the text is control characters. Before the
    // bounds a page of tasks held up to 1 000 of them (24 MB of JSON for
    // one `read` request), and an agent's detail all of its queue.
    // The first task computes until its deadline: ten minutes, however
    // long the 300 schedulings take on a slow machine.
    let (_served, api, agent) = a_bench_agent("busy", &["--deadline", "10m"]).await;
    let schedule = |description: String| {
        let api = &api;
        let path = format!("/v1/agents/{agent}/tasks");
        async move {
            let answer = api
                .post(
                    "/v1/agents/{id}/tasks",
                    &path,
                    json!({ "description": description }),
                )
                .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
            answer.body["id"].as_str().unwrap().to_owned()
        }
    };
    // A task that runs until its deadline keeps the others queued.
    let mut scheduled = vec![schedule("compute 1000000000000".to_owned()).await];
    let escaped = "\u{1}".repeat(4000);
    for _ in 0..300 {
        scheduled.push(schedule(escaped.clone()).await);
    }
    let detail = api
        .get("/v1/agents/{id}", &format!("/v1/agents/{agent}"))
        .await;
    assert_eq!(detail.status, StatusCode::OK);
    assert_eq!(detail.body["queued"], 300, "the first task still runs");
    let shown: Vec<&str> = detail.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(shown, scheduled[..100], "the running task, then the queue");
    let (mut listed, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let mut path = format!("/v1/tasks?agent={agent}&limit=1000");
        if let Some(cursor) = &cursor {
            path += &format!("&cursor={cursor}");
        }
        let page = api.get("/v1/tasks", &path).await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        // 1 MiB of descriptions of 24 000 bytes is 44 of them, the one that
        // passed it included (and the first page holds the running task).
        assert!(items.len() <= 45, "{} tasks in one page", items.len());
        listed.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    // None is lost to the bound (the list is in id order).
    scheduled.sort();
    assert!(
        listed == scheduled,
        "{} listed of {}",
        listed.len(),
        scheduled.len()
    );
    assert!(pages >= 7, "{pages}");
    assert_eq!(terminate(&api, &agent).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ended_long_ago_is_read_back_from_the_log() {
    // The server holds the ends of recent tasks with short outputs; any
    // other is read back by replaying the log from a snapshot, on the log
    // readers' threads (in the token family's turn), as a page of events.
    let mut served = Served::start(&[]);
    let api = Api::new(&served).await;
    install(&api, "hello").await;
    let agent = spawn(&api, "hello", "greeter", &["observe"]).await;
    // An output of more than 4 KiB is not held among the recent ends.
    let name = "x".repeat(4096);
    let task = run_task(&api, &agent, &name).await;
    assert_eq!(task["status"], "completed", "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    let expected = format!("Hello, {name}!");
    let read = |api: Api| {
        let id = id.clone();
        async move {
            let got = api.get("/v1/tasks/{id}", &format!("/v1/tasks/{id}")).await;
            assert_eq!(got.status, StatusCode::OK, "{got:?}");
            assert_eq!(got.body["status"], "completed");
            got.body["output"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(read(api).await, expected);
    // After a restart nothing is held: the log answers.
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
    let data = served.data.clone();
    let mut served = Served::start_on(&data, &[]);
    let api = Api::new(&served).await;
    assert_eq!(read(api).await, expected);
    let (code, stderr) = served.stop();
    assert_eq!(code, 0, "{stderr}");
}
