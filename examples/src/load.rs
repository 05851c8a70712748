//! A small load generator for the example shop: a fixed mix of requests over a few
//! keep-alive connections, bounded by a request count, a duration and a stop signal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// The shop's address.
    pub target: SocketAddr,
    /// Concurrent workers, each with at most one request in flight.
    pub concurrency: usize,
    /// Requests per second across all workers (0: as fast as the shop answers).
    pub rate: u32,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many requests.
    pub max_requests: u64,
}

/// What the load generator saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response (connection refused, reset, timeout).
    pub failures: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// Requests sent.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s:",
            self.requests(),
            self.elapsed.as_secs_f64()
        )?;
        for (status, n) in &self.statuses {
            write!(f, " {status}={n}")?;
        }
        write!(f, " no-response={}", self.failures)
    }
}

/// The request mix: (weight, method, path template, body). `{n}` becomes a number.
const MIX: &[(u32, &str, &str, &str)] = &[
    (30, "GET", "/", ""),
    (10, "GET", "/health", ""),
    (25, "GET", "/orders/{n}", ""),
    (3, "GET", "/orders/{n}000", ""),
    (
        10,
        "POST",
        "/checkout",
        r#"{"amount": {n}.99, "payment": "card"}"#,
    ),
    (
        4,
        "POST",
        "/checkout",
        r#"{"amount": {n}.5, "payment": "paypal"}"#,
    ),
    (10, "GET", "/flaky", ""),
    (3, "GET", "/slow", ""),
    (2, "GET", "/stream", ""),
    (1, "GET", "/panic", ""),
    (2, "GET", "/wp-login.php?scan={n}", ""),
];

/// A tiny deterministic generator (xorshift64*): the mix needs no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Send the mix until the plan's count or duration is reached or `stop` turns true.
pub async fn run(plan: LoadPlan, stop: watch::Receiver<bool>) -> LoadReport {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = Instant::now();
    let deadline = start + plan.duration;
    let workers = plan.concurrency.max(1);
    let per_worker = plan.max_requests.div_ceil(workers as u64);
    // Each worker paces itself to its share of the rate.
    let pause =
        (plan.rate > 0).then(|| Duration::from_secs_f64(workers as f64 / f64::from(plan.rate)));
    let total_weight: u32 = MIX.iter().map(|m| m.0).sum();

    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let client = client.clone();
        let mut stop = stop.clone();
        let target = plan.target;
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            let mut next = Instant::now();
            for _ in 0..per_worker {
                if *stop.borrow() || Instant::now() >= deadline {
                    break;
                }
                let mut pick = (rng.next() % u64::from(total_weight)) as u32;
                let &(_, method, path, body) = MIX
                    .iter()
                    .find(|m| {
                        if pick < m.0 {
                            true
                        } else {
                            pick -= m.0;
                            false
                        }
                    })
                    .unwrap_or(&MIX[0]);
                let n = (rng.next() % 999 + 1).to_string();
                let request = http::Request::builder()
                    .method(method)
                    .uri(format!("http://{target}{}", path.replace("{n}", &n)))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.replace("{n}", &n))))
                    .expect("the mix holds valid requests");
                let send = async {
                    let response = client.request(request).await.ok()?;
                    let status = response.status().as_u16();
                    response.into_body().collect().await.ok()?;
                    Some(status)
                };
                tokio::select! {
                    outcome = tokio::time::timeout(Duration::from_secs(10), send) => {
                        match outcome {
                            Ok(Some(status)) => *report.statuses.entry(status).or_default() += 1,
                            _ => report.failures += 1,
                        }
                    }
                    _ = stop.changed() => break,
                }
                if let Some(pause) = pause {
                    next += pause;
                    tokio::select! {
                        _ = tokio::time::sleep_until(next.into()) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
            report
        }));
    }

    let mut total = LoadReport::default();
    for task in tasks {
        if let Ok(report) = task.await {
            for (status, n) in report.statuses {
                *total.statuses.entry(status).or_default() += n;
            }
            total.failures += report.failures;
        }
    }
    total.elapsed = start.elapsed();
    total
}
