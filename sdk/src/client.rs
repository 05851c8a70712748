//! The top-level handle: configuration, registration of handles and families, stats,
//! flush and shutdown.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use thiserror::Error;

use crate::conventions::{AGENT_ADDR_ENV, DEFAULT_AGENT_ADDR};
use crate::flush::{self, Ctl, FlusherConfig, StatsCells};
use crate::record::{Counter, Event, Gauge, Histogram, Layout, ShardCount};
use crate::registry::family::FamilyCore;
use crate::registry::{
    CounterFamily, EventFamily, GaugeFamily, HistogramFamily, RecordConfig, Registry,
};
use crate::transport::AgentAddr;
use crate::wire::{ProcessIdentity, Unit};

/// Why [`Builder::build`] refused a configuration. Each message names the setting to change.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The flush interval is below one second.
    #[error("flush interval {got:?} is below the minimum of 1 s: pass `flush_interval(Duration::from_secs(1))` or more")]
    FlushIntervalTooShort {
        /// The interval asked for.
        got: Duration,
    },
    /// The agent address could not be parsed.
    #[error("agent address {addr:?} is invalid ({reason}): set `agent(..)` or {env} to `host:port`, `tcp://host:port` or `unix:///path/to/socket`", env = AGENT_ADDR_ENV)]
    BadAgentAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// HdrHistogram supports 0 to 5 significant digits.
    #[error(
        "significant_digits({0}) is outside 0..=5: use 2 (the default) unless you measured a need"
    )]
    BadSignificantDigits(u8),
    /// The unsent-data bound is too small to hold even one batch.
    #[error("max_unsent_bytes({0}) is below the minimum of 1024 bytes: raise `max_unsent_bytes`")]
    MaxUnsentTooSmall(usize),
    /// The event value scale must be a finite positive number.
    #[error("event_scale({0}) must be finite and greater than 0 (1000 keeps three decimals)")]
    BadEventScale(f64),
    /// The acknowledgement timeout is below one second.
    #[error("ack_timeout({0:?}) is below the minimum of 1 s: an agent under load may take that long; use the default (30 s) or more")]
    AckTimeoutTooShort(Duration),
    /// The flusher thread could not be started.
    #[error("could not start the tally-flusher thread ({0}): check the process thread limit")]
    Spawn(#[source] std::io::Error),
}

/// Why [`Tally::flush`] did not complete.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushError {
    /// Not everything was acknowledged by the agent in time; it stays queued and is sent
    /// after a reconnect.
    #[error("the agent did not acknowledge every batch within {0:?}: check that the agent runs at the configured address (`agent(..)` / TALLY_AGENT_ADDR)")]
    TimedOut(Duration),
    /// [`Tally::shutdown`] already ran.
    #[error("tally was shut down; nothing more is sent")]
    ShutDown,
}

/// Cumulative counters of one [`Tally`], for logs and self-monitoring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Samples dropped because `max_unsent_bytes` was exceeded (also reported to the agent).
    pub dropped_samples: u64,
    /// Batches dropped because `max_unsent_bytes` was exceeded.
    pub dropped_batches: u64,
    /// Label values folded into the overflow value by a cardinality limit.
    pub label_overflows: u64,
    /// Names or labels that had to be fixed to be publishable (empty, too long, too many),
    /// and histogram handles asked for in a unit other than their series was registered with.
    pub names_fixed: u64,
    /// Frames written to the agent (resends included).
    pub batches_sent: u64,
    /// Batches the agent acknowledged as accepted or duplicate.
    pub batches_acked: u64,
    /// Samples in acknowledged batches.
    pub samples_acked: u64,
    /// Batches the agent refused as invalid.
    pub batches_rejected: u64,
    /// Samples in refused batches.
    pub samples_rejected: u64,
    /// Samples still unacknowledged when shutdown's timeout ran out.
    pub samples_lost_at_shutdown: u64,
    /// Samples recorded after [`Tally::shutdown`] (through handles or families still in
    /// use): never sent, counted here so that nothing is lost silently. Counted each time
    /// stats are read, so read them once recording has stopped to see the final figure.
    pub samples_after_shutdown: u64,
    /// Bytes waiting for the agent (sealed frames plus an estimate of open data).
    pub unsent_bytes: u64,
    /// Successful connections.
    pub connects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Connections that ended.
    pub disconnects: u64,
    /// Connections closed because sent batches waited longer than `ack_timeout` for an ack.
    pub ack_timeouts: u64,
    /// Whether a connection is open now.
    pub connected: bool,
    /// Bytes the recording cells occupy now.
    pub cell_bytes: u64,
    /// Shards per series: counters' shards, and the most a histogram series grows to.
    pub shards: usize,
    /// The last transport problem (connect, send or read failure), if any.
    pub last_error: Option<String>,
    /// The highest wire protocol version the agent said it reads, in its last ack (0 before
    /// the first ack). This SDK writes version 1, which every agent reads.
    pub agent_version: u16,
}

