//! What a parse keeps of a sender's recent batches, so that the next ones skip re-checking
//! the series identities it already checked.
//!
//! An SDK process sends the same series flush after flush, in the same order (sorted by its
//! registry entries), split into the same few batches when a flush holds more than one batch
//! takes. A series' descriptor (name, kind, unit, labels: see
//! [`Descriptor`](super::Descriptor)) is the larger part of what a batch parse checks: about
//! two thirds of a counter series' parse (ingest bench). [`ParseMemo`] holds the descriptors
//! of the sender's last few accepted batches, back to back, with the kind and unit each
//! declared.
//!
//! A parse picks the remembered batch that began with the same series as this one (or had
//! it among its first few: the split between the batches of a flush moves when series of
//! the earlier ones were idle), then walks it beside the new batch: when the bytes at a
//! series' position start with the descriptor remembered next (or one of the few after it:
//! series that were idle this interval are not sent), those bytes are that same, already
//! checked, descriptor, and the parse takes its length, kind and unit from the memo instead
//! of reading it field by field.
//! Any other series is read and checked in full, and the walk through the memo waits where
//! it is.
//!
//! A descriptor's checks depend on nothing but its own bytes (lengths within the wire
//! constants, a known unit, a label count within [`MAX_LABELS`](super::MAX_LABELS)), so a
//! parse with a memo accepts and refuses exactly the payloads a parse without one does, with
//! the same error, and builds the same view (property-tested in `wire::tests`, fuzzed by the
//! `decode_frame` target).
//!
//! Bounds: at most [`ParseMemo::BATCHES`] batches and [`ParseMemo::MAX_BYTES`] of descriptors
//! in all. A full memo makes room only by forgetting a batch not used for a while (so a
//! sender cycling through more batches than fit keeps the first ones recognised rather than
//! none), and a batch whose descriptors alone take more is not remembered. A remembered batch
//! is replaced only by an accepted batch that began like it and of whose series it
//! recognised fewer than seven in eight (idle series come back: a batch missing a few is no
//! reason to forget them).

use super::Unit;

/// The descriptors of one sender's recent accepted batches (see the module docs): give the
/// same memo to every [`BatchView::parse_remembering`](super::BatchView::parse_remembering)
/// of one connection.
#[derive(Debug, Clone, Default)]
pub struct ParseMemo {
    batches: Vec<Remembered>,
    /// Descriptor bytes held by all of `batches`.
    bytes: usize,
    /// Counts parses, to find the least recently used batch.
    clock: u64,
    /// Series recognised so far.
    recalled: u64,
}

/// One remembered batch.
#[derive(Debug, Clone, Default)]
struct Remembered {
    /// The descriptors, back to back, in batch order.
    bytes: Vec<u8>,
    /// Per series: its descriptor's end in `bytes`, its kind byte and its unit.
    series: Vec<(u32, u8, Unit)>,
    /// The parse that last used it.
    used: u64,
}

impl Remembered {
    /// The descriptor of series `i` (which exists), with its kind and unit.
    #[inline(always)]
    fn get(&self, i: usize) -> (&[u8], u8, Unit) {
        let start = if i == 0 {
            0
        } else {
            self.series[i - 1].0 as usize
        };
        let (end, kind, unit) = self.series[i];
        (&self.bytes[start..end as usize], kind, unit)
    }
}

const LOOKAHEAD: usize = ParseMemo::LOOKAHEAD;
const STALE_AFTER: u64 = ParseMemo::STALE_AFTER;
const PICK_WINDOW: usize = ParseMemo::PICK_WINDOW;

/// A parse's walk through the remembered batch it picked.
pub(super) struct Recall<'m> {
    batch: &'m Remembered,
    /// The remembered series expected next.
    next: usize,
    /// Whether every series so far was the one expected, in order.
    exact: bool,
    /// Series recognised so far.
    hits: u64,
    /// Which batch of the memo this is.
    picked: usize,
}

impl Recall<'_> {
    /// When `rest` starts with the descriptor remembered next (or one of the
    /// [`ParseMemo::LOOKAHEAD`] after it): its length, kind byte and unit.
    #[inline(always)]
    pub(super) fn recall(&mut self, rest: &[u8]) -> Option<(usize, u8, Unit)> {
        let last = self.batch.series.len().min(self.next + 1 + LOOKAHEAD);
        for i in self.next..last {
            let (known, kind, unit) = self.batch.get(i);
            if rest.get(..known.len()) == Some(known) {
                self.exact &= i == self.next;
                self.next = i + 1;
                self.hits += 1;
                return Some((known.len(), kind, unit));
            }
        }
        self.exact = false;
        None
    }

    /// Ends the walk: which batch of the memo it was, whether that one should stay as it is
    /// for a batch of `series` series, and how many series it recognised. It stays when it
    /// recognised at least seven in eight: it is then the sender's batch with some series
    /// idle or new, and the idle ones come back.
    pub(super) fn finish(self, series: usize) -> (usize, bool, u64) {
        let keep = (self.exact && series == self.batch.series.len())
            || self.hits.saturating_mul(8) >= (series as u64).saturating_mul(7);
        (self.picked, keep, self.hits)
    }
}

