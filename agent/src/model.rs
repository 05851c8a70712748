//! What flows between the stages of the agent: aggregated metrics of one closed period.
//!
//! `aggregate` produces a [`PeriodData`] each time a wall-clock-aligned period closes; the
//! sinks (`publish` for CloudWatch, `sinks::stdout` for the local default) consume it. This
//! module is the contract between those stages.

use std::time::SystemTime;

use tally::wire::Unit;

use crate::aggregate::sparse::SparseHistogram;

/// The identity of one published metric: CloudWatch's custom-metric key minus the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricKey {
    /// Metric name (1..=255 characters).
    pub name: String,
    /// Unit the values are expressed in, after conversion (never `Unit::Nanoseconds`:
    /// durations are converted to the configured publish time unit).
    pub unit: Unit,
    /// Dimensions sorted by name, including `ServiceName` and `Environment`.
    pub dimensions: Vec<(String, String)>,
}

/// The aggregate of one metric over one period, merged across every process.
#[derive(Debug, Clone)]
pub enum AggregateValue {
    /// Sum of counter deltas (and of event counts without values).
    Counter(f64),
    /// Gauge statistics over the period.
    Gauge {
        /// Last value set (from the most recent batch).
        last: f64,
        /// Smallest value set.
        min: f64,
        /// Largest value set.
        max: f64,
        /// Number of updates.
        updates: u64,
    },
    /// A distribution. A stored integer `v` stands for the value `v / scale` in the key's unit.
    Distribution {
        /// Divisor from stored integers to unit values.
        scale: f64,
        /// The merged samples: the non-zero buckets of one HdrHistogram layout
        /// ([`SparseHistogram::to_histogram`] gives the dense `hdrhistogram::Histogram`).
        histogram: SparseHistogram,
    },
    /// A derived ratio or value computed by the agent (for example `ErrorRate`).
    Derived(f64),
}

impl AggregateValue {
    /// Number of samples this aggregate stands for (counter: its sum rounded; gauge: updates;
    /// distribution: sample count; derived: 1).
    pub fn samples(&self) -> u64 {
        match self {
            AggregateValue::Counter(v) => v.max(0.0).round() as u64,
            AggregateValue::Gauge { updates, .. } => *updates,
            AggregateValue::Distribution { histogram, .. } => histogram.len(),
            AggregateValue::Derived(_) => 1,
        }
    }
}

/// All metrics of one closed period, ready for a sink.
#[derive(Debug, Clone)]
pub struct PeriodData {
    /// CloudWatch namespace.
    pub namespace: String,
    /// Start of the period (aligned to the wall clock); the datums' timestamp.
    pub timestamp: SystemTime,
    /// Period length in seconds (1, 10, 30 or 60).
    pub period_secs: u32,
    /// CloudWatch StorageResolution: 1 for periods under 60 s, else 60.
    pub storage_resolution: i32,
    /// The metrics, sorted by key.
    pub metrics: Vec<(MetricKey, AggregateValue)>,
}

/// CloudWatch's `StandardUnit` name for a unit as published (`Count`, `Milliseconds`, ...).
///
/// `Unit::Nanoseconds` has no CloudWatch unit: the aggregator converts it to the configured
/// publish time unit first, so it maps to `None` here only as a safe fallback.
pub fn cloudwatch_unit(unit: Unit) -> &'static str {
    match unit {
        Unit::None | Unit::Nanoseconds => "None",
        Unit::Count => "Count",
        Unit::Microseconds => "Microseconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Seconds => "Seconds",
        Unit::Bytes => "Bytes",
        Unit::Percent => "Percent",
    }
}
