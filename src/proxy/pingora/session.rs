//! The policy applied to a Pingora session's request head: the same checks,
//! fields and target rewriting lb's HTTP/1 path writes into its bytes.

use std::net::IpAddr;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::proxy::heads;
use crate::proxy::policy;
use crate::proxy::policy::forward::{self, Forwarding};
use crate::state::Snapshot;

/// The request's id: the client's if sane, else a new one.
pub fn request_id(session: &Session) -> String {
    policy::request_id(
        session
            .req_header()
            .headers
            .get(policy::REQUEST_ID)
            .map(|v| v.as_bytes()),
    )
}

/// The client's IP address, if the downstream is an inet socket.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Why the head is refused (status, reason): [`heads::refusal`], with
/// Pingora's HTTP/1 parse's raw bytes for the framing check.
pub fn refusal(session: &Session, snap: &Snapshot) -> Option<(u16, &'static str)> {
    heads::refusal(session.req_header(), has_cl_and_te(session), snap)
}

/// Does the request carry both Content-Length and Transfer-Encoding?
///
/// Pingora's HTTP/1 parser resolves that ambiguity itself (RFC 9112 §6.3: it
/// drops Content-Length and forwards chunked), so by the time our filters run
/// the Content-Length header is gone; the raw header bytes still show it.
fn has_cl_and_te(session: &Session) -> bool {
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

/// Joins an HTTP/2 request's `Cookie` crumbs into the one field HTTP/1.1
/// allows (RFC 9113 §8.2.3), as lb's own HTTP/2 exchange writes it.
pub fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    let mut crumbs = req.headers.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return Ok(());
    };
    let mut joined = first.as_bytes().to_vec();
    for c in req.headers.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(c.as_bytes());
    }
    let v = http::HeaderValue::from_bytes(&joined)
        .map_err(|_| Error::explain(InternalError, "invalid cookie field"))?;
    req.insert_header(http::header::COOKIE, v)
}

/// Writes the policy's upstream head into Pingora's: an absolute-form target
/// in origin form with `Host` = its authority, then the forwarding fields.
/// (Pingora itself removes the hop-by-hop fields and those `Connection`
/// names, and frames the body from its parse.)
pub fn forwarding(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    https: bool,
    request_id: &str,
) -> Result<()> {
    // Origin form (nearly every request) needs no rewriting.
    let absolute = !req.raw_path().starts_with(b"/");
    let target = if absolute {
        String::from_utf8_lossy(req.raw_path()).into_owned()
    } else {
        String::new()
    };
    if let Some((authority, rest)) = forward::absolute_form(&target) {
        let (slash, rest) = forward::origin_form(rest);
        req.set_raw_path(format!("{slash}{rest}").as_bytes())?;
        req.insert_header(HOST, authority)?;
    }
    let mut prev = Vec::new();
    for v in req.headers.get_all("x-forwarded-for") {
        forward::join_xff(&mut prev, v.as_bytes());
    }
    let host = req.headers.get(HOST).map(|h| h.as_bytes().to_vec());
    let fields = Forwarding {
        client,
        proto: if https { "https" } else { "http" },
        host: host.as_deref(),
        request_id: Some(request_id),
    };
    let mut result = Ok(());
    fields.each(&prev, |name, parts| {
        if result.is_ok() {
            result = http::HeaderValue::from_bytes(&parts.concat())
                .map_err(|_| Error::explain(InternalError, "invalid forwarding field"))
                .and_then(|v| req.insert_header(name, v));
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cookie_crumbs_are_joined() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1").unwrap();
        join_cookies(&mut req).unwrap();
        assert_eq!(req.headers["cookie"], "a=1");
        req.append_header("cookie", "b=2").unwrap();
        req.append_header("cookie", "c=3").unwrap();
        join_cookies(&mut req).unwrap();
        let all: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn forwarding_fields_and_origin_form() {
        let mut req = RequestHeader::build("GET", b"http://a.example:81/x?y", None).unwrap();
        req.insert_header("host", "other").unwrap();
        req.append_header("x-forwarded-for", "10.0.0.1").unwrap();
        req.append_header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"10.0.0.2 \xe9").unwrap(),
        )
        .unwrap();
        forwarding(&mut req, Some("::1".parse().unwrap()), false, "rid").unwrap();
        assert_eq!(req.raw_path(), b"/x?y");
        let h = |n: &str| req.headers.get(n).unwrap().as_bytes().to_vec();
        assert_eq!(h("host"), b"a.example:81");
        assert_eq!(h("x-forwarded-host"), b"a.example:81");
        assert_eq!(h("x-forwarded-for"), b"10.0.0.1, 10.0.0.2 \xe9, ::1");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h("x-real-ip"), b"::1");
        assert_eq!(h("x-request-id"), b"rid");
        assert_eq!(h("x-forwarded-proto"), b"http");
    }
}
