//! The CloudWatch publisher against a real CloudWatch API: LocalStack on loopback
//! (`scripts/localstack.sh start`; endpoint from `TALLY_TEST_CLOUDWATCH_ENDPOINT`, default
//! `http://127.0.0.1:4566`), and a loopback fault proxy in front of it that answers
//! `Throttling`, 503, closes connections or refuses one poisoned datum.
//!
//! Every test uses its own namespace, keeps dimension values that are not prefixes of one
//! another (LocalStack matches dimensions with `LIKE`), and stays in the tens of thousands of
//! samples (LocalStack stores one row per count).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::cloudwatch::{endpoint, namespace, require_localstack};
use common::fault_proxy::{start_proxy, CLOSE, FORWARD, REJECT_POISON, THROTTLE, UNAVAILABLE};
use hdrhistogram::Histogram;
use tally::wire::Unit;
use tally_agent::cloudwatch::ErrorKind;
use tally_agent::model::{AggregateValue, MetricKey, PeriodData};
use tally_agent::publish::{ClientOverrides, CloudWatchSink, DropReason, PublishConfig};
use tally_agent::stats::Stats;

fn creds() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "tally-tests"))
}

fn config(endpoint: String) -> PublishConfig {
    PublishConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint),
        // LocalStack takes seconds for a large PutMetricData on a busy 2-core machine; a
        // timed-out attempt that LocalStack still stores would be stored twice on retry.
        attempt_timeout_ms: 120_000,
        ..PublishConfig::default()
    }
}

async fn new_sink(config: PublishConfig, stats: &Stats) -> CloudWatchSink {
    CloudWatchSink::with_overrides(
        config,
        stats,
        ClientOverrides {
            credentials: Some(creds()),
        },
    )
    .await
    .expect("client builds")
}

/// A minute-aligned timestamp `minutes_ago` minutes back.
fn minute(minutes_ago: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs((now / 60 - minutes_ago) * 60)
}

fn key(name: &str, dims: &[(&str, &str)], unit: Unit) -> MetricKey {
    MetricKey::new(name, unit, dims)
}

fn period(ns: &str, ts: SystemTime, metrics: Vec<(MetricKey, AggregateValue)>) -> PeriodData {
    PeriodData {
        namespace: ns.into(),
        timestamp: ts,
        period_secs: 60,
        storage_resolution: 60,
        metrics,
    }
}

/// Values `1..=buckets`, each recorded `each` times: exact buckets (3 significant digits).
fn histogram(buckets: u64, each: u64) -> AggregateValue {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for v in 1..=buckets {
        h.record_n(v, each).unwrap();
    }
    AggregateValue::Distribution {
        scale: 1.0,
        histogram: Box::new((&h).into()),
    }
}

#[derive(Debug, PartialEq)]
struct Statistics {
    sample_count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

/// SampleCount, Sum, Minimum and Maximum over `[from, to)` in one bucket.
async fn statistics(
    ns: &str,
    name: &str,
    dims: &[(&str, &str)],
    from: SystemTime,
    to: SystemTime,
) -> Statistics {
    let mut req = common::cloudwatch::reader(&endpoint())
        .get_metric_statistics()
        .namespace(ns)
        .metric_name(name)
        .start_time(DateTime::from(from))
        .end_time(DateTime::from(to))
        .period(i32::try_from(to.duration_since(from).unwrap().as_secs()).unwrap())
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Minimum)
        .statistics(Statistic::Maximum);
    for (k, v) in dims {
        req = req.dimensions(Dimension::builder().name(*k).value(*v).build());
    }
    let out = req.send().await.expect("GetMetricStatistics");
    let points = out.datapoints();
    assert_eq!(points.len(), 1, "{name} {dims:?}: {points:?}");
    let p = &points[0];
    Statistics {
        sample_count: p.sample_count().unwrap(),
        sum: p.sum().unwrap(),
        min: p.minimum().unwrap(),
        max: p.maximum().unwrap(),
    }
}

