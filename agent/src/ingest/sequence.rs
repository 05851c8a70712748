//! Per-process sequence tracking: duplicates recognised, gaps counted as loss.
//!
//! Every SDK process numbers its batches 1, 2, 3, ... and sends a batch again, with the same
//! number, until it is acknowledged. The tracker remembers, per `instance_id`, the highest
//! sequence merged and which of the [`WINDOW`] sequences below it were merged, so:
//!
//! - a batch already merged is answered `Duplicate` and not counted twice;
//! - a batch that fills a gap late (reordered by a reconnect) is still merged;
//! - a sequence that leaves the window without ever arriving is counted as a lost batch
//!   (`tally_agent_lost_batches_total{reason="sequence_gap"}`), as are the missing sequences of
//!   a process that is forgotten (idle past `aggregate.process_ttl_secs` or evicted when more
//!   than `aggregate.max_processes` are tracked);
//! - a sequence older than the window cannot be told apart from a duplicate: it is refused and
//!   counted (`tally_agent_stale_batches_total`).
//!
//! The first batch seen from a process is taken as its start: an agent that restarts does not
//! count the batches its predecessor merged as lost. The SDK's cumulative drop report is turned
//! into deltas the same way (the first report is counted whole, which may count drops a
//! previous agent already counted: over-counting is preferred to hiding a loss).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tally::wire::DropReport;

/// How many sequences below the highest one are remembered per process.
pub const WINDOW: u64 = 128;

/// What to do with a batch, decided before merging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: merge it, then [`Sequences::commit`].
    New,
    /// Already merged: answer `Duplicate`.
    Duplicate,
    /// Older than the window: refuse and count.
    Stale,
}

#[derive(Debug, Clone)]
struct Process {
    high: u64,
    /// Bit i set: sequence `high - i` was merged.
    seen: u128,
    drops: DropReport,
    last_seen: Instant,
}

/// What committing a batch revealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Commit {
    /// Batches that left the window without arriving (lost).
    pub lost_batches: u64,
    /// Increase of the SDK's drop counters since its previous report.
    pub sdk_drops: DropReport,
    /// Batches lost by processes evicted to make room.
    pub evicted_lost_batches: u64,
}

/// Sequence state of every known SDK process, bounded in size.
#[derive(Debug)]
pub struct Sequences {
    procs: HashMap<u64, Process>,
    max: usize,
    ttl: Duration,
}

fn missing(p: &Process) -> u64 {
    // Only sequences >= 1 exist; the window below a young process is marked seen at start.
    u64::from(p.seen.count_zeros())
}

