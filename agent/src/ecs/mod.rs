//! ECS task metadata -> extra dimensions.
//!
//! When the agent runs as a sidecar in an ECS task, the ECS container agent (EC2) or Fargate
//! sets `ECS_CONTAINER_METADATA_URI_V4`. At start the agent reads `$ECS_CONTAINER_METADATA_URI_V4/task`
//! once (short timeout, a few retries) and turns the fields the operator chose in `[ecs]` into
//! dimensions added to everything it publishes:
//!
//! ```toml
//! [ecs]
//! dimensions = ["ClusterName", "TaskDefinitionFamily", "AvailabilityZone"]
//! ```
//!
//! | `[ecs].dimensions` entry | task metadata field | example value           |
//! |--------------------------|---------------------|-------------------------|
//! | `ClusterName`            | `Cluster`           | `default` (short name, also when Fargate reports the full ARN) |
//! | `TaskDefinitionFamily`   | `Family`            | `checkout`              |
//! | `EcsServiceName`         | `ServiceName`       | `checkout-svc`          |
//! | `AvailabilityZone`       | `AvailabilityZone`  | `us-west-2a`            |
//! | `LaunchType`             | `LaunchType`        | `FARGATE` or `EC2`      |
//!
//! The ECS service name is published as `EcsServiceName` because `ServiceName` is tally's own
//! dimension (set by the top-level `service` key); CloudWatch rejects a datum that names one
//! dimension twice.
//!
//! Metadata is a convenience, never a reason to stop: when the variable is unset, the endpoint
//! does not answer, answers an error, or answers something that does not parse, the agent logs
//! one clear warning and publishes without the ECS dimensions. A field the endpoint does not
//! report (older ECS agents omit `ServiceName`) is left out with its own warning. Parsing is
//! lenient (unknown fields are ignored) because AWS only ever adds fields.
//!
//! The dimensions are resolved once, before the catalogue is built, so alarms and dashboards
//! provisioned from the catalogue carry exactly the dimensions that are published.

pub mod metadata;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use metadata::{fetch_task_metadata, MetadataError, TaskMetadata};

/// The environment variable ECS sets to this container's metadata endpoint (version 4).
pub const METADATA_URI_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The longest dimension value CloudWatch accepts, in characters.
const MAX_DIMENSION_VALUE_CHARS: usize = 1024;

/// One piece of task metadata that can become a dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EcsDimension {
    /// The cluster's short name (`Cluster`, with the ARN prefix removed on Fargate).
    ClusterName,
    /// The task definition family (`Family`).
    TaskDefinitionFamily,
    /// The ECS service that started the task (`ServiceName`; newer ECS agents only).
    EcsServiceName,
    /// The task's Availability Zone (`AvailabilityZone`).
    AvailabilityZone,
    /// `EC2`, `FARGATE` or `EXTERNAL` (`LaunchType`).
    LaunchType,
}

impl EcsDimension {
    /// Every dimension, in documentation order.
    pub const ALL: [EcsDimension; 5] = [
        EcsDimension::ClusterName,
        EcsDimension::TaskDefinitionFamily,
        EcsDimension::EcsServiceName,
        EcsDimension::AvailabilityZone,
        EcsDimension::LaunchType,
    ];

    /// The CloudWatch dimension name, which is also how `[ecs].dimensions` spells it.
    pub fn name(self) -> &'static str {
        match self {
            EcsDimension::ClusterName => "ClusterName",
            EcsDimension::TaskDefinitionFamily => "TaskDefinitionFamily",
            EcsDimension::EcsServiceName => "EcsServiceName",
            EcsDimension::AvailabilityZone => "AvailabilityZone",
            EcsDimension::LaunchType => "LaunchType",
        }
    }

    /// The task metadata field the value comes from.
    pub fn metadata_field(self) -> &'static str {
        match self {
            EcsDimension::ClusterName => "Cluster",
            EcsDimension::TaskDefinitionFamily => "Family",
            EcsDimension::EcsServiceName => "ServiceName",
            EcsDimension::AvailabilityZone => "AvailabilityZone",
            EcsDimension::LaunchType => "LaunchType",
        }
    }

    /// This dimension's value in `meta`, if the metadata reports a usable one.
    pub fn value_in(self, meta: &TaskMetadata) -> Option<String> {
        let raw = match self {
            EcsDimension::ClusterName => meta.cluster.as_deref().map(cluster_short_name),
            EcsDimension::TaskDefinitionFamily => meta.family.as_deref(),
            EcsDimension::EcsServiceName => meta.service_name.as_deref(),
            EcsDimension::AvailabilityZone => meta.availability_zone.as_deref(),
            EcsDimension::LaunchType => meta.launch_type.as_deref(),
        }?;
        let value = raw.trim();
        let usable = !value.is_empty()
            && value.is_ascii()
            && value.chars().count() <= MAX_DIMENSION_VALUE_CHARS;
        usable.then(|| value.to_owned())
    }
}

