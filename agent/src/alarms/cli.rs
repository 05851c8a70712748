//! `tally-agent alarms plan|apply`: the subcommand and the function the binary calls once it
//! has loaded the configuration, built the catalogue and the CloudWatch client.

use std::io::Write;

use aws_sdk_cloudwatch::Client;

use super::export::{export, ExportFormat};
use super::{apply, plan, AlarmsConfig, AlarmsError, DashboardConfig, Target};

/// `tally-agent alarms <command>`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AlarmsCommand {
    /// Dry run: list create / update / delete / keep / unchanged per alarm and the dashboard,
    /// with the estimated monthly alarm cost. Reads only.
    Plan {
        /// Print the plan as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create, update (and with `[alarm_management] prune = true` delete) the managed alarms
    /// and the dashboard. Running it twice writes nothing the second time.
    Apply {
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the alarms and dashboard `plan` shows as infrastructure code (a CloudFormation
    /// template or Terraform `.tf.json`) instead of creating them. Reads nothing from
    /// CloudWatch.
    Export {
        /// `cloudformation` (a JSON template) or `terraform` (`.tf.json`).
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
        /// The value of an `[ecs]` dimension (`ClusterName=prod`), for exporting outside the
        /// ECS task, where the task metadata that supplies it cannot be read. Repeatable.
        #[arg(long = "ecs-value", value_name = "NAME=VALUE", value_parser = parse_pair)]
        ecs_values: Vec<(String, String)>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME=VALUE (e.g. ClusterName=prod)")),
    }
}

/// Runs `command`, writing its output to `out`.
pub async fn run(
    command: &AlarmsCommand,
    client: &Client,
    alarms: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    match command {
        AlarmsCommand::Plan { json } => {
            let p = plan(client, alarms, dashboard, target).await?;
            if *json {
                serde_json::to_writer_pretty(&mut *out, &p).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                write!(out, "{p}")?;
            }
        }
        AlarmsCommand::Apply { json } => {
            let r = apply(client, alarms, dashboard, target).await?;
            if *json {
                serde_json::to_writer_pretty(&mut *out, &r).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "Applied: {} created, {} updated, {} deleted, {} unchanged, {} kept \
                     (prune off); dashboard {}; {} write call(s), {} retried attempt(s).",
                    r.created.len(),
                    r.updated.len(),
                    r.deleted.len(),
                    r.unchanged,
                    r.kept.len(),
                    if r.dashboard_written {
                        "written"
                    } else {
                        "unchanged"
                    },
                    r.write_calls,
                    r.retried
                )?;
                for (what, names) in [
                    ("created", &r.created),
                    ("updated", &r.updated),
                    ("deleted", &r.deleted),
                    ("kept", &r.kept),
                ] {
                    for n in names {
                        writeln!(out, "  {what:<8} {n}")?;
                    }
                }
            }
        }
        AlarmsCommand::Export { format, .. } => {
            write_export(*format, alarms, dashboard, target, out).map_err(|e| match e {
                ExportError::Config(c) => RunError::Alarms(c.into()),
                ExportError::Output(o) => RunError::Output(o),
            })?;
        }
    }
    Ok(())
}

/// `alarms export`: writes the document for `format` to `out` (pretty JSON, one trailing
/// newline). Needs no CloudWatch client.
pub fn write_export(
    format: ExportFormat,
    alarms: &AlarmsConfig,
    dashboard: &DashboardConfig,
    target: &Target<'_>,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let doc = export(alarms, dashboard, target, format)?;
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Errors of [`write_export`].
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The configuration is invalid; nothing was written.
    #[error(transparent)]
    Config(#[from] super::AlarmConfigError),
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Planning or applying failed.
    #[error(transparent)]
    Alarms(#[from] AlarmsError),
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
}
