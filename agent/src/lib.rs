//! # tally-agent: the sidecar that merges SDK batches and publishes them
//!
//! The agent runs next to a service in the same ECS task. Every process of the service links
//! the tally SDK, which sends compact, sequence-numbered batches of counters, gauges and HDR
//! histograms to the agent over loopback TCP or a Unix socket. The agent merges them across
//! processes into wall-clock periods and hands each closed period to a sink: CloudWatch
//! (`publish`) or standard output (the local default).
//!
//! ```text
//!  SDK processes ──frames──▶ ingest/ ──Batch──▶ aggregate/ ──PeriodData──▶ sinks/ (stdout)
//!   (tally::wire)   listen, session,   periods, merge,     bounded        publish/ (CloudWatch)
//!                   sequence, acks     rollups, derived    queue
//!                   │      │                  │
//!                   │      └──── stats ───────┴──▶ admin/ (/health, /metrics, /cost)
//!                   └──▶ durability/ (write-ahead log, replay at start)
//! ```
//!
//! - `ingest`: listeners (loopback only unless allowed), one session per connection with a
//!   shared byte budget, frame checks, per-process sequence tracking (duplicates answered
//!   `Duplicate`, gaps counted as loss), and an `Accepted` ack only after the merge.
//! - [`aggregate`]: the merge. Keys are namespace + name + unit + full dimension set; periods
//!   are aligned to the wall clock; histograms merge exactly; rollups and derived metrics
//!   (`ErrorRate`) are computed when a period closes; CloudWatch's naming rules and the
//!   series bound are enforced with counted, explained refusals.
//! - [`statsd`]: StatsD / DogStatsD over UDP and a Unix datagram socket, for the task's
//!   non-Rust containers: parsed lines become SDK-shaped batches merged through the same
//!   [`ingest::Intake`].
//! - [`sinks`]: the [`sinks::Sink`] trait and the stdout sink.
//! - `durability`: the optional write-ahead log (`[durability] dir`): a batch is appended
//!   before it is acknowledged, its period's segment deleted once published, and what a
//!   killed agent left is replayed at start.
//! - [`runtime`]: wiring and the ordered shutdown (stop accepting, drain sessions, close the
//!   open period early, deliver within the deadline).
//! - [`admin`]: health, Prometheus self-metrics, monthly cost estimate.
//! - `self_metrics`: optionally, six of those self-metrics published with every period
//!   (`Component=agent`), so the agent can be alarmed on like the service.
//! - [`canary`]: the per-revision series (`[canary]`) and `tally-agent canary`, the gate
//!   that compares a new revision with the old one through GetMetricData.
//! - [`config`]: the TOML configuration with env-var and flag overrides for every key; each
//!   section's type and check live in the module it configures.
//! - [`catalog`]: every metric identity a configuration publishes (alarms are checked
//!   against it). [`model`] (the period data and its sparse histograms) and [`stats`] are the
//!   contracts between the parts.
//! - [`cloudwatch`]: CloudWatch's limits, naming rules, units and error classification, in
//!   one module that imports no other part of the agent.
//!
//! Nothing is lost silently: every sample that is not published increments
//! `tally_agent_dropped_samples_total{reason=...}` (or the SDK-reported and sequence-gap
//! counters) and is logged with a rate limit.

pub mod admin;
pub mod aggregate;
pub mod alarms;
pub mod canary;
pub mod catalog;
pub mod cloudwatch;
pub mod config;
pub(crate) mod durability;
pub mod ecs;
pub(crate) mod ingest;
pub mod model;
pub mod publish;
pub mod runtime;
pub(crate) mod self_metrics;
pub mod sinks;
pub mod stats;
pub mod statsd;
pub(crate) mod util;

/// What the process tests and benchmarks need of crate-private parts, and nothing else: not
/// part of the agent's API.
#[doc(hidden)]
pub mod testing {
    /// The write-ahead log's on-disk format, for tests that leave a log as a killed agent
    /// would.
    pub use crate::durability::{encode_record, segment_name};
    /// The intake a receiver feeds, for the StatsD benchmark's parse + merge path.
    pub use crate::ingest::{sequence::Sequences, Intake};
}
