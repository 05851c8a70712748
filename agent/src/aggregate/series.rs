//! In-period values. An open period keys its series by descriptor bytes (see `aggregate`);
//! their published keys are built when the period closes.

use crate::model::sparse::{HistogramRefused, SparseHistogram};
use crate::stats::DropReason;

/// A series' value within an open period.
#[derive(Debug, Clone)]
pub enum Agg {
    /// Sum of counter deltas.
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
    /// A business event: its occurrences, and the distribution of the values of those that
    /// carried one (`Event::emit_value`), once any did. Published as a count while no
    /// occurrence carried a value, else as the distribution; occurrences without a value in
    /// a period that has values are counted as dropped (`event_without_value`) at close.
    Event {
        /// Occurrences merged, with or without a value.
        count: u64,
        /// Scale and merged values.
        values: Option<(f64, Box<SparseHistogram>)>,
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

impl From<HistogramRefused> for MergeConflict {
    fn from(_: HistogramRefused) -> Self {
        MergeConflict::Histogram
    }
}

impl MergeConflict {
    /// What the dropped samples count as.
    pub fn reason(self) -> DropReason {
        match self {
            MergeConflict::KindMismatch => DropReason::KindMismatch,
            MergeConflict::ScaleMismatch => DropReason::ScaleMismatch,
            MergeConflict::Histogram => DropReason::HistogramMerge,
        }
    }
}
