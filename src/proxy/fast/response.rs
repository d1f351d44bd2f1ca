//! The backend's response head, re-encoded for the client, and the body
//! framing both sides use. Pure (no I/O), unit-tested below.
//!
//! Framing rules (RFC 9112 §6.3): no body for `HEAD`, 1xx, 204 and 304; else
//! `Transfer-Encoding: chunked`, else `Content-Length`, else until close. An
//! HTTP/1.0 client never sees chunked: the body is de-chunked and the
//! connection closed after it (SPEC "HTTP/1.1 front-door behaviour").

use httparse::Status;

/// Most header fields accepted in a backend's response.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// A response lb cannot relay faithfully: malformed head, ambiguous framing
/// or broken chunked coding (`502`, or the connection is cut mid-body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// What the client side of the exchange needs to know to encode the head.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    pub http10: bool,
    pub head_method: bool,
    /// The connection to the client may stay open after this response.
    pub keep_alive: bool,
    pub request_id: &'a str,
    /// `backend_header` name (lowercase) and the backend's name.
    pub backend: Option<(&'a str, &'a [u8])>,
    /// A `Set-Cookie` value to append (cookie stickiness).
    pub set_cookie: Option<&'a str>,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespHead {
    /// Bytes of the head in the buffer.
    pub len: usize,
    pub status: u16,
    /// The backend's framing of the body.
    pub upstream: Framing,
    /// Whether the backend connection may be reused after the body.
    pub reusable: bool,
    /// Whether lb de-chunks the body for an HTTP/1.0 client.
    pub dechunk: bool,
    /// Whether the client connection stays open after the body.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`; `Ok(None)`: incomplete. For a
