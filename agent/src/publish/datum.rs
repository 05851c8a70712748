//! From a closed period's aggregates to CloudWatch datums, checking CloudWatch's rules again.
//!
//! | aggregate | datum(s) |
//! |---|---|
//! | `Distribution` | `Values`/`Counts`, one datum per 150 distinct buckets (see [`super::split`]) |
//! | `Counter` | `Value` = the period's sum |
//! | `Gauge` | `Value` = the value when it did not move (min = max); otherwise a `StatisticSet` of the three observed points {min, last, max}: Minimum and Maximum exact, Average their mean. The period model keeps no sum of gauge updates, so an exact Average is not possible. |
//! | `Derived` | `Value` |
//!
//! Every datum carries the period's timestamp and StorageResolution and the key's unit
//! (nanoseconds, which CloudWatch has no unit for, are converted to microseconds). Names,
//! dimensions and values that CloudWatch would refuse are dropped here, one datum at a time,
//! logged and counted by [`DropReason`], so one bad metric never costs a whole request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
use tally::wire::Unit;

use super::split::split_histogram;
use super::stats::DropReason;
use crate::cloudwatch::{ACCEPTED_PAST, MAX_DIMENSIONS, MAX_FUTURE};
use crate::model::SparseHistogram;
use crate::model::{AggregateValue, Dimensions, MetricKey, PeriodData, Text};

/// How far back CloudWatch accepts timestamps ([`ACCEPTED_PAST`]), minus ten minutes so that a
/// datum accepted here is still inside the window when the request lands.
pub const MAX_AGE: Duration = ACCEPTED_PAST.saturating_sub(Duration::from_secs(600));
/// CloudWatch's value range: magnitudes up to 2^360 and, other than zero, from 2^-360.
const MAX_MAGNITUDE: f64 = 2.348_542_582_773_833_2e108; // 2^360
const MIN_MAGNITUDE: f64 = 4.258_959_674_956_994e-109; // 2^-360

/// What every datum of one closed period shares: one allocation per period, not per datum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Timestamp (the period's start).
    pub timestamp: SystemTime,
    /// 1 (high resolution) or 60.
    pub storage_resolution: i32,
}

/// `StatisticValues`: pre-aggregated statistics of one datum.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// Number of samples.
    pub sample_count: f64,
    /// Their sum.
    pub sum: f64,
    /// Smallest.
    pub minimum: f64,
    /// Largest.
    pub maximum: f64,
}

/// `Values`/`Counts`: distinct values and how many samples each stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueCounts {
    /// Values (at most 150).
    pub values: Vec<f64>,
    /// Counts, same length.
    pub counts: Vec<f64>,
}

/// The measurement part of a datum. The rarer, larger shapes are boxed so that a queued
/// counter datum stays small (a period can queue 200k of them).
#[derive(Debug, Clone, PartialEq)]
pub enum DatumValue {
    /// One value.
    Value(f64),
    /// Pre-aggregated statistics.
    StatisticSet(Box<Statistics>),
    /// Distinct values and how many samples each stands for.
    Values(Box<ValueCounts>),
}

/// One CloudWatch MetricDatum, with the sample count it carries (for drop accounting).
///
/// Its name and dimensions are the closed period's own (shared, not copied), and what the
/// whole period shares sits behind one [`Stamp`]: a queued counter datum is 64 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// Namespace, timestamp and resolution, shared by every datum of a period.
    pub stamp: Arc<Stamp>,
    /// Metric name.
    pub name: Text,
    /// Dimensions (name, value), sorted by name.
    pub dimensions: Dimensions,
    /// The metric's unit; [`Datum::standard_unit`] is the CloudWatch unit it is published in
    /// (the values are already converted to it).
    pub unit: Unit,
    /// What is measured.
    pub value: DatumValue,
    /// How many recorded samples this datum stands for.
    pub samples: u64,
}

