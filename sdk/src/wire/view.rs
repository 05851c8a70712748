//! A borrowing view of a decoded batch: series identities are their bytes in the frame,
//! histograms are their non-zero buckets, recorded while the parse validated them.
//!
//! [`BatchView::parse`] checks the whole payload (every bound the owned [`decode_batch`]
//! checks, and every histogram down to its last count) before it returns, so a consumer can
//! merge a view series by series without ever meeting a bad value half-way. One check is left
//! to the consumer: whether a series' name and labels are UTF-8, which
//! [`Descriptor::decode`](super::Descriptor::decode) answers. A consumer that keys its
//! aggregates by [`Descriptor::as_bytes`](super::Descriptor::as_bytes) reads the strings of a
//! series once, when it first meets it, not in every batch (the agent does; it refuses and
//! counts such a series alone). [`decode_batch`] checks every string in frame order, then
//! builds owned values with [`BatchView::to_batch`].
//!
//! A histogram view never allocates the counts array its declared range implies (1 ns..60 s at
//! 3 significant digits is about 30 k counters, 240 KB). A plain V2 body is read where it lies
//! in the frame; a deflated one is inflated into one arena per batch (at most
//! [`Limits::max_histogram_bytes`] in total; a histogram that does not fit is kept compressed
//! and inflated again when [`HistogramView::to_histogram`] needs it). The parse walks each
//! body's counts once, with every check, and records the non-zero buckets in one buffer per
//! batch as `(value, count)` pairs, where `value` is the lowest value of the bucket, exactly
//! what `hdrhistogram::Histogram::add` records when it merges histograms of another layout:
//! [`HistogramView::buckets`] is a slice of that buffer, so a consumer never decodes the V2
//! varints a second time. The buffer holds at most half
//! [`Limits::max_histogram_counts_per_batch`] buckets (16 bytes each, so at most the 8 bytes a
//! counter that limit is stated in); a histogram whose buckets would not fit (only a batch
//! built to be dense gets there) is walked again from its body when read.
//!
//! [`decode_batch`]: super::decode_batch
//! [`Limits::max_histogram_bytes`]: super::Limits::max_histogram_bytes
//! [`Limits::max_histogram_counts_per_batch`]: super::Limits::max_histogram_counts_per_batch

use std::borrow::Cow;
use std::ops::Range;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use super::decode::{check_counts, inflate_fresh, value_for};
use super::{Batch, DecodeError, DropReport, ProcessIdentity, Series, SeriesValue, Unit};

/// Who sent a batch, borrowed from the frame (see [`ProcessIdentity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessView<'a> {
    /// Random per process start; with `sequence` it identifies a batch uniquely.
    pub instance_id: u64,
    /// Operating-system process id.
    pub pid: u32,
    /// The `ServiceName` dimension the SDK was configured with (may be empty).
    pub service: &'a str,
    /// The `Environment` dimension the SDK was configured with (may be empty).
    pub environment: &'a str,
    /// Host name or task id, for logs.
    pub host: &'a str,
}

/// A validated batch whose strings borrow the frame payload (see the module docs).
#[derive(Debug, Clone)]
pub struct BatchView<'a> {
    /// Who sent it.
    pub process: ProcessView<'a>,
    /// Per-process sequence number, starting at 1.
    pub sequence: u64,
    /// Start of the covered time, Unix milliseconds.
    pub start_unix_ms: u64,
    /// End of the covered time, Unix milliseconds.
    pub end_unix_ms: u64,
    /// Cumulative drop counters of the process.
    pub drops: DropReport,
    pub(super) series: Vec<SeriesEntry<'a>>,
    /// Inflated V2 payloads of the histograms that fit (see [`HistEntry::body`]).
    pub(super) arena: Vec<u8>,
    /// The non-zero buckets of the histograms, in frame order (see [`HistEntry::buckets`]).
    pub(super) buckets: Vec<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub(super) struct SeriesEntry<'a> {
    /// Name, kind, unit and labels as sent (structure checked, strings not yet).
    pub(super) descriptor: &'a [u8],
    pub(super) unit: Unit,
    pub(super) value: ValueEntry<'a>,
}

#[derive(Debug, Clone)]
pub(super) enum ValueEntry<'a> {
    Counter(u64),
    Gauge {
        last: f64,
        min: f64,
        max: f64,
        updates: u64,
    },
    Histogram(HistEntry<'a>),
    Event {
        count: u64,
        values: Option<HistEntry<'a>>,
    },
}

