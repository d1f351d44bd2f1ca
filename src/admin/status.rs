//! The live status page: `GET /` (HTML with a first rendering of the table, so
//! it says something even without scripts), `GET /status.js` and
//! `GET /status.css` and `GET /favicon.svg` (the page's only assets, compiled into the binary: it
//! works offline), and `GET /history` (the JSON it polls once a second).
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles and
//! fetches from this origin only, no inline script or style, no framing, no
//! form posts. The page's weight, mode and algorithm controls ask for the admin
//! token, keep it in the tab's `sessionStorage` only, and send it as a bearer
//! token to the ordinary `/admin/` endpoints; the page itself needs none.

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Shared;
use crate::history::{unix_ms, BackendView};

const PAGE: &str = include_str!("status/page.html");
const SCRIPT: &str = include_str!("status/status.js");
const STYLE: &str = include_str!("status/status.css");
/// Without an icon of its own the browser asks for /favicon.ico and logs a 404.
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
                    <rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1f77b4\"/>\
                    <path d=\"M4 4v8h3M9 4v8h2a2 2 0 0 0 0-4H9\" stroke=\"#fff\" \
                    fill=\"none\" stroke-width=\"1.6\"/></svg>";

/// The policy on every status-page answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    r
}

/// Escapes text for HTML (backend names and addresses are validated, but the
/// page should not depend on that).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn row(b: &BackendView) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
    format!(
        "<tr data-backend=\"{n}\"><td>{n}<div class=\"addr\">{a}</div></td>\
         <td class=\"{h}\">{h}</td><td class=\"{c}\">{c}</td><td>{m}</td><td>{w}</td>\
         <td>{e}</td><td>{f}</td><td>{r:.1}</td><td>{er:.2} %</td><td>{p50}</td><td>{p99}</td>\
         <td></td></tr>",
        n = esc(&b.name),
        a = esc(&b.addr),
        h = b.health,
        c = b.circuit,
        m = b.mode,
        w = b.weight,
        e = b.effective_weight,
        f = b.in_flight,
        r = b.window.rps,
        er = b.window.error_rate * 100.0,
        p50 = ms(b.window.p50_ms),
        p99 = ms(b.window.p99_ms),
    )
}

/// `GET /`.
pub(super) async fn page(State(s): State<Shared>) -> Response {
    let view = s.history.view(&s.control.state, Instant::now(), unix_ms());
    let rows: String = view.backends.iter().map(row).collect();
    let body = PAGE
        .replace("{{ALGORITHM}}", view.algorithm)
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
        .replace("{{COUNT}}", &view.backends.len().to_string())
        .replace("{{QUEUED}}", &view.queue.depth.to_string())
        .replace("{{ROWS}}", &rows)
        .replace(
            "{{POOL}}",
            &s.pool.as_deref().map(pool_section).unwrap_or_default(),
        );
    with_headers("text/html; charset=utf-8", body)
}

/// The pool's part of the page (when lb owns a `[pool]`): size, counters, one
/// row per member, as of the page load (`GET /admin/pool` has it live).
fn pool_section(p: &crate::pool::Pool) -> String {
    use std::fmt::Write;
    let v = p.view();
    let mut rows = String::new();
    for m in &v.members {
        let mem = m
            .memory_bytes
            .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1048576.0));
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{mem}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.name),
            esc(&m.addr),
            m.state.as_str(),
            m.age_s,
            m.in_flight,
            m.requests_total,
        );
    }
    let rollout = v.rollout.as_ref().map_or(String::new(), |r| {
        format!(" &middot; rollout {:?} {}/{}", r.state, r.done, r.total)
    });
    format!(
        "<h2>pool ({})</h2><p>size <b>{}</b> ({}..={}) &middot; started {} &middot; replaced {} \
         &middot; recycled age {} memory {} &middot; scaled up {} down {}{rollout}</p>\
         <table><tr><th>member</th><th>addr</th><th>state</th><th>age s</th><th>MiB</th>\
         <th>in flight</th><th>requests</th></tr>{rows}</table>",
        v.provider,
        v.size,
        v.min_size,
        v.max_size,
        v.started_total,
        v.replaced_total,
        v.recycled_total.age,
        v.recycled_total.memory,
        v.scaled_up_total,
        v.scaled_down_total,
    )
}

/// `GET /status.js`.
pub(super) async fn script() -> Response {
    with_headers("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /status.css`.
pub(super) async fn style() -> Response {
    with_headers("text/css; charset=utf-8", STYLE)
}

/// `GET /favicon.svg`.
pub(super) async fn icon() -> Response {
    with_headers("image/svg+xml", ICON)
}

/// `GET /history`: see [`crate::history::HistoryView`].
pub(super) async fn history(State(s): State<Shared>) -> Response {
    let view = s.history.view(&s.control.state, Instant::now(), unix_ms());
    with_headers("application/json", Json(view))
}
