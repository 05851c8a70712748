//! The alarm and dashboard sections of the agent's TOML configuration.
//!
//! ```toml
//! [alarm_management]
//! name_prefix = "tally-{service}-{environment}-"   # default "tally-"
//! prune = false            # delete managed alarms that left the config (default false)
//! apply_on_start = false   # run `alarms apply` when the agent starts (default false)
//!
//! [alarm_defaults]
//! period_secs = 60
//! evaluation_periods = 3
//! alarm_actions = ["arn:aws:sns:us-east-1:123456789012:oncall"]
//!
//! [[alarms]]
//! name = "high-error-rate"
//! template = "error_rate"      # custom | error_rate | latency | no_traffic
//! threshold = 5.0
//!
//! [[alarms]]
//! name = "slow-p99"
//! template = "latency"         # ResponseTime, p99, GreaterThanThreshold
//! threshold = 500.0            # in the unit the agent publishes (Milliseconds by default)
//!
//! [dashboard]
//! routes = ["/orders/{id}", "/health"]
//! ```
//!
//! Every section is `#[serde(default, deny_unknown_fields)]`: a typo is an error that names the
//! key, and a missing section takes the documented defaults.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The alarm sections of the configuration: the `[[alarms]]` list, `[alarm_defaults]` and
/// `[alarm_management]` (all three are top-level keys of the agent's TOML file).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmsConfig {
    /// The declared alarms (`[[alarms]]`).
    pub alarms: Vec<AlarmSpec>,
    /// Values every alarm takes unless it sets its own (`[alarm_defaults]`).
    pub alarm_defaults: AlarmDefaults,
    /// How alarms are recognised, reconciled and paced (`[alarm_management]`).
    pub alarm_management: AlarmManagement,
}

/// `[alarm_defaults]`: values an `[[alarms]]` entry inherits when it does not set them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmDefaults {
    /// Seconds per evaluated datapoint: 10, 30 or a multiple of 60 (default 60).
    pub period_secs: u32,
    /// Datapoints evaluated (default 3).
    pub evaluation_periods: u32,
    /// Datapoints out of `evaluation_periods` that must breach ("M of N"); unset means all.
    pub datapoints_to_alarm: Option<u32>,
    /// What a missing datapoint counts as (default `missing`, CloudWatch's own default).
    pub treat_missing_data: TreatMissingData,
    /// Actions (SNS topic ARNs, ...) run on the transition to ALARM (at most 5).
    pub alarm_actions: Vec<String>,
    /// Actions run on the transition to OK (at most 5).
    pub ok_actions: Vec<String>,
    /// Actions run on the transition to INSUFFICIENT_DATA (at most 5).
    pub insufficient_data_actions: Vec<String>,
}

impl Default for AlarmDefaults {
    fn default() -> Self {
        Self {
            period_secs: 60,
            evaluation_periods: 3,
            datapoints_to_alarm: None,
            treat_missing_data: TreatMissingData::Missing,
            alarm_actions: Vec::new(),
            ok_actions: Vec::new(),
            insufficient_data_actions: Vec::new(),
        }
    }
}

/// `[alarm_management]`: ownership, pruning and pacing of the managed alarms.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmManagement {
    /// Every managed alarm's name starts with this prefix, and every alarm whose name starts
    /// with it is considered managed (it may be pruned). `{service}` and `{environment}` are
    /// replaced by the agent's values; give each service its own prefix when `prune` is on.
    /// Default `tally-`. Must not be empty.
    pub name_prefix: String,
    /// Delete managed alarms that are no longer declared (default false: they are kept and
    /// listed as `keep` by `alarms plan`).
    pub prune: bool,
    /// Run `alarms apply` when the agent starts (default false).
    pub apply_on_start: bool,
    /// Tag created alarms `tally:managed-by = tally-agent` (default false). Ownership never
    /// depends on tags (CloudWatch ignores tags on updates); off by default because LocalStack
    /// 4.13 answers every DescribeAlarms that would list a tagged alarm with a 500 over the
    /// CBOR protocol. Turn it on against real CloudWatch to find tally's alarms by tag.
    pub tag_alarms: bool,
    /// PutMetricAlarm calls per second (CloudWatch's default quota: 3).
    pub put_alarm_tps: f64,
    /// DeleteAlarms calls per second (CloudWatch's default quota: 3).
    pub delete_alarms_tps: f64,
    /// Attempts per call when CloudWatch answers `Throttling` (default 5).
    pub max_attempts: u32,
    /// First backoff after a throttled call, doubled each retry, with jitter (default 200 ms).
    pub backoff_base_ms: u64,
}

