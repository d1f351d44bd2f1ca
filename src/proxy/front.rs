//! The front door: each accepted connection is served by lb's HTTP/1 path
//! ([`super::h1`]) until that path hands it over, with every byte already
//! read put back, to the Pingora path ([`super::pingora`]) for the rest of
//! the connection. Neither path knows the other: this is the one place that
//! holds both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::apps::ServerApp;
use pingora::protocols::tls::ALPN;
use pingora::protocols::{Ssl, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::h1::Conn;
use super::pingora::Proxy;
use super::policy::limits::{ConnGuard, ConnRefusal, Connections};
use super::proxy_header;
use crate::state::State;

/// The front door: lb's HTTP/1 path with the Pingora proxy as its fallback.
pub struct FrontDoor {
    state: Arc<State>,
    active: Arc<AtomicUsize>,
    fallback: Arc<HttpProxy<Proxy>>,
    /// `LB_PATH=pingora`: every request goes to the Pingora path once its head
    /// is validated (so `make test` runs the integration suite through both).
    pingora_only: bool,
    /// Open client connections (`server.max_connections`, `[limits]`).
    conns: Arc<Connections>,
    /// This door is `[tls] listen`: connections complete a TLS handshake first.
    tls: bool,
}

impl FrontDoor {
    /// A front door routing by `state`, counting live requests in `active`;
    /// `fallback` serves what the fast path hands over.
    pub fn new(
        state: Arc<State>,
        active: Arc<AtomicUsize>,
        fallback: Arc<HttpProxy<Proxy>>,
    ) -> Self {
        let pingora_only = std::env::var("LB_PATH").is_ok_and(|p| p == "pingora");
        if pingora_only {
            tracing::info!("LB_PATH=pingora: every request is served by the Pingora path");
        }
        FrontDoor {
            state,
            active,
            fallback,
            pingora_only,
            conns: Arc::default(),
            tls: false,
        }
    }

    /// The door of `[tls] listen`, sharing `plain`'s fallback and its
    /// connection counts (`server.max_connections` and `[limits]` count
    /// both listeners' connections together).
    pub fn tls(plain: &FrontDoor) -> Self {
        FrontDoor {
            state: plain.state.clone(),
            active: plain.active.clone(),
            fallback: plain.fallback.clone(),
            pingora_only: plain.pingora_only,
            conns: plain.conns.clone(),
            tls: true,
        }
    }
}

impl FrontDoor {
    /// Serves one connection accepted on this door's listener
    /// ([`super::listen`]), holding `place` under `server.max_connections`
    /// until it closes.
    pub async fn serve(
        &self,
        stream: Stream,
        fd: std::os::fd::RawFd,
        mut place: ConnGuard,
        shutdown: &ShutdownWatch,
    ) {
        // The PROXY header (from a trusted balancer) says who the client is,
        // for the per-client limit below and everything after.
        // Boxed, as the TLS handshake below: their state lives only while
        // they run, not in every idle connection's future.
        let Some(stream) = Box::pin(self.proxy_header(stream)).await else {
            return;
        };
        // Beyond it the connection is closed at once.
        if self.count_client(&mut place, &stream).is_none() {
            return;
        }
        let stream: Stream = if self.tls {
            let snap = self.state.load_full();
            // A reload that removed `[tls]` closes new connections here.
            let Some(tls) = snap.config.tls.as_ref() else {
                return;
            };
            let accepted = Box::pin(crate::tls::accept(stream, tls, &self.state.counters)).await;
            let Some(stream) = accepted else {
                return;
            };
            if stream.selected_alpn_proto() == Some(ALPN::H2) {
                // HTTP/2: Pingora's server, every stream through the Pingora
                // path's policy (the same as lb's HTTP/1 path's).
                self.fallback.process_new(Box::new(stream), shutdown).await;
                return;
            }
            Box::new(stream)
        } else {
            stream
        };
        let conn = Conn::new(stream, &self.state, &self.active, self.pingora_only);
        // Plain TCP (not TLS): `fd` is the client's socket, its stream's own.
        let conn = if self.tls { conn } else { conn.plain(fd) };
        let mut next = conn.serve(shutdown).await;
        // Handed over: Pingora serves the rest of this connection.
        while let Some(stream) = next {
            next = self.fallback.process_new(stream, shutdown).await;
        }
    }

    /// Returns when there is room for one more connection under
    /// `server.max_connections` (an accept loop waits here before accepting).
    pub async fn room(&self) {
        let state = &self.state;
        self.conns
            .room(|| state.load().config.server.max_connections)
            .await;
    }

    /// A place for a connection just accepted; waits for one when another
    /// accept loop took the last (the connection is never closed for it).
    pub async fn place(&self) -> ConnGuard {
        loop {
            let max = self.state.load().config.server.max_connections;
            if let Ok(place) = self.conns.enter(max) {
                return place;
            }
            self.room().await;
        }
    }

    /// Client connections open now, on both doors.
    pub fn open(&self) -> usize {
        self.conns.open()
    }

    /// Waits until a client connection closes (a descriptor frees),
    /// `at_most` long.
    pub async fn until_a_close(&self, at_most: std::time::Duration) {
        self.conns.until_a_close(at_most).await;
    }
}

impl FrontDoor {
    /// Reads the PROXY header a trusted source must send and makes its
    /// source the connection's peer; `None` (closed) when it is missing,
    /// malformed, of a version not accepted, or late (`server.header_timeout`).
    async fn proxy_header(&self, stream: Stream) -> Option<Stream> {
        use pingora::protocols::l4::stream::Stream as L4Stream;
        use tokio::io::AsyncReadExt;

        let snap = self.state.load();
        let server = &snap.config.server;
        let peer = peer_ip(&stream);
        if !proxy_header::required(server.proxy_protocol, &server.proxy_protocol_from, peer) {
            return Some(stream);
        }
        let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let deadline = tokio::time::Instant::now() + server.header_timeout;
        let mut buf = Vec::with_capacity(256);
        let parsed = loop {
            match proxy_header::parse(&buf, server.proxy_protocol) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(why) => {
                    tracing::debug!(client = ?peer, reason = ?why, "PROXY header refused");
                    return None;
                }
            }
            match tokio::time::timeout_at(deadline, l4.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        };
        if let Some(source) = parsed.source {
            use pingora::protocols::{GetSocketDigest, SocketDigest};
            use std::os::fd::AsRawFd;
            let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
            let _ = digest
                .peer_addr
                .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                    source,
                )));
            l4.set_socket_digest(digest);
        }
        // What followed the header is the first request's start.
        if buf.len() > parsed.len {
            l4.rewind(&buf[parsed.len..]);
        }
        Some(l4)
    }

    /// Counts `place`'s connection against its client under
    /// `limits.per_ip_connections`; `None` (counted) when over it.
    fn count_client(&self, place: &mut ConnGuard, stream: &Stream) -> Option<()> {
        let ip = peer_ip(stream);
        let per_ip = self.state.load().config.limits.per_ip_connections;
        match self.conns.count_client(place, ip, per_ip) {
            Ok(()) => Some(()),
            Err(why) => self.refused(ip, why),
        }
    }

    fn refused<T>(&self, ip: Option<std::net::IpAddr>, why: ConnRefusal) -> Option<T> {
        self.state.counters.limited[0].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = ?ip, reason = ?why, "connection refused by limits");
        None
    }
}

/// The connection's peer IP (after a PROXY header).
fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use pingora::protocols::l4::stream::Stream as L4Stream;

    /// Every connection's task carries the front door's future for its whole
    /// life: with the PROXY header and TLS handshake futures inline it was
    /// 3,136 bytes (rustc 1.95), boxed 784 (mostly `Conn::serve`'s). The
    /// bound leaves room for layout changes and catches them coming back.
    #[tokio::test]
    async fn a_connections_future_stays_small() {
        let state = Arc::new(State::new(Arc::new(
            Config::from_toml("[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n").unwrap(),
        )));
        let active = Arc::new(AtomicUsize::new(0));
        let conf = Arc::new(pingora::server::configuration::ServerConf::default());
        let fallback = pingora::proxy::http_proxy(&conf, Proxy::new(state.clone(), active.clone()));
        let door = Arc::new(FrontDoor::new(state, active, Arc::new(fallback)));
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let stream: Stream = Box::new(L4Stream::from(accepted));
        let place = door.place().await;
        let fut = door.serve(stream, -1, place, &shutdown);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "FrontDoor::serve's future is {size} bytes");
    }
}
