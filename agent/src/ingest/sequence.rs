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
//! - a sequence older than the window is a duplicate when the tracker knows it was merged:
//!   every sequence from the process's first one up that left the window was either merged
//!   or counted lost, and the lost ones are remembered (at most [`GAP_MEMORY`] a process). A
//!   lost one that arrives after all is merged and counted as late
//!   (`tally_agent_late_batches_total`). Only a sequence below the process's first one, or one
//!   the tracker could not remember, is refused and counted (`tally_agent_stale_batches_total`);
//! - a batch the SDK itself dropped (its outbox bound) is reported by the SDK in its cumulative
//!   drop report; the gap it leaves is that same loss, so it is not counted again as a lost
//!   batch: gaps are counted net of the batches the process reported dropping.
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

/// How many lost sequences (gaps that left the window) are remembered per process, so that
/// one arriving late is told apart from a duplicate. Past it the oldest are forgotten, and
/// sequences at or below them are refused as stale again.
pub const GAP_MEMORY: usize = 64;

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
    /// Sequences that left the window without arriving (counted lost), ascending, at most
    /// [`GAP_MEMORY`]. Every other sequence from `known_from` up to below the window was merged.
    gaps: Vec<u64>,
    /// The lowest sequence the tracker knows the fate of: the first one seen, raised past
    /// the gaps it had to forget.
    known_from: u64,
    /// Batches the SDK reported dropping that no gap has matched yet.
    unmatched_sdk_drops: u64,
    /// Whether a drop report of this process was committed (its first is its whole history).
    reported: bool,
}

impl Process {
    /// Counts the gaps that left the window as `n` lost batches, net of the batches the SDK
    /// said it dropped (those are its own, already counted loss).
    fn net_lost(&mut self, n: u64) -> u64 {
        let matched = n.min(self.unmatched_sdk_drops);
        self.unmatched_sdk_drops -= matched;
        n - matched
    }

