//! Alarms and a dashboard provisioned from the agent's configuration, always watching what the
//! agent publishes.
//!
//! ```text
//!  [[alarms]] + [alarm_defaults]          Catalog (what the publisher writes)
//!            │                                   │
//!   templates::shape ── validate ── desired::desired_alarms ──► AlarmDefinition (normal form)
//!                                                                       │
//!   DescribeAlarms (by managed prefix, paginated) ──► AlarmDefinition ──┤
//!                                                                       ▼
//!                                          plan::diff ──► Plan (create / update / delete /
//!                                                               keep / unchanged, $ per month)
//!                                                                       │
//!             apply::apply_alarms (PutMetricAlarm / DeleteAlarms, 3 TPS, backoff on
//!             Throttling) ──► dashboard::DashboardBuilder ──► PutDashboard when the body
//!             differs as JSON
//! ```
//!
//! Alarms are recognised as managed by a name prefix (`[alarm_management] name_prefix`,
//! default `tally-`); with `tag_alarms = true` tally also tags what it creates
//! (`tally:managed-by`), but ownership never depends on tags (CloudWatch ignores tags on
//! updates, and emulators do not keep them). Everything is compared in a
//! normal form ([`AlarmDefinition`]) so that a second `apply` makes no write call and one
//! changed field makes exactly one PutMetricAlarm.
//!
//! `tally-agent alarms plan|apply` call [`plan()`] and [`apply()`] (see [`cli`]); `alarms export`
//! writes the same alarms and dashboard as a CloudFormation or Terraform document ([`export`]);
//! `tally-agent validate` calls [`validate::validate`].

pub mod apply;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod desired;
pub mod export;
pub mod plan;
pub mod templates;
pub mod validate;

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_cloudwatch::Client;

pub use self::apply::ApplyReport;
pub use self::config::{AlarmSpec, AlarmsConfig, DashboardConfig};
pub use self::desired::{AlarmDefinition, Target};
pub use self::plan::{AlarmAction, DashboardAction, Plan};
pub use self::validate::AlarmConfigError;

use self::apply::{describe_managed, paced, Pacer, RetryPolicy};
use self::dashboard::{alarm_arns, DashboardBuilder};
use self::plan::DashboardChange;

/// Errors of `alarms plan` and `alarms apply`.
#[derive(Debug, thiserror::Error)]
pub enum AlarmsError {
    /// The configuration is invalid; nothing was read or written.
    #[error(transparent)]
    Config(#[from] AlarmConfigError),
    /// DescribeAlarms failed.
    #[error(
        "reading the managed alarms (DescribeAlarms) failed: {0}. Check the CloudWatch \
         endpoint, region and credentials (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE) and the \
         IAM permission cloudwatch:DescribeAlarms"
    )]
    Describe(String),
    /// A write failed part way; `done` lists what was already written.
    #[error(
        "{call} for {target} failed: {message}. Already done: {} created, {} updated, {} \
         deleted. Fix the cause (IAM permission cloudwatch:{call}, quotas) and run \
         `tally-agent alarms apply` again: it only does what is left",
        done.created.len(), done.updated.len(), done.deleted.len()
    )]
    Write {
        /// The API call.
        call: &'static str,
        /// The alarm(s) it was writing.
        target: String,
        /// CloudWatch's answer.
        message: String,
        /// What succeeded before the failure.
        done: ApplyReport,
    },
    /// GetDashboard or PutDashboard failed.
    #[error(
        "{call} for dashboard {name:?} failed: {message}. Check the IAM permission \
         cloudwatch:{call}, or set [dashboard] enabled = false"
    )]
    Dashboard {
        /// The API call.
        call: &'static str,
        /// The dashboard.
        name: String,
        /// CloudWatch's answer.
        message: String,
    },
}

struct Observed {
    plan: Plan,
    existing_dashboard: Option<serde_json::Value>,
}

fn region_of(client: &Client) -> String {
    client
        .config()
        .region()
        .map_or_else(|| "us-east-1".to_owned(), |r| r.as_ref().to_owned())
}

async fn get_dashboard(
    client: &Client,
    name: &str,
) -> Result<Option<serde_json::Value>, AlarmsError> {
    let mut pacer = Pacer::new(10.0);
    let policy = RetryPolicy {
        max_attempts: 5,
        base: std::time::Duration::from_millis(200),
    };
    let (res, _) = paced(&mut pacer, policy, || {
        client.get_dashboard().dashboard_name(name).send()
    })
    .await;
    match res {
        Ok(out) => {
            // A body that is not JSON (edited by hand into something invalid) simply differs.
            Ok(out
                .dashboard_body()
                .map(|b| serde_json::from_str(b).unwrap_or(serde_json::Value::Null)))
        }
        Err(e)
            if e.as_service_error().is_some_and(|se| {
                se.is_dashboard_not_found_error() || se.code() == Some("ResourceNotFound")
            }) =>
        {
            Ok(None)
        }
        // LocalStack answers InvalidParameterValue for a missing dashboard: confirm with
        // ListDashboards rather than by parsing the message.
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_invalid_parameter_value_exception())
                && !dashboard_exists(client, name).await? =>
        {
            Ok(None)
        }
        Err(e) => Err(AlarmsError::Dashboard {
            call: "GetDashboard",
            name: name.to_owned(),
            message: DisplayErrorContext(&e).to_string(),
        }),
    }
}

