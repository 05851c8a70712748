//! `tally-agent alarms export`: the alarms and dashboard `plan` shows, written as
//! infrastructure code (a CloudFormation template or a Terraform `.tf.json` file) instead of
//! being created by the agent.
//!
//! Both outputs are built from the same [`AlarmDefinition`]s that `apply` turns into
//! PutMetricAlarm calls ([`desired_alarms`]) and from the same [`DashboardBuilder`] body, so
//! names, metrics, dimensions, statistics, thresholds and actions are those `apply` would
//! write; only the account and region, which the agent learns from CloudWatch, become template
//! expressions (`${AWS::Region}` / `${AWS::AccountId}` in CloudFormation; `data.aws_region`
//! and each alarm's `arn` attribute in Terraform).
//!
//! Export reads nothing from CloudWatch: it never lists, updates or deletes existing alarms.
//! Pruning and drift are then the deployment tool's business (see docs/alarms.md, "export or
//! apply").

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::dashboard::DashboardBuilder;
use super::desired::{desired_alarms, AlarmDefinition, AlarmStat, AlarmTarget, MetricId, Query};
use super::validate::{validate, AlarmConfigError};
use super::{AlarmsConfig, DashboardConfig, Target};

/// What `alarms export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A CloudFormation template (JSON): `AWS::CloudWatch::Alarm` and `AWS::CloudWatch::Dashboard`
    /// resources.
    Cloudformation,
    /// Terraform JSON syntax (`.tf.json`): `aws_cloudwatch_metric_alarm` and
    /// `aws_cloudwatch_dashboard` resources.
    Terraform,
}

/// Stands for the region in the dashboard body until it becomes a template expression.
const REGION_MARK: &str = "@@tally-region@@";
/// Stands for an alarm ARN's `arn:...:alarm:` part in the dashboard body.
const ARN_MARK: &str = "@@tally-alarm-arn@@";

/// The configuration's alarms and dashboard as a template document in `format`.
/// Validates exactly as `plan` and `apply` do; nothing is read from CloudWatch.
pub fn export(
    config: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
    format: ExportFormat,
) -> Result<Value, AlarmConfigError> {
    validate(config, dashboard, target)?;
    let alarms = desired_alarms(config, target)?;
    let prefix = config
        .alarm_management
        .resolved_prefix(target.service, target.environment);
    let ids = resource_ids(&alarms, &prefix, format);
    let body = dashboard.enabled.then(|| {
        let names: Vec<String> = alarms.iter().map(|a| a.name.clone()).collect();
        let arns: Vec<String> = names.iter().map(|n| format!("{ARN_MARK}{n}")).collect();
        let body = DashboardBuilder::new(dashboard, target, REGION_MARK)
            .build(&arns)
            .body;
        (
            dashboard.resolved_name(target.service, target.environment),
            body,
        )
    });
    Ok(match format {
        ExportFormat::Cloudformation => cloudformation(&alarms, &ids, body, target),
        ExportFormat::Terraform => terraform(&alarms, &ids, body),
    })
}

/// One resource id per alarm, from its name without the managed prefix: `high-error-rate`
/// becomes `AlarmHighErrorRate` (CloudFormation logical ids are alphanumeric) or
/// `high_error_rate` (Terraform). A clash (names that differ only in punctuation) gets a number.
fn resource_ids(alarms: &[AlarmDefinition], prefix: &str, format: ExportFormat) -> Vec<String> {
    let mut taken = BTreeSet::new();
    alarms
        .iter()
        .map(|a| {
            let short = a.name.strip_prefix(prefix).unwrap_or(&a.name);
            let base = match format {
                ExportFormat::Cloudformation => {
                    let mut id = String::from("Alarm");
                    let mut upper = true;
                    for c in short.chars() {
                        if c.is_ascii_alphanumeric() {
                            id.push(if upper { c.to_ascii_uppercase() } else { c });
                            upper = false;
                        } else {
                            upper = true;
                        }
                    }
                    id
                }
                ExportFormat::Terraform => {
                    let mut id: String = short
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
                        id.insert_str(0, "alarm_");
                    }
                    id
                }
            };
            let mut id = base.clone();
            let mut n = 2;
            while !taken.insert(id.clone()) {
                id = format!("{base}{n}");
                n += 1;
            }
            id
        })
        .collect()
}

