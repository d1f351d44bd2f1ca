//! `lb`: an HTTP load balancer on Pingora for the front door of one server.
//!
//! Map of the crate, top to bottom (imports only point down):
//! - [`server`] wires Pingora: the proxy service, background tasks, signals.
//! - [`proxy`] is the `ProxyHttp` implementation (selection, headers, errors);
//!   [`admin`] the admin API and `/metrics`. They never import each other.
//! - [`control`] carries out operator actions (weights, modes, reload, state file).
//! - [`state`] is the one `ArcSwap` snapshot plus per-backend stats.
//! - [`sticky`] layers cookie/header stickiness over [`balancer`]'s algorithms.
//! - [`ewma`] is the lock-free peak-EWMA used by `least_time`; [`circuit`] the
//!   per-backend breaker; [`health`] the active checker; [`clock`] their time origin.
//! - [`history`] keeps the status page's recent per-backend series and state
//!   changes, sampled once a second off the hot path.
//! - [`config`] parses and validates `lb.toml`.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod circuit;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod discovery;
pub mod dynamic;
pub mod ewma;
pub mod health;
pub mod history;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod state;
pub mod sticky;
