//! `[pool]` → [`PoolConfig`]: sizes, durations, the provider and its keys.
//! Keys of the other provider are errors rather than silently ignored, so a
//! `provider = "docker"` pool with a leftover `command` says so.

use std::time::Duration;

use super::raw::{RawConfig, RawPool, RawProvider};
use super::validate::{duration, int_in, invalid, valid_name, ConfigError};
use super::{BackendConfig, DockerConfig, PoolConfig, PoolProvider, MAX_BACKENDS};

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);
/// Room for the member number: `<name>-<n>` must stay a valid backend name.
const MAX_POOL_NAME: usize = 50;

/// Validates `[pool]` (if any) against the static `backends`.
pub(super) fn pool(
    r: &RawConfig,
    backends: &[BackendConfig],
) -> Result<Option<PoolConfig>, ConfigError> {
    let Some(p) = &r.pool else {
        return Ok(None);
    };
    if !valid_name(&p.name) || p.name.len() > MAX_POOL_NAME {
        return Err(invalid(
            "pool.name",
            format!("{:?}", p.name),
            &format!("must match [A-Za-z0-9_.-]{{1,{MAX_POOL_NAME}}}"),
        ));
    }
    let size = int_in("pool.size", p.size, 1, MAX_BACKENDS as i64)?;
    let min_size = int_in("pool.min_size", p.min_size.unwrap_or(p.size), 1, p.size)?;
    // Members being replaced and their replacements are in the snapshot at
    // once: keep two per member within the eligibility bit set.
    let room = (MAX_BACKENDS - backends.len()) / 2;
    let max = p.max_size.unwrap_or(p.size);
    if max < p.size {
        return Err(invalid(
            "pool.max_size",
            max,
            &format!("must be at least pool.size ({})", p.size),
        ));
    }
    if max > room as i64 {
        let key = if p.max_size.is_some() {
            "pool.max_size"
        } else {
            "pool.size"
        };
        return Err(invalid(
            key,
            max,
            &format!(
                "exceeds {room}: {MAX_BACKENDS} backends at most, {} static, and each member \
                 may briefly have a replacement beside it",
                backends.len()
            ),
        ));
    }
    let max_size = max as u32;
    let pool = PoolConfig {
        provider: provider(p)?,
        name: p.name.clone(),
        size,
        min_size,
        max_size,
        weight: int_in("pool.weight", p.weight, 1, super::MAX_WEIGHT as i64)?,
        max_in_flight: int_in("pool.max_in_flight", p.max_in_flight, 0, 1_000_000)?,
        scale_up_after: duration("pool.scale_up_after", &p.scale_up_after, 10 * MS, DAY)?,
        idle_timeout: duration("pool.idle_timeout", &p.idle_timeout, 10 * MS, 30 * DAY)?,
        max_age: Some(duration(
            "pool.max_age",
            &p.max_age,
            Duration::ZERO,
            365 * DAY,
        )?)
        .filter(|d| !d.is_zero()),
        max_memory: Some(bytes("pool.max_memory", &p.max_memory)?).filter(|b| *b > 0),
        check_interval: duration("pool.check_interval", &p.check_interval, 10 * MS, DAY)?,
        drain_timeout: duration(
            "pool.drain_timeout",
            &p.drain_timeout,
            Duration::ZERO,
            super::MAX_DRAIN_TIMEOUT,
        )?,
        start_timeout: duration("pool.start_timeout", &p.start_timeout, 10 * MS, DAY)?,
        allow_rollout_command: p.allow_rollout_command,
    };
    for (i, b) in backends.iter().enumerate() {
        if pool.owns_name(&b.name) {
            return Err(invalid(
                format!("backends[{i}].name"),
                format!("{:?}", b.name),
                &format!("collides with the names of pool {:?} members", pool.name),
            ));
        }
    }
    Ok(Some(pool))
}

fn provider(p: &RawPool) -> Result<PoolProvider, ConfigError> {
    let (mine, theirs): (&str, &[(&str, bool)]) = match p.provider {
        RawProvider::Process => (
            "process",
            &[
                ("image", p.image.is_some()),
                ("network", p.network.is_some()),
                ("container_port", p.container_port.is_some()),
                ("cpus", p.cpus.is_some()),
                ("memory", p.memory.is_some()),
                ("env", p.env.is_some()),
                ("docker_host", p.docker_host.is_some()),
                ("publish", p.publish.is_some()),
            ],
        ),
        RawProvider::Docker => (
            "docker",
            &[
                ("command", p.command.is_some()),
                ("ports", p.ports.is_some()),
                ("allow_rollout_command", p.allow_rollout_command),
            ],
        ),
    };
    if let Some((key, _)) = theirs.iter().find(|(_, set)| *set) {
        return Err(invalid(
            format!("pool.{key}"),
            "(set)",
            &format!("does not apply to provider = \"{mine}\""),
        ));
    }
    match p.provider {
        RawProvider::Process => process(p),
        RawProvider::Docker => docker(p).map(PoolProvider::Docker),
    }
}

