//! Relaying a response body to the client as it arrives: the head and the
//! first body bytes in one write, then each read from the backend written on
//! at once, in the framing the client needs (see [`super::response`]). A body
//! passed on as it is (a length, or until close) is written straight from the
//! read buffer; a long one is read 64 KiB at a time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::proxy::client::Client;

use super::response::{Chunked, Framing, RespHead};
use super::splice::{self, Spliced, SPLICE_MIN};

/// Body bytes one connection relays (a response, or an upload) before it
/// lets the thread's other connections run. Tokio's budget (128 I/O operations per task poll, ~1 MiB
/// here) lets each of 200 slow readers whose send buffers are filling copy a
/// megabyte before a normal request gets a turn: their onset stalled normal
/// clients for 0.4 s (docs/performance.md, abuse benchmark B). 64 KiB keeps
/// a turn to tens of microseconds and costs one scheduler round trip per
/// 64 KiB of a bulk transfer.
pub(super) const FAIR_SHARE: usize = 64 * 1024;

/// Read size once a body has more than this to come (the first reads share
/// the head's 16 KiB buffer): a quarter of the syscalls per GiB of a 16 KiB
/// loop, and the buffer lives only while the response does.
const LONG_READ: usize = 64 * 1024;

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
    client: &mut Client,
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
    let mut since_yield = 0usize;
    let mut splice_to = client.tcp_fd();
    loop {
        // This read's body bytes: after the head in `out` on the first round,
        // re-framed into `out` when chunked, else written as they are from
        // `rbuf` (`direct`). And whether the body ended.
        let avail = &rbuf[start..];
        let mut direct: &[u8] = &[];
        let (done, extra) = match resp.upstream {
            Framing::Empty => (true, !avail.is_empty()),
            Framing::Length(_) => {
                let n = (avail.len() as u64).min(remaining) as usize;
                if first {
                    out.extend_from_slice(&avail[..n]);
                } else {
                    direct = &avail[..n];
                }
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
                if first {
                    out.extend_from_slice(avail);
                } else {
                    direct = avail;
                }
                *bytes += avail.len() as u64;
                (false, false)
            }
        };
        // A client that takes no bytes for `send_timeout` is cut off: it
        // would hold the backend connection and its slot for as long as TCP
        // keeps it alive.
        // One of the two holds this round's bytes.
        let send: &[u8] = if direct.is_empty() { out } else { direct };
        if !send.is_empty() || first {
            match timeout(send_timeout, client.write_all(send)).await {
                Ok(Ok(())) => {}
                _ => return Relay::Broken,
            }
            since_yield += send.len();
            out.clear();
        }
        first = false;
        // A long body of known length to a plain-TCP client: the rest goes
        // socket to socket through a pipe (`super::splice`).
        // Tried once: declined (no pipe to be had), the body is copied.
        if let (Some(fd), Framing::Length(_)) = (splice_to.take().filter(|_| !done), resp.upstream)
        {
            if remaining >= SPLICE_MIN {
                let _ = timeout(send_timeout, client.flush()).await;
                let spliced =
                    splice::body(upc, fd, remaining, read_timeout, send_timeout, bytes).await;
                match spliced {
                    // The pool checks a connection before reuse: bytes the
                    // backend sent beyond the body would show there.
                    Spliced::Done => {
                        return Relay::Done {
                            upstream_clean: true,
                        }
                    }
                    Spliced::Broken => return Relay::Broken,
                    Spliced::Declined => {}
                }
            }
        }
        if done {
            let _ = timeout(send_timeout, client.flush()).await;
            return Relay::Done {
                upstream_clean: !extra,
            };
        }
        if since_yield >= FAIR_SHARE {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        rbuf.clear();
        start = 0;
        let long = match resp.upstream {
            Framing::Length(_) => remaining > LONG_READ as u64 / 2,
            _ => true,
        };
        if long && rbuf.capacity() < LONG_READ {
            rbuf.reserve(LONG_READ);
        }
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
