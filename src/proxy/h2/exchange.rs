//! One HTTP/2 stream served by lb itself ([`super`] says which): the same
//! decisions as the Pingora path makes for it, in the same order (head
//! checks, ACME challenge, redirect, rate limit, admission, attempts as the
//! policy allows after each failure, lb's own reply, the log), with lb's
//! HTTP/1 upstream side: a per-thread pooled connection, one head write,
//! the response read into one buffer whose bytes go to the stream without
//! another copy.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::head;
use crate::http1::{Chunked, Framing};
use crate::proxy::h1::pool;
use crate::proxy::heads;
use crate::proxy::policy::redirect;
use crate::proxy::policy::reply::{self, ErrorReply};
use crate::proxy::policy::{self, admit, log_request, Ctx, Failure, Next, Outcome, Refusal};
use crate::state::{Local, Snapshot, State};
use crate::sticky;

/// Upstream reads: the response head, then each piece of the body.
const READ_CHUNK: usize = 16 * 1024;
/// Largest backend response head accepted (as lb's HTTP/1 path).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Does lb serve this stream itself? Only a request with no body (nothing
/// to buffer for a retry or stream upstream), in origin form with an
/// authority, that is neither CONNECT nor gRPC (whose errors are
/// `grpc-status` replies and whose backends are h2c), while no backend is
/// h2c. Everything else is the Pingora path's.
pub(super) fn eligible(s: &HttpSession, snap: &Snapshot) -> bool {
    let req = s.req_header();
    let h = &req.headers;
    !snap.config.h2c_backends
        && s.is_body_empty()
        && req.method != http::Method::CONNECT
        && req.raw_path().first() == Some(&b'/')
        && (req.uri.authority().is_some() || h.contains_key(HOST))
        && h.get(CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
        && !reply::is_grpc(h.get(CONTENT_TYPE).map(|v| v.as_bytes()))
}

/// How one attempt at a backend ended.
enum Trip {
    /// The response went to the client.
    Answered,
    /// The response was under way when it broke: the stream is reset.
    Broken,
    /// Failed before anything reached the client.
    Failed(Failure),
    /// A retry status from the backend: try another.
    RetryStatus,
    /// The client reset the stream while waiting.
    ClientGone,
}

/// How the request ended: the status logged and the log's error.
type Ended = (u16, Option<&'static str>);

/// Serves the stream `s` (routed by `snap`) to its end and logs it.
pub(super) async fn serve(
    state: &Arc<State>,
    active: &Arc<AtomicUsize>,
    mut s: Box<HttpSession>,
    snap: Local,
) {
    let mut ctx = Ctx::new(active);
    ctx.proto = "h2";
    ctx.https = s.digest().is_some_and(|d| d.ssl_digest.is_some());
    ctx.client_ip = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
    let req = s.req_header();
    ctx.request_id = policy::request_id(req.headers.get(policy::REQUEST_ID).map(|v| v.as_bytes()));
    ctx.snapshot = Some(snap.clone());
    let idempotent = req.method.is_idempotent();
    let head_request = req.method == http::Method::HEAD;
    s.set_write_timeout(Some(snap.config.server.send_timeout));
    let mut x = Exchange {
        client: Client {
            s,
            head_request,
            bytes: 0,
        },
        state,
        ctx,
        idempotent,
    };
    let (status, error) = x.attempts(snap).await;
    let Exchange {
        client: Client { s, bytes, .. },
        mut ctx,
        ..
    } = x;
    ctx.in_flight = None;
    ctx.permit = None;
    let snap = ctx.snapshot.clone().expect("set above");
    let req = s.req_header();
    let error = error.filter(|_| status >= 400);
    log_request(
        &snap,
        &ctx,
        status,
        req.method.as_str(),
        req.uri.path(),
        bytes,
        error,
    );
}

/// A stream being served.
struct Exchange<'a> {
    client: Client,
    state: &'a Arc<State>,
    ctx: Ctx,
    idempotent: bool,
}

/// The client's side of the stream.
struct Client {
    s: Box<HttpSession>,
    /// The request is a `HEAD`.
    head_request: bool,
    /// Body bytes sent.
    bytes: u64,
}

impl Exchange<'_> {
    /// Everything before the first attempt, then attempts until one is
    /// answered or the policy gives up (lb's HTTP/1 path's order).
    async fn attempts(&mut self, mut snap: Local) -> Ended {
        let req = self.client.s.req_header();
        if let Some((code, message)) = heads::refusal(req, false, &snap) {
            return self.reply(code, message, 0).await;
        }
        let target = req.raw_path();
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| req.headers.get(HOST).map(|h| h.as_bytes()));
        if let Some(body) = crate::tls::acme::challenge_response(target) {
            return self.client.text(&body).await;
        }
        if let Some(to) = redirect::to_https(&snap.config, self.ctx.https, host, target) {
            let r = redirect::reply(&to, &self.ctx.request_id);
            return self.client.write_reply(r).await;
        }
        let sticky = sticky::sticky_value(&snap, &req.headers).map(<[u8]>::to_vec);
        let mut up = Vec::with_capacity(512);
        let from = head::From {
            client: self.ctx.client_ip,
            https: self.ctx.https,
            request_id: &self.ctx.request_id,
        };
        head::request(req, from, &mut up);
        if let Some(secs) = self.ctx.rate_limited(self.state) {
            return self.reply(429, policy::RATE_LIMITED, secs).await;
        }
        let mut error = None;
        loop {
            // The backend whose failure caused this retry; its slot goes back
            // before choosing again (this retry or a queued request may need it).
            let retried_from = self
                .ctx
                .in_flight
                .take()
                .filter(|_| self.ctx.attempts > 0)
                .map(|slot| slot.stats().clone());
            self.ctx.permit = None;
            let s = &mut self.client.s;
            let gone = async move {
                // Resolves only when the client resets the stream.
                let _ = s.read_body_or_idle(true).await;
            };
            let admitted = admit(
                self.state,
                &mut snap,
                sticky.as_deref(),
                &mut self.ctx,
                gone,
            );
            let choice = match admitted.await {
                Ok(choice) => choice,
                Err(Refusal::ClientGone) => return (499, Some(Refusal::ClientGone.message())),
                Err(refusal) => {
                    let (code, message) = self.ctx.refused(refusal, self.state);
                    return match self.reply(code, message, 0).await {
                        (499, gone) => (499, gone),
                        (code, _) => (code, Some(error.unwrap_or(message))),
                    };
                }
            };
            let Some(addr) = snap.backends[choice.index].addr else {
                // Unresolved backends are never eligible; keep this an answer.
                return self.reply(503, "no eligible backend", 0).await;
            };
            self.ctx.begin_attempt(choice, retried_from.as_deref());
            let failure = match self.attempt(addr, &up, &snap).await {
                Trip::Answered => return (self.ctx.final_status, None),
                Trip::Broken => return (self.ctx.final_status, Some("response broken")),
                Trip::RetryStatus => continue,
                Trip::ClientGone => {
                    self.ctx.record(Outcome::Abandoned);
                    return (499, Some("client closed"));
                }
                Trip::Failed(failure) => failure,
            };
            error = Some(failure.as_str());
            match self.ctx.after_failure(failure, self.idempotent, self.state) {
                Next::Retry | Next::Resend => continue,
                Next::Answer(code) => {
                    return match self.reply(code, failure.message(), 0).await {
                        (499, gone) => (499, gone),
                        (code, _) => (code, Some(failure.as_str())),
                    };
                }
            }
        }
    }

    /// One attempt at `addr`: a pooled connection (replaced by a fresh one
    /// if it turns out closed before any response byte), then the round trip.
    async fn attempt(&mut self, addr: SocketAddr, up: &[u8], snap: &Snapshot) -> Trip {
        let t = &snap.config.timeouts;
        let mut pooled = pool::take(addr, t.upstream_idle);
        loop {
            self.ctx.reused = pooled.is_some();
            let upc = match pooled.take() {
                Some(c) => c,
                None => match pool::connect(addr, t.connect).await {
                    Ok(c) => c,
                    Err(failure) => return Trip::Failed(failure),
                },
            };
            match self.round_trip(upc, addr, up, snap).await {
                // The backend closed an idle pooled connection: it never saw
                // this request; the policy sends it again on a fresh one.
                Trip::Failed(f)
                    if policy::after_failure(f, self.idempotent, self.ctx.reused, false)
                        == Next::Resend => {}
                other => return other,
            }
        }
    }

    /// Sends the head on `upc`, reads the response head (watching for the
    /// client's reset meanwhile) and relays the response.
    async fn round_trip(
        &mut self,
        mut upc: TcpStream,
        addr: SocketAddr,
        up: &[u8],
        snap: &Snapshot,
    ) -> Trip {
        let t = &snap.config.timeouts;
        let reused = self.ctx.reused;
        match timeout(t.response, upc.write_all(up)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Trip::Failed(Failure::closed(reused, false)),
            Err(_) => return Trip::Failed(Failure::Timeout),
        }
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Any response byte (an interim head skipped included): the backend
        // saw the request, which is then never sent again.
        let mut answered = false;
        let resp = loop {
            match head::response(&buf, self.client.head_request) {
                // Interim (1xx) heads are not passed on.
                Ok(Some(r)) if r.head.is_none() => {
                    buf.advance(r.len);
                    continue;
                }
                Ok(Some(r)) => break r,
                Ok(None) if buf.len() < MAX_RESPONSE_HEAD => {}
                _ => return Trip::Failed(Failure::BadResponse),
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                r = timeout(t.response, upc.read_buf(&mut buf)) => match r {
                    Err(_) => return Trip::Failed(Failure::Timeout),
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Trip::Failed(Failure::closed(reused, answered));
                    }
                    Ok(Ok(_)) => answered = true,
                },
                _ = self.client.s.read_body_or_idle(true) => return Trip::ClientGone,
            }
        };
        self.ctx.upstream_ttfb = Some(self.ctx.attempt_started.elapsed());
        self.ctx.record(Outcome::Status(resp.status));
        if self
            .ctx
            .retry_on_status(resp.status, self.idempotent, self.state)
        {
            return Trip::RetryStatus;
        }
        self.ctx.final_status = resp.status;
        let Some(mut client_head) = resp.head else {
            unreachable!("interim heads are skipped above")
        };
        // (head::response left the hop-by-hop fields out.)
        if let Err(e) = heads::add_fields(&mut client_head, &self.ctx) {
            tracing::debug!(error = %e, "response field not set");
        }
        buf.advance(resp.len);
        let end = matches!(resp.framing, Framing::Empty | Framing::Length(0));
        if self
            .client
            .s
            .write_response_header(Box::new(client_head), end)
            .is_err()
        {
            return Trip::Broken;
        }
        let limit = t.response;
        let relayed = match resp.framing {
            Framing::Empty | Framing::Length(0) => Ok(buf.is_empty()),
            Framing::Length(n) => self.client.length(&mut upc, buf, n, limit).await,
            Framing::Chunked => self.client.chunked(&mut upc, buf, limit).await,
            Framing::Close => self
                .client
                .until_close(&mut upc, buf, limit)
                .await
                .map(|()| false),
        };
        match relayed {
            Ok(clean) => {
                if clean && resp.reusable {
                    pool::put(addr, upc, t.upstream_idle);
                }
                Trip::Answered
            }
            Err(Broke) => Trip::Broken,
        }
    }

    /// Answers with lb's own reply (JSON body; `Retry-After` on `429` and
    /// `503`).
    async fn reply(&mut self, status: u16, message: &'static str, retry_after: u64) -> Ended {
        let r = ErrorReply {
            status,
            message,
            request_id: &self.ctx.request_id,
            retry_after,
            location: None,
            grpc: false,
        };
        match self.client.write_reply(r).await {
            (499, gone) => (499, gone),
            (code, _) => (code, Some(message)),
        }
    }
}