async fn dashboard_exists(client: &Client, name: &str) -> Result<bool, AlarmsError> {
    let out = client
        .list_dashboards()
        .dashboard_name_prefix(name)
        .send()
        .await
        .map_err(|e| AlarmsError::Dashboard {
            call: "ListDashboards",
            name: name.to_owned(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
    Ok(out
        .dashboard_entries()
        .iter()
        .any(|d| d.dashboard_name() == Some(name)))
}

fn dashboard_change(
    config: &DashboardConfig,
    target: &Target<'_>,
    region: &str,
    desired_names: &[String],
    arns: &BTreeMap<String, String>,
    existing: Option<&serde_json::Value>,
) -> DashboardChange {
    let body =
        DashboardBuilder::new(config, target, region).build(&alarm_arns(desired_names, arns));
    let action = match existing {
        None => DashboardAction::Create,
        Some(e) if *e == body.body => DashboardAction::Unchanged,
        Some(_) => DashboardAction::Update,
    };
    DashboardChange {
        name: config.resolved_name(target.service, target.environment),
        action,
        body: body.body,
        notes: body.notes,
    }
}

async fn observe(
    client: &Client,
    config: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
) -> Result<Observed, AlarmsError> {
    validate::validate(config, dashboard, target)?;
    let desired = desired::desired_alarms(config, target)?;
    let prefix = config
        .alarm_management
        .resolved_prefix(target.service, target.environment);
    let found = describe_managed(client, &prefix).await?;
    let arns: BTreeMap<String, String> = found
        .iter()
        .filter_map(|a| Some((a.alarm_name()?.to_owned(), a.alarm_arn()?.to_owned())))
        .collect();
    let existing: Vec<AlarmDefinition> = found
        .iter()
        .map(AlarmDefinition::from_metric_alarm)
        .collect();
    let alarms = plan::diff(
        &desired,
        &existing,
        config.alarm_management.prune,
        |a: &AlarmDefinition| a.watches_only(target),
    );
    let current_monthly_usd = existing.iter().map(AlarmDefinition::monthly_cost_usd).sum();
    let planned_monthly_usd = alarms.iter().map(|c| c.monthly_cost_usd).sum();
    let (dash, existing_dashboard) = if dashboard.enabled {
        let name = dashboard.resolved_name(target.service, target.environment);
        let current = get_dashboard(client, &name).await?;
        let names: Vec<String> = desired.iter().map(|a| a.name.clone()).collect();
        let change = dashboard_change(
            dashboard,
            target,
            &region_of(client),
            &names,
            &arns,
            current.as_ref(),
        );
        (Some(change), current)
    } else {
        (None, None)
    };
    Ok(Observed {
        plan: Plan {
            prefix,
            prune: config.alarm_management.prune,
            alarms,
            dashboard: dash,
            current_monthly_usd,
            planned_monthly_usd,
        },
        existing_dashboard,
    })
}

/// Dry run: what `apply` would do, with the estimated monthly alarm cost. Only reads
/// (DescribeAlarms, GetDashboard).
pub async fn plan(
    client: &Client,
    config: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
) -> Result<Plan, AlarmsError> {
    Ok(observe(client, config, dashboard, target).await?.plan)
}

/// Reconciles CloudWatch with the configuration: creates and updates declared alarms,
/// deletes undeclared managed ones when `prune` is on, and writes the dashboard when its body
/// differs. Idempotent: a second call makes no write call.
pub async fn apply(
    client: &Client,
    config: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
) -> Result<ApplyReport, AlarmsError> {
    let observed = observe(client, config, dashboard, target).await?;
    let mut report = ApplyReport::default();
    apply::apply_alarms(
        client,
        &observed.plan,
        &config.alarm_management,
        &mut report,
    )
    .await?;
    let Some(mut dash) = observed.plan.dashboard.clone() else {
        return Ok(report);
    };
    if !report.created.is_empty() {
        // New alarms have ARNs now: rebuild the alarm widget from what CloudWatch reports.
        let prefix = &observed.plan.prefix;
        let arns: BTreeMap<String, String> = describe_managed(client, prefix)
            .await?
            .iter()
            .filter_map(|a| Some((a.alarm_name()?.to_owned(), a.alarm_arn()?.to_owned())))
            .collect();
        let names: Vec<String> = observed
            .plan
            .alarms
            .iter()
            .filter(|c| !matches!(c.action, AlarmAction::Delete | AlarmAction::Keep))
            .map(|c| c.name.clone())
            .collect();
        dash = dashboard_change(
            dashboard,
            target,
            &region_of(client),
            &names,
            &arns,
            observed.existing_dashboard.as_ref(),
        );
    }
    if dash.action != DashboardAction::Unchanged {
        let body = dash.body.to_string();
        let mut pacer = Pacer::new(10.0);
        let (res, throttled) = paced(
            &mut pacer,
            RetryPolicy::from_config(&config.alarm_management),
            || {
                client
                    .put_dashboard()
                    .dashboard_name(&dash.name)
                    .dashboard_body(&body)
                    .send()
            },
        )
        .await;
        report.retried += throttled;
        let out = res.map_err(|e| AlarmsError::Dashboard {
            call: "PutDashboard",
            name: dash.name.clone(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
        for m in out.dashboard_validation_messages() {
            tracing::warn!(
                dashboard = %dash.name,
                path = m.data_path().unwrap_or_default(),
                "CloudWatch flagged the dashboard body: {}",
                m.message().unwrap_or_default()
            );
        }
        report.write_calls += 1;
        report.dashboard_written = true;
    }
    Ok(report)
}
