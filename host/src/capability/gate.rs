//! The live gate: verified tokens and cached decisions.
//!
//! Signatures are verified once per token. Decisions are cached per (token,
//! operation, targets, and — only for tokens whose checks read `time` — the
//! second of logical time, the resolution of biscuit dates), bounded in
//! bytes; a denial of a name the agent made up is never cached. Revocation
//! is checked before the cache on every call, so a revocation ordered before
//! an operation always denies it.
//!
//! A decision the cache lacks can be made away from the gate ([`Gate::ask`],
//! [`Undecided::decide`], [`Gate::settle`]): the sequencer runs the
//! authorizer without holding its lock, keeps the decision, and asks again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use biscuit_auth::PublicKey;
use toka_kernel::{Digest, EntityId, Limits, Timestamp, WorldState};

use crate::capability::policy::{Check, Denied, decide, relations_only};
use crate::capability::token::Token;
use crate::capability::token::TokenError;

/// Where the gate finds a token's bytes the first time it meets it (the
/// store, in a host).
pub(crate) trait TokenSource: Send + Sync {
    /// The bytes stored under `digest`, if any.
    ///
    /// # Errors
    ///
    /// Why the source cannot be read.
    fn token_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, String>;
}

/// Bytes of keys and reasons the decision cache holds at most (both of its
/// generations).
const MAX_CACHED_BYTES: usize = 4 << 20;

/// Verified tokens the gate keeps. A parsed token takes ~8 KiB, so the
/// tokens of idle agents are not all kept: past this many, the least
/// recently used or admitted is forgotten (the clock algorithm; verified
/// again from the store if its agent acts again). Operators can attenuate
/// tokens offline without limit, so the set must be bounded anyway.
const MAX_VERIFIED_TOKENS: usize = 16_384;

/// A token the gate has verified, with what the cache needs about it.
struct Verified {
    token: Token,
    /// Whether any check reads `time`: then decisions depend on the second.
    uses_time: bool,
    /// The kernel's revocation count when this token was last found not
    /// revoked; revocations only grow, so an unchanged count needs no lookups.
    clean_at: Option<usize>,
    /// The last second (of logical time) at which its time checks passed
    /// ([`Gate::still_stands`]).
    unexpired_at: Option<u64>,
    /// The last decisions of target-less checks (`observe`, `state`), the
    /// hot path: a few entries, scanned without hashing.
    targetless: Vec<(Targetless, Result<(), Denied>)>,
    /// Used since the eviction clock last passed it (second chance).
    used: bool,
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

/// Decisions of checks with targets, in two generations of at most half
/// [`MAX_CACHED_BYTES`] each. New decisions go to the young one; when it is
/// full it becomes the old one (the old one is dropped), and a decision
/// found in the old one moves back to the young. So a decision in use
/// outlives any number of others cached meanwhile (an agent naming made-up
/// targets again and again cannot flush its neighbours' decisions, as
/// clearing a full cache let it), and the cache stays bounded in bytes.
#[derive(Default)]
struct Decisions {
    young: HashMap<DecisionKey, Result<(), Denied>>,
    young_bytes: usize,
    old: HashMap<DecisionKey, Result<(), Denied>>,
}

impl Decisions {
    /// What `key` and its decision take.
    fn bytes(key: &DecisionKey, decision: &Result<(), Denied>) -> usize {
        std::mem::size_of::<DecisionKey>()
            + key.check.targets.iter().map(String::len).sum::<usize>()
            + decision.as_ref().err().map_or(0, |d| d.0.len())
    }

    /// The decision kept for `key`, moved to the young generation if it
    /// was in the old.
    fn get(&mut self, key: &DecisionKey) -> Option<Result<(), Denied>> {
        if let Some(decision) = self.young.get(key) {
            return Some(decision.clone());
        }
        let (key, decision) = self.old.remove_entry(key)?;
        self.insert(key, decision.clone());
        Some(decision)
    }

    fn insert(&mut self, key: DecisionKey, decision: Result<(), Denied>) {
        let bytes = Self::bytes(&key, &decision);
        if self.young_bytes + bytes > MAX_CACHED_BYTES / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += bytes;
        self.young.insert(key, decision);
    }

