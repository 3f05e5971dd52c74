//! `test-bench`: a workload for the host's benchmarks.
//!
//! `observe N [BYTES]` submits N observations of BYTES bytes (32);
//! `compute N` runs N rounds of an integer hash (pure guest CPU, no host
//! calls: one long dependency chain); `sort N` sorts N pseudo-random
//! numbers and sums them (branchy, memory-bound guest CPU); `words N`
//! counts N generated words in a map (text work with allocation, as agents
//! mostly do); `get N URL [THEN]` sends N `GET`s to URL (then one to THEN);
//! `spawn N PREFIX` spawns N `test-bench` children named `PREFIX-i`, each
//! holding only `observe`, and gives each the task `observe 1`; `keys N
//! [READS] [short]` puts N keys of 200 bytes (with `short`, of 1 to 3: the
//! number in hex; those not there yet) and lists the keys READS times (1;
//! needs `state`); `tasks`
//! answers how many tasks this instance has run, itself included (1: a new
//! instance); `refused N [URL]` observes (or GETs URL) N times whatever the
//! host answers, and answers how many were refused; anything else does
//! nothing.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Bench {
    /// Tasks this instance has run.
    tasks: u64,
}

fn count(arg: &str) -> Result<u64, String> {
    arg.trim()
        .parse()
        .map_err(|_| format!("`{arg}` is not a count"))
}

impl Agent for Bench {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        self.tasks += 1;
        let (verb, arg) = task
            .description
            .split_once(' ')
            .unwrap_or((&task.description, "0"));
        match verb {
            "observe" => {
                let mut words = arg.split_whitespace();
                let n = count(words.next().unwrap_or("0"))?;
                let bytes = words.next().map(count).transpose()?.unwrap_or(32);
                let payload = vec![7u8; usize::try_from(bytes).map_err(|e| e.to_string())?];
                for _ in 0..n {
                    ctx.observe(&payload)?;
                }
                Ok(Vec::new())
            }
            "compute" => {
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for i in 0..count(arg)? {
                    x ^= x >> 33;
                    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd).wrapping_add(i);
                }
                Ok(x.to_le_bytes().to_vec())
            }
            "sort" => {
                let n = count(arg)?;
                let mut x: u32 = 0x2545_f491;
                let mut v: Vec<u32> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        x
                    })
                    .collect();
                v.sort_unstable();
                let sum = v
                    .iter()
                    .step_by(97)
                    .fold(0u64, |s, &e| s.wrapping_add(u64::from(e)));
                Ok(sum.to_le_bytes().to_vec())
            }
            "words" => {
                // Text work, as agents mostly do: make N words, count them
                // in a map, format a summary of the most frequent.
                const VOCABULARY: [&str; 12] = [
                    "agent", "token", "log", "task", "kernel", "state", "host", "wasm", "batch",
                    "commit", "replay", "snapshot",
                ];
                let n = count(arg)?;
                let mut x: u32 = 0x9e37_79b9;
                let mut text = String::new();
                for _ in 0..n {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    text.push_str(VOCABULARY[(x % 12) as usize]);
                    text.push_str(if x.is_multiple_of(7) { ". " } else { " " });
                }
                let mut counts = std::collections::BTreeMap::new();
                for word in text.split_whitespace() {
                    *counts
                        .entry(word.trim_end_matches('.').to_lowercase())
                        .or_insert(0u64) += 1;
                }
                let mut top: Vec<_> = counts.into_iter().collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let summary: Vec<String> = top
                    .iter()
                    .take(5)
                    .map(|(w, c)| format!("{w}={c}"))
                    .collect();
                Ok(summary.join(",").into_bytes())
            }
            "get" => {
                let mut words = arg.split_whitespace();
                let n = count(words.next().unwrap_or("0"))?;
                let url = words.next().ok_or("get N URL [THEN]")?;
                let mut bytes = 0;
                for _ in 0..n {
                    bytes += toka_guest::http::get(url)
                        .map_err(|e| e.to_string())?
                        .body()
                        .len();
                }
                if let Some(then) = words.next() {
                    toka_guest::http::get(then).map_err(|e| e.to_string())?;
                }
                Ok(bytes.to_string().into_bytes())
            }
            "spawn" => {
                let mut words = arg.split_whitespace();
                let n = count(words.next().unwrap_or("0"))?;
                let prefix = words.next().ok_or("spawn N PREFIX")?;
                for i in 0..n {
                    let child = ctx.spawn("test-bench", &format!("{prefix}-{i}"), &["observe"])?;
                    ctx.schedule(child, "observe 1")?;
                }
                Ok(n.to_string().into_bytes())
            }
            "keys" => {
                let mut words = arg.split_whitespace();
                let n = count(words.next().unwrap_or("0"))?;
                let reads = words.next().map(count).transpose()?.unwrap_or(1);
                let short = words.next() == Some("short");
                for i in ctx.keys().len() as u64..n {
                    let key = if short {
                        format!("{i:x}")
                    } else {
                        format!("{i:0>200}")
                    };
                    ctx.put(&key, [1u8])?;
                }
                let mut listed = 0;
                for _ in 0..reads {
                    listed += ctx.keys().len();
                }
                Ok(listed.to_string().into_bytes())
            }
            "tasks" => Ok(self.tasks.to_string().into_bytes()),
            "refused" => {
                // Observes (or GETs URL) N times whatever the host answers
                // (a token without the right is refused each time): how
                // many were refused.
                let mut words = arg.split_whitespace();
                let n = count(words.next().unwrap_or("0"))?;
                let url = words.next();
                let refused = (0..n)
                    .filter(|_| match url {
                        Some(url) => toka_guest::http::get(url).is_err(),
                        None => ctx.observe(b"x").is_err(),
                    })
                    .count();
                Ok(refused.to_string().into_bytes())
            }
            _ => Ok(Vec::new()),
        }
    }
}

toka_guest::export_agent!(Bench);
