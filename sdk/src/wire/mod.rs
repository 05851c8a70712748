//! The wire format between the SDK and the agent: versioned, length-prefixed frames.
//!
//! This module is the contract between the two halves of tally. The SDK's flusher encodes with
//! it; the agent (`tally-agent`) decodes with it, so both always agree on one definition.
//!
//! # Frames
//!
//! Every frame starts with a fixed 12-byte header, then `len` bytes of payload:
//!
//! ```text
//! offset  size  field
//! 0       4     magic    b"TALY"
//! 4       2     version  u16 little-endian, currently 1 (VERSION)
//! 6       1     kind     1 = Batch (SDK -> agent), 2 = Ack (agent -> SDK)
//! 7       1     flags    reserved, must be 0
//! 8       4     len      u32 little-endian payload length, at most Limits::max_frame_len
//! ```
//!
//! A reader first reads the header, checks magic, version, kind and length with
//! [`FrameHeader::parse`] (so an oversized or foreign frame is refused before any payload is
//! buffered), then reads exactly `len` bytes and hands them to [`BatchView::parse`] (a
//! borrowing, fully checked view: what the agent merges from), [`decode_batch`] (the same
//! checks, owned values) or [`decode_ack`].
//!
//! # Batch payload
//!
//! Integers are unsigned LEB128 varints unless noted; strings are a varint byte length followed
//! by UTF-8; floats are 8 bytes little-endian IEEE 754.
//!
//! ```text
//! process:   instance_id (u64 fixed LE), pid, service (str), environment (str), host (str)
//! sequence   varint, starts at 1 for a process and grows by one per batch
//! start_ms   varint, Unix milliseconds: start of the oldest interval in the batch
//! end_ms     varint, Unix milliseconds: end of the newest interval in the batch
//! drops:     dropped_samples, dropped_batches, label_overflows (cumulative since process start)
//! count      varint number of series, then each series:
//!   name (str), kind (u8), unit (u8), label count (varint), labels (str, str)*, value
//!   value by kind:
//!     Counter    delta (varint)
//!     Gauge      last (f64), min (f64), max (f64), updates (varint)
//!     Histogram  scale (f64), hdr (varint length + HdrHistogram V2 or V2+DEFLATE bytes)
//!     Event      count (varint), has_values (u8), [scale (f64), hdr] when has_values = 1
//! ```
//!
//! `name` through the last label is the series' *descriptor*: equal bytes, equal series, so a
//! reader can key aggregates by those bytes ([`Descriptor`]) and read the strings once. The
//! SDK sends a process's series in one order flush after flush, so a reader of many batches
//! of one sender can also skip re-checking descriptors it has checked before
//! ([`BatchView::parse_remembering`] with a [`ParseMemo`]).
//!
//! Histograms travel in HdrHistogram's V2 format, which the Java, Go, C and Rust HdrHistogram
//! implementations all read, so a batch can be inspected with standard tools: plain V2 (cookie
//! `0x1c849313`) for bodies up to 64 KiB (nearly all), which the agent reads in place, V2 +
//! DEFLATE (`0x1c849314`) for longer ones. Readers accept both. The decoder inflates with a hard
//! output bound, checks the histogram's header (significant digits, value range, payload
//! length) and walks its counts with the checks HdrHistogram's deserializer makes, without
//! allocating the counts array the declared range implies, so a hostile frame cannot make the
//! agent allocate more than the limits allow.
//!
//! # Acks
//!
//! The agent answers each batch with an `Ack` frame: `sequence` (varint), a status byte
//! ([`AckStatus`]) and `agent_version` (varint): the highest protocol version the agent reads.
//! Readers skip any bytes after the fields they know, so a later version may append fields to
//! an ack without breaking an earlier SDK. The SDK keeps a batch until it is acknowledged and
//! sends it again, with the same sequence number, after a reconnect; the agent recognises a
//! batch it already holds by (`instance_id`, `sequence`) and answers [`AckStatus::Duplicate`]
//! without counting it twice.
//!
//! # Versions
//!
//! Every frame carries the protocol version it is written in, and a reader refuses a version
//! it does not know (a batch cannot be decoded in part). So that an SDK and an agent of
//! different releases keep working together when a later version changes a batch's layout:
//! - the agent answers a batch in the version of that batch, and says in every ack the
//!   highest version it reads ([`Ack::agent_version`]; an ack without it comes from an agent
//!   that reads version 1 only);
//! - an SDK writes version 1 until an ack tells it the agent reads a later one, then the
//!   highest version both read (each SDK reports the last version its agent advertised in
//!   `Stats::agent_version`);
//! - version 1, the only one today, is read by every release.
//!
//! # Drop accounting
//!
//! `drops` is cumulative since the process started, so a lost or rejected batch never hides a
//! drop report: the agent takes the difference from the last report it saw for that process.

