//! lb against `slowhttptest` (Debian's), the tool operators use to check a
//! server for slow HTTP denial of service: slowloris (slow headers), slow
//! body (R-U-Dead-Yet) and slow read, each short and bounded, with normal
//! clients served meanwhile. `make test` installs slowhttptest
//! (`scripts/deps.sh test`); a machine without it fails these tests by name.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One slowhttptest run: its per-second CSV rows and the second it ended.
struct Run {
    /// (second, closed, pending, connected, service available).
    rows: Vec<(u32, u32, u32, u32, u32)>,
    /// "Test ended on Nth second" (None: it hit its time limit).
    ended: Option<u32>,
    exit: String,
}

/// Runs `slowhttptest` with `args` against `url` (bounded by `-l` seconds
/// and a hard timeout of twice that).
fn slowhttptest(args: &[&str], url: &str, limit_s: u32) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("run");
    let limit = limit_s.to_string();
    let out = Command::new("timeout")
        .arg((2 * limit_s + 10).to_string())
        .arg("slowhttptest")
        .args(args)
        .args(["-l", &limit, "-u", url, "-g", "-o"])
        .arg(&prefix)
        .output()
        .expect("slowhttptest is installed (scripts/deps.sh test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let csv = std::fs::read_to_string(prefix.with_extension("csv"))
        .unwrap_or_else(|e| panic!("no CSV from slowhttptest ({e}):\n{stdout}"));
    let rows = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let v: Vec<u32> = l.split(',').filter_map(|f| f.trim().parse().ok()).collect();
            (v.len() == 5).then(|| (v[0], v[1], v[2], v[3], v[4]))
        })
        .collect();
    let plain: String = strip_ansi(&stdout);
    let ended = plain
        .split("Test ended on ")
        .nth(1)
        .and_then(|r| r.split("th second").next())
        .and_then(|n| n.trim().parse().ok());
    let exit = plain
        .split("Exit status:")
        .nth(1)
        .map(|r| r.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    Run { rows, ended, exit }
}

/// `s` without ANSI colour sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Normal clients during an attack: `n` GETs, one every 50 ms; their
/// statuses and the slowest.
async fn normal_clients(lb: &Lb, n: usize) -> (Vec<u16>, Duration) {
    let c = client();
    let mut statuses = Vec::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let s = c
            .get(lb.url("/x"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
        slowest = slowest.max(started.elapsed());
        statuses.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (statuses, slowest)
}

/// lb with 2 s limits in front of a stub backend (a 64 MiB body on /big).
async fn start(stub: &StubBackend) -> Lb {
    Lb::start_server(
        "header_timeout = \"2s\"\nbody_timeout = \"2s\"\nsend_timeout = \"2s\"",
        "",
        &format!("[health]\ninterval = \"1h\"\n\n{}", stub.toml("app")),
        QUIET_LOG,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_header_timeout() {
    let stub = StubBackend::start(200, 64 << 20).await;
    let lb = start(&stub).await;
    let url = lb.url("/x");
    // 200 connections sending a header line every second, for up to 10 s.
    let attack = tokio::task::spawn_blocking(move || {
        slowhttptest(
            &["-H", "-c", "200", "-r", "200", "-i", "1", "-p", "2"],
            &url,
            10,
        )
    });
    let (statuses, slowest) = normal_clients(&lb, 40).await;
    let run = attack.await.unwrap();
    // Every attacking connection was closed by lb (2 s header_timeout) long
    // before the 10 s run would end: slowhttptest stops when none is left.
    let ended = run
        .ended
        .unwrap_or_else(|| panic!("ran to its limit: {}", run.exit));
    assert!(ended <= 6, "ended on second {ended}: {}", run.exit);
    assert_eq!(run.exit, "No open connections left");
    let most_connected = run.rows.iter().map(|r| r.3).max().unwrap_or(0);
    assert!(
        most_connected >= 150,
        "the attack never got going: {:?}",
        run.rows
    );
    // slowhttptest's own probe and the normal clients were served throughout.
    assert!(
        run.rows.iter().all(|r| r.4 > 0),
        "service unavailable: {:?}",
        run.rows
    );
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    println!(
        "slowloris 200 conns: all closed by second {ended}; 40 normal GETs all 200, slowest {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_closed_at_body_timeout() {
    let stub = StubBackend::start(200, 0).await;
    let lb = start(&stub).await;
    let url = lb.url("/upload");
    // 50 POSTs of 8 KiB sending a body fragment every 3 s (above body_timeout).
    let attack = tokio::task::spawn_blocking(move || {
        slowhttptest(
            &[
                "-B", "-c", "50", "-r", "50", "-i", "3", "-s", "8192", "-p", "2",
            ],
            &url,
            10,
        )
    });
    let (statuses, _) = normal_clients(&lb, 20).await;
    let run = attack.await.unwrap();
    let ended = run
        .ended
        .unwrap_or_else(|| panic!("ran to its limit: {}", run.exit));
    assert!(ended <= 6, "ended on second {ended}: {}", run.exit);
    assert_eq!(run.exit, "No open connections left");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // lb's HTTP/1 path reads a Content-Length body whole before sending it
    // on: no POST reached the backend (its hits are the GETs and the probes).
    assert_eq!(
        stub.posts.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a partial body reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_off_at_send_timeout() {
    let stub = StubBackend::start(200, 64 << 20).await;
    let lb = start(&stub).await;
    let url = lb.url("/big");
    // 20 connections each reading 1 byte every 5 s through a tiny window.
    let attack = tokio::task::spawn_blocking(move || {
        slowhttptest(
            &[
                "-X", "-c", "20", "-r", "20", "-n", "5", "-w", "1", "-y", "16", "-z", "1", "-p",
                "2",
            ],
            &url,
            8,
        )
    });
    let (statuses, _) = normal_clients(&lb, 20).await;
    // lb stops writing to each within send_timeout (2 s) of its last taken
    // byte and drops its backend connection: the backend sees every one cut,
    // long before the attack's 8 s are over. (slowhttptest itself goes on
    // seeing them open: the kernel keeps delivering what lb had already
    // handed it, a byte per read, after lb closed its side.)
    let cut = eventually(Duration::from_secs(7), || {
        stub.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 20
    })
    .await;
    let cuts = stub.cuts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cut, "{cuts} of 20 slow readers cut off");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let run = attack.await.unwrap();
    // (slowhttptest's probe downloads the body too; once the attack is over,
    // nothing is left in flight.)
    let mut in_flight = f64::NAN;
    for _ in 0..50 {
        let scrape = lb.scrape().await;
        in_flight = scrape.value("lb_backend_in_flight", &[("backend", "app")]);
        if in_flight == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_flight, 0.0);
    let most_connected = run.rows.iter().map(|r| r.3).max().unwrap_or(0);
    assert!(
        most_connected >= 15,
        "the attack never got going: {:?}",
        run.rows
    );
    println!("slow read, 20 conns of a 64 MiB body: all 20 cut off by lb, 20 normal GETs all 200");
}
