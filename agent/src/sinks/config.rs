//! The `[sink]` section: which sink receives closed periods, its queue and the shutdown
//! deadline, with its check.

use serde::Deserialize;

use super::stdout::StdoutFormat;

/// Which sink receives closed periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// CloudWatch when AWS credentials or an endpoint are configured, else stdout (default).
    #[default]
    Auto,
    /// Print periods locally.
    Stdout,
    /// Publish to CloudWatch.
    Cloudwatch,
}

/// `[sink]`: where closed periods go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// `auto` (default), `stdout` or `cloudwatch`.
    pub kind: SinkKind,
    /// Stdout format: `table` (default) or `json`.
    pub stdout_format: StdoutFormat,
    /// Closed periods waiting for the sink; more are dropped and counted. Default 16.
    pub queue_periods: usize,
    /// Seconds from SIGTERM until the agent exits, publishing included. Default 20.
    pub shutdown_deadline_secs: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Auto,
            stdout_format: StdoutFormat::Table,
            queue_periods: 16,
            shutdown_deadline_secs: 20,
        }
    }
}

/// The longest `sink.shutdown_deadline_secs`: ECS's longest stopTimeout.
pub const MAX_SHUTDOWN_DEADLINE_SECS: u64 = 120;

impl SinkConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (key, v, min) in [
            ("sink.queue_periods", self.queue_periods as u64, 1),
            (
                "sink.shutdown_deadline_secs",
                self.shutdown_deadline_secs,
                1,
            ),
        ] {
            if v < min {
                errs.push(format!("{key} = {v} is too small: use at least {min}"));
            }
        }
        if self.shutdown_deadline_secs > MAX_SHUTDOWN_DEADLINE_SECS {
            errs.push(format!(
                "sink.shutdown_deadline_secs = {} exceeds ECS's longest stopTimeout ({MAX_SHUTDOWN_DEADLINE_SECS} s): the agent would be killed first",
                self.shutdown_deadline_secs
            ));
        }
        errs
    }
}
