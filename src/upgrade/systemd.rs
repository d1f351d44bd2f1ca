//! systemd's notify protocol, for a unit with `Type=notify` and
//! `NotifyAccess=all` (docs/operating.md): `READY=1` once lb serves;
//! `MAINPID=<pid>` and `READY=1` from an upgrade's successor once it took
//! over, so that systemd follows the new process rather than stopping the
//! service when the old one exits; `STOPPING=1` when a stop begins (not at a
//! hand-over). Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // The variable stays set: a successor started by SIGUSR2 needs it too.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// lb serves: `READY=1`, with `MAINPID` from a successor.
pub fn ready(successor: bool) {
    if successor {
        send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
    } else {
        send(&[NotifyState::Ready]);
    }
}

/// A stop (not a hand-over) begins.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
