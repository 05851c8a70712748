//! Which shard a thread writes to, and the padding that keeps shards on separate cache lines.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Next slot number handed to a thread that records for the first time.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot number; `usize::MAX` until the thread first records.
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot number. Threads get consecutive numbers in the order they first record,
/// so `S` threads that start together land on `S` different shards.
#[inline]
pub(crate) fn thread_slot() -> usize {
    // `try_with` only fails while the thread's TLS is being torn down; slot 0 is then as good
    // as any other (the write is still an atomic add, just possibly a shared one).
    SLOT.try_with(|s| {
        let v = s.get();
        if v != usize::MAX {
            v
        } else {
            let n = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            s.set(n);
            n
        }
    })
    .unwrap_or(0)
}

/// Number of shards per series: a power of two, so a slot maps onto a shard with one mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShardCount(usize);

impl ShardCount {
    /// Most shards a series may have.
    pub(crate) const MAX: usize = 64;

    /// Rounds `n` up to a power of two within `1..=MAX`.
    pub(crate) fn new(n: usize) -> Self {
        ShardCount(n.clamp(1, Self::MAX).next_power_of_two())
    }

    /// One shard per available core (rounded up to a power of two, at most 16 by default).
    pub(crate) fn default_for_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.min(16))
    }

    /// The shard count.
    pub(crate) fn get(self) -> usize {
        self.0
    }

    /// The shard this thread writes to.
    #[inline]
    pub(crate) fn mine(self) -> usize {
        thread_slot() & (self.0 - 1)
    }
}

/// Aligns its content to 128 bytes (two cache lines: adjacent-line prefetchers pull pairs), so
/// shards of one series never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_counts_are_powers_of_two_within_bounds() {
        assert_eq!(ShardCount::new(0).get(), 1);
        assert_eq!(ShardCount::new(3).get(), 4);
        assert_eq!(ShardCount::new(1000).get(), ShardCount::MAX);
    }

    #[test]
    fn a_thread_keeps_its_slot_and_consecutive_threads_differ() {
        let here = thread_slot();
        assert_eq!(here, thread_slot());
        let a = std::thread::spawn(thread_slot).join().expect("thread");
        let b = std::thread::spawn(thread_slot).join().expect("thread");
        assert_ne!(a, b);
        assert_eq!(std::mem::align_of::<Padded<u64>>(), 128);
    }
}