mod decode;
mod encode;
mod error;
mod memo;
mod view;

pub(crate) use decode::hdr_counts_len;
pub use decode::{decode_ack, decode_batch, peek_batch_key};
pub use encode::{encode_ack, encode_batch, EncodeError};
pub(crate) use encode::{BatchHead, Encoder, HistRef, SeriesRef, ValueRef};
pub use error::DecodeError;
pub use memo::ParseMemo;
pub use view::{BatchView, Descriptor, HistogramView, ProcessView, SeriesView, ValueView};

use hdrhistogram::Histogram;

/// The four magic bytes that open every frame.
pub const MAGIC: [u8; 4] = *b"TALY";
/// The protocol version this build writes and reads.
pub const VERSION: u16 = 1;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// Size of HdrHistogram's V2 header inside an inflated histogram body.
const V2_HEADER_SIZE: usize = 40;
/// Longest metric name, label key or SDK-supplied identity string accepted (CloudWatch's limit
/// for metric and dimension names).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label value accepted (CloudWatch's limit for dimension values).
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// Most labels one series may carry: CloudWatch allows 30 dimensions, and the agent adds
/// `ServiceName` and `Environment`.
pub const MAX_LABELS: usize = 28;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A batch of series, SDK to agent.
    Batch = 1,
    /// An acknowledgement of one batch, agent to SDK.
    Ack = 2,
}

/// The fixed header in front of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload length in bytes, already checked against [`Limits::max_frame_len`].
    pub len: u32,
}

impl FrameHeader {
    /// Parses and checks a frame header: magic, version, kind, flags and length.
    pub fn parse(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Result<Self, DecodeError> {
        if bytes[0..4] != MAGIC {
            return Err(DecodeError::BadMagic {
                found: [bytes[0], bytes[1], bytes[2], bytes[3]],
            });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let kind = match bytes[6] {
            1 => FrameKind::Batch,
            2 => FrameKind::Ack,
            other => return Err(DecodeError::UnknownFrameKind(other)),
        };
        if bytes[7] != 0 {
            return Err(DecodeError::UnknownFlags(bytes[7]));
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if len as usize > limits.max_frame_len {
            return Err(DecodeError::FrameTooLarge {
                len: len as usize,
                max: limits.max_frame_len,
            });
        }
        Ok(FrameHeader { kind, len })
    }

    /// Writes this header in its 12-byte wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6] = self.kind as u8;
        out[7] = 0;
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// Bounds the decoder enforces. Every one is checked before memory is committed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted, in bytes (default 16 MiB).
    pub max_frame_len: usize,
    /// Most series in one batch (default 100,000).
    pub max_series_per_batch: usize,
    /// Largest inflated histogram (V2 body) accepted, in bytes (default 1 MiB). It is also the
    /// most inflated histogram bytes one [`BatchView`] keeps: a histogram past that is kept
    /// compressed and inflated again (into a buffer of its own size) when it is read again
    /// (built whole, or its counts walked when they did not fit the view's buckets buffer), so
    /// a view never holds more than this plus one histogram in flight.
    pub max_histogram_bytes: usize,
    /// Most histogram counters (8 bytes each) all histograms of one batch may declare
    /// (default 4 Mi counters = 32 MiB). A histogram's counters follow from its declared value
    /// range and precision, not from its encoded size. [`BatchView`] never allocates them, but
    /// its histograms may be materialised: [`decode_batch`] allocates exactly the declared
    /// counters, and the agent gives a series it has not seen before a histogram covering the
    /// used part of that range. This bound caps both, per batch. It also bounds the non-zero
    /// buckets a [`BatchView`] records while it checks the counts (16 bytes each): at most
    /// half this many, so never more than the bytes stated here.
    pub max_histogram_counts_per_batch: u64,
    /// Most significant digits a histogram may declare (HdrHistogram allows 0..=5).
    pub max_significant_digits: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 16 * 1024 * 1024,
            max_series_per_batch: 100_000,
            max_histogram_bytes: 1024 * 1024,
            max_histogram_counts_per_batch: 4 * 1024 * 1024,
            max_significant_digits: 5,
        }
    }
}

/// Who sent a batch: one running process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessIdentity {
    /// Random per process start; with `sequence` it identifies a batch uniquely.
    pub instance_id: u64,
    /// Operating-system process id, for humans reading logs.
    pub pid: u32,
    /// The `ServiceName` dimension the SDK was configured with (may be empty: agent decides).
    pub service: String,
    /// The `Environment` dimension the SDK was configured with (may be empty: agent decides).
    pub environment: String,
    /// Host name or task id, for logs; never a dimension.
    pub host: String,
}

