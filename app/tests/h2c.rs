//! HTTP/2 with prior knowledge (h2c) and HTTP/1.1 on the same port, and the
//! `x-served-by` header on every answer whatever the protocol.

mod common;

use std::time::Duration;

use app::{Options, SERVED_BY};
use common::{client, opts, start, STEP};
use reqwest::Version;
use serde_json::Value;

/// A client that speaks HTTP/2 from the first byte (no upgrade, no TLS).
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(STEP)
        .build()
        .expect("client")
}

fn served_by(resp: &reqwest::Response) -> Option<&str> {
    resp.headers().get(SERVED_BY).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn h2c_and_http1_share_the_port() {
    let s = start(opts("h2-1")).await;
    for (client, version) in [
        (h2c_client(), Version::HTTP_2),
        (client(), Version::HTTP_11),
    ] {
        let resp = client
            .get(s.url("/api/whoami"))
            .send()
            .await
            .expect("whoami");
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(served_by(&resp), Some("h2-1"), "{version:?}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["container"], "h2-1");
    }
    s.stop().await;
}

#[tokio::test]
async fn h2c_carries_bodies_and_every_endpoint() {
    let s = start(opts("h2-body")).await;
    let c = h2c_client();
    let resp = c
        .post(s.url("/api/echo?x=1"))
        .header("x-test", "yes")
        .body(vec![b'a'; 100_000])
        .send()
        .await
        .expect("echo");
    assert_eq!(resp.version(), Version::HTTP_2);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["body_bytes"], 100_000);
    assert_eq!(body["headers"]["x-test"], "yes");

    // Errors and the 404 are named too, and many streams share one connection.
    let answers = futures_join(&c, &s.url("/no/such/path"), 20).await;
    for resp in answers {
        assert_eq!(resp.status(), 404);
        assert_eq!(served_by(&resp), Some("h2-body"));
    }
    assert_eq!(s.app.requests_total(), 21);
    s.stop().await;
}

/// `n` concurrent GETs of `url` (streams of one HTTP/2 connection).
async fn futures_join(c: &reqwest::Client, url: &str, n: usize) -> Vec<reqwest::Response> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(c.get(url).send())).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("join").expect("request"));
    }
    out
}

#[tokio::test]
async fn h2c_connection_drains_on_shutdown() {
    let mut s = start(Options {
        delay: Duration::from_millis(200),
        ..opts("h2-drain")
    })
    .await;
    let c = h2c_client();
    // An idle HTTP/2 connection must not hold `serve` open ...
    let resp = c.get(s.url("/health")).send().await.expect("health");
    assert_eq!(resp.version(), Version::HTTP_2);
    // ... and a request in flight on it finishes.
    let slow = tokio::spawn(c.get(s.url("/api/whoami")).send());
    while s.app.api_in_flight() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.signal();
    let resp = slow
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    s.join().await;
}
