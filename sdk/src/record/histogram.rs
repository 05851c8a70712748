//! Histograms: an HdrHistogram-compatible counts array per shard, allocated in chunks the
//! first time a shard sees a value in a new power-of-two range, drained into a real
//! [`hdrhistogram::Histogram`] at flush.
//!
//! # Layout
//!
//! An HdrHistogram with `d` significant digits and lowest discernible value 1 splits the value
//! range into buckets, one per power of two, each with `half = 2^ceil(log2(2 * 10^d)) / 2`
//! linear sub-buckets (bucket 0 has `2 * half`). Its counts array therefore falls into chunks
//! of `half` counters, chunk `k >= 1` covering values in `[half << (k-1), half << k)`. A shard
//! here is a table of such chunks, each allocated on first use; index arithmetic is the same
//! as HdrHistogram's, so draining a counter at index `i` into `hdrhistogram` with the lowest
//! value of `i` lands in exactly the same counter: conversion is exact, not approximate.
//!
//! With the default 3 digits, `half = 1024`: a chunk is 8 KiB, a shard's table 55 entries
//! (the whole `u64` range). A latency series spanning 10 us to 10 s touches 20 chunks per
//! shard at most, 160 KiB; a service whose latencies sit within 1 to 100 ms touches 7.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
use hdrhistogram::Histogram as Hdr;

use super::ShardCount;
use crate::wire::Unit;

/// Counters of padding before and after each chunk, so chunks of different shards never
/// share a cache line even when the allocator places them back to back.
const PAD: usize = 16;

/// HdrHistogram's index arithmetic for lowest discernible value 1 and `sigfig` digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) sigfig: u8,
    half_mag: u32,
    half_count: usize,
    /// log2 of the counters one bit of a chunk's touched-map stands for.
    group_shift: u32,
    sub_bucket_mask: u64,
    lzc_base: u32,
    chunks: usize,
}

impl Layout {
    /// The layout for `sigfig` significant digits (0..=5).
    pub(crate) fn new(sigfig: u8) -> Self {
        assert!(sigfig <= 5, "significant digits are checked by the builder");
        let largest = 2 * 10u64.pow(u32::from(sigfig));
        let count_mag = 64 - (largest - 1).leading_zeros();
        let half_mag = count_mag - 1;
        let mut l = Layout {
            sigfig,
            half_mag,
            half_count: 1 << half_mag,
            group_shift: half_mag.saturating_sub(6),
            sub_bucket_mask: (1u64 << count_mag) - 1,
            lzc_base: 64 - count_mag,
            chunks: 0,
        };
        l.chunks = (l.index(u64::MAX) >> half_mag) + 1;
        l
    }

    /// Index of `v` in an HdrHistogram counts array (HdrHistogram's `index_for`).
    #[inline]
    pub(crate) fn index(&self, v: u64) -> usize {
        let bucket = self.lzc_base - (v | self.sub_bucket_mask).leading_zeros();
        let sub = (v >> bucket) as usize;
        ((bucket as usize + 1) << self.half_mag) + sub - self.half_count
    }

    /// Lowest value counted at `index` (HdrHistogram's `value_for`).
    pub(crate) fn value_at(&self, index: usize) -> u64 {
        let mut bucket = (index >> self.half_mag) as i64 - 1;
        let mut sub = (index & (self.half_count - 1)) + self.half_count;
        if bucket < 0 {
            sub -= self.half_count;
            bucket = 0;
        }
        (sub as u64) << bucket
    }

    /// Bytes of one allocated chunk.
    pub(crate) fn chunk_bytes(&self) -> usize {
        (self.half_count + 2 * PAD) * std::mem::size_of::<AtomicU64>()
    }

    /// Bytes of one shard's chunk table.
    pub(crate) fn table_bytes(&self) -> usize {
        self.chunks * std::mem::size_of::<OnceLock<Box<[AtomicU64]>>>()
    }
}

type Chunk = Box<[AtomicU64]>;

