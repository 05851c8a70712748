//! The receiver: parsed lines merged into per-series state, handed to the [`Intake`] as
//! batches, exactly like an SDK's flush.
//!
//! Each series (type + name + tags as sent) gets a slot the first time it is seen; the slot
//! keeps the interval's data (a counter's scaled count, a gauge's level and extremes, an HDR
//! histogram, a set's new members) and what must outlive an interval (a gauge's level, a
//! set's members of the current period, a counter's fractional remainder). At every flush the
//! touched slots become [`Series`] of one [`Batch`] per (service, environment) identity,
//! encoded with the SDK's encoder, parsed back into a checked view and merged through
//! [`Intake::accept_frame`]: sequence numbers, the write-ahead log, the periods, rollups,
//! derived metrics and every aggregation bound apply as to any SDK batch.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use tally::conventions::OVERFLOW_VALUE;
use tally::wire::{
    encode_batch, Batch, BatchView, DropReport, Limits, ProcessIdentity, Series, SeriesValue, Unit,
    HEADER_LEN,
};

use super::parse::{self, Kind, Line, Malformed, Metric};
use super::{StatsdConfig, StatsdStats};
use crate::ingest::{FrameOutcome, Intake};
use crate::stats::DropReason;

/// Stored integers per unit of a histogram or distribution value (six decimals kept), the
/// same factor the SDK's `metrics` facade uses for unitless histograms.
pub const VALUE_SCALE: f64 = 1e6;
/// Nanoseconds per millisecond: timers are stored as nanoseconds, like SDK latencies, so
/// the same name and tags from a Rust process and a StatsD client are one series.
const NANOS_PER_MS: f64 = 1e6;
const SIGFIG: u8 = 3;
/// Samples a series keeps as a list before they are folded into its histogram.
const SPARSE_SAMPLES: usize = 1024;
/// Histogram series in one batch, so that the dense histograms a flush builds stay few at a
/// time (each about 150 KiB for millisecond timers).
const HISTOGRAMS_PER_BATCH: usize = 128;

/// Records `values` into `hist` (created sized for the largest of them).
fn fold(hist: &mut Option<Histogram<u64>>, values: &mut Vec<(u64, u64)>, stats: &StatsdStats) {
    if values.is_empty() {
        return;
    }
    let h = hist.get_or_insert_with(|| {
        let max = values.iter().map(|v| v.0).max().unwrap_or(1).max(2);
        Histogram::new_with_max(max, SIGFIG).expect("3 significant digits are valid")
    });
    for &(v, n) in values.iter() {
        if h.record_n(v, n).is_err() {
            stats.drops.add(DropReason::StatsdValueOutOfRange, n);
        }
    }
    values.clear();
}

struct Slot {
    kind: Kind,
    name: String,
    labels: Vec<(String, String)>,
    identity: usize,
    dirty: bool,
    /// Counter: scaled count not yet handed over (carries the fraction between flushes).
    count: f64,
    /// Timer / histogram / distribution: sample weight not yet given (the fraction of
    /// `1 / rate`), the interval's samples as (stored value, count) and, once there are
    /// many, the histogram they were folded into (a dense HDR histogram of nanoseconds
    /// takes about 150 KiB, so it is built only for series that need it).
    weight: f64,
    values: Vec<(u64, u64)>,
    hist: Option<Histogram<u64>>,
    /// Gauge.
    level: f64,
    has_level: bool,
    min: f64,
    max: f64,
    updates: u64,
    /// Set: the period its members belong to, its members, members new this interval.
    set_period: u64,
    members: hashbrown::HashSet<Box<str>>,
    new_members: u64,
}

struct Identity {
    service: String,
    environment: String,
    instance_id: u64,
    sequence: u64,
}

/// Folds tag values past each key's limit into `__other__`.
struct TagLimiter {
    known: HashMap<String, hashbrown::HashSet<Box<str>>>,
}

