//! Executes a plan against CloudWatch: PutMetricAlarm for creates and updates, DeleteAlarms
//! for prunes, each paced to its API quota (3 TPS by default) and retried with exponential
//! backoff when CloudWatch answers `Throttling`.

use std::future::Future;
use std::time::Duration;

use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::types::{AlarmType, MetricAlarm};
use aws_sdk_cloudwatch::Client;
use serde::Serialize;
use tokio::time::Instant;

use super::config::AlarmManagement;
use super::plan::{AlarmAction, Plan};
use super::AlarmsError;
use crate::cloudwatch::classify_sdk_error;
use crate::cloudwatch::ErrorKind;

/// Tag alarms tally creates carry with `[alarm_management] tag_alarms = true`.
pub const MANAGED_TAG: &str = "tally:managed-by";
/// DeleteAlarms takes at most this many names per call.
pub const DELETE_BATCH: usize = 100;
/// DescribeAlarms pages read at most (10,000 alarms at 100 a page), a guard against a
/// server that never stops returning a NextToken.
pub const MAX_DESCRIBE_PAGES: usize = 100;

/// Spaces calls at least `1 / tps` apart.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `tps` calls per second.
    pub fn new(tps: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / tps.clamp(0.001, 1_000.0)),
            next: None,
        }
    }

    /// Reserves the next slot at or after `now` and returns when it starts.
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.interval);
        at
    }

    /// Waits for the next slot.
    pub async fn wait(&mut self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

/// Whether a failed call is worth repeating.
pub trait Retryable {
    /// True for CloudWatch's `Throttling` (and the SDK's other throttling codes) and for
    /// transient server faults (`InternalServiceError`, ...). Every call tally retries is
    /// idempotent: PutMetricAlarm and PutDashboard overwrite by name, DeleteAlarms of an
    /// absent alarm succeeds.
    fn is_retryable(&self) -> bool;
}

impl<E> Retryable for SdkError<E, aws_sdk_cloudwatch::config::http::HttpResponse>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    /// Classified as the publisher classifies PutMetricData failures: throttling, 5xx (with
    /// or without an error code), timeouts and connection failures are retried; refused
    /// credentials and invalid requests are not (the operator has to fix them).
    fn is_retryable(&self) -> bool {
        matches!(
            classify_sdk_error(self).kind,
            ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Network
        )
    }
}

/// Retry settings for throttled calls.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled each time, plus up to 50 % jitter.
    pub base: Duration,
}

impl RetryPolicy {
    /// From `[alarm_management]`.
    pub fn from_config(m: &AlarmManagement) -> Self {
        Self {
            max_attempts: m.max_attempts.max(1),
            base: Duration::from_millis(m.backoff_base_ms),
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << retry.min(10));
        let jitter = exp.mul_f64(rand::random::<f64>() * 0.5);
        exp + jitter
    }
}

/// Runs `call` in a paced slot, retrying throttled (and transiently failed) attempts with
/// backoff. Returns the result and how many attempts failed retryably.
pub async fn paced<T, E, F, Fut>(
    pacer: &mut Pacer,
    policy: RetryPolicy,
    mut call: F,
) -> (Result<T, E>, u32)
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut throttled = 0;
    loop {
        pacer.wait().await;
        match call().await {
            Err(e) if e.is_retryable() && throttled + 1 < policy.max_attempts => {
                tokio::time::sleep(policy.backoff(throttled)).await;
                throttled += 1;
            }
            Err(e) => {
                let t = throttled + u32::from(e.is_retryable());
                return (Err(e), t);
            }
            Ok(v) => return (Ok(v), throttled),
        }
    }
}

/// Every metric alarm whose name starts with `prefix`, following NextToken.
pub async fn describe_managed(
    client: &Client,
    prefix: &str,
) -> Result<Vec<MetricAlarm>, AlarmsError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pacer = Pacer::new(9.0); // DescribeAlarms quota: 9 TPS.
    let policy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(200),
    };
    for _ in 0..MAX_DESCRIBE_PAGES {
        let (res, _) = paced(&mut pacer, policy, || {
            client
                .describe_alarms()
                .alarm_name_prefix(prefix)
                .alarm_types(AlarmType::MetricAlarm)
                .max_records(100)
                .set_next_token(token.clone())
                .send()
        })
        .await;
        let page = res.map_err(|e| AlarmsError::Describe(DisplayErrorContext(&e).to_string()))?;
        out.extend(
            page.metric_alarms()
                .iter()
                .filter(|a| a.alarm_name().is_some_and(|n| n.starts_with(prefix)))
                .cloned(),
        );
        match page.next_token() {
            Some(t) if !t.is_empty() && Some(t) != token.as_deref() => token = Some(t.to_owned()),
            _ => return Ok(out),
        }
    }
    Err(AlarmsError::Describe(format!(
        "DescribeAlarms returned more than {MAX_DESCRIBE_PAGES} pages for prefix {prefix:?}; \
         use a more specific [alarm_management] name_prefix"
    )))
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Alarms created.
    pub created: Vec<String>,
    /// Alarms updated.
    pub updated: Vec<String>,
    /// Alarms deleted.
    pub deleted: Vec<String>,
    /// Alarms already as declared.
    pub unchanged: usize,
    /// Undeclared managed alarms left alone (prune off).
    pub kept: Vec<String>,
    /// Whether the dashboard was written.
    pub dashboard_written: bool,
    /// PutMetricAlarm, DeleteAlarms and PutDashboard calls that succeeded.
    pub write_calls: usize,
    /// Attempts CloudWatch throttled or failed transiently (each retried with backoff).
    pub retried: u32,
}

