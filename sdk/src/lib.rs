//! # tally: nanosecond metrics for Rust services, batched to the tally agent
//!
//! A service records request latencies, error counts and business events through handles that
//! cost a few nanoseconds: no lock, no allocation, no syscall on the hot path. A background
//! thread sends each interval's deltas as sequence-numbered batches to the tally agent, a
//! sidecar that publishes them to CloudWatch.
//!
//! ```no_run
//! use std::time::Duration;
//! use tally::{Tally, Unit};
//!
//! # fn main() -> Result<(), tally::BuildError> {
//! let tally = Tally::builder()
//!     .service("checkout")                    // else SERVICE_NAME, else "unknown"
//!     .environment("prod")                    // else ENVIRONMENT, else NODE_ENV
//!     .agent("127.0.0.1:9911")                // else TALLY_AGENT_ADDR
//!     .flush_interval(Duration::from_secs(10))
//!     .build()?;
//!
//! // A handle: registered once, recorded many times.
//! let latency = tally.histogram("ResponseTime", Unit::Nanoseconds, &[("Route", "/")]);
//! latency.record_duration(Duration::from_micros(250));
//!
//! // A family: label values chosen at record time, each label with a cardinality limit.
//! let requests = tally
//!     .counter_family("RequestCount", &["Route", "Method", "StatusClass"])
//!     .label_limit("Route", 200);
//! requests.increment(&["/orders/{id}", "GET", "2xx"], 1);
//!
//! tally.event("checkout", &[]).emit_value(49.99);
//! tally.shutdown(); // flushes what is left; dropping the last clone does the same
//! # Ok(())
//! # }
//! ```
//!
//! # The data path
//!
//! Each step is a module; a sample walks forward through them.
//!
//! ```text
//!  record/     handle.record(v) -> this thread's shard of the series' cells (atomic add)
//!  registry/   name + labels -> cells; families: label values -> limiter -> cells
//!  flush/      every interval: drain cells -> merge deltas -> seal batches (sequence n)
//!  transport/  TCP or Unix socket -> agent; acks read on their own thread; backoff
//!  wire/       the frame format, shared with the agent (which decodes with it)
//! ```
//!
//! ## Recording (`record/`)
//!
//! A thread takes a slot number the first time it records. A counter series owns `S` shards
//! (`S` = cores rounded up to a power of two, at most 16 by default; [`Builder::shards`]) and
//! a thread always writes shard `slot % S` with a relaxed atomic add. A histogram series
//! starts with **one** shard and doubles the shards in use only when threads contend on it,
//! up to `S`, as Java's `LongAdder` grows its cells: each shard remembers the last thread that
//! wrote it, and 16 changes of writer in a row, each within 10 us of the previous one, double
//! the shards. A series that many threads record into at a service's pace (changes of writer
//! milliseconds apart) stays at one shard; one that threads hammer at once spreads until they
//! stop meeting. Threads on different
//! shards never write the same cache line (shards are 128-byte aligned, histogram chunks
//! aligned lines), so recording scales with cores; threads that share a shard still never
//! lose an increment. The flusher drains every shard that exists with atomic swaps: every
//! increment lands in exactly one interval.
//!
//! Histograms keep, per shard, an HdrHistogram-compatible counts array cut into chunks of one
//! power-of-two range each, allocated the first time that shard sees a value in that range.
//! The index arithmetic is HdrHistogram's own, so the counts *are* an HdrHistogram's, exactly
//! (precision configurable, [`Builder::significant_digits`], default 2: a bucket is at most
//! 0.78 % of its value wide, and the value the agent publishes for it, its middle, is within
//! 0.39 % of every sample in it, which keeps percentiles computed by CloudWatch within 1 %).
//! A sticky bitmap next to each chunk's pointer marks the groups of counters ever
//! written, so the flusher reads only those; it drains them into a sparse list of
//! (index, count) and writes the HdrHistogram V2 encoding straight from it (byte-identical to
//! `hdrhistogram`'s serializer), so flush cost follows the values recorded, not their range.
//!
//! ## Memory bounds
//!
//! With `S` shards and the default 2 significant digits:
//!
//! | what | bytes |
//! |---|---|
//! | counter series | `S x 128` (one padded atomic per shard) |
//! | gauge series | 128 (one shared cell: a gauge's value is global) |
//! | histogram series, fixed | 88 + `S x 40` (shard slots) + 1,856 (shard 0's chunk table) |
//! | histogram series, per further shard in use | 1,856 (chunk table: 58 ranges x 32 B) |
//! | histogram series, per range touched per shard in use | 1,024 (128 counters) |
//! | histogram series, worst case | `S x 60 KiB` (all 58 ranges of `u64`, every shard) |
//! | event series | a counter + a histogram |
//! | per thread | 8 (its slot number) + its label-set cache (<= 4096 x ~48 B, labelled path only) |
//!
//! A latency series recorded in nanoseconds between 1 and 100 ms touches 8 ranges: **about
//! 10.5 KiB** with one shard, which is what a series recorded at a service's pace keeps however
//! many threads record into it; 50 us - 2 s touches 16 ranges, about 18.5 KiB. Only threads
//! colliding on one series at the same instant add shards: 9.8 KiB (1 - 100 ms) each, so
//! 16 threads hammering one series cost at most about 158 KiB (50 us - 2 s: 286 KiB).
//! `docs/benchmarks-sdk.md` has the measured figures, next to prometheus-client, metrics-rs
//! and OpenTelemetry.
//! [`Tally::stats`] reports the bytes the cells hold now. Cells are never freed while the
//! `Tally` lives (series are few and long-lived by design; the cardinality limits bound how
//! many there are), and a series' shards never shrink.
//!
//! Each extra significant digit multiplies the per-range figures by about 8 (3 digits: 8,192
//! bytes a range, 66 KiB for 1 - 100 ms in one shard).
//!
//! ## Labelled families (`registry/`)
//!
//! `family.increment(&["/orders/{id}", "GET", "2xx"], 1)` hashes the values, looks them up in
//! this thread's own cache (keyed by family id + values: no lock, no allocation, nothing
//! another thread writes) and records into the series' cells. A thread that meets a set
//! another thread resolved takes it once from the family's shared, per-shard cache (a read
//! lock). Each thread caches at most 4096 label sets (~48 bytes each, values shared, not
//! copied); a full cache is cleared and refilled. A label set seen for the first time goes
//! through the family's
//! [`label limits`](CounterFamily::label_limit): each label key admits up to its limit of
//! distinct values (default 1000, [`Builder::label_limit`]); past it, *that label's* value
//! becomes [`conventions::OVERFLOW_VALUE`] (`__other__`) while the other labels keep theirs,
//! and the fold is counted ([`Stats::label_overflows`], reported to the agent in every batch).
//! Empty or over-long values are folded the same way.
//!
//! ## Flushing and delivery (`flush/`, `transport/`)
//!
//! The flusher is a plain thread: no async runtime needed. Every interval (default 10 s,
//! at least 1 s) it drains the cells and merges the deltas into its outbox; while the agent
//! keeps up it seals them into a batch with the next sequence number, encodes it
//! ([`wire::encode_batch`]) and sends it. Batches stay in the outbox until the agent's ack
//! ([`wire::Ack`]) names their sequence. When the connection breaks, or sent batches wait
//! longer than [`Builder::ack_timeout`] (default 30 s) with no ack, the flusher reconnects
//! with exponential backoff and jitter (100 ms doubling to 10 s, back to 100 ms only once an
//! ack arrives) and sends every unacknowledged batch again *with its original sequence
//! number*; the agent drops duplicates by (`instance_id`, `sequence`).
//!
//! While the agent is away, new deltas merge into one open set (memory grows with series,
//! not time) that is sealed every eighth of [`Builder::max_unsent_bytes`] (default 64 MiB).
//! Past the bound, the oldest batches are dropped, and every sample in them is counted in the
//! cumulative [`wire::DropReport`] that each batch carries, so that samples received by the
//! agent plus samples reported dropped equal samples recorded. Recording never waits for the
//! transport.
//!
//! [`Tally::shutdown`] (or dropping the last clone) drains the cells one last time and waits
//! up to [`Builder::shutdown_timeout`] (default 5 s) for the agent's acks; what is left
//! unacknowledged is reported in [`Stats::samples_lost_at_shutdown`]. Handles keep
//! working after shutdown (recording never fails), but nothing is sent any more: what they
//! record is drained and counted in [`Stats::samples_after_shutdown`] whenever
//! [`Tally::stats`] is read.
//!
//! One ambiguity remains: if the agent accepted a batch but its ack was lost with the
//! connection, and the bound then forces that batch out, the batch is counted both as
//! received (by the agent) and as dropped (by the SDK). Over-reporting a drop is the safe
//! direction; nothing is ever lost without being counted.
//!
//! # Features
//!
//! - `metrics-facade`: [`facade::TallyRecorder`] implements the `metrics` crate's `Recorder`,
//!   so `metrics::counter!` and friends record into tally.
//! - `testing`: [`testing::CaptureAgent`], a real loopback TCP listener that speaks the wire
//!   protocol, acknowledges batches and accumulates what it receives.

pub mod conventions;
pub mod wire;

mod client;
mod flush;
mod record;
mod registry;
mod transport;

#[cfg(feature = "metrics-facade")]
pub mod facade;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{BuildError, Builder, FlushError, Stats, Tally};
pub use record::{Counter, Event, Gauge, Histogram};
pub use registry::{CounterFamily, EventFamily, GaugeFamily, HistogramFamily};
pub use wire::Unit;
