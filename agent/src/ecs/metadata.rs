//! Reading `$ECS_CONTAINER_METADATA_URI_V4/task`: one HTTP GET on the task's link-local
//! endpoint, bounded in time and size, retried a few times, parsed leniently.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// The largest task metadata document accepted. AWS's examples are a few KiB; a task with
/// ten containers stays well under 64 KiB.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The task metadata fields tally uses. Every field is optional and unknown fields are ignored:
/// AWS adds fields over time and older agents omit some (`ServiceName`, `LaunchType`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct TaskMetadata {
    /// Short name on EC2, full ARN on Fargate.
    pub cluster: Option<String>,
    /// The task ARN.
    #[serde(rename = "TaskARN")]
    pub task_arn: Option<String>,
    /// Task definition family.
    pub family: Option<String>,
    /// Task definition revision (a string in the API).
    pub revision: Option<String>,
    /// The service that started the task, when the agent reports it.
    pub service_name: Option<String>,
    /// The task's Availability Zone.
    pub availability_zone: Option<String>,
    /// `EC2`, `FARGATE` or `EXTERNAL`.
    pub launch_type: Option<String>,
}

impl TaskMetadata {
    /// Parses a task metadata document.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Why task metadata could not be read. Each message names what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The endpoint variable holds something that is not an `http://` URI.
    #[error(
        "ECS_CONTAINER_METADATA_URI_V4 = {uri:?} is not an http:// URI ({reason}); ECS sets it \
         to http://169.254.170.2/v4/<id>, so check that nothing in the task definition overrides it"
    )]
    InvalidUri {
        /// The value.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer within the per-attempt timeout.
    #[error("GET {uri} got no complete answer within {timeout:?} in {}", attempts_text(*attempts))]
    Timeout {
        /// The URI asked.
        uri: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// Connection or protocol failure on the last attempt.
    #[error("GET {uri} failed in {}, last: {source}", attempts_text(*attempts))]
    Request {
        /// The URI asked.
        uri: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The endpoint answered a status other than 200.
    #[error("GET {uri} answered HTTP {status} (after {})", attempts_text(*attempts))]
    Status {
        /// The URI asked.
        uri: String,
        /// The status.
        status: StatusCode,
        /// Attempts made.
        attempts: u32,
    },
    /// The body could not be read, or exceeded [`MAX_METADATA_BYTES`].
    #[error("GET {uri}: reading the answer failed (after {}): {reason}", attempts_text(*attempts))]
    Body {
        /// The URI asked.
        uri: String,
        /// What went wrong.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The body is not a task metadata document.
    #[error("GET {uri} answered something that is not task metadata JSON: {source}")]
    Parse {
        /// The URI asked.
        uri: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{n} attempts")
    }
}

/// One attempt's outcome, before it is known whether another attempt follows.
enum AttemptError {
    Timeout,
    Request(hyper_util::client::legacy::Error),
    Status(StatusCode),
    Body(String),
    Parse(serde_json::Error),
}

impl AttemptError {
    /// Whether asking again can help: transport trouble, timeouts, 5xx and 429 can; a 4xx
    /// or a document that does not parse will answer the same way next time.
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Timeout | AttemptError::Request(_) | AttemptError::Body(_) => true,
            AttemptError::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            AttemptError::Parse(_) => false,
        }
    }

    fn into_error(self, uri: String, timeout: Duration, attempts: u32) -> MetadataError {
        match self {
            AttemptError::Timeout => MetadataError::Timeout {
                uri,
                timeout,
                attempts,
            },
            AttemptError::Request(source) => MetadataError::Request {
                uri,
                attempts,
                source,
            },
            AttemptError::Status(status) => MetadataError::Status {
                uri,
                status,
                attempts,
            },
            AttemptError::Body(reason) => MetadataError::Body {
                uri,
                reason,
                attempts,
            },
            AttemptError::Parse(source) => MetadataError::Parse { uri, source },
        }
    }
}

/// The task endpoint for a container endpoint: `<base>/task`.
pub fn task_uri(base_uri: &str) -> Result<Uri, MetadataError> {
    let text = format!("{}/task", base_uri.trim().trim_end_matches('/'));
    let invalid = |reason: String| MetadataError::InvalidUri {
        uri: base_uri.to_owned(),
        reason,
    };
    let uri: Uri = text.parse().map_err(|e| invalid(format!("{e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(invalid("expected http://host[:port]/path".to_owned()));
    }
    Ok(uri)
}

/// GETs `<base_uri>/task` and parses it: each attempt bounded by `timeout` (connect to last
/// byte), at most `attempts` attempts (at least one), short doubling pauses in between.
pub async fn fetch_task_metadata(
    base_uri: &str,
    timeout: Duration,
    attempts: u32,
) -> Result<TaskMetadata, MetadataError> {
    let uri = task_uri(base_uri)?;
    let attempts = attempts.max(1);
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut backoff = FIRST_BACKOFF;
    let mut made = 0;
    loop {
        made += 1;
        let outcome = match tokio::time::timeout(timeout, get_once(&client, uri.clone())).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::Timeout),
        };
        match outcome {
            Ok(meta) => return Ok(meta),
            Err(e) if made < attempts && e.is_retryable() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e.into_error(uri.to_string(), timeout, made)),
        }
    }
}

