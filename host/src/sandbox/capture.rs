//! Bounded capture of a guest's stdout and stderr.
//!
//! WASI output goes into a buffer of fixed capacity. Output past the capacity
//! is counted and dropped, never an error: a chatty guest must not trap (and
//! `MemoryOutputPipe`, which refuses writes when full, would make Rust's
//! `println!` panic).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A shared, bounded byte buffer that never refuses a write.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug)]
struct Buffer {
    data: Vec<u8>,
    capacity: usize,
    dropped: u64,
}

impl Capture {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Buffer {
                data: Vec::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = b.capacity.saturating_sub(b.data.len());
        let take = room.min(bytes.len());
        b.data.extend_from_slice(&bytes[..take]);
        b.dropped += (bytes.len() - take) as u64;
    }

    /// Takes what was captured so far and how many bytes were dropped.
    pub(crate) fn take(&self) -> (Vec<u8>, u64) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = std::mem::take(&mut b.dropped);
        (std::mem::take(&mut b.data), dropped)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_capacity_is_counted_and_dropped() {
        let c = Capture::new(4);
        c.push(b"abc");
        c.push(b"defg");
        assert_eq!(c.take(), (b"abcd".to_vec(), 3));
        assert_eq!(c.take(), (Vec::new(), 0));
    }
}
