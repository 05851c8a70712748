//! Histograms: an HdrHistogram-compatible counts array per shard, allocated in chunks the
//! first time a shard sees a value in a new power-of-two range; shards are added only when
//! threads actually collide on the series.
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
//! A chunk is a run of 128-byte aligned lines of 16 counters, so chunks of different shards
//! never share a cache line. With the default 2 digits, `half = 128`: a chunk is 1,024 bytes,
//! a shard's table 58 entries of 32 bytes (the whole `u64` range; each entry holds the
//! chunk's pointer and its touched-map). A latency series spanning 1 to 100 ms touches 8
//! chunks per shard, 50 us to 2 s 16.
//!
//! # Shards grow with contention
//!
//! A series starts with one shard, as Java's `LongAdder` starts with one cell, and doubles
//! the shards in use when threads contend on one, up to the configured shard count. A thread
//! writes shard `slot % active`. Contention is what makes two cores pass a cache line back and
//! forth: records into one shard from different threads in quick succession. Each shard
//! therefore remembers the last thread that wrote it (a word that is only read while one
//! thread keeps recording); a record by another thread is a *switch*, which stores the new
//! owner and reads the clock. A switch less than [`SWITCH_WINDOW_NS`] after the shard's
//! previous one extends a streak, a slower one ends it, and a streak of [`GROW_AFTER`] fast
//! switches doubles the shards in use. Threads recording into one series at the same instant
//! reach that in microseconds and are spread over more shards until they stop meeting; a
//! series that many threads record into at a service's pace (a request at a time, switches
//! milliseconds apart) keeps one shard, so its memory follows its values, not the number of
//! threads that ever touched it. Shard 0's table comes with the series; another shard's is
//! allocated the first time a thread maps to it; shards never shrink while the series lives. With every shard in use there is nothing
//! left to grow and the owner is no longer checked.
//!
//! Exactly-once holds at every step: a count is added to one counter of one shard by an
//! atomic read-modify-write, and the flusher takes every counter of every shard that exists
//! with an atomic swap, whichever shard count a recorder saw (see the model test in
//! `tests::growth_model`).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[cfg(any(test, feature = "testing"))]
use hdrhistogram::Histogram as Hdr;

use super::shard::thread_slot;
use super::{Padded, ShardCount};
use crate::wire::Unit;

/// Counters per 128-byte line.
const LINE: usize = 16;

/// Fast switches in a row that double a series' shards in use. A service's records into one
/// series, milliseconds apart, essentially never chain this many within the window; threads
/// hammering one series chain them within microseconds.
pub(crate) const GROW_AFTER: u32 = 16;

/// A switch of owner within this long of the shard's previous switch counts as contention
/// (10 us: a cache line passed between cores more often than this costs a miss a record).
pub(crate) const SWITCH_WINDOW_NS: u64 = 10_000;

type Line = Padded<[AtomicU64; LINE]>;

/// One power-of-two range of one shard: `half` counters.
type Chunk = Box<[Line]>;

/// A shard's entry for one power-of-two range.
#[derive(Debug, Default)]
struct Slot {
    /// The counters, allocated the first time the shard sees a value in the range.
    chunk: OnceLock<Chunk>,
    /// The touched-map: one sticky bit per group of counters ever written (set once, the
    /// first time the group is written, never cleared), so draining reads only those groups.
    /// After warm-up it is only read, so it may share a line with other slots.
    touched: AtomicU64,
}

/// One shard's table: a slot for each power-of-two range.
type Table = Box<[Slot]>;

/// One shard of a series: its table and what tells contention on it.
#[derive(Debug, Default)]
struct Shard {
    table: OnceLock<Table>,
    /// The thread slot + 1 of the last thread that recorded here (0: none yet).
    owner: AtomicU32,
    /// Fast switches in a row.
    streak: AtomicU32,
    /// When the owner last changed, in nanoseconds since the process's first switch.
    last_switch: AtomicU64,
}