impl Client {
    /// Relays a body of `n` bytes (`n > 0`), `buf` holding its start; `Ok`
    /// with whether the backend sent nothing past it.
    async fn length(
        &mut self,
        upc: &mut TcpStream,
        mut buf: BytesMut,
        n: u64,
        limit: Duration,
    ) -> Result<bool, Broke> {
        let mut left = n;
        loop {
            if !buf.is_empty() {
                let take = (buf.len() as u64).min(left) as usize;
                let extra = buf.len() > take;
                left -= take as u64;
                self.send(buf.split_to(take).freeze(), left == 0).await?;
                if left == 0 {
                    return Ok(!extra);
                }
            }
            if !self.read(upc, &mut buf, limit).await? {
                return Err(Broke);
            }
        }
    }

    /// Relays a chunked body de-chunked (HTTP/2 frames it), `buf` holding
    /// its start; `Ok` with whether the backend sent nothing past it. Its
    /// trailers are not passed on.
    async fn chunked(
        &mut self,
        upc: &mut TcpStream,
        mut buf: BytesMut,
        limit: Duration,
    ) -> Result<bool, Broke> {
        let mut chunks = Chunked::default();
        loop {
            let mut data = BytesMut::new();
            let (used, done) = chunks
                .feed(&buf, |d| data.extend_from_slice(d))
                .map_err(|_| Broke)?;
            buf.advance(used);
            if done {
                self.send(data.freeze(), true).await?;
                return Ok(buf.is_empty());
            }
            if !data.is_empty() {
                self.send(data.freeze(), false).await?;
            }
            if !self.read(upc, &mut buf, limit).await? {
                return Err(Broke);
            }
        }
    }

