//! What reaches the backend of a client's request head, whichever path read
//! it (SPEC "Headers", "Framing and hop-by-hop fields"):
//!
//! - the `Connection` field's tokens: `close`, `keep-alive` and `upgrade` are
//!   connection options; any other token names a hop-by-hop field, which is
//!   removed — unless it names a field lb routes or frames by (`Host`,
//!   `Content-Length`, `Transfer-Encoding`, the sticky header or cookie): that
//!   request is refused with `400`, since dropping the field would change what
//!   the backend (or lb) thinks the request is (the `X-Forwarded-*` fields lb
//!   sets are protected the same way);
//! - fields never forwarded: hop-by-hop ones, the framing fields (lb writes
//!   the framing from what it parsed) and the ones lb sets itself;
//! - the forwarding fields lb adds (`X-Forwarded-*`, `X-Real-IP`, `X-Request-Id`);
//! - an absolute-form target, forwarded in origin form with `Host` = its
//!   authority (RFC 9112 §3.2.2).
//!
//! Pure: both paths call these, and the tests below pin them.

use std::net::IpAddr;

use super::ids::REQUEST_ID;

/// A sticky lookup's field, which `Connection` may not name.
#[derive(Debug, Clone, Copy)]
pub enum StickyField<'a> {
    /// No stickiness.
    None,
    /// Cookie stickiness: the `Cookie` field carries it.
    Cookie(&'a str),
    /// Header stickiness: this field (lowercase) carries it.
    Header(&'a str),
}

/// One token of a request's `Connection` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `close`.
    Close,
    /// `keep-alive`.
    KeepAlive,
    /// `upgrade`.
    Upgrade,
    /// Names a hop-by-hop field to remove.
    Named,
    /// Empty list element (`a,,b`): ignored.
    Empty,
}

/// Why a `Connection` token refuses the request.
pub const NAMES_ROUTING_FIELD: &str = "Connection names a field lb routes or frames by";

