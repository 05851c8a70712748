//! The per-revision rollup: a few service-level series once more, with the task-definition
//! revision (or any value that marks a deployment) as one more dimension, so that a canary
//! gate can compare the new revision with the old one (`tally-agent canary`).
//!
//! It applies to the base series only (each contributes once), keeps `ServiceName`,
//! `Environment` and the configured `keep` dimensions, drops every other label and the `[ecs]`
//! dimensions, and adds `(dimension, value)`. With the defaults (`RequestCount`, `ErrorCount`,
//! `ResponseTime`, nothing kept) a deployment adds four series per revision (the derived
//! `ErrorRate` follows its denominator), not one per route: configured through `[canary]`
//! ([`crate::canary::CanaryConfig`]).

use tally::conventions::{ENVIRONMENT, SERVICE_NAME};

use crate::model::{AggregateValue, Interner, MetricKey, Text};

/// Gauge: the per-revision rollup's metrics in the last closed period (shown on `/cost`).
pub const LAST_PERIOD_METRICS: &str = "tally_agent_last_period_revision_metrics";

/// What the per-revision rollup publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRollup {
    /// Dimension name (`TaskDefinitionRevision`).
    pub dimension: String,
    /// This agent's value of it (`42`).
    pub value: String,
    /// Label dimensions kept besides `ServiceName` and `Environment` (default none).
    pub keep: Vec<String>,
    /// Metrics rolled up (default `RequestCount`, `ErrorCount`, `ResponseTime`).
    pub metrics: Vec<String>,
}

/// The per-revision series of `base` (the period's base series: no rollup, no derived
/// metric), unmerged: the caller merges equal keys.
pub fn rollup(
    r: &RevisionRollup,
    base: &[(MetricKey, AggregateValue)],
    strings: &mut Interner,
) -> Vec<(MetricKey, AggregateValue)> {
    let dimension = strings.get(&r.dimension);
    let value = strings.get(&r.value);
    let mut out = Vec::new();
    let mut dims: Vec<(Text, Text)> = Vec::new();
    for (key, v) in base {
        if !r.metrics.iter().any(|m| **m == *key.name) {
            continue;
        }
        dims.clear();
        dims.extend(
            key.dimensions
                .iter()
                .filter(|(d, _)| {
                    **d == *SERVICE_NAME || **d == *ENVIRONMENT || r.keep.iter().any(|k| **k == **d)
                })
                .cloned(),
        );
        dims.push((dimension.clone(), value.clone()));
        dims.sort_unstable();
        out.push((
            MetricKey {
                name: key.name.clone(),
                unit: key.unit,
                dimensions: strings.dimensions(&dims),
            },
            v.clone(),
        ));
    }
    out
}

/// How many of `metrics` carry the revision dimension `dimension`.
pub fn count(dimension: &str, metrics: &[(MetricKey, AggregateValue)]) -> usize {
    metrics
        .iter()
        .filter(|(k, _)| k.dimensions.iter().any(|(d, _)| **d == *dimension))
        .count()
}
