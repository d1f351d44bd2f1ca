//! What a reload's `[pool]` changes in the running pool, decided without I/O:
//! which changed keys apply now and which wait for the next start, the
//! config the pool goes on with, and the spec a rolling update moves the
//! members to when the member template changed.
//!
//! - *Policy* keys (sizes, capacity, timings, recycling limits, weight,
//!   `allow_rollout_command`) apply at once; the core converges to them
//!   ([`super::Core::reconfigure`]).
//! - *Template* keys (`command`; `image`, `env`, `cpus`, `memory`) start a
//!   rolling update, as `POST /admin/pool/rollout` does.
//! - *Restart* keys (`provider`, `name`, `ports`, `network`,
//!   `container_port`, `publish`, `docker_host`) name where and how members
//!   run; the running provider keeps its values until lb restarts.
//!
//! Runtime changes and the file: a key's file value wins only when the file
//! changed it. A size set by `PUT /admin/pool/size` (or by autoscaling)
//! stays across a reload that leaves `size` alone, moved into the new
//! `min_size..=max_size`; an image rolled out through the API stays across
//! a reload that leaves `image` alone.

use super::provider::{Container, Spec};
use crate::config::{DockerConfig, PoolConfig, PoolProvider};

/// A reload's effect on the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The file's `[pool]` with the restart keys kept from the running pool.
    pub config: PoolConfig,
    /// Changed keys that apply now (`"pool.size"`, `"pool.command"`, ...).
    pub live: Vec<&'static str>,
    /// Changed keys that apply at the next restart.
    pub restart: Vec<&'static str>,
}

/// Compares the running pool's config with the file's.
pub fn plan(running: &PoolConfig, file: &PoolConfig) -> Plan {
    let mut live = Vec::new();
    let mut restart = Vec::new();
    fn note(changed: bool, key: &'static str, list: &mut Vec<&'static str>) {
        if changed {
            list.push(key);
        }
    }
    note(running.name != file.name, "pool.name", &mut restart);
    let policy = [
        (running.size != file.size, "pool.size"),
        (running.min_size != file.min_size, "pool.min_size"),
        (running.max_size != file.max_size, "pool.max_size"),
        (running.weight != file.weight, "pool.weight"),
        (
            running.max_in_flight != file.max_in_flight,
            "pool.max_in_flight",
        ),
        (
            running.scale_up_after != file.scale_up_after,
            "pool.scale_up_after",
        ),
        (
            running.idle_timeout != file.idle_timeout,
            "pool.idle_timeout",
        ),
        (running.max_age != file.max_age, "pool.max_age"),
        (running.max_memory != file.max_memory, "pool.max_memory"),
        (
            running.check_interval != file.check_interval,
            "pool.check_interval",
        ),
        (
            running.drain_timeout != file.drain_timeout,
            "pool.drain_timeout",
        ),
        (
            running.start_timeout != file.start_timeout,
            "pool.start_timeout",
        ),
        (
            running.allow_rollout_command != file.allow_rollout_command,
            "pool.allow_rollout_command",
        ),
    ];
    for (changed, key) in policy {
        note(changed, key, &mut live);
    }
    let provider = match (&running.provider, &file.provider) {
        (
            PoolProvider::Process {
                command: c0,
                ports: p0,
            },
            PoolProvider::Process {
                command: c1,
                ports: p1,
            },
        ) => {
            note(c0 != c1, "pool.command", &mut live);
            note(p0 != p1, "pool.ports", &mut restart);
            PoolProvider::Process {
                command: c1.clone(),
                ports: p0.clone(),
            }
        }
        (PoolProvider::Docker(d0), PoolProvider::Docker(d1)) => {
            PoolProvider::Docker(docker(d0, d1, &mut live, &mut restart))
        }
        _ => {
            restart.push("pool.provider");
            running.provider.clone()
        }
    };
    Plan {
        config: PoolConfig {
            provider,
            name: running.name.clone(),
            ..file.clone()
        },
        live,
        restart,
    }
}

fn docker(
    d0: &DockerConfig,
    d1: &DockerConfig,
    live: &mut Vec<&'static str>,
    restart: &mut Vec<&'static str>,
) -> DockerConfig {
    let template = [
        (d0.image != d1.image, "pool.image"),
        (d0.env != d1.env, "pool.env"),
        (d0.cpus != d1.cpus, "pool.cpus"),
        (d0.memory != d1.memory, "pool.memory"),
    ];
    let place = [
        (d0.network != d1.network, "pool.network"),
        (
            d0.container_port != d1.container_port,
            "pool.container_port",
        ),
        (d0.publish != d1.publish, "pool.publish"),
        (d0.docker_host != d1.docker_host, "pool.docker_host"),
    ];
    live.extend(template.iter().filter(|(c, _)| *c).map(|(_, k)| *k));
    restart.extend(place.iter().filter(|(c, _)| *c).map(|(_, k)| *k));
    DockerConfig {
        image: d1.image.clone(),
        env: d1.env.clone(),
        cpus: d1.cpus,
        memory: d1.memory,
        ..d0.clone()
    }
}