    /// Bytes held in both generations.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.young_bytes
            + self
                .old
                .iter()
                .map(|(k, d)| Self::bytes(k, d))
                .sum::<usize>()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.young.is_empty() && self.old.is_empty()
    }
}

/// What the gate has done since it was made, read by
/// [`Host::metrics`](crate::Host::metrics).
#[derive(Debug, Default)]
pub(crate) struct GateCounts {
    /// Tokens whose signatures were verified (read from the store).
    pub(crate) verified: AtomicU64,
    /// Tokens taken into the verified set: made by the host (minted or
    /// attenuated, never verified again) or verified from the store.
    pub(crate) admitted: AtomicU64,
    /// Calls to [`Gate::authorize`].
    pub(crate) checks: AtomicU64,
    /// Checks that ran the biscuit authorizer (not answered from a cache).
    pub(crate) authorized: AtomicU64,
}

impl GateCounts {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Verifies one stored token away from the gate (see [`Gate::verifier`]).
pub(crate) struct Verifier {
    digest: Digest,
    source: Arc<dyn TokenSource>,
    root: PublicKey,
    max_token: usize,
    counts: Arc<GateCounts>,
}

impl Verifier {
    /// Reads the token from the store and verifies it.
    ///
    /// # Errors
    ///
    /// When it cannot be read, is missing, or does not verify.
    pub(crate) fn verify(self) -> Result<Token, TokenError> {
        let bytes = self
            .source
            .token_bytes(&self.digest)
            .map_err(TokenError::Unreadable)?
            .ok_or_else(|| TokenError::Missing(self.digest.short()))?;
        let token = Token::parse_stored(&self.digest, &bytes, self.root, self.max_token)?;
        GateCounts::bump(&self.counts.verified);
        Ok(token)
    }
}

/// The live gate: verified tokens and cached decisions.
pub(crate) struct Gate {
    root: PublicKey,
    tokens_source: Arc<dyn TokenSource>,
    max_token: usize,
    tokens: HashMap<Digest, Verified, toka_kernel::IdHash>,
    /// The eviction clock: the kept tokens in the order it visits them.
    clock: std::collections::VecDeque<Digest>,
    /// How many verified tokens are kept ([`MAX_VERIFIED_TOKENS`]).
    max_tokens: usize,
    decisions: Decisions,
    counts: Arc<GateCounts>,
}

impl Gate {
    pub(crate) fn new(root: PublicKey, source: Arc<dyn TokenSource>, limits: &Limits) -> Self {
        Self {
            root,
            tokens_source: source,
            max_token: limits.max_token as usize,
            tokens: HashMap::default(),
            clock: std::collections::VecDeque::new(),
            max_tokens: MAX_VERIFIED_TOKENS,
            decisions: Decisions::default(),
            counts: Arc::default(),
        }
    }

    /// The gate's counters, shared.
    pub(crate) fn counts(&self) -> Arc<GateCounts> {
        Arc::clone(&self.counts)
    }

    pub(crate) fn max_token(&self) -> usize {
        self.max_token
    }

    /// The root key tokens must be rooted in.
    pub(crate) fn root(&self) -> PublicKey {
        self.root
    }

    /// Whether the gate holds this token verified already.
    pub(crate) fn knows(&self, digest: &Digest) -> bool {
        self.tokens.contains_key(digest)
    }

    /// Remembers a token the host just verified or made.
    pub(crate) fn admit(&mut self, token: Token) {
        GateCounts::bump(&self.counts.admitted);
        let digest = token.digest();
        if !self.tokens.contains_key(&digest) {
            if self.tokens.len() >= self.max_tokens {
                self.evict_one();
            }
            self.clock.push_back(digest);
        }
        let uses_time = token.uses_time();
        self.tokens.insert(
            digest,
            Verified {
                token,
                uses_time,
                clean_at: None,
                unexpired_at: None,
                targetless: Vec::new(),
                // Admitted to be used (a child's token, before its first
                // task): it gets its second chance like a used one, or the
                // clock would forget it ahead of tokens used long ago.
                used: true,
            },
        );
    }

    /// Forgets the least recently used token (the clock algorithm: a
    /// token used since the clock last passed gets a second chance).
    fn evict_one(&mut self) {
        while let Some(digest) = self.clock.pop_front() {
            match self.tokens.get_mut(&digest) {
                Some(kept) if kept.used => {
                    kept.used = false;
                    self.clock.push_back(digest);
                }
                Some(_) => {
                    self.tokens.remove(&digest);
                    return;
                }
                None => {}
            }
        }
    }

