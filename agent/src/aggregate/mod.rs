//! Aggregation across processes: wall-clock periods, exact merges, rollups, derived metrics.
//!
//! Every accepted batch is merged into the open period its end time falls in (see
//! [`period`]). A series is identified by metric name, recorded unit, `ServiceName`,
//! `Environment` and its full label set. In the open period it is found by the bytes the SDK
//! sent for it (its [`Descriptor`]), grouped by sender identity: merging a known series costs
//! one compare of those bytes with the series expected next in the sender's recent batch
//! that this one began like (a per-sender slot cache: SDKs send their series in one order),
//! or one hash of them when that is another series; its strings are read and checked once
//! per period, when it first appears, and its published key (every dimension, strings
//! interned so that a period shares one copy of each) is built when the period closes
//! (where series that a differently ordered label set kept apart meet again). Counters add,
//! gauges keep
//! last/min/max, and histograms from every process add bucket by bucket, so percentiles of the
//! merged histogram are exactly those of all samples together; a histogram keeps only its
//! non-zero buckets ([`crate::model::sparse`]), about 16 bytes each instead of 8 bytes for every bucket of
//! its range. A period closes `aggregate.grace_ms` after its end; closing converts
//! durations to the publish time unit, adds the configured rollups and derived metrics
//! ([`close`]) and yields one [`PeriodData`] for the sink.
//!
//! Bounds: at most `aggregate.max_series` series per period (further series' samples are
//! dropped and counted, reason `max_series`), and every new series is checked against
//! CloudWatch's naming rules ([`crate::cloudwatch::rules`]) before it is admitted. Nothing is dropped silently:
//! each refusal increments `tally_agent_dropped_samples_total{reason=...}` and logs a
//! rate-limited explanation.

pub mod close;
mod config;
pub mod period;
pub mod revision;
pub mod series;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use tally::conventions::{ENVIRONMENT, SERVICE_NAME};
use tally::wire::{BatchView, Descriptor, HistogramView, ParseMemo, ValueView};

use crate::cloudwatch::rules;
use crate::model::sparse::{Bucket, SparseHistogram};
use crate::model::{AggregateValue, Interner, MetricKey, PeriodData, Text};
use crate::stats::{Counter, DropCounters, DropReason, Gauge, Stats};
use crate::util::RateLimitedLog;
pub use config::{
    AggregateConfig, DeclaredMetric, DerivedConfig, RollupConfig, TimeUnit, MAX_SERIES_LIMIT,
};
use period::Stamp;
use series::Agg;

/// What the aggregator needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// CloudWatch namespace.
    pub namespace: String,
    /// `ServiceName` override (empty: from the batch).
    pub service: String,
    /// `Environment` override (empty: from the batch).
    pub environment: String,
    /// Period length in seconds.
    pub period_secs: u32,
    /// Publish unit for durations.
    pub time_unit: TimeUnit,
    /// Series bound per period.
    pub max_series: usize,
    /// How long a period stays open after its end.
    pub grace: Duration,
    /// Rollups.
    pub rollups: Vec<RollupConfig>,
    /// Derived metrics.
    pub derived: Vec<DerivedConfig>,
    /// Fixed dimensions added to every metric besides ServiceName and Environment (the
    /// `[ecs]` task-metadata dimensions), sorted by name.
    pub extra_dimensions: Vec<(String, String)>,
    /// The per-revision rollup (`[canary] publish_revision`), when on and its value known.
    pub revision: Option<revision::RevisionRollup>,
}

/// Value of the global dimensions when neither the config nor the SDK names them.
pub const UNKNOWN: &str = "unknown";

/// Why a whole batch was refused (its samples are counted as dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchReject {
    /// The batch's service or environment cannot be a CloudWatch dimension value.
    #[error("process identity of pid {pid} cannot be a dimension: {error}; fix the SDK's service/environment or set `service` / `environment` in the agent config")]
    Identity {
        /// Sender pid.
        pid: u32,
        /// The rule broken.
        error: rules::RuleError,
    },
}

impl BatchReject {
    /// What the batch's samples count as.
    pub fn reason(&self) -> DropReason {
        match self {
            BatchReject::Identity { .. } => DropReason::InvalidIdentity,
        }
    }
}

/// A closed period and the number of samples it carries (rollups and derived metrics not
/// counted twice), so a sink-side loss can be counted in samples.
#[derive(Debug, Clone)]
pub struct ClosedPeriod {
    /// The period.
    pub data: PeriodData,
    /// Samples merged into it.
    pub samples: u64,
}

