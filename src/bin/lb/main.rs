//! `lb` command line: `lb [run] [-c PATH] [--listen ADDR] [--admin-listen ADDR] [--upgrade]`
//! and `lb check [-c PATH]`. Parses arguments, sets up logging, hands over to
//! [`lb::server::Lb`]. `lb healthcheck` and `lb admin` call a running lb through
//! [`client`].

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Pingora allocates per request; mimalloc is markedly cheaper than glibc malloc
/// for that pattern (measured with `make bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use lb::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "lb", version, about = "HTTP load balancer on Pingora")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Config file.
    #[arg(short, long, default_value = "lb.toml", global = true)]
    config: PathBuf,
    /// Override server.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override admin.listen.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Take the listening sockets over from the running lb (sent over
    /// server.upgrade_sock once it gets SIGQUIT; SIGUSR2 does both).
    #[arg(long)]
    upgrade: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer (the default).
    Run(RunArgs),
    /// Validate the config and print a summary (exit 0), or the error (exit 2).
    Check,
    /// Exit 0 if URL answers 2xx (for container HEALTHCHECKs; no curl needed).
    Healthcheck {
        /// Defaults to the admin API's /health.
        #[arg(default_value = "http://127.0.0.1:9901/health")]
        url: String,
    },
    /// Call the admin API: `lb admin PUT /admin/weights '{"app-1": 0}'`, or
    /// `lb admin pool rollout --image lb-app:v2`.
    Admin {
        /// Admin base URL.
        #[arg(long, default_value = client::DEFAULT_ADMIN_URL, global = true)]
        url: String,
        /// Bearer token (default: env LB_ADMIN_TOKEN).
        #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        what: Option<AdminCommand>,
        /// GET, PUT or POST.
        method: Option<String>,
        /// e.g. /admin/weights
        path: Option<String>,
        /// JSON body for PUT/POST.
        body: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The pool: `status`, `size N`, `rollout --image I | --command ARGV...`.
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
}

