//! StatsD / DogStatsD with the real clients: `hot-shots` from npm and `datadog`'s DogStatsd
//! from PyPI (pinned in `tests/statsd_clients/`, installed by `scripts/statsd-clients.sh`,
//! which `scripts/test.sh` runs), sending a known load to the agent as a real process.
//!
//! - Over UDP to an agent publishing to LocalStack, stopped with SIGTERM: counters (with and
//!   without sample rates, one series fed by both clients), gauges with changes, timers,
//!   histograms, distributions and sets arrive with exact SampleCount and Sum for counters
//!   and sets, exact Minimum/Maximum for gauges, exact SampleCount for histograms and their
//!   Sum/Minimum/Maximum within the HDR histograms' 0.1 % (3 significant digits, as for SDK
//!   histograms).
//! - Over the Unix datagram socket to an agent printing JSON lines: the same exact totals,
//!   and p50/p99 within 1 % of the exact percentiles of what was sent (LocalStack does not
//!   compute extended statistics, so percentiles are read from the agent's own output of
//!   the histogram it publishes as Values/Counts).
//! - EMF: `aws-embedded-metrics` from npm and from PyPI in Agent mode over TCP, plus raw UDP
//!   records: exact counts and sums, one series fed by both clients, the namespace and the
//!   dimension sets clamped to the configuration and counted.
//! - A burst of malformed, truncated, oversized and non-UTF-8 packets among good ones: the
//!   agent stays up, good samples are exact and every bad one is counted by reason.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::cloudwatch::{endpoint, namespace, reader, require_localstack};
use common::{prom, total, wait_for_metric, Agent};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/statsd_clients")
}

/// Fails with what to run when the pinned clients are not installed.
fn require_clients() {
    let d = clients_dir();
    assert!(
        d.join("node_modules/hot-shots").is_dir()
            && d.join("node_modules/aws-embedded-metrics").is_dir()
            && d.join(".venv/bin/python").is_file(),
        "the StatsD test clients are not installed: run scripts/statsd-clients.sh (scripts/test.sh does)"
    );
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a client script; returns the JSON it printed.
fn run_client(program: &str, script: &str, args: &[&str]) -> serde_json::Value {
    run_client_with(program, script, args, &[])
}

fn run_client_with(
    program: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let out = Command::new(program)
        .arg(clients_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("{program} {script} could not start: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints one JSON object")
}

fn node(args: &[&str]) -> u64 {
    run_client("node", "send.js", args)["lines"]
        .as_u64()
        .unwrap()
}

fn python(args: &[&str]) -> u64 {
    let py = clients_dir().join(".venv/bin/python");
    run_client(py.to_str().unwrap(), "send.py", args)["lines"]
        .as_u64()
        .unwrap()
}

/// Waits, when a minute is about to end, for the next one: each test's load then lands in
/// one period (sets count distinct members per period).
fn start_of_a_quiet_minute() {
    let s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if s % 60 > 40 {
        std::thread::sleep(Duration::from_secs(61 - s % 60));
    }
}

const DIMS: [(&str, &str); 3] = [
    ("Environment", "test"),
    ("ServiceName", "shop"),
    ("route", "/a"),
];

#[derive(Debug, Default)]
struct Stats {
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

async fn statistics(ns: &str, name: &str, from: SystemTime, to: SystemTime) -> Stats {
    let mut req = reader(&endpoint())
        .get_metric_statistics()
        .namespace(ns)
        .metric_name(name)
        .start_time(DateTime::from(from))
        .end_time(DateTime::from(to))
        .period(60)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Minimum)
        .statistics(Statistic::Maximum);
    for (k, v) in DIMS {
        req = req.dimensions(Dimension::builder().name(k).value(v).build());
    }
    let out = req.send().await.expect("GetMetricStatistics");
    let points = out.datapoints();
    assert!(!points.is_empty(), "{name}: no datapoint in LocalStack");
    points.iter().fold(
        Stats {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Stats::default()
        },
        |s, p| Stats {
            count: s.count + p.sample_count().unwrap(),
            sum: s.sum + p.sum().unwrap(),
            min: s.min.min(p.minimum().unwrap()),
            max: s.max.max(p.maximum().unwrap()),
        },
    )
}

/// `got` within the HDR histograms' relative precision (3 significant digits) of `want`.
fn close(name: &str, what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= want.abs() * 1e-3,
        "{name} {what}: {got}, sent {want} (more than 0.1 % apart)"
    );
}

fn statsd_args<'a>(udp: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--set",
        "statsd.enabled=true",
        "--set",
        udp,
        "--set",
        "statsd.strip_prefix=shop.",
    ];
    v.extend_from_slice(extra);
    v
}

