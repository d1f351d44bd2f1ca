//! The admin API as a Pingora service that keeps its listening socket in
//! Pingora's table of listening fds, as Pingora's own listeners do: bound
//! here and added to the table, or taken from it when a successor inherited
//! it. An upgrade then hands it over with the proxy's sockets. Starting, it
//! also gives [`Upgrade`] the table (what a hand-over sends).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

use super::Upgrade;
use crate::admin::Admin;

/// The admin API on `admin.listen`, its socket in Pingora's table.
pub struct AdminService {
    admin: Admin,
    listen: SocketAddr,
    upgrade: Arc<Upgrade>,
}

impl AdminService {
    /// `admin` served on `listen`.
    pub fn new(admin: Admin, listen: SocketAddr, upgrade: Arc<Upgrade>) -> Self {
        AdminService {
            admin,
            listen,
            upgrade,
        }
    }
}

#[async_trait]
impl ServiceWithDependents for AdminService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        ready.notify_ready();
        if let Some(fds) = &fds {
            self.upgrade.set_fds(fds.clone());
        }
        // The inherited socket, else a new one (added to the table).
        let listener = crate::proxy::listen::listener(self.listen, fds.as_ref()).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        });
        match listener {
            Ok(l) => {
                self.upgrade.set_admin_listening();
                self.admin.serve(l, shutdown).await;
            }
            Err(e) => tracing::error!(listen = %self.listen, error = %e, "admin: cannot listen"),
        }
    }

    fn name(&self) -> &str {
        "admin"
    }

    /// One thread, as a background service has.
    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    /// Its key in the table: Pingora closes inherited sockets no service claims.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.listen.to_string()])
    }
}
