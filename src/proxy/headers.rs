//! Request hygiene and forwarding headers: request ids, `X-Forwarded-*`,
//! `X-Real-IP`, and the Content-Length + Transfer-Encoding smuggling check.

use std::net::IpAddr;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use rand::Rng;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";

/// A client-sent request id is kept when it is 1–128 characters of
/// `[A-Za-z0-9._:-]`; anything else (empty, long, spaces, quotes) is replaced
/// so logs and upstream services never receive attacker-shaped ids.
pub fn sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh 128-bit random request id, 32 lowercase hex characters.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::thread_rng().gen::<u128>())
}

/// The request's id: the client's if sane, else a new one.
pub fn request_id(session: &Session) -> String {
    match session.req_header().headers.get(REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => {
            // Sane ids are ASCII, so this conversion cannot fail.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => new_request_id(),
    }
}

/// The client's IP address, if the downstream is an inet socket.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Does the request carry both Content-Length and Transfer-Encoding?
///
/// Pingora's HTTP/1 parser resolves that ambiguity itself (RFC 9112 §6.3: it
/// drops Content-Length and forwards chunked), so by the time our filters run the
/// Content-Length header is gone. SPEC asks us to refuse such requests outright
/// (they are the classic request-smuggling vector), so when Transfer-Encoding is
/// present we look at the raw header bytes. Requests without Transfer-Encoding —
/// nearly all of them — pay one map lookup.
pub fn has_cl_and_te(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    if !headers.contains_key(TRANSFER_ENCODING) {
        return false;
    }
    if headers.contains_key(CONTENT_LENGTH) {
        return true;
    }
    session
        .as_http1()
        .is_some_and(|h1| raw_has_content_length(&h1.get_headers_raw_bytes()))
}

/// Whether raw HTTP/1 header bytes contain a `Content-Length:` field line.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.trim_ascii_start();
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && line[NAME.len()..].trim_ascii_start().first() == Some(&b':')
    })
}

/// Is the request head beyond `max_headers` fields or `max_bytes` bytes
/// (request line + fields, counted as on the wire)? Computed from the parsed
/// header without copying.
pub fn too_large(req: &RequestHeader, max_headers: usize, max_bytes: usize) -> bool {
    if req.headers.len() > max_headers {
        return true;
    }
    let uri = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + uri + 12;
    let fields: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    line + fields > max_bytes
}

/// Adds `X-Forwarded-For` (client IP appended), `X-Forwarded-Proto`,
/// `X-Forwarded-Host`, `X-Real-IP` and `X-Request-Id` to the upstream request.
pub fn forwarding(req: &mut RequestHeader, client: Option<IpAddr>, request_id: &str) -> Result<()> {
    if let Some(ip) = client {
        let ip = ip.to_string();
        // Keep every earlier hop, whatever its bytes and however many header
        // lines carried it, then append ours.
        let mut xff = Vec::with_capacity(64);
        for prev in req.headers.get_all("x-forwarded-for") {
            let prev = prev.as_bytes().trim_ascii();
            if !prev.is_empty() {
                xff.extend_from_slice(prev);
                xff.extend_from_slice(b", ");
            }
        }
        xff.extend_from_slice(ip.as_bytes());
        req.insert_header("x-forwarded-for", xff)?;
        req.insert_header("x-real-ip", ip)?;
    }
    req.insert_header("x-forwarded-proto", "http")?;
    let host = req
        .headers
        .get(HOST)
        .cloned()
        .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()));
    if let Some(host) = host {
        req.insert_header("x-forwarded-host", host)?;
    }
    req.insert_header(REQUEST_ID, request_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert!(sane_request_id(b"abc-123_x.y:z"));
        assert!(!sane_request_id(b""));
        assert!(!sane_request_id(b"has space"));
        assert!(!sane_request_id(b"quote\""));
        assert!(!sane_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(sane_request_id(id.as_bytes()));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn finds_content_length_in_raw_headers() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH : 5\r\n\r\n";
        assert!(raw_has_content_length(raw));
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 5\r\n\r\n";
        assert!(!raw_has_content_length(raw));
        // The request line is not a header even if it looks like one.
        let raw = b"GET /content-length: HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!raw_has_content_length(raw));
    }

    #[test]
    fn header_limits() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for i in 0..10 {
            req.append_header(format!("x-h{i}"), "v".repeat(100))
                .unwrap();
        }
        assert!(!too_large(&req, 10, 2000));
        assert!(too_large(&req, 9, 2000), "10 fields, 9 allowed");
        // 10 fields of 5 + 100 + 4 bytes = 1090, plus the request line.
        assert!(too_large(&req, 100, 1090));
        assert!(!too_large(&req, 100, 1200));
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("host", "example.test").unwrap();
        req.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        forwarding(&mut req, Some("127.0.0.9".parse().unwrap()), "rid").unwrap();
        let h = |n: &str| req.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-forwarded-for"), "10.0.0.1, 127.0.0.9");
        assert_eq!(h("x-real-ip"), "127.0.0.9");
        assert_eq!(h("x-forwarded-proto"), "http");
        assert_eq!(h("x-forwarded-host"), "example.test");
        assert_eq!(h("x-request-id"), "rid");

        // Several earlier header lines and non-ASCII bytes are kept as they are.
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.append_header("x-forwarded-for", "10.0.0.1").unwrap();
        req.append_header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"10.0.0.2 \xe9").unwrap(),
        )
        .unwrap();
        forwarding(&mut req, Some("::1".parse().unwrap()), "rid").unwrap();
        let all: Vec<_> = req.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_bytes(), b"10.0.0.1, 10.0.0.2 \xe9, ::1");
    }
}
