//! The authorization policy: what an operation needs, and how a token is
//! asked.
//!
//! For each operation the gate builds a biscuit authorizer from the agent's
//! token and these facts:
//!
//! ```text
//! operation("schedule");           // the operation class
//! origin("<agent id>");            // who asks
//! target("<agent id>");            // what it names ...
//! target("self"); target("children");  // ... and how it relates to the origin
//! time(2026-11-22T10:00:00Z);      // the command's logical time, never a clock read
//! component("<digest>");           // the component the origin runs, and each of its ancestors'
//! ```
//!
//! An HTTP request's targets are `HOST:PORT` and `HOST`; a secret's
//! injection is checked as operation `secret` with the binding (`NAME HOST
//! [HEADER]`) as its target.
//!
//! and these policies (default deny):
//!
//! ```text
//! allow if operation($op), right($op);
//! allow if operation($op), right($op, "*");
//! allow if operation($op), target($t), right($op, $t);
//! ```
//!
//! [`decide`] is the one function both the live gate (with its caches) and
//! the auditor (re-checking the log) call.

use std::time::Duration;

use biscuit_auth::builder::{Fact, Term, fact, string};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, Biscuit};
use toka_kernel::{AgentId, Digest, EntityId, Operation, Timestamp, WorldState};

use crate::capability::rights::{OperatorLevel, Right, RightOp};

/// The host's policies. Only the authority block's `right` facts satisfy
/// them; blocks can only add checks.
const POLICIES: &str = r#"
allow if operation($op), right($op);
allow if operation($op), right($op, "*");
allow if operation($op), target($t), right($op, $t);
"#;

/// [`POLICIES`] under [`RUN_LIMITS`], parsed once: every decision starts
/// from a copy (parsing the text was a tenth of an uncached decision).
static POLICIES_PARSED: std::sync::LazyLock<AuthorizerBuilder> = std::sync::LazyLock::new(|| {
    AuthorizerBuilder::new()
        .code(POLICIES)
        .expect("the host's policies are a constant that parses")
        .set_limits(RUN_LIMITS)
});

/// Biscuit's run limits inside the sequencer: facts and iterations bound
/// the work, and nothing else may decide an outcome — a decision depends
/// only on the token and the facts, so a replay reaches the same one. The
/// wall-clock limit is a year, i.e. none: a token that is expensive to
/// evaluate is refused when it is presented ([`ADMISSION_LIMITS`]).
pub(crate) const RUN_LIMITS: RunLimits = RunLimits {
    max_facts: 10_000,
    max_iterations: 100,
    max_time: Duration::from_secs(365 * 24 * 3600),
};

/// The limits a token presented from outside (`run --token`, a spawn with a
/// token, the API) must evaluate within once, before anything is written:
/// the same fact and iteration bounds, and a time limit that an honest
/// token (a few hundred facts at most, ~12 µs) never comes near.
pub(crate) const ADMISSION_LIMITS: RunLimits = RunLimits {
    max_time: Duration::from_millis(100),
    ..RUN_LIMITS
};

/// The longest target an agent may name in a check (a component name, an
/// extension family, an HTTP host); longer ones are refused before the gate.
pub(crate) const MAX_TARGET: usize = 256;

/// What to authorize: an operation class and the target terms it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Check {
    pub(crate) operation: &'static str,
    /// The target as named first, then its relations to the origin.
    pub(crate) targets: Vec<String>,
}

impl Check {
    /// The target as the agent named it (for messages and denial records).
    pub(crate) fn primary(&self) -> &str {
        self.targets.first().map_or("", String::as_str)
    }

    /// The first target longer than [`MAX_TARGET`], if any: refused before
    /// the gate, and not recorded (a record names what was checked).
    pub(crate) fn oversized(&self) -> Option<usize> {
        self.targets
            .iter()
            .map(String::len)
            .find(|len| *len > MAX_TARGET)
    }

    /// Whether the check names a target the agent chose freely (an
    /// extension family, an HTTP host) rather than an entity the host knows.
    pub(crate) fn names_free_text(&self) -> bool {
        matches!(self.operation, "extension" | "http")
    }

