//! CloudWatch's naming rules, checked before a series is admitted so that a datum is never
//! refused by `PutMetricData` for its name (limits from the CloudWatch API model:
//! PutMetricData, MetricDatum and Dimension in the CloudWatch API reference).

use thiserror::Error;

/// Longest namespace, metric name and dimension name (CloudWatch API model).
pub const MAX_NAME_LEN: usize = 255;
/// Longest dimension value (CloudWatch API model).
pub const MAX_DIMENSION_VALUE_LEN: usize = 1024;
/// Most dimensions on one metric (CloudWatch API model).
pub const MAX_DIMENSIONS: usize = 30;

/// Why a name or value breaks CloudWatch's rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RuleError {
    /// Empty.
    #[error("{what} is empty: CloudWatch needs at least one character")]
    Empty {
        /// What was checked.
        what: &'static str,
    },
    /// Too long.
    #[error("{what} is {len} characters, over CloudWatch's limit of {max}: shorten it")]
    TooLong {
        /// What was checked.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains a non-ASCII character.
    #[error("{what} {value:?} contains non-ASCII characters, which CloudWatch refuses in dimensions: transliterate or encode it")]
    NonAscii {
        /// What was checked.
        what: &'static str,
        /// The offending text (truncated).
        value: String,
    },
    /// Contains a control character.
    #[error("{what} {value:?} contains a control character: remove it")]
    Control {
        /// What was checked.
        what: &'static str,
        /// The offending text (truncated).
        value: String,
    },
    /// Starts with ':'.
    #[error("{what} {value:?} starts with ':', which CloudWatch reserves")]
    LeadingColon {
        /// What was checked.
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// A namespace starting with `AWS/`.
    #[error("namespace {0:?} starts with \"AWS/\", which is reserved for AWS services: pick your own, e.g. \"MyCompany/Shop\"")]
    ReservedNamespace(String),
    /// A label named like a global dimension.
    #[error("label {0:?} collides with a dimension the agent sets itself (ServiceName, Environment or an [ecs] dimension): rename the label")]
    ReservedDimension(String),
    /// More dimensions than CloudWatch allows once the agent's own are added.
    #[error("{0} dimensions with ServiceName, Environment and the [ecs] dimensions: CloudWatch allows {MAX_DIMENSIONS}; drop labels or [ecs].dimensions")]
    TooManyDimensions(usize),
}

impl RuleError {
    /// A short, stable label for counting (`tally_agent_dropped_samples_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            RuleError::Empty { .. } => "empty_name",
            RuleError::TooLong { .. } => "name_too_long",
            RuleError::NonAscii { .. } => "non_ascii_dimension",
            RuleError::Control { .. } => "control_character",
            RuleError::LeadingColon { .. } => "leading_colon",
            RuleError::ReservedNamespace(_) => "reserved_namespace",
            RuleError::ReservedDimension(_) => "reserved_dimension",
            RuleError::TooManyDimensions(_) => "too_many_dimensions",
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn common(what: &'static str, s: &str, max: usize, ascii: bool) -> Result<(), RuleError> {
    if s.is_empty() {
        return Err(RuleError::Empty { what });
    }
    let len = s.chars().count();
    if len > max {
        return Err(RuleError::TooLong { what, len, max });
    }
    if s.chars().any(char::is_control) {
        return Err(RuleError::Control {
            what,
            value: short(s).escape_debug().to_string(),
        });
    }
    if ascii && !s.is_ascii() {
        return Err(RuleError::NonAscii {
            what,
            value: short(s),
        });
    }
    Ok(())
}

/// Namespace: 1-255 characters, no control characters, not `:` first, not `AWS/`.
pub fn check_namespace(s: &str) -> Result<(), RuleError> {
    common("namespace", s, MAX_NAME_LEN, false)?;
    if s.starts_with(':') {
        return Err(RuleError::LeadingColon {
            what: "namespace",
            value: short(s),
        });
    }
    if s.starts_with("AWS/") {
        return Err(RuleError::ReservedNamespace(short(s)));
    }
    Ok(())
}

/// Metric name: 1-255 characters, no control characters.
pub fn check_metric_name(s: &str) -> Result<(), RuleError> {
    common("metric name", s, MAX_NAME_LEN, false)
}

/// Dimension name: 1-255 ASCII characters, no control characters, not `:` first.
pub fn check_dimension_name(s: &str) -> Result<(), RuleError> {
    common("dimension name", s, MAX_NAME_LEN, true)?;
    if s.starts_with(':') {
        return Err(RuleError::LeadingColon {
            what: "dimension name",
            value: short(s),
        });
    }
    Ok(())
}

/// Dimension value: 1-1024 ASCII characters, no control characters.
pub fn check_dimension_value(s: &str) -> Result<(), RuleError> {
    common("dimension value", s, MAX_DIMENSION_VALUE_LEN, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_at_the_length_limit_pass_and_one_more_character_fails() {
        assert!(check_metric_name(&"a".repeat(255)).is_ok());
        assert!(matches!(
            check_metric_name(&"a".repeat(256)),
            Err(RuleError::TooLong { len: 256, .. })
        ));
        assert!(check_dimension_value(&"v".repeat(1024)).is_ok());
        assert!(check_dimension_value(&"v".repeat(1025)).is_err());
    }

    #[test]
    fn dimension_values_must_be_ascii_without_control_characters() {
        assert_eq!(
            check_dimension_value("café").unwrap_err().reason(),
            "non_ascii_dimension"
        );
        assert_eq!(
            check_dimension_value("a\nb").unwrap_err().reason(),
            "control_character"
        );
        assert_eq!(
            check_dimension_value("").unwrap_err().reason(),
            "empty_name"
        );
    }

    #[test]
    fn reserved_namespaces_and_leading_colons_are_refused() {
        assert!(check_namespace("AWS/ECS").is_err());
        assert!(check_namespace(":x").is_err());
        assert!(check_namespace("ECS/WebApp").is_ok());
        assert!(check_dimension_name(":Route").is_err());
    }
}
