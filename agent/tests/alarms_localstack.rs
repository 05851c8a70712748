//! Alarms and the dashboard against CloudWatch on LocalStack: plan, apply, idempotence,
//! single-field updates, pruning, and the dashboard read back with GetDashboard.
//!
//! Needs LocalStack: `scripts/localstack.sh start` (the test fails, never skips, without it).

mod alarms_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alarms_support::{
    assert_dashboard_matches_catalog, http_service_catalog, localstack_client, unique,
};
use aws_sdk_cloudwatch::error::DisplayErrorContext;
use aws_sdk_cloudwatch::types::{AlarmType, MetricAlarm};
use aws_sdk_cloudwatch::Client;
use tally_agent::alarms::config::{
    AlarmManagement, AlarmSpec, Comparison, ErrorRateSource, Statistic, StatisticSpec, Template,
    TreatMissingData,
};
use tally_agent::alarms::{
    self, AlarmAction, AlarmsConfig, DashboardAction, DashboardConfig, Target,
};

const SNS: &str = "arn:aws:sns:us-east-1:000000000000:oncall";
const SNS_OK: &str = "arn:aws:sns:us-east-1:000000000000:oncall-ok";

async fn describe(client: &Client, prefix: &str) -> BTreeMap<String, MetricAlarm> {
    // LocalStack answers 500 for a moment while it evaluates a new alarm: retry, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    for _ in 0..20 {
        match client
            .describe_alarms()
            .alarm_name_prefix(prefix)
            .alarm_types(AlarmType::MetricAlarm)
            .send()
            .await
        {
            Ok(out) => {
                return out
                    .metric_alarms()
                    .iter()
                    .map(|a| (a.alarm_name().unwrap().to_owned(), a.clone()))
                    .collect()
            }
            Err(e) => last = Some(DisplayErrorContext(e).to_string()),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("DescribeAlarms kept failing: {last:?}");
}

fn dims(a: &MetricAlarm) -> Vec<(String, String)> {
    let mut d: Vec<(String, String)> = a
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned()))
        .collect();
    d.sort();
    d
}

fn service_dims(service: &str, env: &str) -> Vec<(String, String)> {
    vec![
        ("Environment".to_owned(), env.to_owned()),
        ("ServiceName".to_owned(), service.to_owned()),
    ]
}

