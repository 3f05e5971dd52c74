//! What the sandbox asks of the runtime ([`Effects`]): authorizing effects,
//! waiting for durability, journaling outbound requests, and the secrets
//! to inject into them.

use std::sync::Arc;

use toka_kernel::{AgentId, Digest, HttpOutcome, HttpRequest, TaskId};

use crate::capability::policy::{Check, Denied};
use crate::capability::rights::{RightOp, SecretBinding};
use crate::runtime::sequencer::Sequencer;
use crate::sandbox::places::Places;
use crate::sandbox::{Answer, Effects, HostGone, Injection, Journaled};
use crate::store::secrets::SecretStore;

/// The runtime's side of the sandbox.
pub(crate) struct Outbound {
    pub(crate) sequencer: Sequencer,
    pub(crate) secrets: Arc<SecretStore>,
    pub(crate) data_id: [u8; 16],
    /// Places for open outbound connections, all agents together, at
    /// most three quarters of them held by one tree.
    pub(crate) connections: Arc<Places>,
    /// What each token's authority block grants outbound requests, by
    /// digest.
    grants: std::sync::Mutex<std::collections::HashMap<Digest, Arc<Grants>>>,
}

/// What a token's authority block grants outbound requests.
struct Grants {
    /// Its secret bindings.
    bindings: Vec<SecretBinding>,
    /// The hosts its `http` rights name (`name` or `name:port`; not `*`).
    named: Vec<String>,
}

/// Tokens whose grants are kept.
const GRANTS_KEPT: usize = 4096;

impl Outbound {
    /// `connections`: see
    /// [`HostConfig::outbound_connections`](crate::HostConfig::outbound_connections).
    pub(crate) fn new(
        sequencer: Sequencer,
        secrets: Arc<SecretStore>,
        data_id: [u8; 16],
        connections: usize,
    ) -> Self {
        Self {
            sequencer,
            secrets,
            data_id,
            connections: Places::new(connections, connections - connections / 4),
            grants: std::sync::Mutex::default(),
        }
    }

    /// What `agent`'s token grants outbound requests, read once per token.
    fn grants(&self, agent: AgentId) -> Result<Arc<Grants>, String> {
        let digest = self
            .sequencer
            .read(|k| {
                k.state()
                    .agent(agent)
                    .filter(|a| !a.is_terminated())
                    .map(|a| a.token)
            })
            .ok_or_else(|| format!("agent {agent} is gone"))?;
        if let Some(known) = self.cache().get(&digest) {
            return Ok(Arc::clone(known));
        }
        let rights = self.sequencer.authority_rights(&digest)?;
        let grants = Arc::new(Grants {
            bindings: rights.iter().filter_map(SecretBinding::of).collect(),
            named: rights
                .iter()
                .filter(|r| r.op() == RightOp::Http)
                .filter_map(|r| r.target())
                .filter(|t| *t != "*")
                .map(str::to_ascii_lowercase)
                .collect(),
        });
        let mut cache = self.cache();
        if cache.len() >= GRANTS_KEPT {
            cache.clear();
        }
        cache.insert(digest, Arc::clone(&grants));
        Ok(grants)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Digest, Arc<Grants>>> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn gone(stopped: crate::runtime::sequencer::Stopped) -> HostGone {
    HostGone(stopped.0)
}

impl Effects for Outbound {
    fn authorize(&self, agent: AgentId, check: &Check, record: bool) -> Result<(), Denied> {
        self.sequencer.authorize_effect(agent, check, record)
    }

    fn durable(&self) -> Answer<()> {
        let durable = self.sequencer.durable_now();
        Box::pin(async move { durable.await.map_err(gone) })
    }

    fn journal_request(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        request: HttpRequest,
    ) -> Answer<Journaled> {
        let sequencer = self.sequencer.clone();
        Box::pin(async move {
            sequencer
                .journal_request(agent, task, index, request)
                .await
                .map_err(gone)
        })
    }

    fn record_response(
        &self,
        agent: AgentId,
        task: TaskId,
        index: u32,
        outcome: HttpOutcome,
        secret: Option<String>,
        body: Vec<u8>,
    ) -> Answer<Result<(), String>> {
        let sequencer = self.sequencer.clone();
        Box::pin(async move {
            sequencer
                .record_response(agent, task, index, outcome, secret, body)
                .await
                .map_err(gone)
        })
    }

    fn connections(&self) -> Arc<Places> {
        Arc::clone(&self.connections)
    }

    fn injection(
        &self,
        agent: AgentId,
        scheme: &str,
        host: &str,
        port: u16,
    ) -> Result<Option<Injection>, String> {
        let grants = self.grants(agent)?;
        // The first binding for this host that the token (with its
        // delegation blocks) still grants.
        let Some(binding) = grants.bindings.iter().find(|b| {
            b.matches(host, port)
                && self
                    .sequencer
                    .authorize_effect(
                        agent,
                        &Check::literal(RightOp::Secret.name(), Some(&b.to_string())),
                        false,
                    )
                    .is_ok()
        }) else {
            return Ok(None);
        };
        let secret = self.secrets.value(&binding.name).ok_or_else(|| {
            format!(
                "secret {} is bound to {} but not set on this host (`toka secret set {}`)",
                binding.name, binding.host, binding.name
            )
        })?;
        if scheme != "https" && !(is_loopback(host) && binding.host.contains(':')) {
            return Err(format!(
                "secret {} would go to {host} in clear text; use https (plain http carries a secret only to a loopback host and port the right names, e.g. `secret {} 127.0.0.1:8080`)",
                binding.name, binding.name
            ));
        }
        let (header, value) = binding.header_value(&secret);
        Ok(Some(Injection {
            name: binding.name.clone(),
            header,
            value,
            secret,
        }))
    }

    fn bound_secrets(&self, agent: AgentId) -> Vec<Arc<str>> {
        let Ok(grants) = self.grants(agent) else {
            return Vec::new();
        };
        let mut secrets: Vec<Arc<str>> = grants
            .bindings
            .iter()
            .filter_map(|b| self.secrets.value(&b.name))
            .collect();
        secrets.sort();
        secrets.dedup();
        secrets
    }

    fn names_host(&self, agent: AgentId, host: &str, port: u16) -> bool {
        let with_port = format!("{host}:{port}");
        self.grants(agent).is_ok_and(|grants| {
            grants
                .named
                .iter()
                .any(|named| named.eq_ignore_ascii_case(host) || *named == with_port)
        })
    }

    fn data_id(&self) -> [u8; 16] {
        self.data_id
    }
}

/// Whether `host` (as a URL names it) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_is_loopback() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
