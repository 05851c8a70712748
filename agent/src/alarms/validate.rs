//! Checks an alarm configuration against CloudWatch's rules and against the catalogue of what
//! the agent publishes (`tally-agent validate` runs this).
//!
//! The one rule that matters most: an alarm may only watch a metric, with a dimension set, that
//! the agent publishes. An alarm on anything else never receives a datapoint and sits in
//! INSUFFICIENT_DATA forever, which is how hand-written alarms usually fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::catalog::Catalog;

use super::config::DashboardConfig;
use super::desired::{desired_alarms, Target};
use super::templates::Shape;
use super::AlarmsConfig;

/// Every problem found in the alarm configuration, each naming the alarm and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the alarm configuration:\n  - {}", problems.len(), problems.join("\n  - "))]
pub struct AlarmConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Largest number of actions per state CloudWatch accepts.
pub const MAX_ACTIONS: usize = 5;
/// Longest AlarmName.
pub const MAX_ALARM_NAME: usize = 255;
/// Longest AlarmDescription.
pub const MAX_DESCRIPTION: usize = 1024;
/// Largest Period x EvaluationPeriods, in seconds (one day).
pub const MAX_EVALUATION_SECS: u64 = 86_400;

/// Validates the alarm and dashboard sections against CloudWatch's rules and the catalogue.
pub fn validate(
    config: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
) -> Result<(), AlarmConfigError> {
    let mut problems = match desired_alarms(config, target) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems,
    };
    problems.extend(check_dashboard(dashboard, target));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AlarmConfigError { problems })
    }
}

fn check_dashboard(d: &DashboardConfig, target: &Target<'_>) -> Vec<String> {
    let mut p = Vec::new();
    if !d.enabled {
        return p;
    }
    let name = d.resolved_name(target.service, target.environment);
    if name.is_empty() || name.len() > 255 {
        p.push(format!(
            "[dashboard] name resolves to {name:?}: set 1 to 255 characters"
        ));
    }
    if !(d.period_secs == 1 || d.period_secs == 5 || d.period_secs == 10 || d.period_secs == 30)
        && (d.period_secs == 0 || !d.period_secs.is_multiple_of(60))
    {
        p.push(format!(
            "[dashboard] period_secs = {}: set 1, 5, 10, 30 or a multiple of 60",
            d.period_secs
        ));
    }
    p
}

/// CloudWatch's rules for one alarm's fields, plus the agent's publishing period.
pub fn check_shape(alarm: &str, full_name: &str, shape: &Shape, agent_period: u32) -> Vec<String> {
    let mut p = Vec::new();
    if full_name.is_empty() || full_name.chars().count() > MAX_ALARM_NAME {
        p.push(format!(
            "alarm {alarm:?}: the full name {full_name:?} must have 1 to {MAX_ALARM_NAME} \
             characters (prefix included); shorten `name` or [alarm_management] name_prefix"
        ));
    }
    if full_name.chars().any(char::is_control) {
        p.push(format!(
            "alarm {alarm:?}: remove control characters from `name`"
        ));
    }
    let period = shape.period_secs;
    if !(period == 10 || period == 30 || (period > 0 && period.is_multiple_of(60))) {
        p.push(format!(
            "alarm {alarm:?}: period_secs = {period}: CloudWatch accepts 10, 30 or a multiple \
             of 60"
        ));
    } else if agent_period > 0 && !period.is_multiple_of(agent_period) {
        p.push(format!(
            "alarm {alarm:?}: period_secs = {period} is not a multiple of the agent's \
             period_secs = {agent_period}: some alarm periods would hold no datapoint; set \
             period_secs to a multiple of {agent_period}"
        ));
    }
    if shape.evaluation_periods == 0 {
        p.push(format!(
            "alarm {alarm:?}: evaluation_periods must be at least 1"
        ));
    } else if u64::from(period) * u64::from(shape.evaluation_periods) > MAX_EVALUATION_SECS {
        p.push(format!(
            "alarm {alarm:?}: period_secs x evaluation_periods = {} s exceeds CloudWatch's \
             {MAX_EVALUATION_SECS} s (one day); lower one of them",
            u64::from(period) * u64::from(shape.evaluation_periods)
        ));
    }
    if let Some(m) = shape.datapoints_to_alarm {
        if m == 0 || m > shape.evaluation_periods {
            p.push(format!(
                "alarm {alarm:?}: datapoints_to_alarm = {m} must be between 1 and \
                 evaluation_periods = {}",
                shape.evaluation_periods
            ));
        }
    }
    if !shape.threshold.is_finite() {
        p.push(format!(
            "alarm {alarm:?}: threshold must be a finite number"
        ));
    }
    if shape.description.chars().count() > MAX_DESCRIPTION {
        p.push(format!(
            "alarm {alarm:?}: description has more than {MAX_DESCRIPTION} characters; shorten it"
        ));
    }
    for (key, actions) in [
        ("alarm_actions", &shape.alarm_actions),
        ("ok_actions", &shape.ok_actions),
        (
            "insufficient_data_actions",
            &shape.insufficient_data_actions,
        ),
    ] {
        if actions.len() > MAX_ACTIONS {
            p.push(format!(
                "alarm {alarm:?}: {key} has {} entries; CloudWatch accepts at most {MAX_ACTIONS}",
                actions.len()
            ));
        }
        for a in actions {
            if !a.starts_with("arn:") {
                p.push(format!(
                    "alarm {alarm:?}: {key} entry {a:?} is not an ARN (for example \
                     arn:aws:sns:us-east-1:123456789012:oncall)"
                ));
            }
        }
    }
    p
}

