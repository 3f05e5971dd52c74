//! `hostile-recursion`: recurses without end. Task `recurse` calls itself
//! until the call stack runs out; `ok` completes.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Deep;

/// Not a tail call: the addition after the call keeps every frame alive.
#[expect(unconditional_recursion, reason = "exhausting the stack is the point")]
fn depth(n: u64) -> u64 {
    std::hint::black_box(depth(std::hint::black_box(n + 1))) + 1
}

impl Agent for Deep {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        match task.description.as_str() {
            "recurse" => Ok(depth(0).to_string().into_bytes()),
            "ok" => Ok(b"ok".to_vec()),
            other => Err(format!("unknown task `{other}` (recurse, ok)")),
        }
    }
}

toka_guest::export_agent!(Deep);
