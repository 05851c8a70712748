//! The publisher's self-metrics, registered once in the agent's [`Stats`] registry.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `tally_publish_calls_total{outcome}` | counter | PutMetricData attempts by outcome (`ok`, `throttled`, `server_error`, `timeout`, `network`, `auth`, `invalid`, `other`) |
//! | `tally_publish_retries_total` | counter | attempts that were retries |
//! | `tally_publish_bisections_total` | counter | rejected requests split in two to isolate invalid datums |
//! | `tally_publish_datums_total` | counter | datums CloudWatch accepted |
//! | `tally_publish_samples_total` | counter | samples CloudWatch accepted |
//! | `tally_publish_dropped_samples_total{reason}` | counter | samples never published, by [`DropReason`] |
//! | `tally_publish_dropped_datums_total{reason}` | counter | datums never published, by [`DropReason`] |
//! | `tally_agent_dropped_samples_total{reason="cloudwatch_*"}` | counter | the same samples in the agent-wide drop counter |
//! | `tally_publish_request_duration_microseconds_{sum,count}` | counter | attempt latency |
//! | `tally_publish_request_duration_microseconds_max` | gauge | slowest attempt so far |
//! | `tally_publish_request_bytes_total{encoding}` | counter | body bytes, `uncompressed` and `sent` |
//! | `tally_publish_request_bytes_max{encoding}` | gauge | largest body so far |
//! | `tally_publish_compressed_requests_total` | counter | attempts sent gzip-compressed |
//! | `tally_publish_queue_bytes` / `_datums` / `_samples` | gauge | pending queue (incl. in flight) |
//! | `tally_publish_queue_max_bytes` | gauge | the configured bound |
//! | `tally_publish_cloudwatch_available` | gauge | 1 after a success, 0 after giving up on a request |

use crate::stats::{Counter, DropCounters, DropReason as AgentDrop, Gauge, Stats};

/// Why a sample was not published. Every variant is a label value of
/// `tally_publish_dropped_samples_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The namespace breaks CloudWatch's rules (empty, over 255, `:` or `AWS/` prefix).
    InvalidNamespace,
    /// The metric name breaks CloudWatch's rules (empty, over 255, control characters).
    InvalidName,
    /// A dimension breaks CloudWatch's rules (over 30, duplicate, non-ASCII, length).
    InvalidDimension,
    /// NaN or an infinity.
    NonFinite,
    /// A value outside CloudWatch's range (magnitude above 2^360 or non-zero below 2^-360).
    OutOfRange,
    /// Older than CloudWatch accepts (two weeks), on arrival or while waiting for CloudWatch.
    Expired,
    /// More than two hours in the future.
    FutureTimestamp,
    /// CloudWatch rejected the datum itself (HTTP 4xx such as InvalidParameterValue).
    Rejected,
    /// The pending queue reached `max_pending_bytes`; the oldest data went first.
    QueueFull,
    /// Still unpublished when the shutdown deadline passed.
    ShutdownDeadline,
}

impl DropReason {
    /// Every reason, for registration at zero.
    pub const ALL: [DropReason; 10] = [
        DropReason::InvalidNamespace,
        DropReason::InvalidName,
        DropReason::InvalidDimension,
        DropReason::NonFinite,
        DropReason::OutOfRange,
        DropReason::Expired,
        DropReason::FutureTimestamp,
        DropReason::Rejected,
        DropReason::QueueFull,
        DropReason::ShutdownDeadline,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::InvalidNamespace => "invalid_namespace",
            DropReason::InvalidName => "invalid_name",
            DropReason::InvalidDimension => "invalid_dimension",
            DropReason::NonFinite => "non_finite",
            DropReason::OutOfRange => "out_of_range",
            DropReason::Expired => "expired",
            DropReason::FutureTimestamp => "future_timestamp",
            DropReason::Rejected => "rejected",
            DropReason::QueueFull => "queue_full",
            DropReason::ShutdownDeadline => "shutdown_deadline",
        }
    }

    /// The agent-wide reason ([`AgentDrop`], label `cloudwatch_` + [`DropReason::as_str`] of
    /// `tally_agent_dropped_samples_total{reason}`, where every stage's drops add up).
    pub fn agent_reason(self) -> AgentDrop {
        match self {
            DropReason::InvalidNamespace => AgentDrop::CloudwatchInvalidNamespace,
            DropReason::InvalidName => AgentDrop::CloudwatchInvalidName,
            DropReason::InvalidDimension => AgentDrop::CloudwatchInvalidDimension,
            DropReason::NonFinite => AgentDrop::CloudwatchNonFinite,
            DropReason::OutOfRange => AgentDrop::CloudwatchOutOfRange,
            DropReason::Expired => AgentDrop::CloudwatchExpired,
            DropReason::FutureTimestamp => AgentDrop::CloudwatchFutureTimestamp,
            DropReason::Rejected => AgentDrop::CloudwatchRejected,
            DropReason::QueueFull => AgentDrop::CloudwatchQueueFull,
            DropReason::ShutdownDeadline => AgentDrop::CloudwatchShutdownDeadline,
        }
    }
}

