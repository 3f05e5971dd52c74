//! `test-bench`: a workload for the host's benchmarks.
//!
//! `observe N` submits N observations of 32 bytes; `compute N` runs N rounds
//! of an integer hash (pure guest CPU, no host calls); anything else does
//! nothing.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Bench;

fn count(arg: &str) -> Result<u64, String> {
    arg.trim()
        .parse()
        .map_err(|_| format!("`{arg}` is not a count"))
}

impl Agent for Bench {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let (verb, arg) = task
            .description
            .split_once(' ')
            .unwrap_or((&task.description, "0"));
        match verb {
            "observe" => {
                let payload = [7u8; 32];
                for _ in 0..count(arg)? {
                    ctx.observe(payload)?;
                }
                Ok(Vec::new())
            }
            "compute" => {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for i in 0..count(arg)? {
                    x ^= x >> 33;
                    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd).wrapping_add(i);
                }
                Ok(x.to_le_bytes().to_vec())
            }
            _ => Ok(Vec::new()),
        }
    }
}

toka_guest::export_agent!(Bench);