impl Default for AlarmManagement {
    fn default() -> Self {
        Self {
            name_prefix: "tally-".to_owned(),
            prune: false,
            apply_on_start: false,
            tag_alarms: false,
            put_alarm_tps: 3.0,
            delete_alarms_tps: 3.0,
            max_attempts: 5,
            backoff_base_ms: 200,
        }
    }
}

impl AlarmManagement {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name_prefix.is_empty() {
            p.push(
                "[alarm_management] name_prefix is empty: every alarm in the account would count \
                 as managed (and be deleted with prune = true); set a prefix such as \"tally-\""
                    .to_owned(),
            );
        }
        for (key, tps) in [
            ("put_alarm_tps", self.put_alarm_tps),
            ("delete_alarms_tps", self.delete_alarms_tps),
        ] {
            if !(tps.is_finite() && tps > 0.0 && tps <= 100.0) {
                p.push(format!(
                    "[alarm_management] {key} = {tps}: set a rate above 0 and at most 100 calls per \
                     second (CloudWatch's default quota is 3)"
                ));
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 20 {
            p.push(format!(
                "[alarm_management] max_attempts = {}: set 1 to 20",
                self.max_attempts
            ));
        }
        if self.backoff_base_ms > 60_000 {
            p.push(format!(
                "[alarm_management] backoff_base_ms = {}: set at most 60000",
                self.backoff_base_ms
            ));
        }
        p
    }

    /// The prefix with `{service}` and `{environment}` replaced.
    pub fn resolved_prefix(&self, service: &str, environment: &str) -> String {
        self.name_prefix
            .replace("{service}", service)
            .replace("{environment}", environment)
    }
}

/// Ready-made alarm shapes; each fills in the fields an `[[alarms]]` entry leaves unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Nothing filled in: `metric`, `statistic`, `threshold` and `comparison` are required.
    #[default]
    Custom,
    /// Error rate in percent: the derived `ErrorRate` metric (Average), or with
    /// `source = "metric_math"` the expression `100 * ErrorCount / RequestCount` over Sums.
    /// Default threshold 5, GreaterThanThreshold.
    ErrorRate,
    /// A latency percentile: `ResponseTime` at `p99`, GreaterThanThreshold; `threshold` is
    /// required (in the published unit, Milliseconds by default).
    Latency,
    /// No traffic: `RequestCount` Sum < 1, with missing data treated as breaching (a service
    /// that stops receiving requests publishes nothing).
    NoTraffic,
}

/// Where the `error_rate` template reads the rate from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorRateSource {
    /// The agent's derived `ErrorRate` metric (one alarm metric).
    #[default]
    Derived,
    /// Metric math `100 * FILL(errors, 0) / requests` over `ErrorCount` and `RequestCount`
    /// Sums: weighted by traffic, two alarm metrics.
    MetricMath,
}

