//! Many threads recording at once: totals are exact after the flush.

use std::sync::Barrier;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use tally::testing::CaptureAgent;
use tally::{Tally, Unit};

const THREADS: u64 = 6;
const RECORDS: u64 = 40_000;

#[test]
fn n_threads_recording_m_samples_each_arrive_exactly() {
    let agent = CaptureAgent::start();
    let tally = Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        // Fewer shards than threads: threads that share a shard must not lose increments.
        .shards(4)
        .build()
        .expect("valid configuration");
    let counter = tally.counter("Ops", &[]);
    let latency = tally.histogram("Latency", Unit::Nanoseconds, &[]);
    let routes =
        tally.histogram_family("ByRoute", Unit::Nanoseconds, &["Route", "Method", "Status"]);
    let events = tally.event("Sale", &[]);
    let barrier = Barrier::new(THREADS as usize);
    let value = |t: u64, i: u64| (i * 7919 + t * 104_729) % 50_000_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (counter, latency, routes, events, barrier) =
                (&counter, &latency, &routes, &events, &barrier);
            s.spawn(move || {
                let route = format!("/r{}", t % 3);
                barrier.wait();
                for i in 0..RECORDS {
                    counter.increment(1);
                    latency.record(value(t, i));
                    routes.record(&[&route, "GET", "2xx"], i);
                    if i % 10 == 0 {
                        events.emit_value(1.5);
                    }
                }
            });
        }
    });
    let stats = tally.shutdown();
    assert_eq!(stats.samples_lost_at_shutdown, 0);

    let t = agent.totals();
    assert_eq!(t.counter("Ops", &[]), THREADS * RECORDS);
    let mut reference = Hdr::<u64>::new(2).expect("the default 2 digits");
    for th in 0..THREADS {
        for i in 0..RECORDS {
            reference.record(value(th, i)).expect("auto-resize");
        }
    }
    let got = t.histogram("Latency", &[]).expect("histogram");
    assert_eq!(got.len(), THREADS * RECORDS);
    for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
        assert_eq!(
            got.value_at_quantile(q),
            reference.value_at_quantile(q),
            "q{q}"
        );
    }
    let per_route: u64 = (0..3)
        .map(|r| {
            let route = format!("/r{r}");
            t.histogram(
                "ByRoute",
                &[("Route", &route), ("Method", "GET"), ("Status", "2xx")],
            )
            .map_or(0, |h| h.len())
        })
        .sum();
    assert_eq!(per_route, THREADS * RECORDS);
    assert_eq!(t.event_count("Sale", &[]), THREADS * RECORDS / 10);
    assert_eq!(t.samples(), stats.samples_acked);
}
