//! Static checks of the deployment files, so they cannot drift from the code:
//! Kubernetes manifests (labels/selectors, ports, ConfigMap keys, probe paths,
//! the embedded lb.toml, HTTPS from a Secret), the compose files (limits,
//! healthchecks, ports, 443 with mounted certificates, the backends in
//! lb.toml), Prometheus targets and the Grafana dashboard's metrics.
//! Configs with `[tls]` name certificate paths inside the container; they are
//! checked with a throwaway certificate written where those paths point
//! ([`with_certs`]).
//! The Kubernetes manifests are also validated against Kubernetes' own API
//! schemas (kubernetes-validate, installed by `scripts/deps.sh test`).

#[path = "common/tls.rs"]
#[allow(dead_code)]
mod test_tls;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use test_tls::with_certs;

use lb::config::{Config, Resolve};
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of every YAML file in deploy/k8s, keyed by (kind, name).
fn manifests() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = v["kind"].as_str().expect("kind").to_string();
            let name = v["metadata"]["name"].as_str().expect("name").to_string();
            assert!(
                out.insert((kind.clone(), name.clone()), v).is_none(),
                "duplicate {kind}/{name}"
            );
        }
    }
    out
}

fn get<'a>(m: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    m.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
}

fn port_of(v: &Value) -> u16 {
    v.as_u64().unwrap_or_else(|| panic!("port {v:?}")) as u16
}

/// A container port, by name or number.
fn container_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::String(name) => container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .map(|p| port_of(&p["containerPort"]))
            .unwrap_or_else(|| panic!("no container port named {name}")),
        n => port_of(n),
    }
}

fn listen_port(s: &std::net::SocketAddr) -> u16 {
    s.port()
}

/// `toml` parsed (certificates as in [`with_certs`]) and passing `lb check`;
/// its certificate paths as written.
fn load_checked(toml: &str) -> (Config, Vec<(String, String)>) {
    let (_dir, text, paths) = with_certs(toml);
    let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    lb_check(&text);
    (config, paths)
}