/// Configures and starts a [`Tally`]. See [`Tally::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    service: Option<String>,
    environment: Option<String>,
    agent: Option<String>,
    flush_interval: Duration,
    max_unsent_bytes: usize,
    label_limit: usize,
    max_series: usize,
    significant_digits: u8,
    shards: Option<usize>,
    shutdown_timeout: Duration,
    event_scale: f64,
    ack_timeout: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            service: None,
            environment: None,
            agent: None,
            flush_interval: Duration::from_secs(10),
            max_unsent_bytes: 64 << 20,
            label_limit: 1000,
            max_series: 100_000,
            significant_digits: 2,
            shards: None,
            shutdown_timeout: Duration::from_secs(5),
            event_scale: 1000.0,
            ack_timeout: Duration::from_secs(30),
        }
    }
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Builder {
    /// The `ServiceName` dimension. Default: env `SERVICE_NAME`, else `unknown`.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// The `Environment` dimension. Default: env `ENVIRONMENT`, else `NODE_ENV`, else
    /// `unknown`.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }

    /// The agent's address: `host:port`, `tcp://host:port` or `unix:///path`. Default: env
    /// `TALLY_AGENT_ADDR`, else [`DEFAULT_AGENT_ADDR`] (`127.0.0.1:9911`).
    pub fn agent(mut self, addr: impl ToString) -> Self {
        self.agent = Some(addr.to_string());
        self
    }

    /// How often deltas are sent. Default 10 s; at least 1 s.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// Most bytes kept for the agent while it is away or slow (default 64 MiB, at least
    /// 1 KiB). Past it the oldest data is dropped and counted.
    pub fn max_unsent_bytes(mut self, bytes: usize) -> Self {
        self.max_unsent_bytes = bytes;
        self
    }

    /// Default number of distinct values each label of a family may take (default 1000).
    pub fn label_limit(mut self, limit: usize) -> Self {
        self.label_limit = limit;
        self
    }

    /// Most distinct series this process keeps (default 100,000, as the agent's
    /// `aggregate.max_series`). Past it, a new series' label values all become the overflow
    /// value (`__other__`), counted in [`Stats::label_overflows`]: recording a million
    /// distinct label values through handles or the `metrics` facade keeps memory bounded.
    pub fn max_series(mut self, max: usize) -> Self {
        self.max_series = max;
        self
    }

    /// Histogram precision in significant decimal digits, 0..=5. The default, 2, keeps each
    /// bucket at most 0.78 % of its value wide (the value CloudWatch receives for a bucket,
    /// its middle, is within 0.39 % of every sample in it) at 1 KiB per power-of-two range
    /// and shard; 3 digits (0.1 %) cost 8 KiB per range. Each extra digit multiplies
    /// histogram memory by about 8.
    pub fn significant_digits(mut self, digits: u8) -> Self {
        self.significant_digits = digits;
        self
    }

    /// Shards per series (rounded up to a power of two, at most 64). Default: the number of
    /// cores, at most 16. Counters get this many at once; a histogram starts with one and
    /// doubles its shards only when threads collide recording into it at the same instant,
    /// up to this many (see the crate documentation's memory bounds). Fewer shards use less
    /// memory; more let more threads record into one series without sharing a cache line.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// How long `shutdown()` (or dropping the last handle) waits for the agent to
    /// acknowledge the final data (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long sent batches may wait for the agent's acknowledgement before the connection is
    /// taken for dead, closed, and the batches sent again on a new one (default 30 s, at
    /// least 1 s). An agent answers in milliseconds; a connection the agent accepted into its
    /// backlog but never serves (every slot taken) would otherwise hold the data for as long
    /// as its socket buffers have room.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Event values are stored as `round(value * scale)` (default 1000: three decimals).
    pub fn event_scale(mut self, scale: f64) -> Self {
        self.event_scale = scale;
        self
    }

    /// Validates the configuration and starts the flusher thread.
    pub fn build(self) -> Result<Tally, BuildError> {
        if self.flush_interval < Duration::from_secs(1) {
            return Err(BuildError::FlushIntervalTooShort {
                got: self.flush_interval,
            });
        }
        if self.significant_digits > 5 {
            return Err(BuildError::BadSignificantDigits(self.significant_digits));
        }
        if self.ack_timeout < Duration::from_secs(1) {
            return Err(BuildError::AckTimeoutTooShort(self.ack_timeout));
        }
        if self.max_unsent_bytes < 1024 {
            return Err(BuildError::MaxUnsentTooSmall(self.max_unsent_bytes));
        }
        if !(self.event_scale.is_finite() && self.event_scale > 0.0) {
            return Err(BuildError::BadEventScale(self.event_scale));
        }
        let addr_text = self
            .agent
            .clone()
            .or_else(|| env_nonempty(AGENT_ADDR_ENV))
            .unwrap_or_else(|| DEFAULT_AGENT_ADDR.to_owned());
        let addr = AgentAddr::parse(&addr_text).map_err(|reason| BuildError::BadAgentAddress {
            addr: addr_text.clone(),
            reason,
        })?;
        let service = self
            .service
            .or_else(|| env_nonempty("SERVICE_NAME"))
            .unwrap_or_else(|| "unknown".into());
        let environment = self
            .environment
            .or_else(|| env_nonempty("ENVIRONMENT"))
            .or_else(|| env_nonempty("NODE_ENV"))
            .unwrap_or_else(|| "unknown".into());
        let identity = ProcessIdentity {
            instance_id: random_instance_id(),
            pid: std::process::id(),
            service,
            environment,
            host: host_name(),
        };
        let shards = self
            .shards
            .map_or_else(ShardCount::default_for_machine, ShardCount::new);
        let registry = Arc::new(Registry::new(RecordConfig {
            shards,
            layout: Layout::new(self.significant_digits),
            event_scale: self.event_scale,
            label_limit: self.label_limit,
            max_series: self.max_series,
        }));
        let stats = Arc::new(StatsCells::default());
        let (ctl, thread) = flush::spawn(
            registry.clone(),
            stats.clone(),
            FlusherConfig {
                addr,
                interval: self.flush_interval,
                identity: identity.clone(),
                max_unsent_bytes: self.max_unsent_bytes,
                connect_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_secs(5),
                ack_timeout: self.ack_timeout,
            },
        )
        .map_err(BuildError::Spawn)?;
        Ok(Tally {
            inner: Arc::new(Inner {
                registry,
                stats,
                identity,
                ctl,
                thread: Mutex::new(Some(thread)),
                shutdown_timeout: self.shutdown_timeout,
            }),
        })
    }
}

