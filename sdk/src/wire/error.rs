//! Decode errors: each says what was wrong and what the sender should change.

use thiserror::Error;

/// Why a frame was refused. The agent counts each variant by [`DecodeError::reason`].
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame does not start with `TALY`: the peer is not a tally SDK.
    #[error("frame does not start with magic bytes \"TALY\" (found {found:02x?}): is the sender a tally SDK pointed at the right port?")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// A protocol version this agent does not speak.
    #[error("wire protocol version {found} is not supported (this agent speaks version {supported}): upgrade the agent or pin the SDK to a matching release")]
    UnsupportedVersion {
        /// Version in the frame.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// Unknown frame kind byte.
    #[error("unknown frame kind {0}: the sender speaks a newer protocol; upgrade the agent")]
    UnknownFrameKind(u8),
    /// Reserved flags set.
    #[error("reserved frame flags {0:#04x} are set: the sender speaks a newer protocol; upgrade the agent")]
    UnknownFlags(u8),
    /// Payload longer than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes: flush more often in the SDK or raise the agent's max_frame_bytes")]
    FrameTooLarge {
        /// Declared payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload ended before a field was complete.
    #[error("frame truncated while reading {field}: the sender closed the connection mid-frame or wrote a wrong length")]
    Truncated {
        /// Which field was being read.
        field: &'static str,
    },
    /// Bytes left over after the last field.
    #[error("{0} unexpected bytes after the end of the payload: the frame length does not match its contents")]
    TrailingBytes(usize),
    /// A varint longer than 10 bytes or overflowing u64.
    #[error("malformed varint in {field}")]
    BadVarint {
        /// Which field was being read.
        field: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A string longer than its limit.
    #[error("{field} is {len} bytes long, over the limit of {max}: shorten it")]
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An empty metric name or label key.
    #[error("{field} is empty: every metric name and label key needs at least one character")]
    EmptyString {
        /// Which field.
        field: &'static str,
    },
    /// More series than allowed in one batch.
    #[error("batch holds {count} series, over the limit of {max}: flush more often or raise the agent's max_series_per_batch")]
    TooManySeries {
        /// Declared count.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// More labels than CloudWatch can carry as dimensions.
    #[error("series {name:?} has {count} labels, over the limit of {max} (CloudWatch allows 30 dimensions, 2 are ServiceName and Environment)")]
    TooManyLabels {
        /// The series.
        name: String,
        /// Its label count.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// Unknown series kind byte.
    #[error("unknown series kind {0}")]
    UnknownSeriesKind(u8),
    /// Unknown unit byte.
    #[error("unknown unit {0}")]
    UnknownUnit(u8),
    /// Unknown ack status byte.
    #[error("unknown ack status {0}")]
    UnknownAckStatus(u8),
    /// A histogram that could not be read, or that breaks the limits.
    #[error("histogram of series {name:?} is invalid: {reason}")]
    BadHistogram {
        /// The series.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// A scale that is not a positive finite number.
    #[error("histogram scale {0} is not a positive finite number")]
    BadScale(f64),
}

impl DecodeError {
    /// A short, stable label for counting errors by reason (used in the agent's self-metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnknownFrameKind(_) => "unknown_kind",
            DecodeError::UnknownFlags(_) => "unknown_flags",
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::BadVarint { .. } => "bad_varint",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::StringTooLong { .. } => "string_too_long",
            DecodeError::EmptyString { .. } => "empty_string",
            DecodeError::TooManySeries { .. } => "too_many_series",
            DecodeError::TooManyLabels { .. } => "too_many_labels",
            DecodeError::UnknownSeriesKind(_) => "unknown_series_kind",
            DecodeError::UnknownUnit(_) => "unknown_unit",
            DecodeError::UnknownAckStatus(_) => "unknown_ack_status",
            DecodeError::BadHistogram { .. } => "bad_histogram",
            DecodeError::BadScale(_) => "bad_scale",
        }
    }
}