impl Sequences {
    /// Tracks at most `max` processes, forgetting those silent for `ttl`.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Sequences {
            procs: HashMap::new(),
            max: max.max(1),
            ttl,
        }
    }

    /// Processes tracked (what the tests check the TTL and the bound by).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether no process is tracked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Classifies `seq` of process `id` without recording it.
    pub fn check(&self, id: u64, seq: u64) -> Verdict {
        let Some(p) = self.procs.get(&id) else {
            return Verdict::New;
        };
        if seq > p.high {
            return Verdict::New;
        }
        let d = p.high - seq;
        if d >= WINDOW {
            Verdict::Stale
        } else if p.seen & (1u128 << d) != 0 {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Records that `seq` of process `id` was merged, with the drop report it carried.
    pub fn commit(&mut self, id: u64, seq: u64, drops: DropReport, now: Instant) -> Commit {
        let mut out = Commit::default();
        if !self.procs.contains_key(&id) {
            if self.procs.len() >= self.max {
                out.evicted_lost_batches = self.evict_oldest();
            }
            self.procs.insert(
                id,
                Process {
                    high: seq,
                    seen: u128::MAX,
                    drops: DropReport::default(),
                    last_seen: now,
                },
            );
        }
        let p = self.procs.get_mut(&id).expect("inserted above");
        if seq > p.high {
            let shift = seq - p.high;
            if shift >= WINDOW {
                // At most 128 + (u64::MAX - 1 - WINDOW): cannot overflow.
                out.lost_batches = missing(p) + (shift - WINDOW);
                p.seen = 1;
            } else {
                let leaving = !0u128 << (WINDOW - shift);
                out.lost_batches = u64::from((leaving & !p.seen).count_ones());
                p.seen = (p.seen << shift) | 1;
            }
            p.high = seq;
        } else {
            let d = p.high - seq;
            if d < WINDOW {
                p.seen |= 1u128 << d;
            }
        }
        let prev = p.drops;
        out.sdk_drops = DropReport {
            dropped_samples: drops.dropped_samples.saturating_sub(prev.dropped_samples),
            dropped_batches: drops.dropped_batches.saturating_sub(prev.dropped_batches),
            label_overflows: drops.label_overflows.saturating_sub(prev.label_overflows),
        };
        p.drops = DropReport {
            dropped_samples: prev.dropped_samples.max(drops.dropped_samples),
            dropped_batches: prev.dropped_batches.max(drops.dropped_batches),
            label_overflows: prev.label_overflows.max(drops.label_overflows),
        };
        p.last_seen = now;
        out
    }

    fn evict_oldest(&mut self) -> u64 {
        let oldest = self
            .procs
            .iter()
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(id, _)| *id);
        oldest
            .and_then(|id| self.procs.remove(&id))
            .map_or(0, |p| missing(&p))
    }

    /// Forgets processes silent for longer than the TTL; returns the batches they were missing.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let ttl = self.ttl;
        let mut lost = 0;
        self.procs.retain(|_, p| {
            let keep = now.duration_since(p.last_seen) < ttl;
            if !keep {
                lost += missing(p);
            }
            keep
        });
        lost
    }

    /// Batches currently missing inside the windows (not yet counted as lost).
    #[cfg(test)]
    pub fn missing_in_windows(&self) -> u64 {
        self.procs.values().map(missing).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs() -> Sequences {
        Sequences::new(100, Duration::from_secs(3600))
    }

    #[test]
    fn a_resent_batch_is_recognised_as_a_duplicate() {
        let mut s = seqs();
        let now = Instant::now();
        assert_eq!(s.check(7, 1), Verdict::New);
        s.commit(7, 1, DropReport::default(), now);
        assert_eq!(s.check(7, 1), Verdict::Duplicate);
        assert_eq!(s.check(7, 2), Verdict::New);
        assert_eq!(
            s.check(8, 1),
            Verdict::New,
            "other processes are independent"
        );
    }

    #[test]
    fn a_sequence_jump_to_the_top_of_u64_is_counted_without_overflow() {
        let mut s = seqs();
        let now = Instant::now();
        s.commit(3, 1, DropReport::default(), now);
        s.commit(3, 5, DropReport::default(), now);
        let c = s.commit(3, u64::MAX, DropReport::default(), now);
        // 2, 3 and 4, and every sequence from 6 up to the new window's 127 below u64::MAX
        // (those may still arrive).
        assert_eq!(c.lost_batches, 3 + (u64::MAX - 5 - 128));
        assert_eq!(s.missing_in_windows(), 127);
        assert_eq!(s.check(3, u64::MAX), Verdict::Duplicate);
    }

    #[test]
    fn a_gap_filled_late_is_merged_and_not_counted_as_lost() {
        let mut s = seqs();
        let now = Instant::now();
        s.commit(1, 1, DropReport::default(), now);
        assert_eq!(s.commit(1, 4, DropReport::default(), now).lost_batches, 0);
        assert_eq!(s.missing_in_windows(), 2);
        assert_eq!(s.check(1, 2), Verdict::New);
        s.commit(1, 2, DropReport::default(), now);
        assert_eq!(s.check(1, 2), Verdict::Duplicate);
        assert_eq!(s.missing_in_windows(), 1);
    }

    #[test]
    fn a_gap_that_leaves_the_window_is_counted_as_lost_exactly_once() {
        let mut s = seqs();
        let now = Instant::now();
        s.commit(1, 1, DropReport::default(), now);
        // 2 and 3 never arrive.
        s.commit(1, 4, DropReport::default(), now);
        let mut lost = 0;
        for seq in 5..=(4 + WINDOW) {
            lost += s.commit(1, seq, DropReport::default(), now).lost_batches;
        }
        assert_eq!(lost, 2);
        assert_eq!(s.check(1, 2), Verdict::Stale);
        // A jump far ahead loses the skipped sequences: those below the new window now, the
        // WINDOW - 1 inside it once they leave it.
        let c = s.commit(1, 4 + WINDOW + 1000, DropReport::default(), now);
        assert_eq!(c.lost_batches, 999 - (WINDOW - 1));
        assert_eq!(s.missing_in_windows(), WINDOW - 1);
    }

    #[test]
    fn the_first_batch_of_a_process_starts_its_window_without_counting_loss() {
        let mut s = seqs();
        let c = s.commit(3, 500, DropReport::default(), Instant::now());
        assert_eq!(c.lost_batches, 0);
        assert_eq!(s.missing_in_windows(), 0);
    }

    #[test]
    fn cumulative_drop_reports_become_deltas() {
        let mut s = seqs();
        let now = Instant::now();
        let r = |d, b, l| DropReport {
            dropped_samples: d,
            dropped_batches: b,
            label_overflows: l,
        };
        assert_eq!(s.commit(1, 1, r(5, 1, 2), now).sdk_drops, r(5, 1, 2));
        assert_eq!(s.commit(1, 2, r(7, 1, 2), now).sdk_drops, r(2, 0, 0));
        // A late batch carries an older, smaller report: nothing new, nothing negative.
        s.commit(1, 4, r(9, 2, 2), now);
        assert_eq!(s.commit(1, 3, r(8, 1, 2), now).sdk_drops, r(0, 0, 0));
    }

    #[test]
    fn silent_and_excess_processes_are_forgotten_with_their_missing_batches_counted() {
        let mut s = Sequences::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        s.commit(1, 1, DropReport::default(), t0);
        s.commit(1, 3, DropReport::default(), t0);
        s.commit(2, 1, DropReport::default(), t0 + Duration::from_secs(5));
        let c = s.commit(3, 1, DropReport::default(), t0 + Duration::from_secs(6));
        assert_eq!(c.evicted_lost_batches, 1, "process 1 was missing seq 2");
        assert_eq!(s.len(), 2);
        assert_eq!(s.expire(t0 + Duration::from_secs(30)), 0);
        assert!(s.is_empty());
    }
}
