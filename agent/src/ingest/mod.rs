//! Ingest: SDK connections in, acknowledgements out.
//!
//! [`listen`] accepts TCP and Unix-socket connections (loopback only unless allowed; the socket
//! created with mode 0600 or 0660 with a configured group). Each connection runs a [`session`]:
//! it reads a 12-byte header, checks it with `FrameHeader::parse`, reserves the payload's bytes
//! from a budget shared by all connections (so memory stays bounded however many clients send
//! at once), reads the payload, parses it into a borrowed, fully checked `BatchView` (strings
//! point into the payload buffer, histograms are walked without building them) and hands that
//! to the [`Intake`]. The intake
//! checks the batch's sequence ([`sequence`]), merges it into the aggregator under one lock, and
//! only then does the session answer `Accepted`. Bad frames are counted by
//! `DecodeError::reason()`: a bad header closes the connection (the stream cannot be
//! re-synchronised), a bad payload is answered `Rejected` and the connection goes on.

mod config;
pub mod listen;
pub mod sequence;
pub mod session;

pub use config::IngestConfig;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tally::wire::{AckStatus, BatchView};

use crate::aggregate::{Aggregator, ClosedPeriod};
use crate::durability::{Full, Wal};
use crate::stats::{Counter, DropCounters, DropReason, Stats};
use sequence::{Sequences, Verdict};

struct Core {
    aggregator: Aggregator,
    sequences: Sequences,
    /// Set by [`Intake::close_all`]: the periods are closed for good, so a batch merged now
    /// would land in a period nobody publishes.
    closed: bool,
    /// Batches merged and logged whose `fdatasync` failed (`durability.sync = "every_batch"`),
    /// with their segment: not acknowledged, so the SDK resends them, and a resend must be
    /// synced again before it may hear `Duplicate`. At most [`MAX_NOT_DURABLE`].
    not_durable: HashMap<(u64, u64), Arc<std::fs::File>>,
}

/// Most batches remembered as merged but not yet on disk; past it one is forgotten (its
/// resend is answered `Duplicate` without a new sync, and a warning says so).
const MAX_NOT_DURABLE: usize = 4096;

struct IntakeStats {
    drops: DropCounters,
    undecodable_replay: Counter,
    accepted: Counter,
    duplicate: Counter,
    rejected: Counter,
    stale: Counter,
    lost_batches: Counter,
    late_batches: Counter,
    sdk_dropped_samples: Counter,
    sdk_dropped_batches: Counter,
    sdk_label_overflows: Counter,
}

/// The shared merge point of every connection: sequence check + aggregation under one lock.
#[derive(Clone)]
pub struct Intake {
    core: Arc<Mutex<Core>>,
    stats: Arc<IntakeStats>,
    wal: Option<Arc<Wal>>,
}

/// How to answer a frame once the intake has dealt with it (see [`Intake::accept_frame`]).
#[derive(Debug)]
pub enum FrameOutcome {
    /// Answer with this status (after forcing `sync` to disk, when given).
    Ack {
        /// The status.
        status: AckStatus,
        /// A write-ahead log segment to `fdatasync` before answering.
        sync: Option<Arc<std::fs::File>>,
    },
    /// The write-ahead log is full: do not answer; close the connection so the SDK keeps
    /// the batch and resends it later.
    Refuse,
    /// The agent is shutting down and its periods are closed: the batch is neither merged
    /// nor answered, so the SDK keeps it and resends it to the next agent.
    Closed,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

const BATCHES_HELP: &str = "Batches received, by outcome (accepted, duplicate, rejected, stale).";

impl Intake {
    /// Wraps an aggregator and a sequence tracker.
    pub fn new(aggregator: Aggregator, sequences: Sequences, stats: &Stats) -> Self {
        let b = |outcome| {
            stats.counter(
                "tally_agent_batches_total",
                BATCHES_HELP,
                &[("outcome", outcome)],
            )
        };
        let s = IntakeStats {
            drops: stats.drop_counters(),
            undecodable_replay: stats.counter(
                "tally_agent_wal_undecodable_batches_total",
                "Logged batches that no longer decode at replay (lost; were the [ingest] limits lowered?).",
                &[],
            ),
            accepted: b("accepted"),
            duplicate: b("duplicate"),
            rejected: b("rejected"),
            stale: b("stale"),
            lost_batches: stats.counter(
                "tally_agent_lost_batches_total",
                "Batches that never arrived (sequence gaps the SDK did not report dropping), by reason.",
                &[("reason", "sequence_gap")],
            ),
            late_batches: stats.counter(
                "tally_agent_late_batches_total",
                "Batches counted in tally_agent_lost_batches_total that arrived after all and were merged.",
                &[],
            ),
            sdk_dropped_samples: stats.counter(
                "tally_agent_sdk_dropped_samples_total",
                "Samples the SDKs report they discarded (their unsent-data bound was exceeded).",
                &[],
            ),
            sdk_dropped_batches: stats.counter(
                "tally_agent_sdk_dropped_batches_total",
                "Batches the SDKs report they discarded.",
                &[],
            ),
            sdk_label_overflows: stats.counter(
                "tally_agent_sdk_label_overflows_total",
                "Label values the SDKs folded into the overflow value (recorded, not lost).",
                &[],
            ),
        };
        Intake {
            core: Arc::new(Mutex::new(Core {
                aggregator,
                sequences,
                closed: false,
                not_durable: HashMap::new(),
            })),
            stats: Arc::new(s),
            wal: None,
        }
    }

