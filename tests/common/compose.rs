//! Tests against a real Docker engine: the compose projects of
//! tests/compose.rs, tests/compose_scale.rs and tests/compose_pool.rs, and
//! the pool's docker provider in tests/pool_docker.rs. Those tests are
//! `#[ignore]`d, so a plain `cargo test` reports them as ignored, never as
//! passed; `make test` runs them (`--ignored`, images built first) when
//! `docker info` succeeds, or when `LB_REQUIRE_DOCKER=1`. Run that way they
//! fail, naming what is missing, when they cannot run ([`run_on_engine`]).
//!
//! Each project has a unique name and publishes lb only on 127.0.0.1 (an
//! ephemeral port); `down -v` runs on drop, also when an assertion fails or
//! the test runs out of time.

use std::future::Future;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{eventually, free_port};

/// The admin token the projects' lb uses.
pub const COMPOSE_TOKEN: &str = "compose-test-token";

/// Runs `cmd`; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs `cmd`, asserts success, returns its trimmed stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What a test against the Docker engine needs to run.
#[derive(Clone, Copy)]
pub enum Needs {
    /// A reachable engine only (the test builds the images it runs).
    Engine,
    /// A reachable engine, a compose CLI and the images `make images` builds
    /// (lb:local, lb-app:local).
    ComposeAndImages,
}

/// Runs the `scenario` of a test against the Docker engine, bounded by
/// `limit`. These tests are `#[ignore]`d, so this only ever runs on request
/// (`--ignored`): then a missing engine, image or CLI is a failure naming it,
/// not a silent pass. On timeout the scenario is dropped, and with it what
/// it owns (a [`Project`]'s `down -v`, a test's cleanup guard), before the
/// panic.
pub async fn run_on_engine(
    what: &str,
    needs: Needs,
    limit: Duration,
    scenario: impl Future<Output = ()>,
) {
    if let Some(why) = missing_prerequisite(needs) {
        panic!("{what} cannot run: {why}");
    }
    if tokio::time::timeout(limit, scenario).await.is_err() {
        panic!("{what} exceeded {limit:?}");
    }
}

/// Why a test that `needs` this cannot run here, if it cannot.
pub fn missing_prerequisite(needs: Needs) -> Option<String> {
    match Command::new("docker").arg("info").output() {
        Ok(o) if o.status.success() => {}
        Ok(_) => return Some("no Docker engine reachable (docker info failed)".into()),
        Err(_) => return Some("docker CLI not installed".into()),
    }
    if let Needs::Engine = needs {
        return None;
    }
    for image in ["lb:local", "lb-app:local"] {
        let o = Command::new("docker")
            .args(["image", "inspect", image])
            .output();
        if !o.is_ok_and(|o| o.status.success()) {
            return Some(format!(
                "image {image} not built (run `make images` or `make test-images`)"
            ));
        }
    }
    if compose_cmd().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    None
}

/// `docker compose` (v2) if present, else `docker-compose` (v1).
pub fn compose_cmd() -> Option<Vec<&'static str>> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        return Some(vec!["docker", "compose"]);
    }
    let v1 = Command::new("docker-compose").arg("version").output();
    v1.is_ok_and(|o| o.status.success())
        .then(|| vec!["docker-compose"])
}