    /// The token with this digest, verifying it on first use.
    pub(crate) fn token(&mut self, digest: &Digest) -> Result<&Token, TokenError> {
        self.verified(digest).map(|v| &v.token)
    }

    /// What verifying the stored token `digest` needs, for a caller that
    /// verifies it without holding the gate (signatures take ~100 µs; the
    /// gate is behind the sequencer's lock): `None` when the gate holds
    /// it verified already.
    pub(crate) fn verifier(&self, digest: &Digest) -> Option<Verifier> {
        (!self.tokens.contains_key(digest)).then(|| Verifier {
            digest: *digest,
            source: Arc::clone(&self.tokens_source),
            root: self.root,
            max_token: self.max_token,
            counts: Arc::clone(&self.counts),
        })
    }

    fn verified(&mut self, digest: &Digest) -> Result<&mut Verified, TokenError> {
        if !self.tokens.contains_key(digest) {
            let token = self
                .verifier(digest)
                .expect("the gate does not hold it")
                .verify()?;
            self.admit(token);
        }
        let kept = self
            .tokens
            .get_mut(digest)
            .expect("the token was admitted just above if it was not there");
        kept.used = true;
        Ok(kept)
    }

    /// Authorizes `check` for `origin`, which holds the token `token`,
    /// deciding here what the gate has no decision for.
    pub(crate) fn authorize(
        &mut self,
        token: Digest,
        origin: EntityId,
        check: &Check,
        time: Timestamp,
        state: &WorldState,
    ) -> Result<(), Denied> {
        loop {
            let undecided = match self.ask(token, origin, check, time, state) {
                Asked::Answered(decision) => return decision,
                Asked::Undecided(undecided) => undecided,
            };
            let whole = undecided.check == *check;
            let decision = self.decide_here(undecided);
            // A denial of the check's relations alone decides nothing: the
            // next plan asks the check itself.
            if decision.is_ok() || whole {
                GateCounts::bump(&self.counts.checks);
                return decision;
            }
        }
    }

    /// Answers `check` for `origin`, which holds the token `token`, from
    /// what the gate keeps: the token's revocation, then a decision kept
    /// for the check. Without one it hands back what deciding it needs,
    /// so the authorizer (tens of µs) can run away from the gate, which is
    /// behind the sequencer's lock; [`Gate::settle`] keeps the decision
    /// for the next ask.
    pub(crate) fn ask(
        &mut self,
        token: Digest,
        origin: EntityId,
        check: &Check,
        time: Timestamp,
        state: &WorldState,
    ) -> Asked {
        let checked = self
            .verified(&token)
            .map_err(|e| Denied(format!("the agent's token is not usable: {e}")))
            .and_then(|verified| verified.check_not_revoked(state));
        let plan = match checked {
            Ok(()) => self.plan(token, origin, check, time),
            Err(denied) => Plan::Kept(Err(denied)),
        };
        match plan {
            Plan::Kept(decision) => {
                GateCounts::bump(&self.counts.checks);
                Asked::Answered(decision)
            }
            Plan::Decide(key, asked) => {
                let undecided = Box::new(Undecided {
                    token: self.tokens[&token].token.clone(),
                    key,
                    check: asked,
                    time,
                    lineage: crate::capability::policy::lineage(origin, state),
                    counts: Arc::clone(&self.counts),
                });
                if !(check.names_free_text() || check.oversized().is_some()) {
                    return Asked::Undecided(undecided);
                }
                // A denial of a name the agent made up is not kept (see
                // `remember`): decided away, it would be decided twice.
                let decision = self.decide_here(undecided);
                GateCounts::bump(&self.counts.checks);
                Asked::Answered(decision)
            }
        }
    }

    /// Runs the authorizer for `undecided` and keeps its decision.
    fn decide_here(&mut self, undecided: Box<Undecided>) -> Result<(), Denied> {
        let Decided { key, decision } = undecided.decide();
        self.remember(key, decision.clone());
        decision
    }

