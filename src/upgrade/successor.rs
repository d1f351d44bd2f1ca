//! The successor's side of an upgrade: refuse early what cannot be taken
//! over (before Pingora's bootstrap waits for the sockets), and confirm to
//! the old process once serving.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{ready_path, Upgrade};
use crate::config::Config;

/// How long the successor waits for its admin API before confirming anyway.
const ADMIN_LIMIT: Duration = Duration::from_secs(5);

/// How long the successor keeps trying to reach `<upgrade_sock>.ready`.
const CONFIRM_TRIES: Duration = Duration::from_secs(2);

/// Checks, before anything is started, that a process started with
/// `--upgrade` can take over: Pingora's bootstrap can create
/// `server.upgrade_sock` (it panics otherwise).
pub fn prepare(config: &Config) -> Result<(), String> {
    let sock = &config.server.upgrade_sock;
    match sock.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        _ => Err(format!(
            "--upgrade: cannot create {} (server.upgrade_sock): no such directory",
            sock.display()
        )),
    }
}

impl Upgrade {
    /// Tells the old process this one serves: once the admin API accepts
    /// (the last service to take its socket), its pid on
    /// `<upgrade_sock>.ready`. Blocking; run on a thread of its own.
    pub(super) fn confirm(&self) {
        self.wait_admin();
        let sock = self.sock();
        let pid = std::process::id();
        match send_pid(&ready_path(&sock), pid) {
            Ok(()) => {
                tracing::info!(pid, "upgrade: took over the listening sockets; serving");
                super::systemd::ready(true);
            }
            Err(e) => tracing::error!(pid, error = %e,
                "upgrade: cannot confirm to the old process; it will stop this one and keep serving"),
        }
    }
}

impl Upgrade {
    /// Waits (at most 5 s) until the admin API accepts: the last service
    /// to take its socket, so everything serves.
    pub(super) fn wait_admin(&self) {
        let deadline = Instant::now() + ADMIN_LIMIT;
        while !self.admin_listening() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn send_pid(ready: &Path, pid: u32) -> std::io::Result<()> {
    let deadline = Instant::now() + CONFIRM_TRIES;
    loop {
        match UnixStream::connect(ready) {
            Ok(mut s) => return s.write_all(format!("{pid}\n").as_bytes()),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:3000\"\n";

    #[test]
    fn a_successor_needs_a_directory_for_its_upgrade_socket() {
        let ok = Config::from_toml(&format!("[server]\nupgrade_sock = \"/tmp/x.sock\"\n{B}"));
        assert_eq!(prepare(&ok.unwrap()), Ok(()));
        let missing = Config::from_toml(&format!(
            "[server]\nupgrade_sock = \"/nonexistent-lb/x.sock\"\n{B}"
        ));
        let e = prepare(&missing.unwrap()).unwrap_err();
        assert!(e.contains("/nonexistent-lb/x.sock"), "{e}");
    }
}
