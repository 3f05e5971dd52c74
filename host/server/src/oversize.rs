//! Bodies larger than an endpoint takes, refused before the handler runs,
//! by their declared length: `413` with the limit named. The server first
//! reads what the client is still sending (up to a bound, for a moment),
//! so the client gets to read the answer instead of a connection reset
//! under a half-sent body. A body without a declared length is cut by the
//! extractors' own limit as it streams.
//!
//! An upload (a component or a package) refused by its handler before it
//! read the body (no token, too low a level) is drained the same way
//! before the answer is sent.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;

use crate::app::App;
use crate::error::ApiError;

/// The most of a refused body the server reads before answering.
const DRAIN_MAX: u64 = 16 << 20;

/// How long it reads at most.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// The middleware (see the module docs).
pub(crate) async fn refuse_oversize(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let upload = request.method() == Method::POST
        && matches!(
            request.uri().path(),
            "/v1/components" | "/v1/packages" | "/v1/packages/review"
        );
    let limit = if upload {
        app.config.max_component
    } else {
        app.config.max_body
    } as u64;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(size) = declared.filter(|size| *size > limit) else {
        if !upload || declared.unwrap_or(0) > DRAIN_MAX {
            return next.run(request).await;
        }
        return drain_if_refused(request, next).await;
    };
    if size <= DRAIN_MAX {
        let mut body = request.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_FOR, async {
            while let Some(Ok(_)) = body.next().await {}
        })
        .await;
    }
    let mut response = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the body is {}; this endpoint takes at most {}",
            toka_host::approx_size(size),
            toka_host::approx_size(limit)
        ),
    )
    .into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Runs an upload's handler on a body it shares with this function: when
/// the handler answers with an error before reading it all, the rest is
/// read (bounded, as above) before the answer goes out, and the
/// connection is closed after it.
async fn drain_if_refused(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let shared = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let stream = futures_util::stream::unfold(Arc::clone(&shared), |body| async move {
        let item = body.lock().await.next().await;
        item.map(|chunk| (chunk, body))
    });
    let request = Request::from_parts(parts, axum::body::Body::from_stream(stream));
    let mut response = next.run(request).await;
    if response.status().is_client_error() {
        let mut body = shared.lock().await;
        let mut left = false;
        let mut read = 0u64;
        let _ = tokio::time::timeout(DRAIN_FOR, async {
            while let Some(chunk) = body.next().await {
                left = true;
                match chunk {
                    Ok(bytes) if read + (bytes.len() as u64) <= DRAIN_MAX => {
                        read += bytes.len() as u64;
                    }
                    _ => break,
                }
            }
        })
        .await;
        if left {
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
    }
    response
}
