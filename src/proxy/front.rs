//! The front door: each accepted connection is served by lb's HTTP/1 path
//! ([`super::h1`]) until that path hands it over, with every byte already
//! read put back, to the Pingora path ([`super::pingora`]) for the rest of
//! the connection. Neither path knows the other: this is the one place that
//! holds both.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
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
    /// More than one worker thread: accepted sockets are moved to the reactor
    /// of the thread that serves them.
    rehome: bool,
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
        let rehome = state.load().config.server.threads > 1;
        let pingora_only = std::env::var("LB_PATH").is_ok_and(|p| p == "pingora");
        if pingora_only {
            tracing::info!("LB_PATH=pingora: every request is served by the Pingora path");
        }
        FrontDoor {
            state,
            active,
            fallback,
            rehome,
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
            rehome: plain.rehome,
            pingora_only: plain.pingora_only,
            conns: plain.conns.clone(),
            tls: true,
        }
    }
}

#[async_trait]
impl ServerApp for FrontDoor {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Counted at once (the accept loop paused at the cap: see `Accept`).
        let mut place = self.enter()?;
        let stream = if self.rehome { rehome(stream)? } else { stream };
        // The PROXY header (from a trusted balancer) says who the client is,
        // for the per-client limit below and everything after.
        // Boxed, as the TLS handshake below: their state lives only while
        // they run, not in every idle connection's future.
        let stream = Box::pin(self.proxy_header(stream)).await?;
        // Beyond it the connection is closed at once.
        self.count_client(&mut place, &stream)?;
        let stream: Stream = if self.tls {
            let snap = self.state.load_full();
            // A reload that removed `[tls]` closes new connections here.
            let tls = snap.config.tls.as_ref()?;
            let stream = Box::pin(crate::tls::accept(stream, tls, &self.state.counters)).await?;
            if stream.selected_alpn_proto() == Some(ALPN::H2) {
                // HTTP/2: Pingora's server, every stream through the Pingora
                // path's policy (the same as lb's HTTP/1 path's).
                self.fallback.process_new(Box::new(stream), shutdown).await;
                return None;
            }
            Box::new(stream)
        } else {
            stream
        };
        let conn = Conn::new(stream, &self.state, &self.active, self.pingora_only);
        let mut next = conn.serve(shutdown).await;
        // Handed over: Pingora serves the rest of this connection.
        while let Some(stream) = next {
            next = self.fallback.process_new(stream, shutdown).await;
        }
        None
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

    /// A place for a new connection under `server.max_connections`; `None`
    /// (counted) when there is none: only when connections came faster than
    /// the paused accept loop could see them counted.
    fn enter(&self) -> Option<ConnGuard> {
        let max = self.state.load().config.server.max_connections;
        match self.conns.enter(max) {
            Ok(place) => Some(place),
            Err(why) => self.refused(None, why),
        }
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

    /// The accept hook of this door's listener (both doors share the counts).
    pub fn accept_hook(&self) -> Arc<Accept> {
        Arc::new(Accept {
            conns: self.conns.clone(),
            state: self.state.clone(),
        })
    }
}

/// Pingora's accept hook (`connection_filter`), awaited after each accept:
/// at `server.max_connections` it waits for a connection to close, so the
/// listener stops accepting and new clients wait in the kernel's backlog.
pub struct Accept {
    conns: Arc<Connections>,
    state: Arc<State>,
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accept")
            .field("open", &self.conns.open())
            .finish()
    }
}

#[async_trait]
impl pingora::listeners::ConnectionFilter for Accept {
    async fn should_accept(&self, _peer: Option<&std::net::SocketAddr>) -> bool {
        let state = &self.state;
        self.conns
            .make_room(|| state.load().config.server.max_connections)
            .await;
        true
    }
}

/// The connection's peer IP (after a PROXY header).
fn peer_ip(stream: &Stream) -> Option<std::net::IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

/// Moves an accepted socket onto the current thread's reactor.
///
/// Pingora accepts on one runtime and spawns each connection's task on a
/// random one (`work_stealing = false`), so without this every read and write
/// of the client socket is woken through the accepting thread's reactor: a
/// cross-thread wake-up per I/O. The descriptor is duplicated and registered
/// here; the original (and its registration) is dropped.
fn rehome(stream: Stream) -> Option<Stream> {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use pingora::protocols::{GetSocketDigest, SocketDigest};
    use std::os::fd::{AsRawFd, FromRawFd};

    let old = stream.into_any().downcast::<L4Stream>().ok()?;
    // Close-on-exec, as the accepted original: a child lb starts (a pool
    // member, the successor of an upgrade) must not hold the client socket
    // open, or the client never sees the close after a `Connection: close`.
    // SAFETY: `F_DUPFD_CLOEXEC` of a descriptor we own; the new one is owned by `std`.
    let fd = unsafe { libc::fcntl(old.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        // Out of descriptors (EMFILE): serve the client on the accepting
        // thread's reactor rather than drop it; only slower, never lost.
        return Some(old);
    }
    // SAFETY: `fd` is a fresh, valid descriptor of a connected TCP socket.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    if std.set_nonblocking(true).is_err() {
        return Some(old);
    }
    let Ok(tcp) = tokio::net::TcpStream::from_std(std) else {
        return Some(old);
    };
    drop(old);
    let mut new = L4Stream::from(tcp);
    new.set_socket_digest(SocketDigest::from_raw_fd(fd));
    Some(Box::new(new))
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
        let fut = door.process_new(stream, &shutdown);
        let size = std::mem::size_of_val(&*fut);
        assert!(
            size <= 1024,
            "FrontDoor::process_new's future is {size} bytes"
        );
    }
}
