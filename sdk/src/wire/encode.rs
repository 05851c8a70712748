//! Encoding batches and acks into frames.

use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use thiserror::Error;

use super::{Ack, Batch, FrameHeader, FrameKind, SeriesValue, HEADER_LEN};

/// Why a batch could not be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The histogram serializer failed (it only fails on internal errors).
    #[error("could not serialize histogram of {name:?}: {reason}")]
    Histogram {
        /// The series.
        name: String,
        /// The serializer's message.
        reason: String,
    },
    /// The payload would not fit in a u32 length.
    #[error("batch payload of {0} bytes does not fit in one frame: flush more often")]
    TooLarge(usize),
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_histogram(
    out: &mut Vec<u8>,
    ser: &mut V2DeflateSerializer,
    scratch: &mut Vec<u8>,
    name: &str,
    scale: f64,
    h: &Histogram<u64>,
) -> Result<(), EncodeError> {
    put_f64(out, scale);
    scratch.clear();
    ser.serialize(h, scratch)
        .map_err(|e| EncodeError::Histogram {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    put_varint(out, scratch.len() as u64);
    out.extend_from_slice(scratch);
    Ok(())
}

/// Appends one complete `Batch` frame (header and payload) to `out`.
///
/// The encoder does not enforce the decoder's [`Limits`](super::Limits): the SDK validates names
/// and labels when they are registered, and the agent is the one place that decides.
pub fn encode_batch(batch: &Batch, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let p = &batch.process;
    out.extend_from_slice(&p.instance_id.to_le_bytes());
    put_varint(out, u64::from(p.pid));
    put_str(out, &p.service);
    put_str(out, &p.environment);
    put_str(out, &p.host);
    put_varint(out, batch.sequence);
    put_varint(out, batch.start_unix_ms);
    put_varint(out, batch.end_unix_ms);
    put_varint(out, batch.drops.dropped_samples);
    put_varint(out, batch.drops.dropped_batches);
    put_varint(out, batch.drops.label_overflows);
    put_varint(out, batch.series.len() as u64);
    let mut ser = V2DeflateSerializer::new();
    let mut scratch = Vec::new();
    for s in &batch.series {
        put_str(out, &s.name);
        let kind: u8 = match s.value {
            SeriesValue::Counter(_) => 1,
            SeriesValue::Gauge { .. } => 2,
            SeriesValue::Histogram { .. } => 3,
            SeriesValue::Event { .. } => 4,
        };
        out.push(kind);
        out.push(s.unit as u8);
        put_varint(out, s.labels.len() as u64);
        for (k, v) in &s.labels {
            put_str(out, k);
            put_str(out, v);
        }
        match &s.value {
            SeriesValue::Counter(d) => put_varint(out, *d),
            SeriesValue::Gauge {
                last,
                min,
                max,
                updates,
            } => {
                put_f64(out, *last);
                put_f64(out, *min);
                put_f64(out, *max);
                put_varint(out, *updates);
            }
            SeriesValue::Histogram { scale, histogram } => {
                put_histogram(out, &mut ser, &mut scratch, &s.name, *scale, histogram)?
            }
            SeriesValue::Event { count, values } => {
                put_varint(out, *count);
                match values {
                    None => out.push(0),
                    Some((scale, h)) => {
                        out.push(1);
                        put_histogram(out, &mut ser, &mut scratch, &s.name, *scale, h)?;
                    }
                }
            }
        }
    }
    let len = out.len() - start - HEADER_LEN;
    let len32 = u32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
    let header = FrameHeader {
        kind: FrameKind::Batch,
        len: len32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Appends one complete `Ack` frame to `out`.
pub fn encode_ack(ack: &Ack, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    put_varint(out, ack.sequence);
    out.push(ack.status as u8);
    let header = FrameHeader {
        kind: FrameKind::Ack,
        len: (out.len() - start - HEADER_LEN) as u32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
}
