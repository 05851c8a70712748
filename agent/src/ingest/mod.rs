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

pub mod listen;
pub mod sequence;
pub mod session;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tally::wire::{AckStatus, BatchView};

use crate::aggregate::{Aggregator, ClosedPeriod, DROPPED_SAMPLES};
use crate::stats::{Counter, Stats};
use sequence::{Sequences, Verdict};

struct Core {
    aggregator: Aggregator,
    sequences: Sequences,
}

struct IntakeStats {
    stats: Stats,
    accepted: Counter,
    duplicate: Counter,
    rejected: Counter,
    stale: Counter,
    lost_batches: Counter,
    sdk_dropped_samples: Counter,
    sdk_dropped_batches: Counter,
    sdk_label_overflows: Counter,
}

/// The shared merge point of every connection: sequence check + aggregation under one lock.
#[derive(Clone)]
pub struct Intake {
    core: Arc<Mutex<Core>>,
    stats: Arc<IntakeStats>,
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
            stats: stats.clone(),
            accepted: b("accepted"),
            duplicate: b("duplicate"),
            rejected: b("rejected"),
            stale: b("stale"),
            lost_batches: stats.counter(
                "tally_agent_lost_batches_total",
                "Batches that never arrived (sequence gaps), by reason.",
                &[("reason", "sequence_gap")],
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
            })),
            stats: Arc::new(s),
        }
    }

    /// Checks the batch's sequence, merges it, and says how to acknowledge it.
    pub fn accept(&self, batch: &BatchView<'_>) -> AckStatus {
        let id = batch.process.instance_id;
        let seq = batch.sequence;
        let drops = batch.drops;
        let samples = batch.samples();
        let now = SystemTime::now();
        let mut core = self.core.lock();
        match core.sequences.check(id, seq) {
            Verdict::Duplicate => {
                self.stats.duplicate.inc();
                AckStatus::Duplicate
            }
            Verdict::Stale => {
                self.stats.stale.inc();
                self.count_drop("stale_sequence", samples);
                tracing::warn!(
                    instance_id = id,
                    sequence = seq,
                    "batch is older than the sequence window: it may already have been merged, so it is refused and counted"
                );
                AckStatus::Rejected
            }
            Verdict::New => {
                let merged = core.aggregator.merge(batch, now);
                let c = core.sequences.commit(id, seq, drops, Instant::now());
                drop(core);
                self.stats
                    .lost_batches
                    .add(c.lost_batches + c.evicted_lost_batches);
                self.stats
                    .sdk_dropped_samples
                    .add(c.sdk_drops.dropped_samples);
                self.stats
                    .sdk_dropped_batches
                    .add(c.sdk_drops.dropped_batches);
                self.stats
                    .sdk_label_overflows
                    .add(c.sdk_drops.label_overflows);
                match merged {
                    Ok(_) => {
                        self.stats.accepted.inc();
                        AckStatus::Accepted
                    }
                    Err(e) => {
                        self.stats.rejected.inc();
                        tracing::warn!(reason = e.reason(), "batch refused: {e}");
                        AckStatus::Rejected
                    }
                }
            }
        }
    }

    /// Counts a rejected batch whose payload could not be decoded.
    pub fn count_rejected(&self) {
        self.stats.rejected.inc();
    }

    fn count_drop(&self, reason: &str, n: u64) {
        self.stats
            .stats
            .counter(
                DROPPED_SAMPLES,
                "Samples not published, by reason.",
                &[("reason", reason)],
            )
            .add(n);
    }

    /// Closes the periods that are due and forgets silent processes.
    pub fn close_due(&self, now: SystemTime) -> Vec<ClosedPeriod> {
        let mut core = self.core.lock();
        let out = core.aggregator.close_due(now);
        let lost = core.sequences.expire(Instant::now());
        drop(core);
        self.stats.lost_batches.add(lost);
        out
    }

    /// Closes every open period (shutdown).
    pub fn close_all(&self) -> Vec<ClosedPeriod> {
        self.core.lock().aggregator.close_all()
    }

    /// When the earliest open period may close.
    pub fn next_close_at(&self) -> Option<SystemTime> {
        self.core.lock().aggregator.next_close_at()
    }

    /// Period length in seconds.
    pub fn period_secs(&self) -> u32 {
        self.core.lock().aggregator.settings().period_secs
    }
}