fn dropped_total(agent: &Agent) -> u64 {
    agent
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("tally_agent_dropped_samples_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_shots_and_dogstatsd_over_udp_reach_cloudwatch_with_the_statistics_they_sent() {
    require_localstack();
    require_clients();
    start_of_a_quiet_minute();
    let ns = namespace("statsd");
    let port = free_udp_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{port}");
    let (nsarg, ep) = (
        format!("namespace={ns}"),
        format!("publish.endpoint_url={}", endpoint()),
    );
    let args = statsd_args(
        &udp,
        &[
            "--sink",
            "cloudwatch",
            "--set",
            &nsarg,
            "--set",
            &ep,
            "--set",
            "publish.region=us-east-1",
        ],
    );
    let from = SystemTime::now() - Duration::from_secs(120);
    let agent = Agent::start_with(
        &args,
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let port = port.to_string();
    let lines = node(&["udp", "127.0.0.1", &port]) + python(&["udp", "127.0.0.1", &port]);
    let read = wait_for_metric(
        &agent,
        "tally_agent_statsd_lines_total{kind=\"metric\",listener=\"udp\"}",
        lines,
        Duration::from_secs(60),
    );
    assert_eq!(read, lines, "every line the clients sent was read");
    let m = agent.admin_get("/metrics");
    assert_eq!(
        prom(
            &m,
            "tally_agent_statsd_lines_total{kind=\"event\",listener=\"udp\"}"
        ),
        1
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_statsd_lines_total{kind=\"service_check\",listener=\"udp\"}"
        ),
        1
    );
    assert_eq!(dropped_total(&agent), 0, "nothing dropped:\n{m}");
    let (ok, _, err) = agent.terminate();
    assert!(ok, "the agent exits cleanly on SIGTERM:\n{err}");
    assert!(
        err.contains("StatsD receive buffer"),
        "the effective buffer is logged"
    );
    let to = SystemTime::now() + Duration::from_secs(120);

    // Counters and sets: exact. `requests` is one series fed by both clients.
    for (name, sum) in [
        ("requests", 2000.0),
        ("sampled", 2000.0),    // 500 lines of 2 at rate 0.5
        ("py_sampled", 3000.0), // 250 lines of 3 at rate 0.25
        ("users", 300.0),
        ("py_users", 123.0),
    ] {
        let s = statistics(&ns, name, from, to).await;
        assert_eq!(s.sum, sum, "{name}: {s:?}");
    }
    // Gauges: the extremes exactly (10, +5, -3 and 4, 9, 7).
    for (name, min, max) in [("depth", 10.0, 15.0), ("py_depth", 4.0, 9.0)] {
        let s = statistics(&ns, name, from, to).await;
        assert_eq!((s.min, s.max), (min, max), "{name}: {s:?}");
    }
    // Timers, histograms, distributions: every sample counted; sum and extremes within
    // the histogram's precision.
    for (name, count, sum, min, max) in [
        ("latency", 1000.0, 500_500.0, 1.0, 1000.0),
        ("payload", 1000.0, 50_500.0, 1.0, 100.0),
        ("queue_wait", 1000.0, 125_125.0, 0.25, 250.0),
        ("py_latency", 1000.0, 1_001_000.0, 2.0, 2000.0),
        ("py_payload", 1000.0, 25_500.0, 1.0, 50.0),
        ("py_queue_wait", 1000.0, 62_562.5, 0.125, 125.0),
    ] {
        let s = statistics(&ns, name, from, to).await;
        assert_eq!(s.count, count, "{name}: {s:?}");
        close(name, "Sum", s.sum, sum);
        close(name, "Minimum", s.min, min);
        close(name, "Maximum", s.max, max);
    }
}

/// The `field` of the JSON line of `metric` with the test's dimensions.
fn field(stdout: &str, metric: &str, field: &str) -> f64 {
    total(stdout, metric, &[("route", "/a")], field)
}

#[test]
fn hot_shots_and_dogstatsd_over_the_unix_socket_give_exact_totals_and_percentiles_within_one_percent(
) {
    require_clients();
    start_of_a_quiet_minute();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dsd.socket");
    let sock_arg = format!("statsd.unix_socket={}", sock.display());
    let port = free_udp_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{port}");
    let agent = Agent::start(&statsd_args(&udp, &["--set", &sock_arg]));
    let mode = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o600,
        "owner only by default"
    );
    let path = sock.to_str().unwrap();
    let lines = node(&["uds", path]) + python(&["uds", path]);
    let read = wait_for_metric(
        &agent,
        "tally_agent_statsd_lines_total{kind=\"metric\",listener=\"unix\"}",
        lines,
        Duration::from_secs(60),
    );
    assert_eq!(read, lines);
    assert_eq!(dropped_total(&agent), 0);
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    assert!(!sock.exists(), "the socket file is removed at exit");

    // ServiceName and Environment come from the service:/env: tags.
    let svc = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["metric"] == "requests")
        .expect("requests published");
    assert_eq!(svc["dimensions"]["ServiceName"], "shop");
    assert_eq!(svc["dimensions"]["Environment"], "test");
    assert_eq!(field(&out, "requests", "sum"), 2000.0);
    assert_eq!(field(&out, "sampled", "sum"), 2000.0);
    assert_eq!(field(&out, "py_sampled", "sum"), 3000.0);
    assert_eq!(field(&out, "users", "sum"), 300.0);
    assert_eq!(field(&out, "py_users", "sum"), 123.0);
    // Nearest-rank percentiles of 1..=1000 and 2..=2000 (step 2).
    for (name, p50, p99) in [
        ("latency", 500.0, 990.0),
        ("py_latency", 1000.0, 1980.0),
        ("payload", 50.0, 99.0),
        ("queue_wait", 125.0, 247.5),
    ] {
        assert_eq!(field(&out, name, "count"), 1000.0, "{name}");
        for (q, got, want) in [
            ("p50", field(&out, name, "p50"), p50),
            ("p99", field(&out, name, "p99"), p99),
        ] {
            assert!(
                (got - want).abs() <= want * 0.01,
                "{name} {q}: {got}, exact {want}"
            );
        }
    }
}

