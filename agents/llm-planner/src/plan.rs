//! The plan the model must answer with, and its validation.
//!
//! Schema: `{"steps": [{"task": "one worker task"}, ...]}` with 1 to
//! `max_steps` steps; each task non-empty, at most [`MAX_TASK`] bytes
//! (line breaks become spaces). A model that wraps the JSON in a Markdown
//! code fence is forgiven the fence.

use serde::Deserialize;

/// The longest step task, in bytes.
pub(crate) const MAX_TASK: usize = 2000;

/// The schema, as the prompt states it.
pub(crate) const SCHEMA: &str = r#"{"steps": [{"task": "..."}]}"#;

#[derive(Deserialize)]
struct Plan {
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    task: String,
}

/// The steps of a plan answer, or what is wrong with it (for the re-ask).
pub(crate) fn parse(answer: &str, max_steps: usize) -> Result<Vec<String>, String> {
    let json = unfence(answer);
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let plan: Plan = serde_json::from_value(value)
        .map_err(|e| format!("the answer does not match the schema {SCHEMA} ({e})"))?;
    if plan.steps.is_empty() {
        return Err("the plan has no steps".into());
    }
    if plan.steps.len() > max_steps {
        return Err(format!(
            "the plan has {} steps, at most {max_steps} are allowed",
            plan.steps.len()
        ));
    }
    plan.steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| {
            let task = step.task.split_whitespace().collect::<Vec<_>>().join(" ");
            if task.is_empty() {
                return Err(format!("step {} has an empty task", i + 1));
            }
            if task.len() > MAX_TASK {
                return Err(format!(
                    "step {} is {} bytes, at most {MAX_TASK}",
                    i + 1,
                    task.len()
                ));
            }
            Ok(task)
        })
        .collect()
}

/// The JSON inside a Markdown code fence, or the answer as it is.
fn unfence(answer: &str) -> &str {
    let trimmed = answer.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_validated_against_the_schema() {
        assert_eq!(
            parse(r#"{"steps":[{"task":"a\n b"},{"task":"c"}]}"#, 5).unwrap(),
            ["a b", "c"]
        );
        assert_eq!(
            parse("```json\n{\"steps\":[{\"task\":\"x\"}]}\n```", 5).unwrap(),
            ["x"]
        );
        for (answer, problem) in [
            ("Sure! Here is a plan", "not JSON"),
            (r#"{"plan":[]}"#, "does not match the schema"),
            (r#"{"steps":[{"todo":"x"}]}"#, "does not match the schema"),
            (r#"{"steps":[]}"#, "no steps"),
            (r#"{"steps":[{"task":" "}]}"#, "empty task"),
            (r#"{"steps":[{"task":"a"},{"task":"b"}]}"#, "at most 1"),
        ] {
            let err = parse(answer, 1).unwrap_err();
            assert!(err.contains(problem), "{answer}: {err}");
        }
    }
}