#[test]
fn kubernetes_manifests_reference_each_other_and_the_code() {
    let m = manifests();
    let cm = get(&m, "ConfigMap", "lb-config");
    let dep = get(&m, "Deployment", "lb");
    let svc = get(&m, "Service", "lb");
    let hpa = get(&m, "HorizontalPodAutoscaler", "lb");

    // The embedded lb.toml is a valid config, for the library and for `lb check`.
    let toml = cm["data"]["lb.toml"]
        .as_str()
        .expect("ConfigMap key lb.toml");
    let (config, cert_paths) = load_checked(toml);

    // lb Deployment: the HPA owns the count, selector matches the template,
    // non-root, read-only.
    let spec = &dep["spec"];
    assert!(spec["replicas"].is_null(), "replicas would fight the HPA");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["cpu"].is_string() && c["resources"][k]["memory"].is_string(),
            "{k}"
        );
    }
    // The config file lb reads is the ConfigMap key, mounted where args say.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let cfg_path = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| cfg_path.starts_with(v["mountPath"].as_str().unwrap()))
        .expect("config path is mounted");
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume exists");
    assert_eq!(vol["configMap"]["name"], "lb-config");
    let item = &vol["configMap"]["items"][0];
    assert_eq!(item["key"], "lb.toml");
    assert!(cfg_path.ends_with(item["path"].as_str().unwrap()));
    // Ports: container ports are what the config listens on.
    assert_eq!(
        container_port(c, &Value::from("http")),
        listen_port(&config.server.listen)
    );
    assert_eq!(
        container_port(c, &Value::from("admin")),
        listen_port(&config.admin.listen)
    );
    // Probes hit the admin API's /health (the unauthenticated endpoint).
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/health", "{probe}");
        assert_eq!(
            container_port(c, &c[probe]["httpGet"]["port"]),
            listen_port(&config.admin.listen)
        );
    }

    // Lossless rollout: a new pod must be ready before an old one stops; a
    // stopping pod sleeps in preStop (the kubelet's sleep action: the image
    // has no shell) while the endpoint change spreads, then gets SIGTERM and
    // drains for server.grace_period, all within the termination grace period
    // (strictly: lb settles briefly after the signal before it exits).
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("lifecycle.preStop.sleep.seconds");
    assert!(pre_stop >= 1, "preStop sleep {pre_stop} s");
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let stop = Duration::from_secs(pre_stop) + config.server.grace_period;
    assert!(
        Duration::from_secs(termination) > stop,
        "terminationGracePeriodSeconds {termination} <= preStop {pre_stop} s + grace_period {:?}",
        config.server.grace_period
    );

    // Service: LoadBalancer on 80 to lb's http port and 443 to its https
    // port ([tls] listen), selecting lb pods.
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(&svc["spec"]["selector"], labels);
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["port"], 80);
    assert_eq!(
        container_port(c, &sp["targetPort"]),
        listen_port(&config.server.listen)
    );
    let tls = config
        .tls
        .as_ref()
        .expect("[tls] in the ConfigMap's lb.toml");
    assert_eq!(container_port(c, &Value::from("https")), tls.listen.port());
    let sp = &svc["spec"]["ports"][1];
    assert_eq!(sp["port"], 443);
    assert_eq!(container_port(c, &sp["targetPort"]), tls.listen.port());

    // The certificate: a kubernetes.io/tls Secret's two keys (tls.crt,
    // tls.key) mounted as files in a directory of their own, where [tls]
    // reads them. The kubelet updates such a volume by swapping its `..data`
    // symlink, which lb's certificate watch follows. Not under the ConfigMap's
    // mount: a mount point inside another volume is fragile.
    assert_eq!(cert_paths.len(), 1, "{cert_paths:?}");
    let (cert, key) = &cert_paths[0];
    let tls_dir = Path::new(cert).parent().unwrap();
    assert_eq!(Path::new(key).parent().unwrap(), tls_dir);
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| Path::new(v["mountPath"].as_str().unwrap()) == tls_dir)
        .unwrap_or_else(|| panic!("{} is not mounted", tls_dir.display()));
    assert_eq!(mount["readOnly"], true);
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount never sees updates"
    );
    assert!(
        !tls_dir.starts_with(Path::new(cfg_path).parent().unwrap()),
        "{} inside the config mount",
        tls_dir.display()
    );
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the certificate volume exists");
    let secret = &vol["secret"];
    assert!(secret["secretName"].is_string(), "a Secret volume: {vol:?}");
    assert_ne!(secret["optional"], true, "no certificate, no start");
    let mut files: Vec<String> = match secret["items"].as_sequence() {
        Some(items) => items
            .iter()
            .map(|i| {
                let k = i["key"].as_str().unwrap();
                assert!(["tls.crt", "tls.key"].contains(&k), "{k}");
                i["path"].as_str().unwrap().to_string()
            })
            .collect(),
        None => vec!["tls.crt".into(), "tls.key".into()],
    };
    files.sort();
    let mut wanted = vec![
        Path::new(cert)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
        Path::new(key)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    ];
    wanted.sort();
    assert_eq!(files, wanted);
    // lb (uid/gid 65532, non-root) can read the key.
    let mode = secret["defaultMode"].as_u64().unwrap_or(0o644);
    let gid = pod["securityContext"]["fsGroup"].as_u64();
    assert!(
        mode & 0o004 != 0 || (mode & 0o040 != 0 && gid == Some(65532)),
        "key mode {mode:o} unreadable by lb (fsGroup {gid:?})"
    );

    // HPA scales that Deployment on CPU.
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "lb");
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
}

