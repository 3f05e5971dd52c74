//! `hostile-flood`: tries to swamp the host with operations and data. Each
//! task keeps going until the host refuses, then fails with the refusal.
//!
//! Tasks: `ops` (one small observation after another), `queue` (schedules
//! `noop` onto itself again and again), `big-observation` (2 MiB at once),
//! `observation-bytes` (512 KiB observations without end), `big-state` (a
//! 128 KiB state value), `fill-state` (60 KiB values under new keys without
//! end), `log` (1 KiB observations without end), `megabytes` (1 MiB
//! observations without end), `loop` (schedules `loop` onto itself again,
//! forever), `spawn-many N` (spawns N `hello` children, each with `observe`,
//! and gives each a task), `spawn-fill N` (spawns N `hostile-flood`
//! children with `state`, each to `fill-state`), `churn` (spawns a `hello`
//! child and terminates it, without end), `clear-state` (deletes every
//! key), `delete-made-up` (deletes keys it never wrote, a new one each
//! time, without end), `rewrite` (writes one 256-byte key again and again,
//! without end), `refuse M` (observes M times, whatever the host answers: without
//! `observe`, each is refused), `spawn-refuse N M` (spawns N
//! `hostile-flood` children with `state` only, each to `refuse M`),
//! `spawn-rewrite N` (spawns N `hostile-flood` children with `state`, each
//! to `rewrite`), `outputs N` (schedules N `output` tasks onto itself),
//! `output` (ends with 1 MiB of output, the most a task may give), `noop`.

use toka_guest::{Agent, Context, Error, Task};

#[derive(Default)]
struct Flood;

/// Repeats `step` until the host refuses, then reports how far it got.
fn until_refused(mut step: impl FnMut(u64) -> Result<(), Error>) -> Result<Vec<u8>, String> {
    let mut done = 0u64;
    loop {
        if let Err(e) = step(done) {
            return Err(format!("refused after {done}: {e}"));
        }
        done += 1;
    }
}

/// Spawns `n` `hostile-flood` children with `state` only, named `name-i`,
/// and gives each the task `task`.
fn spawn_floods(ctx: &mut Context, n: u64, name: &str, task: &str) -> Result<Vec<u8>, String> {
    for i in 0..n {
        let child = ctx.spawn("hostile-flood", &format!("{name}-{i}"), &["state"])?;
        ctx.schedule(child, task)?;
    }
    Ok(format!("spawned {n}").into_bytes())
}

impl Agent for Flood {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let me = ctx.id();
        match task.description.as_str() {
            "ops" => until_refused(|_| ctx.observe("x").map(drop)),
            "queue" => until_refused(|_| ctx.schedule(me, "noop").map(drop)),
            "big-observation" => {
                ctx.observe(vec![b'o'; 2 << 20])?;
                Ok(b"observed 2 MiB".to_vec())
            }
            "observation-bytes" => until_refused(|_| ctx.observe(vec![b'o'; 512 << 10]).map(drop)),
            "big-state" => {
                ctx.put("big", vec![b's'; 128 << 10])?;
                Ok(b"stored 128 KiB".to_vec())
            }
            "fill-state" => until_refused(|i| ctx.put(&format!("k{i}"), vec![b's'; 60 << 10])),
            "log" => until_refused(|_| ctx.observe(vec![b'l'; 1024]).map(drop)),
            "megabytes" => until_refused(|_| ctx.observe(vec![b'm'; 1 << 20]).map(drop)),
            "output" => Ok(vec![b'o'; 1 << 20]),
            outputs if outputs.starts_with("outputs ") => {
                let n: u64 = outputs["outputs ".len()..]
                    .parse()
                    .map_err(|_| "outputs N: N is a number")?;
                for _ in 0..n {
                    ctx.schedule(me, "output")?;
                }
                Ok(format!("scheduled {n}").into_bytes())
            }
            "loop" => {
                ctx.schedule(me, "loop")?;
                Ok(b"again".to_vec())
            }
            spawn if spawn.starts_with("spawn-many ") => {
                let n: u64 = spawn["spawn-many ".len()..]
                    .parse()
                    .map_err(|_| "spawn-many N: N is a number")?;
                for i in 0..n {
                    let child = ctx.spawn("hello", &format!("child-{i}"), &["observe"])?;
                    ctx.schedule(child, &format!("child {i}"))?;
                }
                Ok(format!("spawned {n}").into_bytes())
            }
            spawn if spawn.starts_with("spawn-fill ") => {
                let n: u64 = spawn["spawn-fill ".len()..]
                    .parse()
                    .map_err(|_| "spawn-fill N: N is a number")?;
                spawn_floods(ctx, n, "filler", "fill-state")
            }
            refuse if refuse.starts_with("refuse ") => {
                let m: u64 = refuse["refuse ".len()..]
                    .parse()
                    .map_err(|_| "refuse M: M is a number")?;
                let refused = (0..m).filter(|_| ctx.observe("x").is_err()).count();
                Ok(format!("refused {refused}").into_bytes())
            }
            spawn if spawn.starts_with("spawn-refuse ") => {
                let mut words = spawn["spawn-refuse ".len()..].split(' ');
                let mut number = || -> Result<u64, String> {
                    let word = words.next().unwrap_or_default();
                    word.parse()
                        .map_err(|_| format!("spawn-refuse N M: `{word}` is not a number"))
                };
                let (n, m) = (number()?, number()?);
                spawn_floods(ctx, n, "refuser", &format!("refuse {m}"))
            }
            spawn if spawn.starts_with("spawn-rewrite ") => {
                let n: u64 = spawn["spawn-rewrite ".len()..]
                    .parse()
                    .map_err(|_| "spawn-rewrite N: N is a number")?;
                spawn_floods(ctx, n, "rewriter", "rewrite")
            }
            "delete-made-up" => until_refused(|i| ctx.delete(&format!("{i:0>256}"))),
            "rewrite" => {
                let key = "k".repeat(256);
                until_refused(|i| ctx.put(&key, i.to_le_bytes()))
            }
            "churn" => until_refused(|i| {
                let child = ctx.spawn("hello", &format!("churned-{i}"), &["observe"])?;
                ctx.terminate(child)
            }),
            "clear-state" => {
                let keys = ctx.keys();
                for key in &keys {
                    ctx.delete(key)?;
                }
                Ok(format!("deleted {}", keys.len()).into_bytes())
            }
            "noop" => Ok(Vec::new()),
            other => Err(format!(
                "unknown task `{other}` (ops, queue, big-observation, observation-bytes, big-state, fill-state, clear-state, log, megabytes, loop, spawn-many N, spawn-fill N, churn, delete-made-up, rewrite, refuse M, spawn-refuse N M, spawn-rewrite N, noop)"
            )),
        }
    }
}

toka_guest::export_agent!(Flood);
