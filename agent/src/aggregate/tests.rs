use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use proptest::prelude::*;
use tally::wire::{
    encode_batch, Batch, BatchView, Limits, ProcessIdentity, Series, SeriesValue, Unit, HEADER_LEN,
};

use super::*;
use crate::config::{DerivedConfig, RollupConfig};
use crate::model::{AggregateValue, MetricKey, SparseHistogram};
use crate::stats::DROPPED_SAMPLES;

const T0: u64 = 1_700_000_080; // 40 s into a minute (1_700_000_040 is a minute boundary)

/// Merges an owned batch the way the agent does: encoded as the SDK sends it, then parsed
/// into a borrowed view.
trait MergeOwned {
    fn merge_owned(&mut self, b: Batch, now: SystemTime) -> Result<MergeReport, BatchReject>;
}

impl MergeOwned for Aggregator {
    fn merge_owned(&mut self, b: Batch, now: SystemTime) -> Result<MergeReport, BatchReject> {
        let mut frame = Vec::new();
        encode_batch(&b, &mut frame).expect("a test batch encodes");
        let view = BatchView::parse(&frame[HEADER_LEN..], &Limits::default())
            .expect("a test batch decodes");
        self.merge(&view, now)
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn settings() -> Settings {
    Settings {
        namespace: "Test".into(),
        service: String::new(),
        environment: String::new(),
        period_secs: 60,
        time_unit: TimeUnit::Milliseconds,
        max_series: 1000,
        grace: Duration::from_secs(2),
        rollups: vec![],
        derived: vec![DerivedConfig::error_rate()],
        extra_dimensions: vec![],
        revision: None,
    }
}

fn http(name: &str, route: &str, status: &str, value: SeriesValue) -> Series {
    Series {
        name: name.into(),
        unit: if matches!(value, SeriesValue::Histogram { .. }) {
            Unit::Nanoseconds
        } else {
            Unit::Count
        },
        labels: vec![
            ("Method".into(), "GET".into()),
            ("Route".into(), route.into()),
            ("StatusClass".into(), status.into()),
        ],
        value,
    }
}

fn batch(id: u64, seq: u64, end_secs: u64, series: Vec<Series>) -> Batch {
    Batch {
        process: ProcessIdentity {
            instance_id: id,
            pid: id as u32,
            service: "shop".into(),
            environment: "prod".into(),
            host: "h".into(),
        },
        sequence: seq,
        start_unix_ms: end_secs * 1000 - 1000,
        end_unix_ms: end_secs * 1000,
        drops: Default::default(),
        series,
    }
}

fn hist(values: &[u64]) -> SeriesValue {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for v in values {
        h.record(*v).unwrap();
    }
    SeriesValue::Histogram {
        scale: 1.0,
        histogram: h,
    }
}

fn find<'a>(p: &'a PeriodData, name: &str, dims: &[(&str, &str)]) -> Option<&'a AggregateValue> {
    let d = MetricKey::new(name, Unit::None, dims).dimensions;
    p.metrics
        .iter()
        .find(|(k, _)| &*k.name == name && k.dimensions == d)
        .map(|(_, v)| v)
}

const G: [(&str, &str); 2] = [("ServiceName", "shop"), ("Environment", "prod")];

fn with_g<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = G.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn counters_and_histograms_from_several_processes_merge_into_one_series() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    for id in 1..=3 {
        a.merge_owned(
            batch(
                id,
                1,
                T0,
                vec![
                    http("RequestCount", "/a", "2xx", SeriesValue::Counter(10)),
                    http(
                        "ResponseTime",
                        "/a",
                        "2xx",
                        hist(&[1_000_000, 2_000_000 * id]),
                    ),
                ],
            ),
            at(T0),
        )
        .unwrap();
    }
    let out = a.close_due(at(T0 + 60));
    assert_eq!(out.len(), 1);
    let p = &out[0].data;
    assert_eq!(out[0].samples, 3 * 12);
    assert_eq!(p.timestamp, at(T0 - 40));
    let rc = find(
        p,
        "RequestCount",
        &with_g(&[("Route", "/a"), ("Method", "GET"), ("StatusClass", "2xx")]),
    );
    assert!(
        matches!(rc, Some(AggregateValue::Counter(c)) if *c == 30.0),
        "{rc:?}"
    );
    let key = p
        .metrics
        .iter()
        .find(|(k, _)| &*k.name == "ResponseTime")
        .unwrap();
    assert_eq!(
        key.0.unit,
        Unit::Milliseconds,
        "ns are published in the time unit"
    );
    let AggregateValue::Distribution { scale, histogram } = &key.1 else {
        panic!("distribution expected")
    };
    assert_eq!(*scale, 1e6);
    assert_eq!(histogram.len(), 6);
    let dense = histogram.to_histogram().unwrap();
    assert_eq!(dense.count_at(1_000_000), 3);
    assert!(dense.equivalent(histogram.max(), 6_000_000));
}

#[test]
fn a_period_stays_open_for_its_grace_and_closes_after() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(1))],
        ),
        at(T0),
    )
    .unwrap();
    let end = T0 - 40 + 60;
    assert!(a.close_due(at(end + 1)).is_empty(), "inside grace");
    assert_eq!(a.next_close_at(), Some(at(end + 2)));
    assert_eq!(a.close_due(at(end + 2)).len(), 1);
    assert_eq!(a.active_series(), 0);
}

