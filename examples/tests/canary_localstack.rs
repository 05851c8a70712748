//! The canary gate end to end: two example-shop processes, each with its own tally agent
//! (as two ECS tasks would be), publish to LocalStack as task-definition revisions 41 and 42
//! (read from a task metadata endpoint served here), then `tally-agent canary --canary 42
//! --baseline 41` decides:
//!
//! - 42 answering 10% 500s on one route (`/orders/`): exit 1;
//! - a healthy 42: exit 0;
//! - 50 requests a side: exit 2 (not enough data).
//!
//! LocalStack answers percentile statistics with HTTP 500, so these runs compare error rate and
//! request volume only (`canary.check_latency = false`); the p99 path is tested from
//! recorded GetMetricData answers in `agent/tests/canary_recorded.rs`.
//!
//! Needs LocalStack on 127.0.0.1:4566 (`scripts/localstack.sh start`) and the `tally-agent`
//! binary next to `shop` in the target directory: `cargo test --workspace` builds both (or
//! `cargo build -p tally-agent` first when running this test alone).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ENDPOINT: &str = "127.0.0.1:4566";

fn agent_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_shop")).with_file_name("tally-agent");
    assert!(
        p.exists(),
        "{} is missing: build it (`cargo build -p tally-agent`, or run `cargo test --workspace`)",
        p.display()
    );
    p
}

fn require_localstack() {
    let addr: SocketAddr = ENDPOINT.parse().unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "LocalStack (CloudWatch) is not reachable at {ENDPOINT}: run `scripts/localstack.sh start` \
         and run the tests again"
    );
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 GET on a fresh connection; the status code, or `None` when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn get_body(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// An ECS task metadata endpoint answering `/task` with this revision (at most 16 requests).
fn metadata_endpoint(revision: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(16) {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = format!(
                r#"{{"Cluster":"default","TaskARN":"arn:aws:ecs:us-east-1:111122223333:task/default/{revision}","Family":"shop","Revision":"{revision}","LaunchType":"FARGATE"}}"#
            );
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/v4/{revision}")
}

struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.name);
    }

    /// Waits (at most 90 s: a hang guard, not a performance limit) for the exit; its output.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within 90 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One task: an agent publishing to LocalStack with the revision from its metadata endpoint,
/// and a shop sending to it.
struct Task {
    agent: Proc,
    admin: SocketAddr,
    shop: Proc,
    http: SocketAddr,
}

fn start_task(namespace: &str, environment: &str, revision: &'static str, fault: bool) -> Task {
    let ingest = free_addr();
    let admin = free_addr();
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--sink", "cloudwatch"]);
    for kv in [
        format!("namespace={namespace}"),
        "service=shop".to_owned(),
        format!("environment={environment}"),
        "period_secs=10".to_owned(),
        format!("ingest.tcp_addr={ingest}"),
        format!("admin.addr={admin}"),
        "publish.region=us-east-1".to_owned(),
        format!("publish.endpoint_url=http://{ENDPOINT}"),
        "canary.publish_revision=true".to_owned(),
        "aggregate.rollups=[{ drop = [\"Route\", \"Method\", \"StatusClass\"] }]".to_owned(),
    ] {
        cmd.arg("--set").arg(kv);
    }
    cmd.env_remove("TALLY_CONFIG")
        .env("ECS_CONTAINER_METADATA_URI_V4", metadata_endpoint(revision))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let agent = Proc {
        child: cmd.spawn().expect("tally-agent starts"),
        name: format!("agent {revision}"),
    };
    until("the agent answers /health", || {
        get(admin, "/health") == Some(200)
    });

    let http = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shop"));
    cmd.args(["--addr", &http.to_string(), "--agent", &ingest.to_string()]);
    if fault {
        cmd.args(["--fail-path", "/orders/", "--fail-every", "10"]);
    }
    let shop = Proc {
        child: cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shop starts"),
        name: format!("shop {revision}"),
    };
    // Ready once it accepts connections; no request, so the load below is all it serves.
    until("the shop listens", || {
        TcpStream::connect_timeout(&http, Duration::from_millis(500)).is_ok()
    });
    Task {
        agent,
        admin,
        shop,
        http,
    }
}

/// `n` requests to `/` and `n` to `/orders/7`; the number of 500s.
fn load(task: &Task, n: usize) -> usize {
    let mut errors = 0;
    for _ in 0..n {
        for path in ["/", "/orders/7"] {
            match get(task.http, path) {
                Some(500) => errors += 1,
                Some(200) => {}
                other => panic!("GET {path}: {other:?}"),
            }
        }
    }
    errors
}