impl Datum {
    /// The SDK's representation, for one attempt.
    pub fn to_sdk(&self) -> MetricDatum {
        let mut b = MetricDatum::builder()
            .metric_name(&*self.name)
            .unit(self.standard_unit())
            .timestamp(DateTime::from(self.stamp.timestamp))
            .storage_resolution(self.stamp.storage_resolution);
        for (name, value) in self.dimensions.iter() {
            b = b.dimensions(Dimension::builder().name(&**name).value(&**value).build());
        }
        match &self.value {
            DatumValue::Value(v) => b = b.value(*v),
            DatumValue::StatisticSet(s) => {
                b = b.statistic_values(
                    StatisticSet::builder()
                        .sample_count(s.sample_count)
                        .sum(s.sum)
                        .minimum(s.minimum)
                        .maximum(s.maximum)
                        .build(),
                );
            }
            DatumValue::Values(v) => {
                b = b
                    .set_values(Some(v.values.clone()))
                    .set_counts(Some(v.counts.clone()));
            }
        }
        b.build()
    }

    /// The CloudWatch unit the datum is published in.
    pub fn standard_unit(&self) -> StandardUnit {
        standard_unit(self.unit).0
    }

    /// An estimate of the memory this datum holds, for the pending queue's bound: the datum,
    /// its boxed value, and what a datum may keep alive alone once its period is gone: its
    /// dimension list and the strings a series may own alone (its name and dimension values).
    /// Dimension names are not counted: a closed period stores each once for all its series
    /// (see `model::Interner`), as it does the [`Stamp`]. A split histogram's datums each count
    /// the dimension list they share (a small over-estimate).
    pub fn memory_bytes(&self) -> usize {
        let value = match &self.value {
            DatumValue::Value(_) => 0,
            DatumValue::StatisticSet(_) => std::mem::size_of::<Statistics>(),
            DatumValue::Values(v) => {
                std::mem::size_of::<ValueCounts>()
                    + (v.values.capacity() + v.counts.capacity()) * std::mem::size_of::<f64>()
            }
        };
        std::mem::size_of::<Datum>() + series_bytes(&self.name, &self.dimensions) + value
    }
}

/// What the pending queue charges for a counter waiting with `dimensions` dimensions whose
/// values are `value_len` bytes long (see [`metric_memory_bytes`]): the unit of its bound,
/// for sizing `publish.max_pending_bytes` against `aggregate.max_series`.
pub fn counter_metric_bytes(dimensions: usize, value_len: usize) -> usize {
    let value = "v".repeat(value_len);
    let names: Vec<String> = (0..dimensions).map(|i| format!("D{i}")).collect();
    let dims: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let key = MetricKey::new("RequestCount", Unit::Count, &dims);
    metric_memory_bytes(&key, &AggregateValue::Counter(0.0))
}

/// The CloudWatch unit for a tally unit, and the divisor that converts values to it.
pub fn standard_unit(unit: Unit) -> (StandardUnit, f64) {
    match unit {
        Unit::None => (StandardUnit::None, 1.0),
        Unit::Count => (StandardUnit::Count, 1.0),
        // CloudWatch has no nanoseconds; the aggregator converts them, this is a safety net.
        Unit::Nanoseconds => (StandardUnit::Microseconds, 1000.0),
        Unit::Microseconds => (StandardUnit::Microseconds, 1.0),
        Unit::Milliseconds => (StandardUnit::Milliseconds, 1.0),
        Unit::Seconds => (StandardUnit::Seconds, 1.0),
        Unit::Bytes => (StandardUnit::Bytes, 1.0),
        Unit::Percent => (StandardUnit::Percent, 1.0),
    }
}

/// Why a namespace is refused, if it is.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let n = ns.chars().count();
    if n == 0 || n > 255 {
        return Err(format!(
            "namespace has {n} characters; CloudWatch allows 1 to 255"
        ));
    }
    if ns.starts_with(':') || ns.starts_with("AWS/") {
        return Err(format!(
            "namespace {ns:?} starts with ':' or 'AWS/', which CloudWatch reserves"
        ));
    }
    if ns.chars().any(char::is_control) {
        return Err(format!("namespace {ns:?} contains control characters"));
    }
    Ok(())
}

/// Why a metric name is refused, if it is.
pub fn check_metric_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 255 {
        return Err(format!(
            "metric name has {n} characters; CloudWatch allows 1 to 255"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("metric name {name:?} contains control characters"));
    }
    Ok(())
}