fn stat_name(stat: &AlarmStat) -> &str {
    match stat {
        AlarmStat::Standard(s) | AlarmStat::Extended(s) => s,
    }
}

/// The body as text, with `${` escaped for the template language (`escape`) and the marks
/// replaced by its expressions.
fn body_text(body: &Value, escape: &str, region: &str, arn: impl Fn(&str) -> String) -> String {
    let text = body.to_string().replace("${", escape);
    let mut out = text.replace(REGION_MARK, region);
    // Each ARN mark is followed by the alarm name and the closing quote of its JSON string.
    while let Some(at) = out.find(ARN_MARK) {
        let rest = &out[at + ARN_MARK.len()..];
        let end = rest.find('"').unwrap_or(rest.len());
        let replacement = arn(&rest[..end]);
        out.replace_range(at..at + ARN_MARK.len() + end, &replacement);
    }
    out
}

fn cfn_dimensions(m: &MetricId) -> Value {
    Value::Array(
        m.dimensions
            .iter()
            .map(|(k, v)| json!({ "Name": k, "Value": v }))
            .collect(),
    )
}

fn cfn_query(q: &Query) -> Value {
    let mut o = Map::new();
    o.insert("Id".into(), json!(q.id));
    if let Some((m, stat, period)) = &q.metric {
        o.insert(
            "MetricStat".into(),
            json!({
                "Metric": {
                    "Namespace": m.namespace,
                    "MetricName": m.name,
                    "Dimensions": cfn_dimensions(m),
                },
                "Period": period,
                "Stat": stat,
            }),
        );
    }
    if let Some(e) = &q.expression {
        o.insert("Expression".into(), json!(e));
    }
    if let Some(l) = &q.label {
        o.insert("Label".into(), json!(l));
    }
    o.insert("ReturnData".into(), json!(q.return_data));
    Value::Object(o)
}

fn cfn_alarm(a: &AlarmDefinition) -> Value {
    let mut p = Map::new();
    p.insert("AlarmName".into(), json!(a.name));
    p.insert("AlarmDescription".into(), json!(a.description));
    p.insert("ActionsEnabled".into(), json!(a.actions_enabled));
    for (key, list) in [
        ("AlarmActions", &a.alarm_actions),
        ("OKActions", &a.ok_actions),
        ("InsufficientDataActions", &a.insufficient_data_actions),
    ] {
        if !list.is_empty() {
            p.insert(key.into(), json!(list));
        }
    }
    p.insert("ComparisonOperator".into(), json!(a.comparison));
    p.insert("Threshold".into(), json!(a.threshold));
    p.insert("EvaluationPeriods".into(), json!(a.evaluation_periods));
    p.insert("DatapointsToAlarm".into(), json!(a.datapoints_to_alarm));
    p.insert("TreatMissingData".into(), json!(a.treat_missing_data));
    match &a.target {
        AlarmTarget::Metric {
            metric,
            stat,
            period,
            unit,
        } => {
            p.insert("Namespace".into(), json!(metric.namespace));
            p.insert("MetricName".into(), json!(metric.name));
            p.insert("Dimensions".into(), cfn_dimensions(metric));
            p.insert("Period".into(), json!(period));
            let key = match stat {
                AlarmStat::Standard(_) => "Statistic",
                AlarmStat::Extended(_) => "ExtendedStatistic",
            };
            p.insert(key.into(), json!(stat_name(stat)));
            if let Some(u) = unit {
                p.insert("Unit".into(), json!(u));
            }
        }
        AlarmTarget::Math { queries } => {
            p.insert(
                "Metrics".into(),
                Value::Array(queries.iter().map(cfn_query).collect()),
            );
        }
    }
    json!({ "Type": "AWS::CloudWatch::Alarm", "Properties": p })
}

