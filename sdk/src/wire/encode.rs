//! Encoding batches and acks into frames.
//!
//! Histograms are written in HdrHistogram's V2 format either by `hdrhistogram`'s own serializer
//! (for the public [`Batch`] type, which carries `hdrhistogram::Histogram`s) or, on the SDK's
//! flush path, straight from the non-zero counters of a counts array ([`HistRef::Counts`]):
//! the same V2 body (header, zig-zag varint counts, runs of zeros as negative counts) that
//! `V2Serializer` writes for a histogram with those counts. Bodies up to [`PLAIN_MAX`] bytes
//! travel plain; longer ones are deflated by one reused zlib stream (V2 + DEFLATE). Both
//! decode with [`decode_batch`](super::decode_batch) and with any HdrHistogram implementation.

use flate2::{Compress, Compression, FlushCompress, Status};
use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;
use thiserror::Error;

use super::decode::{V2_COMPRESSED_COOKIE, V2_COOKIE};
use super::V2_HEADER_SIZE;
use super::{
    Ack, Batch, DropReport, FrameHeader, FrameKind, ProcessIdentity, Series, SeriesValue, Unit,
    HEADER_LEN,
};

/// V2 bodies up to this many bytes travel plain (HdrHistogram's uncompressed V2 encoding, which
/// every HdrHistogram reads too); longer ones are deflated. The counts are zig-zag varints with
/// runs of empty buckets folded already, so DEFLATE saves about a third at most, while it costs
/// the flusher a compressor reset (~150 KB of memset) and the agent an inflate of every such
/// histogram: on one flush of a service with 1,000 requests per route in it (about 280
/// distinct values a histogram), the agent's decode + merge took 0.50 ms with bodies sent plain
/// against 1.30 ms with those past 1 KiB deflated, for 90 KB against 63 KB on a loopback
/// (`agent_ingest/service_flush`, docs/benchmarks-agent.md). A 3-digit histogram over a
/// 1 ns..1 h range has at most about 34,000 buckets, so only histograms with tens of thousands
/// of distinct values a flush (or 4-5 digits) go past this and are deflated.
const PLAIN_MAX: usize = 64 * 1024;

/// DEFLATE level of longer histograms written from counts (level 1: the bodies are mostly
/// varints already, and speed matters more on the flusher thread than a few percent).
const DEFLATE_LEVEL: u32 = 1;

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

/// HdrHistogram's varint: LEB128 for the first 8 groups of 7 bits; a 9th byte, when needed,
/// carries the top 8 bits whole (`V2Serializer`'s `varint_write`).
fn put_hdr_varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zig_zag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// A histogram as the encoder sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HistRef<'a> {
    /// A histogram object, written by `hdrhistogram`'s serializer.
    Hdr(&'a Histogram<u64>),
    /// The non-zero counters of an HdrHistogram counts array with lowest discernible value 1,
    /// `(index, count)` with strictly increasing indices, and the `high` (highest trackable
    /// value) whose counts array holds the last index.
    Counts {
        sigfig: u8,
        high: u64,
        counts: &'a [(u32, u64)],
    },
}

/// A series' value as the encoder sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ValueRef<'a> {
    Counter(u64),
    Gauge {
        last: f64,
        min: f64,
        max: f64,
        updates: u64,
    },
    Histogram(f64, HistRef<'a>),
    Event(u64, Option<(f64, HistRef<'a>)>),
}

/// A series as the encoder sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesRef<'a> {
    pub(crate) name: &'a str,
    pub(crate) unit: Unit,
    pub(crate) labels: &'a [(String, String)],
    pub(crate) value: ValueRef<'a>,
}

impl<'a> From<&'a Series> for SeriesRef<'a> {
    fn from(s: &'a Series) -> Self {
        let value = match &s.value {
            SeriesValue::Counter(d) => ValueRef::Counter(*d),
            SeriesValue::Gauge {
                last,
                min,
                max,
                updates,
            } => ValueRef::Gauge {
                last: *last,
                min: *min,
                max: *max,
                updates: *updates,
            },
            SeriesValue::Histogram { scale, histogram } => {
                ValueRef::Histogram(*scale, HistRef::Hdr(histogram))
            }
            SeriesValue::Event { count, values } => {
                ValueRef::Event(*count, values.as_ref().map(|(s, h)| (*s, HistRef::Hdr(h))))
            }
        };
        SeriesRef {
            name: &s.name,
            unit: s.unit,
            labels: &s.labels,
            value,
        }
    }
}

/// Everything of a batch but its series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchHead<'a> {
    pub(crate) process: &'a ProcessIdentity,
    pub(crate) sequence: u64,
    pub(crate) start_unix_ms: u64,
    pub(crate) end_unix_ms: u64,
    pub(crate) drops: DropReport,
}

