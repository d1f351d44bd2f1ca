//! The client's request head: parsed with `httparse`, checked against RFC 9112's
//! "a server MUST reject" rules, and re-encoded once as the upstream request head.
//! Pure (no I/O): everything here is unit-tested below.

use std::net::IpAddr;

use httparse::{Header, Status};

use crate::proxy::headers::sane_request_id;

/// Largest request body the fast path buffers (and can replay on a retry), like
/// Pingora's retry buffer. Larger bodies, chunked bodies and upgrades go to the
/// Pingora path.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or forbidden by RFC 9112 → `400`.
    Bad(&'static str),
    /// Beyond `server.max_headers` or `server.max_header_bytes` → `431`.
    TooLarge,
}

impl Reject {
    /// The status lb answers with.
    pub fn status(self) -> u16 {
        match self {
            Reject::Bad(_) => 400,
            Reject::TooLarge => 431,
        }
    }
}

/// How the rest of the exchange must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Served by the fast path: no body, or a `Content-Length` body of at most
    /// [`MAX_BUFFERED_BODY`] bytes.
    Fast,
    /// Upgrades, CONNECT, chunked or large bodies: handed to the Pingora path.
    Fallback,
}

/// What the fast path needs from a parsed head once the parse buffer is released.
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head in the read buffer.
    pub len: usize,
    /// Request body length (`Content-Length`, else 0).
    pub body_len: usize,
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
}

/// Limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// What the sticky mode looks for in the request.
#[derive(Debug, Clone, Copy)]
pub enum StickyLookup<'a> {
    None,
    Cookie(&'a str),
    Header(&'a str),
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more
/// (the caller enforces `max_header_bytes` on what it buffers).
pub fn parse(
    buf: &[u8],
    limits: Limits,
    sticky: StickyLookup<'_>,
    out: &mut Vec<u8>,
    client: Option<IpAddr>,
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
    if len > limits.max_header_bytes {
        return Err(Reject::TooLarge);
    }
    if req.headers.len() > limits.max_headers {
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
    let body_len = f.content_length.unwrap_or(0);
    let upgrade = f.upgrade && f.conn_upgrade;
    let route = if method == "CONNECT" || upgrade || f.te || body_len > MAX_BUFFERED_BODY {
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
        route,
        http10,
        keep_alive,
        head_method: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
        expect_continue: f.expect_continue,
        missing_host: f.hosts == 0,
        request_id: f.request_id,
        sticky: f.sticky,
        method: range(method.as_bytes()),
        path: range(&target.as_bytes()[..path_end]),
    };
    if route == Route::Fast {
        encode(&req, &f, client, buf, out);
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
    upgrade: bool,
    conn_upgrade: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
    request_id: Option<(usize, usize)>,
    sticky: Option<(usize, usize)>,
    /// Header names the client's `Connection` field lists (hop-by-hop).
    conn_named: Vec<(usize, usize)>,
}

impl Fields {
    fn see(
        &mut self,
        h: &Header<'_>,
        sticky: StickyLookup<'_>,
        range: &impl Fn(&[u8]) -> (usize, usize),
    ) -> Result<(), Reject> {
        let name = h.name;
        let v = h.value;
        if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            self.host = Some(range(v.trim_ascii()));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(v).ok_or(Reject::Bad("invalid Content-Length"))?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(Reject::Bad("conflicting Content-Length"));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.te = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.conn_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    self.conn_upgrade = true;
                } else if !token.is_empty() {
                    self.conn_named.push(range(token));
                }
            }
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
            StickyLookup::Cookie(c)
                if self.sticky.is_none() && name.eq_ignore_ascii_case("cookie") =>
            {
                self.sticky = crate::sticky::cookie_in(v, c).map(range);
            }
            StickyLookup::Header(hn) if self.sticky.is_none() && name.eq_ignore_ascii_case(hn) => {
                self.sticky = Some(range(v)).filter(|_| !v.is_empty());
            }
            _ => {}
        }
        Ok(())
    }
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6; a list is refused).
fn parse_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0usize, |n, d| Some(n * 10 + usize::from(d - b'0')))
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
        absolute_form(target)
    };
    if ok {
        Ok(())
    } else {
        Err(Reject::Bad("invalid request-target"))
    }
}

/// `scheme "://" authority [path]` with an RFC 3986 scheme and a non-empty authority.
fn absolute_form(target: &str) -> bool {
    let Some((scheme, rest)) = target.split_once("://") else {
        return false;
    };
    let mut s = scheme.bytes();
    s.next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !rest.starts_with('/')
}

/// Hop-by-hop fields never forwarded (RFC 9110 §7.6.1), plus the ones lb sets.
fn dropped(name: &str) -> bool {
    const NAMES: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "expect",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "trailer",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Writes the upstream request head (without the trailing blank line's
/// `X-Request-Id` and `Host` for Host-less requests, which [`finish`] adds).
fn encode(
    req: &httparse::Request<'_, '_>,
    f: &Fields,
    client: Option<IpAddr>,
    buf: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // Earlier hops, whatever their bytes and however many lines carried them.
    let mut prev: Vec<u8> = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            let v = h.value.trim_ascii();
            if !v.is_empty() {
                prev.extend_from_slice(v);
                prev.extend_from_slice(b", ");
            }
            continue;
        }
        if dropped(h.name)
            || f.conn_named
                .iter()
                .any(|&(s, e)| h.name.as_bytes().eq_ignore_ascii_case(&buf[s..e]))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = client {
        use std::io::Write;
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(&prev);
        let _ = write!(out, "{ip}\r\nx-real-ip: {ip}\r\n");
    } else if !prev.is_empty() {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(&prev[..prev.len() - 2]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    let authority = f
        .host
        .map(|(s, e)| &buf[s..e])
        .or_else(|| target_authority(req.path.unwrap_or("")));
    if let Some(host) = authority {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
}

/// The authority of an absolute-form target.
fn target_authority(target: &str) -> Option<&[u8]> {
    let rest = target.split_once("://")?.1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest.as_bytes()[..end]).filter(|a| !a.is_empty())
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

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_header_bytes: 32 * 1024,
    };

    fn run(raw: &[u8]) -> Result<Option<Head>, Reject> {
        let mut out = Vec::new();
        parse(raw, LIMITS, StickyLookup::None, &mut out, None)
    }

    fn upstream(raw: &[u8], client: Option<IpAddr>) -> String {
        let mut out = Vec::new();
        let h = parse(raw, LIMITS, StickyLookup::None, &mut out, client)
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
        assert_eq!(h.route, Route::Fallback);
        let big = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BUFFERED_BODY + 1
        );
        assert_eq!(run(big.as_bytes()).unwrap().unwrap().route, Route::Fallback);
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
    fn finds_request_id_and_sticky_values() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; lb_sticky=abc\r\nX-Request-Id: ok-1\r\n\r\n";
        let mut out = Vec::new();
        let h = parse(
            raw,
            LIMITS,
            StickyLookup::Cookie("lb_sticky"),
            &mut out,
            None,
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
            StickyLookup::Header("x-session-id"),
            &mut out,
            None,
        )
        .unwrap()
        .unwrap();
        let (s, e) = h.sticky.unwrap();
        assert_eq!(&raw[s..e], b"s1");
        assert_eq!(h.request_id, None);
    }
}