impl fmt::Display for EcsDimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `[ecs].dimensions` entry that is not one of [`EcsDimension::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownEcsDimension {
    /// `ServiceName` collides with tally's own dimension.
    #[error(
        "[ecs].dimensions: \"ServiceName\" is tally's own dimension (set by the top-level `service` \
         key); write \"EcsServiceName\" to add the ECS service name"
    )]
    ServiceName,
    /// Anything else.
    #[error(
        "[ecs].dimensions: unknown dimension {0:?}; choose among \"ClusterName\", \
         \"TaskDefinitionFamily\", \"EcsServiceName\", \"AvailabilityZone\", \"LaunchType\""
    )]
    Other(String),
}

impl FromStr for EcsDimension {
    type Err = UnknownEcsDimension;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(d) = EcsDimension::ALL.into_iter().find(|d| d.name() == s) {
            return Ok(d);
        }
        if s == "ServiceName" {
            return Err(UnknownEcsDimension::ServiceName);
        }
        Err(UnknownEcsDimension::Other(s.to_owned()))
    }
}

impl Serialize for EcsDimension {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for EcsDimension {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[ecs]` section of the agent configuration.
///
/// ```toml
/// [ecs]
/// dimensions = ["ClusterName", "LaunchType"]  # default: none (no metadata request at all)
/// timeout_ms = 1000                           # per attempt, 1..=30000
/// attempts = 3                                # 1..=10
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEcsConfig")]
pub struct EcsConfig {
    /// Task metadata fields to add as dimensions to every published metric, in this order.
    /// Empty (the default) means the agent never asks for task metadata.
    pub dimensions: Vec<EcsDimension>,
    /// How long one metadata request may take, connect to last body byte, in milliseconds.
    /// Default 1000.
    pub timeout_ms: u64,
    /// How many times to ask before giving up (the first try included). Default 3.
    pub attempts: u32,
}

impl Default for EcsConfig {
    fn default() -> Self {
        Self {
            dimensions: Vec::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

const DEFAULT_TIMEOUT_MS: u64 = 1000;
const DEFAULT_ATTEMPTS: u32 = 3;
const MAX_TIMEOUT_MS: u64 = 30_000;
const MAX_ATTEMPTS: u32 = 10;

impl EcsConfig {
    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// `[ecs]` as written, before the checks in [`EcsConfig`]'s `TryFrom`.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEcsConfig {
    dimensions: Vec<EcsDimension>,
    timeout_ms: u64,
    attempts: u32,
}

impl Default for RawEcsConfig {
    fn default() -> Self {
        let d = EcsConfig::default();
        Self {
            dimensions: d.dimensions,
            timeout_ms: d.timeout_ms,
            attempts: d.attempts,
        }
    }
}

/// An `[ecs]` section that parses but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcsConfigError {
    /// The same dimension twice.
    #[error("[ecs].dimensions lists {0} twice; list each dimension once")]
    Duplicate(EcsDimension),
    /// `timeout_ms` out of range.
    #[error("[ecs].timeout_ms = {0} is out of range; use 1..={MAX_TIMEOUT_MS} (default {DEFAULT_TIMEOUT_MS})")]
    Timeout(u64),
    /// `attempts` out of range.
    #[error(
        "[ecs].attempts = {0} is out of range; use 1..={MAX_ATTEMPTS} (default {DEFAULT_ATTEMPTS})"
    )]
    Attempts(u32),
}

impl TryFrom<RawEcsConfig> for EcsConfig {
    type Error = EcsConfigError;

    fn try_from(raw: RawEcsConfig) -> Result<Self, Self::Error> {
        for (i, d) in raw.dimensions.iter().enumerate() {
            if raw.dimensions[..i].contains(d) {
                return Err(EcsConfigError::Duplicate(*d));
            }
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&raw.timeout_ms) {
            return Err(EcsConfigError::Timeout(raw.timeout_ms));
        }
        if !(1..=MAX_ATTEMPTS).contains(&raw.attempts) {
            return Err(EcsConfigError::Attempts(raw.attempts));
        }
        Ok(Self {
            dimensions: raw.dimensions,
            timeout_ms: raw.timeout_ms,
            attempts: raw.attempts,
        })
    }
}

/// What [`task_dimensions`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskDimensions {
    /// `(dimension name, value)` pairs to add to every published metric, in configured order.
    pub dimensions: Vec<(String, String)>,
    /// Everything that kept a configured dimension out, worded for an operator. Each one was
    /// also logged as a warning.
    pub warnings: Vec<String>,
}