/// What happened to a merged batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Samples merged.
    pub merged: u64,
    /// Samples dropped (counted by reason in the stats).
    pub dropped: u64,
    /// Start (Unix seconds) of the period the batch was merged into.
    pub period_start: u64,
}

/// `ServiceName` and `Environment` of the senders of a group of series.
type Identity = (Box<str>, Box<str>);

/// One identity's series in a period, by descriptor bytes: the series in the order they were
/// admitted, and a hash table of their positions. A position never changes while the period
/// is open, so a sender's [`SlotCache`] can name a series by it.
#[derive(Default)]
struct Group {
    /// Descriptor bytes and value of each series, in admission order.
    slots: Vec<(Box<[u8]>, Slot)>,
    /// Positions in `slots`, hashed by descriptor bytes.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Group {
    /// The position of the series with these descriptor bytes.
    fn find(&self, bytes: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(bytes);
        self.index
            .find(hash, |&i| &*self.slots[i as usize].0 == bytes)
            .copied()
    }

    /// Adds a series absent from the group, returning its position.
    fn insert(&mut self, bytes: &[u8], slot: Slot) -> u32 {
        let at = u32::try_from(self.slots.len()).expect("aggregate.max_series fits in u32");
        let hash = self.hasher.hash_one(bytes);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, at, |&i| hasher.hash_one(&*slots[i as usize].0));
        self.slots.push((bytes.into(), slot));
        at
    }
}

/// Where one sender's series were found in one of its recent batches. An SDK process sends
/// its series in the same order flush after flush (sorted by its registry entries), split
/// into the same few batches when a flush holds more than one batch takes; so the series
/// after the one found at `slots[j]` is most likely the one at `slots[j + 1]`, or a little
/// further on when series were idle and left out. A guess is taken only when the descriptor
/// bytes there are equal (one comparison instead of a hash and a probe); any other series
/// (order changed, a series appeared, a refused series) is looked up in the group's table, so
/// what a batch merges into never depends on the cache. The walk mirrors
/// `tally::wire::ParseMemo`, which recognises the same series during the parse.
#[derive(Default)]
struct SlotCache {
    /// The group the sender's series are in (its position in [`OpenPeriod::groups`]).
    group: usize,
    /// Per position in the batch, the series' position in the group ([`NO_SLOT`] for a
    /// series that was refused).
    slots: Vec<u32>,
    /// When it was last used (the sender's batch count), to replace the least recently used.
    used: u64,
}

/// Most batch layouts kept per sender (of a flush split into more batches than this, the
/// batches met first are followed, the others looked up).
const CACHES_PER_SENDER: usize = 16;
// The slot cache follows a sender's batches as the parse memo does, with its bounds: the
// window a batch's first series is looked for in, the look-ahead past idle series, and the
// batches after which an unused layout may make room.
const PICK_WINDOW: usize = ParseMemo::PICK_WINDOW;
const LOOKAHEAD: usize = ParseMemo::LOOKAHEAD;
const STALE_AFTER: u64 = ParseMemo::STALE_AFTER;

/// One sender's recent batch layouts.
#[derive(Default)]
struct SenderCaches {
    caches: Vec<SlotCache>,
    batches: u64,
}

impl SenderCaches {
    /// The layout of the sender's batch that began with the same series as `batch` (or had it
    /// among its first few), in group `gi`, with the position to walk it from; else an empty
    /// one (in place of one unused for a while when all are taken). `None` for a batch
    /// without series (a drop report) or when no layout can be given up: the batch's series
    /// are then looked up.
    fn pick(
        &mut self,
        gi: usize,
        group: &Group,
        batch: &BatchView<'_>,
    ) -> Option<(&mut SlotCache, usize)> {
        let first = batch.series().next()?.descriptor.as_bytes();
        self.batches += 1;
        // Where the batch's first series is among the first few of a layout of this group.
        let start = |c: &SlotCache| {
            let window = &c.slots[..c.slots.len().min(PICK_WINDOW)];
            (c.group == gi)
                .then(|| {
                    window.iter().position(
                        |&at| matches!(group.slots.get(at as usize), Some((b, _)) if **b == *first),
                    )
                })
                .flatten()
        };
        let (i, next) = match self
            .caches
            .iter()
            .enumerate()
            .find_map(|(i, c)| start(c).map(|j| (i, j)))
        {
            Some(found) => found,
            None => {
                let i = if self.caches.len() < CACHES_PER_SENDER {
                    self.caches.push(SlotCache::default());
                    self.caches.len() - 1
                } else {
                    // Only a layout unused for a while makes room (a sender cycling through
                    // more batches than fit keeps the first ones followed, not none).
                    (0..self.caches.len())
                        .min_by_key(|&i| self.caches[i].used)
                        .filter(|&i| self.batches - self.caches[i].used >= STALE_AFTER)?
                };
                self.caches[i].group = gi;
                self.caches[i].slots.clear();
                (i, 0)
            }
        };
        let cache = &mut self.caches[i];
        cache.used = self.batches;
        Some((cache, next))
    }
}

