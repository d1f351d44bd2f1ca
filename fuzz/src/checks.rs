//! The framing invariants of lb's HTTP/1 path (SPEC "Framing and hop-by-hop
//! fields"), checked on any input. Shared by the fuzz targets (this crate's
//! library) and `tests/framing_props.rs` (which includes this file with
//! `#[path]`), so a fuzz finding and a property-test failure mean the same thing.
//!
//! lb's own encoders are what is under test, so every head lb writes is read
//! back with `httparse` and judged with the small helpers below, never with
//! lb's code.

use std::net::IpAddr;

use lb::http1::{Chunked, Framing};
use lb::proxy::h1::request::{self, Body, Route, MAX_BUFFERED_BODY};
use lb::proxy::h1::response::{self, ClientSide};
use lb::proxy::policy::forward::StickyField;
use lb::proxy::policy::HeadLimits;

/// The limits the checks parse requests with (lb's defaults' order of size).
pub const LIMITS: HeadLimits = HeadLimits {
    max_headers: 100,
    max_header_bytes: 32 * 1024,
};

/// The backend address `finish` is given as `Host` for a Host-less HTTP/1.0
/// request (what `exchange.rs` passes).
pub const BACKEND_ADDR: &str = "10.0.0.1:80";

/// Fields lb writes itself in an upstream request.
const LB_REQUEST_FIELDS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Hop-by-hop request fields (RFC 9110 §7.6.1, plus `Expect`, which lb answers).
const REQUEST_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "trailer",
    "proxy-connection",
    "expect",
];

/// Hop-by-hop response fields lb never passes on to a client (`connection`
/// is lb's own, checked separately).
const RESPONSE_HOP_BY_HOP: [&str; 5] =
    ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// What happened to a request input (for the property tests' coverage counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReqOutcome {
    Incomplete,
    Rejected(u16),
    Fallback,
    /// Head complete, but fewer body bytes than its `Content-Length` in the buffer.
    BodyIncomplete,
    /// Forwarded with its (buffered) body.
    Forwarded,
    /// Forwarded head of a streamed body: `Content-Length` or chunked.
    Streamed,
}

/// What happened to a response input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RespOutcome {
    Incomplete,
    Rejected,
    Interim,
    Forwarded(FramingKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FramingKind {
    Empty,
    Length,
    Chunked,
    Dechunked,
    Close,
}

/// Whether a failure message is one the environment asks to pass over:
/// `FRAMING_IGNORE='text|text'` (substrings of messages). While a finding is
/// open, this lets fuzzing and the property tests look for other ones; unset,
/// every failure counts.
pub fn ignored(message: &str) -> bool {
    std::env::var("FRAMING_IGNORE")
        .is_ok_and(|v| v.split('|').any(|p| !p.is_empty() && message.contains(p)))
}

/// Bytes as an escaped Rust byte-string literal, for failure messages.
pub fn show(b: &[u8]) -> String {
    format!("b\"{}\"", b.escape_ascii())
}

/// Header fields as (lowercase name, value).
fn fields_of(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

fn values<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| &v[..])
        .collect()
}

