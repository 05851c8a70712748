//! Draining every cell into one interval's deltas, and merging deltas.

use std::sync::Arc;

#[cfg(any(test, feature = "testing"))]
use hdrhistogram::Histogram as Hdr;

#[cfg(any(test, feature = "testing"))]
use crate::record::record_exact;
use crate::record::Sparse;
use crate::registry::{CellRef, SeriesEntry};
#[cfg(any(test, feature = "testing"))]
use crate::wire::SeriesValue;
use crate::wire::{HistRef, ValueRef};

/// One series' data for one interval (or several merged): what the flusher keeps until it
/// is sealed into a batch. Like [`SeriesValue`], but histograms are [`Sparse`] deltas, whose
/// size follows the values recorded rather than their range.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Delta {
    Counter(u64),
    Gauge {
        last: f64,
        min: f64,
        max: f64,
        updates: u64,
    },
    Histogram {
        scale: f64,
        counts: Sparse,
    },
    Event {
        count: u64,
        values: Option<(f64, Sparse)>,
    },
}

fn hist_ref(s: &Sparse) -> HistRef<'_> {
    HistRef::Counts {
        sigfig: s.sigfig(),
        high: s.high(),
        counts: &s.counts,
    }
}

impl Delta {
    /// Samples this delta stands for (as [`SeriesValue::samples`] counts them).
    pub(crate) fn samples(&self) -> u64 {
        match self {
            Delta::Counter(d) => *d,
            Delta::Gauge { updates, .. } => *updates,
            Delta::Histogram { counts, .. } => counts.len(),
            Delta::Event { count, .. } => *count,
        }
    }

    /// The histograms this delta carries.
    pub(crate) fn histograms(&self) -> impl Iterator<Item = &Sparse> {
        match self {
            Delta::Histogram { counts, .. } => Some(counts),
            Delta::Event {
                values: Some((_, v)),
                ..
            } => Some(v),
            _ => None,
        }
        .into_iter()
    }

    /// The delta as the encoder sees it.
    pub(crate) fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Delta::Counter(d) => ValueRef::Counter(*d),
            Delta::Gauge {
                last,
                min,
                max,
                updates,
            } => ValueRef::Gauge {
                last: *last,
                min: *min,
                max: *max,
                updates: *updates,
            },
            Delta::Histogram { scale, counts } => ValueRef::Histogram(*scale, hist_ref(counts)),
            Delta::Event { count, values } => {
                ValueRef::Event(*count, values.as_ref().map(|(s, h)| (*s, hist_ref(h))))
            }
        }
    }

    /// Folds `later` into this delta: counters and counts add, histograms merge, a gauge
    /// keeps the later value and the wider extremes. Deltas of different kinds (a series
    /// re-registered under another kind is a different series, so this does not happen)
    /// keep `later`.
    pub(crate) fn merge(&mut self, later: Delta) {
        match (self, later) {
            (Delta::Counter(a), Delta::Counter(b)) => *a = a.saturating_add(b),
            (
                Delta::Gauge {
                    last,
                    min,
                    max,
                    updates,
                },
                Delta::Gauge {
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
            (Delta::Histogram { counts: a, .. }, Delta::Histogram { counts: b, .. }) => a.merge(&b),
            (
                Delta::Event { count, values },
                Delta::Event {
                    count: c2,
                    values: v2,
                },
            ) => {
                *count = count.saturating_add(c2);
                match (values.as_mut(), v2) {
                    (Some((_, a)), Some((_, b))) => a.merge(&b),
                    (None, Some(v)) => *values = Some(v),
                    (_, None) => {}
                }
            }
            (slot, later) => *slot = later,
        }
    }
}

/// Drains the cells of `series`; series with nothing to report are left out (gauges always
/// report their current value).
pub(crate) fn collect(series: &[Arc<SeriesEntry>]) -> Vec<(Arc<SeriesEntry>, Delta)> {
    let mut out = Vec::with_capacity(series.len());
    for e in series {
        let v = match &e.cell {
            CellRef::Counter(c) => match c.take() {
                0 => continue,
                d => Delta::Counter(d),
            },
            CellRef::Gauge(g) => {
                let d = g.take();
                Delta::Gauge {
                    last: d.last,
                    min: d.min,
                    max: d.max,
                    updates: d.updates,
                }
            }
            CellRef::Histogram(h) => match h.take() {
                Some(counts) => Delta::Histogram {
                    scale: h.scale,
                    counts,
                },
                None => continue,
            },
            CellRef::Event(ev) => {
                let count = ev.count.take();
                let values = ev.values.take().map(|h| (ev.scale, h));
                if count == 0 && values.is_none() {
                    continue;
                }
                Delta::Event { count, values }
            }
        };
        out.push((e.clone(), v));
    }
    out
}

/// Adds `b` into `a`, growing `a` when `b` holds larger values.
#[cfg(any(test, feature = "testing"))]
fn merge_hdr(a: &mut Hdr<u64>, b: &Hdr<u64>) {
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
#[cfg(any(test, feature = "testing"))]
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
