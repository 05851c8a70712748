//! The agent killed (SIGKILL) or stopped (SIGTERM) during load, as a real process publishing to
//! LocalStack, while SDK instances (the real `tally` crate, one per thread, each with its own
//! instance id as a separate process would have) record known totals: CloudWatch ends up with
//! exactly what the SDKs recorded.
//!
//! Needs LocalStack (`scripts/localstack.sh start`); fails with that hint when it is not there.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::cloudwatch::{endpoint, namespace, require_localstack};
use common::free_port;
use tally::{Tally, Unit};

const SERVICE: &str = "durability-svc";
const ENVIRONMENT: &str = "fault-test";
const COUNTER: &str = "DurOrders";
const HISTOGRAM: &str = "DurItems";
const PERIOD_SECS: u64 = 10;
/// SDK instances recording at once.
const PROCESSES: usize = 3;

/// Where one agent process listens; the same ports are reused by its successor.
#[derive(Clone)]
struct AgentSpec {
    namespace: String,
    ingest: SocketAddr,
    admin: SocketAddr,
    wal_dir: Option<PathBuf>,
    log_dir: PathBuf,
}

struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentSpec {
    fn new(ns: &str, wal_dir: Option<PathBuf>, log_dir: &Path) -> Self {
        AgentSpec {
            namespace: ns.into(),
            ingest: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            wal_dir,
            log_dir: log_dir.into(),
        }
    }

    /// Starts `tally-agent run --sink cloudwatch` against LocalStack and waits (at most 30 s)
    /// for `/health`.
    fn start(&self, run: u32) -> AgentProc {
        let log = self.log_dir.join(format!("agent-{run}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
        cmd.args(["run", "--sink", "cloudwatch"]);
        let mut set = |kv: String| {
            cmd.arg("--set").arg(kv);
        };
        set(format!("namespace={}", self.namespace));
        set(format!("period_secs={PERIOD_SECS}"));
        set(format!("ingest.tcp_addr={}", self.ingest));
        set(format!("admin.addr={}", self.admin));
        set("publish.region=us-east-1".into());
        set(format!("publish.endpoint_url={}", endpoint()));
        // A timed-out attempt that LocalStack still stores would be stored twice on retry.
        set("publish.attempt_timeout_ms=120000".into());
        set("sink.shutdown_deadline_secs=60".into());
        if let Some(d) = &self.wal_dir {
            set(format!("durability.dir={}", d.display()));
        }
        let out = std::fs::File::create(&log).unwrap();
        cmd.env_remove("TALLY_CONFIG")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out);
        let child = cmd.spawn().expect("agent binary starts");
        let mut agent = AgentProc { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            tally_agent::admin::check_health(self.admin, Duration::from_millis(500)),
            Ok(true)
        ) {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not become healthy in 30 s: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// One self-metric from `/metrics` (0 when absent).
    fn metric(&self, series: &str) -> u64 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))
            .expect("admin endpoint answers");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        common::prom(&text, series)
    }
}

impl AgentProc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of a child we own; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "signal {sig} delivered");
    }

    /// Waits (at most 90 s) for the process to exit; returns whether it exited successfully.
    fn wait(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit within 90 s: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one SDK instance recorded and what its shutdown reported.
#[derive(Debug, Default, Clone)]
struct Recorded {
    counter: u64,
    hist_count: u64,
    hist_sum: u64,
    dropped_samples: u64,
    lost_at_shutdown: u64,
    /// The wire versions the agent advertised to each SDK (its last ack).
    agent_versions: Vec<u16>,
}

/// SDK instances recording a deterministic load every 100 ms until told to stop (at most
/// 600 rounds), then shutting down (flush, wait for acks).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Recorded>>,
}

