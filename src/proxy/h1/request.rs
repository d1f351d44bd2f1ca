//! The client's request head: parsed with `httparse`, checked against RFC 9112's
//! "a server MUST reject" rules, and re-encoded once as the upstream request head.
//! Pure (no I/O): everything here is unit-tested below.

use std::net::IpAddr;

use httparse::{Header, Status};

use crate::http1::content_length;
use crate::proxy::policy::forward::{self, Forwarding, StickyField, Token};
use crate::proxy::policy::{idempotent, sane_request_id, HeadLimits};

/// Largest request body the fast path buffers (and can replay on a retry), like
/// Pingora's retry buffer. Larger and chunked bodies are streamed to the
/// backend (one attempt once a byte of them was sent); upgrades and CONNECT
/// go to the Pingora path.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// A request's body, as its framing says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None, or a `Content-Length` of at most [`MAX_BUFFERED_BODY`]: read
    /// whole before the request is sent (`Head::body_len` bytes).
    Buffered,
    /// A larger `Content-Length` body, streamed.
    Length(u64),
    /// `Transfer-Encoding: chunked`, streamed (chunk framing validated and
    /// passed on as it was sent).
    Chunked,
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or forbidden by RFC 9112 → `400`.
    Bad(&'static str),
    /// A transfer coding lb does not implement (only `chunked` alone) → `501`.
    Unsupported,
    /// Beyond `server.max_headers` or `server.max_header_bytes` → `431`.
    TooLarge,
}

impl Reject {
    /// The status lb answers with.
    pub fn status(self) -> u16 {
        match self {
            Reject::Bad(_) => 400,
            Reject::Unsupported => 501,
            Reject::TooLarge => 431,
        }
    }
}

/// How the rest of the exchange must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Served by the fast path (see [`Body`]).
    Fast,
    /// Upgrades and CONNECT: handed to the Pingora path.
    Fallback,
}