/// Cumulative loss and overflow counters of one process since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropReport {
    /// Samples the SDK discarded because its unsent-data bound was exceeded.
    pub dropped_samples: u64,
    /// Batches the SDK discarded (each counted in `dropped_samples` by its samples too).
    pub dropped_batches: u64,
    /// Label values folded into the overflow value by a cardinality limit (not lost: recorded
    /// under the overflow value).
    pub label_overflows: u64,
}

/// The unit of a series, as recorded. The agent maps it onto CloudWatch's `StandardUnit`,
/// converting time units where the publish unit differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// No unit.
    None = 0,
    /// A count of things.
    Count = 1,
    /// Nanoseconds (what the SDK records durations in; the agent publishes another time unit).
    Nanoseconds = 2,
    /// Microseconds.
    Microseconds = 3,
    /// Milliseconds.
    Milliseconds = 4,
    /// Seconds.
    Seconds = 5,
    /// Bytes.
    Bytes = 6,
    /// Percent.
    Percent = 7,
}

impl Unit {
    /// Decodes a unit byte.
    pub fn from_u8(b: u8) -> Option<Unit> {
        Some(match b {
            0 => Unit::None,
            1 => Unit::Count,
            2 => Unit::Nanoseconds,
            3 => Unit::Microseconds,
            4 => Unit::Milliseconds,
            5 => Unit::Seconds,
            6 => Unit::Bytes,
            7 => Unit::Percent,
            _ => return None,
        })
    }
}

/// One series: a name, its labels, and what happened to it during the batch's interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name, 1..=255 bytes.
    pub name: String,
    /// Unit of the recorded values.
    pub unit: Unit,
    /// Per-metric labels (dimension name, value), in a stable order.
    pub labels: Vec<(String, String)>,
    /// The interval's delta.
    pub value: SeriesValue,
}

/// A series' data for one batch.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesValue {
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
    /// A distribution: recorded values are `stored / scale` in `unit`.
    Histogram {
        /// Divide stored integer values by this to get values in `unit` (1.0 for integers).
        scale: f64,
        /// The samples.
        histogram: Histogram<u64>,
    },
    /// A business event: how often it happened, and optionally the distribution of its value.
    Event {
        /// Occurrences during the batch.
        count: u64,
        /// Distribution of the event's value, when the event carries one.
        values: Option<(f64, Histogram<u64>)>,
    },
}

impl SeriesValue {
    /// Number of samples this value stands for: counter and event increments count as their
    /// count, a gauge as its updates, a histogram as its sample count.
    pub fn samples(&self) -> u64 {
        match self {
            SeriesValue::Counter(d) => *d,
            SeriesValue::Gauge { updates, .. } => *updates,
            SeriesValue::Histogram { histogram, .. } => histogram.len(),
            SeriesValue::Event { count, .. } => *count,
        }
    }
}

/// One flush of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Who sent it.
    pub process: ProcessIdentity,
    /// Per-process sequence number, starting at 1.
    pub sequence: u64,
    /// Start of the covered time, Unix milliseconds.
    pub start_unix_ms: u64,
    /// End of the covered time, Unix milliseconds.
    pub end_unix_ms: u64,
    /// Cumulative drop counters of the process.
    pub drops: DropReport,
    /// The series with data in this batch.
    pub series: Vec<Series>,
}

impl Batch {
    /// Total samples in the batch (see [`SeriesValue::samples`]), saturating: counter
    /// deltas come from the sender and may add up past `u64::MAX`.
    pub fn samples(&self) -> u64 {
        self.series
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.value.samples()))
    }
}

/// How the agent answered a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Accepted and merged (or durably logged); the SDK may forget it.
    Accepted = 0,
    /// Already held from an earlier send of the same sequence; the SDK may forget it.
    Duplicate = 1,
    /// Refused as invalid; sending it again will not help. The agent counted it.
    Rejected = 2,
}

/// An acknowledgement of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The batch's sequence number.
    pub sequence: u64,
    /// The outcome.
    pub status: AckStatus,
    /// The highest protocol version the agent reads (1 from an agent whose acks predate the
    /// field).
    pub agent_version: u16,
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
