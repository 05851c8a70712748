//! Business events: a counter, plus a histogram of the event's value when it carries one.

use std::sync::Arc;

use super::{CounterCell, HistogramCell};

/// The storage of one event series.
#[derive(Debug)]
pub(crate) struct EventCell {
    pub(crate) count: CounterCell,
    pub(crate) values: HistogramCell,
    /// Values are stored as `round(value * scale)`.
    pub(crate) scale: f64,
}

impl EventCell {
    #[inline]
    pub(crate) fn emit(&self) {
        self.count.add(1);
    }

    #[inline]
    pub(crate) fn emit_value(&self, v: f64) {
        self.count.add(1);
        self.values.record_n(scaled(v, self.scale), 1);
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.count.memory_bytes() + self.values.memory_bytes()
    }
}

/// `v * scale` rounded to an integer; negative and NaN values become 0 (HDR histograms hold
/// non-negative integers), values past `u64::MAX` saturate.
#[inline]
pub(crate) fn scaled(v: f64, scale: f64) -> u64 {
    // `as` saturates and maps NaN to 0, which is the documented behaviour.
    (v * scale).round() as u64
}

/// A named business event (`checkout`, `signup`): counted, optionally with a value whose
/// distribution is kept (the order amount).
///
/// Values are kept with the event scale's resolution (1/1000 by default: 49.99 is stored as
/// 49990 and published as 49.99); negative values are recorded as 0.
///
/// The agent publishes an event as a count while no occurrence of a period carries a value,
/// else as the distribution of its values. Use [`emit`](Event::emit) or
/// [`emit_value`](Event::emit_value) for one event, not both: in a period with values, the
/// occurrences without one cannot be in the distribution and the agent counts them as
/// dropped (`reason="event_without_value"`).
#[derive(Debug, Clone)]
pub struct Event {
    pub(crate) cell: Arc<EventCell>,
}

impl Event {
    /// Counts one occurrence.
    #[inline]
    pub fn emit(&self) {
        self.cell.emit();
    }

    /// Counts one occurrence and records its value.
    #[inline]
    pub fn emit_value(&self, value: f64) {
        self.cell.emit_value(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rounds_and_clamps_at_zero() {
        assert_eq!(scaled(49.99, 1000.0), 49_990);
        assert_eq!(scaled(-3.0, 1000.0), 0);
        assert_eq!(scaled(f64::NAN, 1000.0), 0);
        assert_eq!(scaled(f64::INFINITY, 1.0), u64::MAX);
    }
}
