//! The heads of an HTTP/2 stream lb serves itself: the client's request as
//! the HTTP/1.1 head sent upstream, and the backend's response head as the
//! one sent back on the stream. Pure (no I/O), unit-tested below.
//!
//! The fields are the ones the Pingora path sends for the same request
//! ([`crate::proxy::pingora`]): `Host` from `:authority`, hop-by-hop fields
//! dropped, lb's forwarding fields; and on the way back the backend's fields
//! without the connection-specific ones HTTP/2 forbids, then
//! [`crate::proxy::heads::decorate`].

use std::net::IpAddr;

use httparse::Status;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::http1::{BodyFields, Framing, Malformed};
use crate::proxy::policy::forward::{self, Forwarding};
use crate::proxy::policy::respond;

/// Most header fields accepted in a backend's response (as lb's HTTP/1 path).
const MAX_RESPONSE_HEADERS: usize = 128;

/// Writes one field line, the value given in parts.
fn line(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// Who sent the request, for the forwarding fields.
#[derive(Debug, Clone, Copy)]
pub struct From<'a> {
    pub client: Option<IpAddr>,
    pub https: bool,
    pub request_id: &'a str,
}

/// Encodes the HTTP/1.1 head of a request without a body (the only ones
/// this path takes: [`super::exchange::eligible`]) into `out`: the request
/// line in origin form, `Host` (the `:authority`, else the client's `Host`),
/// the client's fields but hop-by-hop ones and those lb sets, `Cookie`
/// crumbs joined into one field (RFC 9113 §8.2.3), `content-length: 0` if
/// the client sent one, then lb's forwarding fields.
pub fn request(req: &RequestHeader, from: From<'_>, out: &mut Vec<u8>) {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = match req.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => req
            .headers
            .get(http::header::HOST)
            .map_or(&b""[..], |h| h.as_bytes()),
    };
    line(out, b"host", &[host]);
    let mut xff = Vec::new();
    let mut cookie: Vec<u8> = Vec::new();
    let mut length = false;
    for (name, value) in req.headers.iter() {
        // HTTP/2 field names are lowercase (the h2 codec refuses others).
        let n = name.as_str().as_bytes();
        let v = value.as_bytes();
        match n {
            b"host" => {}
            b"cookie" => {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(v);
            }
            b"x-forwarded-for" => forward::join_xff(&mut xff, v),
            b"content-length" => length = true,
            _ if forward::not_forwarded(n) || forward::is_framing(n) => {}
            _ => line(out, n, &[v]),
        }
    }
    if !cookie.is_empty() {
        line(out, b"cookie", &[&cookie]);
    }
    if length {
        line(out, b"content-length", &[b"0"]);
    }
    let fields = Forwarding {
        client: from.client,
        proto: if from.https { "https" } else { "http" },
        host: (!host.is_empty()).then_some(host),
        request_id: Some(from.request_id),
    };
    fields.each(&xff, |name, parts| line(out, name.as_bytes(), parts));
    out.extend_from_slice(b"\r\n");
}

/// A backend's parsed response head.
#[derive(Debug)]
pub struct Response {
    /// Bytes of the head in the buffer.
    pub len: usize,
    pub status: u16,
    /// How the body is framed on the backend's connection.
    pub framing: Framing,
    /// Whether the backend connection may be reused after the body.
    pub reusable: bool,
    /// The head for the client (before [`crate::proxy::heads::decorate`]);
    /// `None` for an interim (1xx) response, which HTTP/2 streams here skip.
    pub head: Option<ResponseHeader>,
}

