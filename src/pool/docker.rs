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
//!
//! A member's death is noticed through the engine's event stream (what
//! `docker events` follows): a task started at connect records the `die`
//! (exit code), `oom` and `destroy` events of the pool's containers, so
//! [`Provider::exited`] answers from that record and the pool asks it every
//! tick. A member lb is stopping is forgotten before the engine's stop, so
//! its `die` is not an exit. While the stream is down (the engine restarts,
//! its socket goes away) `exited` inspects the container again and the pool
//! asks only every `check_interval`; the task reconnects with a backoff and,
//! once back, inspects every member once before trusting the stream again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, EventMessage, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::core::member_number;
use super::own_container::{self, OWN_NETWORK};
use super::provider::{Adopted, Container, Provider, ProviderError, Spec};
use crate::config::DockerConfig;

/// The label every member carries.
pub const POOL_LABEL: &str = "lb.pool";

/// The label naming the member a container is.
const MEMBER_LABEL: &str = "lb.member";

/// First wait before following the engine's events again after the stream
/// broke; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnects; a stream that stayed up this long starts
/// over from [`RETRY_MIN`] when it breaks.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The stream is asked for events from this long before it was opened: the
/// engine replays them, so a death between the inspections that follow a
/// (re)connect and the engine's taking the subscription is not missed, with
/// room for the engine's clock to lag lb's. Older events of containers lb
/// still runs are true too; those of others are ignored.
const SINCE_SLACK: Duration = Duration::from_secs(5);

/// Members as containers.
pub struct DockerProvider {
    docker: Docker,
    pool: String,
    cfg: DockerConfig,
    shared: Arc<Shared>,
    /// The task following the engine's events; ends with the provider.
    watcher: tokio::task::AbortHandle,
}

/// What the provider and its event task share.
#[derive(Default)]
struct Shared {
    /// Member name → its container: from its create to the start of its stop.
    members: Mutex<HashMap<String, Member>>,
    /// The event stream is up and every member was inspected since it
    /// (re)connected: an exit not recorded in `members` did not happen.
    watching: AtomicBool,
}

struct Member {
    id: String,
    /// Why it exited, once the engine said so.
    exit: Option<String>,
    /// The engine reported it out of memory (before its `die`).
    oom: bool,
}

impl Shared {
    /// Notes `ev` (a `die`, `oom` or `destroy` of one of the pool's
    /// containers) against the member it is about, if lb still runs that
    /// container: not one it is stopping, nor one an earlier lb left.
    fn record(&self, ev: &EventMessage) {
        let Some(actor) = &ev.actor else { return };
        let Some(id) = actor.id.as_deref() else {
            return;
        };
        let attr = |k: &str| actor.attributes.as_ref().and_then(|a| a.get(k)).cloned();
        let mut members = lock(&self.members);
        let Some((name, m)) = members.iter_mut().find(|(_, m)| m.id == id) else {
            return;
        };
        match ev.action.as_deref() {
            Some("oom") => m.oom = true,
            Some("die") if m.exit.is_none() => {
                let code = attr("exitCode").unwrap_or_else(|| "?".into());
                let oom = if m.oom { " (OOM-killed)" } else { "" };
                m.exit = Some(format!("container died, exit code {code}{oom}"));
                tracing::debug!(member = %name, container = id, exit_code = %code, "pool: engine event: container died");
            }
            Some("destroy") if m.exit.is_none() => m.exit = Some("container removed".into()),
            _ => {}
        }
    }

    /// Records `why` as the exit of `name` if it still runs container `id`.
    fn record_exit(&self, name: &str, id: &str, why: String) {
        if let Some(m) = lock(&self.members).get_mut(name) {
            if m.id == id && m.exit.is_none() {
                m.exit = Some(why);
            }
        }
    }
}

