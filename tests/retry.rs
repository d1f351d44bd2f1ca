//! Retry policy through a real lb (SPEC "Failure handling"): any method is
//! retried when nothing reached the backend; only idempotent ones on retry
//! statuses; the final answer when every attempt failed.

mod common;

use common::*;

/// A backend that answers every /api request with 503 + Retry-After.
fn always_503(id: &str) -> Options {
    let mut o = named(id);
    o.max_concurrency = Some(0);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_when_the_connection_was_refused() {
    let apps = Apps::plain(1).await;
    let dead = dead_port();
    let body = format!(
        "[[backends]]\nname = \"dead\"\naddr = \"127.0.0.1:{}\"\n\n{}",
        dead.port,
        apps.backends_toml(&[1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    // Round robin sends every other request to the closed port first.
    for i in 0..10 {
        let r = c
            .post(lb.url("/api/session"))
            .header("x-session-id", format!("s{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(header(&r, "x-backend"), "app-1");
    }
    // Each POST reached the live backend exactly once.
    assert_eq!(apps.apps[0].posts_total(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_statuses_are_retried_for_get_but_never_for_post() {
    let apps = Apps::start(vec![always_503("busy"), named("ok")]).await;
    // The breaker would (rightly) take "busy" out after 5 failures; keep it in
    // so every request meets it and only the retry policy is under test.
    let body = format!(
        "[circuit_breaker]\nfailures = 1000\n\n{}",
        apps.backends_toml(&[1, 1])
    );
    let lb = Lb::start(&body).await;
    let c = client();
    for _ in 0..10 {
        let r = c.get(lb.url("/api/whoami")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-backend"), "ok");
    }
    let (mut got_503, mut got_200) = (0, 0);
    for i in 0..10 {
        let r = c
            .post(lb.url("/api/session"))
            .header("x-session-id", format!("p{i}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            503 => got_503 += 1,
            200 => got_200 += 1,
            s => panic!("unexpected {s}"),
        }
    }
    println!("POSTs: {got_200} answered by ok, {got_503} passed through from busy");
    // A POST that reached a backend is never sent again: every POST is seen
    // by exactly one backend, and busy's 503s reach the client as they are.
    assert_eq!(apps.apps[0].posts_total() + apps.apps[1].posts_total(), 10);
    assert_eq!(apps.apps[0].posts_total(), got_503);
    assert!(got_503 > 0 && got_200 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_client_gets_the_last_answer() {
    // Three busy backends, retry.attempts = 3: a GET tries each once; the last
    // backend's 503 (with its Retry-After) is passed through.
    let apps = Apps::start(vec![always_503("b1"), always_503("b2"), always_503("b3")]).await;
    let lb = Lb::start(&format!(
        "[retry]\nattempts = 3\n\n{}",
        apps.backends_toml(&[1, 1, 1])
    ))
    .await;
    let r = client().get(lb.url("/api/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), "1");
    let tried: u64 = apps.api_counts().iter().sum();
    assert_eq!(tried, 3, "one attempt per backend");
    // With attempts = 1 no retry happens at all.
    let lb1 = Lb::start(&format!(
        "[retry]\nattempts = 1\n\n{}",
        apps.backends_toml(&[1, 1, 1])
    ))
    .await;
    let before: u64 = apps.api_counts().iter().sum();
    assert_eq!(
        client()
            .get(lb1.url("/api/whoami"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(apps.api_counts().iter().sum::<u64>() - before, 1);
}
