//! Durability: a write-ahead log of accepted batches, so a killed agent loses nothing it acked.
//!
//! Without it the agent acknowledges a batch once it is merged in memory, and a SIGKILL (OOM
//! kill, a crashed host process, an ECS stop past its timeout) loses every sample received but
//! not yet published. With `[durability] dir` set:
//!
//! 1. **Append before ack.** A new batch's raw frame payload is appended to the segment file of
//!    the period it was merged into (`p<period start>-g<generation>.wal`), under the same lock as
//!    the merge, *before* the session answers `Accepted`. With `sync = "every_batch"` the session
//!    also waits for `fdatasync` before answering.
//! 2. **Release after publish.** When the sink reports a period settled (published, or dropped
//!    and counted), its segments are deleted. The CloudWatch sink reports a period settled once
//!    its pending queue (in flight included) has emptied after the period was queued.
//! 3. **Replay at start.** Segments left by a previous run are decoded, de-duplicated by
//!    (`instance_id`, `sequence`), merged into their original periods (so they are published
//!    with their original timestamps) and re-logged under the new generation before the old file
//!    is deleted. The replay seeds the sequence tracker, so an SDK that resends a batch the
//!    previous run logged but had no time to acknowledge is answered `Duplicate`.
//!
//! Bounds: the log never holds more than `max_bytes`. A new batch that would pass it is not
//! merged and not acknowledged: the connection is closed and the SDK keeps the batch and resends
//! it after reconnecting (its own `max_unsent_bytes` bound then applies, counted by the SDK).
//! Every refusal, failed write and replay is counted (`tally_agent_wal_*`).
//!
//! Windows (see `docs/reliability.md`): killed after `PutMetricData` succeeded but before the
//! segment was deleted, the replay publishes that period again (at-least-once); with
//! `sync = "none"` a host crash (not a process crash) can lose what the page cache held.

mod segment;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use thiserror::Error;

use crate::stats::{Counter, Gauge, Stats};
pub use segment::{
    encode_record, read_record, segment_name, RecordRead, SegmentName, RECORD_HEADER,
};

/// `[durability]`: the write-ahead log that lets a killed agent publish what it had acked.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DurabilityConfig {
    /// Directory of the log. Empty (default): no log, a batch is acked once merged in memory
    /// and a killed agent loses what it had not published. In the container image use
    /// `/run/tally/wal` (its only writable directory; mount a volume there).
    pub dir: String,
    /// When appended data is forced to disk: `none` (default: `write()` only; survives the
    /// agent being killed, not the host losing power) or `every_batch` (`fdatasync` before each
    /// ack; survives a host crash when the directory is on persistent storage).
    pub sync: SyncPolicy,
    /// Most bytes the log may hold. Past it new batches are refused (not acked) until published
    /// periods free room. Default 512 MiB.
    pub max_bytes: u64,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            dir: String::new(),
            sync: SyncPolicy::None,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

impl DurabilityConfig {
    /// Whether the log is on.
    pub fn enabled(&self) -> bool {
        !self.dir.is_empty()
    }

    /// Problems with the values, each naming the key to fix.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.enabled() && self.max_bytes < 1024 * 1024 {
            errs.push(format!(
                "durability.max_bytes = {} is too small: use at least 1048576 (1 MiB), and more than a period's worth of frames",
                self.max_bytes
            ));
        }
        errs
    }
}

/// When appended records are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// `write()` only: the data is in the kernel's page cache, which outlives the agent process
    /// (SIGKILL, panic, OOM kill) but not the host.
    #[default]
    None,
    /// `fdatasync` before acknowledging each batch (concurrent sessions share the flushes).
    EveryBatch,
}

