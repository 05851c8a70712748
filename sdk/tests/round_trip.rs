//! Public API round trips through a real loopback agent (the CaptureAgent speaks the wire
//! protocol over TCP and acknowledges every batch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use proptest::prelude::*;
use tally::conventions::OVERFLOW_VALUE;
use tally::testing::CaptureAgent;
use tally::{BuildError, Tally, Unit};

const WAIT: Duration = Duration::from_secs(20);

fn tally_for(agent: &CaptureAgent) -> Tally {
    Tally::builder()
        .service("checkout")
        .environment("test")
        .agent(agent.addr())
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("valid configuration")
}

#[test]
fn every_kind_of_series_arrives_with_its_labels_and_the_process_identity() {
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    tally.counter("Hits", &[("Route", "/")]).increment(3);
    let g = tally.gauge("InFlight", &[]);
    g.increment(5.0);
    g.decrement(2.0);
    let h = tally.histogram("Latency", Unit::Nanoseconds, &[("Route", "/")]);
    h.record(1_000);
    h.record_duration(Duration::from_micros(2));
    let ms = tally.histogram("Latency", Unit::Milliseconds, &[("Route", "/slow")]);
    ms.record_duration(Duration::from_millis(1500));
    let e = tally.event("checkout", &[("Plan", "pro")]);
    e.emit();
    e.emit_value(49.99);
    let fam = tally.counter_family("RequestCount", &["Route", "Method", "StatusClass"]);
    fam.increment(&["/orders/{id}", "GET", "2xx"], 2);
    fam.with(&["/orders/{id}", "GET", "2xx"]).increment(1);
    let stats = tally.shutdown();

    let t = agent.totals();
    assert_eq!(t.counter("Hits", &[("Route", "/")]), 3);
    assert_eq!(t.gauge("InFlight", &[]), Some(3.0));
    let lat = t
        .histogram("Latency", &[("Route", "/")])
        .expect("histogram");
    assert_eq!(lat.len(), 2);
    assert!(lat.equivalent(lat.min(), 1_000) && lat.equivalent(lat.max(), 2_000));
    let slow = t
        .histogram("Latency", &[("Route", "/slow")])
        .expect("histogram");
    assert!(slow.equivalent(slow.max(), 1_500));
    assert_eq!(t.event_count("checkout", &[("Plan", "pro")]), 2);
    let (scale, values) = t
        .event_values("checkout", &[("Plan", "pro")])
        .expect("values");
    assert_eq!(values.len(), 1);
    assert!(values.equivalent(values.max(), (49.99 * scale).round() as u64));
    assert_eq!(
        t.counter(
            "RequestCount",
            &[
                ("Route", "/orders/{id}"),
                ("Method", "GET"),
                ("StatusClass", "2xx")
            ]
        ),
        3
    );
    let p = t.processes.values().next().expect("one process");
    assert_eq!(p.identity.service, "checkout");
    assert_eq!(p.identity.environment, "test");
    assert_eq!(p.identity.pid, std::process::id());
    assert_eq!(p.identity.instance_id, tally.identity().instance_id);
    // Sequences start at 1 and grow by one per batch.
    let mut seqs = p.sequences.clone();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(stats.samples_lost_at_shutdown, 0);
    assert_eq!(stats.dropped_samples, 0);
}

#[test]
fn records_after_shutdown_are_not_sent_but_counted() {
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    let hits = tally.counter("Hits", &[]);
    let latency = tally.histogram_family("Latency", Unit::Nanoseconds, &["Route"]);
    hits.increment(2);
    latency.record(&["/"], 10);
    let at_shutdown = tally.shutdown();
    assert_eq!(at_shutdown.samples_after_shutdown, 0);
    assert_eq!(at_shutdown.samples_lost_at_shutdown, 0);
    hits.increment(5);
    latency.record(&["/"], 20);
    latency.record(&["/new"], 30);
    tally.event("Sale", &[]).emit_value(1.5);
    assert_eq!(tally.stats().samples_after_shutdown, 5 + 1 + 1 + 1);
    // Counted once: a second read finds nothing new.
    assert_eq!(tally.stats().samples_after_shutdown, 8);
    let totals = agent.totals();
    assert_eq!(totals.counter("Hits", &[]), 2);
    assert_eq!(
        totals
            .histogram("Latency", &[("Route", "/")])
            .map(|h| h.len()),
        Some(1)
    );
    assert_eq!(totals.samples(), 3);
}

