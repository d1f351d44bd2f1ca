//! Wires a Pingora server: the proxy service on `server.listen`, background tasks
//! (DNS re-resolution, health checks, dynamic weights), and signal handling.
//!
//! Shutdown: SIGTERM and SIGINT both stop gracefully (SPEC). Pingora's own
//! graceful path sleeps the whole grace period unconditionally (PINGORA.md §4),
//! so lb also watches its active-request count and exits as soon as in-flight
//! requests have finished, never later than `server.grace_period`, then stops
//! the pool's members (at most `pool.drain_timeout` each). Both durations are
//! read at the signal, from the running config, so a reload that changed them
//! counts. Pingora reads its grace period once, at start: lb sets it above
//! the longest stop any config allows ([`pingora_grace`]), a backstop only.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::admin::{self, Admin};
use crate::config::{Config, MAX_DRAIN_TIMEOUT, MAX_GRACE_PERIOD};
use crate::control::Control;
use crate::discovery::Discovery;
use crate::health::HealthChecker;
use crate::history::{History, Sampler};
use crate::pool::Pool;
use crate::proxy::listen::Listening;
use crate::proxy::FrontDoor;
use crate::proxy::Proxy;
use crate::reweigh::DynamicWeights;
use crate::state::State;

/// Why lb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The front-door address cannot be bound.
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin address cannot be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    AdminBind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (tls.listen): {source}")]
    TlsBind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin token could not be determined.
    #[error("{0}")]
    Token(String),
    /// The pool's provider cannot run members (e.g. no Docker engine).
    #[error("[pool]: {0}")]
    Pool(crate::pool::ProviderError),
    /// A process started with `--upgrade` cannot take over.
    #[error("{0}")]
    Upgrade(String),
}

/// Requests currently inside the proxy (all stages), for graceful shutdown.
pub type ActiveRequests = Arc<AtomicUsize>;

/// The drain watcher's pause after the signal, before it samples
/// ([`drain_then_exit`]).
const SETTLE: Duration =
    Duration::from_millis(crate::access_log::BATCH_DELAY.as_millis() as u64 + 50);

/// The longest lb's own stop takes (signal to exit) with `server.grace_period`
/// = `grace` and, with a pool, its [`Pool::shutdown_time`].
fn longest_stop(grace: Duration, pool_shutdown: Option<Duration>) -> Duration {
    SETTLE + grace + pool_shutdown.unwrap_or(Duration::ZERO)
}

/// Pingora's grace period. lb's drain watcher exits the process itself, within
/// [`longest_stop`] of the config running at the signal; Pingora's sleep only
/// bounds a watcher that never got there. Pingora reads it once, at start, and
/// a reload can raise `server.grace_period` and `pool.drain_timeout`: so it
/// outlasts the longest stop any valid config allows (a minute of room for
/// the exit itself), rather than the stop of the config lb started with.
fn pingora_grace() -> Duration {
    longest_stop(
        MAX_GRACE_PERIOD,
        Some(MAX_DRAIN_TIMEOUT + crate::pool::SHUTDOWN_SLACK),
    ) + Duration::from_secs(60)
}

/// A configured, not yet running lb.
pub struct Lb {
    server: Server,
    /// The shared routing state (tests and the admin API act on it).
    pub state: Arc<State>,
    /// Operator actions (admin API, SIGHUP).
    pub control: Arc<Control>,
    /// The `[pool]`, if configured (its members are already ready).
    pub pool: Option<Arc<Pool>>,
    active: ActiveRequests,
    upgrade: Arc<crate::upgrade::Upgrade>,
}

impl Lb {
    /// Builds the server for `config`: checks the listen address can be bound,
    /// resolves backends once, and adds the proxy and background services.
    pub fn build(config: Config, config_path: Option<PathBuf>) -> Result<Lb, StartError> {
        Lb::build_as(config, config_path, false)
    }

