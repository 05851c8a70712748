//! Sparse histograms: only the non-zero buckets of an HdrHistogram layout.
//!
//! A histogram series of an open period used to be a dense `hdrhistogram::Histogram<u64>` over
//! the range its samples reach: one `u64` counter for every bucket from 0 up to its largest
//! value, about 1,800 counters (14 KB) for a 2-digit latency histogram that reaches 1 ms even
//! when it holds one sample. [`SparseHistogram`] keeps the same layout (lowest discernible value
//! and significant digits, i.e. HdrHistogram's unit magnitude and sub-bucket count) but only
//! the buckets that hold samples, as `(lowest value of the bucket, count)` pairs sorted by
//! value: 16 bytes a non-zero bucket, plus a 56-byte header. It stays sparse to the sinks: a
//! closed period's distributions ([`AggregateValue::Distribution`]) carry it, the publish path
//! turns its buckets into CloudWatch `Values`/`Counts`, and the stdout sink reads its count,
//! extremes and quantiles from it, so closing a period never allocates the dense arrays.
//!
//! # Why buckets are keyed by value, not index
//!
//! A pair's key is the lowest value of its bucket rather than the bucket's index: both order
//! the buckets the same way and a `(u32, u64)` pair is 16 bytes with its padding anyway, but
//! [`HistogramView::buckets`] holds exactly these lowest values, so merging a view of the same
//! layout is a merge of two sorted lists by plain comparison, with no per-bucket arithmetic.
//! A view of another layout has each value mapped to the lowest value of its bucket in this
//! layout (`Layout::lowest_equivalent`, HdrHistogram's index formula), which is what
//! `Histogram::add` and `Histogram::record_n` do with it.
//!
//! # Senders of different precision
//!
//! Processes of one service can record with different layouts (an SDK upgrade changing its
//! significant digits, another language's client). Mapping a *wider* bucket onto the lowest
//! of the narrow buckets inside it would put all its samples at its lower end and bias the
//! percentiles and the mean low (-1.1 % on the mean for a 1-digit sender merged after a
//! 3-digit one, in the tests). So a series holds the coarsest layout of everything merged into
//! it: before buckets wider than its own arrive, it folds its own buckets into the common
//! layout (the larger unit and the fewer digits, in which the buckets of both nest), then
//! merges. Every sample then sits in a bucket that contains it, the error bound is the
//! coarsest sender's, and the result does not depend on the order the senders arrived in.
//!
//! # Merging
//!
//! A merge walks the incoming buckets once. Each is looked for first right after the bucket
//! found last (the steady state of a service whose latencies stay in the same buckets: one
//! comparison), else by galloping from there. A bucket already present has its count added in
//! place (no allocation, no move); buckets not present are set aside in a scratch list the
//! caller lends (allocated once, not per merge), then inserted by one backward in-place merge.
//! Counts and the total saturate at `u64::MAX`, as HdrHistogram's do.
//!
//! # Exactness
//!
//! When no later view is coarser than the first, [`SparseHistogram::to_histogram`] gives the
//! `Histogram<u64>` the agent built before: the
//! same layout, counts, total, minimum, maximum and counts-array length as a dense histogram
//! created from the first view with `Histogram::new_with_bounds(low, max(top, 2 * low),
//! digits)`, auto-resize on, with every later view's buckets recorded at their lowest values
//! (the tests keep that dense path as their oracle and compare by property test, together
//! with [`SparseHistogram::min`], [`max`](SparseHistogram::max),
//! [`value_at_quantile`](SparseHistogram::value_at_quantile) and
//! [`median_equivalent`](SparseHistogram::median_equivalent)). The maximum needs care: the
//! dense histogram kept the largest value it recorded, which is not always a bucket's lowest
//! value, and `highest_equivalent` saturates in the topmost bucket; the two cases where that
//! shows are marked (see `MaxMarks`). `Histogram::add` of the deserialized histograms agrees
//! on everything but that topmost maximum (`u64::MAX` where the view merge gives
//! `u64::MAX - 1`, when the lowest discernible values differ within one power of two).
//!
//! [`AggregateValue::Distribution`]: crate::model::AggregateValue::Distribution

use hdrhistogram::Histogram;
use tally::wire::HistogramView;

