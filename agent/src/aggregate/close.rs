//! Closing a period: publish units, global dimensions, rollups and derived metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use tally::conventions::{ENVIRONMENT, SERVICE_NAME};
use tally::wire::Unit;

use super::series::{Agg, SeriesKey};
use super::Settings;
use crate::config::parse_unit;
use crate::model::{AggregateValue, MetricKey, PeriodData};

/// Most values CloudWatch takes in one datum's `Values` (API model).
pub const MAX_VALUES_PER_DATUM: usize = 150;

/// Turns an open period's series into the [`PeriodData`] a sink receives, plus the samples
/// that could not be combined (reason, count) and how many of those are not published at all.
pub fn finish(
    settings: &Settings,
    start: u64,
    series: Vec<(SeriesKey, Agg)>,
) -> (PeriodData, Vec<(&'static str, u64)>, u64) {
    let mut conflicts: Vec<(&'static str, u64)> = Vec::new();
    let ns = settings.time_unit.nanos();
    let mut base: BTreeMap<MetricKey, AggregateValue> = BTreeMap::new();
    for (k, agg) in series {
        let is_ns = k.unit == Unit::Nanoseconds;
        let unit = if is_ns {
            settings.time_unit.unit()
        } else {
            k.unit
        };
        let mut dimensions: Vec<(String, String)> = Vec::with_capacity(k.labels.len() + 2);
        dimensions.push((SERVICE_NAME.into(), k.service.into()));
        dimensions.push((ENVIRONMENT.into(), k.environment.into()));
        dimensions.extend(settings.extra_dimensions.iter().cloned());
        dimensions.extend(k.labels.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        dimensions.sort();
        let f = if is_ns { ns } else { 1.0 };
        let value = match agg {
            Agg::Counter(n) => AggregateValue::Counter(n as f64 / f),
            Agg::Gauge {
                last,
                min,
                max,
                updates,
            } => AggregateValue::Gauge {
                last: last / f,
                min: min / f,
                max: max / f,
                updates,
            },
            Agg::Dist { scale, histogram } => AggregateValue::Distribution {
                scale: scale * f,
                histogram: *histogram,
            },
        };
        let key = MetricKey {
            name: k.name.into(),
            unit,
            dimensions,
        };
        insert_merge(&mut base, key, value, &mut conflicts);
    }
    // Samples of series that could not join their published key (not published at all, unlike
    // a rollup conflict below, whose samples are published in the base series).
    let unpublished: u64 = conflicts.iter().map(|c| c.1).sum();

    // Rollups: each base series contributes at most once to each rolled-up key.
    let mut rolled: BTreeMap<MetricKey, AggregateValue> = BTreeMap::new();
    if !settings.rollups.is_empty() {
        for (key, value) in &base {
            let mut targets: BTreeSet<Vec<(String, String)>> = BTreeSet::new();
            for r in &settings.rollups {
                if !r.metrics.is_empty() && !r.metrics.contains(&key.name) {
                    continue;
                }
                if !key.dimensions.iter().any(|(d, _)| r.drop.contains(d)) {
                    continue;
                }
                targets.insert(
                    key.dimensions
                        .iter()
                        .filter(|(d, _)| !r.drop.contains(d))
                        .cloned()
                        .collect(),
                );
            }
            for dimensions in targets {
                let k = MetricKey {
                    name: key.name.clone(),
                    unit: key.unit,
                    dimensions,
                };
                insert_merge(&mut rolled, k, value.clone(), &mut conflicts);
            }
        }
    }
    let mut all = base;
    for (k, v) in rolled {
        insert_merge(&mut all, k, v, &mut conflicts);
    }

    // Derived metrics, for every dimension set of the denominator.
    let mut derived: Vec<(MetricKey, AggregateValue)> = Vec::new();
    for d in &settings.derived {
        let numerators: HashMap<&[(String, String)], f64> = all
            .iter()
            .filter(|(k, _)| k.name == d.numerator)
            .filter_map(|(k, v)| total(v).map(|t| (k.dimensions.as_slice(), t)))
            .collect();
        let unit = parse_unit(&d.unit).unwrap_or(Unit::None);
        for (k, v) in all.iter().filter(|(k, _)| k.name == d.denominator) {
            if k.dimensions
                .iter()
                .any(|(n, _)| d.exclude_dimensions.contains(n))
            {
                continue;
            }
            let Some(den) = total(v) else { continue };
            if den <= 0.0 {
                continue;
            }
            let num = numerators
                .get(k.dimensions.as_slice())
                .copied()
                .unwrap_or(0.0);
            derived.push((
                MetricKey {
                    name: d.name.clone(),
                    unit,
                    dimensions: k.dimensions.clone(),
                },
                AggregateValue::Derived(d.multiplier * num / den),
            ));
        }
    }
    for (k, v) in derived {
        insert_merge(&mut all, k, v, &mut conflicts);
    }

    let data = PeriodData {
        namespace: settings.namespace.clone(),
        timestamp: UNIX_EPOCH + Duration::from_secs(start),
        period_secs: settings.period_secs,
        storage_resolution: if settings.period_secs < 60 { 1 } else { 60 },
        metrics: all.into_iter().collect(),
    };
    (data, conflicts, unpublished)
}

/// A counter's sum or a distribution's sample count: what a ratio is taken of.
fn total(v: &AggregateValue) -> Option<f64> {
    match v {
        AggregateValue::Counter(c) => Some(*c),
        AggregateValue::Distribution { histogram, .. } => Some(histogram.len() as f64),
        _ => None,
    }
}

fn insert_merge(
    map: &mut BTreeMap<MetricKey, AggregateValue>,
    key: MetricKey,
    value: AggregateValue,
    conflicts: &mut Vec<(&'static str, u64)>,
) {
    use std::collections::btree_map::Entry;
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(value);
        }
        Entry::Occupied(mut e) => {
            if let Err(reason) = merge_values(e.get_mut(), &value) {
                conflicts.push((reason, value.samples()));
            }
        }
    }
}

/// Merges two aggregates of one published key.
pub fn merge_values(into: &mut AggregateValue, from: &AggregateValue) -> Result<(), &'static str> {
    match (into, from) {
        (AggregateValue::Counter(a), AggregateValue::Counter(b)) => *a += b,
        (
            AggregateValue::Gauge {
                last,
                min,
                max,
                updates,
            },
            AggregateValue::Gauge {
                last: l2,
                min: m2,
                max: x2,
                updates: u2,
            },
        ) => {
            *last = *l2;
            *min = min.min(*m2);
            *max = max.max(*x2);
            *updates += u2;
        }
        (
            AggregateValue::Distribution { scale, histogram },
            AggregateValue::Distribution {
                scale: s2,
                histogram: h2,
            },
        ) => {
            if scale != s2 {
                return Err("scale_mismatch");
            }
            // Allocates only when `h2` brings buckets `histogram` lacks.
            histogram.add(h2, &mut Vec::new());
        }
        (AggregateValue::Derived(_), AggregateValue::Derived(_)) => {
            return Err("derived_collision")
        }
        _ => return Err("kind_mismatch"),
    }
    Ok(())
}

/// Datums a period needs in `PutMetricData`: one per metric, distributions one per 150
/// distinct values.
pub fn estimate_datums(p: &PeriodData) -> usize {
    p.metrics
        .iter()
        .map(|(_, v)| match v {
            AggregateValue::Distribution { histogram, .. } => {
                let distinct = histogram.buckets().len();
                distinct.div_ceil(MAX_VALUES_PER_DATUM).max(1)
            }
            _ => 1,
        })
        .sum()
}
