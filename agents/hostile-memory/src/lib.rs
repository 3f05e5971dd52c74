//! `hostile-memory`: grows its memory without bound. Task `grow` allocates
//! (and touches) 1 MiB after 1 MiB and keeps all of it; `ok` completes.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Hog;

impl Agent for Hog {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        match task.description.as_str() {
            "grow" => {
                let mut kept: Vec<Vec<u8>> = Vec::new();
                loop {
                    kept.push(vec![0xAB; 1 << 20]);
                    std::hint::black_box(&kept);
                }
            }
            "ok" => Ok(b"ok".to_vec()),
            other => Err(format!("unknown task `{other}` (grow, ok)")),
        }
    }
}

toka_guest::export_agent!(Hog);
