//! One client connection on the fast path: the request loop, one exchange per
//! request (with retries), and the responses lb writes itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::pool;
use super::relay::{relay, Relay};
use super::request::{self, Head, Limits, Route, StickyLookup};
use super::response::{self, ClientSide, RespHead};
use crate::config::Sticky;
use crate::proxy::admit::{admit, Refusal};
use crate::proxy::ctx::{Ctx, Outcome};
use crate::proxy::{errors, headers, log_request, untried_left};
use crate::state::{Snapshot, State};

/// Per-read limit while a request body arrives (Pingora's default).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest backend response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Upstream read buffer, allocated per exchange (bodies stream through it).
const READ_CHUNK: usize = 16 * 1024;
/// Initial client read buffer (grows up to `server.max_header_bytes` + body).
const CLIENT_BUF: usize = 4 * 1024;
/// Per-connection buffers larger than this are released between requests.
const SHRINK_ABOVE: usize = 8 * 1024;

/// Why reading a request head ended without a request.
enum End {
    /// Close silently (EOF, idle timeout, shutdown, I/O error).
    Close,
    /// Answer with this status and message, then close.
    Reply(u16, &'static str),
}

/// How one attempt at a backend ended.
enum Trip {
    /// The response was sent to the client; keep the client connection?
    Answered { keep_alive: bool },
    /// The response was already under way when it broke: nothing more can be sent.
    Broken,
    /// A reused connection turned out closed before any response byte.
    Stale,
    /// Failed before any response byte reached the client.
    Failed {
        outcome: Outcome,
        error: &'static str,
    },
    /// A retry status from the backend: try another.
    RetryStatus,
    /// The client went away while waiting.
    ClientGone,
}

/// A client connection.
pub struct Conn<'a> {
    stream: Stream,
    state: &'a Arc<State>,
    active: &'a Arc<AtomicUsize>,
    /// Bytes read from the client not yet consumed: the current request, then
    /// any pipelined ones.
    buf: Vec<u8>,
    client_ip: Option<IpAddr>,
    accepted: Instant,
    served: u64,
    pingora_only: bool,
}

impl<'a> Conn<'a> {
    /// A connection just accepted.
    pub fn new(
        stream: Stream,
        state: &'a Arc<State>,
        active: &'a Arc<AtomicUsize>,
        pingora_only: bool,
    ) -> Self {
        let client_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        Conn {
            stream,
            state,
            active,
            buf: Vec::new(),
            client_ip,
            accepted: Instant::now(),
            served: 0,
            pingora_only,
        }
    }

