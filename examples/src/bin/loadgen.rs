//! The example shop's request mix, against a running shop.
//!
//! `cargo run --release -p tally-examples --bin loadgen -- --target 127.0.0.1:3000 --duration 30s`

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tally_examples::cli::parse_duration;
use tally_examples::load::{run, LoadPlan};

/// Sends the example shop's request mix; stops at --duration, --max-requests or Ctrl-C.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The shop's address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    target: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Requests per second in total; 0 for as fast as the shop answers.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long to run (`30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Most requests to send.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let plan = LoadPlan {
        target: args.target,
        concurrency: args.concurrency,
        rate: args.rate,
        duration: args.duration,
        max_requests: args.max_requests,
    };
    let report = run(plan, stop_rx).await;
    println!("{report}");
}
