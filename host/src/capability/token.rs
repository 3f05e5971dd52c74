//! Capability tokens: biscuits rooted in the host's key.
//!
//! A token's authority block lists `right(...)` facts (see [`Right`]) and may
//! carry checks such as an expiry (`check if time($t), $t <= DATE`). Each
//! delegation appends a block that restricts the token to the delegated
//! rights:
//!
//! ```text
//! delegated("observe");
//! delegated("schedule", "children");
//! check if operation($op), delegated($op)
//!       or operation($op), delegated($op, "*")
//!       or operation($op), target($t), delegated($op, $t);
//! ```
//!
//! Policies trust only the authority block, so a block can only take rights
//! away: a child never holds a right its parent lacks.
//!
//! Any block may also state budgets (`budget("memory", 16777216);`, see
//! [`Budget`]); the smallest value any block states is the token's budget,
//! so a block can only lower one.

use std::sync::Arc;
use std::time::SystemTime;

use biscuit_auth::builder::{Fact, string};
use biscuit_auth::builder_ext::BuilderExt;
use biscuit_auth::{Biscuit, BlockBuilder, PublicKey, UnverifiedBiscuit};
use toka_kernel::Digest;

use crate::capability::budget::Budget;
use crate::capability::rights::Right;
use crate::capability::root_key::RootKey;

/// The check every delegation block carries.
const DELEGATION_CHECK: &str = "check if operation($op), delegated($op) or operation($op), delegated($op, \"*\") or operation($op), target($t), delegated($op, $t)";

/// [`DELEGATION_CHECK`], parsed once (every spawn with rights attenuates).
static DELEGATION: std::sync::LazyLock<biscuit_auth::builder::Check> =
    std::sync::LazyLock::new(|| {
        DELEGATION_CHECK
            .try_into()
            .expect("the delegation check is a constant that parses")
    });

/// A verified capability token: its bytes, their digest, the parsed biscuit.
#[derive(Clone)]
pub struct Token {
    biscuit: Arc<Biscuit>,
    bytes: Arc<[u8]>,
    digest: Digest,
    /// What was read from the token once (a token never changes), shared
    /// by its clones.
    read: Arc<Read>,
}

/// Queries of a token kept after their first answer: each runs a Datalog
/// authorizer over every block, and an agent's instance needs them each
/// time it starts.
#[derive(Default)]
struct Read {
    budgets: std::sync::OnceLock<Result<Vec<Budget>, TokenError>>,
    authority_rights: std::sync::OnceLock<Vec<Right>>,
    uses_time: std::sync::OnceLock<bool>,
    monotone: std::sync::OnceLock<bool>,
    /// The last second [`Token::check_not_expired`] was asked about, and
    /// its answer: the time it checks is in seconds, so the answer holds
    /// for the whole second (an API client presents its token with every
    /// request).
    expiry: std::sync::Mutex<Option<(u64, Result<(), TokenError>)>>,
}

/// What a token says, read without checking its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Its size in bytes.
    pub size: usize,
    /// Each block's Datalog source, authority block first.
    pub blocks: Vec<String>,
    /// Each block's revocation id.
    pub revocation_ids: Vec<Vec<u8>>,
}

/// Why bytes are not a usable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a biscuit at all (bad base64, truncated, corrupt).
    #[error("not a capability token: {0}")]
    Malformed(String),
    /// The signatures do not verify against the root key.
    #[error(
        "the token's signature does not verify against the root key {root}: it was signed by another key, or altered"
    )]
    BadSignature {
        /// The root public key it was checked against.
        root: String,
    },
    /// Over the size limit.
    #[error("the token is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// [`toka_kernel::Limits::max_token`].
        max: usize,
    },
    /// A check on `time` fails now: the token has expired.
    #[error("the token has expired ({0})")]
    Expired(String),
    /// The bytes stored under a token id are not that token.
    #[error("the bytes stored as token {0} have another digest")]
    DigestMismatch(String),
    /// Building or appending a block failed.
    #[error("building the token failed: {0}")]
    Build(String),
    /// A budget fact this host cannot apply.
    #[error("the token's budgets are not usable: {0}")]
    Budget(String),
    /// The token (or one it was attenuated from) has been revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// No token is stored under this digest (short form).
    #[error("token {0} is missing from the store")]
    Missing(String),
    /// The store holding the token could not be read.
    #[error("the token store cannot be read: {0}")]
    Unreadable(String),
    /// Its Datalog takes too long to evaluate (e.g. join-heavy blocks
    /// appended offline); refused before anything is written.
    #[error("the token is too expensive to evaluate ({0}); mint a simpler one")]
    TooExpensive(String),
}

