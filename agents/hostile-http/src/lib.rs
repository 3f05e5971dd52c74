//! `hostile-http`: makes outbound HTTP requests through `wasi:http`, to
//! wherever its task says. The host lets through only hosts the agent's
//! token grants (`http HOST` or `http HOST:PORT`).
//!
//! Task: `get AUTHORITY PATH`, e.g. `get 127.0.0.1:8080 /hello` (an
//! AUTHORITY written `https://127.0.0.1:8443` is asked over TLS). The agent
//! first observes `requesting AUTHORITY` (so a test can check that pending
//! operations are durable before the request leaves), then outputs
//! `STATUS BODY`. A refusal fails the task with the `wasi:http` error code.
//!
//! Task: `flood N AUTHORITY PATH` hands over N requests at once without
//! waiting for any, then waits for them all; outputs how many got a
//! response and how many each error code.
//!
//! Task: `hoard N KIB`: makes N more `wasi:http` header maps (host
//! resources, no right needed), each holding about KIB KiB of headers, and
//! keeps them all for as long as the instance lives; outputs how many it
//! holds. The host bounds what one instance holds in host resources: past
//! the bound the task traps.
//!
//! Task: `hoard-bodies N`: makes N requests (never sent) and writes into
//! each one's body, 1 MiB at a time, all the host takes without waiting;
//! keeps them; outputs the bytes the host took.
//!
//! Task: `park N AUTHORITY PATH`: makes N requests, waits for each
//! response and keeps it (its body unread) for as long as the instance
//! lives; outputs how many it keeps.
//!
//! Task: `random LEN`: asks WASI for LEN random bytes in one call (the
//! host makes them in its memory); outputs how many it got.
//!
//! Task: `set method|path|authority LEN`: sets an extension method, a path
//! or an authority of LEN bytes on a request (kept in the host's memory
//! with it); outputs `set` or `refused`.

use toka_guest::{Agent, Context, Task};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::{OutputStream, StreamError};

#[derive(Default)]
struct Http {
    /// What `hoard` made: kept by the instance until it ends.
    kept: Vec<Fields>,
    /// What `hoard-bodies` made, likewise (children first, so they drop
    /// first).
    bodies: Vec<(OutputStream, OutgoingBody, OutgoingRequest)>,
    /// What `park` received, likewise.
    parked: Vec<IncomingResponse>,
}

/// A `GET` of `path` at `authority`, over plain HTTP.
fn request(authority: &str, path: &str) -> Result<OutgoingRequest, String> {
    let request = OutgoingRequest::new(Fields::new());
    let (scheme, authority) = match authority.strip_prefix("https://") {
        Some(authority) => (Scheme::Https, authority),
        None => (Scheme::Http, authority),
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| "bad scheme".to_owned())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority `{authority}`"))?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| format!("bad path `{path}`"))?;
    Ok(request)
}

/// Sends `request` and waits for its response.
fn response(request: OutgoingRequest) -> Result<IncomingResponse, String> {
    let pending =
        outgoing_handler::handle(request, None).map_err(|e| format!("request refused: {e:?}"))?;
    pending.subscribe().block();
    pending
        .get()
        .ok_or("no response after the wait")?
        .map_err(|()| "response already taken")?
        .map_err(|e| format!("request failed: {e:?}"))
}

fn get(authority: &str, path: &str) -> Result<String, String> {
    let response = response(request(authority, path)?)?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading the body: {}", e.to_debug_string()));
            }
        }
    }
    drop(stream);
    Ok(format!("{status} {}", String::from_utf8_lossy(&bytes)))
}

