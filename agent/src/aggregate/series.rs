//! Series keys and in-period values.
//!
//! An open period keys its series by descriptor bytes (see `aggregate`); the owned
//! [`SeriesKey`] is built when the period closes.

use hdrhistogram::Histogram;
use tally::wire::{HistogramView, Unit};

/// A series inside one period: name, recorded unit, global dimensions and labels (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    /// Metric name.
    pub name: Box<str>,
    /// Unit as recorded by the SDK (before conversion).
    pub unit: Unit,
    /// `ServiceName` value.
    pub service: Box<str>,
    /// `Environment` value.
    pub environment: Box<str>,
    /// Labels sorted by name.
    pub labels: Box<[(Box<str>, Box<str>)]>,
}

/// A series' value within an open period.
#[derive(Debug, Clone)]
pub enum Agg {
    /// Sum of counter deltas (or of value-less event counts).
    Counter(u64),
    /// Gauge statistics.
    Gauge {
        /// Last value merged.
        last: f64,
        /// Smallest.
        min: f64,
        /// Largest.
        max: f64,
        /// Updates.
        updates: u64,
    },
    /// A distribution; stored `v` means `v / scale` in the recorded unit.
    Dist {
        /// Scale as recorded.
        scale: f64,
        /// Merged samples (boxed: most series are counters, and this keeps every slot small).
        histogram: Box<Histogram<u64>>,
    },
}

/// Why a value could not be merged into a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeConflict {
    /// Counter merged into a histogram or the like.
    KindMismatch,
    /// Histograms of different scale under one key.
    ScaleMismatch,
    /// hdrhistogram refused the addition.
    Histogram,
}

impl MergeConflict {
    /// A short, stable label for counting.
    pub fn reason(self) -> &'static str {
        match self {
            MergeConflict::KindMismatch => "kind_mismatch",
            MergeConflict::ScaleMismatch => "scale_mismatch",
            MergeConflict::Histogram => "histogram_merge",
        }
    }
}

/// Merges a distribution into `h`, growing its range when needed.
pub fn add_histogram(h: &mut Histogram<u64>, other: &Histogram<u64>) -> Result<(), MergeConflict> {
    h.auto(true);
    h.add(other).map_err(|_| MergeConflict::Histogram)
}

/// Adds a decoded histogram's buckets into `h`, growing its range when needed: the same
/// result as `Histogram::add` of the histogram the sender serialized (every bucket recorded at
/// its lowest value, counts and total saturating), without materializing that histogram.
pub fn add_view(h: &mut Histogram<u64>, view: &HistogramView<'_>) -> Result<(), MergeConflict> {
    let Some(top) = view.max_bucket_value() else {
        return Ok(());
    };
    h.auto(true);
    // Grow first, as `Histogram::add` does, so a failure cannot leave `h` half merged: a
    // zero count at the sender's maximum. With the same layout that maximum is the top of
    // the highest bucket (what `add` and the deserializer keep as the maximum); otherwise
    // its lowest value, which `add` records first.
    let same_layout =
        h.low() == view.lowest_discernible_value() && h.sigfig() == view.significant_digits();
    let top = if same_layout {
        h.highest_equivalent(top)
    } else {
        top
    };
    h.record_n(top, 0).map_err(|_| MergeConflict::Histogram)?;
    for (value, count) in view.counts().map_err(|_| MergeConflict::Histogram)? {
        h.record_n(value, count)
            .map_err(|_| MergeConflict::Histogram)?;
    }
    Ok(())
}

/// The histogram a series starts a period with: the sender's lowest discernible value and
/// precision (so merges stay exact), but only the range its samples use, not the declared
/// one (1 ns..60 s at 3 digits would be 240 KB), growing as later merges need.
pub fn new_histogram(view: &HistogramView<'_>) -> Result<Histogram<u64>, MergeConflict> {
    let low = view.lowest_discernible_value();
    let high = view.max_bucket_value().unwrap_or(0).max(2 * low);
    let mut h = Histogram::new_with_bounds(low, high, view.significant_digits())
        .map_err(|_| MergeConflict::Histogram)?;
    add_view(&mut h, view)?;
    Ok(h)
}

impl Agg {
    /// Merges another value of the same series.
    pub fn merge(&mut self, other: &Agg) -> Result<(), MergeConflict> {
        match (self, other) {
            (Agg::Counter(a), Agg::Counter(b)) => *a = a.saturating_add(*b),
            (
                Agg::Gauge {
                    last,
                    min,
                    max,
                    updates,
                },
                Agg::Gauge {
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
                Agg::Dist { scale, histogram },
                Agg::Dist {
                    scale: s2,
                    histogram: h2,
                },
            ) => {
                if scale != s2 {
                    return Err(MergeConflict::ScaleMismatch);
                }
                add_histogram(histogram, h2)?;
            }
            _ => return Err(MergeConflict::KindMismatch),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_of_different_precision_and_range_merge_into_one_exact_count() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        a.record(5).unwrap();
        let mut b = Histogram::<u64>::new_with_bounds(1, 1 << 40, 2).unwrap();
        b.record_n(1 << 35, 3).unwrap();
        let mut x = Agg::Dist {
            scale: 1.0,
            histogram: Box::new(a),
        };
        x.merge(&Agg::Dist {
            scale: 1.0,
            histogram: Box::new(b),
        })
        .unwrap();
        let Agg::Dist { histogram, .. } = x else {
            unreachable!()
        };
        assert_eq!(histogram.len(), 4);
        assert!(histogram.max() >= 1 << 35);
    }

    #[test]
    fn merging_different_kinds_or_scales_is_a_conflict() {
        let mut c = Agg::Counter(1);
        assert_eq!(
            c.merge(&Agg::Gauge {
                last: 1.0,
                min: 1.0,
                max: 1.0,
                updates: 1
            }),
            Err(MergeConflict::KindMismatch)
        );
        let h = Histogram::<u64>::new(2).unwrap();
        let mut d = Agg::Dist {
            scale: 1.0,
            histogram: Box::new(h.clone()),
        };
        assert_eq!(
            d.merge(&Agg::Dist {
                scale: 1000.0,
                histogram: Box::new(h)
            }),
            Err(MergeConflict::ScaleMismatch)
        );
    }
}
