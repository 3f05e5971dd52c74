//! `hostile-snoop`: looks for what it was not given, through ordinary `std`
//! file and environment calls (WASI underneath).
//!
//! Tasks: `read PATH` (outputs the file), `list PATH` (outputs the names),
//! `write PATH TEXT` (creates or replaces the file), `env` (outputs every
//! variable as `NAME=VALUE` lines). A refusal fails the task with the OS error.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Snoop;

impl Agent for Snoop {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let (verb, rest) = task
            .description
            .split_once(' ')
            .unwrap_or((&task.description, ""));
        match verb {
            "read" => std::fs::read(rest).map_err(|e| format!("read {rest}: {e}")),
            "list" => {
                let entries = std::fs::read_dir(rest).map_err(|e| format!("list {rest}: {e}"))?;
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| format!("list {rest}: {e}"))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names.join("\n").into_bytes())
            }
            "write" => {
                let (path, text) = rest.split_once(' ').unwrap_or((rest, ""));
                std::fs::write(path, text).map_err(|e| format!("write {path}: {e}"))?;
                Ok(format!("wrote {path}").into_bytes())
            }
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                Ok(vars.join("\n").into_bytes())
            }
            other => Err(format!("unknown task `{other}` (read, list, write, env)")),
        }
    }
}

toka_guest::export_agent!(Snoop);
