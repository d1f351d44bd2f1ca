//! What lb changes in a backend's response head, whichever path relays it:
//! the fields it never passes on (hop-by-hop ones and the framing, which lb
//! writes from what it parsed: a `Content-Length` beside `Transfer-Encoding`
//! never reaches a client, RFC 9112 §6.3) and the fields it adds
//! (`X-Request-Id`, the backend header, the sticky cookie).

use super::forward;
use super::ids::REQUEST_ID;
use crate::config::Sticky;
use crate::state::Snapshot;

/// Hop-by-hop response fields (RFC 9110 §7.6.1), never passed on. (`TE`
/// is a request's; in a response it means nothing, and HTTP/2 refuses it.)
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Is `name` a hop-by-hop field of a response (`Upgrade` is kept on a `101`,
/// which the Pingora path relays for WebSocket)?
pub fn hop_by_hop(name: &[u8], status: u16) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        && !(status == 101 && name.eq_ignore_ascii_case(b"upgrade"))
}

/// Calls `named` with each field name a response's `Connection` value
/// lists (hop-by-hop for that connection: never passed on), but `close`,
/// `keep-alive` and `upgrade`, which are connection options.
pub fn connection_named<'v>(value: &'v [u8], mut named: impl FnMut(&'v [u8])) {
    for t in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        let option = [&b"close"[..], b"keep-alive", b"upgrade"]
            .iter()
            .any(|o| t.eq_ignore_ascii_case(o));
        if !t.is_empty() && !option {
            named(t);
        }
    }
}

/// The fields of a backend's response head that are not passed on to the
/// client: hop-by-hop ones, the framing, and those a `Connection` field
/// names. Built once per head: usually no `Connection` field names another,
/// and then nothing more is scanned per field.
pub struct NotPassedOn<'h, 'b> {
    headers: &'h [httparse::Header<'b>],
    status: u16,
    names_some: bool,
}

impl<'h, 'b> NotPassedOn<'h, 'b> {
    /// For the response with `status` and these `headers`.
    pub fn of(headers: &'h [httparse::Header<'b>], status: u16) -> Self {
        let names_some = headers.iter().any(|h| {
            let mut named = false;
            if h.name.eq_ignore_ascii_case("connection") {
                connection_named(h.value, |_| named = true);
            }
            named
        });
        NotPassedOn {
            headers,
            status,
            names_some,
        }
    }

    /// Is the field `name` left out?
    pub fn contains(&self, name: &[u8]) -> bool {
        hop_by_hop(name, self.status)
            || forward::is_framing(name)
            || (self.names_some && self.connection_names(name))
    }

    /// Does one of the `Connection` fields name `name`? Scanned per field: a
    /// response has few `Connection` tokens, and no bound on them is assumed.
    fn connection_names(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .any(|h| {
                let mut found = false;
                connection_named(h.value, |t| found |= t.eq_ignore_ascii_case(name));
                found
            })
    }
}

/// The HSTS field's name.
const HSTS: &str = "strict-transport-security";

/// The fields lb adds to every response it relays.
#[derive(Debug, Clone, Copy)]
pub struct Decoration<'a> {
    pub request_id: &'a str,
    /// `balancer.backend_header` (lowercase) and the backend's name.
    pub backend: Option<(&'a str, &'a [u8])>,
    /// A `Set-Cookie` value (cookie stickiness, first response).
    pub set_cookie: Option<&'a str>,
    /// `Strict-Transport-Security` (`tls.hsts`, HTTPS responses only).
    pub hsts: Option<&'a str>,
}

/// The sticky cookie a response from backend `i` of `snap` sets: on the
/// request's first response under cookie stickiness (`set`), else none.
pub fn sticky_cookie(snap: &Snapshot, i: usize, set: bool) -> Option<String> {
    match (&snap.sticky, set) {
        (Sticky::Cookie(name), true) => Some(crate::sticky::set_cookie(
            name,
            &snap.backends[i].stats.sticky_id,
        )),
        _ => None,
    }
}

impl<'a> Decoration<'a> {
    /// The fields for a response from backend `i` of `snap` (`cookie`:
    /// [`sticky_cookie`]'s; `https`: the client connection is TLS).
    pub fn of(
        snap: &'a Snapshot,
        i: usize,
        request_id: &'a str,
        cookie: Option<&'a str>,
        https: bool,
    ) -> Self {
        let stats = &snap.backends[i].stats;
        Decoration {
            request_id,
            backend: snap
                .backend_header
                .as_ref()
                .map(|h| (h.as_str(), stats.name_header.as_bytes())),
            set_cookie: cookie,
            hsts: https
                .then(|| snap.config.tls.as_ref().and_then(|t| t.hsts.as_deref()))
                .flatten(),
        }
    }

    /// Is `name` a field lb replaces (the backend's copy is dropped)?
    pub fn replaces(&self, name: &[u8]) -> bool {
        name.eq_ignore_ascii_case(REQUEST_ID.as_bytes())
            || (self.hsts.is_some() && name.eq_ignore_ascii_case(HSTS.as_bytes()))
            || self
                .backend
                .is_some_and(|(b, _)| name.eq_ignore_ascii_case(b.as_bytes()))
    }

    /// Calls `field` with each `(name, value)` lb adds, in order; `append`
    /// says the field is added beside the backend's (`Set-Cookie`).
    pub fn each(&self, mut field: impl FnMut(&str, &[u8], bool)) {
        field(REQUEST_ID, self.request_id.as_bytes(), false);
        if let Some((name, value)) = self.backend {
            field(name, value, false);
        }
        if let Some(c) = self.set_cookie {
            field("set-cookie", c.as_bytes(), true);
        }
        if let Some(h) = self.hsts {
            field(HSTS, h.as_bytes(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoration_replaces_and_adds() {
        let d = Decoration {
            request_id: "rid",
            backend: Some(("x-backend", b"app-1")),
            set_cookie: Some("lb=1"),
            hsts: None,
        };
        assert!(d.replaces(b"X-Request-Id") && d.replaces(b"X-Backend"));
        assert!(!d.replaces(b"set-cookie"));
        let mut v = Vec::new();
        d.each(|n, b, append| {
            v.push((
                n.to_string(),
                String::from_utf8_lossy(b).into_owned(),
                append,
            ))
        });
        assert_eq!(v.len(), 3);
        assert_eq!(v[2], ("set-cookie".into(), "lb=1".into(), true));
        assert!(hop_by_hop(b"Keep-Alive", 200) && hop_by_hop(b"upgrade", 200));
        assert!(!hop_by_hop(b"upgrade", 101) && !hop_by_hop(b"content-type", 200));
        let mut named = Vec::new();
        connection_named(b"close, X-Secret,,keep-alive , x-other", |n| named.push(n));
        assert_eq!(named, [&b"X-Secret"[..], b"x-other"]);
    }
}