/// One non-zero bucket: the lowest value it stands for (in its histogram's layout) and its
/// count.
pub type Bucket = (u64, u64);

/// HdrHistogram's bucket layout for a lowest discernible value and a number of significant
/// digits, computed exactly as `Histogram::new_with_bounds` does (including its floating-point
/// `log2`, which rounds near large powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Lowest discernible value (at least 1).
    low: u64,
    /// Significant decimal digits (0..=5).
    digits: u8,
    /// `floor(log2(low))`: bucket 0 counts in units of `2^unit_magnitude`.
    unit_magnitude: u8,
    /// log2 of the sub-bucket count (1..=18).
    sub_bucket_count_magnitude: u8,
}

impl Layout {
    /// The layout, or `None` where `Histogram::new_with_bounds` refuses it.
    fn new(low: u64, digits: u8) -> Option<Layout> {
        if low == 0 || low > u64::MAX / 2 || digits > 5 {
            return None;
        }
        let layout = Layout::of_valid(low, digits);
        (layout.unit_magnitude + layout.sub_bucket_count_magnitude <= 63).then_some(layout)
    }

    /// The layout of arguments `Histogram::new_with_bounds` accepted (`1 <= low <= u64::MAX /
    /// 2`, `digits <= 5`), with HdrHistogram's own arithmetic (it rounds `low` to f64 first).
    fn of_valid(low: u64, digits: u8) -> Layout {
        let largest = 2 * 10_u32.pow(u32::from(digits));
        Layout {
            low,
            digits,
            unit_magnitude: (low as f64).log2().floor() as u8,
            sub_bucket_count_magnitude: f64::from(largest).log2().ceil() as u8,
        }
    }

    /// True when both layouts put every value in a bucket with the same lowest value (the
    /// lowest discernible values may differ within one power of two).
    fn same_buckets(self, other: Layout) -> bool {
        self.unit_magnitude == other.unit_magnitude
            && self.sub_bucket_count_magnitude == other.sub_bucket_count_magnitude
    }

    /// The finest layout whose every bucket is a union of whole buckets of both `self` and
    /// `other`: the larger unit magnitude (with its lowest discernible value; `self`'s when
    /// they share a power of two) and the fewer significant digits. Bucket widths are powers
    /// of two aligned to their width, and in it each is at least as wide as in either layout
    /// at every value, so both nest in it. Valid whenever both are: its magnitudes add up to
    /// no more than those of the layout it takes its unit from.
    fn common(self, other: Layout) -> Layout {
        let low = if other.unit_magnitude > self.unit_magnitude {
            other.low
        } else {
            self.low
        };
        Layout::of_valid(low, self.digits.min(other.digits))
    }

    /// log2 of the width of the bucket `value` falls in: HdrHistogram's `bucket_for` (how
    /// many powers of two `value` lies above what bucket 0 holds) plus the unit magnitude.
    /// At most `64 - sub_bucket_count_magnitude <= 63`, so shifting by it cannot overflow.
    fn shift(self, value: u64) -> u32 {
        // The bits of the largest value bucket 0 holds; no value has fewer leading zeros
        // counted than this mask, so the bucket index cannot underflow.
        let mask = ((1_u64 << self.sub_bucket_count_magnitude) - 1) << self.unit_magnitude;
        let leading_zero_count_base =
            64 - u32::from(self.unit_magnitude) - u32::from(self.sub_bucket_count_magnitude);
        let bucket = leading_zero_count_base - (value | mask).leading_zeros();
        bucket + u32::from(self.unit_magnitude)
    }

    /// The lowest value of the bucket `value` falls in (`Histogram::lowest_equivalent`: the
    /// sub-bucket, `value` shifted by the bucket's width, shifted back). Defined for every
    /// `u64`.
    fn lowest_equivalent(self, value: u64) -> u64 {
        let shift = self.shift(value);
        (value >> shift) << shift
    }

    /// `Histogram::highest_equivalent`, with its saturation: `u64::MAX - 1` for every value
    /// of the topmost bucket except `u64::MAX` itself.
    fn highest_equivalent(self, value: u64) -> u64 {
        if value == u64::MAX {
            u64::MAX
        } else {
            self.lowest_equivalent(value)
                .saturating_add(1 << self.shift(value))
                - 1
        }
    }

