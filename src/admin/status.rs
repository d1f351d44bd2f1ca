//! The live status page: `GET /` (HTML with a first rendering of the table, so
//! it says something even without scripts), `GET /status.js` and
//! `GET /status.css` and `GET /favicon.svg` (the page's only assets, compiled into the binary: it
//! works offline), and `GET /history` (the JSON it polls once a second).
//! Besides the backends (a slow-starting one marked "ramping" with its share)
//! it shows lb's queue, the `[pool]` and, with `[tls]`, each certificate and
//! its days left (highlighted under `tls::certs::WARN_DAYS`).
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
use crate::history::{unix_ms, BackendView, CertView};
use crate::pool::view::{MemberView, PoolView};

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

/// "ramping 35 %" while `b` is in its slow start (the script writes the same).
fn ramp(b: &BackendView) -> String {
    if b.slow_start_ratio < 1.0 {
        format!(
            " <span class=\"ramp\">ramping {} %</span>",
            (b.slow_start_ratio * 100.0).floor()
        )
    } else {
        String::new()
    }
}

fn row(b: &BackendView) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
    format!(
        "<tr data-backend=\"{n}\"><td>{n}{ramp}<div class=\"addr\">{a}</div></td>\
         <td class=\"{h}\">{h}</td><td class=\"{c}\">{c}</td><td>{m}</td><td>{w}</td>\
         <td>{e}</td><td>{f}</td><td>{r:.1}</td><td>{er:.2} %</td><td>{p50}</td><td>{p99}</td>\
         <td></td></tr>",
        n = esc(&b.name),
        ramp = ramp(b),
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

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "–".to_string(),
        |b| format!("{:.1} MiB", b as f64 / 1048576.0),
    )
}

/// The pool's line above its table (the script writes the same).
fn pool_summary(v: &PoolView) -> String {
    let rollout = v.rollout.as_ref().map_or(String::new(), |r| {
        format!(
            " · rollout {} {}/{}",
            serde_json::to_value(r.state)
                .unwrap_or_default()
                .as_str()
                .unwrap_or(""),
            r.done,
            r.total
        )
    });
    format!(
        "{} · size {} ({}..={}) · started {} · replaced {} · recycled {} age, {} memory · scaled up {}, down {}{rollout}",
        v.provider, v.size, v.min_size, v.max_size, v.started_total, v.replaced_total,
        v.recycled_total.age, v.recycled_total.memory, v.scaled_up_total, v.scaled_down_total,
    )
}

fn pool_row(m: &MemberView) -> String {
    format!(
        "<tr><td>{n}<div class=\"addr\">{a}</div></td><td class=\"{s}\">{s}</td><td>{age} s</td>\
         <td>{mem}</td><td>{f}</td><td>{r}</td></tr>",
        n = esc(&m.name),
        a = esc(&m.addr),
        s = m.state.as_str(),
        age = m.age_s,
        mem = mib(m.memory_bytes),
        f = m.in_flight,
        r = m.requests_total,
    )
}

/// "12 days" (the script writes the same).
fn days(n: i64) -> String {
    match n {
        1 => "1 day".to_string(),
        n if n < 0 => "expired".to_string(),
        n => format!("{n} days"),
    }
}

fn cert_row(c: &CertView) -> String {
    format!(
        "<tr{x}><td>{n}<div class=\"addr\">{i}</div></td><td>{t}</td>\
         <td class=\"num days\">{d}</td><td>{s}</td></tr>",
        x = if c.expiring {
            " class=\"expiring\""
        } else {
            ""
        },
        n = esc(&c.names.join(", ")),
        i = esc(&c.issuer),
        t = esc(&c.not_after),
        d = days(c.days_left),
        s = c.source,
    )
}

/// `GET /`.
pub(super) async fn page(State(s): State<Shared>) -> Response {
    let view = s.history.view(&s.control.state, Instant::now(), unix_ms());
    let rows: String = view.backends.iter().map(row).collect();
    let (certs_hidden, cert_rows) = match &view.certificates {
        Some(c) => ("", c.iter().map(cert_row).collect()),
        None => (" hidden", String::new()),
    };
    let pool = s.pool.as_ref().map(|p| p.view());
    let (hidden, summary, pool_rows) = match &pool {
        Some(v) => (
            "",
            pool_summary(v),
            v.members.iter().map(pool_row).collect(),
        ),
        None => (" hidden", String::new(), String::new()),
    };
    let body = PAGE
        .replace("{{POOL_HIDDEN}}", hidden)
        .replace("{{POOL_SUMMARY}}", &esc(&summary))
        .replace("{{POOL_ROWS}}", &pool_rows)
        .replace("{{CERTS_HIDDEN}}", certs_hidden)
        .replace("{{CERT_ROWS}}", &cert_rows)
        .replace("{{ALGORITHM}}", view.algorithm)
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
        .replace("{{COUNT}}", &view.backends.len().to_string())
        .replace("{{QUEUED}}", &view.queue.depth.to_string())
        .replace("{{ROWS}}", &rows);
    with_headers("text/html; charset=utf-8", body)
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

/// `GET /history`: see [`crate::history::HistoryView`]; with a `[pool]`,
/// also `"pool"`: the body of `GET /admin/pool`.
pub(super) async fn history(State(s): State<Shared>) -> Response {
    let view = s.history.view(&s.control.state, Instant::now(), unix_ms());
    let Some(pool) = &s.pool else {
        return with_headers("application/json", Json(view));
    };
    let mut body = serde_json::to_value(view).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert(
            "pool".into(),
            serde_json::to_value(pool.view()).unwrap_or_default(),
        );
    }
    with_headers("application/json", Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_read_as_words() {
        assert_eq!(days(30), "30 days");
        assert_eq!(days(1), "1 day");
        assert_eq!(days(0), "0 days");
        assert_eq!(days(-1), "expired");
    }

    #[test]
    fn a_certificate_under_two_weeks_is_highlighted() {
        let cert = |days_left: i64| CertView {
            names: vec!["a.test".into(), "<b>.test".into()],
            not_after: "2030-01-01T00:00:00Z".into(),
            days_left,
            expiring: days_left < crate::tls::certs::WARN_DAYS,
            issuer: "CN=test CA".into(),
            source: "file",
        };
        let soon = cert_row(&cert(13));
        assert!(soon.starts_with("<tr class=\"expiring\">"), "{soon}");
        assert!(soon.contains("a.test, &lt;b&gt;.test"), "{soon}");
        assert!(soon.contains(">13 days<"), "{soon}");
        assert!(cert_row(&cert(14)).starts_with("<tr><td>"));
    }
}