/// The storage of one histogram series.
#[derive(Debug)]
pub(crate) struct HistogramCell {
    layout: Layout,
    /// Published values are stored values divided by this (1.0 for integer units).
    pub(crate) scale: f64,
    shard_count: ShardCount,
    shards: Box<[Box<[OnceLock<Chunk>]>]>,
}

impl HistogramCell {
    pub(crate) fn new(shard_count: ShardCount, layout: Layout) -> Self {
        let shards = (0..shard_count.get())
            .map(|_| (0..layout.chunks).map(|_| OnceLock::new()).collect())
            .collect();
        HistogramCell {
            layout,
            scale: 1.0,
            shard_count,
            shards,
        }
    }

    /// Records `n` occurrences of `v`.
    #[inline]
    pub(crate) fn record_n(&self, v: u64, n: u64) {
        let idx = self.layout.index(v);
        let table = &self.shards[self.shard_count.mine()];
        let slot = &table[idx >> self.layout.half_mag];
        let chunk = match slot.get() {
            Some(c) => c,
            None => self.allocate(slot),
        };
        let off = idx & (self.layout.half_count - 1);
        // The touched-map (word 0, in the chunk's leading padding) is sticky: a bit is set
        // once, the first time its group of counters is written, and never cleared, so
        // after warm-up this is a read of a line nobody writes. It lets `take` scan only
        // groups ever written instead of the whole chunk.
        let bit = 1u64 << (off >> self.layout.group_shift);
        if chunk[0].load(Ordering::Relaxed) & bit == 0 {
            chunk[0].fetch_or(bit, Ordering::Relaxed);
        }
        chunk[PAD + off].fetch_add(n, Ordering::Relaxed);
    }

    #[cold]
    #[inline(never)]
    fn allocate<'a>(&self, slot: &'a OnceLock<Chunk>) -> &'a Chunk {
        slot.get_or_init(|| {
            (0..self.layout.half_count + 2 * PAD)
                .map(|_| AtomicU64::new(0))
                .collect()
        })
    }

    /// Moves every count recorded since the last `take` into a [`Sparse`] delta (the
    /// non-zero counters, by HdrHistogram index). `None` when nothing was recorded.
    ///
    /// Costs one load per counter of each group of counters ever written (a swap only for
    /// non-zero ones) and one allocation for the result; nothing is sized by the value range.
    /// A count written while `take` runs lands in this take or the next, never in neither:
    /// its group's bit is set before the counter is written and never cleared.
    pub(crate) fn take(&self) -> Option<Sparse> {
        let mut counts: Vec<(u32, u64)> = Vec::new();
        let mut total: u64 = 0;
        let mut sorted = true;
        for table in self.shards.iter() {
            for (c, slot) in table.iter().enumerate() {
                let Some(chunk) = slot.get() else { continue };
                let base = (c << self.layout.half_mag) as u32;
                let group = 1usize << self.layout.group_shift;
                let mut touched = chunk[0].load(Ordering::Relaxed);
                while touched != 0 {
                    let g = touched.trailing_zeros() as usize;
                    touched &= touched - 1;
                    let first = g * group;
                    let counters = &chunk[PAD + first..PAD + first + group];
                    for (k, a) in counters.iter().enumerate() {
                        let off = first + k;
                        // A plain load first: most counters are zero and a load dirties
                        // nothing.
                        if a.load(Ordering::Relaxed) == 0 {
                            continue;
                        }
                        let n = a.swap(0, Ordering::Relaxed);
                        if n == 0 {
                            continue;
                        }
                        let idx = base + off as u32;
                        sorted &= counts.last().is_none_or(|(last, _)| *last < idx);
                        counts.push((idx, n));
                        total = total.saturating_add(n);
                    }
                }
            }
        }
        if counts.is_empty() {
            return None;
        }
        if !sorted {
            // Several shards: order by index and add up the counters they share.
            counts.sort_unstable_by_key(|(i, _)| *i);
            counts.dedup_by(|(i, n), (j, m)| {
                if i == j {
                    *m = m.saturating_add(*n);
                    true
                } else {
                    false
                }
            });
        }
        Some(Sparse {
            layout: self.layout,
            counts,
            total,
        })
    }

    /// Bytes this cell occupies now (tables plus allocated chunks).
    pub(crate) fn memory_bytes(&self) -> usize {
        let chunks: usize = self
            .shards
            .iter()
            .map(|t| t.iter().filter(|s| s.get().is_some()).count())
            .sum();
        std::mem::size_of::<Self>()
            + self.shards.len() * self.layout.table_bytes()
            + chunks * self.layout.chunk_bytes()
    }
}

