//! Shared integration-test harness: in-process `app` backends and a real `lb`
//! process, all on ephemeral loopback ports, all stopped on drop (also when a
//! test panics). Every wait is a bounded poll, never a bare sleep.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use app::{App, Options};
// Re-exports: a test file that uses none of one would otherwise warn.
#[allow(unused_imports)]
pub use dns::TestDns;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use ops::*;
#[allow(unused_imports)]
pub use pool::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use stub::StubBackend;

pub mod compose;
mod dns;
pub mod h2frames;
mod load;
mod ops;
mod pool;
mod process;
mod stub;
pub mod tls;

/// The tests' `server.max_connections` line: within the open-file limit of
/// a machine whose hard limit is 20,000 (as here), which the default 10,000
/// (2 descriptors each, client and upstream) is not: lb would warn at start,
/// and tests that assert no warning would see it.
pub const MAX_CONNECTIONS: &str = "max_connections = 4096\n";

/// A free TCP port on 127.0.0.1 (bound then released; lb start retries on a race).
/// Only for something that will listen on it; for a port where nothing must
/// answer, use [`dead_port`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A loopback port where nothing listens, for "dead backend" tests: a socket
/// bound to it but not listening, held as long as this value lives, so the
/// port cannot be handed to another listener (another test's app or lb) in the
/// meantime. Connecting to it is refused (RST), like a stopped backend.
pub struct DeadPort {
    _held: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

/// See [`DeadPort`]; keep the value alive for the whole test.
pub fn dead_port() -> DeadPort {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = s.local_addr().expect("local_addr").port();
    DeadPort { _held: s, port }
}

/// Demo backends running on the test's tokio runtime.
pub struct Apps {
    pub apps: Vec<Arc<App>>,
    pub addrs: Vec<SocketAddr>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Apps {
    /// Starts one app per options entry, each on its own `127.0.0.1:0`.
    pub async fn start(opts: Vec<Options>) -> Apps {
        let mut apps = Vec::new();
        let mut addrs = Vec::new();
        let mut stops = Vec::new();
        for o in opts {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let a = App::new(o);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(app::serve(listener, a.clone(), async move {
                let _ = rx.await;
            }));
            apps.push(a);
            stops.push(tx);
        }
        Apps { apps, addrs, stops }
    }

    /// `n` apps named app-1..app-n with default options.
    pub async fn plain(n: usize) -> Apps {
        Apps::start((1..=n).map(|i| named(&format!("app-{i}"))).collect()).await
    }

    /// `[[backends]]` entries for these apps with the given weights.
    pub fn backends_toml(&self, weights: &[u32]) -> String {
        self.apps
            .iter()
            .zip(&self.addrs)
            .zip(weights)
            .map(|((a, addr), w)| {
                format!(
                    "[[backends]]\nname = \"{}\"\naddr = \"{addr}\"\nweight = {w}\n\n",
                    a.id()
                )
            })
            .collect()
    }

    /// Requests each app has handled outside /health, /metrics, /fault.
    pub fn api_counts(&self) -> Vec<u64> {
        self.apps.iter().map(|a| a.api_requests_total()).collect()
    }
}

/// Options for an app called `id`, no faults.
pub fn named(id: &str) -> Options {
    Options {
        id: id.to_string(),
        ..Options::default()
    }
}

/// A running `lb` process; killed on drop.
pub struct Lb {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    log: PathBuf,
    /// The generated `[server]` and `[admin]` sections (kept for rewrites).
    head: String,
    /// `RUST_LOG` for lb (kept for restarts).
    rust_log: String,
}

impl Lb {
    /// Starts lb with `body` (every section but [server] and [admin]) plus
    /// generated listen addresses, and waits until it accepts connections.
    pub async fn start(body: &str) -> Lb {
        Lb::start_full("", body).await
    }

    /// Like [`Lb::start`], with `admin_extra` (e.g. `state_file = "..."`) as
    /// more lines of the generated `[admin]` section.
    pub async fn start_full(admin_extra: &str, body: &str) -> Lb {
        Lb::start_logging(admin_extra, body, QUIET_LOG).await
    }

    /// Like [`Lb::start_full`], with lb's `RUST_LOG` (the default silences
    /// the access log, which would otherwise dominate the log tests read).
    pub async fn start_logging(admin_extra: &str, body: &str, rust_log: &str) -> Lb {
        Lb::start_server("", admin_extra, body, rust_log).await
    }

    /// Like [`Lb::start_logging`], with `server_extra` as more lines of the
    /// generated `[server]` section.
    pub async fn start_server(
        server_extra: &str,
        admin_extra: &str,
        body: &str,
        rust_log: &str,
    ) -> Lb {
        for _ in 0..3 {
            if let Some(lb) = Lb::try_start(server_extra, admin_extra, body, rust_log).await {
                return lb;
            }
        }
        panic!("lb did not start in three tries");
    }