fn flood(n: u32, authority: &str, path: &str) -> String {
    let mut pending = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..n {
        let Ok(request) = request(authority, path) else {
            *outcomes.entry("bad request".to_owned()).or_default() += 1;
            continue;
        };
        match outgoing_handler::handle(request, None) {
            Ok(future) => pending.push(future),
            Err(e) => *outcomes.entry(format!("{e:?}")).or_default() += 1,
        }
    }
    for future in pending {
        future.subscribe().block();
        let outcome = match future.get() {
            Some(Ok(Ok(response))) => format!("status {}", response.status()),
            Some(Ok(Err(e))) => format!("{e:?}"),
            _ => "no answer".to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    outcomes
        .iter()
        .map(|(what, count)| format!("{what}={count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes `n` more header maps, each with `kib` KiB of headers (1 KiB
/// each, added by `append` and `set` in turn), and keeps them in `kept`;
/// answers how many it keeps.
fn hoard(kept: &mut Vec<Fields>, n: u32, kib: u32) -> Result<String, String> {
    let value = vec![b'h'; 1000];
    for _ in 0..n {
        let fields = Fields::new();
        for h in 0..kib {
            let name = format!("x-hoard-{h}");
            // `append` and `set` both add a header the map lacks.
            let added = if h % 2 == 0 {
                fields.append(&name, &value)
            } else {
                fields.set(&name, std::slice::from_ref(&value))
            };
            added.map_err(|e| format!("after {} maps: {e:?}", kept.len()))?;
        }
        kept.push(fields);
    }
    Ok(kept.len().to_string())
}

/// See `hoard-bodies` in the module docs.
fn hoard_bodies(
    bodies: &mut Vec<(OutputStream, OutgoingBody, OutgoingRequest)>,
    n: u32,
) -> Result<String, String> {
    let chunk = vec![b'b'; 1 << 20];
    let mut taken = 0u64;
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        let body = request.body().map_err(|()| "no body")?;
        let stream = body.write().map_err(|()| "no body stream")?;
        loop {
            let permit = stream.check_write().map_err(|e| format!("{e:?}"))?;
            if permit == 0 {
                break;
            }
            let len = chunk
                .len()
                .min(usize::try_from(permit).unwrap_or(usize::MAX));
            stream.write(&chunk[..len]).map_err(|e| format!("{e:?}"))?;
            taken += len as u64;
        }
        bodies.push((stream, body, request));
    }
    Ok(taken.to_string())
}

impl Agent for Http {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        if let Some(n) = task.description.strip_prefix("hoard-bodies ") {
            let n: u32 = n.parse().map_err(|_| format!("`{n}` is not a count"))?;
            return hoard_bodies(&mut self.bodies, n).map(String::into_bytes);
        }
        if let Some(rest) = task.description.strip_prefix("set ") {
            let (part, len) = rest
                .split_once(' ')
                .ok_or("set method|path|authority LEN")?;
            let len: usize = len
                .parse()
                .map_err(|_| format!("`{len}` is not a length"))?;
            let request = OutgoingRequest::new(Fields::new());
            let set = match part {
                "method" => request.set_method(&Method::Other("M".repeat(len))),
                "path" => request
                    .set_path_with_query(Some(&format!("/{}", "p".repeat(len.saturating_sub(1))))),
                "authority" => request.set_authority(Some(&"a".repeat(len))),
                other => return Err(format!("`{other}` is not method, path or authority")),
            };
            return Ok(if set.is_ok() { "set" } else { "refused" }.into());
        }
        if let Some(rest) = task.description.strip_prefix("hoard ") {
            let count = |word: Option<&str>| -> Result<u32, String> {
                let word = word.ok_or("hoard N KIB")?;
                word.parse().map_err(|_| format!("`{word}` is not a count"))
            };
            let mut words = rest.split(' ');
            let (n, kib) = (count(words.next())?, count(words.next())?);
            return Ok(hoard(&mut self.kept, n, kib)?.into_bytes());
        }
        if let Some(len) = task.description.strip_prefix("random ") {
            let len: u64 = len
                .parse()
                .map_err(|_| format!("`{len}` is not a length"))?;
            let bytes = wasip2::random::random::get_random_bytes(len);
            return Ok(bytes.len().to_string().into_bytes());
        }
        if let Some(rest) = task.description.strip_prefix("park ") {
            let words: Vec<&str> = rest.split(' ').collect();
            let [n, authority, path] = words[..] else {
                return Err("park N AUTHORITY PATH".into());
            };
            let n: u32 = n.parse().map_err(|_| format!("`{n}` is not a count"))?;
            for _ in 0..n {
                self.parked.push(response(request(authority, path)?)?);
            }
            return Ok(format!("parked {}", self.parked.len()).into_bytes());
        }
        if let Some(rest) = task.description.strip_prefix("flood ") {
            let words: Vec<&str> = rest.split(' ').collect();
            let [n, authority, path] = words[..] else {
                return Err("flood N AUTHORITY PATH".into());
            };
            let n: u32 = n.parse().map_err(|_| format!("`{n}` is not a count"))?;
            return Ok(flood(n, authority, path).into_bytes());
        }
        let mut words = task.description.split(' ');
        let (Some("get"), Some(authority), path) = (words.next(), words.next(), words.next())
        else {
            return Err(format!(
                "unknown task `{}` (get AUTHORITY PATH)",
                task.description
            ));
        };
        ctx.observe(format!("requesting {authority}"))?;
        Ok(get(authority, path.unwrap_or("/"))?.into_bytes())
    }
}

toka_guest::export_agent!(Http);