    /// [`Lb::build`]; with `successor`, for a process started with
    /// `--upgrade`: its listening sockets come from the running lb
    /// (`crate::upgrade`), so their addresses are not checked.
    pub fn build_as(
        config: Config,
        config_path: Option<PathBuf>,
        successor: bool,
    ) -> Result<Lb, StartError> {
        // SIGHUP's default action kills the process; until the reload handler is
        // installed (when services start), ignore it rather than die.
        // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        let config = Arc::new(config);
        raise_open_file_limit(config.server.max_connections);
        if successor {
            crate::upgrade::prepare(&config).map_err(StartError::Upgrade)?;
        }
        // Pingora only logs a bind failure and keeps running (#667): check first
        // so the operator gets an error and a non-zero exit.
        check_free(config.server.listen, successor).map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;

        check_free(config.admin.listen, successor).map_err(|source| StartError::AdminBind {
            addr: config.admin.listen,
            source,
        })?;
        if let Some(tls) = &config.tls {
            check_free(tls.listen, successor).map_err(|source| StartError::TlsBind {
                addr: tls.listen,
                source,
            })?;
            log_certificates(tls);
        }
        // Logs where the token came from, never a generated token itself.
        let token = admin::token(config.admin.token_file.as_deref()).map_err(StartError::Token)?;

        let state = Arc::new(State::new(config.clone()));
        let control = Arc::new(Control::new(state.clone(), config_path));
        let upgrade = crate::upgrade::Upgrade::new(successor, state.clone());
        // Members of `resolve = "all"` groups exist once resolved: resolve
        // first, so a member's saved weight and mode apply too.
        resolve_at_start(&state);
        control.load_state_file();
        // SPEC: lb accepts traffic once the pool's members are healthy, so
        // the pool starts (and waits) before the listeners exist.
        let pool = match config.pool {
            Some(_) => Some(Pool::start(state.clone(), successor).map_err(StartError::Pool)?),
            None => None,
        };
        if let Some(p) = &pool {
            control.set_pool(p.clone());
            upgrade.set_pool(p.clone());
        }
        let conf = ServerConf {
            threads: config.server.threads,
            // A backstop: the drain watcher exits earlier, on the running
            // config's durations (see `pingora_grace`).
            grace_period_seconds: Some(pingora_grace().as_secs_f64().ceil() as u64),
            graceful_shutdown_timeout_seconds: Some(1),
            // One runtime per worker thread, connections never migrate: ~15% more
            // requests per core than tokio's work stealing in `make bench`.
            work_stealing: false,
            // Pingora's own cap, above anything lb allows: `retry.attempts` (at
            // most 10) plus one try per backend whose failure did not use one up
            // (`Ctx::backend_gone`). lb enforces the real limit (reloadable).
            max_retries: 10 + crate::config::MAX_BACKENDS,
            // Where a successor receives the listening sockets.
            upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
            ..ServerConf::default()
        };
        // `upgrade`: bootstrap waits (about 6 s) for the old process's sockets.
        let opt = successor.then(|| pingora::server::configuration::Opt {
            upgrade: true,
            ..Default::default()
        });
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        server.bootstrap();
        if successor {
            // What the operator changed on the old process while this one started.
            control.load_state_file();
        }

        let active: ActiveRequests = Arc::new(AtomicUsize::new(0));
        // lb's HTTP/1 path in front, Pingora's proxy for what it hands over
        // (upgrades, chunked or large request bodies). The listener does no
        // buffering of its own: the front door reads into one buffer per
        // connection (and Pingora's 64 KiB per-connection read buffer was most
        // of an idle connection's memory).
        let mut fallback = pingora::proxy::http_proxy(
            &server.configuration,
            Proxy::new(state.clone(), active.clone()),
        );
        fallback.h2_options = Some(h2_options(&config.server));
        let door = Arc::new(FrontDoor::new(
            state.clone(),
            active.clone(),
            Arc::new(fallback),
        ));
        let mut doors = vec![(config.server.listen, door.clone())];
        // HTTPS: the same front door after a TLS handshake (`[tls]`); both
        // count their connections together (`server.max_connections`).
        if let Some(tls) = &config.tls {
            doors.push((tls.listen, Arc::new(FrontDoor::tls(&door))));
        }
        // `server.threads` workers, each accepting on both listeners.
        server.add_service(Listening::new(config.server.threads, doors));
        server.add_service(background_service(
            "certificates",
            crate::tls::watch::CertWatch::new(control.clone()),
        ));
        // `[tls.acme]`: a saved certificate or a new order, then renewals.
        server.add_service(background_service(
            "acme",
            crate::tls::acme::service::AcmeService(state.clone()),
        ));
        server.add_service(background_service("dns", Discovery::new(state.clone())));
        server.add_service(background_service(
            "health",
            HealthChecker::new(state.clone()),
        ));
        server.add_service(background_service(
            "dynamic-weights",
            DynamicWeights::new(state.clone()),
        ));
        let history = Arc::new(History::new());
        server.add_service(background_service(
            "history",
            Sampler::new(state.clone(), history.clone()),
        ));
        // Its socket in Pingora's table, so that an upgrade hands it over too.
        server.add_service(crate::upgrade::AdminService::new(
            Admin::new(
                control.clone(),
                history,
                pool.clone(),
                token,
                config.admin.listen,
            ),
            config.admin.listen,
            upgrade.clone(),
        ));
        server.add_service(background_service(
            "sighup",
            ReloadOnHangup(control.clone()),
        ));
        Ok(Lb {
            server,
            state,
            control,
            pool,
            active,
            upgrade,
        })
    }