impl ValueEntry<'_> {
    /// The series kind byte this value was sent with.
    pub(super) fn kind(&self) -> u8 {
        match self {
            ValueEntry::Counter(_) => 1,
            ValueEntry::Gauge { .. } => 2,
            ValueEntry::Histogram(_) => 3,
            ValueEntry::Event { .. } => 4,
        }
    }
}

/// Where a validated histogram's inflated V2 body (40-byte header, then the counts) lives.
#[derive(Debug, Clone)]
pub(super) enum Body<'a> {
    /// Sent as plain V2: the body is the frame's bytes.
    Frame(&'a [u8]),
    /// Inflated, in the batch's arena.
    Arena(Range<usize>),
    /// Still compressed (the arena was full): the zlib stream in the frame, inflating to
    /// `len` bytes.
    Deflated { zlib: &'a [u8], len: usize },
}

/// A histogram that passed every check, with what is needed to walk its counts.
#[derive(Debug, Clone)]
pub(super) struct HistEntry<'a> {
    pub(super) scale: f64,
    pub(super) significant_digits: u8,
    pub(super) low: u64,
    pub(super) high: u64,
    /// `floor(log2(low))`, computed as HdrHistogram does.
    pub(super) unit_magnitude: u8,
    /// log2 of half the sub-bucket count.
    pub(super) half_magnitude: u8,
    /// Sum of the counts (saturating, as HdrHistogram keeps it).
    pub(super) total: u64,
    /// Index of the highest non-zero count, when `total > 0` (kept without an `Option`'s
    /// word: the entry is built in the series loop, and fewer bytes move).
    pub(super) max_index: usize,
    /// Where the parse recorded this histogram's non-zero buckets in
    /// [`BatchView::buckets`]; `None` when they did not fit (the buckets are then walked
    /// again from `body`).
    pub(super) buckets: Option<Range<usize>>,
    pub(super) body: Body<'a>,
}

impl HistEntry<'_> {
    /// An entry every field of which the parse writes in place (see `decode::histogram`).
    pub(super) const EMPTY: HistEntry<'static> = HistEntry {
        scale: 0.0,
        significant_digits: 0,
        low: 0,
        high: 0,
        unit_magnitude: 0,
        half_magnitude: 0,
        total: 0,
        max_index: 0,
        buckets: None,
        body: Body::Frame(&[]),
    };

    /// The lowest value of the bucket at `index` (HdrHistogram's private `value_for`, with the
    /// shift wrapping as it does in release builds).
    pub(super) fn value_for(&self, index: usize) -> u64 {
        value_for(index, self.unit_magnitude, self.half_magnitude)
    }
}

/// One series of a [`BatchView`]: who it is and what it carries.
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'v> {
    /// The series' identity as sent.
    pub descriptor: Descriptor<'v>,
    /// The interval's delta.
    pub value: ValueView<'v>,
}

/// A series' identity as the SDK sent it: metric name, kind, unit and labels, in frame order.
///
/// Two series of one batch, or of batches from one process, with equal descriptor bytes are
/// the same series, so a consumer can key what it aggregates by [`Descriptor::as_bytes`] and
/// read the strings only when it meets a descriptor for the first time. The parse checked the
/// descriptor's structure (lengths, counts, unit); [`Descriptor::decode`] checks that its
/// strings are UTF-8.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor<'v> {
    bytes: &'v [u8],
    unit: Unit,
}

impl<'v> Descriptor<'v> {
    /// A descriptor from bytes [`Descriptor::as_bytes`] returned (say, kept as a map key),
    /// its structure checked again.
    pub fn parse(bytes: &'v [u8]) -> Result<Self, DecodeError> {
        let unit = super::decode::descriptor_unit(bytes)?;
        Ok(Descriptor { bytes, unit })
    }

    /// The descriptor's bytes in the frame.
    pub fn as_bytes(&self) -> &'v [u8] {
        self.bytes
    }

    /// Unit of the recorded values.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The metric name, with the labels (dimension name, value), in the order the SDK sent
    /// them, appended to `labels`. Fails when a string is not UTF-8.
    pub fn decode(&self, labels: &mut Vec<(&'v str, &'v str)>) -> Result<&'v str, DecodeError> {
        super::decode::read_descriptor(self.bytes, labels)
    }

    /// The metric name for messages: replacement characters where it is not UTF-8.
    pub fn name_lossy(&self) -> Cow<'v, str> {
        String::from_utf8_lossy(super::decode::descriptor_name(self.bytes))
    }
}

