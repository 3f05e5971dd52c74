//! `test-journal`: a read-modify-write workload for the crash tests.
//!
//! A task `N` increments the durable `count` N times. Each step reads the
//! count, observes `count C at T` (T: the wall clock, in ms), and writes
//! C + 1, with some CPU work in between so a crash can land anywhere. If a
//! re-run after a crash applied anything twice, or read the state or the
//! clock differently than the first run, the count or the log would show it.
//!
//! A task `N deny` also asks, at every step, for something it has no right
//! to (scheduling a task onto another agent) and goes on when refused: a
//! re-run must meet the same refusals at the same places.

use std::time::{SystemTime, UNIX_EPOCH};

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Journal;

/// Work the CPU for a while (a stand-in for real work between operations).
fn busy(seed: u64) -> u64 {
    (0..200_000u64).fold(seed, |h, i| (h ^ i).wrapping_mul(0x0100_0000_01b3))
}

impl Agent for Journal {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let mut words = task.description.split_whitespace();
        let steps: u64 = words
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("expected a number of steps, got `{}`", task.description))?;
        let deny = words.next() == Some("deny");
        let stranger: toka_guest::AgentId = "00000000000000000000000000000007"
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut checksum = 0;
        for _ in 0..steps {
            let count = ctx.get_u64("count").unwrap_or(0) + 1;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            checksum = busy(checksum ^ count);
            if deny && ctx.schedule(stranger, "x").is_ok() {
                return Err("scheduling onto a stranger was allowed".into());
            }
            ctx.observe(format!("count {count} at {now}"))?;
            ctx.put_u64("count", count)?;
        }
        Ok(format!("{checksum:x}").into_bytes())
    }
}

toka_guest::export_agent!(Journal);
