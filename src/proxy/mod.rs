//! Serving requests: one policy, several transports.
//!
//! - [`policy`] makes every decision about a request (admission, retries,
//!   the upstream head's fields, the response's decoration, error replies,
//!   accounting); every path imports it and nothing else of another path.
//! - [`h1`] is lb's own HTTP/1 path: bytes in, bytes out, on the accepted
//!   socket ([`client`]).
//! - [`pingora`] is the Pingora `ProxyHttp` path, which serves what the
//!   HTTP/1 path hands over.
//! - [`h2`] serves HTTP/2 connections: lb's own exchange for the common
//!   stream, the Pingora path for the rest; [`heads`] is the policy on the
//!   head types both share.
//! - [`front`] is the front door that owns a connection and passes it from
//!   one path to the other, after its [`proxy_header`] where that is on.

pub mod client;
pub mod front;
pub mod h1;
pub mod h2;
pub mod heads;
pub mod listen;
pub mod pingora;
pub mod policy;
pub mod proxy_header;
pub mod stream;

pub use front::FrontDoor;
pub use pingora::Proxy;
pub use policy::{new_request_id, sane_request_id, Ctx, Outcome};
