//! The shipped pool configs: examples/pool.toml and deploy/pool/lb.toml pass
//! `lb check`; the deploy/pool compose file gives lb the Docker socket and
//! the pool lb's own network.

use crate::common::*;

#[test]
fn shipped_pool_configs_pass_lb_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["examples/pool.toml", "deploy/pool/lb.toml"] {
        // Certificate paths inside the container point at throwaway files.
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let (dir, text, _) = crate::common::tls::with_certs(&text);
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = lb_check(&path);
        assert_eq!(code, 0, "{f}: {err}");
        assert!(out.contains("pool          app-N: "), "{f}: {out}");
    }
}

#[test]
fn the_compose_variant_gives_lb_the_socket_and_the_pool_its_network() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/pool/docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let lb = &compose["services"]["lb"];
    let volumes: Vec<&str> = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(volumes.contains(&"/var/run/docker.sock:/var/run/docker.sock"));
    assert!(volumes.contains(&"${LB_CONFIG:-./lb.toml}:/etc/lb/lb.toml:ro"));
    assert!(text.contains("root on the host"), "the risk is spelled out");
    // lb (uid 65532) reaches the socket through its group.
    assert_eq!(lb["group_add"][0].as_str(), Some("${DOCKER_GID:-999}"));
    let text = std::fs::read_to_string(root.join("deploy/pool/lb.toml")).unwrap();
    let (_certs, text, _) = crate::common::tls::with_certs(&text);
    let config = lb::config::Config::from_toml(&text).unwrap();
    let pool = config.pool.unwrap();
    let lb::config::PoolProvider::Docker(d) = pool.provider else {
        panic!("docker provider")
    };
    // Members join lb's own network, the project's `<project>_default`: the
    // compose file does not pin a name (two projects would share it).
    assert_eq!(d.network, "@self");
    assert!(
        compose.get("networks").is_none(),
        "{:?}",
        compose["networks"]
    );
    assert_eq!(d.docker_host, "unix:///var/run/docker.sock");
    // Compose gives lb time to remove its members at stop.
    assert!(lb["stop_grace_period"].as_str() == Some("40s") && pool.drain_timeout.as_secs() < 40);
}
