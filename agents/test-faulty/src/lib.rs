//! `test-faulty`: misbehaves on request, for the host's fault tests.
//!
//! The task description picks the behaviour: `error` returns an error,
//! `panic` panics, `abort` aborts (a bare trap), `print N` prints N bytes to
//! stdout, anything else completes with the description as output.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Faulty;

impl Agent for Faulty {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        match task.description.as_str() {
            "error" => Err("asked to fail".into()),
            "panic" => panic!("asked to panic"),
            "abort" => std::process::abort(),
            other => {
                if let Some(n) = other.strip_prefix("print ") {
                    let n: usize = n.parse().map_err(|_| "print N: N is a number")?;
                    print!("{}", "x".repeat(n));
                }
                ctx.observe(format!("ok: {other}"))?;
                Ok(other.as_bytes().to_vec())
            }
        }
    }
}

toka_guest::export_agent!(Faulty);
