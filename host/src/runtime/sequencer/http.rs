//! Journaling outbound HTTP requests: in the log's order, and answered from
//! the log on a re-run (see `sandbox::http` for the whole path).

use std::sync::Arc;

use toka_kernel::{AgentId, Exchange, HttpOutcome, HttpRequest, Operation, Record, TaskId, to_hex};

use super::core::{Attachments, Request, Sequencer, Stopped};
use crate::sandbox::Journaled;

impl Sequencer {
    /// Journals request `index` of `agent`'s running `task`, authorized by
    /// the gate in order; or, when an earlier run journaled it, what the
    /// journal says.
    pub(crate) async fn journal_request(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        request: HttpRequest,
    ) -> Result<Journaled, Stopped> {
        let op = Operation::HttpRequest {
            task,
            index,
            request: Box::new(request.clone()),
        };
        let journaled = self
            .submit_deciding(agent, None, Request::Op(op), |core, _| {
                core.kernel.state().exchange(task, index)
            })
            .await?;
        Ok(match journaled {
            Ok(Ok(_)) => Journaled::Send,
            Ok(Err(refused)) => Journaled::Refused {
                denied: refused.kind == toka_kernel::RefusalKind::CapabilityDenied,
                quota: refused.quota.is_some(),
                message: refused.message,
            },
            Err(exchange) => {
                return self.journaled_answer(task, index, &request, exchange).await;
            }
        })
    }

    /// What the journal holds for a request an earlier run made.
    async fn journaled_answer(
        &self,
        task: TaskId,
        index: u32,
        request: &HttpRequest,
        exchange: Exchange,
    ) -> Result<Journaled, Stopped> {
        self.wait_durable(exchange.response.unwrap_or(exchange.request))
            .await?;
        let broken = |why: String| {
            Journaled::Diverged(format!(
                "request {index} of task {task} cannot be answered from the journal: {why}"
            ))
        };
        // The same request has the same digest; the record is read only to
        // name the difference.
        if exchange.digest != request.digest() {
            let recorded = match self.recorded_op(exchange.request) {
                Ok(Operation::HttpRequest { request, .. }) => describe(&request),
                Ok(other) => format!("record {} (a {})", exchange.request, other.kind()),
                Err(why) => return Ok(broken(why)),
            };
            return Ok(Journaled::Diverged(format!(
                "the re-run diverged at request {index} of task {task}: the log has {recorded}, the re-run sent {}",
                describe(request)
            )));
        }
        let Some(seq) = exchange.response else {
            return Ok(Journaled::Send);
        };
        let outcome = match self.recorded_op(seq) {
            Ok(Operation::HttpResponse { outcome, .. }) => *outcome,
            Ok(other) => return Ok(broken(format!("record {seq} is a {}", other.kind()))),
            Err(why) => return Ok(broken(why)),
        };
        let body = match &outcome {
            HttpOutcome::Response { body, .. } => match self.blob(body) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(broken(format!("its body {} is missing", body.short()))),
                Err(why) => return Ok(broken(why)),
            },
            HttpOutcome::Failed { .. } => Vec::new(),
        };
        Ok(Journaled::Answered { outcome, body })
    }

    /// Records what came back for request `index` of `task`, the body as a
    /// blob beside the record.
    pub(crate) async fn record_response(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        outcome: HttpOutcome,
        secret: Option<String>,
        body: Vec<u8>,
    ) -> Result<Result<(), String>, Stopped> {
        let attachments = match &outcome {
            HttpOutcome::Response { body: digest, .. } => Attachments {
                blob: Some((*digest, Arc::from(body))),
                ..Attachments::default()
            },
            HttpOutcome::Failed { .. } => Attachments::default(),
        };
        let op = Operation::HttpResponse {
            task,
            index,
            outcome: Box::new(outcome),
            secret,
        };
        Ok(match self.submit_system(agent, op, attachments).await? {
            Ok(_) => {
                // The agent's next request will wait for this record: its
                // commit starts now, while the agent reads the answer.
                self.hurry();
                Ok(())
            }
            Err(e) => {
                // E.g. the task was terminated meanwhile.
                tracing::info!(agent = %agent.short(), task = %task.short(), index, error = %e, "response not recorded");
                Err(format!("the response could not be recorded: {e}"))
            }
        })
    }

    pub(crate) fn recorded_op(&self, seq: u64) -> Result<Operation, String> {
        let store = Arc::clone(&self.lock().store);
        let bytes = store
            .record(seq)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("record {seq} is missing from the store"))?;
        Record::decode(&bytes)
            .map(|r| r.command.op)
            .map_err(|e| format!("record {seq}: {e}"))
    }

    fn blob(&self, digest: &toka_kernel::Digest) -> Result<Option<Vec<u8>>, String> {
        let store = Arc::clone(&self.lock().store);
        store.blob(digest).map_err(|e| e.to_string())
    }
}

/// A request, briefly, for divergence messages.
fn describe(request: &HttpRequest) -> String {
    format!(
        "{} {} (headers {}, {}-byte body {})",
        request.method,
        crate::text::clip(&request.url, 200),
        &to_hex(request.headers.as_bytes())[..12],
        request.body_len,
        &to_hex(request.body.as_bytes())[..12],
    )
}

impl Sequencer {
    /// The rights the token `digest` names in its authority block
    /// (delegation blocks may have narrowed them: authorize each before
    /// use).
    pub(crate) fn authority_rights(
        &self,
        digest: &toka_kernel::Digest,
    ) -> Result<Vec<crate::capability::rights::Right>, String> {
        let token = {
            let mut core = self.lock();
            core.gate.token(digest).map_err(|e| e.to_string())?.clone()
        };
        Ok(token.authority_rights())
    }
}