    /// `Histogram::median_equivalent`: the middle (rounded up) of `value`'s bucket. Cannot
    /// overflow: the bucket ends at most at `2^64`.
    fn median_equivalent(self, value: u64) -> u64 {
        self.lowest_equivalent(value)
            .saturating_add((1_u64 << self.shift(value)) >> 1)
    }

    /// `Histogram`'s unit mask: values below `2^unit_magnitude` are all "zero".
    fn unit_mask(self) -> u64 {
        (1 << self.unit_magnitude) - 1
    }
}

/// A histogram of one HdrHistogram layout that stores only its non-zero buckets (see the
/// module docs). Built from and merged with decoded [`HistogramView`]s, read by the sinks
/// as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHistogram {
    /// Non-zero buckets, strictly increasing by value.
    buckets: Vec<Bucket>,
    /// Sum of every count merged, saturating like `Histogram::len`.
    total: u64,
    /// The highest trackable value the dense histogram would have been created with (the
    /// first view's top bucket, at least twice the lowest discernible value), so the
    /// conversion allocates exactly the counts array the dense path did.
    high: u64,
    layout: Layout,
    /// The dense histogram's maximum, where recording the buckets' lowest values would not
    /// give it (see [`MaxMarks`]).
    max_marks: MaxMarks,
}

/// What the dense histogram's `max()` needs beyond the buckets' lowest values.
///
/// A dense `Histogram` keeps the largest value it recorded, `m`, with the unit bits set;
/// its `max()` is 0 when `m` is 0, else `highest_equivalent(m | unit_mask)`. The conversion
/// records each bucket's lowest value, which gives the same result except in two cases,
/// each marked here and recorded again (with a zero count) by the conversion:
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MaxMarks {
    /// `m` was in the first unit (`0 < m <= unit_mask`), whose lowest value, 0, does not
    /// move the maximum: `max()` is the unit mask.
    in_first_unit: bool,
    /// `m | unit_mask` reached `u64::MAX` (only a value of the topmost bucket can): `max()`
    /// is `u64::MAX`, where `highest_equivalent`'s saturation gives `u64::MAX - 1` for
    /// every other value of that bucket.
    u64_max: bool,
}

/// Why a histogram could not be built or merged: a layout HdrHistogram refuses, counts that
/// cannot be read again, or a resize that does not fit in memory. The aggregator counts it as
/// a merge conflict (`aggregate::series::MergeConflict::Histogram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramRefused;

/// The error every histogram failure maps to.
const REFUSED: HistogramRefused = HistogramRefused;

impl SparseHistogram {
    /// A histogram with `view`'s layout holding `view`'s buckets. `scratch` is working memory
    /// reused across calls (its contents are replaced). Fails where HdrHistogram would refuse
    /// the layout or the counts cannot be read.
    pub fn from_view(
        view: &HistogramView<'_>,
        scratch: &mut Vec<Bucket>,
    ) -> Result<SparseHistogram, HistogramRefused> {
        let layout = Layout::new(view.lowest_discernible_value(), view.significant_digits())
            .ok_or(REFUSED)?;
        let mut h = SparseHistogram {
            buckets: Vec::new(),
            total: 0,
            high: view.max_bucket_value().unwrap_or(0).max(2 * layout.low),
            layout,
            max_marks: MaxMarks::default(),
        };
        h.add_view(view, scratch)?;
        Ok(h)
    }

    /// The histogram a sender that serialized `h` would start a series with: `h`'s layout and
    /// its non-zero buckets (as [`SparseHistogram::from_view`] of `h`'s V2 encoding).
    pub fn from_histogram(h: &Histogram<u64>) -> SparseHistogram {
        // `h` exists, so `Histogram::new_with_bounds` accepted its layout.
        let layout = Layout::of_valid(h.low(), h.sigfig());
        let mut total = 0_u64;
        let buckets: Vec<Bucket> = h
            .iter_recorded()
            .map(|b| {
                total = total.saturating_add(b.count_at_value());
                (
                    layout.lowest_equivalent(b.value_iterated_to()),
                    b.count_at_value(),
                )
            })
            .collect();
        let top = buckets.last().map(|b| b.0);
        let mut sparse = SparseHistogram {
            buckets,
            total,
            high: top.unwrap_or(0).max(2 * layout.low),
            layout,
            max_marks: MaxMarks::default(),
        };
        if let Some(top) = top {
            sparse.note_top(top, true);
        }
        sparse
    }

