//! The router and the HTTP endpoints: `/health`, `/api/whoami`, `/api/session`,
//! `/api/data/{client_id}`, `/api/load-test`, `/api/echo`, plus the JSON 404;
//! the gRPC service `lb.demo.Echo` (see `grpc`) is routed here too.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tonic::server::NamedService;

use crate::grpc::{EchoServer, EchoService};
use crate::work::{self, Record};
use crate::{faults, metrics, App, Mode};

/// Most sessions `/api/session` remembers; the oldest is forgotten beyond that.
pub const SESSION_CAPACITY: usize = 100_000;
/// Most client ids `/api/data` caches; the oldest is dropped beyond that.
pub const DATA_CACHE_CAPACITY: usize = 10_000;
/// How long `/api/data` serves a client's data from the cache.
pub const DATA_TTL: Duration = Duration::from_secs(60);
/// Largest `iterations` `/api/load-test` accepts (before the mode's scaling).
pub const MAX_ITERATIONS: u64 = 5_000_000;

/// `/api/load-test` work when no `iterations` is given.
const DEFAULT_ITERATIONS: u64 = 1_000;
/// Longest session id or client id kept, so keys stay small in the bounded maps.
const MAX_KEY_LEN: usize = 256;
const SESSION_HEADER: &str = "x-session-id";

/// One cached `/api/data` answer.
pub(crate) struct CachedData {
    created: Instant,
    generated_at: String,
    records: Arc<Vec<Record>>,
}

/// Builds the router: endpoints, then the fault layer, then the counting layer
/// outermost (so everything the fault layer rejects is still counted). The
/// fallback is set before the layers so unknown paths are counted too. gRPC
/// calls are routed by service name, as tonic's own router does.
pub(crate) fn router(app: &Arc<App>) -> Router {
    let grpc_route = format!("/{}/{{*method}}", EchoServer::<EchoService>::NAME);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/fault", get(faults::get_fault).put(faults::put_fault))
        .route("/api/whoami", get(whoami))
        .route("/api/session", post(session))
        .route("/api/data/{client_id}", get(data))
        .route("/api/load-test", get(load_test))
        .route("/api/echo", any(echo))
        .route_service(&grpc_route, EchoService::server(app))
        .fallback(not_found)
        .layer(from_fn_with_state(Arc::clone(app), faults::inject))
        .layer(from_fn_with_state(Arc::clone(app), metrics::track))
        .with_state(Arc::clone(app))
}

/// A JSON error body `{"error": msg, "container": id}` with `status`.
pub(crate) fn json_error(app: &App, status: StatusCode, msg: impl Into<String>) -> Response {
    let body = json!({ "error": msg.into(), "container": app.id });
    (status, Json(body)).into_response()
}

fn uptime_s(app: &App) -> f64 {
    app.started.elapsed().as_secs_f64()
}

/// `GET /health`: 200 healthy, or 503 once shutdown began. `in_flight` includes
/// this probe itself; `workers`, `busy` and `queued` describe the capacity model
/// (all 0 without a worker pool).
async fn health(State(app): State<Arc<App>>) -> Response {
    let (status, text) = if app.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else {
        (StatusCode::OK, "healthy")
    };
    let body = json!({
        "status": text,
        "container": app.id,
        "uptime_s": uptime_s(&app),
        "in_flight": app.in_flight(),
        "workers": app.capacity.workers(),
        "busy": app.capacity.busy(),
        "queued": app.capacity.queued(),
    });
    (status, Json(body)).into_response()
}

/// `GET /api/whoami`: who answered. `timestamp` is RFC 3339 UTC with
/// milliseconds; `timestamp_ms` is the same instant as Unix milliseconds.
async fn whoami(State(app): State<Arc<App>>) -> Response {
    let ms = work::unix_ms();
    Json(json!({
        "container": app.id,
        "pid": std::process::id(),
        "hostname": app.hostname,
        "timestamp": work::rfc3339_ms(ms),
        "timestamp_ms": ms,
    }))
    .into_response()
}