#[test]
fn a_taken_period_closes_outside_the_aggregator_while_it_goes_on_merging() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let requests = |n| vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(n))];
    a.merge_owned(batch(1, 1, T0, requests(5)), at(T0)).unwrap();
    let end = T0 - 40 + 60;
    let mut due = a.take_due(at(end + 2));
    assert_eq!(due.len(), 1);
    assert_eq!(a.active_series(), 0, "the taken period no longer counts");
    let closer = a.closer();
    // The next period's batch merges before the taken one is closed.
    a.merge_owned(batch(1, 2, end + 2, requests(7)), at(end + 2))
        .unwrap();
    let count = |p: &ClosedPeriod| {
        p.data
            .metrics
            .iter()
            .find(|(k, _)| &*k.name == "RequestCount")
            .map(|(_, v)| v.samples())
    };
    let first = closer.close(due.remove(0));
    assert_eq!((count(&first), first.samples), (Some(5), 5));
    let second = a.close_all();
    assert_eq!(second.len(), 1);
    assert_eq!((count(&second[0]), second[0].samples), (Some(7), 7));
    assert_eq!(
        stats
            .render_prometheus()
            .matches("tally_agent_periods_closed_total 2")
            .count(),
        1
    );
}

#[test]
fn a_batch_for_a_closed_period_lands_in_the_current_one_and_is_counted_late() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let now = T0 + 120;
    a.close_due(at(now));
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(4))],
        ),
        at(now),
    )
    .unwrap();
    assert_eq!(
        stats.counter_value("tally_agent_late_samples_total", &[]),
        4
    );
    let out = a.close_all();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data.timestamp, at(period::align(now, 60)));
}

#[test]
fn timestamps_outside_cloudwatchs_window_are_restamped_and_counted() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    a.merge_owned(
        batch(
            1,
            1,
            10,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(1))],
        ),
        at(T0),
    )
    .unwrap();
    a.merge_owned(
        batch(
            1,
            2,
            T0 + 86_400,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(1))],
        ),
        at(T0),
    )
    .unwrap();
    let r =
        |reason| stats.counter_value("tally_agent_restamped_batches_total", &[("reason", reason)]);
    assert_eq!(r("timestamp_too_old"), 1);
    assert_eq!(r("timestamp_in_future"), 1);
    let out = a.close_all();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].samples, 2);
}

#[test]
fn rollups_publish_each_series_once_more_without_the_dropped_dimensions() {
    let stats = Stats::new();
    let mut s = settings();
    s.rollups = vec![
        RollupConfig {
            drop: vec!["StatusClass".into()],
            metrics: vec![],
        },
        RollupConfig {
            drop: vec!["Route".into(), "Method".into(), "StatusClass".into()],
            metrics: vec![],
        },
        // Overlaps the previous one on a metric without Method: must not count twice.
        RollupConfig {
            drop: vec!["Route".into(), "StatusClass".into()],
            metrics: vec!["Orders".into()],
        },
    ];
    let mut a = Aggregator::new(s, &stats, at(T0));
    let orders = |route: &str, n| Series {
        name: "Orders".into(),
        unit: Unit::Count,
        labels: vec![("Route".into(), route.into())],
        value: SeriesValue::Counter(n),
    };
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![
                http("RequestCount", "/a", "2xx", SeriesValue::Counter(90)),
                http("RequestCount", "/a", "5xx", SeriesValue::Counter(10)),
                http("RequestCount", "/b", "2xx", SeriesValue::Counter(100)),
                http("ErrorCount", "/a", "5xx", SeriesValue::Counter(10)),
                orders("/a", 3),
                orders("/b", 4),
            ],
        ),
        at(T0),
    )
    .unwrap();
    let p = a.close_all().remove(0).data;
    let c = |name, d: &[(&str, &str)]| match find(&p, name, &with_g(d)) {
        Some(AggregateValue::Counter(c)) => *c,
        Some(AggregateValue::Derived(x)) => *x,
        other => panic!("{name} {d:?}: {other:?}"),
    };
    assert_eq!(
        c("RequestCount", &[("Route", "/a"), ("Method", "GET")]),
        100.0
    );
    assert_eq!(c("RequestCount", &[]), 200.0);
    assert_eq!(
        c("Orders", &[]),
        7.0,
        "two rollups reaching one key count once"
    );
    // ErrorRate on every dimension set without StatusClass, 0 where no error was recorded.
    assert_eq!(c("ErrorRate", &[("Route", "/a"), ("Method", "GET")]), 10.0);
    assert_eq!(c("ErrorRate", &[("Route", "/b"), ("Method", "GET")]), 0.0);
    assert_eq!(c("ErrorRate", &[]), 5.0);
    assert!(
        !p.metrics.iter().any(|(k, _)| &*k.name == "ErrorRate"
            && k.dimensions.iter().any(|(d, _)| &**d == "StatusClass")),
        "no error rate per status class"
    );
}

#[test]
fn no_error_rate_is_published_where_there_were_no_requests() {
    let stats = Stats::new();
    let mut s = settings();
    s.derived[0].exclude_dimensions.clear();
    let mut a = Aggregator::new(s, &stats, at(T0));
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![
                http("RequestCount", "/a", "2xx", SeriesValue::Counter(0)),
                http("ErrorCount", "/b", "5xx", SeriesValue::Counter(1)),
            ],
        ),
        at(T0),
    )
    .unwrap();
    let p = a.close_all().remove(0).data;
    assert!(!p.metrics.iter().any(|(k, _)| &*k.name == "ErrorRate"));
}

