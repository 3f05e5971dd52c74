//! Operator authentication: every endpoint but `/healthz`, the OpenAPI
//! document and the dashboard's files needs `Authorization: Bearer TOKEN`,
//! a biscuit rooted in the data dir's key carrying `operator read`, `write`
//! or `admin` (each includes the ones before). Default deny.
//!
//! In order, for each request: a client network (an IPv4 address, an
//! IPv6 /48; see [`crate::origin`]) that keeps failing, or keeps
//! presenting tokens the server has not seen, is slowed down (each new
//! token costs a signature check); the token must verify, be
//! unexpired and unrevoked (401 otherwise); its holder gets a request rate
//! (429 past it); and it must carry the level the endpoint needs (403,
//! naming it). A token sent in a body to be narrowed is verified the same
//! way ([`App::verify`]), and counts against the same budget of strangers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use toka_host::{OperatorLevel, Token, TokenError};
use toka_kernel::Digest;

use crate::app::App;
use crate::error::ApiError;

/// An authenticated operator whose token carries at least level `L`
/// (0 read, 1 write, 2 admin).
#[derive(Debug, Clone)]
pub(crate) struct Operator<const L: u8> {
    pub(crate) token: Token,
}

/// Needs `operator read`.
pub(crate) type Reader = Operator<0>;
/// Needs `operator write`.
pub(crate) type Writer = Operator<1>;
/// Needs `operator admin`.
pub(crate) type Admin = Operator<2>;

const fn level(l: u8) -> OperatorLevel {
    match l {
        0 => OperatorLevel::Read,
        1 => OperatorLevel::Write,
        _ => OperatorLevel::Admin,
    }
}

impl<const L: u8> FromRequestParts<Arc<App>> for Operator<L> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        let token = app.authenticate(presented.as_bytes(), client(parts), level(L))?;
        Ok(Operator { token })
    }
}

/// The family of `token`: every token attenuated from one root (each with
/// a digest of its own) is of the root's, and shares its request rate and
/// its turns at replaying the log.
pub(crate) fn family(token: &Token) -> Digest {
    token
        .revocation_ids()
        .first()
        .map_or_else(|| token.digest(), |id| Digest::of(id))
}

/// The client's address, when the server knows it.
pub(crate) fn client(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The bearer token of a request.
pub(crate) fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(unauthenticated(
            "this endpoint needs `Authorization: Bearer <operator token>` (mint one with `toka token issue --operator read`)",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("the Authorization header is not text"))?;
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(unauthenticated(
            "the Authorization header must be `Bearer <operator token>`",
        ));
    };
    Ok(token.trim().to_owned())
}

pub(crate) fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// Tokens the server has verified before (digests of what was presented),
/// so a stranger's new tokens can be told from a known client's.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<HashSet<Digest>>);

/// Presented tokens remembered as seen.
const SEEN_KEPT: usize = 4096;

impl Seen {
    fn contains(&self, key: &Digest) -> bool {
        self.lock().contains(key)
    }

    fn insert(&self, key: Digest) {
        let mut seen = self.lock();
        if seen.len() >= SEEN_KEPT {
            seen.clear();
        }
        seen.insert(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a presented token was not taken.
#[derive(Debug)]
pub(crate) enum Unverified {
    /// The client's network presented too many tokens the server had not
    /// seen before, or that failed (a 429 to answer with).
    TooMany(ApiError),
    /// The token is not usable here.
    Unusable(TokenError),
}

impl App {
    /// Authenticates `presented` from `client` for `needed` (see the
    /// module docs for the order of the checks).
    pub(crate) fn authenticate(
        &self,
        presented: &[u8],
        client: Option<IpAddr>,
        needed: OperatorLevel,
    ) -> Result<Token, ApiError> {
        let token = self.verify(presented, client).map_err(|e| match e {
            Unverified::TooMany(e) => e,
            Unverified::Unusable(e) => {
                unauthenticated(format!("the operator token is not usable: {e}"))
            }
        })?;
        self.per_token.take(family(&token)).map_err(|wait| {
            ApiError::too_many(
                format!("this token's request rate is used up; try again in {wait} s"),
                wait,
            )
        })?;
        self.host
            .authorize_operator(&token, needed)
            .map_err(|denied| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("this needs the right `operator {needed}`: {denied}"),
                )
            })?;
        Ok(token)
    }

    /// Verifies and admits a token `client` presented, as a bearer or in
    /// a body: rooted here, unexpired, unrevoked. Verifying a token costs
    /// signature checks and an evaluation, so one not seen before, and one
    /// that fails, count against the strangers' budget of the client's
    /// network.
    pub(crate) fn verify(
        &self,
        presented: &[u8],
        client: Option<IpAddr>,
    ) -> Result<Token, Unverified> {
        let key = Digest::of(presented);
        // Counted by network: an IPv6 host has a /64 or /48 of addresses
        // to make up new ones from.
        let stranger = |why: &str| -> Result<(), Unverified> {
            let Some(network) = client.map(crate::origin::Network::of) else {
                return Ok(());
            };
            self.strangers.take(network).map_err(|wait| {
                Unverified::TooMany(ApiError::too_many(
                    format!("too many {why} from {network}; try again in {wait} s"),
                    wait,
                ))
            })
        };
        if !self.seen.contains(&key) {
            stranger("new tokens")?;
        }
        match self.host.operator_token(presented) {
            Ok(token) => {
                self.seen.insert(key);
                Ok(token)
            }
            Err(e) => {
                stranger("failed authentications")?;
                Err(Unverified::Unusable(e))
            }
        }
    }
}

/// The address of the client a request came from, when the server knows
/// it (what [`App::verify`] counts tokens by).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) Option<IpAddr>);

impl FromRequestParts<Arc<App>> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        Ok(Peer(client(parts)))
    }
}

