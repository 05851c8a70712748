//! The decoder as it was before the borrowing view, kept verbatim as a test oracle: the view
//! and `decode_batch` must accept exactly what this accepts, refuse what it refuses (by the
//! same reason) and decode to the same batch. It materialises every histogram through
//! HdrHistogram's own V2 deserializer.

use std::io::Read;

use flate2::read::ZlibDecoder;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use super::{
    Batch, DecodeError, DropReport, Limits, ProcessIdentity, Series, SeriesValue, Unit, MAX_LABELS,
    MAX_LABEL_VALUE_LEN, MAX_NAME_LEN,
};

/// V2 cookies as HdrHistogram writes them (see HdrHistogram's `serialization` module).
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
const V2_HEADER_SIZE: usize = 40;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
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

    fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
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

    fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let s = self.str(field, MAX_NAME_LEN)?;
        if s.is_empty() {
            return Err(DecodeError::EmptyString { field });
        }
        Ok(s.to_owned())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Number of counts an HdrHistogram with these bounds allocates (mirrors its constructor), so
/// the decoder can refuse a histogram before allocating it.
fn hdr_counts_len(low: u64, high: u64, sigfig: u8) -> Option<u64> {
    if low < 1 || sigfig > 5 || high < low.checked_mul(2)? {
        return None;
    }
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    let unit_magnitude = 63 - low.leading_zeros();
    let sub_bucket_count_magnitude = 64 - (largest_single_unit - 1).leading_zeros();
    let half_magnitude = sub_bucket_count_magnitude.max(1) - 1;
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

fn histogram(
    r: &mut Reader<'_>,
    name: &str,
    limits: &Limits,
    counts_budget: &mut u64,
) -> Result<(f64, Histogram<u64>), DecodeError> {
    let scale = r.f64("histogram scale")?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(DecodeError::BadScale(scale));
    }
    let n = r.len("histogram length")?;
    let bytes = r.take(n, "histogram")?;
    let bad = |reason: String| DecodeError::BadHistogram {
        name: name.to_owned(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header".into()));
    }
    let cookie = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let max = limits.max_histogram_bytes;
    let body = if cookie == V2_COOKIE {
        // Plain V2 (what the SDK sends for short bodies).
        bytes.to_vec()
    } else {
        if cookie != V2_COMPRESSED_COOKIE {
            return Err(bad(format!(
                "cookie {cookie:#x} is neither HdrHistogram V2 nor V2+DEFLATE"
            )));
        }
        let zlen = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        if zlen != bytes.len() - 8 {
            return Err(bad(format!(
                "declares {zlen} compressed bytes but carries {}",
                bytes.len() - 8
            )));
        }
        // Inflate with a hard bound: one byte more than allowed tells us it was too big.
        let mut body = Vec::new();
        ZlibDecoder::new(&bytes[8..])
            .take(max as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| bad(format!("DEFLATE stream is corrupt: {e}")))?;
        body
    };
    if body.len() > max {
        return Err(bad(format!("inflates to more than {max} bytes")));
    }
    if body.len() < V2_HEADER_SIZE {
        return Err(bad("inflated body is shorter than the V2 header".into()));
    }
    let be32 = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
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
    let sigfig = be32(12);
    if sigfig > u32::from(limits.max_significant_digits) {
        return Err(bad(format!(
            "{sigfig} significant digits exceed the limit of {}",
            limits.max_significant_digits
        )));
    }
    let (low, high) = (be64(16), be64(24));
    let counts = hdr_counts_len(low, high, sigfig as u8).ok_or_else(|| {
        bad(format!(
            "bounds low={low} high={high} sigfig={sigfig} are invalid"
        ))
    })?;
    if counts > *counts_budget {
        return Err(bad(format!(
            "needs {counts} counters, over the {} left in this batch's budget \
             (max_histogram_counts_per_batch): record with fewer significant digits or flush more often",
            *counts_budget
        )));
    }
    *counts_budget -= counts;
    let h = Deserializer::new()
        .deserialize(&mut body.as_slice())
        .map_err(|e| bad(e.to_string()))?;
    Ok((scale, h))
}

/// Decodes a `Batch` payload the old way (the bytes after the frame header).
pub fn decode_batch_reference(payload: &[u8], limits: &Limits) -> Result<Batch, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let instance_id = r.u64_fixed("instance id")?;
    let pid =
        u32::try_from(r.varint("pid")?).map_err(|_| DecodeError::BadVarint { field: "pid" })?;
    let service = r.str("service name", MAX_NAME_LEN)?.to_owned();
    let environment = r.str("environment", MAX_NAME_LEN)?.to_owned();
    let host = r.str("host", MAX_NAME_LEN)?.to_owned();
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
    let mut counts_budget = limits.max_histogram_counts_per_batch;
    let mut series = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.name("metric name")?;
        let kind = r.u8("series kind")?;
        let unit_byte = r.u8("unit")?;
        let unit = Unit::from_u8(unit_byte).ok_or(DecodeError::UnknownUnit(unit_byte))?;
        let nlabels = r.varint("label count")?;
        if nlabels > MAX_LABELS as u64 {
            return Err(DecodeError::TooManyLabels {
                name,
                count: nlabels,
                max: MAX_LABELS,
            });
        }
        let mut labels = Vec::with_capacity(nlabels as usize);
        for _ in 0..nlabels {
            let k = r.name("label key")?;
            let v = r.str("label value", MAX_LABEL_VALUE_LEN)?.to_owned();
            labels.push((k, v));
        }
        let value = match kind {
            1 => SeriesValue::Counter(r.varint("counter delta")?),
            2 => SeriesValue::Gauge {
                last: r.f64("gauge last")?,
                min: r.f64("gauge min")?,
                max: r.f64("gauge max")?,
                updates: r.varint("gauge updates")?,
            },
            3 => {
                let (scale, histogram) = histogram(&mut r, &name, limits, &mut counts_budget)?;
                SeriesValue::Histogram { scale, histogram }
            }
            4 => {
                let count = r.varint("event count")?;
                let values = match r.u8("event has values")? {
                    0 => None,
                    1 => Some(histogram(&mut r, &name, limits, &mut counts_budget)?),
                    _ => return Err(DecodeError::UnknownSeriesKind(kind)),
                };
                SeriesValue::Event { count, values }
            }
            other => return Err(DecodeError::UnknownSeriesKind(other)),
        };
        series.push(Series {
            name,
            unit,
            labels,
            value,
        });
    }
    r.finish()?;
    Ok(Batch {
        process: ProcessIdentity {
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
    })
}
