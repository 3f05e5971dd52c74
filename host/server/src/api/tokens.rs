//! Tokens: issue (admin), attenuate and inspect (read), revoke (admin).
//! Tokens travel in bodies, never in URLs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use toka_host::{Budget, OperatorLevel, Right, Token};
use toka_kernel::to_hex;

use crate::api::agents::{grants, parse_all};
use crate::api::{AuthErrors, BodyErrors};
use crate::app::App;
use crate::auth::{Admin, Peer, Reader, Unverified};
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::views::{
    AttenuateRequest, InspectRequest, IssueRequest, RevokeRequest, Revoked, TokenInspection,
    TokenIssued,
};

/// Mints a token rooted in the host's key: agent rights, an operator
/// level, budgets, an expiry.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = IssueRequest,
    responses((status = 201, description = "Minted", body = TokenIssued), BodyErrors, AuthErrors))]
pub(crate) async fn issue(
    State(app): State<Arc<App>>,
    _who: Admin,
    Json(request): Json<IssueRequest>,
) -> Result<(StatusCode, axum::Json<TokenIssued>), ApiError> {
    let mut rights = parse_all::<Right>(&request.rights)?;
    if let Some(level) = &request.operator {
        rights.push(parse_level(level)?.right());
    }
    if rights.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "a token needs `rights` or an `operator` level",
        ));
    }
    let budgets = parse_all::<Budget>(&request.budgets)?;
    let expires = request.expires.as_deref().map(expiry).transpose()?;
    let token = app.host.mint(&rights, &budgets, expires)?;
    Ok((StatusCode::CREATED, axum::Json(issued(&token))))
}

/// Narrows a token to some of its rights (or an operator level) and lower
/// budgets. Anyone holding a token can do this offline too; the server
/// checks that each kept right is one the token grants.
#[utoipa::path(post, path = "/v1/tokens/attenuate", tag = "tokens", security(("bearer" = [])),
    request_body = AttenuateRequest,
    responses((status = 200, description = "The narrower token", body = TokenIssued), BodyErrors, AuthErrors))]
pub(crate) async fn attenuate(
    State(app): State<Arc<App>>,
    _who: Reader,
    Peer(client): Peer,
    Json(request): Json<AttenuateRequest>,
) -> Result<axum::Json<TokenIssued>, ApiError> {
    // Each right kept is a fact of the new block and an evaluation of the
    // token here: no more than a block of a presented token may hold.
    let asked =
        request.rights.len() + request.budgets.len() + usize::from(request.operator.is_some());
    if asked > Token::MAX_BLOCK_FACTS {
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!(
                "{asked} rights and budgets; a token is narrowed by at most {} at once",
                Token::MAX_BLOCK_FACTS
            ),
        ));
    }
    // Any token rooted here, unexpired and unrevoked: an agent's too.
    let token = app
        .verify(request.token.as_bytes(), client)
        .map_err(|e| match e {
            Unverified::TooMany(e) => e,
            Unverified::Unusable(e) => ApiError::unprocessable("invalid_token", e.to_string()),
        })?;
    let mut rights = parse_all::<Right>(&request.rights)?;
    if let Some(level) = &request.operator {
        rights.push(parse_level(level)?.right());
    }
    let budgets = parse_all::<Budget>(&request.budgets)?;
    if rights.is_empty() && budgets.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "narrow the token with `rights`, an `operator` level or `budgets`",
        ));
    }
    let now = toka_kernel::Timestamp(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    for right in &rights {
        token.grants(right, now).map_err(|why| {
            ApiError::unprocessable("invalid_body", format!("cannot keep `{right}`: {why}"))
        })?;
    }
    let narrowed = if rights.is_empty() {
        token.limit(&budgets)
    } else {
        token.attenuate(&rights, &budgets)
    }
    .map_err(|e| ApiError::unprocessable("invalid_token", e.to_string()))?;
    Ok(axum::Json(issued(&narrowed)))
}

