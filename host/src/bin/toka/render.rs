//! Events as readable lines and as JSON objects.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use toka_kernel::{AgentStatus, Applied, Digest, EntityId, Event, WorldState};

/// Display names of agents and components, learned from the state and from
/// events as they stream by.
#[derive(Debug, Default)]
pub(crate) struct Names {
    agents: BTreeMap<EntityId, String>,
}

impl Names {
    pub(crate) fn from_state(state: &WorldState) -> Self {
        Self {
            agents: state.agents().map(|(id, a)| (id, a.name.clone())).collect(),
        }
    }

    pub(crate) fn learn(&mut self, event: &Event) {
        if let Event::AgentSpawned { agent, spec, .. } = event {
            self.agents.insert(*agent, spec.name.clone());
        }
    }

    /// `operator` for the system, the agent's name, or its short id.
    pub(crate) fn who(&self, id: EntityId) -> String {
        if id == EntityId::SYSTEM {
            return "operator".into();
        }
        self.agents.get(&id).cloned().unwrap_or_else(|| id.short())
    }

    /// `name (short id)`.
    fn agent(&self, id: EntityId) -> String {
        format!("{} ({})", self.who(id), id.short())
    }
}

/// Bytes as one line of text: lossy UTF-8, control characters escaped, long
/// text cut.
pub(crate) fn one_line(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(' '),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", one_line(text.as_bytes(), 120))
}

/// One readable line for an event of record `seq`.
pub(crate) fn human(seq: u64, origin: EntityId, event: &Event, names: &Names) -> String {
    let by = names.who(origin);
    let body = match event {
        Event::ComponentInstalled { component } => format!(
            "component {} installed ({}, {})",
            component.name,
            component.digest.short(),
            size(component.size)
        ),
        Event::AgentSpawned { agent, parent, .. } => {
            format!(
                "agent {} spawned by {}",
                names.agent(*agent),
                names.who(*parent)
            )
        }
        Event::AgentTerminated { agent, by, reason } => format!(
            "agent {} terminated by {}: {reason}",
            names.agent(*agent),
            names.who(*by)
        ),
        Event::AgentFaulted {
            agent,
            reason,
            consecutive,
        } => format!(
            "agent {} faulted ({consecutive} in a row): {reason}",
            names.agent(*agent)
        ),
        Event::TaskScheduled {
            task, agent, spec, ..
        } => format!(
            "task {} scheduled for {} by {by}: {}",
            task.short(),
            names.who(*agent),
            quoted(&spec.description)
        ),
        Event::TaskStarted { task, agent } => {
            format!("task {} started by {}", task.short(), names.who(*agent))
        }
        Event::TaskCompleted {
            task,
            agent,
            output,
        } => format!(
            "task {} completed by {}: {}",
            task.short(),
            names.who(*agent),
            one_line(output, 120)
        ),
        Event::TaskFailed {
            task,
            agent,
            reason,
        } => format!(
            "task {} of {} failed: {reason}",
            task.short(),
            names.who(*agent)
        ),
        Event::ObservationEmitted { agent, topic, data } => match topic {
            Some(topic) => format!(
                "{} observed [{topic}]: {}",
                names.who(*agent),
                one_line(data, 200)
            ),
            None => format!("{} observed: {}", names.who(*agent), one_line(data, 200)),
        },
        Event::StatePut { agent, key, value } => format!(
            "{} set state `{key}` ({})",
            names.who(*agent),
            size(value.len() as u64)
        ),
        Event::StateDeleted { agent, key, .. } => {
            format!("{} deleted state `{key}`", names.who(*agent))
        }
        Event::TokenRevoked { revocation_id } => {
            format!("token revoked: {}", hex(revocation_id))
        }
        Event::CapabilityDenied { agent, denial } => {
            let target = denial.targets.first().map_or("", String::as_str);
            let what = format!("{} {target}", denial.operation);
            if denial.delegation {
                format!(
                    "denied {} delegating `{}`: {}",
                    names.who(*agent),
                    what.trim_end(),
                    denial.reason
                )
            } else {
                format!(
                    "denied {}: {}: {}",
                    names.who(*agent),
                    what.trim_end(),
                    denial.reason
                )
            }
        }
        Event::ExtensionApplied { family, opcode, .. } => {
            format!("{by}: extension {family} opcode {opcode} applied")
        }
        Event::AgentQuarantined { agent, reason } => {
            format!("agent {} quarantined: {reason}", names.agent(*agent))
        }
        Event::AgentResumed { agent } => format!("agent {} resumed by {by}", names.agent(*agent)),
    };
    format!("#{seq:<5} {body}")
}