/// A [`SlotCache`] entry for a series that has no slot.
const NO_SLOT: u32 = u32::MAX;

/// A series' value in a period, and when it was admitted (0 for the period's first series).
struct Slot {
    agg: Agg,
    admitted: usize,
}

/// An open period: series grouped by the sender's `ServiceName` and `Environment`, then keyed
/// by their descriptor bytes as the SDK sent them (see [`Descriptor`]). A known series is
/// found by hashing those bytes, without reading a string; names and labels are read, checked
/// against CloudWatch's rules, once, when a series first appears in the period, and turned
/// into a published key when the period closes.
#[derive(Default)]
struct OpenPeriod {
    /// One entry per sender identity: an agent serves one service, so this holds one or a
    /// few, and a scan beats hashing two strings per batch.
    groups: Vec<(Identity, Group)>,
    /// Per sender process (`instance_id`), where its last batch's series were found; dropped
    /// with the period.
    caches: HashMap<u64, SenderCaches>,
    series: usize,
    samples: u64,
}

impl OpenPeriod {
    /// The position of one sender identity's group, created when absent (no allocation once
    /// it exists).
    fn group(&mut self, service: &str, environment: &str) -> usize {
        let at = self
            .groups
            .iter()
            .position(|((s, e), _)| &**s == service && &**e == environment);
        at.unwrap_or_else(|| {
            self.groups
                .push(((service.into(), environment.into()), Group::default()));
            self.groups.len() - 1
        })
    }
}

#[derive(Clone)]
struct AggStats {
    drops: DropCounters,
    samples: Counter,
    followed: Counter,
    late_samples: Counter,
    restamped_old: Counter,
    restamped_new: Counter,
    active_series: Gauge,
    periods_closed: Counter,
    last_period_metrics: Gauge,
    last_period_datums: Gauge,
    revision_metrics: Gauge,
}

impl AggStats {
    fn new(stats: &Stats) -> Self {
        AggStats {
            drops: stats.drop_counters(),
            samples: stats.counter(
                "tally_agent_samples_total",
                "Samples merged into a period.",
                &[],
            ),
            followed: stats.counter(
                "tally_agent_followed_series_total",
                "Series merged where the sender's earlier batch had them (slot cache), without a table lookup.",
                &[],
            ),
            late_samples: stats.counter(
                "tally_agent_late_samples_total",
                "Samples whose period had already closed, merged into the current period instead.",
                &[],
            ),
            restamped_old: stats.counter(
                "tally_agent_restamped_batches_total",
                "Batches whose timestamp was outside CloudWatch's window, re-stamped to the agent's clock.",
                &[("reason", "timestamp_too_old")],
            ),
            restamped_new: stats.counter(
                "tally_agent_restamped_batches_total",
                "Batches whose timestamp was outside CloudWatch's window, re-stamped to the agent's clock.",
                &[("reason", "timestamp_in_future")],
            ),
            active_series: stats.gauge(
                "tally_agent_active_series",
                "Series in the open periods (before rollups and derived metrics).",
                &[],
            ),
            periods_closed: stats.counter(
                "tally_agent_periods_closed_total",
                "Periods closed and handed to the sink queue.",
                &[],
            ),
            last_period_metrics: stats.gauge(
                "tally_agent_last_period_metrics",
                "Distinct metrics (custom metrics in CloudWatch terms) in the last closed period.",
                &[],
            ),
            last_period_datums: stats.gauge(
                "tally_agent_last_period_datums",
                "Estimated PutMetricData datums of the last closed period (150 values a datum).",
                &[],
            ),
            revision_metrics: stats.gauge(
                revision::LAST_PERIOD_METRICS,
                "Of the last closed period's metrics, those of the per-revision rollup ([canary] publish_revision).",
                &[],
            ),
        }
    }

    fn drop(&self, reason: DropReason, n: u64) {
        self.drops.add(reason, n);
    }
}

