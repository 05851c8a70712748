//! Closing a period: publish units, global dimensions, rollups and derived metrics.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use tally::wire::Unit;

use super::series::Agg;
use super::Settings;
use crate::cloudwatch::MAX_VALUES_PER_DATUM;
use crate::model::{AggregateValue, Dimensions, Interner, MetricKey, PeriodData, Text};
use crate::stats::DropReason;

/// A series as published: its unit converted (nanoseconds to the publish time unit) and its
/// value scaled to match. `dimensions` are every dimension it is published with, sorted.
/// `valueless` is set to the occurrences of an event published as its values' distribution
/// that carried no value (they cannot be in it: counted as dropped by the caller).
pub fn publishable(
    settings: &Settings,
    name: Text,
    unit: Unit,
    dimensions: Dimensions,
    agg: Agg,
    valueless: &mut u64,
) -> (MetricKey, AggregateValue) {
    let is_ns = unit == Unit::Nanoseconds;
    let unit = settings.time_unit.published(unit);
    let f = if is_ns {
        settings.time_unit.nanos()
    } else {
        1.0
    };
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
            histogram,
        },
        Agg::Event {
            count,
            values: None,
        } => AggregateValue::Counter(count as f64 / f),
        Agg::Event {
            count,
            values: Some((scale, histogram)),
        } => {
            *valueless = count.saturating_sub(histogram.len());
            AggregateValue::Distribution {
                scale: scale * f,
                histogram,
            }
        }
    };
    let key = MetricKey {
        name,
        unit,
        dimensions,
    };
    (key, value)
}

/// Turns an open period's series (see [`publishable`]) into the [`PeriodData`] a sink
/// receives, plus the samples that could not be combined (reason, count) and how many of
/// those are not published at all.
///
/// `base` comes in admission order; where two series meet under one published key the first
/// keeps its kind and the other's samples are counted as a conflict. Keys, dimension lists and
/// strings move from `base` into the period (rollups and derived metrics share the strings
/// too), so a closed period holds one small allocation per metric besides its values.
pub fn finish(
    settings: &Settings,
    start: u64,
    mut base: Vec<(MetricKey, AggregateValue)>,
    strings: &mut Interner,
) -> (PeriodData, Vec<(DropReason, u64)>, u64) {
    let mut conflicts: Vec<(DropReason, u64)> = Vec::new();
    merge_equal_keys(&mut base, &mut conflicts);
    // Samples of series that could not join their published key (not published at all, unlike
    // a rollup conflict below, whose samples are published in the base series).
    let unpublished: u64 = conflicts.iter().map(|c| c.1).sum();
    // Per revision: from the base series only, before rollups join them.
    let by_revision = settings
        .revision
        .as_ref()
        .map(|r| super::revision::rollup(r, &base, strings));

    // Rollups: each base series contributes at most once to each rolled-up key.
    let mut all = base;
    if !settings.rollups.is_empty() {
        let mut rolled: Vec<(MetricKey, AggregateValue)> = Vec::new();
        let mut targets: BTreeSet<Vec<(Text, Text)>> = BTreeSet::new();
        for (key, value) in &all {
            for r in &settings.rollups {
                if !r.applies_to(&key.name, key.dimensions.iter().map(|(d, _)| d.as_str())) {
                    continue;
                }
                targets.insert(
                    key.dimensions
                        .iter()
                        .filter(|(d, _)| !r.drops(d))
                        .cloned()
                        .collect(),
                );
            }
            for dimensions in std::mem::take(&mut targets) {
                let k = MetricKey {
                    name: key.name.clone(),
                    unit: key.unit,
                    dimensions: strings.dimensions(&dimensions),
                };
                rolled.push((k, value.clone()));
            }
        }
        // Base series first: where a rolled-up key equals a base key, the base one is kept.
        all.append(&mut rolled);
        merge_equal_keys(&mut all, &mut conflicts);
    }

    if let Some(mut rev) = by_revision.filter(|r| !r.is_empty()) {
        all.append(&mut rev);
        merge_equal_keys(&mut all, &mut conflicts);
    }

    // Derived metrics, for every dimension set of the denominator (of the base and rolled-up
    // metrics only, not of other derived metrics). Each rule first lists (denominator, value)
    // pairs, then appends its metrics into room reserved once: the period's vector is the
    // largest allocation of a close and never exists twice.
    let measured = all.len();
    let mut any_derived = false;
    for d in &settings.derived {
        let values: Vec<(usize, f64)> = {
            let numerators: HashMap<&[(Text, Text)], f64> = all[..measured]
                .iter()
                .filter(|(k, _)| *k.name == *d.numerator)
                .filter_map(|(k, v)| total(v).map(|t| (&*k.dimensions, t)))
                .collect();
            all[..measured]
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| *k.name == *d.denominator)
                .filter(|(_, (k, _))| !d.excludes(k.dimensions.iter().map(|(n, _)| n.as_str())))
                .filter_map(|(i, (k, v))| {
                    let den = total(v).filter(|den| *den > 0.0)?;
                    let num = numerators.get(&*k.dimensions).copied().unwrap_or(0.0);
                    Some((i, d.multiplier * num / den))
                })
                .collect()
        };
        let unit = d.published_unit();
        let name = strings.get(&d.name);
        all.reserve_exact(values.len());
        for (i, value) in values {
            let dimensions = Dimensions::clone(&all[i].0.dimensions);
            all.push((
                MetricKey {
                    name: name.clone(),
                    unit,
                    dimensions,
                },
                AggregateValue::Derived(value),
            ));
            any_derived = true;
        }
    }
    if any_derived {
        merge_equal_keys(&mut all, &mut conflicts);
    }

    let data = PeriodData {
        namespace: settings.namespace.clone(),
        timestamp: UNIX_EPOCH + Duration::from_secs(start),
        period_secs: settings.period_secs,
        storage_resolution: if settings.period_secs < 60 { 1 } else { 60 },
        metrics: all,
    };
    (data, conflicts, unpublished)
}

