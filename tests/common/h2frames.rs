//! HTTP/2 spoken by hand on h2c, for the tests that need frames no client
//! library sends (floods, malformed streams) or watches (GOAWAY, PING).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Lb;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An h2c connection to `lb` (`server.h2c = true`): the preface and an
/// empty SETTINGS frame sent.
pub async fn open(lb: &Lb) -> TcpStream {
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// Reads frames until `want(kind, flags, payload)` gives `Some`; `None`
/// when the peer closes first. Panics when neither happens within `limit`.
pub async fn until_frame<T>(
    s: &mut TcpStream,
    limit: Duration,
    mut want: impl FnMut(u8, u8, &[u8]) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            if let Some(found) = want(buf[3], buf[4], &buf[9..9 + len]) {
                return Some(found);
            }
            buf.drain(..9 + len);
        }
        match tokio::time::timeout_at(deadline.into(), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("neither the awaited frame nor a close within {limit:?}"),
        }
    }
}

/// The error code of the first GOAWAY; `None` when the peer closes first.
pub async fn until_goaway(s: &mut TcpStream, limit: Duration) -> Option<u32> {
    until_frame(s, limit, |kind, _, p| {
        (kind == GOAWAY && p.len() >= 8).then(|| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
    })
    .await
}
