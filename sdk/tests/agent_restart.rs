//! The agent goes away and comes back: nothing is lost while the bound holds, and past the
//! bound every dropped sample is reported, so received + reported dropped = recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tally::testing::CaptureAgent;
use tally::{FlushError, Tally, Unit};

const WAIT: Duration = Duration::from_secs(30);

/// Waits (bounded) until `cond` holds; returns whether it did.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn an_agent_stopped_and_restarted_mid_stream_receives_exact_totals() {
    let agent = CaptureAgent::start();
    let tally = Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .shutdown_timeout(WAIT)
        .build()
        .expect("valid configuration");
    let counter = tally.counter("Ops", &[]);
    let latency = tally.histogram("Latency", Unit::Microseconds, &[]);
    let chunks = AtomicU64::new(0);
    const CHUNKS: u64 = 240;
    const PER_CHUNK: u64 = 500;
    std::thread::scope(|s| {
        s.spawn(|| {
            for c in 0..CHUNKS {
                for i in 0..PER_CHUNK {
                    counter.increment(1);
                    latency.record(c * PER_CHUNK + i);
                }
                chunks.fetch_add(1, Ordering::SeqCst);
                // Paces the stream over several flush intervals.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        assert!(eventually(WAIT, || agent.totals().batches_accepted >= 1));
        assert!(eventually(WAIT, || chunks.load(Ordering::SeqCst) >= CHUNKS / 3));
        agent.stop();
        // The SDK notices (its connection ends) while the stream goes on.
        assert!(eventually(WAIT, || !tally.stats().connected));
        assert!(eventually(WAIT, || chunks.load(Ordering::SeqCst) >= 2 * CHUNKS / 3));
        agent.restart();
    });
    tally
        .flush(WAIT)
        .expect("the restarted agent acknowledges everything");
    let stats = tally.shutdown();

    let t = agent.totals();
    assert_eq!(t.counter("Ops", &[]), CHUNKS * PER_CHUNK);
    assert_eq!(
        t.histogram("Latency", &[]).map(|h| h.len()),
        Some(CHUNKS * PER_CHUNK)
    );
    assert_eq!(t.dropped_samples(), 0);
    assert_eq!(stats.dropped_samples, 0);
    assert_eq!(stats.samples_lost_at_shutdown, 0);
    assert!(stats.disconnects >= 1 && stats.connects >= 2, "{stats:?}");
}

#[test]
fn past_the_bound_received_plus_reported_dropped_equals_recorded() {
    let agent = CaptureAgent::start();
    let tally = Tally::builder()
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .max_unsent_bytes(4096)
        .shutdown_timeout(WAIT)
        .build()
        .expect("valid configuration");
    let fam = tally.counter_family("Hits", &["Key"]);
    let mut recorded = 0u64;
    let mut record = |from: u64, to: u64| {
        for k in from..to {
            fam.increment(&[&format!("k{k}")], 1);
            recorded += 1;
        }
    };
    record(0, 50);
    tally.flush(WAIT).expect("agent acknowledges");
    agent.stop();
    // Each flush seals what was recorded; with the agent away the outbox overflows its
    // 4 KiB bound and drops its oldest batches.
    for wave in 0..4 {
        record(100 + wave * 200, 300 + wave * 200);
        assert_eq!(
            tally.flush(Duration::from_millis(300)),
            Err(FlushError::TimedOut(Duration::from_millis(300)))
        );
    }
    let dropped = tally.stats().dropped_samples;
    assert!(dropped > 0, "the bound was exceeded: {:?}", tally.stats());
    agent.restart();
    record(2000, 2050);
    tally.flush(WAIT).expect("the restarted agent acknowledges");
    let stats = tally.shutdown();

    let t = agent.totals();
    assert_eq!(t.dropped_samples(), stats.dropped_samples);
    assert_eq!(t.samples() + t.dropped_samples(), recorded);
    assert_eq!(stats.samples_lost_at_shutdown, 0);
}
