//! Decoding frame payloads, with every length checked before memory is committed to it.

use std::io::Read;
use std::ops::Range;

use flate2::read::ZlibDecoder;

use super::memo::ParseMemo;
use super::view::{Body, HistEntry, ProcessView, SeriesEntry, ValueEntry};
use super::{
    Ack, AckStatus, Batch, BatchView, DecodeError, DropReport, Limits, Unit, MAX_LABELS,
    MAX_LABEL_VALUE_LEN, MAX_NAME_LEN, V2_HEADER_SIZE,
};

/// V2 cookies as HdrHistogram writes them (see HdrHistogram's `serialization` module).
pub(super) const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
pub(super) const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

// The small readers are always inlined: as calls, each returned its `Result` (a `DecodeError`
// is several words) through memory, about a fifth of a counter batch's decode + merge (ingest
// bench, counters: 111-114 -> 88-92 us a batch of CPU time).
impl<'a> Reader<'a> {
    #[inline(always)]
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated { field });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u64_fixed(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn f64(&mut self, field: &'static str) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64_fixed(field)?))
    }

    /// A LEB128 varint of at most 10 bytes. Lengths, counts and small deltas take one byte,
    /// decoded inline; longer ones take the loop.
    #[inline(always)]
    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.varint_long(field),
        }
    }

    #[inline(never)]
    fn varint_long(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(field)?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(DecodeError::BadVarint { field });
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint { field })
    }

    #[inline(always)]
    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.varint(field)?;
        usize::try_from(n).map_err(|_| DecodeError::Truncated { field })
    }

    fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let n = self.len(field)?;
        if n > max {
            return Err(DecodeError::StringTooLong { field, len: n, max });
        }
        let b = self.take(n, field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// The bytes of a string of at most `max` bytes (at least one when `non_empty`), not yet
    /// checked to be UTF-8.
    #[inline(always)]
    fn raw_str(
        &mut self,
        field: &'static str,
        max: usize,
        non_empty: bool,
    ) -> Result<&'a [u8], DecodeError> {
        let n = self.len(field)?;
        if n > max {
            return Err(DecodeError::StringTooLong { field, len: n, max });
        }
        if non_empty && n == 0 {
            return Err(DecodeError::EmptyString { field });
        }
        self.take(n, field)
    }

    fn name(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let s = self.str(field, MAX_NAME_LEN)?;
        if s.is_empty() {
            return Err(DecodeError::EmptyString { field });
        }
        Ok(s)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// `(unit_magnitude, half_magnitude)` of an HdrHistogram with this lowest discernible value
/// (at least 1) and precision, computed as its constructor does (the unit magnitude through
/// `f64`, which rounds up for some lows just under a power of two).
fn hdr_magnitudes(low: u64, sigfig: u8) -> (u8, u8) {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    let unit_magnitude = (low as f64).log2().floor() as u8;
    let sub_bucket_count_magnitude = 64 - (largest_single_unit - 1).leading_zeros();
    (
        unit_magnitude,
        (sub_bucket_count_magnitude.max(1) - 1) as u8,
    )
}

/// Number of counts an HdrHistogram with these bounds allocates (mirrors its constructor), so
/// the decoder can refuse a histogram before allocating it; `None` exactly when the
/// constructor refuses the bounds.
pub(crate) fn hdr_counts_len(low: u64, high: u64, sigfig: u8) -> Option<u64> {
    if low < 1 || sigfig > 5 || high < low.checked_mul(2)? {
        return None;
    }
    let (unit_magnitude, half_magnitude) = hdr_magnitudes(low, sigfig);
    let (unit_magnitude, half_magnitude) = (u32::from(unit_magnitude), u32::from(half_magnitude));
    let sub_bucket_count = 1u64 << (half_magnitude + 1);
    let half_count = sub_bucket_count / 2;
    if unit_magnitude + half_magnitude + 1 > 63 {
        return None;
    }
    let mut smallest_untrackable = sub_bucket_count << unit_magnitude;
    let mut buckets = 1u64;
    while smallest_untrackable <= high {
        if smallest_untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        smallest_untrackable <<= 1;
        buckets += 1;
    }
    Some((buckets + 1) * half_count)
}

/// Reads one varint of HdrHistogram's V2 counts encoding (LEB128, at most 9 bytes, the 9th
/// contributing all 8 bits): `None` when the bytes end first.
///
/// Counts are mostly below 64 (one byte) and runs of empty buckets between a histogram's
/// values mostly below 8,192 (two bytes), so those are decoded inline; longer ones (the run
/// before a histogram's first value, say) take the loop.
#[inline]
pub(super) fn read_v2_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    if first < 0x80 {
        return Some((u64::from(first), 1));
    }
    let second = *b.get(1)?;
    if second < 0x80 {
        return Some((u64::from(first & 0x7f) | (u64::from(second) << 7), 2));
    }
    read_v2_varint_long(b)
}

