//! `tally-agent alarms export` writes what `apply` creates: the alarms of a CloudFormation
//! template and of a Terraform `.tf.json` file, read back by parsers written here (not the
//! exporter's own code), equal field by field the alarms `apply` created in CloudWatch
//! (LocalStack), and their dashboard body is the one `plan` shows once the template's region
//! and account expressions are filled in. The CloudFormation output passes cfn-lint.

mod alarms_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use alarms_support::{localstack_client, unique};
use serde_json::Value;
use tally_agent::alarms::desired::{AlarmDefinition, AlarmStat, AlarmTarget, MetricId, Query};
use tally_agent::alarms::export::{export, ExportFormat};
use tally_agent::alarms::{self, Target};
use tally_agent::catalog::Catalog;
use tally_agent::config::Config;

/// Every kind of alarm the agent writes: a derived metric, metric math, a percentile, a
/// per-route alarm, a missing-data-breaching one, and actions.
fn config(namespace: &str, prefix: &str) -> Config {
    let text = format!(
        r#"
namespace = "{namespace}"
service = "shop"
environment = "test"

[[aggregate.rollups]]
drop = ["StatusClass"]

[[aggregate.rollups]]
drop = ["Route", "Method", "StatusClass"]

[alarm_management]
name_prefix = "{prefix}"

[alarm_defaults]
alarm_actions = ["arn:aws:sns:us-east-1:000000000000:oncall"]

[[alarms]]
name = "error-rate"
template = "error_rate"

[[alarms]]
name = "error-rate-math"
template = "error_rate"
source = "metric_math"
threshold = 2.5
evaluation_periods = 5
datapoints_to_alarm = 3

[[alarms]]
name = "slow-p99"
template = "latency"
threshold = 1000.0
ok_actions = ["arn:aws:sns:us-east-1:000000000000:recovered"]

[[alarms]]
name = "orders-slow"
template = "latency"
statistic = "p90"
threshold = 250.0
dimensions = {{ Route = "/orders/{{id}}", Method = "GET" }}

[[alarms]]
name = "no-traffic"
template = "no_traffic"
period_secs = 300
"#
    );
    let path = std::env::temp_dir().join(format!("tally-export-{}.toml", unique()));
    std::fs::write(&path, text).unwrap();
    let c = Config::load(Some(&path), Vec::new(), &[]).expect("the test configuration is valid");
    let _ = std::fs::remove_file(&path);
    c
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn int(v: &Value) -> i32 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}")) as i32
}