#[test]
fn a_burst_of_bad_packets_among_good_ones_is_counted_and_the_good_samples_stay_exact() {
    start_of_a_quiet_minute();
    let port = free_udp_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{port}");
    let agent = Agent::start(&statsd_args(
        &udp,
        &["--set", "statsd.max_packet_bytes=4096"],
    ));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{port}");
    let oversized = format!("good:1|c|#route:/a\n{}", "x:1|c\n".repeat(1000));
    let mut sent_good = 0u64;
    let bad: [&[u8]; 7] = [
        b"good:1|c|#route:/a\nbroken|c", // 1 malformed line + 1 good
        b"good:1|c|#route:/a\ngood:1|c|#route:/a\ngood:1", // truncated last line
        b"\xff\xfegood:1|c\n",           // not UTF-8 (whole packet)
        oversized.as_bytes(),            // over 4096 bytes
        b"good:1|c|#route:/a\nlat:abc|ms\nlat:-1|ms\nq:1|g|@2", // 3 malformed + 1 good
        b"_e{2,2}:ab|cd\n_sc|x|0\ngood:1|c|#route:/a", // event, check, 1 good
        b"good:1|c|#route:/a\n\n\r\n",   // empty lines are nothing
    ];
    let good_in = [1u64, 2, 0, 0, 1, 1, 1];
    for round in 0..200 {
        for (p, g) in bad.iter().zip(good_in) {
            s.send_to(p, &to).unwrap();
            sent_good += g;
        }
        if round % 20 == 0 {
            // Let the reader keep up (a full receive buffer would be counted, not asserted).
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let packets = 200 * bad.len() as u64;
    let got = wait_for_metric(
        &agent,
        "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"received\"}",
        packets,
        Duration::from_secs(60),
    );
    let m = agent.admin_get("/metrics");
    let kernel = prom(
        &m,
        "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"kernel_dropped\"}",
    );
    assert_eq!(
        got + kernel,
        packets,
        "every packet read or counted as dropped:\n{m}"
    );
    assert_eq!(kernel, 0, "this load fits the receive buffer:\n{m}");
    assert!(agent.child.id() > 0);
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    let m_reason = |r: &str| {
        prom(
            &m,
            &format!("tally_agent_statsd_malformed_lines_total{{listener=\"udp\",reason=\"{r}\"}}"),
        )
    };
    assert_eq!(m_reason("missing_value"), 200); // broken|c
    assert_eq!(m_reason("missing_type"), 200); // the truncated good:1
    assert_eq!(m_reason("bad_value"), 200);
    assert_eq!(m_reason("negative_value"), 200);
    assert_eq!(m_reason("bad_sample_rate"), 200);
    assert_eq!(
        prom(
            &m,
            "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"non_utf8\"}"
        ),
        200
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"oversized\"}"
        ),
        200
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_dropped_samples_total{reason=\"statsd_malformed_line\"}"
        ),
        200 * 5
    );
    assert!(err.contains("StatsD line refused"), "bad lines are logged");
    assert!(err.contains("lat:abc|ms"), "the bad line is quoted");
    assert_eq!(field(&out, "good", "sum"), sent_good as f64);
}

#[test]
fn packets_the_kernel_drops_for_a_full_receive_buffer_are_counted_so_none_is_lost_silently() {
    start_of_a_quiet_minute();
    let port = free_udp_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{port}");
    // The smallest buffer, so a burst overflows it.
    let agent = Agent::start(&statsd_args(
        &udp,
        &["--set", "statsd.receive_buffer_bytes=4096"],
    ));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{port}");
    let line = format!("burst:1|c|#route:/a,pad:{}", "p".repeat(900));
    let sent = 20_000u64;
    for _ in 0..sent {
        s.send_to(line.as_bytes(), &to).unwrap();
    }
    let received = "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"received\"}";
    let dropped = "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"kernel_dropped\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut r, mut d) = (0, 0);
    while std::time::Instant::now() < deadline {
        let m = agent.admin_get("/metrics");
        (r, d) = (prom(&m, received), prom(&m, dropped));
        if r + d >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r + d, sent, "read {r} + counted as dropped {d} = sent");
    assert!(d > 0, "a 4 KiB buffer overflows under this burst");
    let m = agent.admin_get("/metrics");
    assert_eq!(
        prom(
            &m,
            "tally_agent_dropped_samples_total{reason=\"udp_receive_buffer\"}"
        ),
        d
    );
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    assert!(err.contains("the kernel dropped"), "the drops are logged");
    assert_eq!(
        field_of(&out, "burst"),
        r as f64,
        "every packet read is published"
    );
}