/// Merges batches into wall-clock periods. Not thread-safe by itself: the ingest path holds it
/// behind one lock together with the sequence tracker, so "already merged" and "merged now"
/// are decided atomically.
pub struct Aggregator {
    settings: Arc<Settings>,
    periods: BTreeMap<u64, OpenPeriod>,
    /// Periods starting before this (Unix seconds) are closed.
    closed_before: u64,
    stats: AggStats,
    log: RateLimitedLog,
    /// Working memory of histogram merges (buckets a view adds), kept so a merge does not
    /// allocate.
    buckets: Vec<Bucket>,
    /// Where the series of the batch being merged were found (becomes its [`SlotCache`]).
    slot_scratch: Vec<u32>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("open_periods", &self.periods.len())
            .field("closed_before", &self.closed_before)
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// A new aggregator; periods before the one containing `now` count as closed.
    pub fn new(settings: Settings, stats: &Stats, now: SystemTime) -> Self {
        let closed_before = period::align(period::unix_secs(now), settings.period_secs);
        let stats = AggStats::new(stats);
        Aggregator {
            settings: Arc::new(settings),
            periods: BTreeMap::new(),
            closed_before,
            stats,
            log: RateLimitedLog::new(Duration::from_secs(10)),
            buckets: Vec::new(),
            slot_scratch: Vec::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Series in the open periods.
    pub fn active_series(&self) -> usize {
        self.periods.values().map(|p| p.series).sum()
    }

    /// Start (Unix seconds) of the period a batch lands in, counting re-stamps and late data.
    fn period_for(&mut self, batch: &BatchView<'_>, now: SystemTime) -> (u64, bool) {
        let p = self.settings.period_secs;
        let now_s = period::unix_secs(now);
        let t = match period::classify(batch.end_unix_ms, now) {
            Stamp::Ok(t) => t,
            Stamp::TooOld => {
                self.stats.restamped_old.inc();
                self.log.warn(
                    "timestamp_too_old",
                    format_args!(
                        "batch {} of pid {} is stamped {} ms, older than CloudWatch accepts: re-stamped to now (check the host clock)",
                        batch.sequence, batch.process.pid, batch.end_unix_ms
                    ),
                );
                now_s
            }
            Stamp::TooNew => {
                self.stats.restamped_new.inc();
                self.log.warn(
                    "timestamp_in_future",
                    format_args!(
                        "batch {} of pid {} is stamped {} ms, further ahead than CloudWatch accepts: re-stamped to now (check the host clock)",
                        batch.sequence, batch.process.pid, batch.end_unix_ms
                    ),
                );
                now_s
            }
        };
        let start = period::align(t, p);
        if start < self.closed_before {
            // Its period is gone: the current one takes it, so nothing is lost.
            (period::align(now_s, p).max(self.closed_before), true)
        } else {
            (start, false)
        }
    }

    /// Merges a batch straight from its borrowed view: a series already in the period is
    /// looked up and merged without allocating; only a new series gets an owned key. Samples
    /// that cannot be merged are dropped and counted by reason; the whole batch is refused
    /// only when its identity cannot become a dimension.
    pub fn merge(
        &mut self,
        batch: &BatchView<'_>,
        now: SystemTime,
    ) -> Result<MergeReport, BatchReject> {
        let service = pick(&self.settings.service, batch.process.service);
        let environment = pick(&self.settings.environment, batch.process.environment);
        for v in [service, environment] {
            if let Err(error) = rules::check_dimension_value(v) {
                let r = BatchReject::Identity {
                    pid: batch.process.pid,
                    error,
                };
                self.stats.drop(r.reason(), batch.samples());
                return Err(r);
            }
        }
        let (start, late) = self.period_for(batch, now);
        let service = pick(&self.settings.service, batch.process.service);
        let environment = pick(&self.settings.environment, batch.process.environment);
        let max_series = self.settings.max_series;
        let extra = &self.settings.extra_dimensions;
        let period = self.periods.entry(start).or_default();
        let mut report = MergeReport {
            period_start: start,
            ..MergeReport::default()
        };
        let mut total = period.series;
        let gi = period.group(service, environment);
        let group = &mut period.groups[gi].1;
        let sender = period.caches.entry(batch.process.instance_id).or_default();
        let (mut cache, mut next) = match sender.pick(gi, group, batch) {
            Some((c, next)) => (Some(c), next),
            None => (None, 0),
        };
        let cached: &[u32] = cache.as_ref().map_or(&[], |c| &c.slots);
        let mut followed = 0u64;
        let found = &mut self.slot_scratch;
        found.clear();
        found.reserve(batch.len());
        let mut scratch = Vec::new();
        for s in batch.series() {
            let n = s.value.samples();
            let bytes = s.descriptor.as_bytes();
            // The cached positions from `next` on, then the table.
            let last = cached.len().min(next + 1 + LOOKAHEAD);
            let guess = (next..last).find(
                |&j| matches!(group.slots.get(cached[j] as usize), Some((b, _)) if **b == *bytes),
            );
            let at = match guess {
                Some(j) => {
                    next = j + 1;
                    followed += 1;
                    Some(cached[j])
                }
                None => group.find(bytes),
            };
            let merged = match at {
                Some(at) => {
                    found.push(at);
                    let slot = &mut group.slots[at as usize].1;
                    merge_value(&mut slot.agg, &s.descriptor, s.value, &mut self.buckets)
                }
                None => new_series(
                    group,
                    &s.descriptor,
                    s.value,
                    NewSeries {
                        max_series,
                        total: &mut total,
                        extra,
                        buckets: &mut self.buckets,
                    },
                    &mut scratch,
                )
                .map(|at| found.push(at))
                .inspect_err(|_| found.push(NO_SLOT)),
            };
            match merged {
                Ok(()) => report.merged = report.merged.saturating_add(n),
                Err((reason, detail)) => {
                    report.dropped = report.dropped.saturating_add(n);
                    self.stats.drop(reason, n);
                    self.log.warn(reason.as_str(), format_args!("{detail}"));
                }
            }
        }
        // This batch's layout replaces the one it was walked beside. (Unlike the parse memo,
        // which keeps a batch that still recognised seven in eight, to spare copying its
        // bytes: the swap costs nothing, and a layout that moves with the split between a
        // flush's batches measured 13.7 vs 10.8-11.9 M updates/s on `sdk_flushes` against
        // one that stays.)
        if let Some(c) = cache.as_mut() {
            std::mem::swap(&mut c.slots, &mut self.slot_scratch);
        }
        period.series = total;
        period.samples = period.samples.saturating_add(report.merged);
        self.stats.samples.add(report.merged);
        self.stats.followed.add(followed);
        if late {
            self.stats.late_samples.add(report.merged);
        }
        self.stats.active_series.set(self.active_series() as i64);
        Ok(report)
    }

    /// When the earliest open period may close (None when nothing is open).
    pub fn next_close_at(&self) -> Option<SystemTime> {
        self.periods.keys().next().map(|s| {
            UNIX_EPOCH
                + Duration::from_secs(s + u64::from(self.settings.period_secs))
                + self.settings.grace
        })
    }

    /// Closes every period whose end plus grace is not after `now`.
    pub fn close_due(&mut self, now: SystemTime) -> Vec<ClosedPeriod> {
        let closer = self.closer();
        self.take_due(now)
            .into_iter()
            .map(|d| closer.close(d))
            .collect()
    }

    /// Closes every open period now (shutdown: the open period closes early).
    pub fn close_all(&mut self) -> Vec<ClosedPeriod> {
        let closer = self.closer();
        self.take_all()
            .into_iter()
            .map(|d| closer.close(d))
            .collect()
    }

    /// Takes every period whose end plus grace is not after `now` out of the aggregator, for
    /// [`Closer::close`]: taking is quick (no key is built), so a caller that shares the
    /// aggregator behind a lock holds it only for this and closes outside it.
    pub fn take_due(&mut self, now: SystemTime) -> Vec<DuePeriod> {
        let p = u64::from(self.settings.period_secs);
        let horizon = now.checked_sub(self.settings.grace).unwrap_or(UNIX_EPOCH);
        let current = period::align(period::unix_secs(horizon), self.settings.period_secs);
        if current.saturating_add(p) < self.closed_before {
            // The wall clock stepped back past periods already closed: late batches would
            // gather in a period that closes only when the clock catches up (an hour without
            // data for a one-hour step). Everything open goes out now, and the periods follow
            // the clock from here.
            tracing::warn!(
                stepped_back_secs = self.closed_before - current,
                "the wall clock stepped back behind periods already closed: closing the open periods now"
            );
            let out = self.take_all();
            self.closed_before = current;
            return out;
        }
        let due: Vec<u64> = self
            .periods
            .keys()
            .copied()
            .filter(|s| UNIX_EPOCH + Duration::from_secs(s + p) + self.settings.grace <= now)
            .collect();
        let out = due.into_iter().map(|s| self.take_one(s)).collect();
        // Everything before the period containing `now - grace` is closed too.
        self.closed_before = self.closed_before.max(current);
        out
    }

    /// Takes every open period out (shutdown), for [`Closer::close`].
    pub fn take_all(&mut self) -> Vec<DuePeriod> {
        let all: Vec<u64> = self.periods.keys().copied().collect();
        let out: Vec<DuePeriod> = all.into_iter().map(|s| self.take_one(s)).collect();
        if let Some(last) = out.last() {
            let s = last.start + u64::from(self.settings.period_secs);
            self.closed_before = self.closed_before.max(s);
        }
        out
    }

    /// What closing a taken period needs: the settings and the self-metrics.
    pub fn closer(&self) -> Closer {
        Closer {
            settings: Arc::clone(&self.settings),
            stats: self.stats.clone(),
        }
    }

    fn take_one(&mut self, start: u64) -> DuePeriod {
        let open = self.periods.remove(&start).expect("period exists");
        self.closed_before = self.closed_before.max(start + 1);
        self.stats.active_series.set(self.active_series() as i64);
        DuePeriod { start, open }
    }
}

/// An open period taken out of the [`Aggregator`] ([`Aggregator::take_due`]), no longer
/// receiving samples, not yet closed.
pub struct DuePeriod {
    start: u64,
    open: OpenPeriod,
}

impl std::fmt::Debug for DuePeriod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuePeriod")
            .field("start", &self.start)
            .field("series", &self.open.series)
            .finish_non_exhaustive()
    }
}

