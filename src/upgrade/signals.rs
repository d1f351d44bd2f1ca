//! The signals that end an lb process: SIGTERM and SIGINT (a graceful
//! stop), SIGQUIT (hand over to a successor waiting on `upgrade_sock`, else
//! a graceful stop, never the default core dump) and SIGUSR2 (start a
//! successor and hand over). A failed hand-over keeps this process serving;
//! SIGTERM and SIGINT still work while one runs.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use super::handover::{self, Outcome, Trigger};
use super::Upgrade;

impl Upgrade {
    /// Waits until this process should stop, and says why (for the log
    /// line): a signal's name, or the successor that took over. A successor
    /// first confirms to the old process that it serves.
    pub async fn until_stop(self: &Arc<Self>) -> String {
        let (Ok(mut term), Ok(mut int), Ok(mut quit), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        let me = self.clone();
        if self.successor {
            tokio::task::spawn_blocking(move || me.confirm());
        } else {
            tokio::task::spawn_blocking(move || {
                me.wait_admin();
                super::systemd::ready(false);
            });
        }
        let mut running: Option<(Trigger, JoinHandle<Outcome>)> = None;
        loop {
            let trigger = tokio::select! {
                _ = term.recv() => return stopping("SIGTERM"),
                _ = int.recv() => return stopping("SIGINT"),
                _ = quit.recv() => Trigger::Quit,
                _ = usr2.recv() => Trigger::Usr2,
                done = async { (&mut running.as_mut().expect("guarded").1).await }, if running.is_some() => {
                    let (trigger, _) = running.take().expect("guarded");
                    match done.unwrap_or_else(|e| Outcome::Failed(format!("the hand-over panicked: {e}"))) {
                        Outcome::TookOver(pid) => return format!("{}: successor {pid} took over", name(trigger)),
                        Outcome::NoSuccessor => {
                            self.hold_pool(false);
                            tracing::info!(sock = %self.sock().display(), "SIGQUIT: no successor waiting");
                            return stopping("SIGQUIT");
                        }
                        Outcome::Failed(why) => {
                            self.hold_pool(false);
                            tracing::error!(why = %why, "{}: upgrade failed; still serving", name(trigger));
                        }
                    }
                    continue;
                }
            };
            if let Some((current, _)) = &running {
                tracing::warn!(
                    "{}: an upgrade ({}) is under way; ignored",
                    name(trigger),
                    name(*current)
                );
                continue;
            }
            match self.fds.get().cloned() {
                Some(fds) => {
                    let sock = self.sock();
                    if trigger == Trigger::Usr2 {
                        tracing::info!(sock = %sock.display(), "SIGUSR2: upgrading");
                    }
                    self.hold_pool(true);
                    let task =
                        tokio::task::spawn_blocking(move || handover::run(trigger, &sock, &fds));
                    running = Some((trigger, task));
                }
                None if trigger == Trigger::Quit => return stopping("SIGQUIT"),
                None => {
                    tracing::error!("SIGUSR2: upgrade failed; still serving: lb is still starting")
                }
            }
        }
    }
}

fn name(t: Trigger) -> &'static str {
    match t {
        Trigger::Usr2 => "SIGUSR2",
        Trigger::Quit => "SIGQUIT",
    }
}

/// A stop that is not a hand-over: systemd hears `STOPPING=1`.
fn stopping(signal: &str) -> String {
    super::systemd::stopping();
    signal.to_string()
}
