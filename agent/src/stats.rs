//! The agent's self-metrics: named counters and gauges every component registers once and
//! updates with one atomic operation, rendered as Prometheus text on `/metrics` and optionally
//! published to CloudWatch with `Component=agent`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Name of the dropped-samples counter (labelled by `reason`): every component that fails to
/// deliver a sample counts it here, so one series answers "was anything lost, and why".
pub const DROPPED_SAMPLES: &str = "tally_agent_dropped_samples_total";
/// Its help text.
pub const DROPPED_SAMPLES_HELP: &str = "Samples not published, by reason.";

/// A monotonic counter handle. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge handle (signed integer). Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

type Key = (String, Vec<(String, String)>);

/// One self-metric in a [`Stats::snapshot`]: name, labels, value.
pub type SnapshotEntry = (String, Vec<(String, String)>, f64);

#[derive(Debug, Default)]
struct Inner {
    help: BTreeMap<String, (&'static str, &'static str)>,
    counters: BTreeMap<Key, Counter>,
    gauges: BTreeMap<Key, Gauge>,
}

/// Why samples were not published: every label value of `tally_agent_dropped_samples_total`,
/// whichever stage dropped them (the SDK-reported and sequence-gap losses have counters of
/// their own). A new stage adds its reasons here, so the list of what the agent can lose a
/// sample to is in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A new series beyond `aggregate.max_series` in its period.
    MaxSeries,
    /// A series naming one label twice.
    DuplicateLabel,
    /// A batch whose service or environment cannot be a dimension value.
    InvalidIdentity,
    /// A name, label or value that is not UTF-8.
    InvalidUtf8,
    /// A gauge value that is NaN or infinite.
    NonFiniteValue,
    /// A name CloudWatch refuses: empty.
    EmptyName,
    /// A name or value over CloudWatch's length limit.
    NameTooLong,
    /// A dimension with non-ASCII characters.
    NonAsciiDimension,
    /// A name or value with a control character.
    ControlCharacter,
    /// A name starting with `:`.
    LeadingColon,
    /// A namespace starting with `AWS/`.
    ReservedNamespace,
    /// A label named like a dimension the agent sets itself.
    ReservedDimension,
    /// More dimensions than CloudWatch allows.
    TooManyDimensions,
    /// A series recorded with another kind elsewhere (a counter merged into a histogram...).
    KindMismatch,
    /// Histograms of one series with different scales.
    ScaleMismatch,
    /// A histogram HdrHistogram refuses or whose counts cannot be read.
    HistogramMerge,
    /// Two derived metrics with one key (two rules publishing the same name).
    DerivedCollision,
    /// Occurrences of an event without a value in a period published as the values' distribution.
    EventWithoutValue,
    /// A batch older than the sequence window of its process.
    StaleSequence,
    /// A closed period the sink queue had no room for.
    SinkQueueFull,
    /// A closed period the sink refused.
    SinkError,
    /// A closed period still queued for the sink at the shutdown deadline.
    ShutdownDeadline,
    /// The publisher's `invalid_namespace`.
    CloudwatchInvalidNamespace,
    /// The publisher's `invalid_name`.
    CloudwatchInvalidName,
    /// The publisher's `invalid_dimension`.
    CloudwatchInvalidDimension,
    /// The publisher's `non_finite`.
    CloudwatchNonFinite,
    /// The publisher's `out_of_range`.
    CloudwatchOutOfRange,
    /// The publisher's `expired`.
    CloudwatchExpired,
    /// The publisher's `future_timestamp`.
    CloudwatchFutureTimestamp,
    /// The publisher's `rejected`.
    CloudwatchRejected,
    /// The publisher's `queue_full`.
    CloudwatchQueueFull,
    /// The publisher's `shutdown_deadline`.
    CloudwatchShutdownDeadline,
    /// A StatsD line that does not parse (the reason is in `tally_agent_statsd_malformed_lines_total`).
    StatsdMalformedLine,
    /// A StatsD packet that is not UTF-8 (its lines, at least one).
    StatsdNonUtf8Packet,
    /// A StatsD packet over the receive size (64 KiB), cut by the kernel.
    StatsdOversizedPacket,
    /// StatsD packets the kernel dropped because the socket's receive buffer was full.
    UdpReceiveBuffer,
    /// A new StatsD series beyond `statsd.max_series`.
    StatsdTooManySeries,
    /// A StatsD set member beyond `statsd.max_set_size` in a period.
    StatsdSetTooLarge,
    /// A StatsD value outside what the metric's kind can hold.
    StatsdValueOutOfRange,
    /// StatsD samples of a batch the receiver could not encode.
    StatsdUnencodable,
    /// StatsD samples refused because the write-ahead log was full.
    StatsdWalFull,
    /// An Embedded Metric Format record that does not parse or breaks its rules.
    EmfMalformedRecord,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 42;
    /// Every reason, in discriminant order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::MaxSeries,
        DropReason::DuplicateLabel,
        DropReason::InvalidIdentity,
        DropReason::InvalidUtf8,
        DropReason::NonFiniteValue,
        DropReason::EmptyName,
        DropReason::NameTooLong,
        DropReason::NonAsciiDimension,
        DropReason::ControlCharacter,
        DropReason::LeadingColon,
        DropReason::ReservedNamespace,
        DropReason::ReservedDimension,
        DropReason::TooManyDimensions,
        DropReason::KindMismatch,
        DropReason::ScaleMismatch,
        DropReason::HistogramMerge,
        DropReason::DerivedCollision,
        DropReason::EventWithoutValue,
        DropReason::StaleSequence,
        DropReason::SinkQueueFull,
        DropReason::SinkError,
        DropReason::ShutdownDeadline,
        DropReason::CloudwatchInvalidNamespace,
        DropReason::CloudwatchInvalidName,
        DropReason::CloudwatchInvalidDimension,
        DropReason::CloudwatchNonFinite,
        DropReason::CloudwatchOutOfRange,
        DropReason::CloudwatchExpired,
        DropReason::CloudwatchFutureTimestamp,
        DropReason::CloudwatchRejected,
        DropReason::CloudwatchQueueFull,
        DropReason::CloudwatchShutdownDeadline,
        DropReason::StatsdMalformedLine,
        DropReason::StatsdNonUtf8Packet,
        DropReason::StatsdOversizedPacket,
        DropReason::UdpReceiveBuffer,
        DropReason::StatsdTooManySeries,
        DropReason::StatsdSetTooLarge,
        DropReason::StatsdValueOutOfRange,
        DropReason::StatsdUnencodable,
        DropReason::StatsdWalFull,
        DropReason::EmfMalformedRecord,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MaxSeries => "max_series",
            DropReason::DuplicateLabel => "duplicate_label",
            DropReason::InvalidIdentity => "invalid_identity",
            DropReason::InvalidUtf8 => "invalid_utf8",
            DropReason::NonFiniteValue => "non_finite_value",
            DropReason::EmptyName => "empty_name",
            DropReason::NameTooLong => "name_too_long",
            DropReason::NonAsciiDimension => "non_ascii_dimension",
            DropReason::ControlCharacter => "control_character",
            DropReason::LeadingColon => "leading_colon",
            DropReason::ReservedNamespace => "reserved_namespace",
            DropReason::ReservedDimension => "reserved_dimension",
            DropReason::TooManyDimensions => "too_many_dimensions",
            DropReason::KindMismatch => "kind_mismatch",
            DropReason::ScaleMismatch => "scale_mismatch",
            DropReason::HistogramMerge => "histogram_merge",
            DropReason::DerivedCollision => "derived_collision",
            DropReason::EventWithoutValue => "event_without_value",
            DropReason::StaleSequence => "stale_sequence",
            DropReason::SinkQueueFull => "sink_queue_full",
            DropReason::SinkError => "sink_error",
            DropReason::ShutdownDeadline => "shutdown_deadline",
            DropReason::CloudwatchInvalidNamespace => "cloudwatch_invalid_namespace",
            DropReason::CloudwatchInvalidName => "cloudwatch_invalid_name",
            DropReason::CloudwatchInvalidDimension => "cloudwatch_invalid_dimension",
            DropReason::CloudwatchNonFinite => "cloudwatch_non_finite",
            DropReason::CloudwatchOutOfRange => "cloudwatch_out_of_range",
            DropReason::CloudwatchExpired => "cloudwatch_expired",
            DropReason::CloudwatchFutureTimestamp => "cloudwatch_future_timestamp",
            DropReason::CloudwatchRejected => "cloudwatch_rejected",
            DropReason::CloudwatchQueueFull => "cloudwatch_queue_full",
            DropReason::CloudwatchShutdownDeadline => "cloudwatch_shutdown_deadline",
            DropReason::StatsdMalformedLine => "statsd_malformed_line",
            DropReason::StatsdNonUtf8Packet => "statsd_non_utf8_packet",
            DropReason::StatsdOversizedPacket => "statsd_oversized_packet",
            DropReason::UdpReceiveBuffer => "udp_receive_buffer",
            DropReason::StatsdTooManySeries => "statsd_too_many_series",
            DropReason::StatsdSetTooLarge => "statsd_set_too_large",
            DropReason::StatsdValueOutOfRange => "statsd_value_out_of_range",
            DropReason::StatsdUnencodable => "statsd_unencodable",
            DropReason::StatsdWalFull => "statsd_wal_full",
            DropReason::EmfMalformedRecord => "emf_malformed_record",
        }
    }
}