async fn get_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: Uri,
) -> Result<TaskMetadata, AttemptError> {
    let response = client.get(uri).await.map_err(AttemptError::Request)?;
    let status = response.status();
    if status != StatusCode::OK {
        return Err(AttemptError::Status(status));
    }
    let body = Limited::new(response.into_body(), MAX_METADATA_BYTES)
        .collect()
        .await
        .map_err(|e| AttemptError::Body(e.to_string()))?
        .to_bytes();
    TaskMetadata::from_json(&body).map_err(AttemptError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC2: &str = include_str!("../../tests/fixtures/ecs/task-metadata-v4-ec2.json");
    const FARGATE: &str = include_str!("../../tests/fixtures/ecs/task-metadata-v4-fargate.json");

    #[test]
    fn aws_documented_ec2_and_fargate_examples_parse() {
        let ec2 = TaskMetadata::from_json(EC2.as_bytes()).unwrap();
        assert_eq!(ec2.cluster.as_deref(), Some("default"));
        assert_eq!(ec2.family.as_deref(), Some("curltest"));
        assert_eq!(ec2.revision.as_deref(), Some("26"));
        assert_eq!(ec2.service_name.as_deref(), Some("MyService"));
        assert_eq!(ec2.launch_type.as_deref(), Some("EC2"));
        let fargate = TaskMetadata::from_json(FARGATE.as_bytes()).unwrap();
        assert_eq!(
            fargate.cluster.as_deref(),
            Some("arn:aws:ecs:us-west-2:111122223333:cluster/default")
        );
        assert_eq!(fargate.service_name, None);
        assert_eq!(fargate.availability_zone.as_deref(), Some("us-west-2a"));
        assert_eq!(fargate.launch_type.as_deref(), Some("FARGATE"));
    }

    #[test]
    fn unknown_and_missing_fields_are_tolerated_but_wrong_types_are_not() {
        let m = TaskMetadata::from_json(br#"{"Family":"f","SomethingNew":{"A":[1,2]}}"#).unwrap();
        assert_eq!(m.family.as_deref(), Some("f"));
        assert_eq!(
            TaskMetadata::from_json(b"{}").unwrap(),
            TaskMetadata::default()
        );
        assert!(TaskMetadata::from_json(br#"{"Family":3}"#).is_err());
        assert!(TaskMetadata::from_json(b"[]").is_err());
    }

    #[test]
    fn the_task_uri_is_the_container_uri_plus_task() {
        for base in [
            "http://169.254.170.2/v4/abc",
            "http://169.254.170.2/v4/abc/",
            " http://169.254.170.2/v4/abc\n",
        ] {
            assert_eq!(
                task_uri(base).unwrap().to_string(),
                "http://169.254.170.2/v4/abc/task"
            );
        }
        for bad in [
            "https://169.254.170.2/v4/abc",
            "169.254.170.2/v4",
            "http://",
        ] {
            let e = task_uri(bad).unwrap_err();
            assert!(
                e.to_string().contains("ECS_CONTAINER_METADATA_URI_V4"),
                "{e}"
            );
        }
    }
}