/// A series' data, borrowed (see [`SeriesValue`]).
#[derive(Debug, Clone, Copy)]
pub enum ValueView<'v> {
    /// Increase of a monotonic counter during the batch.
    Counter(u64),
    /// A gauge: the last value set, the extremes and how many times it was set.
    Gauge {
        /// Last value set.
        last: f64,
        /// Smallest value set.
        min: f64,
        /// Largest value set.
        max: f64,
        /// How many times it was set.
        updates: u64,
    },
    /// A distribution.
    Histogram(HistogramView<'v>),
    /// A business event: how often it happened, and optionally the distribution of its value.
    Event {
        /// Occurrences during the batch.
        count: u64,
        /// Distribution of the event's value, when the event carries one.
        values: Option<HistogramView<'v>>,
    },
}

impl ValueView<'_> {
    /// Number of samples this value stands for (same rule as [`SeriesValue::samples`]).
    pub fn samples(&self) -> u64 {
        match self {
            ValueView::Counter(d) => *d,
            ValueView::Gauge { updates, .. } => *updates,
            ValueView::Histogram(h) => h.len(),
            ValueView::Event { count, .. } => *count,
        }
    }
}

/// A validated histogram of a [`BatchView`]: its layout and its non-zero buckets.
#[derive(Debug, Clone, Copy)]
pub struct HistogramView<'v> {
    entry: &'v HistEntry<'v>,
    arena: &'v [u8],
    /// The batch's recorded buckets (this histogram's are `entry.buckets` of them).
    buckets: &'v [(u64, u64)],
}

impl<'v> HistogramView<'v> {
    /// Divide stored integer values by this to get values in the series' unit.
    pub fn scale(&self) -> f64 {
        self.entry.scale
    }

    /// Significant digits the sender's histogram keeps.
    pub fn significant_digits(&self) -> u8 {
        self.entry.significant_digits
    }

    /// Lowest discernible value of the sender's histogram.
    pub fn lowest_discernible_value(&self) -> u64 {
        self.entry.low
    }

    /// Highest trackable value the sender's histogram declares.
    pub fn highest_trackable_value(&self) -> u64 {
        self.entry.high
    }

    /// Number of samples (the sum of the counts, saturating like `Histogram::len`).
    pub fn len(&self) -> u64 {
        self.entry.total
    }

    /// True when the histogram holds no sample.
    pub fn is_empty(&self) -> bool {
        self.entry.total == 0
    }

    /// The lowest value of the highest non-zero bucket, or `None` when empty: a histogram
    /// with this histogram's lowest discernible value and precision that can track this
    /// value can take every count of this one.
    pub fn max_bucket_value(&self) -> Option<u64> {
        (self.entry.total > 0).then(|| self.entry.value_for(self.entry.max_index))
    }

    /// The non-zero buckets, lowest first, as `(lowest value of the bucket, count)`: the
    /// ones the parse recorded, borrowed from the view.
    ///
    /// A histogram whose buckets did not fit the view's buffer (see the module docs) is
    /// walked again from its body, inflated again when it did not fit in the batch's arena
    /// either; that cannot fail for a body the parse already walked, but the error is passed
    /// on rather than assumed away.
    #[inline]
    pub fn buckets(&self) -> Result<Cow<'v, [(u64, u64)]>, DecodeError> {
        match &self.entry.buckets {
            Some(r) => Ok(Cow::Borrowed(&self.buckets[r.clone()])),
            None => self.walk_again().map(Cow::Owned),
        }
    }

    /// The buckets of a histogram the parse did not record, from its body.
    #[cold]
    fn walk_again(&self) -> Result<Vec<(u64, u64)>, DecodeError> {
        let body = self.body()?;
        let e = self.entry;
        let mut out = Vec::new();
        // The parse checked every count against the declared range already.
        check_counts(
            &body,
            u64::MAX,
            (e.unit_magnitude, e.half_magnitude),
            &mut out,
            usize::MAX,
        )
        .map_err(|reason| bad(format!("counts no longer walk: {reason}")))?;
        Ok(out)
    }

    /// The inflated V2 body, from the arena or inflated again.
    fn body(&self) -> Result<Cow<'v, [u8]>, DecodeError> {
        match &self.entry.body {
            Body::Frame(b) => Ok(Cow::Borrowed(b)),
            Body::Arena(r) => Ok(Cow::Borrowed(&self.arena[r.clone()])),
            Body::Deflated { zlib, len } => {
                let mut body = Vec::with_capacity(*len);
                inflate_fresh(zlib, *len as u64, &mut body).map_err(|e| {
                    bad(format!("DEFLATE stream is corrupt on second inflate: {e}"))
                })?;
                if body.len() != *len {
                    return Err(bad(
                        "inflated to a different length on second inflate".into()
                    ));
                }
                Ok(Cow::Owned(body))
            }
        }
    }

    /// The histogram exactly as the decoder always built it, with HdrHistogram's own V2
    /// deserializer: the full counts array of the declared range (the allocation the view
    /// avoids).
    pub fn to_histogram(&self) -> Result<Histogram<u64>, DecodeError> {
        let body = self.body()?;
        Deserializer::new()
            .deserialize(&mut &body[..])
            .map_err(|e| bad(e.to_string()))
    }
}

