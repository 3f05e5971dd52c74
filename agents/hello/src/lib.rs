//! `hello`: greets whoever the task names, as an observation and as output.

use toka_guest::{Agent, Context, Task};

/// Stateless greeter.
#[derive(Default)]
struct Hello;

impl Agent for Hello {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let name = task.description.trim();
        let greeting = format!("Hello, {}!", if name.is_empty() { "world" } else { name });
        ctx.observe(&greeting)?;
        Ok(greeting.into_bytes())
    }
}

toka_guest::export_agent!(Hello);
