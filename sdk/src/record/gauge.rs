//! Gauges: one shared cell holding the value as f64 bits, with the interval's extremes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Padded;

/// The storage of one gauge series. A gauge's value is global by definition, so it is one
/// cell (on its own cache lines) updated with compare-and-swap; gauges that many threads
/// move at once (requests in flight) pay for that sharing, and only they do.
#[derive(Debug)]
pub(crate) struct GaugeCell {
    inner: Padded<GaugeInner>,
}

#[derive(Debug)]
struct GaugeInner {
    value: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
    updates: AtomicU64,
}

/// What a gauge did during one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GaugeDelta {
    pub(crate) last: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) updates: u64,
}

fn update_bits(a: &AtomicU64, f: impl Fn(f64) -> f64) -> f64 {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        let new = f(f64::from_bits(cur));
        match a.compare_exchange_weak(cur, new.to_bits(), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return new,
            Err(seen) => cur = seen,
        }
    }
}

impl GaugeCell {
    pub(crate) fn new() -> Self {
        GaugeCell {
            inner: Padded(GaugeInner {
                value: AtomicU64::new(0f64.to_bits()),
                min: AtomicU64::new(0f64.to_bits()),
                max: AtomicU64::new(0f64.to_bits()),
                updates: AtomicU64::new(0),
            }),
        }
    }

    #[inline]
    pub(crate) fn update(&self, f: impl Fn(f64) -> f64) {
        let g = &self.inner.0;
        let new = update_bits(&g.value, f);
        update_bits(&g.min, |m| m.min(new));
        update_bits(&g.max, |m| m.max(new));
        g.updates.fetch_add(1, Ordering::Relaxed);
    }

    /// The interval's delta: the last value, the extremes (including the value the interval
    /// started with) and the number of updates. Resets the extremes to the current value.
    pub(crate) fn take(&self) -> GaugeDelta {
        let g = &self.inner.0;
        let updates = g.updates.swap(0, Ordering::Relaxed);
        let last = f64::from_bits(g.value.load(Ordering::Relaxed));
        let min = f64::from_bits(g.min.swap(last.to_bits(), Ordering::Relaxed));
        let max = f64::from_bits(g.max.swap(last.to_bits(), Ordering::Relaxed));
        GaugeDelta {
            last,
            min: min.min(last),
            max: max.max(last),
            updates,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// A value that goes up and down, published each interval as its last value with the
/// interval's minimum and maximum.
#[derive(Debug, Clone)]
pub struct Gauge {
    pub(crate) cell: Arc<GaugeCell>,
}

impl Gauge {
    /// Adds `v`.
    #[inline]
    pub fn increment(&self, v: f64) {
        self.cell.update(|x| x + v);
    }

    /// Subtracts `v`.
    #[inline]
    pub fn decrement(&self, v: f64) {
        self.cell.update(|x| x - v);
    }

    /// Sets the value to `v`.
    #[inline]
    pub fn set(&self, v: f64) {
        self.cell.update(|_| v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_reports_last_value_and_the_extremes_of_the_interval() {
        let g = GaugeCell::new();
        g.update(|x| x + 5.0);
        g.update(|x| x - 7.0);
        g.update(|_| 1.0);
        let d = g.take();
        assert_eq!((d.last, d.min, d.max, d.updates), (1.0, -2.0, 5.0, 3));
        let idle = g.take();
        assert_eq!(
            (idle.last, idle.min, idle.max, idle.updates),
            (1.0, 1.0, 1.0, 0)
        );
    }
}
