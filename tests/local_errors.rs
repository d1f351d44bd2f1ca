//! lb's own shortages (SPEC "Slow and abusive clients, overload, local
//! errors"), made real with the kernel's tools rather than mocks:
//!
//! - `strace -e inject=connect:error=EMFILE` on the running lb: every
//!   upstream connect fails as if lb were out of descriptors. Requests get
//!   lb's `503`, `lb_local_errors_total{errno="EMFILE"}` counts them, and the
//!   backend is not charged (its circuit stays closed, no upstream errors).
//! - `strace -e inject=fsync:error=ENOSPC`: the disk is full when the state
//!   file is saved. The change stays applied and is answered `507`
//!   (`"applied": true`), the old file is intact, no temp file is left.
//! - `prlimit --nofile` lowered on the running lb: accepting fails with
//!   EMFILE. lb pauses accepting (at most one log line per second), stays up,
//!   and answers every connection that waited: served once descriptors are
//!   back, or lb's `503` if it got in during the shortage.
//! - `strace -e inject=accept4:error=ENFILE`: the system is out of
//!   descriptors. lb's accept loops pause (100 ms at most between tries)
//!   instead of spinning, log at most one line per second, and serve the
//!   clients who waited once the shortage ends.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every thread of `pid` is traced (or, with `want = false`, none is).
fn traced(pid: u32, want: bool) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map_or(0, |v| v.trim().parse::<u32>().unwrap_or(0));
        (tracer != 0) == want
    })
}

/// strace attached to every thread of `pid`, killed on drop.
struct Strace(Child);

impl Strace {
    /// Attaches with `inject` = `SYSCALL:error=ERRNO`.
    async fn attach(pid: u32, inject: &str) -> Strace {
        Strace::attach_to(pid, inject, std::path::Path::new("/dev/null")).await
    }

    /// As [`Strace::attach`], writing the traced calls to `out`.
    async fn attach_to(pid: u32, inject: &str, out: &std::path::Path) -> Strace {
        let syscall = inject.split(':').next().unwrap();
        let child = Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(out)
            .arg("-e")
            .arg(format!("trace={syscall}"))
            .arg("-e")
            .arg(format!("inject={inject}"))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (installed by scripts/deps.sh test)");
        let s = Strace(child);
        assert!(
            eventually(Duration::from_secs(10), || traced(pid, true)).await,
            "strace did not attach to every thread of lb"
        );
        s
    }