    /// Logs every new batch accepted through [`Intake::accept_frame`] to `wal` before it is
    /// acknowledged.
    pub fn with_wal(mut self, wal: Arc<Wal>) -> Self {
        self.wal = Some(wal);
        self
    }

    /// The write-ahead log, when durability is on.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// Checks the batch's sequence, merges it, and says how to acknowledge it. When the
    /// write-ahead log is on, appends the frame's `payload` to it (under the merge lock,
    /// before the answer). A batch that finds the log full, or arrives after
    /// [`Intake::close_all`], is neither merged nor answered.
    pub fn accept_frame(&self, batch: &BatchView<'_>, payload: &[u8]) -> FrameOutcome {
        self.accept_logged(batch, Some(payload), true)
    }

    /// Before a replay: starts tracking each process of the log at the lowest sequence it
    /// logged (see [`sequence::Sequences::seed`]), so its batches replay in any order.
    pub fn seed_sequences(&self, first: impl IntoIterator<Item = (u64, u64)>) {
        let now = Instant::now();
        let mut core = self.core.lock();
        for (id, seq) in first {
            core.sequences.seed(id, seq, now);
        }
    }

    /// Remembers that batch `seq` of `id` is merged and logged but its record in `file` could
    /// not be synced: its resend is synced again before it is answered `Duplicate`.
    pub fn not_durable(&self, id: u64, seq: u64, file: Arc<std::fs::File>) {
        let mut core = self.core.lock();
        if core.not_durable.len() >= MAX_NOT_DURABLE && !core.not_durable.contains_key(&(id, seq)) {
            if let Some(k) = core.not_durable.keys().next().copied() {
                core.not_durable.remove(&k);
                tracing::warn!(
                    instance_id = k.0,
                    sequence = k.1,
                    "more than {MAX_NOT_DURABLE} batches wait for a successful fdatasync: this one's resend will be acknowledged without a new sync (check the disk under durability.dir)"
                );
            }
        }
        core.not_durable.insert((id, seq), file);
    }

    /// Batch `seq` of `id` is on disk (its sync, or its resend's, succeeded).
    pub fn durable(&self, id: u64, seq: u64) {
        let mut core = self.core.lock();
        if !core.not_durable.is_empty() {
            core.not_durable.remove(&(id, seq));
        }
    }

    /// Replays a logged batch at start: merged and logged again, never refused for room.
    pub fn replay_frame(&self, batch: &BatchView<'_>, payload: &[u8]) -> AckStatus {
        match self.accept_logged(batch, Some(payload), false) {
            FrameOutcome::Ack { status, .. } => status,
            FrameOutcome::Refuse | FrameOutcome::Closed => {
                unreachable!("replay runs before the listeners start, with room unchecked")
            }
        }
    }

    fn accept_logged(
        &self,
        batch: &BatchView<'_>,
        payload: Option<&[u8]>,
        check_room: bool,
    ) -> FrameOutcome {
        let wal = self.wal.as_deref().zip(payload);
        let id = batch.process.instance_id;
        let seq = batch.sequence;
        let drops = batch.drops;
        let samples = batch.samples();
        let now = SystemTime::now();
        let mut core = self.core.lock();
        if core.closed {
            return FrameOutcome::Closed;
        }
        match core.sequences.check(id, seq) {
            Verdict::Duplicate => {
                self.stats.duplicate.inc();
                FrameOutcome::Ack {
                    status: AckStatus::Duplicate,
                    // Merged, but its record's sync failed: sync again before the answer.
                    sync: core.not_durable.get(&(id, seq)).cloned(),
                }
            }
            Verdict::Stale => {
                self.stats.stale.inc();
                self.count_drop(DropReason::StaleSequence, samples);
                tracing::warn!(
                    instance_id = id,
                    sequence = seq,
                    "batch is older than the sequence window: it may already have been merged, so it is refused and counted"
                );
                FrameOutcome::Ack {
                    status: AckStatus::Rejected,
                    sync: None,
                }
            }
            Verdict::New => {
                if let Some((wal, payload)) = wal.filter(|_| check_room) {
                    if wal.check_room(payload.len()) == Err(Full) {
                        return FrameOutcome::Refuse;
                    }
                }
                let merged = core.aggregator.merge(batch, now);
                let mut sync = None;
                if let (Some((wal, payload)), Ok(report)) = (wal, &merged) {
                    match wal.append(report.period_start, payload) {
                        Ok(s) => sync = s,
                        Err(e) => tracing::error!(
                            "{e}; batch {seq} of instance {id} is merged and acknowledged but not protected against a crash"
                        ),
                    }
                }
                let c = core.sequences.commit(id, seq, drops, Instant::now());
                drop(core);
                self.stats
                    .lost_batches
                    .add(c.lost_batches.saturating_add(c.evicted_lost_batches));
                self.stats.late_batches.add(c.late_batches);
                self.stats
                    .sdk_dropped_samples
                    .add(c.sdk_drops.dropped_samples);
                self.stats
                    .sdk_dropped_batches
                    .add(c.sdk_drops.dropped_batches);
                self.stats
                    .sdk_label_overflows
                    .add(c.sdk_drops.label_overflows);
                let status = match merged {
                    Ok(_) => {
                        self.stats.accepted.inc();
                        AckStatus::Accepted
                    }
                    Err(e) => {
                        self.stats.rejected.inc();
                        tracing::warn!(reason = e.reason().as_str(), "batch refused: {e}");
                        AckStatus::Rejected
                    }
                };
                FrameOutcome::Ack { status, sync }
            }
        }
    }