fn process(p: &RawPool) -> Result<PoolProvider, ConfigError> {
    let command = p.command.clone().unwrap_or_default();
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(invalid(
            "pool.command",
            format!("{command:?}"),
            "must be a non-empty argv list, e.g. [\"app\", \"--listen\", \"127.0.0.1:{port}\"]",
        ));
    }
    if !command.iter().any(|a| a.contains("{port}")) {
        return Err(invalid(
            "pool.command",
            format!("{command:?}"),
            "must pass {port} to the member (lb reaches it at 127.0.0.1:{port})",
        ));
    }
    let text = p.ports.clone().unwrap_or_else(|| "3100-3199".into());
    let bad = || {
        invalid(
            "pool.ports",
            format!("{text:?}"),
            "is not a port range \"FIRST-LAST\" within 1..=65535 (e.g. \"3100-3199\")",
        )
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok(PoolProvider::Process {
        command,
        ports: a..=b,
    })
}

fn docker(p: &RawPool) -> Result<DockerConfig, ConfigError> {
    let image = p.image.clone().unwrap_or_default();
    if image.trim().is_empty() {
        return Err(invalid(
            "pool.image",
            format!("{image:?}"),
            "must name a local image (e.g. \"lb-app:local\")",
        ));
    }
    let cpus = p.cpus.unwrap_or(0.0);
    if !(0.0..=1024.0).contains(&cpus) {
        return Err(invalid(
            "pool.cpus",
            cpus,
            "is out of range 0..=1024 (0 = no limit)",
        ));
    }
    let memory = bytes("pool.memory", p.memory.as_deref().unwrap_or("0"))?;
    if memory != 0 && memory < 6 << 20 {
        // The engine refuses smaller limits.
        return Err(invalid(
            "pool.memory",
            format!("{:?}", p.memory.as_deref().unwrap_or("")),
            "is below Docker's minimum of 6m (or 0 = no limit)",
        ));
    }
    let docker_host = p
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    if !(docker_host.starts_with("unix://") || docker_host.starts_with("tcp://")) {
        return Err(invalid(
            "pool.docker_host",
            format!("{docker_host:?}"),
            "must be unix:///path/to/docker.sock or tcp://host:port",
        ));
    }
    for (k, _) in p.env.iter().flatten() {
        if k.is_empty() || k.contains('=') {
            return Err(invalid(
                format!("pool.env.{k}"),
                format!("{k:?}"),
                "is not an environment variable name",
            ));
        }
    }
    let publish = match &p.publish {
        None => None,
        Some(ip) => Some(ip.parse().map_err(|_| {
            invalid(
                "pool.publish",
                format!("{ip:?}"),
                "is not an IP address to publish members on (e.g. \"127.0.0.1\")",
            )
        })?),
    };
    Ok(DockerConfig {
        image,
        publish,
        network: p.network.clone().unwrap_or_else(|| "bridge".into()),
        container_port: int_in(
            "pool.container_port",
            p.container_port.unwrap_or(3000),
            1,
            65535,
        )? as u16,
        cpus,
        memory,
        env: p.env.clone().unwrap_or_default(),
        docker_host,
    })
}

