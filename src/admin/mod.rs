//! The admin server on `admin.listen`: `GET /health`, `GET /metrics`, the
//! status page `GET /` (with its script and style) and `GET /history` (what
//! the page draws) open — read-only, the same facts as the metrics —
//! everything under `/admin/` behind `Authorization: Bearer <token>` (compared
//! in constant time; where it comes from: `token.rs`). JSON in and out;
//! responses carry an `ETag` (the state version) and mutations with a stale
//! `If-Match` get `412`. The listener has limits of its own (SPEC "Admin
//! hardening"): 64 connections and a 10 s head clock (`listener.rs`), 1 MiB
//! bodies within 10 s (`limits.rs`).

pub mod exposition;
mod handlers;
mod limits;
mod listener;
mod pool;
mod status;
mod token;

pub use limits::{BODY_TIMEOUT, MAX_BODY};
pub use listener::{HEAD_TIMEOUT, MAX_CONNECTIONS};
pub use token::{resolve_token, token, TokenSource};

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use subtle::ConstantTimeEq;

use crate::control::Control;
use crate::history::History;
use crate::pool::Pool;

#[derive(Clone)]
pub(crate) struct Shared {
    control: Arc<Control>,
    history: Arc<History>,
    pool: Option<Arc<Pool>>,
    token: Arc<str>,
}

/// The admin background service.
pub struct Admin {
    shared: Shared,
    listen: SocketAddr,
}

impl Admin {
    /// An admin server for `control` (and `pool`, if any) on `listen`,
    /// accepting `token`; the status page draws `history`.
    pub fn new(
        control: Arc<Control>,
        history: Arc<History>,
        pool: Option<Arc<Pool>>,
        token: String,
        listen: SocketAddr,
    ) -> Self {
        Admin {
            shared: Shared {
                control,
                history,
                pool,
                token: token.into(),
            },
            listen,
        }
    }

    /// The router (public for in-process tests).
    pub fn router(&self) -> Router {
        let admin = Router::new()
            .route(
                "/weights",
                get(handlers::get_weights).put(handlers::put_weights),
            )
            .route("/backends", get(handlers::get_backends))
            .route("/backends/{name}/mode", put(handlers::put_mode))
            .route(
                "/algorithm",
                get(handlers::get_algorithm).put(handlers::put_algorithm),
            )
            .route("/reload", post(handlers::reload))
            .route("/tls", get(handlers::get_tls))
            .route("/pool", get(pool::get_pool))
            .route("/pool/size", put(pool::put_size))
            .route("/pool/rollout", post(pool::post_rollout))
            .layer(middleware::from_fn_with_state(self.shared.clone(), auth));
        Router::new()
            .route("/", get(status::page))
            .route("/status.js", get(status::script))
            .route("/status.css", get(status::style))
            .route("/favicon.svg", get(status::icon))
            .route("/history", get(status::history))
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/metrics", get(handlers::metrics))
            .nest("/admin", admin)
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
            .method_not_allowed_fallback(|| async {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
            })
            .with_state(self.shared.clone())
            .layer(middleware::from_fn(limits::bounded))
    }
}

/// A JSON error response.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn auth(AxState(s): AxState<Shared>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(s.token.as_bytes())) {
        return next.run(req).await;
    }
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `If-Match` with RFC 9110's strong comparison: `None` when absent or `*`;
/// `Some(version)` for one of our ETags (`"<version>"`); `Some(0)`, never a
/// current version, for anything else, including a weak `W/"<version>"`
/// (a weak tag never matches strongly) and lists of tags.
pub(crate) fn if_match(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::IF_MATCH)?.to_str().unwrap_or("");
    let v = v.trim();
    if v == "*" {
        return None;
    }
    let strong = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    Some(strong.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Attaches `ETag: "<version>"`.
pub(crate) fn with_etag(mut r: Response, version: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, shutdown: ShutdownWatch) {
        match tokio::net::TcpListener::bind(self.listen).await {
            Ok(l) => self.serve(l, shutdown).await,
            Err(e) => tracing::error!(listen = %self.listen, error = %e, "admin: cannot listen"),
        }
    }
}

impl Admin {
    /// Serves the API on `listener` (bound to `admin.listen`, or handed
    /// over by the process lb upgraded from) until `shutdown`.
    pub async fn serve(&self, listener: tokio::net::TcpListener, mut shutdown: ShutdownWatch) {
        tracing::info!(listen = %self.listen, "admin API listening");
        let listener = listener::AdminListener::new(listener);
        let app = self
            .router()
            .into_make_service_with_connect_info::<listener::AdminConn>();
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin server stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(if_match(&h), Some(7));
        // Strong comparison: a weak tag never matches, even with our version.
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"8\""));
        assert_eq!(if_match(&h), Some(0));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\", \"8\""));
        assert_eq!(if_match(&h), Some(0));
        h.insert(header::IF_MATCH, HeaderValue::from_static("7"));
        assert_eq!(if_match(&h), Some(0));
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&h), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert_eq!(if_match(&h), Some(0));
    }
}
