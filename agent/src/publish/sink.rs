//! The CloudWatch sink: closed periods in, PutMetricData out, nothing lost silently.
//!
//! ```text
//! PeriodData ─ prepare ─▶ PendingQueue ─ take (makes datums) ─▶ up to N requests in flight
//!                 │ refused: counted      ▲  │           │ ok: counted as published
//!                 ▼                       │  │           │ 4xx: bisect, drop the bad datum (counted)
//!           dropped{reason}     unsent ◀──┘  └ too old / over the bound: dropped{reason}
//!                               (throttled, 5xx, timeouts, network after max_attempts)
//! ```
//!
//! [`CloudWatchSink::run`] owns the loop: each period is queued and a drain starts; when a
//! drain gives up (CloudWatch does not answer after `max_attempts` per request) the queue waits
//! a jittered, growing pause (up to `backoff_max_ms`) before the next try, while new periods
//! keep queueing within `max_pending_bytes`. When the channel closes it flushes with a deadline
//! and counts whatever is still unpublished as `shutdown_deadline`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::batch::RequestLimits;
use super::client::{build_client, ClientError, ClientOverrides, SdkTransport, Transport};
use super::config::PublishConfig;
use super::datum::{prepare, Datum, Prepared, Rejection};
use super::queue::{Dropped, InFlight, InFlightDone, PendingQueue};
use super::retry::{backoff_ceiling, full_jitter};
use super::stats::{DropReason, PublishStats};
use crate::cloudwatch::{ErrorKind, SendError};
use crate::model::PeriodData;
use crate::sinks::{Sink, SinkError, SinkFuture};
use crate::stats::Stats;

/// What one drain of the pending queue achieved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainReport {
    /// Requests CloudWatch accepted.
    pub requests: u64,
    /// Datums CloudWatch accepted.
    pub published_datums: u64,
    /// Samples CloudWatch accepted.
    pub published_samples: u64,
    /// Samples dropped because CloudWatch refused their datum.
    pub rejected_samples: u64,
    /// Samples still waiting (queued) after the drain.
    pub pending_samples: u64,
    /// Why the drain stopped early: the last error of a request whose attempts ran out.
    pub gave_up: Option<SendError>,
}

/// Publishes closed periods to CloudWatch. Cloning shares the sink.
#[derive(Clone)]
pub struct CloudWatchSink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CloudWatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudWatchSink")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    transport: Arc<dyn Transport>,
    config: PublishConfig,
    stats: PublishStats,
    queue: Mutex<PendingQueue>,
    drain_lock: tokio::sync::Mutex<()>,
    deadline: watch::Sender<Option<Instant>>,
    /// Periods taken so far (queued, or refused whole), counted under the queue lock.
    periods_in: std::sync::atomic::AtomicU64,
    /// Periods settled: all of the first N periods are published or counted as dropped
    /// (updated whenever the queue, in flight included, is empty).
    settled: watch::Sender<u64>,
}

impl CloudWatchSink {
    /// Builds the CloudWatch client from `config` (aws-config default chain) and registers the
    /// publisher's self-metrics in `stats`.
    pub async fn new(config: PublishConfig, stats: &Stats) -> Result<Self, ClientError> {
        Self::with_overrides(config, stats, ClientOverrides::default()).await
    }

    /// Like [`CloudWatchSink::new`], with settings that do not belong in a file (credentials).
    pub async fn with_overrides(
        config: PublishConfig,
        stats: &Stats,
        overrides: ClientOverrides,
    ) -> Result<Self, ClientError> {
        let publish_stats = PublishStats::register(stats);
        let client = build_client(&config, overrides, publish_stats.clone()).await?;
        Ok(Self::from_parts(
            config,
            publish_stats,
            Arc::new(SdkTransport::new(client)),
        ))
    }

