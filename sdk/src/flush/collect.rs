//! Draining every cell into one interval's deltas, and merging deltas.

use std::sync::Arc;

use hdrhistogram::Histogram as Hdr;

use crate::record::record_exact;
use crate::registry::{CellRef, SeriesEntry};
use crate::wire::SeriesValue;

/// Drains the cells of `series`; series with nothing to report are left out (gauges always
/// report their current value).
pub(crate) fn collect(series: &[Arc<SeriesEntry>]) -> Vec<(Arc<SeriesEntry>, SeriesValue)> {
    let mut out = Vec::with_capacity(series.len());
    for e in series {
        let v = match &e.cell {
            CellRef::Counter(c) => match c.take() {
                0 => continue,
                d => SeriesValue::Counter(d),
            },
            CellRef::Gauge(g) => {
                let d = g.take();
                SeriesValue::Gauge {
                    last: d.last,
                    min: d.min,
                    max: d.max,
                    updates: d.updates,
                }
            }
            CellRef::Histogram(h) => match h.take() {
                Some(histogram) => SeriesValue::Histogram {
                    scale: h.scale,
                    histogram,
                },
                None => continue,
            },
            CellRef::Event(ev) => {
                let count = ev.count.take();
                let values = ev.values.take().map(|h| (ev.scale, h));
                if count == 0 && values.is_none() {
                    continue;
                }
                SeriesValue::Event { count, values }
            }
        };
        out.push((e.clone(), v));
    }
    out
}

/// Adds `b` into `a`, growing `a` when `b` holds larger values.
pub(crate) fn merge_hdr(a: &mut Hdr<u64>, b: &Hdr<u64>) {
    a.auto(true);
    // With auto-resize on, adding only fails if the histograms' precisions are incompatible,
    // which cannot happen for two deltas of one series; keep every count regardless.
    if a.add(b).is_err() {
        for v in b.iter_recorded() {
            record_exact(a, v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// Folds `later` into `earlier`: counters and counts add, histograms merge, a gauge keeps the
/// later value and the wider extremes. Values of different kinds (a series re-registered
/// under another kind is a different series, so this does not happen) keep `later`.
pub(crate) fn merge_value(earlier: &mut SeriesValue, later: SeriesValue) {
    match (earlier, later) {
        (SeriesValue::Counter(a), SeriesValue::Counter(b)) => *a = a.saturating_add(b),
        (
            SeriesValue::Gauge {
                last,
                min,
                max,
                updates,
            },
            SeriesValue::Gauge {
                last: l2,
                min: n2,
                max: x2,
                updates: u2,
            },
        ) => {
            *last = l2;
            *min = min.min(n2);
            *max = max.max(x2);
            *updates = updates.saturating_add(u2);
        }
        (
            SeriesValue::Histogram { histogram: a, .. },
            SeriesValue::Histogram { histogram: b, .. },
        ) => merge_hdr(a, &b),
        (
            SeriesValue::Event { count, values },
            SeriesValue::Event {
                count: c2,
                values: v2,
            },
        ) => {
            *count = count.saturating_add(c2);
            match (values.as_mut(), v2) {
                (Some((_, a)), Some((_, b))) => merge_hdr(a, &b),
                (None, Some(v)) => *values = Some(v),
                (_, None) => {}
            }
        }
        (slot, later) => *slot = later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_hdr;

    #[test]
    fn merging_adds_counts_and_keeps_the_later_gauge() {
        let mut c = SeriesValue::Counter(2);
        merge_value(&mut c, SeriesValue::Counter(3));
        assert_eq!(c, SeriesValue::Counter(5));
        let g = |last: f64, min: f64, max: f64, updates: u64| SeriesValue::Gauge {
            last,
            min,
            max,
            updates,
        };
        let mut a = g(1.0, 0.0, 4.0, 2);
        merge_value(&mut a, g(2.0, 1.0, 3.0, 1));
        assert_eq!(a, g(2.0, 0.0, 4.0, 3));
    }

    #[test]
    fn merging_histograms_of_different_ranges_keeps_every_count() {
        let mut small = new_hdr(3);
        small.record(5).expect("auto");
        let mut big = new_hdr(3);
        big.record(5_000_000_000).expect("auto");
        let mut a = SeriesValue::Histogram {
            scale: 1.0,
            histogram: small,
        };
        merge_value(
            &mut a,
            SeriesValue::Histogram {
                scale: 1.0,
                histogram: big,
            },
        );
        assert_eq!(a.samples(), 2);
    }
}
