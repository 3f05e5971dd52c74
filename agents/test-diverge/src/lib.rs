//! `test-diverge`: behaves according to files in a directory it may read,
//! so a test can change what a re-run after a crash does and check that the
//! host notices instead of applying something twice.
//!
//! Task `DIR`: reads `DIR/mode` and `DIR/value`, then
//! - `observe`: observes the value;
//! - `spawn`: spawns a `test-diverge` child named `child` with the budget
//!   the value names (e.g. `memory=8MiB`);
//! - `refuse`: schedules a task onto the agent id the value names (the
//!   agent holds no right to, so it is refused), and goes on;
//! - `http`: sends a `GET` to the URL the value names and observes the
//!   status;
//!
//! then observes `waiting`, and spins until `DIR/go` exists before it
//! observes `done` and completes.

use toka_guest::{Agent, AgentId, Context, Task};

#[derive(Default)]
struct Diverge;

fn read(dir: &str, name: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("{dir}/{name}"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{dir}/{name}: {e}"))
}

impl Agent for Diverge {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let dir = task.description.trim();
        let mode = read(dir, "mode")?;
        let value = read(dir, "value")?;
        match mode.as_str() {
            "observe" => {
                ctx.observe(&value)?;
            }
            "spawn" => {
                ctx.spawn_within("test-diverge", "child", &[], &[&value])?;
            }
            "refuse" => {
                let target: AgentId = value.parse().map_err(|e| format!("{e}"))?;
                let refused = ctx.schedule(target, "x");
                ctx.observe(format!("refused: {}", refused.is_err()))?;
            }
            "http" => {
                let status = toka_guest::http::get(&value).map_err(|e| e.to_string())?;
                ctx.observe(format!("status {}", status.status()))?;
            }
            other => return Err(format!("unknown mode `{other}`")),
        }
        ctx.observe("waiting")?;
        while std::fs::metadata(format!("{dir}/go")).is_err() {
            std::hint::spin_loop();
        }
        ctx.observe("done")?;
        Ok(b"done".to_vec())
    }
}

toka_guest::export_agent!(Diverge);
