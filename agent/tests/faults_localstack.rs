//! CloudWatch unavailable for several periods, with the agent as a real process publishing to
//! LocalStack: (a) through a loopback fault proxy that throttles, answers 503 and closes
//! connections; (b) to a LocalStack of the test's own that is stopped and started again.
//! After recovery the totals in CloudWatch equal what the clients sent, the pending queue
//! stayed within `publish.max_pending_bytes`, and the retries are visible in `/metrics`.

mod common;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::cloudwatch::{
    endpoint, namespace, require_localstack, sample_count_and_sum, OwnLocalStack,
};
use common::fault_proxy::{start_counting_proxy, CLOSE, FORWARD, THROTTLE, UNAVAILABLE};
use common::{counter, free_port, prom, rss_kib, Agent, Client};
use tally::wire::AckStatus;

const PENDING_BOUND: u64 = 8 * 1024 * 1024;

/// The agent publishing every second to `endpoint` under `ns`, with short backoffs.
fn cloudwatch_agent(endpoint: &str, ns: &str) -> Agent {
    Agent::start_with(
        &[
            "--sink",
            "cloudwatch",
            "--set",
            "period_secs=1",
            "--set",
            &format!("namespace={ns}"),
            "--set",
            &format!("publish.endpoint_url={endpoint}"),
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
            &format!("publish.max_pending_bytes={PENDING_BOUND}"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
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
/// `limit`); returns the last Sum read. The agent also publishes `ErrorRate` each period, so
/// its own published-samples counter is not the clients' total.
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
    let agent = cloudwatch_agent(&format!("http://{proxy}"), &ns);
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
    let (ok, _out, err) = agent.terminate();
    assert!(ok, "clean exit; stderr:\n{err}");
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
         peak {peak} KiB; {sent} samples sent, LocalStack Sum {sum} ({published} published with ErrorRate)",
        outage.as_secs_f64(),
        attempts_during_outage as f64 / outage.as_secs_f64(),
    );
}

#[test]
fn cloudwatch_stopped_for_several_periods_then_restarted_receives_every_sample() {
    let ls = OwnLocalStack::start(free_port());
    let ns = namespace("agent-ls-restart");
    let agent = cloudwatch_agent(&ls.endpoint(), &ns);
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