    /// Adds a decoded histogram's buckets, each at its lowest value (as `Histogram::add` of
    /// the histogram the sender serialized does, and the dense merge did). `scratch` is
    /// working memory reused across calls. Fails, changing nothing, when the view's counts
    /// cannot be read.
    pub fn add_view(
        &mut self,
        view: &HistogramView<'_>,
        scratch: &mut Vec<Bucket>,
    ) -> Result<(), HistogramRefused> {
        let Some(top) = view.max_bucket_value() else {
            // No samples, but its layout counts: the result does not depend on whether the
            // coarser sender's first histogram held samples or arrived first.
            if let Some(theirs) =
                Layout::new(view.lowest_discernible_value(), view.significant_digits())
            {
                self.coarsen_for(theirs);
            }
            return Ok(());
        };
        // The buckets the parse recorded while it checked them: no V2 decoding here.
        let buckets = view.buckets().map_err(|_| REFUSED)?;
        let (low, digits) = (view.lowest_discernible_value(), view.significant_digits());
        // The common case (every process of a service records with the same settings) needs
        // no layout arithmetic.
        let identical = low == self.layout.low && digits == self.layout.digits;
        let theirs = if identical {
            self.layout
        } else {
            // The parse accepted the view's layout, so HdrHistogram does too.
            Layout::new(low, digits).ok_or(REFUSED)?
        };
        if theirs.same_buckets(self.layout) {
            // A view's buckets are strictly increasing (the parse walked them in index order).
            self.merge_increasing(&buckets, scratch);
        } else {
            self.coarsen_for(theirs);
            self.merge_buckets(buckets.iter().copied(), true, scratch);
        }
        let identical = low == self.layout.low && digits == self.layout.digits;
        self.note_top(top, identical);
        Ok(())
    }

    /// Before buckets of layout `theirs` are merged: when some of them are wider than this
    /// histogram's (fewer digits, or a larger unit), this histogram moves to the common
    /// layout first, so every sample lands in a bucket that contains it. Mapping a wide
    /// bucket onto the lowest of the narrow ones inside it instead would put all its samples
    /// at its lower end and bias the percentiles low, the more so the later the finer
    /// sender arrived; in the common layout the result is the same whatever the arrival order.
    fn coarsen_for(&mut self, theirs: Layout) {
        let target = self.layout.common(theirs);
        if target.same_buckets(self.layout) {
            return;
        }
        // Nested layouts: the buckets that fold together are neighbours, and the order holds.
        let mut kept = 0;
        for i in 0..self.buckets.len() {
            let (value, count) = self.buckets[i];
            let value = target.lowest_equivalent(value);
            match kept {
                k if k > 0 && self.buckets[k - 1].0 == value => {
                    self.buckets[k - 1].1 = self.buckets[k - 1].1.saturating_add(count);
                }
                k => {
                    self.buckets[k] = (value, count);
                    kept += 1;
                }
            }
        }
        self.buckets.truncate(kept);
        self.layout = target;
        self.high = self.high.max(2 * target.low);
        // The largest value merged so far now lies in the wider bucket of the new layout.
        if let Some(&(top, _)) = self.buckets.last() {
            self.note_top(top, false);
        }
    }

    /// Adds another sparse histogram (of any layout) into this one, as
    /// [`SparseHistogram::add_view`] of a view with `other`'s layout and buckets would.
    pub fn add(&mut self, other: &SparseHistogram, scratch: &mut Vec<Bucket>) {
        let Some(&(top, _)) = other.buckets.last() else {
            self.coarsen_for(other.layout);
            return;
        };
        let same = other.layout.same_buckets(self.layout);
        if !same {
            self.coarsen_for(other.layout);
        }
        self.merge_buckets(other.buckets.iter().copied(), !same, scratch);
        let identical =
            other.layout.low == self.layout.low && other.layout.digits == self.layout.digits;
        self.note_top(top, identical);
    }

