//! Step 2 of the data path: where series come from. The registry turns a name and labels
//! into the cell a handle records into; families resolve label values chosen at record time,
//! through per-label cardinality limits, into the same cells.
//!
//! Registration is the slow path (a mutex, allocations); it happens once per series. The
//! flusher walks the registry's list of series each interval.

pub(crate) mod family;
mod limiter;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub use family::{CounterFamily, EventFamily, GaugeFamily, HistogramFamily};
pub(crate) use limiter::Limiter;

use crate::conventions::OVERFLOW_VALUE;
use crate::record::{CounterCell, EventCell, GaugeCell, HistogramCell, Layout, ShardCount};
use crate::wire::{Unit, MAX_LABELS, MAX_LABEL_VALUE_LEN, MAX_NAME_LEN};

/// What kind of series a cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Event,
}

/// A reference to a series' storage.
#[derive(Debug, Clone)]
pub(crate) enum CellRef {
    Counter(Arc<CounterCell>),
    Gauge(Arc<GaugeCell>),
    Histogram(Arc<HistogramCell>),
    Event(Arc<EventCell>),
}

impl CellRef {
    pub(crate) fn memory_bytes(&self) -> usize {
        match self {
            CellRef::Counter(c) => c.memory_bytes(),
            CellRef::Gauge(c) => c.memory_bytes(),
            CellRef::Histogram(c) => c.memory_bytes(),
            CellRef::Event(c) => c.memory_bytes(),
        }
    }
}

/// A cell type that knows its kind, so families and handles can be typed.
pub(crate) trait Typed: Send + Sync + 'static {
    const KIND: Kind;
    fn extract(c: &CellRef) -> Option<&Arc<Self>>;
    fn wrap(c: Arc<Self>) -> CellRef;
}

macro_rules! typed {
    ($cell:ty, $kind:ident) => {
        impl Typed for $cell {
            const KIND: Kind = Kind::$kind;
            fn extract(c: &CellRef) -> Option<&Arc<Self>> {
                match c {
                    CellRef::$kind(x) => Some(x),
                    _ => None,
                }
            }
            fn wrap(c: Arc<Self>) -> CellRef {
                CellRef::$kind(c)
            }
        }
    };
}
typed!(CounterCell, Counter);
typed!(GaugeCell, Gauge);
typed!(HistogramCell, Histogram);
typed!(EventCell, Event);

/// One registered series.
#[derive(Debug)]
pub(crate) struct SeriesEntry {
    pub(crate) name: String,
    pub(crate) unit: Unit,
    /// Sorted by key.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) cell: CellRef,
}

/// How cells are built: shard count, histogram precision, event value scale, label limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordConfig {
    pub(crate) shards: ShardCount,
    pub(crate) layout: Layout,
    pub(crate) event_scale: f64,
    pub(crate) label_limit: usize,
    /// Most distinct series; past it a new series' label values become the overflow value.
    pub(crate) max_series: usize,
}

type Key = (Kind, String, Vec<(String, String)>);

/// All series of one [`Tally`](crate::Tally).
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) config: RecordConfig,
    inner: Mutex<Inner>,
    /// Label values folded into the overflow value (or invalid ones replaced by it).
    pub(crate) label_overflows: AtomicU64,
    /// Names, label keys or label values that had to be fixed to be publishable
    /// (empty, too long, too many labels).
    pub(crate) names_fixed: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    by_key: HashMap<Key, Arc<SeriesEntry>>,
    all: Vec<Arc<SeriesEntry>>,
}