    /// Counts logged batches that could not be decoded at replay (their samples are unknown).
    pub fn count_undecodable_replay(&self, batches: u64) {
        self.stats.rejected.add(batches);
        self.stats.undecodable_replay.add(batches);
    }

    /// Counts a rejected batch whose payload could not be decoded.
    pub fn count_rejected(&self) {
        self.stats.rejected.inc();
    }

    fn count_drop(&self, reason: DropReason, n: u64) {
        self.stats.drops.add(reason, n);
    }

    /// Closes the periods that are due and forgets silent processes. The lock that sessions
    /// merge under is held only to take the due periods out; building their keys (about half
    /// a second at 100k series) happens outside it, so ingest goes on meanwhile.
    pub fn close_due(&self, now: SystemTime) -> Vec<ClosedPeriod> {
        let mut core = self.core.lock();
        let due = core.aggregator.take_due(now);
        let closer = core.aggregator.closer();
        let lost = core.sequences.expire(Instant::now());
        drop(core);
        self.stats.lost_batches.add(lost);
        due.into_iter().map(|d| closer.close(d)).collect()
    }

    /// Closes every open period (shutdown), outside the merge lock like
    /// [`Intake::close_due`]. From then on every batch is answered [`FrameOutcome::Closed`]:
    /// a session that was still reading a frame must not have it acknowledged into a period
    /// that will never be published.
    pub fn close_all(&self) -> Vec<ClosedPeriod> {
        let (due, closer) = {
            let mut core = self.core.lock();
            core.closed = true;
            (core.aggregator.take_all(), core.aggregator.closer())
        };
        due.into_iter().map(|d| closer.close(d)).collect()
    }

    /// When the earliest open period may close.
    pub fn next_close_at(&self) -> Option<SystemTime> {
        self.core.lock().aggregator.next_close_at()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tally::wire::{
        encode_batch, Batch, DropReport, Limits, ProcessIdentity, Series, SeriesValue, Unit,
        HEADER_LEN,
    };

    use super::*;
    use crate::aggregate::Settings;
    use crate::config::Config;

    fn frame(sequence: u64, delta: u64) -> Vec<u8> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let batch = Batch {
            process: ProcessIdentity {
                instance_id: 7,
                pid: 1,
                service: "web".into(),
                environment: "prod".into(),
                host: "h".into(),
            },
            sequence,
            start_unix_ms: now_ms,
            end_unix_ms: now_ms,
            drops: DropReport::default(),
            series: vec![Series {
                name: "RequestCount".into(),
                unit: Unit::Count,
                labels: vec![],
                value: SeriesValue::Counter(delta),
            }],
        };
        let mut out = Vec::new();
        encode_batch(&batch, &mut out).unwrap();
        out.split_off(HEADER_LEN)
    }

    #[test]
    fn a_batch_that_arrives_after_the_shutdown_close_is_not_acknowledged_nor_lost() {
        let stats = Stats::new();
        let aggregator = Aggregator::new(
            Settings::from_config(&Config::default()),
            &stats,
            SystemTime::now(),
        );
        let intake = Intake::new(
            aggregator,
            Sequences::new(16, Duration::from_secs(60)),
            &stats,
        );
        let accept = |seq: u64, delta: u64| {
            let payload = frame(seq, delta);
            let view = BatchView::parse(&payload, &Limits::default()).unwrap();
            intake.accept_frame(&view, &payload)
        };
        assert!(matches!(
            accept(1, 5),
            FrameOutcome::Ack {
                status: AckStatus::Accepted,
                ..
            }
        ));
        let closed = intake.close_all();
        assert_eq!(closed.iter().map(|p| p.samples).sum::<u64>(), 5);
        // A session that was still reading this frame when the periods closed: merging it
        // would put it in a period nobody publishes, so it is left with the SDK.
        assert!(matches!(accept(2, 7), FrameOutcome::Closed));
        assert!(intake.close_all().is_empty());
        let text = stats.render_prometheus();
        assert!(
            text.contains("tally_agent_batches_total{outcome=\"accepted\"} 1"),
            "{text}"
        );
    }
}
