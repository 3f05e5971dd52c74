//! Request bodies come at a pace, or are cut.
//!
//! A client may send its request head and then its body a byte now and
//! then: its request, a handler and one of its connections (see
//! [`crate::connections`]) were held for as long as it liked. Now the time
//! the server spends waiting for a body's next bytes may be at most
//! [`GRACE`] plus a second for every [`MIN_RATE`] bytes already received
//! (a 64 MiB upload at 1 MB/s is well within it); past that the body is cut
//! and the request fails (`400 bad_body`, naming the pace). Only the time
//! the server waits for the client counts, not the time it takes to read
//! what arrived.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How long the server waits for a body's bytes before any pace is asked.
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// The slowest average a body may come at, in bytes per second.
pub(crate) const MIN_RATE: u64 = 64 << 10;

/// The middleware: every request's body is paced (one known to be empty
/// is left as it is).
pub(crate) async fn paced(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    next.run(Request::from_parts(parts, Body::new(Paced::new(body))))
        .await
}

/// A body cut for coming too slowly.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body came too slowly: the server waited for it longer than {} s and a second per {} KiB received",
    GRACE.as_secs(),
    MIN_RATE >> 10
)]
pub(crate) struct TooSlow;

/// A body and how long the server waited for it.
struct Paced {
    inner: Body,
    received: u64,
    /// The time spent waiting for the client so far (not counting a wait
    /// going on).
    waited: Duration,
    /// Since when the server waits for the next bytes, if it does.
    waiting_since: Option<Instant>,
    /// Wakes the body at its deadline while it waits (made at the first
    /// wait).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Paced {
    fn new(inner: Body) -> Self {
        Self {
            inner,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The waiting the body is allowed so far.
    fn allowed(&self) -> Duration {
        GRACE + Duration::from_secs_f64(self.received as f64 / MIN_RATE as f64)
    }
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    this.received += data.map_or(0, |d| d.len() as u64);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let left = this.allowed().saturating_sub(this.waited);
                let deadline = since + left;
                if Instant::now() >= deadline {
                    return Poll::Ready(Some(Err(TooSlow.into())));
                }
                let timer = match &mut this.timer {
                    Some(timer) => {
                        timer.as_mut().reset(deadline);
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(TooSlow.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, Bytes, HttpBody as _};
    use futures_util::StreamExt as _;

    use super::{GRACE, Paced, TooSlow};

    /// A body whose bytes come as `chunks` says: after each wait, bytes.
    fn body(chunks: Vec<(Duration, usize)>) -> Body {
        Body::from_stream(
            futures_util::stream::iter(chunks).then(|(wait, n)| async move {
                tokio::time::sleep(wait).await;
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; n]))
            }),
        )
    }

    /// What reading all of `body` through the pace gives: the bytes, or
    /// whether it was cut.
    async fn read(body: Body) -> Result<usize, bool> {
        let mut paced = std::pin::pin!(Paced::new(body));
        let mut n = 0;
        while let Some(frame) = std::future::poll_fn(|cx| paced.as_mut().poll_frame(cx)).await {
            match frame {
                Ok(frame) => n += frame.data_ref().map_or(0, Bytes::len),
                Err(e) => return Err(e.downcast_ref::<TooSlow>().is_some()),
            }
        }
        Ok(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_and_a_body_at_pace_is_not() {
        // A byte every 5 s: cut once the grace is spent.
        let trickle = (0..10).map(|_| (Duration::from_secs(5), 1)).collect();
        assert_eq!(read(body(trickle)).await, Err(true));
        // 1 MiB in 64 KiB pieces, one a second: the pace asked for.
        let steady = (0..16)
            .map(|_| (Duration::from_secs(1), 64 << 10))
            .collect();
        assert_eq!(read(body(steady)).await, Ok(1 << 20));
        // Nothing at all: cut at the grace.
        let started = tokio::time::Instant::now();
        assert_eq!(read(body(vec![(GRACE * 10, 1)])).await, Err(true));
        assert_eq!(started.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_spends_not_reading_is_not_the_client_s() {
        // The handler reads a first piece, is busy for a minute, then reads
        // on: the client's next piece comes a second after it asks.
        let chunks = vec![(Duration::ZERO, 1), (Duration::from_secs(1), 1 << 10)];
        let mut paced = std::pin::pin!(Paced::new(body(chunks)));
        let mut next = async || std::future::poll_fn(|cx| paced.as_mut().poll_frame(cx)).await;
        assert!(next().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let second = next().await.unwrap().unwrap();
        assert_eq!(second.data_ref().map(Bytes::len), Some(1 << 10));
        assert!(next().await.is_none());
    }
}
