//! The pool end to end with the process provider: a real lb starting real
//! `app` processes on loopback, under open-loop load where the issue asks for
//! "0 failed requests". Every test runs alone (`serial`), is bounded, and
//! kills whatever its pool left on drop ([`PoolGuard`]).
//!
//! The tests, by what they cover, are in tests/pool/ (modules of this one
//! test target; cargo does not take files there for targets of their own).

mod common;
#[path = "pool/support.rs"]
mod support;

#[path = "pool/boot.rs"]
mod boot;
#[path = "pool/configs.rs"]
mod configs;
#[path = "pool/lb_exit.rs"]
mod lb_exit;
#[path = "pool/recycle.rs"]
mod recycle;
#[path = "pool/reload.rs"]
mod reload;
#[path = "pool/rollout.rs"]
mod rollout;
#[path = "pool/sizing.rs"]
mod sizing;