/// [`read_v2_varint`] of a varint of three bytes or more.
#[inline(never)]
fn read_v2_varint_long(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..8 {
        let byte = *b.get(i)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    Some((v | (u64::from(*b.get(8)?) << 56), 9))
}

/// Inflates a zlib stream with a fresh decoder, reading at most `max` bytes into `out`.
pub(super) fn inflate_fresh(zlib: &[u8], max: u64, out: &mut Vec<u8>) -> std::io::Result<usize> {
    ZlibDecoder::new(zlib).take(max).read_to_end(out)
}

/// What walking a V2 payload's counts found.
pub(super) struct Walk {
    pub(super) total: u64,
    pub(super) max_index: Option<usize>,
    /// Whether every non-zero bucket went into the buckets buffer (see [`walk_counts`]).
    pub(super) recorded: bool,
}

/// The bucket layout of a histogram (what [`HistEntry::value_for`] needs), as `(unit
/// magnitude, half magnitude)`.
pub(super) type Magnitudes = (u8, u8);

/// Walks the counts of a V2 payload with exactly the checks HdrHistogram's deserializer makes
/// (a varint cut short, a run of empty buckets that overflows, a count beyond the declared
/// range or above `i64::MAX`), without allocating the counts array.
///
/// Each non-zero bucket is appended to `out` as `(lowest value of the bucket, count)` while
/// `out` holds fewer than `room` buckets; past that nothing more is appended, the walk goes on
/// checking, and the result says the buckets were not all recorded (the caller then takes
/// back what this histogram appended).
pub(super) fn walk_counts(
    payload: &[u8],
    counts_len: u64,
    magnitudes: Magnitudes,
    out: &mut Vec<(u64, u64)>,
    room: usize,
) -> Result<Walk, String> {
    // Every non-zero count takes at least one byte of payload, so when the room left covers
    // the payload's length every bucket fits: reserved once, appended without a room check.
    if room.saturating_sub(out.len()) >= payload.len() {
        out.reserve(payload.len());
        walk::<true>(payload, counts_len, magnitudes, out, room)
    } else {
        walk::<false>(payload, counts_len, magnitudes, out, room)
    }
}

/// [`walk_counts`], told whether every bucket is known to fit (`FITS`).
#[inline(always)]
fn walk<const FITS: bool>(
    payload: &[u8],
    counts_len: u64,
    (unit_magnitude, half_magnitude): Magnitudes,
    out: &mut Vec<(u64, u64)>,
    room: usize,
) -> Result<Walk, String> {
    let mut pos = 0;
    let mut index: usize = 0;
    // Kept in locals (registers) through the loop; `last` is the index of the last non-zero
    // count, meaningful once `total > 0` (every non-zero count adds at least 1).
    let (mut total, mut last, mut recorded) = (0u64, 0usize, true);
    while pos < payload.len() {
        let (raw, used) = read_v2_varint(&payload[pos..])
            .ok_or_else(|| "counts end in the middle of a varint".to_owned())?;
        pos += used;
        // Zig-zag: an odd value is a run of `(raw >> 1) + 1` empty buckets, an even one the
        // count `raw >> 1`.
        if raw & 1 == 1 {
            // `raw == u64::MAX` is -2^63, whose run length HdrHistogram cannot negate.
            let zeros = (raw != u64::MAX)
                .then(|| usize::try_from((raw >> 1) + 1).ok())
                .flatten()
                .ok_or_else(|| "a run of empty buckets is out of range".to_owned())?;
            index = index
                .checked_add(zeros)
                .ok_or_else(|| "runs of empty buckets overflow".to_owned())?;
        } else {
            let n = raw >> 1;
            if n > 0 {
                if index as u64 >= counts_len {
                    return Err(beyond_range(index, counts_len));
                }
                total = total.saturating_add(n);
                last = index;
                if FITS || out.len() < room {
                    out.push((value_for(index, unit_magnitude, half_magnitude), n));
                } else {
                    recorded = false;
                }
                // `index < counts_len <= u64::MAX`: the next index cannot overflow.
                index += 1;
            } else {
                index = index
                    .checked_add(1)
                    .ok_or_else(|| "bucket index overflows".to_owned())?;
            }
        }
    }
    Ok(Walk {
        total,
        max_index: (total > 0).then_some(last),
        recorded,
    })
}

#[cold]
fn beyond_range(index: usize, counts_len: u64) -> String {
    format!("a count at bucket {index} lies beyond the {counts_len} buckets of the declared range")
}

/// The lowest value of the bucket at `index` (HdrHistogram's private `value_for`, with the
/// shift wrapping as it does in release builds).
#[inline]
pub(super) fn value_for(index: usize, unit_magnitude: u8, half_magnitude: u8) -> u64 {
    let half_count = 1usize << half_magnitude;
    let mut bucket = (index >> half_magnitude) as i64 - 1;
    let mut sub_bucket = (index & (half_count - 1)) + half_count;
    if bucket < 0 {
        sub_bucket -= half_count;
        bucket = 0;
    }
    (sub_bucket as u64).wrapping_shl(bucket as u32 + u32::from(unit_magnitude))
}

/// Everything a batch parse keeps across histograms: one zlib decoder (reset per histogram,
/// so its state is allocated once a batch), the arena of inflated payloads and the buckets
/// buffer.
struct HistScratch<'a> {
    /// The last V2 layout checked, and the shape it implies.
    shape: Option<([u8; 32], Shape)>,
    zlib: Option<ZlibDecoder<&'a [u8]>>,
    arena: Vec<u8>,
    /// The non-zero buckets of every histogram walked so far, as `(lowest value of the
    /// bucket, count)` (see [`HistEntry::buckets`]).
    buckets: Vec<(u64, u64)>,
    /// Most buckets `buckets` may hold (see [`bucket_room`]).
    bucket_room: usize,
    counts_budget: u64,
}

