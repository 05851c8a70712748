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
//! - `decode_only` rows split parsing (without a memo: a sender's first batch) from merging,
//!   `decode_remembering` rows parse as the agent does from a sender's second batch on; `decode_owned` rows measure the owned
//!   `tally::wire::decode_batch` (same checks, then owned strings and full-range histograms).
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

criterion_group!(
    benches,
    counters,
    histograms,
    histogram_buckets,
    sdk_flushes
);
criterion_main!(benches);