/// Writes the alarm changes of `plan`. Stops at the first error that retries do not clear,
/// reporting in the error what was already done.
pub async fn apply_alarms(
    client: &Client,
    plan: &Plan,
    m: &AlarmManagement,
    report: &mut ApplyReport,
) -> Result<(), AlarmsError> {
    let policy = RetryPolicy::from_config(m);
    let mut put_pacer = Pacer::new(m.put_alarm_tps);
    let tags = if m.tag_alarms {
        vec![(MANAGED_TAG.to_owned(), "tally-agent".to_owned())]
    } else {
        Vec::new()
    };
    let mut to_delete = Vec::new();
    for c in &plan.alarms {
        let create = match &c.action {
            AlarmAction::Create => true,
            AlarmAction::Update { .. } => false,
            AlarmAction::Delete => {
                to_delete.push(c.name.clone());
                continue;
            }
            AlarmAction::Keep => {
                report.kept.push(c.name.clone());
                continue;
            }
            AlarmAction::Unchanged => {
                report.unchanged += 1;
                continue;
            }
        };
        let Some(def) = &c.desired else {
            continue;
        };
        let tags: &[(String, String)] = if create { &tags } else { &[] };
        let (res, throttled) = paced(&mut put_pacer, policy, || {
            def.put_request(client, tags).send()
        })
        .await;
        report.retried += throttled;
        res.map_err(|e| AlarmsError::Write {
            call: "PutMetricAlarm",
            target: c.name.clone(),
            message: DisplayErrorContext(&e).to_string(),
            done: report.clone(),
        })?;
        report.write_calls += 1;
        if create {
            report.created.push(c.name.clone());
        } else {
            report.updated.push(c.name.clone());
        }
    }
    let mut delete_pacer = Pacer::new(m.delete_alarms_tps);
    for batch in to_delete.chunks(DELETE_BATCH) {
        let (res, throttled) = paced(&mut delete_pacer, policy, || {
            client
                .delete_alarms()
                .set_alarm_names(Some(batch.to_vec()))
                .send()
        })
        .await;
        report.retried += throttled;
        res.map_err(|e| AlarmsError::Write {
            call: "DeleteAlarms",
            target: batch.join(", "),
            message: DisplayErrorContext(&e).to_string(),
            done: report.clone(),
        })?;
        report.write_calls += 1;
        report.deleted.extend(batch.iter().cloned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn apply_retries_throttling_server_faults_and_timeouts_but_not_refusals() {
        use aws_sdk_cloudwatch::config::http::HttpResponse;
        use aws_sdk_cloudwatch::operation::put_metric_alarm::PutMetricAlarmError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let answer = |status: u16, code: Option<&str>| {
            let mut meta = ErrorMetadata::builder();
            if let Some(c) = code {
                meta = meta.code(c);
            }
            SdkError::service_error(
                PutMetricAlarmError::generic(meta.build()),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            )
        };
        assert!(answer(400, Some("Throttling")).is_retryable());
        // A 5xx with no code, as a load balancer in front of the endpoint answers.
        assert!(answer(503, None).is_retryable());
        assert!(answer(500, Some("InternalError")).is_retryable());
        assert!(!answer(400, Some("InvalidParameterValue")).is_retryable());
        assert!(!answer(403, Some("AccessDenied")).is_retryable());
        let timeout: SdkError<PutMetricAlarmError, HttpResponse> =
            SdkError::timeout_error("attempt timed out");
        assert!(timeout.is_retryable());
    }

    #[derive(Debug, PartialEq)]
    struct FakeError(bool);
    impl Retryable for FakeError {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(1),
        }
    }

    #[test]
    fn three_tps_spaces_calls_a_third_of_a_second_apart() {
        let mut p = Pacer::new(3.0);
        let t0 = Instant::now();
        let slots: Vec<Duration> = (0..4).map(|_| p.reserve(t0) - t0).collect();
        let third = Duration::from_secs_f64(1.0 / 3.0);
        assert_eq!(slots, vec![Duration::ZERO, third, third * 2, third * 3]);
        // A caller arriving after the schedule is not delayed.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(p.reserve(late), late);
    }

    #[tokio::test]
    async fn a_throttled_call_is_retried_until_it_succeeds() {
        let calls = Cell::new(0);
        let mut pacer = Pacer::new(1000.0);
        let (res, throttled) = paced(&mut pacer, fast(), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(FakeError(true))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(res, Ok(3));
        assert_eq!(throttled, 2);
    }

    #[tokio::test]
    async fn throttling_gives_up_after_max_attempts_and_other_errors_are_not_retried() {
        let calls = Cell::new(0u32);
        let mut pacer = Pacer::new(1000.0);
        let (res, throttled) = paced(&mut pacer, fast(), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(FakeError(true)) }
        })
        .await;
        assert_eq!(res, Err(FakeError(true)));
        assert_eq!((calls.get(), throttled), (4, 4));

        calls.set(0);
        let (res, throttled) = paced(&mut pacer, fast(), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(FakeError(false)) }
        })
        .await;
        assert_eq!(res, Err(FakeError(false)));
        assert_eq!((calls.get(), throttled), (1, 0));
    }
}
