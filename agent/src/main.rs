//! The `tally-agent` command line: `run` (default), `validate`, `health`, `alarms plan|apply`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tally_agent::alarms::cli::AlarmsCommand;
use tally_agent::alarms::Target;
use tally_agent::catalog::Catalog;
use tally_agent::config::{Config, LogFormat, SinkKind};
use tally_agent::publish::stats::PublishStats;
use tally_agent::publish::CloudWatchSink;
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
    /// Compare a canary (a new revision) with the baseline over a window: exit 0 healthy,
    /// 1 unhealthy, 2 not enough data, 3 when it cannot decide (configuration, CloudWatch).
    Canary(tally_agent::canary::CanaryArgs),
    /// Provision the alarms and dashboard declared in the configuration.
    Alarms {
        /// `plan` (dry run) or `apply`.
        #[command(subcommand)]
        command: AlarmsCommand,
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

/// Variables the ECS agent and Fargate set in every container of a task. A task on EC2
/// without a task role has no credential variable (the SDK finds the instance profile), but
/// it always has these: in ECS the only place metrics are meant for is CloudWatch.
const ECS_HINTS: &[&str] = &[
    tally_agent::ecs::METADATA_URI_ENV,
    "ECS_CONTAINER_METADATA_URI",
];

/// The sink to build, and why (for the log and `validate`). `auto` publishes to CloudWatch
/// when anything says AWS is meant (an endpoint in the configuration, a credential or endpoint
/// variable, a task of ECS), else prints to stdout and says what would have made it publish:
/// an EC2 instance profile outside ECS leaves no trace the agent can see without calling the
/// instance metadata service, so there it refuses to guess.
fn resolve_sink(config: &Config) -> (SinkKind, String) {
    if config.sink.kind != SinkKind::Auto {
        return (config.sink.kind, "sink.kind".into());
    }
    if config
        .publish
        .endpoint_url
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return (
            SinkKind::Cloudwatch,
            "sink.kind = auto: publish.endpoint_url is set".into(),
        );
    }
    if let Some(v) = AWS_HINTS.iter().find(|v| std::env::var_os(v).is_some()) {
        return (
            SinkKind::Cloudwatch,
            format!("sink.kind = auto: {v} is set"),
        );
    }
    let execution_env = std::env::var("AWS_EXECUTION_ENV").unwrap_or_default();
    if let Some(v) = ECS_HINTS.iter().find(|v| std::env::var_os(v).is_some()) {
        return (
            SinkKind::Cloudwatch,
            format!(
                "sink.kind = auto: running in an ECS task ({v} is set); credentials come from \
                 the task role or, on EC2 without one, the instance profile"
            ),
        );
    }
    if execution_env.starts_with("AWS_ECS") {
        return (
            SinkKind::Cloudwatch,
            format!("sink.kind = auto: running in an ECS task (AWS_EXECUTION_ENV={execution_env})"),
        );
    }
    (
        SinkKind::Stdout,
        "sink.kind = auto: no AWS credential or endpoint variable and no ECS task found, so \
         periods go to stdout; on EC2 with an instance profile (which leaves no variable to \
         see) set sink.kind = \"cloudwatch\""
            .into(),
    )
}

async fn build_sink(config: &Config, stats: &Stats) -> Result<Box<dyn Sink>, String> {
    let (kind, why) = resolve_sink(config);
    tracing::info!(sink = ?kind, reason = %why, "sink chosen");
    match kind {
        SinkKind::Stdout | SinkKind::Auto => {
            Ok(Box::new(StdoutSink::new(config.sink.stdout_format)))
        }
        SinkKind::Cloudwatch => {
            let sink = CloudWatchSink::new(config.publish.clone(), stats)
                .await
                .map_err(|e| format!("cannot build the CloudWatch publisher: {e}"))?;
            Ok(Box::new(sink.start(std::time::Duration::from_secs(
                config.sink.shutdown_deadline_secs,
            ))))
        }
    }
}

/// The service and environment values alarms and dashboards are built for: they must be fixed
/// in the configuration, since an alarm watches one dimension value.
fn alarm_identity(config: &Config) -> Result<(&str, &str), String> {
    if config.service.is_empty() || config.environment.is_empty() {
        return Err(
            "alarms and dashboards watch one ServiceName and Environment: set `service` and \
             `environment` in the agent configuration (or TALLY_SERVICE / TALLY_ENVIRONMENT)"
                .into(),
        );
    }
    Ok((&config.service, &config.environment))
}