#[test]
fn series_beyond_the_limit_are_dropped_and_counted() {
    let stats = Stats::new();
    let mut s = settings();
    s.max_series = 2;
    let mut a = Aggregator::new(s, &stats, at(T0));
    let r = a
        .merge_owned(
            batch(
                1,
                1,
                T0,
                (0..5)
                    .map(|i| {
                        http(
                            "RequestCount",
                            &format!("/r{i}"),
                            "2xx",
                            SeriesValue::Counter(3),
                        )
                    })
                    .collect(),
            ),
            at(T0),
        )
        .unwrap();
    assert_eq!(
        r,
        MergeReport {
            merged: 6,
            dropped: 9,
            period_start: r.period_start,
        }
    );
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "max_series")]),
        9
    );
    // Known series still merge at the limit.
    let r = a
        .merge_owned(
            batch(
                1,
                2,
                T0,
                vec![http("RequestCount", "/r0", "2xx", SeriesValue::Counter(1))],
            ),
            at(T0),
        )
        .unwrap();
    assert_eq!(r.merged, 1);
}

#[test]
fn names_breaking_cloudwatch_rules_are_refused_with_their_reason() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let bad = |labels: Vec<(&str, &str)>| Series {
        name: "Orders".into(),
        unit: Unit::Count,
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        value: SeriesValue::Counter(1),
    };
    let r = a
        .merge_owned(
            batch(
                1,
                1,
                T0,
                vec![
                    bad(vec![("City", "Zürich")]),
                    bad(vec![("City", "")]),
                    bad(vec![("ServiceName", "x")]),
                    bad(vec![("City", "Bern")]),
                ],
            ),
            at(T0),
        )
        .unwrap();
    assert_eq!(
        r,
        MergeReport {
            merged: 1,
            dropped: 3,
            period_start: r.period_start,
        }
    );
    for reason in ["non_ascii_dimension", "empty_name", "reserved_dimension"] {
        assert_eq!(
            stats.counter_value(DROPPED_SAMPLES, &[("reason", reason)]),
            1,
            "{reason}"
        );
    }
}

#[test]
fn a_batch_whose_identity_cannot_be_a_dimension_is_refused_whole() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let mut b = batch(
        1,
        1,
        T0,
        vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(5))],
    );
    b.process.service = "boutique-é".into();
    assert!(matches!(
        a.merge_owned(b, at(T0)),
        Err(BatchReject::Identity { .. })
    ));
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "invalid_identity")]),
        5
    );
}

#[test]
fn configured_service_and_environment_override_the_sdks() {
    let stats = Stats::new();
    let mut s = settings();
    s.service = "web-app".into();
    let mut a = Aggregator::new(s, &stats, at(T0));
    let mut b = batch(
        1,
        1,
        T0,
        vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(1))],
    );
    b.process.environment.clear();
    a.merge_owned(b, at(T0)).unwrap();
    let p = a.close_all().remove(0).data;
    let dims = &p.metrics[0].0.dimensions;
    assert!(dims.contains(&("ServiceName".into(), "web-app".into())));
    assert!(dims.contains(&("Environment".into(), "unknown".into())));
}

#[test]
fn nan_gauges_and_conflicting_kinds_are_dropped_and_counted() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let g = |last: f64| Series {
        name: "Queue".into(),
        unit: Unit::Count,
        labels: vec![],
        value: SeriesValue::Gauge {
            last,
            min: 0.0,
            max: 1.0,
            updates: 2,
        },
    };
    let c = Series {
        name: "Queue".into(),
        unit: Unit::Count,
        labels: vec![],
        value: SeriesValue::Counter(5),
    };
    a.merge_owned(batch(1, 1, T0, vec![g(f64::NAN), g(1.0), c]), at(T0))
        .unwrap();
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "non_finite_value")]),
        2
    );
    // The counter arrives under another descriptor (its kind differs): the period keeps the
    // gauge, which came first, and counts the counter's 5 samples when it closes.
    let p = a.close_all().remove(0).data;
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "kind_mismatch")]),
        5
    );
    assert!(matches!(
        p.metrics[0].1,
        AggregateValue::Gauge { updates: 2, .. }
    ));
}

#[test]
fn samples_dropped_when_a_period_closes_are_not_counted_as_published() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let c = |value| Series {
        name: "Queue".into(),
        unit: Unit::Count,
        labels: vec![],
        value,
    };
    let gauge = SeriesValue::Gauge {
        last: 1.0,
        min: 0.0,
        max: 1.0,
        updates: 2,
    };
    a.merge_owned(batch(1, 1, T0, vec![c(gauge)]), at(T0))
        .unwrap();
    a.merge_owned(batch(2, 1, T0, vec![c(SeriesValue::Counter(5))]), at(T0))
        .unwrap();
    let closed = a.close_all().remove(0);
    assert_eq!(
        closed.samples, 2,
        "the counter's 5 samples were not published"
    );
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "kind_mismatch")]),
        5
    );
}

