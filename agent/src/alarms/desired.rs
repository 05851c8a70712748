//! Alarms resolved into complete PutMetricAlarm inputs, and the same shape read back from
//! DescribeAlarms, so that desired and existing alarms compare field by field.
//!
//! Namespace and dimensions come from the [`Target`]: the namespace, service and environment
//! the publisher uses, and the [`Catalog`] of what it publishes. An alarm therefore watches
//! exactly the series the agent writes.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricAlarm, MetricDataQuery, MetricStat, Statistic, Tag,
};
use serde::Serialize;
use tally::conventions::{ENVIRONMENT, ERROR_COUNT, REQUEST_COUNT, SERVICE_NAME};

use crate::catalog::Catalog;

use super::config::StatisticSpec;
use super::templates::{shape, Watch};
use super::validate::{check_shape, resolve_dimensions, AlarmConfigError};
use super::AlarmsConfig;

/// Where the agent publishes: the values the publisher itself uses.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// CloudWatch namespace (must equal `catalog.namespace`).
    pub namespace: &'a str,
    /// Value of the ServiceName dimension.
    pub service: &'a str,
    /// Value of the Environment dimension.
    pub environment: &'a str,
    /// The agent's publishing period in seconds; alarm periods must be multiples of it.
    pub period_secs: u32,
    /// Every metric identity the agent publishes.
    pub catalog: &'a Catalog,
}

/// A statistic as CloudWatch stores it on an alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AlarmStat {
    /// `Statistic`.
    Standard(String),
    /// `ExtendedStatistic` (percentiles).
    Extended(String),
}

/// One metric, fully identified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricId {
    /// Namespace.
    pub namespace: String,
    /// Metric name.
    pub name: String,
    /// Dimensions sorted by name.
    pub dimensions: Vec<(String, String)>,
}

/// One MetricDataQuery of a metric-math alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Query {
    /// Query id (starts with a lowercase letter).
    pub id: String,
    /// Metric and statistic, for a metric query.
    pub metric: Option<(MetricId, String, i32)>,
    /// Expression, for an expression query.
    pub expression: Option<String>,
    /// Label.
    pub label: Option<String>,
    /// Whether this query is the alarm's value (exactly one is).
    pub return_data: bool,
}

/// What the alarm evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AlarmTarget {
    /// A single metric.
    Metric {
        /// The metric.
        metric: MetricId,
        /// Statistic or percentile.
        stat: AlarmStat,
        /// Period in seconds.
        period: i32,
        /// Unit filter (tally never sets one; kept to notice alarms that have one).
        unit: Option<String>,
    },
    /// Metric math over several queries.
    Math {
        /// The queries, in order.
        queries: Vec<Query>,
    },
}

