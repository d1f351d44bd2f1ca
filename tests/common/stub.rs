//! A hand-written backend for the abuse tests: a big body on demand, a fixed
//! status otherwise, and a note of when lb dropped the connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend answering `GET /big` with `size` bytes (and anything else with
/// `status` and a short body), noting when a write of the big body failed
/// (lb dropped its side).
pub struct StubBackend {
    pub addr: std::net::SocketAddr,
    /// Requests answered (health probes aside).
    pub hits: Arc<AtomicUsize>,
    /// POSTs whose whole body arrived.
    pub posts: Arc<AtomicUsize>,
    /// Writes of the big body that failed: lb dropped its side.
    pub cuts: Arc<AtomicUsize>,
}

impl StubBackend {
    /// Starts it on an ephemeral loopback port.
    pub async fn start(status: u16, size: usize) -> StubBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (h, p, c) = (hits.clone(), posts.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (h, p, c) = (h.clone(), p.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        let head = String::from_utf8_lossy(&buf).into_owned();
                        buf.clear();
                        if head.starts_with("GET /health ") {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            continue;
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        if head.starts_with("POST ") {
                            // Answer only a whole (chunked) body: read to its end.
                            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                                let mut chunk = [0u8; 4096];
                                match s.read(&mut chunk).await {
                                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                                    _ => return,
                                }
                            }
                            buf.clear();
                            p.fetch_add(1, Ordering::SeqCst);
                        }
                        if head.starts_with("GET /big ") {
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                            let block = vec![b'x'; 64 * 1024];
                            let mut ok = s.write_all(head.as_bytes()).await.is_ok();
                            let mut left = size;
                            while ok && left > 0 {
                                let n = left.min(block.len());
                                ok = s.write_all(&block[..n]).await.is_ok();
                                left -= n;
                            }
                            if !ok {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            continue;
                        }
                        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StubBackend {
            addr,
            hits,
            posts,
            cuts,
        }
    }

    /// A `[[backends]]` entry for it.
    pub fn toml(&self, name: &str) -> String {
        format!(
            "[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n",
            self.addr
        )
    }
}
