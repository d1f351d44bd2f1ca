//! `lb`: an HTTP load balancer on Pingora for the front door of one server.
//!
//! Map of the crate, top to bottom (imports only point down):
//! - [`server`] wires Pingora: the front door, background tasks, signals.
//! - [`proxy`] serves requests: its own HTTP/1 path (`proxy::fast`) with the
//!   Pingora `ProxyHttp` implementation as fallback; both share selection,
//!   headers, errors and the retry policy (any method when nothing reached the
//!   backend, idempotent ones also on timeouts, resets and `retry.statuses`).
//!   [`admin`] is the admin API, `/metrics` (`admin::exposition`) and the
//!   status page. They never import each other. [`access_log`] formats the one line per request.
//! - [`control`] carries out operator actions (weights, modes, algorithm,
//!   reload) and writes the state file on its own thread.
//! - Background tasks on the shared state: [`health`] (active checks),
//!   [`discovery`] (DNS re-resolution of backend hostnames), [`reweigh`]
//!   (recomputes `dynamic`'s effective weights from [`balancer`]'s pure rule).
//! - [`state`] is the one `ArcSwap` snapshot; [`backend`] the per-backend types
//!   it holds (stats that survive swaps, the in-flight guard, modes); [`group`]
//!   the `resolve = "all"` groups and their members.
//! - [`sticky`] layers cookie/header stickiness over [`balancer`]'s algorithms.
//! - [`ewma`] is the lock-free peak-EWMA and failure rate used by `least_time`;
//!   [`circuit`] the per-backend breaker; [`metrics`] the per-backend and global
//!   counters and histograms `/metrics` renders; [`clock`] their time origin;
//!   [`queue`] the FIFO where requests wait for a backend below its
//!   `max_in_flight`.
//! - [`history`] keeps the status page's recent per-backend series and state
//!   changes, sampled once a second off the hot path.
//! - [`config`] parses and validates `lb.toml`.
//! - [`pool`] starts, watches, recycles, scales and stops backends lb owns
//!   (child processes or containers), as ordinary members of the snapshot.
//!
//! The `lb` binary (`src/bin/lb/`) is the command line over this crate, with
//! the blocking HTTP client of `lb healthcheck` and `lb admin`.

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod circuit;
pub mod clock;
pub mod config;
pub mod control;
pub mod discovery;
pub mod ewma;
pub mod group;
pub mod health;
pub mod history;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod reweigh;
pub mod server;
pub mod state;
pub mod sticky;
