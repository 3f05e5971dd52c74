//! `hostile-escalate`: reaches for authority it was not given.
//!
//! Tasks: `spawn-more COMPONENT` (spawns a child with rights this agent
//! lacks), `spawn-bigger COMPONENT` (spawns a child asking for a 4 GiB
//! memory budget and tells it to `grow`), `schedule AGENT-ID` /
//! `terminate AGENT-ID` (acts on another agent), `impersonate AGENT-ID` (submits host-only operations in that
//! agent's name through an extension call, then writes a state key that
//! names that agent). Each fails with the host's refusal.

use toka_guest::{Agent, AgentId, Context, Operation, Task};

#[derive(Default)]
struct Escalate;

fn id(text: &str) -> Result<AgentId, String> {
    text.parse().map_err(|e| format!("{e}"))
}

impl Agent for Escalate {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let (verb, arg) = task
            .description
            .split_once(' ')
            .unwrap_or((&task.description, ""));
        match verb {
            "spawn-more" => {
                let child =
                    ctx.spawn(arg, "escalated", &["spawn *", "terminate *", "schedule *"])?;
                Ok(format!("spawned {child}").into_bytes())
            }
            "spawn-bigger" => {
                let child = ctx.spawn_within(arg, "bigger", &["observe"], &["memory=4GiB"])?;
                ctx.schedule(child, "grow")?;
                Ok(format!("spawned {child}").into_bytes())
            }
            "schedule" => Ok(ctx
                .schedule(id(arg)?, "do my bidding")?
                .to_string()
                .into_bytes()),
            "terminate" => {
                ctx.terminate(id(arg)?)?;
                Ok(format!("terminated {arg}").into_bytes())
            }
            "impersonate" => {
                let victim = id(arg)?;
                let refused = ctx
                    .submit(Operation::Extension {
                        family: "agent".to_owned(),
                        opcode: 0,
                        payload: victim.to_string().into_bytes(),
                    })
                    .err()
                    .ok_or("the host applied an extension call in the `agent` family")?;
                ctx.put(&format!("../{victim}/owned"), "yes")?;
                Err(format!(
                    "extension call refused: {refused}; wrote ../{victim}/owned in my own state"
                ))
            }
            other => Err(format!(
                "unknown task `{other}` (spawn-more, spawn-bigger, schedule, terminate, impersonate)"
            )),
        }
    }
}

toka_guest::export_agent!(Escalate);
