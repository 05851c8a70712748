//! `[canary]`: what the agent publishes per revision, and the gate's thresholds.

use serde::{Deserialize, Serialize};
use tally::conventions::{ENVIRONMENT, ERROR_COUNT, REQUEST_COUNT, RESPONSE_TIME, SERVICE_NAME};

use crate::aggregate::revision::RevisionRollup;
use crate::cloudwatch::rules;

/// The default dimension: the ECS task definition revision, from the task metadata.
pub const DEFAULT_DIMENSION: &str = "TaskDefinitionRevision";

/// `[canary]`.
///
/// ```toml
/// [canary]
/// publish_revision = true          # the per-revision service-level series (default false)
/// # revision = "42"                # default: the ECS task metadata's Revision
/// min_requests = 200               # per side, before any verdict
/// max_error_rate_percent = 5.0     # the playbook's absolute limits
/// max_latency_ms = 1000.0
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryConfig {
    /// Publish `metrics` once more per service with `dimension = revision` (default false).
    pub publish_revision: bool,
    /// The dimension that tells deployments apart (default `TaskDefinitionRevision`).
    pub dimension: String,
    /// This agent's value of it. Empty (default): the `Revision` of the ECS task metadata,
    /// read at start; set it (`TALLY_CANARY__REVISION`) outside ECS or to mark a deployment
    /// some other way (an image tag, a git hash). Overrides are taken as written
    /// (`TALLY_CANARY__REVISION=042` is `042`); in the file, `revision = 42` is `"42"`.
    #[serde(deserialize_with = "string_or_integer")]
    pub revision: String,
    /// Label dimensions kept in the per-revision series besides `ServiceName` and
    /// `Environment` (default none: one series per metric and revision; `["Route"]` makes it
    /// one per route and revision, and the gate then compares one route: `--dimension`).
    pub keep: Vec<String>,
    /// Metrics published per revision (default `RequestCount`, `ErrorCount`,
    /// `ResponseTime`; `ErrorRate` is derived from the first two).
    pub metrics: Vec<String>,
    /// The gate's window in seconds, ending now (default 600, the playbook's ten minutes; a
    /// multiple of 60 up to 86,400).
    pub window_secs: u32,
    /// Requests each side needs in the window before any verdict (default 200).
    pub min_requests: u64,
    /// Absolute limit: the canary's error rate, percent (default 5, the playbook's).
    pub max_error_rate_percent: f64,
    /// Relative limit: percentage points the canary's error rate may exceed the baseline's
    /// (default 1). Only a difference that is also significant (one-sided two-proportion
    /// z-test at 99%) counts.
    pub max_error_rate_increase: f64,
    /// Compare latency (default true). LocalStack cannot answer percentiles: the
    /// integration tests turn this off.
    pub check_latency: bool,
    /// The latency statistic (default `p99`).
    pub latency_statistic: String,
    /// Absolute limit: the canary's latency statistic in milliseconds (default 1000, the
    /// playbook's one second).
    pub max_latency_ms: f64,
    /// Relative limit: the canary's latency may be at most this multiple of the baseline's
    /// (default 1.5)...
    pub max_latency_ratio: f64,
    /// ...unless it is within this many milliseconds of it (default 50): a 2 ms p99 that
    /// becomes 4 ms is not a regression worth a rollback.
    pub latency_slack_ms: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            publish_revision: false,
            dimension: DEFAULT_DIMENSION.to_owned(),
            revision: String::new(),
            keep: Vec::new(),
            metrics: vec![
                REQUEST_COUNT.to_owned(),
                ERROR_COUNT.to_owned(),
                RESPONSE_TIME.to_owned(),
            ],
            window_secs: 600,
            min_requests: 200,
            max_error_rate_percent: 5.0,
            max_error_rate_increase: 1.0,
            check_latency: true,
            latency_statistic: "p99".to_owned(),
            max_latency_ms: 1000.0,
            max_latency_ratio: 1.5,
            latency_slack_ms: 50.0,
        }
    }
}

/// A revision is a string in the task metadata, but `42` in TOML (or an environment
/// variable, whose value is read as TOML) is an integer: take either.
fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Number(n) => n.to_string(),
    })
}

