//! Bodies and upgrades on both of lb's paths: small bodies (buffered), large
//! and chunked uploads (streamed), WebSocket upgrades (handed to the Pingora path),
//! streamed responses relayed as they arrive, large downloads.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head from `s` (the test backends below need no more).
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        buf.push(b[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Health probes get a plain 200; everything else goes to `serve`.
async fn backend<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if head.contains(" /health ") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                serve(s, head).await;
            });
        }
    });
    addr
}

fn one_backend(addr: std::net::SocketAddr) -> String {
    format!("[[backends]]\nname = \"b\"\naddr = \"{addr}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_every_shape_arrive_whole() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start(&apps.backends_toml(&[1])).await;
    let c = client();
    // 10 KiB with Content-Length (buffered), 1.5 MiB with Content-Length and
    // 1.5 MiB chunked (streamed through a 16 KiB buffer).
    for (len, chunked) in [
        (10 * 1024, false),
        (1536 * 1024, false),
        (1536 * 1024, true),
    ] {
        let data = vec![b'x'; len];
        let req = c.post(lb.url("/api/echo"));
        let req = if chunked {
            let stream = futures_stream(data);
            req.body(reqwest::Body::wrap_stream(stream))
        } else {
            req.body(data)
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{len} bytes, chunked {chunked}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["body_bytes"], len, "{len} bytes, chunked {chunked}");
    }
}

/// A body in 64 KiB pieces, so reqwest sends it chunked.
fn futures_stream(
    data: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    futures_util::stream::iter(pieces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed_both_ways() {
    let addr = backend(|mut s, head| async move {
        assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        // Echo whatever comes, as a stand-in for frames.
        let mut b = [0u8; 1024];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 || s.write_all(&b[..n]).await.is_err() {
                break;
            }
        }
    })
    .await;
    let lb = Lb::start(&one_backend(addr)).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in [&b"ping-1"[..], b"ping-2 longer"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stream_through_without_buffering() {
    // The backend sends its head and a first piece, then waits 1 s before the
    // rest: a client of a buffering proxy would see nothing for that second.
    let addr = backend(|mut s, _| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
    })
    .await;
    let lb = Lb::start(&one_backend(addr)).await;
    let started = Instant::now();
    let mut r = client().get(lb.url("/stream")).send().await.unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert_eq!(&first[..], b"first");
    // Well under the backend's 1 s pause, with room for a loaded machine.
    assert!(
        first_at < Duration::from_millis(700),
        "first bytes after {first_at:?}"
    );
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"last");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_downloads_arrive_whole_with_bounded_memory() {
    const LEN: usize = 64 * 1024 * 1024;
    let addr = backend(|mut s, _| async move {
        let _ = s
            .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").as_bytes())
            .await;
        let block = vec![b'z'; 256 * 1024];
        for _ in 0..LEN / block.len() {
            if s.write_all(&block).await.is_err() {
                return;
            }
        }
    })
    .await;
    let lb = Lb::start(&one_backend(addr)).await;
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", lb.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let mut r = client().get(lb.url("/big")).send().await.unwrap();
    let mut got = 0usize;
    let mut peak = before;
    while let Some(c) = r.chunk().await.unwrap() {
        got += c.len();
        if got % (8 << 20) < c.len() {
            peak = peak.max(rss());
        }
    }
    assert_eq!(got, LEN);
    // 64 MiB went through; lb grew by less than 16 MiB (its buffers are 16 KiB
    // per exchange; the slack covers allocator and runtime noise).
    assert!(
        peak - before < 16 * 1024,
        "lb RSS grew {} KiB",
        peak - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_followed_by_pipelined_requests() {
    let apps = Apps::plain(1).await;
    let lb = Lb::start(&apps.backends_toml(&[1])).await;
    // A 200 KiB chunked body (beyond the 64 KiB lb buffers: streamed) with
    // a GET pipelined behind it in the same writes.
    let mut raw =
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..50 {
        raw.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        raw.extend_from_slice(&[b'y'; 4096]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(
        b"0\r\n\r\nGET /api/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(out.matches("HTTP/1.1 200 ").count(), 2, "{out}");
    assert!(out.contains("\"body_bytes\":204800"), "{out}");
    assert_eq!(apps.api_counts(), vec![2]);
}

/// A body of `len` bytes whose every byte says where it is (mod 251, a
/// prime: a piece moved or lost anywhere shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Reads one response from `s`: its head, then exactly Content-Length bytes.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (head, body)
}

/// Long bodies to a plain-TCP client are spliced socket to socket
/// (`src/proxy/h1/splice.rs`): every byte arrives in order, the client's
/// connection and the backend's are both kept for the next request, and a
/// body the backend cuts short ends the client's connection instead of
/// leaving it waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_bodies_arrive_intact_on_kept_connections() {
    // Odd sizes: not a multiple of any pipe or buffer size.
    const LEN: usize = 3 * 1024 * 1024 + 7;
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let addr = backend(move |mut s, mut head| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let body = pattern(LEN);
            // Every request on this connection, until the client closes it.
            while !head.is_empty() {
                let (announce, send) = if head.contains(" /cut ") {
                    (LEN, LEN / 2)
                } else {
                    (LEN, LEN)
                };
                let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {announce}\r\n\r\n");
                if s.write_all(h.as_bytes()).await.is_err() {
                    return;
                }
                // In uneven pieces, as a real backend's writes land.
                for piece in body[..send].chunks(100_003) {
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                }
                if send < announce {
                    return; // closes the connection mid-body
                }
                head = read_head(&mut s).await;
            }
        }
    })
    .await;
    let lb = Lb::start(&format!(
        "[health]\ninterval = \"1h\"\n{}",
        one_backend(addr)
    ))
    .await;
    let want = pattern(LEN);
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    for i in 0..3 {
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = tokio::time::timeout(Duration::from_secs(20), read_response(&mut c))
            .await
            .expect("the body in time");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), LEN);
        let first_bad = body.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            first_bad, None,
            "request {i}: body differs at byte {first_bad:?}"
        );
    }
    // One client connection carried the three; one backend connection too.
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Cut short by the backend: the client sees its connection end before
    // the announced length, within the test's bound (not a hang).
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut got))
        .await
        .expect("the cut body's connection closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&got[..got.len().min(200)]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body_len = got.len() - (got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
    assert!(
        body_len < LEN,
        "{body_len} bytes of a body cut at {}",
        LEN / 2
    );
}