    /// Serves requests until the connection ends; returns the stream (with
    /// every unconsumed byte put back) when the rest goes to the Pingora path.
    pub async fn serve(mut self, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut shutdown = shutdown.clone();
        let mut up = Vec::new();
        loop {
            // Wait for the request's first bytes, then take the snapshot that
            // routes it: a change made meanwhile (DNS, weights, modes, reload)
            // applies to it. Taken before the wait, it would be the state of
            // whenever the connection was accepted or its previous request
            // ended, however long ago (clients keep idle connections, some
            // opened and never used yet).
            let arrived = if self.buf.is_empty() {
                self.wait_for_request(&mut shutdown).await
            } else {
                Ok(()) // pipelined
            };
            let snap = self.state.load_full();
            let head = match arrived {
                Ok(()) => self.read_head(&snap, &mut up).await,
                Err(end) => Err(end),
            };
            let head = match head {
                Ok(head) => head,
                Err(End::Close) => return None,
                Err(End::Reply(code, message)) => {
                    let rid = headers::new_request_id();
                    self.reply(code, message, &rid, false, false).await;
                    let ctx = Ctx::new(self.active);
                    log_request(&snap, &ctx, code, "-", "-", 0, Some(message));
                    return None;
                }
            };
            if head.route == Route::Fallback || self.pingora_only {
                return rewound(self.stream, &self.buf);
            }
            // A change may also have landed while the head was arriving (a
            // slow client has up to `header_timeout`): route by the state of now.
            let snap = if Arc::ptr_eq(&self.state.load(), &snap) {
                snap
            } else {
                self.state.load_full()
            };
            let shutting_down = *shutdown.borrow();
            if !self.exchange(&head, snap, &mut up, shutting_down).await {
                return None;
            }
            self.buf.drain(..head.len + head.body_len);
            self.served += 1;
            // An idle connection keeps small buffers only (memory per idle
            // connection), whatever the largest request on it needed.
            if up.capacity() > SHRINK_ABOVE {
                up = Vec::new();
            }
            if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
                self.buf = Vec::new();
            }
        }
    }

    /// Waits for the first bytes of a request: on a new connection until its
    /// head is due (`server.header_timeout` after accept), on a kept-alive one
    /// for at most `server.keepalive_timeout` and only until shutdown.
    async fn wait_for_request(&mut self, shutdown: &mut ShutdownWatch) -> Result<(), End> {
        let (header_timeout, idle) = {
            let snap = self.state.load();
            let server = &snap.config.server;
            (server.header_timeout, server.keepalive_timeout)
        };
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(CLIENT_BUF);
        }
        let read = if self.served == 0 {
            let due = self.accepted + header_timeout;
            match tokio::time::timeout_at(due.into(), self.stream.read_buf(&mut self.buf)).await {
                Ok(r) => r,
                Err(_) => return Err(End::Reply(408, "request header timeout")),
            }
        } else {
            tokio::select! {
                r = timeout(idle, self.stream.read_buf(&mut self.buf)) => match r {
                    Ok(r) => r,
                    Err(_) => return Err(End::Close),
                },
                _ = shutdown_signal(shutdown) => return Err(End::Close),
            }
        };
        match read {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(End::Close),
        }
    }

    /// Reads until a whole request head is buffered and valid.
    async fn read_head(&mut self, snap: &Snapshot, up: &mut Vec<u8>) -> Result<Head, End> {
        let server = &snap.config.server;
        let limits = Limits {
            max_headers: server.max_headers,
            max_header_bytes: server.max_header_bytes,
        };
        let sticky = match &snap.sticky {
            Sticky::None => StickyLookup::None,
            Sticky::Cookie(name) => StickyLookup::Cookie(name),
            Sticky::Header(name) => StickyLookup::Header(name.as_str()),
        };
        // A new connection's head is due `header_timeout` after accept; a kept-alive
        // one's after the first byte of the next request (already buffered, see
        // `wait_for_request`).
        let deadline = if self.served == 0 {
            self.accepted + server.header_timeout
        } else {
            Instant::now() + server.header_timeout
        };
        loop {
            if !self.buf.is_empty() {
                match request::parse(&self.buf, limits, sticky, up, self.client_ip) {
                    Ok(Some(head)) => return self.read_body(head, deadline).await,
                    Ok(None) if self.buf.len() >= server.max_header_bytes => {
                        return Err(End::Reply(431, "request header fields too large"));
                    }
                    Ok(None) => {}
                    Err(request::Reject::TooLarge) => {
                        return Err(End::Reply(431, "request header fields too large"));
                    }
                    Err(request::Reject::Bad(why)) => return Err(End::Reply(400, why)),
                }
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(CLIENT_BUF);
            }
            let read =
                match tokio::time::timeout_at(deadline.into(), self.stream.read_buf(&mut self.buf))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return Err(End::Reply(408, "request header timeout")),
                };
            match read {
                Ok(0) | Err(_) => return Err(End::Close),
                Ok(_) => {}
            }
        }
    }

    /// Makes sure a fast-path request's body is buffered (answering
    /// `Expect: 100-continue` first when it is not).
    async fn read_body(&mut self, head: Head, _deadline: Instant) -> Result<Head, End> {
        let need = head.len + head.body_len;
        if head.route != Route::Fast || self.buf.len() >= need {
            return Ok(head);
        }
        if head.expect_continue {
            let _ = self
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await;
            let _ = self.stream.flush().await;
        }
        self.buf.reserve(need - self.buf.len());
        while self.buf.len() < need {
            match timeout(BODY_READ_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(End::Close),
            }
        }
        Ok(head)
    }

    /// One request: choose, forward (retrying as policy allows), answer, log.
    /// Returns whether the client connection stays open.
    async fn exchange(
        &mut self,
        head: &Head,
        mut snap: Arc<Snapshot>,
        up: &mut Vec<u8>,
        shutting_down: bool,
    ) -> bool {
        let mut ctx = Ctx::new(self.active);
        ctx.client_ip = self.client_ip;
        ctx.request_id = match head.request_id {
            // Sane ids are ASCII.
            Some((s, e)) => String::from_utf8_lossy(&self.buf[s..e]).into_owned(),
            None => headers::new_request_id(),
        };
        ctx.snapshot = Some(snap.clone());
        let sticky: Option<Vec<u8>> = head.sticky.map(|(s, e)| self.buf[s..e].to_vec());
        let server = &snap.config.server;
        let keep_alive = head.keep_alive && !shutting_down && !server.keepalive_timeout.is_zero();
        let base = up.len();
        let mut error: Option<&'static str> = None;
        let mut bytes = 0u64;

        let (status, keep) = loop {
            // The backend whose failure caused this retry; its slot goes back
            // before choosing again (this retry or a queued request may need it).
            let retried_from = ctx
                .in_flight
                .take()
                .filter(|_| ctx.attempts > 0)
                .map(|slot| slot.stats().clone());
            ctx.permit = None;
            let state: &Arc<State> = self.state;
            let gone = client_gone(&mut self.stream, &mut self.buf);
            let admitted = admit(state, &mut snap, sticky.as_deref(), &mut ctx, gone).await;
            let choice = match admitted {
                Ok(choice) => choice,
                Err(Refusal::ClientGone) => {
                    error = Some(Refusal::ClientGone.message());
                    break (499, false);
                }
                Err(refusal) => {
                    let (code, message) = match refusal {
                        Refusal::NoBackend if ctx.attempts > 0 => {
                            if ctx.last_timed_out {
                                (504, "upstream timed out")
                            } else {
                                (502, "upstream failed")
                            }
                        }
                        Refusal::NoBackend => {
                            ctx.no_backend = true;
                            self.state
                                .counters
                                .no_backend
                                .fetch_add(1, Ordering::Relaxed);
                            (503, refusal.message())
                        }
                        _ => (503, refusal.message()),
                    };
                    error = error.or(Some(message));
                    let keep = self
                        .reply(code, message, &ctx.request_id, keep_alive, head.head_method)
                        .await;
                    break (code, keep);
                }
            };
            let backend = &snap.backends[choice.index];
            let Some(addr) = backend.addr else {
                let keep = self
                    .reply(
                        503,
                        "no eligible backend",
                        &ctx.request_id,
                        keep_alive,
                        head.head_method,
                    )
                    .await;
                break (503, keep);
            };
            ctx.begin_attempt(choice, retried_from.as_deref());

            up.truncate(base);
            let host = head.missing_host.then(|| addr.to_string());
            let body = &self.buf[head.len..head.len + head.body_len];
            request::finish(up, &ctx.request_id, host.as_deref(), body);

            match self
                .attempt(addr, up, head, &snap, &mut ctx, keep_alive, &mut bytes)
                .await
            {
                Trip::Answered { keep_alive } => break (ctx.final_status, keep_alive),
                Trip::Broken => break (ctx.final_status, false),
                Trip::RetryStatus => continue,
                Trip::ClientGone => {
                    ctx.record(Outcome::Abandoned);
                    error = Some("client closed");
                    break (499, false);
                }
                Trip::Stale => unreachable!("attempt() replaces stale connections"),
                Trip::Failed { outcome, error: e } => {
                    ctx.record(outcome);
                    error = Some(e);
                    let sent = !matches!(outcome, Outcome::Connect);
                    let may_resend = head.idempotent || !sent;
                    if may_resend && backend_gone(outcome, e) {
                        ctx.backend_gone();
                    }
                    if may_resend && ctx.attempts_left() {
                        continue;
                    }
                    let (code, message) = if outcome == Outcome::Timeout {
                        (504, "upstream timed out")
                    } else {
                        (502, "upstream failed")
                    };
                    let keep = self
                        .reply(code, message, &ctx.request_id, keep_alive, head.head_method)
                        .await;
                    break (code, keep);
                }
            }
        };
        ctx.in_flight = None;
        ctx.permit = None;
        let method = std::str::from_utf8(&self.buf[head.method.0..head.method.1]).unwrap_or("-");
        let path = std::str::from_utf8(&self.buf[head.path.0..head.path.1]).unwrap_or("-");
        log_request(
            &snap,
            &ctx,
            status,
            method,
            path,
            bytes,
            if status >= 400 { error } else { None },
        );
        keep
    }

    /// One attempt at `addr`: a pooled connection (replaced by a fresh one if it
    /// turns out closed before any response byte), then the round trip.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        addr: SocketAddr,
        req: &[u8],
        head: &Head,
        snap: &Snapshot,
        ctx: &mut Ctx,
        keep_alive: bool,
        bytes: &mut u64,
    ) -> Trip {
        let t = &snap.config.timeouts;
        let mut pooled = pool::take(addr, t.upstream_idle);
        loop {
            let reused = pooled.is_some();
            let upc = match pooled.take() {
                Some(c) => c,
                None => match connect(addr, t.connect).await {
                    Ok(c) => c,
                    Err(timed_out) => {
                        ctx.last_timed_out = timed_out;
                        return Trip::Failed {
                            outcome: Outcome::Connect,
                            error: if timed_out {
                                "ConnectTimedout"
                            } else {
                                "ConnectRefused"
                            },
                        };
                    }
                },
            };
            match self
                .round_trip(upc, addr, req, head, snap, ctx, keep_alive, bytes)
                .await
            {
                // The backend closed an idle pooled connection: it never saw this
                // request, so any method goes again on a fresh connection.
                Trip::Stale if reused => continue,
                Trip::Stale => {
                    return Trip::Failed {
                        outcome: Outcome::Reset,
                        error: "ConnectionClosed",
                    }
                }
                other => return other,
            }
        }
    }

    /// Sends the request on `upc` and relays the response.
    #[allow(clippy::too_many_arguments)]
    async fn round_trip(
        &mut self,
        mut upc: TcpStream,
        addr: SocketAddr,
        req: &[u8],
        head: &Head,
        snap: &Snapshot,
        ctx: &mut Ctx,
        keep_alive: bool,
        bytes: &mut u64,
    ) -> Trip {
        let t = &snap.config.timeouts;
        match timeout(t.response, upc.write_all(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Trip::Stale,
            Err(_) => {
                return Trip::Failed {
                    outcome: Outcome::Timeout,
                    error: "WriteTimedout",
                }
            }
        }
        let stats = &snap.backends[ctx.backend.unwrap_or(0)].stats;
        let cookie = match (&snap.sticky, ctx.set_cookie) {
            (Sticky::Cookie(name), true) => Some(crate::sticky::set_cookie(name, &stats.sticky_id)),
            _ => None,
        };
        let client = ClientSide {
            http10: head.http10,
            head_method: head.head_method,
            keep_alive,
            request_id: &ctx.request_id,
            backend: snap
                .backend_header
                .as_ref()
                .map(|h| (h.as_str(), stats.name_header.as_bytes())),
            set_cookie: cookie.as_deref(),
        };
        let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let Conn { stream, buf, .. } = self;
        // While waiting, the client is read too: pipelined requests are kept,
        // an EOF means it went away (499).
        let mut watch_client = buf.len() < 2 * MAX_RESPONSE_HEAD;
        let resp: RespHead = loop {
            match response::parse(&rbuf, client, &mut out) {
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    rbuf.drain(..h.len);
                    continue;
                }
                Ok(Some(h)) => break h,
                Ok(None) if rbuf.len() < MAX_RESPONSE_HEAD => {}
                _ => {
                    return Trip::Failed {
                        outcome: Outcome::Reset,
                        error: "InvalidHTTPHeader",
                    }
                }
            }
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(READ_CHUNK);
            }
            tokio::select! {
                r = timeout(t.response, upc.read_buf(&mut rbuf)) => match r {
                    Err(_) => {
                        return Trip::Failed { outcome: Outcome::Timeout, error: "ReadTimedout" };
                    }
                    Ok(Ok(0)) | Ok(Err(_)) if rbuf.is_empty() => return Trip::Stale,
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Trip::Failed { outcome: Outcome::Reset, error: "ConnectionClosed" };
                    }
                    Ok(Ok(_)) => {}
                },
                r = stream.read_buf(buf), if watch_client => match r {
                    Ok(0) | Err(_) => return Trip::ClientGone,
                    Ok(_) => watch_client = buf.len() < 2 * MAX_RESPONSE_HEAD,
                },
            }
        };
        ctx.upstream_ttfb = Some(ctx.attempt_started.elapsed());
        ctx.record(Outcome::Status(resp.status));
        if snap.config.retry.statuses.contains(&resp.status)
            && head.idempotent
            && ctx.attempts_left()
            && untried_left(ctx)
        {
            return Trip::RetryStatus;
        }
        ctx.final_status = resp.status;
        let complete = relay(
            stream, &mut upc, &mut rbuf, &mut out, resp, t.response, bytes,
        )
        .await;
        match complete {
            Relay::Done { upstream_clean } => {
                if upstream_clean && resp.reusable {
                    pool::put(addr, upc, t.upstream_idle);
                }
                Trip::Answered {
                    keep_alive: resp.keep_alive,
                }
            }
            Relay::Broken => Trip::Broken,
        }
    }

    /// Writes a response lb makes itself (JSON error body). Returns whether the
    /// connection stays open.
    async fn reply(
        &mut self,
        code: u16,
        message: &str,
        request_id: &str,
        keep_alive: bool,
        head_method: bool,
    ) -> bool {
        use std::io::Write;
        let body = errors::body(message, request_id);
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = Vec::with_capacity(256 + body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\ncache-control: no-store\r\n",
            body.len()
        );
        if code == 503 {
            out.extend_from_slice(b"retry-after: 1\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_method {
            out.extend_from_slice(&body);
        }
        let ok = self.stream.write_all(&out).await.is_ok() && self.stream.flush().await.is_ok();
        ok && keep_alive
    }
}