    /// Keeps track of the dense histogram's maximum when a sender's histogram whose highest
    /// non-zero bucket starts at `top` is merged. The dense merge recorded, before the counts,
    /// `top` itself, or, when the sender's lowest discernible value and digits were
    /// `identical` to this histogram's, the highest value of `top`'s bucket.
    fn note_top(&mut self, top: u64, identical: bool) {
        let recorded = if identical {
            self.layout.highest_equivalent(top)
        } else {
            top
        };
        let mask = self.layout.unit_mask();
        self.max_marks.in_first_unit |= recorded != 0 && recorded <= mask;
        self.max_marks.u64_max |= recorded | mask == u64::MAX;
    }

    /// Number of samples (saturating at `u64::MAX`, like `Histogram::len`).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when no sample was merged.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The non-zero buckets, lowest first, as `(lowest value of the bucket, count)`.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// The middle (rounded up) of the bucket `value` falls in: the best single value for the
    /// bucket's samples (`Histogram::median_equivalent`).
    pub fn median_equivalent(&self, value: u64) -> u64 {
        self.layout.median_equivalent(value)
    }

    /// The lowest value of the lowest non-zero bucket (0 when empty), as `Histogram::min`.
    pub fn min(&self) -> u64 {
        self.buckets.first().map_or(0, |b| b.0)
    }

    /// The highest value equivalent to the largest value merged (0 when empty), as
    /// `Histogram::max` of the dense histogram (see `MaxMarks`).
    pub fn max(&self) -> u64 {
        let Some(&(top, _)) = self.buckets.last() else {
            return 0;
        };
        if self.max_marks.u64_max {
            u64::MAX
        } else if top != 0 {
            self.layout.highest_equivalent(top)
        } else if self.max_marks.in_first_unit {
            self.layout.unit_mask()
        } else {
            0
        }
    }

