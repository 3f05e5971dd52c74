//! The transition function: validate a command against the state, then mutate.
//!
//! Every operation is written in two halves. The first only reads and returns
//! early on any error; the second mutates and cannot fail. That is what makes
//! "a rejected command leaves the state unchanged" hold by construction.

use std::collections::VecDeque;

use crate::command::{Authorization, Command, OpKey, Timestamp};
use crate::error::{EntityKind, KernelError};
use crate::event::Event;
use crate::extension::{ExtensionCall, Registry};
use crate::id::{AgentId, EntityId, TaskId};
use crate::idempotency::{MAX_IDEMPOTENCY_KEY, Scheduled, request_digest};
use crate::limits::{Limit, Limits};
use crate::mail::{Cell, Change};
use crate::operation::{AgentSpec, Denial, OpKind, Operation, Refusal, TaskSpec};
use crate::quota::{Account, Cost};
use crate::rules::{Budgets, Quota, RULES_VERSION, Rules};
use crate::state::{
    AgentRecord, AgentStatus, Gap, JournalEntry, Prior, Replaced, Rewrite, Run, TaskRecord,
    TaskStatus, WorldState,
};

/// Refusal entries one [`Operation::RecordRefusals`] may carry.
pub const MAX_REFUSAL_RUNS: usize = 16;

/// Names no agent or component may take: the renderers use them for the
/// operator and the host.
const RESERVED_NAMES: [&str; 2] = ["operator", "system"];

/// The longest revocation id accepted (biscuit's are 64-byte signatures).
pub(crate) const MAX_REVOCATION_ID: usize = 256;

/// What `apply` needs besides the state and the command.
pub(crate) struct Env<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) registry: &'a Registry,
    /// The sequence number the command's record will get.
    pub(crate) seq: u64,
    /// The size of the command's record in bytes: what it costs the
    /// accounts it is charged to.
    pub(crate) record_len: u64,
    /// The cell of a cluster the log belongs to, if it does: part of every
    /// id minted (see [`EntityId::cell`]).
    pub(crate) cell: Option<Cell>,
    /// The command is a stored record being replayed: a rule that came
    /// after it was written does not judge it again (see
    /// [`WorldState::configure`]).
    pub(crate) recorded: bool,
    /// [`WorldState::forgettable`] of the state the command applies to,
    /// when the kernel has it already (see [`Kernel::forgettable`](crate::Kernel::forgettable)).
    pub(crate) forgettable: Option<&'a [AgentId]>,
}

/// The accounts a command is charged to, as they will be once it applies:
/// the origin's inline (no allocation on the hot path), its ancestors'
/// after it.
#[derive(Default)]
struct Charge {
    origin: Option<(AgentId, Account)>,
    ancestors: Vec<(AgentId, Account)>,
}

pub(crate) fn check_size(limit: Limit, max: u32, actual: usize) -> Result<(), KernelError> {
    check_count(limit, u64::from(max), actual as u64)
}

pub(crate) fn check_count(limit: Limit, max: u64, actual: u64) -> Result<(), KernelError> {
    if actual > max {
        return Err(KernelError::LimitExceeded { limit, max, actual });
    }
    Ok(())
}

pub(crate) fn denied(
    origin: EntityId,
    operation: OpKind,
    reason: impl Into<String>,
) -> KernelError {
    KernelError::CapabilityDenied {
        origin,
        operation,
        reason: reason.into(),
    }
}