#[test]
fn a_series_whose_label_is_not_utf8_is_refused_and_the_rest_of_its_batch_merges() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let b = batch(
        1,
        1,
        T0,
        vec![
            http("RequestCount", "/ok", "2xx", SeriesValue::Counter(3)),
            http("RequestCount", "/zzzz", "2xx", SeriesValue::Counter(4)),
        ],
    );
    let mut frame = Vec::new();
    encode_batch(&b, &mut frame).unwrap();
    let at_route = frame.windows(5).position(|w| w == b"/zzzz").unwrap();
    frame[at_route + 1..at_route + 5].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
    let view = BatchView::parse(&frame[HEADER_LEN..], &Limits::default()).unwrap();
    let report = a.merge(&view, at(T0)).unwrap();
    assert_eq!((report.merged, report.dropped), (3, 4));
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "invalid_utf8")]),
        4
    );
    let p = a.close_all().remove(0).data;
    assert_eq!(p.metrics.len(), 1);
}

#[test]
fn high_resolution_periods_carry_storage_resolution_one() {
    let stats = Stats::new();
    let mut s = settings();
    s.period_secs = 10;
    let mut a = Aggregator::new(s, &stats, at(T0 + 5));
    a.merge_owned(
        batch(
            1,
            1,
            T0 + 5,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(1))],
        ),
        at(T0 + 5),
    )
    .unwrap();
    let p = a.close_all().remove(0).data;
    assert_eq!(p.storage_resolution, 1);
    assert_eq!(p.period_secs, 10);
    assert_eq!(p.timestamp, at(T0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Merging through the aggregator in any split across processes and batches gives the same
    /// histogram as recording every value into one.
    #[test]
    fn merged_histograms_equal_one_histogram_of_all_values(
        values in prop::collection::vec(1u64..10_000_000_000, 1..200),
        splits in 1usize..6,
    ) {
        let stats = Stats::new();
        let mut a = Aggregator::new(settings(), &stats, at(T0));
        let mut reference = Histogram::<u64>::new(3).unwrap();
        for v in &values {
            reference.record(*v).unwrap();
        }
        for (i, chunk) in values.chunks(values.len().div_ceil(splits)).enumerate() {
            a.merge_owned(
                batch(i as u64 + 1, 1, T0, vec![http("ResponseTime", "/a", "2xx", hist(chunk))]),
                at(T0),
            )
            .unwrap();
        }
        let p = a.close_all().remove(0).data;
        let AggregateValue::Distribution { histogram, .. } = &p.metrics[0].1 else {
            panic!("distribution expected")
        };
        prop_assert_eq!(histogram.len(), reference.len());
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            prop_assert_eq!(histogram.value_at_quantile(q), reference.value_at_quantile(q));
        }
    }
}

#[test]
fn ecs_dimensions_are_added_to_every_metric_and_a_label_that_collides_is_refused() {
    let stats = Stats::new();
    let mut s = settings();
    s.extra_dimensions = vec![("ClusterName".into(), "prod-cluster".into())];
    let mut a = Aggregator::new(s, &stats, at(T0));
    let mut clash = http("RequestCount", "/b", "2xx", SeriesValue::Counter(4));
    clash.labels.push(("ClusterName".into(), "spoofed".into()));
    clash.labels.sort();
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![
                http("RequestCount", "/a", "2xx", SeriesValue::Counter(7)),
                clash,
            ],
        ),
        at(T0),
    )
    .unwrap();
    let out = a.close_due(at(T0 + 60));
    let p = &out[0].data;
    let rc = find(
        p,
        "RequestCount",
        &with_g(&[
            ("Route", "/a"),
            ("Method", "GET"),
            ("StatusClass", "2xx"),
            ("ClusterName", "prod-cluster"),
        ]),
    );
    assert!(
        matches!(rc, Some(AggregateValue::Counter(c)) if *c == 7.0),
        "{rc:?}"
    );
    assert!(
        p.metrics.iter().all(|(k, _)| k
            .dimensions
            .contains(&("ClusterName".into(), "prod-cluster".into()))),
        "every metric carries the ECS dimension"
    );
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "reserved_dimension")]),
        4,
        "the colliding series is refused and counted"
    );
}

