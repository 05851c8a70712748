//! Data waiting for the agent: deltas still being merged ("open"), and sealed batches that
//! carry a sequence number and wait for their ack. Bounded in bytes; past the bound the oldest
//! data goes first and every sample of it is counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::collect::Delta;
use crate::registry::SeriesEntry;
use crate::wire::{
    hdr_counts_len, BatchHead, DropReport, Encoder, Limits, ProcessIdentity, SeriesRef,
};

/// Most series in one batch (the decoder accepts 100,000; smaller frames keep a resend cheap).
const MAX_SERIES_PER_BATCH: usize = 5_000;
/// Most estimated bytes in one batch (frames stay far below the decoder's 16 MiB).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Encodes `deltas` into one `Batch` frame appended to `out`, as a sealed batch is encoded.
#[cfg(feature = "testing")]
pub(crate) fn encode_deltas(
    encoder: &mut Encoder,
    head: &BatchHead<'_>,
    deltas: &[(Arc<SeriesEntry>, Delta)],
    out: &mut Vec<u8>,
) -> Result<(), crate::wire::EncodeError> {
    let series = deltas.iter().map(|(e, d)| SeriesRef {
        name: &e.name,
        unit: e.unit,
        labels: &e.labels,
        value: d.as_value_ref(),
    });
    encoder.encode(head, series, out)
}

/// Histogram counters the agent's decoder allocates for `d` (what its
/// `max_histogram_counts_per_batch` budget bounds).
fn decode_counts(d: &Delta) -> u64 {
    d.histograms()
        .map(|h| hdr_counts_len(1, h.high(), h.sigfig()).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add)
}

/// A batch with its sequence number, encoded once and sent (again) as is until acked.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub(crate) sequence: u64,
    pub(crate) frame: Vec<u8>,
    pub(crate) samples: u64,
    pub(crate) sent: bool,
}

#[derive(Debug, Default)]
struct Open {
    series: HashMap<usize, (Arc<SeriesEntry>, Delta, usize)>,
    start_ms: Option<u64>,
    end_ms: u64,
    est_bytes: usize,
    samples: u64,
}

/// Everything not yet acknowledged by the agent.
#[derive(Debug)]
pub(crate) struct Outbox {
    identity: ProcessIdentity,
    next_sequence: u64,
    open: Open,
    queue: VecDeque<Sealed>,
    queued_bytes: usize,
    max_bytes: usize,
    drops: DropReport,
    last_sealed_drops: Option<DropReport>,
    encoder: Encoder,
}

/// Estimated encoded size of one series (exact sizes are known once sealed).
fn estimate(e: &SeriesEntry, v: &Delta) -> usize {
    let key = e.name.len()
        + e.labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    // A V2 body holds one varint per non-zero counter and one per run of zeros.
    let hist = |h: &crate::record::Sparse| 56 + 4 * h.counts.len();
    key + 8
        + match v {
            Delta::Counter(_) => 10,
            Delta::Gauge { .. } => 34,
            Delta::Histogram { counts, .. } => 8 + hist(counts),
            Delta::Event { values, .. } => 10 + values.as_ref().map_or(0, |(_, h)| hist(h)),
        }
}

impl Outbox {
    pub(crate) fn new(identity: ProcessIdentity, max_bytes: usize) -> Self {
        Outbox {
            identity,
            next_sequence: 1,
            open: Open::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_bytes,
            drops: DropReport::default(),
            last_sealed_drops: None,
            encoder: Encoder::new(),
        }
    }

    /// Merges one interval's deltas into the open data.
    pub(crate) fn merge(
        &mut self,
        deltas: Vec<(Arc<SeriesEntry>, Delta)>,
        start_ms: u64,
        end_ms: u64,
    ) {
        if deltas.is_empty() {
            return;
        }
        let open = &mut self.open;
        open.start_ms.get_or_insert(start_ms);
        open.end_ms = end_ms;
        for (entry, value) in deltas {
            open.samples = open.samples.saturating_add(value.samples());
            let key = Arc::as_ptr(&entry) as usize;
            match open.series.get_mut(&key) {
                Some((e, v, est)) => {
                    v.merge(value);
                    let new = estimate(e, v);
                    open.est_bytes = open.est_bytes + new - *est;
                    *est = new;
                }
                None => {
                    let est = estimate(&entry, &value);
                    open.est_bytes += est;
                    open.series.insert(key, (entry, value, est));
                }
            }
        }
    }

