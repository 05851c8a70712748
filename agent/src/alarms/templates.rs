//! Ready-made alarm shapes: error rate, latency percentile and no traffic.
//!
//! A template fills the fields an `[[alarms]]` entry leaves unset; `[alarm_defaults]` fills
//! what is still unset after that. The result is a [`Shape`]: everything about the alarm
//! except where its metrics live (namespace and dimensions come from the catalogue, in
//! `desired`).

use tally::conventions::{ERROR_COUNT, ERROR_RATE, REQUEST_COUNT, RESPONSE_TIME};

use super::config::{
    AlarmDefaults, AlarmSpec, Comparison, ErrorRateSource, Statistic, StatisticSpec, Template,
    TreatMissingData,
};

/// Default threshold of the `error_rate` template, in percent.
pub const DEFAULT_ERROR_RATE_PERCENT: f64 = 5.0;
/// Default percentile of the `latency` template.
pub const DEFAULT_LATENCY_PERCENTILE: &str = "p99";

/// What the alarm watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Watch {
    /// One metric and one statistic.
    Metric {
        /// Metric name.
        metric: String,
        /// Statistic or percentile.
        statistic: StatisticSpec,
    },
    /// `100 * FILL(errors, 0) / requests` over the Sums of ErrorCount and RequestCount.
    ErrorRateMath,
}

/// An alarm with its template and defaults applied, before its dimensions are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// What is watched.
    pub watch: Watch,
    /// Threshold.
    pub threshold: f64,
    /// Comparison.
    pub comparison: Comparison,
    /// Period in seconds.
    pub period_secs: u32,
    /// Evaluation periods.
    pub evaluation_periods: u32,
    /// M of N.
    pub datapoints_to_alarm: Option<u32>,
    /// Treat missing data.
    pub treat_missing_data: TreatMissingData,
    /// Description (explicit or generated).
    pub description: String,
    /// ALARM actions.
    pub alarm_actions: Vec<String>,
    /// OK actions.
    pub ok_actions: Vec<String>,
    /// INSUFFICIENT_DATA actions.
    pub insufficient_data_actions: Vec<String>,
}

/// Applies the template and the defaults. Errors name the alarm and the key to set.
pub fn shape(spec: &AlarmSpec, defaults: &AlarmDefaults) -> Result<Shape, Vec<String>> {
    let name = &spec.name;
    let mut problems = Vec::new();
    let need = |what: &str, problems: &mut Vec<String>| {
        problems.push(format!(
            "alarm {name:?}: set `{what}` (the {:?} template has no default for it)",
            spec.template
        ));
    };

    let (watch, threshold, comparison, treat_missing) = match spec.template {
        Template::Custom => {
            if spec.metric.is_none() {
                need("metric", &mut problems);
            }
            if spec.statistic.is_none() {
                need("statistic", &mut problems);
            }
            if spec.threshold.is_none() {
                need("threshold", &mut problems);
            }
            if spec.comparison.is_none() {
                need("comparison", &mut problems);
            }
            let watch = Watch::Metric {
                metric: spec.metric.clone().unwrap_or_default(),
                statistic: spec
                    .statistic
                    .clone()
                    .unwrap_or(StatisticSpec::Standard(Statistic::Average)),
            };
            (
                watch,
                spec.threshold,
                spec.comparison,
                defaults.treat_missing_data,
            )
        }
        Template::ErrorRate => {
            let watch = match spec.source {
                ErrorRateSource::Derived => Watch::Metric {
                    metric: spec.metric.clone().unwrap_or_else(|| ERROR_RATE.to_owned()),
                    statistic: spec
                        .statistic
                        .clone()
                        .unwrap_or(StatisticSpec::Standard(Statistic::Average)),
                },
                ErrorRateSource::MetricMath => {
                    if spec.metric.is_some() || spec.statistic.is_some() {
                        problems.push(format!(
                            "alarm {name:?}: `metric` and `statistic` cannot be set with \
                             source = \"metric_math\" (the expression reads the Sums of \
                             {ERROR_COUNT} and {REQUEST_COUNT}); remove them"
                        ));
                    }
                    Watch::ErrorRateMath
                }
            };
            (
                watch,
                Some(spec.threshold.unwrap_or(DEFAULT_ERROR_RATE_PERCENT)),
                Some(spec.comparison.unwrap_or(Comparison::GreaterThanThreshold)),
                defaults.treat_missing_data,
            )
        }
        Template::Latency => {
            if spec.threshold.is_none() {
                need("threshold", &mut problems);
            }
            let watch = Watch::Metric {
                metric: spec
                    .metric
                    .clone()
                    .unwrap_or_else(|| RESPONSE_TIME.to_owned()),
                statistic: spec.statistic.clone().unwrap_or_else(|| {
                    StatisticSpec::Percentile(DEFAULT_LATENCY_PERCENTILE.to_owned())
                }),
            };
            (
                watch,
                spec.threshold,
                Some(spec.comparison.unwrap_or(Comparison::GreaterThanThreshold)),
                defaults.treat_missing_data,
            )
        }
        Template::NoTraffic => {
            let watch = Watch::Metric {
                metric: spec
                    .metric
                    .clone()
                    .unwrap_or_else(|| REQUEST_COUNT.to_owned()),
                statistic: spec
                    .statistic
                    .clone()
                    .unwrap_or(StatisticSpec::Standard(Statistic::Sum)),
            };
            (
                watch,
                Some(spec.threshold.unwrap_or(1.0)),
                Some(spec.comparison.unwrap_or(Comparison::LessThanThreshold)),
                // A service without requests publishes no RequestCount at all: only
                // "breaching" turns that silence into an alarm.
                TreatMissingData::Breaching,
            )
        }
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(threshold), Some(comparison)) = (threshold, comparison) else {
        // Every branch above either sets both or records a problem.
        return Err(vec![format!(
            "alarm {name:?}: set `threshold` and `comparison`"
        )]);
    };
    let period_secs = spec.period_secs.unwrap_or(defaults.period_secs);
    let evaluation_periods = spec
        .evaluation_periods
        .unwrap_or(defaults.evaluation_periods);
    let description = spec.description.clone().unwrap_or_else(|| describe(&watch));
    Ok(Shape {
        watch,
        threshold,
        comparison,
        period_secs,
        evaluation_periods,
        datapoints_to_alarm: spec.datapoints_to_alarm.or(defaults.datapoints_to_alarm),
        treat_missing_data: spec.treat_missing_data.unwrap_or(treat_missing),
        description,
        alarm_actions: spec
            .alarm_actions
            .clone()
            .unwrap_or_else(|| defaults.alarm_actions.clone()),
        ok_actions: spec
            .ok_actions
            .clone()
            .unwrap_or_else(|| defaults.ok_actions.clone()),
        insufficient_data_actions: spec
            .insufficient_data_actions
            .clone()
            .unwrap_or_else(|| defaults.insufficient_data_actions.clone()),
    })
}

