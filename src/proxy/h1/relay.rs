//! Relaying a response body to the client as it arrives: the head and the
//! first body bytes in one write, then each read from the backend written on
//! at once through one 16 KiB buffer, in the framing the client needs (see
//! [`super::response`]).

use std::time::Duration;

use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::response::{Chunked, Framing, RespHead};

/// How relaying a body ended.
pub enum Relay {
    /// The whole body reached the client; the backend sent nothing beyond it.
    Done { upstream_clean: bool },
    /// The backend or the client failed mid-body.
    Broken,
}

/// Sends the encoded head in `out` with the body bytes already in `rbuf` (from
/// `resp.len`), then streams the rest of the body as it arrives.
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    client: &mut Stream,
    upc: &mut TcpStream,
    rbuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    resp: RespHead,
    read_timeout: Duration,
    send_timeout: Duration,
    bytes: &mut u64,
) -> Relay {
    let mut chunked = Chunked::default();
    let mut remaining = match resp.upstream {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut start = resp.len;
    let mut first = true;
    loop {
        // Move this read's body bytes into `out` (after the head on the first
        // round) and note whether the body ended.
        let avail = &rbuf[start..];
        let (done, extra) = match resp.upstream {
            Framing::Empty => (true, !avail.is_empty()),
            Framing::Length(_) => {
                let n = (avail.len() as u64).min(remaining) as usize;
                out.extend_from_slice(&avail[..n]);
                *bytes += n as u64;
                remaining -= n as u64;
                (remaining == 0, avail.len() > n)
            }
            Framing::Chunked => {
                let before = out.len();
                let fed = if resp.dechunk {
                    chunked.feed(avail, |d| out.extend_from_slice(d))
                } else {
                    chunked
                        .feed(avail, |_| {})
                        .inspect(|&(n, _)| out.extend_from_slice(&avail[..n]))
                };
                let Ok((n, done)) = fed else {
                    return Relay::Broken;
                };
                *bytes += (out.len() - before) as u64;
                (done, avail.len() > n)
            }
            Framing::Close => {
                out.extend_from_slice(avail);
                *bytes += avail.len() as u64;
                (false, false)
            }
        };
        // A client that takes no bytes for `send_timeout` is cut off: it
        // would hold the backend connection and its slot for as long as TCP
        // keeps it alive.
        if !out.is_empty() || first {
            match timeout(send_timeout, client.write_all(out)).await {
                Ok(Ok(())) => {}
                _ => return Relay::Broken,
            }
            out.clear();
        }
        first = false;
        if done {
            let _ = timeout(send_timeout, client.flush()).await;
            return Relay::Done {
                upstream_clean: !extra,
            };
        }
        rbuf.clear();
        start = 0;
        match timeout(read_timeout, upc.read_buf(rbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Until-close bodies end here.
            Ok(Ok(_)) if resp.upstream == Framing::Close => {
                let _ = timeout(send_timeout, client.flush()).await;
                return Relay::Done {
                    upstream_clean: false,
                };
            }
            _ => return Relay::Broken,
        }
    }
}