fn cloudformation(
    alarms: &[AlarmDefinition],
    ids: &[String],
    body: Option<(String, Value)>,
    target: &Target<'_>,
) -> Value {
    let mut resources = Map::new();
    let mut outputs = Map::new();
    for (a, id) in alarms.iter().zip(ids) {
        resources.insert(id.clone(), cfn_alarm(a));
        outputs.insert(
            format!("{id}Name"),
            json!({ "Description": format!("Name of the alarm {}", a.name), "Value": { "Ref": id } }),
        );
    }
    if let Some((name, body)) = body {
        let text = body_text(&body, "${!", "${AWS::Region}", |alarm| {
            format!("arn:${{AWS::Partition}}:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{alarm}")
        });
        resources.insert(
            "Dashboard".into(),
            json!({
                "Type": "AWS::CloudWatch::Dashboard",
                // The alarm widget names the alarms: create them first.
                "DependsOn": ids,
                "Properties": {
                    "DashboardName": name,
                    "DashboardBody": { "Fn::Sub": text },
                },
            }),
        );
    }
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "tally alarms and dashboard for service {} in {} (namespace {}), written by \
             `tally-agent alarms export`; regenerate it rather than editing it",
            target.service, target.environment, target.namespace
        ),
        "Resources": resources,
        "Outputs": outputs,
    })
}

fn tf_dimensions(m: &MetricId) -> Value {
    Value::Object(
        m.dimensions
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn tf_query(q: &Query) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(q.id));
    if let Some((m, stat, period)) = &q.metric {
        o.insert(
            "metric".into(),
            json!([{
                "namespace": m.namespace,
                "metric_name": m.name,
                "dimensions": tf_dimensions(m),
                "period": period,
                "stat": stat,
            }]),
        );
    }
    if let Some(e) = &q.expression {
        o.insert("expression".into(), json!(e));
    }
    if let Some(l) = &q.label {
        o.insert("label".into(), json!(l));
    }
    o.insert("return_data".into(), json!(q.return_data));
    Value::Object(o)
}

/// Terraform interpolates `${...}` and `%{...}` in every string: escape them as `$${` and `%%{`.
fn tf_literal(s: &str) -> String {
    s.replace("${", "$${").replace("%{", "%%{")
}

fn tf_alarm(a: &AlarmDefinition) -> Value {
    let lit = |s: &str| json!(tf_literal(s));
    let lits = |v: &[String]| Value::Array(v.iter().map(|s| lit(s)).collect());
    let mut r = Map::new();
    r.insert("alarm_name".into(), lit(&a.name));
    r.insert("alarm_description".into(), lit(&a.description));
    r.insert("actions_enabled".into(), json!(a.actions_enabled));
    r.insert("alarm_actions".into(), lits(&a.alarm_actions));
    r.insert("ok_actions".into(), lits(&a.ok_actions));
    r.insert(
        "insufficient_data_actions".into(),
        lits(&a.insufficient_data_actions),
    );
    r.insert("comparison_operator".into(), json!(a.comparison));
    r.insert("threshold".into(), json!(a.threshold));
    r.insert("evaluation_periods".into(), json!(a.evaluation_periods));
    r.insert("datapoints_to_alarm".into(), json!(a.datapoints_to_alarm));
    r.insert("treat_missing_data".into(), json!(a.treat_missing_data));
    match &a.target {
        AlarmTarget::Metric {
            metric,
            stat,
            period,
            unit,
        } => {
            r.insert("namespace".into(), lit(&metric.namespace));
            r.insert("metric_name".into(), lit(&metric.name));
            let dims: Map<String, Value> = metric
                .dimensions
                .iter()
                .map(|(k, v)| (k.clone(), lit(v)))
                .collect();
            r.insert("dimensions".into(), Value::Object(dims));
            r.insert("period".into(), json!(period));
            let key = match stat {
                AlarmStat::Standard(_) => "statistic",
                AlarmStat::Extended(_) => "extended_statistic",
            };
            r.insert(key.into(), json!(stat_name(stat)));
            if let Some(u) = unit {
                r.insert("unit".into(), json!(u));
            }
        }
        AlarmTarget::Math { queries } => {
            let mut qs: Vec<Value> = queries.iter().map(tf_query).collect();
            for q in &mut qs {
                escape_strings(q);
            }
            r.insert("metric_query".into(), Value::Array(qs));
        }
    }
    Value::Object(r)
}

