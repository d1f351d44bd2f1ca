//! `lb`: an HTTP load balancer on Pingora for the front door of one server.
//!
//! Map of the crate, top to bottom (imports only point down):
//! - [`server`] wires Pingora: the front door, background tasks, signals.
//!   [`upgrade`] hands the listening sockets to a new lb binary (SIGUSR2).
//! - [`proxy`] serves requests: its own HTTP/1 path (`proxy::h1`) with the
//!   Pingora `ProxyHttp` implementation as fallback; both share selection,
//!   headers, errors and the retry policy (any method when nothing reached the
//!   backend, idempotent ones also on timeouts, resets and `retry.statuses`).
//!   [`access_log`] formats its one line per request; [`sticky`] layers
//!   cookie/header stickiness over [`balancer`]'s algorithms.
//! - [`admin`] is the admin API, the status page and `/metrics`
//!   (`admin::exposition` renders [`metrics`]' counters as Prometheus text).
//!   `proxy` and `admin` never import each other.
//! - [`control`] carries out operator actions (weights, modes, algorithm),
//!   reloads (`control::reload`) and keeps the state file
//!   (`control::state_file`, written on a thread of its own).
//! - Background tasks on the shared state: [`health`] (active checks),
//!   [`discovery`] (DNS re-resolution of backend hostnames), [`reweigh`]
//!   (recomputes the `dynamic` algorithm's effective weights with
//!   `balancer::dynamic`'s pure rule) and [`history`] (the status page's recent
//!   per-backend series and state changes, sampled once a second off the hot
//!   path). [`pool`] starts, watches, recycles, scales and stops backends lb
//!   owns (child processes or containers), as ordinary members of the snapshot.
//! - [`state`] is the one `ArcSwap` snapshot; [`group`] the `resolve = "all"`
//!   groups and their members; [`balancer`] selection (one small trait, one
//!   file per algorithm); [`backend`] the per-backend types the snapshot holds
//!   (stats that survive swaps, the in-flight guard, modes).
//! - [`queue`] is the FIFO where requests wait for a backend below its
//!   `max_in_flight`; [`ewma`] the lock-free peak-EWMA and failure rate used by
//!   `least_time`; [`circuit`] the per-backend breaker; [`metrics`] the
//!   per-backend and global counters and histograms, plain atomics on the hot
//!   path; [`clock`] their time origin.
//! - [`config`] parses and validates `lb.toml`.
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
pub mod http1;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod reweigh;
pub mod server;
pub mod slow_start;
pub mod state;
pub mod sticky;
pub mod tls;
pub mod upgrade;
