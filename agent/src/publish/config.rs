//! The `[publish]` section of the agent's configuration: where and how PutMetricData goes.
//!
//! Every key has a default that suits an ECS sidecar talking to real CloudWatch; tests and
//! LocalStack set `endpoint_url`. Limits default to CloudWatch's own (from the
//! CloudWatch API model: PutMetricData and MetricDatum) and may only be
//! lowered, never raised past them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cloudwatch::{MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES, MAX_VALUES_PER_DATUM};

/// The smallest `max_request_bytes` accepted: every datum that passes validation fits in it.
pub const MIN_REQUEST_BYTES: usize = 64 * 1024;

/// `[publish]`: CloudWatch client, request shaping, retries and the pending queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// AWS Region. Default: none, so aws-config's chain decides (`AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile, then IMDS/ECS).
    pub region: Option<String>,
    /// Endpoint override, for example `http://127.0.0.1:4566` for LocalStack. Default: none
    /// (the Region's CloudWatch endpoint; `AWS_ENDPOINT_URL_CLOUDWATCH` also works).
    pub endpoint_url: Option<String>,
    /// PutMetricData requests in flight at once. Default 4.
    pub max_concurrent_requests: usize,
    /// Attempts per request for throttling, 5xx, timeouts and connection errors (1 = no retry).
    /// Default 5 (as the CloudWatch agent).
    pub max_attempts: u32,
    /// First backoff between attempts in milliseconds; doubles each attempt, with full
    /// jitter. Default 200.
    pub backoff_base_ms: u64,
    /// Largest backoff between attempts, and between retries of the pending queue while
    /// CloudWatch does not answer, in milliseconds. Default 20000.
    pub backoff_max_ms: u64,
    /// Timeout of one HTTP attempt in milliseconds (connect + send + answer). Default 10000.
    pub attempt_timeout_ms: u64,
    /// TCP/TLS connect timeout in milliseconds. Default 3000.
    pub connect_timeout_ms: u64,
    /// Memory bound of the pending queue (closed periods and datums waiting for CloudWatch) in
    /// bytes. When a new period would pass it, the oldest data is dropped and counted
    /// (`reason="queue_full"`). Default 128 MiB: one period at the default
    /// `aggregate.max_series` (100k series and their `ErrorRate`, about 67 MiB at eight
    /// dimensions each) must fit, or every such period would lose its oldest metrics while
    /// CloudWatch answers; the default holds almost two, for a short outage. `tally-agent
    /// validate` warns when a configuration does not fit.
    pub max_pending_bytes: usize,
    /// Datums per request, at most 1000 (CloudWatch's limit). Default 1000.
    pub max_datums_per_request: usize,
    /// Estimated uncompressed payload bytes per request, 65536..=999000. Default 999000.
    pub max_request_bytes: usize,
    /// Distinct values per Values/Counts datum, 1..=150 (CloudWatch's limit). Default 150.
    pub max_values_per_datum: usize,
    /// Gzip request bodies (PutMetricData supports it; the SDK compresses bodies at or above
    /// `compression_min_bytes`). Default true.
    pub compress_requests: bool,
    /// Smallest body the SDK compresses, in bytes (0..=10485760). Default 10240.
    pub compression_min_bytes: u32,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            max_concurrent_requests: 4,
            max_attempts: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 20_000,
            attempt_timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            max_pending_bytes: 128 * 1024 * 1024,
            max_datums_per_request: MAX_DATUMS_PER_REQUEST,
            max_request_bytes: MAX_REQUEST_BYTES,
            max_values_per_datum: MAX_VALUES_PER_DATUM,
            compress_requests: true,
            compression_min_bytes: 10_240,
        }
    }
}

/// A `[publish]` value outside what CloudWatch or the agent can work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishConfigError {
    /// A numeric key out of its range.
    #[error("[publish] {key} = {value} is out of range: set it between {min} and {max}")]
    OutOfRange {
        /// The key, as written in the TOML file.
        key: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// `backoff_base_ms` above `backoff_max_ms`.
    #[error("[publish] backoff_base_ms ({base}) exceeds backoff_max_ms ({max}): lower backoff_base_ms or raise backoff_max_ms")]
    BackoffOrder {
        /// backoff_base_ms.
        base: u64,
        /// backoff_max_ms.
        max: u64,
    },
    /// An endpoint that is not an http(s) URL.
    #[error("[publish] endpoint_url = {0:?} is not an http:// or https:// URL: set it like \"http://127.0.0.1:4566\" or remove it to use the Region's endpoint")]
    Endpoint(String),
    /// An empty region name.
    #[error("[publish] region is empty: set it like \"us-east-1\" or remove it to use AWS_REGION")]
    EmptyRegion,
}