/// The clock switches are timed by.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ns = EPOCH.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX)
}

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

    /// Lines of one chunk.
    fn chunk_lines(&self) -> usize {
        self.half_count.div_ceil(LINE)
    }

    /// Bytes of one allocated chunk.
    pub(crate) fn chunk_bytes(&self) -> usize {
        self.chunk_lines() * std::mem::size_of::<Line>()
    }

    /// Bytes of one shard's chunk table.
    pub(crate) fn table_bytes(&self) -> usize {
        self.chunks * std::mem::size_of::<Slot>()
    }
}

/// The counter at offset `off` of a chunk.
#[inline]
fn counter(chunk: &[Line], off: usize) -> &AtomicU64 {
    &chunk[off / LINE].0[off % LINE]
}

/// The storage of one histogram series.
#[derive(Debug)]
pub(crate) struct HistogramCell {
    layout: Layout,
    /// Published values are stored values divided by this (1.0 for integer units).
    pub(crate) scale: f64,
    /// Shards in use: a power of two, 1 at first, doubled by contention up to
    /// `shards.len()`. Read by every record, written at most log2(shards) times.
    active: AtomicUsize,
    /// Shard 0's table, allocated with the cell: every series records into shard 0 first,
    /// and holding its table here saves the record path one dependent load.
    first: Table,
    /// Every shard the series may grow to (shard 0's `table` stays empty: see `first`);
    /// each other table allocated the first time a thread maps to it.
    shards: Box<[Shard]>,
}

impl HistogramCell {
    /// A series that may grow to `shard_count` shards.
    pub(crate) fn new(shard_count: ShardCount, layout: Layout) -> Self {
        HistogramCell {
            layout,
            scale: 1.0,
            active: AtomicUsize::new(1),
            first: new_table(layout),
            shards: (0..shard_count.get()).map(|_| Shard::default()).collect(),
        }
    }

    /// The tables of the shards in use so far.
    fn tables(&self) -> impl Iterator<Item = &Table> {
        std::iter::once(&self.first).chain(self.shards[1..].iter().filter_map(|s| s.table.get()))
    }

    /// Records `n` occurrences of `v`.
    #[inline]
    pub(crate) fn record_n(&self, v: u64, n: u64) {
        let idx = self.layout.index(v);
        let active = self.active.load(Ordering::Relaxed);
        let me = thread_slot();
        let i = me & (active - 1);
        let shard = &self.shards[i];
        let table = if i == 0 {
            &self.first
        } else {
            match shard.table.get() {
                Some(t) => t,
                None => self.allocate_table(&shard.table),
            }
        };
        let slot = &table[idx >> self.layout.half_mag];
        let chunk = match slot.chunk.get() {
            Some(c) => c,
            None => self.allocate(&slot.chunk),
        };
        let off = idx & (self.layout.half_count - 1);
        // The touched-map bit is set before the counter is written, once; after warm-up
        // this is a read of a line nobody writes.
        let bit = 1u64 << (off >> self.layout.group_shift);
        if slot.touched.load(Ordering::Relaxed) & bit == 0 {
            slot.touched.fetch_or(bit, Ordering::Relaxed);
        }
        if active != self.shards.len() {
            // Truncating the slot only merges owners 2^32 threads apart.
            let owner = (me as u32).wrapping_add(1);
            if shard.owner.load(Ordering::Relaxed) != owner {
                self.switched(shard, owner, active);
            }
        }
        counter(chunk, off).fetch_add(n, Ordering::Relaxed);
    }