/// Why container `id` is not running, or `None` while it runs; a container
/// that is gone counts as exited. An error: the engine did not answer.
async fn inspect_exit(docker: &Docker, id: &str) -> Result<Option<String>, bollard::errors::Error> {
    match docker.inspect_container(id, None).await {
        Ok(info) => {
            let s = info.state.unwrap_or_default();
            if s.running == Some(true) {
                return Ok(None);
            }
            Ok(Some(format!(
                "container {:?}, exit code {}{}",
                s.status.map(|st| st.to_string()).unwrap_or_default(),
                s.exit_code.unwrap_or(-1),
                if s.oom_killed == Some(true) {
                    " (OOM-killed)"
                } else {
                    ""
                }
            )))
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(Some("container removed".into())),
        Err(e) => Err(e),
    }
}

/// The event task's body: follows the engine's events for pool `pool`, and
/// follows them again after a pause when the stream breaks. One warning per
/// outage (retries log at debug), one line when the stream is back.
async fn watch(docker: Docker, pool: String, shared: Arc<Shared>) {
    let mut retry = RETRY_MIN;
    let mut outage = false;
    loop {
        let opened = Instant::now();
        let why = follow(&docker, &pool, &shared, || {
            if std::mem::take(&mut outage) {
                tracing::info!(pool = %pool, "pool: following the engine's events again; members re-checked");
            }
        })
        .await;
        shared.watching.store(false, Ordering::Release);
        if opened.elapsed() >= RETRY_MAX {
            retry = RETRY_MIN;
        }
        if outage {
            tracing::debug!(pool = %pool, error = %why, retry_in = ?retry, "pool: engine events still unavailable");
        } else {
            outage = true;
            tracing::warn!(pool = %pool, error = %why, retry_in = ?retry,
                "pool: lost the engine's event stream; checking members every pool.check_interval until it is back");
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// One connection's worth of [`watch`]: opens the stream, inspects every
/// member once (while recording what the stream already says), then records
/// events until the stream breaks; why it did. `up` runs once the members
/// were inspected and the record is trusted.
async fn follow(docker: &Docker, pool: &str, shared: &Shared, up: impl FnOnce()) -> String {
    let since = SystemTime::now()
        .checked_sub(SINCE_SLACK)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("label", vec![format!("{POOL_LABEL}={pool}")]),
        ("event", vec!["die".into(), "oom".into(), "destroy".into()]),
    ]);
    let opts = EventsOptionsBuilder::default()
        .since(&since)
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(opts));
    let recheck = async {
        let running: Vec<(String, String)> = lock(&shared.members)
            .iter()
            .filter(|(_, m)| m.exit.is_none())
            .map(|(n, m)| (n.clone(), m.id.clone()))
            .collect();
        for (name, id) in running {
            if let Some(why) = inspect_exit(docker, &id).await? {
                shared.record_exit(&name, &id, why);
            }
        }
        Ok::<(), bollard::errors::Error>(())
    };
    tokio::pin!(recheck);
    let mut up = Some(up);
    loop {
        tokio::select! {
            done = &mut recheck, if up.is_some() => match done {
                Ok(()) => {
                    shared.watching.store(true, Ordering::Release);
                    if let Some(up) = up.take() {
                        up();
                    }
                }
                Err(e) => return format!("inspect after connecting: {e}"),
            },
            ev = events.next() => match ev {
                Some(Ok(ev)) => shared.record(&ev),
                Some(Err(e)) => return e.to_string(),
                None => return "the engine ended the stream".into(),
            },
        }
    }
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
        let shared = Arc::new(Shared::default());
        let watcher = tokio::spawn(watch(docker.clone(), pool.to_string(), shared.clone()));
        Ok(DockerProvider {
            docker,
            pool: pool.to_string(),
            cfg,
            shared,
            watcher: watcher.abort_handle(),
        })
    }

    fn id(&self, name: &str) -> Option<String> {
        lock(&self.shared.members).get(name).map(|m| m.id.clone())
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
                (MEMBER_LABEL.to_string(), name.to_string()),
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
        self.address_in(info.network_settings.unwrap_or_default())
    }

    /// [`DockerProvider::address`] from an inspection's network settings.
    fn address_in(
        &self,
        net: bollard::models::NetworkSettings,
    ) -> Result<SocketAddr, ProviderError> {
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

    /// Records running container `id` as member `name`; its address and
    /// the spec it was created from (its image, `env` without the two lb
    /// sets, `cpus` and `memory`).
    async fn take(&self, name: &str, id: &str) -> Result<(SocketAddr, Spec), ProviderError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(err("inspect"))?;
        let addr = self.address_in(info.network_settings.unwrap_or_default())?;
        let config = info.config.unwrap_or_default();
        let host = info.host_config.unwrap_or_default();
        let env = config
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k != "CONTAINER_ID" && k != "PORT").then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        let spec = Spec::Container(Container {
            image: config.image.unwrap_or_default(),
            env,
            cpus: host.nano_cpus.unwrap_or(0) as f64 / 1e9,
            memory: host.memory.unwrap_or(0).max(0) as u64,
        });
        let member = Member {
            id: id.to_string(),
            exit: None,
            oom: false,
        };
        lock(&self.shared.members).insert(name.to_string(), member);
        Ok((addr, spec))
    }

    /// Every container with the pool's label, running or not.
    async fn containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, ProviderError> {
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
        Ok(list)
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
        let list = self.containers().await?;
        for c in &list {
            let Some(id) = &c.id else { continue };
            tracing::info!(container = %id, names = ?c.names, "pool: removing a container left by an earlier lb");
            self.remove(id).await;
        }
        Ok(list.len())
    }

    async fn adopt(&self) -> Result<Vec<Adopted>, ProviderError> {
        let list = self.containers().await?;
        let mut adopted = Vec::new();
        for c in &list {
            let Some(id) = &c.id else { continue };
            let member = c.labels.as_ref().and_then(|l| l.get(MEMBER_LABEL)).cloned();
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            let taken = match member {
                Some(name) if running => {
                    self.take(&name, id)
                        .await
                        .map(|(addr, spec)| Adopted { name, addr, spec })
                }
                _ => Err(ProviderError("not running".into())),
            };
            match taken {
                Ok(a) => {
                    tracing::info!(member = %a.name, container = %id, addr = %a.addr, "pool: container adopted");
                    adopted.push(a);
                }
                Err(e) => {
                    tracing::info!(container = %id, names = ?c.names, why = %e,
                        "pool: removing a container of the old lb process that cannot be adopted");
                    lock(&self.shared.members).retain(|_, m| &m.id != id);
                    self.remove(id).await;
                }
            }
        }
        // Oldest first: member numbers grow with every start.
        adopted.sort_by_key(|a| member_number(&self.pool, &a.name));
        Ok(adopted)
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
        let member = Member {
            id: id.clone(),
            exit: None,
            oom: false,
        };
        lock(&self.shared.members).insert(name.to_string(), member);
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
        let id = {
            let members = lock(&self.shared.members);
            let m = members.get(name)?;
            if let Some(why) = &m.exit {
                return Some(why.clone());
            }
            m.id.clone()
        };
        if self.shared.watching.load(Ordering::Acquire) {
            return None;
        }
        match inspect_exit(&self.docker, &id).await {
            Ok(why) => why,
            Err(e) => {
                tracing::debug!(member = name, error = %e, "pool: inspect failed; assuming it runs");
                None
            }
        }
    }

    /// While the event stream is up: [`Provider::exited`] is then a lookup.
    fn cheap_liveness(&self) -> bool {
        self.shared.watching.load(Ordering::Acquire)
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
        // Forgotten first: the `die` the stop causes is not an exit.
        let Some(Member { id, .. }) = lock(&self.shared.members).remove(name) else {
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

impl Drop for DockerProvider {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bollard::models::EventActor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    use super::*;

    fn shared(members: &[(&str, &str)]) -> Arc<Shared> {
        let s = Arc::new(Shared::default());
        for (name, id) in members {
            let m = Member {
                id: id.to_string(),
                exit: None,
                oom: false,
            };
            lock(&s.members).insert(name.to_string(), m);
        }
        s
    }

    fn exit(s: &Shared, name: &str) -> Option<String> {
        lock(&s.members).get(name).and_then(|m| m.exit.clone())
    }

    fn event(action: &str, id: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn events_record_the_exits_of_the_containers_lb_runs() {
        let s = shared(&[("p-1", "c1"), ("p-2", "c2"), ("p-3", "c3")]);
        s.record(&event("oom", "c1", &[]));
        s.record(&event("die", "c1", &[("exitCode", "137")]));
        assert_eq!(
            exit(&s, "p-1").as_deref(),
            Some("container died, exit code 137 (OOM-killed)")
        );
        // Removed: counts as an exit, and a later `die` does not overwrite it.
        s.record(&event("destroy", "c2", &[]));
        s.record(&event("die", "c2", &[("exitCode", "0")]));
        assert_eq!(exit(&s, "p-2").as_deref(), Some("container removed"));
        // A container lb does not run (an earlier lb's, one it stopped, the
        // earlier container of a member name) changes nothing.
        s.record(&event(
            "die",
            "c9",
            &[("exitCode", "1"), (MEMBER_LABEL, "p-3")],
        ));
        assert_eq!(exit(&s, "p-3"), None);
        lock(&s.members).remove("p-3");
        s.record(&event("die", "c3", &[("exitCode", "143")]));
        assert_eq!(lock(&s.members).len(), 2);
    }

    /// A fake engine: `/events` streams (the first connection until `drop`
    /// is notified, later ones for good, each sending `die` events pushed on
    /// `send`), `/containers/<id>/json` says `dead` or running.
    struct Engine {
        events: AtomicUsize,
        inspects: AtomicUsize,
        dead: AtomicBool,
        drop: Notify,
        send: Notify,
        die: Mutex<Option<String>>,
    }

    async fn head(conn: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&buf).to_string();
        text.split_whitespace().nth(1).map(String::from)
    }

    async fn serve(engine: Arc<Engine>, mut conn: TcpStream) {
        while let Some(path) = head(&mut conn).await {
            if path.contains("/events") {
                let n = engine.events.fetch_add(1, Ordering::SeqCst);
                let hdr = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                           Transfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(hdr.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = engine.drop.notified(), if n == 0 => return,
                        _ = engine.send.notified() => {
                            let id = lock(&engine.die).take().unwrap_or_default();
                            let line = format!(
                                "{{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{{\"ID\":\"{id}\",\
                                 \"Attributes\":{{\"exitCode\":\"42\"}}}}}}\n"
                            );
                            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                            if conn.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            let body = if path.contains("/containers/") {
                engine.inspects.fetch_add(1, Ordering::SeqCst);
                if engine.dead.load(Ordering::SeqCst) {
                    r#"{"State":{"Status":"exited","Running":false,"ExitCode":3,"OOMKilled":false}}"#
                } else {
                    r#"{"State":{"Status":"running","Running":true,"ExitCode":0}}"#
                }
            } else {
                "{}"
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_event_stream_reconnects_and_rechecks_members_by_inspect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = Arc::new(Engine {
            events: AtomicUsize::new(0),
            inspects: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            drop: Notify::new(),
            send: Notify::new(),
            die: Mutex::new(None),
        });
        let e = engine.clone();
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(e.clone(), conn));
            }
        });
        let docker =
            Docker::connect_with_http(&format!("http://{addr}"), 5, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let s = shared(&[("p-1", "c1"), ("p-2", "c2")]);
        let watcher = tokio::spawn(watch(docker, "p".into(), s.clone()));

        // Up: both members inspected once, both running.
        until("the stream up", || s.watching.load(Ordering::Acquire)).await;
        assert_eq!(engine.inspects.load(Ordering::SeqCst), 2);
        assert_eq!((exit(&s, "p-1"), exit(&s, "p-2")), (None, None));

        // The engine drops the stream; p-1's container dies meanwhile.
        engine.dead.store(true, Ordering::SeqCst);
        engine.drop.notify_one();
        until("the stream seen down", || {
            !s.watching.load(Ordering::Acquire)
        })
        .await;
        assert_eq!(engine.events.load(Ordering::SeqCst), 1);
        // Back after RETRY_MIN, with every member inspected again first.
        until("the stream back", || s.watching.load(Ordering::Acquire)).await;
        assert_eq!(engine.events.load(Ordering::SeqCst), 2);
        assert_eq!(engine.inspects.load(Ordering::SeqCst), 4);
        let exited = "container \"exited\", exit code 3";
        assert_eq!(exit(&s, "p-1").as_deref(), Some(exited));
        assert_eq!(exit(&s, "p-2").as_deref(), Some(exited));

        // Events on the new stream are recorded.
        lock(&s.members).insert(
            "p-3".into(),
            Member {
                id: "c3".into(),
                exit: None,
                oom: false,
            },
        );
        *lock(&engine.die) = Some("c3".into());
        engine.send.notify_one();
        until("p-3's die recorded", || exit(&s, "p-3").is_some()).await;
        assert_eq!(
            exit(&s, "p-3").as_deref(),
            Some("container died, exit code 42")
        );
        assert_eq!(engine.events.load(Ordering::SeqCst), 2);
        watcher.abort();
        server.abort();
    }
}
