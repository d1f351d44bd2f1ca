//! `admin.state_file` (SPEC "Admin API"): operator weights and modes survive a
//! restart; a corrupt or unwritable state file costs a warning, never the
//! service or the in-memory state; writers racing (admin API and SIGHUP
//! reload) still leave one whole, current file.
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

/// Makes `path` a FIFO: a writer's `open` blocks until someone opens it to read.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_state_file_write_never_stalls_metrics_or_health() {
    serial(async {
        let apps = Apps::plain(2).await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lb-state.json");
        // lb writes `.lb-state.json.tmp` first; as a FIFO with no reader, that
        // write blocks in open(2), like a disk that stopped answering.
        let tmp = dir.path().join(".lb-state.json.tmp");
        mkfifo(&tmp);
        let lb = Lb::start_full(&state_line(&state), &apps.backends_toml(&[1, 1])).await;
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
        // While the write is stuck, the admin runtime keeps answering. Before,
        // the write ran inside the handler on the admin API's one thread: these
        // waited for the disk.
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
                "GET {path} while the state file write is stuck: {r:?} after {took:?}"
            );
            println!("[stuck write] GET {path}: 200 in {took:?}");
            applied |= lb.weights().await["app-1"] == 3;
        }
        // The change itself is in effect (in memory) meanwhile.
        assert!(applied, "weights not applied while the write is stuck");
        // Let the writer through (it then fails on fsync of a FIFO, which is
        // logged), remove the FIFO, and the next change is written normally.
        let reader = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || std::fs::read(&tmp)
        });
        assert!(reader.await.unwrap().is_ok());
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(put.await.unwrap().unwrap(), 200);
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
        let r = lb.admin_put("/admin/weights", &json!({"app-1": 3})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = lb
            .admin_put(
                "/admin/backends/app-4/mode",
                &json!({"mode": "maintenance"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
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