impl WorldState {
    /// Applies `cmd`, taking its payloads into the events; on error nothing
    /// has changed.
    pub(crate) fn apply(&mut self, cmd: Command, env: &Env<'_>) -> Result<Vec<Event>, KernelError> {
        if cmd.time < self.time {
            return Err(KernelError::TimeWentBackwards {
                last: self.time,
                time: cmd.time,
            });
        }
        let kind = cmd.op.kind();
        self.check_authority(&cmd, kind)?;
        let cause = self.check_cause(&cmd, kind, env.limits)?;
        let charge = self.charge(&cmd, kind, env)?;
        let cause_task = cause.map(|key| key.task);

        // Inside a task, a state write remembers what it replaces, so a
        // re-run of the task can read the state as it was.
        let prior = match (&cause_task, &cmd.op) {
            (Some(task), Operation::PutState { key, .. } | Operation::DeleteState { key }) => {
                let before = self.agents.get(&cmd.origin).and_then(|a| a.state.get(key));
                let again = self
                    .tasks
                    .get(task)
                    .and_then(|t| t.status.run())
                    .is_some_and(|run| run.wrote(key))
                    && !self.overwritten.get(task).is_some_and(|k| k.contains(key));
                if again {
                    Replaced::Rewrite(Box::new(Rewrite {
                        key: key.clone(),
                        existed: before.is_some(),
                    }))
                } else {
                    Replaced::First(Box::new(Prior {
                        key: key.clone(),
                        value: before.cloned(),
                    }))
                }
            }
            _ => Replaced::Nothing,
        };
        // Outside any task (the agent's `init`): a key its running task
        // wrote is marked, so the task's next write of it is a first one.
        let outside = match (&cause_task, &cmd.op) {
            (None, Operation::PutState { key, .. } | Operation::DeleteState { key }) => {
                Some(key.clone())
            }
            _ => None,
        };
        let Command {
            origin, time, op, ..
        } = cmd;
        let limits = env.limits;
        let events = match op {
            Operation::ScheduleTask { agent, spec } => {
                self.schedule_task(origin, agent, spec, env)?
            }
            Operation::ScheduleTaskOnce { key, agent, spec } => {
                self.schedule_task_once(origin, key, agent, spec, env)?
            }
            Operation::StartTask { task } => self.start_task(origin, task, env.seq, time)?,
            Operation::CompleteTask { task, output } => {
                self.complete_task(origin, task, output, limits)?
            }
            Operation::FailTask { task, reason } => self.fail_task(origin, task, reason, limits)?,
            Operation::SpawnAgent { spec } | Operation::SpawnAgentSized { spec, .. } => {
                self.spawn_agent(origin, *spec, limits, env.cell.map(|c| c.index))?
            }
            Operation::TerminateAgent { agent, reason } => {
                self.terminate_agent(origin, agent, reason, limits)?
            }
            Operation::RecordFault { agent, reason } => {
                self.record_fault(origin, agent, reason, limits)?
            }
            Operation::EmitObservation { topic, data } => {
                check_size(Limit::Observation, limits.max_observation, data.len())?;
                if let Some(topic) = &topic {
                    check_size(Limit::Topic, limits.max_topic, topic.len())?;
                }
                vec![Event::ObservationEmitted {
                    agent: origin,
                    topic,
                    data,
                }]
            }
            Operation::PutState { key, value } => self.put_state(origin, key, value, limits)?,
            Operation::DeleteState { key } => self.delete_state(origin, key)?,
            Operation::RevokeToken { revocation_id } => {
                self.configure(Change::Revoke { revocation_id }, env)?
            }
            Operation::RecordDenial { denial } => self.record_denial(origin, *denial, limits)?,
            Operation::InstallComponent { component } => {
                self.install_component(origin, *component, limits)?
            }
            Operation::Extension {
                family,
                opcode,
                payload,
            } => self.extension(origin, time, family, opcode, &payload, env)?,
            Operation::QuarantineAgent { agent, reason } => {
                self.quarantine(agent, reason, limits)?
            }
            Operation::ResumeAgent { agent } => self.resume(agent)?,
            Operation::AdoptRules { rules } => self.adopt_rules(origin, *rules)?,
            Operation::SetBudgets { agent, budgets } => self.set_budgets(agent, *budgets)?,
            Operation::RecordRefusals {
                task,
                first,
                refusals,
            } => self.record_refusals(origin, task, first, &refusals, env)?,
            Operation::RecordQuotaHit {
                agent,
                quota,
                reason,
            } => self.record_quota_hit(origin, agent, quota, reason, limits)?,
            Operation::RecordHostCondition { agent, reason } => {
                check_size(Limit::Reason, limits.max_reason, reason.len())?;
                self.agent_of(agent)?;
                vec![Event::HostCondition { agent, reason }]
            }
            Operation::TrustPublisher { publisher } => {
                self.configure(Change::Trust { publisher }, env)?
            }
            Operation::DistrustPublisher { name } => {
                self.configure(Change::Distrust { name }, env)?
            }
            Operation::InstallPackage { component, package } => {
                self.install_package(*component, *package, limits)?
            }
            Operation::UninstallPackage { name } => self.uninstall_package(origin, name)?,
            Operation::HttpRequest {
                task,
                index,
                request,
            } => self.http_request(origin, task, index, *request, env.seq)?,
            Operation::HttpResponse {
                task,
                index,
                outcome,
                secret,
            } => self.http_response(origin, task, index, &outcome, secret, env)?,
            Operation::MarkSent { through } => self.mark_sent(through)?,
            Operation::DeliverTask { delivery } => self.deliver(*delivery, env)?,
            Operation::RemoveComponent { component } => self.remove_component(origin, component)?,
            Operation::ForgetTerminated => self.forget_terminated(origin, env.forgettable)?,
            Operation::RefuseDelivery { delivery, reason } => {
                self.refuse_delivery(*delivery, reason, env)?
            }
        };

        // Infallible bookkeeping, after the operation succeeded.
        self.time = time;
        for (agent, account) in charge.origin.into_iter().chain(charge.ancestors) {
            self.agents
                .get_mut(&agent)
                .expect("charged accounts belong to agents, and agents are never removed")
                .account = account;
        }
        if let Some(key) = cause {
            let run = self
                .tasks
                .get_mut(&key.task)
                .and_then(|t| match &mut t.status {
                    TaskStatus::Running(run) => Some(run),
                    TaskStatus::Queued => None,
                })
                .expect("check_cause found the task running, and no operation an agent submits ends its own task");
            if key.index > run.next_index {
                run.gaps.push(Gap {
                    first: run.next_index,
                    count: key.index - run.next_index,
                    seq: env.seq,
                    details: None,
                });
            }
            if let Replaced::First(first) = &prior
                && let Some(keys) = self.overwritten.get_mut(&key.task)
            {
                keys.remove(&first.key);
                if keys.is_empty() {
                    self.overwritten.remove(&key.task);
                }
            }
            run.push(JournalEntry::new(
                key.index,
                env.seq,
                created(&events),
                prior,
            ));
            run.next_index = key.index + 1;
        } else if let Some(key) = outside
            && let Some(task) = self.agents.get(&origin).and_then(|a| a.running)
            && self
                .tasks
                .get(&task)
                .and_then(|t| t.status.run())
                .is_some_and(|run| run.wrote(&key))
        {
            self.overwritten.entry(task).or_default().insert(key);
        }
        Ok(events)
    }

