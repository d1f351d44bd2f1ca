//! `admin.state_file` (SPEC "Admin API", "Admin hardening"): operator weights
//! and modes survive a restart; a corrupt or unwritable state file costs a
//! warning, never the service or the in-memory state, and a change it could
//! not take is answered `507` (applied, counted); a slow disk never stalls
//! the admin API; writers racing (admin API and SIGHUP reload) still leave
//! one whole, current file.
//!
//! The tests run one at a time (`common::serial`): each runs lb and four apps on a
//! 2-core machine.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Hard limit on one test (each is designed to take a few seconds).
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn serial(test: impl Future<Output = ()>) {
    common::serial("state-file", TEST_LIMIT, test).await;
}

const NAMES: [&str; 4] = ["app-1", "app-2", "app-3", "app-4"];

fn state_line(path: &Path) -> String {
    format!("state_file = \"{}\"", path.display())
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

fn modes(b: &BTreeMap<String, Value>) -> Vec<String> {
    NAMES
        .iter()
        .map(|n| b[*n]["mode"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// lb log lines at WARN level mentioning the state file, after byte `from`.
fn state_warnings(lb: &Lb, from: usize) -> Vec<String> {
    lb.log_text()
        .get(from..)
        .unwrap_or("")
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("WARN") && l.contains("state file"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_modes_survive_a_restart() {
    serial(async {
        let apps = Apps::plain(4).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        let mut lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1, 1, 1])).await;

        let w = lb.set_weights(&json!({"app-1": 4, "app-2": 2})).await;
        lb.set_mode("app-3", "drain").await;
        lb.set_mode("app-4", "maintenance").await;
        let saved: Value =
            serde_json::from_slice(&std::fs::read(&state).expect("state file written"))
                .expect("state file is JSON");
        println!("[restart] state file after the changes: {saved}");
        assert_eq!(saved["weights"]["app-1"], 4);
        assert_eq!(saved["modes"]["app-4"], "maintenance");

        let exit = lb.stop().await;
        assert_eq!(exit.code(), Some(0), "graceful stop");
        lb.restart().await;

        let w1 = lb.weights().await;
        let m1 = modes(&lb.backends().await);
        // Weights 4:2 over the active backends (drain and maintenance take no
        // new requests): any 12 consecutive picks are exactly 8 and 4.
        let routed = tally(&route_seq(&lb, 12).await, &NAMES);
        println!(
            "[restart] after SIGTERM + start: weights {w1:?}, modes {m1:?}, 12 requests {routed:?}"
        );
        assert_eq!(w1, w);
        assert_eq!(
            w1,
            map(&[("app-1", 4), ("app-2", 2), ("app-3", 1), ("app-4", 1)])
        );
        assert_eq!(m1, vec!["active", "active", "drain", "maintenance"]);
        assert_eq!(routed, vec![8, 4, 0, 0]);
        // Through lb's non-blocking log writer: poll.
        assert!(
            eventually(std::time::Duration::from_secs(2), || lb
                .log_text()
                .contains("state file applied"))
            .await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_algorithm_switch_survives_a_restart() {
    serial(async {
        let apps = Apps::plain(2).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        let mut lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1])).await;
        let r = lb
            .admin_put("/admin/algorithm", &json!({"algorithm": "least_conn"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // The 200 came after the write: the file already says so.
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved["algorithm"], "least_conn", "{saved}");
        assert_eq!(lb.stop().await.code(), Some(0));
        lb.restart().await;
        let got = lb.admin_get("/admin/algorithm").await.json;
        assert_eq!(got["algorithm"], "least_conn", "after restart: {got}");
    })
    .await;
}

/// `name` on PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A slow disk for one process: strace attached to every thread of it,
/// holding each `fsync` for `delay` before it runs. (lb's temp files are
/// created new under names of their own, so no FIFO can be planted in a
/// write's way any more; delaying the syscall is what a slow disk does.)
/// Detached on drop.
struct SlowDisk(std::process::Child);

impl SlowDisk {
    async fn attach(pid: u32, delay: Duration) -> SlowDisk {
        let strace = which("strace").unwrap_or_else(|| {
            panic!("strace not found on PATH: install it (Debian: apt-get install strace)")
        });
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = std::process::Command::new(strace)
            .args(["-f", "-o", "/dev/null", "-e", "trace=fsync", "-e"])
            .arg(format!("inject=fsync:delay_enter={}", delay.as_micros()))
            .arg("-p")
            .arg(pid.to_string())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let slow = SlowDisk(child);
        // Attached once strace has said so for every thread of lb: one line
        // "attached with N threads" (recent strace), or one line per thread.
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        let attached = || {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            text.contains(" attached with ") || text.matches(" attached").count() >= threads
        };
        assert!(
            eventually(Duration::from_secs(5), attached).await,
            "strace did not attach: {}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        slow
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        // SIGTERM: strace detaches, and the tracee runs on untouched.
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_state_file_write_never_stalls_metrics_or_health() {
    serial(async {
        let apps = Apps::plain(2).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1])).await;
        // A write is two fsyncs (the temp file, then the directory): 3 s in
        // all, within the 5 s an admin change waits for its write.
        let slow = SlowDisk::attach(lb.pid(), Duration::from_millis(1500)).await;
        let put = {
            let (url, c) = (lb.admin_url("/admin/weights"), client());
            tokio::spawn(async move {
                c.put(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"app-1": 3}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        };
        // While the write is under way, the admin runtime keeps answering.
        // Before the writer thread, the write ran inside the handler on the
        // admin API's one thread: these waited for the disk.
        let quick = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let mut applied = false;
        for path in ["/metrics", "/health", "/metrics"] {
            let t = std::time::Instant::now();
            let r = quick.get(lb.admin_url(path)).send().await;
            let took = t.elapsed();
            assert!(
                r.as_ref().is_ok_and(|r| r.status() == 200),
                "GET {path} while the state file write is slow: {r:?} after {took:?}"
            );
            println!("[slow write] GET {path}: 200 in {took:?}");
            applied |= lb.weights().await["app-1"] == 3;
        }
        // The change itself is in effect (in memory) meanwhile, and the PUT
        // is still waiting for its write.
        assert!(applied, "weights not applied while the write is slow");
        assert!(!put.is_finished(), "the PUT answered before its write");
        // The PUT answers once the write is done: the file holds the change.
        assert_eq!(put.await.unwrap().unwrap(), 200);
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved["weights"]["app-1"], 3);
        drop(slow);
        lb.set_weights(&json!({"app-2": 4})).await;
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(saved["weights"], json!({"app-1": 3, "app-2": 4}));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_file_warns_once_and_uses_config_weights() {
    serial(async {
        let apps = Apps::plain(4).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        std::fs::write(&state, b"\x00\xffnot json {{{ \x89PNG\r\n").unwrap();
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[3, 1, 1, 1])).await;

        let w = lb.weights().await;
        let m = modes(&lb.backends().await);
        // 3:1:1:1, period 6: 12 requests are exactly 6, 2, 2, 2.
        let routed = tally(&route_seq(&lb, 12).await, &NAMES);
        let warnings = state_warnings(&lb, 0);
        println!(
            "[corrupt] weights {w:?}, modes {m:?}, 12 requests {routed:?}; warnings: {warnings:#?}"
        );
        assert_eq!(
            w,
            map(&[("app-1", 3), ("app-2", 1), ("app-3", 1), ("app-4", 1)])
        );
        assert_eq!(m, vec!["active"; 4]);
        assert_eq!(routed, vec![6, 2, 2, 2]);
        assert_eq!(
            warnings.len(),
            1,
            "exactly one warning about the state file"
        );

        // The next change replaces the corrupt file with a valid one.
        lb.set_weights(&json!({"app-2": 2})).await;
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap())
            .expect("state file rewritten as JSON");
        println!("[corrupt] after PUT /admin/weights the file holds {saved}");
        assert_eq!(saved["weights"]["app-2"], 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_state_file_keeps_changes_in_memory() {
    serial(async {
        let apps = Apps::plain(4).await;
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist: every write fails (even as root).
        let state = dir.path().join("no-such-dir").join("lb-state.json");
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1, 1, 1])).await;
        let at_start = state_warnings(&lb, 0);

        let from = lb.log_len();
        // Applied, but not saved: 507 saying so (SPEC "Admin hardening").
        let r = lb.admin_put("/admin/weights", &json!({"app-1": 3})).await;
        assert_eq!(r.status, 507, "{}", r.text);
        assert_eq!(r.json["applied"], true, "{}", r.text);
        let r = lb
            .admin_put(
                "/admin/backends/app-4/mode",
                &json!({"mode": "maintenance"}),
            )
            .await;
        assert_eq!(r.status, 507, "{}", r.text);
        assert_eq!(r.json["applied"], true, "{}", r.text);
        let warned = lb
            .wait_log(
                from,
                &["WARN", "cannot write state file"],
                Duration::from_secs(2),
            )
            .await;
        let warnings = state_warnings(&lb, from);

        let w = lb.weights().await;
        let m = modes(&lb.backends().await);
        // 3:1:1 over app-1..3 (app-4 in maintenance): 10 requests are 6, 2, 2.
        let routed = tally(&route_seq(&lb, 10).await, &NAMES);
        println!(
            "[unwritable] start warnings {}; after 2 changes: {} warning(s) {warnings:#?}; \
             weights {w:?}, modes {m:?}, 10 requests {routed:?}",
            at_start.len(),
            warnings.len()
        );
        assert!(warned.is_some(), "no 'cannot write state file' warning");
        assert!(!state.exists());
        assert_eq!(
            w,
            map(&[("app-1", 3), ("app-2", 1), ("app-3", 1), ("app-4", 1)])
        );
        assert_eq!(m, vec!["active", "active", "active", "maintenance"]);
        assert_eq!(routed, vec![6, 2, 2, 0]);
        let errors = lb.scrape().await.value("lb_state_file_errors_total", &[]);
        assert!(errors >= 2.0, "lb_state_file_errors_total {errors}");
    })
    .await;
}

/// The state file's directory turns into a regular file after lb started
/// (a deterministic stand-in for a full or read-only disk: the write fails
/// with ENOTDIR, even for root, whom no permission bit stops): each change is
/// applied, answered `507` `{"error": "state file: ...", "applied": true}`
/// and counted; once the directory is back, the next change saves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_state_file_cannot_take_is_507_applied_and_counted() {
    serial(async {
        let apps = Apps::plain(4).await;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let state = sub.join("lb-state.json");
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1, 1, 1])).await;
        lb.set_weights(&json!({"app-2": 2})).await;
        assert!(state.exists());
        let errors_before = lb.scrape().await.value("lb_state_file_errors_total", &[]);

        std::fs::remove_dir_all(&sub).unwrap();
        std::fs::write(&sub, b"no longer a directory").unwrap();
        let r = lb.admin_put("/admin/weights", &json!({"app-1": 7})).await;
        println!("[507] PUT /admin/weights: {} {}", r.status, r.text);
        assert_eq!(r.status, 507, "{}", r.text);
        assert_eq!(r.json["applied"], true);
        let e = r.json["error"].as_str().unwrap_or("");
        assert!(e.starts_with("state file: "), "{e}");
        assert!(
            e.contains("lb-state.json") && e.contains("ot a directory"),
            "{e}"
        );
        assert!(!r.etag.is_empty(), "a 507 carries the new version");
        // Applied all the same: the API and the routing show it.
        assert_eq!(
            lb.weights().await,
            map(&[("app-1", 7), ("app-2", 2), ("app-3", 1), ("app-4", 1)])
        );
        let routed = tally(&route_seq(&lb, 11).await, &NAMES);
        assert_eq!(routed, vec![7, 2, 1, 1]);
        // Every kind of change, reload included.
        let r = lb
            .admin_put("/admin/algorithm", &json!({"algorithm": "least_conn"}))
            .await;
        assert_eq!(
            (r.status, &r.json["applied"]),
            (507, &json!(true)),
            "{}",
            r.text
        );
        let r = lb
            .admin_put("/admin/backends/app-4/mode", &json!({"mode": "drain"}))
            .await;
        assert_eq!(
            (r.status, &r.json["applied"]),
            (507, &json!(true)),
            "{}",
            r.text
        );
        let r = lb.reload().await;
        assert_eq!(
            (r.status, &r.json["applied"]),
            (507, &json!(true)),
            "{}",
            r.text
        );
        let errors = lb.scrape().await.value("lb_state_file_errors_total", &[]);
        assert!(errors >= errors_before + 4.0, "{errors_before} -> {errors}");

        // The directory is back: the next change is saved, with the others.
        std::fs::remove_file(&sub).unwrap();
        std::fs::create_dir(&sub).unwrap();
        lb.set_weights(&json!({"app-3": 3})).await;
        let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(
            saved["weights"],
            json!({"app-1": 7, "app-2": 2, "app-3": 3, "app-4": 1})
        );
        assert_eq!(saved["algorithm"], "least_conn");
        assert_eq!(saved["modes"]["app-4"], "drain");
        // No temp file left behind by the failures or the success.
        let leftovers: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    })
    .await;
}

/// The admin API and the SIGHUP handler run on different threads of lb and
/// both persist after their change: each write must still be atomic (temp
/// file + fsync + rename) and the file must end up holding the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_racing_sighup_reloads_persist_cleanly() {
    serial(async {
        const ROUNDS: usize = 100;
        const PARALLEL: usize = 8;
        let apps = Apps::plain(4).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1, 1, 1])).await;
        let from = lb.log_len();
        let mut bad_rounds = Vec::new();
        for round in 0..ROUNDS {
            // A same-file reload (it persists too) racing PARALLEL weight changes.
            lb.sighup();
            let mut tasks = Vec::new();
            for i in 0..PARALLEL {
                let (url, body) = (
                    lb.admin_url("/admin/weights"),
                    json!({ NAMES[i % 4]: 1 + (round * PARALLEL + i) % 50 }),
                );
                tasks.push(tokio::spawn(async move {
                    client()
                        .put(url)
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().ok(), Some(200));
            }
            let mem = lb.weights().await;
            let disk = std::fs::read(&state)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            let on_disk: Option<BTreeMap<String, u64>> = disk
                .as_ref()
                .and_then(|v| serde_json::from_value(v["weights"].clone()).ok());
            if on_disk.as_ref() != Some(&mem) {
                bad_rounds.push(format!("round {round}: memory {mem:?}, disk {disk:?}"));
            }
        }
        let reloads = lb
            .scrape()
            .await
            .value("lb_config_reloads_total", &[("result", "success")]);
        let warnings = state_warnings(&lb, from);
        println!(
            "[race] {ROUNDS} rounds of SIGHUP + {PARALLEL} parallel PUT /admin/weights \
             ({reloads} reloads applied): {} rounds where the file differs from memory \
             {bad_rounds:#?}; {} failed state-file writes, first: {:#?}",
            bad_rounds.len(),
            warnings.len(),
            warnings.iter().take(3).collect::<Vec<_>>()
        );
        assert!(bad_rounds.is_empty(), "state file is not the current state");
        // Nothing here can make a write fail but two writers colliding.
        assert!(
            warnings.is_empty(),
            "state-file writes failed under concurrency"
        );
    })
    .await;
}