/// `POST /api/session`: counts requests per `X-Session-Id`. Without the header
/// (or with an empty one) a new random id starts at 1. The id is echoed in the
/// `X-Session-Id` response header so a client can keep it.
async fn session(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let given = match headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(s) if s.trim().is_empty() => None,
            Ok(s) if s.len() <= MAX_KEY_LEN => Some(s.trim().to_owned()),
            _ => {
                return json_error(
                    &app,
                    StatusCode::BAD_REQUEST,
                    format!("X-Session-Id must be visible ASCII, at most {MAX_KEY_LEN} bytes"),
                )
            }
        },
    };
    let id = given.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let count = {
        let mut sessions = app.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get_mut(&id) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => {
                sessions.insert(id.clone(), 1);
                1
            }
        }
    };
    let header = HeaderValue::from_str(&id).ok();
    let body = Json(json!({ "sessionId": id, "container": app.id, "requestCount": count }));
    let mut resp = body.into_response();
    if let Some(v) = header {
        resp.headers_mut()
            .insert(HeaderName::from_static(SESSION_HEADER), v);
    }
    resp
}

/// `GET /api/data/{client_id}`: deterministic records for the client, cached
/// for [`DATA_TTL`]; `cached` tells whether this answer came from the cache.
async fn data(
    State(app): State<Arc<App>>,
    client_id: Result<Path<String>, PathRejection>,
) -> Response {
    let client_id = match client_id {
        Ok(Path(id)) if !id.is_empty() && id.len() <= MAX_KEY_LEN => id,
        Ok(_) => {
            return json_error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("client_id must be 1 to {MAX_KEY_LEN} bytes"),
            )
        }
        Err(e) => return json_error(&app, StatusCode::BAD_REQUEST, e.body_text()),
    };
    let (cached, generated_at, records) = {
        let mut cache = app
            .data_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match cache.get(&client_id) {
            Some(c) if c.created.elapsed() < DATA_TTL => {
                (true, c.generated_at.clone(), Arc::clone(&c.records))
            }
            _ => {
                // Generation is a few microseconds: fine to do under the lock,
                // and it keeps two racing misses from both generating.
                let entry = CachedData {
                    created: Instant::now(),
                    generated_at: work::rfc3339_ms(work::unix_ms()),
                    records: Arc::new(work::generate_records(&client_id)),
                };
                let out = (
                    false,
                    entry.generated_at.clone(),
                    Arc::clone(&entry.records),
                );
                cache.insert(client_id.clone(), entry);
                out
            }
        }
    };
    Json(json!({
        "container": app.id,
        "clientId": client_id,
        "cached": cached,
        "generatedAt": generated_at,
        "records": *records,
    }))
    .into_response()
}

/// Query of `/api/load-test`; `iterations` is parsed by hand for a JSON error.
#[derive(Deserialize)]
struct LoadTestQuery {
    iterations: Option<String>,
}

/// `GET /api/load-test?iterations=N`: N rounds of hashing on the blocking pool
/// (so the runtime's workers keep serving). Low mode doubles the work, high mode
/// halves it; `iterations` echoes N and `work_iterations` the rounds done.
async fn load_test(
    State(app): State<Arc<App>>,
    query: Result<Query<LoadTestQuery>, QueryRejection>,
) -> Response {
    let raw = match query {
        Ok(Query(q)) => q.iterations,
        Err(e) => return json_error(&app, StatusCode::BAD_REQUEST, e.body_text()),
    };
    let iterations = match raw.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_ITERATIONS,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= MAX_ITERATIONS => n,
            _ => {
                return json_error(
                    &app,
                    StatusCode::BAD_REQUEST,
                    format!("iterations must be an integer from 0 to {MAX_ITERATIONS}"),
                )
            }
        },
    };
    let work_iterations = match app.mode {
        Mode::Low => iterations * 2,
        Mode::Normal => iterations,
        Mode::High => iterations.div_ceil(2),
    };
    let start = Instant::now();
    let seed = work::unix_ms();
    let result =
        match tokio::task::spawn_blocking(move || work::burn_cpu(work_iterations, seed)).await {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    &app,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("load test failed: {e}"),
                )
            }
        };
    Json(json!({
        "container": app.id,
        "iterations": iterations,
        "work_iterations": work_iterations,
        "mode": app.mode.as_str(),
        "result": format!("{result:016x}"),
        "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
    }))
    .into_response()
}

/// `ANY /api/echo`: the request as the app saw it, for lb's header tests.
/// Header names are lowercase; repeated headers are joined with ", ".
async fn echo(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), joined);
    }
    Json(json!({
        "container": app.id,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query().unwrap_or(""),
        "headers": map,
        "body_bytes": body.len(),
    }))
    .into_response()
}

/// Fallback: a JSON 404, so every answer of the app is JSON.
async fn not_found(State(app): State<Arc<App>>, uri: Uri) -> Response {
    json_error(
        &app,
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}