/// Closes periods taken out of an [`Aggregator`] ([`Aggregator::closer`]); it shares nothing
/// with the aggregator but its settings and self-metrics, so it runs while the aggregator
/// goes on merging (at 100k series a close takes about half a second).
#[derive(Clone)]
pub struct Closer {
    settings: Arc<Settings>,
    stats: AggStats,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer").finish_non_exhaustive()
    }
}

impl Closer {
    /// The closed period a sink receives: global dimensions added, units converted, equal
    /// keys merged, rollups and derived metrics added ([`close`]).
    pub fn close(&self, due: DuePeriod) -> ClosedPeriod {
        let DuePeriod { start, open } = due;
        let merged = open.samples;
        let mut strings = Interner::default();
        let mut valueless = 0;
        let series = publishable_series(open, &self.settings, &mut strings, &mut valueless);
        let (data, conflicts, unpublished) =
            close::finish(&self.settings, start, series, &mut strings);
        let samples = merged.saturating_sub(unpublished).saturating_sub(valueless);
        for (reason, n) in conflicts {
            self.stats.drop(reason, n);
        }
        if valueless > 0 {
            self.stats.drop(DropReason::EventWithoutValue, valueless);
        }
        self.stats.periods_closed.inc();
        self.stats
            .last_period_metrics
            .set(data.metrics.len() as i64);
        self.stats
            .last_period_datums
            .set(close::estimate_datums(&data) as i64);
        if let Some(r) = &self.settings.revision {
            self.stats
                .revision_metrics
                .set(revision::count(&r.dimension, &data.metrics) as i64);
        }
        ClosedPeriod { data, samples }
    }
}

