//! One health probe: `GET path` over a fresh HTTP/1.1 connection, answer read
//! whole, connection closed cleanly.
//!
//! Reading only the status line and closing (what lb did before) makes the
//! backend's write of the rest of its answer hit a closed socket: a reset or a
//! broken pipe logged by the backend on every probe. So the probe reads the
//! response as its framing says: interim `1xx` heads skipped, no body for
//! `204`/`304`, `Transfer-Encoding: chunked` to its last chunk and trailers,
//! `Content-Length` bytes, or to the backend's close (the request says
//! `Connection: close`). Only then does it close, by sending FIN with nothing
//! left unread. A response above [`MAX_RESPONSE`] is judged by its status and
//! cut there: the probe must stay cheap, and a health endpoint that large is
//! a misconfiguration the backend's own logs will show.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::{BodyFields, Chunked, Framing};

/// Most bytes of one response (head and body) a probe reads: 64 KiB.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The probe's verdict on one backend: `Ok` on a 2xx answer within `timeout`,
/// else why not (`"status 503"`, `"connect: ..."`, `"timeout after 500ms"`).
/// `host` is the `Host` header (`health.host`, or the backend's host).
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let status = Response::default().read(&mut s).await?;
        // Everything was read: FIN, never RST. Errors here change nothing.
        let _ = s.shutdown().await;
        match status {
            200..=299 => Ok(()),
            other => Err(format!("status {other}")),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")))
}

/// The bytes of one response read so far (at most [`MAX_RESPONSE`]).
#[derive(Default)]
struct Response {
    buf: Vec<u8>,
    /// Where the part not yet parsed starts.
    pos: usize,
}

/// What one read added.
enum Fill {
    More,
    Eof,
    /// [`MAX_RESPONSE`] reached; nothing was read.
    Full,
}

/// How reading a body ended.
#[derive(PartialEq, Eq)]
enum Body {
    Whole,
    Cut,
}

impl Response {
    /// Reads the whole response; its final status. A response cut at
    /// [`MAX_RESPONSE`] is judged by its status all the same.
    async fn read(mut self, s: &mut TcpStream) -> Result<u16, String> {
        let (status, framing) = loop {
            let (status, framing) = self.head(s).await?;
            // 1xx (100 Continue, 103 Early Hints) precede the real answer.
            if !(100..200).contains(&status) || status == 101 {
                break (status, framing);
            }
        };
        if self.body(s, framing).await? == Body::Cut {
            tracing::debug!(status, "health: response over 64 KiB cut short");
        }
        Ok(status)
    }

    async fn fill(&mut self, s: &mut TcpStream) -> Result<Fill, String> {
        if self.buf.len() >= MAX_RESPONSE {
            return Ok(Fill::Full);
        }
        let room = (MAX_RESPONSE - self.buf.len()).min(8192);
        let start = self.buf.len();
        self.buf.resize(start + room, 0);
        let r = s.read(&mut self.buf[start..]).await;
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(start + n);
        match r {
            Err(e) => Err(format!("read: {e}")),
            Ok(0) => Ok(Fill::Eof),
            Ok(_) => Ok(Fill::More),
        }
    }