/// Reusable encoding state (serializer, zlib stream, scratch buffers), so that encoding
/// one more histogram allocates nothing once the buffers have grown.
pub(crate) struct Encoder {
    ser: V2Serializer,
    deflate: Compress,
    body: Vec<u8>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub(crate) fn new() -> Self {
        Encoder {
            ser: V2Serializer::new(),
            deflate: Compress::new(Compression::new(DEFLATE_LEVEL), true),
            body: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Appends one complete `Batch` frame (header and payload) to `out`.
    pub(crate) fn encode<'a>(
        &mut self,
        head: &BatchHead<'_>,
        series: impl ExactSizeIterator<Item = SeriesRef<'a>>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let p = head.process;
        out.extend_from_slice(&p.instance_id.to_le_bytes());
        put_varint(out, u64::from(p.pid));
        put_str(out, &p.service);
        put_str(out, &p.environment);
        put_str(out, &p.host);
        put_varint(out, head.sequence);
        put_varint(out, head.start_unix_ms);
        put_varint(out, head.end_unix_ms);
        put_varint(out, head.drops.dropped_samples);
        put_varint(out, head.drops.dropped_batches);
        put_varint(out, head.drops.label_overflows);
        put_varint(out, series.len() as u64);
        for s in series {
            put_str(out, s.name);
            let kind: u8 = match s.value {
                ValueRef::Counter(_) => 1,
                ValueRef::Gauge { .. } => 2,
                ValueRef::Histogram(..) => 3,
                ValueRef::Event(..) => 4,
            };
            out.push(kind);
            out.push(s.unit as u8);
            put_varint(out, s.labels.len() as u64);
            for (k, v) in s.labels {
                put_str(out, k);
                put_str(out, v);
            }
            match s.value {
                ValueRef::Counter(d) => put_varint(out, d),
                ValueRef::Gauge {
                    last,
                    min,
                    max,
                    updates,
                } => {
                    put_f64(out, last);
                    put_f64(out, min);
                    put_f64(out, max);
                    put_varint(out, updates);
                }
                ValueRef::Histogram(scale, h) => self.put_histogram(out, s.name, scale, h)?,
                ValueRef::Event(count, values) => {
                    put_varint(out, count);
                    match values {
                        None => out.push(0),
                        Some((scale, h)) => {
                            out.push(1);
                            self.put_histogram(out, s.name, scale, h)?;
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

    fn put_histogram(
        &mut self,
        out: &mut Vec<u8>,
        name: &str,
        scale: f64,
        h: HistRef<'_>,
    ) -> Result<(), EncodeError> {
        put_f64(out, scale);
        let fail = |reason: String| EncodeError::Histogram {
            name: name.to_owned(),
            reason,
        };
        self.body.clear();
        match h {
            HistRef::Hdr(h) => {
                self.ser
                    .serialize(h, &mut self.body)
                    .map_err(|e| fail(e.to_string()))?;
            }
            HistRef::Counts {
                sigfig,
                high,
                counts,
            } => self.v2_body(sigfig, high, counts).map_err(fail)?,
        }
        if self.body.len() <= PLAIN_MAX {
            put_varint(out, self.body.len() as u64);
            out.extend_from_slice(&self.body);
        } else {
            self.scratch.clear();
            self.deflate_body().map_err(fail)?;
            put_varint(out, self.scratch.len() as u64);
            out.extend_from_slice(&self.scratch);
        }
        Ok(())
    }

    /// Writes the plain V2 encoding of the histogram with these counters into `body`.
    fn v2_body(&mut self, sigfig: u8, high: u64, counts: &[(u32, u64)]) -> Result<(), String> {
        let body = &mut self.body;
        body.extend_from_slice(&V2_COOKIE.to_be_bytes());
        body.extend_from_slice(&0u32.to_be_bytes()); // payload length, filled in below
        body.extend_from_slice(&0u32.to_be_bytes()); // normalizing index offset
        body.extend_from_slice(&u32::from(sigfig).to_be_bytes());
        body.extend_from_slice(&1u64.to_be_bytes()); // lowest discernible value
        body.extend_from_slice(&high.to_be_bytes());
        body.extend_from_slice(&1.0f64.to_be_bytes()); // integer to double ratio
        debug_assert_eq!(body.len(), V2_HEADER_SIZE);
        let mut next: u64 = 0;
        for &(index, count) in counts {
            let index = u64::from(index);
            match index.checked_sub(next) {
                Some(0) => {}
                Some(1) => put_hdr_varint(body, 0),
                Some(zeros) => put_hdr_varint(body, zig_zag(-(zeros as i64))),
                None => return Err(format!("counter indices not increasing at {index}")),
            }
            let count = i64::try_from(count)
                .map_err(|_| format!("a count of {count} is above i64::MAX"))?;
            put_hdr_varint(body, zig_zag(count));
            next = index + 1;
        }
        let payload = (body.len() - V2_HEADER_SIZE) as u32;
        body[4..8].copy_from_slice(&payload.to_be_bytes());
        Ok(())
    }

    /// Writes `body` (a plain V2 encoding) as V2 + DEFLATE into `scratch`.
    fn deflate_body(&mut self) -> Result<(), String> {
        let body = &self.body;
        let z = &mut self.scratch;
        z.extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
        z.extend_from_slice(&0u32.to_be_bytes()); // compressed length, filled in below
        self.deflate.reset();
        loop {
            z.reserve(body.len() / 2 + 64);
            let consumed = self.deflate.total_in() as usize;
            match self
                .deflate
                .compress_vec(&body[consumed..], z, FlushCompress::Finish)
            {
                Ok(Status::StreamEnd) => break,
                Ok(Status::Ok | Status::BufError) => {}
                Err(e) => return Err(format!("DEFLATE failed: {e}")),
            }
        }
        let zlen = (z.len() - 8) as u32;
        z[4..8].copy_from_slice(&zlen.to_be_bytes());
        Ok(())
    }
}

/// Appends one complete `Batch` frame (header and payload) to `out`.
///
/// The encoder does not enforce the decoder's [`Limits`](super::Limits): the SDK validates names
/// and labels when they are registered, and the agent is the one place that decides.
pub fn encode_batch(batch: &Batch, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let head = BatchHead {
        process: &batch.process,
        sequence: batch.sequence,
        start_unix_ms: batch.start_unix_ms,
        end_unix_ms: batch.end_unix_ms,
        drops: batch.drops,
    };
    Encoder::new().encode(&head, batch.series.iter().map(SeriesRef::from), out)
}

/// Appends one complete `Ack` frame to `out`.
pub fn encode_ack(ack: &Ack, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    put_varint(out, ack.sequence);
    out.push(ack.status as u8);
    put_varint(out, u64::from(ack.agent_version));
    let header = FrameHeader {
        kind: FrameKind::Ack,
        len: (out.len() - start - HEADER_LEN) as u32,
    };
    out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{HistogramCell, Layout, ShardCount};
    use hdrhistogram::serialization::{Deserializer, V2Serializer};
    use proptest::prelude::*;

    fn recorded(h: &Histogram<u64>) -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|x| (x.value_iterated_to(), x.count_at_value()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn counts_encode_to_the_bytes_hdrhistogram_writes_and_decode_back(
            values in proptest::collection::vec(
                prop_oneof![0u64..10_000_000_000, Just(u64::MAX), Just(1u64 << 62)], 1..600),
            repeat in 1u64..4,
            sigfig in 1u8..=3,
            shards in 1usize..4,
        ) {
            let cell = HistogramCell::new(ShardCount::new(shards), Layout::new(sigfig));
            // Record from `shards` threads so several shards hold counts for one index.
            std::thread::scope(|s| {
                for t in 0..shards {
                    let (cell, values) = (&cell, &values);
                    s.spawn(move || {
                        for v in values.iter().skip(t) {
                            cell.record_n(*v, repeat);
                        }
                    });
                }
            });
            let sparse = cell.take().expect("recorded");
            let mut reference = Histogram::<u64>::new_with_bounds(1, sparse.high(), sigfig)
                .expect("valid bounds");
            for t in 0..shards {
                for v in values.iter().skip(t) {
                    reference.record_n(*v, repeat).expect("within bounds");
                }
            }
            let mut enc = Encoder::new();
            enc.body.clear();
            enc.v2_body(sigfig, sparse.high(), &sparse.counts).expect("encodes");
            enc.scratch.clear();
            enc.deflate_body().expect("deflates");
            // The plain V2 body is byte for byte what hdrhistogram writes, and both it and
            // its deflated form (what bodies past PLAIN_MAX travel as) read back the same.
            let mut expected = Vec::new();
            V2Serializer::new().serialize(&reference, &mut expected).expect("serializes");
            prop_assert_eq!(&enc.body, &expected);
            // The compressed form decodes (with hdrhistogram's reader) to the same counts.
            let decoded: Histogram<u64> = Deserializer::new()
                .deserialize(&mut enc.scratch.as_slice())
                .expect("decodes");
            prop_assert_eq!(recorded(&decoded), recorded(&reference));
            let plain: Histogram<u64> = Deserializer::new()
                .deserialize(&mut enc.body.as_slice())
                .expect("decodes");
            prop_assert_eq!(recorded(&plain), recorded(&reference));
            prop_assert_eq!(decoded.len(), sparse.len());
        }

        #[test]
        fn merging_counts_equals_recording_the_union(
            a in proptest::collection::vec(0u64..10_000_000_000, 1..100),
            b in proptest::collection::vec(0u64..10_000_000_000, 1..100),
        ) {
            let layout = Layout::new(3);
            let (ca, cb) = (
                HistogramCell::new(ShardCount::new(1), layout),
                HistogramCell::new(ShardCount::new(1), layout),
            );
            a.iter().for_each(|v| ca.record_n(*v, 1));
            b.iter().for_each(|v| cb.record_n(*v, 1));
            let mut merged = ca.take().expect("recorded");
            merged.merge(&cb.take().expect("recorded"));
            let union = HistogramCell::new(ShardCount::new(1), layout);
            a.iter().chain(&b).for_each(|v| union.record_n(*v, 1));
            prop_assert_eq!(merged, union.take().expect("recorded"));
        }
    }
}