/// One `[[alarms]]` entry. Unset fields come from the template, then `[alarm_defaults]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmSpec {
    /// Alarm name without the managed prefix (required).
    pub name: String,
    /// Template filling unset fields (default `custom`).
    pub template: Template,
    /// Source of the `error_rate` template (default `derived`).
    pub source: ErrorRateSource,
    /// AlarmDescription (at most 1024 characters); a generated one when unset.
    pub description: Option<String>,
    /// Metric name, as published by the agent.
    pub metric: Option<String>,
    /// `Average`, `Sum`, `SampleCount`, `Minimum`, `Maximum`, or a percentile such as `p99`.
    pub statistic: Option<StatisticSpec>,
    /// Threshold, in the unit the metric is published in.
    pub threshold: Option<f64>,
    /// Comparison of the statistic with the threshold.
    pub comparison: Option<Comparison>,
    /// Overrides `[alarm_defaults] period_secs`.
    pub period_secs: Option<u32>,
    /// Overrides `[alarm_defaults] evaluation_periods`.
    pub evaluation_periods: Option<u32>,
    /// Overrides `[alarm_defaults] datapoints_to_alarm`.
    pub datapoints_to_alarm: Option<u32>,
    /// Overrides the template's and `[alarm_defaults]` treat-missing-data.
    pub treat_missing_data: Option<TreatMissingData>,
    /// Dimensions besides ServiceName and Environment (which the agent adds itself), for
    /// example `{ Route = "/orders/{id}" }`. The resulting set must be one the agent publishes.
    pub dimensions: BTreeMap<String, String>,
    /// Overrides `[alarm_defaults] alarm_actions`.
    pub alarm_actions: Option<Vec<String>>,
    /// Overrides `[alarm_defaults] ok_actions`.
    pub ok_actions: Option<Vec<String>>,
    /// Overrides `[alarm_defaults] insufficient_data_actions`.
    pub insufficient_data_actions: Option<Vec<String>>,
}

/// A standard statistic or a percentile (CloudWatch `Statistic` / `ExtendedStatistic`).
#[derive(Debug, Clone, PartialEq)]
pub enum StatisticSpec {
    /// `SampleCount`, `Average`, `Sum`, `Minimum` or `Maximum`.
    Standard(Statistic),
    /// A percentile `pNN` or `pNN.NN` (0 < NN < 100 ... 100), sent as ExtendedStatistic.
    Percentile(String),
}

/// CloudWatch's standard statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Statistic {
    /// Number of samples.
    SampleCount,
    /// Mean.
    Average,
    /// Sum.
    Sum,
    /// Smallest value.
    Minimum,
    /// Largest value.
    Maximum,
}

impl Statistic {
    /// The CloudWatch spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::SampleCount => "SampleCount",
            Statistic::Average => "Average",
            Statistic::Sum => "Sum",
            Statistic::Minimum => "Minimum",
            Statistic::Maximum => "Maximum",
        }
    }
}

impl StatisticSpec {
    /// Parses `Average` (and the other standard names) or a percentile `p99` / `p99.9`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let standard = match s {
            "SampleCount" => Some(Statistic::SampleCount),
            "Average" => Some(Statistic::Average),
            "Sum" => Some(Statistic::Sum),
            "Minimum" => Some(Statistic::Minimum),
            "Maximum" => Some(Statistic::Maximum),
            _ => None,
        };
        if let Some(st) = standard {
            return Ok(StatisticSpec::Standard(st));
        }
        let bad = || {
            format!(
                "statistic {s:?} is neither SampleCount, Average, Sum, Minimum, Maximum \
                 nor a percentile such as p50, p99 or p99.9"
            )
        };
        let digits = s.strip_prefix('p').ok_or_else(bad)?;
        let well_formed = !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && !digits.starts_with('.')
            && !digits.ends_with('.')
            && digits.matches('.').count() <= 1
            && digits.split('.').nth(1).is_none_or(|frac| frac.len() <= 10);
        match digits.parse::<f64>() {
            Ok(v) if well_formed && (0.0..=100.0).contains(&v) => {
                Ok(StatisticSpec::Percentile(s.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for StatisticSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatisticSpec::Standard(s) => f.write_str(s.as_str()),
            StatisticSpec::Percentile(p) => f.write_str(p),
        }
    }
}

impl<'de> Deserialize<'de> for StatisticSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StatisticSpec::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for StatisticSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How the statistic is compared with the threshold (CloudWatch's spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Comparison {
    /// statistic >= threshold.
    GreaterThanOrEqualToThreshold,
    /// statistic > threshold.
    GreaterThanThreshold,
    /// statistic < threshold.
    LessThanThreshold,
    /// statistic <= threshold.
    LessThanOrEqualToThreshold,
}

impl Comparison {
    /// The CloudWatch spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::GreaterThanOrEqualToThreshold => "GreaterThanOrEqualToThreshold",
            Comparison::GreaterThanThreshold => "GreaterThanThreshold",
            Comparison::LessThanThreshold => "LessThanThreshold",
            Comparison::LessThanOrEqualToThreshold => "LessThanOrEqualToThreshold",
        }
    }
}