/// `stream` with `data` put back in front of what is still to be read, so the
/// Pingora path parses the request as if nothing had been read yet. (Only
/// Pingora's TCP stream supports this; the listener makes nothing else.)
fn rewound(stream: Stream, data: &[u8]) -> Option<Stream> {
    match stream.into_any().downcast::<L4Stream>() {
        Ok(mut s) => {
            s.rewind(data);
            Some(s)
        }
        Err(_) => None,
    }
}

/// Did the attempt fail only because its backend cannot answer (see
/// [`Ctx::backend_gone`]): connection refused, or closed or reset before a
/// response head? Timeouts and garbage answers are not such failures.
fn backend_gone(outcome: Outcome, error: &str) -> bool {
    match outcome {
        Outcome::Connect => error == "ConnectRefused",
        Outcome::Reset => error == "ConnectionClosed",
        _ => false,
    }
}

/// Opens a fresh upstream connection; `Err(true)` when it timed out.
async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, bool> {
    match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(c)) => {
            let _ = c.set_nodelay(true);
            Ok(c)
        }
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Resolves if the client closes its connection (or it fails) while its
/// request waits in the queue. Pipelined bytes it sends meanwhile are kept
/// (up to a bound, after which the client is no longer watched).
async fn client_gone(stream: &mut Stream, buf: &mut Vec<u8>) {
    while buf.len() < 2 * MAX_RESPONSE_HEAD {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(CLIENT_BUF);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Resolves once the server is shutting down.
async fn shutdown_signal(rx: &mut ShutdownWatch) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio::net::TcpListener;

    /// A backend answering every request on every connection with `body`.
    async fn backend(ip: &str, port: u16, body: &'static str) -> SocketAddr {
        let l = TcpListener::bind((ip, port)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        buf.clear();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// One request on `c` (kept alive); the response body.
    async fn get(c: &mut TcpStream) -> String {
        c.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        loop {
            let n = c.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "lb closed the connection");
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .expect("content-length");
                if body.len() >= len {
                    return body[..len].to_string();
                }
            }
        }
    }

    /// A client connection to a fast-path `Conn` on `state`.
    async fn connect_to(state: &Arc<State>) -> TcpStream {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let s = state.clone();
        tokio::spawn(async move {
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let active = Arc::new(AtomicUsize::new(0));
            let stream: Stream = Box::new(L4Stream::from(accepted));
            Conn::new(stream, &s, &active, false).serve(&shutdown).await;
        });
        client
    }

    /// A request is routed by the state at its arrival, not by the one its
    /// connection saw when it was accepted or when its previous request ended:
    /// here a backend hostname moves (DNS) while a kept-alive connection and a
    /// never-used one (clients open spares) sit idle, as in `tests/dns.rs`.
    /// The same holds for weights, modes and reloads.
    #[tokio::test]
    async fn requests_are_routed_by_the_state_at_their_arrival() {
        let old = backend("127.0.0.2", 0, "old").await;
        let new = backend("127.0.0.3", old.port(), "new").await;
        let configured = format!("app.test:{}", old.port());
        let toml = format!("[[backends]]\nname = \"app\"\naddr = \"{configured}\"\n");
        let state = Arc::new(State::new(Arc::new(Config::from_toml(&toml).unwrap())));
        state.set_addrs(&[("app".into(), configured.clone(), old)]);

        let mut kept = connect_to(&state).await;
        assert_eq!(get(&mut kept).await, "old");
        let mut unused = connect_to(&state).await;
        // Let both connections wait for their next (first) request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The name moves while they are idle.
        state.set_addrs(&[("app".into(), configured, new)]);
        assert_eq!(get(&mut kept).await, "new", "kept-alive connection");
        assert_eq!(
            get(&mut unused).await,
            "new",
            "connection accepted before the move"
        );
    }
}
