//! End to end with the agent as a real process and the stdout sink in JSON-lines mode.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{counter, latency, prom, total, Agent, Client};
use tally::wire::{AckStatus, HEADER_LEN};

#[test]
fn totals_from_several_clients_are_exact_and_bad_frames_hurt_nobody_else() {
    let agent = Agent::start(&[
        "--set",
        "self_metrics.cloudwatch=true",
        "--set",
        "publish.max_datums_per_request=2",
        "--set",
        "aggregate.rollups=[{ drop = [\"Route\"] }]",
        "--set",
        "aggregate.derived=[{ name = \"ErrorRate\", numerator = \"ErrorCount\", denominator = \"RequestCount\", exclude_dimensions = [] }]",
    ]);
    let addr = agent.ingest;

    // Four well-behaved clients, 25 batches each, on their own threads.
    let clients: Vec<_> = (1..=4u64)
        .map(|id| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, 1000 + id);
                for i in 0..25u64 {
                    let status = c.send(vec![
                        counter("RequestCount", "/orders", 4),
                        counter("ErrorCount", "/orders", u64::from(i % 5 == 0)),
                        latency("/orders", &[1_000_000 * id, 2_000_000, 3_000_000 + i]),
                    ]);
                    assert_eq!(status, Some(AckStatus::Accepted));
                }
                // The same batch again (an SDK resending after a lost ack): not counted twice.
                let again = c.batch(25, vec![counter("RequestCount", "/orders", 4)]);
                assert_eq!(c.send_batch(&again), Some(AckStatus::Duplicate));
            })
        })
        .collect();

    // A client with a corrupt payload: answered Rejected, and the connection goes on.
    let mut bad = Client::connect(addr, 7);
    let mut frame = Vec::new();
    tally::wire::encode_batch(
        &bad.batch(1, vec![counter("RequestCount", "/x", 1)]),
        &mut frame,
    )
    .unwrap();
    let last = frame.len() - 1;
    frame[HEADER_LEN + 8] = 0xff; // pid varint becomes unterminated garbage
    frame[last] = 0xff;
    assert_eq!(bad.send_raw(&frame), Some(AckStatus::Rejected));
    bad.seq = 1;
    assert_eq!(
        bad.send(vec![counter("RequestCount", "/x", 5)]),
        Some(AckStatus::Accepted)
    );
    // A client that is not a tally SDK: its connection is closed, nothing else happens.
    let mut foreign = std::net::TcpStream::connect(addr).unwrap();
    foreign.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();

    for c in clients {
        c.join().unwrap();
    }
    // Bounded wait for the foreign connection's error to be counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = agent.admin_get("/metrics");
        if prom(&m, "tally_agent_decode_errors_total{reason=\"bad_magic\"}") == 1
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        prom(
            &metrics,
            "tally_agent_decode_errors_total{reason=\"bad_magic\"}"
        ),
        1
    );
    assert_eq!(
        prom(&metrics, "tally_agent_batches_total{outcome=\"accepted\"}"),
        101
    );
    assert_eq!(
        prom(&metrics, "tally_agent_batches_total{outcome=\"duplicate\"}"),
        4
    );
    assert_eq!(
        prom(&metrics, "tally_agent_batches_total{outcome=\"rejected\"}"),
        1
    );
    let health = agent.admin_get("/health");
    assert!(
        health.contains(" 200 OK") && health.contains("\"ready\":true"),
        "{health}"
    );
    let cost = agent.admin_get("/cost");
    assert!(cost.contains("\"total_usd_per_month\""), "{cost}");
    assert!(cost.contains("\"self_metrics\":6"), "{cost}");
    // The call count follows publish.max_datums_per_request (2 here), not CloudWatch's 1,000.
    let body: serde_json::Value =
        serde_json::from_str(cost.split("\r\n\r\n").nth(1).expect("a body")).expect("JSON");
    let datums = body["datums_per_period"]
        .as_u64()
        .expect("datums_per_period");
    assert!(datums >= 6, "{cost}");
    assert_eq!(
        body["requests_per_period"].as_u64(),
        Some(datums.div_ceil(2)),
        "{cost}"
    );
    let decode_errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tally_agent_decode_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        decode_errors >= 2,
        "bad magic and a corrupt payload: {metrics}"
    );

    let health = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args(["health", "--addr", &agent.admin.to_string()])
        .output()
        .unwrap();
    assert!(health.status.success(), "health subcommand: {health:?}");
    let admin = agent.admin;

    let (ok, out, err) = agent.terminate();
    assert!(ok, "agent exits cleanly; stderr:\n{err}");
    let orders = [("Route", "/orders")];
    assert_eq!(
        total(&out, "RequestCount", &orders, "sum"),
        4.0 * 4.0 * 25.0
    );
    assert_eq!(total(&out, "RequestCount", &[("Route", "/x")], "sum"), 5.0);
    assert_eq!(total(&out, "ErrorCount", &orders, "sum"), 4.0 * 5.0);
    assert_eq!(
        total(&out, "ResponseTime", &orders, "count"),
        4.0 * 25.0 * 3.0
    );
    // The agent's own metrics, printed like any other: deltas that add up to the totals.
    let own = [("Component", "agent")];
    assert_eq!(total(&out, "AgentBatchesAccepted", &own, "sum"), 101.0);
    assert_eq!(
        total(&out, "AgentDecodeErrors", &own, "sum"),
        decode_errors as f64
    );
    assert_eq!(total(&out, "AgentDroppedSamples", &own, "sum"), 0.0);
    let own_line = out
        .lines()
        .find(|l| l.contains("\"AgentDecodeErrors\""))
        .unwrap();
    assert!(
        own_line.contains("\"ServiceName\":\"unknown\"")
            && own_line.contains("\"Component\":\"agent\""),
        "{own_line}"
    );
    // The rollup without Route carries everything once.
    assert_eq!(total(&out, "RequestCount", &[], "sum"), 405.0);
    assert_eq!(total(&out, "ResponseTime", &[], "count"), 300.0);
    let rt = out
        .lines()
        .find(|l| l.contains("\"ResponseTime\""))
        .unwrap();
    assert!(rt.contains("\"unit\":\"Milliseconds\""), "{rt}");
    // ErrorRate for /orders: 20 errors in 400 requests, if everything fell in one period.
    let periods: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split("\"timestamp\":").nth(1))
        .map(|t| t.split(',').next().unwrap())
        .collect();
    if periods.len() == 1 {
        assert_eq!(total(&out, "ErrorRate", &orders, "sum"), 5.0);
    }
    // Once stopped, the health check fails.
    let health = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args([
            "health",
            "--addr",
            &admin.to_string(),
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert!(!health.status.success());
}

#[test]
fn sigterm_during_load_publishes_every_accepted_sample() {
    let agent = Agent::start(&[]);
    let addr = agent.ingest;
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=3u64)
        .map(|id| {
            let accepted = accepted.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, 2000 + id);
                let deadline = Instant::now() + Duration::from_secs(60);
                // Bounded: at most 100k batches or 60 s, and it ends when the agent closes.
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) && Instant::now() > deadline {
                        break;
                    }
                    match c.send(vec![counter("RequestCount", "/load", 3)]) {
                        Some(AckStatus::Accepted) => {
                            accepted.fetch_add(3, Ordering::Relaxed);
                        }
                        Some(other) => panic!("unexpected ack {other:?}"),
                        None => break,
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                }
            })
        })
        .collect();
    // Let load build up (bounded wait for some accepted batches).
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted.load(Ordering::Relaxed) < 3_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (ok, out, err) = agent.terminate();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(ok, "agent exits cleanly; stderr:\n{err}");
    let sent = accepted.load(Ordering::Relaxed);
    assert!(sent > 0);
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/load")], "sum"),
        sent as f64,
        "every sample acknowledged as Accepted is in the output"
    );
}