/// A byte size: `"500MiB"`, `"512m"`, `"1g"`, `"0"`. Units count in powers of
/// 1024 whichever way they are written, as Docker's `--memory` does.
fn bytes(key: &str, s: &str) -> Result<u64, ConfigError> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|_| {
            invalid(
                key,
                format!("{s:?}"),
                "is not a size (e.g. \"500MiB\", \"512m\", \"1g\"; 0 = off)",
            )
        })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PoolProvider};

    fn pool(body: &str) -> Result<Config, String> {
        Config::from_toml(&format!("[pool]\n{body}\n")).map_err(|e| e.to_string())
    }

    const CMD: &str = "command = [\"app\", \"--listen\", \"127.0.0.1:{port}\"]";

    #[test]
    fn defaults_make_a_fixed_size_process_pool() {
        let c = pool(CMD).unwrap();
        let p = c.pool.unwrap();
        assert_eq!((p.size, p.min_size, p.max_size), (2, 2, 2));
        assert_eq!(p.max_age, None);
        assert_eq!(p.max_memory, None);
        assert!(
            !p.allow_rollout_command,
            "command rollouts are off by default"
        );
        assert!(
            matches!(p.provider, PoolProvider::Process { ref ports, .. } if *ports == (3100..=3199))
        );
        assert!(c.backends.is_empty());
    }

    #[test]
    fn sizes_units_and_names() {
        let c = pool(&format!(
            "{CMD}\nsize = 3\nmin_size = 2\nmax_size = 6\nmax_memory = \"500MiB\"\nmax_age = \"1h\""
        ))
        .unwrap();
        let p = c.pool.unwrap();
        assert_eq!(p.max_memory, Some(500 << 20));
        assert!(p.owns_name("app-12") && !p.owns_name("app-") && !p.owns_name("app-x1"));
        assert!(!p.owns_name("apps-1"));
    }

    #[test]
    fn errors_name_key_value_and_rule() {
        let cases = [
            (
                format!("{CMD}\nsize = 3\nmin_size = 4"),
                "pool.min_size: 4 is out of range 1..=3",
            ),
            (
                format!("{CMD}\nsize = 3\nmax_size = 2"),
                "pool.max_size: 2 must be at least pool.size (3)",
            ),
            (
                format!("{CMD}\nmax_size = 40"),
                "pool.max_size: 40 exceeds 32",
            ),
            ("command = [\"app\"]".into(), "must pass {port}"),
            (
                format!("{CMD}\nports = \"9-3\""),
                "pool.ports: \"9-3\" is not a port range",
            ),
            (
                format!("{CMD}\nimage = \"x\""),
                "pool.image: (set) does not apply to provider = \"process\"",
            ),
            (
                "provider = \"docker\"\nimage = \"a\"\nallow_rollout_command = true".into(),
                "pool.allow_rollout_command: (set) does not apply to provider = \"docker\"",
            ),
            (
                format!("{CMD}\nmax_memory = \"lots\""),
                "pool.max_memory: \"lots\" is not a size",
            ),
            (
                "provider = \"docker\"".into(),
                "pool.image: \"\" must name a local image",
            ),
            (
                "provider = \"docker\"\nimage = \"a\"\nmemory = \"1m\"".into(),
                "below Docker's minimum",
            ),
            (
                format!("{CMD}\nname = \"bad name\""),
                "pool.name: \"bad name\" must match",
            ),
        ];
        for (body, want) in cases {
            let e = pool(&body).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        let clash =
            format!("[[backends]]\nname = \"app-1\"\naddr = \"127.0.0.1:1\"\n[pool]\n{CMD}\n");
        let e = Config::from_toml(&clash).unwrap_err().to_string();
        assert!(e.contains("backends[0].name: \"app-1\" collides"), "{e}");
    }

    /// The commented `[pool]` block of the reference lb.toml, uncommented:
    /// its keys (common ones plus one provider's) must parse, to the
    /// defaults the comments claim.
    fn reference_block(provider: &str) -> String {
        let text = include_str!("../../lb.toml");
        let start = text
            .find("\n# [pool]\n")
            .expect("a [pool] block in lb.toml");
        let mut section = "common";
        let mut out = String::from("[pool]\n");
        for line in text[start + 1..].lines().skip(1) {
            let Some(l) = line.strip_prefix("# ") else {
                break;
            };
            if let Some(rest) = l.strip_prefix("-- provider = \"") {
                section = if rest.starts_with("process") {
                    "process"
                } else {
                    "docker"
                };
                continue;
            }
            let is_key = l.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
            if is_key && (section == "common" || section == provider) {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.replace(
            "provider = \"process\"",
            &format!("provider = \"{provider}\""),
        )
    }

    #[test]
    fn the_reference_config_documents_every_key_with_its_default() {
        let process = reference_block("process");
        let c = Config::from_toml(&process).unwrap_or_else(|e| panic!("{e}\n{process}"));
        let p = c.pool.unwrap();
        let mut defaults = pool(CMD).unwrap().pool.unwrap();
        defaults.provider = p.provider.clone(); // the command is an example
        assert_eq!(p, defaults, "lb.toml's [pool] values are the defaults");
        let PoolProvider::Process { ports, .. } = &p.provider else {
            panic!("process")
        };
        assert_eq!(*ports, 3100..=3199);
        let docker = reference_block("docker");
        let c = Config::from_toml(&docker).unwrap_or_else(|e| panic!("{e}\n{docker}"));
        assert!(matches!(c.pool.unwrap().provider, PoolProvider::Docker(_)));
        // Every key of the raw table appears in one of the two.
        for key in [
            "provider",
            "name",
            "size",
            "min_size",
            "max_size",
            "weight",
            "max_in_flight",
            "scale_up_after",
            "idle_timeout",
            "max_age",
            "max_memory",
            "check_interval",
            "drain_timeout",
            "start_timeout",
            "command",
            "ports",
            "allow_rollout_command",
            "image",
            "network",
            "container_port",
            "publish",
            "cpus",
            "memory",
            "env",
            "docker_host",
        ] {
            let line = format!("\n{key} = ");
            assert!(
                process.contains(&line) || docker.contains(&line),
                "{key} undocumented"
            );
        }
    }

    #[test]
    fn docker_keys() {
        let c = pool(
            "provider = \"docker\"\nimage = \"lb-app:local\"\nmemory = \"512m\"\ncpus = 0.5\n\
             env = { PERFORMANCE_MODE = \"normal\" }\ndocker_host = \"unix:///run/d.sock\"",
        )
        .unwrap();
        let PoolProvider::Docker(d) = c.pool.unwrap().provider else {
            panic!("docker")
        };
        assert_eq!(d.memory, 512 << 20);
        assert_eq!(d.network, "bridge");
        assert_eq!(d.container_port, 3000);
        assert_eq!(
            d.env.get("PERFORMANCE_MODE").map(String::as_str),
            Some("normal")
        );
    }
}