/// A compose project; `down -v` on drop.
pub struct Project {
    /// Unique project name (`-p`).
    pub name: String,
    /// The compose file, relative to the repository root.
    pub file: &'static str,
    cmd: Vec<&'static str>,
    /// lb's published port on 127.0.0.1.
    pub port: u16,
    /// lb's published HTTPS port (443 in the container) on 127.0.0.1.
    pub tls_port: u16,
    /// Containers the test started itself on the project's network, removed
    /// before `down` (they would hold the network).
    pub extra_containers: Vec<String>,
    /// More variables for the compose file's `${...}`, on every command.
    pub env: Vec<(&'static str, String)>,
}

impl Project {
    /// A project for `file` (relative to the repository root) named
    /// `<prefix><pid>`; nothing runs until the test calls `up`. The
    /// certificate the compose files mount (deploy/tls, as `make certs`
    /// makes it) is made first when missing or about to expire.
    pub fn new(prefix: &str, file: &'static str) -> Project {
        make_certs();
        let port = free_port();
        let tls_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        Project {
            name: format!("{prefix}{}", std::process::id()),
            file,
            cmd: compose_cmd().expect("a compose CLI"),
            port,
            tls_port,
            extra_containers: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A compose command for this project (add the subcommand).
    pub fn compose(&self) -> Command {
        let mut c = Command::new(self.cmd[0]);
        c.args(&self.cmd[1..])
            .args(["-p", &self.name, "-f"])
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(self.file))
            .env("LB_PUBLISH", format!("127.0.0.1:{}", self.port))
            .env("LB_PUBLISH_TLS", format!("127.0.0.1:{}", self.tls_port))
            .env("LB_ADMIN_TOKEN", COMPOSE_TOKEN)
            .env("RUST_LOG", "info,access=off")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// The container ids of `service` (one per replica), sorted.
    pub fn containers(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = ok(self.compose().args(["ps", "-q", service]))
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort();
        v
    }

    /// The container id of a single-replica `service`.
    pub fn container(&self, service: &str) -> String {
        ok(self.compose().args(["ps", "-q", service]))
    }

    /// Docker's health status of a single-replica `service`.
    pub fn health(&self, service: &str) -> String {
        let id = self.container(service);
        ok(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id]))
    }

    /// Waits until Docker reports lb's container healthy, at most `limit`
    /// after `since`; how long after `since` that was.
    pub async fn until_lb_healthy(&self, since: Instant, limit: Duration) -> Duration {
        while self.health("lb") != "healthy" {
            assert!(since.elapsed() < limit, "lb not healthy within {limit:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        since.elapsed()
    }

    /// Waits (10 s at most) until lb's published port accepts connections.
    pub async fn until_listening(&self) {
        let port = self.port;
        let open = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(
            eventually(Duration::from_secs(10), open).await,
            "nothing accepts on lb's published port {port}"
        );
    }

    /// The IP address of a single-replica `service`.
    pub fn ip(&self, service: &str) -> String {
        container_ip(&self.container(service))
    }

    /// The project's default network.
    pub fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    /// `http://127.0.0.1:<published port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `lb admin <args>` from a throwaway lb container on the project's
    /// network, against the lb service's admin API; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        ok(Command::new("docker")
            .args(["run", "--rm", "--network", &self.network()])
            .args(["-e", &format!("LB_ADMIN_TOKEN={COMPOSE_TOKEN}")])
            .args(["lb:local", "admin", "--url", "http://lb:9901"])
            .args(args))
    }
}

/// `make certs`: deploy/tls/{ca,cert,key}.pem for the compose files' [tls]
/// (reused while valid).
pub fn make_certs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    ok(Command::new(root.join("scripts/dev-certs.sh"))
        .current_dir(root)
        .env("KEY_MODE", "644")
        .args(["deploy/tls", "localhost", "127.0.0.1", "::1", "lb"]));
}

/// A client for lb's published HTTPS port that trusts deploy/tls/ca.pem and
/// sends `localhost` there; HTTP/2 when ALPN agrees on it.
pub fn tls_client(port: u16) -> reqwest::Client {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ca = std::fs::read(root.join("deploy/tls/ca.pem")).expect("deploy/tls/ca.pem");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A container's IP address on its (only) network.
pub fn container_ip(id: &str) -> String {
    ok(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ]))
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = run(self.compose().args(["logs", "--tail", "30", "lb"]));
            eprintln!("--- lb logs ---\n{}", String::from_utf8_lossy(&logs.stdout));
        }
        for c in &self.extra_containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let out = run(self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"]));
        if !out.status.success() {
            eprintln!(
                "compose down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