    /// A check of a right's literal target: may the holder delegate it?
    pub(crate) fn literal(operation: &'static str, target: Option<&str>) -> Check {
        Check {
            operation,
            targets: target.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// The check an agent's operation needs, computed from the state before it
/// applies; `None` for host-only operations.
pub(crate) fn check_for(op: &Operation, origin: AgentId, state: &WorldState) -> Option<Check> {
    let (operation, targets) = match op {
        Operation::EmitObservation { .. } => ("observe", Vec::new()),
        Operation::PutState { .. } | Operation::DeleteState { .. } => ("state", Vec::new()),
        Operation::ScheduleTask { agent, .. } => ("schedule", agent_targets(*agent, origin, state)),
        Operation::TerminateAgent { agent, .. } => {
            ("terminate", agent_targets(*agent, origin, state))
        }
        Operation::SpawnAgent { spec } | Operation::SpawnAgentSized { spec, .. } => {
            let mut targets = Vec::with_capacity(2);
            if let Some(c) = state.component(&spec.component) {
                targets.push(c.name.clone());
            }
            targets.push(spec.component.to_string());
            ("spawn", targets)
        }
        Operation::Extension { family, .. } => ("extension", vec![family.clone()]),
        Operation::HttpRequest { request, .. } => return Some(http_check(&request.url)),
        _ => return None,
    };
    Some(Check { operation, targets })
}

/// The host and port a request to `url` goes to (lower case; the
/// scheme's port when the URL names none).
pub(crate) fn http_destination(url: &str) -> Option<(String, u16)> {
    destination(&url.parse().ok()?)
}

/// The host and port a request to `uri` goes to.
pub(crate) fn destination(uri: &http::Uri) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    Some((
        authority.host().to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

/// What a request to `url` needs: `http HOST:PORT` or `http HOST` (or
/// `http *`). A URL without a host names no target.
pub(crate) fn http_check(url: &str) -> Check {
    Check {
        operation: "http",
        targets: http_destination(url)
            .map(|(host, port)| vec![format!("{host}:{port}"), host])
            .unwrap_or_default(),
    }
}

/// The check an operator's command or request needs: the `operator`
/// operation with the level needed and every level that includes it as
/// targets, so `right("operator", "admin")` satisfies a `read` check and an
/// attenuation to `read` (a `delegated("operator", "read")` block) does not
/// satisfy `write`.
pub(crate) fn operator_check(needed: OperatorLevel) -> Check {
    Check {
        operation: RightOp::Operator.name(),
        targets: OperatorLevel::ALL
            .into_iter()
            .filter(|level| level.includes(needed))
            .map(|level| level.name().to_owned())
            .collect(),
    }
}

/// The level an operator needs to submit `op` through the API (`None`: an
/// operation operators never submit).
pub(crate) fn operator_level_for(op: &Operation) -> Option<OperatorLevel> {
    match op {
        Operation::InstallComponent { .. }
        | Operation::RemoveComponent { .. }
        | Operation::ScheduleTask { .. }
        | Operation::ScheduleTaskOnce { .. }
        | Operation::TerminateAgent { .. }
        | Operation::ResumeAgent { .. } => Some(OperatorLevel::Write),
        // Spawning with a token made elsewhere needs `write`; the host
        // minting one from rights needs `admin` (checked before).
        Operation::SpawnAgent { .. } | Operation::SpawnAgentSized { .. } => {
            Some(OperatorLevel::Write)
        }
        Operation::RevokeToken { .. }
        | Operation::TrustPublisher { .. }
        | Operation::DistrustPublisher { .. }
        | Operation::InstallPackage { .. }
        | Operation::UninstallPackage { .. }
        | Operation::ForgetTerminated => Some(OperatorLevel::Admin),
        _ => None,
    }
}

/// An agent target as its id, plus `self` / `children` when they apply.
pub(crate) fn agent_targets(target: AgentId, origin: AgentId, state: &WorldState) -> Vec<String> {
    let mut targets = vec![target.to_string()];
    if target == origin {
        targets.push("self".into());
    }
    if state.agent(target).is_some_and(|a| a.parent == origin) {
        targets.push("children".into());
    }
    targets
}

/// `check` without the agent it names by id, keeping that agent's
/// relations to the origin (`self`, `children`): `None` for a check that
/// names no relation.
///
/// For a token whose Datalog more facts can only satisfy more
/// ([`Token::monotone`](crate::capability::token::Token::monotone)), what
/// allows this check allows `check` too: its one fact more
/// (`target("<id>")`) can satisfy more `check if` and `allow if`, and fail
/// none. So one decision serves an agent scheduling each of its many
/// children, instead of one per child. A denial decides nothing: the
/// token may name the agent itself.
pub(crate) fn relations_only(check: &Check) -> Option<Check> {
    let about_agents =
        check.operation == RightOp::Schedule.name() || check.operation == RightOp::Terminate.name();
    (about_agents && check.targets.len() > 1).then(|| Check {
        operation: check.operation,
        targets: check.targets[1..].to_vec(),
    })
}

/// What `parent` must hold to hand `right` to a child of its own, under
/// the rules in force in `state`.
///
/// A right's target is relative to whoever holds it, so from rules version
/// 2 on the parent must hold what the right means *for the child*:
/// `schedule self` lets the child schedule itself, which the parent may hand
/// over only if it may schedule its children (`schedule children` or `*`);
/// `schedule children` reaches the parent's grandchildren, which only `*`
/// covers; an agent id is checked with its relations to the parent. Under
/// version 1 the right's target was checked literally (a log written then
/// is audited as it was decided).
pub(crate) fn delegation_check(right: &Right, parent: AgentId, state: &WorldState) -> Check {
    let operation = right.op().name();
    let about_agents = matches!(right.op(), RightOp::Schedule | RightOp::Terminate);
    if state.rules_version() < 2 || !about_agents {
        return Check::literal(operation, right.target());
    }
    let targets = match right.target() {
        Some("self") => vec!["children".to_owned()],
        Some("children") => vec!["*".to_owned()],
        Some(id) if id != "*" => match id.parse::<EntityId>() {
            Ok(target) => agent_targets(target, parent, state),
            Err(_) => vec![id.to_owned()],
        },
        target => return Check::literal(operation, target),
    };
    Check { operation, targets }
}

/// The components `origin` and each of its ancestors run, the origin's
/// first: the `component` facts of its checks. A package's install token
/// checks its digest is among them, so it works for the package's agents
/// and their descendants and for no agent running anything else.
pub(crate) fn lineage(origin: EntityId, state: &WorldState) -> Vec<Digest> {
    let mut components = Vec::new();
    let mut next = state.agent(origin);
    while let Some(agent) = next {
        if !components.contains(&agent.component) {
            components.push(agent.component);
        }
        next = (agent.parent != EntityId::SYSTEM)
            .then(|| state.agent(agent.parent))
            .flatten();
    }
    components
}

/// Why the gate refused an operation or an effect: the missing right (or
/// the failed check), in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Decides `check` for `token` at `time`, uncached: the function both the
/// live gate and the auditor use. Revocation is not its concern.
///
/// `lineage` is the components the origin and its ancestors run (see
/// [`lineage`]): an install token's check on its package's digest is
/// satisfied only there.
pub(crate) fn decide(
    token: &Biscuit,
    origin: EntityId,
    check: &Check,
    time: Timestamp,
    lineage: &[Digest],
) -> Result<(), Denied> {
    let mut facts: Vec<Fact> = Vec::with_capacity(check.targets.len() + lineage.len() + 3);
    facts.push(fact("operation", &[string(check.operation)]));
    facts.push(fact("origin", &[string(&origin.to_string())]));
    facts.push(fact("time", &[Term::Date(time.0 / 1000)]));
    for target in &check.targets {
        facts.push(fact("target", &[string(target)]));
    }
    for digest in lineage {
        facts.push(fact("component", &[string(&digest.to_string())]));
    }
    let mut builder = POLICIES_PARSED.clone();
    for f in facts {
        builder = builder
            .fact(f)
            .map_err(|e| Denied(format!("the check cannot be built: {e}")))?;
    }
    let mut authorizer = builder
        .build(token)
        .map_err(|e| Denied(format!("the token cannot be evaluated: {e}")))?;
    match authorizer.authorize() {
        Ok(_) => Ok(()),
        Err(e) => Err(Denied(explain(&e, check))),
    }
}

/// Turns a biscuit refusal into a sentence naming the missing right.
fn explain(e: &BiscuitError, check: &Check) -> String {
    let wanted = match check.primary() {
        "" => check.operation.to_owned(),
        target => format!("{} {target}", check.operation),
    };
    match e {
        BiscuitError::FailedLogic(Logic::NoMatchingPolicy { checks })
        | BiscuitError::FailedLogic(Logic::Unauthorized { checks, .. })
            if !checks.is_empty() =>
        {
            let failed: Vec<String> = checks
                .iter()
                .map(|c| match c {
                    FailedCheck::Block(b) if b.rule.contains("time(") => {
                        format!(
                            "the token has expired (block {} check: {})",
                            b.block_id, b.rule
                        )
                    }
                    FailedCheck::Block(b) if b.rule.contains("component(") => {
                        "the token is an install token of another component's package".to_owned()
                    }
                    FailedCheck::Block(b) if b.rule.contains("delegated(") => {
                        format!("right `{wanted}` was not delegated to this agent")
                    }
                    FailedCheck::Block(b) => {
                        format!("block {} check failed: {}", b.block_id, b.rule)
                    }
                    FailedCheck::Authorizer(a) => format!("check failed: {}", a.rule),
                })
                .collect();
            failed.join("; ")
        }
        BiscuitError::FailedLogic(Logic::NoMatchingPolicy { .. }) => {
            format!("missing right `{wanted}`")
        }
        BiscuitError::RunLimit(limit) => format!("authorization gave up: {limit}"),
        other => format!("authorization failed: {other}"),
    }
}