impl Load {
    fn start(agent: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..PROCESSES)
            .map(|p| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t = Tally::builder()
                        .service(SERVICE)
                        .environment(ENVIRONMENT)
                        .agent(agent)
                        .flush_interval(Duration::from_secs(1))
                        .shutdown_timeout(Duration::from_secs(30))
                        .build()
                        .expect("SDK builds");
                    let orders = t.counter(COUNTER, &[]);
                    let items = t.histogram(HISTOGRAM, Unit::Count, &[]);
                    let mut r = Recorded::default();
                    for round in 0..600u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let n = 1 + (round + p as u64) % 5;
                        orders.increment(n);
                        r.counter += n;
                        for v in 1..=8u64 {
                            let v = v * (p as u64 + 1);
                            items.record(v);
                            r.hist_count += 1;
                            r.hist_sum += v;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let s = t.shutdown();
                    r.dropped_samples = s.dropped_samples;
                    r.lost_at_shutdown = s.samples_lost_at_shutdown;
                    r.agent_versions.push(s.agent_version);
                    r
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Recorded::default();
        for t in self.threads {
            let r = t.join().expect("SDK thread");
            total.counter += r.counter;
            total.hist_count += r.hist_count;
            total.hist_sum += r.hist_sum;
            total.dropped_samples += r.dropped_samples;
            total.lost_at_shutdown += r.lost_at_shutdown;
            total.agent_versions.extend(r.agent_versions);
        }
        total
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Sleeps until `offset` seconds into the next period, so no earlier period holds data (and
/// none is being published while the agent is killed).
fn sleep_into_next_period(offset: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = (now.as_secs() / PERIOD_SECS + 1) * PERIOD_SECS + offset;
    std::thread::sleep(Duration::from_secs(next) - now);
}

/// (SampleCount, Sum) of a metric over one bucket covering `[from, to)`, minute-aligned.
async fn totals(ns: &str, name: &str, from: SystemTime, to: SystemTime) -> (f64, f64) {
    let from = unix(from) / 60 * 60 - 60;
    let to = (unix(to) / 60 + 2) * 60;
    let mut req = common::cloudwatch::reader(&endpoint())
        .get_metric_statistics()
        .namespace(ns)
        .metric_name(name)
        .start_time(DateTime::from_secs(from as i64))
        .end_time(DateTime::from_secs(to as i64))
        .period((to - from) as i32)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum);
    for (k, v) in [("Environment", ENVIRONMENT), ("ServiceName", SERVICE)] {
        req = req.dimensions(Dimension::builder().name(k).value(v).build());
    }
    let out = req.send().await.expect("GetMetricStatistics");
    out.datapoints().iter().fold((0.0, 0.0), |(c, s), p| {
        (
            c + p.sample_count().unwrap_or(0.0),
            s + p.sum().unwrap_or(0.0),
        )
    })
}

/// Reads the totals until they reach the expected ones (LocalStack stores a request before
/// answering, so this settles at once; bounded at 20 s either way), then asserts them exactly.
fn assert_published(ns: &str, rec: &Recorded, from: SystemTime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let to = SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (counter, hist) = loop {
        let c = rt.block_on(totals(ns, COUNTER, from, to));
        let h = rt.block_on(totals(ns, HISTOGRAM, from, to));
        let done = c.1 >= rec.counter as f64 && h.0 >= rec.hist_count as f64;
        if done || Instant::now() > deadline {
            break (c, h);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(counter.1, rec.counter as f64, "{COUNTER} Sum");
    assert_eq!(hist.0, rec.hist_count as f64, "{HISTOGRAM} SampleCount");
    assert_eq!(hist.1, rec.hist_sum as f64, "{HISTOGRAM} Sum");
}

fn segments(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".wal")
                .then(|| (name, e.metadata().unwrap().len()))
        })
        .collect()
}

#[test]
fn an_agent_killed_with_sigkill_mid_period_loses_nothing_it_acknowledged() {
    require_localstack();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let ns = namespace("sigkill");
    let spec = AgentSpec::new(&ns, Some(wal.clone()), tmp.path());
    let mut first = spec.start(1);
    sleep_into_next_period(1);
    let from = SystemTime::now();
    let load = Load::start(spec.ingest);

    // Wait (bounded) until the agent has logged and acknowledged batches of the open period.
    let deadline = Instant::now() + Duration::from_secs(30);
    while spec.metric("tally_agent_wal_appended_batches_total") < 2 * PROCESSES as u64 {
        assert!(Instant::now() < deadline, "no batches logged in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal(libc::SIGKILL);
    assert!(!first.wait(), "SIGKILL ends the agent");
    let left = segments(&wal);
    assert!(
        left.iter().any(|(_, len)| *len > 0),
        "the killed agent held acknowledged, unpublished batches in its log: {left:?}"
    );

    // The SDKs keep recording while no agent listens, then reconnect to the successor.
    std::thread::sleep(Duration::from_secs(1));
    let second = spec.start(2);
    let replayed = spec.metric("tally_agent_wal_replayed_batches_total");
    assert!(replayed > 0, "the successor replays the log");
    std::thread::sleep(Duration::from_secs(3));
    let rec = load.finish();
    assert_eq!(rec.dropped_samples, 0, "the SDKs dropped nothing");
    assert_eq!(rec.lost_at_shutdown, 0, "every batch was acknowledged");
    assert_eq!(
        rec.agent_versions,
        vec![tally::wire::VERSION; PROCESSES],
        "every SDK heard the agent's protocol version in its acks"
    );

    let mut second = second;
    second.signal(libc::SIGTERM);
    assert!(second.wait(), "clean exit: {}", second.log_text());
    assert_published(&ns, &rec, from);
    assert!(
        segments(&wal).is_empty(),
        "every published period's segment is deleted: {:?}",
        segments(&wal)
    );
    eprintln!(
        "sigkill: counter {} histogram samples {} (sum {}), {replayed} batches replayed",
        rec.counter, rec.hist_count, rec.hist_sum
    );
}

#[test]
fn an_agent_stopped_with_sigterm_during_load_publishes_all_it_accepted() {
    require_localstack();
    let tmp = tempfile::tempdir().unwrap();
    let ns = namespace("sigterm");
    // No write-ahead log: exact totals prove the shutdown path alone publishes every
    // accepted batch (nothing would bring a lost one back).
    let spec = AgentSpec::new(&ns, None, tmp.path());
    let mut first = spec.start(1);
    sleep_into_next_period(1);
    let from = SystemTime::now();
    let load = Load::start(spec.ingest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while spec.metric("tally_agent_batches_total{outcome=\"accepted\"}") < 2 * PROCESSES as u64 {
        assert!(Instant::now() < deadline, "no batches accepted in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The SDKs send their series in one order flush after flush, so the agent recognises
    // them in the batches after the first (wire::ParseMemo) instead of checking them again.
    while spec.metric("tally_agent_recognised_series_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "no series recognised in 30 s: the SDK's order or the parse memo is broken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    first.signal(libc::SIGTERM);
    assert!(first.wait(), "clean exit: {}", first.log_text());
    let log = first.log_text();
    assert!(
        log.contains("CloudWatch publisher flushed"),
        "the publisher flushed before exit: {log}"
    );
    assert!(
        !log.contains("shutdown_deadline"),
        "nothing was left at the deadline: {log}"
    );

    // What the SDKs could not deliver meanwhile goes to the successor.
    let mut second = spec.start(2);
    std::thread::sleep(Duration::from_secs(3));
    let rec = load.finish();
    assert_eq!(rec.dropped_samples, 0, "the SDKs dropped nothing");
    assert_eq!(rec.lost_at_shutdown, 0, "every batch was acknowledged");
    assert_eq!(
        rec.agent_versions,
        vec![tally::wire::VERSION; PROCESSES],
        "every SDK heard the agent's protocol version in its acks"
    );
    second.signal(libc::SIGTERM);
    assert!(second.wait(), "clean exit: {}", second.log_text());
    assert_published(&ns, &rec, from);
    eprintln!(
        "sigterm: counter {} histogram samples {} (sum {})",
        rec.counter, rec.hist_count, rec.hist_sum
    );
}