/// The short cluster name: `arn:aws:ecs:us-west-2:111122223333:cluster/default` -> `default`.
/// A name that is not an ARN is returned as is.
pub fn cluster_short_name(cluster: &str) -> &str {
    if cluster.starts_with("arn:") {
        // Cluster ARNs end in `cluster/<name>`; cluster names cannot contain '/' or ':'.
        cluster.rsplit(['/', ':']).next().unwrap_or(cluster)
    } else {
        cluster
    }
}

/// The configured dimensions present in `meta`, and the ones it does not report.
pub fn dimensions_from(
    meta: &TaskMetadata,
    wanted: &[EcsDimension],
) -> (Vec<(String, String)>, Vec<EcsDimension>) {
    let mut found = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for &d in wanted {
        match d.value_in(meta) {
            Some(v) => found.push((d.name().to_owned(), v)),
            None => missing.push(d),
        }
    }
    (found, missing)
}

/// Resolves the configured ECS dimensions from the endpoint in `$ECS_CONTAINER_METADATA_URI_V4`.
///
/// Never fails: every problem becomes a warning (logged and returned) and the dimensions it
/// affects are left out. Takes at most about `attempts x timeout_ms` plus short back-offs.
pub async fn task_dimensions(config: &EcsConfig) -> TaskDimensions {
    let uri = std::env::var(METADATA_URI_ENV).ok();
    task_dimensions_from(config, uri.as_deref()).await
}

/// [`task_dimensions`] with the endpoint given explicitly (`None`: not running on ECS).
pub async fn task_dimensions_from(config: &EcsConfig, base_uri: Option<&str>) -> TaskDimensions {
    let mut out = TaskDimensions::default();
    if config.dimensions.is_empty() {
        return out;
    }
    let names = join_names(&config.dimensions);
    let base_uri = match base_uri.map(str::trim) {
        Some(u) if !u.is_empty() => u,
        _ => {
            warn(
                &mut out,
                format!(
                    "{METADATA_URI_ENV} is not set, so this is not an ECS task (or its platform \
                     predates task metadata v4): publishing without the [ecs] dimensions {names}. \
                     Remove them from [ecs].dimensions when running outside ECS."
                ),
            );
            return out;
        }
    };
    let meta = match fetch_task_metadata(base_uri, config.timeout(), config.attempts).await {
        Ok(meta) => meta,
        Err(e) => {
            warn(
                &mut out,
                format!(
                    "ECS task metadata unavailable ({e}); publishing without the [ecs] \
                     dimensions {names}. The agent carries on; restart the task to retry, or \
                     raise [ecs].timeout_ms / [ecs].attempts if the endpoint is slow."
                ),
            );
            return out;
        }
    };
    let (found, missing) = dimensions_from(&meta, &config.dimensions);
    for d in missing {
        warn(
            &mut out,
            format!(
                "ECS task metadata has no usable {} field (older ECS agents and some platforms \
                 omit it): publishing without the {} dimension. Remove it from \
                 [ecs].dimensions to silence this warning.",
                d.metadata_field(),
                d.name()
            ),
        );
    }
    out.dimensions = found;
    out
}

fn warn(out: &mut TaskDimensions, message: String) {
    tracing::warn!(target: "tally_agent::ecs", "{message}");
    out.warnings.push(message);
}

