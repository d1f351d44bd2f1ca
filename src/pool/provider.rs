//! What the pool needs from whatever runs its members: start one, tell whether
//! it is still running and how much memory it uses, stop it, and clean up
//! what a killed lb left behind. One implementation per file
//! ([`super::process`], [`super::docker`]); the core never sees which.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{PoolConfig, PoolProvider};

/// What a member runs; one per generation (the config's, then each rollout's
/// or reload's).
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// argv with `{name}` and `{port}` placeholders (process provider).
    Command(Vec<String>),
    /// What a container is created from (docker provider).
    Container(Container),
}

/// The per-container part of `[pool]` for the docker provider: what a reload
/// can change by rolling members over. Where members run (`network`,
/// `container_port`, `publish`, `docker_host`) belongs to the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Image name (never pulled).
    pub image: String,
    /// `pool.env`.
    pub env: BTreeMap<String, String>,
    /// CPU limit in cores (0 = none).
    pub cpus: f64,
    /// Memory limit in bytes (0 = none).
    pub memory: u64,
}

impl Spec {
    /// What `[pool]` says members run.
    pub fn of(cfg: &PoolConfig) -> Spec {
        match &cfg.provider {
            PoolProvider::Process { command, .. } => Spec::Command(command.clone()),
            PoolProvider::Docker(d) => Spec::Container(Container {
                image: d.image.clone(),
                env: d.env.clone(),
                cpus: d.cpus,
                memory: d.memory,
            }),
        }
    }
}

/// A member taken over from the old lb process ([`Provider::adopt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Adopted {
    /// Its member name (`<pool>-<n>`).
    pub name: String,
    /// Where lb reaches it.
    pub addr: SocketAddr,
    /// What it runs.
    pub spec: Spec,
}

/// A provider's failure, as one line for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

impl ProviderError {
    /// An error from anything displayable, with context.
    pub fn new(what: &str, e: impl std::fmt::Display) -> Self {
        ProviderError(format!("{what}: {e}"))
    }
}

/// Runs members. Members are named by the core; the provider keeps whatever
/// it needs per name (a child process, a container id).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Removes members that an earlier lb with this pool name left running
    /// (it was killed before it could stop them); how many it removed.
    async fn clean_leftovers(&self) -> Result<usize, ProviderError>;

    /// An upgrade: takes over the members the old lb process runs (they
    /// outlive it), oldest first, each with its address and what it runs,
    /// and removes what of them no longer runs. The process provider's
    /// members are the old process's children and end with it: it adopts
    /// none, and the new process starts its own.
    async fn adopt(&self) -> Result<Vec<Adopted>, ProviderError> {
        Ok(Vec::new())
    }

    /// Starts member `name` from `spec`; the address lb reaches it at. The
    /// member may still be booting: the pool probes it before serving.
    async fn start(&self, name: &str, spec: &Spec) -> Result<SocketAddr, ProviderError>;

    /// `Some(why)` once the member has exited by itself.
    async fn exited(&self, name: &str) -> Option<String>;

    /// Is [`Provider::exited`] cheap enough to ask every tick (a `waitpid`, a
    /// look at what the engine's events said), or only every
    /// `check_interval` (an API call)? Asked every tick: the docker
    /// provider's answer changes with its event stream.
    fn cheap_liveness(&self) -> bool;

    /// Resident memory of the member, bytes.
    async fn memory(&self, name: &str) -> Option<u64>;

    /// Stops the member: a graceful stop, a kill after `grace`, then removes
    /// whatever is left of it. Never fails: problems are logged.
    async fn stop(&self, name: &str, grace: Duration);
}