    /// What `cmd` costs and the accounts that pay it, checked: an agent's
    /// own operation is refused when its account or an ancestor's cannot
    /// pay; the host's records on an agent's behalf always pay (into debt).
    fn charge(&self, cmd: &Command, kind: OpKind, env: &Env<'_>) -> Result<Charge, KernelError> {
        let Some(rules) = &self.rules else {
            return Ok(Charge::default());
        };
        if cmd.origin == EntityId::SYSTEM || kind == OpKind::AdoptRules {
            return Ok(Charge::default());
        }
        let strict = cmd.auth == Authorization::Token;
        // A response's body and a child's token are stored beside the
        // record: the agent pays for them as for log bytes.
        let blob = match &cmd.op {
            Operation::HttpResponse { outcome, .. } => outcome.body_len(),
            Operation::SpawnAgentSized { token_bytes, .. } => u64::from(*token_bytes),
            _ => 0,
        };
        let cost = Cost {
            log_bytes: env.record_len.saturating_add(blob),
            ops: u64::from(strict),
            tasks: u64::from(strict && kind == OpKind::ScheduleTask),
        };
        let mut charge = Charge::default();
        for (id, agent, quotas) in self.accounts_up(rules, cmd.origin) {
            let account = agent
                .account
                .charged(&quotas, cost, cmd.time, strict)
                .map_err(|short| KernelError::QuotaExceeded {
                    agent: id,
                    quota: short.quota,
                    limit: short.limit,
                    wanted: short.wanted,
                })?;
            if charge.origin.is_none() {
                charge.origin = Some((id, account));
            } else {
                charge.ancestors.push((id, account));
            }
        }
        Ok(charge)
    }

