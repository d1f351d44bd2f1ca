//! Stickiness layered over any algorithm (SPEC "Balancing").
//!
//! `cookie`: the first response sets `<sticky_cookie>=<opaque id>`; the id is a
//! hash of the backend's name ([`crate::state::BackendStats::sticky_id`]), so it
//! survives restarts, reloads and address changes, and reveals nothing. Requests
//! carrying it go to that backend while it is eligible or draining, else they are
//! rebalanced and re-pinned. `header`: weighted rendezvous hash of the header's
//! value over the same backends, so a session id maps to one backend and only
//! that backend's sessions move when it goes away.

use std::time::Instant;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName};

use crate::balancer::{has, rendezvous_pick, Mask};
use crate::config::Sticky;
use crate::state::Snapshot;

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|v| cookie_in(v.as_bytes(), name))
}

/// The value of cookie `name` in one `Cookie` field value.
pub fn cookie_in<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// What the sticky mode reads from the request: the sticky cookie's value or
/// the sticky header's (non-empty) value; `None` when not sticky or absent.
pub fn sticky_value<'a>(snap: &Snapshot, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match &snap.sticky {
        Sticky::None => None,
        Sticky::Cookie(name) => cookie_value(headers, name),
        Sticky::Header(header) => header_key(headers, header),
    }
}

/// The `Set-Cookie` value pinning a client to the backend with `id`.
pub fn set_cookie(name: &str, id: &str) -> String {
    format!("{name}={id}; Path=/; HttpOnly; SameSite=Lax")
}

/// Where a request goes and whether the response must (re-)pin the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Backend index in the snapshot.
    pub index: usize,
    /// Cookie mode only: the client was not (validly) pinned to `index`.
    pub set_cookie: bool,
}

/// Chooses a backend for a request: stickiness first, then the algorithm.
/// `value` is the request's [`sticky_value`]; `excluded` are backends this
/// request must avoid (already tried, circuit refused); `full` those at their
/// `max_in_flight`; `key` the client IP bytes.
///
/// A pinned client whose backend is full is served elsewhere like a client
/// whose backend is down, but keeps its pin: no new cookie, so it returns to
/// its backend once that has room (header mode: the session's next backend in
/// rendezvous order takes the overflow). When every backend is full the
/// caller queues the request.
pub fn choose(
    snap: &Snapshot,
    value: Option<&[u8]>,
    excluded: Mask,
    full: Mask,
    key: &[u8],
    now: Instant,
) -> Option<Choice> {
    let avoid = excluded | full;
    // Only sticky modes need the (drain-inclusive) mask.
    let pinnable = || snap.sticky_ok(now) & !avoid;
    let pick = |set_cookie| {
        snap.pick(key, avoid, now)
            .map(|index| Choice { index, set_cookie })
    };
    match &snap.sticky {
        Sticky::None => pick(false),
        Sticky::Cookie(_) => {
            let pinned = value.and_then(|id| {
                snap.backends
                    .iter()
                    .position(|b| b.stats.sticky_id.as_bytes() == id)
            });
            match pinned {
                Some(index) if has(pinnable(), index) => Some(Choice {
                    index,
                    set_cookie: false,
                }),
                // Only full: overflow, the pin stays.
                Some(index) if has(snap.sticky_ok(now) & full & !excluded, index) => pick(false),
                _ => pick(true),
            }
        }
        Sticky::Header(_) => match value {
            Some(value) => {
                // Draining backends keep their sessions; weight 0 takes none.
                rendezvous_pick(&snap.backends, pinnable(), value, |i| {
                    snap.backends[i].weight
                })
                .map(|index| Choice {
                    index,
                    set_cookie: false,
                })
            }
            None => pick(false),
        },
    }
}

fn header_key<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    headers
        .get(name)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; lb_sticky=abc123 ; b=2"),
        );
        assert_eq!(cookie_value(&h, "lb_sticky"), Some(&b"abc123"[..]));
        assert_eq!(cookie_value(&h, "b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(&h, "lb"), None);
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("x=1"));
        h.append(COOKIE, HeaderValue::from_static("lb_sticky=zz"));
        assert_eq!(cookie_value(&h, "lb_sticky"), Some(&b"zz"[..]));
    }

    #[test]
    fn set_cookie_attributes() {
        assert_eq!(
            set_cookie("lb_sticky", "00ff"),
            "lb_sticky=00ff; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