/// Why the log could not be opened or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WalError {
    /// The directory could not be created or read.
    #[error("cannot use durability.dir {dir}: {source} (create it writable for the agent's user, or change durability.dir; set it to \"\" to run without the write-ahead log)")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error("durability.dir {dir} is in use by another tally-agent (its LOCK file is held): give every agent its own directory")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A segment could not be read, written or deleted.
    #[error("write-ahead log segment {path}: {source} (check free space and permissions of durability.dir)")]
    Segment {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

struct Segment {
    path: PathBuf,
    /// Open while the period may still receive batches.
    file: Option<Arc<File>>,
    bytes: u64,
}

struct State {
    /// Segments of this generation by period start (Unix seconds).
    segments: BTreeMap<u64, Segment>,
    /// Bytes of every segment on disk (old generations still being replayed included).
    bytes: u64,
    /// Period starts handed to the sink, oldest first, not yet settled.
    handed_off: VecDeque<u64>,
    /// Periods the sink reported settled so far (its running count).
    settled: u64,
    buf: Vec<u8>,
}

#[derive(Clone)]
struct WalStats {
    appended_batches: Counter,
    appended_bytes: Counter,
    refused_full: Counter,
    write_errors: Counter,
    syncs: Counter,
    replayed_batches: Counter,
    replayed_duplicates: Counter,
    corrupt_records: Counter,
    released_segments: Counter,
    bytes: Gauge,
    segments: Gauge,
}

impl WalStats {
    fn new(stats: &Stats) -> Self {
        WalStats {
            appended_batches: stats.counter(
                "tally_agent_wal_appended_batches_total",
                "Batches written to the write-ahead log before being acknowledged.",
                &[],
            ),
            appended_bytes: stats.counter(
                "tally_agent_wal_appended_bytes_total",
                "Bytes written to the write-ahead log (record headers included).",
                &[],
            ),
            refused_full: stats.counter(
                "tally_agent_wal_refused_batches_total",
                "Batches not acknowledged because the write-ahead log was at durability.max_bytes (the SDK resends them).",
                &[("reason", "max_bytes")],
            ),
            write_errors: stats.counter(
                "tally_agent_wal_write_errors_total",
                "Batches merged and acknowledged although writing them to the log failed (not protected against a crash).",
                &[],
            ),
            syncs: stats.counter(
                "tally_agent_wal_syncs_total",
                "fdatasync calls on write-ahead log segments.",
                &[],
            ),
            replayed_batches: stats.counter(
                "tally_agent_wal_replayed_batches_total",
                "Batches read back from the write-ahead log at start and merged again.",
                &[],
            ),
            replayed_duplicates: stats.counter(
                "tally_agent_wal_replayed_duplicates_total",
                "Records skipped at replay because the same (instance, sequence) was already replayed.",
                &[],
            ),
            corrupt_records: stats.counter(
                "tally_agent_wal_corrupt_records_total",
                "Torn or corrupt records found at replay (never acknowledged: a write cut short by a crash).",
                &[],
            ),
            released_segments: stats.counter(
                "tally_agent_wal_released_segments_total",
                "Segments deleted because their period was published or counted as dropped.",
                &[],
            ),
            bytes: stats.gauge(
                "tally_agent_wal_bytes",
                "Bytes held by the write-ahead log.",
                &[],
            ),
            segments: stats.gauge(
                "tally_agent_wal_segments",
                "Segment files of the write-ahead log (one per period not yet published).",
                &[],
            ),
        }
    }
}

/// The write-ahead log. Shared (`Arc`) by the intake, which appends, and the runtime, which
/// releases published periods.
pub struct Wal {
    dir: PathBuf,
    generation: u64,
    sync: SyncPolicy,
    max_bytes: u64,
    state: Mutex<State>,
    stats: WalStats,
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Segments a previous run left, to replay at start (oldest period first).
#[derive(Debug)]
pub struct Leftovers {
    segments: Vec<SegmentName>,
}

impl Leftovers {
    /// Start (Unix seconds) of the oldest period left, if any.
    pub fn oldest_period(&self) -> Option<u64> {
        self.segments.iter().map(|s| s.period_start).min()
    }

    /// Number of segment files left.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether nothing was left.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// A batch has no room in the log: do not acknowledge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Wal {
    /// Opens (creating) the directory, takes its lock and lists what a previous run left.
    pub fn open(
        config: &DurabilityConfig,
        stats: &Stats,
    ) -> Result<(Arc<Wal>, Leftovers), WalError> {
        let dir = PathBuf::from(&config.dir);
        let dir_err = |source| WalError::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(dir_err)?;
        // SAFETY: flock(2) on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(WalError::Locked { dir });
        }
        let mut segments = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(seg) = SegmentName::parse(&name.to_string_lossy(), entry.path()) else {
                continue;
            };
            bytes += entry.metadata().map_err(dir_err)?.len();
            segments.push(seg);
        }
        segments.sort_by_key(|s| (s.period_start, s.generation));
        let generation = segments.iter().map(|s| s.generation).max().unwrap_or(0) + 1;
        let stats = WalStats::new(stats);
        stats.bytes.set(bytes as i64);
        stats.segments.set(segments.len() as i64);
        let wal = Wal {
            dir,
            generation,
            sync: config.sync,
            max_bytes: config.max_bytes,
            state: Mutex::new(State {
                segments: BTreeMap::new(),
                bytes,
                handed_off: VecDeque::new(),
                settled: 0,
                buf: Vec::new(),
            }),
            stats,
            _lock: lock,
        };
        Ok((Arc::new(wal), Leftovers { segments }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the log holds now (what the tests check the accounting by).
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Checks that a payload of `len` bytes fits under `max_bytes`; counts the refusal if not.
    pub fn check_room(&self, len: usize) -> Result<(), Full> {
        let need = (RECORD_HEADER + len) as u64;
        if self.state.lock().bytes + need > self.max_bytes {
            self.stats.refused_full.inc();
            return Err(Full);
        }
        Ok(())
    }

    /// Appends one batch's payload to the segment of `period_start`. Returns the file to
    /// `fdatasync` before acknowledging when the policy asks for it.
    pub fn append(&self, period_start: u64, payload: &[u8]) -> Result<Option<Arc<File>>, WalError> {
        let out = self.append_inner(period_start, payload);
        if out.is_err() {
            self.stats.write_errors.inc();
        }
        out
    }

    fn append_inner(
        &self,
        period_start: u64,
        payload: &[u8],
    ) -> Result<Option<Arc<File>>, WalError> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let seg = match st.segments.entry(period_start) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let path = self.dir.join(segment_name(period_start, self.generation));
                let file = File::options()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| WalError::Segment {
                        path: path.clone(),
                        source,
                    })?;
                self.stats.segments.add(1);
                e.insert(Segment {
                    path,
                    file: Some(Arc::new(file)),
                    bytes: 0,
                })
            }
        };
        let Some(file) = seg.file.clone() else {
            // The period was already handed off: cannot happen while merges and closes share
            // the intake lock; refuse to write into a segment that may be deleted any moment.
            return Err(WalError::Segment {
                path: seg.path.clone(),
                source: std::io::Error::other("period already closed"),
            });
        };
        encode_record(payload, &mut st.buf);
        if let Err(source) = (&*file).write_all(&st.buf) {
            // Part of the record may be in the file (a full disk takes what fits): cut it
            // back to the last whole record, or every record appended after the fragment
            // would be unreadable at replay. If even that fails, the segment takes no more
            // records: later batches of its period are merged unprotected (and logged so).
            if let Err(e) = file.set_len(seg.bytes) {
                tracing::error!(path = %seg.path.display(), error = %e, "could not cut a failed write out of a write-ahead log segment; it takes no more records");
                seg.file = None;
            }
            return Err(WalError::Segment {
                path: seg.path.clone(),
                source,
            });
        }
        let n = st.buf.len() as u64;
        seg.bytes += n;
        st.bytes += n;
        self.stats.bytes.set(st.bytes as i64);
        self.stats.appended_batches.inc();
        self.stats.appended_bytes.add(n);
        Ok((self.sync == SyncPolicy::EveryBatch).then_some(file))
    }

    /// Forces a segment to disk (call outside any lock; blocking).
    pub fn sync_file(&self, file: &File) -> std::io::Result<()> {
        self.stats.syncs.inc();
        file.sync_data()
    }

    /// Records that the period starting at `period_start` went to the sink (in order); its
    /// segment is closed for writing.
    pub fn handed_off(&self, period_start: u64) {
        let mut st = self.state.lock();
        if let Some(seg) = st.segments.get_mut(&period_start) {
            seg.file = None;
        }
        st.handed_off.push_back(period_start);
    }

    /// The sink has settled `count` periods in total (its running count, in hand-off order):
    /// deletes the segments of the newly settled ones.
    pub fn settle(&self, count: u64) {
        let starts: Vec<u64> = {
            let mut st = self.state.lock();
            let mut out = Vec::new();
            while st.settled < count {
                st.settled += 1;
                if let Some(s) = st.handed_off.pop_front() {
                    out.push(s);
                }
            }
            out
        };
        for s in starts {
            self.release(s);
        }
    }

    /// Deletes the segment of a period that is published or whose loss is counted.
    pub fn release(&self, period_start: u64) {
        let seg = {
            let mut st = self.state.lock();
            let Some(seg) = st.segments.remove(&period_start) else {
                return;
            };
            st.bytes -= seg.bytes;
            self.stats.bytes.set(st.bytes as i64);
            seg
        };
        self.stats.segments.add(-1);
        self.stats.released_segments.inc();
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::error!(path = %seg.path.display(), error = %e, "could not delete a published write-ahead log segment; the next start will publish it again (check permissions of durability.dir)");
        }
    }

    /// Forces every open segment of this generation to disk (replay, before deleting the
    /// segments it copied).
    fn sync_all(&self) -> Result<(), WalError> {
        let files: Vec<(PathBuf, Arc<File>)> = self
            .state
            .lock()
            .segments
            .values()
            .filter_map(|s| s.file.clone().map(|f| (s.path.clone(), f)))
            .collect();
        for (path, f) in files {
            self.sync_file(&f)
                .map_err(|source| WalError::Segment { path, source })?;
        }
        Ok(())
    }

    /// The lowest sequence each process has in the log a previous run left, read segment by
    /// segment (one file in memory at a time). Replay seeds the sequence tracker with it, so
    /// that a batch logged after a higher one of its process (a gap filled late) is not taken
    /// for a duplicate of something merged before.
    pub fn first_sequences(
        &self,
        leftovers: &Leftovers,
    ) -> Result<std::collections::HashMap<u64, u64>, WalError> {
        let mut first = std::collections::HashMap::new();
        for seg in &leftovers.segments {
            let data = std::fs::read(&seg.path).map_err(|source| WalError::Segment {
                path: seg.path.clone(),
                source,
            })?;
            let mut pos = 0;
            while let RecordRead::Record(payload) = read_record(&data, &mut pos) {
                if let Some((id, seq)) = segment::batch_key(payload) {
                    first
                        .entry(id)
                        .and_modify(|s: &mut u64| *s = (*s).min(seq))
                        .or_insert(seq);
                }
            }
        }
        Ok(first)
    }

    /// Replays what a previous run left: every record is handed to `merge` (oldest period
    /// first, in append order, duplicates skipped), which merges and re-logs it under this
    /// generation; each old file is deleted once its records are re-logged (and synced, when
    /// the policy asks). Returns the number of batches replayed.
    pub fn replay(
        &self,
        leftovers: Leftovers,
        mut merge: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, WalError> {
        let mut seen = std::collections::HashSet::new();
        let mut replayed = 0;
        for seg in leftovers.segments {
            let write_errors = self.stats.write_errors.get();
            let data = std::fs::read(&seg.path).map_err(|source| WalError::Segment {
                path: seg.path.clone(),
                source,
            })?;
            let size = data.len() as u64;
            let mut pos = 0;
            loop {
                match read_record(&data, &mut pos) {
                    RecordRead::Record(payload) => {
                        if let Some(key) = segment::batch_key(payload) {
                            if !seen.insert(key) {
                                self.stats.replayed_duplicates.inc();
                                continue;
                            }
                        }
                        if merge(payload) {
                            replayed += 1;
                            self.stats.replayed_batches.inc();
                        }
                    }
                    RecordRead::End => break,
                    RecordRead::Corrupt => {
                        self.stats.corrupt_records.inc();
                        tracing::warn!(
                            path = %seg.path.display(),
                            offset = pos,
                            "write-ahead log segment ends with a torn or corrupt record (a write cut short by a crash; it was never acknowledged): ignoring the rest of the file"
                        );
                        break;
                    }
                }
            }
            if self.sync == SyncPolicy::EveryBatch {
                self.sync_all()?;
            }
            if self.stats.write_errors.get() != write_errors {
                // Some record did not make it into this generation (a full disk: replay does
                // not check room, so it can need the old and the new copies at once): the old
                // file stays, and the next start replays it again (duplicates are skipped).
                tracing::error!(
                    path = %seg.path.display(),
                    "records of this write-ahead log segment could not be logged again; it is kept for the next start (free space in durability.dir)"
                );
                continue;
            }
            std::fs::remove_file(&seg.path).map_err(|source| WalError::Segment {
                path: seg.path.clone(),
                source,
            })?;
            let mut st = self.state.lock();
            st.bytes -= size.min(st.bytes);
            self.stats.bytes.set(st.bytes as i64);
            self.stats.segments.add(-1);
        }
        Ok(replayed)
    }
}

#[cfg(test)]
mod tests;