fn show_set(names: impl IntoIterator<Item = impl fmt::Display>) -> String {
    let v: Vec<String> = names.into_iter().map(|n| n.to_string()).collect();
    format!("{{{}}}", v.join(", "))
}

fn show_catalog_set(set: &[(String, Option<String>)]) -> String {
    show_set(set.iter().map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k.clone(),
    }))
}

/// Finds the dimension set the agent publishes `metric` with that matches `requested`
/// (names with values): the smallest published set that contains every requested dimension
/// (with the same value where the catalogue fixes one) and whose other dimensions all have
/// values fixed by configuration (ECS task dimensions, for instance), which are filled in.
///
/// The error names the alarm, the metric and what is published instead.
pub fn resolve_dimensions(
    alarm: &str,
    catalog: &Catalog,
    metric: &str,
    requested: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, String> {
    let Some(m) = catalog.metric(metric) else {
        let published: BTreeSet<&str> = catalog.metrics.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "alarm {alarm:?}: metric {metric:?} is never published by this agent (namespace \
             {:?}); it publishes {}. Fix the alarm's `metric`, or declare the metric in the \
             agent configuration",
            catalog.namespace,
            show_set(published)
        ));
    };
    // A value CloudWatch would refuse makes PutMetricAlarm fail part way through an apply,
    // after the alarms before it were written: refused here with the rest of the problems.
    for (k, v) in requested {
        if let Err(e) = crate::cloudwatch::rules::check_dimension_value(v) {
            return Err(format!(
                "alarm {alarm:?}: dimension {k} = {v:?}: {e}; give the value exactly as the \
                 agent publishes it"
            ));
        }
    }
    let mut best: Option<Vec<(String, String)>> = None;
    for set in &m.dimension_sets {
        let covers = requested.iter().all(|(k, v)| {
            set.iter()
                .any(|(sk, fixed)| sk == k && fixed.as_ref().is_none_or(|f| f == v))
        });
        let rest_fixed = set
            .iter()
            .all(|(sk, fixed)| requested.contains_key(sk) || fixed.is_some());
        if covers && rest_fixed {
            let mut dims: Vec<(String, String)> = set
                .iter()
                .map(|(k, fixed)| {
                    let v = requested.get(k).or(fixed.as_ref()).cloned();
                    (k.clone(), v.unwrap_or_default())
                })
                .collect();
            dims.sort();
            if best.as_ref().is_none_or(|b| dims.len() < b.len()) {
                best = Some(dims);
            }
        }
    }
    if let Some(dims) = best {
        if catalog.publishes(metric, &dims) {
            return Ok(dims);
        }
    }
    let wanted = show_set(requested.iter().map(|(k, v)| format!("{k}={v}")));
    let sets: Vec<String> = m
        .dimension_sets
        .iter()
        .map(|s| show_catalog_set(s))
        .collect();
    let missing: BTreeSet<&str> = m
        .dimension_sets
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(k, fixed)| fixed.is_none() && !requested.contains_key(k))
        .map(|(k, _)| k.as_str())
        .collect();
    let hint = if missing.is_empty() {
        "check the dimension names and values in the alarm's `dimensions`".to_owned()
    } else {
        format!(
            "add a value for {} to the alarm's `dimensions` (e.g. dimensions = {{ {} = \"...\" }}), \
             or configure a rollup that publishes {metric} with {}",
            show_set(&missing),
            missing.iter().next().copied().unwrap_or_default(),
            show_set(requested.keys())
        )
    };
    Err(format!(
        "alarm {alarm:?}: metric {metric:?} is never published with dimensions {wanted}; the \
         agent publishes it with {}. {hint}",
        sets.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::config::AlarmManagement;
    use crate::catalog::CatalogMetric;

    fn catalog() -> Catalog {
        let fixed = |k: &str, v: &str| (k.to_owned(), Some(v.to_owned()));
        let var = |k: &str| (k.to_owned(), None);
        Catalog {
            namespace: "ECS/WebApp".into(),
            metrics: vec![CatalogMetric {
                name: "ResponseTime".into(),
                unit: "Milliseconds".into(),
                dimension_sets: vec![
                    vec![
                        fixed("Environment", "prod"),
                        var("Route"),
                        fixed("ServiceName", "web"),
                    ],
                    vec![
                        fixed("ClusterName", "c1"),
                        fixed("Environment", "prod"),
                        fixed("ServiceName", "web"),
                    ],
                ],
            }],
        }
    }

    fn req(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fixed_dimensions_of_a_published_set_are_filled_in() {
        let dims = resolve_dimensions(
            "a",
            &catalog(),
            "ResponseTime",
            &req(&[("Environment", "prod"), ("ServiceName", "web")]),
        )
        .unwrap();
        assert_eq!(
            dims,
            vec![
                ("ClusterName".to_owned(), "c1".to_owned()),
                ("Environment".to_owned(), "prod".to_owned()),
                ("ServiceName".to_owned(), "web".to_owned()),
            ]
        );
    }

    #[test]
    fn a_varying_dimension_must_be_given_a_value() {
        let route = req(&[
            ("Environment", "prod"),
            ("Route", "/a"),
            ("ServiceName", "web"),
        ]);
        let dims = resolve_dimensions("a", &catalog(), "ResponseTime", &route).unwrap();
        assert!(dims.contains(&("Route".to_owned(), "/a".to_owned())));
    }

    #[test]
    fn a_dimension_value_cloudwatch_would_refuse_is_refused_before_any_alarm_is_written() {
        let long = "r".repeat(1025);
        for bad in ["", "caf\u{e9}", long.as_str()] {
            let route = req(&[
                ("Environment", "prod"),
                ("Route", bad),
                ("ServiceName", "web"),
            ]);
            let err = resolve_dimensions("a", &catalog(), "ResponseTime", &route).unwrap_err();
            assert!(
                err.contains("dimension Route") && err.contains("alarm \"a\""),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unpublished_metric_is_rejected_naming_alarm_and_metric() {
        let err = resolve_dimensions("slow", &catalog(), "Latency", &req(&[])).unwrap_err();
        assert!(err.contains("alarm \"slow\""), "{err}");
        assert!(
            err.contains("metric \"Latency\" is never published"),
            "{err}"
        );
        assert!(err.contains("ResponseTime"), "{err}");
    }

    #[test]
    fn an_unpublished_dimension_set_is_rejected_naming_the_dimension() {
        let err = resolve_dimensions(
            "slow",
            &catalog(),
            "ResponseTime",
            &req(&[("Environment", "staging"), ("ServiceName", "web")]),
        )
        .unwrap_err();
        assert!(err.contains("alarm \"slow\""), "{err}");
        assert!(err.contains("Environment=staging"), "{err}");
        assert!(err.contains("{Route}"), "{err}");
        let err = resolve_dimensions(
            "slow",
            &catalog(),
            "ResponseTime",
            &req(&[
                ("Host", "h1"),
                ("Environment", "prod"),
                ("ServiceName", "web"),
            ]),
        )
        .unwrap_err();
        assert!(err.contains("Host=h1"), "{err}");
    }

    #[test]
    fn an_empty_prefix_is_rejected_because_prune_would_delete_every_alarm() {
        let m = AlarmManagement {
            name_prefix: String::new(),
            ..AlarmManagement::default()
        };
        assert!(m.problems()[0].contains("name_prefix is empty"));
        assert!(AlarmManagement::default().problems().is_empty());
    }
}