    /// Parses the next response head; its status and how its body ends.
    async fn head(&mut self, s: &mut TcpStream) -> Result<(u16, Framing), String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf[self.pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = r.code.unwrap_or(0);
                    // The proxy's own framing rules (crate::http1).
                    let framing = BodyFields::of(r.version == Some(0), r.headers)
                        .map_err(|_| "ambiguous response framing".to_string())?
                        .response_framing(status, false);
                    self.pos += n;
                    return Ok((status, framing));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("malformed response head: {e}")),
            }
            match self.fill(s).await? {
                Fill::More => {}
                Fill::Eof if self.buf.len() == self.pos => {
                    return Err("closed before a status line".into())
                }
                Fill::Eof => return Err("closed inside the response head".into()),
                Fill::Full => return Err("response head over 64 KiB".into()),
            }
        }
    }

    /// Reads the body to its end (or to [`MAX_RESPONSE`]).
    async fn body(&mut self, s: &mut TcpStream, framing: Framing) -> Result<Body, String> {
        let mut chunked = Chunked::default();
        loop {
            let done = match framing {
                Framing::Empty => true,
                Framing::Length(n) => (self.buf.len() - self.pos) as u64 >= n,
                Framing::Chunked => {
                    let (n, done) = chunked
                        .feed(&self.buf[self.pos..], |_| {})
                        .map_err(|_| "malformed chunked body".to_string())?;
                    self.pos += n;
                    done
                }
                Framing::Close => false,
            };
            if done {
                return Ok(Body::Whole);
            }
            match self.fill(s).await? {
                Fill::More => {}
                Fill::Eof if framing == Framing::Close => return Ok(Body::Whole),
                Fill::Eof => return Err("closed inside the response body".into()),
                Fill::Full => return Ok(Body::Cut),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;

    use super::*;

    /// How long the raw backend waits between the parts of its answer; the old
    /// probe (status line, then close) had long closed by then.
    const PAUSE: Duration = Duration::from_millis(30);

    /// What a raw backend saw, over all its connections.
    #[derive(Default)]
    struct Seen {
        answers: AtomicUsize,
        /// The peer closed or reset before the whole answer was written, a write
        /// failed, or the connection ended in anything but a clean FIN: each one
        /// is a reset or broken pipe in a real backend's log.
        rude: AtomicUsize,
        hosts: Mutex<Vec<String>>,
    }

    /// A backend that writes each part of `answer` with [`PAUSE`] between them,
    /// checking before each that the client is still there, then waits for the
    /// client's clean close. `close_after` also closes its side first (a
    /// close-delimited body).
    async fn raw_backend(answer: Vec<&'static str>, close_after: bool) -> (SocketAddr, Arc<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let (seen, answer) = (s2.clone(), answer.clone());
                tokio::spawn(async move {
                    let rude = !serve(c, &answer, close_after, &seen).await;
                    seen.rude.fetch_add(rude as usize, Ordering::Relaxed);
                    seen.answers.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        (addr, seen)
    }

    /// One connection; false if the client was rude (see [`Seen::rude`]).
    async fn serve(mut c: TcpStream, answer: &[&str], close_after: bool, seen: &Seen) -> bool {
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let text = String::from_utf8_lossy(&req).to_string();
        if let Some(h) = text.lines().find_map(|l| l.strip_prefix("Host: ")) {
            seen.hosts.lock().unwrap().push(h.to_string());
        }
        for (k, part) in answer.iter().enumerate() {
            if k > 0 {
                // Still there? A read that ends (FIN or RST) within the pause
                // means the client left before the answer was complete.
                if tokio::time::timeout(PAUSE, c.read(&mut b)).await.is_ok() {
                    return false;
                }
            }
            if c.write_all(part.as_bytes()).await.is_err() {
                return false;
            }
        }
        if close_after && c.shutdown().await.is_err() {
            return false;
        }
        // The client closes once it has the whole answer: a clean EOF, no reset.
        matches!(c.read(&mut b).await, Ok(0))
    }

    const LENGTH: [&str; 2] = [
        "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
        "ok, healthy\n",
    ];
    const CHUNKED: [&str; 3] = [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "3\r\nok,\r\n9\r\n healthy\n\r\n",
        "0\r\nX-Trailer: 1\r\n\r\n",
    ];
    const CLOSE: [&str; 2] = [
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        "ok\n",
    ];
    const INTERIM: [&str; 2] = [
        "HTTP/1.1 100 Continue\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
    ];

    #[tokio::test]
    async fn probes_read_the_whole_answer_and_never_reset_the_backend() {
        // 20 probes against each framing: Content-Length, chunked with a
        // trailer, close-delimited, and an interim 100 before a 204. The probe
        // that closed after the status line was rude to 20 of 20 of the first
        // three kinds.
        const N: usize = 20;
        let kinds = [
            ("content-length", LENGTH.to_vec(), false),
            ("chunked", CHUNKED.to_vec(), false),
            ("close-delimited", CLOSE.to_vec(), true),
            ("100 then 204", INTERIM.to_vec(), false),
        ];
        for (first, answer, close_after) in kinds {
            let (addr, seen) = raw_backend(answer, close_after).await;
            for i in 0..N {
                let r = probe(addr, "app-1", "/health", Duration::from_secs(5)).await;
                assert_eq!(r, Ok(()), "probe {i} of {first:?}");
            }
            // The backend counts a connection once it has seen its end.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while seen.answers.load(Ordering::Relaxed) < N && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(seen.answers.load(Ordering::Relaxed), N, "{first:?}");
            let rude = seen.rude.load(Ordering::Relaxed);
            println!("{first}: {rude} resets or early closes over {N} probes");
            assert_eq!(rude, 0, "{first:?}");
            assert!(seen.hosts.lock().unwrap().iter().all(|h| h == "app-1"));
        }
    }

    async fn serve_once(answer: String) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_verdict_is_the_status_of_the_final_answer() {
        let t = Duration::from_secs(2);
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into()).await;
        assert_eq!(probe(ok, "h", "/health", t).await, Ok(()));
        let bad = serve_once("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".into()).await;
        assert_eq!(
            probe(bad, "h", "/health", t).await,
            Err("status 503".into())
        );
        let junk = serve_once("SSH-2.0-OpenSSH\r\n\r\n".into()).await;
        assert!(probe(junk, "h", "/", t)
            .await
            .unwrap_err()
            .starts_with("malformed"));
        let short = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok".into()).await;
        assert_eq!(
            probe(short, "h", "/", t).await,
            Err("closed inside the response body".into())
        );
        // Larger than 64 KiB: judged by its status, read no further.
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n{}",
            "x".repeat(200_000)
        );
        assert_eq!(probe(serve_once(big).await, "h", "/", t).await, Ok(()));
        // Accepts but never answers: a timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = l.local_addr().unwrap();
        let r = probe(silent, "h", "/health", Duration::from_millis(100)).await;
        assert!(r.unwrap_err().starts_with("timeout"));
        drop(l);
    }
}
