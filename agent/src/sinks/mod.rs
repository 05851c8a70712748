//! Sinks: where closed periods go.
//!
//! The aggregator closes one [`PeriodData`] per wall-clock period and sends it through a
//! bounded channel; one task owns the configured [`Sink`] and hands it each period in order.
//! Two sinks exist: `publish` (CloudWatch `PutMetricData`) and [`stdout`] (the local default:
//! a compact table or JSON lines).
//!
//! # Writing a sink (note for the `publish` module)
//!
//! Implement the two methods of [`Sink`]:
//!
//! - [`Sink::send`] receives every closed period exactly once, in order. Return once the sink
//!   has taken responsibility for it: published, queued within the sink's own memory bound,
//!   or counted as dropped (by reason, in [`Stats`](crate::stats::Stats)). A slow `send`
//!   back-pressures the period channel, never the ingest path: the aggregator keeps merging
//!   and counts periods it cannot queue (`tally_agent_dropped_samples_total{reason="sink_queue_full"}`).
//! - [`Sink::shutdown`] is called once after the last period, at SIGTERM/SIGINT or end of
//!   input: publish whatever is still pending and return by `deadline` (what is left then is
//!   counted as dropped by the sink, reason `shutdown_deadline`).
//!
//! Return [`SinkError`] only for what the runtime should log; the sink itself counts any
//! samples it could not deliver. The trait is object safe (`Box<dyn Sink>`) and needs no
//! `async-trait` crate: methods return a boxed future ([`SinkFuture`]).

mod config;
pub mod stdout;

pub use config::{SinkConfig, SinkKind, MAX_SHUTDOWN_DEADLINE_SECS};

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::PeriodData;

/// The future returned by [`Sink`] methods.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for closed periods. See the module docs for the contract.
pub trait Sink: Send {
    /// A short name for logs and self-metrics (`stdout`, `cloudwatch`).
    fn name(&self) -> &'static str;

    /// Takes one closed period. Called in period order, one call at a time.
    fn send(&mut self, period: PeriodData) -> SinkFuture<'_>;

    /// Delivers everything still pending before `deadline`; called once, after the last
    /// [`Sink::send`].
    fn shutdown(&mut self, deadline: Instant) -> SinkFuture<'_>;

    /// For a sink that keeps periods after [`Sink::send`] returns (a queue), a running count
    /// of the periods given to `send` that are *settled*: published, or dropped and counted.
    /// Periods settle in the order they were sent. The write-ahead log deletes a period's
    /// segment once it is settled. `None` (the default): a period is settled when `send`
    /// returns.
    fn settled(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// Why a sink could not deliver a period. The sink has already counted the samples it lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Writing to a local stream failed.
    #[error("{sink} sink could not write: {source}")]
    Io {
        /// Which sink.
        sink: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Delivery failed for another reason (the message says what to check).
    #[error("{sink} sink failed: {message}")]
    Failed {
        /// Which sink.
        sink: &'static str,
        /// What went wrong and what to check.
        message: String,
    },
}
