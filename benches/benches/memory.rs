//! What does one histogram series cost in memory, for tally and its peers, side by side?
//!
//! 200 labelled histogram series (Route x Method x StatusClass, as tally-tower records them),
//! values spread log-uniformly over 1-100 ms or 50 us - 2 s and recorded in nanoseconds, by
//! 1, 4 and 16 threads, two ways:
//!
//! - `paced`: each thread records 10,000 values a second spread over the 200 series (a
//!   service), for 10 s (one flush interval: nothing is drained during the run);
//! - `tight`: each thread records 400,000 values (2,000 per series) as fast as it can, all
//!   threads into the series of the current 20 us time slot, so that threads running at the
//!   same instant hammer the same series (the worst case for tally, whose histograms grow
//!   shards when threads collide).
//!
//! Every case runs in a fresh child process so that neither the allocator nor RSS carry over
//! from one to the next. The child measures twice, once with the implementation set up and
//! its recording threads started (parked on a barrier), once when they have finished
//! recording but are still alive (so per-thread caches still count): live heap bytes from a
//! counting global allocator, and `VmRSS` from `/proc/self/status`. The figures are the
//! differences divided by 200.
//!
//! tally's shard count is set to the thread count, as on a host with that many cores (where
//! the default is one shard per core, at most 16).
//!
//! Run: `cargo bench -p tally-benches --bench memory` (all cases, a markdown table, ~10 min);
//! `cargo bench -p tally-benches --bench memory -- --quick` (tally only, paced cases 3 s).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString, Unit as MUnit};
use metrics_util::registry::{AtomicStorage, Registry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as PromHistogram};
use tally::{Tally, Unit};

mod common;
use common::DiscardExporter;

/// Counts live heap bytes (allocated minus freed) on top of the system allocator.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counter is only arithmetic on the sizes passed in.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout (every allocation goes
        // through this type).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERIES: usize = 200;
const ROUTES: usize = 25;
const METHODS: [&str; 2] = ["GET", "POST"];
const STATUS: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Records a second per thread in the paced mode.
const PACED_RATE: u64 = 10_000;
/// Values each thread records into every series in the tight mode.
const TIGHT_PER_SERIES: usize = 2_000;

