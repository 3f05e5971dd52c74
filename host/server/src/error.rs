//! The API's errors: one JSON shape, `{"error": {"code", "message"}}`, with
//! the HTTP status that fits, for every way a request can fail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use toka_host::{HostError, TokenError};
use toka_kernel::KernelError;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, snake_case name of the problem, e.g. `not_found`,
    /// `invalid_json`, `forbidden`.
    pub code: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422: well-formed but not acceptable.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after: Some(retry_after_seconds.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// 500: the host failed; the message says how.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503: the server is shutting down (what a request waited for was
    /// closed).
    pub(crate) fn stopping() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is stopping",
        )
    }

    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let message = e.to_string();
        match e {
            HostError::Component(_) => Self::unprocessable("invalid_component", message),
            HostError::Kernel(k) => kernel(k, message),
            HostError::Token(t) => token(&t, message),
            HostError::Denied(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            HostError::OperatorRight(_) => Self::unprocessable("operator_right", message),
            HostError::ProtectedPath(_) => Self::unprocessable("protected_path", message),
            HostError::UnknownRevocationId(_) => Self::not_found(message),
            HostError::Package(toka_host::PackageError::NotInstalled(_)) => {
                Self::not_found(message)
            }
            HostError::Package(_) => Self::unprocessable("invalid_package", message),
            HostError::Log(toka_host::LogError::Archived { .. }) => {
                Self::new(StatusCode::GONE, "archived", message)
            }
            HostError::StateBudget(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "state_budget", message)
            }
            HostError::DiskReserve(_) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk_reserve", message)
            }
            HostError::Stopped(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", message)
            }
            _ => Self::internal(message),
        }
    }
}

fn kernel(e: KernelError, message: String) -> ApiError {
    match e {
        KernelError::UnknownEntity { .. } => ApiError::not_found(message),
        KernelError::AlreadyScheduled { .. } => {
            ApiError::new(StatusCode::CONFLICT, "idempotency_key_reused", message)
        }
        KernelError::LimitExceeded { .. } => ApiError::unprocessable("limit_exceeded", message),
        KernelError::CapabilityDenied { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
        }
        KernelError::InvalidOperation { .. } => {
            ApiError::new(StatusCode::CONFLICT, "invalid_operation", message)
        }
        _ => ApiError::unprocessable("rejected", message),
    }
}

fn token(e: &TokenError, message: String) -> ApiError {
    match e {
        TokenError::Missing(_) | TokenError::Unreadable(_) => ApiError::internal(message),
        _ => ApiError::unprocessable("invalid_token", message),
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let message = r.body_text();
        match r {
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("invalid_json", message),
            JsonRejection::JsonDataError(_) => Self::unprocessable("invalid_body", message),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with `Content-Type: application/json`",
            ),
            other => {
                let status = other.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Self::new(status, "too_large", message)
                } else {
                    Self::new(status, "bad_body", message)
                }
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

/// Parses an id from a path or a query, or answers 400 naming it.
pub(crate) fn parse_id<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_id",
            format!(
                "`{}` is not a valid {what} id: {e}",
                toka_host::clip(text, 80)
            ),
        )
    })
}
