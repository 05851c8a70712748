//! Reading back from LocalStack's CloudWatch, and a private LocalStack a test may stop and
//! start (`scripts/localstack.sh` with its own port, pid file and data).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::config::{Credentials, Region, SharedCredentialsProvider};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};

/// The shared LocalStack (`TALLY_TEST_CLOUDWATCH_ENDPOINT`, default `http://127.0.0.1:4566`).
pub fn endpoint() -> String {
    std::env::var("TALLY_TEST_CLOUDWATCH_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// True when LocalStack's health endpoint answers 200 at `endpoint` (within 2 s).
pub fn answers(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let Ok(addr) = addr.parse() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /_localstack/health HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ")
}

/// Fails (never skips) when the shared LocalStack does not answer, saying how to start it.
pub fn require_localstack() {
    assert!(
        answers(&endpoint()),
        "LocalStack does not answer at {}: run `scripts/localstack.sh start` (or set TALLY_TEST_CLOUDWATCH_ENDPOINT)",
        endpoint()
    );
}

/// A unique namespace for one test run.
pub fn namespace(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "TallyTest/{test}/{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

/// The client configuration every test uses against `endpoint`: LocalStack's test credentials
/// and us-east-1 (add interceptors before `build()`).
pub fn client_config(endpoint: &str) -> aws_sdk_cloudwatch::config::Builder {
    let creds =
        SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "tally-tests"));
    aws_sdk_cloudwatch::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
}

/// A CloudWatch client for `endpoint` with LocalStack's test credentials.
pub fn reader(endpoint: &str) -> aws_sdk_cloudwatch::Client {
    aws_sdk_cloudwatch::Client::from_conf(client_config(endpoint).build())
}

/// (SampleCount, Sum) of `metric` with exactly-matching `dims` over `[from, to)`, summed over
/// every datapoint; (0, 0) when there is none.
pub async fn sample_count_and_sum(
    endpoint: &str,
    ns: &str,
    metric: &str,
    dims: &[(&str, &str)],
    from: SystemTime,
    to: SystemTime,
) -> (f64, f64) {
    let mut req = reader(endpoint)
        .get_metric_statistics()
        .namespace(ns)
        .metric_name(metric)
        .start_time(DateTime::from(from))
        .end_time(DateTime::from(to))
        .period(60)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum);
    for (k, v) in dims {
        req = req.dimensions(Dimension::builder().name(*k).value(*v).build());
    }
    let out = req.send().await.expect("GetMetricStatistics");
    out.datapoints().iter().fold((0.0, 0.0), |(c, s), p| {
        (
            c + p.sample_count().unwrap_or(0.0),
            s + p.sum().unwrap_or(0.0),
        )
    })
}

/// A LocalStack of the test's own on `port`, started and stopped with `scripts/localstack.sh`
/// (stopped on drop). Stopping deletes its data: a restarted instance starts empty.
pub struct OwnLocalStack {
    pub port: u16,
}

fn script(port: u16, action: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("scripts/localstack.sh"))
        .arg(action)
        .current_dir(&root)
        .env("LOCALSTACK_PORT", port.to_string())
        .output()
        .expect("bash runs scripts/localstack.sh");
    assert!(
        out.status.success(),
        "scripts/localstack.sh {action} on port {port} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnLocalStack {
    /// Starts it and waits until it answers (the script waits at most 60 s).
    pub fn start(port: u16) -> OwnLocalStack {
        script(port, "start");
        OwnLocalStack { port }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it (by the pid the script recorded).
    pub fn stop(&self) {
        script(self.port, "stop");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        script(self.port, "start");
    }
}

impl Drop for OwnLocalStack {
    fn drop(&mut self) {
        self.stop();
    }
}