#[test]
fn the_revision_rollup_adds_one_service_level_series_per_metric_with_the_revision_only() {
    let stats = Stats::new();
    let mut s = settings();
    s.extra_dimensions = vec![("ClusterName".into(), "prod-cluster".into())];
    s.rollups = vec![RollupConfig {
        drop: vec!["Route".into(), "Method".into(), "StatusClass".into()],
        metrics: vec![],
    }];
    s.revision = Some(revision::RevisionRollup {
        dimension: "TaskDefinitionRevision".into(),
        value: "42".into(),
        keep: vec![],
        metrics: vec![
            "RequestCount".into(),
            "ErrorCount".into(),
            "ResponseTime".into(),
        ],
    });
    let mut a = Aggregator::new(s, &stats, at(T0));
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![
                http("RequestCount", "/a", "2xx", SeriesValue::Counter(90)),
                http("RequestCount", "/a", "5xx", SeriesValue::Counter(10)),
                http("RequestCount", "/b", "2xx", SeriesValue::Counter(100)),
                http("ErrorCount", "/a", "5xx", SeriesValue::Counter(10)),
                http("ResponseTime", "/a", "2xx", hist(&[1_000_000, 2_000_000])),
                http("ResponseTime", "/b", "2xx", hist(&[3_000_000])),
                http("ClientErrorCount", "/b", "4xx", SeriesValue::Counter(5)),
            ],
        ),
        at(T0),
    )
    .unwrap();
    let closed = a.closer().close(a.take_all().remove(0));
    let p = &closed.data;
    let rev = [("TaskDefinitionRevision", "42")];
    let per_rev: Vec<(&str, &AggregateValue)> = p
        .metrics
        .iter()
        .filter(|(k, _)| {
            k.dimensions
                .iter()
                .any(|(d, _)| &**d == "TaskDefinitionRevision")
        })
        .map(|(k, v)| {
            assert_eq!(
                k.dimensions.len(),
                3,
                "ServiceName, Environment and the revision only, no ECS or label dimension: {k:?}"
            );
            (&*k.name, v)
        })
        .collect();
    let names: Vec<&str> = per_rev.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["ErrorCount", "ErrorRate", "RequestCount", "ResponseTime"],
        "the configured metrics and the derived ErrorRate; ClientErrorCount is not rolled up"
    );
    let value = |name| find(p, name, &with_g(&rev));
    assert!(matches!(value("RequestCount"), Some(AggregateValue::Counter(c)) if *c == 200.0));
    assert!(matches!(value("ErrorCount"), Some(AggregateValue::Counter(c)) if *c == 10.0));
    assert!(matches!(value("ErrorRate"), Some(AggregateValue::Derived(r)) if *r == 5.0));
    match value("ResponseTime") {
        Some(AggregateValue::Distribution { histogram, .. }) => {
            assert_eq!(histogram.len(), 3, "every route's samples, once")
        }
        other => panic!("{other:?}"),
    }
    // The service-level rollup (with the ECS dimension) is unchanged beside it.
    let service = find(
        p,
        "RequestCount",
        &with_g(&[("ClusterName", "prod-cluster")]),
    );
    assert!(matches!(service, Some(AggregateValue::Counter(c)) if *c == 200.0));
    assert_eq!(
        stats.gauge_value(revision::LAST_PERIOD_METRICS, &[]),
        4,
        "what /cost reports"
    );
}

/// A histogram with any layout HdrHistogram accepts, as different SDK versions or settings
/// might send it.
fn arb_layout_hist() -> impl Strategy<Value = Histogram<u64>> {
    (
        prop_oneof![Just(1u64), 1u64..5000],
        0u8..=3,
        prop::collection::vec((0u32..60, any::<u64>(), 1u64..1000), 0..40),
    )
        .prop_map(|(low, sigfig, values)| {
            let mut h = Histogram::<u64>::new_with_bounds(low, low * 4, sigfig).unwrap();
            h.auto(true);
            for (shift, v, n) in values {
                let _ = h.record_n((v >> shift).max(low), n);
            }
            h
        })
}

fn views_of(hists: &[Histogram<u64>]) -> Vec<u8> {
    let series = hists
        .iter()
        .enumerate()
        .map(|(i, h)| Series {
            name: format!("h{i}"),
            unit: Unit::Count,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram: h.clone(),
            },
        })
        .collect();
    let mut frame = Vec::new();
    encode_batch(&batch(1, 1, T0, series), &mut frame).unwrap();
    frame.split_off(HEADER_LEN)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Starting a series from a view and merging further views into it gives exactly what the
    /// agent computed before views: HdrHistogram's deserializer, then `Histogram::add`.
    /// (`sparse::tests` compares the same path with the dense view merge it replaced.)
    #[test]
    fn merging_histogram_views_equals_adding_the_deserialized_histograms(
        hists in prop::collection::vec(arb_layout_hist(), 1..5)
    ) {
        // `Histogram::add` keeps the first histogram's layout; the agent keeps the coarsest
        // (`sparse::tests::views_of_any_layouts_merge_at_the_coarsest_in_any_order`): the two
        // agree where no later sender is coarser than the first.
        let magnitude = |h: &Histogram<u64>| 63 - h.low().leading_zeros();
        prop_assume!(hists[1..].iter().all(|h| {
            magnitude(h) <= magnitude(&hists[0]) && h.sigfig() >= hists[0].sigfig()
        }));
        let payload = views_of(&hists);
        let view = BatchView::parse(&payload, &Limits::default()).unwrap();
        let owned = view.to_batch().unwrap();
        let mut views = view.series().map(|s| match s.value {
            ValueView::Histogram(h) => h,
            _ => unreachable!("only histograms were encoded"),
        });
        let mut expected = match &owned.series[0].value {
            SeriesValue::Histogram { histogram, .. } => histogram.clone(),
            _ => unreachable!(),
        };
        let mut scratch = Vec::new();
        let mut sparse = SparseHistogram::from_view(&views.next().unwrap(), &mut scratch).unwrap();
        for (v, s) in views.zip(&owned.series[1..]) {
            let SeriesValue::Histogram { histogram, .. } = &s.value else { unreachable!() };
            expected.auto(true);
            expected.add(histogram).unwrap();
            sparse.add_view(&v, &mut scratch).unwrap();
        }
        prop_assert_eq!(sparse.len(), expected.len());
        let merged = sparse.to_histogram().unwrap();
        prop_assert_eq!(merged.len(), expected.len());
        prop_assert_eq!(merged.min_nz(), expected.min_nz());
        if expected.max() >= u64::MAX - 1 {
            // The topmost bucket's maximum saturates to u64::MAX - 1 or u64::MAX depending on
            // the merge path (see `sparse::tests::the_topmost_buckets_maximum_is_the_dense_view_merges`).
            prop_assert!(merged.max() >= u64::MAX - 1);
        } else {
            prop_assert_eq!(merged.max(), expected.max());
        }
        prop_assert_eq!(merged.low(), expected.low());
        prop_assert_eq!(merged.sigfig(), expected.sigfig());
        let buckets = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
            h.iter_recorded().map(|b| (b.value_iterated_to(), b.count_at_value())).collect()
        };
        prop_assert_eq!(buckets(&merged), buckets(&expected));
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            prop_assert_eq!(merged.value_at_quantile(q), expected.value_at_quantile(q));
        }
        // Only the used range is allocated, never more than the declared one.
        prop_assert!(merged.distinct_values() <= expected.distinct_values());
    }
}