/// An open period's series as published (global dimensions added, labels sorted, units
/// converted: [`close::publishable`]), in the order they were admitted: when one series
/// arrives under two descriptors that close cannot combine (a counter in one process, a
/// gauge in another), the first to arrive is kept and the other is counted as dropped,
/// whatever the hash maps' order.
///
/// Each series' descriptor is freed as its key is built, and every string goes through
/// `strings`, so the keys of a period share one copy of each name and value.
/// How many series the close takes from a group between two shrinks of the group's vector.
const SHRINK_EVERY: usize = 8192;

fn publishable_series(
    open: OpenPeriod,
    settings: &Settings,
    strings: &mut Interner,
    valueless: &mut u64,
) -> Vec<(MetricKey, AggregateValue)> {
    let service_name = strings.get(SERVICE_NAME);
    let environment_name = strings.get(ENVIRONMENT);
    let extra: Vec<(Text, Text)> = settings
        .extra_dimensions
        .iter()
        .map(|(n, v)| (strings.get(n), strings.get(v)))
        .collect();
    let OpenPeriod {
        groups,
        caches,
        series,
        ..
    } = open;
    // Lookup structures go before the keys are built, only the series themselves are needed.
    drop(caches);
    let mut out: Vec<(usize, MetricKey, AggregateValue)> = Vec::with_capacity(series);
    let mut dims: Vec<(Text, Text)> = Vec::new();
    for ((service, environment), group) in groups {
        let service = strings.get(&service);
        let environment = strings.get(&environment);
        let Group {
            mut slots, index, ..
        } = group;
        drop(index);
        // Taken from the back, the group's vector gives its memory back while the keys are
        // built (the order does not matter: `out` is sorted by admission below).
        while let Some((bytes, slot)) = slots.pop() {
            if slots.len() % SHRINK_EVERY == 0 {
                slots.shrink_to_fit();
            }
            let mut labels = Vec::new();
            let decoded = Descriptor::parse(&bytes).and_then(|d| Ok((d, d.decode(&mut labels)?)));
            let Ok((d, name)) = decoded else {
                // Cannot happen: a series is admitted only after its descriptor decoded.
                tracing::error!("an admitted series no longer decodes at close: dropped");
                continue;
            };
            dims.clear();
            dims.push((service_name.clone(), service.clone()));
            dims.push((environment_name.clone(), environment.clone()));
            dims.extend(extra.iter().cloned());
            dims.extend(
                labels
                    .iter()
                    .map(|&(k, v)| (strings.get(k), strings.get(v))),
            );
            dims.sort_unstable();
            let mut without_value = 0;
            let (key, value) = close::publishable(
                settings,
                strings.get(name),
                d.unit(),
                strings.dimensions(&dims),
                slot.agg,
                &mut without_value,
            );
            if without_value > 0 {
                *valueless = valueless.saturating_add(without_value);
                tracing::warn!(
                    "event {name:?} has {without_value} occurrence(s) without a value (emit) in a period where others carry one (emit_value): it is published as its values' distribution, so those are counted as dropped (reason=\"event_without_value\"); use emit_value everywhere, or two events"
                );
            }
            out.push((slot.admitted, key, value));
        }
    }
    out.sort_unstable_by_key(|(admitted, ..)| *admitted);
    out.into_iter().map(|(_, k, a)| (k, a)).collect()
}

