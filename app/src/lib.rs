//! `app`: the demo backend that plays the app containers behind `lb` in demos,
//! tests and benchmarks.
//!
//! Map of the crate:
//! - this file: [`Mode`], [`Options`], the shared state [`App`] (counters, caches,
//!   fault knobs) and [`serve`] (graceful, k8s-style shutdown);
//! - `handlers`: the HTTP endpoints (`/health`, `/api/*`) and the router;
//! - [`grpc`]: the gRPC echo service `lb.demo.Echo` and the client lb's tests use;
//! - `faults`: fault injection (delay, error rate, max concurrency, mode) and `/fault`;
//! - `capacity`: the worker-pool model (N workers, a service time, a FIFO queue) that
//!   gives apps a capacity in requests per second independent of the host's CPU;
//! - `metrics`: the per-App Prometheus registry, the counting middleware and `/metrics`;
//! - `store`: the bounded FIFO map behind the session counters and the data cache;
//! - `work`: deterministic data generation, the CPU-bound hashing loop, time formatting;
//! - `healthcheck`: the dependency-free HTTP/1.0 probe behind `app healthcheck`.
//!
//! lb's integration tests start several apps in one process through [`App::new`] and
//! [`serve`], so nothing here touches process-global state (no default Prometheus
//! registry, no global signal handlers).

#![warn(missing_docs)]

mod capacity;
mod faults;
pub mod grpc;
mod handlers;
mod healthcheck;
mod metrics;
mod store;
mod work;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use faults::{validate_error_rate, MAX_DELAY_MS};
pub use handlers::{DATA_CACHE_CAPACITY, DATA_TTL, MAX_ITERATIONS, SESSION_CAPACITY};
pub use healthcheck::healthcheck;
pub use metrics::SERVED_BY;

use capacity::Capacity;
use faults::Faults;
use metrics::Metrics;
use store::BoundedMap;

/// Performance profile of the container, as the SPEC's `PERFORMANCE_MODE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A weak box: +25 ms on every `/api/*` request and twice the load-test work.
    Low,
    /// No change.
    #[default]
    Normal,
    /// A strong box: half the load-test work.
    High,
}

impl Mode {
    /// The name used on the command line and in `PERFORMANCE_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Low => "low",
            Mode::Normal => "normal",
            Mode::High => "high",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// Case-insensitive `low`, `normal` or `high`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Mode::Low),
            "normal" => Ok(Mode::Normal),
            "high" => Ok(Mode::High),
            _ => Err(format!("unknown mode {s:?}: expected low, normal or high")),
        }
    }
}

/// Start-up settings of one app; the fault knobs can change later at run time.
#[derive(Clone, Debug)]
pub struct Options {
    /// Container id reported in every response (`CONTAINER_ID`).
    pub id: String,
    /// Added latency on every request except `/health`, `/metrics` and `/fault`.
    pub delay: Duration,
    /// Fraction (0.0..=1.0) of `/api/*` requests that answer 500; clamped by [`App::new`].
    pub error_rate: f64,
    /// Performance profile, see [`Mode`].
    pub mode: Mode,
    /// Beyond this many concurrent `/api/*` requests, answer 503 at once.
    /// `Some(0)` rejects every `/api/*` request; `None` means no limit.
    pub max_concurrency: Option<usize>,
    /// Worker-pool mode: at most this many `/api/*` requests are in service at
    /// once; the rest wait in a FIFO queue (see `capacity`). `None`: no pool.
    /// `Some(0)` counts as 1.
    pub workers: Option<usize>,
    /// Time each `/api/*` request holds its worker (a timer, not CPU work), so
    /// capacity is `workers / service_time` requests per second. Zero: none.
    pub service_time: Duration,
    /// After the shutdown signal, keep serving (with `/health` = 503) this long
    /// before closing the listener, like a Kubernetes preStop hook.
    pub shutdown_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            id: "app".to_owned(),
            delay: Duration::ZERO,
            error_rate: 0.0,
            mode: Mode::Normal,
            max_concurrency: None,
            workers: None,
            service_time: Duration::ZERO,
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Request counters read by tests (every field counts on arrival, in a middleware,
/// so requests rejected early are counted too).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) api_requests: AtomicU64,
    pub(crate) posts: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// Requests outside /health, /metrics, /fault being handled right now,
    /// and the most there ever were at once.
    pub(crate) api_in_flight: AtomicU64,
    pub(crate) api_in_flight_max: AtomicU64,
}

/// Shared state of one running app: counters, caches and the fault knobs.
pub struct App {
    pub(crate) id: String,
    /// `id` as the `x-served-by` value; `None` if it is not a valid header value.
    pub(crate) served_by: Option<HeaderValue>,
    pub(crate) mode: Mode,
    pub(crate) shutdown_delay: Duration,
    pub(crate) started: Instant,
    pub(crate) hostname: String,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) faults: Faults,
    /// `Some` when `max_concurrency` is set; a permit per `/api/*` request in flight.
    pub(crate) api_slots: Option<Arc<Semaphore>>,
    /// Workers, service time and queue of the capacity model.
    pub(crate) capacity: Capacity,
    pub(crate) counters: Counters,
    pub(crate) metrics: Metrics,
    /// Session id -> request count.
    pub(crate) sessions: Mutex<BoundedMap<u64>>,
    /// client_id -> generated data, with its creation time for the TTL.
    pub(crate) data_cache: Mutex<BoundedMap<handlers::CachedData>>,
}