    /// How the gate answers `check` from what it keeps (the token is
    /// held): the decision kept for it, an allow kept for its relations
    /// alone (see [`relations_only`]), or what to decide.
    fn plan(&mut self, token: Digest, origin: EntityId, check: &Check, time: Timestamp) -> Plan {
        let key = Key::new(&self.tokens[&token], token, origin, check, time);
        if let Some(decision) = self.cached(&key) {
            return Plan::Kept(decision);
        }
        let verified = &self.tokens[&token];
        if let Some(relations) = relations_only(check)
            && verified.token.monotone()
        {
            let relations_key = Key::new(verified, token, origin, &relations, time);
            match self.cached(&relations_key) {
                Some(Ok(())) => return Plan::Kept(Ok(())),
                None => return Plan::Decide(relations_key, relations),
                Some(Err(_)) => {}
            }
        }
        Plan::Decide(key, check.clone())
    }

    /// Keeps a decision made by [`Undecided::decide`] (if the gate still
    /// holds its token).
    pub(crate) fn settle(&mut self, decided: Decided) {
        if self.tokens.contains_key(&decided.key.token()) {
            self.remember(decided.key, decided.decision);
        }
    }

    /// The decision kept for `key`, if any.
    fn cached(&mut self, key: &Key) -> Option<Result<(), Denied>> {
        match key {
            Key::Targetless(token, key) => {
                let verified = self.tokens.get(token)?;
                let (_, decision) = verified.targetless.iter().find(|(k, _)| k == key)?;
                Some(decision.clone())
            }
            Key::Targets(key) => self.decisions.get(key),
        }
    }

    /// Keeps `decision` for `key`: a target-less one in its token's few
    /// slots, others in the cache bounded in bytes. A denial of a name the
    /// agent made up (an extension family, a host) is not kept: an agent
    /// could fill the cache with them.
    fn remember(&mut self, key: Key, decision: Result<(), Denied>) {
        match key {
            Key::Targetless(token, key) => {
                let Some(verified) = self.tokens.get_mut(&token) else {
                    return;
                };
                // Replace the entry of the same class and origin (an older second).
                verified
                    .targetless
                    .retain(|(k, _)| (k.operation, k.origin) != (key.operation, key.origin));
                if verified.targetless.len() >= TARGETLESS_SLOTS {
                    drop(verified.targetless.remove(0));
                }
                verified.targetless.push((key, decision));
            }
            Key::Targets(key) => {
                if decision.is_err() && key.check.names_free_text() {
                    return;
                }
                self.decisions.insert(key, decision);
            }
        }
    }

    /// Whether the token `digest` still stands at `time`: no revocation
    /// covers it and its time checks (an expiry) pass. Cheap: revocations
    /// are looked up only when their count changed, the time checks run at
    /// most once a second. A token the gate does not hold verified is not
    /// verified here (that is ~100 µs, and the caller holds the sequencer's
    /// lock): it stands until the agent's next operation finds otherwise.
    pub(crate) fn still_stands(
        &mut self,
        digest: &Digest,
        time: Timestamp,
        state: &WorldState,
    ) -> Result<(), Denied> {
        let Some(verified) = self.tokens.get_mut(digest) else {
            return Ok(());
        };
        // In use: the clock must not forget the token of a running task.
        verified.used = true;
        verified.check_not_revoked(state)?;
        let second = time.0 / 1000;
        if verified.uses_time && verified.unexpired_at != Some(second) {
            verified
                .token
                .check_not_expired(time)
                .map_err(|e| Denied(e.to_string()))?;
            verified.unexpired_at = Some(second);
        }
        Ok(())
    }
}

impl Verified {
    /// Denies a token a revocation covers (looked up only when the
    /// kernel's revocation count changed since it was last found clean).
    fn check_not_revoked(&mut self, state: &WorldState) -> Result<(), Denied> {
        if self.revoked(state) {
            return Err(Denied("the token has been revoked".into()));
        }
        self.clean_at = Some(state.revocation_count());
        Ok(())
    }

