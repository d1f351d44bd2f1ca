//! Fault injection for tests and demos: added delay, injected 500s, the
//! performance mode's extra latency and the max-concurrency limit, plus the
//! `/fault` endpoint that changes delay, error rate and the capacity model's
//! service time at run time (so a test can make a backend fail or slow down and
//! then recover it without a restart) and can make the app leak memory
//! (`leak_mb`, for lb's pool recycling).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::handlers::json_error;
use crate::{App, Mode};

/// Largest delay `/fault` and the CLI accept (10 minutes): more would only
/// look like a hang.
pub const MAX_DELAY_MS: u64 = 600_000;

/// Extra latency of [`Mode::Low`] on every `/api/*` request.
const LOW_MODE_DELAY: Duration = Duration::from_millis(25);

/// Checks an error rate: a number in 0.0..=1.0 (NaN is rejected).
pub fn validate_error_rate(r: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("error_rate must be between 0.0 and 1.0, got {r}"))
    }
}

/// Most memory `/fault` may leak in total: enough to cross any demo's
/// `max_memory`, not enough to take the machine down.
pub const MAX_LEAK_MB: u64 = 4096;

/// The run-time fault knobs; atomics so the hot path never takes a lock.
pub(crate) struct Faults {
    delay_ns: AtomicU64,
    /// `f64::to_bits` of the error rate.
    error_rate: AtomicU64,
    /// Memory held on purpose (`leak_mb`), never freed: a leaking app for the
    /// pool's memory recycling.
    leaked: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Faults {
    pub(crate) fn new(delay: Duration, error_rate: f64) -> Self {
        let f = Faults {
            delay_ns: AtomicU64::new(0),
            error_rate: AtomicU64::new(0),
            leaked: std::sync::Mutex::new(Vec::new()),
        };
        f.set_delay(delay);
        f.set_error_rate(error_rate);
        f
    }

    pub(crate) fn set_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.delay_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    /// Clamps into 0.0..=1.0; NaN becomes 0.0 (no failures) as the safe default.
    pub(crate) fn set_error_rate(&self, r: f64) {
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        self.error_rate.store(r.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    /// MiB leaked so far.
    pub(crate) fn leaked_mb(&self) -> u64 {
        let held = self.leaked.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().map(|b| b.len() as u64 >> 20).sum()
    }

    /// Allocates `mb` MiB more and keeps it. The bytes are written (not
    /// zero pages the kernel never backs), so resident memory grows.
    pub(crate) fn leak(&self, mb: u64) {
        let block = vec![0xA5u8; (mb as usize) << 20];
        self.leaked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(block);
    }
}

/// Endpoints that stay fast and truthful whatever the faults: a balancer must
/// still see health, scrapers metrics, and tests must be able to undo a fault.
pub(crate) fn is_control_path(path: &str) -> bool {
    matches!(path, "/health" | "/metrics" | "/fault")
}

/// The application endpoints that error rate, mode and max concurrency apply to.
pub(crate) fn is_api_path(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Middleware: max concurrency (503 at once), then a worker of the capacity
/// model (queued FIFO, held for the service time), then delay, then injected
/// 500s. The concurrency permit is held across everything after it, so a
/// delayed or queued request keeps its slot, which is what makes "second
/// concurrent request gets 503" testable.
pub(crate) async fn inject(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_control_path(path) {
        return next.run(req).await;
    }
    let api = is_api_path(path);

    let _permit = match (&app.api_slots, api) {
        (Some(slots), true) => match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let mut resp = json_error(
                    &app,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many concurrent requests",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
        },
        _ => None,
    };
    if api && app.capacity.is_active() {
        let pool = Arc::clone(&app);
        return pool
            .capacity
            .serve(delay_then_fail(app, api, req, next))
            .await;
    }
    delay_then_fail(app, api, req, next).await
}

/// The delay (plus low mode's), then maybe an injected 500, then the handler.
async fn delay_then_fail(app: Arc<App>, api: bool, req: Request, next: Next) -> Response {
    let mut delay = app.faults.delay();
    if api && app.mode == Mode::Low {
        delay += LOW_MODE_DELAY;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let rate = app.faults.error_rate();
    if api && rate > 0.0 && rand::random::<f64>() < rate {
        tracing::debug!(container = %app.id, path = %req.uri().path(), "injected failure");
        return json_error(&app, StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
    }
    next.run(req).await
}

/// Body of `PUT /fault`; every field optional, unknown fields rejected so a typo
/// is an error rather than a silent no-op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultUpdate {
    delay_ms: Option<u64>,
    error_rate: Option<f64>,
    service_time_ms: Option<u64>,
    /// MiB to allocate and hold (adds to earlier leaks).
    leak_mb: Option<u64>,
}

/// The fault knobs now in force.
fn current(app: &App) -> Response {
    Json(json!({
        "container": app.id,
        "delay_ms": u64::try_from(app.faults.delay().as_millis()).unwrap_or(u64::MAX),
        "error_rate": app.faults.error_rate(),
        "service_time_ms": app.capacity.service_time().as_secs_f64() * 1e3,
        "workers": app.capacity.workers(),
        "leaked_mb": app.faults.leaked_mb(),
    }))
    .into_response()
}

/// `GET /fault`: the fault knobs now in force.
pub(crate) async fn get_fault(State(app): State<Arc<App>>) -> Response {
    current(&app)
}

/// `PUT /fault`: validate everything first, then apply, so a bad request
/// changes nothing. The body is parsed whatever its Content-Type, so a bare
/// `curl -X PUT -d '{...}'` works.
pub(crate) async fn put_fault(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let update: FaultUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return json_error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("invalid fault JSON: {e}"),
            )
        }
    };
    if let Some(r) = update.error_rate {
        if let Err(e) = validate_error_rate(r) {
            return json_error(&app, StatusCode::BAD_REQUEST, e);
        }
    }
    for (key, value) in [
        ("delay_ms", update.delay_ms),
        ("service_time_ms", update.service_time_ms),
    ] {
        if let Some(ms) = value.filter(|ms| *ms > MAX_DELAY_MS) {
            return json_error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("{key} must be at most {MAX_DELAY_MS}, got {ms}"),
            );
        }
    }
    if let Some(mb) = update.leak_mb {
        if app.faults.leaked_mb() + mb > MAX_LEAK_MB {
            return json_error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("leak_mb: at most {MAX_LEAK_MB} MiB in total may leak"),
            );
        }
    }
    if let Some(ms) = update.delay_ms {
        app.faults.set_delay(Duration::from_millis(ms));
    }
    if let Some(ms) = update.service_time_ms {
        app.capacity.set_service_time(Duration::from_millis(ms));
    }
    if let Some(mb) = update.leak_mb {
        app.faults.leak(mb);
    }
    if let Some(r) = update.error_rate {
        app.faults.set_error_rate(r);
    }
    tracing::info!(
        container = %app.id,
        delay_ms = ?update.delay_ms,
        error_rate = ?update.error_rate,
        service_time_ms = ?update.service_time_ms,
        leak_mb = ?update.leak_mb,
        "faults changed"
    );
    current(&app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_validation() {
        assert_eq!(validate_error_rate(0.0), Ok(0.0));
        assert_eq!(validate_error_rate(1.0), Ok(1.0));
        assert!(validate_error_rate(1.01).is_err());
        assert!(validate_error_rate(-0.1).is_err());
        assert!(validate_error_rate(f64::NAN).is_err());
    }

    #[test]
    fn knobs_round_trip() {
        let f = Faults::new(Duration::from_millis(5), 0.25);
        assert_eq!(f.delay(), Duration::from_millis(5));
        assert_eq!(f.error_rate(), 0.25);
        f.set_delay(Duration::MAX);
        assert_eq!(f.delay(), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn leaks_are_held_and_resident() {
        let f = Faults::new(Duration::ZERO, 0.0);
        f.leak(2);
        f.leak(1);
        assert_eq!(f.leaked_mb(), 3);
    }

    #[test]
    fn path_classes() {
        assert!(is_control_path("/health"));
        assert!(!is_control_path("/healthz"));
        assert!(is_api_path("/api/whoami"));
        assert!(!is_api_path("/apiary"));
    }
}
