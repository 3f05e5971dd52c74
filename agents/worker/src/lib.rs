//! `worker`: does one item of work per task and reports it.
//!
//! The "work" is a stand-in for a real tool call: it counts the words of the
//! item and computes a checksum, reports that as an observation, and returns
//! it as the task's output.
//!
//! A task `reply-to AGENT step STEP: ITEM` (what `llm-planner` sends; STEP
//! is one word) also schedules `result STEP REPORT` back on AGENT, which the
//! worker's token must allow (`schedule AGENT`).

use toka_guest::{Agent, AgentId, Context, Task};

#[derive(Default)]
struct Worker;

/// FNV-1a, a stand-in for real work that depends on every byte.
fn checksum(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Splits `reply-to AGENT step STEP: ITEM` into its parts.
fn reply_to(description: &str) -> Result<Option<(AgentId, &str, &str)>, String> {
    let Some(rest) = description.trim().strip_prefix("reply-to ") else {
        return Ok(None);
    };
    let bad = || format!("expected `reply-to AGENT step STEP: ITEM`, got `{description}`");
    let (agent, rest) = rest.split_once(' ').ok_or_else(bad)?;
    let agent: AgentId = agent.parse().map_err(|_| bad())?;
    let (step, item) = rest
        .strip_prefix("step ")
        .and_then(|r| r.split_once(':'))
        .ok_or_else(bad)?;
    let step = step.trim();
    if step.is_empty() || step.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Some((agent, step, item.trim())))
}

impl Agent for Worker {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let reply = reply_to(&task.description)?;
        let item = match reply {
            Some((_, _, item)) => item,
            None => task.description.trim(),
        };
        if item.is_empty() {
            return Err("empty work item".into());
        }
        let report = format!(
            "done `{item}`: {} words, checksum {:08x}",
            item.split_whitespace().count(),
            checksum(item)
        );
        ctx.observe(&report)?;
        if let Some((agent, step, _)) = reply {
            ctx.schedule(agent, &format!("result {step} {report}"))?;
        }
        Ok(report.into_bytes())
    }
}

toka_guest::export_agent!(Worker);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_agent_and_step() {
        let id = "0123456789abcdef0123456789abcdef";
        let task = format!("reply-to {id} step 1.2: count these");
        let (agent, step, item) = reply_to(&task).unwrap().unwrap();
        assert_eq!(
            (agent.to_string().as_str(), step, item),
            (id, "1.2", "count these")
        );
        assert!(reply_to("plain work").unwrap().is_none());
        assert!(reply_to("reply-to nobody step 1: x").is_err());
        assert!(reply_to(&format!("reply-to {id} 1: x")).is_err());
    }
}
