//! StatsD / DogStatsD in: the agent as the one sidecar for every container of the task.
//!
//! ```text
//!  clients ──UDP 127.0.0.1:8125──▶ listener ──packet──▶ receiver ──Batch──▶ ingest::Intake
//!  (hot-shots,  ──unix datagram──▶ (thread,   lines     (parse, slots,    (sequences, WAL,
//!   datadog)                        kernel     ──▶       tag limits,       aggregate: the
//!                                   drops)     parse/    flush per          same periods as
//!                                              ──▶       identity)          SDK batches)
//! ```
//!
//! - [`listener`]: one thread per socket (UDP, and optionally a Unix datagram socket). It
//!   asks for `statsd.receive_buffer_bytes` of receive buffer (the effective size is logged),
//!   reads the socket's kernel drop counter with every packet (`SO_RXQ_OVFL`, and the drops
//!   column of `/proc/net/udp` at shutdown) and counts what the kernel dropped as
//!   `tally_agent_dropped_samples_total{reason="udp_receive_buffer"}` (one per packet: a
//!   lower bound, the packet's lines are unknown). A packet over `statsd.max_packet_bytes`
//!   is counted and dropped.
//! - [`parse`]: the line protocol, borrowed and allocation-free; a refused line is counted by
//!   reason and logged (rate-limited, quoted and truncated).
//! - [`receiver`]: the in-agent producer of the batches an SDK sends. Sample rates scale
//!   counts so totals are unbiased, timers go into nanosecond HDR histograms (exactly like an
//!   SDK latency, so the same name and tags from a Rust process are one series), histograms
//!   and distributions into HDR histograms of six decimals, sets count their distinct members
//!   per period, tags become dimensions under per-tag cardinality limits (`__other__` past a
//!   limit), `service:` and `env:` tags the `ServiceName` and `Environment` identity. Every
//!   flush becomes one `tally::wire` batch per identity merged through
//!   [`crate::ingest::Intake`], so aggregation has a single entry point: periods, rollups,
//!   derived metrics, alarms and the write-ahead log treat StatsD data as SDK data.
//! - [`emf`]: Embedded Metric Format records (`statsd.emf_addr`, TCP lines and UDP
//!   datagrams, as `aws-embedded-metrics` sends them to the CloudWatch agent), clamped to the
//!   agent's namespace and dimension-set limit, merged through a receiver of their own.

mod config;
pub mod emf;
pub mod listener;
pub mod parse;
pub mod receiver;

pub use config::StatsdConfig;
pub use listener::{StatsdError, StatsdListeners};
pub use receiver::Receiver;

use crate::stats::{Counter, DropCounters, Stats};

/// One listener's counters, registered once.
#[derive(Debug, Clone)]
pub struct StatsdStats {
    drops: DropCounters,
    packets: Counter,
    non_utf8: Counter,
    oversized: Counter,
    kernel_drops: Counter,
    lines_metric: Counter,
    lines_event: Counter,
    lines_service_check: Counter,
    malformed: Vec<Counter>,
    ignored_tags: Counter,
    label_overflows: Counter,
    emf_records: Counter,
    emf_bad: Vec<Counter>,
    emf_foreign_namespaces: Counter,
    emf_dropped_sets: Counter,
}

impl StatsdStats {
    /// Registers the counters of the listener called `listener` (`udp` or `unix`).
    pub fn new(stats: &Stats, listener: &str) -> Self {
        let packets = |outcome| {
            stats.counter(
                "tally_agent_statsd_packets_total",
                "StatsD packets received, by listener and outcome (received, non_utf8, oversized, kernel_dropped).",
                &[("listener", listener), ("outcome", outcome)],
            )
        };
        let lines = |kind| {
            stats.counter(
                "tally_agent_statsd_lines_total",
                "StatsD lines read, by listener and kind (metric, event, service_check).",
                &[("listener", listener), ("kind", kind)],
            )
        };
        StatsdStats {
            drops: stats.drop_counters(),
            packets: packets("received"),
            non_utf8: packets("non_utf8"),
            oversized: packets("oversized"),
            kernel_drops: packets("kernel_dropped"),
            lines_metric: lines("metric"),
            lines_event: lines("event"),
            lines_service_check: lines("service_check"),
            malformed: parse::Malformed::ALL
                .iter()
                .map(|m| {
                    stats.counter(
                        "tally_agent_statsd_malformed_lines_total",
                        "StatsD lines refused, by listener and reason (each also counted in tally_agent_dropped_samples_total).",
                        &[("listener", listener), ("reason", m.reason())],
                    )
                })
                .collect(),
            ignored_tags: stats.counter(
                "tally_agent_statsd_ignored_tags_total",
                "StatsD tags not made dimensions (no value, or a key repeated on one line).",
                &[("listener", listener)],
            ),
            label_overflows: stats.counter(
                "tally_agent_statsd_label_overflows_total",
                "StatsD tag values (and service/env pairs) folded into __other__ past their limit (recorded, not lost).",
                &[("listener", listener)],
            ),
            emf_records: stats.counter(
                "tally_agent_emf_records_total",
                "EMF records read, by outcome (accepted, or the reason they were refused).",
                &[("outcome", "accepted")],
            ),
            emf_bad: [
                emf::EmfError::NotJson,
                emf::EmfError::NotEmf,
                emf::EmfError::MissingDimension,
                emf::EmfError::BadValue,
                emf::EmfError::Oversized,
            ]
            .iter()
            .map(|e| {
                stats.counter(
                    "tally_agent_emf_records_total",
                    "EMF records read, by outcome (accepted, or the reason they were refused).",
                    &[("outcome", e.reason())],
                )
            })
            .collect(),
            emf_foreign_namespaces: stats.counter(
                "tally_agent_emf_clamped_total",
                "EMF directives clamped to the agent's configuration: another namespace (published in the agent's), dimension sets past statsd.emf_max_dimension_sets (left out).",
                &[("what", "namespace")],
            ),
            emf_dropped_sets: stats.counter(
                "tally_agent_emf_clamped_total",
                "EMF directives clamped to the agent's configuration: another namespace (published in the agent's), dimension sets past statsd.emf_max_dimension_sets (left out).",
                &[("what", "dimension_set")],
            ),
        }
    }
}
