//! `llm-planner`: plans a goal with a language model, has workers do the
//! steps, and asks the model to sum up what they found.
//!
//! A goal is a task whose text is a JSON object:
//!
//! ```json
//! {"goal": "Compare three note-taking apps",
//!  "base_url": "http://127.0.0.1:8080/v1", "model": "gpt-4o-mini"}
//! ```
//!
//! with optional `max_steps` (default 5, at most 20), `attempts` (asks for
//! a plan at most this often when the answer is malformed; default 3),
//! `retries` (after a 429 or 5xx; default 3), `timeout_secs` (per request;
//! default 60) and `workers` (default 3, at most 16). Unknown fields are
//! refused, so a typo does not go unnoticed.
//!
//! 1. It asks `BASE_URL/chat/completions` (any OpenAI-compatible server)
//!    for a plan as JSON (`{"steps": [{"task": "..."}]}`, see `plan`),
//!    validates it and asks again, saying what was wrong, when it is not.
//! 2. It spawns `worker` agents with `observe` and `schedule` back to
//!    itself only — never its `http` right or a secret — and schedules
//!    each step as `reply-to PLANNER step JOB.N: TASK`.
//! 3. Each worker answers with a task `result JOB.N REPORT`; the planner
//!    keeps the results in its state.
//! 4. With the last result in, it asks the model to sum up, observes the
//!    summary (topic `summary`) and returns it. A task `summarize` asks
//!    again for a job whose summary failed.
//!
//! Its token needs `observe`, `state`, `spawn worker`, `schedule *` (its
//! workers report back by scheduling onto it: a right's target is relative
//! to its holder, so only `*` covers the planner's id for them; each worker
//! is delegated that id alone), `http HOST:PORT` for the endpoint, and, for
//! an endpoint that takes a key, `secret NAME HOST:PORT` (the host adds the
//! key; the agent never sees it). Every request is journaled: after a crash
//! the task runs again and gets the model's recorded answers.

mod chat;
mod plan;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toka_guest::{Agent, AgentId, Context, Level, Task};

use chat::{ChatError, Endpoint, message};

/// The state key of the job in progress (JSON).
const JOB: &str = "job";
/// The state key listing the planner's workers (16 bytes per id).
const WORKERS: &str = "workers";
/// The state key counting jobs (for step names).
const JOBS: &str = "jobs";

#[derive(Default)]
struct LlmPlanner;

/// A goal and where to plan it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    goal: String,
    base_url: String,
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_max_steps")]
    max_steps: usize,
    #[serde(default = "default_attempts")]
    attempts: u32,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_workers")]
    workers: usize,
}

fn default_model() -> String {
    "gpt-4o-mini".into()
}
fn default_max_steps() -> usize {
    5
}
fn default_attempts() -> u32 {
    3
}
fn default_retries() -> u32 {
    3
}
fn default_timeout() -> u64 {
    60
}
fn default_workers() -> usize {
    3
}

impl Config {
    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|e| {
            format!(
                "a goal is JSON like {{\"goal\": \"...\", \"base_url\": \"http://HOST:PORT/v1\", \"model\": \"...\"}}: {e}"
            )
        })?;
        if config.goal.trim().is_empty() {
            return Err("the goal is empty".into());
        }
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(format!(
                "base_url `{}` is not an http:// or https:// URL",
                config.base_url
            ));
        }
        for (name, value, max) in [
            ("max_steps", config.max_steps, 20),
            ("attempts", config.attempts as usize, 5),
            ("retries", config.retries as usize, 6),
            ("workers", config.workers, 16),
        ] {
            if value == 0 && name != "retries" || value > max {
                return Err(format!("{name} is {value}; it must be 1 to {max}"));
            }
        }
        Ok(config)
    }

    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            base_url: &self.base_url,
            model: &self.model,
            timeout: Duration::from_secs(self.timeout_secs.clamp(1, 600)),
            retries: self.retries,
        }
    }
}

/// A job in progress: its plan and the results so far.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    number: u64,
    config: Config,
    steps: Vec<String>,
    results: Vec<Option<String>>,
}

impl Agent for LlmPlanner {
    fn handle_task(&mut self, ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let text = task.description.trim();
        if let Some(rest) = text.strip_prefix("result ") {
            return result(ctx, rest);
        }
        if text == "summarize" {
            let job = load_job(ctx).ok_or("no job is waiting for its summary")?;
            if job.results.iter().any(Option::is_none) {
                return Err("the job's results are not all in yet".into());
            }
            return summarize(ctx, &job);
        }
        plan_goal(ctx, Config::parse(text)?)
    }
}

/// Plans a goal, spawns workers, schedules the steps.
fn plan_goal(ctx: &mut Context, config: Config) -> Result<Vec<u8>, String> {
    if let Some(old) = load_job(ctx) {
        ctx.log(
            Level::Warn,
            &format!("abandoning job {} for a new goal", old.number),
        );
    }
    let steps = ask_for_plan(ctx, &config)?;
    let number = ctx.get_u64(JOBS).unwrap_or(0) + 1;
    ctx.put_u64(JOBS, number)?;

    let wanted = config.workers.min(steps.len());
    let mut workers = load_workers(ctx);
    let me = ctx.id();
    let reply = format!("schedule {me}");
    while workers.len() < wanted {
        let name = format!("llm-worker-{}", workers.len() + 1);
        workers.push(ctx.spawn("worker", &name, &["observe", reply.as_str()])?);
    }
    let ids: Vec<u8> = workers.iter().flat_map(|w| w.to_bytes()).collect();
    ctx.put(WORKERS, ids)?;

    let job = Job {
        number,
        config,
        results: vec![None; steps.len()],
        steps,
    };
    save_job(ctx, &job)?;
    for (i, step) in job.steps.iter().enumerate() {
        let worker = workers[i % wanted];
        ctx.schedule(
            worker,
            &format!("reply-to {me} step {number}.{}: {step}", i + 1),
        )?;
    }
    let summary = format!(
        "job {number}: {} steps for `{}`: {}",
        job.steps.len(),
        job.config.goal,
        job.steps.join(" | ")
    );
    ctx.observe_topic("plan", &summary)?;
    Ok(summary.into_bytes())
}