/// Truncates `s` to at most `max` bytes on a char boundary; an empty string becomes `_`.
fn fix(s: &str, max: usize, fixed: &mut bool) -> String {
    if s.is_empty() {
        *fixed = true;
        return "_".to_owned();
    }
    if s.len() <= max {
        return s.to_owned();
    }
    *fixed = true;
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Registry {
    pub(crate) fn new(config: RecordConfig) -> Self {
        Registry {
            config,
            inner: Mutex::new(Inner::default()),
            label_overflows: AtomicU64::new(0),
            names_fixed: AtomicU64::new(0),
        }
    }

    /// The cell of series (`name`, `labels`) of kind `C`, created on first use.
    ///
    /// Names and labels are made publishable rather than refused (recording code has no
    /// error path): empty strings become `_`, long ones are truncated to CloudWatch's limits,
    /// labels past [`MAX_LABELS`] and repeated keys are dropped; each fix is counted in
    /// [`Stats::names_fixed`](crate::Stats::names_fixed).
    pub(crate) fn cell<C: Typed>(&self, name: &str, unit: Unit, labels: &[(&str, &str)]) -> Arc<C> {
        self.cell_and_unit(name, unit, labels).0
    }

    /// Like [`cell`](Self::cell), building a new cell with `make` (which must build a `C`).
    #[cfg(feature = "metrics-facade")]
    pub(crate) fn cell_with<C: Typed>(
        &self,
        name: &str,
        unit: Unit,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> CellRef,
    ) -> Arc<C> {
        self.register(name, unit, labels, make).0
    }

    /// Like [`cell`](Self::cell), with the unit the series was registered with: the first
    /// registration's. A later one that asks for another unit gets the same cell (one
    /// series, one unit on the wire) and is counted in `names_fixed`; a handle that converts
    /// values (durations) must convert into the returned unit.
    ///
    /// The flag says whether the series bound folded the labels into the overflow value (the
    /// cell is then the overflow series').
    pub(crate) fn cell_and_unit<C: Typed>(
        &self,
        name: &str,
        unit: Unit,
        labels: &[(&str, &str)],
    ) -> (Arc<C>, Unit, bool) {
        self.register(name, unit, labels, || self.new_cell(C::KIND))
    }

    /// Finds or creates the series: its cell, unit, and whether the labels were folded.
    fn register<C: Typed>(
        &self,
        name: &str,
        unit: Unit,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> CellRef,
    ) -> (Arc<C>, Unit, bool) {
        let mut fixed = false;
        let name = fix(name, MAX_NAME_LEN, &mut fixed);
        let mut ls: Vec<(String, String)> = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            let k = fix(k, MAX_NAME_LEN, &mut fixed);
            if ls.iter().any(|(x, _)| *x == k) || ls.len() == MAX_LABELS {
                fixed = true;
                continue;
            }
            ls.push((k, fix(v, MAX_LABEL_VALUE_LEN, &mut fixed)));
        }
        ls.sort();
        if fixed {
            self.names_fixed.fetch_add(1, Ordering::Relaxed);
        }
        let mut key = (C::KIND, name, ls);
        let mut inner = self.inner.lock();
        if let Some(e) = inner.by_key.get(&key) {
            if let Some(c) = C::extract(&e.cell) {
                if e.unit != unit {
                    self.names_fixed.fetch_add(1, Ordering::Relaxed);
                }
                return (c.clone(), e.unit, false);
            }
        }
        // Past the series bound, a new series keeps its name and label keys but every label
        // value becomes the overflow value: memory stays bounded however many distinct values
        // the code records (a million user ids), and the samples are still counted.
        let mut folded = false;
        if inner.all.len() >= self.config.max_series && !key.2.is_empty() {
            let replaced = key.2.iter().filter(|(_, v)| v != OVERFLOW_VALUE).count();
            self.label_overflows
                .fetch_add(replaced as u64, Ordering::Relaxed);
            for (_, v) in &mut key.2 {
                OVERFLOW_VALUE.clone_into(v);
            }
            if let Some(e) = inner.by_key.get(&key) {
                if let Some(c) = C::extract(&e.cell) {
                    return (c.clone(), e.unit, true);
                }
            }
            folded = true;
        }
        let cell = make();
        let typed = C::extract(&cell)
            .expect("cells are built for the kind they are registered as")
            .clone();
        let entry = Arc::new(SeriesEntry {
            name: key.1.clone(),
            unit,
            labels: key.2.clone(),
            cell,
        });
        inner.all.push(entry.clone());
        inner.by_key.insert(key, entry);
        (typed, unit, folded)
    }

    fn new_cell(&self, kind: Kind) -> CellRef {
        let c = &self.config;
        match kind {
            Kind::Counter => CellRef::Counter(Arc::new(CounterCell::new(c.shards))),
            Kind::Gauge => CellRef::Gauge(Arc::new(GaugeCell::new())),
            Kind::Histogram => CellRef::Histogram(Arc::new(HistogramCell::new(c.shards, c.layout))),
            Kind::Event => CellRef::Event(Arc::new(EventCell {
                count: CounterCell::new(c.shards),
                values: HistogramCell::new(c.shards, c.layout),
                scale: c.event_scale,
            })),
        }
    }

    /// Every series registered so far, in registration order.
    pub(crate) fn series(&self) -> Vec<Arc<SeriesEntry>> {
        self.inner.lock().all.clone()
    }

    /// Bytes all cells occupy now.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.inner
            .lock()
            .all
            .iter()
            .map(|e| e.cell.memory_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(RecordConfig {
            shards: ShardCount::new(2),
            layout: Layout::new(3),
            event_scale: 1000.0,
            label_limit: 10,
            max_series: 4,
        })
    }

    #[test]
    fn past_the_series_bound_new_label_values_fold_into_the_overflow_series() {
        let r = registry();
        for i in 0..1000 {
            let id = i.to_string();
            let c: Arc<CounterCell> = r.cell("Hits", Unit::Count, &[("user", &id), ("k", "v")]);
            c.add(1);
        }
        let s = r.series();
        assert_eq!(s.len(), 5, "four series, then one overflow series");
        assert_eq!(
            s[4].labels,
            vec![
                ("k".to_owned(), OVERFLOW_VALUE.to_owned()),
                ("user".to_owned(), OVERFLOW_VALUE.to_owned())
            ]
        );
        assert_eq!(r.label_overflows.load(Ordering::Relaxed), 996 * 2);
        let unlabelled: Arc<CounterCell> = r.cell("Other", Unit::Count, &[]);
        unlabelled.add(1);
        assert_eq!(
            r.series().len(),
            6,
            "a series without labels has nothing to fold"
        );
    }

    #[test]
    fn the_same_name_and_labels_in_any_order_share_one_cell() {
        let r = registry();
        let a: Arc<CounterCell> = r.cell("Hits", Unit::Count, &[("a", "1"), ("b", "2")]);
        let b: Arc<CounterCell> = r.cell("Hits", Unit::Count, &[("b", "2"), ("a", "1")]);
        assert!(Arc::ptr_eq(&a, &b));
        let c: Arc<CounterCell> = r.cell("Hits", Unit::Count, &[("a", "2")]);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(r.series().len(), 2);
    }

    #[test]
    fn unpublishable_names_are_fixed_and_counted() {
        let r = registry();
        let long = "x".repeat(300);
        let _: Arc<GaugeCell> = r.cell("", Unit::None, &[(&long, ""), ("k", "v")]);
        let s = &r.series()[0];
        assert_eq!(s.name, "_");
        assert_eq!(s.labels[1].0.len(), MAX_NAME_LEN);
        assert_eq!(s.labels[1].1, "_");
        assert_eq!(r.names_fixed.load(Ordering::Relaxed), 1);
    }
}
