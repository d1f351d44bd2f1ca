//! Endpoint contract tests: each starts an app in-process on 127.0.0.1:0.

mod common;

use std::time::{Duration, Instant};

use app::{Mode, Options};
use common::{client, opts, start};
use serde_json::Value;

async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = c.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

#[tokio::test]
async fn health_is_200_then_503_after_begin_shutdown() {
    let s = start(opts("h-1")).await;
    let c = client();
    let (status, body) = get_json(&c, &s.url("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["container"], "h-1");
    assert!(body["uptime_s"].as_f64().is_some());
    assert_eq!(body["in_flight"], 1, "the probe itself is in flight");

    s.app.begin_shutdown();
    let (status, body) = get_json(&c, &s.url("/health")).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "shutting_down");
    assert_eq!(body["container"], "h-1");
    s.stop().await;
}

#[tokio::test]
async fn whoami_has_all_fields() {
    let s = start(opts("who")).await;
    let (status, body) = get_json(&client(), &s.url("/api/whoami")).await;
    assert_eq!(status, 200);
    assert_eq!(body["container"], "who");
    assert_eq!(body["pid"], std::process::id());
    assert!(!body["hostname"].as_str().unwrap_or("").is_empty());
    let ts = body["timestamp"].as_str().expect("timestamp string");
    assert!(ts.ends_with('Z') && ts.contains('T'), "RFC 3339: {ts}");
    assert!(body["timestamp_ms"].as_u64().expect("ms") > 1_600_000_000_000);
    s.stop().await;
}

#[tokio::test]
async fn session_counter_per_session_id() {
    let s = start(opts("sess")).await;
    let c = client();
    let post = |sid: Option<&'static str>| {
        let mut rb = c.post(s.url("/api/session"));
        if let Some(id) = sid {
            rb = rb.header("X-Session-Id", id);
        }
        async move {
            let resp = rb.send().await.expect("request");
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.expect("json")
        }
    };
    for expected in 1..=3 {
        let body = post(Some("alice")).await;
        assert_eq!(body["sessionId"], "alice");
        assert_eq!(body["requestCount"], expected);
        assert_eq!(body["container"], "sess");
    }
    assert_eq!(post(Some("bob")).await["requestCount"], 1);
    assert_eq!(post(Some("alice")).await["requestCount"], 4);

    let a = post(None).await;
    let b = post(None).await;
    assert_eq!(a["requestCount"], 1);
    assert_eq!(b["requestCount"], 1);
    assert_ne!(a["sessionId"], b["sessionId"]);
    assert!(!a["sessionId"].as_str().unwrap_or("").is_empty());

    // Oversized ids are refused, not stored.
    let long = "x".repeat(1000);
    let resp = c
        .post(s.url("/api/session"))
        .header("X-Session-Id", long)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn data_is_cached_per_client() {
    let s = start(opts("data")).await;
    let c = client();
    let (status, first) = get_json(&c, &s.url("/api/data/client-7")).await;
    assert_eq!(status, 200);
    assert_eq!(first["cached"], false);
    assert_eq!(first["container"], "data");
    assert_eq!(first["clientId"], "client-7");
    let (_, second) = get_json(&c, &s.url("/api/data/client-7")).await;
    assert_eq!(second["cached"], true);
    assert_eq!(first["records"], second["records"]);
    assert!(!first["records"].as_array().expect("records").is_empty());

    let (_, other) = get_json(&c, &s.url("/api/data/client-8")).await;
    assert_eq!(other["cached"], false);
    assert_ne!(other["records"], first["records"]);
    s.stop().await;
}

#[tokio::test]
async fn load_test_defaults_and_bounds() {
    let s = start(opts("lt")).await;
    let c = client();
    let (status, body) = get_json(&c, &s.url("/api/load-test")).await;
    assert_eq!(status, 200);
    assert_eq!(body["container"], "lt");
    assert_eq!(body["iterations"], 1000);
    assert!(body["result"].is_string());
    assert!(body["duration_ms"].as_f64().is_some());

    let (status, body) = get_json(&c, &s.url("/api/load-test?iterations=20000")).await;
    assert_eq!(status, 200);
    assert_eq!(body["iterations"], 20000);

    for bad in ["5000001", "-1", "abc", "99999999999999999999999"] {
        let (status, body) =
            get_json(&c, &s.url(&format!("/api/load-test?iterations={bad}"))).await;
        assert_eq!(status, 400, "iterations={bad}");
        assert!(body["error"].is_string());
    }
    s.stop().await;
}

#[tokio::test]
async fn mode_scales_load_test_work_and_low_adds_latency() {
    let low = start(Options {
        mode: Mode::Low,
        ..opts("low")
    })
    .await;
    let high = start(Options {
        mode: Mode::High,
        ..opts("high")
    })
    .await;
    let c = client();
    let url = "/api/load-test?iterations=101";
    let t = Instant::now();
    let (_, body) = get_json(&c, &low.url(url)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(25),
        "low mode adds 25 ms"
    );
    assert_eq!(body["work_iterations"], 202);
    let (_, body) = get_json(&c, &high.url(url)).await;
    assert_eq!(body["work_iterations"], 51);
    assert_eq!(body["iterations"], 101);
    low.stop().await;
    high.stop().await;
}

#[tokio::test]
async fn echo_returns_request_headers() {
    let s = start(opts("echo")).await;
    let resp = client()
        .get(s.url("/api/echo?x=1&y=2"))
        .header("X-Custom-Thing", "hello")
        .header("X-Multi", "a")
        .header("X-Multi", "b")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["container"], "echo");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/api/echo");
    assert_eq!(body["query"], "x=1&y=2");
    assert_eq!(body["headers"]["x-custom-thing"], "hello");
    assert_eq!(body["headers"]["x-multi"], "a, b");
    assert!(body["headers"]["host"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn error_rate_fails_api_but_not_health_and_recovers() {
    let s = start(Options {
        error_rate: 1.0,
        ..opts("err")
    })
    .await;
    let c = client();
    for _ in 0..5 {
        let (status, body) = get_json(&c, &s.url("/api/whoami")).await;
        assert_eq!(status, 500);
        assert_eq!(body["error"], "injected failure");
        assert_eq!(body["container"], "err");
    }
    let (status, _) = get_json(&c, &s.url("/health")).await;
    assert_eq!(status, 200);

    s.app.set_error_rate(0.0);
    for _ in 0..5 {
        let (status, _) = get_json(&c, &s.url("/api/whoami")).await;
        assert_eq!(status, 200);
    }
    s.stop().await;
}

#[tokio::test]
async fn max_concurrency_rejects_with_retry_after() {
    let s = start(Options {
        delay: Duration::from_millis(400),
        max_concurrency: Some(1),
        ..opts("mc")
    })
    .await;
    let c = client();
    let slow = tokio::spawn(c.get(s.url("/api/whoami")).send());
    // Let the first request take the only slot (it then sleeps 400 ms holding it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.app.in_flight() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let resp = c.get(s.url("/api/whoami")).send().await.expect("request");
    assert!(t.elapsed() < Duration::from_millis(300), "rejected at once");
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await.expect("json");
    assert!(body["error"].is_string());

    let first = slow.await.expect("join").expect("slow request");
    assert_eq!(first.status(), 200);
    // Both were counted, including the rejected one.
    assert_eq!(s.app.api_requests_total(), 2);
    s.stop().await;
}

/// Worker-pool mode: one worker, 100 ms each. Three requests at once are
/// served one after another (the last waits two service times in the queue,
/// shown by `/health`), and `PUT /fault` changes the service time. Only lower
/// bounds on time: a loaded machine is slower, never faster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pool_queues_beyond_its_workers() {
    let s = start(Options {
        workers: Some(1),
        service_time: Duration::from_millis(100),
        ..opts("pool")
    })
    .await;
    let c = client();
    let t = Instant::now();
    let reqs: Vec<_> = (0..3)
        .map(|_| tokio::spawn(c.get(s.url("/api/whoami")).send()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.app.queued() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, health) = get_json(&c, &s.url("/health")).await;
    assert_eq!(status, 200, "health is never queued");
    assert_eq!(health["workers"], 1);
    assert_eq!(health["busy"], 1);
    assert_eq!(health["queued"], 2);
    for r in reqs {
        assert_eq!(r.await.expect("join").expect("request").status(), 200);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s.app.queued(), 0);

    let resp = c
        .put(s.url("/fault"))
        .body(r#"{"service_time_ms": 20}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["service_time_ms"], 20.0);
    assert_eq!(s.app.service_time(), Duration::from_millis(20));
    let resp = c
        .put(s.url("/fault"))
        .body(r#"{"service_time_ms": 99999999}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn put_fault_validates_and_applies() {
    let s = start(opts("fault")).await;
    let c = client();
    let put = |body: &'static str| c.put(s.url("/fault")).body(body).send();

    for bad in [
        r#"{"error_rate": 1.5}"#,
        r#"{"error_rate": -0.1, "delay_ms": 5}"#,
        r#"{"delay_ms": -1}"#,
        r#"{"delay_ms": 99999999}"#,
        r#"{"delay": 5}"#,
        "not json",
    ] {
        let resp = put(bad).await.expect("request");
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.expect("json");
        assert!(body["error"].is_string(), "{bad}");
    }
    assert_eq!(s.app.error_rate(), 0.0, "nothing changed");
    assert_eq!(s.app.delay(), Duration::ZERO, "nothing changed");

    let resp = put(r#"{"error_rate": 1.0}"#).await.expect("request");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error_rate"], 1.0);
    assert_eq!(body["delay_ms"], 0);
    let (status, _) = get_json(&c, &s.url("/api/whoami")).await;
    assert_eq!(status, 500);

    let resp = put(r#"{"error_rate": 0, "delay_ms": 50}"#)
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let t = Instant::now();
    let (status, _) = get_json(&c, &s.url("/api/whoami")).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(50));
    let (_, body) = get_json(&c, &s.url("/fault")).await;
    assert_eq!(body["delay_ms"], 50);
    assert_eq!(body["error_rate"], 0.0);
    assert_eq!(body["leaked_mb"], 0);

    // leak_mb adds up; beyond the cap nothing is allocated.
    for _ in 0..2 {
        let resp = put(r#"{"leak_mb": 4}"#).await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    let resp = put(r#"{"leak_mb": 4096}"#).await.expect("request");
    assert_eq!(resp.status(), 400);
    let (_, body) = get_json(&c, &s.url("/fault")).await;
    assert_eq!(body["leaked_mb"], 8);
    s.stop().await;
}

#[tokio::test]
async fn counters_count_every_request() {
    let s = start(opts("cnt")).await;
    let c = client();
    get_json(&c, &s.url("/health")).await;
    get_json(&c, &s.url("/api/whoami")).await;
    get_json(&c, &s.url("/no/such/path")).await;
    c.post(s.url("/api/session")).send().await.expect("post");
    c.post(s.url("/api/echo"))
        .body("x")
        .send()
        .await
        .expect("post");
    let resp = c.post(s.url("/health")).send().await.expect("post");
    assert_eq!(resp.status(), 405);
    c.get(s.url("/metrics")).send().await.expect("metrics");

    assert_eq!(s.app.requests_total(), 7);
    assert_eq!(s.app.api_requests_total(), 4, "whoami, 404, session, echo");
    assert_eq!(s.app.posts_total(), 3);
    assert_eq!(s.app.in_flight(), 0);
    s.stop().await;
}

#[tokio::test]
async fn metrics_exposes_app_and_process_metrics() {
    let s = start(opts("met")).await;
    let c = client();
    get_json(&c, &s.url("/api/data/abc")).await;
    get_json(&c, &s.url("/api/data/def")).await;
    let resp = c.get(s.url("/metrics")).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    assert!(text.contains("app_requests_total"), "{text}");
    assert!(text.contains("app_in_flight"));
    assert!(text.contains("app_request_duration_seconds"));
    assert!(text.contains(
        r#"app_requests_total{method="GET",path="/api/data/{client_id}",status="200"} 2"#
    ));
    #[cfg(target_os = "linux")]
    assert!(text.contains("process_resident_memory_bytes"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_probe() {
    let s = start(opts("hc")).await;
    let url = s.url("/health");
    let ok = tokio::task::spawn_blocking(move || app::healthcheck(&url))
        .await
        .expect("join");
    assert_eq!(ok, Ok(()));

    // 503 while shutting down is a failure too.
    s.app.begin_shutdown();
    let url = s.url("/health");
    let draining = tokio::task::spawn_blocking(move || app::healthcheck(&url))
        .await
        .expect("join");
    assert!(draining.is_err());
    s.stop().await;

    // A closed port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let closed = tokio::task::spawn_blocking(move || {
        app::healthcheck(&format!("http://127.0.0.1:{port}/health"))
    })
    .await
    .expect("join");
    let err = closed.expect_err("closed port fails");
    assert!(!err.is_empty() && !err.contains('\n'), "one line: {err}");
}

#[tokio::test]
async fn unknown_path_is_json_404() {
    let s = start(opts("nf")).await;
    let (status, body) = get_json(&client(), &s.url("/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(body["container"], "nf");
    s.stop().await;
}