/// What a period without data counts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TreatMissingData {
    /// Counts as breaching the threshold.
    Breaching,
    /// Counts as within the threshold.
    NotBreaching,
    /// The alarm keeps its state.
    Ignore,
    /// CloudWatch's default: the alarm looks further back, then goes INSUFFICIENT_DATA.
    #[default]
    Missing,
}

impl TreatMissingData {
    /// The CloudWatch spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TreatMissingData::Breaching => "breaching",
            TreatMissingData::NotBreaching => "notBreaching",
            TreatMissingData::Ignore => "ignore",
            TreatMissingData::Missing => "missing",
        }
    }
}

/// `[dashboard]`: one CloudWatch dashboard per service and environment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Manage the dashboard with `alarms plan|apply` (default true).
    pub enabled: bool,
    /// Dashboard name; `{service}` and `{environment}` are replaced. Characters outside
    /// `A-Za-z0-9-_` become `-`. Default `tally-{service}-{environment}`.
    pub name: String,
    /// Routes drawn one line each in the per-route widgets, when the agent publishes a
    /// per-route rollup (the route is its only varying dimension). Empty (the default): every
    /// published series is drawn with a CloudWatch SEARCH over the published dimension set.
    pub routes: Vec<String>,
    /// Seconds per point in the widgets (default 60).
    pub period_secs: u32,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "tally-{service}-{environment}".to_owned(),
            routes: Vec::new(),
            period_secs: 60,
        }
    }
}

impl DashboardConfig {
    /// The dashboard name with placeholders replaced and invalid characters mapped to `-`.
    pub fn resolved_name(&self, service: &str, environment: &str) -> String {
        self.name
            .replace("{service}", service)
            .replace("{environment}", environment)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_parse_standard_names_and_percentiles_only() {
        assert_eq!(
            StatisticSpec::parse("Average"),
            Ok(StatisticSpec::Standard(Statistic::Average))
        );
        assert_eq!(
            StatisticSpec::parse("p99.9"),
            Ok(StatisticSpec::Percentile("p99.9".into()))
        );
        for bad in [
            "average", "p", "p101", "p9.", "p.5", "p9..9", "q99", "p-1", "",
        ] {
            let err = StatisticSpec::parse(bad).unwrap_err();
            assert!(err.contains("percentile such as p50"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_in_an_alarm_is_an_error_naming_the_key() {
        let err = toml::from_str::<AlarmsConfig>("[[alarms]]\nname = \"a\"\nthreshhold = 1.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("threshhold"), "{err}");
    }

    #[test]
    fn missing_sections_take_the_documented_defaults() {
        let c: AlarmsConfig = toml::from_str("").unwrap();
        assert_eq!(c.alarm_management.name_prefix, "tally-");
        assert!(!c.alarm_management.prune);
        assert!(!c.alarm_management.apply_on_start);
        assert_eq!(c.alarm_management.put_alarm_tps, 3.0);
        assert_eq!(c.alarm_defaults.period_secs, 60);
        let d: DashboardConfig = toml::from_str("").unwrap();
        assert_eq!(d.resolved_name("web app", "prod"), "tally-web-app-prod");
    }

    #[test]
    fn a_full_alarm_entry_parses_with_every_field() {
        let c: AlarmsConfig = toml::from_str(
            r#"
            [alarm_management]
            name_prefix = "x-{service}-"
            prune = true
            [[alarms]]
            name = "slow"
            template = "latency"
            statistic = "p99"
            threshold = 250.0
            comparison = "GreaterThanOrEqualToThreshold"
            treat_missing_data = "notBreaching"
            dimensions = { Route = "/a" }
            alarm_actions = ["arn:aws:sns:us-east-1:1:t"]
            "#,
        )
        .unwrap();
        let a = &c.alarms[0];
        assert_eq!(a.template, Template::Latency);
        assert_eq!(a.statistic, Some(StatisticSpec::Percentile("p99".into())));
        assert_eq!(a.treat_missing_data, Some(TreatMissingData::NotBreaching));
        assert_eq!(a.dimensions["Route"], "/a");
        assert_eq!(c.alarm_management.resolved_prefix("web", "prod"), "x-web-");
    }
}