    /// Whether a revocation covers the token.
    fn revoked(&self, state: &WorldState) -> bool {
        self.clean_at != Some(state.revocation_count())
            && self
                .token
                .revocation_ids()
                .iter()
                .any(|id| state.is_revoked(id))
    }
}

/// What a kept decision is found by.
enum Key {
    /// A target-less check (`observe`, `state`), kept in its token's slots.
    Targetless(Digest, Targetless),
    /// A check with targets, kept in the gate's cache.
    Targets(DecisionKey),
}

impl Key {
    fn new(
        verified: &Verified,
        token: Digest,
        origin: EntityId,
        check: &Check,
        time: Timestamp,
    ) -> Key {
        let second = if verified.uses_time { time.0 / 1000 } else { 0 };
        if check.targets.is_empty() {
            Key::Targetless(
                token,
                Targetless {
                    operation: check.operation,
                    origin,
                    second,
                },
            )
        } else {
            Key::Targets(DecisionKey {
                token,
                origin,
                check: check.clone(),
                second,
            })
        }
    }

    fn token(&self) -> Digest {
        match self {
            Key::Targetless(token, _) => *token,
            Key::Targets(key) => key.token,
        }
    }
}

/// How the gate answers a check (see [`Gate::plan`]).
enum Plan {
    /// From a decision it keeps.
    Kept(Result<(), Denied>),
    /// By deciding this check (the one asked, or its relations alone),
    /// kept under this key.
    Decide(Key, Check),
}

/// What [`Gate::ask`] answers.
pub(crate) enum Asked {
    /// The gate's decision, from what it keeps.
    Answered(Result<(), Denied>),
    /// No decision is kept for the check: make it away from the gate
    /// ([`Undecided::decide`]), keep it ([`Gate::settle`]), and ask again.
    Undecided(Box<Undecided>),
}

/// A check to decide away from the gate (see [`Gate::ask`]).
pub(crate) struct Undecided {
    token: Token,
    key: Key,
    check: Check,
    time: Timestamp,
    lineage: Vec<Digest>,
    counts: Arc<GateCounts>,
}

/// A decision made away from the gate, for [`Gate::settle`].
pub(crate) struct Decided {
    key: Key,
    decision: Result<(), Denied>,
}

impl Decided {
    /// The decision made.
    pub(crate) fn decision(&self) -> Result<(), Denied> {
        self.decision.clone()
    }
}

impl Undecided {
    /// Runs the authorizer: what [`Gate::authorize`] would decide for the
    /// same token, origin, check and second.
    pub(crate) fn decide(self: Box<Self>) -> Decided {
        GateCounts::bump(&self.counts.authorized);
        let origin = match &self.key {
            Key::Targetless(_, key) => key.origin,
            Key::Targets(key) => key.origin,
        };
        let decision = decide(
            self.token.biscuit(),
            origin,
            &self.check,
            self.time,
            &self.lineage,
        );
        Decided {
            key: self.key,
            decision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::policy::MAX_TARGET;
    use crate::capability::rights::Right;
    use crate::capability::root_key::RootKey;

    /// A source that holds nothing: the tests admit their tokens.
    struct NoTokens;

    impl TokenSource for NoTokens {
        fn token_bytes(&self, _: &Digest) -> Result<Option<Vec<u8>>, String> {
            Ok(None)
        }
    }

    fn gate_with(rights: &[&str]) -> (Gate, Digest, WorldState) {
        let root = RootKey::generate();
        let rights: Vec<Right> = rights.iter().map(|r| r.parse().unwrap()).collect();
        let token = Token::issue(&root, &rights, &[], None).unwrap();
        let digest = token.digest();
        let mut gate = Gate::new(root.public(), Arc::new(NoTokens), &Limits::default());
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
    }

    #[test]
    fn a_decision_made_ahead_is_the_gates_and_is_kept_for_it() {
        let (mut gate, token, state) = gate_with(&["observe", "schedule children"]);
        let origin = EntityId::from_u128(9);
        let checks = [
            Check::literal("observe", None),
            Check::literal("state", None),
            Check {
                operation: "schedule",
                targets: vec![EntityId::from_u128(10).to_string(), "children".into()],
            },
            Check::literal("schedule", Some(&EntityId::from_u128(11).to_string())),
        ];
        for check in &checks {
            // What a gate that never decided ahead says.
            let (mut fresh, _, _) = gate_with(&[]);
            fresh.tokens.insert(
                token,
                Verified {
                    token: gate.tokens[&token].token.clone(),
                    uses_time: false,
                    clean_at: None,
                    unexpired_at: None,
                    targetless: Vec::new(),
                    used: true,
                },
            );
            let expected = fresh.authorize(token, origin, check, Timestamp(5), &state);

            let away = undecided(&mut gate, token, origin, check, Timestamp(5), &state)
                .expect("nothing is kept for it yet");
            gate.settle(away.decide());
            assert!(
                undecided(&mut gate, token, origin, check, Timestamp(5), &state).is_none(),
                "the decision is kept"
            );
            let ran = gate.counts.authorized.load(Ordering::Relaxed);
            assert_eq!(
                gate.authorize(token, origin, check, Timestamp(5), &state),
                expected
            );
            assert_eq!(
                gate.counts.authorized.load(Ordering::Relaxed),
                ran,
                "the authorizer does not run again"
            );
        }
        // Allowed and denied alike were kept: `state` and another agent
        // than a child are not among the token's rights.
        let allowed: Vec<bool> = checks
            .iter()
            .map(|c| {
                gate.authorize(token, origin, c, Timestamp(5), &state)
                    .is_ok()
            })
            .collect();
        assert_eq!(allowed, [true, false, true, false]);
    }

    /// `schedule` of `target`, a child of the origin.
    fn schedule_child(target: u128) -> Check {
        Check {
            operation: "schedule",
            targets: vec![EntityId::from_u128(target).to_string(), "children".into()],
        }
    }

    /// What [`Gate::ask`] hands back to decide away from the gate, if
    /// anything.
    fn undecided(
        gate: &mut Gate,
        token: Digest,
        origin: EntityId,
        check: &Check,
        time: Timestamp,
        state: &WorldState,
    ) -> Option<Box<Undecided>> {
        match gate.ask(token, origin, check, time, state) {
            Asked::Answered(_) => None,
            Asked::Undecided(undecided) => Some(undecided),
        }
    }

    /// Asks `check` the way the sequencer does: decided away from the
    /// gate if it has nothing for it, then authorized.
    fn ask(gate: &mut Gate, token: Digest, check: &Check) -> Result<(), Denied> {
        let (origin, state) = (EntityId::from_u128(9), WorldState::default());
        match gate.ask(token, origin, check, Timestamp(1), &state) {
            Asked::Answered(decision) => decision,
            Asked::Undecided(undecided) => {
                gate.settle(undecided.decide());
                gate.authorize(token, origin, check, Timestamp(1), &state)
            }
        }
    }

    #[test]
    fn one_decision_serves_scheduling_every_child() {
        let (mut gate, token, _) = gate_with(&["schedule children"]);
        for child in 10..60 {
            assert_eq!(ask(&mut gate, token, &schedule_child(child)), Ok(()));
        }
        assert_eq!(gate.counts.authorized.load(Ordering::Relaxed), 1);
        // A right to one agent by id still counts for that agent alone.
        let named = EntityId::from_u128(5).to_string();
        let (mut gate, token, _) = gate_with(&[&format!("schedule {named}")]);
        assert_eq!(ask(&mut gate, token, &schedule_child(5)), Ok(()));
        assert!(ask(&mut gate, token, &schedule_child(6)).is_err());
        assert!(ask(&mut gate, token, &schedule_child(7)).is_err());
    }

    #[test]
    fn a_block_that_more_facts_can_fail_is_asked_for_each_agent() {
        // An attenuation that refuses one child by id: `reject if`, `check
        // all` and an expression can fail with the child's id, so the gate
        // must not answer the child from the decision for the relation.
        let refused = EntityId::from_u128(7).to_string();
        for block in [
            format!("reject if target(\"{refused}\")"),
            format!("check all target($t), $t != \"{refused}\""),
            format!("check if operation($op), target($t), $t != \"{refused}\", $t != \"children\""),
        ] {
            let root = RootKey::generate();
            let held =
                Token::issue(&root, &["schedule children".parse().unwrap()], &[], None).unwrap();
            let biscuit = held
                .biscuit()
                .append(
                    biscuit_auth::builder::BlockBuilder::new()
                        .code(&block)
                        .unwrap(),
                )
                .unwrap();
            let token = Token::parse(&biscuit.to_vec().unwrap(), root.public(), 1 << 16).unwrap();
            assert!(!token.monotone(), "{block}");
            let digest = token.digest();
            let mut gate = Gate::new(root.public(), Arc::new(NoTokens), &Limits::default());
            gate.admit(token);
            assert_eq!(
                ask(&mut gate, digest, &schedule_child(8)),
                Ok(()),
                "{block}"
            );
            assert!(
                ask(&mut gate, digest, &schedule_child(7)).is_err(),
                "{block}"
            );
            assert_eq!(
                ask(&mut gate, digest, &schedule_child(9)),
                Ok(()),
                "{block}"
            );
        }
    }

    #[test]
    fn nothing_is_decided_ahead_for_made_up_names_or_revoked_tokens() {
        let root = RootKey::generate();
        let held = Token::issue(&root, &["extension *".parse().unwrap()], &[], None).unwrap();
        let token = held.digest();
        let mut gate = Gate::new(root.public(), Arc::new(NoTokens), &Limits::default());
        gate.admit(held.clone());
        let origin = EntityId::from_u128(9);
        let made_up = Check::literal("extension", Some("anything"));
        let mut kernel = toka_kernel::Kernel::new(Limits::default());
        // Decided by the gate itself: its denial would not be kept.
        let ran = gate.counts.authorized.load(Ordering::Relaxed);
        assert!(
            undecided(
                &mut gate,
                token,
                origin,
                &made_up,
                Timestamp(1),
                kernel.state()
            )
            .is_none()
        );
        assert_eq!(gate.counts.authorized.load(Ordering::Relaxed), ran + 1);
        let observe = Check::literal("observe", None);
        let undecided_observe = undecided(
            &mut gate,
            token,
            origin,
            &observe,
            Timestamp(1),
            kernel.state(),
        )
        .expect("an observe check is decided away");
        // A revocation applied between the decision and its use still
        // denies: the gate checks revocation before what it kept.
        for id in held.revocation_ids() {
            kernel
                .apply(toka_kernel::Command::system(
                    EntityId::SYSTEM,
                    Timestamp(2),
                    toka_kernel::Operation::RevokeToken { revocation_id: id },
                ))
                .unwrap();
        }
        gate.settle(undecided_observe.decide());
        assert_eq!(
            gate.authorize(token, origin, &observe, Timestamp(3), kernel.state()),
            Err(Denied("the token has been revoked".into()))
        );
        assert!(
            undecided(
                &mut gate,
                token,
                origin,
                &observe,
                Timestamp(3),
                kernel.state()
            )
            .is_none()
        );
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
            assert!(gate.decisions.held() <= MAX_CACHED_BYTES);
        }
        assert!(!gate.decisions.is_empty());
    }

    #[test]
    fn a_decision_in_use_outlives_made_up_targets_filling_the_cache() {
        let (mut gate, token, state) = gate_with(&["extension *"]);
        let origin = EntityId::from_u128(9);
        let family = |name: String| Check {
            operation: "extension",
            targets: vec![name],
        };
        let authorized = |gate: &Gate| gate.counts.authorized.load(Ordering::Relaxed);
        let hot = family("hot".into());
        assert!(
            gate.authorize(token, origin, &hot, Timestamp(0), &state)
                .is_ok()
        );
        // Made-up families of 200 bytes, each decision kept: the young
        // generation fills every ~6 000. The hot check is asked again now
        // and then, and decided only the first time.
        for i in 0..25_000u32 {
            let made_up = family(format!("family-{i}-{}", "y".repeat(200)));
            assert!(
                gate.authorize(token, origin, &made_up, Timestamp(0), &state)
                    .is_ok()
            );
            if i % 1000 == 0 {
                let before = authorized(&gate);
                assert!(
                    gate.authorize(token, origin, &hot, Timestamp(0), &state)
                        .is_ok()
                );
                assert_eq!(
                    authorized(&gate),
                    before,
                    "the hot decision was dropped at {i}"
                );
                assert!(gate.decisions.held() <= MAX_CACHED_BYTES);
            }
        }
        assert_eq!(
            authorized(&gate),
            25_001,
            "every made-up family decided once"
        );
    }

    #[test]
    fn a_token_stands_until_its_expiry_at_the_hosts_logical_time() {
        let root = RootKey::generate();
        let at = 1_800_000_000_000u64; // ms
        let expires = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
        let token = Token::issue(&root, &observe(), &[], Some(expires)).unwrap();
        let digest = token.digest();
        let mut gate = Gate::new(root.public(), Arc::new(NoTokens), &Limits::default());
        let state = WorldState::default();
        // Not held verified: not verified here, it stands.
        assert_eq!(
            gate.still_stands(&digest, Timestamp(at + 1000), &state),
            Ok(())
        );
        gate.admit(token);
        assert_eq!(
            gate.still_stands(&digest, Timestamp(at - 1000), &state),
            Ok(())
        );
        let Err(Denied(reason)) = gate.still_stands(&digest, Timestamp(at + 1000), &state) else {
            panic!("an expired token stands")
        };
        assert!(reason.starts_with("the token has expired"), "{reason}");
        // An operation is denied at that time too.
        let check = Check::literal("observe", None);
        let origin = EntityId::from_u128(9);
        assert!(
            gate.authorize(digest, origin, &check, Timestamp(at - 1000), &state)
                .is_ok()
        );
        assert!(
            gate.authorize(digest, origin, &check, Timestamp(at + 1000), &state)
                .is_err()
        );
    }

    /// A store holding one token.
    struct OneToken(Digest, Vec<u8>);

    impl TokenSource for OneToken {
        fn token_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, String> {
            Ok((*digest == self.0).then(|| self.1.clone()))
        }
    }

    /// A token holding `observe`, and a gate keeping at most 8 tokens whose
    /// store holds that one (when `stored`) and no other.
    fn small_gate(stored: bool) -> (Token, Gate) {
        let root = RootKey::generate();
        let parent = Token::issue(&root, &observe(), &[], None).unwrap();
        let store: Arc<dyn TokenSource> = if stored {
            Arc::new(OneToken(parent.digest(), parent.bytes().to_vec()))
        } else {
            Arc::new(NoTokens)
        };
        let mut gate = Gate::new(root.public(), store, &Limits::default());
        gate.max_tokens = 8;
        (parent, gate)
    }

    fn observe() -> Vec<Right> {
        vec!["observe".parse().unwrap()]
    }

    /// Whether the holder of `token` may `observe`.
    fn observes(gate: &mut Gate, token: Digest) -> bool {
        let check = Check::literal("observe", None);
        gate.authorize(
            token,
            EntityId::from_u128(9),
            &check,
            Timestamp(0),
            &WorldState::default(),
        )
        .is_ok()
    }

    #[test]
    fn the_verified_tokens_are_bounded_and_the_used_ones_stay() {
        // Regression: at 65 536 tokens the gate forgot them all, and every
        // agent's next operation verified its token again.
        let (parent, mut gate) = small_gate(true);
        let hot = parent.digest();
        gate.admit(parent.clone());
        let mut cold = Vec::new();
        for _ in 0..40 {
            let token = parent.attenuate(&observe(), &[]).unwrap();
            cold.push(token.digest());
            gate.admit(token);
            assert!(observes(&mut gate, hot));
            assert!(gate.tokens.len() <= 8);
        }
        // The token in use is forgotten only when every token the gate
        // holds was used or admitted since the clock last passed, and it is
        // then the oldest: at most once per turn of the clock.
        let verified = gate
            .counts
            .verified
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            verified <= 40 / 8,
            "the token in use was verified {verified} times"
        );
        assert!(gate.knows(&hot), "the token in use was kept");
        assert!(gate.knows(cold.last().unwrap()), "the newest was kept");
        assert!(!gate.knows(&cold[0]), "the oldest unused was forgotten");
    }

    #[test]
    fn a_token_admitted_and_not_used_yet_outlives_tokens_used_long_ago() {
        // Regression: a token was admitted as unused, so when the gate was
        // full the clock forgot the children spawned and waiting for their
        // first task before the tokens of children long done, and each
        // waiting child's token was verified again when it ran.
        let (parent, mut gate) = small_gate(false);
        let mut admitted = Vec::new();
        for _ in 0..8 {
            let token = parent.attenuate(&observe(), &[]).unwrap();
            admitted.push(token.digest());
            gate.admit(token);
        }
        // The first four ran their task; the last four wait for theirs.
        for done in &admitted[..4] {
            assert!(observes(&mut gate, *done));
        }
        gate.admit(parent.attenuate(&observe(), &[]).unwrap());
        for waiting in &admitted[4..] {
            assert!(gate.knows(waiting), "a waiting child's token was forgotten");
        }
        assert!(!gate.knows(&admitted[0]), "the oldest token was kept");
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
