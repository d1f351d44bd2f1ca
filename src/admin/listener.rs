//! The admin listener's own connection limits (SPEC "Admin hardening"): at
//! most [`MAX_CONNECTIONS`] open (one more is closed at accept), and each
//! request head due within [`HEAD_TIMEOUT`]. They are lb's, not `[server]`'s:
//! the admin API runs on its own runtime, and nothing a client does here
//! touches the proxy's listener, threads or limits.
//!
//! The head clock lives in the connection's I/O ([`Guarded`]): hyper, behind
//! axum, has no head timeout without a timer axum does not give it. The clock
//! runs from accept, stops when a request reaches the router
//! ([`HeadClock::request_started`], called by `limits.rs`) and restarts when
//! its response is ready: a head, a kept-alive idle spell, and a response the
//! client does not take each get 10 s. On expiry the connection is closed; a
//! client that sent part of a head, or nothing at all on a new connection,
//! first gets `408` (as the proxy's `server.header_timeout` does). A
//! kept-alive connection that merely went quiet is closed without one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Admin connections open at once; one more is closed at accept.
pub const MAX_CONNECTIONS: usize = 64;

/// A request head (and a kept-alive connection's next one) is due this long
/// after accept, or after the previous response was ready.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client whose head timed out reads before the close.
const TIMEOUT_REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
content-length: 35\r\nconnection: close\r\n\r\n{\"error\": \"request header timeout\"}";

/// The admin TCP listener, capped at [`MAX_CONNECTIONS`].
pub struct AdminListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl AdminListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        AdminListener {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl Listener for AdminListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return (Guarded::new(stream, slot), peer),
                // Closed at once: a flood of connections costs this thread
                // an accept and a close each, and nothing else.
                Err(_) => tracing::debug!(peer = %peer,
                    "admin: {MAX_CONNECTIONS} connections open; connection closed"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection reset before accept costs nothing; anything else (EMFILE...)
/// pauses accepting for a second, at most one log line a second.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "admin: accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Where a connection's head clock stands.
#[derive(Debug)]
struct ClockState {
    /// When the connection is closed unless a request head arrived; `None`
    /// while a request is being served.
    due: Option<Instant>,
    /// A request has reached the router on this connection.
    served: bool,
    /// Bytes have arrived since the clock last started (part of a head).
    partial: bool,
}

/// One connection's head clock, shared by its I/O and its requests.
#[derive(Debug)]
pub struct HeadClock(Mutex<ClockState>);

impl HeadClock {
    fn new() -> Self {
        HeadClock(Mutex::new(ClockState {
            due: Some(Instant::now() + HEAD_TIMEOUT),
            served: false,
            partial: false,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A whole head arrived: the clock stops while the request is served
    /// (its body has its own bound, `limits.rs`).
    pub fn request_started(&self) {
        let mut c = self.lock();
        c.due = None;
        c.served = true;
    }

    /// The response is ready: the next head (or the client taking this
    /// response) is due within [`HEAD_TIMEOUT`].
    pub fn response_ready(&self) {
        let mut c = self.lock();
        c.due = Some(Instant::now() + HEAD_TIMEOUT);
        c.partial = false;
    }

    fn due(&self) -> Option<Instant> {
        self.lock().due
    }

    fn bytes_arrived(&self) {
        let mut c = self.lock();
        if c.due.is_some() {
            c.partial = true;
        }
    }

    /// Whether a timed-out client is owed a `408`: it sent part of a head,
    /// or nothing at all on a new connection.
    fn owes_408(&self) -> bool {
        let c = self.lock();
        c.partial || !c.served
    }
}

/// An accepted admin connection: the stream, its head clock, and its slot
/// under [`MAX_CONNECTIONS`] (freed when hyper drops the connection).
pub struct Guarded {
    stream: TcpStream,
    clock: Arc<HeadClock>,
    timer: Pin<Box<Sleep>>,
    /// A response write is waiting for the client: never interleave a 408.
    write_blocked: bool,
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit) -> Self {
        let clock = Arc::new(HeadClock::new());
        let due = clock.due().unwrap_or_else(Instant::now);
        Guarded {
            stream,
            clock,
            timer: Box::pin(tokio::time::sleep_until(due)),
            write_blocked: false,
            _slot: slot,
        }
    }

    /// Has the clock run out? Registers the task to wake when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.clock.due() else {
            return false;
        };
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The error that ends the connection; a `408` first where one is owed
    /// (written only if the socket takes it at once: the client is idle).
    fn timed_out(&mut self) -> io::Error {
        if !self.write_blocked && self.clock.owes_408() {
            let _ = self.stream.try_write(TIMEOUT_REPLY);
        }
        tracing::debug!("admin: request header timeout; connection closed");
        io::Error::new(io::ErrorKind::TimedOut, "admin request header timeout")
    }

    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.write_blocked = r.is_pending();
        if r.is_pending() && self.expired(cx) {
            return Poll::Ready(Err(self.timed_out()));
        }
        r
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Checked before reading too: a client trickling bytes never lets
        // the read go idle, and must not outlast the clock.
        if this.expired(cx) {
            return Poll::Ready(Err(this.timed_out()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What the router learns about a connection (axum's connect info): the
/// peer, and the head clock its requests stop and restart.
#[derive(Clone, Debug)]
pub struct AdminConn {
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection's head clock.
    pub clock: Arc<HeadClock>,
}

impl Connected<IncomingStream<'_, AdminListener>> for AdminConn {
    fn connect_info(stream: IncomingStream<'_, AdminListener>) -> Self {
        AdminConn {
            peer: *stream.remote_addr(),
            clock: stream.io().clock.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_408_reply_is_well_framed() {
        let (head, body) = std::str::from_utf8(TIMEOUT_REPLY)
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_from_accept_stops_for_a_request_and_restarts() {
        let c = HeadClock::new();
        let start = Instant::now();
        assert_eq!(c.due(), Some(start + HEAD_TIMEOUT));
        assert!(c.owes_408(), "a new connection that sent nothing gets 408");
        c.request_started();
        assert_eq!(c.due(), None);
        c.bytes_arrived(); // body bytes: not part of a head
        tokio::time::advance(Duration::from_secs(30)).await;
        c.response_ready();
        assert_eq!(
            c.due(),
            Some(start + Duration::from_secs(30) + HEAD_TIMEOUT)
        );
        assert!(
            !c.owes_408(),
            "an idle kept-alive connection closes quietly"
        );
        c.bytes_arrived();
        assert!(c.owes_408(), "part of the next head: 408");
    }
}
