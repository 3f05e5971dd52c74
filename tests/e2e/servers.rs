//! Servers the outbound tests talk to, on loopback ports: an
//! OpenAI-compatible chat-completions endpoint that answers from a script
//! and counts what it receives, and an echo server.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One request a fixture received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Header name (lower case) → value.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, as JSON (`Null` when it is not JSON).
    pub(crate) body: Value,
}

impl Seen {
    /// The first value of header `name`.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a plan request (JSON mode) rather than a summary.
    pub(crate) fn wants_json(&self) -> bool {
        self.body["response_format"]["type"] == "json_object"
    }
}

/// What the chat endpoint answers, in order; when the script runs out, a
/// plan request gets a two-step plan and a summary request a summary.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A chat completion whose first choice says this.
    Content(String),
    /// A completion with an empty choice list.
    NoChoices,
    /// An error status, with headers (e.g. `Retry-After`).
    Status(u16, Vec<(&'static str, String)>),
    /// A body of this many bytes (a completion padded with spaces).
    Big(usize),
    /// Nothing, until [`Llm::release`]; [`Llm::held`] is notified when the
    /// request arrives.
    Hold,
}

/// The summary the endpoint gives by default.
pub(crate) const SUMMARY: &str = "Both steps are done: the field guide is drafted and reviewed.";

/// A plan of `steps` tasks, as the model would answer.
pub(crate) fn plan(steps: &[&str]) -> String {
    json!({"steps": steps.iter().map(|s| json!({"task": s})).collect::<Vec<_>>()}).to_string()
}

struct LlmState {
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    held: Notify,
    release: Notify,
    released: std::sync::atomic::AtomicBool,
}

/// An OpenAI-compatible endpoint at `http://127.0.0.1:PORT/v1`.
pub(crate) struct Llm {
    /// The base URL, as OpenAI clients take it.
    pub(crate) base_url: String,
    /// Its port.
    pub(crate) port: u16,
    state: Arc<LlmState>,
}

impl Llm {
    /// Starts the endpoint with `script`.
    pub(crate) async fn start(script: Vec<Reply>) -> Llm {
        let state = Arc::new(LlmState {
            script: Mutex::new(script.into()),
            seen: Mutex::default(),
            held: Notify::new(),
            release: Notify::new(),
            released: std::sync::atomic::AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/v1/chat/completions", any(chat))
            .with_state(Arc::clone(&state));
        let port = serve(app).await;
        Llm {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            port,
            state,
        }
    }

    /// The requests received so far, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Waits until a [`Reply::Hold`] request arrived (before the call, or
    /// after).
    pub(crate) async fn held(&self) {
        tokio::time::timeout(Duration::from_secs(120), self.state.held.notified())
            .await
            .expect("the held request arrived");
    }

    /// Lets held requests go, and those still to come (they get a 503).
    pub(crate) fn release(&self) {
        self.state
            .released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.release.notify_waiters();
    }
}

/// A chat completion saying `content`.
pub(crate) fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    })
}

