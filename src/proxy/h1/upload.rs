//! Streaming a request body too large to buffer (or chunked) from the client
//! to the backend through one buffer of 16 KiB, 64 KiB once a read filled it
//! (a fast client): memory stays bounded whatever the body's size, and a
//! slow client never gets the larger one. The body's end is found by its framing (the length, or
//! [`Chunked`]'s last chunk); bytes after it (a pipelined next request) stay
//! in the connection's buffer. Chunk framing is validated and passed on as
//! the client sent it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::request::Body;
use crate::http1::Chunked;
use crate::proxy::client::Client;

/// Read size while streaming a body.
const CHUNK: usize = 16 * 1024;

/// Read size once a read filled [`CHUNK`].
const FAST_CHUNK: usize = 64 * 1024;

/// How streaming a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// The whole body reached the backend.
    Done,
    /// No body byte for `server.body_timeout` (`408`).
    ClientTimedOut,
    /// The client closed (or its connection failed).
    ClientFailed,
    /// The client's chunked body is malformed (`400`).
    Malformed,
    /// Writing to the backend failed or took longer than `timeouts.response`.
    UpstreamFailed { timed_out: bool },
}

/// Limits while streaming.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per client read (`server.body_timeout`).
    pub body: Duration,
    /// Per backend write (`timeouts.response`).
    pub upstream: Duration,
}

/// Streams the body that starts at `buf[start..]` (bytes already read) and
/// continues on `client` to `upc`. The body's bytes are removed from `buf`;
/// what follows the body stays there, after `buf[..start]`.
pub async fn stream(
    client: &mut Client,
    buf: &mut Vec<u8>,
    start: usize,
    upc: &mut TcpStream,
    body: Body,
    limits: Limits,
    sent: &mut u64,
) -> Upload {
    let mut framing = Framer::new(body);
    // The part already buffered.
    let Ok((n, done)) = framing.take(&buf[start..]) else {
        return Upload::Malformed;
    };
    if let Err(up) = forward(upc, &buf[start..start + n], limits, sent).await {
        return up;
    }
    buf.drain(start..start + n);
    if done {
        return Upload::Done;
    }
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut since_yield = 0usize;
    loop {
        // A fast upload lets the thread's other connections run too.
        if since_yield >= super::relay::FAIR_SHARE {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        chunk.clear();
        // Bytes read past the body's end are the next request's: kept below.
        match timeout(limits.body, client.read_buf(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Upload::ClientFailed,
            Err(_) => return Upload::ClientTimedOut,
            Ok(Ok(n)) if n == chunk.capacity() && n < FAST_CHUNK => {
                // Filled: the client sends fast; larger reads from now on.
                chunk.reserve(FAST_CHUNK - n);
            }
            Ok(Ok(_)) => {}
        }
        let Ok((n, done)) = framing.take(&chunk) else {
            return Upload::Malformed;
        };
        if let Err(up) = forward(upc, &chunk[..n], limits, sent).await {
            return up;
        }
        since_yield += n;
        if done {
            // A pipelined next request's first bytes.
            buf.extend_from_slice(&chunk[n..]);
            return Upload::Done;
        }
    }
}

/// Writes body bytes to the backend.
async fn forward(
    upc: &mut TcpStream,
    bytes: &[u8],
    limits: Limits,
    sent: &mut u64,
) -> Result<(), Upload> {
    if bytes.is_empty() {
        return Ok(());
    }
    match timeout(limits.upstream, upc.write_all(bytes)).await {
        Ok(Ok(())) => {
            *sent += bytes.len() as u64;
            Ok(())
        }
        Ok(Err(_)) => Err(Upload::UpstreamFailed { timed_out: false }),
        Err(_) => Err(Upload::UpstreamFailed { timed_out: true }),
    }
}

/// Where a streamed body ends.
enum Framer {
    Length(u64),
    Chunked(Chunked),
}

impl Framer {
    fn new(body: Body) -> Framer {
        match body {
            Body::Chunked => Framer::Chunked(Chunked::default()),
            Body::Length(n) => Framer::Length(n),
            Body::Buffered => Framer::Length(0),
        }
    }

    /// How many of `input`'s bytes belong to the body, and whether it ended.
    fn take(&mut self, input: &[u8]) -> Result<(usize, bool), crate::http1::Malformed> {
        match self {
            Framer::Length(left) => {
                let n = (input.len() as u64).min(*left);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Framer::Chunked(c) => c.feed(input, |_| {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framers_find_the_end_and_leave_what_follows() {
        let mut f = Framer::new(Body::Length(5));
        assert_eq!(f.take(b"abc"), Ok((3, false)));
        assert_eq!(f.take(b"deGET"), Ok((2, true)));
        let mut f = Framer::new(Body::Chunked);
        assert_eq!(f.take(b"3\r\nabc\r\n"), Ok((8, false)));
        assert_eq!(f.take(b"0\r\n\r\nGET / HTTP/1.1"), Ok((5, true)));
        assert!(Framer::new(Body::Chunked).take(b"zz\r\n").is_err());
    }
}
