//! The Pingora path: the `ProxyHttp` implementation that serves what lb's
//! HTTP/1 path hands over (upgrades, CONNECT, chunked and large bodies, and
//! everything under `LB_PATH=pingora`). Each hook asks [`crate::proxy::policy`]
//! and applies its answer to Pingora's session; nothing is decided here.
//!
//! Hook order per request (PINGORA.md §1): `request_filter` (head checks and
//! the first admission) → (`upstream_peer` → connect →
//! `upstream_request_filter` → `upstream_response_filter`)+ →
//! `response_filter` → body → `logging`. The context pins one [`Snapshot`] for
//! the whole request, so every attempt is routed by one complete weight map
//! even while the admin API swaps it.

mod errors;
mod session;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::proxy::heads;
use crate::proxy::policy::redirect;
use crate::proxy::policy::reply::{self, ErrorReply};
use crate::proxy::policy::{self, admit, log_request, Ctx, Failure, Next, Outcome};
use crate::state::{Snapshot, State};
use crate::sticky::{self, Choice};

/// The Pingora path's logic.
pub struct Proxy {
    state: Arc<State>,
    active: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy routing by `state`, counting live requests in `active`.
    pub fn new(state: Arc<State>, active: Arc<AtomicUsize>) -> Proxy {
        Proxy { state, active }
    }

