//! The backend's response head, re-encoded for the client. Pure (no I/O),
//! unit-tested below.
//!
//! The body's framing is [`crate::http1`]'s; lb writes the client's framing
//! fields itself from it (a `Content-Length` beside `Transfer-Encoding` is
//! never passed on). An HTTP/1.0 client never sees chunked: the body is
//! de-chunked and the connection closed after it (SPEC "HTTP/1.1 front-door
//! behaviour", "Framing and hop-by-hop fields").

use httparse::Status;

use crate::http1::BodyFields;
pub use crate::http1::{Chunked, Framing, Malformed};
use crate::proxy::policy::respond::{self, Decoration};

/// Most header fields accepted in a backend's response.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// What the client side of the exchange needs to know to encode the head.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    pub http10: bool,
    pub head_method: bool,
    /// The connection to the client may stay open after this response.
    pub keep_alive: bool,
    /// The fields lb adds.
    pub decoration: Decoration<'a>,
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
    if status < 100 {
        return Err(Malformed); // not a status lb could relay (RFC 9110 §15)
    }
    let fields = BodyFields::of(resp.version == Some(0), resp.headers)?;
    if (100..200).contains(&status) {
        return Ok(Some(RespHead {
            len,
            status,
            upstream: Framing::Empty,
            reusable: !fields.close,
            dechunk: false,
            keep_alive: false,
        }));
    }
    let upstream = fields.response_framing(status, client.head_method);
    let dechunk = upstream == Framing::Chunked && client.http10;
    let keep_alive = client.keep_alive && upstream != Framing::Close && !dechunk;
    let head = RespHead {
        len,
        status,
        upstream,
        reusable: !fields.close && upstream != Framing::Close,
        dechunk,
        keep_alive,
    };
    encode(&resp, &head, &fields, client, out);
    Ok(Some(head))
}

/// Writes the client's head: the backend's fields but hop-by-hop, framing
/// and replaced ones; lb's framing; the connection option; lb's fields.
fn encode(
    resp: &httparse::Response<'_, '_>,
    head: &RespHead,
    fields: &BodyFields,
    client: ClientSide<'_>,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        head.status,
        resp.reason.unwrap_or("")
    );
    let mut line = |name: &[u8], value: &[u8]| super::field_line(out, name, &[value]);
    let not_passed = respond::NotPassedOn::of(resp.headers, head.status);
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if not_passed.contains(n) || client.decoration.replaces(n) {
            continue;
        }
        line(n, h.value);
    }
    let mut len = itoa::Buffer::new();
    match head.upstream {
        Framing::Length(n) => line(b"content-length", len.format(n).as_bytes()),
        Framing::Chunked if !head.dechunk => line(b"transfer-encoding", b"chunked"),
        // HEAD and 304 describe the body a GET would get (204 has none).
        Framing::Empty if head.status != 204 => {
            // (An HTTP/1.0 client is never told of chunked.)
            if fields.chunked && !client.http10 {
                line(b"transfer-encoding", b"chunked");
            } else if let Some(n) = fields.length {
                line(b"content-length", len.format(n).as_bytes());
            }
        }
        _ => {}
    }
    if !head.keep_alive {
        line(b"connection", b"close");
    } else if client.http10 {
        line(b"connection", b"keep-alive");
    }
    client.decoration.each(|n, v, _| line(n.as_bytes(), v));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: ClientSide<'static> = ClientSide {
        http10: false,
        head_method: false,
        keep_alive: true,
        decoration: Decoration {
            request_id: "rid",
            backend: Some(("x-backend", b"app-1")),
            set_cookie: None,
            hsts: None,
        },
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
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: rid\r\nx-backend: app-1\r\n\r\n"
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
        assert!(out.contains("content-length: 9\r\n"));
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
    fn content_length_beside_chunked_never_reaches_a_client() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, out) = head(raw, CLIENT);
        assert_eq!(h.upstream, Framing::Chunked);
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        assert_eq!(
            out.matches("transfer-encoding: chunked").count(),
            1,
            "{out}"
        );
        let c10 = ClientSide {
            http10: true,
            ..CLIENT
        };
        let (h, out) = head(raw, c10);
        assert!(h.dechunk && !h.keep_alive);
        let lower = out.to_ascii_lowercase();
        assert!(
            !lower.contains("content-length") && !lower.contains("chunked"),
            "{out}"
        );
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
}