fn count(fields: &[(String, Vec<u8>)], name: &str) -> usize {
    values(fields, name).len()
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Every token of every `Connection` field, trimmed and lowercased, empty
/// ones skipped (RFC 9110 §7.6.1: a comma-separated list of field names and
/// connection options).
fn connection_tokens(fields: &[(String, Vec<u8>)]) -> Vec<String> {
    values(fields, "connection")
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

/// A decimal `Content-Length` value (RFC 9110 §8.6): digits only.
fn decimal(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// RFC 9112 §3.2.2 absolute-form: `scheme "://" authority [path-abempty] [ "?" query ]`.
/// Returns (authority without userinfo, the origin form to forward).
fn absolute_form(target: &str) -> Option<(String, String)> {
    let i = target.find("://")?;
    let scheme = &target.as_bytes()[..i];
    if scheme.is_empty()
        || !scheme[0].is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
    {
        return None;
    }
    let rest = &target[i + 3..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = match authority.rfind('@') {
        Some(j) => &authority[j + 1..],
        None => authority,
    };
    let path = &rest[end..];
    let origin = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    (!authority.is_empty()).then(|| (authority.to_string(), origin))
}

fn fail(what: impl std::fmt::Display, input: &[u8], out: &[u8]) -> String {
    format!("{what}\n  input:  {}\n  output: {}", show(input), show(out))
}

macro_rules! ensure {
    ($cond:expr, $input:expr, $out:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(fail(format!($($msg)+), $input, $out));
        }
    };
}

/// Parses `buf` as a client's request head (+ body) with lb, completes the
/// upstream request as the HTTP/1 path does, and checks it (invariants a).
pub fn check_request(
    buf: &[u8],
    sticky: StickyField<'_>,
    client: Option<IpAddr>,
) -> Result<ReqOutcome, String> {
    let mut out = Vec::new();
    let res = request::parse(buf, LIMITS, sticky, &mut out, client, "http");

    // The client's head, read independently.
    let mut ch = vec![httparse::EMPTY_HEADER; 256];
    let mut creq = httparse::Request::new(&mut ch);
    let clen = match creq.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
    };
    let cfields = fields_of(creq.headers);
    let ctokens = connection_tokens(&cfields);
    let too_large =
        clen.is_some_and(|n| n > LIMITS.max_header_bytes) || cfields.len() > LIMITS.max_headers;

    if clen.is_some() {
        // A request whose Connection names a field lb routes or frames by: 400.
        let protected = |t: &str| {
            matches!(t, "host" | "content-length" | "transfer-encoding")
                || match sticky {
                    StickyField::None => false,
                    StickyField::Cookie(c) => t == "cookie" || t.eq_ignore_ascii_case(c),
                    StickyField::Header(h) => t.eq_ignore_ascii_case(h),
                }
        };
        if let Some(t) = ctokens.iter().find(|t| protected(t)) {
            let ok = match &res {
                Err(e) => e.status() == 400 || (too_large && e.status() == 431),
                Ok(_) => false,
            };
            ensure!(
                ok,
                buf,
                &out,
                "Connection names `{t}` but parse gave {:?}, not a 400",
                res.as_ref().map(|h| h.as_ref().map(|h| h.route))
            );
        }
    }

    let head = match res {
        Ok(None) => return Ok(ReqOutcome::Incomplete),
        Err(e) => return Ok(ReqOutcome::Rejected(e.status())),
        Ok(Some(h)) => h,
    };
    ensure!(
        clen == Some(head.len),
        buf,
        &out,
        "head length {} but httparse reads {clen:?}",
        head.len
    );
    // RFC 9112 §3.2: one Host at most, exactly one in HTTP/1.1.
    let hosts = count(&cfields, "host");
    ensure!(
        hosts <= 1 && (hosts == 1 || creq.version == Some(0)),
        buf,
        &out,
        "accepted with {hosts} Host fields"
    );
    let cte = values(&cfields, "transfer-encoding");
    let ccl: Vec<Option<u64>> = values(&cfields, "content-length")
        .into_iter()
        .map(decimal)
        .collect();
    ensure!(
        cte.is_empty() || ccl.is_empty(),
        buf,
        &out,
        "accepted with both Content-Length and Transfer-Encoding"
    );
    ensure!(
        ccl.iter().all(|v| v.is_some() && *v == ccl[0]),
        buf,
        &out,
        "accepted with invalid or conflicting Content-Length {ccl:?}"
    );
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; only
    // `chunked` alone is a coding lb can forward.
    ensure!(
        cte.is_empty()
            || (creq.version == Some(1)
                && cte.len() == 1
                && trim(cte[0]).eq_ignore_ascii_case(b"chunked")),
        buf,
        &out,
        "accepted with Transfer-Encoding {:?}",
        cte.iter().map(|v| show(v)).collect::<Vec<_>>()
    );
    let client_len = ccl.first().copied().flatten();
    let body_ok = match head.body {
        Body::Buffered => {
            cte.is_empty()
                && head.body_len as u64 == client_len.unwrap_or(0)
                && head.body_len <= MAX_BUFFERED_BODY
        }
        Body::Length(n) => {
            cte.is_empty()
                && client_len == Some(n)
                && n > MAX_BUFFERED_BODY as u64
                && head.body_len == 0
        }
        Body::Chunked => !cte.is_empty() && head.body_len == 0,
    };
    ensure!(
        body_ok,
        buf,
        &out,
        "body {:?} (body_len {}) for Content-Length {client_len:?}, Transfer-Encoding {}",
        head.body,
        head.body_len,
        cte.len()
    );
    if head.route == Route::Fallback {
        return Ok(ReqOutcome::Fallback);
    }
    // A streamed body follows the head later: the head is sent alone.
    let Some(body) = buf.get(head.len..head.len + head.body_len) else {
        return Ok(ReqOutcome::BodyIncomplete);
    };

    let rid = lb::proxy::policy::request_id(head.request_id.map(|(s, e)| &buf[s..e]));
    let host = head.missing_host.then_some(BACKEND_ADDR);
    request::finish(&mut out, &rid, host, body);

    let mut uh = vec![httparse::EMPTY_HEADER; 512];
    let mut up = httparse::Request::new(&mut uh);
    let n = match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(fail(
                format!("upstream head does not parse: {other:?}"),
                buf,
                &out,
            ))
        }
    };
    let ufields = fields_of(up.headers);
    ensure!(
        n + body.len() == out.len() && &out[n..] == body,
        buf,
        &out,
        "upstream head is {n} bytes, body {} bytes, message {} bytes: not exactly one request",
        body.len(),
        out.len()
    );
    ensure!(up.version == Some(1), buf, &out, "upstream is not HTTP/1.1");
    ensure!(up.method == creq.method, buf, &out, "method changed");

    // Target: origin form; an absolute-form target's authority is the Host.
    let ctarget = creq.path.unwrap_or("");
    let utarget = up.path.unwrap_or("");
    let absolute = absolute_form(ctarget);
    let want_target = absolute.as_ref().map_or(ctarget, |(_, o)| o.as_str());
    ensure!(
        utarget.starts_with('/') || utarget == "*",
        buf,
        &out,
        "upstream target `{utarget}` is not origin-form"
    );
    ensure!(
        utarget == want_target,
        buf,
        &out,
        "upstream target `{utarget}`, expected `{want_target}`"
    );
    let uhosts = values(&ufields, "host");
    ensure!(
        uhosts.len() == 1,
        buf,
        &out,
        "upstream has {} Host fields",
        uhosts.len()
    );
    let want_host: Vec<u8> = match (&absolute, values(&cfields, "host").first()) {
        (Some((authority, _)), _) => authority.as_bytes().to_vec(),
        (None, Some(h)) => h.to_vec(),
        (None, None) => BACKEND_ADDR.as_bytes().to_vec(),
    };
    ensure!(
        uhosts[0] == &want_host[..],
        buf,
        &out,
        "upstream Host {}, expected {}",
        show(uhosts[0]),
        show(&want_host)
    );

    // Framing: written by lb from its parse; the client's framing, exactly.
    let ute = values(&ufields, "transfer-encoding");
    let ucl = values(&ufields, "content-length");
    let shown = |v: &[&[u8]]| v.iter().map(|v| show(v)).collect::<Vec<_>>();
    ensure!(
        ucl.is_empty() || ute.is_empty(),
        buf,
        &out,
        "upstream has both Content-Length {:?} and Transfer-Encoding {:?}",
        shown(&ucl),
        shown(&ute)
    );
    if head.body == Body::Chunked {
        ensure!(
            ute.len() == 1 && ute[0] == b"chunked",
            buf,
            &out,
            "chunked request body, upstream Transfer-Encoding {:?}",
            shown(&ute)
        );
    } else {
        ensure!(
            ute.is_empty(),
            buf,
            &out,
            "upstream has Transfer-Encoding {:?}",
            shown(&ute)
        );
    }
    match client_len {
        Some(n) => ensure!(
            ucl.len() == 1 && decimal(ucl[0]) == Some(n),
            buf,
            &out,
            "upstream Content-Length {:?}, expected {n}",
            shown(&ucl)
        ),
        None => ensure!(
            ucl.is_empty(),
            buf,
            &out,
            "upstream Content-Length {:?} the client did not send",
            shown(&ucl)
        ),
    }

    // Hop-by-hop fields and those the client's Connection names are gone.
    for name in REQUEST_HOP_BY_HOP {
        ensure!(
            count(&ufields, name) == 0,
            buf,
            &out,
            "upstream has hop-by-hop `{name}`"
        );
    }
    for t in &ctokens {
        if matches!(t.as_str(), "close" | "keep-alive" | "upgrade")
            || LB_REQUEST_FIELDS.contains(&t.as_str())
        {
            continue;
        }
        ensure!(
            count(&ufields, t) == 0,
            buf,
            &out,
            "upstream has `{t}`, which the client's Connection names"
        );
    }

    // lb's own fields.
    let rids = values(&ufields, "x-request-id");
    ensure!(
        rids.len() == 1 && rids[0] == rid.as_bytes(),
        buf,
        &out,
        "upstream X-Request-Id {:?}, expected once `{rid}`",
        rids.iter().map(|v| show(v)).collect::<Vec<_>>()
    );
    let xff = values(&ufields, "x-forwarded-for");
    if let Some(ip) = client {
        let ip = ip.to_string();
        ensure!(
            xff.len() == 1 && xff[0].ends_with(ip.as_bytes()),
            buf,
            &out,
            "upstream X-Forwarded-For {:?}, expected once, ending in {ip}",
            xff.iter().map(|v| show(v)).collect::<Vec<_>>()
        );
    } else {
        ensure!(
            xff.len() <= 1,
            buf,
            &out,
            "upstream has {} X-Forwarded-For",
            xff.len()
        );
    }
    // A client X-Forwarded-For its Connection names is removed: its hops do
    // not reach the backend (only lb's own entry may).
    if ctokens.iter().any(|t| t == "x-forwarded-for") {
        let own = client.map(|ip| ip.to_string()).unwrap_or_default();
        ensure!(
            xff.iter().all(|v| *v == own.as_bytes()),
            buf,
            &out,
            "the client's Connection names X-Forwarded-For, yet its hops reach the backend: {:?}",
            xff.iter().map(|v| show(v)).collect::<Vec<_>>()
        );
    }

    // Every other (end-to-end) field of the client reaches the backend, in order.
    let end_to_end = |f: &&(String, Vec<u8>), named: &[String]| {
        !REQUEST_HOP_BY_HOP.contains(&f.0.as_str())
            && !LB_REQUEST_FIELDS.contains(&f.0.as_str())
            && f.0 != "transfer-encoding"
            && !named.contains(&f.0)
    };
    let kept: Vec<_> = cfields.iter().filter(|f| end_to_end(f, &ctokens)).collect();
    let passed: Vec<_> = ufields.iter().filter(|f| end_to_end(f, &[])).collect();
    ensure!(
        kept == passed,
        buf,
        &out,
        "end-to-end fields differ: client {kept:?}, upstream {passed:?}"
    );
    Ok(if head.body == Body::Buffered {
        ReqOutcome::Forwarded
    } else {
        ReqOutcome::Streamed
    })
}

