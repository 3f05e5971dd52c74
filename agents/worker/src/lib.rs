//! `worker`: does one item of work per task and reports it.
//!
//! The "work" is a stand-in for a real tool call: it counts the words of the
//! item and computes a checksum, reports that as an observation, and returns
//! it as the task's output.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Worker;

/// FNV-1a, a stand-in for real work that depends on every byte.
fn checksum(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

impl Agent for Worker {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let item = task.description.trim();
        if item.is_empty() {
            return Err("empty work item".into());
        }
        let report = format!(
            "done `{item}`: {} words, checksum {:08x}",
            item.split_whitespace().count(),
            checksum(item)
        );
        ctx.observe(&report)?;
        Ok(report.into_bytes())
    }
}

toka_guest::export_agent!(Worker);
