//! The `docker` provider: members are containers created through the Docker
//! Engine API (`bollard`), never the `docker` CLI.
//!
//! Each container is named `lb-pool-<member>` and labelled `lb.pool=<pool>`
//! and `lb.member=<member>`; it gets `CONTAINER_ID=<member>` and
//! `PORT=<container_port>` besides `env`, the `cpus` and `memory` limits
//! (those three and the image from its generation's [`Container`]: a reload
//! that changes them rolls the members over), a read-only root file system,
//! no capabilities and `no-new-privileges`. lb reaches it at its address on
//! `pool.network` (`"@self"`: the network of the container lb runs in, found
//! at connect), or, with `pool.publish`, at an ephemeral port the engine
//! publishes on that host address (lb running on the host rather than in a
//! container on the network). Stopping is the engine's stop (SIGTERM, SIGKILL
//! after the grace) then a forced remove. At start, every container labelled
//! `lb.pool=<pool>` is removed: pool names must be unique per engine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::own_container::{self, OWN_NETWORK};
use super::provider::{Container, Provider, ProviderError, Spec};
use crate::config::DockerConfig;

/// The label every member carries.
pub const POOL_LABEL: &str = "lb.pool";

/// Members as containers.
pub struct DockerProvider {
    docker: Docker,
    pool: String,
    cfg: DockerConfig,
    /// Member name → container id.
    ids: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn err(what: &str) -> impl Fn(bollard::errors::Error) -> ProviderError + '_ {
    move |e| ProviderError::new(what, e)
}

/// `pool.network = "@self"`: the one network of the container lb runs in.
async fn own_network(docker: &Docker) -> Result<String, ProviderError> {
    let what = format!("pool.network = {OWN_NETWORK:?}");
    let me = own_container::own_container()
        .ok_or_else(|| ProviderError(format!("{what}: cannot tell which container lb is in")))?;
    let info = docker.inspect_container(&me, None).await.map_err(|e| {
        ProviderError(format!(
            "{what}: lb does not seem to run in a container of this engine \
             (looked up {me:?}: {e}); name the network instead"
        ))
    })?;
    let mut nets: Vec<String> = info
        .network_settings
        .and_then(|n| n.networks)
        .map(|n| n.into_keys().collect())
        .unwrap_or_default();
    nets.sort();
    match nets.as_slice() {
        [one] if one != "host" && one != "none" => Ok(one.clone()),
        _ => Err(ProviderError(format!(
            "{what}: lb's container is on networks {nets:?}, not one that gives members \
             an address; name the network instead"
        ))),
    }
}

impl DockerProvider {
    /// Connects to `cfg.docker_host`, negotiates the API version and pings.
    pub async fn connect(pool: &str, cfg: &DockerConfig) -> Result<Self, ProviderError> {
        // Long enough for a stop that waits out the grace period.
        let timeout = 120;
        let host = &cfg.docker_host;
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(host, timeout, bollard::API_DEFAULT_VERSION)
        }
        .map_err(err(&format!("pool.docker_host {host}")))?;
        let engine_error = |e: bollard::errors::Error| {
            let hint = host
                .strip_prefix("unix://")
                .and_then(own_container::socket_hint)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            ProviderError(format!("Docker engine at {host}: {e}{hint}"))
        };
        let docker = docker.negotiate_version().await.map_err(&engine_error)?;
        docker.ping().await.map_err(&engine_error)?;
        let mut cfg = cfg.clone();
        if cfg.network == OWN_NETWORK {
            cfg.network = own_network(&docker).await?;
            tracing::info!(network = %cfg.network, "pool: members join lb's own network");
        }
        Ok(DockerProvider {
            docker,
            pool: pool.to_string(),
            cfg,
            ids: Mutex::new(HashMap::new()),
        })
    }

    fn id(&self, name: &str) -> Option<String> {
        lock(&self.ids).get(name).cloned()
    }

    fn body(&self, name: &str, spec: &Container) -> ContainerCreateBody {
        let c = &self.cfg;
        let port = format!("{}/tcp", c.container_port);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("CONTAINER_ID={name}"));
        env.push(format!("PORT={}", c.container_port));
        let port_bindings = c.publish.map(|ip| {
            HashMap::from([(
                port.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(ip.to_string()),
                    host_port: Some(String::new()), // the engine picks a free one
                }]),
            )])
        });
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(env),
            exposed_ports: Some(vec![port]),
            labels: Some(HashMap::from([
                (POOL_LABEL.to_string(), self.pool.clone()),
                ("lb.member".to_string(), name.to_string()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some(c.network.clone()),
                nano_cpus: (spec.cpus > 0.0).then_some((spec.cpus * 1e9) as i64),
                memory: (spec.memory > 0).then_some(spec.memory as i64),
                port_bindings,
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Where lb reaches container `id`: the published port, or its address
    /// on the network.
    async fn address(&self, id: &str) -> Result<SocketAddr, ProviderError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(err("inspect"))?;
        let net = info.network_settings.unwrap_or_default();
        if let Some(ip) = self.cfg.publish {
            let key = format!("{}/tcp", self.cfg.container_port);
            let port = net
                .ports
                .and_then(|mut p| p.remove(&key).flatten())
                .and_then(|b| b.into_iter().find_map(|b| b.host_port?.parse::<u16>().ok()))
                .ok_or_else(|| ProviderError(format!("the engine published no port for {key}")))?;
            return Ok(SocketAddr::new(ip, port));
        }
        let ip = net
            .networks
            .and_then(|mut n| n.remove(&self.cfg.network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                ProviderError(format!("no address on network {:?}", self.cfg.network))
            })?;
        Ok(SocketAddr::new(ip, self.cfg.container_port))
    }

    async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            tracing::warn!(container = id, error = %e, "pool: cannot remove container");
        }
    }
}

