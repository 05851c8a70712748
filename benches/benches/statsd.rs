//! StatsD / DogStatsD ingest: lines parsed and merged per second on one core.
//!
//! Groups (throughput in lines):
//! - `statsd/parse`: `tally_agent::statsd::parse::parse_line` over a realistic line mix
//!   (40% counters, a quarter of them sampled; 30% timers; 10% gauges, half of them changes;
//!   10% histograms and distributions; 10% sets; DogStatsD tags on every line: route out of
//!   50, method, service and env), no merge.
//! - `statsd/parse_merge`: the same lines as packets of 20 lines through
//!   `Receiver::packet` (UTF-8 check, split, parse, series lookup, counter scaling, gauge
//!   levels, histogram samples, set membership) with a flush into a real `Intake` and
//!   `Aggregator` every 20,000 lines (a 1-s flush at 20 k lines/s; a busier receiver puts
//!   more lines in each flush): 700 series, 300 of them histograms, encoded as one batch per
//!   identity, decoded and merged into the open period. That is the agent's whole path after
//!   the socket. `parse_merge_flush_every_2000_lines` flushes ten times as often.
//!
//! Goal (issue 17): at least 2 million lines per second per core, parse + merge.

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_agent::aggregate::{Aggregator, Settings};
use tally_agent::config::Config;
use tally_agent::stats::Stats;
use tally_agent::statsd::parse::parse_line;
use tally_agent::statsd::{Receiver, StatsdConfig, StatsdStats};
use tally_agent::testing::{Intake, Sequences};

const METHODS: [&str; 2] = ["GET", "POST"];

fn lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let tags = format!(
                "#route:/api/v1/r{},method:{},service:shop,env:prod",
                i % 50,
                METHODS[i % 2]
            );
            match i % 10 {
                0..=2 => format!("shop.requests:1|c|{tags}"),
                3 => format!("shop.sampled:1|c|@0.25|{tags}"),
                4..=6 => format!("shop.latency:{}.{}|ms|{tags}", 5 + i % 300, i % 10),
                7 => {
                    if i % 20 < 10 {
                        format!("shop.queue_depth:{}|g|{tags}", i % 100)
                    } else {
                        format!("shop.queue_depth:+1|g|{tags}")
                    }
                }
                8 => {
                    if i % 20 < 10 {
                        format!("shop.payload_bytes:{}|h|{tags}", 200 + i % 5000)
                    } else {
                        format!("shop.wait:{}|d|{tags}", (i % 1000) as f64 / 7.0)
                    }
                }
                _ => format!("shop.users:user{}|s|{tags}", i % 2000),
            }
        })
        .collect()
}

fn packets(lines: &[String], per_packet: usize) -> Vec<Vec<u8>> {
    lines
        .chunks(per_packet)
        .map(|c| c.join("\n").into_bytes())
        .collect()
}

fn receiver() -> Receiver {
    let stats = Stats::new();
    let config = Config::default();
    let aggregator = Aggregator::new(Settings::from_config(&config), &stats, SystemTime::now());
    let intake = Intake::new(
        aggregator,
        Sequences::new(64, Duration::from_secs(600)),
        &stats,
    );
    let cfg = StatsdConfig {
        strip_prefix: "shop.".into(),
        ..StatsdConfig::default()
    };
    Receiver::new(cfg, intake, StatsdStats::new(&stats, "udp"), 60, 0)
}

fn bench(c: &mut Criterion) {
    let all = lines(20_000);
    let mut g = c.benchmark_group("statsd");
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for l in &all {
                ok += usize::from(matches!(parse_line(l), Some(Ok(_))));
            }
            assert_eq!(ok, all.len());
            ok
        })
    });
    let pk = packets(&all, 20);
    let mut r = receiver();
    // Warm: every series known, as in the steady state.
    for p in &pk {
        r.packet(p, SystemTime::now());
    }
    r.flush(false);
    g.bench_function("parse_merge", |b| {
        b.iter(|| {
            let now = SystemTime::now();
            for p in &pk {
                r.packet(p, now);
            }
            r.flush(false);
        })
    });
    // The same with a flush every 2,000 lines: the cost of a flush (a dense histogram built
    // and encoded per histogram series) weighs ten times more.
    g.bench_function("parse_merge_flush_every_2000_lines", |b| {
        b.iter(|| {
            let now = SystemTime::now();
            for (i, p) in pk.iter().enumerate() {
                r.packet(p, now);
                if i % 100 == 99 {
                    r.flush(false);
                }
            }
            r.flush(false);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