/// One interval's histogram delta: the non-zero counters of an HdrHistogram counts array
/// (lowest discernible value 1), sorted by index. This is what the flusher merges and
/// encodes: its size follows the number of distinct values recorded, not their range, and
/// [`wire`](crate::wire) writes it straight into the HdrHistogram V2 + DEFLATE encoding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sparse {
    layout: Layout,
    /// `(index, count)`, indices strictly increasing, counts non-zero.
    pub(crate) counts: Vec<(u32, u64)>,
    total: u64,
}

impl Sparse {
    /// Number of samples.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Significant digits of the layout.
    pub(crate) fn sigfig(&self) -> u8 {
        self.layout.sigfig
    }

    /// The smallest `highest trackable value` for which an HdrHistogram's counts array holds
    /// every index of this delta: the highest value equivalent to the largest index.
    pub(crate) fn high(&self) -> u64 {
        let last = self.counts.last().map_or(0, |(i, _)| *i as usize);
        let high = if (last + 1) >> self.layout.half_mag >= self.layout.chunks {
            u64::MAX
        } else {
            self.layout.value_at(last + 1) - 1
        };
        high.max(2)
    }

    /// Adds `other` (a delta of the same series, so the same layout) into this one.
    pub(crate) fn merge(&mut self, other: &Sparse) {
        let (x, y) = (&self.counts, &other.counts);
        let mut out = Vec::with_capacity(x.len() + y.len());
        let (mut i, mut j) = (0, 0);
        while i < x.len() && j < y.len() {
            match x[i].0.cmp(&y[j].0) {
                std::cmp::Ordering::Less => {
                    out.push(x[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(y[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    out.push((x[i].0, x[i].1.saturating_add(y[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&x[i..]);
        out.extend_from_slice(&y[j..]);
        self.counts = out;
        self.total = self.total.saturating_add(other.total);
    }

    /// The same counts as an [`hdrhistogram::Histogram`], sized from the largest index (no
    /// resizing while it is filled). For the public types that carry `hdrhistogram`.
    #[cfg(test)]
    pub(crate) fn to_hdr(&self) -> Hdr<u64> {
        let mut h = Hdr::new_with_bounds(1, self.high(), self.layout.sigfig)
            .unwrap_or_else(|_| new_hdr(self.layout.sigfig));
        h.auto(true);
        for (i, n) in &self.counts {
            record_exact(&mut h, self.layout.value_at(*i as usize), *n);
        }
        h
    }
}

/// Records into an auto-resizing histogram. Resizing only fails when the counts array would
/// not fit in `usize` (impossible on 64-bit targets); clamping then still keeps the count.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn record_exact(h: &mut Hdr<u64>, value: u64, n: u64) {
    if h.record_n(value, n).is_err() {
        h.saturating_record_n(value, n);
    }
}

/// An empty auto-resizing HdrHistogram with lowest discernible value 1.
#[cfg(test)]
pub(crate) fn new_hdr(sigfig: u8) -> Hdr<u64> {
    Hdr::new(sigfig).expect("significant digits are checked by the builder (0..=5)")
}

/// A distribution of values in one [`Unit`], kept in an HDR histogram.
///
/// Cheap to clone; [`record`](Histogram::record) is an index computation and one relaxed
/// atomic add into this thread's shard.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub(crate) cell: Arc<HistogramCell>,
    pub(crate) unit: Unit,
}

impl Histogram {
    /// Records one value, in the histogram's unit.
    #[inline]
    pub fn record(&self, v: u64) {
        self.cell.record_n(v, 1);
    }

    /// Records `n` occurrences of one value.
    #[inline]
    pub fn record_n(&self, v: u64, n: u64) {
        self.cell.record_n(v, n);
    }

    /// Records a duration, converted into the histogram's time unit (truncating). A histogram
    /// whose unit is not a time unit records nanoseconds.
    #[inline]
    pub fn record_duration(&self, d: Duration) {
        self.cell.record_n(duration_in(d, self.unit), 1);
    }

    /// The unit values are recorded in.
    pub fn unit(&self) -> Unit {
        self.unit
    }
}

/// `d` expressed in `unit` (nanoseconds for non-time units), saturating at `u64::MAX`.
#[inline]
pub(crate) fn duration_in(d: Duration, unit: Unit) -> u64 {
    let v = match unit {
        Unit::Microseconds => d.as_micros(),
        Unit::Milliseconds => d.as_millis(),
        Unit::Seconds => u128::from(d.as_secs()),
        _ => d.as_nanos(),
    };
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_layout_matches_the_documented_sizes() {
        let l = Layout::new(3);
        assert_eq!(l.half_count, 1024);
        assert_eq!(l.chunks, 55);
        assert_eq!(l.chunk_bytes(), (1024 + 32) * 8);
    }

    #[test]
    fn memory_grows_by_one_chunk_per_new_power_of_two_range() {
        let cell = HistogramCell::new(ShardCount::new(1), Layout::new(3));
        let empty = cell.memory_bytes();
        cell.record_n(1, 1);
        cell.record_n(2047, 1); // still chunks 0 and 1 (bucket 0)
        let two = cell.memory_bytes();
        assert_eq!(two - empty, 2 * cell.layout.chunk_bytes());
        cell.record_n(1_000_000, 1);
        cell.record_n(1_000_001, 1);
        assert_eq!(cell.memory_bytes() - two, cell.layout.chunk_bytes());
    }

    #[test]
    fn extreme_values_survive_the_conversion() {
        let cell = HistogramCell::new(ShardCount::new(2), Layout::new(3));
        for v in [0, 1, u64::MAX / 2, u64::MAX] {
            cell.record_n(v, 2);
        }
        let h = cell.take().expect("recorded").to_hdr();
        assert_eq!(h.len(), 8);
        assert_eq!(h.count_at(0), 2);
        assert!(h.equivalent(h.max(), u64::MAX));
        assert!(cell.take().is_none());
    }

    fn index_maps_like_hdrhistogram(v: u64, sigfig: u8) -> Result<(), TestCaseError> {
        let l = Layout::new(sigfig);
        let i = l.index(v);
        let lo = l.value_at(i);
        let mut h = new_hdr(sigfig);
        h.record(v).expect("auto-resize");
        prop_assert!(h.equivalent(lo, v));
        prop_assert_eq!(h.lowest_equivalent(v), lo);
        prop_assert_eq!(l.index(lo), i);
        prop_assert!(i >> l.half_mag < l.chunks);
        Ok(())
    }

    proptest! {
        #[test]
        fn every_index_maps_exactly_like_hdrhistogram(v in any::<u64>(), sigfig in 0u8..=3) {
            index_maps_like_hdrhistogram(v, sigfig)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn high_precision_indexes_map_exactly_like_hdrhistogram(
            v in 0u64..(1 << 36),
            sigfig in 4u8..=5,
        ) {
            index_maps_like_hdrhistogram(v, sigfig)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn draining_equals_recording_into_hdrhistogram(
            values in proptest::collection::vec(0u64..10_000_000_000, 0..300),
            sigfig in 1u8..=3,
        ) {
            let cell = HistogramCell::new(ShardCount::new(4), Layout::new(sigfig));
            let mut reference = new_hdr(sigfig);
            for v in &values {
                cell.record_n(*v, 1);
                reference.record(*v).expect("auto-resize");
            }
            let got = cell.take().map_or_else(|| new_hdr(sigfig), |s| s.to_hdr());
            prop_assert_eq!(got.len(), reference.len());
            let a: Vec<_> = got.iter_recorded().map(|x| (x.value_iterated_to(), x.count_at_value())).collect();
            let b: Vec<_> = reference.iter_recorded().map(|x| (x.value_iterated_to(), x.count_at_value())).collect();
            prop_assert_eq!(a, b);
        }
    }
}
