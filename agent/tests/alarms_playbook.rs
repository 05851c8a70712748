//! `examples/agent-playbook.toml` reproduces the ECS playbook's alarms exactly, with the
//! dimensions the agent publishes, and CloudWatch (LocalStack) stores them as declared.

mod alarms_support;

use alarms_support::{http_service_catalog, localstack_client, unique};
use aws_sdk_cloudwatch::types::AlarmType;
use tally_agent::alarms::desired::{desired_alarms, AlarmStat, AlarmTarget};
use tally_agent::alarms::{self, AlarmsConfig, DashboardConfig, Target};

const SNS: &str = "arn:aws:sns:us-east-1:123456789012:web-app-alerts";

struct Example {
    namespace: String,
    service: String,
    environment: String,
    period_secs: u32,
    alarms: AlarmsConfig,
    dashboard: DashboardConfig,
}

fn load_example() -> Example {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/agent-playbook.toml"
    );
    let text = std::fs::read_to_string(path).expect("examples/agent-playbook.toml");
    let mut table: toml::Table = toml::from_str(&text).expect("valid TOML");
    let s = |t: &mut toml::Table, k: &str| t.remove(k).unwrap().as_str().unwrap().to_owned();
    let namespace = s(&mut table, "namespace");
    let service = s(&mut table, "service");
    let environment = s(&mut table, "environment");
    let period_secs = table.remove("period_secs").unwrap().as_integer().unwrap() as u32;
    let dashboard: DashboardConfig = table.remove("dashboard").unwrap().try_into().unwrap();
    let alarms: AlarmsConfig = toml::Value::Table(table)
        .try_into()
        .expect("alarm sections");
    Example {
        namespace,
        service,
        environment,
        period_secs,
        alarms,
        dashboard,
    }
}

#[test]
fn the_example_config_declares_the_playbook_alarms_exactly_with_published_dimensions() {
    let ex = load_example();
    let catalog = http_service_catalog(&ex.namespace, &ex.service, &ex.environment);
    let target = Target {
        namespace: &ex.namespace,
        service: &ex.service,
        environment: &ex.environment,
        period_secs: ex.period_secs,
        catalog: &catalog,
    };
    let alarms = desired_alarms(&ex.alarms, &target).unwrap();
    let names: Vec<&str> = alarms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "web-app-high-error-rate",
            "web-app-high-p99-response-time",
            "web-app-high-response-time"
        ]
    );
    let dims = vec![
        ("Environment".to_owned(), "production".to_owned()),
        ("ServiceName".to_owned(), "web-app".to_owned()),
    ];
    for (a, metric, stat, threshold, description) in [
        (
            &alarms[0],
            "ErrorRate",
            AlarmStat::Standard("Average".into()),
            5.0,
            "High error rate detected",
        ),
        (
            &alarms[2],
            "ResponseTime",
            AlarmStat::Standard("Average".into()),
            1000.0,
            "High response time detected",
        ),
        (
            &alarms[1],
            "ResponseTime",
            AlarmStat::Extended("p99".into()),
            1000.0,
            "p99 response time above one second",
        ),
    ] {
        let AlarmTarget::Metric {
            metric: m,
            stat: s,
            period,
            unit,
        } = &a.target
        else {
            panic!("{} should watch one metric", a.name);
        };
        assert_eq!(m.namespace, "ECS/WebApp");
        assert_eq!(m.name, metric);
        assert_eq!(m.dimensions, dims, "{}", a.name);
        assert_eq!(*s, stat);
        assert_eq!((*period, unit.as_deref()), (300, None));
        assert_eq!(a.evaluation_periods, 2);
        assert_eq!(a.threshold, threshold);
        assert_eq!(a.comparison, "GreaterThanThreshold");
        assert_eq!(a.alarm_actions, vec![SNS.to_owned()]);
        assert_eq!(a.description, description);
    }
    alarms::validate::validate(&ex.alarms, &ex.dashboard, &target).unwrap();
    assert_eq!(
        ex.dashboard.resolved_name(&ex.service, &ex.environment),
        "tally-web-app-production"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playbook_alarms_are_stored_in_cloudwatch_as_declared() {
    let (client, _calls) = localstack_client();
    let mut ex = load_example();
    // A unique prefix keeps runs apart; the names otherwise stay the playbook's.
    let prefix = format!("it-{}-web-app-", unique());
    ex.alarms.alarm_management.name_prefix = prefix.clone();
    ex.alarms.alarm_management.put_alarm_tps = 20.0;
    ex.dashboard.enabled = false;
    let catalog = http_service_catalog(&ex.namespace, &ex.service, &ex.environment);
    let target = Target {
        namespace: &ex.namespace,
        service: &ex.service,
        environment: &ex.environment,
        period_secs: ex.period_secs,
        catalog: &catalog,
    };
    let report = alarms::apply(&client, &ex.alarms, &ex.dashboard, &target)
        .await
        .unwrap();
    assert_eq!(report.created.len(), 3);
    let out = client
        .describe_alarms()
        .alarm_name_prefix(&prefix)
        .alarm_types(AlarmType::MetricAlarm)
        .send()
        .await
        .unwrap();
    let a = out
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some(&format!("{prefix}high-error-rate")))
        .expect("the error-rate alarm");
    assert_eq!(a.metric_name(), Some("ErrorRate"));
    assert_eq!(a.namespace(), Some("ECS/WebApp"));
    assert_eq!(a.statistic().map(|s| s.as_str()), Some("Average"));
    assert_eq!(
        (a.period(), a.evaluation_periods(), a.threshold()),
        (Some(300), Some(2), Some(5.0))
    );
    assert_eq!(
        a.comparison_operator().map(|c| c.as_str()),
        Some("GreaterThanThreshold")
    );
    assert_eq!(a.alarm_actions(), [SNS.to_owned()]);
    assert_eq!(a.dimensions().len(), 2);
    ex.alarms.alarms.clear();
    ex.alarms.alarm_management.prune = true;
    let report = alarms::apply(&client, &ex.alarms, &ex.dashboard, &target)
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 3);
}
