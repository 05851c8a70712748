//! The CloudWatch client: aws-config's default chain, tally's timeouts, gzip, and a meter that
//! sees every request body.
//!
//! Credentials come from aws-config's default chain (environment, profile, web identity, ECS
//! container credentials via `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, IMDSv2): nothing to
//! configure on ECS. The Region comes from `[publish] region` or the same chain. The SDK's own
//! retries are off: the publisher retries itself (see [`super::retry`]) so that it can count
//! every attempt, bisect rejected requests and park unpublished data in its queue.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use aws_config::BehaviorVersion;
use aws_sdk_cloudwatch::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_cloudwatch::config::retry::RetryConfig;
use aws_sdk_cloudwatch::config::timeout::TimeoutConfig;
use aws_sdk_cloudwatch::config::{
    ConfigBag, Intercept, Region, RuntimeComponents, SharedCredentialsProvider,
};
use aws_sdk_cloudwatch::error::BoxError;
use aws_sdk_cloudwatch::Client;

use super::config::PublishConfig;
use super::datum::Datum;
use super::stats::PublishStats;
use crate::cloudwatch::{classify_sdk_error, SendError};

/// Why the CloudWatch client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The `[publish]` section is invalid.
    #[error(transparent)]
    Config(#[from] super::config::PublishConfigError),
    /// No Region anywhere.
    #[error("no AWS Region: set [publish] region (TALLY_PUBLISH_REGION) or AWS_REGION, or run where the ECS/EC2 metadata gives one")]
    NoRegion,
}

/// Settings a program gives the client besides the configuration file (tests use static
/// credentials; the agent uses the default chain).
#[derive(Debug, Clone, Default)]
pub struct ClientOverrides {
    /// Credentials to use instead of aws-config's default chain.
    pub credentials: Option<SharedCredentialsProvider>,
}

/// Builds the CloudWatch client for `config`. `stats` receives the body sizes of every attempt.
pub async fn build_client(
    config: &PublishConfig,
    overrides: ClientOverrides,
    stats: PublishStats,
) -> Result<Client, ClientError> {
    config.validate()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(creds) = overrides.credentials {
        loader = loader.credentials_provider(creds);
    }
    let shared = loader.load().await;
    if shared.region().is_none() {
        return Err(ClientError::NoRegion);
    }
    let mut builder = aws_sdk_cloudwatch::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(config.connect_timeout())
                .operation_attempt_timeout(config.attempt_timeout())
                .operation_timeout(config.attempt_timeout())
                .build(),
        )
        .disable_request_compression(!config.compress_requests)
        .request_min_compression_size_bytes(config.compression_min_bytes)
        .interceptor(PayloadMeter { stats });
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    Ok(Client::from_conf(builder.build()))
}

/// Records the serialized (uncompressed) and transmitted size of every request body, and the
/// duration of every attempt.
#[derive(Debug)]
struct PayloadMeter {
    stats: PublishStats,
}

/// When the current attempt started (kept in the attempt's config bag).
#[derive(Debug, Clone)]
struct AttemptStart(Instant);

impl aws_smithy_types::config_bag::Storable for AttemptStart {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

impl Intercept for PayloadMeter {
    fn name(&self) -> &'static str {
        "TallyPayloadMeter"
    }

