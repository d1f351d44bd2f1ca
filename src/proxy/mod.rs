//! The Pingora `ProxyHttp` implementation: per-request context, backend
//! selection, forwarding headers, outcome accounting and error responses.
//!
//! Hook order per request (PINGORA.md §1): `request_filter` → (`upstream_peer` →
//! connect → `upstream_request_filter` → `upstream_response_filter`)+ →
//! `response_filter` → body → `logging`. The context pins one [`Snapshot`] for the
//! whole request, so every attempt is routed by one complete weight map even while
//! the admin API swaps it.

mod errors;
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

use crate::balancer::{Mask, FAILURE_PENALTY};
use crate::state::{BackendStats, InFlight, Snapshot, State};
use crate::sticky;

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

/// Counts a request as active for graceful shutdown until the context drops.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How one attempt at a backend ended, for its stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Response header received with this status.
    Status(u16),
    /// Connect error, timeout, reset: the backend failed us.
    Failed,
}

/// Per-request state; lives across retries.
pub struct Ctx {
    _active: Active,
    request_id: String,
    started: Instant,
    client_ip: Option<IpAddr>,
    snapshot: Option<Arc<Snapshot>>,
    /// Backends this request already tried.
    tried: Mask,
    attempts: u32,
    /// Current attempt: backend index, its in-flight guard, when it started.
    backend: Option<usize>,
    in_flight: Option<InFlight>,
    attempt_started: Instant,
    /// Whether the current attempt's outcome was recorded in its stats.
    recorded: bool,
    set_cookie: bool,
    no_backend: bool,
    /// Whether the last failed attempt was a timeout (504 rather than 502).
    last_timed_out: bool,
    upstream_ttfb: Option<Duration>,
}

impl Ctx {
    fn backend_stats(&self) -> Option<&Arc<BackendStats>> {
        self.in_flight.as_ref().map(InFlight::stats)
    }

    /// Records the current attempt's outcome once (first report wins).
    fn record(&mut self, outcome: Outcome) {
        if self.recorded {
            return;
        }
        let Some(stats) = self.backend_stats() else {
            return;
        };
        let now = Instant::now();
        let took = now.saturating_duration_since(self.attempt_started);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        stats
            .latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        // Connect errors, timeouts, 5xx and 429 count as slow (SPEC least_time),
        // so a backend failing fast never looks attractive.
        let slow = match outcome {
            Outcome::Status(s) => s >= 500 || s == 429,
            Outcome::Failed => true,
        };
        if matches!(outcome, Outcome::Failed | Outcome::Status(500..)) {
            stats.errors_total.fetch_add(1, Ordering::Relaxed);
        }
        let sample = if slow {
            took.max(FAILURE_PENALTY)
        } else {
            took
        };
        stats.ewma.observe(sample, now);
        self.recorded = true;
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let now = Instant::now();
        self.active.fetch_add(1, Ordering::AcqRel);
        Ctx {
            _active: Active(self.active.clone()),
            request_id: String::new(),
            started: now,
            client_ip: None,
            snapshot: None,
            tried: 0,
            attempts: 0,
            backend: None,
            in_flight: None,
            attempt_started: now,
            recorded: true,
            set_cookie: false,
            no_backend: false,
            last_timed_out: false,
            upstream_ttfb: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = headers::request_id(session);
        ctx.client_ip = headers::client_ip(session);
        if headers::has_cl_and_te(session) {
            // Request smuggling vector: refuse before any backend sees it.
            return Err(Error::explain(
                HTTPStatus(400),
                "both Content-Length and Transfer-Encoding",
            ));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx
            .snapshot
            .get_or_insert_with(|| self.state.load_full())
            .clone();
        let now = Instant::now();
        let mut key_buf = [0u8; 16];
        let key: &[u8] = match ctx.client_ip {
            Some(IpAddr::V4(a)) => {
                key_buf[..4].copy_from_slice(&a.octets());
                &key_buf[..4]
            }
            Some(IpAddr::V6(a)) => {
                key_buf = a.octets();
                &key_buf
            }
            None => &[],
        };
        let headers = &session.req_header().headers;
        // Each retry goes to a backend not yet tried when one exists, else to
        // any eligible one again.
        let choice = sticky::choose(&snap, headers, ctx.tried, key, now).or_else(|| {
            (ctx.attempts > 0)
                .then(|| sticky::choose(&snap, headers, 0, key, now))
                .flatten()
        });
        let Some(choice) = choice else {
            if ctx.attempts > 0 {
                // All attempts failed and nothing is left: report the last failure.
                let code = if ctx.last_timed_out { 504 } else { 502 };
                return Err(Error::explain(HTTPStatus(code), "all attempts failed"));
            }
            ctx.no_backend = true;
            return Err(Error::explain(HTTPStatus(503), "no eligible backend"));
        };
        let backend = &snap.backends[choice.index];
        let Some(addr) = backend.addr else {
            // `choose` only returns resolved backends; keep this an error, not a panic.
            return Err(Error::explain(
                HTTPStatus(503),
                "backend address unresolved",
            ));
        };
        ctx.tried |= 1 << choice.index;
        ctx.attempts += 1;
        ctx.backend = Some(choice.index);
        ctx.set_cookie = choice.set_cookie;
        // Replacing the guard ends the previous attempt's in-flight count.
        ctx.in_flight = Some(InFlight::start(&backend.stats));
        ctx.attempt_started = now;
        ctx.recorded = false;

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
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.record(Outcome::Failed);
        ctx.last_timed_out = matches!(e.etype(), ConnectTimedout);
        // Nothing reached the backend: safe to retry any method elsewhere.
        let max = ctx.snapshot.as_ref().map_or(1, |s| s.config.retry.attempts);
        if ctx.attempts < max {
            e.set_retry(true);
        }
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
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() {
            return Ok(());
        }
        ctx.upstream_ttfb = Some(ctx.attempt_started.elapsed());
        ctx.record(Outcome::Status(resp.status.as_u16()));
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
            resp.insert_header(h.clone(), &*stats.name)?;
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
        if e.esource() == &ErrorSource::Upstream {
            ctx.record(Outcome::Failed);
            ctx.last_timed_out = matches!(e.etype(), ReadTimedout | WriteTimedout);
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        // Pingora's default policy: idempotent requests with a fully buffered body
        // may retry when the (reused) connection failed.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        errors::respond(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The request is over: its last attempt stops counting as in flight.
        ctx.in_flight = None;
        let snap = ctx
            .snapshot
            .clone()
            .unwrap_or_else(|| self.state.load_full());
        if !snap.config.log.access {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let backend = ctx.backend.map_or("-", |i| &*snap.backends[i].stats.name);
        let req = session.req_header();
        tracing::info!(
            target: "access",
            client = %ctx.client_ip.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            method = %req.method,
            path = %req.uri.path(),
            status,
            backend,
            attempts = ctx.attempts,
            upstream_ms = ctx.upstream_ttfb.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            total_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            bytes = session.body_bytes_sent(),
            request_id = %ctx.request_id,
            error = e.map(|e| e.etype().as_str()),
        );
    }
}