impl CanaryConfig {
    /// The per-revision rollup the aggregator applies: `None` when `publish_revision` is off
    /// or the revision is not known (yet).
    pub fn rollup(&self) -> Option<RevisionRollup> {
        (self.publish_revision && !self.revision.is_empty()).then(|| RevisionRollup {
            dimension: self.dimension.clone(),
            value: self.revision.clone(),
            keep: self.keep.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Everything wrong with the section, each naming the key to change.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = rules::check_dimension_name(&self.dimension) {
            p.push(format!("canary.dimension: {e}"));
        }
        if [SERVICE_NAME, ENVIRONMENT].contains(&self.dimension.as_str())
            || self.keep.contains(&self.dimension)
        {
            p.push(format!(
                "canary.dimension = {:?} is already a dimension of the series: choose another \
                 name (default {DEFAULT_DIMENSION})",
                self.dimension
            ));
        }
        if !self.revision.is_empty() {
            if let Err(e) = rules::check_dimension_value(&self.revision) {
                p.push(format!("canary.revision: {e}"));
            }
        }
        if self.publish_revision && self.metrics.is_empty() {
            p.push(
                "canary.metrics is empty while publish_revision = true: list the metrics to \
                 publish per revision (default RequestCount, ErrorCount, ResponseTime)"
                    .into(),
            );
        }
        if self.window_secs == 0
            || !self.window_secs.is_multiple_of(60)
            || self.window_secs > 86_400
        {
            p.push(format!(
                "canary.window_secs = {} must be a multiple of 60 between 60 and 86400 (one \
                 GetMetricData period covers the whole window)",
                self.window_secs
            ));
        }
        if self.min_requests == 0 {
            p.push("canary.min_requests = 0 would give verdicts on no traffic: use at least 1 (default 200)".into());
        }
        for (key, v) in [
            ("max_error_rate_percent", self.max_error_rate_percent),
            ("max_error_rate_increase", self.max_error_rate_increase),
            ("max_latency_ms", self.max_latency_ms),
            ("latency_slack_ms", self.latency_slack_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(format!("canary.{key} = {v} must be a finite number >= 0"));
            }
        }
        if !(self.max_latency_ratio.is_finite() && self.max_latency_ratio >= 1.0) {
            p.push(format!(
                "canary.max_latency_ratio = {} must be a finite number >= 1 (1.5: 50% slower \
                 than the baseline)",
                self.max_latency_ratio
            ));
        }
        let stat = &self.latency_statistic;
        let percentile = stat
            .strip_prefix('p')
            .and_then(|d| d.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0 && v < 100.0);
        if !percentile && !["Average", "Maximum", "Minimum"].contains(&stat.as_str()) {
            p.push(format!(
                "canary.latency_statistic = {stat:?}: use a percentile such as p99 or p99.9, \
                 or Average, Minimum, Maximum"
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_publish_nothing_per_revision() {
        let c = CanaryConfig::default();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.rollup(), None);
        let on = CanaryConfig {
            publish_revision: true,
            ..c.clone()
        };
        assert_eq!(on.rollup(), None, "no revision known yet");
        let known = CanaryConfig {
            revision: "42".into(),
            ..on
        };
        let r = known.rollup().unwrap();
        assert_eq!(
            (r.dimension.as_str(), r.value.as_str()),
            ("TaskDefinitionRevision", "42")
        );
    }

    #[test]
    fn a_numeric_revision_is_taken_as_its_digits() {
        let c: CanaryConfig = toml::from_str("revision = 42").unwrap();
        assert_eq!(c.revision, "42");
        let c: CanaryConfig = toml::from_str("revision = \"v1.2\"").unwrap();
        assert_eq!(c.revision, "v1.2");
        assert!(toml::from_str::<CanaryConfig>("revision = 4.2").is_err());
    }

    #[test]
    fn bad_values_are_reported_naming_the_key() {
        let c = CanaryConfig {
            dimension: "ServiceName".into(),
            window_secs: 90,
            min_requests: 0,
            max_latency_ratio: 0.5,
            latency_statistic: "p100".into(),
            max_error_rate_percent: f64::NAN,
            ..CanaryConfig::default()
        };
        let p = c.problems().join("\n");
        for key in [
            "canary.dimension",
            "canary.window_secs = 90",
            "canary.min_requests = 0",
            "canary.max_latency_ratio = 0.5",
            "canary.latency_statistic",
            "canary.max_error_rate_percent",
        ] {
            assert!(p.contains(key), "{key} in {p}");
        }
    }
}
