//! One million distinct label values through the handle API (and 200,000 more through the
//! `metrics` facade): the
//! SDK's memory stays bounded by `max_series`, and every sample still arrives (the values past
//! the bound folded into the overflow series and counted).

use std::time::Duration;

use tally::conventions::OVERFLOW_VALUE;
use tally::testing::CaptureAgent;
use tally::Tally;

#[test]
fn a_million_distinct_label_values_stay_within_max_series_and_every_sample_arrives() {
    let agent = CaptureAgent::start();
    let max_series = 1_000;
    let tally = Tally::builder()
        .service("cardinality")
        .environment("test")
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .max_series(max_series)
        .shards(1)
        .build()
        .unwrap();
    let after_first = {
        tally.counter("Hits", &[("user", "u0")]).increment(1);
        tally.stats().cell_bytes
    };
    for i in 1..1_000_000u32 {
        tally
            .counter("Hits", &[("user", &format!("u{i}"))])
            .increment(1);
    }
    let stats = tally.stats();
    // The bounded registry: at most max_series cells (+ one overflow series).
    assert!(
        stats.cell_bytes <= after_first * (max_series as u64 + 1),
        "{} bytes of cells for {max_series} series",
        stats.cell_bytes
    );
    assert_eq!(stats.label_overflows, 1_000_000 - max_series as u64);
    // The `metrics` facade: its handle cache is bounded by max_series too, and the registry is
    // already full, so every one of these folds into the overflow series.
    let recorder = tally::facade::TallyRecorder::new(&tally);
    metrics::with_local_recorder(&recorder, || {
        for i in 0..200_000u32 {
            metrics::counter!("FacadeHits", "user" => format!("f{i}")).increment(1);
        }
    });
    let overflows = 1_000_000 - max_series as u64 + 200_000;
    assert_eq!(tally.stats().label_overflows, overflows);
    let stats = tally.shutdown();
    assert_eq!(stats.samples_lost_at_shutdown, 0);
    assert!(agent.wait_for(Duration::from_secs(20), |t| t.samples() == 1_200_000));
    let t = agent.totals();
    assert_eq!(
        t.counter("Hits", &[("user", OVERFLOW_VALUE)]),
        1_000_000 - max_series as u64
    );
    assert_eq!(t.counter("Hits", &[("user", "u0")]), 1);
    assert_eq!(
        t.counter("FacadeHits", &[("user", OVERFLOW_VALUE)]),
        200_000
    );
    assert_eq!(t.label_overflows(), overflows);
}
