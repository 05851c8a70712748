//! A borrowing view of a decoded batch: series identities are their bytes in the frame,
//! histograms are their validated V2 counts, walked on demand.
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
//! in the frame; a deflated one is inflated into one arena per batch (at most [`Limits::max_histogram_bytes`] in total; a histogram that
//! does not fit is kept compressed and inflated again when walked) and yields its non-zero
//! buckets as `(value, count)` pairs, where `value` is the lowest value of the bucket, exactly
//! what `hdrhistogram::Histogram::add` records when it merges histograms of another layout.
//!
//! [`decode_batch`]: super::decode_batch
//! [`Limits::max_histogram_bytes`]: super::Limits::max_histogram_bytes

use std::borrow::Cow;
use std::ops::Range;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use super::decode::{inflate_fresh, read_v2_varint, zig_zag};
use super::{
    Batch, DecodeError, DropReport, ProcessIdentity, Series, SeriesValue, Unit, V2_HEADER_SIZE,
};

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
    /// Index of the highest non-zero count.
    pub(super) max_index: Option<usize>,
    pub(super) body: Body<'a>,
}

impl HistEntry<'_> {
    /// The lowest value of the bucket at `index` (HdrHistogram's private `value_for`, with the
    /// shift wrapping as it does in release builds).
    pub(super) fn value_for(&self, index: usize) -> u64 {
        let half_count = 1usize << self.half_magnitude;
        let mut bucket = (index >> self.half_magnitude) as i64 - 1;
        let mut sub_bucket = (index & (half_count - 1)) + half_count;
        if bucket < 0 {
            sub_bucket -= half_count;
            bucket = 0;
        }
        (sub_bucket as u64).wrapping_shl(bucket as u32 + u32::from(self.unit_magnitude))
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
        self.entry.max_index.map(|i| self.entry.value_for(i))
    }

    /// The non-zero buckets, lowest first, as `(lowest value of the bucket, count)`.
    ///
    /// Inflates the histogram again when it did not fit in the batch's arena; that cannot
    /// fail for a stream that already inflated once, but the error is passed on rather than
    /// assumed away.
    pub fn counts(&self) -> Result<Counts<'v>, DecodeError> {
        Ok(Counts {
            entry: self.entry,
            body: self.body()?,
            pos: V2_HEADER_SIZE,
            index: 0,
        })
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

/// Iterator over a histogram's non-zero buckets (see [`HistogramView::counts`]).
#[derive(Debug)]
pub struct Counts<'v> {
    entry: &'v HistEntry<'v>,
    body: Cow<'v, [u8]>,
    pos: usize,
    index: usize,
}

impl Iterator for Counts<'_> {
    type Item = (u64, u64);

    // Inlined into the agent's merge loop: a call per bucket was a fifth of a histogram's
    // merge (ingest bench, histograms: 1.25 -> 1.48 M updates/s).
    #[inline]
    fn next(&mut self) -> Option<(u64, u64)> {
        // The payload was walked with every check during parsing; this walk only stops early
        // if that were somehow not so, it never reads out of bounds.
        while self.pos < self.body.len() {
            let (raw, used) = read_v2_varint(&self.body[self.pos..])?;
            self.pos += used;
            let n = zig_zag(raw);
            if n < 0 {
                self.index = self.index.checked_add(n.checked_neg()? as usize)?;
            } else {
                let at = self.index;
                self.index = self.index.checked_add(1)?;
                if n > 0 {
                    return Some((self.entry.value_for(at), n as u64));
                }
            }
        }
        None
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
