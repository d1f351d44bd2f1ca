//! The end of a request on every path: the backend's request metrics and
//! the one access-log event.

use std::net::IpAddr;
use std::time::Duration;

use super::ctx::Ctx;
use crate::state::Snapshot;

/// Milliseconds with microsecond precision, for the access log.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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

/// Ends a request's accounting, on either path: the backend's request metrics
/// and the one access-log event.
pub fn log_request(
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
        proto: ctx.proto,
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
        proto = ctx.proto,
    );
}
