//! Outgoing HTTP (`wasi:http`), gated per request by `http HOST` rights.
//!
//! Before a request leaves the host, the gate checks the agent's token for
//! `http HOST:PORT` or `http HOST` (or `http *`), revocation and expiry
//! included. A refusal is recorded in the log like a denied operation and
//! the guest gets `error-code::HTTP-request-denied`; no connection is made.
//! An allowed request waits until every operation applied so far is
//! durable, so nothing the agent did before it can be lost after the world
//! saw the request.

use http_body_util::BodyExt;
use toka_kernel::AgentId;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

use crate::capability::policy::Check;
use std::sync::Arc;

use crate::sandbox::Effects;

/// A store's `wasi:http` state: the context and the gate.
pub(crate) struct HttpGate {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: Hooks,
}

/// The hooks that gate each request.
pub(crate) struct Hooks {
    agent: AgentId,
    effects: Arc<dyn Effects>,
}

impl HttpGate {
    pub(crate) fn new(agent: AgentId, effects: Arc<dyn Effects>) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks { agent, effects },
        }
    }
}

/// What a request to `uri` needs: `http HOST:PORT` or `http HOST`.
fn check_for(uri: &http::Uri) -> Result<Check, Error> {
    let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
    let host = authority.host().to_ascii_lowercase();
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let port = authority.port_u16().unwrap_or(default_port);
    Ok(Check {
        operation: "http",
        targets: vec![format!("{host}:{port}"), host],
    })
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let agent = self.agent;
        let permitted = check_for(request.uri()).map(|check| {
            self.effects
                .authorize(agent, &check, true)
                .map_err(|reason| (check, reason))
        });
        let durable = self.effects.durable();
        Box::new(async move {
            match permitted? {
                Ok(()) => {}
                Err((check, reason)) => {
                    tracing::info!(agent = %agent.short(), host = %check.primary(), %reason, "HTTP request denied");
                    return Err(Error::HttpRequestDenied);
                }
            }
            durable
                .await
                .map_err(|gone| Error::InternalError(Some(gone.to_string())))?;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_by_host_and_port() {
        let check = check_for(&"http://Example.com/x".parse().unwrap()).unwrap();
        assert_eq!(check.targets, ["example.com:80", "example.com"]);
        let check = check_for(&"https://example.com/".parse().unwrap()).unwrap();
        assert_eq!(check.targets, ["example.com:443", "example.com"]);
        let check = check_for(&"http://127.0.0.1:8080/".parse().unwrap()).unwrap();
        assert_eq!(check.targets, ["127.0.0.1:8080", "127.0.0.1"]);
        assert!(check_for(&"/relative".parse().unwrap()).is_err());
    }
}
