//! Series keys and in-period values.
//!
//! An open period keys its series by descriptor bytes (see `aggregate`); the [`SeriesKey`]
//! with its dimensions is built when the period closes.

use tally::wire::Unit;

use super::sparse::SparseHistogram;
use crate::model::{Dimensions, Text};

/// A series of a closing period: name, recorded unit and every dimension it is published
/// with (`ServiceName`, `Environment`, the configured extra dimensions and its labels), sorted
/// by name. The strings are shared (interned while the period closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey {
    /// Metric name.
    pub name: Text,
    /// Unit as recorded by the SDK (before conversion).
    pub unit: Unit,
    /// Dimensions sorted by name (then value).
    pub dimensions: Dimensions,
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