fn declared() -> Vec<AlarmSpec> {
    vec![
        AlarmSpec {
            name: "error-rate".into(),
            template: Template::ErrorRate,
            alarm_actions: Some(vec![SNS.into()]),
            ok_actions: Some(vec![SNS_OK.into()]),
            ..AlarmSpec::default()
        },
        AlarmSpec {
            name: "error-rate-math".into(),
            template: Template::ErrorRate,
            source: ErrorRateSource::MetricMath,
            threshold: Some(2.5),
            period_secs: Some(300),
            evaluation_periods: Some(2),
            insufficient_data_actions: Some(vec![SNS.into()]),
            ..AlarmSpec::default()
        },
        AlarmSpec {
            name: "checkout-p99".into(),
            template: Template::Latency,
            threshold: Some(750.0),
            dimensions: [("Route".to_owned(), "/checkout".to_owned())].into(),
            evaluation_periods: Some(5),
            datapoints_to_alarm: Some(3),
            treat_missing_data: Some(TreatMissingData::NotBreaching),
            ..AlarmSpec::default()
        },
        AlarmSpec {
            name: "no-traffic".into(),
            template: Template::NoTraffic,
            ..AlarmSpec::default()
        },
        AlarmSpec {
            name: "max-latency".into(),
            metric: Some("ResponseTime".into()),
            statistic: Some(StatisticSpec::Standard(Statistic::Maximum)),
            threshold: Some(5000.0),
            comparison: Some(Comparison::GreaterThanOrEqualToThreshold),
            ..AlarmSpec::default()
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_converge_on_localstack_and_only_changes_cause_writes() {
    let (client, calls) = localstack_client();
    let id = unique();
    let (service, env) = (format!("web{id}"), "it".to_owned());
    let namespace = format!("tally-it/{id}");
    let catalog = http_service_catalog(&namespace, &service, &env);
    let target = Target {
        namespace: &namespace,
        service: &service,
        environment: &env,
        period_secs: 60,
        catalog: &catalog,
    };
    let prefix = format!("tally-it-{id}-");
    let mut config = AlarmsConfig {
        alarms: declared(),
        alarm_management: AlarmManagement {
            name_prefix: prefix.clone(),
            // LocalStack has no quota; keep the run short. Pacing itself is unit-tested.
            put_alarm_tps: 20.0,
            ..AlarmManagement::default()
        },
        ..AlarmsConfig::default()
    };
    let dashboard = DashboardConfig {
        routes: vec!["/checkout".into(), "/health".into()],
        ..DashboardConfig::default()
    };

    // 1. Empty account: everything is a create.
    let plan = alarms::plan(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(plan.alarms.len(), 5, "{plan}");
    assert!(
        plan.alarms.iter().all(|c| c.action == AlarmAction::Create),
        "{plan}"
    );
    assert_eq!(
        plan.dashboard.as_ref().unwrap().action,
        DashboardAction::Create
    );
    // 4 one-metric alarms + one metric-math alarm over two metrics, all standard resolution.
    assert!((plan.planned_monthly_usd - 0.60).abs() < 1e-9, "{plan}");
    assert_eq!(plan.current_monthly_usd, 0.0);

    // 2. Apply: 5 PutMetricAlarm and one PutDashboard.
    calls.clear();
    let report = alarms::apply(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(report.created.len(), 5, "{report:?}");
    assert!(report.dashboard_written);
    assert_eq!(calls.count("PutMetricAlarm"), 5);
    assert_eq!(calls.count("PutDashboard"), 1);
    assert_eq!(calls.writes().len(), 6, "{:?}", calls.writes());

    // 3. What CloudWatch holds is exactly what was declared.
    let got = describe(&client, &prefix).await;
    assert_eq!(got.len(), 5, "{:?}", got.keys());
    let svc = service_dims(&service, &env);

    let a = &got[&format!("{prefix}error-rate")];
    assert_eq!(a.metric_name(), Some("ErrorRate"));
    assert_eq!(a.namespace(), Some(namespace.as_str()));
    assert_eq!(dims(a), svc);
    assert_eq!(a.statistic().map(|s| s.as_str()), Some("Average"));
    assert_eq!(a.extended_statistic(), None);
    assert_eq!(a.period(), Some(60));
    assert_eq!(a.evaluation_periods(), Some(3));
    assert_eq!(a.threshold(), Some(5.0));
    assert_eq!(
        a.comparison_operator().map(|c| c.as_str()),
        Some("GreaterThanThreshold")
    );
    assert_eq!(a.alarm_actions(), [SNS.to_owned()]);
    assert_eq!(a.ok_actions(), [SNS_OK.to_owned()]);
    assert!(a.insufficient_data_actions().is_empty());

    let m = &got[&format!("{prefix}error-rate-math")];
    assert_eq!(m.metric_name(), None);
    assert_eq!(m.threshold(), Some(2.5));
    assert_eq!(m.evaluation_periods(), Some(2));
    assert_eq!(m.insufficient_data_actions(), [SNS.to_owned()]);
    let q = m.metrics();
    assert_eq!(q.len(), 3);
    let by_id: BTreeMap<&str, _> = q.iter().map(|q| (q.id().unwrap(), q)).collect();
    for (qid, metric) in [("errors", "ErrorCount"), ("requests", "RequestCount")] {
        let ms = by_id[qid].metric_stat().expect("a metric query");
        let mm = ms.metric().unwrap();
        assert_eq!(mm.metric_name(), Some(metric));
        assert_eq!(mm.namespace(), Some(namespace.as_str()));
        let mut d: Vec<(String, String)> = mm
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned()))
            .collect();
        d.sort();
        assert_eq!(d, svc);
        assert_eq!(ms.stat(), Some("Sum"));
        assert_eq!(ms.period(), Some(300));
        assert_eq!(by_id[qid].return_data(), Some(false));
    }
    assert_eq!(
        by_id["error_rate"].expression(),
        Some("100 * FILL(errors, 0) / requests")
    );
    assert_eq!(by_id["error_rate"].return_data(), Some(true));

    let p = &got[&format!("{prefix}checkout-p99")];
    assert_eq!(p.metric_name(), Some("ResponseTime"));
    assert_eq!(p.statistic(), None);
    assert_eq!(p.extended_statistic(), Some("p99"));
    assert_eq!(p.threshold(), Some(750.0));
    assert_eq!(p.evaluation_periods(), Some(5));
    assert_eq!(p.datapoints_to_alarm(), Some(3));
    assert_eq!(p.treat_missing_data(), Some("notBreaching"));
    let mut route = svc.clone();
    route.push(("Route".to_owned(), "/checkout".to_owned()));
    route.sort();
    assert_eq!(dims(p), route);

    let n = &got[&format!("{prefix}no-traffic")];
    assert_eq!(n.metric_name(), Some("RequestCount"));
    assert_eq!(n.statistic().map(|s| s.as_str()), Some("Sum"));
    assert_eq!(n.threshold(), Some(1.0));
    assert_eq!(
        n.comparison_operator().map(|c| c.as_str()),
        Some("LessThanThreshold")
    );
    assert_eq!(n.treat_missing_data(), Some("breaching"));

    let x = &got[&format!("{prefix}max-latency")];
    assert_eq!(x.statistic().map(|s| s.as_str()), Some("Maximum"));
    assert_eq!(
        x.comparison_operator().map(|c| c.as_str()),
        Some("GreaterThanOrEqualToThreshold")
    );

    // 4. The dashboard names only what the agent publishes, with the same dimensions, and
    //    shows every managed alarm.
    let dash_name = dashboard.resolved_name(&service, &env);
    let body = client
        .get_dashboard()
        .dashboard_name(&dash_name)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(body.dashboard_body().unwrap()).unwrap();
    let checked = assert_dashboard_matches_catalog(&body, &catalog);
    assert!(checked >= 8, "only {checked} metric references in {body}");
    let alarm_widget = body["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["type"] == "alarm")
        .expect("an alarm widget");
    let arns: Vec<&str> = alarm_widget["properties"]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let expected_arns: Vec<&str> = got.values().map(|a| a.alarm_arn().unwrap()).collect();
    assert_eq!(arns, expected_arns);
    let text = body.to_string();
    for wanted in [
        "tally_samples_dropped_total",
        "tally_publish_errors_total",
        "OrdersPlaced",
    ] {
        assert!(text.contains(wanted), "{wanted} missing from {text}");
    }

    // 5. A second plan has nothing to do and a second apply writes nothing.
    let plan = alarms::plan(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert!(plan.is_noop(), "{plan}");
    assert!(plan
        .alarms
        .iter()
        .all(|c| c.action == AlarmAction::Unchanged));
    assert!((plan.current_monthly_usd - 0.60).abs() < 1e-9, "{plan}");
    calls.clear();
    let report = alarms::apply(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(calls.writes(), Vec::<String>::new());
    assert_eq!((report.write_calls, report.unchanged), (0, 5));

    // 6. One field edited: exactly one update, of that alarm, naming that field.
    config.alarms[2].threshold = Some(900.0);
    let plan = alarms::plan(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    let changed: Vec<_> = plan
        .alarms
        .iter()
        .filter(|c| c.action != AlarmAction::Unchanged)
        .collect();
    assert_eq!(changed.len(), 1, "{plan}");
    assert_eq!(changed[0].name, format!("{prefix}checkout-p99"));
    assert_eq!(
        changed[0].action,
        AlarmAction::Update {
            fields: vec!["threshold"]
        }
    );
    calls.clear();
    alarms::apply(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(calls.writes(), vec!["PutMetricAlarm".to_owned()]);
    let got = describe(&client, &prefix).await;
    assert_eq!(
        got[&format!("{prefix}checkout-p99")].threshold(),
        Some(900.0)
    );

    // 7. An alarm removed from the config is kept without prune ...
    let removed = config.alarms.remove(4);
    let removed_name = format!("{prefix}{}", removed.name);
    let plan = alarms::plan(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    let c = plan.alarms.iter().find(|c| c.name == removed_name).unwrap();
    assert_eq!(c.action, AlarmAction::Keep);
    calls.clear();
    let report = alarms::apply(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(report.kept, vec![removed_name.clone()]);
    assert_eq!(calls.count("DeleteAlarms"), 0);
    assert_eq!(calls.count("PutMetricAlarm"), 0);
    assert!(describe(&client, &prefix).await.contains_key(&removed_name));

    // ... and deleted, with one DeleteAlarms call, with prune.
    config.alarm_management.prune = true;
    calls.clear();
    let report = alarms::apply(&client, &config, &dashboard, &target)
        .await
        .unwrap();
    assert_eq!(report.deleted, vec![removed_name.clone()]);
    assert_eq!(calls.count("DeleteAlarms"), 1);
    assert_eq!(calls.count("PutMetricAlarm"), 0);
    let got = describe(&client, &prefix).await;
    assert_eq!(got.len(), 4);
    assert!(!got.contains_key(&removed_name));

    // Clean up: prune everything this test created.
    config.alarms.clear();
    alarms::apply(
        &client,
        &config,
        &DashboardConfig {
            enabled: false,
            ..dashboard
        },
        &target,
    )
    .await
    .unwrap();
    assert!(describe(&client, &prefix).await.is_empty());
    client
        .delete_dashboards()
        .dashboard_names(&dash_name)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_on_an_unpublished_dimension_is_rejected_before_any_call() {
    let (client, calls) = localstack_client();
    let id = unique();
    let catalog = http_service_catalog("tally-it/reject", "web", "it");
    let target = Target {
        namespace: "tally-it/reject",
        service: "web",
        environment: "it",
        period_secs: 60,
        catalog: &catalog,
    };
    let config = AlarmsConfig {
        alarms: vec![AlarmSpec {
            name: "per-host".into(),
            template: Template::Latency,
            threshold: Some(100.0),
            dimensions: [("Host".to_owned(), "ip-10-0-0-1".to_owned())].into(),
            ..AlarmSpec::default()
        }],
        alarm_management: AlarmManagement {
            name_prefix: format!("tally-it-{id}-"),
            ..AlarmManagement::default()
        },
        ..AlarmsConfig::default()
    };
    calls.clear();
    let err = alarms::apply(&client, &config, &DashboardConfig::default(), &target)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("alarm \"per-host\""), "{err}");
    assert!(err.contains("Host=ip-10-0-0-1"), "{err}");
    assert_eq!(calls.writes(), Vec::<String>::new());
    assert_eq!(calls.count("DescribeAlarms"), 0);
}