    /// A sink over any [`Transport`] (unit tests script CloudWatch's answers with it).
    pub fn with_transport(
        config: PublishConfig,
        stats: &Stats,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, ClientError> {
        config.validate()?;
        Ok(Self::from_parts(
            config,
            PublishStats::register(stats),
            transport,
        ))
    }

    fn from_parts(
        config: PublishConfig,
        stats: PublishStats,
        transport: Arc<dyn Transport>,
    ) -> Self {
        stats
            .queue_max_bytes
            .set(i64::try_from(config.max_pending_bytes).unwrap_or(i64::MAX));
        stats.available.set(1);
        Self {
            inner: Arc::new(Inner {
                transport,
                queue: Mutex::new(PendingQueue::new(
                    config.max_pending_bytes,
                    config.max_values_per_datum,
                )),
                config,
                stats,
                drain_lock: tokio::sync::Mutex::new(()),
                deadline: watch::channel(None).0,
                periods_in: std::sync::atomic::AtomicU64::new(0),
                settled: watch::channel(0).0,
            }),
        }
    }

    /// The publisher's self-metrics.
    pub fn stats(&self) -> &PublishStats {
        &self.inner.stats
    }

    /// Queues one closed period and drains the queue (retrying within `max_attempts` per
    /// request). Data CloudWatch cannot take right now stays queued for the next call.
    pub async fn publish(&self, period: PeriodData) -> DrainReport {
        self.inner.enqueue(period);
        self.inner.clone().drain().await
    }

    /// Sends everything queued, retrying until `deadline`; whatever is still unpublished then
    /// is dropped and counted as `shutdown_deadline`. Call once, at shutdown: attempts after
    /// the deadline fail at once.
    pub async fn flush(&self, deadline: Instant) -> DrainReport {
        self.inner.deadline.send_replace(Some(deadline));
        let mut total = DrainReport::default();
        let mut round = 0;
        loop {
            let report = self.inner.clone().drain().await;
            total.add(&report);
            let empty = self.inner.queue.lock().is_empty();
            if empty || Instant::now() >= deadline {
                break;
            }
            round += 1;
            let pause = self.inner.round_pause(round);
            if self
                .inner
                .until_deadline(tokio::time::sleep(pause))
                .await
                .is_none()
            {
                break;
            }
        }
        let dropped = {
            let mut q = self.inner.queue.lock();
            let d = q.clear();
            self.inner.update_gauges(&q);
            self.inner.check_settled(&q);
            d
        };
        if dropped.samples > 0 || dropped.datums > 0 {
            tracing::error!(
                datums = dropped.datums,
                samples = dropped.samples,
                "shutdown deadline passed with data CloudWatch has not accepted; raise the shutdown timeout or check CloudWatch connectivity"
            );
            self.inner.stats.drop(
                DropReason::ShutdownDeadline,
                dropped.datums,
                dropped.samples,
            );
        }
        total.pending_samples = 0;
        total
    }

    /// Publishes every period received on `periods` until the channel closes, then flushes for
    /// at most `shutdown_timeout` and returns the final flush's report.
    pub async fn run(
        self,
        mut periods: mpsc::Receiver<PeriodData>,
        shutdown_timeout: Duration,
    ) -> DrainReport {
        let mut draining: Option<tokio::task::JoinHandle<DrainReport>> = None;
        let mut next_try: Option<tokio::time::Instant> = None;
        let mut failed_rounds = 0u32;
        loop {
            tokio::select! {
                period = periods.recv() => match period {
                    Some(period) => {
                        self.inner.enqueue(period);
                        let due = next_try.is_none_or(|t| t <= tokio::time::Instant::now());
                        if draining.is_none() && due {
                            next_try = None;
                            draining = Some(tokio::spawn(self.inner.clone().drain()));
                        }
                    }
                    None => break,
                },
                done = async { draining.as_mut().expect("guarded").await }, if draining.is_some() => {
                    draining = None;
                    let report = done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    if let Some(err) = &report.gave_up {
                        failed_rounds += 1;
                        let pause = self.inner.round_pause(failed_rounds);
                        tracing::warn!(
                            error = %err,
                            pending_samples = report.pending_samples,
                            retry_in_ms = pause.as_millis() as u64,
                            "CloudWatch did not take the pending data; it stays queued"
                        );
                        next_try = Some(tokio::time::Instant::now() + pause);
                    } else {
                        failed_rounds = 0;
                        if !self.inner.queue.lock().is_empty() {
                            draining = Some(tokio::spawn(self.inner.clone().drain()));
                        }
                    }
                },
                () = async { tokio::time::sleep_until(next_try.expect("guarded")).await },
                    if draining.is_none() && next_try.is_some() => {
                    next_try = None;
                    draining = Some(tokio::spawn(self.inner.clone().drain()));
                },
            }
        }
        // A deadline set by `RunningSink::shutdown` wins over `shutdown_timeout`.
        let deadline = self
            .inner
            .deadline
            .borrow()
            .unwrap_or_else(|| Instant::now() + shutdown_timeout);
        self.inner.deadline.send_replace(Some(deadline));
        if let Some(h) = draining {
            // The drain observes the deadline; its report is folded into the flush below.
            if let Err(e) = h.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.flush(deadline).await
    }

    /// Starts [`CloudWatchSink::run`] in a task and returns the handle the agent's runtime
    /// drives through the [`Sink`] trait: `send` only queues (it never waits for CloudWatch,
    /// so an outage back-pressures nothing upstream; the pending queue's bound applies), and
    /// `shutdown` flushes until its deadline. `shutdown_deadline` (`sink.shutdown_deadline_secs`)
    /// bounds the final flush when the handle is dropped without a `shutdown`.
    pub fn start(self, shutdown_deadline: Duration) -> RunningSink {
        let (tx, rx) = mpsc::channel(4);
        let inner = self.inner.clone();
        let task = tokio::spawn(self.run(rx, shutdown_deadline));
        RunningSink {
            tx: Some(tx),
            task: Some(task),
            inner,
        }
    }
}

/// A [`CloudWatchSink`] running in its own task, as a [`Sink`].
pub struct RunningSink {
    tx: Option<mpsc::Sender<PeriodData>>,
    task: Option<tokio::task::JoinHandle<DrainReport>>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RunningSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSink").finish_non_exhaustive()
    }
}

impl RunningSink {
    /// The publisher's self-metrics.
    pub fn stats(&self) -> &PublishStats {
        &self.inner.stats
    }
}

impl Sink for RunningSink {
    fn name(&self) -> &'static str {
        "cloudwatch"
    }

