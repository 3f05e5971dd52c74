//! `hostile-spin`: never returns. Task `spin` loops forever without calling
//! the host; `ok` completes (to show the agent runs again once resumed).

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Spin;

impl Agent for Spin {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        match task.description.as_str() {
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) ^ 1);
                }
            }
            "ok" => Ok(b"ok".to_vec()),
            other => Err(format!("unknown task `{other}` (spin, ok)")),
        }
    }
}

toka_guest::export_agent!(Spin);
