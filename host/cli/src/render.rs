//! Events as readable lines and as JSON objects.

use std::collections::BTreeMap;

use serde_json::Value;
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

    /// `operator` for the system, the agent's name (escaped), or its short id.
    pub(crate) fn who(&self, id: EntityId) -> String {
        if id == EntityId::SYSTEM {
            return "operator".into();
        }
        self.agents
            .get(&id)
            .map_or_else(|| id.short(), |name| text(name))
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
            c if c.is_control() || is_invisible(c) => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how a terminal shows the rest of a line without
/// showing themselves: bidirectional overrides and isolates, zero-width
/// marks.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A name, key or reason from the log as printable text: anything an agent
/// or an operator chose is escaped before it reaches a terminal.
pub(crate) fn text(s: &str) -> String {
    one_line(s.as_bytes(), 2000)
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", one_line(s.as_bytes(), 120))
}

/// One readable line for an event of record `seq`.
pub(crate) fn human(seq: u64, origin: EntityId, event: &Event, names: &Names) -> String {
    let by = names.who(origin);
    let body = match event {
        Event::ComponentInstalled { component } => format!(
            "component {} installed ({}, {})",
            text(&component.name),
            component.digest.short(),
            size(component.size)
        ),
        Event::AgentForgotten { agent, .. } => {
            format!("terminated agent {} forgotten", names.agent(*agent))
        }
        Event::ComponentRemoved { component, name } => {
            format!("component {} removed ({})", text(name), component.short())
        }
        Event::AgentSpawned { agent, parent, .. } => {
            format!(
                "agent {} spawned by {}",
                names.agent(*agent),
                names.who(*parent)
            )
        }
        Event::AgentTerminated { agent, by, reason } => format!(
            "agent {} terminated by {}: {}",
            names.agent(*agent),
            names.who(*by),
            text(reason)
        ),
        Event::AgentFaulted {
            agent,
            reason,
            consecutive,
        } => format!(
            "agent {} faulted ({consecutive} in a row): {}",
            names.agent(*agent),
            text(reason)
        ),
        Event::TaskScheduled {
            task, agent, spec, ..
        } => format!(
            "task {} scheduled for {} by {by}: {}",
            task.short(),
            names.who(*agent),
            quoted(&spec.description)
        ),
        Event::TaskSent {
            task, agent, spec, ..
        } => format!(
            "task {} sent to cell {} for {} by {by}: {}",
            task.short(),
            agent.cell(),
            names.who(*agent),
            quoted(&spec.description)
        ),
        Event::TasksSent { through, count } => {
            format!("{count} parcel(s) up to record {through} handed to the other cells")
        }
        Event::ChangeRefused { from_seq, reason } => format!(
            "the configuration cell's change of record {from_seq} refused: {}",
            text(reason)
        ),
        Event::TaskRefused {
            task,
            agent,
            from_cell,
            reason,
            ..
        } => format!(
            "task {} from cell {from_cell} refused for {}: {}",
            task.short(),
            names.who(*agent),
            text(reason)
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
            "task {} of {} failed: {}",
            task.short(),
            names.who(*agent),
            text(reason)
        ),
        Event::ObservationEmitted { agent, topic, data } => match topic {
            Some(topic) => format!(
                "{} observed [{}]: {}",
                names.who(*agent),
                text(topic),
                one_line(data, 200)
            ),
            None => format!("{} observed: {}", names.who(*agent), one_line(data, 200)),
        },
        Event::StatePut { agent, key, value } => format!(
            "{} set state `{}` ({})",
            names.who(*agent),
            text(key),
            size(value.len() as u64)
        ),
        Event::StateDeleted { agent, key, .. } => {
            format!("{} deleted state `{}`", names.who(*agent), text(key))
        }
        Event::TokenRevoked { revocation_id } => {
            format!("token revoked: {}", hex(revocation_id))
        }
        Event::CapabilityDenied { agent, denial } => {
            let target = denial.targets.first().map_or("", String::as_str);
            let what = text(&format!("{} {target}", denial.operation));
            let reason = text(&denial.reason);
            if denial.delegation {
                format!(
                    "denied {} delegating `{}`: {}",
                    names.who(*agent),
                    what.trim_end(),
                    reason
                )
            } else {
                format!(
                    "denied {}: {}: {}",
                    names.who(*agent),
                    what.trim_end(),
                    reason
                )
            }
        }
        Event::ExtensionApplied { family, opcode, .. } => {
            format!("{by}: extension {} opcode {opcode} applied", text(family))
        }
        Event::AgentQuarantined { agent, reason } => {
            format!(
                "agent {} quarantined: {}",
                names.agent(*agent),
                text(reason)
            )
        }
        Event::AgentResumed { agent } => format!("agent {} resumed by {by}", names.agent(*agent)),
        Event::RulesAdopted { rules } => format!(
            "rules version {} adopted: {}",
            rules.version,
            describe_rules(rules)
        ),
        Event::BudgetsSet { agent, budgets } => format!(
            "agent {} budgets: {}",
            names.agent(*agent),
            describe_budgets(budgets)
        ),
        Event::RefusalsRecorded {
            task,
            agent,
            first,
            count,
        } => format!(
            "task {} of {}: {count} refused operation(s) recorded at index {first}",
            task.short(),
            names.who(*agent)
        ),
        Event::QuotaExceeded {
            agent,
            reason,
            consecutive,
            ..
        } => format!(
            "agent {} ran into a quota ({consecutive} faults in a row): {}",
            names.agent(*agent),
            text(reason)
        ),
        Event::HostCondition { agent, reason } => format!(
            "host condition while running {}: {}",
            names.agent(*agent),
            text(reason)
        ),
        Event::PublisherTrusted { publisher } => format!(
            "publisher `{}` trusted (key {})",
            text(&publisher.name),
            toka_host::PublisherKey::from_bytes(&publisher.key)
                .map_or_else(|_| hex(&publisher.key), |k| k.fingerprint())
        ),
        Event::PublisherDistrusted { name, packages } => format!(
            "publisher `{}` removed{}",
            text(name),
            if packages.is_empty() {
                String::new()
            } else {
                format!(", with its packages: {}", text(&packages.join(", ")))
            }
        ),
        Event::PackageInstalled { package, previous } => format!(
            "package {} {} by `{}` {} (component {}): approved {}",
            text(&package.name),
            text(&package.version),
            text(&package.publisher),
            match previous {
                Some(old) => format!("upgraded from {}", text(old)),
                None => "installed".to_owned(),
            },
            package.component.short(),
            if package.approved.is_empty() {
                "nothing".to_owned()
            } else {
                text(&package.approved.join(", "))
            }
        ),
        Event::PackageUninstalled { name } => format!("package {} uninstalled", text(name)),
        Event::AgentRebound {
            agent, component, ..
        } => format!(
            "agent {} now runs component {}",
            names.agent(*agent),
            component.short()
        ),
        Event::HttpRequested {
            agent,
            task,
            index,
            method,
            url,
        } => format!(
            "{} sends request {index} of task {}: {} {}",
            names.who(*agent),
            task.short(),
            text(method),
            text(url)
        ),
        Event::HttpResponded {
            agent,
            task,
            index,
            status,
            body_len,
            failure,
            secret,
            ..
        } => {
            let with = secret
                .as_ref()
                .map(|s| format!(" (secret {} injected)", text(s)))
                .unwrap_or_default();
            match (status, failure) {
                (Some(status), _) => format!(
                    "{} got response {index} of task {}: {status}, {}{with}",
                    names.who(*agent),
                    task.short(),
                    size(*body_len)
                ),
                (None, failure) => format!(
                    "{} got no response {index} of task {}: {}{with}",
                    names.who(*agent),
                    task.short(),
                    text(failure.as_deref().unwrap_or("failed"))
                ),
            }
        }
    };
    format!("#{seq:<5} {body}")
}

/// One JSON object for an event of a record: `seq`, `time`, `kind`,
/// `origin`, `cause` (`{task, index}` when an agent submitted it inside a
/// task), and the kind's own fields — the API's event view, so `toka events
/// --json` and `GET /v1/events` agree.
pub(crate) fn json(applied: &Applied, event: &Event) -> Value {
    let view = toka_server::event_view_of(
        applied.seq,
        applied.time,
        applied.origin,
        applied.cause,
        event,
    );
    serde_json::to_value(view).unwrap_or(Value::Null)
}

fn rate(rate: &toka_kernel::Rate, unit: impl Fn(u64) -> String) -> String {
    if rate.is_unlimited() {
        "unlimited".into()
    } else {
        format!("{}/s (burst {})", unit(rate.per_second), unit(rate.burst))
    }
}

/// The rules in one line.
fn describe_rules(rules: &toka_kernel::Rules) -> String {
    let q = &rules.quotas;
    let count = |n: u64| n.to_string();
    let bytes = |n: u64| size(n);
    let mut parts = vec![
        format!("log {}", rate(&q.log_bytes, bytes)),
        format!("operations {}", rate(&q.ops, count)),
        format!("tasks {}", rate(&q.tasks, count)),
    ];
    if let Some(total) = q.log_bytes_total {
        parts.push(format!("log in all {}", size(total)));
    }
    if let Some(total) = q.tasks_total {
        parts.push(format!("tasks in all {total}"));
    }
    parts.push(format!(
        "{} live agents, {} children each, depth {}",
        rules.max_live_agents, rules.max_children, rules.max_depth
    ));
    parts.join(", ")
}

/// An agent's budgets in one line.
fn describe_budgets(b: &toka_kernel::Budgets) -> String {
    let mut parts = Vec::new();
    let mut put = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    put("log_rate", b.log_bytes_per_second.map(size));
    put("op_rate", b.ops_per_second.map(|n| n.to_string()));
    put("task_rate", b.tasks_per_second.map(|n| n.to_string()));
    put("log", b.log_bytes_total.map(size));
    put("tasks", b.tasks_total.map(|n| n.to_string()));
    put("children", b.children.map(|n| n.to_string()));
    parts.join(" ")
}

pub(crate) use toka_kernel::to_hex as hex;

/// A byte count for people.
pub(crate) use toka_host::approx_size as size;

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