/// Classifies one `Connection` token; `Err` when it names a field that may
/// not be removed (the request gets `400`).
pub fn connection_token(token: &[u8], sticky: StickyField<'_>) -> Result<Token, &'static str> {
    let t = token.trim_ascii();
    let is = |name: &str| t.eq_ignore_ascii_case(name.as_bytes());
    if t.is_empty() {
        return Ok(Token::Empty);
    }
    if is("close") {
        return Ok(Token::Close);
    }
    if is("keep-alive") {
        return Ok(Token::KeepAlive);
    }
    if is("upgrade") {
        return Ok(Token::Upgrade);
    }
    // The forwarding fields are lb's to set: a client making them hop-by-hop
    // is refused too (as Pingora's own check does).
    let protected = is("host")
        || is("content-length")
        || is("transfer-encoding")
        || is("x-forwarded-for")
        || is("x-forwarded-host")
        || is("x-forwarded-proto")
        || match sticky {
            StickyField::None => false,
            StickyField::Cookie(name) => is("cookie") || is(name),
            StickyField::Header(name) => is(name),
        };
    if protected {
        Err(NAMES_ROUTING_FIELD)
    } else {
        Ok(Token::Named)
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1): meaningful for one connection only.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Fields lb sets itself (a client's copy is replaced, XFF is appended to).
const LB_SET: [&str; 5] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    REQUEST_ID,
];

/// Is `name` hop-by-hop, or one lb sets itself? (Never copied upstream; the
/// `Connection`-named ones are removed on top of these.)
pub fn not_forwarded(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .chain(LB_SET.iter())
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Is `name` a framing field (`Content-Length`, `Transfer-Encoding`)? A path
/// that writes its own framing (lb's HTTP/1 path) drops the client's.
pub fn is_framing(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// An absolute-form target split into its authority and the rest (empty, or
/// starting with `/` or `?`); `None` for any other form. The origin form to
/// forward is [`ORIGIN_SLASH`] when the rest does not start with `/`, then the
/// rest (`http://a?q` → `/?q`).
pub fn absolute_form(target: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = target.split_once("://")?;
    let mut s = scheme.bytes();
    let scheme_ok = s.next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    // Userinfo is not part of Host (RFC 9112 §3.2.2 takes host[:port]).
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    (!authority.is_empty()).then_some((authority, path))
}

/// Prefix of an origin form whose absolute-form rest lacks a leading `/`.
pub const ORIGIN_SLASH: &str = "/";

/// The origin form of an absolute-form target's rest, as two parts to write.
pub fn origin_form(rest: &str) -> (&'static str, &str) {
    if rest.starts_with('/') {
        ("", rest)
    } else {
        (ORIGIN_SLASH, rest)
    }
}

/// The forwarding fields lb adds to every upstream request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address (none on a Unix socket).
    pub client: Option<IpAddr>,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub proto: &'a str,
    /// `X-Forwarded-Host`: the client's `Host` (or the target's authority).
    pub host: Option<&'a [u8]>,
    /// `X-Request-Id` (`None`: the path writes it later itself).
    pub request_id: Option<&'a str>,
}

impl Forwarding<'_> {
    /// Calls `field` with each `(name, value)` lb adds, in order, the value
    /// in parts to write one after the other (no allocation per request).
    /// `prev_xff` is the client's `X-Forwarded-For` values joined with `", "`
    /// (empty when it sent none); lb appends the client IP to it.
    pub fn each(&self, prev_xff: &[u8], mut field: impl FnMut(&'static str, &[&[u8]])) {
        if let Some(ip) = self.client {
            let mut text = [0u8; 48];
            let ip = ip_text(ip, &mut text);
            if prev_xff.is_empty() {
                field("x-forwarded-for", &[ip]);
            } else {
                field("x-forwarded-for", &[prev_xff, b", ", ip]);
            }
            field("x-real-ip", &[ip]);
        } else if !prev_xff.is_empty() {
            field("x-forwarded-for", &[prev_xff]);
        }
        field("x-forwarded-proto", &[self.proto.as_bytes()]);
        if let Some(host) = self.host {
            field("x-forwarded-host", &[host]);
        }
        if let Some(id) = self.request_id {
            field(REQUEST_ID, &[id.as_bytes()]);
        }
    }
}

/// Appends a client's `X-Forwarded-For` value to `joined` (`", "` between
/// values; empty values skipped), whatever its bytes.
pub fn join_xff(joined: &mut Vec<u8>, value: &[u8]) {
    let v = value.trim_ascii();
    if v.is_empty() {
        return;
    }
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(v);
}

/// `ip` as text in `buf` (no allocation). IPv4, nearly every client, is
/// written digit by digit: `write!`'s formatting was ~1,000 instructions of
/// every proxied request.
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let IpAddr::V4(v4) = ip else {
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        let left = w.len();
        return &buf[..48 - left];
    };
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let mut digits = itoa::Buffer::new();
        let d = digits.format(octet).as_bytes();
        buf[n..n + d.len()].copy_from_slice(d);
        n += d.len();
    }
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_the_address_as_displayed() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn connection_may_not_name_routing_or_framing_fields() {
        let s = StickyField::Header("x-session-id");
        for bad in [
            "host",
            "Content-Length",
            " transfer-encoding ",
            "X-Session-Id",
        ] {
            assert!(connection_token(bad.as_bytes(), s).is_err(), "{bad}");
        }
        let c = StickyField::Cookie("lb_sticky");
        assert!(connection_token(b"cookie", c).is_err());
        assert!(connection_token(b"lb_sticky", c).is_err());
        assert_eq!(
            connection_token(b"cookie", StickyField::None),
            Ok(Token::Named)
        );
        assert_eq!(connection_token(b"Close", s), Ok(Token::Close));
        assert_eq!(connection_token(b"keep-alive", s), Ok(Token::KeepAlive));
        assert_eq!(connection_token(b"UPGRADE", s), Ok(Token::Upgrade));
        assert_eq!(connection_token(b"x-secret", s), Ok(Token::Named));
        assert_eq!(connection_token(b"  ", s), Ok(Token::Empty));
    }

    #[test]
    fn fields_lb_never_forwards() {
        for n in [
            "Connection",
            "keep-alive",
            "TE",
            "Upgrade",
            "x-request-id",
            "X-Real-IP",
        ] {
            assert!(not_forwarded(n.as_bytes()), "{n}");
        }
        for n in ["host", "accept", "content-length", "cookie"] {
            assert!(!not_forwarded(n.as_bytes()), "{n}");
        }
        assert!(is_framing(b"Content-Length") && is_framing(b"transfer-encoding"));
        assert!(!is_framing(b"content-type"));
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(
            absolute_form("http://a.example/x?y"),
            Some(("a.example", "/x?y"))
        );
        assert_eq!(
            absolute_form("http://a.example:8080"),
            Some(("a.example:8080", ""))
        );
        assert_eq!(
            absolute_form("http://a.example?q"),
            Some(("a.example", "?q"))
        );
        assert_eq!(
            absolute_form("http://user@a.example/"),
            Some(("a.example", "/"))
        );
        assert_eq!(origin_form(""), ("/", ""));
        assert_eq!(origin_form("?q"), ("/", "?q"));
        assert_eq!(origin_form("/x"), ("", "/x"));
        assert_eq!(absolute_form("/x"), None);
        assert_eq!(absolute_form("http:///x"), None);
        assert_eq!(absolute_form("1http://a/"), None);
    }

    fn collect(f: &Forwarding<'_>, prev: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        f.each(prev, |n, parts| {
            v.push((
                n.to_string(),
                String::from_utf8_lossy(&parts.concat()).into_owned(),
            ))
        });
        v
    }

    #[test]
    fn forwarding_fields_append_and_set() {
        let f = Forwarding {
            client: Some("127.0.0.9".parse().unwrap()),
            proto: "http",
            host: Some(b"example.test"),
            request_id: Some("rid"),
        };
        let mut prev = Vec::new();
        join_xff(&mut prev, b" 10.0.0.1 ");
        join_xff(&mut prev, b"");
        join_xff(&mut prev, b"10.0.0.2 \xe9");
        let got = collect(&f, &prev);
        let want = [
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2 \u{fffd}, 127.0.0.9"),
            ("x-real-ip", "127.0.0.9"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "example.test"),
            ("x-request-id", "rid"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        // No client address: earlier hops are still passed on.
        let f = Forwarding {
            client: None,
            host: None,
            request_id: None,
            ..f
        };
        let got = collect(&f, b"10.0.0.1");
        assert_eq!(got[0], ("x-forwarded-for".into(), "10.0.0.1".into()));
        assert_eq!(got.len(), 2);
        let v6 = Forwarding {
            client: Some("::1".parse().unwrap()),
            ..f
        };
        assert_eq!(collect(&v6, b"")[0].1, "::1");
    }
}
