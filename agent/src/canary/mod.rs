//! The canary gate: is the new revision of a service as healthy as the old one?
//!
//! ```text
//!  agent (each task)                                   tally-agent canary (a pipeline step)
//!   [canary] publish_revision                           --canary 42 --baseline 41
//!   revision = task metadata Revision                           │
//!   aggregate/revision: RequestCount, ErrorCount,        query: one GetMetricData call,
//!     ResponseTime per ServiceName+Environment              plain MetricStat queries (Sum,
//!     + TaskDefinitionRevision (+ ErrorRate derived)        Sum, p99), one period = window
//!          │                                                    │
//!          └──────────── PutMetricData ──▶ CloudWatch ──────────┘
//!                                                        verdict: healthy 0 / unhealthy 1 /
//!                                                        not enough data 2 (+ table or JSON)
//! ```
//!
//! Publishing: with `[canary] publish_revision = true` every agent adds a per-revision rollup
//! of the service-level series ([`crate::aggregate::revision`]): a deployment adds a handful
//! of series, not one per route, and `/cost` shows how many (`revision_metrics`). The
//! revision is the `Revision` of the ECS task metadata, read once at start
//! ([`resolve_revision`]), or `[canary] revision`.
//!
//! Deciding: [`gate`] reads both sides over a window through GetMetricData ([`query`]) and
//! [`verdict::evaluate`] compares them: a minimum of requests on each side before any
//! verdict, the playbook's absolute limits (5% errors, 1 s p99) and limits relative to the
//! baseline (a significant rise in error rate, a slower p99). It decides; it does not call
//! ECS: the pipeline promotes or rolls back on its exit code.

pub mod config;
pub mod query;
pub mod verdict;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use tally::conventions::{ENVIRONMENT, SERVICE_NAME};

pub use self::config::CanaryConfig;
pub use self::verdict::{Report, Verdict};

use crate::config::Config;

/// Exit code of `tally-agent canary` when it could not decide at all (configuration, reading
/// CloudWatch); distinct from the three verdicts.
pub const EXIT_ERROR: u8 = 3;

/// Why the gate could not run.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The configuration or the command line cannot select the series.
    #[error("{0}")]
    Usage(String),
    /// GetMetricData failed.
    #[error(
        "reading the metrics (GetMetricData) failed: {0}. Check the CloudWatch endpoint, region \
         and credentials (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE) and the IAM permission \
         cloudwatch:GetMetricData"
    )]
    Read(String),
}

/// `tally-agent canary`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CanaryArgs {
    /// The canary's value of `[canary] dimension` (the new task definition revision: `42`).
    #[arg(long)]
    pub canary: String,
    /// The baseline's value (the revision being replaced: `41`).
    #[arg(long)]
    pub baseline: String,
    /// Window in seconds, ending now (default `[canary] window_secs`, 600).
    #[arg(long)]
    pub window_secs: Option<u32>,
    /// The value of a dimension in `[canary] keep` (`Route=/checkout`): the gate compares
    /// one series per side. Repeatable.
    #[arg(long = "dimension", value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub dimensions: Vec<(String, String)>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME=VALUE (e.g. Route=/checkout)")),
    }
}

/// Reads the revision from the ECS task metadata when `[canary] publish_revision` is on and
/// `[canary] revision` is unset. Never fails: without it the per-revision series are not
/// published, with one warning saying how to fix it.
pub async fn resolve_revision(config: &mut Config) {
    let c = &config.canary;
    if !c.publish_revision || !c.revision.is_empty() {
        return;
    }
    let uri = std::env::var(crate::ecs::METADATA_URI_ENV).unwrap_or_default();
    let found = if uri.trim().is_empty() {
        Err(format!(
            "{} is not set (not an ECS task)",
            crate::ecs::METADATA_URI_ENV
        ))
    } else {
        crate::ecs::fetch_task_metadata(uri.trim(), config.ecs.timeout(), config.ecs.attempts)
            .await
            .map_err(|e| e.to_string())
            .and_then(|m| {
                m.revision
                    .map(|r| r.trim().to_owned())
                    .filter(|r| crate::cloudwatch::rules::check_dimension_value(r).is_ok())
                    .ok_or_else(|| "the task metadata has no usable Revision".to_owned())
            })
    };
    match found {
        Ok(r) => {
            tracing::info!(dimension = %c.dimension, revision = %r, "publishing per revision");
            config.canary.revision = r;
        }
        Err(e) => tracing::warn!(
            "[canary] publish_revision = true but the revision is unknown ({e}): the \
             per-revision series are not published; set [canary] revision \
             (TALLY_CANARY__REVISION) or run in an ECS task"
        ),
    }
}

