//! Events as the API (and `toka events --json`) shows them: the record's
//! position, time, origin and cause, the event's kind and its own fields.

use serde_json::{Value, json};
use toka_host::CommittedRecord;
use toka_kernel::{EntityId, Event, OpKey, Timestamp, to_hex as hex};

use crate::views::{Cause, EventView};

/// One event of a committed record as the API shows it.
#[must_use]
pub fn event_view(record: &CommittedRecord, event: &Event) -> EventView {
    view(record.seq, record.time, record.origin, record.cause, event)
}

/// One event of a record at `seq` as the API shows it.
#[must_use]
pub fn view(
    seq: u64,
    time: Timestamp,
    origin: EntityId,
    cause: Option<OpKey>,
    event: &Event,
) -> EventView {
    let fields = match event {
        Event::TaskScheduled {
            task,
            agent,
            by,
            spec,
        } => {
            json!({"task": task.to_string(), "agent": agent.to_string(), "by": by.to_string(), "description": spec.description})
        }
        Event::TaskSent {
            task,
            agent,
            by,
            spec,
        } => {
            json!({"task": task.to_string(), "agent": agent.to_string(), "cell": agent.cell(), "by": by.to_string(), "description": spec.description})
        }
        Event::TasksSent { through, count } => json!({"through": through, "count": count}),
        Event::ChangeRefused { from_seq, reason } => {
            json!({"from_seq": from_seq, "reason": reason})
        }
        Event::TaskRefused {
            task,
            agent,
            by,
            from_cell,
            reason,
        } => json!({
            "task": task.to_string(),
            "agent": agent.to_string(),
            "by": by.to_string(),
            "from_cell": from_cell,
            "reason": reason,
        }),
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
        Event::AgentForgotten {
            agent,
            root,
            state_bytes,
        } => json!({
            "agent": agent.to_string(),
            "root": root.to_string(),
            "state_bytes": state_bytes,
        }),
        Event::ComponentRemoved { component, name } => json!({
            "digest": component.to_string(),
            "name": name,
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
        Event::RulesAdopted { rules } => json!({
            "version": rules.version,
            "max_live_agents": rules.max_live_agents,
            "max_children": rules.max_children,
            "max_depth": rules.max_depth,
            "quotas": quotas_json(&rules.quotas),
        }),
        Event::BudgetsSet { agent, budgets } => json!({
            "agent": agent.to_string(),
            "log_bytes_per_second": budgets.log_bytes_per_second,
            "ops_per_second": budgets.ops_per_second,
            "tasks_per_second": budgets.tasks_per_second,
            "log_bytes_total": budgets.log_bytes_total,
            "tasks_total": budgets.tasks_total,
            "children": budgets.children,
        }),
        Event::RefusalsRecorded {
            task,
            agent,
            first,
            count,
        } => {
            json!({"task": task.to_string(), "agent": agent.to_string(), "first": first, "count": count})
        }
        Event::QuotaExceeded {
            agent,
            quota,
            reason,
            consecutive,
        } => json!({
            "agent": agent.to_string(),
            "quota": format!("{quota:?}"),
            "reason": reason,
            "consecutive": consecutive,
        }),
        Event::HostCondition { agent, reason } => {
            json!({"agent": agent.to_string(), "reason": reason})
        }
        Event::PublisherTrusted { publisher } => json!({
            "name": publisher.name,
            "key": hex(&publisher.key),
        }),
        Event::PublisherDistrusted { name, packages } => {
            json!({"name": name, "packages": packages})
        }
        Event::PackageInstalled { package, previous } => json!({
            "name": package.name,
            "version": package.version,
            "publisher": package.publisher,
            "component": package.component.to_string(),
            "signed_hash": package.signed_hash,
            "approved": package.approved,
            "token": package.token.to_string(),
            "previous": previous,
        }),
        Event::PackageUninstalled { name } => json!({"name": name}),
        Event::AgentRebound {
            agent,
            component,
            token,
        } => json!({
            "agent": agent.to_string(),
            "component": component.to_string(),
            "token": token.to_string(),
        }),
        Event::HttpRequested {
            agent,
            task,
            index,
            method,
            url,
        } => json!({
            "agent": agent.to_string(),
            "task": task.to_string(),
            "index": index,
            "method": method,
            "url": url,
        }),
        Event::HttpResponded {
            agent,
            task,
            index,
            status,
            body,
            body_len,
            failure,
            secret,
        } => json!({
            "agent": agent.to_string(),
            "task": task.to_string(),
            "index": index,
            "status": status,
            "body": body.map(|d| d.to_string()),
            "body_len": body_len,
            "failure": failure,
            "secret": secret,
        }),
    };
    let Value::Object(fields) = fields else {
        unreachable!("every event's fields are a JSON object")
    };
    EventView {
        seq,
        time: time.0,
        kind: event.kind().to_owned(),
        origin: origin.to_string(),
        cause: cause.map(|c| Cause {
            task: c.task.to_string(),
            index: c.index,
        }),
        fields,
    }
}

/// The agents an event is about (for filters): the agent it names, and
/// the parent of a spawned one.
#[must_use]
pub fn agents_of(event: &Event) -> Vec<EntityId> {
    match event {
        Event::AgentSpawned { agent, parent, .. } => vec![*agent, *parent],
        Event::TaskScheduled { agent, by, .. }
        | Event::TaskSent { agent, by, .. }
        | Event::TaskRefused { agent, by, .. } => vec![*agent, *by],
        Event::AgentTerminated { agent, by, .. } => vec![*agent, *by],
        Event::TaskStarted { agent, .. }
        | Event::TaskCompleted { agent, .. }
        | Event::TaskFailed { agent, .. }
        | Event::AgentFaulted { agent, .. }
        | Event::ObservationEmitted { agent, .. }
        | Event::StatePut { agent, .. }
        | Event::StateDeleted { agent, .. }
        | Event::CapabilityDenied { agent, .. }
        | Event::AgentQuarantined { agent, .. }
        | Event::AgentResumed { agent }
        | Event::BudgetsSet { agent, .. }
        | Event::RefusalsRecorded { agent, .. }
        | Event::QuotaExceeded { agent, .. }
        | Event::HostCondition { agent, .. }
        | Event::AgentRebound { agent, .. }
        | Event::HttpRequested { agent, .. }
        | Event::HttpResponded { agent, .. }
        | Event::AgentForgotten { agent, .. } => vec![*agent],
        _ => Vec::new(),
    }
}

fn quotas_json(q: &toka_kernel::Quotas) -> Value {
    let rate = |r: &toka_kernel::Rate| {
        if r.is_unlimited() {
            Value::Null
        } else {
            json!({"per_second": r.per_second, "burst": r.burst})
        }
    };
    json!({
        "log_bytes": rate(&q.log_bytes),
        "ops": rate(&q.ops),
        "tasks": rate(&q.tasks),
        "log_bytes_total": q.log_bytes_total,
        "tasks_total": q.tasks_total,
    })
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