/// Checks the alarm and dashboard sections against the catalogue of what `config` publishes.
fn check_alarms(config: &Config, catalog: &Catalog) -> Result<(), String> {
    let unnamed = config.service.is_empty() || config.environment.is_empty();
    if config.alarms.is_empty() && (unnamed || !config.dashboard.enabled) {
        return Ok(());
    }
    let (service, environment) = alarm_identity(config)?;
    let target = Target {
        namespace: &config.namespace,
        service,
        environment,
        period_secs: config.period_secs,
        catalog,
    };
    tally_agent::alarms::validate::validate(&config.alarms_config(), &config.dashboard, &target)
        .map_err(|e| e.to_string())
}

/// Resolves the `[ecs]` dimensions (nothing is fetched when none are configured).
async fn ecs_dimensions(config: &Config) -> Vec<(String, String)> {
    if config.ecs.dimensions.is_empty() {
        return Vec::new();
    }
    let d = tally_agent::ecs::task_dimensions(&config.ecs).await;
    tracing::info!(dimensions = ?d.dimensions, "ECS task metadata dimensions");
    d.dimensions
}

/// Plans or applies the alarms against the configured CloudWatch endpoint. `extra`: the
/// `[ecs]` dimensions the publisher resolved, when this runs beside it (`apply_on_start`);
/// resolved here otherwise.
async fn alarms_run(
    config: &Config,
    command: &AlarmsCommand,
    extra: Option<Vec<(String, String)>>,
) -> Result<(), String> {
    let extra = match (extra, command) {
        (Some(e), _) => e,
        // Exported outside the task: the values come from the command line.
        (None, AlarmsCommand::Export { ecs_values, .. }) if !ecs_values.is_empty() => {
            ecs_values.clone()
        }
        (None, _) => ecs_dimensions(config).await,
    };
    // An alarm on a set without a configured [ecs] dimension watches series the agent, which
    // runs in the task and adds it, never publishes: refuse rather than write alarms that
    // stay INSUFFICIENT_DATA (or breach forever, for `no_traffic`).
    let missing: Vec<&str> = config
        .ecs
        .dimensions
        .iter()
        .map(|d| d.name())
        .filter(|n| !extra.iter().any(|(k, _)| k == n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the [ecs] dimensions {missing:?} could not be read from the ECS task metadata \
             (ECS_CONTAINER_METADATA_URI_V4 unset or unreachable: see the warnings above), and \
             the agent publishes every metric with them; run `tally-agent alarms` inside the \
             task (or set [alarm_management] apply_on_start = true; for `alarms export`, give \
             each with --ecs-value NAME=VALUE), or remove them from [ecs] dimensions"
        ));
    }
    let catalog = Catalog::from_config_with(config, &extra);
    check_alarms(config, &catalog)?;
    let (service, environment) = alarm_identity(config)?;
    let target = Target {
        namespace: &config.namespace,
        service,
        environment,
        period_secs: config.period_secs,
        catalog: &catalog,
    };
    if let AlarmsCommand::Export { format, output, .. } = command {
        return export_to(config, *format, output.as_deref(), &target);
    }
    let client = cli_client(config).await?;
    let mut out = std::io::stdout();
    tally_agent::alarms::cli::run(
        command,
        &client,
        &config.alarms_config(),
        &config.dashboard,
        &target,
        &mut out,
    )
    .await
    .map_err(|e| e.to_string())
}

/// `alarms export`: to `output`, or standard output.
fn export_to(
    config: &Config,
    format: tally_agent::alarms::export::ExportFormat,
    output: Option<&std::path::Path>,
    target: &Target<'_>,
) -> Result<(), String> {
    let (alarms, dashboard) = (config.alarms_config(), &config.dashboard);
    let write = |out: &mut dyn std::io::Write| {
        tally_agent::alarms::cli::write_export(format, &alarms, dashboard, target, out)
            .map_err(|e| e.to_string())
    };
    match output {
        None => write(&mut std::io::stdout().lock()),
        Some(path) => {
            let mut buf = Vec::new();
            write(&mut buf)?;
            std::fs::write(path, buf).map_err(|e| {
                format!(
                    "cannot write {}: {e}; check the path given to --output",
                    path.display()
                )
            })
        }
    }
}