/// The end of a window that ends now, in Unix seconds: after the current second. An agent
/// stamps a period with its start, so a period that began this very second (closed early by
/// a SIGTERM, as in a deploy) is stamped `now`, and GetMetricData's EndTime is exclusive.
fn window_end(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 1
}

/// Reads both sides and decides.
pub async fn gate(
    client: &Client,
    config: &Config,
    args: &CanaryArgs,
) -> Result<Report, GateError> {
    let mut cfg = config.canary.clone();
    if let Some(w) = args.window_secs {
        cfg.window_secs = w;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        return Err(GateError::Usage(problems.join("; ")));
    }
    if config.service.is_empty() || config.environment.is_empty() {
        return Err(GateError::Usage(
            "the gate reads one ServiceName and Environment: set `service` and `environment` \
             (TALLY_SERVICE / TALLY_ENVIRONMENT, or --set service=...)"
                .into(),
        ));
    }
    if args.canary == args.baseline {
        return Err(GateError::Usage(format!(
            "--canary and --baseline are both {:?}: give the new and the old {}",
            args.canary, cfg.dimension
        )));
    }
    let mut common = vec![
        (SERVICE_NAME.to_owned(), config.service.clone()),
        (ENVIRONMENT.to_owned(), config.environment.clone()),
    ];
    for k in &cfg.keep {
        match args.dimensions.iter().find(|(n, _)| n == k) {
            Some(d) => common.push(d.clone()),
            None => {
                return Err(GateError::Usage(format!(
                    "[canary] keep lists {k}: give its value with --dimension {k}=VALUE"
                )))
            }
        }
    }
    if let Some((k, _)) = args.dimensions.iter().find(|(n, _)| !cfg.keep.contains(n)) {
        return Err(GateError::Usage(format!(
            "--dimension {k}: the per-revision series carry only [canary] keep = {:?} besides \
             ServiceName and Environment",
            cfg.keep
        )));
    }
    common.sort();
    let selector = query::Selector {
        namespace: config.namespace.clone(),
        common: common.clone(),
        dimension: cfg.dimension.clone(),
        latency_statistic: cfg.check_latency.then(|| cfg.latency_statistic.clone()),
    };
    let end_secs = window_end(SystemTime::now());
    let end = UNIX_EPOCH + Duration::from_secs(end_secs);
    let queries = query::queries(
        &selector,
        &args.canary,
        &args.baseline,
        cfg.window_secs as i32,
    );
    let results = query::fetch(
        client,
        queries,
        end,
        Duration::from_secs(u64::from(cfg.window_secs)),
    )
    .await?;
    let (canary, baseline) = query::sides(&results, &args.canary, &args.baseline)?;
    let to_ms = config.time_unit.nanos() / 1e6;
    let (verdict, checks) = verdict::evaluate(&cfg, &canary, &baseline, to_ms);
    Ok(Report {
        verdict,
        exit_code: verdict.exit_code(),
        namespace: config.namespace.clone(),
        dimensions: common,
        dimension: cfg.dimension,
        canary,
        baseline,
        window_secs: cfg.window_secs,
        window_end: end_secs,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_stamped_in_the_current_second_is_inside_the_window() {
        // A period that began at 1,000 s and was closed by a SIGTERM the same second: the
        // gate runs at 1,000.4 s. GetMetricData's bucket is [end - window, end).
        let period_start = 1_000;
        let now = UNIX_EPOCH + Duration::from_millis(1_000_400);
        let end = window_end(now);
        assert!(period_start < end && period_start >= end - 600);
        // A second later, the window still holds it.
        assert!(period_start < window_end(now + Duration::from_secs(1)));
    }
}