#[test]
fn invalid_configurations_are_refused_with_the_setting_to_change() {
    let short = Tally::builder()
        .flush_interval(Duration::from_millis(500))
        .build()
        .expect_err("500 ms is below the minimum");
    assert!(matches!(short, BuildError::FlushIntervalTooShort { .. }));
    assert!(short.to_string().contains("flush_interval"));
    let addr = Tally::builder()
        .agent("http://agent:9911")
        .build()
        .expect_err("http is not a transport");
    assert!(addr.to_string().contains("TALLY_AGENT_ADDR"));
    let digits = Tally::builder()
        .significant_digits(6)
        .build()
        .expect_err("hdrhistogram allows 0..=5");
    assert!(matches!(digits, BuildError::BadSignificantDigits(6)));
}

#[test]
fn a_family_past_its_route_limit_keeps_method_and_status_and_counts_the_overflow() {
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    let fam = tally
        .counter_family("RequestCount", &["Route", "Method", "StatusClass"])
        .label_limit("Route", 2);
    for route in ["/a", "/b", "/c", "/d"] {
        fam.increment(&[route, "POST", "5xx"], 1);
    }
    tally.flush(WAIT).expect("agent acknowledges");
    let t = agent.totals();
    let labels = |r| [("Route", r), ("Method", "POST"), ("StatusClass", "5xx")];
    assert_eq!(t.counter("RequestCount", &labels("/a")), 1);
    assert_eq!(t.counter("RequestCount", &labels("/b")), 1);
    assert_eq!(t.counter("RequestCount", &labels(OVERFLOW_VALUE)), 2);
    assert_eq!(t.label_overflows(), 2);
    assert_eq!(tally.stats().label_overflows, 2);
}

#[test]
fn the_metrics_facade_records_into_tally() {
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    let recorder = tally::facade::TallyRecorder::new(&tally);
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_histogram!("db_query", metrics::Unit::Seconds, "query time");
        metrics::counter!("jobs", "queue" => "mail").increment(2);
        metrics::counter!("jobs", "queue" => "mail").increment(1);
        metrics::gauge!("depth").set(7.0);
        metrics::histogram!("db_query").record(0.25);
        metrics::histogram!("ratio").record(0.125);
    });
    tally.flush(WAIT).expect("agent acknowledges");
    let t = agent.totals();
    assert_eq!(t.counter("jobs", &[("queue", "mail")]), 3);
    assert_eq!(t.gauge("depth", &[]), Some(7.0));
    let q = t.histogram("db_query", &[]).expect("histogram");
    assert!(
        q.equivalent(q.max(), 250_000_000),
        "seconds are recorded as ns"
    );
    let key = tally::testing::SeriesKey::new("ratio", &[]);
    let (unit, value) = t.series.get(&key).expect("ratio arrives");
    assert_eq!(*unit, Unit::None);
    match value {
        tally::wire::SeriesValue::Histogram { scale, histogram } => {
            assert_eq!(*scale, 1e6);
            assert!(histogram.equivalent(histogram.max(), 125_000));
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn batches_travel_over_a_unix_socket_too() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use tally::wire::{decode_batch, encode_ack, Ack, AckStatus, FrameHeader, Limits};

    let dir = std::env::temp_dir().join(format!("tally-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("agent.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the SDK connects");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut total = 0;
        // One batch per flush at most; the SDK sends at least one with the counter.
        for _ in 0..10 {
            let mut h = [0u8; tally::wire::HEADER_LEN];
            if s.read_exact(&mut h).is_err() {
                break;
            }
            let h = FrameHeader::parse(&h, &Limits::default()).expect("header");
            let mut p = vec![0u8; h.len as usize];
            s.read_exact(&mut p).expect("payload");
            let b = decode_batch(&p, &Limits::default()).expect("batch");
            total += b.samples();
            let mut out = Vec::new();
            encode_ack(
                &Ack {
                    sequence: b.sequence,
                    status: AckStatus::Accepted,
                    // An agent of a later release: this SDK still writes version 1, which
                    // every agent reads (the header parse above checks each frame's).
                    agent_version: 9,
                },
                &mut out,
            );
            s.write_all(&out).expect("ack");
            if total >= 4 {
                break;
            }
        }
        total
    });
    let tally = Tally::builder()
        .agent(format!("unix://{}", path.display()))
        .flush_interval(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    tally.counter("Hits", &[]).increment(2);
    tally.flush(WAIT).expect("agent acknowledges");
    assert_eq!(
        tally.stats().agent_version,
        9,
        "the version the agent advertised"
    );
    tally.counter("Hits", &[]).increment(2);
    tally.flush(WAIT).expect("agent acknowledges");
    assert_eq!(server.join().expect("server"), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One agent and one SDK for all property-test cases (each case uses its own series).
fn shared() -> &'static (CaptureAgent, Tally) {
    static SHARED: OnceLock<(CaptureAgent, Tally)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let agent = CaptureAgent::start();
        let tally = tally_for(&agent);
        (agent, tally)
    })
}

static CASE: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Deltas flushed separately and merged by the receiver equal one histogram of all
    /// samples, for values anywhere in the u64 range.
    #[test]
    fn histograms_merged_across_flushes_equal_recording_the_union(
        first in proptest::collection::vec(any::<u64>(), 0..200),
        second in proptest::collection::vec(0u64..5_000_000_000, 1..200),
    ) {
        let (agent, tally) = shared();
        let name = format!("h{}", CASE.fetch_add(1, Ordering::Relaxed));
        let h = tally.histogram(&name, Unit::Nanoseconds, &[]);
        let mut reference = Hdr::<u64>::new(2).expect("the default 2 digits");
        for v in &first {
            h.record(*v);
            reference.record(*v).expect("auto-resize");
        }
        tally.flush(WAIT).expect("agent acknowledges");
        for v in &second {
            h.record(*v);
            reference.record(*v).expect("auto-resize");
        }
        tally.flush(WAIT).expect("agent acknowledges");
        let t = agent.totals();
        let got = t.histogram(&name, &[]).expect("histogram arrives");
        let a: Vec<_> = got.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        let b: Vec<_> = reference.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
        prop_assert_eq!(a, b);
    }

    /// Through a family and the wire, a label past its limit folds alone: every other
    /// label arrives with the value it was recorded with, and the totals add up.
    #[test]
    fn the_cardinality_limiter_keeps_other_labels_end_to_end(
        rows in proptest::collection::vec((0u8..6, 0u8..3, 0u8..2), 1..60),
        route_limit in 1usize..4,
    ) {
        let (agent, tally) = shared();
        let name = format!("c{}", CASE.fetch_add(1, Ordering::Relaxed));
        let fam = tally.counter_family(&name, &["Route", "Method", "Status"]).label_limit("Route", route_limit);
        let mut admitted: Vec<String> = Vec::new();
        let mut expected = std::collections::BTreeMap::new();
        for (r, m, s) in &rows {
            let (r, m, s) = (format!("/r{r}"), format!("M{m}"), format!("{s}xx"));
            fam.increment(&[&r, &m, &s], 1);
            let route = if admitted.contains(&r) || admitted.len() < route_limit {
                if !admitted.contains(&r) { admitted.push(r.clone()); }
                r
            } else {
                OVERFLOW_VALUE.to_owned()
            };
            *expected.entry((route, m, s)).or_insert(0u64) += 1;
        }
        tally.flush(WAIT).expect("agent acknowledges");
        let t = agent.totals();
        for ((r, m, s), n) in &expected {
            prop_assert_eq!(t.counter(&name, &[("Route", r), ("Method", m), ("Status", s)]), *n);
        }
        let arrived = t.series.keys().filter(|k| k.name == name).count();
        prop_assert_eq!(arrived, expected.len());
    }
}