/// An alarm in normal form: what PutMetricAlarm writes and DescribeAlarms reads back.
/// Defaults CloudWatch fills in are made explicit so that equal alarms compare equal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmDefinition {
    /// AlarmName (managed prefix included).
    pub name: String,
    /// AlarmDescription.
    pub description: String,
    /// What is evaluated.
    pub target: AlarmTarget,
    /// Threshold.
    pub threshold: f64,
    /// ComparisonOperator.
    pub comparison: String,
    /// EvaluationPeriods.
    pub evaluation_periods: i32,
    /// DatapointsToAlarm (EvaluationPeriods when unset).
    pub datapoints_to_alarm: i32,
    /// TreatMissingData (`missing` when unset).
    pub treat_missing_data: String,
    /// ActionsEnabled.
    pub actions_enabled: bool,
    /// AlarmActions, sorted.
    pub alarm_actions: Vec<String>,
    /// OKActions, sorted.
    pub ok_actions: Vec<String>,
    /// InsufficientDataActions, sorted.
    pub insufficient_data_actions: Vec<String>,
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Resolves every `[[alarms]]` entry. All problems are reported at once.
pub fn desired_alarms(
    config: &AlarmsConfig,
    target: &Target<'_>,
) -> Result<Vec<AlarmDefinition>, AlarmConfigError> {
    let mut problems = config.alarm_management.problems();
    if target.namespace != target.catalog.namespace {
        problems.push(format!(
            "the alarms' namespace {:?} differs from the catalogue's {:?}: build both from the \
             same configuration (`namespace`)",
            target.namespace, target.catalog.namespace
        ));
    }
    let prefix = config
        .alarm_management
        .resolved_prefix(target.service, target.environment);
    let mut out = Vec::with_capacity(config.alarms.len());
    let mut seen = BTreeMap::new();
    for (i, spec) in config.alarms.iter().enumerate() {
        if spec.name.trim().is_empty() {
            problems.push(format!(
                "[[alarms]] entry #{} has no `name`: give every alarm a name",
                i + 1
            ));
            continue;
        }
        if let Some(first) = seen.insert(spec.name.clone(), i) {
            problems.push(format!(
                "alarm {:?} is declared twice ([[alarms]] entries #{} and #{}): rename one",
                spec.name,
                first + 1,
                i + 1
            ));
            continue;
        }
        let sh = match shape(spec, &config.alarm_defaults) {
            Ok(s) => s,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        let full_name = format!("{prefix}{}", spec.name);
        let field_problems = check_shape(&spec.name, &full_name, &sh, target.period_secs);
        let mut requested = BTreeMap::new();
        requested.insert(SERVICE_NAME.to_owned(), target.service.to_owned());
        requested.insert(ENVIRONMENT.to_owned(), target.environment.to_owned());
        for (k, v) in &spec.dimensions {
            if k == SERVICE_NAME || k == ENVIRONMENT {
                problems.push(format!(
                    "alarm {:?}: remove {k} from `dimensions`: the agent sets it from its own \
                     `service` / `environment`",
                    spec.name
                ));
            }
            requested.insert(k.clone(), v.clone());
        }
        let period = sh.period_secs as i32;
        let resolve = |metric: &str| {
            resolve_dimensions(&spec.name, target.catalog, metric, &requested).map(|dims| {
                MetricId {
                    namespace: target.namespace.to_owned(),
                    name: metric.to_owned(),
                    dimensions: dims,
                }
            })
        };
        let alarm_target = match &sh.watch {
            Watch::Metric { metric, statistic } => match resolve(metric) {
                Ok(m) => Some(AlarmTarget::Metric {
                    metric: m,
                    stat: match statistic {
                        StatisticSpec::Standard(s) => AlarmStat::Standard(s.as_str().to_owned()),
                        StatisticSpec::Percentile(p) => AlarmStat::Extended(p.clone()),
                    },
                    period,
                    unit: None,
                }),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            Watch::ErrorRateMath => match (resolve(ERROR_COUNT), resolve(REQUEST_COUNT)) {
                (Ok(errors), Ok(requests)) => Some(error_rate_math(errors, requests, period)),
                (e, r) => {
                    problems.extend(e.err());
                    problems.extend(r.err());
                    None
                }
            },
        };
        problems.extend(field_problems);
        if let Some(t) = alarm_target {
            out.push(AlarmDefinition {
                name: full_name,
                description: sh.description,
                target: t,
                threshold: sh.threshold,
                comparison: sh.comparison.as_str().to_owned(),
                evaluation_periods: sh.evaluation_periods as i32,
                datapoints_to_alarm: sh.datapoints_to_alarm.unwrap_or(sh.evaluation_periods) as i32,
                treat_missing_data: sh.treat_missing_data.as_str().to_owned(),
                actions_enabled: true,
                alarm_actions: sorted(sh.alarm_actions),
                ok_actions: sorted(sh.ok_actions),
                insufficient_data_actions: sorted(sh.insufficient_data_actions),
            });
        }
    }
    if problems.is_empty() {
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    } else {
        Err(AlarmConfigError { problems })
    }
}

/// The metric-math error rate: `100 * FILL(errors, 0) / requests`. FILL keeps the rate at 0
/// in periods where no request failed (the agent publishes no ErrorCount datum then).
fn error_rate_math(errors: MetricId, requests: MetricId, period: i32) -> AlarmTarget {
    AlarmTarget::Math {
        queries: vec![
            Query {
                id: "errors".into(),
                metric: Some((errors, "Sum".into(), period)),
                expression: None,
                label: None,
                return_data: false,
            },
            Query {
                id: "requests".into(),
                metric: Some((requests, "Sum".into(), period)),
                expression: None,
                label: None,
                return_data: false,
            },
            Query {
                id: "error_rate".into(),
                metric: None,
                expression: Some("100 * FILL(errors, 0) / requests".into()),
                label: Some("Error rate (%)".into()),
                return_data: true,
            },
        ],
    }
}

fn dims_of(d: &[Dimension]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = d
        .iter()
        .map(|d| {
            (
                d.name().unwrap_or_default().to_owned(),
                d.value().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn sdk_dims(d: &[(String, String)]) -> Vec<Dimension> {
    d.iter()
        .map(|(k, v)| Dimension::builder().name(k).value(v).build())
        .collect()
}

impl AlarmDefinition {
    /// Reads an alarm returned by DescribeAlarms into normal form.
    pub fn from_metric_alarm(a: &MetricAlarm) -> Self {
        let evaluation_periods = a.evaluation_periods().unwrap_or(0);
        let target = if a.metrics().is_empty() {
            let stat = match (a.statistic(), a.extended_statistic()) {
                (_, Some(e)) => AlarmStat::Extended(e.to_owned()),
                (Some(s), None) => AlarmStat::Standard(s.as_str().to_owned()),
                (None, None) => AlarmStat::Standard(String::new()),
            };
            AlarmTarget::Metric {
                metric: MetricId {
                    namespace: a.namespace().unwrap_or_default().to_owned(),
                    name: a.metric_name().unwrap_or_default().to_owned(),
                    dimensions: dims_of(a.dimensions()),
                },
                stat,
                period: a.period().unwrap_or(0),
                unit: a.unit().map(|u| u.as_str().to_owned()),
            }
        } else {
            AlarmTarget::Math {
                queries: a
                    .metrics()
                    .iter()
                    .map(|q| Query {
                        id: q.id().unwrap_or_default().to_owned(),
                        metric: q.metric_stat().map(|ms| {
                            let m = ms.metric();
                            (
                                MetricId {
                                    namespace: m
                                        .and_then(Metric::namespace)
                                        .unwrap_or_default()
                                        .to_owned(),
                                    name: m
                                        .and_then(Metric::metric_name)
                                        .unwrap_or_default()
                                        .to_owned(),
                                    dimensions: dims_of(m.map(Metric::dimensions).unwrap_or(&[])),
                                },
                                ms.stat().unwrap_or_default().to_owned(),
                                ms.period().unwrap_or(0),
                            )
                        }),
                        expression: q.expression().map(str::to_owned),
                        label: q.label().map(str::to_owned),
                        // CloudWatch's default for an alarm query is true.
                        return_data: q.return_data().unwrap_or(true),
                    })
                    .collect(),
            }
        };
        AlarmDefinition {
            name: a.alarm_name().unwrap_or_default().to_owned(),
            description: a.alarm_description().unwrap_or_default().to_owned(),
            target,
            threshold: a.threshold().unwrap_or(f64::NAN),
            comparison: a
                .comparison_operator()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            evaluation_periods,
            datapoints_to_alarm: a.datapoints_to_alarm().unwrap_or(evaluation_periods),
            treat_missing_data: a.treat_missing_data().unwrap_or("missing").to_owned(),
            actions_enabled: a.actions_enabled().unwrap_or(true),
            alarm_actions: sorted(a.alarm_actions().to_vec()),
            ok_actions: sorted(a.ok_actions().to_vec()),
            insufficient_data_actions: sorted(a.insufficient_data_actions().to_vec()),
        }
    }

    /// The names of the fields that differ from `other` (empty when the alarms are the same).
    pub fn changed_fields(&self, other: &AlarmDefinition) -> Vec<&'static str> {
        let mut f = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                f.push(name);
            }
        };
        check("description", self.description == other.description);
        match (&self.target, &other.target) {
            (
                AlarmTarget::Metric {
                    metric: m1,
                    stat: s1,
                    period: p1,
                    unit: u1,
                },
                AlarmTarget::Metric {
                    metric: m2,
                    stat: s2,
                    period: p2,
                    unit: u2,
                },
            ) => {
                check("namespace", m1.namespace == m2.namespace);
                check("metric", m1.name == m2.name);
                check("dimensions", m1.dimensions == m2.dimensions);
                check("statistic", s1 == s2);
                check("period", p1 == p2);
                check("unit", u1 == u2);
            }
            (AlarmTarget::Math { queries: q1 }, AlarmTarget::Math { queries: q2 }) => {
                check("metrics", q1 == q2);
            }
            _ => check("metrics", false),
        }
        // Bitwise: thresholds round-trip exactly through CBOR; NaN (absent) never matches.
        check("threshold", self.threshold == other.threshold);
        check("comparison", self.comparison == other.comparison);
        check(
            "evaluation_periods",
            self.evaluation_periods == other.evaluation_periods,
        );
        check(
            "datapoints_to_alarm",
            self.datapoints_to_alarm == other.datapoints_to_alarm,
        );
        check(
            "treat_missing_data",
            self.treat_missing_data == other.treat_missing_data,
        );
        check(
            "actions_enabled",
            self.actions_enabled == other.actions_enabled,
        );
        check("alarm_actions", self.alarm_actions == other.alarm_actions);
        check("ok_actions", self.ok_actions == other.ok_actions);
        check(
            "insufficient_data_actions",
            self.insufficient_data_actions == other.insufficient_data_actions,
        );
        f
    }

    /// Metrics this alarm is billed for (a metric-math alarm: each metric it reads).
    pub fn alarm_metrics(&self) -> usize {
        match &self.target {
            AlarmTarget::Metric { .. } => 1,
            AlarmTarget::Math { queries } => queries.iter().filter(|q| q.metric.is_some()).count(),
        }
    }

    /// Whether the alarm is high resolution (period under 60 s), billed at the higher rate.
    pub fn high_resolution(&self) -> bool {
        match &self.target {
            AlarmTarget::Metric { period, .. } => *period < 60,
            AlarmTarget::Math { queries } => queries
                .iter()
                .any(|q| q.metric.as_ref().is_some_and(|(_, _, p)| *p < 60)),
        }
    }

    /// Whether every metric this alarm watches is published by an agent of `target`: in its
    /// namespace, with its `ServiceName` and `Environment` (and at least one metric). Only
    /// such alarms are pruned: a name prefix alone cannot tell `tally-web-prod-` from the
    /// start of `tally-web-prod-eu-`, nor one service's alarms from another's under one
    /// shared prefix.
    pub fn watches_only(&self, target: &Target<'_>) -> bool {
        let ours = |m: &MetricId| {
            m.namespace == target.namespace
                && m.dimensions
                    .iter()
                    .any(|(k, v)| k == SERVICE_NAME && v == target.service)
                && m.dimensions
                    .iter()
                    .any(|(k, v)| k == ENVIRONMENT && v == target.environment)
        };
        match &self.target {
            AlarmTarget::Metric { metric, .. } => ours(metric),
            AlarmTarget::Math { queries } => {
                let mut metrics = queries.iter().filter_map(|q| q.metric.as_ref()).peekable();
                metrics.peek().is_some() && metrics.all(|(m, _, _)| ours(m))
            }
        }
    }

    /// Estimated monthly price in USD (us-east-1: $0.10 per standard alarm metric, $0.30
    /// per high-resolution one).
    pub fn monthly_cost_usd(&self) -> f64 {
        let rate = if self.high_resolution() {
            HIGH_RES_ALARM_METRIC_USD
        } else {
            STANDARD_ALARM_METRIC_USD
        };
        rate * self.alarm_metrics() as f64
    }

    /// The PutMetricAlarm call that writes this alarm. `tags` go only on a create (CloudWatch
    /// ignores tags on an update).
    pub fn put_request(
        &self,
        client: &aws_sdk_cloudwatch::Client,
        tags: &[(String, String)],
    ) -> aws_sdk_cloudwatch::operation::put_metric_alarm::builders::PutMetricAlarmFluentBuilder
    {
        let mut b = client
            .put_metric_alarm()
            .alarm_name(&self.name)
            .alarm_description(&self.description)
            .threshold(self.threshold)
            .comparison_operator(ComparisonOperator::from(self.comparison.as_str()))
            .evaluation_periods(self.evaluation_periods)
            .datapoints_to_alarm(self.datapoints_to_alarm)
            .treat_missing_data(&self.treat_missing_data)
            .actions_enabled(self.actions_enabled)
            .set_alarm_actions(Some(self.alarm_actions.clone()))
            .set_ok_actions(Some(self.ok_actions.clone()))
            .set_insufficient_data_actions(Some(self.insufficient_data_actions.clone()));
        for (k, v) in tags {
            b = b.tags(Tag::builder().key(k).value(v).build());
        }
        match &self.target {
            AlarmTarget::Metric {
                metric,
                stat,
                period,
                unit,
            } => {
                b = b
                    .namespace(&metric.namespace)
                    .metric_name(&metric.name)
                    .set_dimensions(Some(sdk_dims(&metric.dimensions)))
                    .period(*period);
                b = match stat {
                    AlarmStat::Standard(s) => b.statistic(Statistic::from(s.as_str())),
                    AlarmStat::Extended(e) => b.extended_statistic(e),
                };
                if let Some(u) = unit {
                    b = b.unit(aws_sdk_cloudwatch::types::StandardUnit::from(u.as_str()));
                }
            }
            AlarmTarget::Math { queries } => {
                for q in queries {
                    let mut mq = MetricDataQuery::builder()
                        .id(&q.id)
                        .return_data(q.return_data)
                        .set_expression(q.expression.clone())
                        .set_label(q.label.clone());
                    if let Some((m, stat, period)) = &q.metric {
                        mq = mq.metric_stat(
                            MetricStat::builder()
                                .metric(
                                    Metric::builder()
                                        .namespace(&m.namespace)
                                        .metric_name(&m.name)
                                        .set_dimensions(Some(sdk_dims(&m.dimensions)))
                                        .build(),
                                )
                                .stat(stat)
                                .period(*period)
                                .build(),
                        );
                    }
                    b = b.metrics(mq.build());
                }
            }
        }
        b
    }
}

/// Monthly price of a standard-resolution alarm metric (us-east-1, USD).
pub const STANDARD_ALARM_METRIC_USD: f64 = 0.10;
/// Monthly price of a high-resolution alarm metric (us-east-1, USD).
pub const HIGH_RES_ALARM_METRIC_USD: f64 = 0.30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::config::{AlarmSpec, ErrorRateSource, Template};
    use crate::catalog::CatalogMetric;

    pub(crate) fn catalog() -> Catalog {
        let set = vec![
            ("Environment".to_owned(), Some("prod".to_owned())),
            ("ServiceName".to_owned(), Some("web".to_owned())),
        ];
        let m = |name: &str, unit: &str| CatalogMetric {
            name: name.into(),
            unit: unit.into(),
            dimension_sets: vec![set.clone()],
        };
        Catalog {
            namespace: "ECS/WebApp".into(),
            metrics: vec![
                m("RequestCount", "Count"),
                m("ErrorCount", "Count"),
                m("ErrorRate", "Percent"),
                m("ResponseTime", "Milliseconds"),
            ],
        }
    }

    fn target(c: &Catalog) -> Target<'_> {
        Target {
            namespace: "ECS/WebApp",
            service: "web",
            environment: "prod",
            period_secs: 60,
            catalog: c,
        }
    }

    fn config(alarms: Vec<AlarmSpec>) -> AlarmsConfig {
        AlarmsConfig {
            alarms,
            ..AlarmsConfig::default()
        }
    }

    #[test]
    fn an_alarm_watches_the_publishers_namespace_and_dimensions() {
        let c = catalog();
        let a = desired_alarms(
            &config(vec![AlarmSpec {
                name: "slow".into(),
                template: Template::Latency,
                threshold: Some(250.0),
                ..AlarmSpec::default()
            }]),
            &target(&c),
        )
        .unwrap();
        assert_eq!(a[0].name, "tally-slow");
        let AlarmTarget::Metric { metric, stat, .. } = &a[0].target else {
            panic!("expected a metric alarm, got {:?}", a[0].target);
        };
        assert_eq!(metric.namespace, "ECS/WebApp");
        assert_eq!(
            metric.dimensions,
            vec![
                ("Environment".to_owned(), "prod".to_owned()),
                ("ServiceName".to_owned(), "web".to_owned())
            ]
        );
        assert_eq!(stat, &AlarmStat::Extended("p99".into()));
    }

    #[test]
    fn prune_deletes_only_alarms_on_this_services_and_environments_metrics() {
        let c = catalog();
        let t = target(&c);
        let spec = |name: &str| AlarmSpec {
            name: name.into(),
            template: Template::Latency,
            threshold: Some(250.0),
            ..AlarmSpec::default()
        };
        let ours = desired_alarms(&config(vec![spec("gone")]), &t).unwrap();
        let mut math = desired_alarms(
            &config(vec![AlarmSpec {
                name: "errors".into(),
                template: Template::ErrorRate,
                source: ErrorRateSource::MetricMath,
                ..AlarmSpec::default()
            }]),
            &t,
        )
        .unwrap();
        assert!(matches!(math[0].target, AlarmTarget::Math { .. }));
        assert!(ours[0].watches_only(&t) && math[0].watches_only(&t));
        // Another environment whose name the managed prefix `tally-web-prod-` also starts
        // (`tally-web-prod-eu-...`), and another service under a shared prefix.
        let elsewhere = |mut a: AlarmDefinition, key: &str, value: &str| {
            let dims = match &mut a.target {
                AlarmTarget::Metric { metric, .. } => vec![&mut metric.dimensions],
                AlarmTarget::Math { queries } => queries
                    .iter_mut()
                    .filter_map(|q| q.metric.as_mut().map(|(m, _, _)| &mut m.dimensions))
                    .collect(),
            };
            // One metric of a math alarm is enough to make it someone else's.
            let d = dims.into_iter().next().unwrap();
            d.iter_mut().find(|(k, _)| k == key).unwrap().1 = value.into();
            a.name = format!("{}-other", a.name);
            a
        };
        let eu = elsewhere(ours[0].clone(), "Environment", "prod-eu");
        let admin = elsewhere(math.remove(0), "ServiceName", "web-admin");
        assert!(!eu.watches_only(&t) && !admin.watches_only(&t));
        let existing = vec![ours[0].clone(), eu.clone(), admin.clone()];
        let plan = super::super::plan::diff(&[], &existing, true, |a| a.watches_only(&t));
        let action = |name: &str| {
            plan.iter()
                .find(|ch| ch.name == name)
                .map(|ch| ch.action.clone())
                .unwrap()
        };
        use super::super::plan::AlarmAction;
        assert_eq!(action(&ours[0].name), AlarmAction::Delete);
        assert_eq!(action(&eu.name), AlarmAction::Keep);
        assert_eq!(action(&admin.name), AlarmAction::Keep);
    }

    #[test]
    fn a_metric_math_error_rate_reads_two_metrics_and_costs_two_alarm_metrics() {
        let c = catalog();
        let a = desired_alarms(
            &config(vec![AlarmSpec {
                name: "errors".into(),
                template: Template::ErrorRate,
                source: ErrorRateSource::MetricMath,
                ..AlarmSpec::default()
            }]),
            &target(&c),
        )
        .unwrap();
        assert_eq!(a[0].alarm_metrics(), 2);
        assert!((a[0].monthly_cost_usd() - 0.20).abs() < 1e-9);
        let AlarmTarget::Math { queries } = &a[0].target else {
            panic!("expected metric math");
        };
        assert_eq!(queries.iter().filter(|q| q.return_data).count(), 1);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let c = catalog();
        let err = desired_alarms(
            &config(vec![
                AlarmSpec {
                    name: "a".into(),
                    template: Template::Custom,
                    metric: Some("Nope".into()),
                    statistic: Some(StatisticSpec::Percentile("p90".into())),
                    threshold: Some(1.0),
                    comparison: Some(crate::alarms::config::Comparison::LessThanThreshold),
                    ..AlarmSpec::default()
                },
                AlarmSpec {
                    name: "b".into(),
                    template: Template::NoTraffic,
                    period_secs: Some(45),
                    ..AlarmSpec::default()
                },
                AlarmSpec {
                    name: "b".into(),
                    template: Template::NoTraffic,
                    ..AlarmSpec::default()
                },
            ]),
            &target(&c),
        )
        .unwrap_err();
        let all = err.to_string();
        assert!(all.contains("alarm \"a\": metric \"Nope\""), "{all}");
        assert!(all.contains("alarm \"b\": period_secs = 45"), "{all}");
        assert!(all.contains("declared twice"), "{all}");
        assert_eq!(err.problems.len(), 3, "{all}");
    }

    #[test]
    fn a_high_resolution_alarm_costs_three_times_a_standard_one() {
        let c = catalog();
        let mut t = target(&c);
        t.period_secs = 10;
        let a = desired_alarms(
            &config(vec![AlarmSpec {
                name: "fast".into(),
                template: Template::NoTraffic,
                period_secs: Some(10),
                ..AlarmSpec::default()
            }]),
            &t,
        )
        .unwrap();
        assert!(a[0].high_resolution());
        assert!((a[0].monthly_cost_usd() - 0.30).abs() < 1e-9);
    }
}
