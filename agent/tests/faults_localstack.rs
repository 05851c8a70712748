//! CloudWatch unavailable for several periods, with the agent as a real process publishing to
//! LocalStack: (a) through a loopback fault proxy that throttles, answers 503 and closes
//! connections; (b) to a LocalStack of the test's own that is stopped and started again.
//! After recovery the totals in CloudWatch equal what the clients sent, the pending queue
//! stayed within `publish.max_pending_bytes`, and the retries are visible in `/metrics`.
//! In (a) the agent also publishes its own metrics (`[self_metrics] cloudwatch`, with an
//! `[ecs]` dimension from a task metadata endpoint on loopback): the drops and decode errors
//! caused during the outage reach CloudWatch through the same queue, with exact sums.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::cloudwatch::{
    endpoint, namespace, reader, require_localstack, sample_count_and_sum, OwnLocalStack,
};
use common::fault_proxy::{
    start_counting_proxy, start_proxy, CLOSE, FORWARD, REJECT_POISON, THROTTLE, UNAVAILABLE,
};
use common::{counter, free_port, prom, rss_kib, wait_for_metric, Agent, Client};
use tally::wire::AckStatus;

const PENDING_BOUND: u64 = 8 * 1024 * 1024;

/// The agent publishing every second to `endpoint` under `ns`, with short backoffs, plus
/// `extra` flags and `env` variables.
fn cloudwatch_agent(endpoint: &str, ns: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let (ns, endpoint, bound) = (
        format!("namespace={ns}"),
        format!("publish.endpoint_url={endpoint}"),
        format!("publish.max_pending_bytes={PENDING_BOUND}"),
    );
    let mut args = vec![
        "--sink",
        "cloudwatch",
        "--set",
        "period_secs=1",
        "--set",
        &ns,
        "--set",
        &endpoint,
        "--set",
        "publish.region=us-east-1",
        "--set",
        "publish.max_attempts=3",
        "--set",
        "publish.backoff_base_ms=50",
        "--set",
        "publish.backoff_max_ms=1000",
        "--set",
        "publish.attempt_timeout_ms=20000",
        "--set",
        &bound,
    ];
    args.extend_from_slice(extra);
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    vars.extend_from_slice(env);
    Agent::start_with(&args, &vars)
}

/// An ECS task metadata endpoint on loopback that answers every request with AWS's documented
/// EC2 example (cluster `default`), for at most 8 requests or 60 s; returns the URI to put in
/// `ECS_CONTAINER_METADATA_URI_V4`.
fn task_metadata_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let body = include_str!("fixtures/ecs/task-metadata-v4-ec2.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 8 && Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            served += 1;
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = [0u8; 4096];
            let _ = s.read(&mut request);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/v4/tally-test-container")
}

