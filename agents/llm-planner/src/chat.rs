//! A client of an OpenAI-compatible `/v1/chat/completions` endpoint: what
//! OpenAI, llama.cpp's `llama-server`, vLLM and Ollama all serve.
//!
//! No key here: the host adds it (a `secret NAME HOST` right). Answers with
//! 429 or 5xx are retried after `Retry-After` (seconds, at most
//! [`MAX_WAIT`]) or an exponential backoff (1 s, 2 s, 4 s, ...).

use std::time::Duration;

use serde_json::{Value, json};
use toka_guest::http::{self, HttpError};

/// The longest wait before a retry.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);

/// Where to ask, and how patiently.
pub(crate) struct Endpoint<'a> {
    /// The base URL as OpenAI clients take it, e.g. `http://127.0.0.1:8080/v1`.
    pub(crate) base_url: &'a str,
    pub(crate) model: &'a str,
    pub(crate) timeout: Duration,
    /// Retries after a 429 or 5xx answer.
    pub(crate) retries: u32,
}

/// One chat message.
pub(crate) fn message(role: &str, content: &str) -> Value {
    json!({ "role": role, "content": content })
}

/// Why the endpoint gave no usable answer.
#[derive(Debug)]
pub(crate) enum ChatError {
    /// The request failed (unreachable, denied, timed out, too large).
    Http(String),
    /// An answer with an error status, after the retries.
    Status(u16, String),
    /// An answer that is not a chat completion (not JSON, no choices, no
    /// content): the caller may ask again.
    Malformed(String),
}

impl std::fmt::Display for ChatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatError::Http(why) => f.write_str(why),
            ChatError::Status(status, body) => {
                write!(f, "the endpoint answered {status}: {body}")
            }
            ChatError::Malformed(why) => f.write_str(why),
        }
    }
}

impl Endpoint<'_> {
    /// The assistant's answer to `messages` (with `json`, in JSON mode).
    pub(crate) fn complete(&self, messages: &[Value], json: bool) -> Result<String, ChatError> {
        let url = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "temperature": 0,
        });
        if json {
            body["response_format"] = json!({ "type": "json_object" });
        }
        let body = body.to_string();
        let mut attempt = 0;
        loop {
            let response = http::Request::post(&url)
                .header("accept", "application/json")
                .json(&body)
                .timeout(self.timeout)
                .send()
                .map_err(|e| ChatError::Http(describe(&e, self.base_url)))?;
            let status = response.status();
            if status == 429 || status >= 500 {
                if attempt < self.retries {
                    let wait = retry_after(response.header("retry-after"))
                        .unwrap_or(Duration::from_secs(1 << attempt.min(4)))
                        .min(MAX_WAIT);
                    toka_guest::sleep(wait);
                    attempt += 1;
                    continue;
                }
                return Err(ChatError::Status(status, snippet(response.body())));
            }
            if !response.is_success() {
                return Err(ChatError::Status(status, snippet(response.body())));
            }
            return content(response.body());
        }
    }
}

/// The first choice's content of a chat completion.
fn content(body: &[u8]) -> Result<String, ChatError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ChatError::Malformed(format!("the answer is not JSON ({e}): {}", snippet(body)))
    })?;
    let choices = value
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| ChatError::Malformed("the answer has no `choices` list".into()))?;
    let first = choices
        .first()
        .ok_or_else(|| ChatError::Malformed("the answer's choice list is empty".into()))?;
    first
        .pointer("/message/content")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ChatError::Malformed("the first choice has no message content".into()))
}

/// `Retry-After` in seconds (an HTTP date is not understood: back off).
fn retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn describe(e: &HttpError, base_url: &str) -> String {
    match e {
        HttpError::Connection { .. } | HttpError::Dns { .. } => {
            format!("the LLM endpoint {base_url} is unreachable: {e}")
        }
        HttpError::Denied { .. } => format!(
            "the host refused the request to the LLM endpoint {base_url}: grant `http HOST:PORT` for it (and set its secret, if one is bound)"
        ),
        _ => format!("asking the LLM endpoint {base_url} failed: {e}"),
    }
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_choice_is_the_answer() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(content(ok).unwrap(), "hi");
        for (body, problem) in [
            (&b"<html>"[..], "not JSON"),
            (br#"{"choices":[]}"#, "empty"),
            (br#"{"error":"x"}"#, "no `choices`"),
            (br#"{"choices":[{"message":{}}]}"#, "no message content"),
        ] {
            let err = content(body).unwrap_err().to_string();
            assert!(err.contains(problem), "{err}");
        }
    }

    #[test]
    fn retry_after_takes_seconds() {
        assert_eq!(retry_after(Some(" 2 ")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }
}