    /// Admission for the next attempt (see [`admit`]); a refusal as the
    /// policy answers it.
    async fn choose(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Choice, (u16, &'static str)> {
        let mut snap = ctx
            .snapshot
            .get_or_insert_with(|| self.state.current())
            .clone();
        // Owned: watching the client below borrows the session mutably.
        let sticky = sticky::sticky_value(&snap, &session.req_header().headers).map(<[u8]>::to_vec);
        let admitted = admit(
            &self.state,
            &mut snap,
            sticky.as_deref(),
            ctx,
            client_gone(session),
        )
        .await;
        admitted.map_err(|refusal| ctx.refused(refusal, &self.state))
    }
}

/// Whether a failed attempt may be sent again at all on this path: nothing
/// sent to the client yet, and the request body (if any) fully buffered.
fn may_retry(session: &Session) -> bool {
    session.response_written().is_none() && !session.as_ref().retry_buffer_truncated()
}

/// A fresh pool key per resend: Pingora pools by peer hash, `group_key`
/// included, so a resend never takes another stale idle connection.
static RESEND_KEY: AtomicU64 = AtomicU64::new(1);

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.active)
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.proto = match session.req_header().version {
            http::Version::HTTP_2 => "h2",
            http::Version::HTTP_10 => "http/1.0",
            _ => "http/1.1",
        };
        ctx.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // Pipelined requests after this one stay on the connection (Pingora
        // otherwise closes when it has read past this request's body).
        session.set_pipelining_enabled(true);
        // Pingora keeps neither across requests: set for every one. Reads of
        // the body wait at most `body_timeout` per read, writes to the client
        // `send_timeout`.
        let server = &self.state.current().config.server;
        session.set_read_timeout(Some(server.body_timeout));
        session.set_write_timeout(Some(server.send_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = session::request_id(session);
        ctx.client_ip = session::client_ip(session);
        let snap = ctx
            .snapshot
            .get_or_insert_with(|| self.state.current())
            .clone();
        if let Some(answer) = session::refusal(session, &snap) {
            ctx.answer = Some(answer);
            return Err(Error::explain(HTTPStatus(answer.0), answer.1));
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        let target = req
            .uri
            .path_and_query()
            .map_or(b"/" as &[u8], |p| p.as_str().as_bytes());
        if let Some(body) = crate::tls::acme::challenge_response(target) {
            write_text(session, &body).await;
            return Ok(true);
        }
        if let Some(to) = redirect::to_https(&snap.config, ctx.https, host, target) {
            let keep = reply::keeps_connection(308, false, session.get_keepalive().is_some());
            let r = redirect::reply(&to, &ctx.request_id);
            write_reply(session, r, keep).await;
            return Ok(true);
        }
        // Idle limit before the next request on this connection, in whole
        // seconds rounded up (0 = close). Only where keep-alive is on already:
        // an HTTP/1.0 client or `Connection: close` must still get its close.
        if session.get_keepalive().is_some() {
            let idle = snap.config.server.keepalive_timeout.as_secs_f64().ceil() as u64;
            session.set_keepalive((idle > 0).then_some(idle));
        }
        // Idempotent requests with a body are buffered (up to Pingora's 64 KiB)
        // so they can be replayed on another backend.
        session.as_mut().enable_retry_buffering();
        if let Some(secs) = ctx.rate_limited(&self.state) {
            reply_refusal(session, ctx, 429, policy::RATE_LIMITED, secs).await;
            return Ok(true);
        }
        match self.choose(session, ctx).await {
            Ok(choice) => {
                ctx.pending = Some(choice);
                Ok(false)
            }
            Err((499, _)) => Err(client_closed()),
            Err((code, message)) => {
                reply_refusal(session, ctx, code, message, 0).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx.snapshot.clone().unwrap_or_else(|| self.state.current());
        let resend = std::mem::take(&mut ctx.resend);
        if !resend {
            let choice = match ctx.pending.take() {
                Some(choice) => choice,
                None => {
                    // A retry: the failed attempt's slot goes back first (this
                    // retry or the queue's next request may need it).
                    let retried_from = ctx.backend_stats().cloned();
                    ctx.in_flight = None;
                    ctx.permit = None;
                    let choice = self.choose(session, ctx).await;
                    match choice {
                        Ok(choice) => {
                            ctx.begin_attempt(choice, retried_from.as_deref());
                            return peer(&snap, ctx, false);
                        }
                        Err((499, _)) => return Err(client_closed()),
                        Err(answer) => {
                            ctx.answer = Some(answer);
                            return Err(Error::explain(HTTPStatus(answer.0), answer.1));
                        }
                    }
                }
            };
            ctx.begin_attempt(choice, None);
        }
        peer(&snap, ctx, resend)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.reused = reused;
        ctx.interim = false;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        let failure = errors::connect_failure(&e);
        ctx.reused = false;
        decide(session, ctx, failure, e, &self.state)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.req_header().version == http::Version::HTTP_2 {
            session::join_cookies(req)?;
        }
        session::forwarding(req, ctx.client_ip, ctx.https, &ctx.request_id)?;
        if !req.headers.contains_key(http::header::HOST) {
            // HTTP/1.0 without Host reaches the backend with one, as HTTP/1.1.
            let addr = ctx
                .snapshot
                .as_ref()
                .zip(ctx.backend)
                .and_then(|(s, i)| s.backends[i].addr);
            if let Some(addr) = addr {
                req.insert_header(http::header::HOST, addr.to_string())?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            // The backend saw the request: a close after this is not one
            // before any response byte (never a resend).
            ctx.interim = true;
            return Ok(());
        }
        let status = resp.status.as_u16();
        ctx.upstream_ttfb = Some(ctx.attempt_started.elapsed());
        ctx.record(Outcome::Status(status));
        let idempotent = session.req_header().method.is_idempotent();
        if may_retry(session) && ctx.retry_on_status(status, idempotent, &self.state) {
            // Nothing has been sent downstream yet: drop this response and let
            // Pingora call upstream_peer again (PINGORA.md §1, PR #872).
            ctx.status_retry = true;
            let mut e = Error::explain(HTTPStatus(status), "retry status from upstream");
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An upgrade the backend declined is an ordinary response: the
        // connection closes after it, so the client's next request starts on
        // a new connection at lb's HTTP/1 path and its limits (head
        // deadline, incremental parse) rather than staying on this one.
        if session.is_upgrade_req() && resp.status.as_u16() != 101 {
            session.set_keepalive(None);
        }
        let http10 = session.req_header().version == http::Version::HTTP_10;
        heads::decorate(resp, ctx, http10)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Classified before `more_context` moves Pingora's context into the cause.
        let failure = errors::attempt_failure(&e, ctx.reused, ctx.interim);
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            return e; // already decided in upstream_response_filter
        }
        match failure {
            Some(failure) => decide(session, ctx, failure, e, &self.state),
            None => {
                // The client went away or sent garbage: not the backend's fault.
                e.set_retry(false);
                e
            }
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        errors::respond(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The request is over: its last attempt stops counting as in flight and
        // an unanswered half-open probe frees its slot.
        ctx.in_flight = None;
        ctx.permit = None;
        let snap = ctx.snapshot.clone().unwrap_or_else(|| self.state.current());
        // No response written: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let req = session.req_header();
        let error = ctx
            .refusal
            .or(ctx.no_backend.then_some("no eligible backend"))
            .or(ctx.answer.map(|a| a.1))
            .or(e.map(|e| e.etype().as_str()));
        let bytes = session.body_bytes_sent() as u64;
        log_request(
            &snap,
            ctx,
            status,
            req.method.as_str(),
            req.uri.path(),
            bytes,
            error,
        );
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No compression module (Pingora adds a disabled one per request).
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // Per-request failures are reported once, in the access log (SPEC "Logs").
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        _error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }
}

/// The peer for the current attempt (`resend`: on a fresh connection).
fn peer(snap: &Snapshot, ctx: &Ctx, resend: bool) -> Result<Box<HttpPeer>> {
    let Some(addr) = ctx.backend.and_then(|i| snap.backends[i].addr) else {
        // Unresolved backends are never eligible; keep this an error, not a panic.
        return Err(Error::explain(
            HTTPStatus(503),
            "backend address unresolved",
        ));
    };
    let t = &snap.config.timeouts;
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.response);
    peer.options.write_timeout = Some(t.response);
    peer.options.idle_timeout = Some(t.upstream_idle);
    if ctx.backend.is_some_and(|i| snap.backends[i].h2c) {
        // h2c with prior knowledge: requests are streams on shared
        // connections, up to `server.h2_max_streams` each.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = snap.config.server.h2_max_streams as usize;
    }
    if resend {
        peer.group_key = RESEND_KEY.fetch_add(1, Ordering::Relaxed);
        // Not pooled afterwards under a key nobody will ask for.
        peer.options.idle_timeout = Some(Duration::ZERO);
    }
    Ok(Box::new(peer))
}

/// Applies the policy's decision after `failure` to Pingora's error.
fn decide(
    session: &Session,
    ctx: &mut Ctx,
    failure: Failure,
    mut e: Box<Error>,
    state: &State,
) -> Box<Error> {
    let idempotent = session.req_header().method.is_idempotent();
    let next = ctx.after_failure(failure, idempotent, state);
    let again = matches!(next, Next::Retry | Next::Resend) && may_retry(session);
    ctx.resend = again && next == Next::Resend;
    if !again {
        ctx.answer = Some((failure.status(), failure.message()));
    }
    e.set_retry(again);
    e
}

/// The error for a client that went away (logged as `499`, nothing written).
fn client_closed() -> Box<Error> {
    let mut e = Error::explain(ConnectionClosed, "client closed");
    e.esource = ErrorSource::Downstream;
    e
}

/// Answers a refusal before any attempt (keeping the connection as the
/// policy says).
async fn reply_refusal(
    session: &mut Session,
    ctx: &Ctx,
    code: u16,
    message: &'static str,
    retry_after: u64,
) {
    let keep = reply::keeps_connection(code, false, session.get_keepalive().is_some());
    let r = ErrorReply {
        status: code,
        message,
        request_id: &ctx.request_id,
        retry_after,
        location: None,
        grpc: errors::grpc(session),
    };
    write_reply(session, r, keep).await;
}

/// `200` with a `text/plain` `body` (an ACME http-01 answer).
async fn write_text(session: &mut Session, body: &str) {
    let Ok(mut resp) = ResponseHeader::build(200, Some(3)) else {
        return;
    };
    let _ = resp.insert_header("content-type", "text/plain");
    let _ = resp.insert_header("content-length", body.len());
    let _ = resp.insert_header("cache-control", "no-store");
    let head = session.req_header().method == http::Method::HEAD;
    let body = (!head).then(|| Bytes::from(body.to_string()));
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(body, true).await;
    }
}

/// Writes lb's own reply `r`, closing the connection after it unless `keep`.
async fn write_reply(session: &mut Session, r: ErrorReply<'_>, keep: bool) {
    if !keep {
        session.set_keepalive(None);
    }
    let body = r.body();
    let Ok(resp) = heads::error_header(&r, body.len()) else {
        return;
    };
    let head = session.req_header().method == http::Method::HEAD;
    let body = (!head).then(|| Bytes::from(body));
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(body, true).await;
    }
}

/// Resolves when the client closes its connection while the request waits in
/// the queue (polled only then). Only a request whose body is complete (no
/// body, or a retry's already buffered one) can be watched: reading an unread
/// body here would consume it, so such a request waits until `queue.timeout`.
async fn client_gone(session: &mut Session) {
    if session.is_body_empty() || session.is_body_done() {
        // Err: the client closed (FIN) or reset. Bytes of a pipelined next
        // request are kept by Pingora (pipelining is on) and leave this pending.
        if session.read_body_or_idle(true).await.is_err() {
            return;
        }
    }
    std::future::pending().await
}