impl TagLimiter {
    fn resolve<'a>(&mut self, cfg: &StatsdConfig, key: &str, value: &'a str) -> (&'a str, bool) {
        let set = match self.known.get_mut(key) {
            Some(s) => s,
            None => self.known.entry(key.to_owned()).or_default(),
        };
        if set.contains(value) {
            return (value, false);
        }
        if value.len() > tally::wire::MAX_LABEL_VALUE_LEN || set.len() >= cfg.limit_of(key) {
            return (OVERFLOW_VALUE, true);
        }
        set.insert(value.into());
        (value, false)
    }
}

/// The receiver's state: series slots, identities and the batch being built.
pub struct Receiver {
    cfg: StatsdConfig,
    intake: Intake,
    stats: StatsdStats,
    limits: Limits,
    period_secs: u64,
    index: hashbrown::HashMap<Box<str>, usize>,
    slots: Vec<Slot>,
    dirty: Vec<usize>,
    identities: Vec<Identity>,
    identity_index: HashMap<(String, String), usize>,
    limiter: TagLimiter,
    key: String,
    /// Wall-clock period of what is pending (its start, Unix seconds).
    pending_period: Option<u64>,
    pending_end_ms: u64,
    instance_base: u64,
    encoded: Vec<u8>,
    log: crate::util::RateLimitedLog,
    /// The agent's namespace, which EMF records are clamped to.
    namespace: String,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("series", &self.slots.len())
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The longest part of a bad line quoted in a log message.
const QUOTE_LEN: usize = 120;

/// `line` cut to 120 bytes at a character boundary.
pub fn quote(line: &str) -> &str {
    if line.len() <= QUOTE_LEN {
        return line;
    }
    let mut end = QUOTE_LEN;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

impl Receiver {
    /// A receiver merging into `intake`, with periods of `period_secs`. `source` tells
    /// receivers apart (each listener has its own, with its own identities and sequences).
    pub fn new(
        cfg: StatsdConfig,
        intake: Intake,
        stats: StatsdStats,
        period_secs: u32,
        source: u64,
    ) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos() as u64;
        Receiver {
            cfg,
            intake,
            stats,
            limits: Limits::default(),
            period_secs: u64::from(period_secs.max(1)),
            index: hashbrown::HashMap::new(),
            slots: Vec::new(),
            dirty: Vec::new(),
            identities: Vec::new(),
            identity_index: HashMap::new(),
            limiter: TagLimiter {
                known: HashMap::new(),
            },
            key: String::new(),
            pending_period: None,
            pending_end_ms: 0,
            // A new instance per run and listener: its sequence numbers start again at 1.
            instance_base: (nanos ^ (u64::from(std::process::id()) << 32))
                .rotate_left(17)
                .wrapping_add(source.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            encoded: Vec::new(),
            log: crate::util::RateLimitedLog::new(Duration::from_secs(10)),
            namespace: String::new(),
        }
    }

    /// Reads EMF records (see [`Receiver::emf_packet`]) for an agent publishing in
    /// `namespace`.
    pub fn for_emf(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Merges EMF records (one a line) received at `now`.
    pub fn emf_packet(&mut self, bytes: &[u8], now: SystemTime) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.stats.emf_bad[0].inc();
            self.stats.drops.add(DropReason::EmfMalformedRecord, 1);
            return;
        };
        self.roll(now);
        for line in text.split('\n') {
            let line = line.trim();
            if !line.is_empty() {
                self.emf_record(line);
            }
        }
    }

    /// Counts an EMF record longer than `statsd.emf_max_record_bytes` (dropped).
    pub fn emf_oversized(&mut self) {
        self.stats.emf_bad[super::emf::EmfError::Oversized as usize].inc();
        self.stats.drops.add(DropReason::EmfMalformedRecord, 1);
        self.log.warn(
            "emf_oversized_record",
            format_args!(
                "an EMF record longer than statsd.emf_max_record_bytes = {} was dropped",
                self.cfg.emf_max_record_bytes
            ),
        );
    }

    fn emf_record(&mut self, line: &str) {
        let max_sets = self.cfg.emf_max_dimension_sets;
        let record = match super::emf::parse_record(line, &self.namespace, max_sets) {
            Ok(r) => r,
            Err(e) => {
                let i = e as usize;
                self.stats.emf_bad[i].inc();
                self.stats.drops.add(DropReason::EmfMalformedRecord, 1);
                self.log.warn(
                    e.reason(),
                    format_args!(
                        "EMF record refused ({}): {:?}{}",
                        e.reason(),
                        quote(line),
                        if line.len() > QUOTE_LEN { "..." } else { "" }
                    ),
                );
                return;
            }
        };
        self.stats.emf_records.inc();
        self.stats
            .emf_foreign_namespaces
            .add(record.foreign_namespaces);
        self.stats
            .emf_dropped_sets
            .add(record.dropped_dimension_sets);
        let mut rest = String::new();
        for m in &record.metrics {
            let Some((first, more)) = m.values.split_first() else {
                continue;
            };
            rest.clear();
            for v in more {
                use std::fmt::Write as _;
                let _ = write!(rest, "{v}:");
            }
            self.metric(&Metric {
                name: &m.name,
                kind: m.kind,
                first: *first,
                rest: &rest,
                delta: false,
                member: "",
                rate: 1.0,
                tags: &m.tags,
            });
        }
    }

    /// Merges one packet received at `now`. A packet that is not UTF-8 is counted and
    /// dropped whole (its lines cannot be told apart safely).
    pub fn packet(&mut self, bytes: &[u8], now: SystemTime) {
        self.stats.packets.inc();
        let Ok(text) = std::str::from_utf8(bytes) else {
            self.stats.non_utf8.inc();
            // Each line would have been at least one sample.
            let lines = bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            self.stats
                .drops
                .add(DropReason::StatsdNonUtf8Packet, lines.max(1) as u64);
            self.log.warn(
                "statsd_non_utf8",
                format_args!(
                    "a StatsD packet of {} bytes is not UTF-8 and was dropped ({} lines); its start: {:?}",
                    bytes.len(),
                    lines,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE_LEN)])
                ),
            );
            return;
        };
        self.roll(now);
        for line in text.split('\n') {
            self.line(line);
        }
    }

    /// Counts a packet larger than `statsd.max_packet_bytes` (`len` bytes read, at most one
    /// more than the bound): dropped whole, counted as one sample (a lower bound).
    pub fn oversized(&mut self, len: usize) {
        self.stats.packets.inc();
        self.stats.oversized.inc();
        self.stats.drops.add(DropReason::StatsdOversizedPacket, 1);
        self.log.warn(
            "statsd_oversized",
            format_args!(
                "a StatsD packet of more than {} bytes (read {len}) was dropped: raise statsd.max_packet_bytes or send smaller packets",
                self.cfg.max_packet_bytes
            ),
        );
    }

    /// Takes the socket's cumulative kernel drop counter `total`; `seen` is what was
    /// already counted. Each dropped packet is counted as one dropped sample (a lower bound).
    pub fn kernel_drops(&mut self, total: u64, seen: &mut u64) {
        if total > *seen {
            let n = total - *seen;
            *seen = total;
            self.stats.kernel_drops.add(n);
            self.stats.drops.add(DropReason::UdpReceiveBuffer, n);
            self.log.warn(
                "udp_receive_buffer",
                format_args!(
                    "the kernel dropped {n} StatsD packets (receive buffer full, {total} so far): raise statsd.receive_buffer_bytes (and net.core.rmem_max)"
                ),
            );
        }
    }

    /// The flush interval passed: hands over what is pending.
    pub fn tick(&mut self, _now: SystemTime) {
        self.flush(false);
    }

    /// Starts a new interval when `now` is in a later period than what is pending (what is
    /// pending is flushed first, so one batch never spans two periods).
    fn roll(&mut self, now: SystemTime) {
        let ms = unix_ms(now);
        let period = ms / 1000 / self.period_secs * self.period_secs;
        match self.pending_period {
            Some(p) if p != period => {
                self.flush(false);
                self.pending_period = Some(period);
            }
            None => self.pending_period = Some(period),
            _ => {}
        }
        self.pending_end_ms = self.pending_end_ms.max(ms);
    }

    /// Merges one line (no newline).
    pub fn line(&mut self, line: &str) {
        match parse::parse_line(line) {
            None => {}
            Some(Ok(Line::Metric(m))) => {
                self.stats.lines_metric.inc();
                self.metric(&m);
            }
            Some(Ok(Line::Event)) => self.stats.lines_event.inc(),
            Some(Ok(Line::ServiceCheck)) => self.stats.lines_service_check.inc(),
            Some(Err(e)) => self.malformed(e, line),
        }
    }

    fn malformed(&mut self, e: Malformed, line: &str) {
        self.stats.malformed[e as usize].inc();
        self.stats.drops.add(DropReason::StatsdMalformedLine, 1);
        self.log.warn(
            e.reason(),
            format_args!(
                "StatsD line refused ({}): {}: {:?}{}",
                e.reason(),
                e.explain(),
                quote(line),
                if line.len() > QUOTE_LEN { "..." } else { "" }
            ),
        );
    }

    fn slot_of(&mut self, m: &Metric<'_>) -> Option<usize> {
        self.key.clear();
        self.key.push(m.kind.tag() as char);
        self.key.push_str(m.name);
        self.key.push('\0');
        self.key.push_str(m.tags);
        if let Some(&i) = self.index.get(self.key.as_str()) {
            return Some(i);
        }
        if self.slots.len() >= self.cfg.max_series {
            return None;
        }
        let name = m
            .name
            .strip_prefix(self.cfg.strip_prefix.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(m.name)
            .to_owned();
        let mut service = "";
        let mut environment = "";
        let mut labels: Vec<(String, String)> = Vec::new();
        for (k, v) in parse::tags(m.tags) {
            match k {
                "service" if service.is_empty() => service = v,
                "env" if environment.is_empty() => environment = v,
                _ if v.is_empty() || labels.iter().any(|(have, _)| have == k) => {
                    self.stats.ignored_tags.inc();
                }
                _ => {
                    let (v, folded) = self.limiter.resolve(&self.cfg, k, v);
                    if folded {
                        self.stats.label_overflows.inc();
                    }
                    labels.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        labels.sort();
        let identity = self.identity(service, environment);
        let i = self.slots.len();
        self.slots.push(Slot {
            kind: m.kind,
            name,
            labels,
            identity,
            dirty: false,
            count: 0.0,
            weight: 0.0,
            values: Vec::new(),
            hist: None,
            level: 0.0,
            has_level: false,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            updates: 0,
            set_period: 0,
            members: hashbrown::HashSet::new(),
            new_members: 0,
        });
        self.index.insert(self.key.as_str().into(), i);
        Some(i)
    }

    fn identity(&mut self, service: &str, environment: &str) -> usize {
        let k = (service.to_owned(), environment.to_owned());
        if let Some(&i) = self.identity_index.get(&k) {
            return i;
        }
        let k = if self.identities.len() >= self.cfg.max_identities {
            self.stats.label_overflows.inc();
            (OVERFLOW_VALUE.to_owned(), OVERFLOW_VALUE.to_owned())
        } else {
            k
        };
        if let Some(&i) = self.identity_index.get(&k) {
            return i;
        }
        let i = self.identities.len();
        self.identities.push(Identity {
            service: k.0.clone(),
            environment: k.1.clone(),
            instance_id: self.instance_base.wrapping_add(i as u64),
            sequence: 0,
        });
        self.identity_index.insert(k, i);
        i
    }

    fn metric(&mut self, m: &Metric<'_>) {
        let samples = || match m.kind {
            Kind::Set => 1,
            _ => 1 + m.rest.split(':').filter(|s| !s.is_empty()).count() as u64,
        };
        let Some(i) = self.slot_of(m) else {
            self.stats
                .drops
                .add(DropReason::StatsdTooManySeries, samples());
            self.log.warn(
                "statsd_too_many_series",
                format_args!(
                    "StatsD series {:?} refused: statsd.max_series = {} series are known; raise it or send fewer distinct names and tags",
                    m.name, self.cfg.max_series
                ),
            );
            return;
        };
        let period = self.pending_period.unwrap_or(0);
        let max_members = self.cfg.max_set_members;
        let slot = &mut self.slots[i];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(i);
        }
        match m.kind {
            Kind::Counter => {
                for v in m.values() {
                    slot.count += v / m.rate;
                }
            }
            Kind::Gauge => {
                for v in m.values() {
                    slot.level = if m.delta { slot.level + v } else { v };
                    slot.has_level = true;
                    slot.min = slot.min.min(slot.level);
                    slot.max = slot.max.max(slot.level);
                    slot.updates += 1;
                }
            }
            Kind::Timer | Kind::Histogram | Kind::Distribution => {
                let factor = if m.kind == Kind::Timer {
                    NANOS_PER_MS
                } else {
                    VALUE_SCALE
                };
                for v in m.values() {
                    slot.weight += 1.0 / m.rate;
                    // The sample weight with its fraction carried: unbiased over many lines.
                    let n = (slot.weight + 1e-9).floor();
                    slot.weight -= n;
                    if n >= 1.0 {
                        slot.values.push(((v * factor).round() as u64, n as u64));
                    }
                }
                if slot.values.len() >= SPARSE_SAMPLES {
                    fold(&mut slot.hist, &mut slot.values, &self.stats);
                }
            }
            Kind::Set => {
                if slot.set_period != period {
                    slot.set_period = period;
                    slot.members.clear();
                }
                if !slot.members.contains(m.member) {
                    if slot.members.len() >= max_members {
                        self.stats.drops.add(DropReason::StatsdSetTooLarge, 1);
                        return;
                    }
                    slot.members.insert(m.member.into());
                    slot.new_members += 1;
                }
            }
        }
    }

    /// Hands everything pending to the intake (one batch per identity). `last`: the final
    /// flush at shutdown, which also hands over a counter's remaining fraction (rounded).
    pub fn flush(&mut self, last: bool) {
        if self.dirty.is_empty() {
            return;
        }
        let end_ms = self.pending_end_ms;
        let per_batch = (self.limits.max_series_per_batch / 2).max(1);
        let mut dirty = std::mem::take(&mut self.dirty);
        // One identity after the other; each batch is handed over as soon as it is full, so
        // the dense histograms a flush builds exist a batch at a time.
        dirty.sort_by_key(|&i| self.slots[i].identity);
        let mut chunk: Vec<Series> = Vec::new();
        let mut chunk_id = usize::MAX;
        let mut histograms = 0;
        for &i in &dirty {
            let id = self.slots[i].identity;
            if id != chunk_id && !chunk.is_empty() {
                self.hand_over(chunk_id, std::mem::take(&mut chunk), end_ms);
                histograms = 0;
            }
            chunk_id = id;
            let slot = &mut self.slots[i];
            slot.dirty = false;
            let (unit, value) = match slot.kind {
                Kind::Counter => {
                    let n = if last {
                        slot.count.round()
                    } else {
                        (slot.count + 1e-9).floor()
                    };
                    slot.count -= n;
                    if n < 1.0 {
                        continue;
                    }
                    (Unit::Count, SeriesValue::Counter(n as u64))
                }
                Kind::Gauge => {
                    let v = SeriesValue::Gauge {
                        last: slot.level,
                        min: slot.min,
                        max: slot.max,
                        updates: slot.updates,
                    };
                    slot.min = f64::INFINITY;
                    slot.max = f64::NEG_INFINITY;
                    slot.updates = 0;
                    (Unit::None, v)
                }
                Kind::Timer | Kind::Histogram | Kind::Distribution => {
                    fold(&mut slot.hist, &mut slot.values, &self.stats);
                    let Some(h) = slot.hist.take().filter(|h| !h.is_empty()) else {
                        continue;
                    };
                    if slot.kind == Kind::Timer {
                        (
                            Unit::Nanoseconds,
                            SeriesValue::Histogram {
                                scale: 1.0,
                                histogram: h,
                            },
                        )
                    } else {
                        (
                            Unit::None,
                            SeriesValue::Histogram {
                                scale: VALUE_SCALE,
                                histogram: h,
                            },
                        )
                    }
                }
                Kind::Set => {
                    let n = std::mem::take(&mut slot.new_members);
                    if n == 0 {
                        continue;
                    }
                    (Unit::Count, SeriesValue::Counter(n))
                }
            };
            if matches!(value, SeriesValue::Histogram { .. }) {
                histograms += 1;
            }
            chunk.push(Series {
                name: slot.name.clone(),
                unit,
                labels: slot.labels.clone(),
                value,
            });
            if chunk.len() >= per_batch || histograms >= HISTOGRAMS_PER_BATCH {
                self.hand_over(chunk_id, std::mem::take(&mut chunk), end_ms);
                histograms = 0;
            }
        }
        if !chunk.is_empty() {
            self.hand_over(chunk_id, chunk, end_ms);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn hand_over(&mut self, id: usize, series: Vec<Series>, end_ms: u64) {
        let ident = &mut self.identities[id];
        ident.sequence += 1;
        let batch = Batch {
            process: ProcessIdentity {
                instance_id: ident.instance_id,
                pid: std::process::id(),
                service: ident.service.clone(),
                environment: ident.environment.clone(),
                host: "statsd".into(),
            },
            sequence: ident.sequence,
            start_unix_ms: end_ms,
            end_unix_ms: end_ms,
            drops: DropReport::default(),
            series,
        };
        let samples = batch.samples();
        self.encoded.clear();
        if let Err(e) = encode_batch(&batch, &mut self.encoded) {
            self.stats.drops.add(DropReason::StatsdUnencodable, samples);
            tracing::error!(
                "a StatsD batch could not be encoded ({e}); its {samples} samples are dropped"
            );
            return;
        }
        let payload = &self.encoded[HEADER_LEN..];
        let view = match BatchView::parse(payload, &self.limits) {
            Ok(v) => v,
            Err(e) => {
                self.stats.drops.add(DropReason::StatsdUnencodable, samples);
                tracing::error!(
                    "a StatsD batch did not decode ({e}); its {samples} samples are dropped"
                );
                return;
            }
        };
        match self.intake.accept_frame(&view, payload) {
            // Merged (the aggregator counted any series it refused) or refused whole (counted
            // by the intake). Nobody waits for an answer, so a log segment is not forced to
            // disk here: it is synced with the next SDK batch or at the period's close.
            FrameOutcome::Ack { .. } => {}
            FrameOutcome::Refuse => {
                self.stats.drops.add(DropReason::StatsdWalFull, samples);
                self.log.warn(
                    "statsd_wal_full",
                    format_args!("the write-ahead log is full: {samples} StatsD samples dropped (raise durability.max_bytes)"),
                );
            }
            FrameOutcome::Closed => {
                self.stats.drops.add(DropReason::ShutdownDeadline, samples);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::aggregate::{Aggregator, Settings};
    use crate::config::Config;
    use crate::ingest::sequence::Sequences;
    use crate::model::AggregateValue;
    use crate::stats::Stats;

    fn receiver(cfg: StatsdConfig) -> (Receiver, Intake, Stats) {
        let stats = Stats::new();
        let aggregator = Aggregator::new(
            Settings::from_config(&Config::default()),
            &stats,
            SystemTime::now(),
        );
        let intake = Intake::new(
            aggregator,
            Sequences::new(64, Duration::from_secs(600)),
            &stats,
        );
        let r = Receiver::new(cfg, intake.clone(), StatsdStats::new(&stats, "udp"), 60, 1);
        (r, intake, stats)
    }

    /// A published (name, sorted dimensions, value).
    type Published = (String, Vec<(String, String)>, AggregateValue);

    /// Every published metric `lines` became.
    fn publish(lines: &[&str], cfg: StatsdConfig) -> (Vec<Published>, Stats) {
        let (mut r, intake, stats) = receiver(cfg);
        let now = SystemTime::now();
        for l in lines {
            r.packet(l.as_bytes(), now);
        }
        r.flush(true);
        let mut out = Vec::new();
        for p in intake.close_all() {
            for (k, v) in p.data.metrics.iter() {
                out.push((k.name.to_string(), k.dimension_pairs(), v.clone()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        (out, stats)
    }

    fn find<'a>(out: &'a [Published], name: &str) -> Vec<&'a AggregateValue> {
        out.iter()
            .filter(|(n, ..)| n == name)
            .map(|(.., v)| v)
            .collect()
    }

    fn counters(out: &[Published], name: &str) -> Vec<f64> {
        find(out, name)
            .into_iter()
            .map(|v| match v {
                AggregateValue::Counter(c) => *c,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn sampled_counters_are_scaled_so_their_total_is_unbiased() {
        let mut lines = vec!["hits:1|c"; 7];
        lines.extend(["hits:1|c|@0.5"; 4]);
        lines.extend(["hits:2|c|@0.1"; 3]);
        let (out, _) = publish(&lines, StatsdConfig::default());
        assert_eq!(counters(&out, "hits"), vec![7.0 + 8.0 + 60.0]);
    }

    #[test]
    fn gauges_take_levels_and_signed_changes() {
        let (out, _) = publish(
            &["q:10|g\nq:+5|g\nq:-12|g", "q:7|g"],
            StatsdConfig::default(),
        );
        let q = find(&out, "q");
        assert_eq!(q.len(), 1);
        match q[0] {
            AggregateValue::Gauge {
                last,
                min,
                max,
                updates,
            } => assert_eq!((*last, *min, *max, *updates), (7.0, 3.0, 15.0, 4)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sets_publish_their_distinct_members_per_period() {
        let (out, _) = publish(
            &["u:a|s\nu:b|s\nu:a|s", "u:c|s\nu:b|s"],
            StatsdConfig::default(),
        );
        assert_eq!(counters(&out, "u"), vec![3.0]);
    }

    #[test]
    fn timers_become_nanosecond_histograms_and_distributions_keep_six_decimals() {
        let (out, _) = publish(
            &["lat:1|ms\nlat:2:3|ms|#route:/a", "size:0.5|d\nsize:1.25|h"],
            StatsdConfig::default(),
        );
        let lat: u64 = find(&out, "lat")
            .iter()
            .map(|v| match v {
                AggregateValue::Distribution { histogram, .. } => histogram.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(lat, 3);
        let size = find(&out, "size");
        assert_eq!(size.len(), 1);
        match size[0] {
            AggregateValue::Distribution { scale, histogram } => {
                assert_eq!(*scale, VALUE_SCALE);
                assert_eq!(histogram.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_become_dimensions_and_service_and_env_the_identity() {
        let (out, _) = publish(
            &["hits:1|c|#route:/a,service:shop,env:prod,canary|c:abc"],
            StatsdConfig {
                strip_prefix: "x.".into(),
                ..StatsdConfig::default()
            },
        );
        let dims = &out.iter().find(|(n, ..)| n == "hits").unwrap().1;
        let get = |k: &str| dims.iter().find(|(d, _)| d == k).map(|(_, v)| v.as_str());
        assert_eq!(get("route"), Some("/a"));
        assert_eq!(get("ServiceName"), Some("shop"));
        assert_eq!(get("Environment"), Some("prod"));
        assert_eq!(
            get("canary"),
            None,
            "a tag without a value is not a dimension"
        );
    }

    #[test]
    fn a_tag_past_its_limit_becomes_other_and_the_other_tags_are_kept() {
        let lines: Vec<String> = (0..5)
            .map(|i| format!("app.hits:1|c|#user:u{i},route:/r"))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (out, _) = publish(
            &refs,
            StatsdConfig {
                strip_prefix: "app.".into(),
                label_limits: [("user".to_owned(), 2)].into(),
                ..StatsdConfig::default()
            },
        );
        let mut users: Vec<(String, f64)> = out
            .iter()
            .filter(|(n, ..)| n == "hits")
            .map(|(_, d, v)| {
                assert!(d.contains(&("route".into(), "/r".into())));
                let u = d.iter().find(|(k, _)| k == "user").unwrap().1.clone();
                let AggregateValue::Counter(c) = v else {
                    panic!()
                };
                (u, *c)
            })
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            users,
            vec![
                ("__other__".into(), 3.0),
                ("u0".into(), 1.0),
                ("u1".into(), 1.0)
            ]
        );
    }

    #[test]
    fn malformed_lines_and_non_utf8_packets_are_counted_and_good_lines_kept() {
        let (mut r, intake, stats) = receiver(StatsdConfig::default());
        let now = SystemTime::now();
        r.packet(b"ok:1|c\nbad|c\nok:2|c\n_e{1,1}:a|b\n_sc|x|0\nz:1|q", now);
        r.packet(b"ok:5|c\n\xff\xfe", now);
        r.flush(true);
        let total: f64 = intake
            .close_all()
            .iter()
            .flat_map(|p| p.data.metrics.iter())
            .map(|(_, v)| match v {
                AggregateValue::Counter(c) => *c,
                _ => 0.0,
            })
            .sum();
        assert_eq!(total, 3.0);
        let text = stats.render_prometheus();
        for want in [
            "tally_agent_statsd_malformed_lines_total{listener=\"udp\",reason=\"missing_value\"} 1",
            "tally_agent_statsd_malformed_lines_total{listener=\"udp\",reason=\"unknown_type\"} 1",
            "tally_agent_statsd_lines_total{kind=\"event\",listener=\"udp\"} 1",
            "tally_agent_statsd_lines_total{kind=\"service_check\",listener=\"udp\"} 1",
            "tally_agent_statsd_packets_total{listener=\"udp\",outcome=\"non_utf8\"} 1",
            "tally_agent_dropped_samples_total{reason=\"statsd_malformed_line\"} 2",
            "tally_agent_dropped_samples_total{reason=\"statsd_non_utf8_packet\"} 2",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn a_series_past_the_bound_is_dropped_and_counted() {
        let (out, stats) = publish(
            &["a:1|c", "b:1|c", "c:4|c"],
            StatsdConfig {
                max_series: 2,
                ..StatsdConfig::default()
            },
        );
        assert_eq!(find(&out, "c").len(), 0);
        assert_eq!(
            stats.counter_value(
                crate::stats::DROPPED_SAMPLES,
                &[("reason", "statsd_too_many_series")]
            ),
            1
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn sampled_counter_totals_equal_the_sum_of_value_over_rate_whatever_the_flushes(
            lines in proptest::collection::vec((0u32..50, 0usize..4, proptest::bool::ANY), 1..200),
        ) {
            const RATES: [f64; 4] = [1.0, 0.5, 0.25, 0.1];
            let (mut r, intake, _) = receiver(StatsdConfig::default());
            let now = SystemTime::now();
            let mut want = 0.0;
            for (v, rate, flush) in &lines {
                let rate = RATES[*rate];
                want += f64::from(*v) / rate;
                r.packet(format!("n:{v}|c|@{rate}").as_bytes(), now);
                if *flush {
                    r.flush(false);
                }
            }
            r.flush(true);
            let got: f64 = intake
                .close_all()
                .iter()
                .flat_map(|p| p.data.metrics.iter())
                .map(|(_, v)| match v {
                    AggregateValue::Counter(c) => *c,
                    other => panic!("{other:?}"),
                })
                .sum();
            proptest::prop_assert_eq!(got, want.round());
        }

        #[test]
        fn a_gauge_ends_at_the_level_its_sets_and_changes_lead_to(
            ops in proptest::collection::vec((-1000i32..1000, proptest::bool::ANY), 1..100),
        ) {
            let (mut r, intake, _) = receiver(StatsdConfig::default());
            let now = SystemTime::now();
            let mut level = 0.0;
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for (v, change) in &ops {
                let line = if *change {
                    level += f64::from(*v);
                    format!("g:{v:+}|g")
                } else {
                    level = f64::from(v.unsigned_abs());
                    format!("g:{}|g", v.unsigned_abs())
                };
                lo = lo.min(level);
                hi = hi.max(level);
                r.packet(line.as_bytes(), now);
            }
            r.flush(true);
            let closed = intake.close_all();
            let got: Vec<_> = closed.iter().flat_map(|p| p.data.metrics.iter()).collect();
            proptest::prop_assert_eq!(got.len(), 1);
            match &got[0].1 {
                AggregateValue::Gauge { last, min, max, updates } => {
                    proptest::prop_assert_eq!((*last, *min, *max, *updates), (level, lo, hi, ops.len() as u64));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_long_bad_line_is_quoted_truncated_at_a_character_boundary() {
        let line = "é".repeat(200);
        let q = quote(&line);
        assert!(q.len() <= QUOTE_LEN && line.starts_with(q));
    }
}