/// The label values of series `i` (25 routes x 2 methods x 4 status classes = 200).
fn labels(routes: &[String], i: usize) -> (&str, &'static str, &'static str) {
    (
        routes[i % ROUTES].as_str(),
        METHODS[(i / ROUTES) % 2],
        STATUS[i / (ROUTES * 2)],
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Spread {
    /// 1 ms - 100 ms.
    Narrow,
    /// 50 us - 2 s.
    Wide,
}

impl Spread {
    fn bounds_ns(self) -> (f64, f64) {
        match self {
            Spread::Narrow => (1e6, 1e8),
            Spread::Wide => (5e4, 2e9),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Spread::Narrow => "1-100ms",
            Spread::Wide => "50us-2s",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Spread::Narrow, Spread::Wide]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

/// A xorshift generator of log-uniform values over a spread (each thread its own).
struct Values {
    x: u64,
    lo: f64,
    ratio: f64,
}

impl Values {
    fn new(seed: u64, spread: Spread) -> Self {
        let (lo, hi) = spread.bounds_ns();
        Values {
            x: 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03),
            lo,
            ratio: hi / lo,
        }
    }
    fn next_raw(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }
    fn next(&mut self) -> u64 {
        let f = (self.next_raw() >> 11) as f64 / (1u64 << 53) as f64;
        (self.lo * self.ratio.powf(f)) as u64
    }
}

/// The implementations compared: each registers 200 labelled series and records into them.
trait Recording: Sync {
    fn record(&self, series: usize, v: u64);
}

struct TallyImpl {
    _tally: Tally,
    family: tally::HistogramFamily,
    routes: Vec<String>,
}

impl Recording for TallyImpl {
    fn record(&self, series: usize, v: u64) {
        let (route, method, status) = labels(&self.routes, series);
        self.family.record(&[route, method, status], v);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PromLabels {
    route: String,
    method: &'static str,
    status: &'static str,
}

/// prometheus-client: a `Family` of classic histograms (14 exponential buckets, as the
/// `record` bench), looked up by label set per call as its users do.
struct PromImpl {
    family: Family<PromLabels, PromHistogram>,
    routes: Vec<String>,
}

impl Recording for PromImpl {
    fn record(&self, series: usize, v: u64) {
        let (route, method, status) = labels(&self.routes, series);
        self.family
            .get_or_create(&PromLabels {
                route: route.to_owned(),
                method,
                status,
            })
            .observe(v as f64);
    }
}

/// metrics-rs: metrics-util's atomic registry (the Prometheus exporter's storage), with a
/// handle per series. Its histograms keep every sample until a scrape drains them; nothing
/// drains during the run, as with tally.
struct MetricsImpl {
    registry: Registry<Key, AtomicStorage>,
    handles: Vec<metrics::Histogram>,
}

impl MetricsImpl {
    fn new(routes: &[String]) -> Self {
        let registry = Registry::atomic();
        let handles = (0..SERIES)
            .map(|i| {
                let (route, method, status) = labels(routes, i);
                let key = Key::from_parts(
                    "response_time",
                    vec![
                        Label::new("route", route.to_owned()),
                        Label::new("method", method),
                        Label::new("status", status),
                    ],
                );
                registry.get_or_create_histogram(&key, |h| metrics::Histogram::from_arc(h.clone()))
            })
            .collect();
        MetricsImpl { registry, handles }
    }
}

impl Recorder for MetricsImpl {
    fn describe_counter(&self, _: KeyName, _: Option<MUnit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<MUnit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<MUnit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        self.registry
            .get_or_create_counter(key, |c| metrics::Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        self.registry
            .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        self.registry
            .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
    }
}

impl Recording for MetricsImpl {
    fn record(&self, series: usize, v: u64) {
        self.handles[series].record(v as f64);
    }
}

/// OpenTelemetry SDK: one histogram instrument (default explicit buckets), three attributes
/// per call.
struct OtelImpl {
    _provider: SdkMeterProvider,
    histogram: opentelemetry::metrics::Histogram<u64>,
    attributes: Vec<[KeyValue; 3]>,
}

impl Recording for OtelImpl {
    fn record(&self, series: usize, v: u64) {
        self.histogram.record(v, &self.attributes[series]);
    }
}

fn build(implementation: &str, shards: usize) -> Box<dyn Recording> {
    let routes: Vec<String> = (0..ROUTES)
        .map(|r| format!("/api/v1/route{r}/{{id}}"))
        .collect();
    match implementation {
        "tally" => {
            // A closed port and an hour-long interval: nothing drains during the run.
            let tally = Tally::builder()
                .agent("127.0.0.1:9")
                .flush_interval(Duration::from_secs(3600))
                .shutdown_timeout(Duration::from_millis(100))
                .shards(shards)
                .build()
                .expect("valid configuration");
            let family = tally.histogram_family(
                "ResponseTime",
                Unit::Nanoseconds,
                &["Route", "Method", "StatusClass"],
            );
            Box::new(TallyImpl {
                _tally: tally,
                family,
                routes,
            })
        }
        "prometheus-client" => Box::new(PromImpl {
            family: Family::new_with_constructor(|| {
                PromHistogram::new(exponential_buckets(1e4, 2.0, 14))
            }),
            routes,
        }),
        "metrics-rs" => Box::new(MetricsImpl::new(&routes)),
        "opentelemetry" => {
            let reader = PeriodicReader::builder(DiscardExporter)
                .with_interval(Duration::from_secs(3600))
                .build();
            let provider = SdkMeterProvider::builder().with_reader(reader).build();
            let histogram = provider
                .meter("bench")
                .u64_histogram("response_time")
                .build();
            let attributes = (0..SERIES)
                .map(|i| {
                    let (route, method, status) = labels(&routes, i);
                    [
                        KeyValue::new("route", route.to_owned()),
                        KeyValue::new("method", method),
                        KeyValue::new("status", status),
                    ]
                })
                .collect();
            Box::new(OtelImpl {
                _provider: provider,
                histogram,
                attributes,
            })
        }
        other => panic!("unknown implementation {other}"),
    }
}

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One case, in this process: prints `heap_bytes_per_series rss_bytes_per_series records`.
fn child(implementation: &str, threads: usize, spread: Spread, tight: bool, secs: u64) {
    let imp = build(implementation, threads);
    let start = Barrier::new(threads + 1);
    let finished = Barrier::new(threads + 1);
    let release = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for t in 0..threads {
            let (imp, start, finished, release) = (&*imp, &start, &finished, &release);
            workers.push(s.spawn(move || {
                let mut values = Values::new(t as u64 + 1, spread);
                let mut records = 0u64;
                start.wait();
                if tight {
                    // Every thread records into the series of the current 20 us time slot,
                    // so the threads that run at the same instant hammer the same series.
                    let begin = Instant::now();
                    let total = (TIGHT_PER_SERIES * SERIES) as u64;
                    while records < total {
                        let series = (begin.elapsed().as_micros() / 20) as usize % SERIES;
                        for _ in 0..64 {
                            imp.record(series, black_box(values.next()));
                        }
                        records += 64;
                    }
                } else {
                    // 10 records every millisecond, series chosen at random.
                    let begin = Instant::now();
                    let total = PACED_RATE * secs;
                    while records < total {
                        let due = (begin.elapsed().as_micros() as u64 * PACED_RATE / 1_000_000)
                            .min(total);
                        while records < due {
                            let series = (values.next_raw() >> 33) as usize % SERIES;
                            imp.record(series, black_box(values.next()));
                            records += 1;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                finished.wait();
                release.wait();
                records
            }));
        }
        // Let the threads reach the first barrier before the baseline.
        std::thread::sleep(Duration::from_millis(200));
        let (heap0, rss0) = (LIVE.load(Ordering::SeqCst), rss_bytes());
        start.wait();
        finished.wait();
        let (heap1, rss1) = (LIVE.load(Ordering::SeqCst), rss_bytes());
        release.wait();
        let records: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        println!(
            "{} {} {}",
            (heap1 - heap0) as i64 / SERIES as i64,
            (rss1 - rss0) / SERIES as i64,
            records
        );
    });
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("child") {
        let spread = Spread::parse(&args[3]).expect("spread");
        child(
            &args[1],
            args[2].parse().expect("threads"),
            spread,
            args[4] == "tight",
            args[5].parse().expect("seconds"),
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let implementations: &[&str] = if quick {
        &["tally"]
    } else {
        &["tally", "prometheus-client", "metrics-rs", "opentelemetry"]
    };
    let secs = if quick { 3 } else { 10 };
    let exe = std::env::current_exe().expect("own path");
    println!(
        "| mode | spread | threads | implementation | heap / series | RSS / series | records |"
    );
    println!("|---|---|---:|---|---:|---:|---:|");
    for mode in ["paced", "tight"] {
        for spread in [Spread::Narrow, Spread::Wide] {
            for threads in [1usize, 4, 16] {
                for imp in implementations {
                    let out = Command::new(&exe)
                        .args([
                            "child",
                            imp,
                            &threads.to_string(),
                            spread.name(),
                            mode,
                            &secs.to_string(),
                        ])
                        .output()
                        .expect("run the child case");
                    let text = String::from_utf8_lossy(&out.stdout);
                    let f: Vec<i64> = text
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    if !out.status.success() || f.len() != 3 {
                        println!(
                            "| {mode} | {} | {threads} | {imp} | failed: {} | | |",
                            spread.name(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                        continue;
                    }
                    println!(
                        "| {mode} | {} | {threads} | {imp} | {:.1} KiB | {:.1} KiB | {} |",
                        spread.name(),
                        f[0] as f64 / 1024.0,
                        f[1] as f64 / 1024.0,
                        f[2]
                    );
                }
            }
        }
    }
}
