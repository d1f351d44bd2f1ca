//! lb's own HTTP/1 path: the front door's connection loop.
//!
//! Pingora's generic proxy pipeline (two tasks joined by channels, a fresh
//! session, header maps and buffers per request, a shared upstream pool with a
//! watcher task per idle connection) cost lb ~2.7× nginx's CPU per request
//! (PERF.md). This path serves the common case in straight-line code on
//! Pingora's accepted [`Stream`]: read the head into a per-connection buffer →
//! parse and validate it ([`request`]) → choose a backend (the same selection,
//! breaker and accounting as the Pingora path) → one write upstream on a
//! per-thread pooled connection ([`pool`]) → read the response head
//! ([`response`]) → one write of head and first body bytes to the client →
//! stream the rest without buffering.
//!
//! Requests it does not handle — upgrades (WebSocket), CONNECT, chunked or
//! larger than 64 KiB request bodies — are handed, with every byte already read, to the
//! Pingora proxy ([`super::Proxy`]) for the rest of the connection.
//!
//! Pipelined requests are read from the same buffer and answered in order;
//! `server.header_timeout` bounds the whole request head.

mod conn;
pub mod pool;
pub mod request;
pub mod response;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::Proxy;
use crate::state::State;

/// The front door: lb's HTTP/1 path with the Pingora proxy as its fallback.
pub struct FrontDoor {
    state: Arc<State>,
    active: Arc<AtomicUsize>,
    fallback: Arc<HttpProxy<Proxy>>,
    /// `LB_PATH=pingora`: every request goes to the Pingora path once its head
    /// is validated (so `make test` runs the integration suite through both).
    pingora_only: bool,
}

impl FrontDoor {
    /// A front door routing by `state`, counting live requests in `active`;
    /// `fallback` serves what the fast path hands over.
    pub fn new(state: Arc<State>, active: Arc<AtomicUsize>, fallback: HttpProxy<Proxy>) -> Self {
        let pingora_only = std::env::var("LB_PATH").is_ok_and(|p| p == "pingora");
        if pingora_only {
            tracing::info!("LB_PATH=pingora: every request is served by the Pingora path");
        }
        FrontDoor {
            state,
            active,
            fallback: Arc::new(fallback),
            pingora_only,
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
        let conn = conn::Conn::new(stream, &self.state, &self.active, self.pingora_only);
        let mut next = conn.serve(shutdown).await;
        // Handed over: Pingora serves the rest of this connection.
        while let Some(stream) = next {
            next = self.fallback.process_new(stream, shutdown).await;
        }
        None
    }
}
