//! The policy applied to Pingora's head types ([`RequestHeader`],
//! [`ResponseHeader`]), for the two paths whose client side is Pingora's
//! session: the Pingora path ([`super::pingora`]) and lb's HTTP/2 streams
//! ([`super::h2`]). lb's HTTP/1 path applies the same rules to its bytes.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::config::Sticky;
use crate::proxy::policy::forward::{self, StickyField};
use crate::proxy::policy::reply::ErrorReply;
use crate::proxy::policy::respond::{self, Decoration};
use crate::proxy::policy::{self, Ctx, HeadLimits};
use crate::state::Snapshot;

/// Why the head is refused (status, reason), checked as lb's HTTP/1 path
/// checks its parse: head limits (`431`), `Content-Length` beside
/// `Transfer-Encoding` (`cl_and_te`, `400`) and `Connection` naming a field
/// lb routes or frames by (`400`).
pub fn refusal(
    req: &RequestHeader,
    cl_and_te: bool,
    snap: &Snapshot,
) -> Option<(u16, &'static str)> {
    if too_large(req, HeadLimits::of(&snap.config.server)) {
        return Some((431, "request header fields too large"));
    }
    if cl_and_te {
        return Some((400, "both Content-Length and Transfer-Encoding"));
    }
    let sticky = match &snap.sticky {
        Sticky::None => StickyField::None,
        Sticky::Cookie(name) => StickyField::Cookie(name),
        Sticky::Header(name) => StickyField::Header(name.as_str()),
    };
    for v in req.headers.get_all(http::header::CONNECTION) {
        for token in v.as_bytes().split(|&b| b == b',') {
            if let Err(why) = forward::connection_token(token, sticky) {
                return Some((400, why));
            }
        }
    }
    None
}

/// Is the request head beyond the limits (request line + fields, counted as
/// on the wire)? Computed from the parsed header without copying.
pub fn too_large(req: &RequestHeader, limits: HeadLimits) -> bool {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    let fields: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    limits.exceeded(req.headers.len(), line + fields)
}

/// The policy's response head: hop-by-hop fields removed, lb's fields set,
/// and for an HTTP/1.0 client a body without a length close-delimited
/// rather than chunked (`http10`: the client speaks HTTP/1.0).
pub fn decorate(resp: &mut ResponseHeader, ctx: &Ctx, http10: bool) -> Result<()> {
    let status = resp.status.as_u16();
    // Hop-by-hop fields, and those the backend's `Connection` names.
    let mut drop: Vec<Vec<u8>> = Vec::new();
    for v in resp.headers.get_all(http::header::CONNECTION) {
        respond::connection_named(v.as_bytes(), |n| drop.push(n.to_ascii_lowercase()));
    }
    for n in resp.headers.keys() {
        if respond::hop_by_hop(n.as_str().as_bytes(), status) && n.as_str() != "connection" {
            drop.push(n.as_str().as_bytes().to_vec());
        }
    }
    for n in drop {
        if let Ok(name) = http::HeaderName::from_bytes(&n) {
            resp.remove_header(&name);
        }
    }
    if http10 && !resp.headers.contains_key(http::header::CONTENT_LENGTH) {
        resp.remove_header(&http::header::TRANSFER_ENCODING);
    }
    add_fields(resp, ctx)
}

/// lb's fields on a response head whose hop-by-hop fields are gone already
/// ([`decorate`] without its first half: lb's HTTP/2 exchange builds the
/// head without them). `X-Request-Id` is marked sensitive: HTTP/2 then
/// sends it as a literal never indexed, instead of putting a value no later
/// response repeats into the connection's HPACK table.
pub fn add_fields(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let mut id =
        http::HeaderValue::from_str(&ctx.request_id).unwrap_or(http::HeaderValue::from_static(""));
    id.set_sensitive(true);
    let (Some(snap), Some(i)) = (&ctx.snapshot, ctx.backend) else {
        return resp.insert_header(http::HeaderName::from_static(policy::REQUEST_ID), id);
    };
    let cookie = respond::sticky_cookie(snap, i, ctx.set_cookie);
    let decoration = Decoration::of(snap, i, &ctx.request_id, cookie.as_deref(), ctx.https);
    let mut result = Ok(());
    let mut id = Some(id);
    decoration.each(|name, value, append| {
        if result.is_err() {
            return;
        }
        let value = match (name == policy::REQUEST_ID, id.take()) {
            (true, Some(id)) => id,
            _ => http::HeaderValue::from_bytes(value).unwrap_or(http::HeaderValue::from_static("")),
        };
        let name = match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => name,
            Err(_) => return,
        };
        result = if append {
            resp.append_header(name, value).map(|_| ())
        } else {
            resp.insert_header(name, value)
        };
    });
    result
}

/// The head of lb's own reply `r` with a `len`-byte body, with the
/// policy's fields.
pub fn error_header(r: &ErrorReply<'_>, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(r.wire_status(), Some(5))?;
    let mut result = Ok(());
    r.each(len, |name, value| {
        if result.is_ok() {
            result = http::HeaderValue::from_bytes(value)
                .map_err(|_| Error::explain(InternalError, "invalid reply field"))
                .and_then(|v| resp.insert_header(name, v));
        }
    });
    result.map(|()| resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limits() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for i in 0..10 {
            req.append_header(format!("x-h{i}"), "v".repeat(100))
                .unwrap();
        }
        let limits = |max_headers, max_header_bytes| HeadLimits {
            max_headers,
            max_header_bytes,
        };
        assert!(!too_large(&req, limits(10, 2000)));
        assert!(too_large(&req, limits(9, 2000)), "10 fields, 9 allowed");
        // 10 fields of 5 + 100 + 4 bytes = 1090, plus the request line.
        assert!(too_large(&req, limits(100, 1090)));
        assert!(!too_large(&req, limits(100, 1200)));
    }
}
