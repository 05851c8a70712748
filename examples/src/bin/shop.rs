//! The example shop alone, sending its metrics to the tally agent.
//!
//! `cargo run --release -p tally-examples --bin shop -- --addr 127.0.0.1:3000`

use std::net::SocketAddr;

use clap::Parser;

/// The tally example shop: an axum service instrumented with tally-tower.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The tally agent (`host:port` or `unix:///path`).
    #[arg(long, env = "TALLY_AGENT_ADDR", default_value = tally::conventions::DEFAULT_AGENT_ADDR)]
    agent: String,
    /// Inject a fault: requests whose path starts with this answer 500 every
    /// `--fail-every`-th time (for trying the canary gate).
    #[arg(long, requires = "fail_every")]
    fail_path: Option<String>,
    /// With `--fail-path`: every this many matching requests fails (10: 10% 500s).
    #[arg(long, requires = "fail_path", value_parser = clap::value_parser!(u64).range(1..))]
    fail_every: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tally_examples::cli::init_logging();
    let args = Args::parse();
    let tally = tally::Tally::builder()
        .service("example-shop")
        .agent(args.agent.as_str())
        .build()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} ({e}); choose another with --addr",
                args.addr
            )
        })?;
    tracing::info!("shop listening on http://{}", listener.local_addr()?);
    let fault = args
        .fail_path
        .zip(args.fail_every)
        .map(|(path_prefix, every)| tally_examples::shop::Fault { path_prefix, every });
    axum::serve(
        listener,
        tally_examples::shop::router_with_faults(&tally, fault),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    tokio::task::spawn_blocking(move || tally.shutdown()).await?;
    Ok(())
}