/// `lb check` on `toml` (written to a temporary file) succeeds.
fn lb_check(toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lb check:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_app_is_a_deployment_with_an_hpa_behind_a_headless_service_lb_resolves() {
    let m = manifests();
    assert!(
        !m.keys().any(|(kind, _)| kind == "StatefulSet"),
        "the app is a Deployment now"
    );
    let cm = get(&m, "ConfigMap", "lb-config");
    let (config, _) = load_checked(cm["data"]["lb.toml"].as_str().unwrap());
    let dep = get(&m, "Deployment", "app");
    let svc = get(&m, "Service", "app");
    let hpa = get(&m, "HorizontalPodAutoscaler", "app");

    // Deployment: the HPA owns the count; selector matches the template.
    let spec = &dep["spec"];
    assert!(spec["replicas"].is_null(), "replicas would fight the HPA");
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let app_port = container_port(c, &Value::from("http"));
    // The app listens where the container port says.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let listen = args[args.iter().position(|a| *a == "--listen").unwrap() + 1];
    assert_eq!(
        listen.parse::<std::net::SocketAddr>().unwrap().port(),
        app_port
    );
    // Probes: the app's /health on its port, readiness soon and often.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/health", "{probe}");
        assert_eq!(container_port(c, &c[probe]["httpGet"]["port"]), app_port);
    }
    assert!(c["readinessProbe"]["periodSeconds"].as_u64().unwrap() <= 5);
    // Requests (what CPU utilisation is measured against) and limits.
    for k in ["requests", "limits"] {
        assert!(
            c["resources"][k]["cpu"].is_string() && c["resources"][k]["memory"].is_string(),
            "{k}"
        );
    }
    // A terminating pod keeps serving (health 503) long enough for lb's
    // checks to take it out, and its grace period covers that delay.
    let delay_ms: u64 = args[args
        .iter()
        .position(|a| *a == "--shutdown-delay-ms")
        .unwrap()
        + 1]
    .parse()
    .unwrap();
    let seen_down = config.health.interval * config.health.fall + config.health.timeout;
    assert!(
        u128::from(delay_ms) >= seen_down.as_millis(),
        "shutdown delay {delay_ms} ms < lb's {seen_down:?} to see a pod go"
    );
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000 > delay_ms);

    // HPA: the seeds' shape, 3 → 20 replicas at 70 % CPU, on this Deployment.
    let h = &hpa["spec"];
    assert_eq!(h["scaleTargetRef"]["apiVersion"], "apps/v1");
    assert_eq!(h["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(h["scaleTargetRef"]["name"], "app");
    assert_eq!(h["minReplicas"], 3);
    assert_eq!(h["maxReplicas"], 20);
    let cpu = &h["metrics"][0]["resource"];
    assert_eq!(cpu["name"], "cpu");
    assert_eq!(cpu["target"]["type"], "Utilization");
    assert_eq!(cpu["target"]["averageUtilization"], 70);
    // Every pod the HPA may start fits under lb's backend cap (members count).
    assert!(h["maxReplicas"].as_u64().unwrap() as usize <= lb::config::MAX_BACKENDS);

    // Headless Service selecting those pods, ready ones only in DNS.
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(&svc["spec"]["selector"], labels);
    assert_ne!(svc["spec"]["publishNotReadyAddresses"], true);
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(container_port(c, &sp["targetPort"]), app_port);
    let svc_port = port_of(&sp["port"]);

    // lb: one backend, `resolve = "all"` on the Service's full DNS name.
    assert_eq!(config.backends.len(), 1, "one entry for every app pod");
    let b = &config.backends[0];
    assert_eq!(b.resolve, Resolve::All, "{}", b.name);
    let namespace = dep["metadata"]["namespace"].as_str().unwrap_or("default");
    assert_eq!(
        b.addr,
        format!(
            "{}.{namespace}.svc.cluster.local:{svc_port}",
            svc["metadata"]["name"].as_str().unwrap()
        )
    );
    assert!(config.discovery.nameservers.is_empty(), "the cluster DNS");
}

#[test]
fn kubernetes_deployments_have_disruption_budgets_that_allow_a_drain() {
    let m = manifests();
    let pdbs: Vec<&Value> = m
        .iter()
        .filter(|((kind, _), _)| kind == "PodDisruptionBudget")
        .map(|(_, v)| v)
        .collect();
    let deployments: Vec<(&String, &Value)> = m
        .iter()
        .filter(|((kind, _), _)| kind == "Deployment")
        .map(|((_, name), v)| (name, v))
        .collect();
    assert!(deployments.len() >= 2, "lb and app");
    for (name, dep) in &deployments {
        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        // Exactly one budget selects the Deployment's pods (the eviction API
        // refuses to evict a pod that two budgets select).
        let mine: Vec<&&Value> = pdbs
            .iter()
            .filter(|p| &p["spec"]["selector"]["matchLabels"] == labels)
            .collect();
        assert_eq!(mine.len(), 1, "PodDisruptionBudgets for Deployment {name}");
        let pdb = &mine[0]["spec"];
        assert!(pdb["selector"]["matchExpressions"].is_null(), "{name}");
        // The fewest pods there may be is the HPA's minimum: the budget lets
        // a drain evict one of them and keeps the others serving.
        let hpa = get(&m, "HorizontalPodAutoscaler", name);
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], name.as_str());
        let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
        let unavailable = match (pdb["maxUnavailable"].as_u64(), pdb["minAvailable"].as_u64()) {
            (Some(n), None) => n,
            (None, Some(n)) => min.saturating_sub(n),
            other => panic!("{name}: one integer maxUnavailable or minAvailable, got {other:?}"),
        };
        assert!(
            (1..min).contains(&unavailable),
            "{name}: the budget allows {unavailable} of {min} pods down"
        );
        assert_eq!(pdb["unhealthyPodEvictionPolicy"], "AlwaysAllow", "{name}");
    }
    // And no budget selects no Deployment.
    assert_eq!(pdbs.len(), deployments.len(), "a budget per Deployment");
}

