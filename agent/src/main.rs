//! The `tally-agent` command line: `run` (default), `validate`, `health`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tally_agent::catalog::Catalog;
use tally_agent::config::{Config, LogFormat, SinkKind};
use tally_agent::sinks::stdout::StdoutSink;
use tally_agent::sinks::Sink;
use tally_agent::stats::Stats;

/// The tally sidecar: merges SDK batches and publishes them to CloudWatch (or prints them).
#[derive(Debug, Parser)]
#[command(name = "tally-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args, Clone, Default)]
struct Common {
    /// Configuration file (TOML). Every key can also be set with TALLY_<KEY> (`__` between
    /// levels) or --set.
    #[arg(long, short = 'c', env = "TALLY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override one key: --set aggregate.max_series=5000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Where periods go: auto, stdout or cloudwatch (same as --set sink.kind=...).
    #[arg(long, value_name = "KIND", global = true)]
    sink: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Check a configuration and exit: 0 when valid, 1 with every problem listed.
    Validate,
    /// Ask a running agent's admin endpoint: exit 0 when healthy, 1 otherwise.
    Health {
        /// Admin address (default: admin.addr of the configuration).
        #[arg(long)]
        addr: Option<String>,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn load(common: &Common) -> Result<Config, String> {
    let mut flags = Vec::new();
    if let Some(s) = &common.sink {
        flags.push(format!("sink.kind={s}"));
    }
    flags.extend(common.set.iter().cloned());
    Config::load(common.config.as_deref(), std::env::vars(), &flags).map_err(|e| e.to_string())
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Logs go to stderr: stdout carries the stdout sink's output.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Environment variables through which aws-config's default chain finds credentials or an
/// endpoint; `sink.kind = "auto"` publishes to CloudWatch when one of them is set.
const AWS_HINTS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_CLOUDWATCH",
];

fn resolve_sink(config: &Config) -> SinkKind {
    match config.sink.kind {
        SinkKind::Auto if AWS_HINTS.iter().any(|v| std::env::var_os(v).is_some()) => {
            SinkKind::Cloudwatch
        }
        SinkKind::Auto => SinkKind::Stdout,
        k => k,
    }
}

fn build_sink(config: &Config, _stats: &Stats) -> Result<Box<dyn Sink>, String> {
    match resolve_sink(config) {
        SinkKind::Stdout | SinkKind::Auto => {
            Ok(Box::new(StdoutSink::new(config.sink.stdout_format)))
        }
        // The CloudWatch sink lives in the `publish` module, built in parallel; it is wired
        // here when that module lands.
        SinkKind::Cloudwatch => {
            Err("the CloudWatch sink is not available in this build: run with --sink stdout".into())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn run(common: &Common) -> ExitCode {
    let config = match load(common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(&config);
    let stats = Stats::new();
    let sink = match build_sink(&config, &stats) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(sink = sink.name(), "sink selected");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(tally_agent::runtime::run(
        config,
        sink,
        stats,
        shutdown_signal(),
        |_| {},
    ));
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(s) if s.dropped_samples == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            ExitCode::from(2)
        }
    }
}

fn validate(common: &Common) -> ExitCode {
    match load(common) {
        Ok(c) => {
            let cat = Catalog::from_config(&c);
            println!(
                "configuration is valid: namespace {:?}, period {} s, {} metrics catalogued, sink {:?}",
                c.namespace,
                c.period_secs,
                cat.metrics.len(),
                resolve_sink(&c)
            );
            for d in &c.aggregate.derived {
                if cat.metric(&d.name).is_none() {
                    println!(
                        "warning: derived metric {} has no dimension set: every set of {} carries one of {:?}; add a rollup that drops them (see docs/configuration.md)",
                        d.name, d.denominator, d.exclude_dimensions
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tally-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(common: &Common, addr: Option<&str>, timeout_ms: u64) -> ExitCode {
    let addr = match addr {
        Some(a) => a.to_owned(),
        None => match load(common) {
            Ok(c) => c.admin.addr,
            Err(e) => {
                eprintln!("tally-agent: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let Ok(sock) = addr.parse() else {
        eprintln!("tally-agent: admin address {addr:?} is not IP:port (use --addr or admin.addr)");
        return ExitCode::FAILURE;
    };
    match tally_agent::admin::check_health(sock, Duration::from_millis(timeout_ms)) {
        Ok(true) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("unhealthy: {addr} answered but is not ready");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: cannot reach {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        None | Some(Command::Run) => run(&cli.common),
        Some(Command::Validate) => validate(&cli.common),
        Some(Command::Health { addr, timeout_ms }) => {
            health(&cli.common, addr.as_deref(), *timeout_ms)
        }
    }
}