/// What the fast path needs from a parsed head once the parse buffer is released.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head in the read buffer.
    pub len: usize,
    /// Bytes of a [`Body::Buffered`] body (0 for streamed ones).
    pub body_len: usize,
    /// How the body is framed and forwarded.
    pub body: Body,
    pub route: Route,
    /// HTTP/1.0 (else 1.1).
    pub http10: bool,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `HEAD`: the response never has a body.
    pub head_method: bool,
    /// GET, HEAD, PUT, DELETE, OPTIONS, TRACE: safe to send again.
    pub idempotent: bool,
    /// `Expect: 100-continue` was sent (lb answers it itself).
    pub expect_continue: bool,
    /// No `Host` field (HTTP/1.0 only; 1.1 without one is rejected).
    pub missing_host: bool,
    /// The client's sane `X-Request-Id`, as a range of the buffer.
    pub request_id: Option<(usize, usize)>,
    /// The sticky cookie or header value, as a range of the buffer.
    pub sticky: Option<(usize, usize)>,
    /// Method and path (without query), as ranges of the buffer, for the log.
    pub method: (usize, usize),
    pub path: (usize, usize),
    /// The whole request-target and the `Host` value, as ranges of the
    /// buffer (`tls.redirect_http`).
    pub target: (usize, usize),
    pub host: Option<(usize, usize)>,
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more
/// (the caller enforces `max_header_bytes` on what it buffers).
pub fn parse(
    buf: &[u8],
    limits: HeadLimits,
    sticky: StickyField<'_>,
    out: &mut Vec<u8>,
    client: Option<IpAddr>,
    proto: &'static str,
) -> Result<Option<Head>, Reject> {
    let mut storage = [const { std::mem::MaybeUninit::<Header<'_>>::uninit() }; 257];
    let mut req = httparse::Request::new(&mut []);
    let n = limits.max_headers.min(256) + 1;
    let len = match req.parse_with_uninit_headers(buf, &mut storage[..n]) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooLarge),
        Err(_) => return Err(Reject::Bad("malformed request head")),
    };
    if limits.exceeded(req.headers.len(), len) {
        return Err(Reject::TooLarge);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    check_target(method, target)?;

    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let mut f = Fields::default();
    for h in req.headers.iter() {
        f.see(h, sticky, &range)?;
    }
    if f.hosts > 1 {
        return Err(Reject::Bad("several Host fields"));
    }
    if f.hosts == 0 && !http10 {
        return Err(Reject::Bad("HTTP/1.1 request without Host"));
    }
    if f.te && f.content_length.is_some() {
        return Err(Reject::Bad("both Content-Length and Transfer-Encoding"));
    }
    if f.te && http10 {
        // RFC 9112 §6.1: faulty framing in an HTTP/1.0 message.
        return Err(Reject::Bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if f.te && !f.chunked {
        return Err(Reject::Unsupported);
    }
    let (body, body_len) = match f.content_length {
        _ if f.te => (Body::Chunked, 0),
        Some(n) if n > MAX_BUFFERED_BODY => (Body::Length(n as u64), 0),
        n => (Body::Buffered, n.unwrap_or(0)),
    };
    let upgrade = f.upgrade && f.conn_upgrade;
    let route = if method == "CONNECT" || upgrade {
        Route::Fallback
    } else {
        Route::Fast
    };
    let keep_alive = if http10 {
        f.conn_keep_alive && !f.conn_close
    } else {
        !f.conn_close
    };
    let path_end = target.find('?').unwrap_or(target.len());
    let head = Head {
        len,
        body_len,
        body,
        route,
        http10,
        keep_alive,
        head_method: method == "HEAD",
        idempotent: idempotent(method.as_bytes()),
        expect_continue: f.expect_continue,
        // An absolute-form target gives the Host (see `encode`).
        missing_host: f.hosts == 0 && forward::absolute_form(target).is_none(),
        request_id: f.request_id,
        sticky: f.sticky,
        method: range(method.as_bytes()),
        path: range(&target.as_bytes()[..path_end]),
        target: range(target.as_bytes()),
        host: f.host,
    };
    if route == Route::Fast {
        encode(&req, &f, client, proto, buf, out);
    }
    Ok(Some(head))
}

/// Facts gathered from the header fields in one pass.
#[derive(Debug, Default)]
struct Fields {
    hosts: u32,
    host: Option<(usize, usize)>,
    content_length: Option<usize>,
    te: bool,
    /// `Transfer-Encoding` is exactly `chunked`.
    chunked: bool,
    upgrade: bool,
    conn_upgrade: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
    request_id: Option<(usize, usize)>,
    sticky: Option<(usize, usize)>,
    /// Header names the client's `Connection` field lists (hop-by-hop).
    conn_named: Vec<(usize, usize)>,
    /// The client's `X-Forwarded-For` values, joined.
    xff: Vec<u8>,
}

impl Fields {
    fn see(
        &mut self,
        h: &Header<'_>,
        sticky: StickyField<'_>,
        range: &impl Fn(&[u8]) -> (usize, usize),
    ) -> Result<(), Reject> {
        let name = h.name;
        let v = h.value;
        if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            self.host = Some(range(v.trim_ascii()));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(v)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(Reject::Bad("invalid Content-Length"))?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(Reject::Bad("conflicting Content-Length"));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // One field, `chunked` alone: the only coding lb forwards.
            self.chunked = !self.te && v.trim_ascii().eq_ignore_ascii_case(b"chunked");
            self.te = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                match forward::connection_token(token, sticky).map_err(Reject::Bad)? {
                    Token::Close => self.conn_close = true,
                    Token::KeepAlive => self.conn_keep_alive = true,
                    Token::Upgrade => self.conn_upgrade = true,
                    Token::Named => self.conn_named.push(range(token)),
                    Token::Empty => {}
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forward::join_xff(&mut self.xff, v);
        } else if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if v.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                self.expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case("x-request-id")
            && self.request_id.is_none()
            && sane_request_id(v)
        {
            self.request_id = Some(range(v));
        }
        match sticky {
            StickyField::Cookie(c)
                if self.sticky.is_none() && name.eq_ignore_ascii_case("cookie") =>
            {
                self.sticky = crate::sticky::cookie_in(v, c).map(range);
            }
            StickyField::Header(hn) if self.sticky.is_none() && name.eq_ignore_ascii_case(hn) => {
                self.sticky = Some(range(v)).filter(|_| !v.is_empty());
            }
            _ => {}
        }
        Ok(())
    }
}

/// RFC 9112 §3.2: origin-form (`/...`), absolute-form (`scheme://...`),
/// authority-form (CONNECT only) or asterisk-form (OPTIONS only).
fn check_target(method: &str, target: &str) -> Result<(), Reject> {
    let ok = if method == "CONNECT" {
        !target.is_empty() && !target.contains('/') && target.contains(':')
    } else if target == "*" {
        method == "OPTIONS"
    } else if target.starts_with('/') {
        true
    } else {
        forward::absolute_form(target).is_some()
    };
    if ok {
        Ok(())
    } else {
        Err(Reject::Bad("invalid request-target"))
    }
}

/// Writes the upstream request head up to its last fields ([`finish`] adds
/// `X-Request-Id`, a `Host` for a Host-less HTTP/1.0 request and the blank
/// line): the request line in origin form, the client's fields but those
/// never forwarded, its framing written from the parse, the forwarding fields.
fn encode(
    req: &httparse::Request<'_, '_>,
    f: &Fields,
    client: Option<IpAddr>,
    proto: &'static str,
    buf: &[u8],
    out: &mut Vec<u8>,
) {
    let target = req.path.unwrap_or("");
    let absolute = forward::absolute_form(target);
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("").as_bytes());
    out.push(b' ');
    match absolute {
        Some((_, rest)) => {
            let (slash, rest) = forward::origin_form(rest);
            out.extend_from_slice(slash.as_bytes());
            out.extend_from_slice(rest.as_bytes());
        }
        None => out.extend_from_slice(target.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[&[u8]]| super::field_line(out, name, value);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let replaced_host = absolute.is_some() && name.eq_ignore_ascii_case(b"host");
        if forward::not_forwarded(name)
            || forward::is_framing(name)
            || replaced_host
            || f.conn_named
                .iter()
                .any(|&(s, e)| name.eq_ignore_ascii_case(&buf[s..e]))
        {
            continue;
        }
        line(name, &[h.value]);
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority is the Host.
    let host = match absolute {
        Some((authority, _)) => Some(authority.as_bytes()),
        None => f.host.map(|(s, e)| &buf[s..e]),
    };
    if let Some((authority, _)) = absolute {
        line(b"host", &[authority.as_bytes()]);
    }
    if let Some(n) = f.content_length {
        line(
            b"content-length",
            &[itoa::Buffer::new().format(n).as_bytes()],
        );
    } else if f.te {
        line(b"transfer-encoding", &[b"chunked"]);
    }
    let forwarding = Forwarding {
        client,
        proto,
        host,
        request_id: None,
    };
    forwarding.each(&f.xff, |name, parts| line(name.as_bytes(), parts));
}

/// Completes the head [`parse`] encoded: `X-Request-Id`, `Host` where the
/// client sent none (HTTP/1.0: the backend's address), the blank line, the body.
pub fn finish(out: &mut Vec<u8>, request_id: &str, host: Option<&str>, body: &[u8]) {
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 100,
        max_header_bytes: 32 * 1024,
    };

    fn run(raw: &[u8]) -> Result<Option<Head>, Reject> {
        let mut out = Vec::new();
        parse(raw, LIMITS, StickyField::None, &mut out, None, "http")
    }

    fn upstream(raw: &[u8], client: Option<IpAddr>) -> String {
        let mut out = Vec::new();
        let h = parse(raw, LIMITS, StickyField::None, &mut out, client, "http")
            .unwrap()
            .unwrap();
        finish(
            &mut out,
            "rid",
            h.missing_host.then_some("10.0.0.1:80"),
            b"",
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rejects_what_rfc_9112_forbids() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",                        // no Host
            b"GET / HTTP/1.1\n\nHost: x\r\n\r\n",             // bare LF ends the head first
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  // two Hosts
            b"GET ! HTTP/1.1\r\nHost: x\r\n\r\n",             // not a valid target form
            b"Extra lineGET / HTTP/1.1\r\nHost: x\r\n\r\n",   // bytes before the method
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",             // asterisk only for OPTIONS
            b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", // authority only for CONNECT
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
        ];
        for raw in bad {
            assert_eq!(
                run(raw).map(|_| ()).unwrap_err().status(),
                400,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn accepts_every_valid_target_form() {
        for raw in [
            &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(
                run(raw).unwrap().is_some(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            run(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .map(|h| h.len),
            None
        );
    }

    #[test]
    fn limits_give_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..100 {
            raw.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(run(&raw).unwrap_err(), Reject::TooLarge, "101 fields");
        let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(40_000));
        assert_eq!(run(raw.as_bytes()).unwrap_err(), Reject::TooLarge);
    }

    #[test]
    fn routes_and_framing_facts() {
        let h = run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (h.route, h.keep_alive, h.http10, h.body_len),
            (Route::Fast, true, false, 0)
        );
        let h = run(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive && h.http10 && h.missing_host);
        let h = run(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = run(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h =
            run(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.route, Route::Fallback);
        let h = run(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.route, h.body, h.body_len),
            (Route::Fast, Body::Chunked, 0)
        );
        let big = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BUFFERED_BODY + 1
        );
        let h = run(big.as_bytes()).unwrap().unwrap();
        let n = MAX_BUFFERED_BODY as u64 + 1;
        assert_eq!(
            (h.route, h.body, h.body_len),
            (Route::Fast, Body::Length(n), 0)
        );
        // Only `chunked` alone is forwarded; HTTP/1.0 may not use it.
        let gz = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(run(gz).unwrap_err(), Reject::Unsupported);
        let twice = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(twice).unwrap_err(), Reject::Unsupported);
        let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(run(old).unwrap_err().status(), 400);
        let h =
            run(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue && !h.idempotent && h.body_len == 5);
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_adds_forwarding() {
        let up = upstream(
            b"GET /p HTTP/1.1\r\nHost: ex.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Request-Id: client\r\nAccept: */*\r\n\r\n",
            Some("127.0.0.9".parse().unwrap()),
        );
        assert_eq!(
            up,
            "GET /p HTTP/1.1\r\nHost: ex.test\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.9\r\nx-real-ip: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: ex.test\r\nx-request-id: rid\r\n\r\n"
        );
        // Several earlier X-Forwarded-For lines are joined in order.
        let up = upstream(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
            Some("::1".parse().unwrap()),
        );
        assert!(
            up.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, ::1\r\n"),
            "{up}"
        );
        // HTTP/1.0 without Host reaches the backend with one, as HTTP/1.1.
        let up = upstream(b"GET / HTTP/1.0\r\n\r\n", None);
        assert!(
            up.starts_with("GET / HTTP/1.1\r\n") && up.contains("host: 10.0.0.1:80\r\n"),
            "{up}"
        );
    }

    #[test]
    fn connection_naming_framing_or_routing_fields_is_refused() {
        // The smuggling request of issue 17: dropping Content-Length would have
        // sent the body upstream as a second request.
        let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 41\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n123456";
        for raw in [
            &smuggle[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: host\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Transfer-Encoding\r\n\r\n",
        ] {
            assert_eq!(
                run(raw).map(|_| ()).unwrap_err().status(),
                400,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut out = Vec::new();
        let raw =
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-session-id\r\nX-Session-Id: 1\r\n\r\n";
        let sticky = StickyField::Header("x-session-id");
        assert!(parse(raw, LIMITS, sticky, &mut out, None, "http").is_err());
        assert!(
            run(raw).is_ok(),
            "not the sticky field without header stickiness"
        );
    }

    #[test]
    fn lb_writes_the_framing_from_its_parse() {
        let up = upstream(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 002\r\nContent-Length: 2\r\n\r\nok",
            None,
        );
        assert_eq!(
            up.matches("content-length").count() + up.matches("Content-Length").count(),
            1,
            "{up}"
        );
        assert!(up.contains("content-length: 2\r\n"), "{up}");
        let up = upstream(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None);
        assert!(!up.to_ascii_lowercase().contains("content-length"), "{up}");
    }

    #[test]
    fn absolute_form_is_forwarded_in_origin_form_with_its_authority() {
        let up = upstream(
            b"GET http://a.example:8080/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            None,
        );
        assert!(up.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{up}");
        assert!(
            up.contains("host: a.example:8080\r\n") && !up.contains("other"),
            "{up}"
        );
        assert!(up.contains("x-forwarded-host: a.example:8080\r\n"), "{up}");
        let up = upstream(
            b"GET http://a.example?q HTTP/1.1\r\nHost: a.example\r\n\r\n",
            None,
        );
        assert!(up.starts_with("GET /?q HTTP/1.1\r\n"), "{up}");
    }

    #[test]
    fn finds_request_id_and_sticky_values() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; lb_sticky=abc\r\nX-Request-Id: ok-1\r\n\r\n";
        let mut out = Vec::new();
        let h = parse(
            raw,
            LIMITS,
            StickyField::Cookie("lb_sticky"),
            &mut out,
            None,
            "http",
        )
        .unwrap()
        .unwrap();
        let (s, e) = h.sticky.unwrap();
        assert_eq!(&raw[s..e], b"abc");
        let (s, e) = h.request_id.unwrap();
        assert_eq!(&raw[s..e], b"ok-1");
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Session-Id: s1\r\nX-Request-Id: bad id\r\n\r\n";
        let h = parse(
            raw,
            LIMITS,
            StickyField::Header("x-session-id"),
            &mut out,
            None,
            "http",
        )
        .unwrap()
        .unwrap();
        let (s, e) = h.sticky.unwrap();
        assert_eq!(&raw[s..e], b"s1");
        assert_eq!(h.request_id, None);
    }
}