/// Most non-zero buckets one batch view records: half the counters
/// [`Limits::max_histogram_counts_per_batch`] allows, so the buffer (16 bytes a bucket) never
/// takes more than the 8 bytes a counter that limit is stated in. The buffer is bounded twice
/// over anyway: a recorded bucket is a non-zero count within its histogram's declared range,
/// and the ranges of a batch's histograms are charged to that same limit (so a batch records
/// at most that many buckets), and every non-zero count takes at least one byte of V2 body.
/// The cap only matters for a batch built to be dense: a histogram whose buckets do not fit
/// is recorded not at all and walked again when its counts are read.
fn bucket_room(limits: &Limits) -> usize {
    usize::try_from(limits.max_histogram_counts_per_batch / 2).unwrap_or(usize::MAX)
}

/// Reads and checks one histogram (scale, then HdrHistogram V2 or V2 + DEFLATE bytes) into
/// `out`, the entry's place in the batch's series.
///
/// A plain V2 histogram's entry is written there field by field. Returned by value, it was
/// built piecewise on the stack and copied in wider loads than it was written with, which
/// the store buffer cannot forward: a third of the parse's time on 1-value histograms (the
/// out-parameter made `agent_ingest/histogram_buckets/1` 3-11% faster). Inlined into the
/// series loop; the compressed path stays a call.
#[inline(always)]
fn histogram<'a>(
    r: &mut Reader<'a>,
    name: &NameIn<'_>,
    limits: &Limits,
    scratch: &mut HistScratch<'a>,
    out: &mut HistEntry<'a>,
) -> Result<(), DecodeError> {
    let scale = r.f64("histogram scale")?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(DecodeError::BadScale(scale));
    }
    let n = r.len("histogram length")?;
    let bytes = r.take(n, "histogram")?;
    let bad = |reason: String| DecodeError::BadHistogram {
        name: name.to_string(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header".into()));
    }
    let cookie = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if cookie == V2_COOKIE {
        // Plain V2: the body is in the frame already, nothing to inflate or copy.
        let shape = check_header(bytes, name, limits, &mut scratch.shape)?;
        if shape.counts > scratch.counts_budget {
            return Err(over_budget(name, shape.counts, scratch.counts_budget));
        }
        let (walk, buckets) =
            record_counts(bytes, &shape, &mut scratch.buckets, scratch.bucket_room).map_err(bad)?;
        scratch.counts_budget -= shape.counts;
        fill(out, scale, &shape, &walk, buckets, Body::Frame(bytes));
        return Ok(());
    }
    *out = deflated(scale, bytes, name, limits, scratch)?;
    Ok(())
}

