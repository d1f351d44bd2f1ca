//! One request on lb's HTTP/1 path: admission, attempts (as the policy
//! decides after each failure), the relayed answer or lb's own, the log.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::conn::{client_gone, send, Conn, MAX_RESPONSE_HEAD};
use super::pool;
use super::relay::{relay, Relay};
use super::request::{self, Body, Head};
use super::response::{self, ClientSide, RespHead};
use super::upload::{self, Upload};
use crate::proxy::policy::redirect;
use crate::proxy::policy::reply;
use crate::proxy::policy::respond::{self, Decoration};
use crate::proxy::policy::{self, admit, log_request, Ctx, Failure, Next, Outcome, Refusal};
use crate::state::{Local, Snapshot};

/// Upstream read buffer, allocated per exchange (bodies stream through it).
const READ_CHUNK: usize = 16 * 1024;

/// How one attempt at a backend ended.
pub(super) enum Trip {
    /// The response was sent to the client; keep the client connection?
    Answered { keep_alive: bool },
    /// The response was already under way when it broke: nothing more can be sent.
    Broken,
    /// Failed before any response byte reached the client.
    Failed(Failure),
    /// A retry status from the backend: try another.
    RetryStatus,
    /// The client went away while waiting.
    ClientGone,
    /// The client's streamed body failed (its timeout, malformed chunks):
    /// answered with this status and message, connection closed.
    BadBody(u16, &'static str),
}

/// How a request ended: status, keep the connection, the log's error.
type Ended = (u16, bool, Option<&'static str>);

impl Conn<'_> {
    /// One request: choose, forward (retrying as policy allows), answer, log.
    /// Returns whether the client connection stays open.
    pub(super) async fn exchange(
        &mut self,
        head: &Head,
        snap: Local,
        up: &mut Vec<u8>,
        shutting_down: bool,
    ) -> bool {
        let mut ctx = Ctx::new(self.active);
        ctx.client_ip = self.client_ip;
        ctx.https = self.https;
        ctx.proto = if head.http10 { "http/1.0" } else { "http/1.1" };
        ctx.request_id = policy::request_id(head.request_id.map(|(s, e)| &self.buf[s..e]));
        ctx.snapshot = Some(snap.clone());
        let keep_alive =
            head.keep_alive && !shutting_down && !snap.config.server.keepalive_timeout.is_zero();
        let mut bytes = 0u64;
        let (status, mut keep, error) = self
            .attempts(head, snap, up, &mut ctx, keep_alive, &mut bytes)
            .await;
        if head.body != Body::Buffered && !ctx.unreplayable {
            // A streamed body that was never read (refused before any
            // attempt) is still on the connection: it cannot be a request.
            keep = false;
        }
        ctx.in_flight = None;
        ctx.permit = None;
        let snap = ctx.snapshot.clone().expect("set above");
        let text = |(s, e): (usize, usize)| std::str::from_utf8(&self.buf[s..e]).unwrap_or("-");
        let error = error.filter(|_| status >= 400);
        let (method, path) = (text(head.method), text(head.path));
        log_request(&snap, &ctx, status, method, path, bytes, error);
        keep
    }

    /// Attempts until one is answered or the policy gives up.
    async fn attempts(
        &mut self,
        head: &Head,
        mut snap: Local,
        up: &mut Vec<u8>,
        ctx: &mut Ctx,
        keep_alive: bool,
        bytes: &mut u64,
    ) -> Ended {
        let range = |r: (usize, usize)| &self.buf[r.0..r.1];
        let host = head.host.map(range);
        if let Some(body) = crate::tls::acme::challenge_response(range(head.target)) {
            let keep = self.reply_text(&body, keep_alive, head.head_method).await;
            return (200, keep, None);
        }
        if let Some(to) = redirect::to_https(&snap.config, self.https, host, range(head.target)) {
            let keep = reply::keeps_connection(308, false, keep_alive);
            let r = redirect::reply(&to, &ctx.request_id);
            let keep = self.reply_with(r, keep, head.head_method).await;
            return (308, keep, None);
        }
        if let Some(secs) = ctx.rate_limited(self.state) {
            let keep = reply::keeps_connection(429, false, keep_alive);
            let m = policy::RATE_LIMITED;
            let keep = self
                .reply(429, m, &ctx.request_id, keep, head.head_method, secs)
                .await;
            return (429, keep, Some(m));
        }
        let sticky: Option<Vec<u8>> = head.sticky.map(|(s, e)| self.buf[s..e].to_vec());
        let base = up.len();
        let mut error = None;
        loop {
            // The backend whose failure caused this retry; its slot goes back
            // before choosing again (this retry or a queued request may need it).
            let retried_from = ctx
                .in_flight
                .take()
                .filter(|_| ctx.attempts > 0)
                .map(|slot| slot.stats().clone());
            ctx.permit = None;
            let gone = client_gone(&mut self.stream, &mut self.buf);
            let choice = match admit(self.state, &mut snap, sticky.as_deref(), ctx, gone).await {
                Ok(choice) => choice,
                Err(Refusal::ClientGone) => {
                    return (499, false, Some(Refusal::ClientGone.message()))
                }
                Err(refusal) => {
                    let (code, message) = ctx.refused(refusal, self.state);
                    return self
                        .answer(
                            code,
                            error.unwrap_or(message),
                            message,
                            ctx,
                            head,
                            keep_alive,
                        )
                        .await;
                }
            };
            let Some(addr) = snap.backends[choice.index].addr else {
                // Unresolved backends are never eligible; keep this an answer.
                let m = "no eligible backend";
                return self.answer(503, m, m, ctx, head, keep_alive).await;
            };
            ctx.begin_attempt(choice, retried_from.as_deref());
            up.truncate(base);
            let host = head.missing_host.then(|| addr.to_string());
            let body = &self.buf[head.len..head.len + head.body_len];
            request::finish(up, &ctx.request_id, host.as_deref(), body);

            let failure = match self
                .attempt(addr, up, head, &snap, ctx, keep_alive, bytes)
                .await
            {
                Trip::Answered { keep_alive } => return (ctx.final_status, keep_alive, None),
                Trip::Broken => return (ctx.final_status, false, Some("response broken")),
                Trip::RetryStatus => continue,
                Trip::ClientGone => {
                    ctx.record(Outcome::Abandoned);
                    return (499, false, Some("client closed"));
                }
                Trip::BadBody(code, message) => {
                    // Not the backend's doing: no verdict on it.
                    ctx.record(Outcome::Abandoned);
                    return self.answer(code, message, message, ctx, head, false).await;
                }
                Trip::Failed(failure) => failure,
            };
            error = Some(failure.as_str());
            match ctx.after_failure(failure, head.idempotent, self.state) {
                Next::Retry | Next::Resend => continue,
                Next::Answer(code) => {
                    let message = failure.message();
                    return self
                        .answer(code, failure.as_str(), message, ctx, head, keep_alive)
                        .await;
                }
            }
        }
    }

    /// Answers with lb's own error reply; the request's end.
    async fn answer(
        &mut self,
        code: u16,
        error: &'static str,
        message: &'static str,
        ctx: &Ctx,
        head: &Head,
        keep_alive: bool,
    ) -> Ended {
        let keep_alive = reply::keeps_connection(code, ctx.attempts > 0, keep_alive);
        let keep = self
            .reply(
                code,
                message,
                &ctx.request_id,
                keep_alive,
                head.head_method,
                0,
            )
            .await;
        (code, keep, Some(error))
    }

    /// One attempt at `addr`: a pooled connection (replaced by a fresh one if
    /// it turns out closed before any response byte), then the round trip.
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
        // A streamed body cannot be sent again: it never meets a pooled
        // connection the backend may have closed.
        let mut pooled = match head.body {
            Body::Buffered => pool::take(addr, t.upstream_idle),
            _ => None,
        };
        loop {
            ctx.reused = pooled.is_some();
            let upc = match pooled.take() {
                Some(c) => c,
                None => match pool::connect(addr, t.connect).await {
                    Ok(c) => c,
                    Err(failure) => return Trip::Failed(failure),
                },
            };
            let trip = self
                .round_trip(upc, addr, req, head, snap, ctx, keep_alive, bytes)
                .await;
            match trip {
                // The backend closed an idle pooled connection: it never saw
                // this request; the policy sends it again on a fresh one.
                Trip::Failed(f)
                    if policy::after_failure(f, head.idempotent, ctx.reused, false)
                        == Next::Resend => {}
                other => return other,
            }
        }
    }