/// Single-use tickets for the event stream, for clients that cannot set a
/// header (a browser's `EventSource`): a ticket stands for the token that
/// asked for it, for a short while, once.
#[derive(Debug, Default)]
pub(crate) struct Tickets(Mutex<HashMap<String, Ticket>>);

/// What a ticket stands for: a token (and its family), until it expires.
#[derive(Debug)]
struct Ticket {
    token: Token,
    family: Digest,
    expires: Instant,
}

/// How long a ticket is good for.
pub(crate) const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// Tickets outstanding at once.
const TICKETS_KEPT: usize = 1024;

/// Tickets one token family may have outstanding: a quarter, so that one
/// client cannot keep every other operator's dashboard from its stream.
const TICKETS_PER_FAMILY: usize = TICKETS_KEPT / 4;

impl Tickets {
    /// A new ticket for `token`.
    pub(crate) fn issue(&self, token: Token) -> Result<String, ApiError> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|e| ApiError::internal(format!("no randomness for a ticket: {e}")))?;
        let ticket = toka_kernel::to_hex(&bytes);
        let mut tickets = self.lock();
        let now = Instant::now();
        tickets.retain(|_, t| t.expires > now);
        if tickets.len() >= TICKETS_KEPT {
            return Err(ApiError::too_many(
                "too many stream tickets outstanding; use one first",
                TICKET_LIFETIME.as_secs(),
            ));
        }
        let ours = family(&token);
        if tickets.values().filter(|t| t.family == ours).count() >= TICKETS_PER_FAMILY {
            return Err(ApiError::too_many(
                format!(
                    "this token's family has {TICKETS_PER_FAMILY} stream tickets outstanding, its share of {TICKETS_KEPT}; use one first"
                ),
                TICKET_LIFETIME.as_secs(),
            ));
        }
        tickets.insert(
            ticket.clone(),
            Ticket {
                token,
                family: ours,
                expires: now + TICKET_LIFETIME,
            },
        );
        Ok(ticket)
    }

    /// The token a ticket stands for, using the ticket up.
    pub(crate) fn redeem(&self, ticket: &str) -> Option<Token> {
        let ticket = self.lock().remove(ticket)?;
        (ticket.expires > Instant::now()).then_some(ticket.token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ticket>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::{TICKETS_PER_FAMILY, Tickets};

    #[test]
    fn one_family_holds_at_most_its_share_of_tickets() {
        let key = toka_host::RootKey::generate();
        let mint = || {
            toka_host::Token::issue(&key, &[toka_host::OperatorLevel::Read.right()], &[], None)
                .unwrap()
        };
        let (hostile, other) = (mint(), mint());
        let tickets = Tickets::default();
        for _ in 0..TICKETS_PER_FAMILY {
            tickets.issue(hostile.clone()).unwrap();
        }
        let refused = format!("{:?}", tickets.issue(hostile.clone()).unwrap_err());
        assert!(refused.contains("its share of 1024"), "{refused}");
        let ticket = tickets.issue(other).unwrap();
        assert!(tickets.redeem(&ticket).is_some());
    }
}