/// [`histogram`] of one whose bytes are not plain V2: V2 + DEFLATE, or refused.
#[inline(never)]
fn deflated<'a>(
    scale: f64,
    bytes: &'a [u8],
    name: &NameIn<'_>,
    limits: &Limits,
    scratch: &mut HistScratch<'a>,
) -> Result<HistEntry<'a>, DecodeError> {
    let bad = |reason: String| DecodeError::BadHistogram {
        name: name.to_string(),
        reason,
    };
    let cookie = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if cookie != V2_COMPRESSED_COOKIE {
        return Err(bad(format!(
            "cookie {cookie:#x} is neither HdrHistogram V2 ({V2_COOKIE:#x}) nor V2+DEFLATE ({V2_COMPRESSED_COOKIE:#x})"
        )));
    }
    let zlen = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if zlen != bytes.len() - 8 {
        return Err(bad(format!(
            "declares {zlen} compressed bytes but carries {}",
            bytes.len() - 8
        )));
    }
    let zlib = &bytes[8..];
    // Inflate with a hard bound, straight into the arena: one byte more than allowed tells
    // us it was too big.
    let max = limits.max_histogram_bytes;
    let start = scratch.arena.len();
    let z = match &mut scratch.zlib {
        Some(z) => {
            z.reset(zlib);
            z
        }
        slot @ None => slot.insert(ZlibDecoder::new(zlib)),
    };
    let inflated = Read::by_ref(z)
        .take(max as u64 + 1)
        .read_to_end(&mut scratch.arena)
        .map_err(|e| bad(format!("DEFLATE stream is corrupt: {e}")));
    let checked = inflated.and_then(|_| {
        let body = &scratch.arena[start..];
        let shape = check_header(body, name, limits, &mut scratch.shape)?;
        if shape.counts > scratch.counts_budget {
            return Err(over_budget(name, shape.counts, scratch.counts_budget));
        }
        let (walk, buckets) =
            record_counts(body, &shape, &mut scratch.buckets, scratch.bucket_room).map_err(bad)?;
        Ok((shape, walk, buckets))
    });
    let (shape, walk, buckets) = match checked {
        Ok(x) => x,
        Err(e) => {
            scratch.arena.truncate(start);
            return Err(e);
        }
    };
    scratch.counts_budget -= shape.counts;
    let len = scratch.arena.len() - start;
    // Keep the inflated body when the arena stays within max_histogram_bytes; otherwise keep
    // the zlib stream and inflate it again when the counts are walked.
    let body = if scratch.arena.len() <= max {
        Body::Arena(start..scratch.arena.len())
    } else {
        scratch.arena.truncate(start);
        Body::Deflated { zlib, len }
    };
    Ok(entry(scale, &shape, &walk, buckets, body))
}

/// [`check_counts`] of one histogram's inflated body, its non-zero buckets appended to the
/// batch's buckets buffer: their range there, or `None` (and nothing appended) when they did
/// not all fit.
#[inline(always)]
fn record_counts(
    body: &[u8],
    shape: &Shape,
    buckets: &mut Vec<(u64, u64)>,
    room: usize,
) -> Result<(Walk, Option<Range<usize>>), String> {
    let start = buckets.len();
    let magnitudes = (shape.unit_magnitude, shape.half_magnitude);
    let walk = check_counts(body, shape.counts, magnitudes, buckets, room);
    let recorded = walk.as_ref().is_ok_and(|w| w.recorded);
    if !recorded {
        buckets.truncate(start);
    }
    let walk = walk?;
    Ok((walk, recorded.then_some(start..buckets.len())))
}

#[cold]
fn over_budget(name: &NameIn<'_>, counts: u64, left: u64) -> DecodeError {
    DecodeError::BadHistogram {
        name: name.to_string(),
        reason: format!(
            "needs {counts} counters, over the {left} left in this batch's budget \
             (max_histogram_counts_per_batch): record with fewer significant digits or flush more often"
        ),
    }
}

fn entry<'a>(
    scale: f64,
    shape: &Shape,
    walk: &Walk,
    buckets: Option<Range<usize>>,
    body: Body<'a>,
) -> HistEntry<'a> {
    let mut h = HistEntry::EMPTY;
    fill(&mut h, scale, shape, walk, buckets, body);
    h
}