    /// `agent` and each of its ancestors, with the quotas its account is
    /// held to: the rules', narrowed by its own budgets.
    fn accounts_up<'a>(
        &'a self,
        rules: &'a Rules,
        agent: AgentId,
    ) -> impl Iterator<Item = (AgentId, &'a AgentRecord, crate::rules::Quotas)> + 'a {
        let mut next = Some(agent);
        std::iter::from_fn(move || {
            let id = next?;
            let record = self.agents.get(&id)?;
            next = (record.parent != EntityId::SYSTEM).then_some(record.parent);
            let quotas = match &record.budgets {
                Some(budgets) => rules.quotas.narrowed(budgets),
                None => rules.quotas,
            };
            Some((id, record, quotas))
        })
    }

    /// Milliseconds of logical time after `now` until every account
    /// `agent`'s records are charged to (its own and each ancestor's) is
    /// out of log-bytes debt (0: none is, or no quotas apply). The
    /// host's records on an agent's behalf (a task's output, say) are
    /// charged into debt, never refused: the host starts the agent's next
    /// task only once it is paid, so outputs cannot outrun the quota.
    #[must_use]
    pub fn log_debt_ms(&self, agent: AgentId, now: Timestamp) -> u64 {
        let Some(rules) = &self.rules else {
            return 0;
        };
        self.accounts_up(rules, agent)
            .map(|(_, record, quotas)| record.account.log_debt_ms(&quotas, now))
            .max()
            .unwrap_or(0)
    }

    /// The lifetime log-bytes quota (`log=SIZE`) of an account `agent`'s
    /// records are charged to (its own or an ancestor's) that is spent, if
    /// one is: the host fails the agent's next task instead of starting
    /// it, since the records it writes for a task (its output among them)
    /// would be charged past the total.
    #[must_use]
    pub fn log_total_spent(&self, agent: AgentId) -> Option<KernelError> {
        let rules = self.rules.as_ref()?;
        self.accounts_up(rules, agent)
            .find_map(|(id, record, quotas)| {
                let limit = quotas.log_bytes_total?;
                let spent = record.account.log_bytes_total;
                (spent >= limit).then_some(KernelError::QuotaExceeded {
                    agent: id,
                    quota: Quota::LogBytesTotal,
                    limit,
                    wanted: spent,
                })
            })
    }

    /// Who may submit what, whatever a token says.
    fn check_authority(&self, cmd: &Command, kind: OpKind) -> Result<(), KernelError> {
        let origin = cmd.origin;
        if let Authorization::Operator(_) = cmd.auth {
            if origin != EntityId::SYSTEM {
                return Err(denied(
                    origin,
                    kind,
                    "an operator's command has the system as its origin",
                ));
            }
            if !kind.by_operator() {
                return Err(denied(
                    origin,
                    kind,
                    "operators may not submit this operation",
                ));
            }
            return Ok(());
        }
        if kind.host_only() && cmd.auth != Authorization::System {
            return Err(denied(
                origin,
                kind,
                "only the host may submit this operation",
            ));
        }
        if origin == EntityId::SYSTEM {
            return match cmd.auth {
                Authorization::System | Authorization::Operator(_) => Ok(()),
                Authorization::Token => Err(denied(
                    origin,
                    kind,
                    "the system acts on its own authority, not with a token",
                )),
            };
        }
        let agent = self
            .agents
            .get(&origin)
            .ok_or_else(|| KernelError::unknown(EntityKind::Agent, origin))?;
        if !kind.host_only() && !agent.is_active() {
            return Err(KernelError::invalid(
                kind,
                format!("agent {origin} is terminated"),
            ));
        }
        Ok(())
    }

    /// Validates the command's [`crate::OpKey`], if any; returns the
    /// task whose op counter to advance once the operation succeeded.
    fn check_cause(
        &self,
        cmd: &Command,
        kind: OpKind,
        limits: &Limits,
    ) -> Result<Option<OpKey>, KernelError> {
        let Some(key) = cmd.cause else {
            return Ok(None);
        };
        if kind.host_only() || cmd.origin == EntityId::SYSTEM {
            return Err(KernelError::invalid(
                kind,
                "only an agent's own operations carry a task cause",
            ));
        }
        let task = self
            .tasks
            .get(&key.task)
            .ok_or_else(|| KernelError::unknown(EntityKind::Task, key.task))?;
        if task.agent != cmd.origin {
            return Err(denied(
                cmd.origin,
                kind,
                format!("task {} belongs to agent {}", key.task, task.agent),
            ));
        }
        let TaskStatus::Running(run) = &task.status else {
            return Err(KernelError::invalid(
                kind,
                format!("task {} is not running", key.task),
            ));
        };
        let next = run.next_index;
        // From rules version 2 on, the operations a task had refused keep
        // their indices: the index may skip ahead, and the skipped ones are
        // recorded as a gap.
        let skips = self.rules.is_some() && key.index > next;
        if key.index != next && !skips {
            return Err(KernelError::invalid(
                kind,
                format!(
                    "task {} expects operation index {next}, got {}",
                    key.task, key.index
                ),
            ));
        }
        check_count(
            Limit::OpsPerTask,
            u64::from(limits.max_ops_per_task),
            u64::from(next) + 1,
        )?;
        Ok(Some(key))
    }

    pub(crate) fn next_id(
        &mut self,
        cell: Option<u16>,
        domain: &str,
        parent: EntityId,
    ) -> EntityId {
        let id = EntityId::derive(cell, domain, parent, self.next_id);
        self.next_id += 1;
        id
    }

    /// The agent, which must be active (running tasks).
    fn active_agent(&self, id: AgentId, kind: OpKind) -> Result<&AgentRecord, KernelError> {
        let agent = self.live_agent(id, kind)?;
        if let AgentStatus::Quarantined { .. } = agent.status {
            return Err(KernelError::invalid(
                kind,
                format!("agent {id} is quarantined"),
            ));
        }
        Ok(agent)
    }

    /// The agent, which must not be terminated (it may be quarantined).
    fn live_agent(&self, id: AgentId, kind: OpKind) -> Result<&AgentRecord, KernelError> {
        let agent = self
            .agents
            .get(&id)
            .ok_or_else(|| KernelError::unknown(EntityKind::Agent, id))?;
        if agent.is_terminated() {
            return Err(KernelError::invalid(
                kind,
                format!("agent {id} is terminated"),
            ));
        }
        Ok(agent)
    }

    /// The task, checked to be `origin`'s own (or the origin is the system).
    fn own_task(
        &self,
        origin: EntityId,
        task: TaskId,
        kind: OpKind,
    ) -> Result<&TaskRecord, KernelError> {
        let record = self
            .tasks
            .get(&task)
            .ok_or_else(|| KernelError::unknown(EntityKind::Task, task))?;
        if origin != EntityId::SYSTEM && origin != record.agent {
            return Err(denied(
                origin,
                kind,
                format!("task {task} belongs to agent {}", record.agent),
            ));
        }
        Ok(record)
    }

    fn schedule_task(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        spec: TaskSpec,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        check_size(
            Limit::TaskDescription,
            env.limits.max_task_description,
            spec.description.len(),
        )?;
        if let Some(cell) = env.cell.filter(|c| c.index != agent.cell()) {
            return self.send_task(origin, agent, spec, cell, env.seq);
        }
        self.check_queueable(agent, env.limits)?;
        let task = self.next_id(env.cell.map(|c| c.index), "task", origin);
        Ok(self.enqueue(task, agent, origin, spec, env.seq))
    }

    /// Whether `agent` (of this cell) can take one more task.
    pub(crate) fn check_queueable(
        &self,
        agent: AgentId,
        limits: &Limits,
    ) -> Result<(), KernelError> {
        // A quarantined agent's queue still takes tasks, for when it resumes.
        let target = self.live_agent(agent, OpKind::ScheduleTask)?;
        check_count(
            Limit::Queue,
            u64::from(limits.max_queue),
            target.queue.len() as u64 + 1,
        )
    }

    /// Queues the new task `task` for `agent`, checked by
    /// [`WorldState::check_queueable`].
    pub(crate) fn enqueue(
        &mut self,
        task: TaskId,
        agent: AgentId,
        by: EntityId,
        spec: TaskSpec,
        seq: u64,
    ) -> Vec<Event> {
        self.tasks.insert(
            task,
            TaskRecord {
                agent,
                by,
                spec: spec.clone(),
                status: TaskStatus::Queued,
                scheduled_seq: seq,
            },
        );
        if let Some(a) = self.agents.get_mut(&agent) {
            a.queue.push_back(task);
        }
        vec![Event::TaskScheduled {
            task,
            agent,
            by,
            spec,
        }]
    }

    /// [`Operation::ScheduleTaskOnce`]: schedules unless the key is known.
    fn schedule_task_once(
        &mut self,
        origin: EntityId,
        key: String,
        agent: AgentId,
        spec: TaskSpec,
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::ScheduleTaskOnce;
        if key.is_empty() {
            return Err(KernelError::invalid(KIND, "the idempotency key is empty"));
        }
        check_count(Limit::Name, MAX_IDEMPOTENCY_KEY as u64, key.len() as u64)?;
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(KernelError::invalid(
                KIND,
                format!("the idempotency key has the control character {c:?}"),
            ));
        }
        let request = request_digest(agent, &spec.description);
        if let Some(known) = self.idempotency.get(&key) {
            return Err(KernelError::AlreadyScheduled {
                key,
                task: known.task,
                same_request: known.request == request,
            });
        }
        let events = self.schedule_task(origin, agent, spec, env)?;
        let task = created(&events).expect("scheduling a task creates it");
        self.idempotency.insert(key, Scheduled { task, request });
        Ok(events)
    }

    fn start_task(
        &mut self,
        origin: EntityId,
        task: TaskId,
        seq: u64,
        time: Timestamp,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::StartTask;
        let record = self.own_task(origin, task, KIND)?;
        let agent_id = record.agent;
        if record.status != TaskStatus::Queued {
            return Err(KernelError::invalid(
                KIND,
                format!("task {task} is already running"),
            ));
        }
        let agent = self.active_agent(agent_id, KIND)?;
        if let Some(running) = agent.running {
            return Err(KernelError::invalid(
                KIND,
                format!("agent {agent_id} is already running task {running}"),
            ));
        }
        if agent.queue.front() != Some(&task) {
            return Err(KernelError::invalid(
                KIND,
                format!("task {task} is not at the head of agent {agent_id}'s queue"),
            ));
        }

        if let Some(a) = self.agents.get_mut(&agent_id) {
            a.queue.pop_front();
            a.running = Some(task);
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.status = TaskStatus::Running(Run::started(seq, time));
        }
        Ok(vec![Event::TaskStarted {
            task,
            agent: agent_id,
        }])
    }

    fn complete_task(
        &mut self,
        origin: EntityId,
        task: TaskId,
        output: Vec<u8>,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::CompleteTask;
        check_size(Limit::Output, limits.max_output, output.len())?;
        let record = self.own_task(origin, task, KIND)?;
        if record.status == TaskStatus::Queued {
            return Err(KernelError::invalid(
                KIND,
                format!("task {task} is queued, not running"),
            ));
        }
        let agent = record.agent;

        self.tasks.remove(&task);
        self.forget_exchanges(task);
        self.overwritten.remove(&task);
        if let Some(a) = self.agents.get_mut(&agent) {
            a.running = None;
            a.completed += 1;
            a.consecutive_faults = 0;
        }
        Ok(vec![Event::TaskCompleted {
            task,
            agent,
            output,
        }])
    }

    fn fail_task(
        &mut self,
        origin: EntityId,
        task: TaskId,
        reason: String,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        check_size(Limit::Reason, limits.max_reason, reason.len())?;
        let agent = self.own_task(origin, task, OpKind::FailTask)?.agent;

        Ok(vec![self.remove_failed(task, agent, reason)])
    }

    /// Removes a queued or running task as failed (infallible).
    fn remove_failed(&mut self, task: TaskId, agent: AgentId, reason: String) -> Event {
        self.tasks.remove(&task);
        self.forget_exchanges(task);
        self.overwritten.remove(&task);
        if let Some(a) = self.agents.get_mut(&agent) {
            if a.running == Some(task) {
                a.running = None;
            } else {
                a.queue.retain(|t| *t != task);
            }
            a.failed += 1;
        }
        Event::TaskFailed {
            task,
            agent,
            reason,
        }
    }

    fn spawn_agent(
        &mut self,
        origin: EntityId,
        spec: AgentSpec,
        limits: &Limits,
        cell: Option<u16>,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::SpawnAgent;
        self.check_name(KIND, "agent", &spec.name, limits)?;
        if !self.components.contains_key(&spec.component) {
            return Err(KernelError::unknown(EntityKind::Component, spec.component));
        }
        let depth = match self.agents.get(&origin) {
            Some(parent) => parent.depth.saturating_add(1),
            None => 0,
        };
        if let Some(rules) = &self.rules {
            check_quota(
                origin,
                Quota::LiveAgents,
                rules.max_live_agents,
                self.live_agents + 1,
            )?;
            if let Some(parent) = self.agents.get(&origin) {
                check_quota(
                    origin,
                    Quota::Depth,
                    u64::from(rules.max_depth),
                    u64::from(depth),
                )?;
                let max_children = parent
                    .budgets
                    .as_ref()
                    .and_then(|b| b.children)
                    .map_or(rules.max_children, |c| c.min(rules.max_children));
                check_quota(
                    origin,
                    Quota::Children,
                    u64::from(max_children),
                    u64::from(parent.live_children) + 1,
                )?;
            }
        }

        if let Some(parent) = self.agents.get_mut(&origin) {
            parent.live_children += 1;
        }
        self.live_agents += 1;
        let agent = self.next_id(cell, "agent", origin);
        self.agents.insert(
            agent,
            AgentRecord {
                name: spec.name.clone(),
                component: spec.component,
                parent: origin,
                token: spec.token,
                status: AgentStatus::Active,
                queue: VecDeque::new(),
                running: None,
                completed: 0,
                failed: 0,
                consecutive_faults: 0,
                state: Default::default(),
                state_bytes: 0,
                depth,
                live_children: 0,
                budgets: None,
                account: Account::default(),
            },
        );
        Ok(vec![Event::AgentSpawned {
            agent,
            parent: origin,
            spec,
        }])
    }

    fn terminate_agent(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        reason: String,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        check_size(Limit::Reason, limits.max_reason, reason.len())?;
        self.live_agent(agent, OpKind::TerminateAgent)?;
        Ok(self.terminate(origin, agent, reason))
    }

    /// Terminates a live agent: its running and queued tasks fail.
    pub(crate) fn terminate(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        reason: String,
    ) -> Vec<Event> {
        let record = self
            .agents
            .get(&agent)
            .expect("the caller found the agent live");
        let doomed: Vec<TaskId> = record
            .running
            .iter()
            .chain(&record.queue)
            .copied()
            .collect();

        let mut events = Vec::with_capacity(1 + doomed.len());
        for task in doomed {
            events.push(self.remove_failed(task, agent, format!("agent terminated: {reason}")));
        }
        let a = self
            .agents
            .get_mut(&agent)
            .expect("the caller found it, and agents are never removed");
        a.status = AgentStatus::Terminated {
            reason: reason.clone(),
        };
        let parent = a.parent;
        self.live_agents -= 1;
        if let Some(p) = self.agents.get_mut(&parent) {
            p.live_children -= 1;
        }
        events.insert(
            0,
            Event::AgentTerminated {
                agent,
                by: origin,
                reason,
            },
        );
        events
    }

    fn record_fault(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        reason: String,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RecordFault;
        check_size(Limit::Reason, limits.max_reason, reason.len())?;
        if origin != EntityId::SYSTEM && origin != agent {
            return Err(denied(origin, KIND, "an agent records only its own faults"));
        }
        let Some(a) = self.agents.get_mut(&agent) else {
            return Err(KernelError::unknown(EntityKind::Agent, agent));
        };

        a.consecutive_faults = a.consecutive_faults.saturating_add(1);
        Ok(vec![Event::AgentFaulted {
            agent,
            reason,
            consecutive: a.consecutive_faults,
        }])
    }

    fn put_state(
        &mut self,
        origin: EntityId,
        key: String,
        value: Vec<u8>,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::PutState;
        if key.is_empty() {
            return Err(KernelError::invalid(KIND, "state keys are not empty"));
        }
        check_size(Limit::StateKey, limits.max_state_key, key.len())?;
        check_size(Limit::StateValue, limits.max_state_value, value.len())?;
        let agent = self.own_namespace(origin, KIND)?;
        let (keys, bytes) = match agent.state.get(&key) {
            Some(old) => (
                agent.state.len() as u64,
                agent.state_bytes - old.len() as u64 + value.len() as u64,
            ),
            None => (
                agent.state.len() as u64 + 1,
                agent.state_bytes + (key.len() + value.len()) as u64,
            ),
        };
        check_count(Limit::StateKeys, u64::from(limits.max_state_keys), keys)?;
        check_count(Limit::StateBytes, limits.max_state_bytes, bytes)?;

        if let Some(a) = self.agents.get_mut(&origin) {
            a.state.insert(key.clone(), value.clone());
            a.state_bytes = bytes;
        }
        Ok(vec![Event::StatePut {
            agent: origin,
            key,
            value,
        }])
    }

    fn delete_state(&mut self, origin: EntityId, key: String) -> Result<Vec<Event>, KernelError> {
        self.own_namespace(origin, OpKind::DeleteState)?;

        let mut existed = false;
        if let Some(a) = self.agents.get_mut(&origin)
            && let Some(old) = a.state.remove(&key)
        {
            a.state_bytes -= (key.len() + old.len()) as u64;
            existed = true;
        }
        Ok(vec![Event::StateDeleted {
            agent: origin,
            key,
            existed,
        }])
    }

    fn own_namespace(&self, origin: EntityId, kind: OpKind) -> Result<&AgentRecord, KernelError> {
        if origin == EntityId::SYSTEM {
            return Err(KernelError::invalid(
                kind,
                "the system has no state namespace",
            ));
        }
        self.active_agent(origin, kind)
    }

    pub(crate) fn revoke(&mut self, revocation_id: Vec<u8>) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RevokeToken;
        if revocation_id.is_empty() || revocation_id.len() > MAX_REVOCATION_ID {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "a revocation id has 1 to {MAX_REVOCATION_ID} bytes, got {}",
                    revocation_id.len()
                ),
            ));
        }
        if self.revoked.contains(&revocation_id) {
            return Err(KernelError::invalid(KIND, "already revoked"));
        }

        self.revoked.insert(revocation_id.clone());
        Ok(vec![Event::TokenRevoked { revocation_id }])
    }

    fn record_denial(
        &mut self,
        origin: EntityId,
        denial: Denial,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        if origin == EntityId::SYSTEM {
            return Err(KernelError::invalid(
                OpKind::RecordDenial,
                "a denial names the agent that was denied as the origin",
            ));
        }
        check_size(Limit::Name, limits.max_name, denial.operation.len())?;
        let targets: usize = denial.targets.iter().map(String::len).sum();
        check_size(Limit::Reason, limits.max_reason, targets)?;
        check_size(Limit::Reason, limits.max_reason, denial.reason.len())?;
        Ok(vec![Event::CapabilityDenied {
            agent: origin,
            denial,
        }])
    }

    fn quarantine(
        &mut self,
        agent: AgentId,
        reason: String,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        check_size(Limit::Reason, limits.max_reason, reason.len())?;
        self.active_agent(agent, OpKind::QuarantineAgent)?;

        if let Some(a) = self.agents.get_mut(&agent) {
            a.status = AgentStatus::Quarantined {
                reason: reason.clone(),
            };
        }
        Ok(vec![Event::AgentQuarantined { agent, reason }])
    }

    fn resume(&mut self, agent: AgentId) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::ResumeAgent;
        let record = self
            .agents
            .get(&agent)
            .ok_or_else(|| KernelError::unknown(EntityKind::Agent, agent))?;
        if !matches!(record.status, AgentStatus::Quarantined { .. }) {
            return Err(KernelError::invalid(
                KIND,
                format!("agent {agent} is not quarantined"),
            ));
        }

        if let Some(a) = self.agents.get_mut(&agent) {
            a.status = AgentStatus::Active;
            a.consecutive_faults = 0;
        }
        Ok(vec![Event::AgentResumed { agent }])
    }

    fn extension(
        &mut self,
        origin: EntityId,
        time: Timestamp,
        family: String,
        opcode: u32,
        payload: &[u8],
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        check_size(
            Limit::ExtensionPayload,
            env.limits.max_extension_payload,
            payload.len(),
        )?;
        let handler = env.registry.get(&family)?;
        let empty = Default::default();
        let effects = handler.handle(&ExtensionCall {
            origin,
            time,
            opcode,
            payload,
            store: self.extensions.get(&family).unwrap_or(&empty),
        })?;

        let store = self.extensions.entry(family.clone()).or_default();
        for (key, value) in effects.writes {
            match value {
                Some(v) => store.insert(key, v),
                None => store.remove(&key),
            };
        }
        if store.is_empty() {
            self.extensions.remove(&family);
        }
        Ok(vec![Event::ExtensionApplied {
            family,
            opcode,
            output: effects.output,
        }])
    }
}