#[test]
fn validate_rejects_a_bad_config_naming_the_key_and_accepts_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "period_secs = 45\n[ingest]\ntcp_addr = \"0.0.0.0:9911\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("period_secs") && err.contains("ingest.allow_non_loopback"),
        "{err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "namespace = \"ECS/WebApp\"\nservice = \"web-app\"\n[[aggregate.rollups]]\ndrop = [\"StatusClass\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args(["validate", "--config"])
        .arg(&good)
        .env("TALLY_AGGREGATE__MAX_SERIES", "5000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
        .args(["validate", "--config"])
        .arg(&good)
        .env("TALLY_AGGREGATE__MAX_SERIES", "zero")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_series"));
}

#[test]
fn sink_auto_publishes_to_cloudwatch_in_an_ecs_task_even_without_credential_variables() {
    // ECS on EC2 without a task role: no AWS_* variable, credentials from the instance
    // profile. The task's metadata variable is what shows the agent it is in ECS.
    let choose = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
            .arg("validate")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let in_ecs = choose(&[(
        "ECS_CONTAINER_METADATA_URI_V4",
        "http://169.254.170.2/v4/0123-abcd",
    )]);
    assert!(
        in_ecs.contains("sink Cloudwatch") && in_ecs.contains("running in an ECS task"),
        "{in_ecs}"
    );
    let fargate = choose(&[("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE")]);
    assert!(fargate.contains("sink Cloudwatch"), "{fargate}");
    let keys = choose(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]);
    assert!(
        keys.contains("sink Cloudwatch") && keys.contains("AWS_ACCESS_KEY_ID is set"),
        "{keys}"
    );
    // Nothing to go by: stdout, and the reason says how to publish from an EC2 host.
    let bare = choose(&[]);
    assert!(
        bare.contains("sink Stdout") && bare.contains("set sink.kind = \"cloudwatch\""),
        "{bare}"
    );
    // An explicit kind is never second-guessed.
    let explicit = choose(&[
        ("TALLY_SINK__KIND", "stdout"),
        (
            "ECS_CONTAINER_METADATA_URI_V4",
            "http://169.254.170.2/v4/0123-abcd",
        ),
    ]);
    assert!(explicit.contains("sink Stdout (sink.kind)"), "{explicit}");
}

