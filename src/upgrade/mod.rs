//! Zero-downtime binary upgrade (SPEC "Zero-downtime binary upgrade"): the
//! running lb hands every listening socket to a successor process and stops
//! accepting only once the successor says it serves.
//!
//! Old process → successor, in order:
//! 1. The successor starts with `--upgrade`: on SIGUSR2 the old process
//!    starts it (the binary now at its own path, its own arguments); by hand,
//!    `lb run --upgrade` then SIGQUIT to the old one. Pingora's bootstrap
//!    listens on `server.upgrade_sock` for about 6 s.
//! 2. The old process binds `<upgrade_sock>.ready`, connects to
//!    `upgrade_sock` and sends every socket in Pingora's table of listening
//!    fds (proxy, TLS, and the admin API's, which [`AdminService`] keeps in
//!    the same table) in Pingora's format: the addresses, space-separated,
//!    with the fds as `SCM_RIGHTS` ([`handover`]).
//! 3. Each of the successor's listeners takes its socket from the table.
//!    The successor reloads the state file (what the operator changed while
//!    it started) and, once its services run, writes its pid to
//!    `<upgrade_sock>.ready` ([`successor`]).
//! 4. The old process stops accepting (Pingora's graceful shutdown), lets
//!    its in-flight requests finish within `server.grace_period` and exits 0.
//!
//! A docker `[pool]` is held from the hand-over's start (nothing started,
//! stopped or recycled; released if the hand-over fails) and its containers
//! outlive the old process: the successor adopts them by label
//! ([`crate::pool::Provider::adopt`]) and they serve on. A process pool's
//! members are the old process's children: the successor starts its own,
//! the old one stops its own after its requests drained.
//!
//! Both processes accept from the same sockets between 2 and 4, and a socket
//! lives while either holds it: a connection is never refused, at worst it
//! waits in the shared backlog. Anything failing before 4 (the successor
//! exits, never opens `upgrade_sock`, never confirms) leaves the old process
//! serving, with a log line saying why; a successor that took the sockets
//! and never confirmed is killed, so that nothing half-started accepts.

mod admin;
mod handover;
mod signals;
mod successor;
mod systemd;

pub use admin::AdminService;
pub use successor::prepare;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::server::ListenFds;

use crate::state::State;

/// How long a successor started by SIGUSR2 may take to open `upgrade_sock`
/// (its config, the state file, DNS and a `[pool]` come first).
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// How long a successor that took the sockets may take to confirm it serves.
pub const CONFIRM_LIMIT: Duration = Duration::from_secs(30);

/// The upgrade side of one lb process: whether it is a successor, and
/// Pingora's table of its listening sockets (what an upgrade hands over).
pub struct Upgrade {
    /// Started with `--upgrade`: confirms to the old process once serving.
    successor: bool,
    /// The running config (`server.upgrade_sock` is read at the signal).
    state: Arc<State>,
    /// Pingora's table of listening fds, set when [`AdminService`] starts.
    fds: OnceLock<ListenFds>,
    /// The admin API accepts (a successor confirms after it).
    admin_listening: AtomicBool,
    /// The `[pool]`, held while a hand-over runs (its docker members go to
    /// the successor, which adopts them).
    pool: OnceLock<Arc<crate::pool::Pool>>,
}

impl Upgrade {
    /// The upgrade handle of a process started with `--upgrade` or not.
    pub fn new(successor: bool, state: Arc<State>) -> Arc<Upgrade> {
        Arc::new(Upgrade {
            successor,
            state,
            fds: OnceLock::new(),
            admin_listening: AtomicBool::new(false),
            pool: OnceLock::new(),
        })
    }

    /// Whether this process was started to take over from another.
    pub fn is_successor(&self) -> bool {
        self.successor
    }

    /// `server.upgrade_sock` of the running config.
    fn sock(&self) -> PathBuf {
        self.state.load().config.server.upgrade_sock.clone()
    }

    /// The running `[pool]`, set once it started.
    pub fn set_pool(&self, pool: Arc<crate::pool::Pool>) {
        let _ = self.pool.set(pool);
    }

    /// Holds the pool while a hand-over runs, releases it if it failed.
    fn hold_pool(&self, on: bool) {
        if let Some(p) = self.pool.get() {
            p.hold(on);
        }
    }

    fn set_fds(&self, fds: ListenFds) {
        let _ = self.fds.set(fds);
    }

    fn set_admin_listening(&self) {
        self.admin_listening.store(true, Ordering::Release);
    }

    fn admin_listening(&self) -> bool {
        self.admin_listening.load(Ordering::Acquire)
    }
}

/// Where the successor confirms: `<upgrade_sock>.ready`.
fn ready_path(sock: &Path) -> PathBuf {
    let mut p = sock.as_os_str().to_owned();
    p.push(".ready");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_socket_sits_beside_the_upgrade_socket() {
        assert_eq!(
            ready_path(Path::new("/tmp/lb-upgrade.sock")),
            Path::new("/tmp/lb-upgrade.sock.ready")
        );
    }

    #[test]
    fn the_longest_upgrade_sock_leaves_room_for_the_ready_socket() {
        let longest = format!("/{}", "a".repeat(crate::config::MAX_UPGRADE_SOCK_PATH - 1));
        let ready = ready_path(Path::new(&longest));
        // sun_path holds 108 bytes, the terminating NUL included.
        assert_eq!(ready.as_os_str().len(), 107);
    }
}
