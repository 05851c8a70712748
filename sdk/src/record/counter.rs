//! Counters: one padded atomic per shard, drained with swaps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Padded, ShardCount};

/// The storage of one counter series.
#[derive(Debug)]
pub(crate) struct CounterCell {
    shards: ShardCount,
    cells: Box<[Padded<AtomicU64>]>,
}

impl CounterCell {
    pub(crate) fn new(shards: ShardCount) -> Self {
        CounterCell {
            shards,
            cells: (0..shards.get()).map(|_| Padded::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.cells[self.shards.mine()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Takes everything added since the last `take`. Concurrent adds land either in this take
    /// or in the next one, never in both and never in neither.
    pub(crate) fn take(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.0.swap(0, Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Bytes this cell occupies.
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.cells.len() * std::mem::size_of::<Padded<AtomicU64>>()
    }
}

/// A monotonic counter, published as per-interval deltas.
///
/// Cheap to clone; [`increment`](Counter::increment) is one relaxed atomic add on this
/// thread's shard.
#[derive(Debug, Clone)]
pub struct Counter {
    pub(crate) cell: Arc<CounterCell>,
}

impl Counter {
    /// Adds `n` to the counter.
    #[inline]
    pub fn increment(&self, n: u64) {
        self.cell.add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_the_sum_since_the_last_take() {
        let c = CounterCell::new(ShardCount::new(4));
        c.add(3);
        c.add(4);
        assert_eq!(c.take(), 7);
        assert_eq!(c.take(), 0);
    }
}