/// Writes a checked histogram's entry field by field where it lives (see [`histogram`]).
#[inline(always)]
fn fill<'a>(
    out: &mut HistEntry<'a>,
    scale: f64,
    shape: &Shape,
    walk: &Walk,
    buckets: Option<Range<usize>>,
    body: Body<'a>,
) {
    out.scale = scale;
    out.significant_digits = shape.sigfig;
    out.low = shape.low;
    out.high = shape.high;
    out.unit_magnitude = shape.unit_magnitude;
    out.half_magnitude = shape.half_magnitude;
    out.total = walk.total;
    out.max_index = walk.max_index.unwrap_or(0);
    out.buckets = buckets;
    out.body = body;
}

/// The layout a V2 header declares.
#[derive(Clone, Copy)]
struct Shape {
    sigfig: u8,
    low: u64,
    high: u64,
    unit_magnitude: u8,
    half_magnitude: u8,
    counts: u64,
}

/// Checks an inflated V2 body's size and header, in the order the decoder always checked
/// them (the counts budget comes next, then [`check_counts`]). Inlined: with the layout of
/// the histogram before, that is a few compares.
#[inline(always)]
fn check_header(
    body: &[u8],
    name: &NameIn<'_>,
    limits: &Limits,
    memo: &mut Option<([u8; 32], Shape)>,
) -> Result<Shape, DecodeError> {
    let bad = |reason: String| DecodeError::BadHistogram {
        name: name.to_string(),
        reason,
    };
    let max = limits.max_histogram_bytes;
    if body.len() > max {
        return Err(bad(format!("inflates to more than {max} bytes")));
    }
    if body.len() < V2_HEADER_SIZE {
        return Err(bad("inflated body is shorter than the V2 header".into()));
    }
    let be32 = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    if be32(0) != V2_COOKIE {
        return Err(bad("inner cookie is not HdrHistogram V2".into()));
    }
    let payload_len = be32(4) as usize;
    if payload_len != body.len() - V2_HEADER_SIZE {
        return Err(bad(format!(
            "declares {payload_len} payload bytes but carries {}",
            body.len() - V2_HEADER_SIZE
        )));
    }
    // The histograms of a batch mostly share one layout: the rest of the header (offset,
    // digits, bounds, ratio) decides the shape, so the last one checked is kept.
    let layout: [u8; 32] = body[8..V2_HEADER_SIZE].try_into().expect("32 bytes");
    if let Some((seen, shape)) = memo {
        if *seen == layout {
            return Ok(*shape);
        }
    }
    new_shape(body, layout, name, limits, memo)
}

/// [`check_header`] of a layout other than the last one checked: checks it, derives its
/// shape and keeps both in `memo`. (Its `bad`/`be32` closures repeat `check_header`'s on
/// purpose: module-level helpers shared by both measured 10-15% slower on the histogram
/// ingest benchmark, alternating runs, 35.5-36.8 against 31.1-31.8 us a batch.)
#[inline(never)]
fn new_shape(
    body: &[u8],
    layout: [u8; 32],
    name: &NameIn<'_>,
    limits: &Limits,
    memo: &mut Option<([u8; 32], Shape)>,
) -> Result<Shape, DecodeError> {
    let bad = |reason: String| DecodeError::BadHistogram {
        name: name.to_string(),
        reason,
    };
    let be32 = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let sigfig = be32(12);
    if sigfig > u32::from(limits.max_significant_digits) {
        return Err(bad(format!(
            "{sigfig} significant digits exceed the limit of {}",
            limits.max_significant_digits
        )));
    }
    let sigfig = u8::try_from(sigfig).map_err(|_| bad(format!("{sigfig} significant digits")))?;
    let (low, high) = (be64(16), be64(24));
    let invalid = || {
        bad(format!(
            "bounds low={low} high={high} sigfig={sigfig} are invalid"
        ))
    };
    let counts = hdr_counts_len(low, high, sigfig).ok_or_else(invalid)?;
    let (unit_magnitude, half_magnitude) = hdr_magnitudes(low, sigfig);
    let shape = Shape {
        sigfig,
        low,
        high,
        unit_magnitude,
        half_magnitude,
        counts,
    };
    *memo = Some((layout, shape));
    Ok(shape)
}