async fn chat(State(state): State<Arc<LlmState>>, headers: HeaderMap, body: Bytes) -> Response {
    let seen = Seen {
        headers: pairs(&headers),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let wants_json = seen.wants_json();
    state.seen.lock().unwrap().push(seen);
    let next = state.script.lock().unwrap().pop_front();
    let reply = next.unwrap_or_else(|| {
        Reply::Content(if wants_json {
            plan(&["draft the guide", "review the guide"])
        } else {
            SUMMARY.to_owned()
        })
    });
    match reply {
        Reply::Content(text) => axum::Json(completion(&text)).into_response(),
        Reply::NoChoices => {
            axum::Json(json!({"id": "x", "object": "chat.completion", "choices": []}))
                .into_response()
        }
        Reply::Status(status, headers) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                axum::Json(json!({"error": {"message": "scripted failure"}})),
            )
                .into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::Big(bytes) => {
            let mut body = completion("{}").to_string();
            body.push_str(&" ".repeat(bytes.saturating_sub(body.len())));
            ([("content-type", "application/json")], body).into_response()
        }
        Reply::Hold => {
            let released = state.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            // A permit stays if nobody waits yet: `held` sees a request
            // that arrived before it was called.
            state.held.notify_one();
            if !state.released.load(std::sync::atomic::Ordering::SeqCst) {
                released.await;
            }
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The content encoding the echo server's `/replay` can answer in: the
/// bytes reversed.
pub(crate) const REVERSED: &str = "x-reversed";

/// An echo server: any request is answered with its method, path, headers
/// and body as JSON; `/redirect?to=URL` answers `302` to URL; `/encoded`
/// see [`encoded`]; `/replay` with the headers of every request it (or the
/// server it shows, see [`Echo::showing`]) received before, as a request
/// log another port shows, in [`REVERSED`] encoding when the request
/// accepts it or asks `/replay?always`. It keeps what it received.
pub(crate) struct Echo {
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// Its port.
    pub(crate) port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Echo {
    pub(crate) async fn start() -> Echo {
        Echo::start_with(None).await
    }

    /// An echo server whose `/replay` shows what `logged` received.
    pub(crate) async fn showing(logged: &Echo) -> Echo {
        Echo::start_with(Some(Arc::clone(&logged.seen))).await
    }

    async fn start_with(log: Option<Arc<Mutex<Vec<Seen>>>>) -> Echo {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = log.unwrap_or_else(|| Arc::clone(&seen));
        let replay = move |uri: axum::http::Uri, asked: HeaderMap| {
            let headers: Vec<Vec<(String, String)>> = log
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.headers.clone())
                .collect();
            let body = json!(headers).to_string().into_bytes();
            // An encoding the host cannot read, as a compressing server
            // answers: when the request accepts it, or (`?always`) when it
            // does not.
            let encode = uri.query() == Some("always")
                || asked
                    .get_all("accept-encoding")
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| v.contains(REVERSED)));
            async move {
                if encode {
                    let reversed: Vec<u8> = body.into_iter().rev().collect();
                    ([("content-encoding", REVERSED)], reversed).into_response()
                } else {
                    ([("content-type", "application/json")], body).into_response()
                }
            }
        };
        let app = Router::new()
            .route("/redirect", any(redirect))
            .route("/encoded", any(encoded))
            .route("/replay", any(replay))
            .fallback(echo)
            .with_state(Arc::clone(&seen));
        let port = serve(app).await;
        Echo {
            url: format!("http://127.0.0.1:{port}"),
            port,
            seen,
        }
    }

    /// The requests received so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn echo(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let pairs = pairs(&headers);
    // Also the authorization header base64-encoded, as some debugging
    // endpoints show it.
    let authorization = headers
        .get("authorization")
        .map(|v| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.as_bytes()));
    let echoed = json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": pairs,
        "authorization_base64": authorization,
        "body": String::from_utf8_lossy(&body),
    });
    seen.lock().unwrap().push(Seen {
        headers: pairs,
        body: Value::String(String::from_utf8_lossy(&body).into_owned()),
    });
    axum::Json(echoed)
}

/// The request's `Authorization` as the body, the body said to be encoded
/// in a second `Content-Encoding` line: the header's value (a body the
/// host could not redact, named by a value it must).
async fn encoded(headers: HeaderMap) -> Response {
    let authorization = headers
        .get("authorization")
        .cloned()
        .unwrap_or_else(|| axum::http::HeaderValue::from_static("none"));
    let mut response = (StatusCode::OK, authorization.as_bytes().to_vec()).into_response();
    let encodings = response.headers_mut();
    encodings.append(
        "content-encoding",
        axum::http::HeaderValue::from_static("identity"),
    );
    encodings.append("content-encoding", authorization);
    response
}

async fn redirect(
    Query(query): Query<std::collections::BTreeMap<String, String>>,
    headers: HeaderMap,
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
) -> Response {
    seen.lock().unwrap().push(Seen {
        headers: pairs(&headers),
        body: Value::Null,
    });
    let to = query.get("to").cloned().unwrap_or_default();
    (StatusCode::FOUND, [("location", to)]).into_response()
}

/// A request's headers as (name, value) text pairs.
fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Serves `app` on an ephemeral loopback port; returns the port.
async fn serve(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}