/// Handles to every publisher self-metric.
#[derive(Debug, Clone)]
pub struct PublishStats {
    pub(crate) calls: [Counter; crate::cloudwatch::ErrorKind::COUNT + 1],
    pub(crate) retries: Counter,
    pub(crate) bisections: Counter,
    pub(crate) datums: Counter,
    pub(crate) samples: Counter,
    dropped_samples: [Counter; DropReason::ALL.len()],
    dropped_datums: [Counter; DropReason::ALL.len()],
    agent_dropped: DropCounters,
    pub(crate) latency_sum_us: Counter,
    pub(crate) latency_count: Counter,
    pub(crate) latency_max_us: Gauge,
    pub(crate) bytes_uncompressed: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_uncompressed_max: Gauge,
    pub(crate) bytes_sent_max: Gauge,
    pub(crate) compressed_requests: Counter,
    pub(crate) queue_bytes: Gauge,
    pub(crate) queue_datums: Gauge,
    pub(crate) queue_samples: Gauge,
    pub(crate) queue_max_bytes: Gauge,
    pub(crate) available: Gauge,
    max_lock: std::sync::Arc<parking_lot::Mutex<()>>,
}

impl PublishStats {
    /// Registers every publisher metric in `stats` (at zero, so drops are visible before they
    /// happen).
    pub fn register(stats: &Stats) -> Self {
        use crate::cloudwatch::ErrorKind;
        let calls = std::array::from_fn(|i| {
            let outcome = if i == ErrorKind::COUNT {
                "ok"
            } else {
                ErrorKind::ALL[i].as_str()
            };
            stats.counter(
                "tally_publish_calls_total",
                "PutMetricData attempts by outcome.",
                &[("outcome", outcome)],
            )
        });
        let dropped_samples = std::array::from_fn(|i| {
            stats.counter(
                "tally_publish_dropped_samples_total",
                "Samples never published, by reason.",
                &[("reason", DropReason::ALL[i].as_str())],
            )
        });
        let dropped_datums = std::array::from_fn(|i| {
            stats.counter(
                "tally_publish_dropped_datums_total",
                "Datums never published, by reason.",
                &[("reason", DropReason::ALL[i].as_str())],
            )
        });
        let agent_dropped = stats.drop_counters();
        let bytes = |encoding| {
            stats.counter(
                "tally_publish_request_bytes_total",
                "PutMetricData body bytes (uncompressed: as serialized; sent: on the wire).",
                &[("encoding", encoding)],
            )
        };
        let bytes_max = |encoding| {
            stats.gauge(
                "tally_publish_request_bytes_max",
                "Largest PutMetricData body so far.",
                &[("encoding", encoding)],
            )
        };
        Self {
            calls,
            retries: stats.counter(
                "tally_publish_retries_total",
                "PutMetricData attempts that were retries.",
                &[],
            ),
            bisections: stats.counter(
                "tally_publish_bisections_total",
                "Rejected requests split in two to isolate invalid datums.",
                &[],
            ),
            datums: stats.counter(
                "tally_publish_datums_total",
                "Datums CloudWatch accepted.",
                &[],
            ),
            samples: stats.counter(
                "tally_publish_samples_total",
                "Samples CloudWatch accepted.",
                &[],
            ),
            dropped_samples,
            dropped_datums,
            agent_dropped,
            latency_sum_us: stats.counter(
                "tally_publish_request_duration_microseconds_sum",
                "Total duration of PutMetricData attempts.",
                &[],
            ),
            latency_count: stats.counter(
                "tally_publish_request_duration_microseconds_count",
                "Number of timed PutMetricData attempts.",
                &[],
            ),
            latency_max_us: stats.gauge(
                "tally_publish_request_duration_microseconds_max",
                "Slowest PutMetricData attempt so far.",
                &[],
            ),
            bytes_uncompressed: bytes("uncompressed"),
            bytes_sent: bytes("sent"),
            bytes_uncompressed_max: bytes_max("uncompressed"),
            bytes_sent_max: bytes_max("sent"),
            compressed_requests: stats.counter(
                "tally_publish_compressed_requests_total",
                "PutMetricData attempts sent gzip-compressed.",
                &[],
            ),
            queue_bytes: stats.gauge(
                "tally_publish_queue_bytes",
                "Estimated memory of datums waiting for CloudWatch, in flight included.",
                &[],
            ),
            queue_datums: stats.gauge(
                "tally_publish_queue_datums",
                "Datums waiting for CloudWatch, in flight included.",
                &[],
            ),
            queue_samples: stats.gauge(
                "tally_publish_queue_samples",
                "Samples waiting for CloudWatch, in flight included.",
                &[],
            ),
            queue_max_bytes: stats.gauge(
                "tally_publish_queue_max_bytes",
                "The pending queue's memory bound ([publish] max_pending_bytes).",
                &[],
            ),
            available: stats.gauge(
                "tally_publish_cloudwatch_available",
                "1 after a successful PutMetricData, 0 after giving up on one.",
                &[],
            ),
            max_lock: std::sync::Arc::default(),
        }
    }

