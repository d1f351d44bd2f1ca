//! Pool tests' helpers: an lb whose `[pool]` runs real `app` processes (a pool
//! name unique to the test, a port range of its own), views of
//! `GET /admin/pool`, and a guard that kills every process of the pool on
//! drop, so even a failed test leaves nothing running.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{app_bin, Lb};

/// A pool name and port range no other test (or test run) uses: the pid and
/// a counter, ports in 20000..32000 (below Linux's ephemeral range, so client
/// sockets do not take them).
pub fn unique_pool() -> (String, u16, u16) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("p{}x{n}", std::process::id());
    let slot = (std::process::id().wrapping_mul(31) + n * 7) % 200;
    let lo = 20_000 + slot as u16 * 60;
    (name, lo, lo + 59)
}

/// The `[health]` and `[pool]` sections for a process pool of `app`s named
/// `name` on `lo..=hi`, with `extra` lines (sizes, durations) and `app_args`
/// appended to every member's command line.
pub fn pool_toml(name: &str, (lo, hi): (u16, u16), extra: &str, app_args: &[&str]) -> String {
    let mut argv = vec![
        format!("{:?}", app_bin().display().to_string()),
        "\"--id\"".into(),
        "\"{name}\"".into(),
        "\"--listen\"".into(),
        "\"127.0.0.1:{port}\"".into(),
    ];
    argv.extend(app_args.iter().map(|a| format!("{a:?}")));
    // Short defaults for tests, unless `extra` sets the key.
    let defaults: String = [
        ("check_interval", "\"200ms\""),
        ("drain_timeout", "\"2s\""),
        ("start_timeout", "\"10s\""),
    ]
    .iter()
    .filter(|(k, _)| !extra.contains(&format!("{k} =")))
    .map(|(k, v)| format!("{k} = {v}\n"))
    .collect();
    format!(
        "[health]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 2\n\n\
         [pool]\nname = \"{name}\"\ncommand = [{}]\nports = \"{lo}-{hi}\"\n{defaults}{extra}\n",
        argv.join(", ")
    )
}

/// Kills (SIGKILL) every process of pool `name` when dropped.
pub struct PoolGuard(pub String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        for pid in pool_pids(&self.0) {
            // SAFETY: plain kill(2) on processes this test's lb started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Processes whose environment says `LB_POOL=<name>` (lb's marker).
pub fn pool_pids(name: &str) -> Vec<u32> {
    pids_with_env(&format!("LB_POOL={name}"))
}

/// The pid of member `member` of pool `name` (the process lb spawned).
pub fn member_pid(name: &str, member: &str) -> Option<u32> {
    let mine = pool_pids(name);
    pids_with_env(&format!("LB_POOL_MEMBER={member}"))
        .into_iter()
        .filter(|p| mine.contains(p))
        .min()
}

fn pids_with_env(var: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            // A zombie has an empty environ: it is not running.
            env.split(|b| *b == 0)
                .any(|v| v == var.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// Is `pid` a live (non-zombie) process?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

impl Lb {
    /// `GET /admin/pool`.
    pub async fn pool(&self) -> Value {
        let r = self.admin_get("/admin/pool").await;
        assert_eq!(r.status, 200, "GET /admin/pool: {}", r.text);
        r.json
    }

    /// Polls `GET /admin/pool` (every 50 ms, at most `timeout`) until `f`
    /// holds; the view that satisfied it.
    pub async fn wait_pool(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.pool().await;
            if f(&v) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                eprintln!("last pool view: {v:#}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Names of members in `state` ("ready", "starting", ...).
pub fn members_in(view: &Value, state: &str) -> Vec<String> {
    view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["state"] == state)
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The address of member `name`.
pub fn member_addr(view: &Value, name: &str) -> Option<std::net::SocketAddr> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["addr"]
        .as_str()?
        .parse()
        .ok()
}

// The docker provider's tests (tests/pool_docker.rs, tests/upgrade.rs).

/// The image the docker pool tests run (built by [`app_image`]).
pub const POOL_IMAGE: &str = "lb-app:pooltest";
/// A second tag of it, for rollouts.
pub const POOL_IMAGE_V2: &str = "lb-app:pooltest-v2";

/// `docker args...`; its stdout, trimmed. Panics on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds (once per test binary) a scratch image with the debug `app` and its
/// libraries at their paths, plus a second tag for the rollout.
pub fn app_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path().join("rootfs");
        let app = app_bin();
        let put = |src: &std::path::Path, dst: &str| {
            let to = root.join(dst.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src, &to).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        };
        put(&app, "/usr/local/bin/app");
        let ldd = Command::new("ldd").arg(&app).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(std::path::PathBuf::from);
            if let Some(p) = path {
                let real = std::fs::canonicalize(&p).unwrap_or(p.clone());
                put(&real, p.to_str().unwrap());
            }
        }
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY rootfs/ /\nUSER 65532:65532\nENV PORT=3000\n\
             ENTRYPOINT [\"/usr/local/bin/app\"]\n",
        )
        .unwrap();
        docker(&[
            "build",
            "-q",
            "-t",
            POOL_IMAGE,
            ctx.path().to_str().unwrap(),
        ]);
        docker(&["tag", POOL_IMAGE, POOL_IMAGE_V2]);
    });
    POOL_IMAGE
}

/// Containers labelled `lb.pool=<name>`, running or not.
pub fn pool_containers(name: &str) -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label=lb.pool={name}")]);
    out.lines().map(String::from).collect()
}

/// Removes the pool's containers on drop, also when the test fails.
pub struct ContainerCleanup(pub String);

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        for id in pool_containers(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}
