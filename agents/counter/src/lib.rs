//! `counter`: keeps a durable count in its state namespace.
//!
//! Each task adds the number in its description (1 when there is none) to the
//! count stored under `count`, observes the new value and returns it. The
//! count survives host restarts because it lives in the log, not in memory.

use toka_guest::{Agent, Context, Task};

/// The state key holding the count.
const KEY: &str = "count";

#[derive(Default)]
struct Counter;

impl Agent for Counter {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let text = task.description.trim();
        let step: u64 = if text.is_empty() {
            1
        } else {
            text.parse()
                .map_err(|_| format!("expected a number to add, got `{text}`"))?
        };
        let count = ctx
            .get_u64(KEY)
            .unwrap_or(0)
            .checked_add(step)
            .ok_or("the count would overflow")?;
        ctx.put_u64(KEY, count)?;
        ctx.observe(format!("count = {count}"))?;
        Ok(count.to_string().into_bytes())
    }
}

toka_guest::export_agent!(Counter);