    /// Estimated bytes of the open data.
    pub(crate) fn open_bytes(&self) -> usize {
        self.open.est_bytes
    }

    /// Bytes kept in total: sealed frames plus the open estimate.
    pub(crate) fn total_bytes(&self) -> usize {
        self.queued_bytes + self.open.est_bytes
    }

    /// Sealed batches not yet acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.queue.len()
    }

    /// Nothing left to send or to wait for.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.open.series.is_empty()
    }

    /// Samples in everything not yet acknowledged.
    pub(crate) fn pending_samples(&self) -> u64 {
        // Saturating throughout: a counter's samples are its value, which a caller may
        // push to u64::MAX.
        self.queue
            .iter()
            .fold(self.open.samples, |n, s| n.saturating_add(s.samples))
    }

    /// Cumulative drops so far (without label overflows, which the registry counts).
    pub(crate) fn drops(&self) -> DropReport {
        self.drops
    }

    /// Seals the open data into batches with the next sequence numbers. Also seals an empty
    /// batch when the drop report changed since the last batch, so the agent always learns
    /// about drops. Returns how many batches were sealed.
    pub(crate) fn seal(&mut self, label_overflows: u64, now_ms: u64) -> usize {
        let drops = DropReport {
            label_overflows,
            ..self.drops
        };
        let open = std::mem::take(&mut self.open);
        if open.series.is_empty() && self.last_sealed_drops == Some(drops) {
            return 0;
        }
        let start = open.start_ms.unwrap_or(now_ms);
        let end_ms = if open.start_ms.is_some() {
            open.end_ms
        } else {
            now_ms
        };
        // Split so that no batch exceeds what the agent's decoder accepts by default:
        // series, bytes, and the histogram counters decoding allocates.
        let max_counts = Limits::default().max_histogram_counts_per_batch;
        // Series go out in one order flush after flush (by their registry entry's address,
        // fixed for a series' life), not in the open map's order, which is new with every map:
        // the agent recognises a sender's series by where they were in its last batches
        // (`wire::ParseMemo`, the aggregator's slot cache) and checks the rest in full.
        let mut entries: Vec<_> = open.series.into_values().collect();
        entries.sort_unstable_by_key(|(entry, _, _)| Arc::as_ptr(entry) as usize);
        let mut sealed = 0;
        let mut first = 0;
        while first < entries.len() || sealed == 0 {
            let (mut end, mut bytes, mut counts) = (first, 0usize, 0u64);
            while let Some((_, d, est)) = entries.get(end) {
                let c = decode_counts(d);
                if end > first
                    && (end - first >= MAX_SERIES_PER_BATCH
                        || bytes + est > MAX_BATCH_BYTES
                        || counts.saturating_add(c) > max_counts)
                {
                    break;
                }
                bytes += est;
                counts = counts.saturating_add(c);
                end += 1;
            }
            self.seal_one(&entries[first..end], start, end_ms, drops);
            first = end;
            sealed += 1;
        }
        self.last_sealed_drops = Some(drops);
        sealed
    }

    fn seal_one(
        &mut self,
        series: &[(Arc<SeriesEntry>, Delta, usize)],
        start: u64,
        end: u64,
        drops: DropReport,
    ) {
        let head = BatchHead {
            process: &self.identity,
            sequence: self.next_sequence,
            start_unix_ms: start,
            end_unix_ms: end,
            drops,
        };
        let samples = series
            .iter()
            .fold(0u64, |n, (_, d, _)| n.saturating_add(d.samples()));
        let refs = series.iter().map(|(e, d, _)| SeriesRef {
            name: &e.name,
            unit: e.unit,
            labels: &e.labels,
            value: d.as_value_ref(),
        });
        let mut frame = Vec::new();
        match self.encoder.encode(&head, refs, &mut frame) {
            Ok(()) => {
                self.queued_bytes += frame.len();
                self.queue.push_back(Sealed {
                    sequence: self.next_sequence,
                    frame,
                    samples,
                    sent: false,
                });
                self.next_sequence += 1;
            }
            // Encoding only fails on a count above i64::MAX or a payload past 4 GiB
            // (impossible with the per-batch caps); the samples are counted, not lost silently.
            Err(_) => {
                self.drops.dropped_samples = self.drops.dropped_samples.saturating_add(samples);
                self.drops.dropped_batches += 1;
            }
        }
    }

    /// Drops the oldest data until the total fits `max_bytes`: sealed batches first (oldest
    /// first), then, if one interval alone exceeds the bound, the open data. Every sample
    /// dropped is counted in the cumulative drop report.
    pub(crate) fn enforce_bound(&mut self) {
        while self.total_bytes() > self.max_bytes {
            if let Some(old) = self.queue.pop_front() {
                self.queued_bytes -= old.frame.len();
                self.drops.dropped_samples = self.drops.dropped_samples.saturating_add(old.samples);
                self.drops.dropped_batches += 1;
            } else {
                let open = std::mem::take(&mut self.open);
                self.drops.dropped_samples =
                    self.drops.dropped_samples.saturating_add(open.samples);
                break;
            }
        }
    }

    /// Forgets the batch with `sequence`; returns its samples, or `None` if it is not held
    /// (a late ack for a batch already dropped, or a duplicate ack).
    pub(crate) fn ack(&mut self, sequence: u64) -> Option<u64> {
        let i = self.queue.iter().position(|s| s.sequence == sequence)?;
        let s = self.queue.remove(i)?;
        self.queued_bytes -= s.frame.len();
        Some(s.samples)
    }

    /// After a disconnect every unacknowledged batch must be sent again.
    pub(crate) fn mark_all_unsent(&mut self) {
        for s in &mut self.queue {
            s.sent = false;
        }
    }

    /// Sealed batches not sent on the current connection, oldest first.
    pub(crate) fn unsent(&mut self) -> impl Iterator<Item = &mut Sealed> {
        self.queue.iter_mut().filter(|s| !s.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CounterCell, HistogramCell, Layout, ShardCount};
    use crate::registry::CellRef;
    use crate::wire::{decode_batch, Batch, SeriesValue, Unit, HEADER_LEN};

    fn entry(name: &str) -> Arc<SeriesEntry> {
        Arc::new(SeriesEntry {
            name: name.into(),
            unit: Unit::Count,
            labels: vec![],
            cell: CellRef::Counter(Arc::new(CounterCell::new(ShardCount::new(1)))),
        })
    }

    fn decode(s: &Sealed) -> Batch {
        decode_batch(&s.frame[HEADER_LEN..], &Limits::default()).expect("valid frame")
    }

    #[test]
    fn deltas_of_one_series_merge_until_sealed() {
        let mut o = Outbox::new(ProcessIdentity::default(), 1 << 20);
        let e = entry("c");
        o.merge(vec![(e.clone(), Delta::Counter(2))], 10, 20);
        o.merge(vec![(e, Delta::Counter(3))], 20, 30);
        assert_eq!(o.seal(0, 30), 1);
        let b = decode(o.unsent().next().expect("sealed"));
        assert_eq!((b.sequence, b.start_unix_ms, b.end_unix_ms), (1, 10, 30));
        assert_eq!(b.series[0].value, SeriesValue::Counter(5));
        assert_eq!(o.ack(1), Some(5));
        assert!(o.is_empty());
        assert_eq!(o.ack(1), None);
    }

    #[test]
    fn series_go_out_in_the_same_order_flush_after_flush() {
        let mut o = Outbox::new(ProcessIdentity::default(), 1 << 24);
        let series: Vec<_> = (0..200).map(|i| entry(&format!("s{i}"))).collect();
        let mut orders = Vec::new();
        for flush in 0..4u64 {
            // Merged in another order each time, and one flush with a series idle.
            let mut deltas: Vec<_> = series
                .iter()
                .filter(|e| flush != 2 || e.name != "s7")
                .map(|e| (e.clone(), Delta::Counter(1)))
                .collect();
            let k = (flush as usize * 37) % deltas.len();
            deltas.rotate_left(k);
            o.merge(deltas, flush * 10, flush * 10 + 10);
            assert_eq!(o.seal(0, flush * 10 + 10), 1);
            let sealed = o.unsent().last().expect("sealed");
            let names: Vec<String> = decode(sealed).series.into_iter().map(|s| s.name).collect();
            orders.push(names);
            let seq = flush + 1;
            o.ack(seq);
        }
        assert_eq!(orders[0].len(), 200);
        assert_eq!(orders[0], orders[1]);
        assert_eq!(orders[0], orders[3]);
        let without: Vec<String> = orders[0].iter().filter(|n| *n != "s7").cloned().collect();
        assert_eq!(
            orders[2], without,
            "an idle series leaves the others in their order"
        );
    }

    #[test]
    fn past_the_bound_the_oldest_batches_go_and_are_counted() {
        let mut o = Outbox::new(ProcessIdentity::default(), 400);
        let mut recorded = 0;
        for i in 0..20u64 {
            o.merge(
                vec![(entry(&format!("series-{i}")), Delta::Counter(i + 1))],
                i,
                i + 1,
            );
            recorded += i + 1;
            o.seal(0, i + 1);
            o.enforce_bound();
            assert!(o.total_bytes() <= 400);
        }
        let kept: u64 = o.pending_samples();
        assert!(o.drops().dropped_batches > 0);
        assert_eq!(kept + o.drops().dropped_samples, recorded);
        // The newest batch survives and carries the cumulative report of what went before.
        let newest = o.queue.back().expect("kept");
        assert_eq!(decode(newest).sequence, 20);
    }

    #[test]
    fn a_changed_drop_report_is_sealed_even_without_data() {
        let mut o = Outbox::new(ProcessIdentity::default(), 1 << 20);
        assert_eq!(o.seal(0, 1), 1, "the first batch announces the process");
        assert_eq!(o.seal(0, 2), 0);
        assert_eq!(o.seal(3, 3), 1);
        let last = o.queue.back().expect("sealed");
        assert_eq!(decode(last).drops.label_overflows, 3);
    }

    #[test]
    fn large_intervals_split_into_several_batches() {
        let mut o = Outbox::new(ProcessIdentity::default(), 1 << 30);
        let deltas = (0..MAX_SERIES_PER_BATCH + 10)
            .map(|i| (entry(&format!("s{i}")), Delta::Counter(1)))
            .collect();
        o.merge(deltas, 0, 1);
        assert_eq!(o.seal(0, 1), 2);
        let total: usize = o.unsent().map(|s| decode(s).series.len()).sum();
        assert_eq!(total, MAX_SERIES_PER_BATCH + 10);
    }

    #[test]
    fn batches_never_need_more_histogram_counters_than_the_agent_decodes() {
        let mut o = Outbox::new(ProcessIdentity::default(), 1 << 30);
        // Latencies up to ~50 s in ns need ~27k counters each when decoded: 1000 such
        // series need ~6x the default budget of one batch.
        let deltas: Vec<_> = (0..1000u64)
            .map(|i| {
                let cell = HistogramCell::new(ShardCount::new(1), Layout::new(3));
                cell.record_n(1_000 + i, 1);
                cell.record_n(50_000_000_000 + i, 2);
                let counts = cell.take().expect("recorded");
                (
                    entry(&format!("h{i}")),
                    Delta::Histogram { scale: 1.0, counts },
                )
            })
            .collect();
        o.merge(deltas, 0, 1);
        let sealed = o.seal(0, 1);
        assert!(sealed > 1, "split into {sealed} batch(es)");
        let mut samples = 0;
        for s in o.unsent() {
            let b = decode(s); // with the default limits
            samples += b.samples();
        }
        assert_eq!(samples, 3000);
    }
}
