//! Real `app` processes for chaos tests: the test can `kill -9`, `SIGSTOP`,
//! `SIGTERM` and restart them on the same port, which in-process apps cannot
//! model. Every child dies with the test process (`PR_SET_PDEATHSIG`) and is
//! killed on drop, also when a test panics.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Longest wait for a (re)started app to answer `GET /health` with 200.
const HEALTHY_WITHIN: Duration = Duration::from_secs(10);

/// Path of the `app` binary next to the test executable
/// (`target/debug/deps/<test>` → `target/debug/app`).
pub fn app_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("app"))
        .expect("test executable under target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing; build it: cargo build -p app",
        bin.display()
    );
    bin
}

/// One `app` child process on a fixed loopback port.
pub struct AppProcess {
    /// The app's id, which is also its backend name in lb's config.
    pub id: String,
    /// `127.0.0.1:port`, kept across restarts.
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    starts: u32,
}

impl AppProcess {
    /// Spawns `app --id ID --listen 127.0.0.1:PORT EXTRA...` (does not wait for
    /// it to listen: see [`AppProcess::wait_healthy`]).
    pub fn start(id: &str, port: u16, extra_args: &[&str]) -> AppProcess {
        let mut p = AppProcess {
            id: id.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir for the app's log"),
            starts: 0,
        };
        p.spawn();
        p
    }

    /// `n` apps named app-1..app-n on free ports, each given `args(i)` (i from
    /// 1), all answering /health. A port taken between [`free_port`] and the
    /// app's bind is retried with another port.
    pub async fn fleet(n: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<AppProcess> {
        let mut out = Vec::with_capacity(n);
        for i in 1..=n {
            let extra = args(i);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let mut tries = 0;
            loop {
                let mut p = AppProcess::start(&format!("app-{i}"), free_port(), &extra);
                match p.try_wait_healthy(HEALTHY_WITHIN).await {
                    Ok(()) => {
                        out.push(p);
                        break;
                    }
                    Err(e) if tries < 3 && p.log_text().contains("cannot listen") => {
                        tries += 1;
                        eprintln!("{}: port race ({e}), retrying", p.id);
                    }
                    Err(e) => panic!("{} did not start: {e}\n{}", p.id, p.log_text()),
                }
            }
        }
        out
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.path().join(format!("app-{}.log", self.starts));
        let logf = std::fs::File::create(&log).expect("create the app's log");
        let out = logf.try_clone().expect("dup the app's log file");
        let mut cmd = Command::new(app_bin());
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(logf);
        // If the test process dies, take the app with it (no orphans holding ports).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn app"));
    }

    /// Process id of the current incarnation.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("app is running").id()
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped
        // (reaping only happens through `child`, which is still Some).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// `kill -9`, then reap it: when this returns the port is closed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGSTOP`: the kernel still accepts connections, nothing answers.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// `SIGCONT` after [`AppProcess::sigstop`].
    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// `SIGTERM`: graceful stop (health turns 503, in-flight requests finish).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit and reaps it.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts it again on the same port with the same arguments. A process
    /// still running is killed first (-9), so call it after a wait_exit for a
    /// graceful restart.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Polls `GET /health` until 200 (bounded); panics with the app's log if it
    /// exits or takes longer than 10 s.
    pub async fn wait_healthy(&mut self) {
        if let Err(e) = self.try_wait_healthy(HEALTHY_WITHIN).await {
            panic!("{}: {e}\n{}", self.id, self.log_text());
        }
    }

    async fn try_wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let url = format!("http://{}/health", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {st}"));
                }
            } else {
                return Err("not running".into());
            }
            if let Ok(r) = c.get(&url).send().await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("/health not 200 after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The current incarnation's stdout + stderr so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        let log = self.dir.path().join(format!("app-{}.log", self.starts));
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped process.
        self.kill9();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            eprintln!("--- {} log (last 10 lines) ---", self.id);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// `[[backends]]` entries (weight 1) for these apps, named by their ids.
pub fn process_backends_toml(apps: &[AppProcess]) -> String {
    apps.iter()
        .map(|a| {
            format!(
                "[[backends]]\nname = \"{}\"\naddr = \"{}\"\nweight = 1\n\n",
                a.id, a.addr
            )
        })
        .collect()
}

fn control_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// `PUT /fault` on the app at `addr`: change its delay and/or error rate now.
pub async fn set_fault(addr: SocketAddr, delay_ms: Option<u64>, error_rate: Option<f64>) {
    let mut body = serde_json::Map::new();
    if let Some(d) = delay_ms {
        body.insert("delay_ms".into(), d.into());
    }
    if let Some(r) = error_rate {
        body.insert("error_rate".into(), r.into());
    }
    let r = control_client()
        .put(format!("http://{addr}/fault"))
        .json(&body)
        .send()
        .await
        .expect("PUT /fault");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "PUT /fault on {addr}: {text}");
}

/// The app's `/metrics` text.
pub async fn app_metrics(addr: SocketAddr) -> String {
    control_client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics")
}

/// Sum of every sample of metric `name` whose labels contain all of `labels`
/// (each written `key="value"`), in Prometheus text `text`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|lab| rest.contains(lab)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// POST requests the app at `addr` has *completed* (app_requests_total counts
/// at completion; an in-flight POST shows in [`app_in_flight`] instead).
pub async fn app_posts_total(addr: SocketAddr) -> u64 {
    metric_sum(
        &app_metrics(addr).await,
        "app_requests_total",
        &["method=\"POST\""],
    ) as u64
}

/// The app's `app_in_flight` gauge, not counting the /metrics request that reads it.
pub async fn app_in_flight(addr: SocketAddr) -> u64 {
    (metric_sum(&app_metrics(addr).await, "app_in_flight", &[]) as u64).saturating_sub(1)
}