impl Token {
    /// The most blocks a token presented to this host may have.
    pub const MAX_BLOCKS: usize = crate::capability::shape::MAX_BLOCKS;
    /// The most facts (rights, budgets) a block appended to a presented
    /// token may hold.
    pub const MAX_BLOCK_FACTS: usize = crate::capability::shape::MAX_BLOCK_FACTS;

    /// Parses and verifies a token: base64 text (as `toka token issue` and
    /// the `biscuit` tool print it; surrounding whitespace ignored) or raw
    /// bytes.
    ///
    /// # Errors
    ///
    /// [`TokenError`] naming what is wrong.
    pub fn parse(input: &[u8], root: PublicKey, max: usize) -> Result<Token, TokenError> {
        let unverified = parse_unverified(input)?;
        let bytes = unverified
            .to_vec()
            .map_err(|e| TokenError::Malformed(describe(&e)))?;
        if bytes.len() > max {
            return Err(TokenError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let biscuit = unverified
            .verify(root)
            .map_err(|_| TokenError::BadSignature {
                root: root.to_string(),
            })?;
        Ok(Self::wrap(biscuit, bytes))
    }

    /// Mints a token granting `rights` within `budgets`, expiring at
    /// `expires` if given.
    ///
    /// # Errors
    ///
    /// [`TokenError::Build`] if biscuit refuses the block.
    pub fn issue(
        root: &RootKey,
        rights: &[Right],
        budgets: &[Budget],
        expires: Option<SystemTime>,
    ) -> Result<Token, TokenError> {
        let mut builder = Biscuit::builder();
        for right in rights {
            builder = builder.fact(right_fact("right", right)).map_err(build)?;
        }
        for budget in budgets {
            builder = builder.fact(budget_fact(*budget)).map_err(build)?;
        }
        if let Some(at) = expires {
            builder = builder.check_expiration_date(at);
        }
        let biscuit = builder.build(root.pair()).map_err(build)?;
        let bytes = biscuit.to_vec().map_err(build)?;
        Ok(Self::wrap(biscuit, bytes))
    }

    /// Mints a package's install token: `rights` within `budgets`, with a
    /// check that the agent using it runs `component` or descends from an
    /// agent that does (the `component` facts of each check), so it cannot
    /// run another component.
    ///
    /// # Errors
    ///
    /// [`TokenError::Build`] if biscuit refuses the block.
    pub fn issue_bound(
        root: &RootKey,
        rights: &[Right],
        budgets: &[Budget],
        component: Digest,
    ) -> Result<Token, TokenError> {
        let mut builder = Biscuit::builder();
        for right in rights {
            builder = builder.fact(right_fact("right", right)).map_err(build)?;
        }
        for budget in budgets {
            builder = builder.fact(budget_fact(*budget)).map_err(build)?;
        }
        builder = builder
            .check(format!("check if component(\"{component}\")").as_str())
            .map_err(build)?;
        let biscuit = builder.build(root.pair()).map_err(build)?;
        let bytes = biscuit.to_vec().map_err(build)?;
        Ok(Self::wrap(biscuit, bytes))
    }

    /// The component an install token is bound to ([`Token::issue_bound`]),
    /// if its authority block binds one.
    #[must_use]
    pub fn bound_component(&self) -> Option<Digest> {
        let authority = self.biscuit.print_block_source(0).ok()?;
        authority.lines().find_map(|line| {
            line.trim()
                .strip_prefix("check if component(\"")?
                .strip_suffix("\");")?
                .parse()
                .ok()
        })
    }

    /// This token restricted to `rights` and `budgets` (a delegation block).
    /// Does not check that this token holds the rights; the gate does that
    /// before a spawn. A budget larger than this token's has no effect.
    ///
    /// # Errors
    ///
    /// [`TokenError::Build`] if biscuit refuses the block.
    pub fn attenuate(&self, rights: &[Right], budgets: &[Budget]) -> Result<Token, TokenError> {
        let mut block = BlockBuilder::new();
        for right in rights {
            block = block.fact(right_fact("delegated", right)).map_err(build)?;
        }
        for budget in budgets {
            block = block.fact(budget_fact(*budget)).map_err(build)?;
        }
        block = block.check(DELEGATION.clone()).map_err(build)?;
        let biscuit = self.biscuit.append(block).map_err(build)?;
        let bytes = biscuit.to_vec().map_err(build)?;
        let child = Self::wrap(biscuit, bytes);
        // The child's authority block is this token's, and its new block
        // holds facts and the delegation check (no time): what was read
        // from this token carries over, budgets narrowed by `budgets`.
        if let Some(rights) = self.read.authority_rights.get() {
            let _ = child.read.authority_rights.set(rights.clone());
        }
        if let Some(uses_time) = self.read.uses_time.get() {
            let _ = child.read.uses_time.set(*uses_time);
        }
        if let Some(Ok(held)) = self.read.budgets.get() {
            let values = held
                .iter()
                .chain(budgets)
                .map(|b| (b.fact_name().to_owned(), b.value()));
            let _ = child.read.budgets.set(merge_budgets(values));
        }
        Ok(child)
    }

    /// This token with lower `budgets` and the same rights (a block with
    /// only budget facts).
    ///
    /// # Errors
    ///
    /// [`TokenError::Build`] if biscuit refuses the block.
    pub fn limit(&self, budgets: &[Budget]) -> Result<Token, TokenError> {
        let mut block = BlockBuilder::new();
        for budget in budgets {
            block = block.fact(budget_fact(*budget)).map_err(build)?;
        }
        let biscuit = self.biscuit.append(block).map_err(build)?;
        let bytes = biscuit.to_vec().map_err(build)?;
        Ok(Self::wrap(biscuit, bytes))
    }

    fn wrap(biscuit: Biscuit, bytes: Vec<u8>) -> Token {
        Token {
            digest: Digest::of(&bytes),
            bytes: bytes.into(),
            biscuit: Arc::new(biscuit),
            read: Arc::default(),
        }
    }

    /// The serialized token.
    #[must_use]
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The BLAKE3 digest of the bytes: the token's id in the log.
    #[must_use]
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Base64 (URL-safe alphabet), as the `biscuit` tool reads and writes it.
    #[must_use]
    pub fn to_base64(&self) -> String {
        self.biscuit
            .to_base64()
            .expect("a token that parsed or was built serializes again")
    }

    /// One revocation id per block, in block order; revoking any of them
    /// revokes this token and every token attenuated from it.
    #[must_use]
    pub fn revocation_ids(&self) -> Vec<Vec<u8>> {
        self.biscuit.revocation_identifiers()
    }

    /// The revocation ids of the token `bytes` encode, read without
    /// checking its signatures (for tokens the host checked when it stored
    /// them); none when the bytes are not a token.
    pub(crate) fn stored_revocation_ids(bytes: &[u8]) -> Vec<Vec<u8>> {
        UnverifiedBiscuit::from(bytes)
            .map(|token| token.revocation_identifiers())
            .unwrap_or_default()
    }

    /// Each block's Datalog source, in block order.
    #[must_use]
    pub fn block_sources(&self) -> Vec<String> {
        (0..self.biscuit.block_count())
            .map(|i| self.biscuit.print_block_source(i).unwrap_or_default())
            .collect()
    }

    /// The rights delegated by the last block, or `None` for a token with no
    /// delegation block.
    #[must_use]
    pub fn delegated_rights(&self) -> Option<Vec<String>> {
        let count = self.biscuit.block_count();
        if count < 2 {
            return None;
        }
        let source = self.biscuit.print_block_source(count - 1).ok()?;
        Some(
            source
                .lines()
                .filter_map(|line| line.trim().strip_prefix("delegated(")?.strip_suffix(");"))
                .map(|args| {
                    args.split(", ")
                        .map(|a| a.trim_matches('"'))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect(),
        )
    }

    /// The token's budgets: for each kind any block states, the smallest
    /// value stated, in [`Budget`] order.
    ///
    /// # Errors
    ///
    /// [`TokenError::Budget`] for a budget this host does not know or a
    /// value that is not a whole number.
    pub fn budgets(&self) -> Result<Vec<Budget>, TokenError> {
        self.read
            .budgets
            .get_or_init(|| {
                let facts: Vec<(String, i64)> = self
                    .query_authorizer()
                    .and_then(|mut a| {
                        a.query_all_with_limits(
                            "data($name, $value) <- budget($name, $value)",
                            crate::capability::policy::RUN_LIMITS,
                        )
                    })
                    .map_err(|e| TokenError::Budget(describe(&e)))?;
                let mut values = Vec::with_capacity(facts.len());
                for (name, value) in facts {
                    let value = u64::try_from(value).map_err(|_| {
                        TokenError::Budget(format!("budget `{name}` is negative ({value})"))
                    })?;
                    values.push((name, value));
                }
                merge_budgets(values)
            })
            .clone()
    }

    /// The rights the authority block grants (before any delegation block
    /// narrows them), skipping facts that are not rights this host knows.
    #[must_use]
    pub fn authority_rights(&self) -> Vec<Right> {
        self.read
            .authority_rights
            .get_or_init(|| self.read_authority_rights())
            .clone()
    }

    fn read_authority_rights(&self) -> Vec<Right> {
        let mut rights = Vec::new();
        let Ok(mut authorizer) = self.query_authorizer() else {
            return rights;
        };
        let limits = crate::capability::policy::RUN_LIMITS;
        if let Ok(plain) = authorizer
            .query_with_limits::<_, (String,), _>("data($op) <- right($op)", limits.clone())
        {
            rights.extend(plain.into_iter().filter_map(|(op,)| op.parse().ok()));
        }
        if let Ok(targeted) = authorizer
            .query_with_limits::<_, (String, String), _>("data($op, $t) <- right($op, $t)", limits)
        {
            rights.extend(
                targeted
                    .into_iter()
                    .filter_map(|(op, target)| format!("{op} {target}").parse().ok()),
            );
        }
        rights.sort();
        rights.dedup();
        rights
    }

    /// Whether any of the token's checks reads `time` (then decisions
    /// depend on the time they are made at).
    pub(crate) fn uses_time(&self) -> bool {
        *self
            .read
            .uses_time
            .get_or_init(|| self.block_sources().iter().any(|s| s.contains("time(")))
    }

    /// Whether the token's Datalog is a plain query that more facts can
    /// only satisfy more: no block has rules (nothing is derived, so no run
    /// limit comes near) and every check is a `check if` of predicates
    /// alone (no `check all` or `reject if`, which a fact more can fail; no
    /// expression, which a new binding could make err). False if it cannot
    /// be evaluated.
    pub(crate) fn monotone(&self) -> bool {
        *self.read.monotone.get_or_init(|| {
            let Ok(authorizer) = self.query_authorizer() else {
                return false;
            };
            let (_, rules, checks, _) = authorizer.dump();
            rules.is_empty()
                && checks.iter().all(|c| {
                    c.kind == biscuit_auth::builder::CheckKind::One
                        && c.queries.iter().all(|q| q.expressions.is_empty())
                })
        })
    }

    /// An authorizer over this token for queries, bounded by facts and
    /// iterations only (no clock).
    fn query_authorizer(&self) -> Result<biscuit_auth::Authorizer, biscuit_auth::error::Token> {
        biscuit_auth::AuthorizerBuilder::new()
            .set_limits(crate::capability::policy::RUN_LIMITS)
            .build(&self.biscuit)
    }

    /// Admits a token presented from outside the host (`run --token`, a
    /// spawn, the API): its Datalog must evaluate within
    /// a timed check (100 ms), so
    /// that no token reaches the sequencer (which never reads a clock) that
    /// is expensive to evaluate; its budgets must be ones this host knows;
    /// and it must not have expired at `at`.
    ///
    /// # Errors
    ///
    /// [`TokenError::TooExpensive`], [`TokenError::Budget`] or
    /// [`TokenError::Expired`].
    pub fn admit(&self, at: toka_kernel::Timestamp) -> Result<(), TokenError> {
        self.check_shape()?;
        let probe = biscuit_auth::AuthorizerBuilder::new()
            .fact(biscuit_auth::builder::fact(
                "time",
                &[biscuit_auth::builder::Term::Date(at.0 / 1000)],
            ))
            .and_then(|b| {
                b.fact(biscuit_auth::builder::fact(
                    "operation",
                    &[string("admission")],
                ))
            })
            .and_then(|b| b.policy("allow if true"))
            .map(|b| b.set_limits(crate::capability::policy::ADMISSION_LIMITS))
            .and_then(|b| b.build(&self.biscuit))
            .and_then(|mut a| a.authorize());
        if let Err(biscuit_auth::error::Token::RunLimit(limit)) = probe {
            return Err(TokenError::TooExpensive(limit.to_string()));
        }
        self.budgets()?;
        self.check_not_expired(at)
    }

    /// Bounds what the blocks after the authority block (which anyone
    /// holding the token can append, offline) may ask of an evaluation, by
    /// their text alone: no rules or scopes; at most
    /// [`MAX_BLOCKS`](Self::MAX_BLOCKS) blocks and
    /// [`MAX_BLOCK_FACTS`](Self::MAX_BLOCK_FACTS) facts a block, 4 checks
    /// of 4 alternatives joining 3 predicates; no closures or regular
    /// expressions; and at most 4 096 combinations of facts tried by all
    /// their checks, estimated from the facts each predicate can match.
    /// The authority block is the host's own.
    ///
    /// # Errors
    ///
    /// [`TokenError::TooExpensive`] naming the block and the bound.
    pub fn check_shape(&self) -> Result<(), TokenError> {
        crate::capability::shape::check(&self.biscuit).map_err(TokenError::TooExpensive)
    }

    /// Parses a token stored under `digest`, checking that the bytes are
    /// the ones the digest names.
    ///
    /// # Errors
    ///
    /// [`TokenError::DigestMismatch`], or why [`Token::parse`] refuses it.
    pub(crate) fn parse_stored(
        digest: &Digest,
        bytes: &[u8],
        root: PublicKey,
        max: usize,
    ) -> Result<Token, TokenError> {
        if Digest::of(bytes) != *digest {
            return Err(TokenError::DigestMismatch(digest.short()));
        }
        Self::parse(bytes, root, max)
    }

    /// Fails if any of the token's checks on `time` fails at `at`: the token
    /// has expired.
    ///
    /// # Errors
    ///
    /// [`TokenError::Expired`] naming the check.
    pub fn check_not_expired(&self, at: toka_kernel::Timestamp) -> Result<(), TokenError> {
        let second = at.0 / 1000;
        let lock = || {
            self.read
                .expiry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((asked, answer)) = &*lock()
            && *asked == second
        {
            return answer.clone();
        }
        let answer = self.expired_at(second);
        *lock() = Some((second, answer.clone()));
        answer
    }

    fn expired_at(&self, second: u64) -> Result<(), TokenError> {
        let authorizer = biscuit_auth::AuthorizerBuilder::new()
            .fact(biscuit_auth::builder::fact(
                "time",
                &[biscuit_auth::builder::Term::Date(second)],
            ))
            .and_then(|b| b.policy("allow if true"))
            .map(|b| b.set_limits(crate::capability::policy::RUN_LIMITS))
            .and_then(|b| b.build(&self.biscuit));
        let result = authorizer.and_then(|mut a| a.authorize());
        let failed: Vec<String> = match result {
            Err(biscuit_auth::error::Token::FailedLogic(
                biscuit_auth::error::Logic::Unauthorized { checks, .. }
                | biscuit_auth::error::Logic::NoMatchingPolicy { checks },
            )) => checks
                .iter()
                .map(|c| match c {
                    biscuit_auth::error::FailedCheck::Block(b) => b.rule.clone(),
                    biscuit_auth::error::FailedCheck::Authorizer(a) => a.rule.clone(),
                })
                .filter(|rule| rule.contains("time("))
                .collect(),
            _ => Vec::new(),
        };
        match failed.first() {
            Some(rule) => Err(TokenError::Expired(rule.clone())),
            None => Ok(()),
        }
    }

    /// Whether this token grants `right` at logical time `at` (checked as the
    /// gate checks a delegation: the right's literal target; an operator
    /// level as a request at that level is checked, so `admin` grants
    /// `operator read`).
    ///
    /// # Errors
    ///
    /// Why not, naming the missing right.
    pub fn grants(
        &self,
        right: &Right,
        at: toka_kernel::Timestamp,
    ) -> Result<(), crate::capability::policy::Denied> {
        use crate::capability::rights::{OperatorLevel, RightOp};
        let level = (right.op() == RightOp::Operator)
            .then(|| right.target().and_then(OperatorLevel::from_name))
            .flatten();
        let check = match level {
            Some(level) => crate::capability::policy::operator_check(level),
            None => crate::capability::policy::Check::literal(right.op().name(), right.target()),
        };
        crate::capability::policy::decide(
            &self.biscuit,
            toka_kernel::EntityId::SYSTEM,
            &check,
            at,
            &[],
        )
    }

    /// Reads a token without checking its signatures, for inspection.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`] when it is not a biscuit at all.
    pub fn inspect_unverified(input: &[u8]) -> Result<Inspection, TokenError> {
        let unverified = parse_unverified(input)?;
        let size = unverified
            .to_vec()
            .map_err(|e| TokenError::Malformed(describe(&e)))?
            .len();
        let blocks = (0..unverified.block_count())
            .map(|i| unverified.print_block_source(i).unwrap_or_default())
            .collect();
        Ok(Inspection {
            size,
            blocks,
            revocation_ids: unverified.revocation_identifiers(),
        })
    }

    pub(crate) fn biscuit(&self) -> &Biscuit {
        &self.biscuit
    }
}

/// Budgets from `(fact name, value)` pairs: the smallest value of each
/// fact, sorted.
fn merge_budgets(
    values: impl IntoIterator<Item = (String, u64)>,
) -> Result<Vec<Budget>, TokenError> {
    let mut budgets: Vec<Budget> = Vec::new();
    for (name, value) in values {
        let budget =
            Budget::from_fact(&name, value).map_err(|e| TokenError::Budget(e.to_string()))?;
        match budgets
            .iter_mut()
            .find(|b| b.fact_name() == budget.fact_name())
        {
            Some(held) => *held = held.with_value(held.value().min(value)),
            None => budgets.push(budget),
        }
    }
    budgets.sort();
    Ok(budgets)
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Token({}, {} blocks)",
            self.digest.short(),
            self.biscuit.block_count()
        )
    }
}

/// Base64 text (trimmed) or raw bytes, signatures not checked.
fn parse_unverified(input: &[u8]) -> Result<UnverifiedBiscuit, TokenError> {
    let text = std::str::from_utf8(input).ok().map(str::trim);
    match text {
        Some(text) if !text.is_empty() && text.bytes().all(is_base64url) => {
            UnverifiedBiscuit::from_base64(text)
        }
        _ => UnverifiedBiscuit::from(input),
    }
    .map_err(|e| TokenError::Malformed(describe(&e)))
}

fn right_fact(name: &str, right: &Right) -> Fact {
    let mut terms = vec![string(right.op().name())];
    if let Some(target) = right.target() {
        terms.push(string(target));
    }
    biscuit_auth::builder::fact(name, &terms)
}

fn budget_fact(budget: Budget) -> Fact {
    // Datalog integers are i64; larger budgets mean "no budget" anyway.
    let value = i64::try_from(budget.value()).unwrap_or(i64::MAX);
    biscuit_auth::builder::fact(
        "budget",
        &[
            string(budget.fact_name()),
            biscuit_auth::builder::Term::Integer(value),
        ],
    )
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=')
}

fn build(e: biscuit_auth::error::Token) -> TokenError {
    TokenError::Build(describe(&e))
}

/// biscuit's `Display` for format errors hides the detail; its `Debug` has it.
fn describe(e: &biscuit_auth::error::Token) -> String {
    match e {
        biscuit_auth::error::Token::Format(f) => format!("{f:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rights(list: &[&str]) -> Vec<Right> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    #[test]
    fn issue_parse_and_attenuate_round_trip() {
        let root = RootKey::generate();
        let token = Token::issue(&root, &rights(&["observe", "spawn worker"]), &[], None).unwrap();
        let text = token.to_base64();
        let parsed = Token::parse(format!("{text}\n").as_bytes(), root.public(), 8192).unwrap();
        assert_eq!(parsed.digest(), token.digest());
        let raw = Token::parse(token.bytes(), root.public(), 8192).unwrap();
        assert_eq!(raw.digest(), token.digest());
        assert!(token.block_sources()[0].contains("right(\"spawn\", \"worker\");"));
        assert_eq!(token.delegated_rights(), None);

        let child = token.attenuate(&rights(&["observe"]), &[]).unwrap();
        assert_eq!(child.block_sources().len(), 2);
        assert_eq!(child.delegated_rights(), Some(vec!["observe".to_owned()]));
        assert_eq!(child.revocation_ids()[0], token.revocation_ids()[0]);
    }

    #[test]
    fn budgets_are_the_smallest_any_block_states() {
        let root = RootKey::generate();
        let budgets = [Budget::Memory(32 << 20), Budget::Fuel(1000)];
        let token =
            Token::issue(&root, &rights(&["observe", "fs.read /srv"]), &budgets, None).unwrap();
        assert_eq!(token.budgets().unwrap(), budgets);
        assert_eq!(
            token.authority_rights(),
            rights(&["observe", "fs.read /srv"])
        );

        // A child asks for more memory and less fuel: it gets the smaller of each.
        let child = token
            .attenuate(
                &rights(&["observe"]),
                &[
                    Budget::Memory(1 << 30),
                    Budget::Fuel(10),
                    Budget::DeadlineMs(500),
                ],
            )
            .unwrap();
        assert_eq!(
            child.budgets().unwrap(),
            [
                Budget::Memory(32 << 20),
                Budget::Fuel(10),
                Budget::DeadlineMs(500)
            ]
        );
        // What the child carried over from its parent is what its own
        // bytes say.
        let read = Token::parse(child.bytes(), root.public(), 1 << 20).unwrap();
        assert_eq!(read.budgets(), child.budgets());
        assert_eq!(read.authority_rights(), child.authority_rights());
        assert_eq!(read.uses_time(), child.uses_time());
        // A budget-only block keeps the rights and lowers the budget.
        let limited = token.limit(&[Budget::Memory(1 << 20)]).unwrap();
        assert_eq!(limited.budgets().unwrap()[0], Budget::Memory(1 << 20));
        let now = toka_kernel::Timestamp(0);
        assert!(limited.grants(&"observe".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn unknown_or_negative_budgets_are_refused() {
        let root = RootKey::generate();
        let token = Token::issue(&root, &[], &[], None).unwrap();
        for fact in ["budget(\"speed\", 3)", "budget(\"memory\", -1)"] {
            let block = BlockBuilder::new().code(fact).unwrap();
            let biscuit = token.biscuit.append(block).unwrap();
            let bytes = biscuit.to_vec().unwrap();
            let odd = Token::wrap(biscuit, bytes);
            assert!(
                matches!(odd.budgets(), Err(TokenError::Budget(_))),
                "{fact}: {:?}",
                odd.budgets()
            );
        }
    }

    #[test]
    fn bad_tokens_are_refused_by_name() {
        let root = RootKey::generate();
        let token = Token::issue(&root, &rights(&["observe"]), &[], None).unwrap();
        let other = RootKey::generate();
        assert!(matches!(
            Token::parse(token.bytes(), other.public(), 8192),
            Err(TokenError::BadSignature { .. })
        ));
        assert!(matches!(
            Token::parse(&token.bytes()[..20], root.public(), 8192),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            Token::parse(b"not a token!", root.public(), 8192),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            Token::parse(token.bytes(), root.public(), 10),
            Err(TokenError::TooLarge { max: 10, .. })
        ));
    }

    mod hostile_blocks {
        use proptest::prelude::*;

        use super::*;

        /// Datalog an attacker holding the token might append as a block.
        const FRAGMENTS: &[&str] = &[
            r#"right("spawn", "*");"#,
            r#"right("schedule", "*");"#,
            r#"right("terminate", "*");"#,
            r#"right("http", "evil.example");"#,
            r#"right("fs.write", "/");"#,
            r#"right("extension", "agent");"#,
            r#"right("state");"#,
            r#"delegated("spawn", "*");"#,
            r#"delegated("observe");"#,
            r#"right($op, $t) <- operation($op), target($t);"#,
            r#"right($op) <- operation($op);"#,
            r#"delegated($op, $t) <- operation($op), target($t);"#,
            r#"budget("memory", 1099511627776);"#,
            r#"budget("fuel", 1);"#,
            r#"budget("deadline_ms", 999999999);"#,
            r#"check if operation("observe");"#,
            r#"check if time($t), $t < 2100-01-01T00:00:00Z;"#,
            r#"allow if true;"#,
            "right(",
        ];

        /// Rights to ask about, held by the root token or not.
        const ASKED: &[&str] = &[
            "observe",
            "state",
            "spawn worker",
            "spawn planner",
            "spawn *",
            "schedule *",
            "schedule children",
            "terminate *",
            "http evil.example",
            "fs.write /",
            "fs.read /srv",
            "extension agent",
        ];

        fn root_token(root: &RootKey) -> Token {
            let budgets = [Budget::Memory(32 << 20), Budget::DeadlineMs(5_000)];
            Token::issue(
                root,
                &rights(&[
                    "observe",
                    "spawn worker",
                    "schedule children",
                    "fs.read /srv",
                ]),
                &budgets,
                None,
            )
            .unwrap()
        }

        /// The default number of cases, or 5 000 in the long mode
        /// (`TOKA_LONG_TESTS=1`).
        fn config() -> ProptestConfig {
            if std::env::var_os("TOKA_LONG_TESTS").is_some() {
                ProptestConfig::with_cases(5_000)
            } else {
                ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            /// Whatever block the holder appends, the token grants nothing
            /// its root block did not, and no budget grows.
            #[test]
            fn an_appended_block_never_widens_a_token(
                picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..6),
            ) {
                let root = RootKey::generate();
                let token = root_token(&root);
                let code: String = picks.iter().map(|i| *i.get(FRAGMENTS)).collect::<Vec<_>>().join("\n");
                let Ok(block) = BlockBuilder::new().code(code.as_str()) else {
                    return Ok(());
                };
                let Ok(appended) = token.biscuit.append(block) else {
                    return Ok(());
                };
                let bytes = appended.to_vec().unwrap();
                let attacker = Token::parse(&bytes, root.public(), 64 << 10).unwrap();
                let at = toka_kernel::Timestamp(1_000);
                for asked in ASKED {
                    let right: Right = asked.parse().unwrap();
                    if attacker.grants(&right, at).is_ok() {
                        prop_assert!(token.grants(&right, at).is_ok(), "{code} widened to `{asked}`");
                    }
                }
                prop_assert_eq!(attacker.authority_rights(), token.authority_rights());
                if let Ok(budgets) = attacker.budgets() {
                    for held in token.budgets().unwrap() {
                        let after = budgets.iter().find(|b| b.fact_name() == held.fact_name());
                        prop_assert!(after.is_some_and(|b| b.value() <= held.value()), "{code}: {budgets:?}");
                    }
                }
            }

            /// Random bytes are a malformed token, never a panic.
            #[test]
            fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let root = RootKey::generate();
                prop_assert!(Token::parse(&bytes, root.public(), 8192).is_err());
                let _ = Token::inspect_unverified(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod admission {
    use super::*;

    #[test]
    fn the_hosts_own_attenuations_fit_as_often_as_blocks_are_accepted() {
        let root = RootKey::generate();
        let all: Vec<Right> = (0..32)
            .map(|i| format!("spawn c{i}").parse().unwrap())
            .collect();
        let mut token = Token::issue(&root, &all, &[], None).unwrap();
        for _ in 1..Token::MAX_BLOCKS {
            token = token.attenuate(&all, &[]).unwrap();
            assert!(token.check_shape().is_ok(), "{:?}", token.check_shape());
        }
        let err = token
            .attenuate(&all, &[])
            .unwrap()
            .check_shape()
            .unwrap_err();
        assert!(err.to_string().contains("17 blocks"), "{err}");
    }

    #[test]
    fn a_join_heavy_block_is_refused_at_admission() {
        let root = RootKey::generate();
        let token = Token::issue(&root, &["observe".parse().unwrap()], &[], None).unwrap();
        let mut code = String::new();
        for i in 0..60 {
            code.push_str(&format!("n({i});\n"));
        }
        code.push_str("p($a, $b, $c) <- n($a), n($b), n($c);\n");
        let block = BlockBuilder::new().code(code.as_str()).unwrap();
        let biscuit = token.biscuit.append(block).unwrap();
        let bytes = biscuit.to_vec().unwrap();
        let heavy = Token::parse(&bytes, root.public(), 64 << 10).unwrap();
        let err = heavy.admit(toka_kernel::Timestamp(0)).unwrap_err();
        assert!(matches!(err, TokenError::TooExpensive(_)), "{err:?}");
        assert!(token.admit(toka_kernel::Timestamp(0)).is_ok());
    }
}