/// Asks for a plan until one validates (at most `attempts` times).
fn ask_for_plan(ctx: &Context, config: &Config) -> Result<Vec<String>, String> {
    let endpoint = config.endpoint();
    let mut messages = vec![
        message(
            "system",
            &format!(
                "You are a planner. Break the user's goal into 1 to {} steps that separate workers can do independently, each one short sentence. Answer with JSON only, exactly this shape: {}",
                config.max_steps,
                plan::SCHEMA
            ),
        ),
        message("user", &config.goal),
    ];
    let mut problem = String::new();
    for attempt in 1..=config.attempts {
        let answer = match endpoint.complete(&messages, true) {
            Ok(answer) => answer,
            Err(ChatError::Malformed(why)) => {
                problem = why;
                ctx.log(Level::Warn, &format!("plan attempt {attempt}: {problem}"));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        match plan::parse(&answer, config.max_steps) {
            Ok(steps) => return Ok(steps),
            Err(why) => {
                ctx.log(Level::Warn, &format!("plan attempt {attempt}: {why}"));
                messages.push(message("assistant", &answer));
                messages.push(message(
                    "user",
                    &format!(
                        "That answer is not usable: {why}. Answer again with JSON only, exactly this shape: {} (1 to {} steps).",
                        plan::SCHEMA,
                        config.max_steps
                    ),
                ));
                problem = why;
            }
        }
    }
    Err(format!(
        "no usable plan after {} attempts; the last answer: {problem}",
        config.attempts
    ))
}

/// Takes a worker's result; with the last one in, sums up.
fn result(ctx: &mut Context, rest: &str) -> Result<Vec<u8>, String> {
    let (step, report) = rest.split_once(' ').unwrap_or((rest, ""));
    let Some(mut job) = load_job(ctx) else {
        return Ok(format!("no job in progress; result {step} ignored").into_bytes());
    };
    let index = step
        .split_once('.')
        .filter(|(number, _)| number.parse() == Ok(job.number))
        .and_then(|(_, n)| n.parse::<usize>().ok())
        .filter(|n| (1..=job.steps.len()).contains(n));
    let Some(n) = index else {
        return Ok(format!("result {step} is not for job {}; ignored", job.number).into_bytes());
    };
    if job.results[n - 1].is_some() {
        return Ok(format!("result {step} is in already; ignored").into_bytes());
    }
    job.results[n - 1] = Some(report.to_owned());
    save_job(ctx, &job)?;
    let missing = job.results.iter().filter(|r| r.is_none()).count();
    if missing > 0 {
        return Ok(format!("result {step} in; {missing} to go").into_bytes());
    }
    summarize(ctx, &job)
}

/// Asks the model to sum up a job, observes and returns the summary.
fn summarize(ctx: &mut Context, job: &Job) -> Result<Vec<u8>, String> {
    let mut results = String::new();
    for (i, (step, result)) in job.steps.iter().zip(&job.results).enumerate() {
        let result = result.as_deref().unwrap_or("(no result)");
        results.push_str(&format!("{}. {step} -> {result}\n", i + 1));
    }
    let messages = [
        message(
            "system",
            "You sum up what workers found for a goal, in a few plain sentences.",
        ),
        message(
            "user",
            &format!("Goal: {}\nResults:\n{results}", job.config.goal),
        ),
    ];
    let summary = job
        .config
        .endpoint()
        .complete(&messages, false)
        .map_err(|e| format!("the summary failed: {e} (schedule `summarize` to ask again)"))?;
    let summary = summary.trim().to_owned();
    ctx.observe_topic("summary", &summary)?;
    ctx.delete(JOB)?;
    Ok(summary.into_bytes())
}

fn load_job(ctx: &Context) -> Option<Job> {
    serde_json::from_slice(&ctx.get(JOB)?).ok()
}

fn save_job(ctx: &mut Context, job: &Job) -> Result<(), String> {
    let bytes = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    ctx.put(JOB, bytes)?;
    Ok(())
}

fn load_workers(ctx: &Context) -> Vec<AgentId> {
    ctx.get(WORKERS)
        .unwrap_or_default()
        .chunks_exact(16)
        .filter_map(|c| c.try_into().ok().map(AgentId::from_bytes))
        .collect()
}

toka_guest::export_agent!(LlmPlanner);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_are_json_with_checked_fields() {
        let config =
            Config::parse(r#"{"goal":"g","base_url":"http://127.0.0.1:8080/v1"}"#).unwrap();
        assert_eq!(
            (config.model.as_str(), config.max_steps),
            ("gpt-4o-mini", 5)
        );
        for (text, problem) in [
            ("plan my week", "a goal is JSON"),
            (r#"{"goal":"g","base_url":"ftp://x"}"#, "not an http"),
            (r#"{"goal":" ","base_url":"http://x"}"#, "empty"),
            (
                r#"{"goal":"g","base_url":"http://x","workers":0}"#,
                "workers is 0",
            ),
            (
                r#"{"goal":"g","base_url":"http://x","modle":"m"}"#,
                "unknown field",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(problem), "{text}: {err}");
        }
    }
}
