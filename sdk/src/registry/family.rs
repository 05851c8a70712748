//! Labelled families: label values chosen at record time, resolved to a cell without a lock,
//! an allocation or a shared write for label sets seen before.
//!
//! A lookup goes through three levels:
//!
//! 1. **This thread's cache** (a `thread_local` hash table keyed by family id + label values).
//!    A hit hashes the values, probes a table only this thread touches, compares strings and
//!    records: no lock, no atomic read-modify-write other than the record itself, no
//!    allocation, nothing another thread writes. This is the path of every repeated call.
//! 2. **The family's shared cache**, behind a read lock: a thread that meets a label set
//!    another thread already resolved takes it from here once, then copies it into its own
//!    cache. One per family, not one per shard: it is read only on a miss of a thread's own
//!    cache, so a copy per shard bought nothing but memory (a label set's entry per shard).
//! 3. **The slow path**, the family's mutex: the values go through the [`Limiter`], the
//!    series is found or registered, and (when no value overflowed) the set is added to
//!    the shared cache. It runs once per label set for the whole process.
//!
//! Sets with an overflowed value are never cached, at any level (a scanner cannot grow the
//! caches, and every call with an over-limit value is counted in
//! [`Stats::label_overflows`](crate::Stats::label_overflows)); they take the slow path each
//! time, still without allocating. Only sets the limiter admitted unchanged are cached, so
//! a cache hit never bypasses a limit.
//!
//! Family ids come from a process-wide counter and are never reused, so the per-thread cache
//! cannot confuse two families, of one [`Tally`](crate::Tally) or of several. Each thread
//! keeps at most [`LOCAL_CAPACITY`] entries (about 48 bytes each; the label values are shared
//! with level 2, not copied); a full cache is cleared (keeping its capacity, so refilling it
//! from level 2 allocates nothing) and forgets entries of families that no longer exist. A thread's cache is freed with the thread; while the thread-local
//! is being torn down, lookups fall back to level 2.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, RwLock};

use super::{CellRef, Limiter, Registry, Typed};
use crate::record::{
    Counter, CounterCell, Event, EventCell, Gauge, GaugeCell, Histogram, HistogramCell,
};
use crate::wire::{Unit, MAX_LABELS};

/// Most label sets one thread's cache holds before it is cleared and refilled.
pub(crate) const LOCAL_CAPACITY: usize = 4096;

/// The next family id. Ids are never reused, so a stale entry in a thread's cache (of a
/// family that was dropped) can never be mistaken for an entry of a new family.
static NEXT_FAMILY_ID: AtomicU64 = AtomicU64::new(1);

/// One entry of a thread's cache.
struct LocalEntry {
    family: u64,
    values: Arc<[Box<str>]>,
    cell: CellRef,
}

thread_local! {
    /// This thread's label-set cache, shared by all families (entries carry the family id).
    static LOCAL: RefCell<HashTable<(u64, LocalEntry)>> = const { RefCell::new(HashTable::new()) };
}

