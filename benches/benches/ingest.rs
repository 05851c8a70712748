//! Agent ingest: decode + merge throughput of SDK batches on one core, in series updates per
//! second (one update = one series of one batch merged into the open period).
//!
//! Groups:
//! - `agent_ingest/counters`: batches of 1,000 counter series (3 labels each) from one
//!   process, parsed with `tally::wire::BatchView::parse_remembering` (borrowed strings, every
//!   check; a sender's series seen in its last batch are recognised by their bytes, as an
//!   agent session does) and merged by the agent's `Aggregator` into a period that already
//!   holds those series (the steady state). This is the agent's path.
//! - `agent_ingest/histograms`: batches of 100 latency histograms (about 20 distinct values
//!   each over a declared 1 ns..60 s range at 3 digits; plain HdrHistogram V2 on the wire, as
//!   the SDK sends bodies up to 1 KiB), same path.
//! - `agent_ingest/histogram_buckets`: decode + merge of the same batches with 1, 5, 20 or 50
//!   distinct values (non-zero buckets) per histogram, so the fixed and the per-bucket cost
//!   of a histogram update can be read apart.
//! - `agent_ingest/sdk_flushes`: 10,000 counter series sent as an SDK sends them (sorted,
//!   split into batches of 1,000, a different 5% idle in each flush, so the split between
//!   batches moves), decode + merge of four flushes per iteration.
//! - `agent_ingest/service_flush`: what a service behind the tower middleware sends. A real
//!   `tally::Tally` records requests under the middleware's names and labels (20 routes x 2
//!   methods; 94% 2xx, 5% 4xx, 1% 5xx; latencies log-normal around 20 ms at the default 3
//!   digits), then one flush of it is encoded as the SDK's flusher encodes it (histogram
//!   bodies past 1 KiB DEFLATE-compressed) and decoded + merged as above. The parameter is
//!   requests per route and method in the flush (10 per 10-s flush is 1 request/s); the
//!   throughput is in requests represented, so `1 / thrpt` is the agent's CPU per request the
//!   service served. `sdk_flush/service` times the SDK's side of the same flushes (drain the
//!   cells, encode the frame).
//! - `decode_only` rows split parsing (without a memo: a sender's first batch) from merging,
//!   `decode_remembering` rows parse as the agent does from a sender's second batch on;
//!   `decode_owned` rows measure the owned `tally::wire::decode_batch` (same checks, then
//!   owned strings and full-range histograms).
//!
//! Goal (issue 3): at least 5 million series updates per second per core.

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use hdrhistogram::Histogram;
use tally::wire::{
    decode_batch, encode_batch, Batch, BatchView, Limits, ParseMemo, ProcessIdentity, Series,
    SeriesValue, Unit, HEADER_LEN,
};
use tally_agent::aggregate::{Aggregator, Settings};
use tally_agent::config::{Config, TimeUnit};
use tally_agent::stats::Stats;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn frame(series: Vec<Series>) -> Vec<u8> {
    let b = Batch {
        process: ProcessIdentity {
            instance_id: 1,
            pid: 1,
            service: "shop".into(),
            environment: "prod".into(),
            host: "h".into(),
        },
        sequence: 1,
        start_unix_ms: now_ms() - 1000,
        end_unix_ms: now_ms(),
        drops: Default::default(),
        series,
    };
    let mut out = Vec::new();
    encode_batch(&b, &mut out).unwrap();
    out
}

fn labels(i: usize) -> Vec<(String, String)> {
    vec![
        ("Method".into(), ["GET", "POST"][i % 2].into()),
        ("Route".into(), format!("/api/v1/resource{}", i / 4)),
        ("StatusClass".into(), ["2xx", "5xx"][(i / 2) % 2].into()),
    ]
}

fn aggregator() -> Aggregator {
    let mut settings = Settings::from_config(&Config::default());
    settings.time_unit = TimeUnit::Milliseconds;
    settings.max_series = 1_000_000;
    Aggregator::new(settings, &Stats::new(), SystemTime::now())
}

fn bench_path(c: &mut Criterion, group_name: &str, payload: &[u8], series: u64) {
    let limits = Limits::default();
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Elements(series));
    g.bench_function(BenchmarkId::new("decode_owned", series), |b| {
        b.iter(|| decode_batch(payload, &limits).unwrap())
    });
    g.bench_function(BenchmarkId::new("decode_only", series), |b| {
        b.iter(|| BatchView::parse(payload, &limits).unwrap())
    });
    let mut memo = ParseMemo::new();
    BatchView::parse_remembering(payload, &limits, &mut memo).unwrap();
    g.bench_function(BenchmarkId::new("decode_remembering", series), |b| {
        b.iter(|| BatchView::parse_remembering(payload, &limits, &mut memo).unwrap())
    });
    agent_path(
        &mut g,
        BenchmarkId::new("decode_and_merge", series),
        payload,
    );
    g.finish();
}