/// Sorts `metrics` by key and merges the values of equal keys into the first of them in the
/// incoming order (the sort is stable); values that cannot merge are counted in `conflicts`.
///
/// The sort orders indices (8 bytes a metric) and then moves the metrics in place: a stable
/// sort of the metrics themselves (80 bytes each) would borrow a scratch buffer of half the
/// period (8 MB at 200k metrics) at the close's busiest moment.
fn merge_equal_keys(
    metrics: &mut Vec<(MetricKey, AggregateValue)>,
    conflicts: &mut Vec<(DropReason, u64)>,
) {
    let mut order: Vec<usize> = (0..metrics.len()).collect();
    order.sort_by(|&a, &b| metrics[a].0.cmp(&metrics[b].0));
    permute(metrics, order);
    metrics.dedup_by(|next, kept| {
        if next.0 != kept.0 {
            return false;
        }
        if let Err(reason) = merge_values(&mut kept.1, &next.1) {
            conflicts.push((reason, next.1.samples()));
        }
        true
    });
}

/// Puts the element at `order[k]` at position `k`, for every `k`, in place: each cycle of the
/// permutation is walked once with swaps. `order` must be a permutation of `0..v.len()`.
fn permute<T>(v: &mut [T], mut order: Vec<usize>) {
    debug_assert_eq!(v.len(), order.len());
    for start in 0..v.len() {
        let mut at = start;
        while order[at] != start {
            let from = order[at];
            v.swap(at, from);
            order[at] = at;
            at = from;
        }
        order[at] = at;
    }
}

/// A counter's sum or a distribution's sample count: what a ratio is taken of.
fn total(v: &AggregateValue) -> Option<f64> {
    match v {
        AggregateValue::Counter(c) => Some(*c),
        AggregateValue::Distribution { histogram, .. } => Some(histogram.len() as f64),
        _ => None,
    }
}

/// Merges two aggregates of one published key.
pub fn merge_values(into: &mut AggregateValue, from: &AggregateValue) -> Result<(), DropReason> {
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
            *updates = updates.saturating_add(*u2);
        }
        (
            AggregateValue::Distribution { scale, histogram },
            AggregateValue::Distribution {
                scale: s2,
                histogram: h2,
            },
        ) => {
            if scale != s2 {
                return Err(DropReason::ScaleMismatch);
            }
            // Allocates only when `h2` brings buckets `histogram` lacks.
            histogram.add(h2, &mut Vec::new());
        }
        (AggregateValue::Derived(_), AggregateValue::Derived(_)) => {
            return Err(DropReason::DerivedCollision)
        }
        _ => return Err(DropReason::KindMismatch),
    }
    Ok(())
}

/// Datums a period needs in `PutMetricData` at CloudWatch's 150 values a datum (see
/// [`AggregateValue::datums`]).
pub fn estimate_datums(p: &PeriodData) -> u64 {
    p.metrics
        .iter()
        .map(|(_, v)| v.datums(MAX_VALUES_PER_DATUM))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values_and_an_order() -> impl Strategy<Value = (Vec<u32>, Vec<usize>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                proptest::collection::vec(any::<u32>(), n),
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            )
        })
    }

    proptest! {
        #[test]
        fn permuting_in_place_puts_every_element_where_the_order_says((v, order) in values_and_an_order()) {
            let gathered: Vec<u32> = order.iter().map(|&i| v[i]).collect();
            let mut permuted = v.clone();
            permute(&mut permuted, order);
            prop_assert_eq!(permuted, gathered);
        }
    }
}
