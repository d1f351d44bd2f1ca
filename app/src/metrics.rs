//! Per-App Prometheus metrics (never the global default registry: tests run
//! several apps in one process), the outermost middleware that counts every
//! request, and the `/metrics` endpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::faults::is_control_path;
use crate::App;

/// Response header naming the container that answered (also in JSON bodies as
/// `container`), so a test can tell the apps apart whatever the endpoint.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Path label for requests that matched no route, so junk paths cannot blow up
/// the label cardinality.
const UNMATCHED: &str = "unmatched";

/// Latency buckets in seconds, finer than the defaults at the low end because
/// most answers here take well under 5 ms.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The app's collectors and the registry that owns them.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl Metrics {
    /// Builds and registers every collector. This can only fail on a bad or
    /// duplicate metric name, a programming error caught by every test run.
    pub(crate) fn new() -> Self {
        Self::build().expect("static metric definitions are valid")
    }

    fn build() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "app_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "path", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "app_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["path"],
        )?;
        let in_flight = IntGauge::new("app_in_flight", "HTTP requests being handled")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        // process_* (CPU, RSS, open fds, start time) read from /proc/self.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            in_flight,
        })
    }

    /// Everything in the registry, in the Prometheus text format.
    fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

/// Bounds the method label to the standard methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Keeps the in-flight count right even when the client goes away and the
/// request future is dropped half-way.
struct InFlightGuard(Arc<App>);

impl InFlightGuard {
    fn enter(app: &Arc<App>) -> Self {
        app.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        app.metrics.in_flight.inc();
        InFlightGuard(Arc::clone(app))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

/// In-flight count of application requests, with its high-water mark.
struct ApiInFlight(Arc<App>);

impl ApiInFlight {
    fn enter(app: &Arc<App>) -> Self {
        let now = app.counters.api_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        app.counters
            .api_in_flight_max
            .fetch_max(now, Ordering::SeqCst);
        ApiInFlight(Arc::clone(app))
    }
}

impl Drop for ApiInFlight {
    fn drop(&mut self) {
        self.0.counters.api_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Outermost middleware: counts on arrival (so requests the fault layer rejects
/// are counted), tracks in-flight, records status and latency by route template,
/// and names the app in `x-served-by` on every response (gRPC ones included).
/// While shutting down it adds `Connection: close` so keep-alive clients move on
/// (HTTP/2 drops it; its connections get a GOAWAY from the graceful shutdown).
pub(crate) async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path();
    app.counters.requests.fetch_add(1, Ordering::Relaxed);
    if !is_control_path(path) {
        app.counters.api_requests.fetch_add(1, Ordering::Relaxed);
    }
    if req.method() == Method::POST {
        app.counters.posts.fetch_add(1, Ordering::Relaxed);
    }

    let _guard = InFlightGuard::enter(&app);
    let _api = (!is_control_path(path)).then(|| ApiInFlight::enter(&app));
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let elapsed = start.elapsed().as_secs_f64();

    let status = resp.status();
    app.metrics
        .requests
        .with_label_values(&[method, route.as_str(), status.as_str()])
        .inc();
    app.metrics
        .duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed);
    if let Some(id) = &app.served_by {
        resp.headers_mut().insert(SERVED_BY, id.clone());
    }
    if app.is_shutting_down() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `GET /metrics`: the Prometheus text exposition of this app's registry.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}