/// Every (metric, dimension set) ListMetrics knows in `ns`.
async fn list_metrics(ns: &str) -> BTreeSet<(String, Vec<(String, String)>)> {
    let mut out = BTreeSet::new();
    let mut pages = common::cloudwatch::reader(&endpoint())
        .list_metrics()
        .namespace(ns)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        n += 1;
        assert!(n < 100, "ListMetrics pagination does not end");
        for m in page.expect("ListMetrics").metrics() {
            let mut dims: Vec<(String, String)> = m
                .dimensions()
                .iter()
                .map(|d| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned()))
                .collect();
            dims.sort();
            out.insert((m.metric_name().unwrap().to_owned(), dims));
        }
    }
    out
}

fn ident(name: &str, dims: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    (name.into(), key(name, dims, Unit::None).dimension_pairs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_samples_arrive_with_exact_statistics_and_exact_dimension_sets() {
    require_localstack();
    let ns = namespace("exact");
    let stats = Stats::new();
    let sink = new_sink(config(endpoint()), &stats).await;
    let ts = minute(3);
    let alpha = [("Route", "/alpha"), ("ServiceName", "svc-one")];
    let gamma = [("Route", "/gamma"), ("ServiceName", "svc-one")];
    let beta = [
        ("Method", "GET"),
        ("Route", "/beta"),
        ("ServiceName", "svc-one"),
    ];
    let p = period(
        &ns,
        ts,
        vec![
            // 200 distinct buckets: two datums of one metric and timestamp.
            (
                key("Latency", &alpha, Unit::Milliseconds),
                histogram(200, 3),
            ),
            (key("Latency", &gamma, Unit::Milliseconds), histogram(10, 7)),
            (
                key("Requests", &beta, Unit::Count),
                AggregateValue::Counter(42.0),
            ),
            (
                key("InFlight", &[("ServiceName", "svc-one")], Unit::None),
                AggregateValue::Gauge {
                    last: 5.0,
                    min: 2.0,
                    max: 9.0,
                    updates: 30,
                },
            ),
        ],
    );
    let report = tokio::time::timeout(Duration::from_secs(60), sink.publish(p))
        .await
        .unwrap();
    assert_eq!(report.gave_up, None);
    assert_eq!(report.published_datums, 5, "200 buckets need two datums");
    assert_eq!(sink.stats().dropped_samples_total(), 0);

    let to = ts + Duration::from_secs(60);
    assert_eq!(
        statistics(&ns, "Latency", &alpha, ts, to).await,
        Statistics {
            sample_count: 600.0,
            sum: 3.0 * 20_100.0,
            min: 1.0,
            max: 200.0
        }
    );
    assert_eq!(
        statistics(&ns, "Latency", &gamma, ts, to).await,
        Statistics {
            sample_count: 70.0,
            sum: 7.0 * 55.0,
            min: 1.0,
            max: 10.0
        }
    );
    assert_eq!(
        statistics(&ns, "Requests", &beta, ts, to).await,
        Statistics {
            sample_count: 1.0,
            sum: 42.0,
            min: 42.0,
            max: 42.0
        }
    );
    let g = statistics(&ns, "InFlight", &[("ServiceName", "svc-one")], ts, to).await;
    assert_eq!((g.min, g.max), (2.0, 9.0));

    let expected: BTreeSet<_> = [
        ident("Latency", &alpha),
        ident("Latency", &gamma),
        ident("Requests", &beta),
        ident("InFlight", &[("ServiceName", "svc-one")]),
    ]
    .into_iter()
    .collect();
    assert_eq!(list_metrics(&ns).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_2500_series_go_out_in_several_requests_none_over_a_limit() {
    require_localstack();
    let stats = Stats::new();
    let sink = new_sink(config(endpoint()), &stats).await;

    // 2,600 counters: cut by the 1000-datum limit.
    let ns = namespace("series");
    let ts = minute(4);
    let metrics = (0..2600)
        .map(|i| {
            let route = format!("/s{i:04}");
            (
                key("Requests", &[("Route", &route)], Unit::Count),
                AggregateValue::Counter(1.0),
            )
        })
        .collect();
    let r = tokio::time::timeout(
        Duration::from_secs(400),
        sink.publish(period(&ns, ts, metrics)),
    )
    .await
    .unwrap();
    assert_eq!(r.gave_up, None);
    assert_eq!(r.requests, 3, "2600 datums: 1000 + 1000 + 600");
    assert_eq!(r.published_samples, 2600);
    assert_eq!(list_metrics(&ns).await.len(), 2600);
    let s = statistics(
        &ns,
        "Requests",
        &[("Route", "/s1234")],
        ts,
        ts + Duration::from_secs(60),
    )
    .await;
    assert_eq!((s.sample_count, s.sum), (1.0, 1.0));
    let (uncompressed, sent) = sink.stats().request_bytes();
    assert!(sink.stats().max_uncompressed_request_bytes() <= 999_000);
    assert!(
        sink.stats().compressed_requests() >= 3,
        "bodies above 10 KiB go gzip-compressed"
    );
    assert!(
        sent < uncompressed,
        "gzip: {sent} sent for {uncompressed} serialized"
    );
    eprintln!(
        "2600 counters: {} requests, {uncompressed} bytes serialized, {sent} bytes sent, largest body {} bytes",
        r.requests,
        sink.stats().max_uncompressed_request_bytes()
    );

    // Full histograms under a 64 KiB request bound: cut by bytes, measured on the real body.
    let stats = Stats::new();
    let small = PublishConfig {
        max_request_bytes: 65_536,
        ..config(endpoint())
    };
    let sink = new_sink(small, &stats).await;
    let ns = namespace("bytes");
    let metrics = (0..60)
        .map(|i| {
            let route = format!("/h{i:02}");
            (
                key("Latency", &[("Route", &route)], Unit::Milliseconds),
                histogram(150, 1),
            )
        })
        .collect();
    let r = tokio::time::timeout(
        Duration::from_secs(400),
        sink.publish(period(&ns, ts, metrics)),
    )
    .await
    .unwrap();
    assert_eq!(r.gave_up, None);
    assert_eq!(r.published_samples, 9000);
    assert!(r.requests >= 3, "{} requests", r.requests);
    let largest = sink.stats().max_uncompressed_request_bytes();
    assert!(
        largest <= 65_536 && largest > 50_000,
        "largest body {largest} bytes"
    );
    let s = statistics(
        &ns,
        "Latency",
        &[("Route", "/h42")],
        ts,
        ts + Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        (s.sample_count, s.sum, s.min, s.max),
        (150.0, 11_325.0, 1.0, 150.0)
    );
    eprintln!(
        "60 histograms x 150 values at max_request_bytes=65536: {} requests, largest body {largest} bytes, {} sent",
        r.requests,
        sink.stats().max_sent_request_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_throttling_503s_and_closed_connections_for_several_periods_totals_are_exact() {
    require_localstack();
    let mode = Arc::new(AtomicU8::new(THROTTLE));
    let proxy = start_proxy(endpoint(), mode.clone()).await;
    let ns = namespace("outage");
    let stats = Stats::new();
    let bound = 4 * 1024 * 1024;
    let cfg = PublishConfig {
        max_attempts: 3,
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        max_pending_bytes: bound,
        ..config(format!("http://{proxy}"))
    };
    let sink = new_sink(cfg, &stats).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let run = tokio::spawn(sink.clone().run(rx, Duration::from_secs(60)));

    // Six periods while CloudWatch throttles, fails with 503, then closes connections.
    let faults = [THROTTLE, THROTTLE, UNAVAILABLE, UNAVAILABLE, CLOSE, CLOSE];
    let route = [("Route", "/outage")];
    for (i, fault) in faults.iter().enumerate() {
        mode.store(*fault, Ordering::SeqCst);
        let p = period(
            &ns,
            minute(10 - i as u64),
            vec![
                (
                    key("Requests", &route, Unit::Count),
                    AggregateValue::Counter(100.0 + i as f64),
                ),
                (
                    key("Latency", &route, Unit::Milliseconds),
                    histogram(160, 2),
                ),
            ],
        );
        tx.send(p).await.unwrap();
        // Let the publisher try (and give up on) this period before the next fault.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let failed_before = failed(&sink);
        while failed(&sink) == failed_before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sink.stats().queue_bytes() <= bound as u64);
        assert_eq!(sink.stats().published_samples(), 0);
    }
    let s = sink.stats();
    assert!(s.failed_requests(ErrorKind::Throttled) > 0);
    assert!(s.failed_requests(ErrorKind::Server) > 0);
    assert!(
        s.failed_requests(ErrorKind::Network) > 0,
        "closed connections: {}",
        s.failed_requests(ErrorKind::Other)
    );
    assert!(s.retries() > 0);
    eprintln!(
        "outage: {} throttled, {} 5xx, {} network, {} retries, queue {} bytes",
        s.failed_requests(ErrorKind::Throttled),
        s.failed_requests(ErrorKind::Server),
        s.failed_requests(ErrorKind::Network),
        s.retries(),
        s.queue_bytes()
    );

    // CloudWatch answers again.
    mode.store(FORWARD, Ordering::SeqCst);
    drop(tx);
    let report = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sink.stats().dropped_samples_total(), 0, "{report:?}");
    let expected_samples = (0..6).map(|i| 100 + i).sum::<u64>() + 6 * 320;
    assert_eq!(sink.stats().published_samples(), expected_samples);

    let (from, to) = (minute(10), minute(4));
    let r = statistics(&ns, "Requests", &route, from, to).await;
    assert_eq!(r.sum, (0..6).map(|i| 100.0 + f64::from(i)).sum::<f64>());
    let l = statistics(&ns, "Latency", &route, from, to).await;
    assert_eq!((l.sample_count, l.min, l.max), (6.0 * 320.0, 1.0, 160.0));
    assert_eq!(l.sum, 6.0 * 2.0 * (160.0 * 161.0 / 2.0));
}

fn failed(sink: &CloudWatchSink) -> u64 {
    [
        ErrorKind::Throttled,
        ErrorKind::Server,
        ErrorKind::Network,
        ErrorKind::Timeout,
        ErrorKind::Other,
    ]
    .into_iter()
    .map(|k| sink.stats().failed_requests(k))
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datum_cloudwatch_refuses_is_counted_and_does_not_sink_its_request() {
    require_localstack();
    let mode = Arc::new(AtomicU8::new(REJECT_POISON));
    let proxy = start_proxy(endpoint(), mode).await;
    let ns = namespace("poison");
    let stats = Stats::new();
    // Uncompressed bodies, so the proxy can see the poisoned name.
    let cfg = PublishConfig {
        compress_requests: false,
        ..config(format!("http://{proxy}"))
    };
    let sink = new_sink(cfg, &stats).await;
    let ts = minute(5);
    let mut metrics: Vec<(MetricKey, AggregateValue)> = (0..40)
        .map(|i| {
            let route = format!("/p{i:02}");
            (
                key("Requests", &[("Route", &route)], Unit::Count),
                AggregateValue::Counter(2.0),
            )
        })
        .collect();
    metrics.push((
        key("Poison", &[("Route", "/bad")], Unit::Count),
        AggregateValue::Counter(9.0),
    ));
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        sink.publish(period(&ns, ts, metrics)),
    )
    .await
    .unwrap();
    assert_eq!(r.published_samples, 80);
    assert_eq!(r.rejected_samples, 9);
    assert_eq!(sink.stats().dropped_samples(DropReason::Rejected), 9);
    assert_eq!(
        stats.counter_value(
            "tally_agent_dropped_samples_total",
            &[("reason", "cloudwatch_rejected")]
        ),
        9
    );
    assert_eq!(list_metrics(&ns).await.len(), 40);
    eprintln!(
        "poison: {} requests accepted, {} refused while bisecting",
        r.requests,
        sink.stats().failed_requests(ErrorKind::Invalid)
    );
}
