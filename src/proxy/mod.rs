//! The Pingora `ProxyHttp` implementation: per-request context, backend
//! selection, forwarding headers, outcome accounting and error responses.
//!
//! Hook order per request (PINGORA.md §1): `request_filter` → (`upstream_peer` →
//! connect → `upstream_request_filter` → `upstream_response_filter`)+ →
//! `response_filter` → body → `logging`. The context pins one [`Snapshot`] for the
//! whole request, so every attempt is routed by one complete weight map even while
//! the admin API swaps it.

mod admit;
mod ctx;
mod errors;
pub mod fast;
mod headers;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::state::{Snapshot, State};
use crate::sticky;
use admit::{admit, Refusal};

pub use ctx::{Ctx, Outcome};
pub use headers::{new_request_id, sane_request_id};

/// The proxy service's logic.
pub struct Proxy {
    state: Arc<State>,
    active: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy routing by `state`, counting live requests in `active`.
    pub fn new(state: Arc<State>, active: Arc<AtomicUsize>) -> Proxy {
        Proxy { state, active }
    }
}

/// Milliseconds with microsecond precision, for the access log.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The client IP as hash key bytes (4 or 16), written into `buf`.
fn ip_key(ip: Option<IpAddr>, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V4(a)) => {
            buf[..4].copy_from_slice(&a.octets());
            &buf[..4]
        }
        Some(IpAddr::V6(a)) => {
            *buf = a.octets();
            &buf[..]
        }
        None => &[],
    }
}

impl Proxy {
    /// Whether a failed attempt may be retried: attempts left, nothing sent to
    /// the client yet, and the request body (if any) fully buffered for replay.
    fn may_retry(session: &Session, ctx: &Ctx) -> bool {
        ctx.attempts_left()
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
    }
}

