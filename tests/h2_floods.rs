//! HTTP/2 floods (SPEC "HTTP/2 and gRPC"): rapid reset, CONTINUATION and
//! empty-frame floods end the connection with GOAWAY, never a stall, and
//! lb keeps serving everyone else. Raw frames on h2c (`server.h2c = true`);
//! the same HTTP/2 server serves TLS connections with ALPN h2.

mod common;

use std::time::{Duration, Instant};

use common::h2frames::*;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A request head for stream `id`: HPACK literals (no Huffman, no indexing).
fn head_block(extra: usize) -> Vec<u8> {
    let mut b = Vec::new();
    let mut lit = |name: &[u8], value: &[u8]| {
        b.push(0x00);
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        assert!(value.len() < 127);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    };
    lit(b":method", b"POST");
    lit(b":scheme", b"http");
    lit(b":path", b"/api/echo");
    lit(b":authority", b"localhost");
    for _ in 0..extra {
        lit(b"x-pad", &[b'a'; 100]);
    }
    b
}

/// Writes `frames` until the peer stops reading or closes; how many bytes went.
async fn flood(
    s: &mut TcpStream,
    frames: impl Iterator<Item = Vec<u8>>,
    budget: Duration,
) -> usize {
    let deadline = Instant::now() + budget;
    let mut sent = 0;
    for f in frames {
        match tokio::time::timeout_at(deadline.into(), s.write_all(&f)).await {
            Ok(Ok(())) => sent += f.len(),
            _ => break,
        }
    }
    sent
}

async fn start() -> (Apps, Lb) {
    let apps = Apps::plain(1).await;
    let lb = Lb::start_server("h2c = true", "", &apps.backends_toml(&[1]), QUIET_LOG).await;
    (apps, lb)
}

/// After an attack, a well-behaved HTTP/2 client is still served.
async fn still_serving(lb: &Lb) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = c.get(lb.url("/api/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// GOAWAY error codes (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PROTOCOL_ERROR: u32 = 0x1;
const COMPRESSION_ERROR: u32 = 0x9;

#[tokio::test]
async fn rapid_reset_ends_the_connection_with_goaway() {
    let (apps, lb) = start().await;
    let mut s = open(&lb).await;
    // HEADERS then RST_STREAM for streams 1, 3, 5, …: each written with its
    // reset, so the server sees both before it can accept the stream.
    let frames = (0..2000u32).map(|i| {
        let id = 2 * i + 1;
        let mut f = frame(HEADERS, END_HEADERS, id, &head_block(0));
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        f
    });
    let sent = flood(&mut s, frames, Duration::from_secs(5)).await;
    let code = until_goaway(&mut s, Duration::from_secs(5)).await;
    eprintln!("GOAWAY {code:?} after {sent} bytes");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "after {sent} bytes");
    // Far fewer than 2,000 requests reached the backend (the cap is 20
    // pending resets; streams accepted before their reset may have started).
    let served = apps.api_counts()[0];
    assert!(
        served < 200,
        "{served} requests of a reset flood reached the app"
    );
    still_serving(&lb).await;
}

#[tokio::test]
async fn continuation_flood_ends_the_connection() {
    let (_apps, lb) = start().await;
    let mut s = open(&lb).await;
    // One HEADERS without END_HEADERS, then CONTINUATION frames of header
    // fields forever: the head outgrows server.max_header_bytes (32 KiB).
    let first = frame(HEADERS, END_STREAM, 1, &head_block(0));
    let more = (0..10_000).map(|_| frame(CONTINUATION, 0, 1, &head_block(100)[..]));
    let sent = flood(
        &mut s,
        std::iter::once(first).chain(more),
        Duration::from_secs(5),
    )
    .await;
    let code = until_goaway(&mut s, Duration::from_secs(5)).await;
    eprintln!("GOAWAY {code:?} after {sent} bytes");
    assert!(
        matches!(
            code,
            Some(ENHANCE_YOUR_CALM | PROTOCOL_ERROR | COMPRESSION_ERROR) | None
        ),
        "{code:?} after {sent} bytes"
    );
    // Ended long before the flood was all sent (10,000 frames of ~10 KiB).
    assert!(sent < 50 * 1024 * 1024, "{sent} bytes accepted");
    still_serving(&lb).await;
}

#[tokio::test]
async fn empty_data_frame_flood_ends_the_connection_with_goaway() {
    let (_apps, lb) = start().await;
    let mut s = open(&lb).await;
    // A POST whose body is only empty DATA frames (CVE-2019-9518).
    let first = frame(HEADERS, END_HEADERS, 1, &head_block(0));
    let empty = (0..100_000).map(|_| frame(DATA, 0, 1, &[]));
    let sent = flood(
        &mut s,
        std::iter::once(first).chain(empty),
        Duration::from_secs(5),
    )
    .await;
    let code = until_goaway(&mut s, Duration::from_secs(5)).await;
    eprintln!("GOAWAY {code:?} after {sent} bytes");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "after {sent} bytes");
    still_serving(&lb).await;
}

#[tokio::test]
async fn malformed_streams_end_the_connection_at_32() {
    let (apps, lb) = start().await;
    let mut s = open(&lb).await;
    // A GET with neither `:authority` nor `Host` (RFC 9113 §8.3.1): refused
    // with a 400 as the stream is accepted, never forwarded. (Conflicting
    // Content-Lengths would be the h2 codec's own reset, counted apart.)
    let malformed = |id: u32| {
        let mut block = Vec::new();
        for (name, value) in [
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":path", b"/api/echo"),
        ] {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name);
            block.push(value.len() as u8);
            block.extend_from_slice(value);
        }
        frame(HEADERS, END_HEADERS | END_STREAM, id, &block)
    };
    // 31 of them: the connection still answers a PING.
    for i in 0..31u32 {
        s.write_all(&malformed(2 * i + 1)).await.unwrap();
    }
    s.write_all(&frame(PING, 0, 0, b"12345678")).await.unwrap();
    assert!(ping_acked(&mut s, Duration::from_secs(5)).await);
    // The 32nd ends it (GOAWAY or a close).
    s.write_all(&malformed(63)).await.unwrap();
    let code = until_goaway(&mut s, Duration::from_secs(5)).await;
    eprintln!("GOAWAY {code:?}");
    assert_eq!(
        apps.api_counts()[0],
        0,
        "a malformed request reached the app"
    );
    still_serving(&lb).await;
}

/// Reads frames until a PING ACK (`true`) or a close (`false`).
async fn ping_acked(s: &mut TcpStream, limit: Duration) -> bool {
    until_frame(s, limit, |kind, flags, _| {
        (kind == PING && flags & 1 == 1).then_some(())
    })
    .await
    .is_some()
}
