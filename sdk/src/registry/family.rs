//! Labelled families: label values chosen at record time, resolved to a cell without
//! allocating for label sets seen before.
//!
//! Each family keeps one lookup cache per shard (the same shards as the cells), so threads on
//! different shards never touch the same lock word: a lookup hashes the values, takes its
//! shard's read lock (uncontended) and compares strings. A miss takes the family's mutex, runs
//! the values through the [`Limiter`], finds or registers the series, and (when no value
//! overflowed) adds the set to every shard's cache, so the miss happens once per label set.
//! Sets with an overflowed value are never cached (a scanner cannot grow the cache); they take
//! the slow path each time, still without allocating.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, RwLock};

use super::{Limiter, Registry, Typed};
use crate::record::{
    Counter, CounterCell, Event, EventCell, Gauge, GaugeCell, Histogram, HistogramCell, Padded,
};
use crate::wire::{Unit, MAX_LABELS};

struct Entry<C> {
    hash: u64,
    values: Box<[Box<str>]>,
    cell: Arc<C>,
}

struct Slow<C> {
    limiter: Limiter,
    /// Resolved (post-limit) label values to cells: every series this family has.
    canon: HashTable<Entry<C>>,
}

/// One shard's lookup cache.
type Cache<C> = Padded<RwLock<HashTable<Entry<C>>>>;

/// The untyped machinery of a family of cells of type `C`.
pub(crate) struct FamilyCore<C> {
    registry: Arc<Registry>,
    name: String,
    unit: Unit,
    keys: Vec<String>,
    hasher: DefaultHashBuilder,
    caches: Box<[Cache<C>]>,
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

impl<C: Typed> FamilyCore<C> {
    pub(crate) fn new(registry: Arc<Registry>, name: &str, unit: Unit, keys: &[&str]) -> Self {
        let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        if keys.len() > MAX_LABELS {
            keys.truncate(MAX_LABELS);
            registry
                .names_fixed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let shards = registry.config.shards;
        let limiter = Limiter::new(&keys, registry.config.label_limit);
        FamilyCore {
            name: name.to_owned(),
            unit,
            keys,
            hasher: DefaultHashBuilder::default(),
            caches: (0..shards.get()).map(|_| Padded::default()).collect(),
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
    pub(crate) fn with_cell<R>(&self, values: &[&str], f: impl FnOnce(&Arc<C>) -> R) -> R {
        let hash = self.hash(values);
        {
            let cache = self.caches[self.registry.config.shards.mine()].0.read();
            if let Some(e) = cache.find(hash, |e| e.hash == hash && same(&e.values, values)) {
                return f(&e.cell);
            }
        }
        self.slow_path(values, f)
    }

    #[cold]
    fn slow_path<R>(&self, values: &[&str], f: impl FnOnce(&Arc<C>) -> R) -> R {
        let mut slow = self.slow.lock();
        let n = self.keys.len();
        let mut resolved = [""; MAX_LABELS];
        let replaced = slow.limiter.resolve(values, &mut resolved[..n]);
        let canon = &resolved[..n];
        if replaced > 0 {
            self.registry
                .label_overflows
                .fetch_add(replaced, std::sync::atomic::Ordering::Relaxed);
        }
        let hash = self.hash(canon);
        if let Some(e) = slow
            .canon
            .find(hash, |e| e.hash == hash && same(&e.values, canon))
        {
            return f(&e.cell);
        }
        let labels: Vec<(&str, &str)> = self
            .keys
            .iter()
            .map(String::as_str)
            .zip(canon.iter().copied())
            .collect();
        let cell: Arc<C> = self.registry.cell(&self.name, self.unit, &labels);
        let boxed: Box<[Box<str>]> = canon.iter().map(|v| Box::from(*v)).collect();
        if replaced == 0 && values.len() == n {
            for cache in self.caches.iter() {
                cache.0.write().insert_unique(
                    hash,
                    Entry {
                        hash,
                        values: boxed.clone(),
                        cell: cell.clone(),
                    },
                    |e| e.hash,
                );
            }
        }
        let r = f(&cell);
        slow.canon.insert_unique(
            hash,
            Entry {
                hash,
                values: boxed,
                cell,
            },
            |e| e.hash,
        );
        r
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
        assert_eq!(
            r.label_overflows.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
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
