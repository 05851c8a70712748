//! The admin endpoint on loopback: `/health`, `/metrics` (Prometheus text) and `/cost`.
//!
//! `/health` answers 200 with `{"live":true,"ready":true,...}` while the agent accepts SDK
//! connections and 503 once it is shutting down (or before its listeners are up); the
//! `tally-agent health` subcommand asks it, for container health checks without curl.

mod config;
pub mod cost;

pub use config::AdminConfig;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::stats::Stats;

/// Shared state the endpoint reports.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Self-metrics.
    pub stats: Stats,
    /// Listeners bound and not shutting down.
    pub ready: Arc<AtomicBool>,
    /// Period length, for the cost estimate.
    pub period_secs: u32,
    /// Custom metrics the agent publishes about itself each period (`[self_metrics]`), for
    /// the cost estimate; 0 when they are off.
    pub self_metrics: u64,
    /// `publish.max_datums_per_request`: how many datums one PutMetricData call carries, for
    /// the estimate of the calls a period costs.
    pub max_datums_per_request: u64,
}

fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Answers one request.
pub fn route(state: &AdminState, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/health" => {
            let ready = state.ready.load(Ordering::Relaxed);
            let body = serde_json::json!({
                "live": true,
                "ready": ready,
                "active_series": state.stats.gauge_value("tally_agent_active_series", &[]),
                "connections": state.stats.gauge_value("tally_agent_connections", &[]),
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.stats.render_prometheus(),
        ),
        "/cost" => {
            let m = state
                .stats
                .gauge_value("tally_agent_last_period_metrics", &[]);
            let d = state
                .stats
                .gauge_value("tally_agent_last_period_datums", &[]);
            let e = cost::estimate(
                m.max(0) as u64,
                d.max(0) as u64,
                state.self_metrics,
                state.period_secs,
                state.max_datums_per_request,
            )
            .with_revision_metrics(
                state
                    .stats
                    .gauge_value(crate::aggregate::revision::LAST_PERIOD_METRICS, &[])
                    .max(0) as u64,
            );
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&e).unwrap_or_default(),
            )
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /metrics or /cost\n".into(),
        ),
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let state = Arc::new(state);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req.uri().path())) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Asks a running agent's `/health` over loopback; true when it answers 200.
pub fn check_health(addr: SocketAddr, timeout: Duration) -> Result<bool, std::io::Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while head.len() < 4096 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    Ok(status == "200")
}
