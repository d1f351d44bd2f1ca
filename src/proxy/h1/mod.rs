//! lb's own HTTP/1 path: the front door's connection loop.
//!
//! Pingora's generic proxy pipeline (two tasks joined by channels, a fresh
//! session, header maps and buffers per request, a shared upstream pool with a
//! watcher task per idle connection) cost lb ~2.7× nginx's CPU per request
//! (PERF.md). This path serves the common case in straight-line code on
//! the accepted socket itself ([`crate::proxy::client::Client`]): read the
//! head into a per-connection buffer → parse and validate it ([`request`]) →
//! choose a backend (the same selection, breaker and accounting as the
//! Pingora path) → one write upstream on a per-thread pooled connection
//! ([`pool`]) → read the response head ([`response`]) → one write of head and
//! first body bytes to the client → stream the rest without buffering.
//!
//! Request bodies up to 64 KiB are buffered (a retry can replay them);
//! larger and chunked ones are streamed ([`upload`]). Requests it does not
//! handle — upgrades (WebSocket) and CONNECT — end [`Conn::serve`] with the stream
//! and every byte already read, for the front door ([`super::front`]) to
//! hand to the Pingora path. Every decision about a request is
//! [`super::policy`]'s; this path only reads and writes bytes.
//!
//! Pipelined requests are read from the same buffer and answered in order;
//! `server.header_timeout` bounds the whole request head.

mod conn;
mod exchange;
pub mod pool;
mod relay;
pub mod request;
pub mod response;
mod splice;
mod upload;

pub use conn::{Conn, Served};

/// Writes one header field line, `name: value\r\n`, the value given in
/// parts written one after the other (every head lb's HTTP/1 path encodes).
fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}