/// The CloudWatch client of a one-shot command (`alarms`, `canary`): the publisher's
/// settings, its own throwaway statistics.
async fn cli_client(config: &Config) -> Result<aws_sdk_cloudwatch::Client, String> {
    tally_agent::publish::client::build_client(
        &config.publish,
        tally_agent::publish::ClientOverrides::default(),
        PublishStats::register(&Stats::new()),
    )
    .await
    .map_err(|e| format!("cannot build the CloudWatch client: {e}"))
}

/// Installs the SIGTERM and SIGINT handlers now (call it first: the agent is PID 1 in its
/// container, where a signal without a handler is ignored, so a task stopped while the agent
/// starts (task metadata, sink, log replay) would wait for ECS's SIGKILL) and returns the
/// future that completes on either. A signal that came during start completes it at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// The configuration, with logging set up from it; exit code 2 (after saying why) when it
/// cannot be loaded.
fn load_with_logs(common: &Common) -> Result<Config, ExitCode> {
    let config = load(common).map_err(|e| {
        eprintln!("tally-agent: {e}");
        ExitCode::from(2)
    })?;
    init_logs(&config);
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(common: &Common) -> ExitCode {
    let mut config = match load_with_logs(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats = Stats::new();
    let result = rt.block_on(async {
        let shutdown = shutdown_signal();
        let extra = ecs_dimensions(&config).await;
        tally_agent::canary::resolve_revision(&mut config).await;
        if config.alarm_management.apply_on_start {
            // Its own thread and runtime: pacing PutMetricAlarm at 3 TPS must not delay ingest.
            // The publisher's [ecs] dimensions, not a second fetch that could differ.
            let config = config.clone();
            let extra = extra.clone();
            std::thread::spawn(move || {
                let command = AlarmsCommand::Apply { json: false };
                let apply = alarms_run(&config, &command, Some(extra));
                match runtime().and_then(|rt| rt.block_on(apply)) {
                    Ok(()) => tracing::info!("alarms applied at start"),
                    Err(e) => tracing::error!("alarms not applied at start: {e}"),
                }
            });
        }
        let sink = build_sink(&config, &stats).await?;
        tracing::info!(sink = sink.name(), "sink selected");
        tally_agent::runtime::run(config, extra, sink, stats, shutdown, |_| {})
            .await
            .map_err(|e| e.to_string())
    });
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
            if let Err(e) = check_alarms(&c, &cat) {
                eprintln!("tally-agent: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "configuration is valid: namespace {:?}, period {} s, {} metrics catalogued, sink {:?} ({})",
                c.namespace,
                c.period_secs,
                cat.metrics.len(),
                resolve_sink(&c).0,
                resolve_sink(&c).1
            );
            if c.self_metrics.cloudwatch && (c.service.is_empty() || c.environment.is_empty()) {
                println!(
                    "warning: self_metrics.cloudwatch = true but `service` or `environment` is unset: the agent's own metrics are published with ServiceName/Environment = \"unknown\"; set both (TALLY_SERVICE / TALLY_ENVIRONMENT)"
                );
            }
            for w in c.warnings() {
                println!("warning: {w}");
            }
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

fn alarms(common: &Common, command: &AlarmsCommand) -> ExitCode {
    let config = match load_with_logs(common) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = runtime().and_then(|rt| rt.block_on(alarms_run(&config, command, None)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn canary(common: &Common, args: &tally_agent::canary::CanaryArgs) -> ExitCode {
    use tally_agent::canary::EXIT_ERROR;
    let config = match load(common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tally-agent: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    init_logs(&config);
    let decide = async {
        let client = cli_client(&config).await?;
        tally_agent::canary::gate(&client, &config, args)
            .await
            .map_err(|e| e.to_string())
    };
    match runtime().and_then(|rt| rt.block_on(decide)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("tally-agent: {e}");
                        return ExitCode::from(EXIT_ERROR);
                    }
                }
            } else {
                print!("{report}");
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("tally-agent: {e}");
            ExitCode::from(EXIT_ERROR)
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
        Some(Command::Alarms { command }) => alarms(&cli.common, command),
        Some(Command::Canary(args)) => canary(&cli.common, args),
    }
}
