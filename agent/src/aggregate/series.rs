//! Series keys and in-period values.
//!
//! An open period keys its series by descriptor bytes (see `aggregate`); the owned
//! [`SeriesKey`] is built when the period closes.

use tally::wire::Unit;

use super::sparse::SparseHistogram;

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
        /// Merged samples, non-zero buckets only (boxed: most series are counters, and this
        /// keeps every slot small).
        histogram: Box<SparseHistogram>,
    },
}

/// Why a value could not be merged into a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeConflict {
    /// Counter merged into a histogram or the like.
    KindMismatch,
    /// Histograms of different scale under one key.
    ScaleMismatch,
    /// HdrHistogram refuses the histogram's layout, or its counts could not be read.
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
                histogram.add(h2, &mut Vec::new());
            }
            _ => return Err(MergeConflict::KindMismatch),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;

    fn dist(h: &Histogram<u64>) -> Agg {
        Agg::Dist {
            scale: 1.0,
            histogram: Box::new(SparseHistogram::from(h)),
        }
    }

    #[test]
    fn histograms_of_different_precision_and_range_merge_into_one_exact_count() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        a.record(5).unwrap();
        let mut b = Histogram::<u64>::new_with_bounds(1, 1 << 40, 2).unwrap();
        b.record_n(1 << 35, 3).unwrap();
        let mut x = dist(&a);
        x.merge(&dist(&b)).unwrap();
        let Agg::Dist { histogram, .. } = x else {
            unreachable!()
        };
        assert_eq!(histogram.len(), 4);
        // The layout is the first histogram's (3 digits), both values in their own bucket.
        assert_eq!(histogram.significant_digits(), 3);
        assert_eq!(
            histogram.buckets(),
            &[(5, 1), (a.lowest_equivalent(1 << 35), 3)]
        );
        assert_eq!(histogram.max(), a.highest_equivalent(1 << 35));
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
        let mut d = dist(&h);
        let Agg::Dist { histogram, .. } = dist(&h) else {
            unreachable!()
        };
        assert_eq!(
            d.merge(&Agg::Dist {
                scale: 1000.0,
                histogram
            }),
            Err(MergeConflict::ScaleMismatch)
        );
    }
}
