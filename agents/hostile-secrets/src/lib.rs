//! `hostile-secrets`: tries every way an agent has to get at a secret the
//! host injects into its requests, and returns (and observes) all it saw.
//!
//! Task: `probe NAME BOUND UNBOUND`, where BOUND (`http://HOST:PORT`) is a
//! host the agent's token binds secret NAME to, UNBOUND one it does not;
//! both echo requests to `/echo` back, and BOUND redirects
//! `/redirect?to=URL`. The agent reads its environment and the
//! files it might guess, asks the kernel for state and extension data named
//! after the secret, sends requests to both echo servers (to the bound one
//! with its own `authorization` header and the secret's name in the URL
//! and body), follows a redirect, and reports everything. A test checks
//! that the secret's value is nowhere in it, nor in the log.

use toka_guest::http::{self, Request};
use toka_guest::{Agent, Context, Operation, Task};

#[derive(Default)]
struct Snoop;

impl Agent for Snoop {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let words: Vec<&str> = task.description.split_whitespace().collect();
        let ["probe", name, bound, unbound] = words[..] else {
            return Err("expected `probe NAME BOUND UNBOUND`".into());
        };
        let (bound_echo, unbound_echo) = (format!("{bound}/echo"), format!("{unbound}/echo"));
        let mut seen = String::new();
        let mut note = |what: &str, text: String| {
            seen.push_str(&format!("== {what}\n{text}\n"));
        };

        note("env", format!("{:?}", std::env::vars().collect::<Vec<_>>()));
        for path in [
            "/proc/self/environ",
            "secrets.json",
            "/secrets.json",
            "toka-data/secrets.json",
            "/etc/passwd",
        ] {
            note(path, format!("{:?}", std::fs::read_to_string(path)));
        }
        note("state", format!("{:?}", ctx.get(name)));
        let asked = ctx.submit(Operation::Extension {
            family: "secret".into(),
            opcode: 0,
            payload: name.as_bytes().to_vec(),
        });
        note("extension", format!("{asked:?}"));

        let attempts = [
            ("unbound", Request::get(&unbound_echo)),
            (
                "bound, own header",
                Request::post(&format!("{bound_echo}?name={name}"))
                    .header("authorization", &format!("Bearer {name}"))
                    .header("x-api-key", name)
                    .body(name.as_bytes()),
            ),
            (
                "bound, redirected to unbound",
                Request::get(&format!("{bound}/redirect?to={unbound_echo}")),
            ),
        ];
        for (what, request) in attempts {
            let answer = match request.send() {
                Ok(response) => format!(
                    "{} {:?} {}",
                    response.status(),
                    response.headers(),
                    String::from_utf8_lossy(response.body())
                ),
                Err(e) => format!("error: {e}"),
            };
            note(what, answer);
        }
        note(
            "get",
            format!(
                "{:?}",
                http::get(&bound_echo).map(|r| String::from_utf8_lossy(r.body()).into_owned())
            ),
        );
        // Ways to have the answer come back in a form redaction might miss:
        // compressed (asked for, or sent so in a second header line), in
        // pieces, or the request itself echoed by TRACE.
        for (what, request) in [
            ("encoded", Request::get(&format!("{bound}/encoded"))),
            (
                "gzip",
                Request::get(&bound_echo).header("accept-encoding", "gzip"),
            ),
            (
                "range",
                Request::get(&bound_echo).header("range", "bytes=10-20"),
            ),
            ("trace", Request::new("TRACE", &bound_echo)),
        ] {
            let answer = match request.send() {
                Ok(response) => format!(
                    "{} {}",
                    response.status(),
                    String::from_utf8_lossy(response.body())
                ),
                Err(e) => format!("error: {e}"),
            };
            note(what, answer);
        }
        // Another server showing what the bound host was sent (its request
        // log), to a request that carried no secret: plain, then in an
        // encoding redaction cannot read (asked for, then not asked for).
        for (what, request) in [
            (
                "unbound, showing what the bound host was sent",
                Request::get(&format!("{unbound}/replay")),
            ),
            (
                "unbound, showing it encoded as asked",
                Request::get(&format!("{unbound}/replay")).header("accept-encoding", "x-reversed"),
            ),
            (
                "unbound, showing it encoded unasked",
                Request::get(&format!("{unbound}/replay?always")),
            ),
        ] {
            note(
                what,
                format!(
                    "{:?}",
                    request
                        .send()
                        .map(|r| String::from_utf8_lossy(r.body()).into_owned())
                ),
            );
        }
        ctx.observe(&seen)?;
        Ok(seen.into_bytes())
    }
}

toka_guest::export_agent!(Snoop);