/// Does an eligible backend this request has not tried yet exist? (Full or
/// not: a retry may queue.)
fn untried_left(ctx: &Ctx) -> bool {
    ctx.snapshot
        .as_ref()
        .is_some_and(|s| s.schedulable(Instant::now()) & !(ctx.tried | ctx.refused) != 0)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.active)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = headers::request_id(session);
        ctx.client_ip = headers::client_ip(session);
        let snap = ctx
            .snapshot
            .get_or_insert_with(|| self.state.load_full())
            .clone();
        let server = &snap.config.server;
        if headers::too_large(
            session.req_header(),
            server.max_headers,
            server.max_header_bytes,
        ) {
            return Err(Error::explain(
                HTTPStatus(431),
                "request header fields too large",
            ));
        }
        // Idle limit before the next request on this connection, in whole
        // seconds rounded up (0 = close). Only where keep-alive is on already:
        // an HTTP/1.0 client or `Connection: close` must still get its close.
        if session.get_keepalive().is_some() {
            let idle = server.keepalive_timeout.as_secs_f64().ceil() as u64;
            session.set_keepalive((idle > 0).then_some(idle));
        }
        if headers::has_cl_and_te(session) {
            // Request smuggling vector: refuse before any backend sees it.
            return Err(Error::explain(
                HTTPStatus(400),
                "both Content-Length and Transfer-Encoding",
            ));
        }
        // Idempotent requests with a body are buffered (up to Pingora's 64 KiB)
        // so they can be replayed on another backend.
        session.as_mut().enable_retry_buffering();
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut snap = ctx
            .snapshot
            .get_or_insert_with(|| self.state.load_full())
            .clone();

        // The backend whose failure caused this retry (counted once a new
        // attempt is actually made).
        let retried_from = (ctx.attempts > 0)
            .then(|| ctx.backend_stats().cloned())
            .flatten();
        // The previous attempt's slot goes back before choosing again: this
        // retry (or the queue's next request) may need it.
        ctx.in_flight = None;
        ctx.permit = None;
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
        let choice = match admitted {
            Ok(choice) => choice,
            Err(Refusal::NoBackend) if ctx.attempts > 0 => {
                // All attempts failed and nothing is left: report the last failure.
                let code = if ctx.last_timed_out { 504 } else { 502 };
                return Err(Error::explain(HTTPStatus(code), "all attempts failed"));
            }
            Err(Refusal::NoBackend) => {
                ctx.no_backend = true;
                self.state
                    .counters
                    .no_backend
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Error::explain(HTTPStatus(503), "no eligible backend"));
            }
            Err(Refusal::ClientGone) => {
                // Nobody to answer: logged as 499 with the refusal's reason.
                ctx.refusal = Some(Refusal::ClientGone.message());
                let mut e = Error::explain(ConnectionClosed, Refusal::ClientGone.message());
                e.esource = ErrorSource::Downstream;
                return Err(e);
            }
            Err(refusal) => {
                ctx.refusal = Some(refusal.message());
                return Err(Error::explain(HTTPStatus(503), refusal.message()));
            }
        };
        let backend = &snap.backends[choice.index];
        let Some(addr) = backend.addr else {
            // Unresolved backends are never eligible; keep this an error, not a panic.
            return Err(Error::explain(
                HTTPStatus(503),
                "backend address unresolved",
            ));
        };
        ctx.begin_attempt(choice, retried_from.as_deref());

        let t = &snap.config.timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.response);
        peer.options.write_timeout = Some(t.response);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.record(Outcome::Connect);
        ctx.last_timed_out = matches!(e.etype(), ConnectTimedout);
        if !ctx.last_timed_out {
            // Refused (or no route): immediate, and says nothing about the request.
            ctx.backend_gone();
        }
        // Nothing reached the backend: any method may go elsewhere.
        e.set_retry(Self::may_retry(session, ctx));
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::forwarding(req, ctx.client_ip, &ctx.request_id)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        let status = resp.status.as_u16();
        ctx.upstream_ttfb = Some(ctx.attempt_started.elapsed());
        ctx.record(Outcome::Status(status));
        let retry_status = ctx
            .snapshot
            .as_ref()
            .is_some_and(|s| s.config.retry.statuses.contains(&status));
        if retry_status
            && session.req_header().method.is_idempotent()
            && Self::may_retry(session, ctx)
            && untried_left(ctx)
        {
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
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.insert_header(headers::REQUEST_ID, &ctx.request_id)?;
        let (Some(snap), Some(i)) = (&ctx.snapshot, ctx.backend) else {
            return Ok(());
        };
        let stats = &snap.backends[i].stats;
        if let Some(h) = &snap.backend_header {
            resp.insert_header(h.clone(), stats.name_header.clone())?;
        }
        if ctx.set_cookie {
            if let crate::config::Sticky::Cookie(name) = &snap.sticky {
                resp.append_header("set-cookie", sticky::set_cookie(name, &stats.sticky_id))?;
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        // A pooled connection the backend had already closed fails while lb
        // writes the request header: nothing reached the backend, so even a POST
        // may go elsewhere. Any other failure may have reached it. (Checked
        // before `more_context`, which moves Pingora's context into the cause.)
        let nothing_sent = client_reused
            && matches!(e.etype(), WriteError | ConnectionClosed)
            && e.context
                .as_ref()
                .is_some_and(|c| c.as_str().contains("writing request header"));
        let mut e = e.more_context(format!("peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            return e; // already decided in upstream_response_filter
        }
        if e.esource() != &ErrorSource::Upstream {
            // The client went away or sent garbage: not the backend's fault.
            e.set_retry(false);
            return e;
        }
        let timed_out = matches!(e.etype(), ReadTimedout | WriteTimedout);
        // No response header for this attempt yet (`record` not called by
        // `upstream_response_filter`), and the connection broke: the backend
        // went away (killed, restarted) rather than answered.
        let gone = !ctx.recorded && matches!(e.etype(), ConnectionClosed | ReadError | WriteError);
        ctx.record(if timed_out {
            Outcome::Timeout
        } else {
            Outcome::Reset
        });
        let idempotent = session.req_header().method.is_idempotent();
        let may_resend = idempotent || nothing_sent;
        if may_resend && gone {
            ctx.backend_gone();
        }
        e.set_retry(may_resend && Self::may_retry(session, ctx));
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        errors::respond(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The request is over: its last attempt stops counting as in flight and
        // an unanswered half-open probe frees its slot.
        ctx.in_flight = None;
        ctx.permit = None;
        let snap = ctx
            .snapshot
            .clone()
            .unwrap_or_else(|| self.state.load_full());
        // No response written: the client went away first (nginx's 499).
        let status = session
            .response_written()
            .map_or(499, |r| r.status.as_u16());
        let req = session.req_header();
        log_request(
            &snap,
            ctx,
            status,
            req.method.as_str(),
            req.uri.path(),
            session.body_bytes_sent() as u64,
            // lb's own refusals by their reason, as the fast path logs them.
            ctx.refusal
                .or(ctx.no_backend.then_some("no eligible backend"))
                .or(e.map(|e| e.etype().as_str())),
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

/// `-` for a request without a client IP (a Unix socket), else the IP.
struct ClientIp(Option<IpAddr>);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Resolves when the client closes its connection while the request waits in
/// the queue (polled only then). Only a request whose body is complete (no
/// body, or a retry's already buffered one) can be watched: reading an unread
/// body here would consume it, so such a request waits until `queue.timeout`.
async fn client_gone(session: &mut Session) {
    if session.is_body_empty() || session.is_body_done() {
        // Err: the client closed (FIN) or reset. Bytes of a pipelined next
        // request are kept by Pingora and leave this pending.
        if session.read_body_or_idle(true).await.is_err() {
            return;
        }
    }
    std::future::pending().await
}

/// Ends a request's accounting, on either path: the backend's request metrics
/// and the one access-log event.
fn log_request(
    snap: &Snapshot,
    ctx: &Ctx,
    status: u16,
    method: &str,
    path: &str,
    bytes: u64,
    error: Option<&str>,
) {
    let total = ctx.started.elapsed();
    if let Some(i) = ctx.backend {
        snap.backends[i]
            .stats
            .metrics
            .observe(status, total.as_secs_f64());
    }
    if !snap.config.log.access {
        return;
    }
    let backend = ctx.backend.map_or("-", |i| &*snap.backends[i].stats.name);
    let upstream_ms = ctx.upstream_ttfb.map_or(-1.0, ms);
    let entry = crate::access_log::Entry {
        client: ctx.client_ip,
        method,
        path,
        status,
        backend,
        attempts: ctx.attempts,
        upstream_ms,
        total_ms: ms(total),
        bytes,
        request_id: &ctx.request_id,
        error,
    };
    if crate::access_log::write(&entry) {
        return;
    }
    tracing::info!(
        target: "access",
        client = %ClientIp(ctx.client_ip),
        method = %method,
        path = %path,
        status,
        backend = %backend,
        attempts = ctx.attempts,
        upstream_ms,
        total_ms = ms(total),
        bytes,
        request_id = %ctx.request_id,
        error,
    );
}
