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
        self.launch(cmd, log)
    }

    /// Starts the agent as the shipped ECS files run it: `examples/ecs/agent.toml` with the
    /// task definition's `TALLY_*` environment (its `TALLY_ENVIRONMENT` replaced by
    /// `environment`, so each run has series of its own) and the task metadata endpoint at
    /// `metadata_uri`. Only the CloudWatch endpoint, the ports and the log directory are
    /// overridden.
    fn start_shipped(&self, run: u32, environment: &str, metadata_uri: &str) -> AgentProc {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let log = self.log_dir.join(format!("agent-{run}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-agent"));
        cmd.arg("run")
            .arg("--config")
            .arg(root.join("examples/ecs/agent.toml"));
        let td: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("examples/ecs/task-definition.json")).unwrap(),
        )
        .unwrap();
        let container = td["containerDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "tally-agent")
            .expect("the task definition has the agent container");
        // The log's directory moves from the task volume to this test's directory, wherever
        // the shipped files set it; where they set none, none is set here either.
        let wal_dir = self.wal_dir.as_ref().expect("a log directory");
        for e in container["environment"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            let value = match name {
                "TALLY_ENVIRONMENT" => environment.to_owned(),
                "TALLY_DURABILITY__DIR" => wal_dir.display().to_string(),
                _ => e["value"].as_str().unwrap().to_owned(),
            };
            cmd.env(name, value);
        }
        let config: toml::Value =
            toml::from_str(&std::fs::read_to_string(root.join("examples/ecs/agent.toml")).unwrap())
                .unwrap();
        if config
            .get("durability")
            .and_then(|d| d.get("dir"))
            .is_some()
        {
            cmd.arg("--set")
                .arg(format!("durability.dir={}", wal_dir.display()));
        }
        for kv in [
            format!("ingest.tcp_addr={}", self.ingest),
            format!("admin.addr={}", self.admin),
            format!("publish.endpoint_url={}", endpoint()),
            "publish.region=us-east-1".to_owned(),
        ] {
            cmd.arg("--set").arg(kv);
        }
        cmd.env(tally_agent::ecs::METADATA_URI_ENV, metadata_uri);
        self.launch(cmd, log)
    }

    /// Spawns the agent with test credentials, its stderr in `log`, and waits (at most 30 s)
    /// for `/health`.
    fn launch(&self, mut cmd: Command, log: PathBuf) -> AgentProc {
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
        Load::start_as(agent, SERVICE, ENVIRONMENT, &[])
    }

    /// Like `start`, as this service and environment, with these labels on both metrics.
    fn start_as(
        agent: SocketAddr,
        service: &'static str,
        environment: &str,
        labels: &'static [(&'static str, &'static str)],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..PROCESSES)
            .map(|p| {
                let stop = stop.clone();
                let environment = environment.to_owned();
                std::thread::spawn(move || {
                    let t = Tally::builder()
                        .service(service)
                        .environment(environment.as_str())
                        .agent(agent)
                        .flush_interval(Duration::from_secs(1))
                        .shutdown_timeout(Duration::from_secs(30))
                        .build()
                        .expect("SDK builds");
                    let orders = t.counter(COUNTER, labels);
                    let items = t.histogram(HISTOGRAM, Unit::Count, labels);
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
async fn totals(
    ns: &str,
    name: &str,
    dims: &[(&str, &str)],
    from: SystemTime,
    to: SystemTime,
) -> (f64, f64) {
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

/// Reads the totals until they reach the expected ones (LocalStack stores a request before
/// answering, so this settles at once; bounded at 20 s either way), then asserts them exactly.
fn assert_published(ns: &str, rec: &Recorded, from: SystemTime) {
    assert_published_on(
        ns,
        &[("Environment", ENVIRONMENT), ("ServiceName", SERVICE)],
        rec,
        from,
    );
}

/// `assert_published` for the series with exactly these dimensions.
fn assert_published_on(ns: &str, dims: &[(&str, &str)], rec: &Recorded, from: SystemTime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let to = SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (counter, hist) = loop {
        let c = rt.block_on(totals(ns, COUNTER, dims, from, to));
        let h = rt.block_on(totals(ns, HISTOGRAM, dims, from, to));
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

/// Waits (at most 30 s) until the agent has logged and acknowledged batches of the open
/// period, SIGKILLs it, checks its log holds them, and gives the SDKs a second without agent.
fn kill_once_batches_are_logged(spec: &AgentSpec, agent: &mut AgentProc, wal: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while spec.metric("tally_agent_wal_appended_batches_total") < 2 * PROCESSES as u64 {
        assert!(
            Instant::now() < deadline,
            "no batches logged in 30 s: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(libc::SIGKILL);
    assert!(!agent.wait(), "SIGKILL ends the agent");
    let left = segments(wal);
    assert!(
        left.iter().any(|(_, len)| *len > 0),
        "the killed agent held acknowledged, unpublished batches in its log: {left:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
}

/// With the successor started: checks it replayed the log, lets the SDKs deliver to it for
/// 3 s, stops them and checks they lost nothing; returns what they recorded and the batches
/// replayed.
fn finish_after_replay(spec: &AgentSpec, load: Load) -> (Recorded, u64) {
    let replayed = spec.metric("tally_agent_wal_replayed_batches_total");
    assert!(replayed > 0, "the successor replays the log");
    std::thread::sleep(Duration::from_secs(3));
    let rec = load.finish();
    assert_eq!(rec.dropped_samples, 0, "the SDKs dropped nothing");
    assert_eq!(rec.lost_at_shutdown, 0, "every batch was acknowledged");
    (rec, replayed)
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

    kill_once_batches_are_logged(&spec, &mut first, &wal);

    // The SDKs keep recording while no agent listens, then reconnect to the successor.
    let second = spec.start(2);
    let (rec, replayed) = finish_after_replay(&spec, load);
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

/// `SERVICE_NAME` of the app and `TALLY_SERVICE` of the agent in examples/ecs/task-definition.json.
const SHIPPED_SERVICE: &str = "checkout";

/// The shipped deployment's own metrics: what tally-tower records per route.
const ROUTE_LABELS: &[(&str, &str)] = &[
    ("Route", "/orders/{id}"),
    ("Method", "POST"),
    ("StatusClass", "2xx"),
];

/// A task metadata endpoint on 127.0.0.1 that answers `<uri>/task` with AWS's documented
/// Fargate example (cluster `default`, family `curltest`), for at most 64 requests.
fn task_metadata_endpoint() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = include_str!("fixtures/ecs/task-metadata-v4-fargate.json");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = [0u8; 4096];
            let n = conn.read(&mut req).unwrap_or(0);
            let line = String::from_utf8_lossy(&req[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let answer = if path == "/v4/agent-test/task" {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    format!("http://{addr}/v4/agent-test")
}

#[test]
fn the_shipped_ecs_configuration_survives_a_sigkill_mid_load_with_exact_totals() {
    require_localstack();
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    // examples/ecs/agent.toml publishes to the namespace "Tally"; a fresh environment keeps
    // this run's series apart from every earlier run's in the same LocalStack.
    let environment = format!("ecs-sigkill-{:08x}", rand::random::<u32>());
    let metadata = task_metadata_endpoint();
    let spec = AgentSpec::new("Tally", Some(wal.clone()), tmp.path());
    let mut first = spec.start_shipped(1, &environment, &metadata);
    let from = SystemTime::now();
    // The app container's SERVICE_NAME in the task definition (the agent's TALLY_SERVICE).
    let load = Load::start_as(spec.ingest, SHIPPED_SERVICE, &environment, ROUTE_LABELS);

    kill_once_batches_are_logged(&spec, &mut first, &wal);

    // ECS restarts the container on the same task volume; the SDKs reconnect to it.
    let mut second = spec.start_shipped(2, &environment, &metadata);
    let (rec, replayed) = finish_after_replay(&spec, load);
    second.signal(libc::SIGTERM);
    assert!(second.wait(), "clean exit: {}", second.log_text());

    // The full series as the task publishes it: the service's dimensions, the task's
    // (from the metadata endpoint) and the route's labels.
    let mut dims = vec![
        ("ServiceName", SHIPPED_SERVICE),
        ("Environment", environment.as_str()),
        ("ClusterName", "default"),
        ("TaskDefinitionFamily", "curltest"),
    ];
    dims.extend_from_slice(ROUTE_LABELS);
    assert_published_on("Tally", &dims, &rec, from);
    assert!(
        segments(&wal).is_empty(),
        "every published period's segment is deleted: {:?}",
        segments(&wal)
    );
    eprintln!(
        "shipped ecs config, sigkill: counter {} histogram samples {} (sum {}), {replayed} batches replayed",
        rec.counter, rec.hist_count, rec.hist_sum
    );
}