    /// Runs until `signal` asks to stop. Blocks; must not be called inside a
    /// tokio runtime (Pingora builds its own). After a graceful signal Pingora
    /// waits out its grace period, a backstop of over a day
    /// ([`pingora_grace`]): a graceful `signal` must exit the process itself,
    /// as [`Lb::run`]'s does; after [`ShutdownSignal::FastShutdown`] this
    /// returns at once.
    pub fn run_with(self, signal: Box<dyn ShutdownSignalWatch>) {
        let cfg = self.state.load().config.clone();
        tracing::info!(listen = %cfg.server.listen, backends = cfg.backends.len(),
            pool = cfg.pool.as_ref().map(|p| p.name.as_str()),
            algorithm = %cfg.balancer.algorithm, "lb started");
        self.server.run(RunArgs {
            shutdown_signal: signal,
        });
    }

    /// Runs until SIGTERM/SIGINT, then drains and exits the process.
    pub fn run(self) {
        let signal = Box::new(GracefulOnSignal {
            active: self.active.clone(),
            state: self.state.clone(),
            pool: self.pool.clone(),
            upgrade: self.upgrade.clone(),
        });
        self.run_with(signal);
    }
}

/// HTTP/2 server settings for every client connection that speaks it (TLS
/// with ALPN `h2`, or h2c): `server.h2_max_streams` concurrent streams and
/// heads no larger than `server.max_header_bytes` (CONTINUATION floods end at
/// that size). h2 itself ends a connection with GOAWAY after 20 streams reset
/// before being accepted (rapid reset, CVE-2023-44487) and after 1,024 streams
/// it had to reset for the client's errors.
fn h2_options(
    server: &crate::config::ServerConfig,
) -> pingora::protocols::http::v2::server::H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(server.h2_max_streams);
    o.max_header_list_size(server.max_header_bytes as u32);
    o.max_pending_accept_reset_streams(20);
    o.max_local_error_reset_streams(Some(1024));
    o
}

/// Logs each certificate `[tls]` serves, warning when one expires soon.
fn log_certificates(tls: &crate::config::TlsConfig) {
    let now = crate::tls::unix_now();
    for c in tls.loaded.certs() {
        let days = c.days_left(now);
        if days < crate::tls::certs::WARN_DAYS {
            tracing::warn!(names = ?c.names, days_left = days, not_after = %c.not_after_rfc3339(), "certificate expires soon");
        } else {
            tracing::info!(names = ?c.names, days_left = days, not_after = %c.not_after_rfc3339(), "certificate");
        }
    }
}

/// First resolution of hostname backends, before traffic is accepted, so the
/// first requests do not see unresolved backends. Unresolvable names are logged
/// and retried by the discovery task. Runs on a thread of its own (joined):
/// `block_on` panics on a thread that is already inside a tokio runtime, which
/// is where a test or an embedding program calls `Lb::build` from.
fn resolve_at_start(state: &Arc<State>) {
    let snap = state.load_full();
    let resolved = snap.backends.iter().all(|b| b.addr.is_some());
    if resolved && snap.groups.iter().all(|g| !g.addrs.is_empty()) {
        return;
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve at start; the discovery task will");
                    return;
                }
            };
            rt.block_on(async {
                match crate::discovery::resolver(&snap.config.discovery) {
                    Ok(r) => {
                        Discovery::new(state.clone())
                            .resolve_all(&r, &mut Default::default())
                            .await
                    }
                    Err(e) => tracing::warn!(error = %e, "dns: no resolver at start"),
                }
            });
        });
    });
}