/// Parses `buf` as a backend's response head with lb for `client` and checks
/// the client's head lb wrote (invariants b).
pub fn check_response(buf: &[u8], client: ClientSide<'_>) -> Result<RespOutcome, String> {
    let mut out = Vec::new();
    let res = response::parse(buf, client, &mut out);
    let h = match res {
        Ok(None) => return Ok(RespOutcome::Incomplete),
        Err(_) => return Ok(RespOutcome::Rejected),
        Ok(Some(h)) => h,
    };
    // The backend's head, read independently.
    let mut bh = vec![httparse::EMPTY_HEADER; 256];
    let mut bresp = httparse::Response::new(&mut bh);
    let blen = match bresp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(fail(
                format!("lb accepted a head httparse reads as {other:?}"),
                buf,
                &out,
            ))
        }
    };
    ensure!(
        blen == h.len,
        buf,
        &out,
        "head length {} but httparse reads {blen}",
        h.len
    );
    ensure!(
        bresp.code == Some(h.status),
        buf,
        &out,
        "status {} but httparse reads {:?}",
        h.status,
        bresp.code
    );
    let bfields = fields_of(bresp.headers);
    if (100..200).contains(&h.status) {
        ensure!(out.is_empty(), buf, &out, "a head was written for a 1xx");
        return Ok(RespOutcome::Interim);
    }

    // RFC 9112 §6.3, independently: no body for HEAD, 204, 304; chunked wins
    // over Content-Length; else the length; else until close.
    let bte = count(&bfields, "transfer-encoding");
    let bcl = values(&bfields, "content-length");
    let expected = if client.head_method || h.status == 204 || h.status == 304 {
        Framing::Empty
    } else if bte > 0 {
        Framing::Chunked
    } else if let Some(v) = bcl.first() {
        match decimal(v) {
            Some(n) => Framing::Length(n),
            None => return Err(fail("accepted an invalid Content-Length", buf, &out)),
        }
    } else {
        Framing::Close
    };
    ensure!(
        h.upstream == expected,
        buf,
        &out,
        "framing {:?}, expected {expected:?}",
        h.upstream
    );
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
    // framing; the connection is closed after it.
    ensure!(
        !(bresp.version == Some(0) && bte > 0 && h.reusable),
        buf,
        &out,
        "backend connection reused after an HTTP/1.0 response with Transfer-Encoding"
    );
    ensure!(
        h.dechunk == (h.upstream == Framing::Chunked && client.http10),
        buf,
        &out,
        "dechunk {} for framing {:?}, http10 client {}",
        h.dechunk,
        h.upstream,
        client.http10
    );

    let mut ch = vec![httparse::EMPTY_HEADER; 512];
    let mut cresp = httparse::Response::new(&mut ch);
    let n = match cresp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => {
            return Err(fail(
                format!("client head does not parse: {other:?}"),
                buf,
                &out,
            ))
        }
    };
    ensure!(
        n == out.len(),
        buf,
        &out,
        "client head is {n} of {} bytes",
        out.len()
    );
    ensure!(
        cresp.version == Some(1),
        buf,
        &out,
        "client head is not HTTP/1.1"
    );
    ensure!(cresp.code == Some(h.status), buf, &out, "status changed");
    let cfields = fields_of(cresp.headers);
    let cl = values(&cfields, "content-length");
    let te = values(&cfields, "transfer-encoding");
    ensure!(
        cl.is_empty() || te.is_empty(),
        buf,
        &out,
        "the client gets both Content-Length and Transfer-Encoding"
    );
    ensure!(
        !client.http10 || te.is_empty(),
        buf,
        &out,
        "an HTTP/1.0 client gets Transfer-Encoding {:?}",
        te.iter().map(|v| show(v)).collect::<Vec<_>>()
    );
    let conn = values(&cfields, "connection");
    let closes = conn.len() == 1 && conn[0] == b"close";
    match h.upstream {
        Framing::Length(len) => ensure!(
            cl.len() == 1 && decimal(cl[0]) == Some(len) && te.is_empty(),
            buf,
            &out,
            "framing Length({len}) but Content-Length {:?}, Transfer-Encoding {:?}",
            cl.iter().map(|v| show(v)).collect::<Vec<_>>(),
            te.len()
        ),
        Framing::Chunked if h.dechunk => ensure!(
            cl.is_empty() && te.is_empty() && closes && !h.keep_alive,
            buf,
            &out,
            "de-chunked body must be close-delimited, with no framing fields"
        ),
        Framing::Chunked => ensure!(
            te.len() == 1 && te[0] == b"chunked" && cl.is_empty(),
            buf,
            &out,
            "framing Chunked but Transfer-Encoding {:?}",
            te.iter().map(|v| show(v)).collect::<Vec<_>>()
        ),
        Framing::Close => ensure!(
            cl.is_empty() && te.is_empty() && closes && !h.keep_alive,
            buf,
            &out,
            "close-delimited body but framing fields or no `connection: close`"
        ),
        Framing::Empty => ensure!(
            h.status != 204 || (cl.is_empty() && te.is_empty()),
            buf,
            &out,
            "a 204 with framing fields"
        ),
    }

    // Connection: lb's own option only.
    ensure!(
        conn.len() <= 1,
        buf,
        &out,
        "{} Connection fields",
        conn.len()
    );
    if !h.keep_alive {
        ensure!(
            closes,
            buf,
            &out,
            "connection not kept but no `connection: close`"
        );
    } else if client.http10 {
        ensure!(
            conn.len() == 1 && conn[0] == b"keep-alive",
            buf,
            &out,
            "kept-alive HTTP/1.0 client not told `connection: keep-alive`"
        );
    } else {
        ensure!(
            conn.is_empty(),
            buf,
            &out,
            "kept-alive HTTP/1.1 client told {:?}",
            conn
        );
    }
    for name in RESPONSE_HOP_BY_HOP {
        ensure!(
            count(&cfields, name) == 0,
            buf,
            &out,
            "client gets hop-by-hop `{name}`"
        );
    }

    // lb's fields.
    let d = client.decoration;
    let rids = values(&cfields, "x-request-id");
    ensure!(
        rids.len() == 1 && rids[0] == d.request_id.as_bytes(),
        buf,
        &out,
        "X-Request-Id {:?}, expected once",
        rids.iter().map(|v| show(v)).collect::<Vec<_>>()
    );
    if let Some((name, value)) = d.backend {
        let got = values(&cfields, name);
        ensure!(
            got.len() == 1 && got[0] == value,
            buf,
            &out,
            "backend header `{name}` {:?}, expected once",
            got.iter().map(|v| show(v)).collect::<Vec<_>>()
        );
    }

    // Fields the backend's Connection names are hop-by-hop (RFC 9110 §7.6.1:
    // an intermediary removes them before forwarding).
    let btokens = connection_tokens(&bfields);
    let lb_sets = |n: &str| {
        matches!(
            n,
            "content-length" | "transfer-encoding" | "connection" | "x-request-id"
        ) || d.backend.is_some_and(|(b, _)| b == n)
    };
    // lb's Set-Cookie comes last, beside the backend's own.
    let mut cfields = cfields;
    if let Some(c) = d.set_cookie {
        let last = cfields.pop();
        ensure!(
            last.as_ref()
                .is_some_and(|(n, v)| n == "set-cookie" && v == c.as_bytes()),
            buf,
            &out,
            "lb's Set-Cookie is not the last field: {last:?}"
        );
    }
    for t in &btokens {
        if matches!(t.as_str(), "close" | "keep-alive") || lb_sets(t) {
            continue;
        }
        ensure!(
            count(&cfields, t) == 0,
            buf,
            &out,
            "client gets `{t}`, which the backend's Connection names"
        );
    }
    // Every other backend field reaches the client, in order.
    let end_to_end = |f: &&(String, Vec<u8>), named: &[String]| {
        !RESPONSE_HOP_BY_HOP.contains(&f.0.as_str()) && !lb_sets(&f.0) && !named.contains(&f.0)
    };
    let kept: Vec<_> = bfields.iter().filter(|f| end_to_end(f, &btokens)).collect();
    let passed: Vec<_> = cfields.iter().filter(|f| end_to_end(f, &btokens)).collect();
    ensure!(
        kept == passed,
        buf,
        &out,
        "end-to-end fields differ: backend {kept:?}, client {passed:?}"
    );
    let kind = match h.upstream {
        Framing::Empty => FramingKind::Empty,
        Framing::Length(_) => FramingKind::Length,
        Framing::Chunked if h.dechunk => FramingKind::Dechunked,
        Framing::Chunked => FramingKind::Chunked,
        Framing::Close => FramingKind::Close,
    };
    Ok(RespOutcome::Forwarded(kind))
}

