//! The gRPC echo service `lb.demo.Echo` over h2c, through `app::grpc`'s client
//! (the one lb's tests use): every method, the serving container in replies and
//! metadata, and failures asked for with `fail_code`.

mod common;

use std::time::{Duration, Instant};

use app::grpc::tonic::{Code, Request};
use app::grpc::{connect, Client, EchoReply, EchoRequest};
use app::SERVED_BY;
use common::{opts, start, Running, STEP};
use tokio_stream::StreamExt;

async fn client_for(s: &Running) -> Client {
    tokio::time::timeout(STEP, connect(s.base.clone()))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads a server stream to its end: the replies, then the final status
/// (`Ok` or the error that ended it).
async fn drain(
    mut stream: app::grpc::tonic::Streaming<EchoReply>,
) -> (Vec<EchoReply>, Result<(), app::grpc::tonic::Status>) {
    let mut replies = Vec::new();
    loop {
        match tokio::time::timeout(STEP, stream.message())
            .await
            .expect("in time")
        {
            Ok(Some(r)) => replies.push(r),
            Ok(None) => return (replies, Ok(())),
            Err(status) => return (replies, Err(status)),
        }
    }
}

#[tokio::test]
async fn unary_echoes_and_names_the_container() {
    let s = start(opts("g-1")).await;
    let mut c = client_for(&s).await;
    let resp = c.unary(EchoRequest::new("hello")).await.expect("unary");
    assert_eq!(
        resp.metadata()
            .get(SERVED_BY.as_str())
            .and_then(|v| v.to_str().ok()),
        Some("g-1")
    );
    let reply = resp.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.container, "g-1");
    assert_eq!(reply.index, 0);
    assert_eq!(s.app.posts_total(), 1, "a gRPC call is one POST");
    s.stop().await;
}

#[tokio::test]
async fn failing_unary_carries_code_message_and_container() {
    let s = start(opts("g-fail")).await;
    let mut c = client_for(&s).await;
    let status = c
        .unary(EchoRequest {
            fail_code: Code::FailedPrecondition as i32,
            fail_message: "not today".into(),
            ..EchoRequest::new("x")
        })
        .await
        .expect_err("asked to fail");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "not today");
    // Trailers-only response: the status came in the headers, beside x-served-by.
    assert_eq!(
        status
            .metadata()
            .get(SERVED_BY.as_str())
            .and_then(|v| v.to_str().ok()),
        Some("g-fail")
    );

    let status = c
        .unary(EchoRequest {
            fail_code: Code::Unavailable as i32,
            ..EchoRequest::new("x")
        })
        .await
        .expect_err("asked to fail");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), app::grpc::DEFAULT_FAIL_MESSAGE);
    s.stop().await;
}

#[tokio::test]
async fn server_stream_sends_count_replies_apart() {
    let s = start(opts("g-stream")).await;
    let mut c = client_for(&s).await;
    let t = Instant::now();
    let resp = c
        .server_stream(EchoRequest {
            count: 5,
            interval_ms: 20,
            ..EchoRequest::new("tick")
        })
        .await
        .expect("server stream");
    let (replies, end) = drain(resp.into_inner()).await;
    end.expect("stream ends OK");
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "4 pauses of 20 ms"
    );
    assert_eq!(replies.len(), 5);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!((r.index as usize, r.message.as_str()), (i, "tick"));
        assert_eq!(r.container, "g-stream");
    }

    let resp = c
        .server_stream(EchoRequest {
            count: app::grpc::MAX_COUNT + 1,
            ..EchoRequest::default()
        })
        .await;
    assert_eq!(resp.expect_err("too many").code(), Code::InvalidArgument);
    s.stop().await;
}

#[tokio::test]
async fn failing_server_stream_ends_with_status_in_trailers() {
    let s = start(opts("g-trailers")).await;
    let mut c = client_for(&s).await;
    let resp = c
        .server_stream(EchoRequest {
            count: 3,
            fail_code: Code::ResourceExhausted as i32,
            fail_message: "quota gone".into(),
            ..EchoRequest::new("m")
        })
        .await
        .expect("headers arrive before the failure");
    let (replies, end) = drain(resp.into_inner()).await;
    assert_eq!(replies.len(), 3, "replies first, then the status");
    let status = end.expect_err("the stream fails at its end");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "quota gone");
    s.stop().await;
}

#[tokio::test]
async fn client_stream_and_bidi() {
    let s = start(opts("g-both")).await;
    let mut c = client_for(&s).await;
    let parts = ["a", "b", "c"].map(EchoRequest::new);
    let reply = c
        .client_stream(tokio_stream::iter(parts.clone()))
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!((reply.message.as_str(), reply.index), ("abc", 3));
    assert_eq!(reply.container, "g-both");

    let resp = c
        .bidi(Request::new(tokio_stream::iter(parts)))
        .await
        .expect("bidi");
    let (replies, end) = drain(resp.into_inner()).await;
    end.expect("bidi ends OK");
    let got: Vec<_> = replies
        .iter()
        .map(|r| (r.index, r.message.as_str()))
        .collect();
    assert_eq!(got, [(0, "a"), (1, "b"), (2, "c")]);

    // Bidi answers each message as it arrives: one reply before the next send.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let resp = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi");
    let mut stream = resp.into_inner();
    tx.send(EchoRequest::new("ping")).await.expect("send");
    let first = tokio::time::timeout(STEP, stream.next())
        .await
        .expect("in time")
        .expect("a reply")
        .expect("ok");
    assert_eq!(first.message, "ping");
    tx.send(EchoRequest {
        fail_code: Code::Aborted as i32,
        ..EchoRequest::new("stop")
    })
    .await
    .expect("send");
    let (rest, end) = drain(stream).await;
    assert!(rest.is_empty());
    assert_eq!(end.expect_err("aborted").code(), Code::Aborted);
    s.stop().await;
}

#[tokio::test]
async fn stream_in_flight_finishes_during_shutdown() {
    let mut s = start(opts("g-drain")).await;
    let mut c = client_for(&s).await;
    let resp = c
        .server_stream(EchoRequest {
            count: 4,
            interval_ms: 100,
            ..EchoRequest::new("d")
        })
        .await
        .expect("server stream");
    s.signal();
    let (replies, end) = drain(resp.into_inner()).await;
    end.expect("the stream completes");
    assert_eq!(replies.len(), 4);
    s.join().await;
}