/// The spec to roll out after a reload from `old` to `new` (both as
/// [`Plan::config`] makes them), or `None` when members may keep `current`
/// (the spec new members start from now). Each template key the file
/// changed replaces that part of `current`; the rest of `current` stays, so
/// an image rolled out through the API survives a reload that changed only
/// `env`.
pub fn next_spec(current: &Spec, old: &PoolConfig, new: &PoolConfig) -> Option<Spec> {
    let next = match (current, &old.provider, &new.provider) {
        (
            Spec::Command(_),
            PoolProvider::Process { command: c0, .. },
            PoolProvider::Process { command: c1, .. },
        ) if c0 != c1 => Spec::Command(c1.clone()),
        (Spec::Container(cur), PoolProvider::Docker(d0), PoolProvider::Docker(d1)) => {
            Spec::Container(Container {
                image: file_wins(&d0.image, &d1.image, &cur.image),
                env: file_wins(&d0.env, &d1.env, &cur.env),
                cpus: file_wins(&d0.cpus, &d1.cpus, &cur.cpus),
                memory: file_wins(&d0.memory, &d1.memory, &cur.memory),
            })
        }
        _ => return None,
    };
    (next != *current).then_some(next)
}

/// The file's value if the file changed it (`old` → `new`), else the
/// running one.
fn file_wins<T: PartialEq + Clone>(old: &T, new: &T, running: &T) -> T {
    if old != new { new } else { running }.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CMD: &str = "command = [\"app\", \"--listen\", \"127.0.0.1:{port}\"]";
    const DOCKER: &str = "provider = \"docker\"\nimage = \"lb-app:v1\"";

    fn cfg(body: &str) -> PoolConfig {
        Config::from_toml(&format!("[pool]\n{body}\n"))
            .unwrap()
            .pool
            .unwrap()
    }

    #[test]
    fn an_unchanged_pool_changes_nothing() {
        let c = cfg(&format!("{CMD}\nsize = 3\nmax_size = 5"));
        let p = plan(&c, &c);
        assert_eq!((p.live.len(), p.restart.len()), (0, 0));
        assert_eq!(p.config, c);
        assert_eq!(next_spec(&Spec::of(&c), &c, &p.config), None);
    }

    #[test]
    fn policy_and_command_apply_live_ports_and_name_wait() {
        let old = cfg(&format!(
            "{CMD}\nsize = 2\nmin_size = 2\nmax_size = 4\nports = \"3100-3199\""
        ));
        let new = cfg(
            "command = [\"app\", \"--id\", \"v2\", \"--listen\", \"127.0.0.1:{port}\"]\n\
             name = \"web\"\nsize = 3\nmin_size = 2\nmax_size = 4\nmax_age = \"1h\"\nweight = 5\n\
             ports = \"4000-4099\"",
        );
        let p = plan(&old, &new);
        assert_eq!(
            p.live,
            ["pool.size", "pool.weight", "pool.max_age", "pool.command"]
        );
        assert_eq!(p.restart, ["pool.name", "pool.ports"]);
        assert_eq!(p.config.name, "app", "the running name stays");
        let PoolProvider::Process { command, ports } = &p.config.provider else {
            panic!("process")
        };
        assert_eq!(*ports, 3100..=3199, "the running ports stay");
        assert_eq!(command[2], "v2");
        assert_eq!((p.config.size, p.config.weight), (3, 5));
        let next = next_spec(&Spec::of(&old), &old, &p.config);
        assert_eq!(next, Some(Spec::of(&new)));
    }

    #[test]
    fn another_provider_waits_for_a_restart_and_rolls_nothing() {
        let old = cfg(CMD);
        let new = cfg(&format!("{DOCKER}\nsize = 3\nmax_size = 3"));
        let p = plan(&old, &new);
        assert_eq!(p.restart, ["pool.provider"]);
        // min_size defaults to size.
        assert_eq!(p.live, ["pool.size", "pool.min_size", "pool.max_size"]);
        assert_eq!(p.config.provider, old.provider);
        assert_eq!(next_spec(&Spec::of(&old), &old, &p.config), None);
    }

    #[test]
    fn docker_template_keys_roll_and_placement_keys_wait() {
        let old = cfg(DOCKER);
        let new = cfg(&format!(
            "{DOCKER}\nenv = {{ MODE = \"x\" }}\ncpus = 0.5\nnetwork = \"lbnet\"\n\
             container_port = 8080\npublish = \"127.0.0.1\""
        ));
        let p = plan(&old, &new);
        assert_eq!(p.live, ["pool.env", "pool.cpus"]);
        assert_eq!(
            p.restart,
            ["pool.network", "pool.container_port", "pool.publish"]
        );
        let PoolProvider::Docker(d) = &p.config.provider else {
            panic!("docker")
        };
        assert_eq!((d.network.as_str(), d.container_port), ("bridge", 3000));
        assert_eq!((d.cpus, d.env.len()), (0.5, 1));
    }

    #[test]
    fn a_template_key_the_file_left_alone_keeps_its_runtime_value() {
        let old = cfg(DOCKER);
        // The operator rolled out v2 through the API; the file still says v1.
        let Spec::Container(c) = Spec::of(&old) else {
            panic!("container")
        };
        let running = Spec::Container(Container {
            image: "lb-app:v2".into(),
            ..c
        });
        let same = plan(&old, &old).config;
        assert_eq!(next_spec(&running, &old, &same), None, "no roll back to v1");
        // The file changes only env: v2 stays, with the new env.
        let new = plan(&old, &cfg(&format!("{DOCKER}\nenv = {{ A = \"1\" }}"))).config;
        let Some(Spec::Container(next)) = next_spec(&running, &old, &new) else {
            panic!("a rollout")
        };
        assert_eq!(next.image, "lb-app:v2");
        assert_eq!(next.env.get("A").map(String::as_str), Some("1"));
        // The file now names what already runs: nothing to roll.
        let v2 = plan(&old, &cfg("provider = \"docker\"\nimage = \"lb-app:v2\"")).config;
        assert_eq!(next_spec(&running, &old, &v2), None);
    }
}