/// What HdrHistogram's V2 deserializer checks beyond the header: no normalizing offset, an
/// integer histogram, and every count (see [`walk_counts`], which records the buckets into
/// `out` while it holds fewer than `room`).
pub(super) fn check_counts(
    body: &[u8],
    counts_len: u64,
    magnitudes: Magnitudes,
    out: &mut Vec<(u64, u64)>,
    room: usize,
) -> Result<Walk, String> {
    let offset = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
    let ratio = f64::from_bits(u64::from_be_bytes(
        body[32..40].try_into().expect("8 bytes"),
    ));
    if offset != 0 {
        return Err(
            "a normalizing index offset is set, which HdrHistogram does not support".into(),
        );
    }
    if ratio != 1.0 {
        return Err(
            "an integer-to-double ratio other than 1 (a double histogram) is not supported".into(),
        );
    }
    walk_counts(&body[V2_HEADER_SIZE..], counts_len, magnitudes, out, room)
}

/// Decodes a `Batch` payload (the bytes after the frame header) into owned values: the
/// checks of [`BatchView::parse`], then [`BatchView::to_batch`].
pub fn decode_batch(payload: &[u8], limits: &Limits) -> Result<Batch, DecodeError> {
    BatchView::parse_checked(payload, limits)?.to_batch()
}

/// Whether a parse checks series names and labels to be UTF-8 as it goes, or leaves that to
/// [`Descriptor::decode`](super::Descriptor::decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strings {
    Check,
    Defer,
}

fn utf8<'a>(b: &'a [u8], field: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field })
}

/// A name not yet checked to be UTF-8, displayed lossily in error messages.
struct Lossy<'a>(&'a [u8]);

impl std::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0))
    }
}

/// The metric name of a checked descriptor, for error messages: found (and displayed
/// lossily) only when a message needs it.
struct NameIn<'a>(&'a [u8]);

impl std::fmt::Display for NameIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Lossy(descriptor_name(self.0)).fmt(f)
    }
}

/// Checks a descriptor's structure on its own, with the batch parse's checks (and so its
/// errors), returning its unit.
pub(super) fn descriptor_unit(bytes: &[u8]) -> Result<Unit, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let (_, unit) = read_descriptor_checked(&mut r, Strings::Defer)?;
    r.finish()?;
    Ok(unit)
}

/// Reads and checks one series' descriptor in the batch parse (name, kind, unit, labels),
/// returning its kind byte (checked with the value that follows) and unit.
#[inline(always)]
fn read_descriptor_checked(
    r: &mut Reader<'_>,
    strings: Strings,
) -> Result<(u8, Unit), DecodeError> {
    let name_bytes = r.raw_str("metric name", MAX_NAME_LEN, true)?;
    if strings == Strings::Check {
        utf8(name_bytes, "metric name")?;
    }
    let kind = r.u8("series kind")?;
    let unit_byte = r.u8("unit")?;
    let unit = Unit::from_u8(unit_byte).ok_or(DecodeError::UnknownUnit(unit_byte))?;
    let nlabels = r.varint("label count")?;
    if nlabels > MAX_LABELS as u64 {
        return Err(DecodeError::TooManyLabels {
            name: Lossy(name_bytes).to_string(),
            count: nlabels,
            max: MAX_LABELS,
        });
    }
    for _ in 0..nlabels {
        let k = r.raw_str("label key", MAX_NAME_LEN, true)?;
        if strings == Strings::Check {
            utf8(k, "label key")?;
        }
        let v = r.raw_str("label value", MAX_LABEL_VALUE_LEN, false)?;
        if strings == Strings::Check {
            utf8(v, "label value")?;
        }
    }
    Ok((kind, unit))
}

/// The name bytes of a descriptor the parse already checked (empty if it were cut short).
pub(super) fn descriptor_name(bytes: &[u8]) -> &[u8] {
    let mut r = Reader { buf: bytes, pos: 0 };
    r.raw_str("metric name", MAX_NAME_LEN, false)
        .unwrap_or_default()
}

/// Reads a descriptor the parse already checked for structure (see [`Descriptor`](super::Descriptor)),
/// checking its strings: the name, and the labels appended to `labels`.
pub(super) fn read_descriptor<'a>(
    bytes: &'a [u8],
    labels: &mut Vec<(&'a str, &'a str)>,
) -> Result<&'a str, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let name = r.name("metric name")?;
    r.u8("series kind")?;
    r.u8("unit")?;
    let n = r.varint("label count")?;
    for _ in 0..n {
        let k = r.name("label key")?;
        let v = r.str("label value", MAX_LABEL_VALUE_LEN)?;
        labels.push((k, v));
    }
    r.finish()?;
    Ok(name)
}

