//! The `[aggregate]` section and the top-level `time_unit`: the series bound, rollups, derived
//! and declared metrics, and the unit durations are published in, each with its check.

use serde::Deserialize;
use tally::wire::Unit;

use crate::cloudwatch::{parse_unit, rules, DERIVED_UNITS};

/// Time unit durations are published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimeUnit {
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Milliseconds,
    /// Microseconds.
    Microseconds,
}

impl TimeUnit {
    /// The wire unit this publishes as.
    pub fn unit(self) -> Unit {
        match self {
            TimeUnit::Seconds => Unit::Seconds,
            TimeUnit::Milliseconds => Unit::Milliseconds,
            TimeUnit::Microseconds => Unit::Microseconds,
        }
    }

    /// Nanoseconds in one of this unit (the scale factor from ns).
    pub fn nanos(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1e9,
            TimeUnit::Milliseconds => 1e6,
            TimeUnit::Microseconds => 1e3,
        }
    }
}

/// `[aggregate]`: bounds, rollups, derived and declared metrics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateConfig {
    /// Most distinct series in one period (before rollups); samples of further series are
    /// dropped and counted (`reason="max_series"`). Default 100000.
    pub max_series: usize,
    /// Milliseconds a period stays open after its end for batches still in flight.
    /// Default: 2000, or half the period when that is shorter (500 for 1-second periods).
    pub grace_ms: Option<u64>,
    /// Most SDK processes whose sequence numbers are tracked. Default 10000.
    pub max_processes: usize,
    /// Seconds after which a silent process is forgotten. Default 3600.
    pub process_ttl_secs: u64,
    /// Include tally-tower's standard metrics in the catalogue. Default `true`.
    pub standard_metrics: bool,
    /// Extra dimension sets published by dropping dimensions. Default none.
    pub rollups: Vec<RollupConfig>,
    /// Metrics computed from others each period. Default: `ErrorRate`.
    pub derived: Vec<DerivedConfig>,
    /// Business metrics the service records, declared so alarms and dashboards can use them.
    pub metrics: Vec<DeclaredMetric>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            max_series: 100_000,
            grace_ms: None,
            max_processes: 10_000,
            process_ttl_secs: 3_600,
            standard_metrics: true,
            rollups: Vec::new(),
            derived: vec![DerivedConfig::error_rate()],
            metrics: Vec::new(),
        }
    }
}

/// `[[aggregate.rollups]]`: also publish each matching series without some dimensions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// Dimensions to drop (`["Route"]`).
    pub drop: Vec<String>,
    /// Metrics the rollup applies to; empty (default): every metric carrying one of `drop`.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// `[[aggregate.derived]]`: `multiplier * numerator / denominator` per period and dimension set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DerivedConfig {
    /// Published name (`ErrorRate`).
    pub name: String,
    /// Numerator metric (`ErrorCount`); missing in a dimension set counts as 0.
    pub numerator: String,
    /// Denominator metric (`RequestCount`); no value is published where it is 0 or missing.
    pub denominator: String,
    /// Factor applied to the ratio. Default 100.
    #[serde(default = "hundred")]
    pub multiplier: f64,
    /// Published unit. Default `Percent`.
    #[serde(default = "percent")]
    pub unit: String,
    /// Dimension sets containing any of these are skipped. Default `["StatusClass"]`
    /// (an error rate per status class is always 0 or 100).
    #[serde(default = "status_class")]
    pub exclude_dimensions: Vec<String>,
}

fn hundred() -> f64 {
    100.0
}
fn percent() -> String {
    "Percent".into()
}
fn status_class() -> Vec<String> {
    vec![tally::conventions::STATUS_CLASS.into()]
}

impl DerivedConfig {
    /// The standard `ErrorRate = 100 * ErrorCount / RequestCount`.
    pub fn error_rate() -> Self {
        use tally::conventions as c;
        DerivedConfig {
            name: c::ERROR_RATE.into(),
            numerator: c::ERROR_COUNT.into(),
            denominator: c::REQUEST_COUNT.into(),
            multiplier: 100.0,
            unit: percent(),
            exclude_dimensions: status_class(),
        }
    }
}

/// `[[aggregate.metrics]]`: a metric the service records, for the catalogue.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredMetric {
    /// Metric name.
    pub name: String,
    /// Unit as recorded: `Count` (default), `None`, `Nanoseconds` (published in `time_unit`),
    /// `Microseconds`, `Milliseconds`, `Seconds`, `Bytes`, `Percent`.
    #[serde(default = "count_unit")]
    pub unit: String,
    /// Label names the service attaches.
    #[serde(default)]
    pub labels: Vec<String>,
}

fn count_unit() -> String {
    "Count".into()
}

