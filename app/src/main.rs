//! The `app` binary: parses the CLI, sets up logging, binds the listener and
//! serves until SIGTERM/SIGINT; `app healthcheck [URL]` probes a running app.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use app::{App, Mode, Options, MAX_DELAY_MS};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

/// Demo backend for lb: plays the app containers in demos, tests and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "app", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Container id reported in every response.
    #[arg(long, env = "CONTAINER_ID", default_value = "app")]
    id: String,

    /// Address to listen on; default 0.0.0.0:$PORT, or 0.0.0.0:3000.
    #[arg(long)]
    listen: Option<SocketAddr>,

    /// Port used when --listen is not given.
    #[arg(long, env = "PORT")]
    port: Option<u16>,

    /// Added latency in ms on every request except /health, /metrics and /fault.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    delay_ms: u64,

    /// Fraction (0.0..=1.0) of /api/* requests that answer 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_error_rate)]
    error_rate: f64,

    /// Performance profile: low = +25 ms per /api/* request and double load-test work,
    /// high = half the load-test work.
    #[arg(long, env = "PERFORMANCE_MODE", value_enum, ignore_case = true, default_value_t = Mode::Normal)]
    mode: Mode,

    /// Beyond this many concurrent /api/* requests, answer 503 with Retry-After: 1.
    #[arg(long)]
    max_concurrency: Option<usize>,

    /// Worker-pool mode: at most N /api/* requests in service at once, the rest
    /// wait in a FIFO queue; with --service-time-ms the app serves at most
    /// N / service time requests per second, whatever the host's CPU.
    #[arg(long, env = "WORKERS", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    workers: Option<u64>,

    /// Time each /api/* request holds its worker (a timer, not CPU work).
    #[arg(long, env = "SERVICE_TIME_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    service_time_ms: u64,

    /// After SIGTERM, keep serving this many ms with /health = 503 before closing
    /// the listener (like a Kubernetes preStop hook).
    #[arg(long, default_value_t = 0)]
    shutdown_delay_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if URL answers 200, 1 otherwise; for container HEALTHCHECKs.
    Healthcheck {
        /// Default: http://127.0.0.1:<port>/health, the port taken from --listen,
        /// else $PORT, else 3000.
        url: Option<String>,
    },
}

/// clap value parser for --error-rate: a clear message and exit 2 when invalid.
fn parse_error_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    app::validate_error_rate(r)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let port = cli.listen.map(|a| a.port()).or(cli.port).unwrap_or(3000);

    if let Some(Command::Healthcheck { url }) = &cli.command {
        let url = url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}/health"));
        return match app::healthcheck(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("healthcheck failed: {reason}");
                ExitCode::FAILURE
            }
        };
    }

    init_tracing();
    let addr = cli
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let opts = Options {
        id: cli.id,
        delay: Duration::from_millis(cli.delay_ms),
        error_rate: cli.error_rate,
        mode: cli.mode,
        max_concurrency: cli.max_concurrency,
        workers: cli.workers.map(|n| n as usize),
        service_time: Duration::from_millis(cli.service_time_ms),
        shutdown_delay: Duration::from_millis(cli.shutdown_delay_ms),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("app: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(addr, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries only the start line); RUST_LOG overrides.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // No colour codes in container logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

async fn run(addr: SocketAddr, opts: Options) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    let app = App::new(opts);
    println!("app {} listening on {local}", app.id());
    app::serve(listener, app, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// Resolves on the first SIGTERM or SIGINT. If a handler cannot be installed
/// (should not happen), that signal is simply not awaited.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, Signal, SignalKind};

    async fn recv(sig: Option<Signal>) {
        match sig {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let install = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for {name}");
            None
        }
    };
    let term = install(SignalKind::terminate(), "SIGTERM");
    let int = install(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        () = recv(term) => tracing::info!("SIGTERM received"),
        () = recv(int) => tracing::info!("SIGINT received"),
    }
}