/// Why a dimension set is refused, if it is.
pub fn check_dimensions<N: AsRef<str>, V: AsRef<str>>(dims: &[(N, V)]) -> Result<(), String> {
    if dims.len() > MAX_DIMENSIONS {
        return Err(format!(
            "{} dimensions; CloudWatch allows {MAX_DIMENSIONS}",
            dims.len()
        ));
    }
    for (i, (name, value)) in dims.iter().enumerate() {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name.is_empty() || name.len() > 255 || !printable_ascii(name) || name.starts_with(':') {
            return Err(format!(
                "dimension name {name:?} must be 1 to 255 printable ASCII characters, not starting with ':'"
            ));
        }
        if value.is_empty() || value.len() > 1024 || !printable_ascii(value) {
            return Err(format!(
                "dimension {name}={value:?}: the value must be 1 to 1024 printable ASCII characters"
            ));
        }
        if dims[..i].iter().any(|(n, _)| n.as_ref() == name) {
            return Err(format!("dimension {name} appears twice"));
        }
    }
    Ok(())
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Whether CloudWatch accepts `v` as a value.
pub fn check_value(v: f64) -> Result<(), DropReason> {
    if !v.is_finite() {
        return Err(DropReason::NonFinite);
    }
    let m = v.abs();
    if m > MAX_MAGNITUDE || (m != 0.0 && m < MIN_MAGNITUDE) {
        return Err(DropReason::OutOfRange);
    }
    Ok(())
}

/// Whether CloudWatch accepts `ts` now.
pub fn check_timestamp(ts: SystemTime, now: SystemTime) -> Result<(), DropReason> {
    match now.duration_since(ts) {
        Ok(age) if age > MAX_AGE => Err(DropReason::Expired),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > MAX_FUTURE => Err(DropReason::FutureTimestamp),
        Err(_) => Ok(()),
    }
}

/// A metric left out of the datums, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The metric name (for the log).
    pub name: String,
    /// Why.
    pub reason: DropReason,
    /// What exactly is wrong and what to change.
    pub detail: String,
    /// Datums it would have made.
    pub datums: u64,
    /// Samples it stood for.
    pub samples: u64,
}

/// A closed period checked for what CloudWatch refuses before any datum is made: its
/// namespace, its timestamp, and every metric's name and dimensions.
#[derive(Debug)]
pub struct Prepared {
    /// What the period's datums share.
    pub stamp: Arc<Stamp>,
    /// The metrics that passed, in the period's order (the period's own vector).
    pub metrics: Vec<(MetricKey, AggregateValue)>,
    /// The metrics that did not (the caller logs and counts them).
    pub rejections: Vec<Rejection>,
}

/// Checks one closed period (see [`Prepared`]). The metrics stay in the period's vector:
/// refused ones are taken out in place, nothing is copied, so a period of 200k metrics costs
/// no second vector here. Their datums are made later, a request at a time
/// ([`make_datums`], called by the pending queue).
pub fn prepare(period: PeriodData, now: SystemTime) -> Prepared {
    let PeriodData {
        namespace,
        timestamp,
        storage_resolution,
        mut metrics,
        ..
    } = period;
    let whole_period = check_namespace(&namespace)
        .err()
        .map(|detail| {
            (
                DropReason::InvalidNamespace,
                format!("{detail}: fix `namespace` in the agent's configuration"),
            )
        })
        .or_else(|| {
            check_timestamp(timestamp, now).err().map(|reason| {
                (
                    reason,
                    "period timestamp outside CloudWatch's window (2 weeks back, 2 hours ahead): check the host clock".to_string(),
                )
            })
        });
    let mut rejections = Vec::new();
    if let Some((reason, detail)) = whole_period {
        rejections = metrics
            .iter()
            .map(|(key, agg)| rejection(key, agg, reason, detail.clone()))
            .collect();
        metrics = Vec::new();
    } else {
        metrics.retain(|(key, agg)| {
            let problem = check_metric_name(&key.name)
                .map_err(|d| (DropReason::InvalidName, d))
                .and_then(|()| {
                    check_dimensions(&key.dimensions).map_err(|d| (DropReason::InvalidDimension, d))
                });
            match problem {
                Ok(()) => true,
                Err((reason, detail)) => {
                    rejections.push(rejection(key, agg, reason, detail));
                    false
                }
            }
        });
    }
    Prepared {
        stamp: Arc::new(Stamp {
            namespace: Arc::from(namespace),
            timestamp,
            storage_resolution,
        }),
        metrics,
        rejections,
    }
}

