//! The capability gate: authorizes every operation an agent submits.
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
//! ```
//!
//! and these policies (default deny):
//!
//! ```text
//! allow if operation($op), right($op);
//! allow if operation($op), right($op, "*");
//! allow if operation($op), target($t), right($op, $t);
//! ```
//!
//! Signatures are verified once per token. Decisions are cached per (token,
//! operation, targets, and — only for tokens whose checks read `time` — the
//! second of logical time, the resolution of biscuit dates); revocation is
//! checked before the cache on every call, so a revocation ordered before an
//! operation always denies it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::builder::{Fact, Term, fact, string};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::error::{FailedCheck, Logic, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, Biscuit, PublicKey};
use toka_kernel::{AgentId, Digest, EntityId, Limits, Operation, Timestamp, WorldState};

use crate::event_store::EventStore;
use crate::rights::{Right, RightOp};
use crate::token::Token;

/// The host's policies. Only the authority block's `right` facts satisfy
/// them; blocks can only add checks.
const POLICIES: &str = r#"
allow if operation($op), right($op);
allow if operation($op), right($op, "*");
allow if operation($op), target($t), right($op, $t);
"#;

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

/// Bytes of keys and reasons the decision cache holds before it is cleared.
const MAX_CACHED_BYTES: usize = 4 << 20;

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
    fn names_free_text(&self) -> bool {
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
        Operation::SpawnAgent { spec } => {
            let mut targets = Vec::with_capacity(2);
            if let Some(c) = state.component(&spec.component) {
                targets.push(c.name.clone());
            }
            targets.push(spec.component.to_string());
            ("spawn", targets)
        }
        Operation::Extension { family, .. } => ("extension", vec![family.clone()]),
        _ => return None,
    };
    Some(Check { operation, targets })
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

/// Decides `check` for `token` at `time`, uncached: the function both the
/// live gate and the auditor use. Revocation is not its concern.
pub(crate) fn decide(
    token: &Biscuit,
    origin: EntityId,
    check: &Check,
    time: Timestamp,
) -> Result<(), String> {
    let mut facts: Vec<Fact> = Vec::with_capacity(check.targets.len() + 3);
    facts.push(fact("operation", &[string(check.operation)]));
    facts.push(fact("origin", &[string(&origin.to_string())]));
    facts.push(fact("time", &[Term::Date(time.0 / 1000)]));
    for target in &check.targets {
        facts.push(fact("target", &[string(target)]));
    }
    let mut builder = AuthorizerBuilder::new()
        .code(POLICIES)
        .expect("the host's policies are a constant that parses")
        .set_limits(RUN_LIMITS);
    for f in facts {
        builder = builder.fact(f).map_err(|e| e.to_string())?;
    }
    let mut authorizer = builder.build(token).map_err(|e| e.to_string())?;
    match authorizer.authorize() {
        Ok(_) => Ok(()),
        Err(e) => Err(explain(&e, check)),
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

/// A token the gate has verified, with what the cache needs about it.
struct Verified {
    token: Token,
    /// Whether any check reads `time`: then decisions depend on the second.
    uses_time: bool,
    /// The kernel's revocation count when this token was last found not
    /// revoked; revocations only grow, so an unchanged count needs no lookups.
    clean_at: Option<usize>,
    /// The last decisions of target-less checks (`observe`, `state`), the
    /// hot path: a few entries, scanned without hashing.
    targetless: Vec<(Targetless, Result<(), String>)>,
}

/// What a target-less decision depends on besides the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Targetless {
    operation: &'static str,
    origin: EntityId,
    second: u64,
}

/// Target-less decisions kept per token (one per operation class and origin).
const TARGETLESS_SLOTS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    token: Digest,
    origin: EntityId,
    check: Check,
    second: u64,
}

/// Hashes a [`Digest`] key by its first 8 bytes: digests are uniform, and
/// not chosen by agents (they are BLAKE3 of token bytes), so that is as good
/// as hashing all 32 and several times cheaper.
#[derive(Debug, Clone, Copy, Default)]
struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `Digest` hashes as its 32 bytes; fold the first 8.
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }
}

/// The live gate: verified tokens and cached decisions.
pub(crate) struct Gate {
    root: PublicKey,
    store: Arc<dyn EventStore>,
    max_token: usize,
    tokens: HashMap<Digest, Verified, DigestHash>,
    decisions: HashMap<DecisionKey, Result<(), String>>,
    /// Bytes of targets and reasons in `decisions`.
    cached_bytes: usize,
}

impl Gate {
    pub(crate) fn new(root: PublicKey, store: Arc<dyn EventStore>, limits: &Limits) -> Self {
        Self {
            root,
            store,
            max_token: limits.max_token as usize,
            tokens: HashMap::default(),
            decisions: HashMap::new(),
            cached_bytes: 0,
        }
    }

    pub(crate) fn max_token(&self) -> usize {
        self.max_token
    }

    /// The root key tokens must be rooted in.
    pub(crate) fn root(&self) -> PublicKey {
        self.root
    }

    /// Remembers a token the host just verified or made.
    pub(crate) fn admit(&mut self, token: Token) {
        let uses_time = token.block_sources().iter().any(|s| s.contains("time("));
        self.tokens.insert(
            token.digest(),
            Verified {
                token,
                uses_time,
                clean_at: None,
                targetless: Vec::new(),
            },
        );
    }