fn field_of(stdout: &str, metric: &str) -> f64 {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["metric"] == metric)
        .map(|v| v["sum"].as_f64().unwrap())
        .sum()
}

#[test]
fn aws_embedded_metrics_from_npm_and_pypi_merge_with_exact_counts_and_sums_clamped_to_the_config() {
    require_clients();
    start_of_a_quiet_minute();
    let port = free_udp_port();
    let emf = common::free_port();
    let udp = format!("statsd.udp_addr=127.0.0.1:{port}");
    let emf_arg = format!("statsd.emf_addr=127.0.0.1:{emf}");
    let agent = Agent::start(&statsd_args(
        &udp,
        &[
            "--set",
            &emf_arg,
            "--set",
            "statsd.emf_max_record_bytes=4096",
        ],
    ));
    let endpoint = format!("tcp://127.0.0.1:{emf}");
    let env = [("AWS_EMF_AGENT_ENDPOINT", endpoint.as_str())];
    let node = run_client_with("node", "emf.js", &[], &env)["records"]
        .as_u64()
        .unwrap();
    let py = clients_dir().join(".venv/bin/python");
    let python = run_client_with(py.to_str().unwrap(), "emf.py", &[], &env)["records"]
        .as_u64()
        .unwrap();
    // Over UDP: one good record, one that is not JSON, one over the size bound.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{emf}");
    let good = r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"Tally","Dimensions":[["route","ServiceName","Environment"]],"Metrics":[{"Name":"emf_orders","Unit":"Count"}]}]},"route":"/a","ServiceName":"shop","Environment":"test","emf_orders":[3,4]}"#;
    s.send_to(good.as_bytes(), &to).unwrap();
    s.send_to(b"{not json", &to).unwrap();
    s.send_to(&vec![b' '; 5000], &to).unwrap();
    let accepted = wait_for_metric(
        &agent,
        "tally_agent_emf_records_total{outcome=\"accepted\"}",
        node + python + 1,
        Duration::from_secs(60),
    );
    assert_eq!(accepted, node + python + 1);
    let m = wait_metrics(
        &agent,
        "tally_agent_emf_records_total{outcome=\"emf_oversized_record\"}",
        1,
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_emf_records_total{outcome=\"emf_not_json\"}"
        ),
        1
    );
    assert_eq!(
        prom(&m, "tally_agent_emf_clamped_total{what=\"namespace\"}"),
        1
    );
    assert_eq!(
        prom(&m, "tally_agent_emf_clamped_total{what=\"dimension_set\"}"),
        1
    );
    assert_eq!(
        prom(
            &m,
            "tally_agent_dropped_samples_total{reason=\"emf_malformed_record\"}"
        ),
        2
    );
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    // 200 x 2 (Node) + 5 (another namespace, clamped) + 150 x 3 (Python) + 3 + 4 (UDP).
    assert_eq!(field(&out, "emf_orders", "sum"), 862.0);
    assert_eq!(field(&out, "emf_latency", "count"), 200.0);
    assert_eq!(field(&out, "py_emf_latency", "count"), 150.0);
    assert_eq!(field(&out, "emf_size", "count"), 200.0);
    close(
        "emf_latency",
        "sum",
        field(&out, "emf_latency", "sum"),
        20_100.0,
    );
    close(
        "py_emf_latency",
        "sum",
        field(&out, "py_emf_latency", "sum"),
        22_650.0,
    );
    close("emf_size", "sum", field(&out, "emf_size", "sum"), 201_000.0);
    let p99 = field(&out, "emf_latency", "p99");
    assert!((p99 - 198.0).abs() <= 1.98, "p99 {p99}, exact 198");
    assert!(
        !out.contains("requestId") && !out.contains("\"extra\""),
        "properties are not published, and the second dimension set is left out"
    );
}

/// `/metrics` once `series` is at least `want` (at most 60 s).
fn wait_metrics(agent: &Agent, series: &str, want: u64) -> String {
    wait_for_metric(agent, series, want, Duration::from_secs(60));
    agent.admin_get("/metrics")
}