fn range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), PublishConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(PublishConfigError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

impl PublishConfig {
    /// Checks every key; the error names the key to change.
    pub fn validate(&self) -> Result<(), PublishConfigError> {
        if let Some(region) = &self.region {
            if region.trim().is_empty() {
                return Err(PublishConfigError::EmptyRegion);
            }
        }
        if let Some(url) = &self.endpoint_url {
            let ok = (url.starts_with("http://") && url.len() > 7)
                || (url.starts_with("https://") && url.len() > 8);
            if !ok {
                return Err(PublishConfigError::Endpoint(url.clone()));
            }
        }
        range(
            "max_concurrent_requests",
            self.max_concurrent_requests as u64,
            1,
            64,
        )?;
        range("max_attempts", u64::from(self.max_attempts), 1, 20)?;
        range("backoff_base_ms", self.backoff_base_ms, 1, 600_000)?;
        range("backoff_max_ms", self.backoff_max_ms, 1, 600_000)?;
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(PublishConfigError::BackoffOrder {
                base: self.backoff_base_ms,
                max: self.backoff_max_ms,
            });
        }
        range("attempt_timeout_ms", self.attempt_timeout_ms, 100, 300_000)?;
        range("connect_timeout_ms", self.connect_timeout_ms, 100, 300_000)?;
        range(
            "max_pending_bytes",
            self.max_pending_bytes as u64,
            1024 * 1024,
            64 * 1024 * 1024 * 1024,
        )?;
        range(
            "max_datums_per_request",
            self.max_datums_per_request as u64,
            1,
            MAX_DATUMS_PER_REQUEST as u64,
        )?;
        range(
            "max_request_bytes",
            self.max_request_bytes as u64,
            MIN_REQUEST_BYTES as u64,
            MAX_REQUEST_BYTES as u64,
        )?;
        range(
            "max_values_per_datum",
            self.max_values_per_datum as u64,
            1,
            MAX_VALUES_PER_DATUM as u64,
        )?;
        range(
            "compression_min_bytes",
            u64::from(self.compression_min_bytes),
            0,
            10_485_760,
        )?;
        Ok(())
    }

    /// What is wrong with this section, for the configuration's list of problems: the same
    /// check as [`PublishConfig::validate`], which the client builder asks for its typed error.
    pub fn problems(&self) -> Vec<String> {
        self.validate()
            .err()
            .map(|e| e.to_string())
            .into_iter()
            .collect()
    }

    /// `backoff_base_ms` as a duration.
    pub fn backoff_base(&self) -> Duration {
        Duration::from_millis(self.backoff_base_ms)
    }

    /// `backoff_max_ms` as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// `attempt_timeout_ms` as a duration.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_docs_list_every_publish_key_with_its_default() {
        let doc = include_str!("../../../docs/configuration.md");
        let section = doc
            .split("## `[publish]`")
            .nth(1)
            .expect("docs/configuration.md has a [publish] section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let defaults = toml::Value::try_from(PublishConfig::default()).unwrap();
        let every = toml::Value::try_from(PublishConfig {
            region: Some("r".into()),
            endpoint_url: Some("e".into()),
            ..PublishConfig::default()
        })
        .unwrap();
        let mut documented: Vec<&str> = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`');
            documented.push(key);
            match defaults.get(key) {
                Some(v) => assert_eq!(cells[2].trim_matches('`'), v.to_string(), "{key}"),
                None => assert_eq!(cells[2], "none", "{key} has no default: the docs say none"),
            }
        }
        let mut keys: Vec<&str> = every
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        documented.sort_unstable();
        assert_eq!(documented, keys, "docs/configuration.md [publish] table");
    }

    #[test]
    fn the_defaults_are_valid_and_match_cloudwatch_limits() {
        let c = PublishConfig::default();
        c.validate().unwrap();
        assert_eq!(c.max_datums_per_request, 1000);
        assert_eq!(c.max_values_per_datum, 150);
        assert_eq!(c.max_request_bytes, 999_000);
    }

    #[test]
    fn a_toml_section_overrides_only_the_keys_it_names() {
        let c: PublishConfig =
            toml::from_str("endpoint_url = \"http://127.0.0.1:4566\"\nmax_attempts = 3\n").unwrap();
        assert_eq!(c.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.max_concurrent_requests, 4);
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let e = toml::from_str::<PublishConfig>("max_atempts = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_atempts"), "{e}");
    }

    #[test]
    fn limits_above_cloudwatch_are_refused_with_the_key_named() {
        let c = PublishConfig {
            max_values_per_datum: 151,
            ..PublishConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_values_per_datum = 151"), "{e}");
        let c = PublishConfig {
            max_datums_per_request: 1001,
            ..PublishConfig::default()
        };
        assert!(c.validate().is_err());
        let c = PublishConfig {
            max_request_bytes: 1_000_000,
            ..PublishConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn an_endpoint_without_a_scheme_is_refused() {
        let c = PublishConfig {
            endpoint_url: Some("127.0.0.1:4566".into()),
            ..PublishConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("http://"));
    }
}
