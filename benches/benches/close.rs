//! Agent close: the time to turn an open period of 100k counter series into the closed
//! period a sink receives (dimensions added and interned, keys sorted and merged, the derived
//! `ErrorRate` of every series): 200k metrics. The aggregator holds its lock for this long, so
//! ingest waits for it once a period.
//!
//! Group `agent_close`, row `counters/100000`; each sample fills a fresh aggregator (not
//! timed) and closes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use tally::wire::{
    encode_batch, Batch, BatchView, Limits, ProcessIdentity, Series, SeriesValue, Unit, HEADER_LEN,
};
use tally_agent::aggregate::{Aggregator, Settings};
use tally_agent::config::Config;
use tally_agent::stats::Stats;

const SERIES: usize = 100_000;
const PER_BATCH: usize = 1_000;

fn frames() -> Vec<Vec<u8>> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (0..SERIES / PER_BATCH)
        .map(|b| {
            let series = (0..PER_BATCH)
                .map(|j| {
                    let i = b * PER_BATCH + j;
                    Series {
                        name: "RequestCount".into(),
                        unit: Unit::Count,
                        labels: vec![
                            ("Method".into(), ["GET", "POST"][i % 2].into()),
                            ("Route".into(), format!("/api/v1/item/{i:06}")),
                            ("Zone".into(), ["a", "b", "c"][i % 3].into()),
                        ],
                        value: SeriesValue::Counter(1),
                    }
                })
                .collect();
            let batch = Batch {
                process: ProcessIdentity {
                    instance_id: 1,
                    pid: 1,
                    service: "checkout-api".into(),
                    environment: "production".into(),
                    host: "h".into(),
                },
                sequence: b as u64 + 1,
                start_unix_ms: now_ms - 1000,
                end_unix_ms: now_ms,
                drops: Default::default(),
                series,
            };
            let mut out = Vec::new();
            encode_batch(&batch, &mut out).unwrap();
            out
        })
        .collect()
}

fn close(c: &mut Criterion) {
    let frames = frames();
    let limits = Limits::default();
    let mut settings = Settings::from_config(&Config::default());
    settings.max_series = SERIES;
    let mut g = c.benchmark_group("agent_close");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function(BenchmarkId::new("counters", SERIES), |b| {
        b.iter_batched(
            || {
                let mut agg = Aggregator::new(settings.clone(), &Stats::new(), SystemTime::now());
                for f in &frames {
                    let view = BatchView::parse(&f[HEADER_LEN..], &limits).unwrap();
                    agg.merge(&view, SystemTime::now()).unwrap();
                }
                agg
            },
            |mut agg| {
                let closed = agg.close_all();
                let metrics: usize = closed.iter().map(|p| p.data.metrics.len()).sum();
                assert_eq!(metrics, 2 * SERIES, "{} periods", closed.len());
                closed
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, close);
criterion_main!(benches);