#[async_trait]
impl Provider for DockerProvider {
    async fn clean_leftovers(&self) -> Result<usize, ProviderError> {
        let filters = HashMap::from([("label", vec![format!("{POOL_LABEL}={}", self.pool)])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(err("list containers"))?;
        for c in &list {
            let Some(id) = &c.id else { continue };
            tracing::info!(container = %id, names = ?c.names, "pool: removing a container left by an earlier lb");
            self.remove(id).await;
        }
        Ok(list.len())
    }

    async fn start(&self, name: &str, spec: &Spec) -> Result<SocketAddr, ProviderError> {
        let Spec::Container(spec) = spec else {
            return Err(ProviderError(
                "the docker provider runs images, not commands".into(),
            ));
        };
        let cname = format!("lb-pool-{name}");
        let opts = CreateContainerOptionsBuilder::default()
            .name(&cname)
            .build();
        let created = self
            .docker
            .create_container(Some(opts), self.body(name, spec))
            .await
            .map_err(err(&format!("create {cname} from {}", spec.image)))?;
        let id = created.id;
        lock(&self.ids).insert(name.to_string(), id.clone());
        let started = self.docker.start_container(&id, None).await;
        let addr = match started {
            Ok(()) => self.address(&id).await,
            Err(e) => Err(ProviderError::new(&format!("start {cname}"), e)),
        };
        if addr.is_ok() {
            tracing::info!(member = name, container = %id, image = %spec.image, addr = ?addr, "pool: container started");
        }
        // On failure the core asks for a stop, which removes the container.
        addr
    }

    async fn exited(&self, name: &str) -> Option<String> {
        let id = self.id(name)?;
        match self.docker.inspect_container(&id, None).await {
            Ok(info) => {
                let s = info.state.unwrap_or_default();
                if s.running == Some(true) {
                    return None;
                }
                Some(format!(
                    "container {:?}, exit code {}{}",
                    s.status.map(|st| st.to_string()).unwrap_or_default(),
                    s.exit_code.unwrap_or(-1),
                    if s.oom_killed == Some(true) {
                        " (OOM-killed)"
                    } else {
                        ""
                    }
                ))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Some("container removed".into()),
            Err(e) => {
                tracing::debug!(member = name, error = %e, "pool: inspect failed; assuming it runs");
                None
            }
        }
    }

    fn cheap_liveness(&self) -> bool {
        false
    }

    async fn memory(&self, name: &str) -> Option<u64> {
        let id = self.id(name)?;
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let stats = self.docker.stats(&id, Some(opts)).next().await?.ok()?;
        let m = stats.memory_stats?;
        let usage = m.usage?;
        // As `docker stats` shows it: page cache that can be dropped does not count.
        let cache = m.stats.as_ref().and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
                .copied()
        });
        Some(usage.saturating_sub(cache.unwrap_or(0)))
    }

    async fn stop(&self, name: &str, grace: Duration) {
        let Some(id) = lock(&self.ids).remove(name) else {
            return;
        };
        let t = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(t).build();
        if let Err(e) = self.docker.stop_container(&id, Some(opts)).await {
            tracing::debug!(member = name, error = %e, "pool: stop failed; removing by force");
        }
        self.remove(&id).await;
    }
}