impl App {
    /// Builds the shared state. `opts.error_rate` is clamped like [`App::set_error_rate`].
    pub fn new(opts: Options) -> Arc<App> {
        let app = App {
            faults: Faults::new(opts.delay, opts.error_rate),
            api_slots: opts.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            capacity: Capacity::new(opts.workers.map(|n| n.max(1)), opts.service_time),
            served_by: HeaderValue::from_str(&opts.id).ok(),
            id: opts.id,
            mode: opts.mode,
            shutdown_delay: opts.shutdown_delay,
            started: Instant::now(),
            hostname: work::hostname(),
            shutting_down: AtomicBool::new(false),
            counters: Counters::default(),
            metrics: Metrics::new(),
            sessions: Mutex::new(BoundedMap::new(SESSION_CAPACITY)),
            data_cache: Mutex::new(BoundedMap::new(DATA_CACHE_CAPACITY)),
        };
        Arc::new(app)
    }

    /// The container id reported in responses.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The performance mode chosen at start.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The axum router with every endpoint and the counting/fault middleware.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        handlers::router(self)
    }

    /// Changes the added latency (applies to requests arriving from now on).
    pub fn set_delay(&self, d: Duration) {
        self.faults.set_delay(d);
    }

    /// The added latency now in force.
    pub fn delay(&self) -> Duration {
        self.faults.delay()
    }

    /// Changes the injected error rate. Never fails: values are clamped into
    /// 0.0..=1.0 and NaN counts as 0.0, so tests can call it as a statement.
    /// (`PUT /fault` and the CLI validate instead, see [`validate_error_rate`].)
    pub fn set_error_rate(&self, r: f64) {
        self.faults.set_error_rate(r);
    }

    /// The injected error rate now in force.
    pub fn error_rate(&self) -> f64 {
        self.faults.error_rate()
    }

    /// Changes the service time of the capacity model (requests arriving from
    /// now on); see [`Options::service_time`].
    pub fn set_service_time(&self, d: Duration) {
        self.capacity.set_service_time(d);
    }

    /// The service time now in force.
    pub fn service_time(&self) -> Duration {
        self.capacity.service_time()
    }

    /// Requests waiting for a worker right now (0 without a pool).
    pub fn queued(&self) -> u64 {
        self.capacity.queued()
    }

    /// Every request handled, all paths, including those rejected early.
    pub fn requests_total(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Requests to anything except `/health`, `/metrics` and `/fault`.
    pub fn api_requests_total(&self) -> u64 {
        self.counters.api_requests.load(Ordering::Relaxed)
    }

    /// POST requests to any path; lets lb's tests prove a POST was never sent twice.
    pub fn posts_total(&self) -> u64 {
        self.counters.posts.load(Ordering::Relaxed)
    }

    /// Requests being handled right now (all paths).
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Requests outside `/health`, `/metrics` and `/fault` being handled now.
    pub fn api_in_flight(&self) -> u64 {
        self.counters.api_in_flight.load(Ordering::Relaxed)
    }

    /// The most requests outside `/health`, `/metrics` and `/fault` this app
    /// ever handled at once (counted on arrival, so requests that the
    /// concurrency limit rejects count too): what a balancer's per-backend
    /// limit must keep bounded.
    pub fn max_api_in_flight(&self) -> u64 {
        self.counters.api_in_flight_max.load(Ordering::Relaxed)
    }

    /// Turns `/health` to 503 so balancers stop sending new work; idempotent.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether [`App::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Serve until `shutdown` resolves: then `/health` turns 503, wait the app's
/// `shutdown_delay` (still accepting, so balancers see the 503), stop accepting,
/// and return once the in-flight requests have finished.
///
/// Each connection is HTTP/1.1 or, if it opens with the HTTP/2 preface, h2c
/// (HTTP/2 with prior knowledge): axum's server detects which.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app.router();
    let drain_app = Arc::clone(&app);
    let signal = async move {
        shutdown.await;
        drain_app.begin_shutdown();
        let delay = drain_app.shutdown_delay;
        tracing::info!(
            container = %drain_app.id,
            delay_ms = delay.as_millis() as u64,
            "shutdown requested: /health is 503, draining"
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        tracing::info!(container = %drain_app.id, "no longer accepting; finishing in-flight requests");
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await?;
    tracing::info!(container = %app.id, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_case_insensitively() {
        assert_eq!("LOW".parse::<Mode>(), Ok(Mode::Low));
        assert_eq!(" normal ".parse::<Mode>(), Ok(Mode::Normal));
        assert_eq!("high".parse::<Mode>(), Ok(Mode::High));
        assert!("fast".parse::<Mode>().is_err());
        assert_eq!(Mode::Low.to_string(), "low");
    }

    #[test]
    fn new_clamps_error_rate() {
        let app = App::new(Options {
            error_rate: 7.0,
            ..Options::default()
        });
        assert_eq!(app.error_rate(), 1.0);
        app.set_error_rate(f64::NAN);
        assert_eq!(app.error_rate(), 0.0);
        app.set_error_rate(-1.0);
        assert_eq!(app.error_rate(), 0.0);
        assert_eq!(app.id(), "app");
    }
}
