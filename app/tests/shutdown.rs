//! Graceful shutdown: in-flight requests finish, the shutdown delay keeps the
//! listener open with /health = 503, and `serve` then returns Ok.

mod common;

use std::time::{Duration, Instant};

use app::Options;
use common::{client, opts, start};

/// Waits until the app sees `n` requests in flight (bounded).
async fn wait_in_flight(app: &app::App, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.in_flight() < n {
        assert!(Instant::now() < deadline, "request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn serve_returns_after_in_flight_request_completes() {
    let mut s = start(Options {
        delay: Duration::from_millis(200),
        ..opts("drain")
    })
    .await;
    let c = client();
    let slow = tokio::spawn(c.get(s.url("/api/whoami")).send());
    wait_in_flight(&s.app, 1).await;

    let t = Instant::now();
    s.signal();
    let resp = slow.await.expect("join").expect("slow request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close"),
        "draining responses ask the client to drop the connection"
    );
    let app = std::sync::Arc::clone(&s.app);
    let addr = s.addr;
    s.join().await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(app.is_shutting_down());
    assert_eq!(app.in_flight(), 0);

    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_delay_keeps_serving_with_health_503() {
    let mut s = start(Options {
        shutdown_delay: Duration::from_millis(400),
        ..opts("prestop")
    })
    .await;
    let c = client();
    assert_eq!(
        c.get(s.url("/health"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );
    let t = Instant::now();
    s.signal();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Still accepting new connections during the delay, but unhealthy.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(common::STEP)
        .build()
        .expect("client");
    let resp = fresh.get(s.url("/health")).send().await.expect("health");
    assert_eq!(resp.status(), 503);
    let resp = fresh
        .get(s.url("/api/whoami"))
        .send()
        .await
        .expect("whoami");
    assert_eq!(resp.status(), 200, "work is still served while draining");

    s.join().await;
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "serve waited for the shutdown delay"
    );
}
