//! Test utilities (feature `testing`): [`CaptureAgent`], a real loopback agent.
//!
//! It listens on `127.0.0.1`, reads frames with the same decoder as the real agent, answers
//! every batch with an ack (recognising resent batches by `(instance_id, sequence)`), and
//! accumulates what it accepted into [`Totals`]. [`CaptureAgent::stop`] and
//! [`CaptureAgent::restart`] take it away and bring it back on the same address, so tests can
//! prove that an agent restart loses nothing.
//!
//! ```
//! use std::time::Duration;
//! use tally::{testing::CaptureAgent, Tally};
//!
//! let agent = CaptureAgent::start();
//! let tally = Tally::builder()
//!     .agent(agent.addr())
//!     .flush_interval(Duration::from_secs(1))
//!     .build()
//!     .expect("valid configuration");
//! tally.counter("Hits", &[("Route", "/")]).increment(3);
//! tally.shutdown();
//! assert_eq!(agent.totals().counter("Hits", &[("Route", "/")]), 3);
//! ```

mod capture;

pub use capture::{CaptureAgent, ProcessTotals, SeriesKey, Totals};

use crate::wire::{DropReport, SeriesValue};
use crate::Tally;

/// Drains every cell of `tally` as the flusher does at an interval, and encodes the deltas
/// into one `Batch` frame appended to `out` (the data is then *not* sent). For benchmarks of
/// the flush path; returns the number of series encoded.
pub fn snapshot_and_encode(tally: &Tally, out: &mut Vec<u8>) -> usize {
    let deltas = crate::flush::collect(&tally.registry().series());
    let head = crate::wire::BatchHead {
        process: tally.identity(),
        sequence: 1,
        start_unix_ms: 0,
        end_unix_ms: 0,
        drops: DropReport::default(),
    };
    crate::flush::encode_deltas(&mut crate::wire::Encoder::new(), &head, &deltas, out)
        .expect("batches of in-process series always encode");
    deltas.len()
}

/// Merges `later` into `earlier` the way the SDK merges deltas (counters add, histograms
/// merge, gauges keep the later value and the wider extremes).
pub fn merge_value(earlier: &mut SeriesValue, later: SeriesValue) {
    crate::flush::merge_value(earlier, later);
}