/// The Kubernetes release whose API schemas deploy/k8s is validated against:
/// the newest kubernetes-validate 1.37.0 (pinned in scripts/deps.sh) ships.
const KUBERNETES_VERSION: &str = "1.37.0";

/// kubernetes-validate: $LB_KUBERNETES_VALIDATE, else the venv
/// `scripts/deps.sh test` installs it into. Missing is a failure.
fn kubernetes_validate() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_KUBERNETES_VALIDATE") {
        return PathBuf::from(p);
    }
    let venv = root().join("target/tools/kubernetes-validate/bin/kubernetes-validate");
    assert!(
        venv.is_file(),
        "kubernetes-validate is not installed ({} is missing): run `scripts/deps.sh test` \
         (`make test` does), or set LB_KUBERNETES_VALIDATE to one that has the \
         Kubernetes {KUBERNETES_VERSION} schemas",
        venv.display()
    );
    venv
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_api_schemas() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files
            .iter()
            .all(|f| matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))),
        "only YAML in deploy/k8s: {files:?}"
    );
    let tool = kubernetes_validate();
    // --strict: an unknown or misspelt field is an error, not ignored.
    let out = std::process::Command::new(&tool)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (install it with `scripts/deps.sh test`)",
                tool.display()
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict -k {KUBERNETES_VERSION} failed ({}):\n{report}",
        out.status
    );
    // Every document was checked (none skipped), each of every file.
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, manifests().len(), "documents validated:\n{report}");
}

/// Parsed docker-compose.yml.
fn compose() -> Value {
    compose_file("docker-compose.yml")
}

/// A parsed compose file (path relative to the repository root).
fn compose_file(file: &str) -> Value {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("version:")),
        "no `version:` key (Compose spec)"
    );
    let mut v: Value = serde_yaml::from_str(&text).unwrap();
    // Resolve `<<: *app` as Compose does.
    v.apply_merge().unwrap();
    v
}

/// lb's service in compose file `file` serves HTTPS: 443 published
/// (`LB_PUBLISH_TLS` overrides), every certificate path of `config_text`'s
/// [tls] inside one read-only mount whose default source is the repository's
/// deploy/tls (what `make certs` fills; `LB_TLS_DIR` overrides); its config
/// listens on 443. Returns the config.
fn assert_serves_tls(file: &str, lb: &Value, config_text: &str) -> Config {
    let (config, paths) = load_checked(config_text);
    let tls = config
        .tls
        .as_ref()
        .unwrap_or_else(|| panic!("{file}: no [tls]"));
    assert_eq!(tls.listen.port(), 443, "{file}");
    assert!(
        lb["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some("${LB_PUBLISH_TLS:-443}:443")),
        "{file}: 443 published"
    );
    let mounts: Vec<(&str, &str, &str)> = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            let v = v.as_str().unwrap();
            // `${VAR:-default}:dst:mode`: the default may not contain ':'.
            let (src, rest) = match v.strip_prefix("${") {
                Some(r) => {
                    let end = r.find('}').unwrap();
                    (&v[..end + 3], &r[end + 2..])
                }
                None => v.split_once(':').unwrap(),
            };
            let (dst, mode) = rest.split_once(':').unwrap_or((rest, "rw"));
            (src, dst, mode)
        })
        .collect();
    assert!(!paths.is_empty(), "{file}: no certificates");
    for (cert, key) in &paths {
        let dir = Path::new(cert).parent().unwrap();
        assert_eq!(Path::new(key).parent().unwrap(), dir, "{file}");
        let (src, _, mode) = mounts
            .iter()
            .find(|(_, dst, _)| Path::new(dst) == dir)
            .unwrap_or_else(|| panic!("{file}: {} not mounted", dir.display()));
        assert_eq!(*mode, "ro", "{file}");
        let default = src
            .strip_prefix("${LB_TLS_DIR:-")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{file}: {src}: LB_TLS_DIR with a default"));
        let compose_dir = root().join(file).parent().unwrap().to_path_buf();
        assert_eq!(
            std::fs::canonicalize(compose_dir.join(default)).unwrap(),
            std::fs::canonicalize(root().join("deploy/tls")).unwrap(),
            "{file}: mounts {default}"
        );
    }
    // The directory ships (so Docker never creates it, root-owned, in its
    // place) with what `make certs` writes there kept out of git.
    assert!(root().join("deploy/tls/.gitignore").is_file());
    config
}