/// An `AWS::CloudWatch::Alarm`'s properties, read the way CloudFormation documents them.
fn from_cloudformation(p: &Value) -> AlarmDefinition {
    let cfn_metric = |m: &Value| {
        let mut dimensions: Vec<(String, String)> = m["Dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (s(&d["Name"]), s(&d["Value"])))
            .collect();
        dimensions.sort();
        MetricId {
            namespace: s(&m["Namespace"]),
            name: s(&m["MetricName"]),
            dimensions,
        }
    };
    let target = match p["Metrics"].as_array() {
        Some(queries) => AlarmTarget::Math {
            queries: queries
                .iter()
                .map(|q| Query {
                    id: s(&q["Id"]),
                    metric: q.get("MetricStat").map(|ms| {
                        (
                            cfn_metric(&ms["Metric"]),
                            s(&ms["Stat"]),
                            int(&ms["Period"]),
                        )
                    }),
                    expression: q.get("Expression").map(s),
                    label: q.get("Label").map(s),
                    return_data: q["ReturnData"].as_bool().unwrap_or(true),
                })
                .collect(),
        },
        None => AlarmTarget::Metric {
            metric: cfn_metric(p),
            stat: match (p.get("Statistic"), p.get("ExtendedStatistic")) {
                (Some(st), None) => AlarmStat::Standard(s(st)),
                (None, Some(e)) => AlarmStat::Extended(s(e)),
                other => panic!("exactly one of Statistic and ExtendedStatistic: {other:?}"),
            },
            period: int(&p["Period"]),
            unit: p.get("Unit").map(s),
        },
    };
    AlarmDefinition {
        name: s(&p["AlarmName"]),
        description: s(&p["AlarmDescription"]),
        target,
        threshold: p["Threshold"].as_f64().unwrap(),
        comparison: s(&p["ComparisonOperator"]),
        evaluation_periods: int(&p["EvaluationPeriods"]),
        datapoints_to_alarm: int(&p["DatapointsToAlarm"]),
        treat_missing_data: s(&p["TreatMissingData"]),
        actions_enabled: p["ActionsEnabled"].as_bool().unwrap(),
        alarm_actions: strings(&p["AlarmActions"]),
        ok_actions: strings(&p["OKActions"]),
        insufficient_data_actions: strings(&p["InsufficientDataActions"]),
    }
}

/// Terraform unescapes `$${` and `%%{` in every string.
fn tf(v: &Value) -> String {
    s(v).replace("$${", "${").replace("%%{", "%{")
}

/// An `aws_cloudwatch_metric_alarm`'s arguments, read the way the AWS provider documents them.
fn from_terraform(r: &Value) -> AlarmDefinition {
    let tf_dims = |d: &Value| {
        let mut dims: Vec<(String, String)> = d
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), tf(v)))
            .collect();
        dims.sort();
        dims
    };
    let tf_strings = |v: &Value| {
        let mut out: Vec<String> = v.as_array().unwrap().iter().map(tf).collect();
        out.sort();
        out
    };
    let target = match r["metric_query"].as_array() {
        Some(queries) => AlarmTarget::Math {
            queries: queries
                .iter()
                .map(|q| Query {
                    id: tf(&q["id"]),
                    metric: q.get("metric").map(|m| {
                        let m = &m[0];
                        (
                            MetricId {
                                namespace: tf(&m["namespace"]),
                                name: tf(&m["metric_name"]),
                                dimensions: tf_dims(&m["dimensions"]),
                            },
                            tf(&m["stat"]),
                            int(&m["period"]),
                        )
                    }),
                    expression: q.get("expression").map(tf),
                    label: q.get("label").map(tf),
                    return_data: q["return_data"].as_bool().unwrap_or(false),
                })
                .collect(),
        },
        None => AlarmTarget::Metric {
            metric: MetricId {
                namespace: tf(&r["namespace"]),
                name: tf(&r["metric_name"]),
                dimensions: tf_dims(&r["dimensions"]),
            },
            stat: match (r.get("statistic"), r.get("extended_statistic")) {
                (Some(st), None) => AlarmStat::Standard(tf(st)),
                (None, Some(e)) => AlarmStat::Extended(tf(e)),
                other => panic!("exactly one of statistic and extended_statistic: {other:?}"),
            },
            period: int(&r["period"]),
            unit: r.get("unit").map(tf),
        },
    };
    AlarmDefinition {
        name: tf(&r["alarm_name"]),
        description: tf(&r["alarm_description"]),
        target,
        threshold: r["threshold"].as_f64().unwrap(),
        comparison: tf(&r["comparison_operator"]),
        evaluation_periods: int(&r["evaluation_periods"]),
        datapoints_to_alarm: int(&r["datapoints_to_alarm"]),
        treat_missing_data: tf(&r["treat_missing_data"]),
        actions_enabled: r["actions_enabled"].as_bool().unwrap(),
        alarm_actions: tf_strings(&r["alarm_actions"]),
        ok_actions: tf_strings(&r["ok_actions"]),
        insufficient_data_actions: tf_strings(&r["insufficient_data_actions"]),
    }
}

/// Each exported alarm equals the one CloudWatch holds under its name, field by field.
fn assert_same_alarms(format: &str, exported: &[AlarmDefinition], created: &[AlarmDefinition]) {
    let created: BTreeMap<&str, &AlarmDefinition> =
        created.iter().map(|a| (a.name.as_str(), a)).collect();
    let names: Vec<&str> = exported.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        created.keys().copied().collect::<Vec<_>>(),
        "{format}: the exported alarms are the ones apply created"
    );
    for a in exported {
        let c = created[a.name.as_str()];
        assert_eq!(
            a.changed_fields(c),
            Vec::<&str>::new(),
            "{format}: {} differs from what apply created:\nexported {a:#?}\ncreated {c:#?}",
            a.name
        );
        assert_eq!(a, c, "{format}: {}", a.name);
    }
}