#[test]
fn the_health_command_finds_a_moved_admin_port_through_the_same_settings_as_run() {
    // An ECS health check runs `tally-agent health` in the agent's container: it sees the
    // container's TALLY_* variables and TALLY_CONFIG, and must find the admin port there.
    let agent = Agent::start(&[]);
    let admin = agent.admin.to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[admin]\naddr = \"{admin}\"\n")).unwrap();
    let health = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-agent"))
            .args(args)
            .env_remove("TALLY_CONFIG")
            .env_remove("TALLY_ADMIN__ADDR")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let set = format!("admin.addr={admin}");
    let config_arg = config.to_str().unwrap();
    for (how, args, env) in [
        (
            "TALLY_ADMIN__ADDR",
            vec!["health"],
            vec![("TALLY_ADMIN__ADDR", admin.as_str())],
        ),
        (
            "TALLY_CONFIG",
            vec!["health"],
            vec![("TALLY_CONFIG", config_arg)],
        ),
        ("--config", vec!["health", "--config", config_arg], vec![]),
        (
            "--config before the command",
            vec!["--config", config_arg, "health"],
            vec![],
        ),
        ("--set", vec!["health", "--set", set.as_str()], vec![]),
        ("--addr", vec!["health", "--addr", admin.as_str()], vec![]),
    ] {
        let (ok, out) = health(&args, &env);
        assert!(ok && out.trim() == "healthy", "{how}: {out}");
    }
    // A variable that points elsewhere is honoured too, so the check is not a constant.
    let closed = format!("127.0.0.1:{}", common::free_port());
    let (ok, out) = health(&["health"], &[("TALLY_ADMIN__ADDR", closed.as_str())]);
    assert!(
        !ok && out.contains("unhealthy") && out.contains(&closed),
        "{out}"
    );
    drop(agent);
}

#[test]
fn a_period_the_stdout_sink_cannot_write_is_counted_as_dropped() {
    // Whoever reads the agent's output went away: every write fails (EPIPE).
    let agent = Agent::start_unread(&["--set", "period_secs=1"]);
    let mut c = Client::connect(agent.ingest, 77);
    assert_eq!(
        c.send(vec![counter("RequestCount", "/gone", 4)]),
        Some(AckStatus::Accepted)
    );
    let dropped = common::wait_for_metric(
        &agent,
        "tally_agent_dropped_samples_total{reason=\"sink_error\"}",
        4,
        Duration::from_secs(20),
    );
    assert_eq!(
        dropped, 4,
        "the period's samples are counted, not just logged"
    );
}

#[test]
fn a_gap_filled_late_and_logged_after_a_higher_sequence_survives_the_replay() {
    // A previous run logged batch 7 of a process in one period's segment, then batch 5 (sent
    // again after a reconnect, a gap filled late) in the next period's, and was killed.
    use tally::wire::{encode_batch, Batch, ProcessIdentity};
    use tally_agent::testing::{encode_record, segment_name};
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let now_s = common::now_ms() / 1000;
    let first_period = now_s / 10 * 10 - 30;
    for (period, seq, n) in [(first_period, 7, 7), (first_period + 10, 5, 5)] {
        let batch = Batch {
            process: ProcessIdentity {
                instance_id: 4242,
                pid: 4242,
                service: "shop".into(),
                environment: "test".into(),
                host: "localhost".into(),
            },
            sequence: seq,
            start_unix_ms: period * 1000 + 1000,
            end_unix_ms: period * 1000 + 2000,
            drops: Default::default(),
            series: vec![counter("RequestCount", "/late", n)],
        };
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        let mut record = Vec::new();
        encode_record(&frame[HEADER_LEN..], &mut record);
        std::fs::write(wal.join(segment_name(period, 1)), &record).unwrap();
    }
    let agent = Agent::start(&[
        "--set",
        &format!("durability.dir={}", wal.display()),
        "--set",
        "period_secs=10",
    ]);
    let replayed = common::wait_for_metric(
        &agent,
        "tally_agent_wal_replayed_batches_total",
        2,
        Duration::from_secs(10),
    );
    assert_eq!(replayed, 2);
    let (ok, out, err) = agent.terminate();
    assert!(ok, "{err}");
    // Both batches are published: 5 was not mistaken for a duplicate of something below 7.
    assert_eq!(
        total(&out, "RequestCount", &[("Route", "/late")], "sum"),
        12.0,
        "{out}"
    );
}