    fn send(&mut self, period: PeriodData) -> SinkFuture<'_> {
        Box::pin(async move {
            let samples: u64 = period.metrics.iter().map(|m| m.1.samples()).sum();
            let Some(tx) = &self.tx else {
                self.inner.period_refused();
                self.inner.stats.drop(
                    DropReason::ShutdownDeadline,
                    period.metrics.len() as u64,
                    samples,
                );
                return Err(SinkError::Failed {
                    sink: "cloudwatch",
                    message: "a period arrived after shutdown; it was counted as dropped".into(),
                });
            };
            if let Err(mpsc::error::SendError(period)) = tx.send(period).await {
                self.inner.period_refused();
                self.inner.stats.drop(
                    DropReason::ShutdownDeadline,
                    period.metrics.len() as u64,
                    samples,
                );
                return Err(SinkError::Failed {
                    sink: "cloudwatch",
                    message:
                        "the CloudWatch publisher task ended; see the previous error in the log"
                            .into(),
                });
            }
            Ok(())
        })
    }

    fn shutdown(&mut self, deadline: tokio::time::Instant) -> SinkFuture<'_> {
        Box::pin(async move {
            self.inner.deadline.send_replace(Some(deadline.into_std()));
            self.tx = None;
            if let Some(task) = self.task.take() {
                let report = task
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                tracing::info!(
                    published_samples = report.published_samples,
                    requests = report.requests,
                    "CloudWatch publisher flushed"
                );
            }
            Ok(())
        })
    }

    fn settled(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.settled.subscribe())
    }
}

impl DrainReport {
    fn add(&mut self, o: &DrainReport) {
        self.requests += o.requests;
        self.published_datums += o.published_datums;
        self.published_samples += o.published_samples;
        self.rejected_samples += o.rejected_samples;
        self.pending_samples = o.pending_samples;
        if o.gave_up.is_some() {
            self.gave_up.clone_from(&o.gave_up);
        }
    }
}

/// What happened to one request's datums.
struct BatchOutcome {
    done: InFlightDone,
    report: DrainReport,
    unsent: Vec<Datum>,
}

