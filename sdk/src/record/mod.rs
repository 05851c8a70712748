//! Step 1 of the data path: the hot path. Recording into cells that belong to one series.
//!
//! Every series owns a small array of *shards*, one cache line (or one lazily allocated counts
//! array) each. A thread picks its shard from a thread-local slot number and only ever
//! touches that shard's memory with relaxed atomic read-modify-writes: no lock, no allocation
//! once warm, no syscall, and two threads on different shards never write the same cache
//! line. The flusher drains the shards with atomic swaps, so no increment is ever lost or
//! counted twice. Histograms start with one shard and add shards only when threads collide on
//! them (see `histogram.rs`).
//!
//! | kind      | per series (S = shard count)                                                 |
//! |-----------|------------------------------------------------------------------------------|
//! | counter   | S x 128 B                                                                    |
//! | gauge     | one 128 B cell (a gauge's value is global by definition)                     |
//! | histogram | shards in use (1..=S) x (1.8 KiB table + 1 KiB per power-of-two range touched, 2 digits) |
//! | event     | a counter + a histogram for its values                                       |

mod counter;
mod event;
mod gauge;
mod histogram;
mod shard;

pub use counter::Counter;
pub use event::Event;
pub use gauge::Gauge;
pub use histogram::Histogram;

pub(crate) use counter::CounterCell;
#[cfg(feature = "metrics-facade")]
pub(crate) use event::scaled;
pub(crate) use event::EventCell;
pub(crate) use gauge::GaugeCell;
#[cfg(test)]
pub(crate) use histogram::new_hdr;
#[cfg(any(test, feature = "testing"))]
pub(crate) use histogram::record_exact;
pub(crate) use histogram::{duration_in, HistogramCell, Layout, Sparse};
pub(crate) use shard::{Padded, ShardCount};
