//! `app healthcheck [URL]`: a plain HTTP/1.0 GET over `std::net::TcpStream`, so
//! a `FROM scratch` image can have a HEALTHCHECK without curl or a runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The whole probe (connect, send, read the status line) must finish in this.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The status line is in the first bytes; never read more than this.
const MAX_HEAD: usize = 4096;

/// Probes `url` (`http://host[:port][/path]`): `Ok(())` on a 200 status,
/// otherwise `Err` with a one-line reason. Gives up after 2 s.
pub fn healthcheck(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + TIMEOUT;
    let (authority, path) = split_url(url)?;
    let addrs = resolve(&authority)?;
    let mut stream = connect(&addrs, deadline)?;

    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: app-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| format!("{url}: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{url}: cannot send request: {e}"))?;

    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| format!("{url}: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{url}: cannot read response: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/") => Ok(()),
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Err(format!("{url}: status {code}")),
        _ => Err(format!("{url}: not an HTTP response: {line:?}")),
    }
}

/// Time left before `deadline`; an error once it has passed (a zero timeout
/// would mean "block forever" to the socket calls).
fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(format!("timed out after {} s", TIMEOUT.as_secs()))
    } else {
        Ok(left)
    }
}

/// `http://host[:port][/path]` -> (`host:port`, `/path`); port 80 if absent.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let has_port = match authority.rfind(']') {
        // [v6] or [v6]:port
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

fn resolve(authority: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {authority}: no address"));
    }
    Ok(addrs)
}

/// Tries each address in turn within the deadline; reports the last error.
fn connect(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, remaining(deadline)?) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let s = |u: &str| split_url(u).map_err(|_| ());
        assert_eq!(
            s("http://127.0.0.1:3000/health"),
            Ok(("127.0.0.1:3000".into(), "/health".into()))
        );
        assert_eq!(s("http://example"), Ok(("example:80".into(), "/".into())));
        assert_eq!(s("http://[::1]/x"), Ok(("[::1]:80".into(), "/x".into())));
        assert_eq!(
            s("http://[::1]:8080?a=1"),
            Ok(("[::1]:8080".into(), "/?a=1".into()))
        );
        assert!(s("https://x/health").is_err());
        assert!(s("http:///health").is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(healthcheck("").is_err());
        assert!(healthcheck("http://").is_err());
        assert!(healthcheck("http://host:notaport/").is_err());
    }
}