fn rejection(
    key: &MetricKey,
    agg: &AggregateValue,
    reason: DropReason,
    detail: String,
) -> Rejection {
    Rejection {
        name: key.name.to_string(),
        reason,
        detail,
        datums: 1,
        samples: agg.samples(),
    }
}

/// Appends the datums of one metric that [`prepare`] let through to `out`; a value CloudWatch
/// would refuse (NaN, infinite, outside ±2^360) makes no datum and comes back as a rejection.
pub fn make_datums(
    key: &MetricKey,
    agg: &AggregateValue,
    stamp: &Arc<Stamp>,
    max_values: usize,
    out: &mut impl Extend<Datum>,
) -> Result<(), Rejection> {
    datums_of(key, agg, stamp, max_values, out)
        .map_err(|(reason, detail)| rejection(key, agg, reason, detail))
}

/// Every datum of one closed period at once, with the metrics CloudWatch would refuse (for
/// tests; the pending queue makes datums a request at a time instead).
#[cfg(test)]
pub fn build_datums(
    period: &PeriodData,
    now: SystemTime,
    max_values: usize,
) -> (Vec<Datum>, Vec<Rejection>) {
    let Prepared {
        stamp,
        metrics,
        mut rejections,
    } = prepare(period.clone(), now);
    let mut datums = Vec::with_capacity(metrics.len());
    for (key, agg) in &metrics {
        if let Err(r) = make_datums(key, agg, &stamp, max_values, &mut datums) {
            rejections.push(r);
        }
    }
    (datums, rejections)
}

/// An estimate of the memory a metric waiting in the pending queue holds, in the terms of
/// [`Datum::memory_bytes`]: its slot, its histogram, and what it may keep alive alone (its
/// dimension list, the strings of its name and dimension values).
pub fn metric_memory_bytes(key: &MetricKey, agg: &AggregateValue) -> usize {
    let value = match agg {
        AggregateValue::Distribution { histogram, .. } => {
            std::mem::size_of::<SparseHistogram>() + std::mem::size_of_val(histogram.buckets())
        }
        _ => 0,
    };
    std::mem::size_of::<(MetricKey, AggregateValue)>()
        + series_bytes(&key.name, &key.dimensions)
        + value
}

/// What a series may keep alive alone: its name, its dimension list and the dimension
/// values. Dimension names are not counted: a closed period stores each once for all its
/// series (see `model::Interner`).
fn series_bytes(name: &str, dimensions: &Dimensions) -> usize {
    const ARC_COUNTS: usize = 2 * std::mem::size_of::<usize>();
    name.len()
        + ARC_COUNTS
        + std::mem::size_of_val::<[(Text, Text)]>(dimensions)
        + dimensions.iter().map(|(_, v)| v.len()).sum::<usize>()
}