/// A random 64-bit id for this process start (no extra dependency: the standard library's
/// randomly keyed hasher, mixed with the time, pid and an address).
fn random_instance_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let local = 0u8;
    let id = RandomState::new().hash_one((t, std::process::id(), &local as *const u8 as usize));
    id.max(1)
}

fn host_name() -> String {
    env_nonempty("HOSTNAME")
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    stats: Arc<StatsCells>,
    identity: ProcessIdentity,
    ctl: Sender<Ctl>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

impl Inner {
    fn shutdown(&self) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let deadline = Instant::now() + self.shutdown_timeout;
        if self
            .ctl
            .send(Ctl::Shutdown {
                deadline,
                reply: tx,
            })
            .is_ok()
        {
            // The flusher answers by the deadline; the margin covers one blocked write.
            let _ = rx.recv_timeout(self.shutdown_timeout + Duration::from_secs(6));
        }
        if thread.is_finished() {
            // A panic in the flusher would be a bug; it has already been reported by the
            // panic hook, and shutdown must not panic in turn.
            let _ = thread.join();
        } // From here on nothing drains the cells but `Tally::stats`, which counts what it
          // finds as recorded after shutdown.
        self.stats.shut_down.store(true, Ordering::Release);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The SDK's top-level handle. Cheap to clone; dropping the last clone flushes and stops.
///
/// See the [crate documentation](crate) for the architecture and an example.
#[derive(Debug, Clone)]
pub struct Tally {
    inner: Arc<Inner>,
}

impl Tally {
    /// Starts configuring a `Tally`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// A counter handle for series (`name`, `labels`).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        Counter {
            cell: self.registry().cell(name, Unit::Count, labels),
        }
    }

    /// A gauge handle for series (`name`, `labels`).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge {
            cell: self.registry().cell(name, Unit::None, labels),
        }
    }

    /// A histogram handle for series (`name`, `labels`), recording values in `unit`.
    ///
    /// A series has one unit: when (`name`, `labels`) was registered before with another
    /// unit, the handle records in that first unit ([`Histogram::unit`] says which;
    /// `record_duration` converts into it) and the mismatch is counted in
    /// [`Stats::names_fixed`].
    pub fn histogram(&self, name: &str, unit: Unit, labels: &[(&str, &str)]) -> Histogram {
        let (cell, unit, _) = self.registry().cell_and_unit(name, unit, labels);
        Histogram { cell, unit }
    }

    /// A business-event handle for series (`name`, `labels`).
    pub fn event(&self, name: &str, labels: &[(&str, &str)]) -> Event {
        Event {
            cell: self.registry().cell(name, Unit::None, labels),
        }
    }

    /// Counters named `name` with label values chosen at record time.
    pub fn counter_family(&self, name: &str, keys: &[&str]) -> CounterFamily {
        CounterFamily {
            core: Arc::new(FamilyCore::new(
                self.registry().clone(),
                name,
                Unit::Count,
                keys,
            )),
        }
    }

    /// Gauges named `name` with label values chosen at record time.
    pub fn gauge_family(&self, name: &str, keys: &[&str]) -> GaugeFamily {
        GaugeFamily {
            core: Arc::new(FamilyCore::new(
                self.registry().clone(),
                name,
                Unit::None,
                keys,
            )),
        }
    }

    /// Histograms named `name`, in `unit`, with label values chosen at record time.
    pub fn histogram_family(&self, name: &str, unit: Unit, keys: &[&str]) -> HistogramFamily {
        HistogramFamily {
            core: Arc::new(FamilyCore::new(self.registry().clone(), name, unit, keys)),
        }
    }

    /// Business events named `name` with label values chosen at record time.
    pub fn event_family(&self, name: &str, keys: &[&str]) -> EventFamily {
        EventFamily {
            core: Arc::new(FamilyCore::new(
                self.registry().clone(),
                name,
                Unit::None,
                keys,
            )),
        }
    }

    /// Collects and sends now, and waits until the agent has acknowledged everything
    /// recorded so far (or `timeout`). Data not acknowledged stays queued.
    pub fn flush(&self, timeout: Duration) -> Result<(), FlushError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let deadline = Instant::now() + timeout;
        self.inner
            .ctl
            .send(Ctl::Flush {
                deadline,
                reply: tx,
            })
            .map_err(|_| FlushError::ShutDown)?;
        match rx.recv_timeout(timeout + Duration::from_secs(6)) {
            Ok(true) => Ok(()),
            Ok(false) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(FlushError::TimedOut(timeout))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(FlushError::ShutDown),
        }
    }

    /// Flushes what is left (waiting up to the shutdown timeout for acks) and stops the
    /// flusher. Idempotent; dropping the last clone does the same. Returns the final stats:
    /// [`Stats::samples_lost_at_shutdown`] says what the agent did not acknowledge in time.
    ///
    /// Handles and families keep working afterwards (recording never fails), but what they
    /// record is no longer sent: [`Tally::stats`] drains it and counts it in
    /// [`Stats::samples_after_shutdown`].
    pub fn shutdown(&self) -> Stats {
        self.inner.shutdown();
        self.stats()
    }

    /// Cumulative counters: drops, overflows, batches, connection state, memory.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        let r = self.registry();
        if s.shut_down.load(Ordering::Acquire) {
            let late: u64 = flush::collect(&r.series())
                .iter()
                .fold(0u64, |n, (_, d)| n.saturating_add(d.samples()));
            s.samples_after_shutdown.fetch_add(late, Ordering::Relaxed);
        }
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            dropped_samples: l(&s.dropped_samples),
            dropped_batches: l(&s.dropped_batches),
            label_overflows: l(&r.label_overflows),
            names_fixed: l(&r.names_fixed),
            batches_sent: l(&s.batches_sent),
            batches_acked: l(&s.batches_acked),
            samples_acked: l(&s.samples_acked),
            batches_rejected: l(&s.batches_rejected),
            samples_rejected: l(&s.samples_rejected),
            samples_lost_at_shutdown: l(&s.samples_lost_at_shutdown),
            samples_after_shutdown: l(&s.samples_after_shutdown),
            unsent_bytes: l(&s.unsent_bytes),
            connects: l(&s.connects),
            connect_failures: l(&s.connect_failures),
            disconnects: l(&s.disconnects),
            ack_timeouts: l(&s.ack_timeouts),
            connected: s.connected.load(Ordering::Relaxed),
            cell_bytes: r.memory_bytes() as u64,
            shards: r.config.shards.get(),
            last_error: s.last_error.lock().clone(),
            agent_version: s.agent_version.load(Ordering::Relaxed),
        }
    }

    /// Who this process is on the wire (`instance_id` is random per start).
    pub fn identity(&self) -> &ProcessIdentity {
        &self.inner.identity
    }
}