#[test]
fn a_histogram_recorded_at_another_scale_is_dropped_and_counted() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let latency = |scale| {
        let mut h = Histogram::<u64>::new(2).unwrap();
        h.record_n(5, 3).unwrap();
        Series {
            name: "Latency".into(),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale,
                histogram: h,
            },
        }
    };
    a.merge_owned(batch(1, 1, T0, vec![latency(1.0)]), at(T0))
        .unwrap();
    let r = a
        .merge_owned(batch(2, 1, T0, vec![latency(1000.0)]), at(T0))
        .unwrap();
    assert_eq!((r.merged, r.dropped), (0, 3));
    assert_eq!(
        stats.counter_value(DROPPED_SAMPLES, &[("reason", "scale_mismatch")]),
        3
    );
    let closed = a.close_all().remove(0);
    assert_eq!(closed.samples, 3);
}

#[test]
fn histograms_of_different_precision_from_two_processes_merge_into_one_exact_count() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let latency = |sigfig, value, n| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 40, sigfig).unwrap();
        h.record_n(value, n).unwrap();
        Series {
            name: "Latency".into(),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram: h,
            },
        }
    };
    a.merge_owned(batch(1, 1, T0, vec![latency(3, 5, 1)]), at(T0))
        .unwrap();
    a.merge_owned(batch(2, 1, T0, vec![latency(2, 1 << 35, 3)]), at(T0))
        .unwrap();
    let p = a.close_all().remove(0).data;
    let AggregateValue::Distribution { histogram, .. } = &p.metrics[0].1 else {
        panic!("{:?}", p.metrics[0].1)
    };
    assert_eq!(histogram.len(), 4);
    // The coarser layout of the two (2 digits) holds both senders, so the second sender's
    // samples are not pulled to the lower end of its wider bucket; both values keep their
    // own bucket.
    assert_eq!(histogram.significant_digits(), 2);
    assert_eq!(histogram.buckets().len(), 2);
}

#[test]
fn the_same_series_from_two_environments_stays_two_series() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    for (id, env, n) in [(1, "prod", 2), (2, "staging", 5), (3, "prod", 1)] {
        let mut b = batch(
            id,
            1,
            T0,
            vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(n))],
        );
        b.process.environment = env.into();
        a.merge_owned(b, at(T0)).unwrap();
    }
    let p = a.close_all().remove(0).data;
    let count = |env: &str| {
        p.metrics
            .iter()
            .find(|(k, _)| k.dimensions.contains(&("Environment".into(), env.into())))
            .map(|(_, v)| v.clone())
    };
    assert!(matches!(count("prod"), Some(AggregateValue::Counter(c)) if c == 3.0));
    assert!(matches!(count("staging"), Some(AggregateValue::Counter(c)) if c == 5.0));
    assert_eq!(p.metrics.len(), 2);
}

#[test]
fn a_closed_period_stores_each_name_and_dimension_string_once() {
    let stats = Stats::new();
    let mut s = settings();
    s.extra_dimensions = vec![("ClusterName".into(), "prod-cluster".into())];
    s.rollups = vec![RollupConfig {
        drop: vec!["StatusClass".into()],
        metrics: vec![],
    }];
    let mut a = Aggregator::new(s, &stats, at(T0));
    // Two processes, two routes, two status classes: 8 series under 4 keys per metric.
    for id in 1..=2 {
        let mut series = Vec::new();
        for route in ["/a", "/b"] {
            for status in ["2xx", "5xx"] {
                series.push(http(
                    "RequestCount",
                    route,
                    status,
                    SeriesValue::Counter(id),
                ));
                series.push(http("ErrorCount", route, status, SeriesValue::Counter(1)));
            }
        }
        a.merge_owned(batch(id, 1, T0, series), at(T0)).unwrap();
    }
    let p = a.close_due(at(T0 + 60)).remove(0).data;
    // 8 base series, 4 rolled up, 2 error rates (on the rolled-up keys only).
    assert_eq!(p.metrics.len(), 14, "{:#?}", p.metrics);
    let rc = find(
        &p,
        "RequestCount",
        &with_g(&[
            ("ClusterName", "prod-cluster"),
            ("Method", "GET"),
            ("Route", "/b"),
        ]),
    );
    assert!(
        matches!(rc, Some(AggregateValue::Counter(c)) if *c == 6.0),
        "{rc:?}"
    );
    let er = find(
        &p,
        "ErrorRate",
        &with_g(&[
            ("ClusterName", "prod-cluster"),
            ("Method", "GET"),
            ("Route", "/a"),
        ]),
    );
    assert!(
        matches!(er, Some(AggregateValue::Derived(r)) if *r == 100.0 * 4.0 / 6.0),
        "{er:?}"
    );
    // Every string with the same text is one allocation, across metrics, rollups and
    // derived metrics.
    let mut seen: std::collections::HashMap<&str, *const u8> = Default::default();
    let mut strings = 0;
    for (k, _) in &p.metrics {
        let names = std::iter::once(&k.name);
        for t in names.chain(k.dimensions.iter().flat_map(|(n, v)| [n, v])) {
            strings += 1;
            let at = seen.entry(&**t).or_insert(t.as_ptr());
            assert_eq!(*at, t.as_ptr(), "{t:?} is stored twice");
        }
    }
    assert!(strings > 80, "{strings} strings checked");
    assert_eq!(seen.len(), 17, "{:?}", seen.keys());
    // And every dimension list with the same content (RequestCount, ErrorCount and ErrorRate
    // of one route) is one allocation.
    let mut lists: std::collections::HashMap<&[(Text, Text)], *const (Text, Text)> =
        Default::default();
    for (k, _) in &p.metrics {
        let at = lists.entry(&k.dimensions).or_insert(k.dimensions.as_ptr());
        assert_eq!(
            *at,
            k.dimensions.as_ptr(),
            "{:?} is stored twice",
            k.dimensions
        );
    }
    // Two routes x two status classes, and the two routes rolled up.
    assert_eq!(lists.len(), 4 + 2, "{:?}", lists.keys());
}