/// A histogram error the parse already ruled out; the series name is filled in by callers
/// that know it.
fn bad(reason: String) -> DecodeError {
    DecodeError::BadHistogram {
        name: String::new(),
        reason,
    }
}

impl<'a> BatchView<'a> {
    /// The series, in the order the SDK sent them.
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesView<'_>> + '_ {
        self.series.iter().map(move |s| SeriesView {
            descriptor: Descriptor {
                bytes: s.descriptor,
                unit: s.unit,
            },
            value: match &s.value {
                ValueEntry::Counter(d) => ValueView::Counter(*d),
                ValueEntry::Gauge {
                    last,
                    min,
                    max,
                    updates,
                } => ValueView::Gauge {
                    last: *last,
                    min: *min,
                    max: *max,
                    updates: *updates,
                },
                ValueEntry::Histogram(h) => ValueView::Histogram(self.hist(h)),
                ValueEntry::Event { count, values } => ValueView::Event {
                    count: *count,
                    values: values.as_ref().map(|h| self.hist(h)),
                },
            },
        })
    }

    fn hist<'v>(&'v self, entry: &'v HistEntry<'a>) -> HistogramView<'v> {
        HistogramView {
            entry,
            arena: &self.arena,
            buckets: &self.buckets,
        }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when the batch carries no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Total samples in the batch (see [`ValueView::samples`]), saturating: counter deltas
    /// come from the sender and may add up past `u64::MAX`.
    pub fn samples(&self) -> u64 {
        self.series()
            .fold(0u64, |n, s| n.saturating_add(s.value.samples()))
    }

    /// The owned batch: strings copied, histograms built with their full declared range.
    pub fn to_batch(&self) -> Result<Batch, DecodeError> {
        let named = |name: &str, e: DecodeError| match e {
            DecodeError::BadHistogram { reason, .. } => DecodeError::BadHistogram {
                name: name.to_owned(),
                reason,
            },
            other => other,
        };
        let mut series = Vec::with_capacity(self.series.len());
        let mut labels = Vec::new();
        for s in self.series() {
            labels.clear();
            let name = s.descriptor.decode(&mut labels)?;
            let hist = |h: HistogramView<'_>| {
                h.to_histogram()
                    .map(|owned| (h.scale(), owned))
                    .map_err(|e| named(name, e))
            };
            let value = match s.value {
                ValueView::Counter(d) => SeriesValue::Counter(d),
                ValueView::Gauge {
                    last,
                    min,
                    max,
                    updates,
                } => SeriesValue::Gauge {
                    last,
                    min,
                    max,
                    updates,
                },
                ValueView::Histogram(h) => {
                    let (scale, histogram) = hist(h)?;
                    SeriesValue::Histogram { scale, histogram }
                }
                ValueView::Event { count, values } => SeriesValue::Event {
                    count,
                    values: values.map(hist).transpose()?,
                },
            };
            series.push(Series {
                name: name.to_owned(),
                unit: s.descriptor.unit(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                value,
            });
        }
        Ok(Batch {
            process: ProcessIdentity {
                instance_id: self.process.instance_id,
                pid: self.process.pid,
                service: self.process.service.to_owned(),
                environment: self.process.environment.to_owned(),
                host: self.process.host.to_owned(),
            },
            sequence: self.sequence,
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: self.end_unix_ms,
            drops: self.drops,
            series,
        })
    }
}
