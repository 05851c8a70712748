//! What does a flush cost? Draining the cells of 10,000 series and encoding them into one
//! batch frame (HdrHistogram V2 + DEFLATE for histograms), as the flusher does each interval.
//!
//! Run: `cargo bench -p tally-benches --bench flush -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally::{Tally, Unit};

const SERIES: usize = 10_000;

fn tally() -> Tally {
    // Nobody listens and the interval is an hour: the benchmark alone drains the cells.
    Tally::builder()
        .agent("127.0.0.1:9")
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .label_limit(SERIES)
        .build()
        .expect("valid configuration")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("flush_10k_series");
    g.throughput(Throughput::Elements(SERIES as u64));
    g.sample_size(20);

    let t = tally();
    let hist: Vec<tally::Histogram> = (0..SERIES)
        .map(|i| {
            let route = format!("/route/{}", i / 20);
            let status = format!("{}xx", 2 + i % 20);
            t.histogram(
                "ResponseTime",
                Unit::Nanoseconds,
                &[("Route", &route), ("Status", &status)],
            )
        })
        .collect();
    // Each histogram gets 20 samples over 4 decades, as a busy service's interval would.
    let fill = |hs: &[tally::Histogram]| {
        for (i, h) in hs.iter().enumerate() {
            for k in 0..20u64 {
                h.record(50_000 + (i as u64 * 7_919 + k * 1_000_003) % 50_000_000);
            }
        }
    };
    fill(&hist);
    let stats = t.stats();
    eprintln!(
        "cells of {SERIES} histogram series, {} shards: {} bytes ({} per series)",
        stats.shards,
        stats.cell_bytes,
        stats.cell_bytes / SERIES as u64
    );
    let mut out = Vec::new();
    g.bench_function("histograms_snapshot_encode", |b| {
        b.iter_batched(
            || fill(&hist),
            |()| {
                out.clear();
                tally::testing::snapshot_and_encode(&t, &mut out)
            },
            BatchSize::PerIteration,
        )
    });
    eprintln!("encoded frame of {SERIES} histograms: {} bytes", out.len());

    let tc = tally();
    let counters: Vec<tally::Counter> = (0..SERIES)
        .map(|i| tc.counter("RequestCount", &[("Route", &format!("/route/{i}"))]))
        .collect();
    g.bench_function("counters_snapshot_encode", |b| {
        b.iter_batched(
            || counters.iter().for_each(|c| c.increment(3)),
            |()| {
                out.clear();
                tally::testing::snapshot_and_encode(&tc, &mut out)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