/// Escapes every string in `v` for Terraform (see [`tf_literal`]).
fn escape_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = tf_literal(s),
        Value::Array(a) => a.iter_mut().for_each(escape_strings),
        Value::Object(o) => o.values_mut().for_each(escape_strings),
        _ => {}
    }
}

fn terraform(alarms: &[AlarmDefinition], ids: &[String], body: Option<(String, Value)>) -> Value {
    let mut alarm_resources = Map::new();
    for (a, id) in alarms.iter().zip(ids) {
        alarm_resources.insert(id.clone(), tf_alarm(a));
    }
    let mut resource = Map::new();
    resource.insert(
        "aws_cloudwatch_metric_alarm".into(),
        Value::Object(alarm_resources),
    );
    let mut doc = Map::new();
    doc.insert(
        "//".into(),
        json!("tally alarms and dashboard, written by `tally-agent alarms export --format terraform`; regenerate it rather than editing it"),
    );
    if let Some((name, body)) = body {
        let by_name: Vec<(&str, &str)> = alarms
            .iter()
            .zip(ids)
            .map(|(a, id)| (a.name.as_str(), id.as_str()))
            .collect();
        let text = body_text(&body, "$${", "${data.aws_region.current.name}", |alarm| {
            let id = by_name
                .iter()
                .find(|(n, _)| *n == alarm)
                .map_or(alarm, |(_, id)| id);
            format!("${{aws_cloudwatch_metric_alarm.{id}.arn}}")
        })
        .replace("%{", "%%{");
        let mut dash = Map::new();
        dash.insert(
            "dashboard".into(),
            json!({ "dashboard_name": tf_literal(&name), "dashboard_body": text }),
        );
        resource.insert("aws_cloudwatch_dashboard".into(), Value::Object(dash));
        doc.insert("data".into(), json!({ "aws_region": { "current": {} } }));
    }
    doc.insert("resource".into(), Value::Object(resource));
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(name: &str) -> AlarmDefinition {
        AlarmDefinition {
            name: name.into(),
            description: String::new(),
            target: AlarmTarget::Math { queries: vec![] },
            threshold: 1.0,
            comparison: "GreaterThanThreshold".into(),
            evaluation_periods: 1,
            datapoints_to_alarm: 1,
            treat_missing_data: "missing".into(),
            actions_enabled: true,
            alarm_actions: vec![],
            ok_actions: vec![],
            insufficient_data_actions: vec![],
        }
    }

    #[test]
    fn resource_ids_are_valid_for_each_format_and_never_clash() {
        let alarms = [
            alarm("p-high-error-rate"),
            alarm("p-high_error.rate"),
            alarm("p-9s"),
        ];
        assert_eq!(
            resource_ids(&alarms, "p-", ExportFormat::Cloudformation),
            ["AlarmHighErrorRate", "AlarmHighErrorRate2", "Alarm9s"]
        );
        assert_eq!(
            resource_ids(&alarms, "p-", ExportFormat::Terraform),
            ["high_error_rate", "high_error_rate2", "alarm_9s"]
        );
    }

    #[test]
    fn the_body_keeps_literal_dollar_braces_and_turns_marks_into_expressions() {
        let body = json!({ "a": format!("{ARN_MARK}tally-x"), "r": REGION_MARK, "s": "${x}" });
        let text = body_text(&body, "${!", "${AWS::Region}", |n| format!("ARN({n})"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["a"], "ARN(tally-x)");
        assert_eq!(v["r"], "${AWS::Region}");
        assert_eq!(v["s"], "${!x}");
    }

    #[test]
    fn terraform_strings_escape_interpolation() {
        assert_eq!(tf_literal("a ${b} %{c}"), "a $${b} %%{c}");
    }
}
