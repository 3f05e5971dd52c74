//! `planner`: splits a job across worker sub-agents.
//!
//! A task reads `workers=N: item; item; ...` (N defaults to 2). The planner
//! makes sure it has N workers — spawning the missing ones from the installed
//! `worker` component and delegating them only `observe` — then schedules the
//! items to them round-robin. It remembers its workers in its state, so a
//! later job reuses them.

use toka_guest::{Agent, AgentId, Context, Task};

/// The state key listing the planner's workers (16 bytes per id).
const WORKERS: &str = "workers";
const DEFAULT_WORKERS: usize = 2;
const MAX_WORKERS: usize = 64;

#[derive(Default)]
struct Planner;

/// Splits `workers=N: a; b` into N and the items.
fn parse(description: &str) -> Result<(usize, Vec<&str>), String> {
    let (workers, rest) = match description.trim().strip_prefix("workers=") {
        Some(rest) => {
            let (n, items) = rest
                .split_once(':')
                .ok_or("expected `workers=N: item; item; ...`")?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("`{}` is not a number of workers", n.trim()))?;
            (n, items)
        }
        None => (DEFAULT_WORKERS, description),
    };
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(format!(
            "between 1 and {MAX_WORKERS} workers, not {workers}"
        ));
    }
    let items: Vec<&str> = rest
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err("nothing to plan: give items separated by `;`".into());
    }
    Ok((workers, items))
}

fn load_workers(ctx: &Context) -> Vec<AgentId> {
    ctx.get(WORKERS)
        .unwrap_or_default()
        .chunks_exact(16)
        .filter_map(|c| c.try_into().ok().map(AgentId::from_bytes))
        .collect()
}

impl Agent for Planner {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let (wanted, items) = parse(&task.description)?;
        let mut workers = load_workers(ctx);
        while workers.len() < wanted {
            let name = format!("worker-{}", workers.len() + 1);
            workers.push(ctx.spawn("worker", &name, &["observe"])?);
        }
        let ids: Vec<u8> = workers.iter().flat_map(|w| w.to_bytes()).collect();
        ctx.put(WORKERS, ids)?;

        for (i, item) in items.iter().enumerate() {
            ctx.schedule(workers[i % wanted], item)?;
        }
        let summary = format!("planned {} items across {wanted} workers", items.len());
        ctx.observe(&summary)?;
        Ok(summary.into_bytes())
    }
}

toka_guest::export_agent!(Planner);

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_worker_count_and_items() {
        assert_eq!(
            parse("workers=3: a; b ;; c").unwrap(),
            (3, vec!["a", "b", "c"])
        );
        assert_eq!(parse("x; y").unwrap(), (2, vec!["x", "y"]));
        assert!(parse("workers=0: a").is_err());
        assert!(parse("workers=two: a").is_err());
        assert!(parse("workers=2:").is_err());
    }
}
