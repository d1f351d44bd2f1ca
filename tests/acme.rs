//! `[tls.acme]` against Pebble, Let's Encrypt's ACME test server (Debian's
//! `pebble`), all on loopback: Pebble's validation connects to lb's plain
//! and TLS ports, and resolves every test name to 127.0.0.1 through a tiny
//! DNS responder (`pebble -dnsserver`). `make test` installs Pebble
//! (`scripts/deps.sh test`); a machine without it fails these tests by name.
//!
//! Pebble's own randomness stays on: 5 % of good nonces rejected
//! (`PEBBLE_WFE_NONCEREJECT` unset), authorizations reused half the time,
//! real validation (`PEBBLE_VA_ALWAYS_VALID` unset). Only its random 0–15 s
//! sleep before each validation is off (`PEBBLE_VA_NOSLEEP=1`), so that
//! every test has a time bound; lb's retry backoff is shortened to 1 s …
//! 4 s (`LB_ACME_BACKOFF`) for the same reason. Each test prints the
//! issuance (and renewal, retry) times it saw.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{connect, served, Ca, Key};
use common::*;
use rustls::pki_types::CertificateDer;

/// A Pebble process (killed on drop) with its WFE certificate's CA.
struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:port/dir`.
    directory: String,
    listen: SocketAddr,
    mgmt: SocketAddr,
    dns: SocketAddr,
}

impl Pebble {
    /// Pebble validating against `http_port` (http-01) and `tls_port`
    /// (tls-alpn-01) on 127.0.0.1, resolving names through `dns`.
    async fn start(http_port: u16, tls_port: u16, dns: SocketAddr) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let wfe = ca.leaf(
            dir.path(),
            "wfe",
            &["127.0.0.1", "localhost"],
            Key::EcdsaP256,
            30,
        );
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mgmt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": wfe.cert, "privateKey": wfe.key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let cfg = dir.path().join("pebble.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let mut pebble = Pebble {
            child: Pebble::spawn(dir.path(), dns),
            dir,
            directory: format!("https://{listen}/dir"),
            listen,
            mgmt,
            dns,
        };
        pebble.wait_listening().await;
        pebble
    }

    fn spawn(dir: &std::path::Path, dns: SocketAddr) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("pebble.log"))
            .unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env_remove("PEBBLE_WFE_NONCEREJECT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl in the child before exec; no allocation.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .expect("pebble is installed (scripts/deps.sh test installs it)")
    }

    async fn wait_listening(&mut self) {
        let (listen, mgmt) = (self.listen, self.mgmt);
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).is_ok()
                && std::net::TcpStream::connect(mgmt).is_ok()
        })
        .await;
        assert!(up, "pebble did not listen:\n{}", self.log());
    }

    /// Stops Pebble (the CA is down).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new Pebble on the same ports: it remembers no account and has a
    /// new root, as a CA restored from nothing.
    async fn restart(&mut self) {
        self.child = Pebble::spawn(self.dir.path(), self.dns);
        self.wait_listening().await;
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Orders Pebble has created.
    fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// Pebble's (random, per run) root, which its chains lead to.
    async fn root(&self) -> CertificateDer<'static> {
        let ca = std::fs::read(self.ca_pem()).unwrap();
        let c = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let pem = c
            .get(format!("https://{}/roots/0", self.mgmt))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&pem).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- pebble log (last 30 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// lb with `[tls.acme]` against its own Pebble, and what a test reads.
struct Setup {
    lb: Lb,
    pebble: Pebble,
    _dns: TestDns,
    tls: SocketAddr,
    state: tempfile::TempDir,
    /// When lb (with `[tls.acme]`) was started.
    started: Instant,
}

/// A backend nobody reaches, health checks idle.
const BACKENDS: &str =
    "[health]\ninterval = \"1h\"\n\n[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:9\"\n";

impl Setup {
    /// Pebble, then lb ordering `domains` over `challenge`. lb is started
    /// once without `[tls]` to learn its plain port (Pebble's http-01 port),
    /// then restarted on the same ports with `[tls.acme]`.
    async fn start(domains: &[&str], challenge: &str, renew_before: &str) -> Setup {
        // Short retries for every lb these tests start (inherited).
        std::env::set_var("LB_ACME_BACKOFF", "1s,4s");
        let dns = TestDns::start(Some("127.0.0.1".parse().unwrap())).await;
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut lb = Lb::start(BACKENDS).await;
        let pebble = Pebble::start(lb.addr.port(), tls.port(), dns.addr).await;
        let state = tempfile::tempdir().unwrap();
        lb.stop().await;
        let mut s = Setup {
            lb,
            pebble,
            _dns: dns,
            tls,
            state,
            started: Instant::now(),
        };
        s.lb.write_config(&s.body(domains, challenge, renew_before));
        s.started = Instant::now();
        s.lb.restart().await;
        s
    }

    fn body(&self, domains: &[&str], challenge: &str, renew_before: &str) -> String {
        let domains: Vec<String> = domains.iter().map(|d| format!("{d:?}")).collect();
        format!(
            "{BACKENDS}\n[tls]\nlisten = \"{}\"\n\n[tls.acme]\ndirectory = \"{}\"\n\
             email = \"ops@lb.test\"\ndomains = [{}]\nstate_dir = \"{}\"\n\
             challenge = \"{challenge}\"\nrenew_before = \"{renew_before}\"\nca_roots = \"{}\"\n",
            self.tls,
            self.pebble.directory,
            domains.join(", "),
            self.state.path().display(),
            self.pebble.ca_pem().display(),
        )
    }

    /// `lb_acme_orders_total{result}`.
    async fn orders(&self, result: &str) -> f64 {
        self.lb
            .scrape()
            .await
            .value("lb_acme_orders_total", &[("result", result)])
    }

    /// Polls until `n` orders with `result` (at most `limit`); when.
    async fn wait_orders(&self, result: &str, n: f64, limit: Duration) -> Duration {
        let t0 = Instant::now();
        while self.orders(result).await < n {
            assert!(
                t0.elapsed() < limit,
                "fewer than {n} {result} orders after {limit:?}:\n{}",
                self.lb.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.started.elapsed()
    }

    /// The leaf lb serves for `sni`, its chain verified up to Pebble's root
    /// and for that name.
    async fn leaf(&self, sni: &str) -> CertificateDer<'static> {
        self.leaf_under(self.pebble.root().await, sni).await
    }

    /// [`Setup::leaf`] verified up to `root`.
    async fn leaf_under(
        &self,
        root: CertificateDer<'static>,
        sni: &str,
    ) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let s = connect(Arc::new(config), self.tls, sni)
            .await
            .unwrap_or_else(|e| panic!("handshake for {sni}: {e}\n{}", self.lb.log_text()));
        served(&s)
    }

    /// `/admin/tls`'s ACME entry (and the status page's data lists it too).
    async fn admin_entry(&self) -> serde_json::Value {
        let list = self.lb.admin_get("/admin/tls").await.json;
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source"] == "acme")
            .cloned()
            .unwrap_or_else(|| panic!("no acme entry in {list}"));
        let history = self.lb.admin_get("/history").await.json;
        let page = history["certificates"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["source"] == "acme").cloned())
            .unwrap_or_else(|| panic!("the status page's /history lists no acme certificate"));
        assert_eq!(page["names"], entry["names"]);
        assert_eq!(page["not_after"], entry["not_after"]);
        entry
    }
}

/// The order durations (`took_ms`) lb logged for issued certificates.
fn took_ms(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split("took_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_first_issuance_is_served_without_a_restart() {
    serial("http-01 issuance", Duration::from_secs(90), async {
        let s = Setup::start(&["a.lb.test", "www.lb.test"], "http-01", "30d").await;
        let at = s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        println!(
            "http-01: first certificate served {at:?} after lb started (orders took {:?} ms)",
            took_ms(&s.lb.log_text(), "certificate issued")
        );
        // Both names, on a chain Pebble's root verifies; the same leaf.
        let a = s.leaf("a.lb.test").await;
        assert_eq!(a, s.leaf("www.lb.test").await);
        let e = s.admin_entry().await;
        // Pebble orders the names at random: compare them as a set.
        let mut names: Vec<&str> = e["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.lb.test", "www.lb.test"], "{e}");
        assert!(e["issuer"].as_str().unwrap().contains("Pebble"), "{e}");
        // Renewal planned 30 days before expiry.
        let parse = |k: &str| humantime::parse_rfc3339(e[k].as_str().unwrap()).unwrap();
        let gap = parse("not_after")
            .duration_since(parse("next_renewal"))
            .unwrap();
        assert_eq!(gap, Duration::from_secs(30 * 86_400), "{e}");
        // The key files are the owner's only.
        use std::os::unix::fs::PermissionsExt;
        for f in ["account.json", "certificate.pem"] {
            let mode = std::fs::metadata(s.state.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(s
            .lb
            .log_text()
            .contains("acme: certificate issued and serving"));
        assert_eq!(s.orders("failed").await + s.orders("refused").await, 0.0);
        // A challenge path that is not pending is proxied as any request
        // (here to a dead backend: 502), not answered by lb.
        let r = client()
            .get(s.lb.url("/.well-known/acme-challenge/not-pending"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_first_issuance_is_served_without_a_restart() {
    serial("tls-alpn-01 issuance", Duration::from_secs(90), async {
        let s = Setup::start(&["alpn.lb.test"], "tls-alpn-01", "30d").await;
        let at = s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        println!(
            "tls-alpn-01: first certificate served {at:?} after lb started (orders took {:?} ms)",
            took_ms(&s.lb.log_text(), "certificate issued")
        );
        s.leaf("alpn.lb.test").await;
        assert_eq!(
            s.admin_entry().await["names"],
            serde_json::json!(["alpn.lb.test"])
        );
        // No challenge pending now: `acme-tls/1` is not a protocol lb serves.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.pebble.root().await).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        assert!(connect(Arc::new(c), s.tls, "alpn.lb.test").await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_comes_at_renew_before_and_is_served_at_once() {
    serial("renewal", Duration::from_secs(90), async {
        // Pebble's certificates last 5 years (1,826 days): a renew_before
        // longer than that makes every certificate due at once. lb renews
        // then, but at most once per backoff ceiling (4 s here, 1 h by
        // default) after its own last issuance, never in a loop.
        let s = Setup::start(&["renew.lb.test"], "http-01", "1830d").await;
        s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        let first = s.leaf("renew.lb.test").await;
        let issued1 = Instant::now();
        s.wait_orders("issued", 2.0, Duration::from_secs(60)).await;
        let gap = issued1.elapsed();
        let second = s.leaf("renew.lb.test").await;
        assert_ne!(first, second, "the renewed certificate is served");
        assert!(
            gap >= Duration::from_secs(3),
            "renewed {gap:?} after the first: not the 4 s floor"
        );
        let log = s.lb.log_text();
        assert!(log.contains("renewal=true"), "{log}");
        println!(
            "renewal: served {gap:?} after the first issuance (orders took {:?} ms)",
            took_ms(&log, "certificate issued")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_saved_certificate_without_a_new_order() {
    serial("restart", Duration::from_secs(90), async {
        let mut s = Setup::start(&["keep.lb.test"], "http-01", "30d").await;
        s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        let before = s.leaf("keep.lb.test").await;
        assert_eq!(s.pebble.orders(), 1);
        s.lb.stop().await;
        let from = s.lb.log_len();
        s.lb.restart().await;
        // Served as soon as lb listens, and no order follows.
        let up = eventually(Duration::from_secs(5), || {
            std::net::TcpStream::connect(s.tls).is_ok()
        })
        .await;
        assert!(up);
        assert_eq!(s.leaf("keep.lb.test").await, before);
        assert!(s
            .lb
            .wait_log(
                from,
                &["acme: serving the saved certificate"],
                Duration::from_secs(5)
            )
            .await
            .is_some());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(s.orders("issued").await, 0.0);
        assert_eq!(s.orders("failed").await + s.orders("refused").await, 0.0);
        assert_eq!(s.pebble.orders(), 1, "no new order on restart");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_order_keeps_the_old_certificate_and_backs_off() {
    serial("refused order", Duration::from_secs(90), async {
        let s = Setup::start(&["old.lb.test"], "http-01", "30d").await;
        s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        let before = s.leaf("old.lb.test").await;
        // A name the CA refuses ('_' is valid DNS, not a valid host name):
        // the saved certificate lacks it, so lb orders at once, is refused,
        // and retries after 1 s, 2 s, 4 s, 4 s …
        // Counted from here: the first issuance may have seen a transient
        // failure (Pebble rejects 5 % of nonces at random).
        let base = s.orders("refused").await;
        let from = s.lb.log_len();
        s.lb.write_config(&s.body(&["old.lb.test", "bad_name.lb.test"], "http-01", "30d"));
        assert_eq!(s.lb.reload().await.status, 200);
        let t0 = Instant::now();
        s.wait_orders("refused", base + 4.0, Duration::from_secs(30))
            .await;
        let spent = t0.elapsed();
        assert_eq!(
            s.leaf("old.lb.test").await,
            before,
            "the old certificate keeps serving"
        );
        let log = s.lb.log_text()[from..].to_string();
        let retries: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("acme: order failed"))
            .filter_map(|l| l.split("retry_in=").nth(1)?.split_whitespace().next())
            .collect();
        assert_eq!(
            retries.get(..4),
            Some(&["1s", "2s", "4s", "4s"][..]),
            "{log}"
        );
        assert!(
            log.contains("bad_name.lb.test"),
            "the refusal names the name:\n{log}"
        );
        // 1 + 2 + 4 s of backoff between the four refusals.
        assert!(spent >= Duration::from_secs(6), "{spent:?}");
        assert_eq!(s.orders("issued").await, 1.0);
        println!("refused: 4 refusals in {spent:?}, retries {retries:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_down_the_certificate_keeps_serving_and_lb_backs_off() {
    serial("CA down", Duration::from_secs(90), async {
        let mut s = Setup::start(&["down.lb.test"], "http-01", "30d").await;
        s.wait_orders("issued", 1.0, Duration::from_secs(60)).await;
        let root = s.pebble.root().await;
        let before = s.leaf_under(root.clone(), "down.lb.test").await;
        // The CA goes down, and a reload makes the certificate due.
        s.pebble.stop();
        // Counted from here, as in the refused-order test.
        let base = s.orders("failed").await;
        let from = s.lb.log_len();
        s.lb.write_config(&s.body(&["down.lb.test"], "http-01", "1830d"));
        assert_eq!(s.lb.reload().await.status, 200);
        let t0 = Instant::now();
        s.wait_orders("failed", base + 4.0, Duration::from_secs(30))
            .await;
        let down = t0.elapsed();
        assert_eq!(
            s.leaf_under(root, "down.lb.test").await,
            before,
            "the current certificate keeps serving"
        );
        let log = s.lb.log_text()[from..].to_string();
        let retries: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("acme: order failed"))
            .filter_map(|l| l.split("retry_in=").nth(1)?.split_whitespace().next())
            .collect();
        assert_eq!(
            retries.get(..4),
            Some(&["1s", "2s", "4s", "4s"][..]),
            "{log}"
        );
        // The CA comes back with no memory of lb's account: lb is refused
        // once (accountDoesNotExist), makes a new account, and is served.
        s.pebble.restart().await;
        let back = Instant::now();
        s.wait_orders("issued", 2.0, Duration::from_secs(30)).await;
        let recovered = back.elapsed();
        assert_ne!(s.leaf("down.lb.test").await, before);
        println!(
            "CA down: 4 failed orders in {down:?} (retries {retries:?}); \
             served a new certificate {recovered:?} after the CA came back"
        );
    })
    .await;
}
