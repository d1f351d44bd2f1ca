//! gRPC end to end through lb (SPEC "HTTP/2 and gRPC"): a tonic client over
//! h2c to lb, lb to the demo apps' gRPC echo service as `protocol = "h2c"`
//! backends. Unary and streaming calls both ways, trailers (`grpc-status`,
//! `grpc-message`) passed through, and lb's own errors answered as gRPC
//! statuses: 14 (UNAVAILABLE), 4 (DEADLINE_EXCEEDED), 8 (RESOURCE_EXHAUSTED).

mod common;

use std::time::Duration;

use app::grpc::tonic::Code;
use app::grpc::{connect, EchoRequest};
use common::*;

/// `[[backends]]` for `apps` as h2c backends.
fn h2c_backends(apps: &Apps) -> String {
    apps.backends_toml(&vec![1; apps.api_counts().len()])
        .replace("weight = 1\n", "weight = 1\nprotocol = \"h2c\"\n")
}

#[tokio::test]
async fn unary_and_streaming_calls_reach_every_backend_with_trailers_intact() {
    let apps = Apps::plain(2).await;
    let body = h2c_backends(&apps);
    assert_eq!(body.matches("protocol = \"h2c\"").count(), 2, "{body}");
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let mut c = connect(format!("http://{}", lb.addr)).await.unwrap();

    // Unary, balanced per call (round robin: exactly 5 and 5).
    let mut picks = Vec::new();
    for i in 0..10 {
        let r = c.unary(EchoRequest::new(format!("m{i}"))).await.unwrap();
        let reply = r.into_inner();
        assert_eq!(reply.message, format!("m{i}"));
        picks.push(reply.container);
    }
    assert_eq!(tally(&picks, &["app-1", "app-2"]), vec![5, 5], "{picks:?}");

    // An HTTP/1.1 client's request to an h2c backend (lb's HTTP/1 path
    // hands it to the Pingora path, which speaks h2c upstream).
    let r = client().get(lb.url("/api/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // Server streaming: every message, in order.
    let req = EchoRequest {
        count: 5,
        interval_ms: 10,
        ..EchoRequest::new("s")
    };
    let mut s = c.server_stream(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.index, n);
        n += 1;
    }
    assert_eq!(n, 5);

    // Client streaming: the app joins what arrived and counts it.
    let msgs: Vec<EchoRequest> = (0..4).map(|i| EchoRequest::new(format!("c{i}"))).collect();
    let r = c
        .client_stream(futures_util::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.index, 4);

    // Bidi: one reply per message.
    let msgs: Vec<EchoRequest> = (0..3).map(|i| EchoRequest::new(format!("b{i}"))).collect();
    let mut s = c
        .bidi(futures_util::stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["b0", "b1", "b2"]);

    // A failing unary call: the backend's status and message reach the client.
    let st = c
        .unary(EchoRequest {
            fail_code: Code::NotFound as i32,
            fail_message: "no such thing".into(),
            ..EchoRequest::new("x")
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(st.message(), "no such thing");

    // A stream failing after its replies: the status comes in the trailers,
    // after all three messages.
    let req = EchoRequest {
        count: 3,
        fail_code: Code::PermissionDenied as i32,
        fail_message: "after three".into(),
        ..EchoRequest::new("t")
    };
    let mut s = c.server_stream(req).await.unwrap().into_inner();
    let mut n = 0;
    let end = loop {
        match s.message().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("stream ended without its status"),
            Err(st) => break st,
        }
    };
    assert_eq!(n, 3);
    assert_eq!(end.code(), Code::PermissionDenied);
    assert_eq!(end.message(), "after three");
}

#[tokio::test]
async fn lbs_own_errors_are_grpc_statuses() {
    // No backend up: UNAVAILABLE (14), with lb's message.
    let dead = dead_port();
    let body = format!(
        "[health]\ninterval = \"100ms\"\n[[backends]]\nname = \"gone\"\naddr = \"127.0.0.1:{}\"\nprotocol = \"h2c\"\n",
        dead.port
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let mut c = connect(format!("http://{}", lb.addr)).await.unwrap();
    let st = c.unary(EchoRequest::new("x")).await.unwrap_err();
    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
    assert!(!st.message().is_empty());
    drop(lb);

    // A backend slower than timeouts.response: DEADLINE_EXCEEDED (4).
    let slow = Apps::start(vec![Options {
        delay: Duration::from_secs(3),
        ..named("slow")
    }])
    .await;
    let body = format!(
        "[timeouts]\nresponse = \"300ms\"\n[retry]\nattempts = 1\n{}",
        h2c_backends(&slow)
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let mut c = connect(format!("http://{}", lb.addr)).await.unwrap();
    let st = c.unary(EchoRequest::new("x")).await.unwrap_err();
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    drop(lb);

    // Over the per-IP rate: RESOURCE_EXHAUSTED (8). Burst 0 at 1/s: the
    // first call passes, the second within the same second is refused.
    let apps = Apps::plain(1).await;
    let body = format!(
        "[limits]\nper_ip_rate = 1\nper_ip_burst = 0\n{}",
        h2c_backends(&apps)
    );
    let lb = Lb::start_server("h2c = true", "", &body, QUIET_LOG).await;
    let mut c = connect(format!("http://{}", lb.addr)).await.unwrap();
    c.unary(EchoRequest::new("first")).await.unwrap();
    let st = c.unary(EchoRequest::new("second")).await.unwrap_err();
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
}