    async fn detach(mut self, pid: u32) {
        // SIGTERM: strace detaches cleanly (SIGKILL could leave lb stopped).
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
        assert!(
            eventually(Duration::from_secs(10), || traced(pid, false)).await,
            "strace did not detach"
        );
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// A counter's value: `name` with exactly `labels`.
async fn metric(lb: &Lb, name: &str, labels: &[(&str, &str)]) -> u64 {
    lb.scrape().await.value(name, labels) as u64
}

/// The soft open-file limit of `pid`.
fn soft_nofile(pid: u32) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn emfile_on_upstream_connect_is_lbs_own_503_never_the_backends() {
    let apps = Apps::plain(1).await;
    // No pooled upstream connections (every request connects), and health
    // checks far apart (they connect too; the first ran at start).
    let body = format!(
        "[timeouts]\nupstream_idle = \"0s\"\n[health]\ninterval = \"1h\"\n{}",
        apps.backends_toml(&[1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    assert_eq!(get_backend(&c, &lb.url("/api/echo")).await.0, 200);

    let strace = Strace::attach(lb.pid(), "connect:error=EMFILE").await;
    for _ in 0..10 {
        // A fresh client each time: no client connection kept either.
        let r = client()
            .get(lb.url("/api/echo"))
            .header("connection", "close")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let text = r.text().await.unwrap();
        assert!(text.contains("local resource shortage"), "{text}");
    }
    strace.detach(lb.pid()).await;

    // Each request tried retry.attempts (3) times (the shortage may pass),
    // every try a local error: exactly 30.
    assert_eq!(
        metric(&lb, "lb_local_errors_total", &[("errno", "EMFILE")]).await,
        30
    );
    // The backend was charged nothing: circuit closed, no upstream errors.
    let backends = lb.admin_get("/admin/backends").await.json;
    assert_eq!(backends[0]["circuit"], "closed", "{backends}");
    assert_eq!(backends[0]["health"], "up", "{backends}");
    // The one request served before the injection; the 10 refused ones were
    // lb's, not the backend's.
    assert_eq!(backends[0]["errors_total"], 0, "{backends}");
    let text = lb.scrape().await.text;
    for l in text
        .lines()
        .filter(|l| l.starts_with("lb_upstream_errors_total{"))
    {
        assert!(l.ends_with(" 0"), "{l}");
    }
    // Descriptors back: served again.
    assert_eq!(get_backend(&client(), &lb.url("/api/echo")).await.0, 200);
}

#[tokio::test]
async fn out_of_descriptors_at_accept_lb_pauses_then_serves_those_who_waited() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start_logging("", &apps.backends_toml(&[1]), "info").await;
    let pid = lb.pid();
    assert_eq!(get_backend(&client(), &lb.url("/api/echo")).await.0, 200);

    // Leave lb no descriptor to accept with: its soft limit down to what it
    // has open (the hard limit stays, so the soft one can go back up).
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let soft_before = soft_nofile(pid);
    let prlimit = |limit: usize| {
        let st = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
            .status()
            .expect("prlimit (util-linux)");
        assert!(st.success());
    };
    prlimit(open);
    let from = lb.log_len();
    let t = Instant::now();
    // Clients connect (the kernel's backlog takes them) and send a request.
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        waiting.push(s);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = lb.log_text()[from..].to_string();
    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    let secs = t.elapsed().as_secs_f64();
    // At most one line per second, +1 for the second the first failure
    // fell in.
    assert!(failures >= 1, "no accept failure logged:\n{log}");
    assert!(
        failures as f64 <= secs + 1.0,
        "{failures} accept failures logged in {secs:.1} s:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");

    // Descriptors back (the start-up limit): those who waited are served.
    prlimit(soft_before);
    for mut s in waiting {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("a waiting client was not served after descriptors came back")
            .unwrap();
        // Served after the limit went back up (200), or accepted into a gap
        // during the shortage and answered lb's 503 when its upstream
        // connect found no descriptor: answered either way, never reset.
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200")
                || (text.starts_with("HTTP/1.1 503") && text.contains("local resource shortage")),
            "{text}"
        );
    }
    assert_eq!(get_backend(&client(), &lb.url("/api/echo")).await.0, 200);
}

/// ENFILE at accept (the whole system out of descriptors): Pingora's accept
/// loop retried at once and logged every failure, a busy loop for as long
/// as the shortage lasted. lb's pauses.
#[tokio::test]
async fn enfile_at_accept_pauses_accepting_without_spinning() {
    let apps = Apps::plain(1).await;
    // The suite's lb runs 2 workers: both accept loops must pause.
    let lb = Lb::start_logging("", &apps.backends_toml(&[1]), "info").await;
    let pid = lb.pid();
    assert_eq!(get_backend(&client(), &lb.url("/api/echo")).await.0, 200);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("accept4.trace");
    let from = lb.log_len();
    let strace = Strace::attach_to(pid, "accept4:error=ENFILE", &trace).await;
    let t = Instant::now();
    // A client arrives during the shortage: the kernel's backlog holds it.
    let mut waiting = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    waiting
        .write_all(b"GET /api/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = t.elapsed().as_secs_f64();
    strace.detach(pid).await;
    let calls = std::fs::read_to_string(&trace).unwrap();
    let failed = calls.matches("ENFILE").count();
    println!("{failed} accept4 calls failed with ENFILE in {secs:.1} s");
    // Each of the 2 accept loops tries again after 100 ms at most (no
    // connection closes to wake it): about 10 tries a second each, 60 in
    // 3 s; a tracer slows each call, so fewer. 200 leaves room for a
    // wake-up per try from the other loop's failures; a loop that does not
    // pause makes tens of thousands in 3 s even under strace.
    assert!(
        failed >= 2,
        "the client's connection was never tried:\n{calls}"
    );
    assert!(
        (failed as f64) <= 200.0 * secs / 3.0,
        "{failed} accept4 calls failed in {secs:.1} s"
    );
    let log = lb.log_text()[from..].to_string();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(lines >= 1, "no accept failure logged:\n{log}");
    assert!(
        lines as f64 <= secs + 2.0,
        "{lines} accept failures logged in {secs:.1} s:\n{log}"
    );
    // The shortage over: the client who waited is served.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut out))
        .await
        .expect("the waiting client was not served after the shortage")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn a_full_disk_at_the_state_file_is_a_507_with_the_change_applied_and_the_old_file_intact() {
    let apps = Apps::plain(2).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("lb-state.json");
    let lb = Lb::start_full(
        &format!("state_file = \"{}\"", state.display()),
        &apps.backends_toml(&[1, 1]),
    )
    .await;
    let r = lb
        .admin_put("/admin/weights", &serde_json::json!({"app-1": 3}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let saved = std::fs::read(&state).unwrap();

    let strace = Strace::attach(lb.pid(), "fsync:error=ENOSPC").await;
    let r = lb
        .admin_put("/admin/weights", &serde_json::json!({"app-2": 5}))
        .await;
    strace.detach(lb.pid()).await;
    assert_eq!(r.status, 507, "{}", r.text);
    assert_eq!(r.json["applied"], true, "{}", r.text);
    // Applied in memory all the same.
    let w = lb.admin_get("/admin/weights").await;
    assert_eq!(w.json["app-2"], 5, "{}", w.text);
    // The file on disk is the one before, and nothing else was left there.
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lb.toml" && n != "lb.log")
        .collect();
    assert_eq!(names, ["lb-state.json"], "a temp file was left behind");
    assert_eq!(metric(&lb, "lb_state_file_errors_total", &[]).await, 1);
    // Disk back: the next change is saved with both.
    let r = lb
        .admin_put("/admin/weights", &serde_json::json!({"app-1": 4}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let now: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        (
            now["weights"]["app-1"].as_u64(),
            now["weights"]["app-2"].as_u64()
        ),
        (Some(4), Some(5))
    );
}
