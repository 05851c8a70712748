//! What does one record cost, for tally and its peers, measured side by side?
//!
//! Group `record_one`: one histogram record on one thread (a handle, or labels resolved per
//! call). Group `record_two_threads`: the same series recorded by 1 and by 2 threads at once;
//! criterion reports throughput in records per second, so the 2-thread / 1-thread ratio is
//! the scaling. Every implementation records the same 1024 latencies (log-uniform, 10 us to
//! 100 ms, in ns), cycling.
//!
//! Run: `cargo bench -p tally-benches --bench record -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use metrics::{Key, KeyName, Metadata, Recorder, SharedString, Unit as MUnit};
use metrics_util::registry::{AtomicStorage, Registry};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tally::{Tally, Unit};

mod common;
use common::DiscardExporter;

const ROUTE: &str = "/orders/{id}";

/// 1024 latencies, log-uniform between 10 us and 100 ms, in nanoseconds.
fn latencies() -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = (x >> 11) as f64 / (1u64 << 53) as f64;
            (10_000f64 * 10_000f64.powf(f)) as u64
        })
        .collect()
}

/// A minimal `metrics` recorder over metrics-util's atomic registry: the storage the
/// Prometheus exporter uses (histograms are lock-free append buckets drained on scrape).
struct UtilRecorder {
    registry: Registry<Key, AtomicStorage>,
}

impl UtilRecorder {
    fn new() -> Self {
        UtilRecorder {
            registry: Registry::atomic(),
        }
    }

    /// Drains every histogram bucket (what a scrape does), so memory stays bounded.
    fn drain(&self) {
        self.registry.visit_histograms(|_, h| h.clear());
    }
}

impl Recorder for UtilRecorder {
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

/// The peers, each set up once, each recording one latency per call.
struct Peers {
    tally: Tally,
    tally_handle: tally::Histogram,
    tally_family: tally::HistogramFamily,
    util: &'static UtilRecorder,
    metrics_handle: metrics::Histogram,
    prom: prometheus_client::metrics::histogram::Histogram,
    otel: opentelemetry::metrics::Histogram<u64>,
    _otel_provider: SdkMeterProvider,
    hdr: Mutex<hdrhistogram::Histogram<u64>>,
}

fn peers() -> Peers {
    // An address nobody listens on and an hour-long interval: the flusher never drains the
    // cells during a measurement, so only recording is timed.
    let tally = Tally::builder()
        .agent("127.0.0.1:9")
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .expect("valid configuration");
    let labels = [("Route", ROUTE), ("Method", "GET"), ("StatusClass", "2xx")];
    let tally_handle = tally.histogram("ResponseTime", Unit::Nanoseconds, &labels);
    let tally_family = tally.histogram_family(
        "ResponseTimeL",
        Unit::Nanoseconds,
        &["Route", "Method", "StatusClass"],
    );
    let util: &'static UtilRecorder = Box::leak(Box::new(UtilRecorder::new()));
    metrics::set_global_recorder(util).expect("the only global recorder in this process");
    let metrics_handle = metrics::histogram!("response_time", "route" => ROUTE, "method" => "GET", "status" => "2xx");
    let prom = prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(1e4, 2.0, 14),
    );
    let reader = PeriodicReader::builder(DiscardExporter)
        .with_interval(Duration::from_secs(3600))
        .build();
    let provider = SdkMeterProvider::builder().with_reader(reader).build();
    let otel = provider
        .meter("bench")
        .u64_histogram("response_time")
        .build();
    let hdr = Mutex::new(hdrhistogram::Histogram::new(3).expect("3 digits"));
    Peers {
        tally,
        tally_handle,
        tally_family,
        util,
        metrics_handle,
        prom,
        otel,
        _otel_provider: provider,
        hdr,
    }
}

type RecordFn = fn(&Peers, u64);

fn implementations() -> Vec<(&'static str, RecordFn)> {
    vec![
        ("tally_handle", |p, v| p.tally_handle.record(v)),
        ("tally_labelled_3", |p, v| {
            p.tally_family.record(&[ROUTE, "GET", "2xx"], v)
        }),
        ("metrics_handle", |p, v| p.metrics_handle.record(v as f64)),
        ("metrics_dynamic_3", |_, v| {
            metrics::histogram!("response_time_dyn", "route" => ROUTE, "method" => "GET", "status" => "2xx")
                .record(v as f64)
        }),
        ("prometheus_client", |p, v| p.prom.observe(v as f64)),
        ("otel_sdk_3_attrs", |p, v| {
            p.otel.record(
                v,
                &[
                    KeyValue::new("route", ROUTE),
                    KeyValue::new("method", "GET"),
                    KeyValue::new("status", "2xx"),
                ],
            )
        }),
        ("mutex_hdrhistogram", |p, v| {
            // A poisoned lock would mean a panic elsewhere in the benchmark.
            let _ = p.hdr.lock().map(|mut h| h.saturating_record(v));
        }),
    ]
}

/// Runs `iters` records on each of `threads` threads; returns the wall time of the slowest.
fn run_threads(p: &Peers, f: RecordFn, values: &[u64], threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads + 1);
    let done = AtomicU64::new(0);
    let elapsed = std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, done) = (&barrier, &done);
            s.spawn(move || {
                barrier.wait();
                for i in (t as u64 * 512)..(t as u64 * 512 + iters) {
                    f(p, black_box(values[(i & 1023) as usize]));
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        barrier.wait();
        let start = Instant::now();
        while done.load(Ordering::SeqCst) < threads as u64 {
            std::hint::spin_loop();
        }
        start.elapsed()
    });
    p.util.drain();
    elapsed
}

fn bench(c: &mut Criterion) {
    let p = peers();
    let values = latencies();

    let mut one = c.benchmark_group("record_one");
    for (name, f) in implementations() {
        one.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    f(&p, black_box(values[(i & 1023) as usize]));
                }
                let e = start.elapsed();
                p.util.drain();
                e
            })
        });
    }
    one.finish();

    let mut two = c.benchmark_group("record_two_threads");
    for (name, f) in implementations() {
        for threads in [1usize, 2] {
            two.throughput(Throughput::Elements(threads as u64));
            two.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                b.iter_custom(|iters| run_threads(&p, f, &values, t, iters))
            });
        }
    }
    two.finish();
    drop(p.tally);
}

criterion_group!(benches, bench);
criterion_main!(benches);