/// Registers the agent's path as `id`: a session's parse (with its memo of the sender) and the
/// merge into a period that already holds the batch's series (the steady state).
fn agent_path(g: &mut BenchmarkGroup<'_, WallTime>, id: BenchmarkId, payload: &[u8]) {
    let limits = Limits::default();
    let mut agg = aggregator();
    let mut memo = ParseMemo::new();
    let first = BatchView::parse_remembering(payload, &limits, &mut memo).unwrap();
    agg.merge(&first, SystemTime::now()).unwrap();
    g.bench_function(id, |b| {
        b.iter(|| {
            let batch = BatchView::parse_remembering(payload, &limits, &mut memo).unwrap();
            agg.merge(&batch, SystemTime::now()).unwrap()
        })
    });
}

/// The request counter of route `i / 4`, with a delta of 3.
fn request_count(i: usize) -> Series {
    Series {
        name: "RequestCount".into(),
        unit: Unit::Count,
        labels: labels(i),
        value: SeriesValue::Counter(3),
    }
}

fn counters(c: &mut Criterion) {
    let n = 1000;
    let series = (0..n).map(request_count).collect();
    let f = frame(series);
    bench_path(c, "agent_ingest/counters", &f[HEADER_LEN..], n as u64);
}

/// A batch of `n` latency histograms, each holding `values` distinct values (1 ms apart by
/// 137 us, so every value lands in a bucket of its own at 3 digits).
fn histogram_frame(n: usize, values: u64) -> Vec<u8> {
    let series = (0..n)
        .map(|i| {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            h.auto(true);
            for k in 0..values {
                h.record(1_000_000 + k * 137_000 + i as u64).unwrap();
            }
            Series {
                name: "ResponseTime".into(),
                unit: Unit::Nanoseconds,
                labels: labels(i),
                value: SeriesValue::Histogram {
                    scale: 1.0,
                    histogram: h,
                },
            }
        })
        .collect();
    frame(series)
}

fn histograms(c: &mut Criterion) {
    let n = 100;
    let f = histogram_frame(n, 20);
    bench_path(c, "agent_ingest/histograms", &f[HEADER_LEN..], n as u64);
}

/// Decode + merge of 100-histogram batches by the number of distinct values (non-zero
/// buckets) each histogram carries: what a histogram update costs in fixed and per-bucket
/// parts. Parameter: buckets per histogram.
fn histogram_buckets(c: &mut Criterion) {
    let n = 100;
    let mut g = c.benchmark_group("agent_ingest/histogram_buckets");
    g.throughput(Throughput::Elements(n as u64));
    for values in [1u64, 5, 20, 50] {
        let f = histogram_frame(n, values);
        let id = BenchmarkId::new("decode_and_merge", values);
        agent_path(&mut g, id, &f[HEADER_LEN..]);
    }
    g.finish();
}

/// What an SDK process with many series sends: 10,000 counter series in one order (sorted,
/// as the SDK sorts them), split into batches of 1,000, with a different ~5% of the series
/// idle (left out) in each of four flushes, so batch boundaries move from flush to flush.
/// One iteration parses and merges the four flushes (38,000 series updates or so), as an
/// agent session does (its memo, the aggregator's slot cache).
fn sdk_flushes(c: &mut Criterion) {
    let n = 10_000;
    let per_batch = 1_000;
    let limits = Limits::default();
    let flushes: Vec<Vec<Vec<u8>>> = (0..4u64)
        .map(|f| {
            let live: Vec<Series> = (0..n)
                .filter(|&i| !(i as u64 * 2_654_435_761 + f * 97).is_multiple_of(20))
                .map(request_count)
                .collect();
            live.chunks(per_batch)
                .map(|chunk| {
                    let f = frame(chunk.to_vec());
                    f[HEADER_LEN..].to_vec()
                })
                .collect()
        })
        .collect();
    let updates: usize = flushes
        .iter()
        .flatten()
        .map(|b| BatchView::parse(b, &limits).unwrap().len())
        .sum();
    let mut g = c.benchmark_group("agent_ingest/sdk_flushes");
    g.throughput(Throughput::Elements(updates as u64));
    let mut agg = aggregator();
    let mut memo = ParseMemo::new();
    for batch in flushes.iter().flatten() {
        let view = BatchView::parse_remembering(batch, &limits, &mut memo).unwrap();
        agg.merge(&view, SystemTime::now()).unwrap();
    }
    g.bench_function(BenchmarkId::new("decode_and_merge", updates), |b| {
        b.iter(|| {
            for batch in flushes.iter().flatten() {
                let view = BatchView::parse_remembering(batch, &limits, &mut memo).unwrap();
                agg.merge(&view, SystemTime::now()).unwrap();
            }
        })
    });
    g.finish();
}

/// A deterministic xorshift64* generator (the benchmark's input must not vary run to run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (Irwin-Hall: twelve uniforms less six).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

/// A service behind the tower middleware: a real `Tally` and the metric families the
/// middleware records into, under its names and labels.
struct Service {
    tally: tally::Tally,
    requests: tally::CounterFamily,
    errors: tally::CounterFamily,
    client_errors: tally::CounterFamily,
    latency: tally::HistogramFamily,
    in_flight: tally::Gauge,
    routes: Vec<String>,
    rng: Rng,
}