impl WorldState {
    /// A display name: not empty, within the size limit, and (from rules
    /// version 2 on) printable and not reserved.
    pub(crate) fn check_name(
        &self,
        kind: OpKind,
        what: &str,
        name: &str,
        limits: &Limits,
    ) -> Result<(), KernelError> {
        if name.trim().is_empty() {
            return Err(KernelError::invalid(kind, format!("{what} name is empty")));
        }
        check_size(Limit::Name, limits.max_name, name.len())?;
        if self.rules_version() >= 2 {
            check_printable(kind, what, name)?;
        }
        Ok(())
    }

    /// The agent, which must exist (in any status).
    fn agent_of(&self, id: AgentId) -> Result<&AgentRecord, KernelError> {
        self.agents
            .get(&id)
            .ok_or_else(|| KernelError::unknown(EntityKind::Agent, id))
    }

    fn adopt_rules(&mut self, origin: EntityId, rules: Rules) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::AdoptRules;
        if origin != EntityId::SYSTEM {
            return Err(denied(origin, KIND, "only the host adopts rules"));
        }
        let current = self.rules_version();
        if rules.version < 2 || rules.version > RULES_VERSION || rules.version < current {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "rules version {} cannot be adopted: this kernel applies versions 2 to {RULES_VERSION}, and the log is at version {current}",
                    rules.version
                ),
            ));
        }

        self.rules = Some(rules.clone());
        Ok(vec![Event::RulesAdopted { rules }])
    }

    fn set_budgets(&mut self, agent: AgentId, budgets: Budgets) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::SetBudgets;
        self.require_rules(KIND)?;
        self.live_agent(agent, KIND)?;

        self.agents
            .get_mut(&agent)
            .expect("live_agent found it")
            .budgets = (!budgets.is_empty()).then(|| Box::new(budgets));
        Ok(vec![Event::BudgetsSet { agent, budgets }])
    }

    fn record_refusals(
        &mut self,
        origin: EntityId,
        task: TaskId,
        first: u32,
        refusals: &[Refusal],
        env: &Env<'_>,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RecordRefusals;
        self.require_rules(KIND)?;
        if refusals.is_empty() || refusals.len() > MAX_REFUSAL_RUNS {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "a record holds 1 to {MAX_REFUSAL_RUNS} refusals, got {}",
                    refusals.len()
                ),
            ));
        }
        let mut count: u64 = 0;
        for refusal in refusals {
            if refusal.count == 0 {
                return Err(KernelError::invalid(KIND, "a refusal counts at least 1"));
            }
            check_size(Limit::Reason, env.limits.max_reason, refusal.message.len())?;
            count += u64::from(refusal.count);
        }
        let record = self.own_task(origin, task, KIND)?;
        let agent = record.agent;
        if origin != agent {
            return Err(denied(
                origin,
                KIND,
                "refusals are recorded for the task's agent",
            ));
        }
        let TaskStatus::Running(run) = &record.status else {
            return Err(KernelError::invalid(
                KIND,
                format!("task {task} is not running"),
            ));
        };
        let Some(at) = run.gaps.iter().position(|g| g.first == first) else {
            return Err(KernelError::invalid(
                KIND,
                format!("task {task} skipped no operations at index {first}"),
            ));
        };
        let gap = run.gaps[at];
        if gap.details.is_some() {
            return Err(KernelError::invalid(
                KIND,
                format!("the refusals at index {first} of task {task} are already recorded"),
            ));
        }
        if count != u64::from(gap.count) {
            return Err(KernelError::invalid(
                KIND,
                format!(
                    "task {task} skipped {} operations at index {first}, the record lists {count}",
                    gap.count
                ),
            ));
        }

        let Some(TaskRecord {
            status: TaskStatus::Running(run),
            ..
        }) = self.tasks.get_mut(&task)
        else {
            unreachable!("checked above: the task is running");
        };
        run.gaps[at].details = Some(env.seq);
        let count = gap.count;
        Ok(vec![Event::RefusalsRecorded {
            task,
            agent,
            first,
            count,
        }])
    }

    fn record_quota_hit(
        &mut self,
        origin: EntityId,
        agent: AgentId,
        quota: Quota,
        reason: String,
        limits: &Limits,
    ) -> Result<Vec<Event>, KernelError> {
        const KIND: OpKind = OpKind::RecordQuotaHit;
        self.require_rules(KIND)?;
        check_size(Limit::Reason, limits.max_reason, reason.len())?;
        if origin != EntityId::SYSTEM && origin != agent {
            return Err(denied(
                origin,
                KIND,
                "a quota hit is recorded for the agent itself",
            ));
        }
        self.agent_of(agent)?;

        let a = self.agents.get_mut(&agent).expect("agent_of found it");
        a.consecutive_faults = a.consecutive_faults.saturating_add(1);
        Ok(vec![Event::QuotaExceeded {
            agent,
            quota,
            reason,
            consecutive: a.consecutive_faults,
        }])
    }

    /// Refuses an operation that only exists from rules version 2 on.
    fn require_rules(&self, kind: OpKind) -> Result<(), KernelError> {
        if self.rules.is_none() {
            return Err(KernelError::invalid(
                kind,
                "this operation needs rules version 2 or later; the log has adopted none",
            ));
        }
        Ok(())
    }
}