/// One chunk of a chunked body to encode.
#[derive(Debug, Clone)]
pub struct ChunkSpec {
    pub data: Vec<u8>,
    /// Chunk extension, written after `;` (RFC 9112 §7.1.1).
    pub ext: Option<String>,
    pub upper_hex: bool,
    pub leading_zeros: usize,
}

/// RFC 9112 §7.1 chunked coding of `chunks` (empty ones skipped: a zero size
/// is the last chunk), with `trailers` and `last_ext` on the last chunk.
pub fn encode_chunked(
    chunks: &[ChunkSpec],
    last_ext: Option<&str>,
    trailers: &[(String, String)],
) -> Vec<u8> {
    let mut e = Vec::new();
    for c in chunks.iter().filter(|c| !c.data.is_empty()) {
        e.extend(std::iter::repeat_n(b'0', c.leading_zeros));
        let size = if c.upper_hex {
            format!("{:X}", c.data.len())
        } else {
            format!("{:x}", c.data.len())
        };
        e.extend_from_slice(size.as_bytes());
        if let Some(x) = &c.ext {
            e.push(b';');
            e.extend_from_slice(x.as_bytes());
        }
        e.extend_from_slice(b"\r\n");
        e.extend_from_slice(&c.data);
        e.extend_from_slice(b"\r\n");
    }
    e.push(b'0');
    if let Some(x) = last_ext {
        e.push(b';');
        e.extend_from_slice(x.as_bytes());
    }
    e.extend_from_slice(b"\r\n");
    for (n, v) in trailers {
        e.extend_from_slice(n.as_bytes());
        e.extend_from_slice(b": ");
        e.extend_from_slice(v.as_bytes());
        e.extend_from_slice(b"\r\n");
    }
    e.extend_from_slice(b"\r\n");
    e
}