    #[cold]
    #[inline(never)]
    fn allocate_table<'a>(&self, slot: &'a OnceLock<Table>) -> &'a Table {
        slot.get_or_init(|| new_table(self.layout))
    }

    #[cold]
    #[inline(never)]
    fn allocate<'a>(&self, slot: &'a OnceLock<Chunk>) -> &'a Chunk {
        slot.get_or_init(|| {
            (0..self.layout.chunk_lines())
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect()
        })
    }

    /// Another thread than the last one records into `shard`: take it over, and count the
    /// switch towards growth when it follows the previous one closely.
    #[cold]
    #[inline(never)]
    fn switched(&self, shard: &Shard, owner: u32, active: usize) {
        self.switched_at(shard, owner, active, now_ns());
    }

    /// [`Self::switched`] at `now` (nanoseconds on the [`now_ns`] clock).
    #[inline]
    fn switched_at(&self, shard: &Shard, owner: u32, active: usize, now: u64) {
        shard.owner.store(owner, Ordering::Relaxed);
        let last = shard.last_switch.swap(now, Ordering::Relaxed);
        // A load and a store, not an atomic add: two switching threads may lose one step of
        // the streak, which only delays growth.
        let streak = streak_after(shard.streak.load(Ordering::Relaxed), last, now);
        shard.streak.store(streak, Ordering::Relaxed);
        if streak > 0 {
            self.contended(shard, streak, active);
        }
    }

    /// Doubles the shards in use when `streak` fast switches were seen on `shard` with
    /// `active` shards in use. Only the thread whose swap moves `active` from the value it
    /// saw resets the streak, so stale observers never double twice.
    fn contended(&self, shard: &Shard, streak: u32, active: usize) {
        if let Some(next) = grown(active, streak, self.shards.len()) {
            if self
                .active
                .compare_exchange(active, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                shard.streak.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Shards in use now.
    #[cfg(test)]
    pub(crate) fn active_shards(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Moves every count recorded since the last `take` into a [`Sparse`] delta (the
    /// non-zero counters, by HdrHistogram index). `None` when nothing was recorded.
    ///
    /// Costs one load per counter of each group of counters ever written (a swap only for
    /// non-zero ones) and one allocation for the result; nothing is sized by the value range.
    /// A count written while `take` runs lands in this take or the next, never in neither:
    /// its group's bit is set before the counter is written and never cleared, and every
    /// shard that exists is read, however many a recorder saw in use.
    pub(crate) fn take(&self) -> Option<Sparse> {
        let mut counts: Vec<(u32, u64)> = Vec::new();
        let mut total: u64 = 0;
        let mut sorted = true;
        let group = 1usize << self.layout.group_shift;
        for table in self.tables() {
            for (c, slot) in table.iter().enumerate() {
                let Some(chunk) = slot.chunk.get() else {
                    continue;
                };
                let base = (c << self.layout.half_mag) as u32;
                let mut touched = slot.touched.load(Ordering::Relaxed);
                while touched != 0 {
                    let g = touched.trailing_zeros() as usize;
                    touched &= touched - 1;
                    for off in g * group..(g + 1) * group {
                        let a = counter(chunk, off);
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

    /// Bytes this cell occupies now (the shard slots, the tables of shards in use and their
    /// allocated chunks).
    pub(crate) fn memory_bytes(&self) -> usize {
        let (shards, chunks) = self.tables().fold((0, 0), |(s, c), t| {
            (
                s + 1,
                c + t.iter().filter(|x| x.chunk.get().is_some()).count(),
            )
        });
        std::mem::size_of::<Self>()
            + self.shards.len() * std::mem::size_of::<Shard>()
            + shards * self.layout.table_bytes()
            + chunks * self.layout.chunk_bytes()
    }
}

/// An empty chunk table.
fn new_table(layout: Layout) -> Table {
    (0..layout.chunks).map(|_| Slot::default()).collect()
}

/// The streak after a switch at `now` that follows the previous one at `last` (0: none).
fn streak_after(streak: u32, last: u64, now: u64) -> u32 {
    if last == 0 || now.saturating_sub(last) > SWITCH_WINDOW_NS {
        0
    } else {
        streak.saturating_add(1)
    }
}

/// The shard count a series with `active` shards in use, a streak of `streak` fast switches
/// and room for `max` grows to now; `None` while it stays.
fn grown(active: usize, streak: u32, max: usize) -> Option<usize> {
    (streak >= GROW_AFTER && active < max).then_some(active * 2)
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
        let l = Layout::new(2);
        assert_eq!(l.half_count, 128);
        assert_eq!(l.chunks, 58);
        assert_eq!(l.chunk_bytes(), 1024);
        assert_eq!(l.table_bytes(), 58 * 32);
        let l3 = Layout::new(3);
        assert_eq!((l3.half_count, l3.chunks), (1024, 55));
        assert_eq!(l3.chunk_bytes(), 1024 * 8);
        #[cfg(target_pointer_width = "64")]
        {
            // The fixed parts sdk/src/lib.rs documents.
            assert_eq!(std::mem::size_of::<Shard>(), 40);
            assert_eq!(std::mem::size_of::<HistogramCell>(), 88);
        }
        // Every layout's groups of counters fit the 64 bits of the touched-map.
        for sigfig in 0..=5 {
            let l = Layout::new(sigfig);
            assert!(l.half_count >> l.group_shift <= 64, "sigfig {sigfig}");
        }
    }

    #[test]
    fn memory_grows_by_one_chunk_per_new_power_of_two_range() {
        let cell = HistogramCell::new(ShardCount::new(1), Layout::new(2));
        let empty = cell.memory_bytes();
        assert_eq!(
            empty,
            std::mem::size_of::<HistogramCell>()
                + std::mem::size_of::<Shard>()
                + cell.layout.table_bytes(),
            "shard 0's table comes with the cell"
        );
        cell.record_n(1, 1);
        let first = cell.memory_bytes();
        assert_eq!(first - empty, cell.layout.chunk_bytes());
        cell.record_n(255, 1); // still chunks 0 and 1 (bucket 0)
        let two = cell.memory_bytes();
        assert_eq!(two - first, cell.layout.chunk_bytes());
        cell.record_n(1_000_000, 1);
        cell.record_n(1_000_001, 1);
        assert_eq!(cell.memory_bytes() - two, cell.layout.chunk_bytes());
    }

    #[test]
    fn a_series_recorded_by_threads_taking_turns_keeps_one_shard() {
        // Fewer switches than a streak needs, however fast they come: one shard, one table.
        let threads = u64::from(GROW_AFTER) - 1;
        let cell = Arc::new(HistogramCell::new(ShardCount::new(16), Layout::new(2)));
        for t in 0..threads {
            let cell = cell.clone();
            std::thread::spawn(move || {
                for v in 0..1000 {
                    cell.record_n(1_000_000 + v * 1000 + t, 1);
                }
            })
            .join()
            .expect("recorder");
        }
        assert_eq!(cell.active_shards(), 1);
        assert_eq!(cell.tables().count(), 1, "only shard 0 has a table");
        assert_eq!(cell.take().expect("recorded").len(), 1000 * threads);
    }

    #[test]
    fn only_switches_within_the_window_of_the_previous_one_extend_a_streak() {
        let w = SWITCH_WINDOW_NS;
        assert_eq!(streak_after(3, 1_000, 1_000 + w), 4);
        assert_eq!(
            streak_after(3, 1_000, 1_001 + w),
            0,
            "a slow switch ends it"
        );
        assert_eq!(
            streak_after(3, 0, 5),
            0,
            "the first switch of a shard starts none"
        );
        assert_eq!(streak_after(u32::MAX, 1, 2), u32::MAX);
        assert_eq!(grown(1, GROW_AFTER - 1, 16), None);
        assert_eq!(grown(1, GROW_AFTER, 16), Some(2));
        assert_eq!(grown(8, GROW_AFTER, 16), Some(16));
        assert_eq!(
            grown(16, u32::MAX, 16),
            None,
            "never past the configured count"
        );
    }

    /// Drives `contended` as a streak of fast switches on shard 0 would.
    fn contend(cell: &HistogramCell) {
        cell.contended(&cell.shards[0], GROW_AFTER, cell.active_shards());
    }

    #[test]
    fn back_to_back_switches_of_owner_grow_the_series_and_slow_ones_do_not() {
        // Two threads taking shard 0 from each other, on a clock the test sets: the path from
        // a switch through the streak to growth, without depending on the machine's speed.
        let slow = HistogramCell::new(ShardCount::new(4), Layout::new(2));
        let mut now = 1_000;
        for k in 0..10 * GROW_AFTER {
            now += SWITCH_WINDOW_NS + 1;
            slow.switched_at(&slow.shards[0], 1 + k % 2, slow.active_shards(), now);
        }
        assert_eq!(
            slow.active_shards(),
            1,
            "switches a window apart never chain"
        );
        assert_eq!(slow.shards[0].owner.load(Ordering::Relaxed), 2);

        let fast = HistogramCell::new(ShardCount::new(4), Layout::new(2));
        let mut now = 1_000;
        // The first switch of a shard starts no streak; each later one extends it.
        for k in 0..GROW_AFTER {
            now += SWITCH_WINDOW_NS;
            fast.switched_at(&fast.shards[0], 1 + k % 2, fast.active_shards(), now);
        }
        assert_eq!(fast.active_shards(), 1, "one switch short of a streak");
        now += SWITCH_WINDOW_NS;
        fast.switched_at(&fast.shards[0], 1, fast.active_shards(), now);
        assert_eq!(fast.active_shards(), 2);
        assert_eq!(
            fast.shards[0].streak.load(Ordering::Relaxed),
            0,
            "growth starts the next streak afresh"
        );
    }

    #[test]
    fn streaks_double_the_shards_in_use_up_to_the_configured_count() {
        let cell = HistogramCell::new(ShardCount::new(4), Layout::new(2));
        let mut seen = Vec::new();
        for _ in 0..4 {
            contend(&cell);
            seen.push(cell.active_shards());
        }
        assert_eq!(seen, [2, 4, 4, 4]);
        // A thread that saw an older count does not double again.
        let cell = HistogramCell::new(ShardCount::new(8), Layout::new(2));
        contend(&cell);
        cell.contended(&cell.shards[0], GROW_AFTER, 1);
        assert_eq!(cell.active_shards(), 2);
        // A series allowed one shard never grows.
        let cell = HistogramCell::new(ShardCount::new(1), Layout::new(2));
        contend(&cell);
        assert_eq!(cell.active_shards(), 1);
    }

    #[test]
    fn counts_recorded_into_grown_shards_are_all_taken_once() {
        let cell = Arc::new(HistogramCell::new(ShardCount::new(4), Layout::new(2)));
        cell.record_n(5_000, 1); // before growth, into shard 0
        contend(&cell);
        contend(&cell);
        assert_eq!(cell.active_shards(), 4);
        // Each thread writes the shard its slot maps to among the four.
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for v in 0..500 {
                        cell.record_n(5_000 + v, 1 + t);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("recorder");
        }
        let taken = cell.take().expect("recorded");
        assert_eq!(taken.len(), 1 + 500 * (1 + 2 + 3 + 4));
        assert!(taken.counts.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(cell.take().is_none());
    }

    #[test]
    fn extreme_values_survive_the_conversion() {
        let cell = HistogramCell::new(ShardCount::new(2), Layout::new(2));
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Three threads record while the flusher takes again and again and the series
        /// grows under them: every value is in exactly one take, in its own bucket.
        #[test]
        fn every_value_recorded_while_shards_grow_and_the_flusher_takes_lands_in_one_take(
            values in proptest::collection::vec(0u64..5_000_000_000, 1..600),
            grow_at in proptest::collection::vec(0usize..600, 0..4),
            shards in 1usize..=8,
        ) {
            let layout = Layout::new(2);
            let cell = HistogramCell::new(ShardCount::new(shards), layout);
            let done = AtomicUsize::new(0);
            let mut takes: Vec<Sparse> = Vec::new();
            std::thread::scope(|s| {
                for part in values.chunks(values.len().div_ceil(3)) {
                    let (cell, done, grow_at) = (&cell, &done, &grow_at);
                    s.spawn(move || {
                        for (i, v) in part.iter().enumerate() {
                            if grow_at.contains(&i) {
                                contend(cell);
                            }
                            cell.record_n(*v, 1);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
                let parts = values.len().div_ceil(values.len().div_ceil(3));
                for _ in 0..100_000 {
                    if done.load(Ordering::SeqCst) == parts {
                        break;
                    }
                    takes.extend(cell.take());
                }
            });
            takes.extend(cell.take());
            prop_assert!(cell.take().is_none());
            let mut merged = Sparse { layout, counts: Vec::new(), total: 0 };
            for t in &takes {
                merged.merge(t);
            }
            let mut want: Vec<(u32, u64)> = Vec::new();
            let mut idx: Vec<u32> = values.iter().map(|v| layout.index(*v) as u32).collect();
            idx.sort_unstable();
            for i in idx {
                match want.last_mut() {
                    Some((j, n)) if *j == i => *n += 1,
                    _ => want.push((i, 1)),
                }
            }
            prop_assert_eq!(merged.len(), values.len() as u64);
            prop_assert_eq!(merged.counts, want);
        }
    }

    /// An exhaustive model of the growth path: two recorders and a drainer, every
    /// interleaving of their atomic steps explored (by state, so each reachable state once),
    /// under sequential consistency. The steps mirror `record_n` (read `active`, map to a
    /// shard and allocate its table, check the owner and on a switch take the shard over and
    /// maybe double `active`, then add to the counter) and `take` (for each shard: is its
    /// table allocated? swap its counter). Every switch counts as fast, the worst case for
    /// growth. The property is exactly-once: what the concurrent drain took plus what a final
    /// drain takes equals what was recorded, and nothing was written into a shard no drain
    /// reads. Weaker orderings cannot break it: every step that moves a count is a
    /// read-modify-write of one location, and those are totally ordered per location; a drain
    /// that does not yet see a table or a touched bit leaves the count for the next drain.
    mod growth_model {
        use super::super::{grown, GROW_AFTER};
        use std::collections::HashSet;

        const SHARDS: usize = 2;
        const RECORDS: u8 = 2;

        #[derive(Clone, Copy, Hash, PartialEq, Eq, Debug)]
        enum Rec {
            LoadActive {
                left: u8,
            },
            MapShard {
                left: u8,
                active: usize,
            },
            CheckOwner {
                left: u8,
                active: usize,
                shard: usize,
            },
            Switch {
                left: u8,
                active: usize,
                shard: usize,
            },
            Grow {
                left: u8,
                active: usize,
                shard: usize,
                streak: u32,
            },
            Add {
                left: u8,
                shard: usize,
            },
            Done,
        }

        #[derive(Clone, Hash, PartialEq, Eq, Debug)]
        struct World {
            active: usize,
            allocated: [bool; SHARDS],
            owner: [u32; SHARDS],
            streak: [u32; SHARDS],
            counters: [u64; SHARDS],
            drained: u64,
            recorders: [Rec; 2],
            /// Next step of the drainer: `2 * shard` checks the shard, `+ 1` swaps it; two
            /// passes over the shards.
            drain_pc: usize,
        }

        /// Advances recorder `r` (thread slot `r`) by one atomic step.
        fn step_recorder(w: &mut World, r: usize) {
            let me = r as u32 + 1;
            w.recorders[r] = match w.recorders[r] {
                Rec::LoadActive { left } => Rec::MapShard {
                    left,
                    active: w.active,
                },
                Rec::MapShard { left, active } => {
                    let shard = r & (active - 1);
                    w.allocated[shard] = true; // OnceLock::get_or_init: one step
                    Rec::CheckOwner {
                        left,
                        active,
                        shard,
                    }
                }
                Rec::CheckOwner {
                    left,
                    active,
                    shard,
                } => {
                    if active != SHARDS && w.owner[shard] != me {
                        Rec::Switch {
                            left,
                            active,
                            shard,
                        }
                    } else {
                        Rec::Add { left, shard }
                    }
                }
                Rec::Switch {
                    left,
                    active,
                    shard,
                } => {
                    w.owner[shard] = me;
                    w.streak[shard] += 1;
                    Rec::Grow {
                        left,
                        active,
                        shard,
                        streak: w.streak[shard],
                    }
                }
                Rec::Grow {
                    left,
                    active,
                    shard,
                    streak,
                } => {
                    if let Some(next) = grown(active, streak, SHARDS) {
                        if w.active == active {
                            w.active = next;
                            w.streak[shard] = 0;
                        }
                    }
                    Rec::Add { left, shard }
                }
                Rec::Add { left, shard } => {
                    w.counters[shard] += 1;
                    if left > 1 {
                        Rec::LoadActive { left: left - 1 }
                    } else {
                        Rec::Done
                    }
                }
                Rec::Done => Rec::Done,
            };
        }

        fn step_drainer(w: &mut World) {
            let shard = (w.drain_pc / 2) % SHARDS;
            if w.drain_pc.is_multiple_of(2) {
                // Not allocated yet: skip the swap.
                w.drain_pc += if w.allocated[shard] { 1 } else { 2 };
            } else {
                w.drained += std::mem::take(&mut w.counters[shard]);
                w.drain_pc += 1;
            }
        }

        fn explore(w: World, seen: &mut HashSet<World>, finals: &mut usize) {
            if !seen.insert(w.clone()) {
                return;
            }
            let mut moved = false;
            for r in 0..2 {
                if w.recorders[r] != Rec::Done {
                    let mut next = w.clone();
                    step_recorder(&mut next, r);
                    explore(next, seen, finals);
                    moved = true;
                }
            }
            if w.drain_pc < 4 * SHARDS {
                let mut next = w.clone();
                step_drainer(&mut next);
                explore(next, seen, finals);
                moved = true;
            }
            if !moved {
                // The final drain reads every allocated shard.
                let mut last = 0;
                for s in 0..SHARDS {
                    if w.allocated[s] {
                        last += w.counters[s];
                    } else {
                        assert_eq!(w.counters[s], 0, "a count in an unallocated shard: {w:?}");
                    }
                }
                assert_eq!(
                    w.drained + last,
                    2 * u64::from(RECORDS),
                    "a count lost or taken twice: {w:?}"
                );
                assert!(w.active.is_power_of_two() && w.active <= SHARDS);
                *finals += 1;
            }
        }

        #[test]
        fn every_interleaving_of_growth_record_and_drain_counts_each_value_once() {
            let mut states = HashSet::new();
            let mut finals = 0;
            // Start one fast switch short of growing, so growth happens inside the run, and
            // also from no streak, where it never does.
            for streak in [GROW_AFTER - 1, 0] {
                let start = World {
                    active: 1,
                    allocated: [false; SHARDS],
                    owner: [0; SHARDS],
                    streak: [streak; SHARDS],
                    counters: [0; SHARDS],
                    drained: 0,
                    recorders: [Rec::LoadActive { left: RECORDS }; 2],
                    drain_pc: 0,
                };
                explore(start, &mut states, &mut finals);
            }
            let grew = states.iter().any(|w| w.active == SHARDS && w.allocated[1]);
            assert!(
                grew,
                "the model reaches a grown series with both shards written"
            );
            let stale = states.iter().any(|w| {
                w.active == SHARDS
                    && w.recorders
                        .iter()
                        .any(|r| matches!(r, Rec::Add { shard: 0, .. }))
                    && w.allocated[1]
            });
            assert!(
                stale,
                "a recorder that saw one shard adds after the series grew"
            );
            assert!(finals > 10, "{finals} final states");
            assert!(states.len() > 1000, "{} states explored", states.len());
        }
    }
}