#[test]
fn compose_file_matches_lb_toml_and_the_seed_limits() {
    let c = compose();
    let s = &c["services"];
    let lb = &s["lb"];
    // Port 80 published; the admin API only exposed on the internal network.
    let ports: Vec<&str> = lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec!["${LB_PUBLISH:-80}:80", "${LB_PUBLISH_TLS:-443}:443"]
    );
    assert!(lb["expose"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p == "9901"));
    // Its config is lb.toml's with [tls] on (lb.toml keeps [tls] commented,
    // so it passes `lb check` anywhere): the same in every other respect.
    let mount = lb["volumes"][0].as_str().unwrap();
    assert!(
        mount.starts_with("./deploy/lb-compose.toml:/etc/lb/lb.toml"),
        "{mount}"
    );
    let text = std::fs::read_to_string(root().join("deploy/lb-compose.toml")).unwrap();
    let mut config = assert_serves_tls("docker-compose.yml", lb, &text);
    // (from_toml for both: `load` adds a token_file beside the file read.)
    let reference =
        Config::from_toml(&std::fs::read_to_string(root().join("lb.toml")).unwrap()).unwrap();
    assert!(reference.tls.is_none());
    config.tls = None;
    assert_eq!(
        config, reference,
        "deploy/lb-compose.toml differs from lb.toml"
    );
    assert_eq!(config.server.listen.port(), 80);
    let want = [
        ("app-1", 1.0, "1g"),
        ("app-2", 1.0, "1g"),
        ("app-3", 0.5, "512m"),
        ("app-4", 1.5, "1536m"),
    ];
    for ((name, cpus, mem), backend) in want.iter().zip(&config.backends) {
        // lb.toml's backends are exactly the compose app services, on their port.
        assert_eq!(backend.addr, format!("{name}:3000"));
        let app = &s[*name];
        assert_eq!(app["cpus"].as_f64(), Some(*cpus), "{name} cpus");
        assert_eq!(app["mem_limit"].as_str(), Some(*mem), "{name} mem_limit");
        assert_eq!(app["restart"], "unless-stopped");
        assert!(
            app["healthcheck"]["test"][1]
                .as_str()
                .unwrap()
                .ends_with("/app"),
            "{name} healthcheck"
        );
        assert_eq!(lb["depends_on"][*name]["condition"], "service_healthy");
    }
    assert_eq!(lb["restart"], "unless-stopped");
    // Monitoring only behind its profile (its images come from a registry).
    for m in ["prometheus", "grafana"] {
        assert_eq!(s[m]["profiles"][0], "monitoring", "{m}");
    }
}