/// Piece sizes for feeding: `splits` cycled (0 read as 1).
fn pieces<'a>(input: &'a [u8], splits: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    let mut k = 0;
    std::iter::from_fn(move || {
        if at >= input.len() {
            return None;
        }
        let n = splits
            .get(k % splits.len().max(1))
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        k += 1;
        let end = at.saturating_add(n).min(input.len());
        let p = &input[at..end];
        at = end;
        Some(p)
    })
}

/// Feeds `input` in pieces: (total consumed, done, data) or the first error.
fn feed_pieces(input: &[u8], splits: &[usize]) -> Result<(usize, bool, Vec<u8>), String> {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    let mut total = 0;
    for p in pieces(input, splits) {
        match c.feed(p, |d| data.extend_from_slice(d)) {
            Ok((n, done)) => {
                if n > p.len() {
                    return Err(format!("consumed {n} of a {}-byte piece", p.len()));
                }
                total += n;
                if done {
                    return Ok((total, true, data));
                }
                if n != p.len() {
                    return Err(format!(
                        "consumed {n} of a {}-byte piece without ending",
                        p.len()
                    ));
                }
            }
            Err(_) => return Err("malformed".into()),
        }
    }
    Ok((total, false, data))
}

/// A valid chunked `encoding` of `data`, followed by `tail`, fed in pieces of
/// `splits` sizes: the body ends exactly at the encoding's end with `data`
/// (invariant c).
pub fn check_chunked_roundtrip(
    encoding: &[u8],
    data: &[u8],
    tail: &[u8],
    splits: &[usize],
) -> Result<(), String> {
    let mut input = encoding.to_vec();
    input.extend_from_slice(tail);
    let what = || {
        format!(
            "\n  encoding: {}\n  tail: {}\n  splits: {splits:?}",
            show(encoding),
            show(tail)
        )
    };
    match feed_pieces(&input, splits) {
        Ok((n, true, got)) => {
            if n != encoding.len() {
                return Err(format!(
                    "body ended after {n} bytes, encoding is {}{}",
                    encoding.len(),
                    what()
                ));
            }
            if got != data {
                return Err(format!(
                    "decoded {}, expected {}{}",
                    show(&got),
                    show(data),
                    what()
                ));
            }
            Ok(())
        }
        Ok((n, false, _)) => Err(format!("no end found after {n} bytes{}", what())),
        Err(e) => Err(format!("{e}{}", what())),
    }
}

