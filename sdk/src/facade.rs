//! Feature `metrics-facade`: the `metrics` crate's [`Recorder`](metrics::Recorder), so code
//! that already uses `metrics::counter!` / `gauge!` / `histogram!` records into tally
//! unchanged.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tally = tally::Tally::builder().service("checkout").build()?;
//! tally::facade::install(&tally)?;
//! metrics::counter!("RequestCount", "Route" => "/orders/{id}").increment(1);
//! # Ok(())
//! # }
//! ```
//!
//! Keys map to series by name and labels. `metrics` histograms record `f64`: a histogram
//! described with a time unit (`describe_histogram!(.., Unit::Seconds, ..)`) records
//! nanoseconds; one described in bytes or as a count records integers; any other histogram
//! keeps six decimals (stored times 10^6, published divided back). Each distinct key is
//! resolved once and cached, so repeated macro calls with the same labels cost a hash lookup.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{Key, KeyName, Metadata, SharedString};
use parking_lot::{Mutex, RwLock};

use crate::record::{scaled, CounterCell, GaugeCell, HistogramCell};
use crate::registry::CellRef;
use crate::wire::Unit;
use crate::Tally;

/// Installs a [`TallyRecorder`] for `tally` as the global `metrics` recorder. Fails when a
/// global recorder is already installed (it can be set once per process).
pub fn install(tally: &Tally) -> Result<(), metrics::SetRecorderError<TallyRecorder>> {
    metrics::set_global_recorder(TallyRecorder::new(tally))
}

/// A `metrics::Recorder` that records into a [`Tally`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TallyRecorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tally: Tally,
    units: Mutex<HashMap<String, metrics::Unit>>,
    counters: RwLock<HashMap<Key, metrics::Counter>>,
    gauges: RwLock<HashMap<Key, metrics::Gauge>>,
    histograms: RwLock<HashMap<Key, metrics::Histogram>>,
}

struct FacadeCounter {
    cell: Arc<CounterCell>,
    absolute: AtomicU64,
}

impl metrics::CounterFn for FacadeCounter {
    fn increment(&self, value: u64) {
        self.cell.add(value);
    }

    /// Counters travel as deltas: an absolute value adds its increase over the largest
    /// absolute value seen.
    fn absolute(&self, value: u64) {
        let prev = self.absolute.fetch_max(value, Ordering::Relaxed);
        if value > prev {
            self.cell.add(value - prev);
        }
    }
}

struct FacadeGauge(Arc<GaugeCell>);

impl metrics::GaugeFn for FacadeGauge {
    fn increment(&self, value: f64) {
        self.0.update(|x| x + value);
    }
    fn decrement(&self, value: f64) {
        self.0.update(|x| x - value);
    }
    fn set(&self, value: f64) {
        self.0.update(|_| value);
    }
}

struct FacadeHistogram {
    cell: Arc<HistogramCell>,
    /// Multiplier from the recorded `f64` to the stored integer.
    factor: f64,
}

impl metrics::HistogramFn for FacadeHistogram {
    fn record(&self, value: f64) {
        self.cell.record_n(scaled(value, self.factor), 1);
    }
    fn record_many(&self, value: f64, count: usize) {
        self.cell.record_n(scaled(value, self.factor), count as u64);
    }
}

/// Tally unit, factor from the recorded f64 to stored integers, and the published scale.
fn histogram_unit(unit: Option<metrics::Unit>) -> (Unit, f64, f64) {
    use metrics::Unit as M;
    match unit {
        Some(M::Seconds) => (Unit::Nanoseconds, 1e9, 1.0),
        Some(M::Milliseconds) => (Unit::Nanoseconds, 1e6, 1.0),
        Some(M::Microseconds) => (Unit::Nanoseconds, 1e3, 1.0),
        Some(M::Nanoseconds) => (Unit::Nanoseconds, 1.0, 1.0),
        Some(M::Bytes) => (Unit::Bytes, 1.0, 1.0),
        Some(M::Count) => (Unit::Count, 1.0, 1.0),
        Some(M::Percent) => (Unit::Percent, 1e6, 1e6),
        _ => (Unit::None, 1e6, 1e6),
    }
}

fn labels(key: &Key) -> Vec<(&str, &str)> {
    key.labels().map(|l| (l.key(), l.value())).collect()
}

impl TallyRecorder {
    /// A recorder for `tally` (not installed: see [`install`]).
    pub fn new(tally: &Tally) -> Self {
        TallyRecorder {
            inner: Arc::new(Inner {
                tally: tally.clone(),
                units: Mutex::new(HashMap::new()),
                counters: RwLock::new(HashMap::new()),
                gauges: RwLock::new(HashMap::new()),
                histograms: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The handle of `key`, built once and cached. The cache holds at most the registry's
    /// `max_series` keys: past that, handles are built on each call (the registry folds their
    /// label values into the overflow series), so a million distinct label values cannot grow
    /// it without bound. A `Counter::absolute` on such an uncached key counts its full value.
    fn cached<H: Clone>(
        &self,
        map: &RwLock<HashMap<Key, H>>,
        key: &Key,
        make: impl FnOnce() -> H,
    ) -> H {
        if let Some(h) = map.read().get(key) {
            return h.clone();
        }
        let mut w = map.write();
        if w.len() >= self.inner.tally.registry().config.max_series {
            drop(w);
            return make();
        }
        w.entry(key.clone()).or_insert_with(make).clone()
    }
}

impl metrics::Recorder for TallyRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: SharedString) {}

    fn describe_histogram(&self, key: KeyName, unit: Option<metrics::Unit>, _: SharedString) {
        if let Some(u) = unit {
            self.inner.units.lock().insert(key.as_str().to_owned(), u);
        }
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        self.cached(&self.inner.counters, key, || {
            let cell = self.inner.tally.counter(key.name(), &labels(key)).cell;
            metrics::Counter::from_arc(Arc::new(FacadeCounter {
                cell,
                absolute: AtomicU64::new(0),
            }))
        })
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        self.cached(&self.inner.gauges, key, || {
            let cell = self.inner.tally.gauge(key.name(), &labels(key)).cell;
            metrics::Gauge::from_arc(Arc::new(FacadeGauge(cell)))
        })
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        self.cached(&self.inner.histograms, key, || {
            let described = self.inner.units.lock().get(key.name()).copied();
            let (unit, factor, scale) = histogram_unit(described);
            let registry = self.inner.tally.registry();
            let cell: Arc<HistogramCell> =
                registry.cell_with(key.name(), unit, &labels(key), || {
                    let mut h = HistogramCell::new(registry.config.shards, registry.config.layout);
                    h.scale = scale;
                    CellRef::Histogram(Arc::new(h))
                });
            metrics::Histogram::from_arc(Arc::new(FacadeHistogram { cell, factor }))
        })
    }
}