    /// Sends the request on `upc`, reads the response head (watching the
    /// client meanwhile) and relays the response.
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
            Ok(Err(_)) => return Trip::Failed(Failure::closed(ctx.reused, false)),
            Err(_) => return Trip::Failed(Failure::Timeout),
        }
        if head.body != Body::Buffered {
            if let Some(trip) = self.upload(&mut upc, head, snap, ctx).await {
                return trip;
            }
        }
        let backend = ctx.backend.unwrap_or(0);
        let cookie = respond::sticky_cookie(snap, backend, ctx.set_cookie);
        let client = ClientSide {
            http10: head.http10,
            head_method: head.head_method,
            keep_alive,
            decoration: Decoration::of(
                snap,
                backend,
                &ctx.request_id,
                cookie.as_deref(),
                self.https,
            ),
        };
        let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        let reused = ctx.reused;
        let resp = match self
            .response_head(&mut upc, &mut rbuf, &mut out, client, t.response, reused)
            .await
        {
            Ok(resp) => resp,
            Err(trip) => return trip,
        };
        ctx.upstream_ttfb = Some(ctx.attempt_started.elapsed());
        ctx.record(Outcome::Status(resp.status));
        if ctx.retry_on_status(resp.status, head.idempotent, self.state) {
            return Trip::RetryStatus;
        }
        ctx.final_status = resp.status;
        let relayed = relay(
            &mut self.stream,
            &mut upc,
            &mut rbuf,
            &mut out,
            resp,
            t.response,
            snap.config.server.send_timeout,
            bytes,
        )
        .await;
        match relayed {
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

    /// Streams a body too large to buffer (or chunked) to the backend; `Some`
    /// when that ended the attempt.
    async fn upload(
        &mut self,
        upc: &mut TcpStream,
        head: &Head,
        snap: &Snapshot,
        ctx: &mut Ctx,
    ) -> Option<Trip> {
        let server = &snap.config.server;
        if head.expect_continue && self.buf.len() == head.len {
            let go = b"HTTP/1.1 100 Continue\r\n\r\n";
            if !send(&mut self.stream, go, server.send_timeout).await {
                return Some(Trip::ClientGone);
            }
        }
        // From here on the body cannot be sent again.
        ctx.unreplayable = true;
        let limits = upload::Limits {
            body: server.body_timeout,
            upstream: snap.config.timeouts.response,
        };
        let mut sent = 0;
        let up = upload::stream(
            &mut self.stream,
            &mut self.buf,
            head.len,
            upc,
            head.body,
            limits,
            &mut sent,
        );
        match up.await {
            Upload::Done => None,
            Upload::ClientTimedOut => Some(Trip::BadBody(408, "request body timeout")),
            Upload::Malformed => Some(Trip::BadBody(400, "malformed chunked body")),
            Upload::ClientFailed => Some(Trip::ClientGone),
            Upload::UpstreamFailed { timed_out: true } => Some(Trip::Failed(Failure::Timeout)),
            Upload::UpstreamFailed { timed_out: false } => Some(Trip::Failed(Failure::Closed)),
        }
    }

    /// Reads the final response head into `rbuf` (interim 1xx heads
    /// skipped) and encodes the client's head into `out`. While waiting the
    /// client is read too: pipelined requests are kept, an EOF means it went
    /// away (`499`).
    async fn response_head(
        &mut self,
        upc: &mut TcpStream,
        rbuf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        client: ClientSide<'_>,
        limit: Duration,
        reused: bool,
    ) -> Result<RespHead, Trip> {
        let Conn { stream, buf, .. } = self;
        let mut watch_client = buf.len() < 2 * MAX_RESPONSE_HEAD;
        // Any response byte (an interim head drained included): the backend
        // saw the request, which is then never sent again.
        let mut answered = false;
        loop {
            match response::parse(rbuf, client, out) {
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    rbuf.drain(..h.len);
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) if rbuf.len() < MAX_RESPONSE_HEAD => {}
                _ => return Err(Trip::Failed(Failure::BadResponse)),
            }
            if rbuf.capacity() - rbuf.len() < 1024 {
                rbuf.reserve(READ_CHUNK);
            }
            tokio::select! {
                r = timeout(limit, upc.read_buf(rbuf)) => match r {
                    Err(_) => return Err(Trip::Failed(Failure::Timeout)),
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Err(Trip::Failed(Failure::closed(reused, answered)));
                    }
                    Ok(Ok(_)) => answered = true,
                },
                r = stream.read_buf(buf), if watch_client => match r {
                    Ok(0) | Err(_) => return Err(Trip::ClientGone),
                    Ok(_) => watch_client = buf.len() < 2 * MAX_RESPONSE_HEAD,
                },
            }
        }
    }
}