fn join_names(dims: &[EcsDimension]) -> String {
    dims.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<EcsConfig, toml::de::Error> {
        #[derive(Deserialize)]
        struct Wrapper {
            ecs: EcsConfig,
        }
        toml::from_str::<Wrapper>(toml_text).map(|w| w.ecs)
    }

    #[test]
    fn an_empty_section_means_no_dimensions_and_documented_defaults() {
        let c = parse("[ecs]\n").unwrap();
        assert_eq!(c, EcsConfig::default());
        assert!(c.dimensions.is_empty());
        assert_eq!(c.timeout(), Duration::from_secs(1));
        assert_eq!(c.attempts, 3);
    }

    #[test]
    fn every_documented_dimension_name_parses_and_round_trips() {
        let c = parse(
            "[ecs]\ndimensions = [\"ClusterName\", \"TaskDefinitionFamily\", \"EcsServiceName\", \
             \"AvailabilityZone\", \"LaunchType\"]\ntimeout_ms = 250\nattempts = 5\n",
        )
        .unwrap();
        assert_eq!(c.dimensions, EcsDimension::ALL.to_vec());
        assert_eq!((c.timeout_ms, c.attempts), (250, 5));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&format!("[ecs]\n{text}")).unwrap(), c);
    }

    #[test]
    fn service_name_is_rejected_with_a_pointer_to_ecs_service_name() {
        let e = parse("[ecs]\ndimensions = [\"ServiceName\"]\n").unwrap_err();
        assert!(e.to_string().contains("EcsServiceName"), "{e}");
    }

    #[test]
    fn bad_sections_are_rejected_naming_the_key_to_fix() {
        for (text, needle) in [
            (
                "dimensions = [\"Cluster\"]",
                "unknown dimension \"Cluster\"",
            ),
            (
                "dimensions = [\"LaunchType\", \"LaunchType\"]",
                "LaunchType twice",
            ),
            ("timeout_ms = 0", "[ecs].timeout_ms = 0"),
            ("timeout_ms = 30001", "[ecs].timeout_ms = 30001"),
            ("attempts = 0", "[ecs].attempts = 0"),
            ("attempts = 11", "[ecs].attempts = 11"),
            ("dimension = []", "unknown field `dimension`"),
        ] {
            let e = parse(&format!("[ecs]\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn cluster_short_name_strips_every_arn_partition_and_keeps_plain_names() {
        for (cluster, short) in [
            ("default", "default"),
            (
                "arn:aws:ecs:us-west-2:111122223333:cluster/default",
                "default",
            ),
            (
                "arn:aws-cn:ecs:cn-north-1:111122223333:cluster/prod-1",
                "prod-1",
            ),
            (
                "arn:aws-us-gov:ecs:us-gov-west-1:111122223333:cluster/a_b",
                "a_b",
            ),
        ] {
            assert_eq!(cluster_short_name(cluster), short);
        }
    }

    #[test]
    fn blank_non_ascii_and_oversized_values_are_reported_missing() {
        let mut meta = TaskMetadata {
            cluster: Some("   ".into()),
            family: Some("caf\u{e9}".into()),
            availability_zone: Some("a".repeat(1025)),
            launch_type: Some(" FARGATE ".into()),
            ..TaskMetadata::default()
        };
        let (found, missing) = dimensions_from(&meta, &EcsDimension::ALL);
        assert_eq!(found, vec![("LaunchType".to_owned(), "FARGATE".to_owned())]);
        assert_eq!(
            missing,
            vec![
                EcsDimension::ClusterName,
                EcsDimension::TaskDefinitionFamily,
                EcsDimension::EcsServiceName,
                EcsDimension::AvailabilityZone,
            ]
        );
        meta.availability_zone = Some("a".repeat(1024));
        let (found, _) = dimensions_from(&meta, &[EcsDimension::AvailabilityZone]);
        assert_eq!(found.len(), 1);
    }

    #[tokio::test]
    async fn no_configured_dimensions_means_no_request_and_no_warning() {
        // An address nothing could answer on: a request would produce a warning.
        let got =
            task_dimensions_from(&EcsConfig::default(), Some("http://127.0.0.1:1/v4/x")).await;
        assert_eq!(got, TaskDimensions::default());
    }

    #[tokio::test]
    async fn an_unset_endpoint_is_one_warning_naming_the_variable_and_the_dimensions() {
        let config = EcsConfig {
            dimensions: vec![EcsDimension::ClusterName, EcsDimension::LaunchType],
            ..EcsConfig::default()
        };
        for uri in [None, Some(""), Some("  ")] {
            let got = task_dimensions_from(&config, uri).await;
            assert!(got.dimensions.is_empty());
            assert_eq!(got.warnings.len(), 1, "{:?}", got.warnings);
            assert!(got.warnings[0].contains(METADATA_URI_ENV));
            assert!(got.warnings[0].contains("ClusterName, LaunchType"));
        }
    }
}