/// Reads a token: its blocks, and, when it is rooted in this host's key,
/// what it grants and whether it was revoked.
#[utoipa::path(post, path = "/v1/tokens/inspect", tag = "tokens", security(("bearer" = [])),
    request_body = InspectRequest,
    responses((status = 200, description = "What the token says", body = TokenInspection), BodyErrors, AuthErrors))]
pub(crate) async fn inspect(
    State(app): State<Arc<App>>,
    _who: Reader,
    Json(request): Json<InspectRequest>,
) -> Result<axum::Json<TokenInspection>, ApiError> {
    let bytes = request.token.as_bytes();
    let unverified = Token::inspect_unverified(bytes)
        .map_err(|e| ApiError::unprocessable("invalid_token", e.to_string()))?;
    // Whether it is rooted here costs a signature check a block, and what
    // it grants an evaluation: only for a token this host would take (its
    // size, its number of blocks) of a shape that is cheap to evaluate.
    let verified = (unverified.size <= app.limits.max_token as usize
        && unverified.blocks.len() <= Token::MAX_BLOCKS)
        .then(|| Token::parse(bytes, app.root, app.limits.max_token as usize).ok())
        .flatten()
        .filter(|t| t.check_shape().is_ok());
    let grants = match &verified {
        Some(token) => {
            let revoked = app
                .host
                .state(|s| token.revocation_ids().iter().any(|id| s.is_revoked(id)))
                .await;
            Some(grants(token, revoked))
        }
        None => None,
    };
    Ok(axum::Json(TokenInspection {
        digest: verified.as_ref().map_or_else(
            || toka_kernel::Digest::of(bytes).to_string(),
            |t| t.digest().to_string(),
        ),
        size: unverified.size as u64,
        rooted_here: verified.is_some(),
        blocks: unverified.blocks,
        grants,
    }))
}

/// Revokes a revocation id (or a token's first one): every token
/// carrying it, and every token attenuated from one, stops working from
/// the next operation on. Recorded in the log.
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "tokens", security(("bearer" = [])),
    request_body = RevokeRequest,
    responses((status = 200, description = "Revoked", body = Revoked),
        (status = 404, description = "No stored token carries the id (use `force`)", body = ErrorBody),
        (status = 409, description = "Already revoked", body = ErrorBody),
        BodyErrors, AuthErrors))]
pub(crate) async fn revoke(
    State(app): State<Arc<App>>,
    who: Admin,
    Json(request): Json<RevokeRequest>,
) -> Result<axum::Json<Revoked>, ApiError> {
    let id = match (&request.revocation_id, &request.token) {
        (Some(hex), None) => from_hex(hex)?,
        (None, Some(token)) => Token::inspect_unverified(token.as_bytes())
            .map_err(|e| ApiError::unprocessable("invalid_token", e.to_string()))?
            .revocation_ids
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::unprocessable("invalid_token", "the token has no blocks"))?,
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "give either `revocation_id` or `token`",
            ));
        }
    };
    app.host
        .as_operator(who.token)
        .revoke(id.clone(), request.force)
        .await?;
    Ok(axum::Json(Revoked {
        revocation_id: to_hex(&id),
    }))
}

fn issued(token: &Token) -> TokenIssued {
    TokenIssued {
        token: token.to_base64(),
        digest: token.digest().to_string(),
        revocation_ids: token.revocation_ids().iter().map(|id| to_hex(id)).collect(),
    }
}

fn parse_level(text: &str) -> Result<OperatorLevel, ApiError> {
    text.parse()
        .map_err(|e: String| ApiError::unprocessable("invalid_body", e))
}

fn expiry(text: &str) -> Result<SystemTime, ApiError> {
    let after: Duration = toka_host::parse_duration(text)
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("expires: {e}")))?;
    SystemTime::now()
        .checked_add(after)
        .ok_or_else(|| ApiError::unprocessable("invalid_body", "expires is too far away"))
}

fn from_hex(text: &str) -> Result<Vec<u8>, ApiError> {
    let bad = || {
        ApiError::unprocessable(
            "invalid_body",
            "revocation_id must be hex digits (see POST /v1/tokens/inspect)",
        )
    };
    if !text.len().is_multiple_of(2) || text.len() > 512 || text.is_empty() {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}