/// Appends the datums of one metric to `out`, or none of them with why.
fn datums_of(
    key: &MetricKey,
    agg: &AggregateValue,
    stamp: &Arc<Stamp>,
    max_values: usize,
    out: &mut impl Extend<Datum>,
) -> Result<(), (DropReason, String)> {
    let (_, divisor) = standard_unit(key.unit);
    let datum = |value: DatumValue, samples: u64| Datum {
        stamp: Arc::clone(stamp),
        name: Text::clone(&key.name),
        dimensions: Dimensions::clone(&key.dimensions),
        unit: key.unit,
        value,
        samples,
    };
    // `v` already in the published unit.
    let valid = |v: f64, what: &str| -> Result<f64, (DropReason, String)> {
        check_value(v).map(|()| v).map_err(|r| {
            (
                r,
                format!("{what} {v} is NaN, infinite or outside CloudWatch's range of ±2^360"),
            )
        })
    };
    let checked = |v: f64, what: &str| valid(v / divisor, what);
    match agg {
        AggregateValue::Counter(v) => out.extend([datum(
            DatumValue::Value(checked(*v, "counter value")?),
            agg.samples(),
        )]),
        AggregateValue::Derived(v) => out.extend([datum(
            DatumValue::Value(checked(*v, "derived value")?),
            agg.samples(),
        )]),
        AggregateValue::Gauge {
            last,
            min,
            max,
            updates,
        } => {
            let (last, min, max) = (
                checked(*last, "gauge value")?,
                checked(*min, "gauge minimum")?,
                checked(*max, "gauge maximum")?,
            );
            let value = if min == max {
                DatumValue::Value(last)
            } else {
                let sum = min + last + max;
                valid(sum, "gauge sum")?;
                DatumValue::StatisticSet(Box::new(Statistics {
                    sample_count: 3.0,
                    sum,
                    minimum: min,
                    maximum: max,
                }))
            };
            out.extend([datum(value, *updates)]);
        }
        AggregateValue::Distribution { scale, histogram } => {
            let scale = scale * divisor;
            if !(scale.is_finite() && scale > 0.0) {
                return Err((
                    DropReason::NonFinite,
                    format!("distribution scale {scale} must be a positive finite number"),
                ));
            }
            let chunks = split_histogram(histogram, scale, max_values);
            for c in &chunks {
                for v in &c.values {
                    valid(*v, "distribution value")?;
                }
            }
            out.extend(chunks.into_iter().map(|c| {
                let samples = c.samples;
                datum(
                    DatumValue::Values(Box::new(ValueCounts {
                        values: c.values,
                        counts: c.counts,
                    })),
                    samples,
                )
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    pub(crate) fn key(name: &str, dims: &[(&str, &str)], unit: Unit) -> MetricKey {
        MetricKey::new(name, unit, dims)
    }

    pub(crate) fn period(ts: SystemTime, metrics: Vec<(MetricKey, AggregateValue)>) -> PeriodData {
        PeriodData {
            namespace: "Tally/Test".into(),
            timestamp: ts,
            period_secs: 60,
            storage_resolution: 60,
            metrics,
        }
    }

    #[test]
    fn datums_share_the_closed_periods_names_and_dimensions_instead_of_copying_them() {
        let now = SystemTime::now();
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=400u64 {
            h.record(v * 1_000).unwrap();
        }
        let k = key(
            "Latency",
            &[("Route", "/a"), ("Method", "GET")],
            Unit::Count,
        );
        let p = period(
            now,
            vec![(
                k.clone(),
                AggregateValue::Distribution {
                    scale: 1.0,
                    histogram: Box::new((&h).into()),
                },
            )],
        );
        let (d, _) = build_datums(&p, now, 150);
        assert!(d.len() > 1, "a split histogram");
        for x in &d {
            assert!(Text::ptr_eq(&x.name, &k.name));
            assert!(Arc::ptr_eq(&x.dimensions, &k.dimensions));
            assert!(Arc::ptr_eq(&x.stamp, &d[0].stamp), "one stamp per period");
        }
    }

    /// A period can queue 200k datums; this holds the layout the queue's bound and the
    /// memory figures in docs/benchmarks-agent.md assume.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_datum_and_its_strings_stay_small() {
        assert!(std::mem::size_of::<Datum>() <= 64);
        assert_eq!(std::mem::size_of::<Text>(), 8, "a thin shared string");
        assert_eq!(std::mem::size_of::<(Text, Text)>(), 16);
    }

    /// The queue's accounting and the `last_period_datums` gauge count datums with
    /// `AggregateValue::datums`; it must be what the metric is published as.
    #[test]
    fn the_planned_datum_count_is_what_each_metric_is_published_as() {
        let now = SystemTime::now();
        let stamp = Arc::new(Stamp {
            namespace: "N".into(),
            timestamp: now,
            storage_resolution: 60,
        });
        let hist = |n: u64| {
            let mut h = Histogram::<u64>::new(3).unwrap();
            for v in 1..=n {
                h.record(v).unwrap();
            }
            AggregateValue::Distribution {
                scale: 1.0,
                histogram: Box::new((&h).into()),
            }
        };
        let gauge = AggregateValue::Gauge {
            last: 2.0,
            min: 1.0,
            max: 3.0,
            updates: 4,
        };
        let aggs = [
            AggregateValue::Counter(3.0),
            AggregateValue::Derived(1.0),
            gauge,
            hist(0),
            hist(150),
            hist(151),
            hist(400),
        ];
        for agg in aggs {
            let mut out = Vec::new();
            make_datums(&key("M", &[], Unit::Count), &agg, &stamp, 150, &mut out).unwrap();
            assert_eq!(agg.datums(150), out.len() as u64, "{agg:?}");
        }
    }

    #[test]
    fn each_aggregate_becomes_the_documented_datum() {
        let now = SystemTime::now();
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record_n(2_000_000, 3).unwrap();
        let p = period(
            now,
            vec![
                (
                    key("Hits", &[("Route", "/a")], Unit::Count),
                    AggregateValue::Counter(7.0),
                ),
                (
                    key("InFlight", &[], Unit::None),
                    AggregateValue::Gauge {
                        last: 3.0,
                        min: 1.0,
                        max: 9.0,
                        updates: 12,
                    },
                ),
                (
                    key("Flat", &[], Unit::None),
                    AggregateValue::Gauge {
                        last: 4.0,
                        min: 4.0,
                        max: 4.0,
                        updates: 2,
                    },
                ),
                (
                    key("ErrorRate", &[], Unit::Percent),
                    AggregateValue::Derived(12.5),
                ),
                (
                    key("Latency", &[], Unit::Nanoseconds),
                    AggregateValue::Distribution {
                        scale: 1.0,
                        histogram: Box::new((&h).into()),
                    },
                ),
            ],
        );
        let (d, rejected) = build_datums(&p, now, 150);
        assert!(rejected.is_empty());
        assert_eq!(d[0].value, DatumValue::Value(7.0));
        assert_eq!(d[0].samples, 7);
        assert_eq!(d[0].standard_unit(), StandardUnit::Count);
        assert_eq!(
            d[1].value,
            DatumValue::StatisticSet(Box::new(Statistics {
                sample_count: 3.0,
                sum: 13.0,
                minimum: 1.0,
                maximum: 9.0
            }))
        );
        assert_eq!(d[1].samples, 12);
        assert_eq!(d[2].value, DatumValue::Value(4.0));
        assert_eq!(d[3].value, DatumValue::Value(12.5));
        assert_eq!(d[3].standard_unit(), StandardUnit::Percent);
        // Nanoseconds are published as microseconds.
        assert_eq!(d[4].standard_unit(), StandardUnit::Microseconds);
        let DatumValue::Values(v) = &d[4].value else {
            panic!("{:?}", d[4].value)
        };
        let (values, counts) = (&v.values, &v.counts);
        assert_eq!(counts, &vec![3.0]);
        assert!((values[0] - 2000.0).abs() / 2000.0 < 0.001, "{values:?}");
        assert!(d
            .iter()
            .all(|d| d.stamp.storage_resolution == 60 && d.stamp.timestamp == now));
    }

    #[test]
    fn a_histogram_with_more_than_150_buckets_becomes_several_datums_of_one_metric() {
        let now = SystemTime::now();
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=400u64 {
            h.record(v).unwrap();
        }
        let p = period(
            now,
            vec![(
                key("Latency", &[], Unit::Milliseconds),
                AggregateValue::Distribution {
                    scale: 1.0,
                    histogram: Box::new((&h).into()),
                },
            )],
        );
        let (d, _) = build_datums(&p, now, 150);
        assert_eq!(d.len(), 3);
        assert!(d
            .iter()
            .all(|x| &*x.name == "Latency" && x.stamp.timestamp == now));
        assert_eq!(d.iter().map(|x| x.samples).sum::<u64>(), 400);
    }

    #[test]
    fn names_dimensions_and_values_cloudwatch_refuses_are_rejected_one_metric_at_a_time() {
        let now = SystemTime::now();
        let long = "x".repeat(256);
        let many: Dimensions = (0..31)
            .map(|i| (format!("D{i:02}").into(), "v".into()))
            .collect();
        let mut too_many = key("TooMany", &[], Unit::Count);
        too_many.dimensions = many;
        let p = period(
            now,
            vec![
                (key(&long, &[], Unit::Count), AggregateValue::Counter(1.0)),
                (key("Ok", &[], Unit::Count), AggregateValue::Counter(2.0)),
                (
                    key("NonAscii", &[("Route", "/caf\u{e9}")], Unit::Count),
                    AggregateValue::Counter(3.0),
                ),
                (
                    key("EmptyValue", &[("Route", "")], Unit::Count),
                    AggregateValue::Counter(3.0),
                ),
                (
                    key("Colon", &[(":x", "a")], Unit::Count),
                    AggregateValue::Counter(3.0),
                ),
                (too_many, AggregateValue::Counter(4.0)),
                (
                    key("Nan", &[], Unit::None),
                    AggregateValue::Derived(f64::NAN),
                ),
                (
                    key("Inf", &[], Unit::None),
                    AggregateValue::Counter(f64::INFINITY),
                ),
                (key("Huge", &[], Unit::None), AggregateValue::Derived(1e200)),
                (
                    key("Tiny", &[], Unit::None),
                    AggregateValue::Derived(1e-200),
                ),
                (
                    key("GaugeNan", &[], Unit::None),
                    AggregateValue::Gauge {
                        last: f64::NAN,
                        min: 0.0,
                        max: 1.0,
                        updates: 5,
                    },
                ),
            ],
        );
        let (d, r) = build_datums(&p, now, 150);
        assert_eq!(d.len(), 1);
        assert_eq!(&*d[0].name, "Ok");
        let reasons: Vec<DropReason> = r.iter().map(|x| x.reason).collect();
        use DropReason::*;
        assert_eq!(
            reasons,
            vec![
                InvalidName,
                InvalidDimension,
                InvalidDimension,
                InvalidDimension,
                InvalidDimension,
                NonFinite,
                NonFinite,
                OutOfRange,
                OutOfRange,
                NonFinite
            ]
        );
        assert_eq!(r.last().unwrap().samples, 5);
        assert!(r[4].detail.contains("30"), "{}", r[4].detail);
    }

    #[test]
    fn a_reserved_namespace_or_a_stale_period_drops_every_metric_with_its_samples() {
        let now = SystemTime::now();
        let mut p = period(
            now,
            vec![(key("A", &[], Unit::Count), AggregateValue::Counter(5.0))],
        );
        p.namespace = "AWS/EC2".into();
        let (d, r) = build_datums(&p, now, 150);
        assert!(d.is_empty());
        assert_eq!(
            (r[0].reason, r[0].samples),
            (DropReason::InvalidNamespace, 5)
        );

        p.namespace = "Ok".into();
        p.timestamp = now - Duration::from_secs(15 * 24 * 3600);
        assert_eq!(build_datums(&p, now, 150).1[0].reason, DropReason::Expired);
        p.timestamp = now + Duration::from_secs(3 * 3600);
        assert_eq!(
            build_datums(&p, now, 150).1[0].reason,
            DropReason::FutureTimestamp
        );
        p.timestamp = now + Duration::from_secs(60);
        assert!(build_datums(&p, now, 150).1.is_empty());
    }

    #[test]
    fn the_sdk_datum_carries_every_field() {
        let now = SystemTime::now();
        let p = period(
            now,
            vec![(
                key("A", &[("B", "c")], Unit::Bytes),
                AggregateValue::Counter(5.0),
            )],
        );
        let (d, _) = build_datums(&p, now, 150);
        let sdk = d[0].to_sdk();
        assert_eq!(sdk.metric_name(), Some("A"));
        assert_eq!(sdk.unit(), Some(&StandardUnit::Bytes));
        assert_eq!(sdk.value(), Some(5.0));
        assert_eq!(sdk.storage_resolution(), Some(60));
        assert_eq!(sdk.dimensions()[0].name(), Some("B"));
        assert_eq!(sdk.dimensions()[0].value(), Some("c"));
    }
}