    async fn try_start(
        server_extra: &str,
        admin_extra: &str,
        body: &str,
        rust_log: &str,
    ) -> Option<Lb> {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let extra = admin_extra.trim_end();
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("{extra}\n")
        };
        // A test setting its own cap replaces the suite's.
        let cap = if server_extra.contains("max_connections") {
            ""
        } else {
            MAX_CONNECTIONS
        };
        let head = format!(
            "[server]\nlisten = \"{addr}\"\nthreads = 2\ngrace_period = \"1s\"\n{cap}{server_extra}\n\
             [admin]\nlisten = \"{admin}\"\n{extra}\n"
        );
        let cfg = dir.path().join("lb.toml");
        std::fs::write(&cfg, format!("{head}{body}")).unwrap();
        let log = dir.path().join("lb.log");
        let child = spawn_lb(&cfg, &log, false, rust_log);
        let mut lb = Lb {
            child,
            addr,
            admin,
            dir,
            log,
            head,
            rust_log: rust_log.to_string(),
        };
        match lb.wait_listening(0, Duration::from_secs(20)).await {
            Ok(()) => Some(lb),
            // Port races (taken meanwhile, or free_port gave the same port
            // twice): new ports.
            Err(log)
                if log.contains("cannot listen")
                    || log.contains("must differ from server.listen") =>
            {
                None
            }
            Err(log) => panic!("lb exited at start:\n{log}"),
        }
    }

    /// Polls until both the proxy and the admin port accept connections
    /// (panics after `timeout`); Err(log since byte `from`) if lb exited
    /// first or its admin API could not bind.
    async fn wait_listening(&mut self, from: usize, timeout: Duration) -> Result<(), String> {
        let log_since = |lb: &Lb| lb.log_text().get(from..).unwrap_or("").to_string();
        let deadline = Instant::now() + timeout;
        let mut proxy_up = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(log_since(self));
            }
            if !proxy_up {
                proxy_up = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            }
            // The admin API is a background service that binds a moment later.
            if proxy_up && tokio::net::TcpStream::connect(self.admin).await.is_ok() {
                return Ok(());
            }
            if proxy_up && log_since(self).contains("admin: cannot listen") {
                // Its port was taken after lb's own check: lb runs on without
                // an admin API, useless here. Stop it; the caller retries.
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(log_since(self));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("lb not listening after {timeout:?}:\n{}", self.log_text());
    }

    /// `http://addr`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// lb's stderr so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// lb's log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Polls (at most `timeout`) until `n` log lines contain `needle`;
    /// returns them all (fewer if the time ran out, more if more came).
    pub async fn wait_lines(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        eventually(timeout, || {
            lines = self.log_lines(needle);
            lines.len() >= n
        })
        .await;
        lines
    }

    /// lb's log lines above info (WARN and ERROR).
    pub fn loud_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
            .map(str::to_string)
            .collect()
    }

    /// The config file's path (tests rewrite it for reloads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// Process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Length of lb's log so far: an offset for [`Lb::wait_log`].
    pub fn log_len(&self) -> usize {
        self.log_text().len()
    }

    /// Polls lb's log (every 20 ms, at most `timeout`) for a line after byte
    /// `from` that contains every one of `needles`; when it was first seen.
    pub async fn wait_log(
        &self,
        from: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            let found = text
                .get(from..)
                .unwrap_or("")
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)));
            if found {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- lb log (last 40 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The admin token every harness-started lb uses (`LB_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Path of the `lb` binary Cargo built for these tests.
pub fn lb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lb")
}

/// Spawns lb on `cfg` with stderr to `log` (appended to when `append`, so a
/// restarted lb's log follows the previous run's).
/// lb's `RUST_LOG` unless a test asks otherwise: no access log.
pub const QUIET_LOG: &str = "info,access=off";

fn spawn_lb(cfg: &std::path::Path, log: &std::path::Path, append: bool, rust_log: &str) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(lb_bin());
    cmd.arg("-c")
        .arg(cfg)
        .env("RUST_LOG", rust_log)
        .env("LB_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    // If the test process dies, take lb with it (no orphans on loopback ports).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("spawn lb")
}

/// An HTTP client that never uses a proxy and keeps connections alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client whose connections originate from `ip` (in 127.0.0.0/8).
pub fn client_from(ip: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `url`: (status, value of X-Backend or "").
pub async fn get_backend(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let b = header(&r, "x-backend");
    let _ = r.bytes().await;
    (status, b)
}

/// A response header as a string, "" if absent.
pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Counts of each name in `names` among `picks`.
pub fn tally(picks: &[String], names: &[&str]) -> Vec<usize> {
    names
        .iter()
        .map(|n| picks.iter().filter(|p| p == n).count())
        .collect()
}

/// Pearson's chi-square statistic of `observed` against a uniform expectation.
pub fn chi_square_uniform(observed: &[usize]) -> f64 {
    let total: usize = observed.iter().sum();
    let e = total as f64 / observed.len() as f64;
    observed.iter().map(|&o| (o as f64 - e).powi(2) / e).sum()
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the tests of one file one at a time, each bounded by `limit`: they
/// start several processes and drive load on a 2-core machine, so running
/// them side by side would only measure each other.
pub async fn serial(what: &str, limit: Duration, test: impl std::future::Future<Output = ()>) {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = SERIAL.lock().await;
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("{what} test exceeded {limit:?}");
    }
}