fn tools_python(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools-venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `scripts/tools-venv.sh` and run the tests again",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_alarms_and_dashboard_equal_what_apply_creates_and_plan_shows() {
    let id = unique();
    let namespace = format!("TallyExport/{id}");
    let prefix = format!("tally-export-{id}-");
    let config = config(&namespace, &prefix);
    let catalog = Catalog::from_config(&config);
    let target = Target {
        namespace: &config.namespace,
        service: &config.service,
        environment: &config.environment,
        period_secs: config.period_secs,
        catalog: &catalog,
    };
    let (alarms_config, dashboard) = (config.alarms_config(), config.dashboard.clone());
    let (client, _) = localstack_client();
    let dashboard = tally_agent::alarms::DashboardConfig {
        name: format!("tally-export-{id}"),
        ..dashboard
    };

    alarms::apply(&client, &alarms_config, &dashboard, &target)
        .await
        .expect("apply");
    let described = client
        .describe_alarms()
        .alarm_name_prefix(&prefix)
        .send()
        .await
        .expect("DescribeAlarms");
    let created: Vec<AlarmDefinition> = described
        .metric_alarms()
        .iter()
        .map(AlarmDefinition::from_metric_alarm)
        .collect();
    assert_eq!(created.len(), 5, "{created:#?}");
    let arns: BTreeMap<String, String> = described
        .metric_alarms()
        .iter()
        .map(|a| {
            (
                a.alarm_name().unwrap().to_owned(),
                a.alarm_arn().unwrap().to_owned(),
            )
        })
        .collect();
    // What `plan` shows for the dashboard once the alarms exist (the body apply wrote).
    let plan = alarms::plan(&client, &alarms_config, &dashboard, &target)
        .await
        .expect("plan");
    assert!(plan.is_noop(), "apply left nothing to do: {plan}");
    let planned_body = plan.dashboard.expect("a dashboard").body;
    let sample_arn = arns.values().next().unwrap();
    let (region, account) = {
        let parts: Vec<&str> = sample_arn.split(':').collect();
        (parts[3].to_owned(), parts[4].to_owned())
    };

    // CloudFormation.
    let cfn = export(
        &alarms_config,
        &dashboard,
        &target,
        ExportFormat::Cloudformation,
    )
    .unwrap();
    let resources = cfn["Resources"].as_object().unwrap();
    let mut exported: Vec<AlarmDefinition> = resources
        .values()
        .filter(|r| r["Type"] == "AWS::CloudWatch::Alarm")
        .map(|r| from_cloudformation(&r["Properties"]))
        .collect();
    exported.sort_by(|a, b| a.name.cmp(&b.name));
    assert_same_alarms("cloudformation", &exported, &created);
    let sub = s(&resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]);
    let body = sub
        .replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", &region)
        .replace("${AWS::AccountId}", &account)
        .replace("${!", "${");
    let body: Value = serde_json::from_str(&body).expect("the dashboard body is JSON");
    assert_eq!(body, planned_body, "cloudformation dashboard body");
    assert_eq!(
        resources["Dashboard"]["Properties"]["DashboardName"],
        dashboard.resolved_name(&config.service, &config.environment)
    );

    let file = std::env::temp_dir().join(format!("tally-export-{id}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&cfn).unwrap()).unwrap();
    let lint = Command::new(tools_python("cfn-lint"))
        .arg("--")
        .arg(&file)
        .output()
        .expect("cfn-lint runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        lint.status.success() && lint.stdout.is_empty(),
        "cfn-lint reported findings on the exported template: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Terraform.
    let tf_doc = export(&alarms_config, &dashboard, &target, ExportFormat::Terraform).unwrap();
    let tf_alarms = tf_doc["resource"]["aws_cloudwatch_metric_alarm"]
        .as_object()
        .unwrap();
    let mut exported: Vec<AlarmDefinition> = tf_alarms.values().map(from_terraform).collect();
    exported.sort_by(|a, b| a.name.cmp(&b.name));
    assert_same_alarms("terraform", &exported, &created);
    let dash = &tf_doc["resource"]["aws_cloudwatch_dashboard"]["dashboard"];
    let mut text = s(&dash["dashboard_body"]).replace("${data.aws_region.current.name}", &region);
    for (resource, alarm) in tf_alarms {
        let name = tf(&alarm["alarm_name"]);
        text = text.replace(
            &format!("${{aws_cloudwatch_metric_alarm.{resource}.arn}}"),
            &arns[&name],
        );
    }
    let text = text.replace("$${", "${").replace("%%{", "%{");
    assert!(
        !text.contains("${"),
        "every interpolation was filled: {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("the dashboard body is JSON");
    assert_eq!(body, planned_body, "terraform dashboard body");
    assert!(
        tf_doc["data"]["aws_region"]["current"].is_object(),
        "the region data source the body interpolates is declared"
    );

    // Leave LocalStack as found.
    let names: Vec<String> = arns.keys().cloned().collect();
    client
        .delete_alarms()
        .set_alarm_names(Some(names))
        .send()
        .await
        .expect("DeleteAlarms");
    client
        .delete_dashboards()
        .dashboard_names(format!("tally-export-{id}"))
        .send()
        .await
        .expect("DeleteDashboards");
}
