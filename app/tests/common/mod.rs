//! Shared helpers for the in-process tests: start an app on 127.0.0.1:0 with
//! `serve`, talk to it with reqwest, stop it within a time bound.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use app::{App, Options};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound for any single step, so a broken test fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(10);

/// An app served in-process.
pub struct Running {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

/// Binds 127.0.0.1:0 and serves a new app with `opts` until [`Running::stop`].
pub async fn start(opts: Options) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let app = App::new(opts);
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app::serve(listener, Arc::clone(&app), async move {
        let _ = rx.await;
    }));
    Running {
        app,
        addr,
        base: format!("http://{addr}"),
        stop: Some(tx),
        handle,
    }
}

impl Running {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Fires the shutdown future without waiting.
    pub fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Fires the shutdown future and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) {
        self.signal();
        self.join().await;
    }

    /// Waits (bounded) for `serve` to return, and checks it returned Ok.
    pub async fn join(self) {
        tokio::time::timeout(STEP, self.handle)
            .await
            .expect("serve returned in time")
            .expect("serve task did not panic")
            .expect("serve returned Ok");
    }
}

/// A client with a per-request time bound.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("client")
}

/// Options with the given id and everything else default.
pub fn opts(id: &str) -> Options {
    Options {
        id: id.to_owned(),
        ..Options::default()
    }
}