impl Service {
    fn new() -> Self {
        use tally::conventions::{
            CLIENT_ERROR_COUNT, ERROR_COUNT, IN_FLIGHT, METHOD, REQUEST_COUNT, RESPONSE_TIME,
            ROUTE, STATUS_CLASS,
        };
        let tally = tally::Tally::builder()
            .service("shop")
            .agent("127.0.0.1:9")
            .flush_interval(std::time::Duration::from_secs(3600))
            .shutdown_timeout(std::time::Duration::from_millis(100))
            .build()
            .expect("valid configuration");
        let labels = [ROUTE, METHOD, STATUS_CLASS];
        Service {
            requests: tally.counter_family(REQUEST_COUNT, &labels),
            errors: tally.counter_family(ERROR_COUNT, &labels),
            client_errors: tally.counter_family(CLIENT_ERROR_COUNT, &labels),
            latency: tally.histogram_family(RESPONSE_TIME, Unit::Nanoseconds, &labels),
            in_flight: tally.gauge(IN_FLIGHT, &[]),
            routes: (0..20)
                .map(|r| format!("/api/v1/resource{r}/{{id}}"))
                .collect(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            tally,
        }
    }

    /// Records `per_key` requests for each route and method, as the middleware does; returns
    /// how many.
    fn serve(&mut self, per_key: u64) -> u64 {
        let mut n = 0;
        for route in &self.routes {
            for method in ["GET", "POST"] {
                for _ in 0..per_key {
                    let roll = self.rng.unit();
                    let class = if roll < 0.01 {
                        "5xx"
                    } else if roll < 0.06 {
                        "4xx"
                    } else {
                        "2xx"
                    };
                    let values = [route.as_str(), method, class];
                    self.in_flight.increment(1.0);
                    self.requests.increment(&values, 1);
                    let latency = (20e6 * (0.5 * self.rng.normal()).exp()) as u64;
                    self.latency.record(&values, latency);
                    if class == "5xx" {
                        self.errors.increment(&values, 1);
                    }
                    if class == "4xx" {
                        self.client_errors.increment(&values, 1);
                    }
                    self.in_flight.decrement(1.0);
                    n += 1;
                }
            }
        }
        n
    }

    /// One flush as the SDK's flusher drains and encodes it, appended to `out` (a frame).
    fn flush(&self, out: &mut Vec<u8>) {
        tally::testing::snapshot_and_encode(&self.tally, out);
    }
}

/// One flush of a service that served `per_key` requests for each route and method: the
/// payload and the requests it stands for.
fn service_flush(per_key: u64) -> (Vec<u8>, u64) {
    let mut service = Service::new();
    let n = service.serve(per_key);
    let mut out = Vec::new();
    service.flush(&mut out);
    service.tally.shutdown();
    (out[HEADER_LEN..].to_vec(), n)
}

/// Decode + merge of one service flush (see the module docs), by requests per route and
/// method in the flush.
fn service_flushes(c: &mut Criterion) {
    let mut g = c.benchmark_group("agent_ingest/service_flush");
    let limits = Limits::default();
    for per_key in [10u64, 100, 1000] {
        let (payload, requests) = service_flush(per_key);
        let view = BatchView::parse(&payload, &limits).unwrap();
        let (mut hists, mut buckets) = (0usize, 0usize);
        for s in view.series() {
            if let tally::wire::ValueView::Histogram(h) = s.value {
                hists += 1;
                buckets += h.buckets().unwrap().len();
            }
        }
        eprintln!(
            "service_flush/{per_key}: {requests} requests, {} series ({hists} histograms, \
             {:.1} distinct values each), {} payload bytes",
            view.len(),
            buckets as f64 / hists.max(1) as f64,
            payload.len()
        );
        g.throughput(Throughput::Elements(requests));
        agent_path(
            &mut g,
            BenchmarkId::new("decode_and_merge", per_key),
            &payload,
        );
    }
    g.finish();
    // The SDK's side of the same flushes: drain the cells and encode. Only that is timed; the
    // requests are recorded again before each, which takes longer, hence the short group.
    let mut g = c.benchmark_group("sdk_flush/service");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(1));
    for per_key in [10u64, 100, 1000] {
        let mut service = Service::new();
        let mut out = Vec::new();
        g.throughput(Throughput::Elements(service.serve(per_key)));
        service.flush(&mut out);
        g.bench_function(BenchmarkId::new("snapshot_encode", per_key), |b| {
            b.iter_custom(|iters| {
                let mut timed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    service.serve(per_key);
                    out.clear();
                    let start = std::time::Instant::now();
                    service.flush(&mut out);
                    timed += start.elapsed();
                }
                timed
            })
        });
        service.tally.shutdown();
    }
    g.finish();
}

criterion_group!(
    benches,
    counters,
    histograms,
    histogram_buckets,
    sdk_flushes,
    service_flushes
);
criterion_main!(benches);