#[derive(Subcommand)]
enum PoolAction {
    /// GET /admin/pool.
    Status,
    /// PUT /admin/pool/size: the target size (min_size..=max_size).
    Size {
        /// Members wanted.
        size: u32,
    },
    /// POST /admin/pool/rollout: replace every member, one at a time.
    Rollout {
        /// New image (provider = "docker").
        #[arg(long, required_unless_present = "command", conflicts_with = "command")]
        image: Option<String>,
        /// New argv (provider = "process"), the rest of the line, with
        /// {name} and {port} placeholders.
        #[arg(long, num_args = 1.., allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

impl PoolAction {
    /// (method, path, body) of the admin call.
    fn request(self) -> (&'static str, &'static str, Option<String>) {
        match self {
            PoolAction::Status => ("GET", "/admin/pool", None),
            PoolAction::Size { size } => (
                "PUT",
                "/admin/pool/size",
                Some(serde_json::json!({ "size": size }).to_string()),
            ),
            PoolAction::Rollout { image, command } => {
                let body = match image {
                    Some(i) => serde_json::json!({ "image": i }),
                    None => serde_json::json!({ "command": command }),
                };
                ("POST", "/admin/pool/rollout", Some(body.to_string()))
            }
        }
    }
}

fn load(args: &RunArgs) -> Result<Config, ExitCode> {
    match Config::load(&args.config) {
        Ok(mut c) => {
            if let Some(l) = args.listen {
                c.server.listen = l;
            }
            if let Some(a) = args.admin_listen {
                c.admin.listen = a;
            }
            Ok(c)
        }
        Err(e) => {
            eprintln!("lb: {}: {e}", args.config.display());
            Err(ExitCode::from(2))
        }
    }
}

/// Installs the log subscriber. Lines go through a bounded queue to a writer
/// thread, so a slow stderr (a pipe nobody reads fast enough) never blocks a
/// proxy thread; the returned guard flushes the queue when `main` returns.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    // rustls and h2 log a client's mistakes per connection (an IP address
    // sent as SNI, a flood of resets) at WARN: scanners and attackers would
    // fill the log. lb counts those itself (lb_tls_handshake_errors_total,
    // GOAWAY); their lines show only when RUST_LOG names the crate.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let quiet = |spec: String, krate: &str| {
        if spec.contains(krate) {
            spec
        } else {
            format!("{spec},{krate}=error")
        }
    };
    let spec = quiet(quiet(spec, "rustls"), "h2");
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error,h2=error"));
    // Colour only for a person at a terminal; files and log collectors get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        .thread_name("lb-log")
        // Buffered: the writer thread drains every queued line into one
        // write(2) instead of one per line (it flushes whenever the queue is empty).
        .finish(Background::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    let _ = lb::metrics::LOG_DROPPED.set(writer.error_counter());
    // The access log skips tracing's formatter (see `lb::access_log`) but
    // shares the queue, so lines stay in order.
    let access = writer.clone();
    lb::access_log::install(
        move |line| {
            let _ = std::io::Write::write_all(&mut access.clone(), line);
        },
        format,
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// The log writer thread's output, run at the lowest CPU priority (nice 19,
/// set by the thread itself on its first write): on a busy core the proxy
/// threads go first, so writing logs never adds to a request's latency; a
/// starved writer only lets its queue fill (then lines are dropped, counted).
struct Background<W> {
    inner: W,
    lowered: bool,
}

impl<W> Background<W> {
    fn new(inner: W) -> Self {
        Background {
            inner,
            lowered: false,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Background<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !std::mem::replace(&mut self.lowered, true) {
            // SAFETY: plain syscalls on the calling thread (Linux: `who` 0 =
            // this thread); failure only leaves the priority as it was.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            }
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn main() -> ExitCode {
    // SIGHUP means "reload" to lb; until the reload handler is installed its
    // default action would kill the process, so ignore it from the start.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match load(&cli.run) {
            Ok(c) => {
                print!("{}", c.summary());
                println!("{}: ok", cli.run.config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Run(args)) => run(&args),
        Some(Command::Healthcheck { url }) => match client::healthcheck(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb: unhealthy: {e}");
                ExitCode::from(1)
            }
        },
        Some(Command::Admin {
            url,
            token,
            what,
            method,
            path,
            body,
        }) => {
            let (method, path, body) = match (what, method, path) {
                (Some(AdminCommand::Pool { action }), _, _) => {
                    let (m, p, b) = action.request();
                    (m.to_string(), p.to_string(), b)
                }
                (None, Some(m), Some(p)) => (m, p, body),
                _ => {
                    eprintln!(
                        "lb: admin needs METHOD PATH [BODY], or a subcommand (lb admin --help)"
                    );
                    return ExitCode::from(2);
                }
            };
            admin_call(&url, token.as_deref(), &method, &path, body.as_deref())
        }
        None => run(&cli.run),
    }
}

fn admin_call(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> ExitCode {
    match client::admin(url, token, method, path, body) {
        Ok((status, text)) => {
            println!("{}", text.trim_end());
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("lb: admin API answered {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("lb: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let config = match load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The drain watcher exits the process itself: it flushes the log queue
    // first by dropping the writer's guard.
    let guard = std::sync::Mutex::new(Some(init_logging(config.log.format)));
    let guard = std::sync::Arc::new(guard);
    let on_exit = guard.clone();
    lb::access_log::on_exit(move || {
        drop(on_exit.lock().unwrap_or_else(|p| p.into_inner()).take());
    });
    match lb::server::Lb::build_as(config, Some(args.config.clone()), args.upgrade) {
        Ok(lb) => {
            lb.run();
            drop(guard);
            lb::access_log::before_exit();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb: {e}");
            ExitCode::from(1)
        }
    }
}