/// Handles to `tally_agent_dropped_samples_total{reason}` for every [`DropReason`], registered
/// once (at zero, so dashboards see each reason before it happens): counting a drop is one
/// atomic add, where registering the counter each time took the registry's lock and
/// allocated the label. Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct DropCounters(Arc<[Counter; DropReason::COUNT]>);

impl DropCounters {
    /// Counts `n` samples dropped for `reason`.
    pub fn add(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.0[reason as usize].add(n);
        }
    }
}

/// The registry of self-metrics. Registration takes a lock; updates never do.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Mutex<Inner>>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    (name.to_owned(), l)
}

impl Stats {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero on first use. `help` documents it.
    pub fn counter(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Counter {
        let mut g = self.0.lock();
        g.help.entry(name.to_owned()).or_insert(("counter", help));
        g.counters.entry(key(name, labels)).or_default().clone()
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
        let mut g = self.0.lock();
        g.help.entry(name.to_owned()).or_insert(("gauge", help));
        g.gauges.entry(key(name, labels)).or_default().clone()
    }

    /// Handles to `tally_agent_dropped_samples_total{reason}` for every [`DropReason`].
    pub fn drop_counters(&self) -> DropCounters {
        DropCounters(Arc::new(std::array::from_fn(|i| {
            self.counter(
                DROPPED_SAMPLES,
                DROPPED_SAMPLES_HELP,
                &[("reason", DropReason::ALL[i].as_str())],
            )
        })))
    }

    /// Current value of a counter, 0 when never registered (for tests and the admin endpoint).
    pub fn counter_value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .lock()
            .counters
            .get(&key(name, labels))
            .map_or(0, Counter::get)
    }

