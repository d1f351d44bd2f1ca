//! HTTP/2 client connections (TLS with ALPN `h2`, or h2c with prior
//! knowledge): lb's own accept loop over Pingora's HTTP/2 server sessions,
//! each stream served where it is cheapest without changing what it gets.
//!
//! - A stream without a request body, to HTTP/1 backends, that is not gRPC
//!   or CONNECT (nearly every browser and API GET) is served by lb itself
//!   ([`exchange`]): the policy's admission and retries, one HTTP/1.1 head
//!   written upstream on the per-thread pooled connection of lb's HTTP/1
//!   path ([`crate::proxy::h1::pool`]), the response head re-encoded
//!   ([`head`]) and its body sent on the stream as it arrives.
//! - Every other stream (bodies, gRPC, h2c backends, CONNECT, and all of
//!   them under `LB_PATH=pingora`) goes to the Pingora path, as a session of
//!   its own on the same connection.
//!
//! Pingora's own loop was the whole of lb's HTTP/2 until this one: it runs
//! each stream through pingora-proxy's generic pipeline (about four times
//! the instructions of lb's HTTP/1 path per request, PERF.md). This loop keeps
//! what that one does for the connection: the shared digest, the graceful
//! `GOAWAY` on shutdown, a budget of 32 malformed streams per connection
//! (counted here: Pingora's public accept counts per call). And it adds
//! two things: the handshake must be done within `server.header_timeout`,
//! and a connection with no stream open for `server.keepalive_timeout` is
//! closed (`GOAWAY`, then at most `header_timeout` for the client to
//! finish), as an idle HTTP/1.1 one is.
//!
//! A connection's streams run on the thread that accepted it, as nginx and
//! HAProxy keep an HTTP/2 connection on one worker: the streams share that
//! thread's upstream pool and nothing crosses threads. (Pingora's loop put
//! each stream on a random thread.)

mod exchange;
pub mod head;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::front::FrontDoor;

/// Streams refused as malformed (a forbidden byte in `:path`, conflicting
/// `content-length`s, a bad authority) before the connection is closed:
/// Pingora's own loop's bound.
const MAX_MALFORMED_STREAMS: usize = 32;

/// Serves an HTTP/2 connection to its end: its handshake, then each stream
/// in a task of its own.
pub async fn serve(door: &Arc<FrontDoor>, stream: Stream, shutdown: &ShutdownWatch) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let options = door.fallback.h2_options.clone();
    let header_timeout = door.state.current().config.server.header_timeout;
    let mut watch = shutdown.clone();
    // The client's preface and SETTINGS, within `server.header_timeout`
    // (a connection that says nothing is closed, as on HTTP/1.1).
    let handshake = tokio::time::timeout(header_timeout, server::handshake(stream, options));
    let mut conn = tokio::select! {
        biased;
        _ = watch.changed() => return,
        done = handshake => match done {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => return,
        },
    };
    let busy = Arc::new(Busy::default());
    let mut draining = false;
    // After an idle close's GOAWAY: how long the client has to finish.
    let mut drain_until = None;
    let mut malformed = 0;
    loop {
        let next = if draining {
            let accept = HttpSession::from_h2_conn(&mut conn, digest.clone());
            match drain_until {
                Some(at) => match tokio::time::timeout_at(at, accept).await {
                    Ok(next) => next,
                    Err(_) => return,
                },
                None => accept.await,
            }
        } else {
            let idle = door.state.current().config.server.keepalive_timeout;
            tokio::select! {
                // The shutdown first, so a signal is seen deterministically
                // (accepting is cancel-safe: it is polled again next turn).
                biased;
                _ = watch.changed() => {
                    // GOAWAY; streams already begun are still accepted and served.
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                next = HttpSession::from_h2_conn(&mut conn, digest.clone()) => next,
                // (An accepted stream cancels this; it starts again after.)
                () = busy.idle_for(idle), if !idle.is_zero() => {
                    // GOAWAY first (RFC 9113 §9.1): a request the client
                    // sends meanwhile is still served or plainly refused.
                    conn.graceful_shutdown();
                    draining = true;
                    drain_until = Some(tokio::time::Instant::now() + header_timeout);
                    continue;
                }
            }
        };
        match next {
            // Clients often just close the socket: not worth more than debug.
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MAX_MALFORMED_STREAMS {
                    tracing::warn!(
                        streams = malformed,
                        "closing an HTTP/2 connection after malformed streams"
                    );
                    return;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                // Boxed once here: the stream's future then moves a pointer,
                // not the session, into its task and each call.
                let session = Box::new(session);
                let open = Open::start(&busy);
                let door = door.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    // The stream's future boxed inside its task: tokio moves
                    // a task's future by value as it starts and ends it (a
                    // copy of its whole size each time); this way, a pointer.
                    Box::pin(serve_stream(&door, session, &shutdown)).await;
                    drop(open);
                });
            }
        }
    }
}

/// One stream: lb's own exchange where it applies, else the Pingora path
/// (boxed: its future is several times the exchange's, and every stream's
/// task would carry, and move, that size).
async fn serve_stream(door: &FrontDoor, session: Box<HttpSession>, shutdown: &ShutdownWatch) {
    let snap = door.state.current();
    if !door.pingora_only && exchange::eligible(&session, &snap) {
        exchange::serve(&door.state, &door.active, session, snap).await;
    } else {
        drop(snap);
        let session = ServerSession::new_http2(*session);
        Box::pin(door.fallback.process_new_http(session, shutdown)).await;
    }
}

/// The streams of one connection still being served, so the idle timer
/// runs only while there are none.
#[derive(Default)]
struct Busy {
    open: AtomicUsize,
    idle: Notify,
}

impl Busy {
    /// Resolves once no stream has been open for `d`.
    async fn idle_for(&self, d: Duration) {
        while self.open.load(Ordering::Acquire) != 0 {
            self.idle.notified().await;
        }
        tokio::time::sleep(d).await;
    }
}

/// One open stream of a [`Busy`] connection (closed when dropped).
struct Open(Arc<Busy>);

impl Open {
    fn start(busy: &Arc<Busy>) -> Open {
        busy.open.fetch_add(1, Ordering::AcqRel);
        Open(busy.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}