/// Arbitrary bytes: never a panic, and feeding them in pieces gives what
/// feeding them at once gives (invariant c).
pub fn check_chunked_arbitrary(input: &[u8], splits: &[usize]) -> Result<(), String> {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    let whole = c.feed(input, |d| data.extend_from_slice(d));
    let split = feed_pieces(input, splits);
    let what = || format!("\n  input: {}\n  splits: {splits:?}", show(input));
    match (whole, split) {
        (Ok((n, done)), Ok((m, sdone, sdata))) => {
            if !done && n != input.len() {
                return Err(format!(
                    "consumed {n} of {} bytes without ending{}",
                    input.len(),
                    what()
                ));
            }
            if (n, done) != (m, sdone) || data != sdata {
                return Err(format!(
                    "at once: ({n}, {done}, {}), in pieces: ({m}, {sdone}, {}){}",
                    show(&data),
                    show(&sdata),
                    what()
                ));
            }
            Ok(())
        }
        (Err(_), Err(_)) => Ok(()),
        (Err(_), Ok(r)) => Err(format!("malformed at once, {r:?} in pieces{}", what())),
        (Ok(r), Err(e)) => Err(format!("{r:?} at once, `{e}` in pieces{}", what())),
    }
}

/// A strict RFC 9112 §7.1 chunked parser, independent of lb's: CRLF line
/// ends only, `chunk-ext` and trailer field lines by their grammar.
/// `Ok(None)`: valid so far, incomplete; `Ok(Some((end, data)))`: the body
/// ends at `end`; `Err(at)`: invalid at byte `at`.
pub fn strict_chunked(input: &[u8]) -> Result<Option<(usize, Vec<u8>)>, usize> {
    fn tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    /// The line at `at` up to its CRLF: `Ok(None)` if no CRLF yet; a bare CR
    /// or LF is an error.
    fn line(input: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, usize> {
        let mut i = at;
        while i < input.len() {
            match input[i] {
                b'\r' => {
                    return match input.get(i + 1) {
                        None => Ok(None),
                        Some(b'\n') => Ok(Some((&input[at..i], i + 2))),
                        Some(_) => Err(i),
                    }
                }
                b'\n' => return Err(i),
                _ => i += 1,
            }
        }
        Ok(None)
    }
    /// `chunk-size [ chunk-ext ]`.
    fn size_line(l: &[u8], at: usize) -> Result<u64, usize> {
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(at);
        }
        let hex = &l[..digits];
        let significant = &hex[hex.iter().position(|&b| b != b'0').unwrap_or(hex.len())..];
        if significant.len() > 15 {
            return Err(at);
        }
        let size = significant.iter().fold(0u64, |n, &b| {
            n * 16 + (b as char).to_digit(16).unwrap() as u64
        });
        // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
        let mut i = digits;
        let ows = |i: &mut usize| {
            while *i < l.len() && (l[*i] == b' ' || l[*i] == b'\t') {
                *i += 1;
            }
        };
        loop {
            ows(&mut i);
            if i == l.len() {
                return Ok(size);
            }
            if l[i] != b';' {
                return Err(at + i);
            }
            i += 1;
            ows(&mut i);
            let start = i;
            while i < l.len() && tchar(l[i]) {
                i += 1;
            }
            if i == start {
                return Err(at + i);
            }
            let save = i;
            ows(&mut i);
            if i < l.len() && l[i] == b'=' {
                i += 1;
                ows(&mut i);
                if i < l.len() && l[i] == b'"' {
                    i += 1;
                    loop {
                        match l.get(i) {
                            None => return Err(at + i),
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => match l.get(i + 1) {
                                Some(&c) if c == b'\t' || c >= 0x20 && c != 0x7f => i += 2,
                                _ => return Err(at + i),
                            },
                            Some(&c) if c == b'\t' || (c >= 0x20 && c != 0x7f) => i += 1,
                            Some(_) => return Err(at + i),
                        }
                    }
                } else {
                    let start = i;
                    while i < l.len() && tchar(l[i]) {
                        i += 1;
                    }
                    if i == start {
                        return Err(at + i);
                    }
                }
            } else {
                i = save;
            }
        }
    }
    /// `field-name ":" OWS field-value OWS`.
    fn field_line(l: &[u8], at: usize) -> Result<(), usize> {
        let name = l.iter().take_while(|&&b| tchar(b)).count();
        if name == 0 || l.get(name) != Some(&b':') {
            return Err(at + name);
        }
        match l[name + 1..]
            .iter()
            .position(|&b| !(b == b'\t' || (b >= 0x20 && b != 0x7f)))
        {
            Some(p) => Err(at + name + 1 + p),
            None => Ok(()),
        }
    }

    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let Some((l, next)) = line(input, at)? else {
            return Ok(None);
        };
        let size = size_line(l, at)?;
        at = next;
        if size == 0 {
            break;
        }
        let end = at.checked_add(size as usize).ok_or(at)?;
        if input.len() < end + 2 {
            // Incomplete, unless what there is already breaks the CRLF.
            if input.len() > end && input[end] != b'\r' {
                return Err(end);
            }
            return Ok(None);
        }
        data.extend_from_slice(&input[at..end]);
        if &input[end..end + 2] != b"\r\n" {
            return Err(end);
        }
        at = end + 2;
    }
    // trailer-section CRLF
    loop {
        let Some((l, next)) = line(input, at)? else {
            return Ok(None);
        };
        if l.is_empty() {
            return Ok(Some((next, data)));
        }
        field_line(l, at)?;
        at = next;
    }
}