/// Parses a response head at the start of `buf`; `Ok(None)`: incomplete.
/// `head_request`: the request was `HEAD` (no body follows whatever the
/// fields say).
pub fn response(buf: &[u8], head_request: bool) -> Result<Option<Response>, Malformed> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(Malformed);
    }
    let fields = BodyFields::of(resp.version == Some(0), resp.headers)?;
    if status < 200 {
        return Ok(Some(Response {
            len,
            status,
            framing: Framing::Empty,
            reusable: !fields.close,
            head: None,
        }));
    }
    let framing = fields.response_framing(status, head_request);
    let mut head = ResponseHeader::build_no_case(status, Some(resp.headers.len() + 4))
        .map_err(|_| Malformed)?;
    let not_passed = respond::NotPassedOn::of(resp.headers, status);
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if not_passed.contains(n) {
            continue;
        }
        let name = http::HeaderName::from_bytes(n).map_err(|_| Malformed)?;
        let value = http::HeaderValue::from_bytes(h.value).map_err(|_| Malformed)?;
        head.append_header(name, value).map_err(|_| Malformed)?;
    }
    // The length the backend gave (also on HEAD and 304, where it describes
    // the body a GET would get); never beside chunked.
    if let (Some(n), false) = (fields.length, fields.chunked) {
        if status != 204 {
            head.insert_header(http::header::CONTENT_LENGTH, n)
                .map_err(|_| Malformed)?;
        }
    }
    Ok(Some(Response {
        len,
        status,
        framing,
        reusable: !fields.close && framing != Framing::Close,
        head: Some(head),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_request(method: &str, uri: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        parts.into()
    }

    fn encoded(req: &RequestHeader, client: Option<IpAddr>) -> String {
        let mut out = Vec::new();
        let from = From {
            client,
            https: true,
            request_id: "rid",
        };
        request(req, from, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_head_has_host_forwarding_fields_and_no_hop_by_hop_ones() {
        let req = h2_request(
            "GET",
            "https://example.com:8443/a/b?c=d",
            &[
                ("host", "other.example"),
                ("te", "trailers"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-real-ip", "6.6.6.6"),
                ("x-request-id", "spoofed"),
                ("accept", "*/*"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
        );
        let head = encoded(&req, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            head,
            "GET /a/b?c=d HTTP/1.1\r\n\
             host: example.com:8443\r\n\
             accept: */*\r\n\
             cookie: a=1; b=2\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\n\
             x-real-ip: 127.0.0.1\r\n\
             x-forwarded-proto: https\r\n\
             x-forwarded-host: example.com:8443\r\n\
             x-request-id: rid\r\n\r\n"
        );
    }

    #[test]
    fn a_sent_content_length_is_passed_on_as_zero() {
        let req = h2_request("POST", "https://a/", &[("content-length", "0")]);
        let head = encoded(&req, None);
        assert!(head.contains("\r\ncontent-length: 0\r\n"), "{head}");
        assert!(!head.contains("x-real-ip"), "{head}");
        let req = h2_request("DELETE", "https://a/x", &[]);
        assert!(!encoded(&req, None).contains("content-length"));
    }

    #[test]
    fn response_head_drops_connection_specific_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-secret\r\n\
                    Keep-Alive: timeout=5\r\nX-Secret: 1\r\nX-Kept: 2\r\nSet-Cookie: a=1\r\n\
                    Set-Cookie: b=2\r\n\r\nhello";
        let r = response(raw, false).unwrap().unwrap();
        assert_eq!(r.len, raw.len() - 5);
        assert_eq!(
            (r.status, r.framing, r.reusable),
            (200, Framing::Length(5), true)
        );
        let head = r.head.unwrap();
        let names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "set-cookie", "content-length"]);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(head.headers["content-length"], "5");
    }

    #[test]
    fn response_framing_chunked_close_and_interim() {
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert!(r.head.unwrap().headers.get("transfer-encoding").is_none());
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.framing, r.reusable), (Framing::Close, false));
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::Empty);
        assert_eq!(r.head.unwrap().headers["content-length"], "9");
        let r = response(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.head.is_none() && r.status == 103);
        assert!(response(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        assert!(response(b"HTTP/1.1 099 x\r\n\r\n", false).is_err());
        assert!(response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
    }
}