impl ParseMemo {
    /// Most descriptor bytes one memo keeps, over all its batches (256 KiB, about 4,000
    /// series of three labels): a connection never holds more for it.
    pub const MAX_BYTES: usize = 256 * 1024;
    /// Most batches one memo keeps (of an SDK flush that splits into more batches than this,
    /// or whose descriptors take more than [`ParseMemo::MAX_BYTES`], the batches remembered
    /// first are recognised, the others checked in full).
    pub const BATCHES: usize = 16;
    /// How far into a remembered batch a new batch's first series is looked for: when series
    /// of an earlier batch of the same flush were idle, the split between batches moves by as
    /// many series. (Also the agent's slot cache's, which walks the same batches.)
    pub const PICK_WINDOW: usize = 32;
    /// How many remembered series after the expected one are also tried: series idle this
    /// interval are left out of a batch (a route with no traffic leaves a few in a row). Tried
    /// only after a miss, which the steady state does not have.
    pub const LOOKAHEAD: usize = 16;
    /// Uses (parses) after which a remembered batch that was not used may make room for
    /// another.
    pub const STALE_AFTER: u64 = 64;

    /// An empty memo: the first batch is parsed in full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of series remembered, over all batches.
    pub fn len(&self) -> usize {
        self.batches.iter().map(|b| b.series.len()).sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Series the parses given this memo recognised, so far: not checked again.
    pub fn recalled(&self) -> u64 {
        self.recalled
    }

    /// Number of batches remembered.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Bytes the memo holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.batches.capacity() * std::mem::size_of::<Remembered>()
            + self
                .batches
                .iter()
                .map(|b| {
                    b.bytes.capacity()
                        + b.series.capacity() * std::mem::size_of::<(u32, u8, Unit)>()
                })
                .sum::<usize>()
    }

    /// The remembered batch whose first descriptor `first` (the bytes of a batch from its
    /// first series on) starts with, to walk beside the batch being parsed.
    pub(super) fn pick(&mut self, first: &[u8]) -> Option<Recall<'_>> {
        self.clock += 1;
        let (picked, at) = self.batches.iter().enumerate().find_map(|(i, b)| {
            (0..b.series.len().min(PICK_WINDOW))
                .find(|&j| first.starts_with(b.get(j).0))
                .map(|j| (i, j))
        })?;
        let batch = &mut self.batches[picked];
        batch.used = self.clock;
        Some(Recall {
            batch,
            next: at,
            exact: at == 0,
            hits: 0,
            picked,
        })
    }

    /// Remembers the descriptors of a batch that parsed without error, given as (bytes,
    /// kind byte, unit) in batch order, in place of the batch it was walked beside
    /// (`picked`), or of the least recently used one.
    pub(super) fn remember<'a>(
        &mut self,
        picked: Option<usize>,
        descriptors: impl ExactSizeIterator<Item = (&'a [u8], u8, Unit)> + Clone,
    ) {
        self.clock += 1;
        if descriptors.len() == 0 {
            return;
        }
        let total: usize = descriptors.clone().map(|(d, _, _)| d.len()).sum();
        if total > Self::MAX_BYTES {
            return;
        }
        if let Some(i) = picked {
            self.forget(i);
        }
        while self.batches.len() >= Self::BATCHES || self.bytes + total > Self::MAX_BYTES {
            // Only a batch unused for a while makes room: a sender cycling through more
            // batches than fit would otherwise push out each one just before it comes back,
            // and none would ever be recognised. Else this one is not remembered.
            let stale = (0..self.batches.len())
                .min_by_key(|&i| self.batches[i].used)
                .filter(|&i| self.clock - self.batches[i].used >= STALE_AFTER);
            match stale {
                Some(i) => self.forget(i),
                None => return,
            }
        }
        let mut batch = Remembered {
            bytes: Vec::with_capacity(total),
            series: Vec::with_capacity(descriptors.len()),
            used: self.clock,
        };
        for (d, kind, unit) in descriptors {
            batch.bytes.extend_from_slice(d);
            // At most MAX_BYTES: fits in u32.
            batch.series.push((batch.bytes.len() as u32, kind, unit));
        }
        self.bytes += total;
        self.batches.push(batch);
    }

    /// Counts the series a parse recognised.
    pub(super) fn count_recalled(&mut self, hits: u64) {
        self.recalled += hits;
    }

    fn forget(&mut self, i: usize) {
        let gone = self.batches.swap_remove(i);
        self.bytes -= gone.bytes.len();
    }
}