/// Chunk framing lb passes on as it was sent (request bodies streamed to a
/// backend, chunked responses relayed to a client) must mean the same to a
/// strict RFC 9112 parser: where lb's decoder says the body ends, with that
/// data, a strict parser must agree; where lb reads on, a strict parser must
/// not have found the end. Otherwise the peer may see a message boundary lb
/// did not (request smuggling / response splitting).
pub fn check_chunked_strict(input: &[u8]) -> Result<(), String> {
    let mut c = Chunked::default();
    let mut data = Vec::new();
    let lb = c.feed(input, |d| data.extend_from_slice(d));
    let strict = strict_chunked(input);
    let what = || format!("\n  input: {}", show(input));
    match (lb, strict) {
        (Ok((n, true)), Ok(Some((m, sdata)))) if n == m && data == sdata => Ok(()),
        (Ok((n, true)), s) => Err(format!(
            "lb's decoder ends the body after {n} bytes, data {}; a strict RFC 9112 parser: {}{}",
            show(&data),
            describe(&s),
            what()
        )),
        (Ok((_, false)), Ok(Some((m, _)))) => Err(format!(
            "lb's decoder reads on; a strict RFC 9112 parser ends the body after {m} bytes{}",
            what()
        )),
        (Err(_), Ok(Some((m, _)))) => Err(format!(
            "lb's decoder refuses a valid chunked body (ends after {m} bytes){}",
            what()
        )),
        _ => Ok(()),
    }
}

fn describe(s: &Result<Option<(usize, Vec<u8>)>, usize>) -> String {
    match s {
        Ok(Some((m, d))) => format!("ends after {m} bytes, data {}", show(d)),
        Ok(None) => "incomplete".into(),
        Err(at) => format!("invalid at byte {at}"),
    }
}
