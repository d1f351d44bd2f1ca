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
        if self.successor {
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.confirm());
        }
        let mut running: Option<(Trigger, JoinHandle<Outcome>)> = None;
        loop {
            let trigger = tokio::select! {
                _ = term.recv() => return "SIGTERM".into(),
                _ = int.recv() => return "SIGINT".into(),
                _ = quit.recv() => Trigger::Quit,
                _ = usr2.recv() => Trigger::Usr2,
                done = async { (&mut running.as_mut().expect("guarded").1).await }, if running.is_some() => {
                    let (trigger, _) = running.take().expect("guarded");
                    match done.unwrap_or_else(|e| Outcome::Failed(format!("the hand-over panicked: {e}"))) {
                        Outcome::TookOver(pid) => return format!("{}: successor {pid} took over", name(trigger)),
                        Outcome::NoSuccessor => {
                            tracing::info!(sock = %self.sock().display(), "SIGQUIT: no successor waiting");
                            return "SIGQUIT".into();
                        }
                        Outcome::Failed(why) => tracing::error!(why = %why,
                            "{}: upgrade failed; still serving", name(trigger)),
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
                    let task =
                        tokio::task::spawn_blocking(move || handover::run(trigger, &sock, &fds));
                    running = Some((trigger, task));
                }
                None if trigger == Trigger::Quit => return "SIGQUIT".into(),
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
