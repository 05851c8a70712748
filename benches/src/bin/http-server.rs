//! The HTTP benchmark's server: hello-world axum, bare or behind one metrics/tracing layer.
//!
//! `scripts/bench-middleware.sh` starts it once per configuration and round, pinned to one
//! core, with `wrk` on the other. Every configuration answers `GET /` with the same body and
//! serves on a one-worker tokio runtime, so the only difference is the layer.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};

/// What wraps the hello-world router.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// No middleware.
    Bare,
    /// tally-tower's `TallyLayer`, recording into tally (the SDK flushes to a loopback
    /// capture agent every second, as it would to a sidecar).
    Tally,
    /// axum-prometheus's `PrometheusMetricLayer` with its Prometheus recorder.
    Prometheus,
    /// tower-http's `TraceLayer::new_for_http()` under an INFO `fmt` subscriber (writing to a sink).
    Trace,
}

/// Serves hello-world on --addr until killed.
#[derive(Parser)]
struct Args {
    /// The configuration to serve.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
}

async fn hello() -> &'static str {
    "Hello, World!"
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // axum-prometheus spawns its upkeep task while building its layer.
    let entered = runtime.enter();
    let router = Router::new().route("/", get(hello));
    // Keep the capture agent and the SDK handle alive while serving.
    let mut keep = None;
    let app = match args.mode {
        Mode::Bare => router,
        Mode::Tally => {
            let agent = tally::testing::CaptureAgent::start();
            let tally = tally::Tally::builder()
                .service("bench")
                .agent(agent.addr())
                .flush_interval(Duration::from_secs(1))
                .build()?;
            let app = router.layer(tally_tower::TallyLayer::new(&tally));
            keep = Some((agent, tally));
            app
        }
        Mode::Prometheus => {
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            router
                .route("/metrics", get(move || async move { handle.render() }))
                .layer(layer)
        }
        Mode::Trace => {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_writer(std::io::sink)
                .init();
            router.layer(tower_http::trace::TraceLayer::new_for_http())
        }
    };
    drop(entered);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        eprintln!(
            "http-server: {:?} on http://{}",
            args.mode,
            listener.local_addr()?
        );
        axum::serve(listener, app).await
    })?;
    drop(keep);
    Ok(())
}