/// Every metric of `ns` whose name starts with `prefix`, with its dimensions (sorted).
fn listed(
    rt: &tokio::runtime::Runtime,
    ns: &str,
    prefix: &str,
) -> BTreeSet<(String, Vec<(String, String)>)> {
    rt.block_on(async {
        let client = reader(&endpoint());
        let mut out = BTreeSet::new();
        let mut token = None;
        // Bounded: a handful of metrics, at most 20 pages.
        for _ in 0..20 {
            let page = client
                .list_metrics()
                .namespace(ns)
                .set_next_token(token)
                .send()
                .await
                .expect("ListMetrics");
            for m in page.metrics() {
                let name = m.metric_name().unwrap_or_default();
                if name.starts_with(prefix) {
                    let mut dims: Vec<(String, String)> = m
                        .dimensions()
                        .iter()
                        .map(|d| {
                            (
                                d.name().unwrap_or_default().to_owned(),
                                d.value().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect();
                    dims.sort();
                    out.insert((name.to_owned(), dims));
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        out
    })
}

/// Sends one counter batch a client tick for `ticks` ticks of 100 ms; returns the samples sent.
/// Checks the pending queue's bound and samples the agent's RSS on the way.
fn send_for(agent: &Agent, c: &mut Client, route: &str, ticks: u32, peak_rss: &mut u64) -> u64 {
    let mut sent = 0;
    for _ in 0..ticks {
        assert_eq!(
            c.send(vec![counter("RequestCount", route, 3)]),
            Some(AckStatus::Accepted)
        );
        sent += 3;
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = agent.admin_get("/metrics");
    let queued = prom(&m, "tally_publish_queue_bytes");
    assert!(queued <= PENDING_BOUND, "queue {queued} bytes");
    *peak_rss = (*peak_rss).max(rss_kib(agent.child.id()));
    sent
}

/// Polls LocalStack until the Sum of `RequestCount` for `dims` reaches `want` (at most
/// `limit`); returns the last Sum read. The agent also publishes `ErrorRate` (and in one test
/// its self-metrics) each period, so its own published-samples counter is not the clients'
/// total.
fn wait_for_sum(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    ns: &str,
    dims: &[(&str, &str)],
    want: u64,
    limit: Duration,
) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let now = SystemTime::now();
        let (_, sum) = rt.block_on(sample_count_and_sum(
            endpoint,
            ns,
            "RequestCount",
            dims,
            now - Duration::from_secs(900),
            now + Duration::from_secs(600),
        ));
        if sum >= want as f64 || Instant::now() > deadline {
            return sum;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn outcome(m: &str, o: &str) -> u64 {
    prom(m, &format!("tally_publish_calls_total{{outcome=\"{o}\"}}"))
}

#[test]
fn after_throttling_503s_and_resets_for_several_periods_the_agent_publishes_exact_totals() {
    require_localstack();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mode = Arc::new(AtomicU8::new(THROTTLE));
    let requests = Arc::new(AtomicU64::new(0));
    let proxy = rt.block_on(start_counting_proxy(
        endpoint(),
        mode.clone(),
        requests.clone(),
    ));
    let ns = namespace("agent-outage");
    let metadata = task_metadata_endpoint();
    let agent = cloudwatch_agent(
        &format!("http://{proxy}"),
        &ns,
        &[
            "--set",
            "self_metrics.cloudwatch=true",
            "--set",
            "service=shop",
            "--set",
            "environment=test",
            "--set",
            "ecs.dimensions=[\"ClusterName\"]",
        ],
        &[("ECS_CONTAINER_METADATA_URI_V4", &metadata)],
    );
    let rss_start = rss_kib(agent.child.id());
    let mut peak = rss_start;
    let mut c = Client::connect(agent.ingest, 11);

    // About three periods of each fault.
    let outage_start = Instant::now();
    let mut sent = 0;
    for fault in [THROTTLE, UNAVAILABLE, CLOSE] {
        mode.store(fault, Ordering::SeqCst);
        sent += send_for(&agent, &mut c, "/outage", 30, &mut peak);
    }
    // Still unreachable: a series CloudWatch would refuse (7 samples dropped, its batch
    // accepted) and a connection that is not a tally SDK (one decode error).
    assert_eq!(
        c.send(vec![counter("Bad\u{7}Name", "/outage", 7)]),
        Some(AckStatus::Accepted)
    );
    let mut foreign = std::net::TcpStream::connect(agent.ingest).unwrap();
    foreign.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let bad_magic = "tally_agent_decode_errors_total{reason=\"bad_magic\"}";
    assert_eq!(
        wait_for_metric(&agent, bad_magic, 1, Duration::from_secs(10)),
        1
    );
    let outage = outage_start.elapsed();
    let attempts_during_outage = requests.load(Ordering::SeqCst);
    let m = agent.admin_get("/metrics");
    assert_eq!(prom(&m, "tally_publish_samples_total"), 0);
    assert!(outcome(&m, "throttled") > 0, "{m}");
    assert!(outcome(&m, "server_error") > 0, "{m}");
    assert!(outcome(&m, "network") > 0, "{m}");
    let retries = prom(&m, "tally_publish_retries_total");
    assert!(retries > 0);
    let queued = prom(&m, "tally_publish_queue_bytes");
    let available = prom(&m, "tally_publish_cloudwatch_available");

    // CloudWatch answers again: everything queued goes out.
    mode.store(FORWARD, Ordering::SeqCst);
    sent += send_for(&agent, &mut c, "/outage", 10, &mut peak);
    let dims = [
        ("ClusterName", "default"),
        ("ServiceName", "shop"),
        ("Environment", "test"),
        ("Route", "/outage"),
    ];
    let sum = wait_for_sum(&rt, &endpoint(), &ns, &dims, sent, Duration::from_secs(120));
    assert_eq!(sum, sent as f64);
    let m = agent.admin_get("/metrics");
    let published = prom(&m, "tally_publish_samples_total");
    assert_eq!(
        prom(
            &m,
            "tally_publish_dropped_samples_total{reason=\"queue_full\"}"
        ),
        0
    );
    let failed_attempts: u64 = tally_agent::cloudwatch::ErrorKind::ALL
        .iter()
        .map(|k| outcome(&m, k.as_str()))
        .sum();
    assert_eq!(
        prom(
            &m,
            "tally_agent_dropped_samples_total{reason=\"control_character\"}"
        ),
        7,
        "{m}"
    );
    let (ok, _out, err) = agent.terminate();
    assert!(ok, "clean exit; stderr:\n{err}");

    // The agent's own metrics went out through the same queue once CloudWatch answered again:
    // per-period deltas that add up to exactly what happened, under one dimension set.
    let own_dims = [
        ("ClusterName", "default"),
        ("Component", "agent"),
        ("Environment", "test"),
        ("ServiceName", "shop"),
    ];
    let now = SystemTime::now();
    let own = |metric: &str| {
        rt.block_on(sample_count_and_sum(
            &endpoint(),
            &ns,
            metric,
            &own_dims,
            now - Duration::from_secs(900),
            now + Duration::from_secs(600),
        ))
        .1
    };
    assert_eq!(own("AgentDroppedSamples"), 7.0);
    assert_eq!(own("AgentDecodeErrors"), 1.0);
    assert_eq!(own("AgentBatchesAccepted"), (sent / 3 + 1) as f64);
    assert_eq!(own("AgentPublishErrors"), failed_attempts as f64);
    let pending = own("AgentPendingBytes");
    assert!(pending > 0.0, "the backlog was visible while it waited");
    eprintln!(
        "self-metrics in CloudWatch after the outage: AgentDroppedSamples 7, AgentDecodeErrors 1, \
         AgentBatchesAccepted {}, AgentPublishErrors {failed_attempts}, AgentPendingBytes summed \
         over periods {pending}",
        sent / 3 + 1
    );
    let expected: BTreeSet<(String, Vec<(String, String)>)> = [
        "AgentActiveSeries",
        "AgentBatchesAccepted",
        "AgentDecodeErrors",
        "AgentDroppedSamples",
        "AgentPendingBytes",
        "AgentPublishErrors",
    ]
    .iter()
    .map(|n| {
        let d = own_dims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ((*n).to_owned(), d)
    })
    .collect();
    assert_eq!(listed(&rt, &ns, "Agent"), expected);
    // Nothing more arrived after the agent stopped: the total is exact, not just reached.
    assert_eq!(
        wait_for_sum(
            &rt,
            &endpoint(),
            &ns,
            &dims,
            sent + 1,
            Duration::from_secs(2)
        ),
        sent as f64
    );
    eprintln!(
        "proxy outage of {:.1} s: {attempts_during_outage} PutMetricData attempts reached the \
         proxy ({:.1}/s), {retries} retries; queue {queued} bytes (bound {PENDING_BOUND}) at the \
         end of the outage, cloudwatch_available={available}; agent RSS {rss_start} KiB at start, \
         peak {peak} KiB; {sent} samples sent, LocalStack Sum {sum} ({published} published with ErrorRate and the self-metrics)",
        outage.as_secs_f64(),
        attempts_during_outage as f64 / outage.as_secs_f64(),
    );
}

#[test]
fn cloudwatch_stopped_for_several_periods_then_restarted_receives_every_sample() {
    let ls = OwnLocalStack::start(free_port());
    let ns = namespace("agent-ls-restart");
    let agent = cloudwatch_agent(&ls.endpoint(), &ns, &[], &[]);
    let rss_start = rss_kib(agent.child.id());
    let mut peak = rss_start;
    let mut c = Client::connect(agent.ingest, 12);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dims = [
        ("ServiceName", "shop"),
        ("Environment", "test"),
        ("Route", "/restart"),
    ];

    // Before: published and readable.
    let before = send_for(&agent, &mut c, "/restart", 10, &mut peak);
    let sum = wait_for_sum(
        &rt,
        &ls.endpoint(),
        &ns,
        &dims,
        before,
        Duration::from_secs(60),
    );
    assert_eq!(sum, before as f64);
    let published_before = prom(&agent.admin_get("/metrics"), "tally_publish_samples_total");

    // CloudWatch stopped for about five periods.
    ls.stop();
    let during = send_for(&agent, &mut c, "/restart", 50, &mut peak);
    let m = agent.admin_get("/metrics");
    // At most the period in flight when it stopped went out.
    let published_during = prom(&m, "tally_publish_samples_total");
    let failed = outcome(&m, "network") + outcome(&m, "timeout");
    assert!(failed > 0, "{m}");
    let queued = prom(&m, "tally_publish_queue_bytes");

    // Started again (empty: LocalStack forgets its data when stopped).
    ls.restart();
    let after = send_for(&agent, &mut c, "/restart", 10, &mut peak);
    let total = before + during + after;
    let sum = wait_for_sum(
        &rt,
        &ls.endpoint(),
        &ns,
        &dims,
        during + after,
        Duration::from_secs(120),
    );
    assert_eq!(
        sum,
        (during + after) as f64,
        "the restarted CloudWatch has every sample sent since it stopped"
    );
    let retries = prom(&agent.admin_get("/metrics"), "tally_publish_retries_total");
    let (ok, _out, err) = agent.terminate();
    assert!(ok, "clean exit; stderr:\n{err}");
    assert_eq!(
        wait_for_sum(
            &rt,
            &ls.endpoint(),
            &ns,
            &dims,
            during + after + 1,
            Duration::from_secs(2)
        ),
        (during + after) as f64
    );
    assert!(
        err.contains("PutMetricData") || err.contains("CloudWatch"),
        "the outage is explained in the log:\n{err}"
    );
    eprintln!(
        "LocalStack stopped: {failed} failed attempts, {retries} retries, queue {queued} bytes \
         (bound {PENDING_BOUND}) during the stop; agent RSS {rss_start} KiB at start, peak {peak} \
         KiB; samples {before} before + {during} during + {after} after = {total} sent, all in \
         LocalStack; agent published-samples counter {published_before} before the stop, \
         {published_during} during it"
    );
}

#[test]
fn samples_cloudwatch_refused_during_the_run_count_in_the_exit_status_and_final_summary() {
    require_localstack();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(start_proxy(
        endpoint(),
        Arc::new(AtomicU8::new(REJECT_POISON)),
    ));
    let ns = namespace("refused-exit");
    // Uncompressed bodies, so the proxy sees the poisoned name and refuses its datum.
    let agent = cloudwatch_agent(
        &format!("http://{proxy}"),
        &ns,
        &["--set", "publish.compress_requests=false"],
        &[],
    );
    let mut c = Client::connect(agent.ingest, 21);
    assert_eq!(
        c.send(vec![
            counter("RequestCount", "/kept", 3),
            counter("PoisonCount", "/refused", 5)
        ]),
        Some(AckStatus::Accepted)
    );
    let refused = wait_for_metric(
        &agent,
        "tally_agent_dropped_samples_total{reason=\"cloudwatch_rejected\"}",
        5,
        Duration::from_secs(30),
    );
    assert_eq!(refused, 5, "CloudWatch refused the poisoned datum mid-run");
    let (ok, _out, err) = agent.terminate();
    // Refused long before SIGTERM, so not a shutdown-deadline loss: it still ends the run
    // as one that lost data.
    assert!(
        !ok,
        "a run that lost samples exits non-zero; stderr:\n{err}"
    );
    let summary = err
        .lines()
        .find(|l| l.contains("tally-agent stopped"))
        .unwrap_or_else(|| panic!("a final summary line: {err}"));
    // The text log colours its fields: read it without the escape sequences.
    let mut plain = String::new();
    let mut in_escape = false;
    for ch in summary.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, ch) => plain.push(ch),
        }
    }
    assert!(plain.contains("dropped_samples=5"), "{plain}");
    assert_eq!(
        wait_for_sum(
            &rt,
            &endpoint(),
            &ns,
            &[("Route", "/kept")],
            3,
            Duration::from_secs(10)
        ),
        3.0,
        "the rest of the request was published"
    );
}
