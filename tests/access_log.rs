//! The access log: one structured event per request, in text or JSON, and
//! none with `access = false`.

mod common;

use common::*;
use serde_json::Value;

/// lb's log lines for the access target, after `n` requests (one with a
/// client request id), once lb has written them.
async fn access_lines(format: &str, access: bool, n: usize) -> (Lb, Vec<String>) {
    let apps = Apps::plain(1).await;
    let body = format!(
        "[log]\nformat = \"{format}\"\naccess = {access}\n\n{}",
        apps.backends_toml(&[1])
    );
    let lb = Lb::start_logging("", &body, "info").await;
    let c = client();
    for i in 0..n {
        let mut req = c.get(lb.url(&format!("/api/whoami?i={i}")));
        if i == 0 {
            req = req.header("x-request-id", "trace-me-1");
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    // Access events are written after the response; give lb a moment.
    let mut lines = Vec::new();
    eventually(std::time::Duration::from_secs(5), || {
        lines = lb
            .log_text()
            .lines()
            .filter(|l| l.contains("access"))
            .filter(|l| l.contains("request_id"))
            .map(str::to_string)
            .collect();
        lines.len() >= n || !access
    })
    .await;
    std::mem::drop(apps);
    (lb, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_one_event_per_request_with_every_field() {
    let (_lb, lines) = access_lines("json", true, 5).await;
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &events {
        assert_eq!(e["target"], "access", "{e}");
        for k in [
            "client",
            "method",
            "path",
            "status",
            "backend",
            "attempts",
            "upstream_ms",
            "total_ms",
            "bytes",
            "request_id",
        ] {
            assert!(!e[k].is_null(), "{k} missing in {e}");
        }
        assert_eq!(e["method"], "GET");
        assert_eq!(e["path"], "/api/whoami");
        assert_eq!(e["status"], 200);
        assert_eq!(e["backend"], "app-1");
        assert_eq!(e["attempts"], 1);
        assert_eq!(e["client"], "127.0.0.1");
        assert!(e["bytes"].as_u64().unwrap() > 0);
        assert!(e["total_ms"].as_f64().unwrap() >= e["upstream_ms"].as_f64().unwrap());
    }
    assert!(events.iter().any(|e| e["request_id"] == "trace-me-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_log_and_access_off() {
    let (_lb, lines) = access_lines("text", true, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("status=200") && l.contains("backend=app-1")),
        "{lines:#?}"
    );
    let (_lb, lines) = access_lines("text", false, 3).await;
    assert!(lines.is_empty(), "access = false still logged: {lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_still_batched_are_written_when_lb_stops() {
    let apps = Apps::plain(1).await;
    let body = format!("[log]\naccess = true\n\n{}", apps.backends_toml(&[1]));
    let mut lb = Lb::start_logging("", &body, "info").await;
    let c = client();
    for i in 0..3 {
        let r = c
            .get(lb.url("/api/whoami"))
            .header("x-request-id", format!("stop-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Stop at once: the lines may still sit in a thread's batch (100 ms).
    assert!(lb.stop().await.success());
    let n = lb.log_lines("request_id=stop-").len();
    assert_eq!(n, 3, "{}", lb.log_text());
}
