//! The PROXY protocol (v1 text, v2 binary) that L4 balancers (AWS NLB, GCP,
//! HAProxy, Envoy, Traefik, nginx) put before a connection's first byte to
//! say who the client is. Parsed with the `ppp` crate. A connection from a
//! trusted source (`server.proxy_protocol_from`) must start with a header of
//! an accepted version, else it is closed; its source address is then the
//! client everywhere (forwarding headers, `ip_hash`, `[limits]`, the log).
//! Connections from other sources are direct clients.

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2, HeaderResult, PartialResult};

use crate::config::ProxyProtocol;

/// Longest header read: v1 is at most 107 bytes; v2 carries TLVs (a
/// balancer's own, e.g. AWS's VPC endpoint id), kept well below a page.
pub const MAX_HEADER: usize = 4096;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of the header at the start of the buffer.
    pub len: usize,
    /// The client: `None` for a `LOCAL` (v2) or `UNKNOWN` (v1) header, a
    /// balancer's own health check: the connection's peer stays the client.
    pub source: Option<SocketAddr>,
}

/// Why a connection that had to send a header is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a PROXY header (a trusted source sent plain HTTP, or garbage).
    Malformed,
    /// A version `server.proxy_protocol` does not accept.
    Version,
}

/// Does `peer` have to send a header under `setting` and `trusted`?
pub fn required(setting: ProxyProtocol, trusted: &[ipnet::IpNet], peer: Option<IpAddr>) -> bool {
    setting != ProxyProtocol::Off && peer.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)))
}

/// Parses the header at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse(buf: &[u8], accepted: ProxyProtocol) -> Result<Option<Parsed>, Refused> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Err(Refused::Malformed)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) if accepted.accepts(1) => Ok(Some(Parsed {
            len: h.header.len(),
            source: v1_source(&h.addresses),
        })),
        HeaderResult::V2(Ok(h)) if accepted.accepts(2) => Ok(Some(Parsed {
            len: h.len(),
            source: match h.command {
                v2::Command::Local => None,
                v2::Command::Proxy => v2_source(&h.addresses),
            },
        })),
        HeaderResult::V1(Ok(_)) | HeaderResult::V2(Ok(_)) => Err(Refused::Version),
        _ => Err(Refused::Malformed),
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_headers_give_the_client() {
        let raw = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let p = parse(raw, ProxyProtocol::Any).unwrap().unwrap();
        assert_eq!(p.len, 40);
        assert_eq!(p.source, Some("192.0.2.7:51234".parse().unwrap()));
        let raw = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n";
        let p = parse(raw, ProxyProtocol::V1).unwrap().unwrap();
        assert_eq!(p.source, Some("[2001:db8::7]:51234".parse().unwrap()));
        let mut raw = v2_header(
            "[2001:db8::9]:4000".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        );
        let len = raw.len();
        raw.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let p = parse(&raw, ProxyProtocol::V2).unwrap().unwrap();
        assert_eq!(
            (p.len, p.source),
            (len, Some("[2001:db8::9]:4000".parse().unwrap()))
        );
        // UNKNOWN: the balancer's own connection; the peer stays the client.
        let p = parse(b"PROXY UNKNOWN\r\n", ProxyProtocol::Any)
            .unwrap()
            .unwrap();
        assert_eq!(p.source, None);
    }

    #[test]
    fn partial_wrong_version_and_garbage() {
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7", ProxyProtocol::Any), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQ", ProxyProtocol::Any), Ok(None));
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\n";
        assert_eq!(parse(v1, ProxyProtocol::V2), Err(Refused::Version));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ProxyProtocol::Any),
            Err(Refused::Malformed)
        );
        assert_eq!(
            parse(
                b"PROXY TCP4 999.0.2.7 10.0.0.1 1 80\r\n",
                ProxyProtocol::Any
            ),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn only_trusted_sources_must_send_one() {
        let trusted: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(required(ProxyProtocol::Any, &trusted, ip("10.1.2.3")));
        assert!(required(ProxyProtocol::V2, &trusted, ip("::1")));
        assert!(!required(ProxyProtocol::Any, &trusted, ip("192.0.2.1")));
        assert!(!required(ProxyProtocol::Off, &trusted, ip("10.1.2.3")));
        assert!(!required(ProxyProtocol::Any, &trusted, None));
    }
}
