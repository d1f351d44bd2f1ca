//! The front door: each accepted connection is served by lb's HTTP/1 path
//! ([`super::h1`]) until that path hands it over, with every byte already
//! read put back, to the Pingora path ([`super::pingora`]) for the rest of
//! the connection; an HTTP/2 connection (ALPN `h2`, or h2c) goes to
//! [`super::h2`], which serves each stream itself or through the Pingora
//! path. Neither path knows the other: this is the one place that holds both.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::apps::ServerApp;
use pingora::protocols::tls::ALPN;
use pingora::protocols::Ssl;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use super::client::Client;
use super::h1::{Conn, Served};
use super::h2;
use super::pingora::Proxy;
use super::policy::limits::{ConnGuard, ConnRefusal, Connections};
use super::proxy_header;
use crate::state::State;

/// A connection an accept loop took, for [`FrontDoor::serve`].
pub struct Accepted {
    pub tcp: TcpStream,
    /// The client's address, from `accept`.
    pub peer: SocketAddr,
    /// Its place under `server.max_connections`.
    pub place: ConnGuard,
}

/// The front door: lb's HTTP/1 path with the Pingora proxy as its fallback.
pub struct FrontDoor {
    pub(super) state: Arc<State>,
    pub(super) active: Arc<AtomicUsize>,
    pub(super) fallback: Arc<HttpProxy<Proxy>>,
    /// `LB_PATH=pingora`: every request goes to the Pingora path once its head
    /// is validated (so `make test` runs the integration suite through both).
    pub(super) pingora_only: bool,
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
    /// ([`super::listen`]) to its end, holding its place under
    /// `server.max_connections` until then.
    ///
    /// An idle kept-alive connection is this future and little else
    /// (memory per idle connection): the connection arrives boxed (one
    /// pointer here, not the socket, address and place), everything before
    /// the first request runs boxed in [`FrontDoor::begin`], and lb's HTTP/1
    /// path borrows the connection rather than holding a second copy.
    pub async fn serve(self: &Arc<Self>, accepted: Box<Accepted>, shutdown: &ShutdownWatch) {
        let Some((client, read, place)) = Box::pin(self.begin(accepted, shutdown)).await else {
            return;
        };
        let mut conn = Conn::new(client, read, &self.state, &self.active, self.pingora_only);
        if conn.serve(shutdown).await == Served::HandOver {
            match conn.hand_over() {
                // h2c with prior knowledge.
                Some(stream) if stream.selected_alpn_proto() == Some(ALPN::H2) => {
                    Box::pin(h2::serve(self, stream, shutdown)).await;
                }
                // Pingora serves the rest of this connection.
                mut next => {
                    while let Some(stream) = next {
                        next = self.fallback.process_new(stream, shutdown).await;
                    }
                }
            }
        } else {
            // Closed before its place frees: an accept loop woken by the
            // place finds the descriptor free too.
            drop(conn);
        }
        drop(place);
    }

    /// Everything before a connection's first request: its PROXY header,
    /// the per-client limit, the TLS handshake. Returns the connection, the
    /// bytes already read from it and its place; `None` when it is closed
    /// (or was served here whole: HTTP/2 over TLS, [`h2`]).
    async fn begin(
        self: &Arc<Self>,
        accepted: Box<Accepted>,
        shutdown: &ShutdownWatch,
    ) -> Option<(Client, Vec<u8>, ConnGuard)> {
        let Accepted {
            tcp,
            peer,
            mut place,
        } = *accepted;
        // The PROXY header (from a trusted balancer) says who the client is,
        // for the per-client limit below and everything after.
        let (tcp, peer, read) = self.proxy_header(tcp, peer).await?;
        // Beyond it the connection is closed at once.
        self.count_client(&mut place, peer.ip())?;
        let client = Client::Tcp { tcp, peer };
        if !self.tls {
            return Some((client, read, place));
        }
        let snap = self.state.current();
        // A reload that removed `[tls]` closes new connections here.
        let tls = snap.config.tls.as_ref()?;
        let stream = client.into_stream(&read)?;
        let stream = crate::tls::accept(stream, tls, &self.state.counters).await?;
        // Not held for the connection's life: each request takes the
        // snapshot of its time.
        drop(snap);
        if stream.selected_alpn_proto() == Some(ALPN::H2) {
            h2::serve(self, Box::new(stream), shutdown).await;
            return None;
        }
        Some((Client::Stream(Box::new(stream)), Vec::new(), place))
    }

    /// Returns when there is room for one more connection under
    /// `server.max_connections` (an accept loop waits here before accepting).
    pub async fn room(&self) {
        let state = &self.state;
        self.conns
            .room(|| state.current().config.server.max_connections)
            .await;
    }

    /// A place for a connection just accepted; waits for one when another
    /// accept loop took the last (the connection is never closed for it).
    pub async fn place(&self) -> ConnGuard {
        loop {
            let max = self.state.current().config.server.max_connections;
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
    /// source the connection's peer; returns the socket, its peer and the
    /// bytes read after the header (the first request's start). `None`
    /// (closed) when the header is missing, malformed, of a version not
    /// accepted, or late (`server.header_timeout`).
    async fn proxy_header(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr, Vec<u8>)> {
        use tokio::io::AsyncReadExt;

        // The settings, not the snapshot's guard, are kept across the reads.
        let (versions, header_timeout) = {
            let snap = self.state.current();
            let server = &snap.config.server;
            let trusted = &server.proxy_protocol_from;
            if !proxy_header::required(server.proxy_protocol, trusted, Some(peer.ip())) {
                return Some((tcp, peer, Vec::new()));
            }
            (server.proxy_protocol, server.header_timeout)
        };
        let deadline = tokio::time::Instant::now() + header_timeout;
        let mut buf = Vec::with_capacity(256);
        let parsed = loop {
            match proxy_header::parse(&buf, versions) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(why) => {
                    tracing::debug!(client = %peer, reason = ?why, "PROXY header refused");
                    return None;
                }
            }
            match tokio::time::timeout_at(deadline, tcp.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        };
        // What followed the header is the first request's start.
        buf.drain(..parsed.len);
        if buf.is_empty() {
            buf = Vec::new();
        }
        Some((tcp, parsed.source.unwrap_or(peer), buf))
    }

    /// Counts `place`'s connection against its client under
    /// `limits.per_ip_connections`; `None` (counted) when over it.
    fn count_client(&self, place: &mut ConnGuard, ip: IpAddr) -> Option<()> {
        let ip = Some(ip);
        let per_ip = self.state.current().config.limits.per_ip_connections;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Every connection's task carries the front door's future for its whole
    /// life: with the PROXY header and TLS handshake futures inline it was
    /// 3,136 bytes (rustc 1.95), boxed 784 (mostly `Conn::serve`'s), and 704
    /// since the connection arrives boxed and `Conn::serve` borrows it (its
    /// first version with lb's own socket type, which moved the connection
    /// in, was 1,136). The bound leaves room for layout changes and catches
    /// them coming back.
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
        let peer = accepted.peer_addr().unwrap();
        let place = door.place().await;
        let accepted = Box::new(Accepted {
            tcp: accepted,
            peer,
            place,
        });
        let fut = door.serve(accepted, &shutdown);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 768, "FrontDoor::serve's future is {size} bytes");
    }
}