/// One series of the pool the slot-cache property draws from: counters and histograms on
/// four routes, and one series CloudWatch's rules refuse (a reserved label).
fn pool_series(i: usize, delta: u64) -> Series {
    match i {
        0..=3 => http(
            "RequestCount",
            &format!("/r{i}"),
            "2xx",
            SeriesValue::Counter(delta),
        ),
        4..=7 => http(
            "ResponseTime",
            &format!("/r{}", i - 4),
            "2xx",
            hist(&[delta * 1000, delta * 7919]),
        ),
        _ => Series {
            name: "Refused".into(),
            unit: Unit::Count,
            labels: vec![("ServiceName".into(), "x".into())],
            value: SeriesValue::Counter(delta),
        },
    }
}

/// One batch of the slot-cache property: the sending process, whether it sends as another
/// service, and the pool series in the order sent with their deltas.
type SenderBatch = (u64, bool, Vec<(usize, u64)>);

fn arb_sender_batches() -> impl Strategy<Value = Vec<SenderBatch>> {
    let one = (
        1u64..=3,
        prop::bool::weighted(0.15),
        prop::collection::vec((0usize..9, 1u64..50), 0..12),
    );
    prop::collection::vec(one, 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// The per-sender slot cache only ever replaces a lookup by an equal-bytes check: batches
    /// whose series change order, appear, disappear, repeat, are refused, come from several
    /// processes sharing series, or switch identity, aggregate exactly as the same batches do
    /// when every one comes from a new process (so every lookup goes through the table).
    #[test]
    fn the_slot_cache_merges_exactly_what_table_lookups_merge(batches in arb_sender_batches()) {
        let now = at(T0);
        let mut cached = Aggregator::new(settings(), &Stats::new(), now);
        let mut looked_up = Aggregator::new(settings(), &Stats::new(), now);
        for (n, (process, other_service, series)) in batches.into_iter().enumerate() {
            let make = |id: u64| {
                let mut b = batch(
                    id,
                    n as u64 + 1,
                    T0,
                    series.iter().map(|&(i, d)| pool_series(i, d)).collect(),
                );
                if other_service {
                    b.process.service = "cart".into();
                }
                b
            };
            let a = cached.merge_owned(make(process), now);
            let b = looked_up.merge_owned(make(1000 + n as u64), now);
            prop_assert_eq!(a, b);
        }
        let (a, b) = (cached.close_all(), looked_up.close_all());
        prop_assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            prop_assert_eq!(a.samples, b.samples);
            prop_assert_eq!(format!("{:?}", a.data.metrics), format!("{:?}", b.data.metrics));
        }
    }
}

#[test]
fn a_senders_series_are_followed_batch_after_batch_without_table_lookups() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let followed = || stats.counter_value("tally_agent_followed_series_total", &[]);
    let routes = |range: std::ops::Range<usize>, skip: &[usize]| -> Vec<Series> {
        range
            .filter(|i| !skip.contains(i))
            .map(|i| {
                http(
                    "RequestCount",
                    &format!("/r{i}"),
                    "2xx",
                    SeriesValue::Counter(1),
                )
            })
            .collect()
    };
    let mut seq = 0;
    let mut send = |a: &mut Aggregator, id: u64, series: Vec<Series>| {
        seq += 1;
        a.merge_owned(batch(id, seq, T0, series), at(T0)).unwrap();
    };
    // A first batch is looked up; the same series again are followed, every one.
    send(&mut a, 1, routes(0..40, &[]));
    assert_eq!(followed(), 0);
    send(&mut a, 1, routes(0..40, &[]));
    assert_eq!(followed(), 40);
    // Five idle series in a row are skipped over: the other 35 are followed.
    send(&mut a, 1, routes(0..40, &[10, 11, 12, 13, 14]));
    assert_eq!(followed(), 40 + 35);
    // A flush split in two: both batches are followed once seen. (The layout follows the
    // last batch, so the five series back from idle are looked up once.)
    for _ in 0..3 {
        send(&mut a, 1, routes(0..40, &[]));
        send(&mut a, 1, routes(40..70, &[]));
    }
    let total = 40 + 35 + 35 + 2 * (40 + 30);
    assert_eq!(followed(), total);
    // Another sender of the same series has no layout of its own yet.
    send(&mut a, 2, routes(0..40, &[]));
    assert_eq!(followed(), total);
}