fn pick<'a>(over: &'a str, from_sdk: &'a str) -> &'a str {
    if !over.is_empty() {
        over
    } else if !from_sdk.is_empty() {
        from_sdk
    } else {
        UNKNOWN
    }
}

type Refusal = (DropReason, String);

/// What a series refused by CloudWatch's naming rules counts as.
fn rule_drop(e: &rules::RuleError) -> DropReason {
    use rules::RuleError as E;
    match e {
        E::Empty { .. } => DropReason::EmptyName,
        E::TooLong { .. } => DropReason::NameTooLong,
        E::NonAscii { .. } => DropReason::NonAsciiDimension,
        E::Control { .. } => DropReason::ControlCharacter,
        E::LeadingColon { .. } => DropReason::LeadingColon,
        E::ReservedNamespace(_) => DropReason::ReservedNamespace,
        E::ReservedDimension(_) => DropReason::ReservedDimension,
        E::TooManyDimensions(_) => DropReason::TooManyDimensions,
    }
}

fn non_finite(name: &str) -> Refusal {
    (
        DropReason::NonFiniteValue,
        format!(
            "gauge {name:?} carries NaN or an infinite value, which CloudWatch refuses: dropped"
        ),
    )
}

/// The value a series starts a period with.
fn to_agg(name: &str, value: ValueView<'_>, buckets: &mut Vec<Bucket>) -> Result<Agg, Refusal> {
    let mut dist = |h: HistogramView<'_>| {
        SparseHistogram::from_view(&h, buckets)
            .map(|histogram| Agg::Dist {
                scale: h.scale(),
                histogram: Box::new(histogram),
            })
            .map_err(|c| {
                (
                    series::MergeConflict::from(c).reason(),
                    format!("histogram of series {name:?} could not be built: dropped"),
                )
            })
    };
    Ok(match value {
        ValueView::Counter(d) => Agg::Counter(d),
        ValueView::Gauge {
            last,
            min,
            max,
            updates,
        } => {
            if !(last.is_finite() && min.is_finite() && max.is_finite()) {
                return Err(non_finite(name));
            }
            Agg::Gauge {
                last,
                min,
                max,
                updates,
            }
        }
        ValueView::Histogram(h) => dist(h)?,
        ValueView::Event { count, values } => Agg::Event {
            count,
            values: match values.map(dist).transpose()? {
                Some(Agg::Dist { scale, histogram }) => Some((scale, histogram)),
                _ => None,
            },
        },
    })
}

fn check_new(
    name: &str,
    labels: &[(&str, &str)],
    extra: &[(String, String)],
) -> Result<(), rules::RuleError> {
    rules::check_metric_name(name)?;
    if labels.len() + 2 + extra.len() > rules::MAX_DIMENSIONS {
        return Err(rules::RuleError::TooManyDimensions(
            labels.len() + 2 + extra.len(),
        ));
    }
    for &(k, v) in labels {
        if k == SERVICE_NAME || k == ENVIRONMENT || extra.iter().any(|(e, _)| e == k) {
            return Err(rules::RuleError::ReservedDimension(k.to_owned()));
        }
        rules::check_dimension_name(k)?;
        rules::check_dimension_value(v)?;
    }
    Ok(())
}

