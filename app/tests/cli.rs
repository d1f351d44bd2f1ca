//! The real binary: exit codes of bad input and of `healthcheck`, the start
//! line, and SIGTERM -> exit 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_app");

/// Waits for `child` to exit within `limit`, killing it if it does not.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("app did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_input_exits_2() {
    for args in [
        &["--error-rate", "1.5"][..],
        &["--error-rate", "nan"],
        &["--mode", "turbo"],
        &["--listen", "not-an-addr"],
        &["--no-such-flag"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("PORT")
            .env_remove("PERFORMANCE_MODE")
            .output()
            .expect("run app");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
    }
    let out = Command::new(BIN)
        .args(["--error-rate", "2"])
        .output()
        .expect("run app");
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0.0 and 1.0"));
}

#[test]
fn healthcheck_against_closed_port_exits_1() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = Command::new(BIN)
        .args(["healthcheck"])
        .env("PORT", port.to_string())
        .output()
        .expect("run app");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
}

#[test]
fn serves_prints_start_line_and_exits_0_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--id", "cli-1", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn app");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("start line");
    let addr = line
        .trim()
        .strip_prefix("app cli-1 listening on ")
        .unwrap_or_else(|| panic!("unexpected start line {line:?}"))
        .to_owned();

    let hc = Command::new(BIN)
        .args(["healthcheck", &format!("http://{addr}/health")])
        .status()
        .expect("run healthcheck");
    assert_eq!(hc.code(), Some(0));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}
