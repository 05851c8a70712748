//! Step 1 of the data path: the hot path. Recording into cells that belong to one series.
//!
//! Every series owns a small array of *shards*, one cache line (or one lazily allocated counts
//! array) each. A thread picks its shard once, from a thread-local slot number, and from then on
//! only ever touches that shard's memory with relaxed atomic adds: no lock, no allocation once
//! warm, no syscall, and two threads on different shards never write the same cache line. The
//! flusher drains the shards with atomic swaps, so no increment is ever lost or counted twice.
//!
//! | kind      | per series (S = shard count)                                        |
//! |-----------|---------------------------------------------------------------------|
//! | counter   | S x 128 B                                                           |
//! | gauge     | one 128 B cell (a gauge's value is global by definition)            |
//! | histogram | S x (chunk table + 8 KiB per power-of-two range touched, 3 digits)  |
//! | event     | a counter + a histogram for its values                              |

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