    /// The token with this digest, verifying it on first use.
    pub(crate) fn token(&mut self, digest: &Digest) -> Result<&Token, String> {
        self.verified(digest).map(|v| &v.token)
    }

    fn verified(&mut self, digest: &Digest) -> Result<&mut Verified, String> {
        if !self.tokens.contains_key(digest) {
            let bytes = self
                .store
                .token(digest)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("token {} is missing from the store", digest.short()))?;
            let token = Token::parse_stored(digest, &bytes, self.root, self.max_token)
                .map_err(|e| e.to_string())?;
            self.admit(token);
        }
        self.tokens
            .get_mut(digest)
            .ok_or_else(|| "token cache is inconsistent".to_owned())
    }

    /// Authorizes `check` for `origin`, which holds the token `token`.
    pub(crate) fn authorize(
        &mut self,
        token: Digest,
        origin: EntityId,
        check: &Check,
        time: Timestamp,
        state: &WorldState,
    ) -> Result<(), String> {
        let verified = self.verified(&token)?;
        let revocations = state.revocation_count();
        if verified.clean_at != Some(revocations) {
            if verified
                .token
                .revocation_ids()
                .iter()
                .any(|id| state.is_revoked(id))
            {
                return Err("the token has been revoked".into());
            }
            verified.clean_at = Some(revocations);
        }
        let second = if verified.uses_time { time.0 / 1000 } else { 0 };
        if check.targets.is_empty() {
            let key = Targetless {
                operation: check.operation,
                origin,
                second,
            };
            if let Some((_, decision)) = verified.targetless.iter().find(|(k, _)| *k == key) {
                return decision.clone();
            }
            let decision = decide(verified.token.biscuit(), origin, check, time);
            // Replace the entry of the same class and origin (an older second).
            verified
                .targetless
                .retain(|(k, _)| (k.operation, k.origin) != (key.operation, key.origin));
            if verified.targetless.len() >= TARGETLESS_SLOTS {
                drop(verified.targetless.remove(0));
            }
            verified.targetless.push((key, decision.clone()));
            return decision;
        }
        let key = DecisionKey {
            token,
            origin,
            check: check.clone(),
            second,
        };
        if let Some(decision) = self.decisions.get(&key) {
            return decision.clone();
        }
        let decision = decide(
            self.tokens
                .get(&token)
                .expect("verified() above admitted the token")
                .token
                .biscuit(),
            origin,
            check,
            time,
        );
        // A denial of a name the agent made up (an extension family, a
        // host) is not kept: an agent could fill the cache with them.
        if decision.is_err() && check.names_free_text() {
            return decision;
        }
        let bytes = std::mem::size_of::<DecisionKey>()
            + key.check.targets.iter().map(String::len).sum::<usize>()
            + decision.as_ref().err().map_or(0, String::len);
        if self.cached_bytes + bytes > MAX_CACHED_BYTES {
            self.decisions.clear();
            self.cached_bytes = 0;
        }
        self.cached_bytes += bytes;
        self.decisions.insert(key, decision.clone());
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;
    use crate::root_key::RootKey;

    fn gate_with(rights: &[&str]) -> (Gate, Digest, WorldState) {
        let root = RootKey::generate();
        let rights: Vec<Right> = rights.iter().map(|r| r.parse().unwrap()).collect();
        let token = Token::issue(&root, &rights, &[], None).unwrap();
        let digest = token.digest();
        let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new(Limits::default()));
        let mut gate = Gate::new(root.public(), store, &Limits::default());
        gate.admit(token);
        (gate, digest, WorldState::default())
    }

    #[test]
    fn denials_of_names_an_agent_makes_up_are_not_cached() {
        // Regression: every denied extension family (agent-chosen text)
        // stayed in a cache of 65 536 decisions with its full key and reason.
        let (mut gate, token, state) = gate_with(&["observe"]);
        let origin = EntityId::from_u128(9);
        for i in 0..10_000 {
            let check = Check {
                operation: "extension",
                targets: vec![format!("family-{i}-{}", "x".repeat(200))],
            };
            assert!(
                gate.authorize(token, origin, &check, Timestamp(0), &state)
                    .is_err()
            );
        }
        assert!(gate.decisions.is_empty());
        assert_eq!(gate.cached_bytes, 0);
    }

    #[test]
    fn the_decision_cache_is_bounded_in_bytes() {
        let (mut gate, token, state) = gate_with(&["extension *", "schedule *"]);
        let origin = EntityId::from_u128(9);
        for i in 0..40_000u128 {
            let allowed = Check {
                operation: "extension",
                targets: vec![format!("family-{i}-{}", "y".repeat(200))],
            };
            assert!(
                gate.authorize(token, origin, &allowed, Timestamp(0), &state)
                    .is_ok()
            );
            let scheduled = Check {
                operation: "schedule",
                targets: vec![EntityId::from_u128(i).to_string()],
            };
            assert!(
                gate.authorize(token, origin, &scheduled, Timestamp(0), &state)
                    .is_ok()
            );
            assert!(gate.cached_bytes <= MAX_CACHED_BYTES);
        }
        assert!(!gate.decisions.is_empty());
    }

    #[test]
    fn over_long_targets_are_flagged_before_the_gate() {
        let check = Check {
            operation: "http",
            targets: vec!["h".repeat(MAX_TARGET + 1)],
        };
        assert_eq!(check.oversized(), Some(MAX_TARGET + 1));
        assert_eq!(Check::literal("observe", None).oversized(), None);
    }
}