/// The generated description names what is watched but no value that can be edited, so that
/// changing a threshold changes one field, not two.
fn describe(watch: &Watch) -> String {
    let what = match watch {
        Watch::Metric { metric, statistic } => format!("{statistic} of {metric}"),
        Watch::ErrorRateMath => format!("100 * {ERROR_COUNT} / {REQUEST_COUNT}"),
    };
    format!(
        "Watches {what} as published by tally-agent. Managed by `tally-agent alarms apply`: \
         edit the agent configuration, not this alarm."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: Template) -> AlarmSpec {
        AlarmSpec {
            name: "a".into(),
            template,
            ..AlarmSpec::default()
        }
    }

    #[test]
    fn the_no_traffic_template_alarms_on_silence() {
        let s = shape(&spec(Template::NoTraffic), &AlarmDefaults::default()).unwrap();
        assert_eq!(
            s.watch,
            Watch::Metric {
                metric: REQUEST_COUNT.into(),
                statistic: StatisticSpec::Standard(Statistic::Sum)
            }
        );
        assert_eq!(s.threshold, 1.0);
        assert_eq!(s.comparison, Comparison::LessThanThreshold);
        assert_eq!(s.treat_missing_data, TreatMissingData::Breaching);
    }

    #[test]
    fn the_latency_template_watches_p99_and_requires_a_threshold() {
        let err = shape(&spec(Template::Latency), &AlarmDefaults::default()).unwrap_err();
        assert!(err[0].contains("set `threshold`"), "{err:?}");
        let mut s = spec(Template::Latency);
        s.threshold = Some(300.0);
        let s = shape(&s, &AlarmDefaults::default()).unwrap();
        assert_eq!(
            s.watch,
            Watch::Metric {
                metric: RESPONSE_TIME.into(),
                statistic: StatisticSpec::Percentile("p99".into())
            }
        );
    }

    #[test]
    fn the_error_rate_template_defaults_to_five_percent_of_the_derived_metric() {
        let s = shape(&spec(Template::ErrorRate), &AlarmDefaults::default()).unwrap();
        assert_eq!(s.threshold, 5.0);
        assert_eq!(s.comparison, Comparison::GreaterThanThreshold);
        assert!(matches!(s.watch, Watch::Metric { ref metric, .. } if metric == ERROR_RATE));
        let mut m = spec(Template::ErrorRate);
        m.source = ErrorRateSource::MetricMath;
        assert_eq!(
            shape(&m, &AlarmDefaults::default()).unwrap().watch,
            Watch::ErrorRateMath
        );
    }

    #[test]
    fn a_custom_alarm_lists_every_missing_key() {
        let err = shape(&spec(Template::Custom), &AlarmDefaults::default()).unwrap_err();
        let all = err.join("\n");
        for key in ["metric", "statistic", "threshold", "comparison"] {
            assert!(all.contains(&format!("`{key}`")), "{all}");
        }
    }

    #[test]
    fn alarm_fields_override_defaults_and_defaults_fill_the_rest() {
        let defaults = AlarmDefaults {
            alarm_actions: vec!["arn:aws:sns:us-east-1:1:d".into()],
            evaluation_periods: 4,
            ..AlarmDefaults::default()
        };
        let mut s = spec(Template::ErrorRate);
        s.period_secs = Some(300);
        s.ok_actions = Some(vec!["arn:aws:sns:us-east-1:1:ok".into()]);
        let sh = shape(&s, &defaults).unwrap();
        assert_eq!(sh.period_secs, 300);
        assert_eq!(sh.evaluation_periods, 4);
        assert_eq!(sh.alarm_actions, defaults.alarm_actions);
        assert_eq!(
            sh.ok_actions,
            vec!["arn:aws:sns:us-east-1:1:ok".to_string()]
        );
    }
}
