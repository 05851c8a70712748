//! The agent's security defaults, checked on the real binary: loopback-only listeners unless
//! explicitly allowed, an owner-only Unix socket, and logs without credentials or request
//! bodies even at debug level. (The non-root image is checked in `deployment_files.rs`.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::cloudwatch::{endpoint, namespace, require_localstack};
use common::{counter, free_port, latency, prom, wait_for_metric, Agent, Client};
use tally::wire::AckStatus;

fn run_briefly(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .arg("run")
        .args(args)
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("agent binary runs")
}

#[test]
fn non_loopback_addresses_are_refused_unless_allowed_and_the_socket_is_owner_only() {
    let ingest = format!("0.0.0.0:{}", free_port());
    let out = run_briefly(&[
        "--sink",
        "stdout",
        "--set",
        &format!("ingest.tcp_addr={ingest}"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ingest.allow_non_loopback"), "{err}");

    let admin = format!("0.0.0.0:{}", free_port());
    let out = run_briefly(&["--sink", "stdout", "--set", &format!("admin.addr={admin}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin.allow_non_loopback"), "{err}");

    // Allowed explicitly, it listens there; the Unix socket is 0600.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("tally.sock");
    let agent = Agent::start(&[
        "--set",
        "ingest.allow_non_loopback=true",
        "--set",
        &format!("ingest.unix_socket={}", sock.display()),
    ]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, _, err) = agent.terminate();
    assert!(ok, "{err}");
}

#[test]
fn debug_logs_never_contain_the_secret_key_or_request_bodies() {
    require_localstack();
    let secret = "tallyTestSecretKey0123456789abcdefDoNotLog";
    let canary = "CanaryMetricNeverLogged";
    let ns = namespace("secrets");
    let agent = Agent::start_with(
        &[
            "--sink",
            "cloudwatch",
            "--set",
            "period_secs=1",
            "--set",
            &format!("namespace={ns}"),
            "--set",
            &format!("publish.endpoint_url={}", endpoint()),
            "--set",
            "publish.region=us-east-1",
            "--set",
            "log.level=debug",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("RUST_LOG", "debug"),
        ],
    );
    let mut c = Client::connect(agent.ingest, 5);
    for _ in 0..5 {
        assert_eq!(
            c.send(vec![
                counter(canary, "/secret", 1),
                latency("/secret", &[1_000_000, 2_000_000]),
            ]),
            Some(AckStatus::Accepted)
        );
    }
    let calls = wait_for_metric(
        &agent,
        "tally_publish_calls_total{outcome=\"ok\"}",
        1,
        Duration::from_secs(60),
    );
    assert!(calls >= 1, "PutMetricData succeeded at least once");
    let published = prom(&agent.admin_get("/metrics"), "tally_publish_samples_total");
    let (_, out, err) = agent.terminate();
    assert!(published > 0);
    assert!(
        err.lines().count() > 20,
        "debug logging is on (so the check means something):\n{err}"
    );
    for (what, text) in [("stderr", &err), ("stdout", &out)] {
        assert!(!text.contains(secret), "the secret key appears in {what}");
        assert!(
            !text.contains(canary),
            "a metric name from a request body appears in {what}"
        );
    }
}