/// Checks a display name as the current rules do: not empty, within
/// `limits`, printable (no control characters) and not reserved (`operator`,
/// `system`). `what` names what it names (`agent`, `component`) in the error.
///
/// # Errors
///
/// [`KernelError::InvalidOperation`] or [`KernelError::LimitExceeded`]
/// naming the problem.
///
/// # Examples
///
/// ```
/// use toka_kernel::{Limits, validate_name};
///
/// assert!(validate_name("agent", "planner", &Limits::default()).is_ok());
/// assert!(validate_name("agent", "bell\u{7}", &Limits::default()).is_err());
/// assert!(validate_name("agent", "Operator", &Limits::default()).is_err());
/// ```
pub fn validate_name(what: &str, name: &str, limits: &Limits) -> Result<(), KernelError> {
    let kind = if what == "component" {
        OpKind::InstallComponent
    } else {
        OpKind::SpawnAgent
    };
    if name.trim().is_empty() {
        return Err(KernelError::invalid(kind, format!("{what} name is empty")));
    }
    check_size(Limit::Name, limits.max_name, name.len())?;
    check_printable(kind, what, name)
}

fn check_printable(kind: OpKind, what: &str, name: &str) -> Result<(), KernelError> {
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(KernelError::invalid(
            kind,
            format!("{what} name has the control character {c:?}; names are printable"),
        ));
    }
    if RESERVED_NAMES
        .iter()
        .any(|reserved| name.trim().eq_ignore_ascii_case(reserved))
    {
        return Err(KernelError::invalid(
            kind,
            format!("`{}` is reserved and cannot name an {what}", name.trim()),
        ));
    }
    Ok(())
}

fn check_quota(agent: EntityId, quota: Quota, limit: u64, wanted: u64) -> Result<(), KernelError> {
    if wanted > limit {
        return Err(KernelError::QuotaExceeded {
            agent,
            quota,
            limit,
            wanted,
        });
    }
    Ok(())
}

/// The entity an operation created (for its receipt and journal entry).
pub(crate) fn created(events: &[Event]) -> Option<EntityId> {
    events.iter().find_map(Event::created)
}
