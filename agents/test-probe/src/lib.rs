//! `test-probe`: performs the one operation its task names, for the host's
//! capability tests. A refused operation fails the task with the host's
//! message; otherwise the output says what was done.
//!
//! Tasks: `observe TEXT`, `put KEY VALUE`, `spawn COMPONENT NAME [RIGHT,RIGHT,...]`
//! (outputs the child's id), `schedule AGENT-ID TEXT`, `terminate AGENT-ID`,
//! `extension FAMILY`.

use toka_guest::{Agent, AgentId, Context, Operation, Task};

#[derive(Default)]
struct Probe;

fn id(text: &str) -> Result<AgentId, String> {
    text.parse().map_err(|e| format!("{e}"))
}

impl Agent for Probe {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let mut words = task.description.splitn(3, ' ');
        let verb = words.next().unwrap_or_default();
        let a = words.next().unwrap_or_default();
        let b = words.next().unwrap_or_default();
        let out = match verb {
            "observe" => {
                let rest = [a, b].join(" ");
                ctx.observe(rest.trim())?;
                "observed".to_owned()
            }
            "put" => {
                ctx.put(a, b)?;
                format!("put {a}")
            }
            "spawn" => {
                let (name, rights) = b.split_once(' ').unwrap_or((b, ""));
                let rights: Vec<&str> = rights.split(',').filter(|r| !r.is_empty()).collect();
                ctx.spawn(a, name, &rights)?.to_string()
            }
            "schedule" => ctx.schedule(id(a)?, b)?.to_string(),
            "terminate" => {
                ctx.terminate(id(a)?)?;
                format!("terminated {a}")
            }
            "extension" => {
                ctx.submit(Operation::Extension {
                    family: a.to_owned(),
                    opcode: 1,
                    payload: Vec::new(),
                })?;
                "extension applied".to_owned()
            }
            other => return Err(format!("unknown probe `{other}`")),
        };
        Ok(out.into_bytes())
    }
}

toka_guest::export_agent!(Probe);
