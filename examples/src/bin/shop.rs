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
    axum::serve(listener, tally_examples::shop::router(&tally))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tokio::task::spawn_blocking(move || tally.shutdown()).await?;
    Ok(())
}
