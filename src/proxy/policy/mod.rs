//! The request policy: every decision about a request, made once for every
//! path that serves one (lb's HTTP/1 path, the Pingora path, and the TLS and
//! HTTP/2 front doors built on them). Paths keep only their byte and frame
//! handling; they ask this module
//!
//! - whether to admit the request and where to send it ([`admit`]: selection,
//!   in-flight slots, the queue) and how each attempt went ([`Ctx::record`]);
//! - what a failed attempt was ([`Failure`]) and what follows it
//!   ([`after_failure`], [`retry_status`]);
//! - what the upstream head carries ([`forward`]: `Connection` tokens,
//!   fields never forwarded, forwarding fields, absolute-form targets);
//! - what the response head carries ([`respond`]) and what lb's own error
//!   replies look like ([`reply`]);
//! - how the request is accounted and logged at its end ([`log_request`]).
//!
//! Everything but `admit` is pure and unit-tested next to its code.

mod admit;
pub mod budget;
mod ctx;
mod failure;
pub mod forward;
mod ids;
pub mod limits;
mod log;
pub mod redirect;
pub mod reply;
pub mod respond;

pub use admit::{admit, ip_key, Refusal};
pub use ctx::{Active, Ctx, Outcome, RATE_LIMITED};
pub use failure::{after_failure, idempotent, retry_status, Failure, Next};
pub use ids::{new_request_id, request_id, sane_request_id, REQUEST_ID};
pub use log::log_request;

/// Head limits from `[server]`, applied on every path.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// `server.max_headers`: most header fields in a request head.
    pub max_headers: usize,
    /// `server.max_header_bytes`: largest request head (request line + fields).
    pub max_header_bytes: usize,
}

impl HeadLimits {
    /// The limits of `server`.
    pub fn of(server: &crate::config::ServerConfig) -> HeadLimits {
        HeadLimits {
            max_headers: server.max_headers,
            max_header_bytes: server.max_header_bytes,
        }
    }

    /// Is a head of `fields` fields and `bytes` bytes beyond them (`431`)?
    pub fn exceeded(&self, fields: usize, bytes: usize) -> bool {
        fields > self.max_headers || bytes > self.max_header_bytes
    }
}