/// What admitting a new series needs besides the series itself.
struct NewSeries<'a, 't> {
    max_series: usize,
    /// Series in the period so far, all identities together.
    total: &'t mut usize,
    extra: &'a [(String, String)],
    /// Working memory of histogram merges.
    buckets: &'t mut Vec<Bucket>,
}

/// Admits a series the period has not seen (under its descriptor bytes): its strings must be
/// UTF-8, its labels distinct, it must fit `aggregate.max_series` and CloudWatch's rules.
/// Returns its position in the group.
fn new_series<'v>(
    group: &mut Group,
    descriptor: &Descriptor<'v>,
    value: ValueView<'_>,
    ctx: NewSeries<'_, '_>,
    scratch: &mut Vec<(&'v str, &'v str)>,
) -> Result<u32, Refusal> {
    scratch.clear();
    let name = descriptor.decode(scratch).map_err(|e| {
        (
            DropReason::InvalidUtf8,
            format!(
                "series {:?} refused: {e}; the SDK must send UTF-8 names and labels",
                descriptor.name_lossy()
            ),
        )
    })?;
    scratch.sort_unstable();
    if scratch.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err((
            DropReason::DuplicateLabel,
            format!("series {name:?} carries the same label twice: dropped"),
        ));
    }
    let max_series = ctx.max_series;
    if *ctx.total >= max_series {
        return Err((
            DropReason::MaxSeries,
            format!(
                "series limit aggregate.max_series = {max_series} reached this period: samples of {name:?} dropped; raise the limit or reduce label cardinality"
            ),
        ));
    }
    check_new(name, scratch, ctx.extra)
        .map_err(|e| (rule_drop(&e), format!("series {name:?} refused: {e}")))?;
    let agg = to_agg(name, value, ctx.buckets)?;
    let at = group.insert(
        descriptor.as_bytes(),
        Slot {
            agg,
            admitted: *ctx.total,
        },
    );
    *ctx.total += 1;
    Ok(at)
}

/// Merges one view value into a series' value without building an intermediate one.
fn merge_value(
    agg: &mut Agg,
    descriptor: &Descriptor<'_>,
    value: ValueView<'_>,
    buckets: &mut Vec<Bucket>,
) -> Result<(), Refusal> {
    let conflict = |c: series::MergeConflict| {
        (
            c.reason(),
            format!("series {:?} could not be merged ({}): a process records it with another kind or scale; dropped", descriptor.name_lossy(), c.reason().as_str()),
        )
    };
    // Matched by reference: a copy of the view, written piecewise a moment ago, would be read
    // back in wider loads the store buffer cannot forward (a tenth of the merge's time).
    match (&mut *agg, &value) {
        (Agg::Counter(a), ValueView::Counter(d)) => {
            *a = a.saturating_add(*d);
            Ok(())
        }
        (Agg::Dist { scale, histogram }, ValueView::Histogram(h)) => {
            if *scale != h.scale() {
                return Err(conflict(series::MergeConflict::ScaleMismatch));
            }
            histogram
                .add_view(h, buckets)
                .map_err(|e| conflict(e.into()))
        }
        // Occurrences with and without values meet in one event (a process that only
        // emitted, another that emitted values): both kept.
        (
            Agg::Event { count, values },
            ValueView::Event {
                count: c,
                values: v,
            },
        ) => {
            match (values.as_mut(), v) {
                (_, None) => {}
                (Some((scale, histogram)), Some(h)) => {
                    if *scale != h.scale() {
                        return Err(conflict(series::MergeConflict::ScaleMismatch));
                    }
                    histogram
                        .add_view(h, buckets)
                        .map_err(|e| conflict(e.into()))?;
                }
                (None, Some(h)) => {
                    let histogram =
                        SparseHistogram::from_view(h, buckets).map_err(|e| conflict(e.into()))?;
                    *values = Some((h.scale(), Box::new(histogram)));
                }
            }
            *count = count.saturating_add(*c);
            Ok(())
        }
        // A non-finite gauge is refused as such, whatever the series holds.
        (_, ValueView::Gauge { last, min, max, .. })
            if !(last.is_finite() && min.is_finite() && max.is_finite()) =>
        {
            Err(non_finite(&descriptor.name_lossy()))
        }
        (
            Agg::Gauge {
                last,
                min,
                max,
                updates,
            },
            ValueView::Gauge {
                last: l2,
                min: m2,
                max: x2,
                updates: u2,
            },
        ) => {
            *last = *l2;
            *min = min.min(*m2);
            *max = max.max(*x2);
            *updates = updates.saturating_add(*u2);
            Ok(())
        }
        _ => Err(conflict(series::MergeConflict::KindMismatch)),
    }
}

#[cfg(test)]
mod tests;