    /// The value at `quantile` (0..=1), as `Histogram::value_at_quantile`: the highest value
    /// of the first bucket where the running count reaches `ceil(quantile * len)` (at least
    /// 1); for quantile 0, that bucket's lowest value. 0 when empty.
    pub fn value_at_quantile(&self, quantile: f64) -> u64 {
        let quantile = if quantile > 1.0 { 1.0 } else { quantile };
        let rank = ((quantile * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0_u64;
        for &(value, count) in &self.buckets {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return if quantile == 0.0 {
                    value
                } else {
                    self.layout.highest_equivalent(value)
                };
            }
        }
        0
    }

    /// Lowest discernible value of the layout.
    pub fn lowest_discernible_value(&self) -> u64 {
        self.layout.low
    }

    /// Significant digits of the layout.
    pub fn significant_digits(&self) -> u8 {
        self.layout.digits
    }

    /// The dense `Histogram<u64>` holding the same samples, exactly the one the agent built
    /// before sparse histograms (see the module docs; like it, auto-resizing once it holds a
    /// sample). Fails only when the counts array would not fit in `usize`.
    pub fn to_histogram(&self) -> Result<Histogram<u64>, HistogramRefused> {
        let mut h = Histogram::new_with_bounds(self.layout.low, self.high, self.layout.digits)
            .map_err(|_| REFUSED)?;
        if self.buckets.is_empty() {
            return Ok(h);
        }
        h.auto(true);
        // Ascending, so the counts array grows (if at all) to what the largest value needs,
        // as it did when the dense histogram recorded its views.
        for &(value, count) in &self.buckets {
            h.record_n(value, count).map_err(|_| REFUSED)?;
        }
        // Each in a bucket already recorded, with no count: the maximum moves, nothing else.
        if self.max_marks.in_first_unit {
            h.record_n(self.layout.unit_mask(), 0)
                .map_err(|_| REFUSED)?;
        }
        if self.max_marks.u64_max {
            h.record_n(u64::MAX, 0).map_err(|_| REFUSED)?;
        }
        Ok(h)
    }

    /// Merges buckets given in increasing order of value (any order is handled, only more
    /// slowly): `convert` maps each value to its bucket's lowest value in this layout first.
    fn merge_buckets(
        &mut self,
        incoming: impl Iterator<Item = Bucket>,
        convert: bool,
        scratch: &mut Vec<Bucket>,
    ) {
        scratch.clear();
        let mut at = 0;
        let mut previous = 0;
        let mut sorted = true;
        let mut added = 0_u64;
        for (value, count) in incoming {
            let value = if convert {
                self.layout.lowest_equivalent(value)
            } else {
                value
            };
            if value < previous {
                // Not in order: search from the start again, sort what is set aside below.
                sorted = false;
                at = 0;
            }
            added = added.saturating_add(count);
            previous = value;
            // The steady state, without a search: the bucket after the one found last (the
            // same buckets again) or that one itself (a coarser layout folds neighbours).
            if let Some(b) = self.buckets.get_mut(at + 1).filter(|b| b.0 == value) {
                b.1 = b.1.saturating_add(count);
                at += 1;
                continue;
            }
            if let Some(b) = self.buckets.get_mut(at).filter(|b| b.0 == value) {
                b.1 = b.1.saturating_add(count);
                continue;
            }
            // Folded neighbours that are not there yet: the set-aside bucket grows.
            if let Some(last) = scratch.last_mut().filter(|b| b.0 == value) {
                last.1 = last.1.saturating_add(count);
                continue;
            }
            at = seek(&self.buckets, at, value);
            match self.buckets.get_mut(at) {
                Some(b) if b.0 == value => b.1 = b.1.saturating_add(count),
                _ => scratch.push((value, count)),
            }
        }
        if !sorted {
            scratch.sort_unstable_by_key(|b| b.0);
            scratch.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = kept.1.saturating_add(later.1);
                }
                same
            });
        }
        self.insert(scratch);
        self.total = self.total.saturating_add(added);
    }

    /// [`SparseHistogram::merge_buckets`] of buckets of this layout whose values strictly
    /// increase (a view's): each is looked for at the position after the last one found,
    /// then by galloping; none is converted, and the absent ones are set aside already
    /// sorted and distinct.
    fn merge_increasing(&mut self, incoming: &[Bucket], scratch: &mut Vec<Bucket>) {
        debug_assert!(incoming.windows(2).all(|w| w[0].0 < w[1].0));
        scratch.clear();
        let mut added = 0_u64;
        // Every bucket before `at` lies below the next incoming value.
        let mut at = 0;
        let buckets = &mut self.buckets[..];
        for &(value, count) in incoming {
            added = added.saturating_add(count);
            if at < buckets.len() && buckets[at].0 != value {
                at = seek(buckets, at, value);
            }
            match buckets.get_mut(at) {
                Some(b) if b.0 == value => {
                    b.1 = b.1.saturating_add(count);
                    at += 1;
                }
                _ => scratch.push((value, count)),
            }
        }
        if !scratch.is_empty() {
            self.insert(scratch);
        }
        self.total = self.total.saturating_add(added);
    }

    /// Inserts buckets absent from `self.buckets`, sorted by value, in one backward pass.
    fn insert(&mut self, new: &[Bucket]) {
        if new.is_empty() {
            return;
        }
        let old = self.buckets.len();
        if old == 0 {
            // A new series: no spare capacity (most histogram series hold a few buckets).
            self.buckets.reserve_exact(new.len());
        }
        self.buckets.resize(old + new.len(), (0, 0));
        let b = &mut self.buckets[..];
        let (mut read, mut write) = (old, old + new.len());
        for &n in new.iter().rev() {
            // Move up every old bucket above `n`, then place `n` below them.
            while read > 0 && b[read - 1].0 > n.0 {
                read -= 1;
                write -= 1;
                b[write] = b[read];
            }
            write -= 1;
            b[write] = n;
        }
        // What is left below `read` is already in place (write == read).
    }
}

impl From<&Histogram<u64>> for SparseHistogram {
    fn from(h: &Histogram<u64>) -> SparseHistogram {
        SparseHistogram::from_histogram(h)
    }
}

/// The first position at or after `from` whose bucket value is at least `value`: galloping
/// (1, 2, 4, ... ahead), then a binary search, so a few incoming buckets into a long histogram
/// cost a few comparisons each, and neighbouring ones cost one.
fn seek(buckets: &[Bucket], from: usize, value: u64) -> usize {
    let rest = &buckets[from.min(buckets.len())..];
    if rest.first().is_none_or(|b| b.0 >= value) {
        return from.min(buckets.len());
    }
    // Invariant: rest[below].0 < value.
    let (mut below, mut step) = (0, 1);
    while below + step < rest.len() && rest[below + step].0 < value {
        below += step;
        step *= 2;
    }
    let end = (below + step).min(rest.len());
    from + below + 1 + rest[below + 1..end].partition_point(|b| b.0 < value)
}

#[cfg(test)]
mod tests;
