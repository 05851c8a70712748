//! The agent's self-metrics: named counters and gauges every component registers once and
//! updates with one atomic operation, rendered as Prometheus text on `/metrics` and optionally
//! published to CloudWatch with `Component=agent`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Name of the dropped-samples counter (labelled by `reason`): every component that fails to
/// deliver a sample counts it here, so one series answers "was anything lost, and why".
pub const DROPPED_SAMPLES: &str = "tally_agent_dropped_samples_total";
/// Its help text.
pub const DROPPED_SAMPLES_HELP: &str = "Samples not published, by reason.";

/// A monotonic counter handle. Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge handle (signed integer). Cloning shares the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

type Key = (String, Vec<(String, String)>);

/// One self-metric in a [`Stats::snapshot`]: name, labels, value.
pub type SnapshotEntry = (String, Vec<(String, String)>, f64);

#[derive(Debug, Default)]
struct Inner {
    help: BTreeMap<String, (&'static str, &'static str)>,
    counters: BTreeMap<Key, Counter>,
    gauges: BTreeMap<Key, Gauge>,
}

/// One component's handles to `tally_agent_dropped_samples_total{reason}`, registered once
/// for every reason it names up front: counting a drop is then a short scan and one atomic
/// add, where registering the counter each time took the registry's lock and allocated the
/// label. A reason not named up front is still counted (registered on the spot).
#[derive(Debug, Clone)]
pub struct DropCounters {
    stats: Stats,
    known: Arc<[(&'static str, Counter)]>,
}

impl DropCounters {
    /// Counts `n` samples dropped for `reason` (nothing when `n` is 0).
    pub fn add(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.known.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.add(n),
            None => self
                .stats
                .counter(DROPPED_SAMPLES, DROPPED_SAMPLES_HELP, &[("reason", reason)])
                .add(n),
        }
    }
}

/// The registry of self-metrics. Registration takes a lock; updates never do.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Mutex<Inner>>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    (name.to_owned(), l)
}

impl Stats {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero on first use. `help` documents it.
    pub fn counter(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Counter {
        let mut g = self.0.lock();
        g.help.entry(name.to_owned()).or_insert(("counter", help));
        g.counters.entry(key(name, labels)).or_default().clone()
    }

    /// The gauge `name{labels}`, created at zero on first use.
    pub fn gauge(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Gauge {
        let mut g = self.0.lock();
        g.help.entry(name.to_owned()).or_insert(("gauge", help));
        g.gauges.entry(key(name, labels)).or_default().clone()
    }

    /// Handles to `tally_agent_dropped_samples_total{reason}` for `reasons`, registered now
    /// (at zero, so dashboards see them before they happen).
    pub fn drop_counters(&self, reasons: &[&'static str]) -> DropCounters {
        let known = reasons
            .iter()
            .map(|&r| {
                (
                    r,
                    self.counter(DROPPED_SAMPLES, DROPPED_SAMPLES_HELP, &[("reason", r)]),
                )
            })
            .collect();
        DropCounters {
            stats: self.clone(),
            known,
        }
    }

    /// Current value of a counter, 0 when never registered (for tests and the admin endpoint).
    pub fn counter_value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .lock()
            .counters
            .get(&key(name, labels))
            .map_or(0, Counter::get)
    }

    /// Current value of a gauge, 0 when never registered.
    pub fn gauge_value(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        self.0
            .lock()
            .gauges
            .get(&key(name, labels))
            .map_or(0, Gauge::get)
    }

    /// Sum of a counter over every label set (for example all drop reasons).
    pub fn counter_sum(&self, name: &str) -> u64 {
        self.0
            .lock()
            .counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Every counter and gauge as (name, labels, value), for publishing self-metrics.
    pub fn snapshot(&self) -> Vec<SnapshotEntry> {
        let g = self.0.lock();
        let c = g
            .counters
            .iter()
            .map(|((n, l), c)| (n.clone(), l.clone(), c.get() as f64));
        let v = g
            .gauges
            .iter()
            .map(|((n, l), x)| (n.clone(), l.clone(), x.get() as f64));
        c.chain(v).collect()
    }

    /// Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render_prometheus(&self) -> String {
        let g = self.0.lock();
        let mut out = String::new();
        for (name, (kind, help)) in &g.help {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let values: Vec<(&Vec<(String, String)>, i128)> = if *kind == "counter" {
                g.counters
                    .range((name.clone(), Vec::new())..)
                    .take_while(|((n, _), _)| n == name)
                    .map(|((_, l), c)| (l, i128::from(c.get())))
                    .collect()
            } else {
                g.gauges
                    .range((name.clone(), Vec::new())..)
                    .take_while(|((n, _), _)| n == name)
                    .map(|((_, l), x)| (l, i128::from(x.get())))
                    .collect()
            };
            for (labels, v) in values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let l: Vec<String> = labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = writeln!(out, "{name}{{{}}} {v}", l.join(","));
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_with_the_same_name_and_labels_share_one_value() {
        let s = Stats::new();
        s.counter(
            "tally_frames_total",
            "Frames received.",
            &[("b", "2"), ("a", "1")],
        )
        .add(2);
        s.counter(
            "tally_frames_total",
            "Frames received.",
            &[("a", "1"), ("b", "2")],
        )
        .inc();
        assert_eq!(
            s.counter_value("tally_frames_total", &[("a", "1"), ("b", "2")]),
            3
        );
    }

    #[test]
    fn prometheus_text_lists_help_type_and_escaped_labels() {
        let s = Stats::new();
        s.counter("x_total", "Things.", &[("reason", "a\"b")])
            .add(5);
        s.gauge("q_depth", "Queue depth.", &[]).set(-2);
        let text = s.render_prometheus();
        assert!(text.contains("# HELP x_total Things.\n# TYPE x_total counter\n"));
        assert!(text.contains("x_total{reason=\"a\\\"b\"} 5\n"), "{text}");
        assert!(text.contains("q_depth -2\n"), "{text}");
    }
}