    /// Relays a body that ends when the backend closes.
    async fn until_close(
        &mut self,
        upc: &mut TcpStream,
        mut buf: BytesMut,
        limit: Duration,
    ) -> Result<(), Broke> {
        loop {
            if !buf.is_empty() {
                self.send(buf.split().freeze(), false).await?;
            }
            if !self.read(upc, &mut buf, limit).await? {
                return self.send(Bytes::new(), true).await;
            }
        }
    }

    /// Reads more of the backend's body into `buf`: `Ok(false)` at its EOF
    /// (the end of a close-delimited body, a break for any other). An
    /// error, `timeouts.response` without a byte or the client's reset
    /// (seen at once: the backend's connection and the request's slot are
    /// not held for a client that left) break the response.
    async fn read(
        &mut self,
        upc: &mut TcpStream,
        buf: &mut BytesMut,
        limit: Duration,
    ) -> Result<bool, Broke> {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = timeout(limit, upc.read_buf(buf)) => match r {
                Ok(Ok(n)) => Ok(n > 0),
                _ => Err(Broke),
            },
            _ = self.s.read_body_or_idle(true) => Err(Broke),
        }
    }

    /// Sends body bytes on the stream (`end`: the last).
    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), Broke> {
        let n = data.len() as u64;
        let sent = if data.is_empty() && end {
            self.s.finish().is_ok()
        } else {
            self.s.write_body(data, end).await.is_ok()
        };
        if !sent {
            return Err(Broke);
        }
        self.bytes += n;
        Ok(())
    }

    /// Writes `r` (no body to a `HEAD`); `499` when its head could not be
    /// written (the client reset the stream first), as the Pingora path logs.
    async fn write_reply(&mut self, r: ErrorReply<'_>) -> Ended {
        let body = r.body();
        let status = r.wire_status();
        let Ok(resp) = heads::error_header(&r, body.len()) else {
            return (500, Some("internal error"));
        };
        if self.write(resp, Bytes::from(body)).await {
            (status, None)
        } else {
            (499, Some("client closed"))
        }
    }

    /// `200` with a `text/plain` `body` (an ACME http-01 answer).
    async fn text(&mut self, body: &str) -> Ended {
        let Ok(mut resp) = ResponseHeader::build(200, Some(3)) else {
            return (500, Some("internal error"));
        };
        let _ = resp.insert_header("content-type", "text/plain");
        let _ = resp.insert_header("content-length", body.len());
        let _ = resp.insert_header("cache-control", "no-store");
        if self.write(resp, Bytes::from(body.to_string())).await {
            (200, None)
        } else {
            (499, Some("client closed"))
        }
    }

    /// Writes a whole response lb made; whether its head was written.
    async fn write(&mut self, resp: ResponseHeader, body: Bytes) -> bool {
        let body = if self.head_request {
            Bytes::new()
        } else {
            body
        };
        let end = body.is_empty();
        if self.s.write_response_header(Box::new(resp), end).is_err() {
            return false;
        }
        if !end {
            let _ = self.send(body, true).await;
        }
        true
    }
}

/// The stream broke mid-response (the client reset it or stopped reading,
/// or the backend broke off the body).
struct Broke;