#[test]
fn compose_scale_file_matches_its_lb_config() {
    let c = compose_file("deploy/compose-scale.yml");
    let s = &c["services"];
    let (lb, app) = (&s["lb"], &s["app"]);
    // lb: port 80 published (LB_PUBLISH overrides), admin only exposed, its
    // config mounted from next to the compose file, started once app is healthy.
    let ports: Vec<&str> = lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec!["${LB_PUBLISH:-80}:80", "${LB_PUBLISH_TLS:-443}:443"]
    );
    let mount = lb["volumes"][0].as_str().unwrap();
    let (src, dst) = mount.split_once(':').unwrap();
    assert_eq!(src, "./lb-scale.toml");
    assert!(dst.starts_with("/etc/lb/lb.toml"), "{mount}");
    let args: Vec<&str> = lb["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[args.iter().position(|a| *a == "-c").unwrap() + 1],
        "/etc/lb/lb.toml"
    );
    assert_eq!(lb["depends_on"]["app"]["condition"], "service_healthy");
    let toml_path = root().join("deploy/lb-scale.toml");
    let config = assert_serves_tls(
        "deploy/compose-scale.yml",
        lb,
        &std::fs::read_to_string(&toml_path).unwrap(),
    );
    assert_eq!(config.server.listen.port(), 80);
    assert!(lb["expose"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p.as_str() == Some(&config.admin.listen.port().to_string())));
    assert!(
        config.admin.listen.ip().is_unspecified(),
        "admin reachable on the network"
    );

    // app: one scalable service (no fixed name, nothing published), two
    // replicas by default, a healthcheck, the seeds' per-replica limits.
    assert!(app["container_name"].is_null() && app["ports"].is_null());
    assert_eq!(app["deploy"]["replicas"], 2);
    assert!(app["healthcheck"]["test"][1]
        .as_str()
        .unwrap()
        .ends_with("/app"));
    assert!(app["cpus"].is_f64() && app["mem_limit"].is_string());
    let app_args: Vec<&str> = app["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |k: &str| app_args[app_args.iter().position(|a| *a == k).unwrap() + 1];
    let app_port = arg("--listen")
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    assert!(app["expose"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p.as_str() == Some(&app_port.to_string())));

    // lb's one backend is the service, every replica: resolve = "all" on the
    // service name and port, through Docker's DNS (the container's resolv.conf).
    assert_eq!(config.backends.len(), 1);
    let b = &config.backends[0];
    assert_eq!(b.resolve, Resolve::All);
    assert_eq!(b.addr, format!("app:{app_port}"));
    assert!(config.discovery.nameservers.is_empty());
    // A stopping replica serves (health 503) until lb's checks took it out.
    let delay_ms: u64 = arg("--shutdown-delay-ms").parse().unwrap();
    let seen_down = config.health.interval * config.health.fall + config.health.timeout;
    assert!(
        u128::from(delay_ms) >= seen_down.as_millis(),
        "shutdown delay {delay_ms} ms < lb's {seen_down:?} to see a replica go"
    );
    let grace = humantime::parse_duration(app["stop_grace_period"].as_str().unwrap()).unwrap();
    assert!(grace.as_millis() > u128::from(delay_ms));
}

#[test]
fn compose_pool_file_serves_https_with_its_lb_config() {
    let c = compose_file("deploy/pool/docker-compose.yml");
    let lb = &c["services"]["lb"];
    let mount = lb["volumes"][0].as_str().unwrap();
    assert!(
        mount.starts_with("${LB_CONFIG:-./lb.toml}:/etc/lb/lb.toml"),
        "{mount}"
    );
    let text = std::fs::read_to_string(root().join("deploy/pool/lb.toml")).unwrap();
    let config = assert_serves_tls("deploy/pool/docker-compose.yml", lb, &text);
    assert_eq!(config.server.listen.port(), 80);
    assert!(lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p.as_str() == Some("${LB_PUBLISH:-80}:80")));
}

#[test]
fn prometheus_scrapes_lb_and_every_app() {
    let p: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let targets: HashSet<String> = p["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|j| {
            j["static_configs"][0]["targets"]
                .as_sequence()
                .unwrap()
                .clone()
        })
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let config = Config::load(&root().join("lb.toml")).unwrap();
    assert!(targets.contains("lb:9901"), "{targets:?}");
    for b in &config.backends {
        assert!(targets.contains(&b.addr), "{} not scraped", b.addr);
    }
}

#[test]
fn grafana_dashboard_uses_only_metrics_lb_exports() {
    // Render the real exposition for lb.toml's backends (no network needed).
    let config = Config::load(&root().join("lb.toml")).unwrap();
    let state = lb::state::State::new(Arc::new(config));
    let text = lb::admin::exposition::render(&state);
    let exported: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/dashboards/lb.json")).unwrap(),
    )
    .unwrap();
    // lb_pool_* exist only when a [pool] is configured (lb.toml has none):
    // these are SPEC's names ("The pool").
    let pool_only = [
        "lb_pool_members",
        "lb_pool_starts_total",
        "lb_pool_recycles_total",
        "lb_pool_scale_total",
    ];
    let mut used = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("lb_") {
                    used += 1;
                    assert!(
                        exported.contains(word) || pool_only.contains(&word),
                        "dashboard uses {word}, lb does not export it"
                    );
                }
            }
        }
    }
    assert!(used >= 6);
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Requests/s",
        "Error rate",
        "p95",
        "Effective weights",
        "Circuit",
        "In-flight",
        "p99",
        "Health",
        "Queue depth",
        "Queue wait",
        "Pool members",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want} panel in {titles:?}"
        );
    }
}