    /// Remembers that `seq` left the window without arriving.
    fn remember_gap(&mut self, seq: u64) {
        if self.gaps.len() == GAP_MEMORY {
            let forgotten = self.gaps.remove(0);
            self.known_from = self.known_from.max(forgotten.saturating_add(1));
        }
        self.gaps.push(seq);
    }
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
    /// 1 when this batch was counted lost earlier (it left the window) and arrived after all.
    pub late_batches: u64,
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
            if seq < p.known_from {
                // Below the first sequence seen, or among gaps too old to remember.
                Verdict::Stale
            } else if p.gaps.binary_search(&seq).is_ok() {
                // Counted lost when it left the window; merge it after all.
                Verdict::New
            } else {
                Verdict::Duplicate
            }
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
                    gaps: Vec::new(),
                    known_from: seq,
                    unmatched_sdk_drops: 0,
                    reported: false,
                },
            );
        }
        let p = self.procs.get_mut(&id).expect("inserted above");
        // The drop report first: the batches it reports dropped may be the gaps this batch
        // pushes out of the window.
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
        if p.reported {
            // A first report is the process's whole history: its gaps lie before the first
            // sequence seen.
            p.unmatched_sdk_drops = p
                .unmatched_sdk_drops
                .saturating_add(out.sdk_drops.dropped_batches);
        }
        p.reported = true;
        if seq > p.high {
            let shift = seq - p.high;
            let old_high = p.high;
            let lost = if shift >= WINDOW {
                // The window's own gaps, then every sequence skipped over.
                for d in (0..WINDOW).rev() {
                    if p.seen & (1u128 << d) == 0 {
                        p.remember_gap(old_high - d);
                    }
                }
                // Skipped over, below the new window: old_high + 1 ..= seq - WINDOW. Past
                // GAP_MEMORY of them, only the highest are remembered and nothing below them
                // is known any more.
                let highest = seq - WINDOW;
                if highest > old_high {
                    let lowest = (old_high + 1).max(highest.saturating_sub(GAP_MEMORY as u64 - 1));
                    if lowest > old_high + 1 {
                        p.gaps.clear();
                        p.known_from = p.known_from.max(lowest);
                    }
                    for skipped in lowest..=highest {
                        p.remember_gap(skipped);
                    }
                }
                // At most 128 + (u64::MAX - 1 - WINDOW): cannot overflow.
                let n = missing(p) + (shift - WINDOW);
                p.seen = 1;
                n
            } else {
                let leaving = !0u128 << (WINDOW - shift);
                for d in (WINDOW - shift..WINDOW).rev() {
                    if p.seen & (1u128 << d) == 0 {
                        p.remember_gap(old_high - d);
                    }
                }
                let n = u64::from((leaving & !p.seen).count_ones());
                p.seen = (p.seen << shift) | 1;
                n
            };
            out.lost_batches = p.net_lost(lost);
            p.high = seq;
        } else {
            let d = p.high - seq;
            if d < WINDOW {
                p.seen |= 1u128 << d;
            } else if let Ok(i) = p.gaps.binary_search(&seq) {
                p.gaps.remove(i);
                out.late_batches = 1;
            }
        }
        p.last_seen = now;
        out
    }

    /// Starts tracking process `id` at sequence `first` before any of its batches is
    /// committed, as if everything below `first` had been merged: what the write-ahead log's
    /// replay knows of a process (the lowest sequence it logged; everything below was
    /// published, and the SDK holds nothing of it unacknowledged). The logged batches may
    /// then be committed in any order: a gap filled late, logged after a higher sequence, is
    /// not mistaken for a duplicate. Does nothing for a process already tracked, or for
    /// `first == 0`.
    pub fn seed(&mut self, id: u64, first: u64, now: Instant) {
        if first == 0 || self.procs.contains_key(&id) {
            return;
        }
        if self.procs.len() >= self.max {
            // Replay runs before any live traffic: room is there unless max_processes is
            // below the processes in the log, in which case the old behaviour applies.
            return;
        }
        self.procs.insert(
            id,
            Process {
                high: first - 1,
                seen: u128::MAX,
                drops: DropReport::default(),
                last_seen: now,
                gaps: Vec::new(),
                known_from: first,
                unmatched_sdk_drops: 0,
                reported: false,
            },
        );
    }

    fn evict_oldest(&mut self) -> u64 {
        let oldest = self
            .procs
            .iter()
            .min_by_key(|(_, p)| p.last_seen)
            .map(|(id, _)| *id);
        oldest
            .and_then(|id| self.procs.remove(&id))
            .map_or(0, |mut p| {
                let m = missing(&p);
                p.net_lost(m)
            })
    }

    /// Forgets processes silent for longer than the TTL; returns the batches they were missing.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let ttl = self.ttl;
        let mut lost = 0;
        self.procs.retain(|_, p| {
            let keep = now.duration_since(p.last_seen) < ttl;
            if !keep {
                let m = missing(p);
                lost += p.net_lost(m);
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
        // Counted lost, then it arrives after all: merged, and counted as late.
        assert_eq!(s.check(1, 2), Verdict::New);
        assert_eq!(s.commit(1, 2, DropReport::default(), now).late_batches, 1);
        assert_eq!(s.check(1, 2), Verdict::Duplicate);
        assert_eq!(s.check(1, 3), Verdict::New, "3 is still a late gap");
        // A jump far ahead loses the skipped sequences: those below the new window now, the
        // WINDOW - 1 inside it once they leave it.
        let c = s.commit(1, 4 + WINDOW + 1000, DropReport::default(), now);
        assert_eq!(c.lost_batches, 999 - (WINDOW - 1));
        assert_eq!(s.missing_in_windows(), WINDOW - 1);
    }

    #[test]
    fn a_resend_older_than_the_window_of_a_merged_batch_is_a_duplicate_not_stale() {
        // The agent merged 1..=300 but the acks of 10..=20 were lost: the SDK sends them
        // again after reconnecting, 280 sequences back.
        let mut s = seqs();
        let now = Instant::now();
        for seq in 1..=300 {
            assert_eq!(s.commit(1, seq, DropReport::default(), now).lost_batches, 0);
        }
        for seq in 10..=20 {
            assert_eq!(s.check(1, seq), Verdict::Duplicate);
        }
        // Below the first sequence this agent saw, nothing is known.
        let mut t = seqs();
        t.commit(2, 200, DropReport::default(), now);
        t.commit(2, 400, DropReport::default(), now);
        assert_eq!(t.check(2, 199), Verdict::Stale);
    }

    #[test]
    fn gaps_too_many_to_remember_make_older_sequences_stale_again() {
        let mut s = seqs();
        let now = Instant::now();
        s.commit(1, 1, DropReport::default(), now);
        // 2..=1000 skipped: far more than GAP_MEMORY, and then the window moves on.
        let c = s.commit(1, 1001 + WINDOW, DropReport::default(), now);
        // 2..=1001 fell below the new window; 1002.. are still inside it.
        assert_eq!(c.lost_batches, 1000);
        assert_eq!(
            s.check(1, 1),
            Verdict::Stale,
            "below what the tracker remembers"
        );
        assert_eq!(s.check(1, 500), Verdict::Stale);
        assert_eq!(s.check(1, 1001), Verdict::New, "a remembered gap, late");
        assert_eq!(s.check(1, 1001 - GAP_MEMORY as u64), Verdict::Stale);
    }

    #[test]
    fn batches_the_sdk_reports_dropping_are_not_counted_again_as_gaps() {
        let r = |batches| DropReport {
            dropped_samples: 10 * batches,
            dropped_batches: batches,
            label_overflows: 0,
        };
        let mut s = seqs();
        let now = Instant::now();
        s.commit(1, 1, r(0), now);
        // The SDK's outbox dropped 2 and 3 (sequences already given); 4 reports it.
        let c = s.commit(1, 4, r(2), now);
        assert_eq!(c.sdk_drops.dropped_batches, 2);
        let mut lost = 0;
        for seq in 5..=(4 + WINDOW) {
            lost += s.commit(1, seq, r(2), now).lost_batches;
        }
        assert_eq!(lost, 0, "the SDK's own report counted them");
        // A gap the SDK did not report is still lost.
        s.commit(1, 6 + WINDOW, r(2), now);
        let c = s.commit(1, 5 + 2 * WINDOW, r(2), now);
        assert_eq!(c.lost_batches, 1);
    }

    #[test]
    fn a_first_report_of_old_drops_does_not_hide_later_gaps() {
        let mut s = seqs();
        let now = Instant::now();
        // A process that dropped 50 batches before this agent started.
        let old = DropReport {
            dropped_samples: 500,
            dropped_batches: 50,
            label_overflows: 0,
        };
        s.commit(1, 100, old, now);
        s.commit(1, 102, old, now);
        let c = s.commit(1, 102 + WINDOW, old, now);
        assert_eq!(
            c.lost_batches, 1,
            "101 never arrived and no new drop explains it"
        );
    }

    #[test]
    fn a_seeded_process_takes_its_logged_batches_in_any_order() {
        let mut s = seqs();
        let now = Instant::now();
        s.seed(1, 5, now);
        // Logged as 7, then 5 (a gap filled late): replayed in that order.
        assert_eq!(s.check(1, 7), Verdict::New);
        assert_eq!(s.commit(1, 7, DropReport::default(), now).lost_batches, 0);
        assert_eq!(s.check(1, 5), Verdict::New, "not a duplicate");
        s.commit(1, 5, DropReport::default(), now);
        // Below the lowest logged sequence: published by the previous run.
        assert_eq!(s.check(1, 4), Verdict::Duplicate);
        assert_eq!(s.check(1, 6), Verdict::New);
        // Unseeded, the first batch starts the window and 5 looks merged.
        let mut t = seqs();
        t.commit(1, 7, DropReport::default(), now);
        assert_eq!(t.check(1, 5), Verdict::Duplicate);
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