/// final (non-1xx) status, the client's head is written to `out`.
pub fn parse(
    buf: &[u8],
    client: ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RespHead>, Malformed> {
    // (httparse has no uninitialised-headers parse for responses.)
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| Malformed)?.trim();
            let n: u64 = v.parse().map_err(|_| Malformed)?;
            if length.is_some_and(|m| m != n) {
                return Err(Malformed);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Err(Malformed); // only chunked is understood (RFC 9112 §6.1)
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    if (100..200).contains(&status) {
        return Ok(Some(RespHead {
            len,
            status,
            upstream: Framing::Empty,
            reusable: !close,
            dechunk: false,
            keep_alive: false,
        }));
    }
    let upstream = if client.head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let dechunk = upstream == Framing::Chunked && client.http10;
    let keep_alive = client.keep_alive && upstream != Framing::Close && !dechunk;
    encode(&resp, status, upstream, dechunk, keep_alive, client, out);
    Ok(Some(RespHead {
        len,
        status,
        upstream,
        reusable: !close && upstream != Framing::Close,
        dechunk,
        keep_alive,
    }))
}

fn encode(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    framing: Framing,
    dechunk: bool,
    keep_alive: bool,
    client: ClientSide<'_>,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("connection")
            || n.eq_ignore_ascii_case("keep-alive")
            || n.eq_ignore_ascii_case("proxy-connection")
            || n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("x-request-id")
            || client
                .backend
                .is_some_and(|(b, _)| n.eq_ignore_ascii_case(b))
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked && !dechunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(client.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some((name, value)) = client.backend {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = client.set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Incremental reader of a chunked body: finds where it ends and, when asked,
/// yields the data without the chunk framing.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extension: skipped to the end of the line.
    Ext,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    /// Final CRLF's LF.
    EndLf,
    Done,
}

impl Chunked {
    /// Feeds `input`; data bytes go to `data`. Returns how many bytes of `input`
    /// belong to the body and whether the body ended there.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), Malformed> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size.checked_mul(16).ok_or(Malformed)? + d;
                        if self.size > 1 << 48 {
                            return Err(Malformed);
                        }
                    }
                    b';' | b' ' | b'\t' | b'\r' => self.state = Ext,
                    b'\n' => self.state = self.after_size(),
                    _ => return Err(Malformed),
                },
                Ext => {
                    if b == b'\n' {
                        self.state = self.after_size();
                    }
                }
                Data => {
                    let n = (input.len() - i).min(self.size as usize);
                    data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => match b {
                    b'\r' => self.state = DataLf,
                    b'\n' => self.state = Size,
                    _ => return Err(Malformed),
                },
                DataLf => match b {
                    b'\n' => self.state = Size,
                    _ => return Err(Malformed),
                },
                TrailerStart => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => self.state = Done,
                    _ => self.state = Trailer,
                },
                Trailer => {
                    if b == b'\n' {
                        self.state = TrailerStart;
                    }
                }
                EndLf => match b {
                    b'\n' => self.state = Done,
                    _ => return Err(Malformed),
                },
                Done => unreachable!("loop condition"),
            }
            i += 1;
        }
        Ok((i, self.state == Done))
    }

    fn after_size(&mut self) -> ChunkState {
        if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: ClientSide<'static> = ClientSide {
        http10: false,
        head_method: false,
        keep_alive: true,
        request_id: "rid",
        backend: Some(("x-backend", b"app-1")),
        set_cookie: None,
    };

    fn head(raw: &[u8], client: ClientSide<'_>) -> (RespHead, String) {
        let mut out = Vec::new();
        let h = parse(raw, client, &mut out).unwrap().unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn re_encodes_head_for_the_client() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Backend: spoof\r\nX-Request-Id: up\r\n\r\nok";
        let (h, out) = head(raw, CLIENT);
        assert_eq!(h.upstream, Framing::Length(2));
        assert!(h.reusable && h.keep_alive && !h.dechunk);
        assert_eq!(h.len, raw.len() - 2);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-request-id: rid\r\nx-backend: app-1\r\n\r\n"
        );
    }

    #[test]
    fn framing_by_rfc_9112() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, out) = head(raw, CLIENT);
        assert_eq!(
            (h.upstream, h.dechunk, h.keep_alive),
            (Framing::Chunked, false, true)
        );
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        // HTTP/1.0 client: de-chunked, close-delimited, never `chunked`.
        let c10 = ClientSide {
            http10: true,
            ..CLIENT
        };
        let (h, out) = head(raw, c10);
        assert!(h.dechunk && !h.keep_alive && h.reusable);
        assert!(
            !out.contains("chunked") && out.contains("connection: close\r\n"),
            "{out}"
        );
        // HTTP/1.0 keep-alive client with a length: kept alive, told so.
        let (h, out) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", c10);
        assert!(h.keep_alive && out.contains("connection: keep-alive\r\n"));
        // No length: until close, on both sides.
        let (h, out) = head(b"HTTP/1.1 200 OK\r\n\r\n", CLIENT);
        assert!(h.upstream == Framing::Close && !h.reusable && !h.keep_alive);
        assert!(out.contains("connection: close\r\n"));
        // HEAD, 204 and 304 have no body whatever the fields say.
        let ch = ClientSide {
            head_method: true,
            ..CLIENT
        };
        let (h, out) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", ch);
        assert_eq!(h.upstream, Framing::Empty);
        assert!(out.contains("Content-Length: 9\r\n"));
        assert_eq!(
            head(b"HTTP/1.1 304 Not Modified\r\n\r\n", CLIENT)
                .0
                .upstream,
            Framing::Empty
        );
        // An HTTP/1.0 backend closes unless it says keep-alive.
        assert!(
            !head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", CLIENT)
                .0
                .reusable
        );
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            CLIENT,
        );
        assert!(!h.reusable && h.keep_alive);
        // 1xx: skipped by the caller; nothing encoded.
        let mut out = Vec::new();
        let h = parse(b"HTTP/1.1 100 Continue\r\n\r\n", CLIENT, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!((h.status, out.len()), (100, 0));
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let mut out = Vec::new();
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(
                parse(raw, CLIENT, &mut out).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", CLIENT, &mut out), Ok(None));
    }

    #[test]
    fn chunked_end_and_data_byte_by_byte() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole buffer at once.
        let mut c = Chunked::default();
        let mut data = Vec::new();
        assert_eq!(c.feed(body, |d| data.extend_from_slice(d)), Ok((end, true)));
        assert_eq!(data, b"Wikipedia");
        // One byte per call: the same answer.
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let mut seen = 0;
        for b in body.chunks(1) {
            let (n, done) = c.feed(b, |d| data.extend_from_slice(d)).unwrap();
            seen += n;
            if done {
                break;
            }
        }
        assert_eq!((seen, &data[..]), (end, &b"Wikipedia"[..]));
        // Bare LF line ends and no trailers.
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"1\nA\n0\n\n", |_| {}), Ok((7, true)));
        for bad in [&b"x\r\n"[..], b"1\r\nAB\r\n", b"fffffffffffffffff\r\n"] {
            assert!(
                Chunked::default().feed(bad, |_| {}).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