// The rollup and derived-metric rules, used alike by the closer (`aggregate::close`), which
// computes what a period publishes, and the catalogue (`catalog.rs`), which lists it for the
// alarms and the dashboard: one definition, so the two cannot drift apart.

impl RollupConfig {
    /// Whether this rollup makes a rolled-up copy of metric `name` carrying the dimensions
    /// `dimensions`: the metric is among `metrics` (or `metrics` is empty) and carries at
    /// least one of the dimensions it drops, the agent's own (`[ecs]`, ServiceName, ...)
    /// included, so `drop = ["AvailabilityZone"]` gives an AZ-free set too.
    pub fn applies_to<'a>(
        &self,
        name: &str,
        mut dimensions: impl Iterator<Item = &'a str>,
    ) -> bool {
        (self.metrics.is_empty() || self.metrics.iter().any(|m| m == name))
            && dimensions.any(|d| self.drops(d))
    }

    /// Whether the rolled-up copy leaves out dimension `name`.
    pub fn drops(&self, name: &str) -> bool {
        self.drop.iter().any(|d| d == name)
    }
}

impl DerivedConfig {
    /// Whether a dimension set of the denominator is skipped (it carries one of
    /// `exclude_dimensions`).
    pub fn excludes<'a>(&self, mut dimensions: impl Iterator<Item = &'a str>) -> bool {
        dimensions.any(|d| self.exclude_dimensions.iter().any(|x| x == d))
    }

    /// The unit the derived metric is published in (`None` for a name tally has no unit for;
    /// the configuration check refuses those).
    pub fn published_unit(&self) -> Unit {
        parse_unit(&self.unit).unwrap_or(Unit::None)
    }
}

impl TimeUnit {
    /// The unit a metric recorded in `recorded` is published in: durations (recorded in
    /// nanoseconds) in this unit, everything else as recorded.
    pub fn published(self, recorded: Unit) -> Unit {
        if recorded == Unit::Nanoseconds {
            self.unit()
        } else {
            recorded
        }
    }
}

/// The most series a period can hold: it numbers them with u32 positions (see
/// `aggregate::Group`).
pub const MAX_SERIES_LIMIT: usize = u32::MAX as usize - 1;

impl AggregateConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (key, v, min) in [
            ("aggregate.max_series", self.max_series as u64, 1),
            ("aggregate.max_processes", self.max_processes as u64, 1),
            ("aggregate.process_ttl_secs", self.process_ttl_secs, 1),
        ] {
            if v < min {
                errs.push(format!("{key} = {v} is too small: use at least {min}"));
            }
        }
        if self.max_series > MAX_SERIES_LIMIT {
            errs.push(format!(
                "aggregate.max_series = {} is too large: use at most {MAX_SERIES_LIMIT} (and size the container's memory for it: about 150 bytes a counter series)",
                self.max_series
            ));
        }
        for (n, r) in self.rollups.iter().enumerate() {
            if r.drop.is_empty() {
                errs.push(format!("aggregate.rollups[{n}].drop is empty: list the dimensions to drop, e.g. [\"Route\"]"));
            }
            for d in &r.drop {
                if d == tally::conventions::SERVICE_NAME || d == tally::conventions::ENVIRONMENT {
                    errs.push(format!("aggregate.rollups[{n}].drop names {d}, a global dimension every metric keeps"));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (n, d) in self.derived.iter().enumerate() {
            if let Err(e) = rules::check_metric_name(&d.name) {
                errs.push(format!("aggregate.derived[{n}].name: {e}"));
            }
            if !names.insert(d.name.clone()) {
                errs.push(format!(
                    "aggregate.derived[{n}].name {:?} is declared twice",
                    d.name
                ));
            }
            if !d.multiplier.is_finite() {
                errs.push(format!(
                    "aggregate.derived[{n}].multiplier must be a finite number"
                ));
            }
            if !DERIVED_UNITS.contains(&d.unit.as_str()) {
                errs.push(format!(
                    "aggregate.derived[{n}].unit = {:?} is not a unit tally publishes derived metrics in: use one of {}",
                    d.unit,
                    DERIVED_UNITS.join(", ")
                ));
            }
        }
        for (n, m) in self.metrics.iter().enumerate() {
            if let Err(e) = rules::check_metric_name(&m.name) {
                errs.push(format!("aggregate.metrics[{n}].name: {e}"));
            }
            if parse_unit(&m.unit).is_none() {
                errs.push(format!(
                    "aggregate.metrics[{n}].unit = {:?} is unknown: use Count, None, Nanoseconds, Microseconds, Milliseconds, Seconds, Bytes or Percent",
                    m.unit
                ));
            }
            for l in &m.labels {
                if let Err(e) = rules::check_dimension_name(l) {
                    errs.push(format!("aggregate.metrics[{n}].labels: {e}"));
                }
            }
        }
        errs
    }
}