impl Inner {
    fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_datums: self.config.max_datums_per_request,
            max_bytes: self.config.max_request_bytes,
        }
    }

    /// The pause between drains while CloudWatch does not answer: equal jitter over the
    /// exponential ceiling (never shorter than half of it, so a dead endpoint is not hammered).
    fn round_pause(&self, round: u32) -> Duration {
        let ceiling = backoff_ceiling(self.config.backoff_base(), self.config.backoff_max(), round);
        ceiling / 2 + full_jitter(ceiling / 2, ceiling / 2, 1)
    }

    fn update_gauges(&self, q: &PendingQueue) {
        let s = &self.stats;
        s.queue_bytes
            .set(i64::try_from(q.bytes()).unwrap_or(i64::MAX));
        s.queue_datums
            .set(i64::try_from(q.datums()).unwrap_or(i64::MAX));
        s.queue_samples
            .set(i64::try_from(q.samples()).unwrap_or(i64::MAX));
    }

    fn count_queue_drop(&self, reason: DropReason, dropped: Dropped) {
        if dropped.datums == 0 {
            return;
        }
        tracing::warn!(
            reason = reason.as_str(),
            datums = dropped.datums,
            samples = dropped.samples,
            max_pending_bytes = self.config.max_pending_bytes,
            "dropped unpublished data (oldest first); raise [publish] max_pending_bytes to keep more while CloudWatch is unreachable"
        );
        self.stats.drop(reason, dropped.datums, dropped.samples);
    }

    /// Publishes the settled count when nothing is queued or in flight: every period taken
    /// so far is then published or counted as dropped. Call with the queue locked.
    fn check_settled(&self, q: &PendingQueue) {
        if q.datums() == 0 {
            let n = self.periods_in.load(std::sync::atomic::Ordering::Relaxed);
            self.settled.send_if_modified(|v| {
                let changed = *v != n;
                *v = n;
                changed
            });
        }
    }

    /// Counts a period that never reached the queue (its loss is counted by the caller).
    fn period_refused(&self) {
        let q = self.queue.lock();
        self.periods_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.check_settled(&q);
    }

    fn enqueue(&self, period: PeriodData) {
        let Prepared {
            stamp,
            metrics,
            rejections,
        } = prepare(period, SystemTime::now());
        self.count_rejections(&rejections);
        let dropped = {
            let mut q = self.queue.lock();
            let d = q.push(stamp, metrics);
            self.periods_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.update_gauges(&q);
            self.check_settled(&q);
            d
        };
        self.count_queue_drop(DropReason::QueueFull, dropped);
    }

    /// Logs and counts metrics left out because CloudWatch would refuse them.
    fn count_rejections(&self, rejections: &[Rejection]) {
        for r in rejections {
            tracing::warn!(
                metric = %r.name,
                reason = r.reason.as_str(),
                samples = r.samples,
                "not publishing a metric CloudWatch would refuse: {}",
                r.detail
            );
            self.stats.drop(r.reason, r.datums, r.samples);
        }
    }

    /// The next request's worth of datums, with what the queue then looks like published to
    /// the gauges; metrics refused while their datums were made are logged and counted.
    fn take(&self) -> Option<InFlight> {
        let mut rejected = Vec::new();
        let taken = {
            let mut q = self.queue.lock();
            let t = q.take(self.limits(), &mut rejected);
            self.update_gauges(&q);
            if t.is_none() {
                self.check_settled(&q);
            }
            t
        };
        self.count_rejections(&rejected);
        taken
    }

    /// Runs `fut` unless the shutdown deadline passes first (`None` then).
    async fn until_deadline<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut rx = self.deadline.subscribe();
        tokio::pin!(fut);
        loop {
            let deadline = *rx.borrow_and_update();
            let expiry = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut fut => return Some(out),
                () = expiry => return None,
                changed = rx.changed() => if changed.is_err() {
                    return Some(fut.await);
                },
            }
        }
    }

    /// Sends queued requests, up to `max_concurrent_requests` at a time, until the queue is
    /// empty or a request's attempts run out.
    async fn drain(self: Arc<Self>) -> DrainReport {
        let _one_drain_at_a_time = self.drain_lock.lock().await;
        let expired = {
            let mut q = self.queue.lock();
            let d = q.expire(SystemTime::now());
            self.update_gauges(&q);
            self.check_settled(&q);
            d
        };
        self.count_queue_drop(DropReason::Expired, expired);
        let mut report = DrainReport::default();
        let mut tasks: JoinSet<BatchOutcome> = JoinSet::new();
        loop {
            while report.gave_up.is_none() && tasks.len() < self.config.max_concurrent_requests {
                let Some(in_flight) = self.take() else {
                    break;
                };
                let (batch, done) = in_flight.into_parts();
                tasks.spawn(self.clone().send_batch(batch.datums, done));
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let outcome = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            report.add(&outcome.report);
            let dropped = {
                let mut q = self.queue.lock();
                let d = q.finish(outcome.done, outcome.unsent);
                self.update_gauges(&q);
                self.check_settled(&q);
                d
            };
            self.count_queue_drop(DropReason::QueueFull, dropped);
        }
        report.pending_samples = self.queue.lock().samples();
        report
    }

    /// Sends one request; bisects it when CloudWatch refuses its payload.
    async fn send_batch(self: Arc<Self>, datums: Vec<Datum>, done: InFlightDone) -> BatchOutcome {
        let mut report = DrainReport::default();
        let mut work = vec![datums];
        let mut unsent = Vec::new();
        while let Some(mut datums) = work.pop() {
            match self.send_with_retry(&datums).await {
                Ok(()) => {
                    let samples: u64 = datums.iter().map(|d| d.samples).sum();
                    report.requests += 1;
                    report.published_datums += datums.len() as u64;
                    report.published_samples += samples;
                    self.stats.datums.add(datums.len() as u64);
                    self.stats.samples.add(samples);
                    self.stats.available.set(1);
                }
                Err(e) if !e.kind.is_transient() => {
                    if datums.len() == 1 {
                        let d = &datums[0];
                        tracing::error!(
                            metric = %d.name,
                            dimensions = ?d.dimensions,
                            samples = d.samples,
                            error = %e,
                            "CloudWatch refused a datum; dropped it and published the rest"
                        );
                        self.stats.drop(DropReason::Rejected, 1, d.samples);
                        report.rejected_samples += d.samples;
                    } else {
                        self.stats.bisections.inc();
                        let second = datums.split_off(datums.len() / 2);
                        work.push(second);
                        work.push(datums);
                    }
                }
                Err(e) => {
                    self.stats.available.set(0);
                    unsent.extend(datums);
                    for rest in work.drain(..).rev() {
                        unsent.extend(rest);
                    }
                    report.gave_up = Some(e);
                }
            }
        }
        BatchOutcome {
            done,
            report,
            unsent,
        }
    }

    /// One request, with up to `max_attempts` attempts for transient failures.
    async fn send_with_retry(&self, datums: &[Datum]) -> Result<(), SendError> {
        let namespace = datums[0].stamp.namespace.clone();
        let mut attempt = 1;
        loop {
            if attempt > 1 {
                self.stats.retries.inc();
            }
            let result = self
                .until_deadline(self.transport.put(&namespace, datums))
                .await
                .unwrap_or_else(|| {
                    Err(SendError {
                        kind: ErrorKind::Timeout,
                        message: "the shutdown deadline passed during the attempt".into(),
                    })
                });
            match result {
                Ok(()) => {
                    self.stats.calls[ErrorKind::COUNT].inc();
                    return Ok(());
                }
                Err(e) => {
                    self.stats.calls[e.kind as usize].inc();
                    if !e.kind.is_transient() || attempt >= self.config.max_attempts {
                        return Err(e);
                    }
                    let pause = full_jitter(
                        self.config.backoff_base(),
                        self.config.backoff_max(),
                        attempt,
                    );
                    tracing::debug!(
                        error = %e,
                        attempt,
                        pause_ms = pause.as_millis() as u64,
                        "PutMetricData failed; retrying"
                    );
                    if self
                        .until_deadline(tokio::time::sleep(pause))
                        .await
                        .is_none()
                    {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AggregateValue;
    use crate::publish::client::BoxFuture;
    use crate::publish::datum::tests::{key, period};
    use hdrhistogram::Histogram;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tally::wire::Unit;

    /// CloudWatch as a script: answers queued errors first, refuses any request holding a
    /// metric named `Poison`, fails with a connection error while `down`, else accepts.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<ErrorKind>>,
        down: AtomicBool,
        requests: Mutex<Vec<usize>>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl Transport for Scripted {
        fn put<'a>(
            &'a self,
            _namespace: &'a str,
            datums: &'a [Datum],
        ) -> BoxFuture<'a, Result<(), SendError>> {
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let fail = |kind| {
                    Err(SendError {
                        kind,
                        message: format!("scripted {kind:?}"),
                    })
                };
                if let Some(kind) = self.answers.lock().pop_front() {
                    return fail(kind);
                }
                if self.down.load(Ordering::SeqCst) {
                    return fail(ErrorKind::Network);
                }
                if datums.iter().any(|d| &*d.name == "Poison") {
                    return fail(ErrorKind::Invalid);
                }
                self.requests.lock().push(datums.len());
                Ok(())
            })
        }
    }

    fn fast() -> PublishConfig {
        PublishConfig {
            max_attempts: 3,
            backoff_base_ms: 1,
            backoff_max_ms: 5,
            ..PublishConfig::default()
        }
    }

    fn sink(config: PublishConfig) -> (CloudWatchSink, Arc<Scripted>, Stats) {
        let stats = Stats::new();
        let t = Arc::new(Scripted::default());
        let s = CloudWatchSink::with_transport(config, &stats, t.clone()).unwrap();
        (s, t, stats)
    }

    fn counters(n: usize, each: f64) -> PeriodData {
        period(
            SystemTime::now(),
            (0..n)
                .map(|i| {
                    (
                        key(&format!("M{i}"), &[("Route", "/x")], Unit::Count),
                        AggregateValue::Counter(each),
                    )
                })
                .collect(),
        )
    }

    fn histograms(n: usize, buckets: u64) -> PeriodData {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=buckets {
            h.record(v).unwrap();
        }
        period(
            SystemTime::now(),
            (0..n)
                .map(|i| {
                    (
                        key(&format!("H{i}"), &[], Unit::Milliseconds),
                        AggregateValue::Distribution {
                            scale: 1.0,
                            histogram: Box::new((&h).into()),
                        },
                    )
                })
                .collect(),
        )
    }

    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("the publisher must not hang")
    }

    #[tokio::test]
    async fn throttling_and_server_errors_are_retried_until_cloudwatch_accepts() {
        let (s, t, stats) = sink(fast());
        t.answers
            .lock()
            .extend([ErrorKind::Throttled, ErrorKind::Server]);
        let r = bounded(s.publish(counters(10, 3.0))).await;
        assert_eq!(r.published_samples, 30);
        assert_eq!(r.gave_up, None);
        assert_eq!(s.stats().retries(), 2);
        assert_eq!(s.stats().failed_requests(ErrorKind::Throttled), 1);
        assert_eq!(s.stats().failed_requests(ErrorKind::Server), 1);
        assert_eq!(s.stats().successful_requests(), 1);
        assert_eq!(
            stats.counter_value("tally_publish_calls_total", &[("outcome", "ok")]),
            1
        );
    }

    #[tokio::test]
    async fn an_invalid_datum_is_isolated_counted_and_the_rest_published() {
        let (s, t, _) = sink(fast());
        let mut p = counters(100, 2.0);
        p.metrics[37].0.name = "Poison".into();
        let r = bounded(s.publish(p)).await;
        assert_eq!(r.published_samples, 198);
        assert_eq!(r.rejected_samples, 2);
        assert_eq!(s.stats().dropped_samples(DropReason::Rejected), 2);
        assert_eq!(t.requests.lock().iter().sum::<usize>(), 99);
        // Bisection costs O(log n) requests, not one per datum.
        assert!(
            s.stats().bisections.get() <= 2 * 7,
            "{}",
            s.stats().bisections.get()
        );
        assert_eq!(
            s.stats().retries(),
            0,
            "a refused payload is not retried as it is"
        );
    }

    #[tokio::test]
    async fn data_waits_while_cloudwatch_is_down_and_goes_out_when_it_answers() {
        let (s, t, _) = sink(fast());
        t.down.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let r = bounded(s.publish(counters(50, 1.0))).await;
            assert!(r.gave_up.is_some());
            assert_eq!(r.published_samples, 0);
        }
        assert_eq!(s.stats().queue_samples.get(), 150);
        assert_eq!(s.stats().available.get(), 0);
        t.down.store(false, Ordering::SeqCst);
        let r = bounded(s.publish(counters(50, 1.0))).await;
        assert_eq!(r.published_samples, 200);
        assert_eq!(r.pending_samples, 0);
        assert_eq!(s.stats().dropped_samples_total(), 0);
        assert_eq!(s.stats().queue_bytes(), 0);
        assert_eq!(s.stats().available.get(), 1);
    }

    #[tokio::test]
    async fn past_the_memory_bound_the_oldest_data_is_dropped_and_counted() {
        let config = PublishConfig {
            max_pending_bytes: 1024 * 1024,
            ..fast()
        };
        let (s, t, _) = sink(config);
        t.down.store(true, Ordering::SeqCst);
        let mut sent = 0;
        for _ in 0..6 {
            let p = histograms(100, 150);
            sent += p.metrics.iter().map(|m| m.1.samples()).sum::<u64>();
            bounded(s.publish(p)).await;
            assert!(s.stats().queue_bytes() <= 1024 * 1024);
        }
        let dropped = s.stats().dropped_samples(DropReason::QueueFull);
        assert!(dropped > 0);
        t.down.store(false, Ordering::SeqCst);
        let r = bounded(s.flush(Instant::now() + Duration::from_secs(20))).await;
        assert_eq!(r.published_samples + dropped, sent);
        assert_eq!(
            s.stats().published_samples() + s.stats().dropped_samples_total(),
            sent
        );
    }

    #[tokio::test]
    async fn what_is_unpublished_at_the_shutdown_deadline_is_counted() {
        let (s, t, _) = sink(PublishConfig {
            max_attempts: 20,
            backoff_base_ms: 50,
            backoff_max_ms: 1000,
            ..PublishConfig::default()
        });
        t.down.store(true, Ordering::SeqCst);
        s.inner.enqueue(counters(10, 4.0));
        let r = bounded(s.flush(Instant::now() + Duration::from_millis(300))).await;
        assert_eq!(r.published_samples, 0);
        assert_eq!(s.stats().dropped_samples(DropReason::ShutdownDeadline), 40);
        assert_eq!(s.stats().queue_samples.get(), 0);
    }

    #[tokio::test]
    async fn the_run_loop_publishes_every_period_within_the_concurrency_bound() {
        let config = PublishConfig {
            max_concurrent_requests: 2,
            max_datums_per_request: 10,
            ..fast()
        };
        let (s, t, _) = sink(config);
        t.answers.lock().extend([ErrorKind::Timeout; 3]);
        let (tx, rx) = mpsc::channel(4);
        let run = tokio::spawn(s.clone().run(rx, Duration::from_secs(10)));
        for _ in 0..5 {
            tx.send(counters(95, 1.0)).await.unwrap();
        }
        drop(tx);
        bounded(run).await.unwrap();
        assert_eq!(s.stats().published_samples(), 475);
        assert_eq!(s.stats().dropped_samples_total(), 0);
        assert!(t.max_in_flight.load(Ordering::SeqCst) <= 2);
        assert!(t.requests.lock().iter().all(|&n| n <= 10));
    }

    #[tokio::test]
    async fn as_a_sink_send_only_queues_and_shutdown_delivers_before_the_deadline() {
        let (s, t, stats) = sink(fast());
        t.down.store(true, Ordering::SeqCst);
        let mut running: Box<dyn Sink> = Box::new(s.clone().start(Duration::from_secs(20)));
        for _ in 0..3 {
            // Returns at once although CloudWatch is down.
            bounded(running.send(counters(20, 1.0))).await.unwrap();
        }
        t.down.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        bounded(running.shutdown(deadline)).await.unwrap();
        assert_eq!(s.stats().published_samples(), 60);
        assert_eq!(s.stats().dropped_samples_total(), 0);
        assert!(running.send(counters(1, 5.0)).await.is_err());
        assert_eq!(
            stats.counter_value(
                crate::stats::DROPPED_SAMPLES,
                &[("reason", "cloudwatch_shutdown_deadline")]
            ),
            5
        );
    }
}
