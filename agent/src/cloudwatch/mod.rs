//! CloudWatch's own rules, in one place: the service's limits, its naming rules
//! ([`rules`]), its units, and what a failed call means ([`errors`]).
//!
//! Everything here describes CloudWatch, not tally, and depends on nothing else in the agent:
//! the aggregator checks names with [`rules`] before it admits a series, the publisher shapes
//! requests by the limits below and classifies failures with [`ErrorKind`], the alarm
//! provisioner classifies its failures the same way, and the cost estimate counts requests by
//! the same datum limit. Limits come from the CloudWatch API model (PutMetricData, MetricDatum,
//! Dimension) unless a line says otherwise.

use std::time::Duration;

use tally::wire::Unit;

pub mod errors;
pub mod rules;

pub use errors::{classify_answer, classify_sdk_error, ErrorKind, SendError};

/// Most datums in one PutMetricData request (MetricData + EntityMetricData).
pub const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// Most distinct values in one datum's `Values`.
pub const MAX_VALUES_PER_DATUM: usize = 150;
/// The uncompressed payload bound the CloudWatch agent keeps under CloudWatch's 1 MB POST limit.
pub const MAX_REQUEST_BYTES: usize = 999_000;
/// Most dimensions on one metric.
pub const MAX_DIMENSIONS: usize = rules::MAX_DIMENSIONS;

/// How old a datum's timestamp may be: two weeks.
pub const ACCEPTED_PAST: Duration = Duration::from_secs(14 * 24 * 3600);
/// How far in the future a datum's timestamp may be: two hours.
pub const ACCEPTED_FUTURE: Duration = Duration::from_secs(2 * 3600);
/// The future bound the agent applies: [`ACCEPTED_FUTURE`] minus five minutes for the clock
/// skew between this host and CloudWatch.
pub const MAX_FUTURE: Duration = ACCEPTED_FUTURE.saturating_sub(Duration::from_secs(300));

/// CloudWatch's `StandardUnit` name for a unit as published (`Count`, `Milliseconds`, ...).
///
/// `Unit::Nanoseconds` has no CloudWatch unit: the aggregator converts it to the configured
/// publish time unit first, so it maps to `None` here only as a safe fallback.
pub fn cloudwatch_unit(unit: Unit) -> &'static str {
    match unit {
        Unit::None | Unit::Nanoseconds => "None",
        Unit::Count => "Count",
        Unit::Microseconds => "Microseconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Seconds => "Seconds",
        Unit::Bytes => "Bytes",
        Unit::Percent => "Percent",
    }
}

/// Units a derived metric may be published in: the CloudWatch units tally's own [`Unit`]
/// has (a derived metric is published with its unit as [`parse_unit`] reads it, so a
/// CloudWatch unit outside this list, `Count/Second` say, would go out as `None`).
pub const DERIVED_UNITS: &[&str] = &[
    "None",
    "Count",
    "Microseconds",
    "Milliseconds",
    "Seconds",
    "Bytes",
    "Percent",
];

/// Parses a recorded-unit name as used in `[[aggregate.metrics]]` and `[[aggregate.derived]]`.
pub fn parse_unit(s: &str) -> Option<Unit> {
    Some(match s {
        "None" => Unit::None,
        "Count" => Unit::Count,
        "Nanoseconds" => Unit::Nanoseconds,
        "Microseconds" => Unit::Microseconds,
        "Milliseconds" => Unit::Milliseconds,
        "Seconds" => Unit::Seconds,
        "Bytes" => Unit::Bytes,
        "Percent" => Unit::Percent,
        _ => return None,
    })
}
