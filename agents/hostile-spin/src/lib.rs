//! `hostile-spin`: never returns. Task `spin` loops forever without calling
//! the host; `observe-spin` observes `x` about every millisecond (spinning
//! between) until the host refuses, then fails with the refusal;
//! `observe-spin-panic` does the same but panics (traps) at the refusal;
//! `ok` completes (to show the agent runs again once resumed).

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Spin;

/// Computes for roughly a millisecond (no host calls).
fn busy() {
    let mut x: u64 = 1;
    for _ in 0..1_000_000 {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) ^ 1);
    }
}

impl Agent for Spin {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        match task.description.as_str() {
            "spin" => loop {
                busy();
            },
            "observe-spin" => {
                let mut n = 0u64;
                loop {
                    if let Err(e) = ctx.observe("x") {
                        return Err(format!("refused after {n}: {e}"));
                    }
                    n += 1;
                    busy();
                }
            }
            "observe-spin-panic" => loop {
                ctx.observe("x").expect("the host takes every observation");
                busy();
            },
            "ok" => Ok(b"ok".to_vec()),
            other => Err(format!(
                "unknown task `{other}` (spin, observe-spin, observe-spin-panic, ok)"
            )),
        }
    }
}

toka_guest::export_agent!(Spin);