/// Stops the shop (SIGINT: it flushes to its agent), then the agent (SIGTERM: it publishes
/// what it holds), and checks both exit cleanly.
fn stop(task: Task) {
    let Task { agent, shop, .. } = task;
    shop.signal("-INT");
    let (status, err) = shop.wait();
    assert!(status.success(), "shop: {status}\n{err}");
    agent.signal("-TERM");
    let (status, err) = agent.wait();
    assert!(
        status.success(),
        "agent: {status} (a non-zero exit means it dropped samples)\n{err}"
    );
    assert!(
        err.contains("publishing per revision"),
        "the agent read its revision from the task metadata:\n{err}"
    );
}

fn canary(namespace: &str, environment: &str) -> (Option<i32>, Value, String) {
    let out: Output = Command::new(agent_bin())
        .args(["canary", "--canary", "42", "--baseline", "41", "--json"])
        .args(["--set", &format!("namespace={namespace}")])
        .args(["--set", "service=shop"])
        .args(["--set", &format!("environment={environment}")])
        .args(["--set", "publish.region=us-east-1"])
        .args(["--set", &format!("publish.endpoint_url=http://{ENDPOINT}")])
        // LocalStack answers percentiles with HTTP 500 (see the module docs).
        .args(["--set", "canary.check_latency=false"])
        .env_remove("TALLY_CONFIG")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("tally-agent canary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), report, stderr)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// Runs one scenario: baseline 41 healthy, canary 42 with or without the fault, `n`
/// requests per route on each; returns the gate's exit code and report.
fn scenario(name: &str, fault: bool, n: usize) -> (Option<i32>, Value) {
    require_localstack();
    let id = format!("{:08x}", rand_suffix());
    let namespace = format!("TallyCanary/{name}-{id}");
    let environment = format!("canary-{id}");
    let baseline = start_task(&namespace, &environment, "41", false);
    let canary_task = start_task(&namespace, &environment, "42", fault);
    assert_eq!(load(&baseline, n), 0, "the baseline is healthy");
    let errors = load(&canary_task, n);
    assert_eq!(
        errors,
        if fault { n / 10 } else { 0 },
        "500s the canary answered"
    );
    if name == "healthy" {
        // The per-revision series are billed like any other: /cost counts them once a
        // period with traffic has closed (RequestCount, ResponseTime and the derived
        // ErrorRate; no ErrorCount without errors).
        until("/cost shows the per-revision series", || {
            get_body(canary_task.admin, "/cost")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|c| c["revision_metrics"].as_u64() == Some(3))
        });
    }
    stop(baseline);
    stop(canary_task);
    let (code, report, stderr) = canary(&namespace, &environment);
    let requests = 2.0 * n as f64;
    assert_eq!(report["canary"]["requests"], requests, "{report}\n{stderr}");
    assert_eq!(report["baseline"]["requests"], requests, "{report}");
    assert_eq!(report["canary"]["errors"], errors as f64, "{report}");
    assert_eq!(report["baseline"]["errors"], 0.0, "{report}");
    assert_eq!(
        report["exit_code"].as_i64().map(|c| c as i32),
        code,
        "{report}"
    );
    (code, report)
}

fn rand_suffix() -> u32 {
    // Distinct per process and call: time and pid, no extra dependency.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    t ^ std::process::id().rotate_left(16)
}

#[test]
fn a_canary_answering_ten_percent_500s_on_one_route_fails_the_gate_with_exit_1() {
    let (code, report) = scenario("faulty", true, 300);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["verdict"], "unhealthy");
    // 30 of 600 is 5.0%: not above the absolute 5%, but 5 points above the baseline's 0%.
    assert_eq!(check(&report, "error_rate_percent")["outcome"], "pass");
    assert_eq!(
        check(&report, "error_rate_increase_points")["outcome"],
        "fail"
    );
}

#[test]
fn a_healthy_canary_passes_the_gate_with_exit_0() {
    let (code, report) = scenario("healthy", false, 300);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["verdict"], "healthy");
}

#[test]
fn fifty_requests_are_not_enough_for_a_verdict_exit_2() {
    let (code, report) = scenario("scant", true, 25);
    assert_eq!(code, Some(2), "{report:#}");
    assert_eq!(report["verdict"], "not_enough_data");
    assert_eq!(check(&report, "requests")["outcome"], "no_data");
}