    fn read_after_serialization(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(len) = context.request().body().content_length() {
            self.stats.bytes_uncompressed.add(len);
            self.stats
                .raise_max(&self.stats.bytes_uncompressed_max, len);
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        if let Some(len) = request.body().content_length() {
            self.stats.bytes_sent.add(len);
            self.stats.raise_max(&self.stats.bytes_sent_max, len);
        }
        if request.headers().get("content-encoding") == Some("gzip") {
            self.stats.compressed_requests.inc();
        }
        cfg.interceptor_state()
            .store_put(AttemptStart(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(AttemptStart(start)) = cfg.load::<AttemptStart>() {
            let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.stats.latency_sum_us.add(us);
            self.stats.latency_count.inc();
            self.stats.raise_max(&self.stats.latency_max_us, us);
        }
        Ok(())
    }
}

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One PutMetricData attempt. The real implementation is [`SdkTransport`]; unit tests drive
/// the publisher's retry, bisection and queue logic with a scripted one.
pub trait Transport: Send + Sync + 'static {
    /// Sends `datums` (all of `namespace`) in one request.
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        datums: &'a [Datum],
    ) -> BoxFuture<'a, Result<(), SendError>>;
}

/// PutMetricData through aws-sdk-cloudwatch.
#[derive(Debug, Clone)]
pub struct SdkTransport {
    client: Client,
}

impl SdkTransport {
    /// Wraps a client built by [`build_client`].
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Transport for SdkTransport {
    fn put<'a>(
        &'a self,
        namespace: &'a str,
        datums: &'a [Datum],
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            self.client
                .put_metric_data()
                .namespace(namespace)
                .set_metric_data(Some(datums.iter().map(Datum::to_sdk).collect()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify_sdk_error(&e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudwatch::ErrorKind;
    use crate::publish::batch::{datum_bytes, request_overhead};
    use crate::publish::datum::{DatumValue, Stamp, Statistics, ValueCounts};
    use aws_sdk_cloudwatch::config::Credentials;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};
    use tally::wire::Unit;

    /// A client pointed at a closed loopback port: every request is serialized (and measured)
    /// and then fails to connect.
    async fn closed_port_client(stats: PublishStats) -> Client {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = PublishConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(format!("http://127.0.0.1:{port}")),
            ..PublishConfig::default()
        };
        let creds =
            SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "test"));
        build_client(
            &config,
            ClientOverrides {
                credentials: Some(creds),
            },
            stats,
        )
        .await
        .unwrap()
    }

    fn datum(name_len: usize, dims: &[(usize, usize)], value: DatumValue) -> Datum {
        Datum {
            stamp: Arc::new(Stamp {
                namespace: Arc::from("Tally/Estimate"),
                timestamp: SystemTime::UNIX_EPOCH + Duration::from_millis(1_754_000_000_123),
                storage_resolution: 1,
            }),
            name: "m".repeat(name_len).into(),
            dimensions: dims
                .iter()
                .enumerate()
                .map(|(i, &(k, v))| (format!("{i:0>k$}").into(), "v".repeat(v).into()))
                .collect(),
            // The longest unit name a datum is published with ("Microseconds").
            unit: Unit::Microseconds,
            value,
            samples: 1,
        }
    }

    fn value_strategy() -> impl Strategy<Value = DatumValue> {
        prop_oneof![
            any::<f64>().prop_map(DatumValue::Value),
            (1.0f64..1e9, -1e9f64..1e9).prop_map(|(n, s)| DatumValue::StatisticSet(Box::new(
                Statistics {
                    sample_count: n,
                    sum: s,
                    minimum: s,
                    maximum: s
                }
            ))),
            (0usize..=150).prop_map(|n| DatumValue::Values(Box::new(ValueCounts {
                values: (0..n).map(|i| i as f64 * 1.37).collect(),
                counts: (0..n).map(|i| (i + 1) as f64).collect(),
            }))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The request-size estimate is an upper bound of what the SDK serializes, and close to
        /// it, so requests are packed tight but never over CloudWatch's limit.
        #[test]
        fn the_size_estimate_bounds_the_real_serialized_body_within_ten_percent(
            shapes in proptest::collection::vec(
                (1usize..255, proptest::collection::vec((1usize..64, 1usize..300), 0..30), value_strategy()),
                1..40,
            ),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let datums: Vec<Datum> =
                shapes.into_iter().map(|(n, d, v)| datum(n, &d, v)).collect();
            let estimate = request_overhead("Tally/Estimate", 1000)
                + datums.iter().map(datum_bytes).sum::<usize>();
            let stats = PublishStats::register(&crate::stats::Stats::new());
            let actual = rt.block_on(async {
                let t = SdkTransport::new(closed_port_client(stats.clone()).await);
                let err = t.put("Tally/Estimate", &datums).await.unwrap_err();
                assert!(err.kind.is_transient(), "{err:?}");
                stats.max_uncompressed_request_bytes() as usize
            });
            prop_assert!(actual > 0);
            prop_assert!(estimate >= actual, "estimate {estimate} < actual {actual}");
            prop_assert!(estimate * 10 <= actual * 11, "estimate {estimate} vs actual {actual}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_transient_network_error() {
        let stats = PublishStats::register(&crate::stats::Stats::new());
        let t = SdkTransport::new(closed_port_client(stats.clone()).await);
        let d = datum(3, &[], DatumValue::Value(1.0));
        let err = t
            .put("Tally/Estimate", std::slice::from_ref(&d))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Network, "{err:?}");
        assert!(stats.request_bytes().0 > 0);
    }
}
