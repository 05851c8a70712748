//! Publishing closed periods to CloudWatch with `PutMetricData`, without losing a sample
//! silently.
//!
//! The data path, one file per step:
//!
//! 1. [`datum`]: a [`PeriodData`](crate::model::PeriodData) is checked (namespace, timestamp,
//!    names, dimensions) and each metric becomes one or more CloudWatch datums; what CloudWatch
//!    would refuse is dropped here and counted.
//! 2. [`split`]: histograms become `Values`/`Counts` (bucket median values, exact counts), at
//!    most 150 values a datum; more buckets make more datums of the same metric and timestamp.
//! 3. [`queue`]: closed periods wait in a memory-bounded queue, oldest first, as their metrics;
//!    datums are made a request at a time (a period never exists twice in memory).
//! 4. [`batch`]: requests are cut at 1000 datums or ~999,000 estimated bytes (CloudWatch's
//!    limits, from [`crate::cloudwatch`]).
//! 5. [`retry`]: failures are classified ([`crate::cloudwatch::ErrorKind`], shared with the
//!    alarm provisioner); transient ones are retried with exponential backoff and full
//!    jitter; a refused payload is bisected down to the datum at fault.
//! 6. [`client`]: the aws-sdk-cloudwatch client (default credential chain, gzip, timeouts)
//!    behind a small [`client::Transport`] trait.
//! 7. [`sink`]: [`CloudWatchSink`] ties them together: `publish`, `run` over a channel, and
//!    `flush` with a deadline at shutdown; [`CloudWatchSink::start`] gives the
//!    [`Sink`](crate::sinks::Sink) the agent's runtime drives.
//!
//! Every sample that is not published is counted in
//! `tally_publish_dropped_samples_total{reason}` (see [`stats`]).

pub mod batch;
pub mod client;
pub mod config;
pub mod datum;
pub mod queue;
pub mod retry;
pub mod sink;
pub mod split;
pub mod stats;

pub use client::ClientOverrides;
pub use config::PublishConfig;
pub use sink::{CloudWatchSink, DrainReport, RunningSink};
pub use stats::{DropReason, PublishStats};