    /// Counts `datums` datums carrying `samples` samples as dropped for `reason`.
    pub fn drop(&self, reason: DropReason, datums: u64, samples: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.dropped_samples[i].add(samples);
        self.dropped_datums[i].add(datums);
        self.agent_dropped.add(reason.agent_reason(), samples);
    }

    /// Samples dropped for `reason` so far.
    pub fn dropped_samples(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.dropped_samples[i].get()
    }

    /// Samples dropped for any reason so far.
    pub fn dropped_samples_total(&self) -> u64 {
        self.dropped_samples.iter().map(Counter::get).sum()
    }

    /// Samples CloudWatch accepted so far.
    pub fn published_samples(&self) -> u64 {
        self.samples.get()
    }

    /// Datums CloudWatch accepted so far.
    pub fn published_datums(&self) -> u64 {
        self.datums.get()
    }

    /// Successful PutMetricData requests so far.
    pub fn successful_requests(&self) -> u64 {
        self.calls[crate::cloudwatch::ErrorKind::COUNT].get()
    }

    /// Failed PutMetricData attempts of one kind so far.
    pub fn failed_requests(&self, kind: crate::cloudwatch::ErrorKind) -> u64 {
        self.calls[kind as usize].get()
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Largest uncompressed request body seen so far, in bytes.
    pub fn max_uncompressed_request_bytes(&self) -> u64 {
        self.bytes_uncompressed_max.get().max(0) as u64
    }

    /// Largest request body sent so far (after compression), in bytes.
    pub fn max_sent_request_bytes(&self) -> u64 {
        self.bytes_sent_max.get().max(0) as u64
    }

    /// Total uncompressed and sent body bytes so far.
    pub fn request_bytes(&self) -> (u64, u64) {
        (self.bytes_uncompressed.get(), self.bytes_sent.get())
    }

    /// Attempts sent gzip-compressed so far.
    pub fn compressed_requests(&self) -> u64 {
        self.compressed_requests.get()
    }

    /// The pending queue's current estimated memory in bytes.
    pub fn queue_bytes(&self) -> u64 {
        self.queue_bytes.get().max(0) as u64
    }

    /// Raises `gauge` to `v` if `v` is larger (under a lock, so concurrent attempts never
    /// lose a maximum; this runs once per HTTP attempt).
    pub(crate) fn raise_max(&self, gauge: &Gauge, v: u64) {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        let _guard = self.max_lock.lock();
        if v > gauge.get() {
            gauge.set(v);
        }
    }
}
