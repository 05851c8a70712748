//! What flows between the stages of the agent: aggregated metrics of one closed period, and the
//! sparse histogram ([`sparse`]) both the aggregator (which merges into it) and the sinks
//! (which read it) hold.
//!
//! `aggregate` produces a [`PeriodData`] each time a wall-clock-aligned period closes; the
//! sinks (`publish` for CloudWatch, `sinks::stdout` for the local default) consume it. This
//! module is the contract between those stages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tally::wire::Unit;

pub mod sparse;

pub use sparse::SparseHistogram;

/// A string shared by every metric that holds it: a period of 100k series repeats a few dozen
/// dimension names and values, and each is stored once (see [`Interner`]). A thin pointer
/// (8 bytes, the length lives with the string): a dimension pair is 16 bytes, half what two
/// `Arc<str>` take, and a period holds one list of about eight pairs a series.
pub type Text = arcstr::ArcStr;

/// A metric's dimensions, sorted by name: shared by the key and every datum built from it.
pub type Dimensions = Arc<[(Text, Text)]>;

/// The identity of one published metric: CloudWatch's custom-metric key minus the namespace.
///
/// Cloning one costs two reference counts: the name, the dimension list and every string in it
/// are shared with the closed period they came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricKey {
    /// Metric name (1..=255 characters).
    pub name: Text,
    /// Unit the values are expressed in, after conversion (never `Unit::Nanoseconds`:
    /// durations are converted to the configured publish time unit).
    pub unit: Unit,
    /// Dimensions sorted by name, including `ServiceName` and `Environment`.
    pub dimensions: Dimensions,
}

impl MetricKey {
    /// A key from borrowed strings; sorts the dimensions by name (then value).
    pub fn new(name: &str, unit: Unit, dimensions: &[(&str, &str)]) -> Self {
        let mut dims: Vec<(Text, Text)> = dimensions
            .iter()
            .map(|&(n, v)| (Text::from(n), Text::from(v)))
            .collect();
        dims.sort_unstable();
        MetricKey {
            name: name.into(),
            unit,
            dimensions: dims.into(),
        }
    }

    /// The dimensions as owned strings (for comparisons in tests and tools).
    pub fn dimension_pairs(&self) -> Vec<(String, String)> {
        self.dimensions
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
}

/// Stores each distinct string and dimension list once; [`Interner::get`] and
/// [`Interner::dimensions`] hand out shared copies.
///
/// Used while a period closes: its series' names, dimension names and values repeat (every
/// series carries `ServiceName` and `Environment`, many share a route or a method), so a
/// period stores each distinct string once instead of a dozen small allocations a series. The
/// metrics of one route (`RequestCount`, `ErrorCount`, `ResponseTime`...) share one
/// dimension list.
#[derive(Debug, Default)]
pub struct Interner {
    set: HashSet<Text>,
    dimensions: HashSet<Dimensions>,
}

impl Interner {
    /// The shared copy of `s`, stored on first use.
    pub fn get(&mut self, s: &str) -> Text {
        if let Some(t) = self.set.get(s) {
            return t.clone();
        }
        let t: Text = s.into();
        self.set.insert(t.clone());
        t
    }

    /// The shared copy of the dimension list `dims` (sorted by the caller), stored on first
    /// use.
    pub fn dimensions(&mut self, dims: &[(Text, Text)]) -> Dimensions {
        if let Some(d) = self.dimensions.get(dims) {
            return d.clone();
        }
        let d: Dimensions = dims.into();
        self.dimensions.insert(d.clone());
        d
    }
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
        /// Boxed, as in the open period: most metrics are counters, and this keeps every
        /// entry of a closed period small.
        histogram: Box<SparseHistogram>,
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

    /// How many CloudWatch datums this value is published as with at most `max_values`
    /// values a datum (as `publish::datum::make_datums` makes them): one, or for a
    /// distribution one per `max_values` distinct values (none when it is empty).
    pub fn datums(&self, max_values: usize) -> u64 {
        match self {
            AggregateValue::Distribution { histogram, .. } => {
                histogram.buckets().len().div_ceil(max_values.max(1)) as u64
            }
            _ => 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interner_hands_out_one_allocation_per_distinct_string() {
        let mut strings = Interner::default();
        let a = strings.get("Route");
        let b = strings.get(&String::from("Route"));
        let c = strings.get("Method");
        assert!(Text::ptr_eq(&a, &b));
        assert!(!Text::ptr_eq(&a, &c));
        assert_eq!((&*a, &*c), ("Route", "Method"));
    }

    #[test]
    fn a_key_built_from_borrowed_strings_sorts_its_dimensions() {
        let k = MetricKey::new("M", Unit::Count, &[("Route", "/a"), ("Method", "GET")]);
        assert_eq!(
            k.dimension_pairs(),
            vec![
                ("Method".to_owned(), "GET".to_owned()),
                ("Route".to_owned(), "/a".to_owned())
            ]
        );
    }
}