#[test]
fn events_with_and_without_values_from_several_processes_merge_and_every_occurrence_is_accounted() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let event = |name: &str, count: u64, values: &[u64]| Series {
        name: name.into(),
        unit: Unit::None,
        labels: vec![],
        value: SeriesValue::Event {
            count,
            values: (!values.is_empty()).then(|| {
                let mut h = Histogram::<u64>::new(3).unwrap();
                for v in values {
                    h.record(*v).unwrap();
                }
                (1000.0, h)
            }),
        },
    };
    // `checkout`: one process only emits (5 occurrences), another emits 3 values; `refund`:
    // one batch with 6 occurrences, 2 of them with a value; `signup`: occurrences only.
    a.merge_owned(
        batch(
            1,
            1,
            T0,
            vec![event("checkout", 5, &[]), event("signup", 4, &[])],
        ),
        at(T0),
    )
    .unwrap();
    a.merge_owned(
        batch(
            2,
            1,
            T0,
            vec![
                event("checkout", 3, &[49_990, 10_000, 10_000]),
                event("refund", 6, &[5_000, 7_000]),
                event("signup", 2, &[]),
            ],
        ),
        at(T0),
    )
    .unwrap();
    let out = a.close_due(at(T0 + 60));
    let p = &out[0].data;
    let samples = |name: &str| find(p, name, &G).map(AggregateValue::samples);
    assert!(matches!(
        find(p, "checkout", &G),
        Some(AggregateValue::Distribution { .. })
    ));
    assert_eq!(samples("checkout"), Some(3));
    assert_eq!(samples("refund"), Some(2));
    assert!(matches!(
        find(p, "signup", &G),
        Some(AggregateValue::Counter(n)) if *n == 6.0
    ));
    // 20 occurrences merged: 11 published (3 + 2 values, 6 counted), 9 without a value next
    // to values, counted as dropped with their reason.
    assert_eq!(out[0].samples, 11);
    let text = stats.render_prometheus();
    assert!(text.contains("reason=\"event_without_value\"} 9"), "{text}");
    assert!(text.contains("reason=\"kind_mismatch\"} 0"), "{text}");
}

#[test]
fn a_wall_clock_stepped_back_an_hour_does_not_hold_the_next_hour_of_data_back() {
    let stats = Stats::new();
    let mut a = Aggregator::new(settings(), &stats, at(T0));
    let requests = |n| vec![http("RequestCount", "/a", "2xx", SeriesValue::Counter(n))];
    a.merge_owned(batch(1, 1, T0 + 3_600, requests(5)), at(T0 + 3_600))
        .unwrap();
    assert_eq!(a.close_due(at(T0 + 3_700)).len(), 1);
    // The clock is set back an hour (NTP after a bad start, a VM restored from a snapshot).
    a.merge_owned(batch(1, 2, T0 + 60, requests(7)), at(T0 + 60))
        .unwrap();
    let out = a.close_due(at(T0 + 130));
    assert_eq!(
        out.len(),
        1,
        "the batch goes out a period later, not an hour later"
    );
    assert_eq!(out[0].samples, 7);
    // Periods follow the clock again.
    a.merge_owned(batch(1, 3, T0 + 140, requests(9)), at(T0 + 140))
        .unwrap();
    let out = a.close_due(at(T0 + 250));
    assert_eq!(out.iter().map(|p| p.samples).sum::<u64>(), 9);
}

#[test]
fn a_series_refused_by_a_naming_rule_counts_under_the_rules_own_label_and_every_reason_shows_from_the_start(
) {
    use crate::cloudwatch::rules::RuleError;
    use crate::stats::DropReason;
    let rule_errors = [
        RuleError::Empty { what: "name" },
        RuleError::TooLong {
            what: "name",
            len: 256,
            max: 255,
        },
        RuleError::NonAscii {
            what: "value",
            value: String::new(),
        },
        RuleError::Control {
            what: "value",
            value: String::new(),
        },
        RuleError::LeadingColon {
            what: "name",
            value: String::new(),
        },
        RuleError::ReservedNamespace(String::new()),
        RuleError::ReservedDimension(String::new()),
        RuleError::TooManyDimensions(31),
    ];
    for e in &rule_errors {
        assert_eq!(rule_drop(e).as_str(), e.reason(), "{e:?}");
    }
    let stats = Stats::new();
    let _aggregator = Aggregator::new(
        Settings::from_config(&crate::config::Config::default()),
        &stats,
        SystemTime::now(),
    );
    let metrics = stats.render_prometheus();
    for reason in DropReason::ALL {
        let reason = reason.as_str();
        assert!(
            metrics.contains(&format!("{DROPPED_SAMPLES}{{reason=\"{reason}\"}} 0")),
            "{reason} missing from /metrics:\n{metrics}"
        );
    }
}