/// The key under which a family's label set sits in a thread's cache: the family's own
/// (randomly seeded) hash of the values, mixed with the family id.
#[inline]
fn local_key(family: u64, hash: u64) -> u64 {
    hash ^ family.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

struct Entry<C> {
    hash: u64,
    values: Arc<[Box<str>]>,
    cell: Arc<C>,
}

struct Slow<C> {
    limiter: Limiter,
    /// Resolved (post-limit) label values to cells: every series this family has.
    canon: HashTable<Entry<C>>,
}

/// The family's shared lookup cache.
type Cache<C> = RwLock<HashTable<Entry<C>>>;

/// The untyped machinery of a family of cells of type `C`.
pub(crate) struct FamilyCore<C> {
    registry: Arc<Registry>,
    id: u64,
    name: String,
    unit: Unit,
    keys: Vec<String>,
    hasher: DefaultHashBuilder,
    cache: Cache<C>,
    slow: Mutex<Slow<C>>,
}

impl<C> std::fmt::Debug for FamilyCore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn same(stored: &[Box<str>], values: &[&str]) -> bool {
    stored.len() == values.len() && stored.iter().zip(values).all(|(a, b)| **a == **b)
}

/// What the slow path resolved a label set to.
enum Resolved<C> {
    /// Every value was admitted as is: the set may be cached.
    Admitted(Arc<[Box<str>]>, Arc<C>),
    /// A value was folded into the overflow value: never cached.
    Overflowed(Arc<C>),
}

impl<C: Typed> FamilyCore<C> {
    pub(crate) fn new(registry: Arc<Registry>, name: &str, unit: Unit, keys: &[&str]) -> Self {
        let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        if keys.len() > MAX_LABELS {
            keys.truncate(MAX_LABELS);
            registry.names_fixed.fetch_add(1, Ordering::Relaxed);
        }
        let limiter = Limiter::new(&keys, registry.config.label_limit);
        FamilyCore {
            name: name.to_owned(),
            id: NEXT_FAMILY_ID.fetch_add(1, Ordering::Relaxed),
            unit,
            keys,
            hasher: DefaultHashBuilder::default(),
            cache: RwLock::default(),
            slow: Mutex::new(Slow {
                limiter,
                canon: HashTable::new(),
            }),
            registry,
        }
    }

    fn hash(&self, values: &[&str]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            h.write(v.as_bytes());
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// Runs `f` on the cell of `values`.
    #[inline]
    pub(crate) fn with_cell<R>(&self, values: &[&str], f: impl Fn(&Arc<C>) -> R) -> R {
        let hash = self.hash(values);
        let key = local_key(self.id, hash);
        // Level 1: this thread's cache. `try_with` fails only while the thread-local is being
        // destroyed, `try_borrow` never fails (nothing called from here re-enters); both
        // fall through to the shared levels.
        let hit = LOCAL.try_with(|local| {
            let local = local.try_borrow().ok()?;
            let (_, e) = local.find(key, |(k, e)| {
                *k == key && e.family == self.id && same(&e.values, values)
            })?;
            C::extract(&e.cell).map(&f)
        });
        if let Ok(Some(r)) = hit {
            return r;
        }
        self.shared_path(hash, key, values, f)
    }

    /// Levels 2 and 3; remembers an admitted set in this thread's cache.
    #[cold]
    #[inline(never)]
    fn shared_path<R>(&self, hash: u64, key: u64, values: &[&str], f: impl Fn(&Arc<C>) -> R) -> R {
        let found = {
            let cache = self.cache.read();
            cache
                .find(hash, |e| e.hash == hash && same(&e.values, values))
                .map(|e| (e.values.clone(), e.cell.clone()))
        };
        let (values, cell) = match found {
            Some(found) => found,
            None => match self.slow_path(values, hash) {
                Resolved::Admitted(values, cell) => (values, cell),
                Resolved::Overflowed(cell) => return f(&cell),
            },
        };
        let r = f(&cell);
        // Not cached while the thread-local is torn down; the next call resolves again.
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut() {
                if local.len() >= LOCAL_CAPACITY {
                    local.clear();
                }
                let entry = LocalEntry {
                    family: self.id,
                    values,
                    cell: C::wrap(cell),
                };
                local.insert_unique(key, (key, entry), |(k, _)| *k);
            }
        });
        r
    }

    /// Level 3: the limiter, the registry, and the shared caches.
    fn slow_path(&self, values: &[&str], hash: u64) -> Resolved<C> {
        let mut slow = self.slow.lock();
        let n = self.keys.len();
        let mut resolved = [""; MAX_LABELS];
        let replaced = slow.limiter.resolve(values, &mut resolved[..n]);
        let canon = &resolved[..n];
        if replaced > 0 {
            self.registry
                .label_overflows
                .fetch_add(replaced, Ordering::Relaxed);
        }
        let admitted = replaced == 0 && values.len() == n;
        // Unchanged values hash the same; only overflowed sets need a new hash.
        let canon_hash = if admitted { hash } else { self.hash(canon) };
        let existing = slow
            .canon
            .find(canon_hash, |e| {
                e.hash == canon_hash && same(&e.values, canon)
            })
            .map(|e| (e.values.clone(), e.cell.clone()));
        let (boxed, cell) = match existing {
            Some(found) => found,
            None => {
                let labels: Vec<(&str, &str)> = self
                    .keys
                    .iter()
                    .map(String::as_str)
                    .zip(canon.iter().copied())
                    .collect();
                let (cell, _, folded) = self
                    .registry
                    .cell_and_unit::<C>(&self.name, self.unit, &labels);
                if folded {
                    // Past the registry's series bound: the overflow series takes it, and
                    // nothing is cached for this value set, so memory stays bounded however
                    // many sets arrive (each goes through this path again).
                    return Resolved::Overflowed(cell);
                }
                let boxed: Arc<[Box<str>]> = canon.iter().map(|v| Box::from(*v)).collect();
                slow.canon.insert_unique(
                    canon_hash,
                    Entry {
                        hash: canon_hash,
                        values: boxed.clone(),
                        cell: cell.clone(),
                    },
                    |e| e.hash,
                );
                if admitted {
                    self.cache.write().insert_unique(
                        hash,
                        Entry {
                            hash,
                            values: boxed.clone(),
                            cell: cell.clone(),
                        },
                        |e| e.hash,
                    );
                }
                (boxed, cell)
            }
        };
        if admitted {
            Resolved::Admitted(boxed, cell)
        } else {
            Resolved::Overflowed(cell)
        }
    }

    fn set_limit(&self, key: &str, limit: usize) {
        if !self.slow.lock().limiter.set_limit(key, limit) {
            // Not an error a caller could act on at record time; the key simply has no limit
            // to override. Counted with the other naming fixes.
            self.registry
                .names_fixed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

macro_rules! family {
    ($(#[$doc:meta])* $family:ident, $cell:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $family {
            pub(crate) core: Arc<FamilyCore<$cell>>,
        }

        impl $family {
            /// Overrides the cardinality limit of label `key` for this family (values
            /// already admitted stay). An unknown key is ignored and counted in
            /// [`Stats::names_fixed`](crate::Stats::names_fixed).
            pub fn label_limit(self, key: &str, limit: usize) -> Self {
                self.core.set_limit(key, limit);
                self
            }
        }
    };
}

family!(
    /// Counters whose label values are chosen at record time.
    CounterFamily,
    CounterCell
);
family!(
    /// Gauges whose label values are chosen at record time.
    GaugeFamily,
    GaugeCell
);
family!(
    /// Histograms whose label values are chosen at record time.
    HistogramFamily,
    HistogramCell
);
family!(
    /// Business events whose label values are chosen at record time.
    EventFamily,
    EventCell
);

impl CounterFamily {
    /// Adds `n` to the counter of `values` (one value per label key, in key order).
    #[inline]
    pub fn increment(&self, values: &[&str], n: u64) {
        self.core.with_cell(values, |c| c.add(n));
    }

    /// The handle of `values`, to record many times without a lookup.
    pub fn with(&self, values: &[&str]) -> Counter {
        Counter {
            cell: self.core.with_cell(values, Arc::clone),
        }
    }
}

impl GaugeFamily {
    /// Sets the gauge of `values`.
    #[inline]
    pub fn set(&self, values: &[&str], v: f64) {
        self.core.with_cell(values, |c| c.update(|_| v));
    }

    /// Adds `v` to the gauge of `values`.
    #[inline]
    pub fn increment(&self, values: &[&str], v: f64) {
        self.core.with_cell(values, |c| c.update(|x| x + v));
    }

    /// Subtracts `v` from the gauge of `values`.
    #[inline]
    pub fn decrement(&self, values: &[&str], v: f64) {
        self.core.with_cell(values, |c| c.update(|x| x - v));
    }

    /// The handle of `values`.
    pub fn with(&self, values: &[&str]) -> Gauge {
        Gauge {
            cell: self.core.with_cell(values, Arc::clone),
        }
    }
}

impl HistogramFamily {
    /// Records `v` (in the family's unit) into the histogram of `values`.
    #[inline]
    pub fn record(&self, values: &[&str], v: u64) {
        self.core.with_cell(values, |c| c.record_n(v, 1));
    }

    /// Records a duration, converted into the family's time unit.
    #[inline]
    pub fn record_duration(&self, values: &[&str], d: Duration) {
        let v = crate::record::duration_in(d, self.core.unit);
        self.core.with_cell(values, |c| c.record_n(v, 1));
    }

    /// The handle of `values`.
    pub fn with(&self, values: &[&str]) -> Histogram {
        Histogram {
            cell: self.core.with_cell(values, Arc::clone),
            unit: self.core.unit,
        }
    }
}

impl EventFamily {
    /// Counts one occurrence of the event of `values`.
    #[inline]
    pub fn emit(&self, values: &[&str]) {
        self.core.with_cell(values, |c| c.emit());
    }

    /// Counts one occurrence of the event of `values` and records its value.
    #[inline]
    pub fn emit_value(&self, values: &[&str], value: f64) {
        self.core.with_cell(values, |c| c.emit_value(value));
    }

    /// The handle of `values`.
    pub fn with(&self, values: &[&str]) -> Event {
        Event {
            cell: self.core.with_cell(values, Arc::clone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventions::OVERFLOW_VALUE;
    use crate::record::{Layout, ShardCount};
    use crate::registry::{CellRef, RecordConfig};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn registry(limit: usize) -> Arc<Registry> {
        Arc::new(Registry::new(RecordConfig {
            shards: ShardCount::new(2),
            layout: Layout::new(3),
            event_scale: 1000.0,
            label_limit: limit,
            max_series: 100_000,
        }))
    }

    fn counter_total(r: &Registry, labels: &[(&str, &str)]) -> u64 {
        r.series()
            .iter()
            .filter(|e| {
                e.labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .eq(labels.iter().copied())
            })
            .map(|e| match &e.cell {
                CellRef::Counter(c) => c.take(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn past_the_series_bound_a_family_caches_no_new_value_sets_and_counts_every_sample() {
        let r = Arc::new(Registry::new(RecordConfig {
            shards: ShardCount::new(2),
            layout: Layout::new(3),
            event_scale: 1000.0,
            label_limit: 100_000,
            max_series: 10,
        }));
        let core = Arc::new(FamilyCore::new(r.clone(), "Hits", Unit::Count, &["user"]));
        let f = CounterFamily { core: core.clone() };
        let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
        for u in &users {
            f.increment(&[u], 1);
        }
        // Ten series, then one overflow series for the other 990 users; the family's caches
        // hold the ten admitted sets only, not 1000.
        assert_eq!(r.series().len(), 11);
        assert_eq!(core.slow.lock().canon.len(), 10);
        assert!(core.cache.read().len() <= 10);
        assert_eq!(counter_total(&r, &[("user", OVERFLOW_VALUE)]), 990);
        assert_eq!(r.label_overflows.load(Ordering::Relaxed), 990);
    }

    #[test]
    fn a_family_folds_only_the_overflowing_label() {
        let r = registry(2);
        let f = CounterFamily {
            core: Arc::new(FamilyCore::new(r.clone(), "Req", Unit::Count, &["a", "b"])),
        };
        for v in ["1", "2", "3", "4"] {
            f.increment(&[v, "x"], 1);
        }
        f.increment(&["1", "x"], 10);
        assert_eq!(counter_total(&r, &[("a", "1"), ("b", "x")]), 11);
        assert_eq!(counter_total(&r, &[("a", OVERFLOW_VALUE), ("b", "x")]), 2);
        assert_eq!(r.label_overflows.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_seen_label_set_is_recorded_without_taking_any_lock() {
        use crossbeam_channel::bounded;
        let r = registry(10);
        let f = CounterFamily {
            core: Arc::new(FamilyCore::new(r.clone(), "Req", Unit::Count, &["k"])),
        };
        let (ready_tx, ready_rx) = bounded(1);
        let (go_tx, go_rx) = bounded::<()>(1);
        let (done_tx, done_rx) = bounded(1);
        let worker = {
            let f = f.clone();
            std::thread::spawn(move || {
                f.increment(&["v"], 1); // resolved through the locks, then cached
                let _ = ready_tx.send(());
                if go_rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                    f.increment(&["v"], 1);
                    let _ = done_tx.send(());
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the worker records once");
        // Hold every lock the family has while the worker records the same set again.
        let slow = f.core.slow.lock();
        let cache = f.core.cache.write();
        go_tx.send(()).expect("the worker waits");
        let recorded_under_locks = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        drop(cache);
        drop(slow);
        worker.join().expect("worker");
        assert!(recorded_under_locks, "a cache hit waited for a lock");
        assert_eq!(counter_total(&r, &[("k", "v")]), 2);
    }

    #[test]
    fn families_of_two_registries_with_the_same_name_never_share_cached_cells() {
        let (r1, r2) = (registry(10), registry(10));
        let f1 = CounterFamily {
            core: Arc::new(FamilyCore::new(r1.clone(), "Req", Unit::Count, &["k"])),
        };
        let f2 = CounterFamily {
            core: Arc::new(FamilyCore::new(r2.clone(), "Req", Unit::Count, &["k"])),
        };
        for _ in 0..3 {
            f1.increment(&["v"], 1);
            f2.increment(&["v"], 10);
        }
        assert_eq!(counter_total(&r1, &[("k", "v")]), 3);
        assert_eq!(counter_total(&r2, &[("k", "v")]), 30);
    }

    #[test]
    fn limits_and_overflow_counts_stay_exact_across_threads_and_cache_refills() {
        let r = registry(3);
        let f = CounterFamily {
            core: Arc::new(FamilyCore::new(r.clone(), "Req", Unit::Count, &["a", "b"])),
        };
        // Four threads race to record 6 values of `a` (3 fit the limit) 50 times each; then
        // this thread records them once more with its cache cleared. Every record lands,
        // every over-limit value is counted once per record, and no more than 3 get in.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for a in ["1", "2", "3", "4", "5", "6"] {
                            f.increment(&[a, "x"], 1);
                        }
                    }
                });
            }
        });
        LOCAL.with(|l| l.borrow_mut().clear());
        for a in ["1", "2", "3", "4", "5", "6"] {
            f.increment(&[a, "x"], 1);
        }
        let kept: u64 = ["1", "2", "3", "4", "5", "6"]
            .iter()
            .map(|a| counter_total(&r, &[("a", a), ("b", "x")]))
            .sum();
        let other = counter_total(&r, &[("a", OVERFLOW_VALUE), ("b", "x")]);
        assert_eq!(
            kept,
            3 * 201,
            "three values admitted, each recorded 4 x 50 + 1 times"
        );
        assert_eq!(other, 3 * 201);
        assert_eq!(r.label_overflows.load(Ordering::Relaxed), 3 * 201);
    }

    #[test]
    fn a_full_thread_cache_is_cleared_and_refilled_without_losing_records() {
        let r = registry(LOCAL_CAPACITY + 100);
        let f = CounterFamily {
            core: Arc::new(FamilyCore::new(r.clone(), "Req", Unit::Count, &["k"])),
        };
        let values: Vec<String> = (0..LOCAL_CAPACITY + 10).map(|i| i.to_string()).collect();
        for _ in 0..2 {
            for v in &values {
                f.increment(&[v], 1);
            }
        }
        assert!(LOCAL.with(|l| l.borrow().len()) <= LOCAL_CAPACITY);
        let total: u64 = r
            .series()
            .iter()
            .map(|e| match &e.cell {
                CellRef::Counter(c) => c.take(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 2 * values.len() as u64);
    }

    #[test]
    fn with_returns_the_same_cell_as_labelled_recording() {
        let r = registry(10);
        let f = HistogramFamily {
            core: Arc::new(FamilyCore::new(r.clone(), "Lat", Unit::Nanoseconds, &["k"])),
        };
        let h = f.with(&["v"]);
        h.record(5);
        f.record(&["v"], 5);
        assert_eq!(r.series().len(), 1);
        let CellRef::Histogram(c) = &r.series()[0].cell else {
            panic!("a histogram family registers histograms")
        };
        assert_eq!(c.take().map(|h| h.len()), Some(2));
    }
}