impl<'a> BatchView<'a> {
    /// Decodes and checks a `Batch` payload (the bytes after the frame header), borrowing its
    /// strings. Every bound of [`Limits`] is checked, every histogram walked to its last
    /// count, before this returns: an `Ok` view is valid as a whole.
    pub fn parse(payload: &'a [u8], limits: &Limits) -> Result<BatchView<'a>, DecodeError> {
        Self::parse_with(payload, limits, Strings::Defer, None)
    }

    /// [`BatchView::parse`] of the next batch of one sender: series whose descriptor `memo`
    /// remembers where this batch has them, from a batch of the sender that began like this
    /// one, are not checked field by field again (see [`ParseMemo`]). Accepts and refuses
    /// exactly what [`BatchView::parse`] does and gives the same view; `memo` then remembers
    /// this batch when it was not the remembered one series for series.
    pub fn parse_remembering(
        payload: &'a [u8],
        limits: &Limits,
        memo: &mut ParseMemo,
    ) -> Result<BatchView<'a>, DecodeError> {
        Self::parse_with(payload, limits, Strings::Defer, Some(memo))
    }

    /// [`BatchView::parse`], checking every name and label to be UTF-8 in frame order too
    /// (what [`decode_batch`] does, so it reports the first problem of the frame).
    pub(super) fn parse_checked(
        payload: &'a [u8],
        limits: &Limits,
    ) -> Result<BatchView<'a>, DecodeError> {
        Self::parse_with(payload, limits, Strings::Check, None)
    }

    fn parse_with(
        payload: &'a [u8],
        limits: &Limits,
        strings: Strings,
        mut memo: Option<&mut ParseMemo>,
    ) -> Result<BatchView<'a>, DecodeError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        let instance_id = r.u64_fixed("instance id")?;
        let pid =
            u32::try_from(r.varint("pid")?).map_err(|_| DecodeError::BadVarint { field: "pid" })?;
        let service = r.str("service name", MAX_NAME_LEN)?;
        let environment = r.str("environment", MAX_NAME_LEN)?;
        let host = r.str("host", MAX_NAME_LEN)?;
        let sequence = r.varint("sequence")?;
        let start_unix_ms = r.varint("start time")?;
        let end_unix_ms = r.varint("end time")?;
        let drops = DropReport {
            dropped_samples: r.varint("dropped samples")?,
            dropped_batches: r.varint("dropped batches")?,
            label_overflows: r.varint("label overflows")?,
        };
        let count = r.varint("series count")?;
        if count > limits.max_series_per_batch as u64 {
            return Err(DecodeError::TooManySeries {
                count,
                max: limits.max_series_per_batch,
            });
        }
        // Each series takes at least 5 bytes, so a count the payload cannot hold is refused
        // before allocating for it.
        if count > (payload.len() - r.pos) as u64 / 5 {
            return Err(DecodeError::Truncated { field: "series" });
        }
        let mut hist = HistScratch {
            shape: None,
            zlib: None,
            arena: Vec::new(),
            buckets: Vec::new(),
            bucket_room: bucket_room(limits),
            counts_budget: limits.max_histogram_counts_per_batch,
        };
        let mut series = Vec::with_capacity(count as usize);
        // The remembered batch this one began like, walked beside it.
        let mut recall = match memo.as_deref_mut() {
            Some(m) if count > 0 => m.pick(&payload[r.pos..]),
            _ => None,
        };
        for _ in 0..count {
            let at = r.pos;
            let recalled = match &mut recall {
                Some(m) => m.recall(&payload[at..]),
                None => None,
            };
            let (descriptor, kind, unit) = match recalled {
                // The same bytes as a descriptor of a batch this sender sent before, which
                // passed the checks below (they depend on nothing else).
                Some((len, kind, unit)) => {
                    r.pos += len;
                    (&payload[at..r.pos], kind, unit)
                }
                None => {
                    let (kind, unit) = read_descriptor_checked(&mut r, strings)?;
                    (&payload[at..r.pos], kind, unit)
                }
            };
            let name = NameIn(descriptor);
            let value = match kind {
                1 => ValueEntry::Counter(r.varint("counter delta")?),
                2 => ValueEntry::Gauge {
                    last: r.f64("gauge last")?,
                    min: r.f64("gauge min")?,
                    max: r.f64("gauge max")?,
                    updates: r.varint("gauge updates")?,
                },
                3 => {
                    series.push(SeriesEntry {
                        descriptor,
                        unit,
                        value: ValueEntry::Histogram(HistEntry::EMPTY),
                    });
                    let Some(SeriesEntry {
                        value: ValueEntry::Histogram(h),
                        ..
                    }) = series.last_mut()
                    else {
                        unreachable!("the entry was pushed just now")
                    };
                    histogram(&mut r, &name, limits, &mut hist, h)?;
                    continue;
                }
                4 => {
                    let count = r.varint("event count")?;
                    let values = match r.u8("event has values")? {
                        0 => None,
                        1 => {
                            let mut h = HistEntry::EMPTY;
                            histogram(&mut r, &name, limits, &mut hist, &mut h)?;
                            Some(h)
                        }
                        _ => return Err(DecodeError::UnknownSeriesKind(kind)),
                    };
                    ValueEntry::Event { count, values }
                }
                other => return Err(DecodeError::UnknownSeriesKind(other)),
            };
            series.push(SeriesEntry {
                descriptor,
                unit,
                value,
            });
        }
        r.finish()?;
        let (picked, keep, hits) = match recall {
            Some(m) => {
                let (picked, keep, hits) = m.finish(series.len());
                (Some(picked), keep, hits)
            }
            None => (None, false, 0),
        };
        if let Some(m) = memo {
            m.count_recalled(hits);
            if !keep {
                m.remember(
                    picked,
                    series
                        .iter()
                        .map(|s| (s.descriptor, s.value.kind(), s.unit)),
                );
            }
        }
        Ok(BatchView {
            process: ProcessView {
                instance_id,
                pid,
                service,
                environment,
                host,
            },
            sequence,
            start_unix_ms,
            end_unix_ms,
            drops,
            series,
            arena: hist.arena,
            buckets: hist.buckets,
        })
    }
}