/// Checks that `addr` can be bound (Pingora only logs a bind failure,
/// #667). A successor's sockets are the running lb's: bound already.
fn check_free(addr: SocketAddr, successor: bool) -> std::io::Result<()> {
    if successor {
        return Ok(());
    }
    TcpListener::bind(addr).map(drop)
}

/// Raises the open-file soft limit to the hard limit (SPEC: at start), and
/// warns when `max_connections` cannot be met: each client connection may
/// hold an upstream connection too, plus a margin for listeners, logs and
/// health probes.
fn raise_open_file_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    let raised = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if raised < needed {
        tracing::warn!(
            open_files = raised,
            needed,
            "server.max_connections cannot be met: the open-file limit is too low"
        );
    }
}

/// SIGTERM, SIGINT, SIGQUIT and a successor taking over (SIGUSR2, or
/// SIGQUIT with one waiting: `crate::upgrade`) → graceful stop; exit as soon
/// as requests have drained.
struct GracefulOnSignal {
    active: ActiveRequests,
    /// Where the running config is read at the signal (`server.grace_period`).
    state: Arc<State>,
    pool: Option<Arc<Pool>>,
    upgrade: Arc<crate::upgrade::Upgrade>,
}

#[async_trait]
impl ShutdownSignalWatch for GracefulOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let which = self.upgrade.until_stop().await;
        crate::access_log::stop_batching();
        let active = self.active.clone();
        // The running config's: a reload's value counts.
        let grace = self.state.load().config.server.grace_period;
        let deadline = Instant::now() + grace;
        let pool = self.pool.clone();
        // What bounds this stop: lb's requests, then the members'.
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            pool_stop_ms = pool.as_ref().map(|p| p.shutdown_time().as_millis() as u64),
            "{which}: stopping gracefully"
        );
        std::thread::spawn(move || drain_then_exit(active, deadline, pool));
        ShutdownSignal::GracefulTerminate
    }
}

/// Exits the process once no request is active (or at the deadline), after
/// stopping the pool's members (at most [`Pool::shutdown_time`], read then).
fn drain_then_exit(active: ActiveRequests, deadline: Instant, pool: Option<Arc<Pool>>) {
    // Give Pingora a moment to close its listeners before we sample, and
    // access-log lines batched before the signal time to be handed over.
    std::thread::sleep(SETTLE);
    let mut drained = false;
    while Instant::now() < deadline {
        if active.load(Ordering::Acquire) == 0 {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if drained {
        tracing::info!("all requests finished; exiting");
    } else {
        let left = active.load(Ordering::Acquire);
        tracing::warn!(
            left,
            "grace period over; exiting with requests still in flight"
        );
    }
    // Members go last: lb's own requests to them have finished.
    if let Some(pool) = pool {
        pool.shutdown(pool.shutdown_time());
    }
    crate::access_log::before_exit();
    std::process::exit(0);
}

/// SIGHUP reloads the config, as `POST /admin/reload` does. (Pingora leaves
/// SIGHUP at its default action, which would kill the process.)
struct ReloadOnHangup(Arc<Control>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler; reload through the admin API");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    match self.0.reload("SIGHUP").await {
                        Ok(()) => tracing::info!("SIGHUP: config reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: reload rejected; old config kept"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "[pool]\ncommand = [\"app\", \"--listen\", \"127.0.0.1:{port}\"]\n";

    #[test]
    fn pingoras_grace_outlasts_the_longest_stop_a_reload_can_set() {
        // The longest durations a config (and so a reload) may set...
        let max = Config::from_toml(&format!(
            "[server]\ngrace_period = \"1h\"\n{POOL}drain_timeout = \"24h\"\n"
        ))
        .unwrap();
        let drain = max.pool.as_ref().unwrap().drain_timeout;
        let stop = longest_stop(
            max.server.grace_period,
            Some(drain + crate::pool::SHUTDOWN_SLACK),
        );
        assert!(pingora_grace() > stop, "{:?} <= {stop:?}", pingora_grace());
        // ...and not a second more.
        assert!(Config::from_toml("[server]\ngrace_period = \"3601s\"\n").is_err());
        assert!(Config::from_toml(&format!("{POOL}drain_timeout = \"86401s\"\n")).is_err());
        // A day and an hour, plus room: still a finite sleep for Pingora.
        assert!(pingora_grace() < Duration::from_secs(2 * 86_400));
    }
}
