//! What a parse keeps of a sender's last batch, so that the next one skips re-checking the
//! series identities it already checked.
//!
//! An SDK process sends the same series batch after batch, mostly in the same order, and a
//! series' descriptor (name, kind, unit, labels: see [`Descriptor`](super::Descriptor)) is
//! the larger part of what a batch parse checks: about two thirds of a counter series' parse
//! (ingest bench). [`ParseMemo`] holds the descriptors of the last batch one sender's parse
//! accepted, back to back, with the kind and unit each declared. When the bytes at a series'
//! position start with the descriptor the last batch had at that position, those bytes are
//! the same, already checked, descriptor: the parse takes its length, kind and unit from the
//! memo instead of reading it field by field. Any other series is read and checked in full.
//!
//! A descriptor's checks depend on nothing but its own bytes (lengths within the wire
//! constants, a known unit, a label count within [`MAX_LABELS`](super::MAX_LABELS)), so a
//! parse with a memo accepts and refuses exactly the payloads a parse without one does, with
//! the same error, and builds the same view (property-tested in `wire::tests`).
//!
//! The memo is bounded: it keeps at most [`ParseMemo::MAX_BYTES`] of descriptors, and forgets
//! a batch whose descriptors take more (its next batch is then parsed in full). It is
//! rebuilt only after a batch in which some series was not the one remembered at its
//! position, and only from a batch that parsed without error.

use super::Unit;

/// The descriptors of one sender's last accepted batch (see the module docs): give the same
/// memo to every [`BatchView::parse_remembering`](super::BatchView::parse_remembering) of one
/// connection.
#[derive(Debug, Clone, Default)]
pub struct ParseMemo {
    /// The descriptors, back to back, in batch order.
    bytes: Vec<u8>,
    /// Per series position: its descriptor's range in `bytes`, its kind byte and its unit.
    series: Vec<Remembered>,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    start: u32,
    end: u32,
    kind: u8,
    unit: Unit,
}

impl ParseMemo {
    /// Most descriptor bytes one memo keeps (256 KiB, about 4,000 series of three labels): a
    /// connection never holds more for it.
    pub const MAX_BYTES: usize = 256 * 1024;

    /// An empty memo: the first batch is parsed in full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of series remembered.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Bytes the memo holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.series.capacity() * std::mem::size_of::<Remembered>()
    }

    /// When `rest` starts with the descriptor remembered at `position`: its length, kind
    /// byte and unit.
    #[inline(always)]
    pub(super) fn recall(&self, position: usize, rest: &[u8]) -> Option<(usize, u8, Unit)> {
        let r = self.series.get(position)?;
        let known = &self.bytes[r.start as usize..r.end as usize];
        (rest.get(..known.len()) == Some(known)).then_some((known.len(), r.kind, r.unit))
    }

    /// Remembers the descriptors of a batch that parsed without error, given as (bytes,
    /// kind byte, unit) in batch order; forgets everything when they take more than
    /// [`ParseMemo::MAX_BYTES`].
    pub(super) fn remember<'a>(
        &mut self,
        descriptors: impl ExactSizeIterator<Item = (&'a [u8], u8, Unit)> + Clone,
    ) {
        self.bytes.clear();
        self.series.clear();
        let total: usize = descriptors.clone().map(|(d, _, _)| d.len()).sum();
        if total > Self::MAX_BYTES {
            // Give the memory back too: a connection that once sent a huge batch keeps little.
            *self = Self::default();
            return;
        }
        self.bytes.reserve(total);
        self.series.reserve(descriptors.len());
        for (d, kind, unit) in descriptors {
            let start = self.bytes.len() as u32;
            self.bytes.extend_from_slice(d);
            self.series.push(Remembered {
                start,
                end: self.bytes.len() as u32,
                kind,
                unit,
            });
        }
    }
}
