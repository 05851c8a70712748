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