#[test]
fn counters_that_claim_u64_max_between_them_do_not_stop_the_flusher() {
    // `counter.increment((a - b) as u64)` with a < b: a bug in the caller, which must cost
    // that counter's figure, not every later flush.
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    tally
        .counter("Huge", &[("Shard", "a")])
        .increment(u64::MAX - 1);
    tally
        .counter("Huge", &[("Shard", "b")])
        .increment(u64::MAX - 1);
    tally
        .flush(WAIT)
        .expect("the flusher survives and the agent acknowledges");
    tally.counter("Hits", &[]).increment(2);
    tally.flush(WAIT).expect("later flushes still go out");
    let totals = agent.totals();
    assert_eq!(totals.counter("Hits", &[]), 2);
    assert_eq!(totals.counter("Huge", &[("Shard", "a")]), u64::MAX - 1);
    let stats = tally.shutdown();
    assert_eq!(stats.dropped_samples, 0);
}

#[test]
fn a_histogram_asked_for_again_in_another_unit_records_in_its_first_unit_and_says_so() {
    let agent = CaptureAgent::start();
    let tally = tally_for(&agent);
    let ms = tally.histogram("Wait", Unit::Milliseconds, &[]);
    let us = tally.histogram("Wait", Unit::Microseconds, &[]);
    assert_eq!(us.unit(), Unit::Milliseconds, "one series, one unit");
    ms.record_duration(Duration::from_secs(1));
    us.record_duration(Duration::from_secs(1));
    tally.flush(WAIT).expect("agent acknowledges");
    let totals = agent.totals();
    let h = totals.histogram("Wait", &[]).expect("the series arrives");
    // Both seconds in milliseconds: one bucket, the one of 1000 (at 2 digits it also holds
    // 1001-1003, hence `equivalent` for the maximum).
    assert_eq!(
        (h.len(), h.min()),
        (2, 1000),
        "both seconds in milliseconds"
    );
    assert!(h.equivalent(h.max(), 1000), "max {}", h.max());
    assert_eq!(tally.stats().names_fixed, 1);
}