/// One JSON object for an event of a record: `seq`, `time`, `kind`,
/// `origin`, `cause` (`{task, index}` when an agent submitted it inside a
/// task), and the kind's own fields.
pub(crate) fn json(applied: &Applied, event: &Event) -> Value {
    let mut object = json!({
        "seq": applied.seq,
        "time": applied.time.0,
        "kind": event.kind(),
        "origin": applied.origin.to_string(),
    });
    if let Some(cause) = applied.cause
        && let Value::Object(o) = &mut object
    {
        o.insert(
            "cause".into(),
            json!({"task": cause.task.to_string(), "index": cause.index}),
        );
    }
    let fields = match event {
        Event::TaskScheduled {
            task,
            agent,
            by,
            spec,
        } => {
            json!({"task": task.to_string(), "agent": agent.to_string(), "by": by.to_string(), "description": spec.description})
        }
        Event::TaskStarted { task, agent } => {
            json!({"task": task.to_string(), "agent": agent.to_string()})
        }
        Event::TaskCompleted {
            task,
            agent,
            output,
        } => {
            let mut v = json!({"task": task.to_string(), "agent": agent.to_string()});
            put_bytes(&mut v, "output", output);
            v
        }
        Event::TaskFailed {
            task,
            agent,
            reason,
        } => json!({"task": task.to_string(), "agent": agent.to_string(), "reason": reason}),
        Event::AgentSpawned {
            agent,
            parent,
            spec,
        } => json!({
            "agent": agent.to_string(),
            "parent": parent.to_string(),
            "name": spec.name,
            "component": spec.component.to_string(),
            "token": spec.token.to_string(),
            "rights": spec.rights,
        }),
        Event::AgentTerminated { agent, by, reason } => {
            json!({"agent": agent.to_string(), "by": by.to_string(), "reason": reason})
        }
        Event::AgentFaulted {
            agent,
            reason,
            consecutive,
        } => json!({"agent": agent.to_string(), "reason": reason, "consecutive": consecutive}),
        Event::ObservationEmitted { agent, topic, data } => {
            let mut v = json!({"agent": agent.to_string(), "topic": topic});
            put_bytes(&mut v, "data", data);
            v
        }
        Event::StatePut { agent, key, value } => {
            let mut v = json!({"agent": agent.to_string(), "key": key});
            put_bytes(&mut v, "value", value);
            v
        }
        Event::StateDeleted {
            agent,
            key,
            existed,
        } => json!({"agent": agent.to_string(), "key": key, "existed": existed}),
        Event::TokenRevoked { revocation_id } => json!({"revocation_id": hex(revocation_id)}),
        Event::CapabilityDenied { agent, denial } => json!({
            "agent": agent.to_string(),
            "operation": denial.operation,
            "target": denial.targets.first(),
            "targets": denial.targets,
            "delegation": denial.delegation,
            "reason": denial.reason,
        }),
        Event::ComponentInstalled { component } => json!({
            "digest": component.digest.to_string(),
            "name": component.name,
            "size": component.size,
        }),
        Event::ExtensionApplied {
            family,
            opcode,
            output,
        } => {
            let mut v = json!({"family": family, "opcode": opcode});
            put_bytes(&mut v, "output", output);
            v
        }
        Event::AgentQuarantined { agent, reason } => {
            json!({"agent": agent.to_string(), "reason": reason})
        }
        Event::AgentResumed { agent } => json!({"agent": agent.to_string()}),
    };
    if let (Value::Object(o), Value::Object(f)) = (&mut object, fields) {
        o.extend(f);
    }
    object
}

/// Bytes as `key` (text, when they are UTF-8) or `key_hex`.
fn put_bytes(v: &mut Value, key: &str, bytes: &[u8]) {
    if let Value::Object(o) = v {
        match std::str::from_utf8(bytes) {
            Ok(text) => o.insert(key.to_owned(), Value::String(text.to_owned())),
            Err(_) => o.insert(format!("{key}_hex"), Value::String(hex(bytes))),
        };
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A byte count for people.
pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// `active` or `terminated: reason`.
pub(crate) fn status(status: &AgentStatus) -> String {
    match status {
        AgentStatus::Active => "active".into(),
        AgentStatus::Terminated { reason } => format!("terminated: {reason}"),
        AgentStatus::Quarantined { reason } => format!("quarantined: {reason}"),
    }
}

/// The short form of a digest, for tables.
pub(crate) fn short(d: &Digest) -> String {
    d.short()
}