    /// Current value of a gauge, 0 when never registered.
    pub fn gauge_value(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        self.0
            .lock()
            .gauges
            .get(&key(name, labels))
            .map_or(0, Gauge::get)
    }

    /// Sum of a counter over every label set (for example all drop reasons).
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.0
            .lock()
            .counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Every counter and gauge as (name, labels, value), for publishing self-metrics.
    pub fn snapshot(&self) -> Vec<SnapshotEntry> {
        let g = self.0.lock();
        let c = g
            .counters
            .iter()
            .map(|((n, l), c)| (n.clone(), l.clone(), c.get() as f64));
        let v = g
            .gauges
            .iter()
            .map(|((n, l), x)| (n.clone(), l.clone(), x.get() as f64));
        c.chain(v).collect()
    }

    /// Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render_prometheus(&self) -> String {
        let g = self.0.lock();
        let mut out = String::new();
        for (name, (kind, help)) in &g.help {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let values: Vec<(&Vec<(String, String)>, i128)> = if *kind == "counter" {
                g.counters
                    .range((name.clone(), Vec::new())..)
                    .take_while(|((n, _), _)| n == name)
                    .map(|((_, l), c)| (l, i128::from(c.get())))
                    .collect()
            } else {
                g.gauges
                    .range((name.clone(), Vec::new())..)
                    .take_while(|((n, _), _)| n == name)
                    .map(|((_, l), x)| (l, i128::from(x.get())))
                    .collect()
            };
            for (labels, v) in values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let l: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_the_same_name_and_labels_share_one_value() {
        let s = Stats::new();
        s.counter(
            "tally_frames_total",
            "Frames received.",
            &[("b", "2"), ("a", "1")],
        )
        .add(2);
        s.counter(
            "tally_frames_total",
            "Frames received.",
            &[("a", "1"), ("b", "2")],
        )
        .inc();
        assert_eq!(
            s.counter_value("tally_frames_total", &[("a", "1"), ("b", "2")]),
            3
        );
    }

    #[test]
    fn prometheus_text_lists_help_type_and_escaped_labels() {
        let s = Stats::new();
        s.counter("x_total", "Things.", &[("reason", "a\"b")])
            .add(5);
        s.gauge("q_depth", "Queue depth.", &[]).set(-2);
        let text = s.render_prometheus();
        assert!(text.contains("# HELP x_total Things.\n# TYPE x_total counter\n"));
        assert!(text.contains("x_total{reason=\"a\\\"b\"} 5\n"), "{text}");
        assert!(text.contains("q_depth -2\n"), "{text}");
    }
}