/// The `(instance_id, sequence)` at the front of a batch payload, read without decoding the
/// rest: what the agent needs to name a batch it refuses (its `Rejected` ack) and to find a
/// batch's identity in its write-ahead log. `None` when the payload ends before the sequence.
/// The process strings are skipped, not checked, so a payload that fails [`decode_batch`]
/// further on still yields its key.
pub fn peek_batch_key(payload: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let instance_id = r.u64_fixed("instance id").ok()?;
    r.varint("pid").ok()?;
    for field in ["service name", "environment", "host"] {
        let n = r.len(field).ok()?;
        r.take(n, field).ok()?;
    }
    let sequence = r.varint("sequence").ok()?;
    Some((instance_id, sequence))
}

/// Decodes an `Ack` payload.
pub fn decode_ack(payload: &[u8]) -> Result<Ack, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let sequence = r.varint("ack sequence")?;
    let status = match r.u8("ack status")? {
        0 => AckStatus::Accepted,
        1 => AckStatus::Duplicate,
        2 => AckStatus::Rejected,
        other => return Err(DecodeError::UnknownAckStatus(other)),
    };
    // Absent from acks of agents that predate it; fields after it (from later versions) are
    // skipped.
    let agent_version = if r.pos < payload.len() {
        match u16::try_from(r.varint("agent version")?) {
            Ok(v) if v >= 1 => v,
            _ => {
                return Err(DecodeError::BadVarint {
                    field: "agent version",
                })
            }
        }
    } else {
        1
    };
    Ok(Ack {
        sequence,
        status,
        agent_version,
    })
}

#[cfg(test)]
mod tests {
    use super::hdr_counts_len;
    use hdrhistogram::Histogram;

    #[test]
    fn counts_estimate_matches_what_hdrhistogram_allocates() {
        for sigfig in 0..=5u8 {
            for (low, high) in [
                (1, 2),
                (1, 1000),
                (1, 3_600_000_000_000),
                (1000, 1 << 40),
                (1, u64::MAX),
            ] {
                let h = Histogram::<u64>::new_with_bounds(low, high, sigfig).unwrap();
                assert_eq!(
                    hdr_counts_len(low, high, sigfig),
                    Some(h.distinct_values() as u64),
                    "low={low} high={high} sigfig={sigfig}"
                );
            }
        }
    }
}
