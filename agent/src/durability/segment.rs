//! Segment files: names and the record format.
//!
//! A segment holds the batches merged into one period by one agent run (its *generation*):
//! `p<period start, Unix seconds>-g<generation>.wal`. Each record is
//! `[payload length: u32 LE][CRC-32 of the payload: u32 LE][payload]`, the payload being the
//! batch frame's payload exactly as the SDK sent it (decoded again with `tally::wire` at
//! replay). A record cut short by a crash fails its length or CRC check and ends the file.

use std::path::PathBuf;

/// Bytes before each record's payload.
pub const RECORD_HEADER: usize = 8;

/// Largest payload a record may claim (far above any frame the decoder accepts), so a
/// corrupt length cannot make the replay allocate or skip wildly.
const MAX_RECORD: usize = 1 << 30;

/// File name of the segment of `period_start` written by `generation`.
pub fn segment_name(period_start: u64, generation: u64) -> String {
    format!("p{period_start}-g{generation}.wal")
}

/// A segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    /// Period start (Unix seconds).
    pub period_start: u64,
    /// The agent run that wrote it.
    pub generation: u64,
    /// Full path.
    pub path: PathBuf,
}

impl SegmentName {
    /// Parses a file name written by [`segment_name`]; `None` for any other file.
    pub fn parse(name: &str, path: PathBuf) -> Option<SegmentName> {
        let rest = name.strip_prefix('p')?.strip_suffix(".wal")?;
        let (p, g) = rest.split_once("-g")?;
        Some(SegmentName {
            period_start: p.parse().ok()?,
            generation: g.parse().ok()?,
            path,
        })
    }
}

/// Encodes one record into `out` (cleared first).
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The outcome of reading the record at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead<'a> {
    /// A whole, intact record's payload.
    Record(&'a [u8]),
    /// The clean end of the data.
    End,
    /// A torn or corrupt record: the rest of the data cannot be trusted.
    Corrupt,
}

/// Reads the record at `*pos` and advances past it.
pub fn read_record<'a>(data: &'a [u8], pos: &mut usize) -> RecordRead<'a> {
    let rest = &data[*pos..];
    if rest.is_empty() {
        return RecordRead::End;
    }
    if rest.len() < RECORD_HEADER {
        return RecordRead::Corrupt;
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD || rest.len() - RECORD_HEADER < len {
        return RecordRead::Corrupt;
    }
    let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
    if crc32fast::hash(payload) != crc {
        return RecordRead::Corrupt;
    }
    *pos += RECORD_HEADER + len;
    RecordRead::Record(payload)
}

/// (`instance_id`, `sequence`) of a batch payload, read without decoding the rest.
pub fn batch_key(payload: &[u8]) -> Option<(u64, u64)> {
    tally::wire::peek_batch_key(payload)
}
