//! The quickstart: a tally agent, the instrumented example shop and a load generator, together.
//!
//! The agent prints each period's per-route request counts, error rates and latency
//! percentiles (its `auto` sink), or publishes them to CloudWatch when AWS credentials or
//! `AWS_ENDPOINT_URL` are configured. Stops after `--duration` or on Ctrl-C: the load stops,
//! the shop drains, the SDK flushes, then the agent gets SIGTERM and publishes its last period.
//!
//! `scripts/quickstart.sh` builds everything and runs this binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use tally_examples::cli::parse_duration;
use tally_examples::load::{run, LoadPlan};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Runs tally-agent, the example shop and a load generator until --duration or Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// How long to run (`60s`, `5m`); Ctrl-C stops earlier.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The agent's aggregation period in seconds (1, 10, 30 or 60).
    #[arg(long, default_value_t = 10)]
    period_secs: u32,
    /// The agent's sink: `auto` (CloudWatch when AWS is configured, else stdout), `stdout`
    /// or `cloudwatch`.
    #[arg(long, default_value = "auto")]
    sink: String,
    /// The tally-agent binary. Default: next to this binary, else on PATH.
    #[arg(long, env = "TALLY_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// Where the agent listens for the SDK.
    #[arg(long, default_value = tally::conventions::DEFAULT_AGENT_ADDR)]
    agent_addr: SocketAddr,
    /// Where the example shop listens (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    shop_addr: SocketAddr,
    /// Requests per second the load generator sends.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// The agent's configuration file (default: examples/quickstart-agent.toml, which adds the
    /// rollup that derives ErrorRate per route).
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// The agent's write-ahead log (every acknowledged batch is on disk until published, so a
    /// killed agent replays it at its next start). Default: `quickstart-wal` next to this
    /// binary (under `target/`). `off` runs without it.
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// Extra agent settings, passed on as `--set KEY=VALUE`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    agent_settings: Vec<String>,
}

/// Longest wait for the agent to accept connections.
const AGENT_START_WAIT: Duration = Duration::from_secs(30);
/// Longest wait for the agent to exit after SIGTERM (its own default deadline is 20 s).
const AGENT_STOP_WAIT: Duration = Duration::from_secs(30);

/// The write-ahead log's directory, or `None` for `--wal-dir off`.
fn wal_dir(args: &Args) -> Option<PathBuf> {
    match &args.wal_dir {
        Some(dir) if dir.as_os_str() == "off" => None,
        Some(dir) => Some(dir.clone()),
        None => Some(
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join("quickstart-wal")))
                .unwrap_or_else(|| std::env::temp_dir().join("tally-quickstart-wal")),
        ),
    }
}

fn agent_binary(args: &Args) -> PathBuf {
    if let Some(bin) = &args.agent_bin {
        return bin.clone();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("tally-agent")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("tally-agent"),
    }
}

async fn start_agent(args: &Args) -> Result<Child, String> {
    let bin = agent_binary(args);
    let mut command = Command::new(&bin);
    let config = args.agent_config.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/quickstart-agent.toml"
        ))
    });
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--set")
        .arg(format!("period_secs={}", args.period_secs))
        .arg("--set")
        .arg(format!("sink.kind={}", args.sink))
        .arg("--set")
        .arg(format!("ingest.tcp_addr={}", args.agent_addr));
    if let Some(dir) = wal_dir(args) {
        command
            .arg("--set")
            .arg(format!("durability.dir={}", dir.display()));
    }
    for setting in &args.agent_settings {
        command.arg("--set").arg(setting);
    }
    // Its own process group: Ctrl-C reaches only this binary, which stops the agent last,
    // after the SDK's final flush.
    command
        .process_group(0)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command.spawn().map_err(|e| {
        format!(
            "cannot start the agent `{}` ({e}): build it with `cargo build --release -p tally-agent`, \
             or pass --agent-bin / TALLY_AGENT_BIN",
            bin.display()
        )
    })
}

/// Wait until the agent accepts TCP connections, or report why it never did.
async fn wait_for_agent(agent: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + AGENT_START_WAIT;
    loop {
        if let Some(status) = agent.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the agent exited before it listened ({status}); see its messages above"
            ));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the agent did not listen on {addr} within {AGENT_START_WAIT:?}; \
                 is the port taken? choose another with --agent-addr"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM the agent and wait for its orderly exit; SIGKILL if it overstays.
async fn stop_agent(agent: &mut Child) -> Option<ExitStatus> {
    if let Some(pid) = agent.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(AGENT_STOP_WAIT, agent.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            eprintln!("quickstart: the agent did not stop within {AGENT_STOP_WAIT:?}; killing it");
            let _ = agent.kill().await;
            None
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `/panic` panics on purpose about once a second under the default load; CatchPanicLayer
    // answers 500 and tally counts it. Keep those expected panics out of the agent's report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or_default();
        if !message.contains("on purpose") {
            default_hook(info);
        }
    }));
    match quickstart(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quickstart: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn quickstart(args: Args) -> Result<(), String> {
    let mut agent = start_agent(&args).await?;
    wait_for_agent(&mut agent, args.agent_addr).await?;

    let tally = tally::Tally::builder()
        .service("example-shop")
        .environment("quickstart")
        .agent(args.agent_addr.to_string().as_str())
        .flush_interval(Duration::from_secs(1))
        .build()
        .map_err(|e| format!("cannot start the tally SDK: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.shop_addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} ({e}); choose another with --shop-addr",
                args.shop_addr
            )
        })?;
    let shop_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shop_stop = stop_rx.clone();
    let app = tally_examples::shop::router(&tally);
    let shop = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shop_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    eprintln!(
        "quickstart: shop on http://{shop_addr}, agent on {}, {} req/s for {:?} \
         (Ctrl-C stops). The agent reports every {} s.",
        args.agent_addr, args.rate, args.duration, args.period_secs
    );
    match wal_dir(&args) {
        Some(dir) => eprintln!(
            "quickstart: the agent's write-ahead log is in {} (a killed agent replays it at its \
             next start; --wal-dir off runs without it)",
            dir.display()
        ),
        None => eprintln!("quickstart: the agent runs without its write-ahead log (--wal-dir off)"),
    }

    let plan = LoadPlan {
        target: shop_addr,
        concurrency: 8,
        rate: args.rate,
        duration: args.duration,
        max_requests: u64::MAX,
    };
    let load = tokio::spawn(run(plan, stop_rx));
    tokio::pin!(load);
    let report = tokio::select! {
        report = &mut load => report.ok(),
        _ = interrupted() => {
            eprintln!("quickstart: stopping (Ctrl-C again kills the agent without its last period)");
            let _ = stop_tx.send(true);
            load.await.ok()
        }
    };
    let _ = stop_tx.send(true);
    if let Some(report) = report {
        eprintln!("quickstart: load generator sent {report}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), shop).await;
    // Flush what the SDK holds, then let the agent publish its last period.
    let _ = tokio::task::spawn_blocking(move || tally.shutdown()).await;
    let stopped = tokio::select! {
        status = stop_agent(&mut agent) => status,
        _ = interrupted() => {
            let _ = agent.kill().await;
            None
        }
    };
    match stopped {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("the agent exited with {status}")),
        None => Err("the agent was killed before it finished".into()),
    }
}
