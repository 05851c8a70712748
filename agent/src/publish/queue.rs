//! The pending queue: closed periods waiting for CloudWatch, oldest first, within a memory
//! bound.
//!
//! A period joins at the back as its metrics (the closed period's own vector, adopted without
//! a copy); a metric becomes datums only when a request is cut from the front, so a period of
//! 200k metrics never exists twice in memory (once as aggregates, once as datums). Datums made
//! and not yet sent (the rest of a split histogram that did not fit a request, a request that
//! could not be delivered) wait in front of the periods, oldest first. The oldest data goes
//! out first when CloudWatch answers again.
//!
//! The bound (`max_pending_bytes`) covers queued metrics and datums *and* datums in flight;
//! when a new period would pass it, the oldest queued data is dropped and counted. Data older
//! than CloudWatch accepts (two weeks) is dropped and counted before each drain. Datums in
//! flight cannot be dropped, so at most `max_concurrent_requests` requests' worth of memory can
//! sit above the bound while CloudWatch is answering them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use super::batch::{datum_bytes, request_overhead, Batch, RequestLimits};
use super::datum::{check_timestamp, make_datums, metric_memory_bytes, Datum, Rejection, Stamp};
use super::stats::DropReason;
use crate::model::{AggregateValue, MetricKey};

/// Datums and samples removed without being published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Datums (a metric not yet made into datums counts the datums it would have made).
    pub datums: u64,
    /// Samples they carried.
    pub samples: u64,
}

/// What part of the queue holds: estimated bytes, datums (planned, for metrics not yet made
/// into datums) and samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Load {
    bytes: usize,
    datums: u64,
    samples: u64,
}

impl Load {
    fn datum(d: &Datum) -> Load {
        Load {
            bytes: d.memory_bytes(),
            datums: 1,
            samples: d.samples,
        }
    }

    fn metric(key: &MetricKey, agg: &AggregateValue, max_values: usize) -> Load {
        Load {
            bytes: metric_memory_bytes(key, agg),
            datums: agg.datums(max_values),
            samples: agg.samples(),
        }
    }

    // Wrapping, so that `sub` always undoes `add`: a counter's samples are its rounded sum,
    // up to u64::MAX for a sender that claims that much, and two of them would overflow.
    fn add(&mut self, o: Load) {
        self.bytes = self.bytes.wrapping_add(o.bytes);
        self.datums = self.datums.wrapping_add(o.datums);
        self.samples = self.samples.wrapping_add(o.samples);
    }

    fn sub(&mut self, o: Load) {
        self.bytes = self.bytes.wrapping_sub(o.bytes);
        self.datums = self.datums.wrapping_sub(o.datums);
        self.samples = self.samples.wrapping_sub(o.samples);
    }
}

/// A request's worth of datums taken from the queue, still counted against the bound.
#[derive(Debug)]
pub struct InFlight {
    /// The datums to send.
    pub batch: Batch,
    load: Load,
}

/// A closed period whose metrics are not yet datums.
#[derive(Debug)]
struct Period {
    stamp: Arc<Stamp>,
    metrics: VecDeque<(MetricKey, AggregateValue)>,
}

/// Closed periods and datums waiting for CloudWatch.
#[derive(Debug)]
pub struct PendingQueue {
    /// Datums made and not yet sent, oldest first; always older than `periods`.
    ready: VecDeque<Datum>,
    /// Periods, oldest first.
    periods: VecDeque<Period>,
    queued: Load,
    in_flight: Load,
    max_bytes: usize,
    max_values: usize,
}

impl PendingQueue {
    /// An empty queue bounded at `max_bytes` of estimated memory, making histograms into datums
    /// of at most `max_values` values.
    pub fn new(max_bytes: usize, max_values: usize) -> Self {
        Self {
            ready: VecDeque::new(),
            periods: VecDeque::new(),
            queued: Load::default(),
            in_flight: Load::default(),
            max_bytes,
            max_values: max_values.max(1),
        }
    }

    /// Estimated memory of queued and in-flight data.
    pub fn bytes(&self) -> usize {
        self.queued.bytes + self.in_flight.bytes
    }

    /// Queued and in-flight datums (a queued metric counts the datums it will make).
    pub fn datums(&self) -> u64 {
        self.queued.datums + self.in_flight.datums
    }

    /// Queued and in-flight samples.
    pub fn samples(&self) -> u64 {
        self.queued.samples + self.in_flight.samples
    }

    /// Whether nothing is queued (datums in flight are not counted).
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.periods.is_empty()
    }

    /// Appends a closed period's metrics (checked by [`prepare`](super::datum::prepare)), then
    /// drops the oldest queued data while over the bound.
    pub fn push(
        &mut self,
        stamp: Arc<Stamp>,
        metrics: Vec<(MetricKey, AggregateValue)>,
    ) -> Dropped {
        if metrics.is_empty() {
            return Dropped::default();
        }
        for (key, agg) in &metrics {
            self.queued.add(Load::metric(key, agg, self.max_values));
        }
        self.periods.push_back(Period {
            stamp,
            metrics: VecDeque::from(metrics),
        });
        self.evict()
    }

    fn evict(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        while self.bytes() > self.max_bytes {
            let load = if let Some(d) = self.ready.pop_front() {
                Load::datum(&d)
            } else if let Some(p) = self.periods.front_mut() {
                let Some((key, agg)) = p.metrics.pop_front() else {
                    self.periods.pop_front();
                    continue;
                };
                if p.metrics.is_empty() {
                    self.periods.pop_front();
                }
                Load::metric(&key, &agg, self.max_values)
            } else {
                break;
            };
            self.queued.sub(load);
            dropped.datums += load.datums;
            dropped.samples += load.samples;
        }
        dropped
    }

    /// Drops every queued datum and period CloudWatch would refuse by now (older than two
    /// weeks).
    pub fn expire(&mut self, now: SystemTime) -> Dropped {
        let expired =
            |stamp: &Stamp| check_timestamp(stamp.timestamp, now) == Err(DropReason::Expired);
        let mut gone = Load::default();
        self.ready.retain(|d| {
            let keep = !expired(&d.stamp);
            if !keep {
                gone.add(Load::datum(d));
            }
            keep
        });
        let max_values = self.max_values;
        self.periods.retain(|p| {
            let keep = !expired(&p.stamp);
            if !keep {
                for (key, agg) in &p.metrics {
                    gone.add(Load::metric(key, agg, max_values));
                }
            }
            keep
        });
        self.queued.sub(gone);
        Dropped {
            datums: gone.datums,
            samples: gone.samples,
        }
    }

    /// Takes the next request's worth of datums from the front (same namespace, within
    /// `limits`), making metrics into datums as it goes, or `None` when nothing is queued.
    /// A metric whose values CloudWatch would refuse makes no datum: it is appended to
    /// `rejected` (for the caller to log and count) and leaves the queue.
    pub fn take(
        &mut self,
        limits: RequestLimits,
        rejected: &mut Vec<Rejection>,
    ) -> Option<InFlight> {
        let mut batch: Option<Batch> = None;
        let mut load = Load::default();
        loop {
            if self.ready.is_empty() && !self.make_next(rejected) {
                break;
            }
            let Some(d) = self.ready.front() else {
                continue;
            };
            let size = datum_bytes(d);
            let b = batch.get_or_insert_with(|| Batch {
                datums: Vec::new(),
                estimated_bytes: request_overhead(&d.stamp.namespace, limits.max_datums),
            });
            let full = b.datums.len() == limits.max_datums
                || b.datums
                    .first()
                    .is_some_and(|f| f.stamp.namespace != d.stamp.namespace)
                || (!b.datums.is_empty() && b.estimated_bytes + size > limits.max_bytes);
            if full {
                break;
            }
            let d = self.ready.pop_front().expect("front exists");
            let l = Load::datum(&d);
            self.queued.sub(l);
            load.add(l);
            b.estimated_bytes += size;
            b.datums.push(d);
        }
        if self.ready.is_empty() {
            // Give the slots back: between periods an agent that keeps up holds nothing here.
            self.ready = VecDeque::new();
        }
        let batch = batch.filter(|b| !b.datums.is_empty())?;
        self.in_flight.add(load);
        Some(InFlight { batch, load })
    }

    /// Makes the oldest queued metric into datums at the back of `ready` (empty before), or
    /// into a rejection. `false` when no metric is queued.
    fn make_next(&mut self, rejected: &mut Vec<Rejection>) -> bool {
        let Some(p) = self.periods.front_mut() else {
            return false;
        };
        let Some((key, agg)) = p.metrics.pop_front() else {
            self.periods.pop_front();
            return true;
        };
        let stamp = Arc::clone(&p.stamp);
        if p.metrics.is_empty() {
            self.periods.pop_front();
        }
        self.queued.sub(Load::metric(&key, &agg, self.max_values));
        match make_datums(&key, &agg, &stamp, self.max_values, &mut self.ready) {
            Ok(()) => {
                for d in &self.ready {
                    self.queued.add(Load::datum(d));
                }
            }
            Err(r) => rejected.push(r),
        }
        true
    }

    /// Ends an in-flight request; `unsent` datums (in order) return to the front of the queue.
    /// Returns what the bound then forced out.
    pub fn finish(&mut self, done: InFlightDone, unsent: Vec<Datum>) -> Dropped {
        self.in_flight.sub(done.load);
        for d in unsent.into_iter().rev() {
            self.queued.add(Load::datum(&d));
            self.ready.push_front(d);
        }
        self.evict()
    }

    /// Removes everything queued (for the shutdown deadline).
    pub fn clear(&mut self) -> Dropped {
        let gone = self.queued;
        self.ready = VecDeque::new();
        self.periods = VecDeque::new();
        self.queued = Load::default();
        Dropped {
            datums: gone.datums,
            samples: gone.samples,
        }
    }
}

/// The accounting of an in-flight request, once its datums are handed to the sender.
#[derive(Debug, Clone, Copy)]
pub struct InFlightDone {
    load: Load,
}

impl InFlight {
    /// Splits into the datums to send and the accounting to give back to
    /// [`PendingQueue::finish`].
    pub fn into_parts(self) -> (Batch, InFlightDone) {
        (self.batch, InFlightDone { load: self.load })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::datum::{prepare, Prepared};
    use hdrhistogram::Histogram;
    use proptest::prelude::*;
    use std::time::Duration;
    use tally::wire::Unit;

    type Metric = (MetricKey, AggregateValue);

    fn stamp(ts: SystemTime) -> Arc<Stamp> {
        Arc::new(Stamp {
            namespace: Arc::from("Ns"),
            timestamp: ts,
            storage_resolution: 60,
        })
    }

    fn key(i: usize) -> MetricKey {
        MetricKey::new(&format!("M{i}"), Unit::Count, &[("A", "b")])
    }

    fn counter(i: usize, n: f64) -> Metric {
        (key(i), AggregateValue::Counter(n))
    }

    /// A histogram of `buckets` distinct values, two samples each.
    fn histogram(i: usize, buckets: u64) -> Metric {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=buckets {
            h.record_n(v, 2).unwrap();
        }
        (
            key(i),
            AggregateValue::Distribution {
                scale: 1.0,
                histogram: Box::new((&h).into()),
            },
        )
    }

    fn names(b: &Batch) -> Vec<&str> {
        b.datums.iter().map(|d| &*d.name).collect()
    }

    fn take(q: &mut PendingQueue, limits: RequestLimits) -> Option<(Batch, InFlightDone)> {
        let mut rejected = Vec::new();
        let t = q.take(limits, &mut rejected).map(InFlight::into_parts);
        assert!(rejected.is_empty(), "{rejected:?}");
        t
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_datums: 1000,
        max_bytes: 999_000,
    };

    const TWO: RequestLimits = RequestLimits {
        max_datums: 2,
        max_bytes: 999_000,
    };

    #[test]
    fn a_period_at_the_default_series_limit_fits_the_default_bound_without_a_drop() {
        // 100k series (eight dimensions: ServiceName, Environment, three labels, three ECS
        // dimensions) and the ErrorRate derived from each, as a closed period holds them.
        let c = crate::config::Config::default();
        let now = SystemTime::now();
        let mut metrics = Vec::new();
        for i in 0..c.aggregate.max_series {
            let route = format!("/api/v1/item/{i:05}");
            let key = MetricKey::new(
                "RequestCount",
                Unit::Count,
                &[
                    ("ServiceName", "checkout-api"),
                    ("Environment", "production"),
                    ("Method", "GET"),
                    ("Route", &route),
                    ("StatusClass", "2xx"),
                    ("ClusterName", "prod-cluster-1"),
                    ("EcsServiceName", "checkout-api-svc"),
                    ("TaskDefinitionFamily", "checkout-api"),
                ],
            );
            let rate = MetricKey {
                name: "ErrorRate".into(),
                ..key.clone()
            };
            metrics.push((key, AggregateValue::Counter(1.0)));
            metrics.push((rate, AggregateValue::Derived(0.0)));
        }
        let period = crate::model::PeriodData {
            namespace: "ECS/Checkout".into(),
            timestamp: now,
            period_secs: 60,
            storage_resolution: 60,
            metrics,
        };
        let Prepared {
            stamp,
            metrics,
            rejections,
        } = prepare(period, now);
        assert!(rejections.is_empty());
        let mut q = PendingQueue::new(c.publish.max_pending_bytes, 150);
        assert_eq!(q.push(stamp, metrics), Dropped::default());
        assert_eq!(q.datums(), 2 * c.aggregate.max_series as u64);
        assert!(q.bytes() <= c.publish.max_pending_bytes);
    }

    #[test]
    fn metrics_become_datums_only_as_requests_are_cut() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        q.push(stamp(now), (0..1000).map(|i| counter(i, 1.0)).collect());
        let (batch, _) = take(&mut q, TWO).unwrap();
        assert_eq!(names(&batch), ["M0", "M1"]);
        assert!(q.ready.len() <= 1, "at most the next datum is made");
        let waiting: usize = q.periods.iter().map(|p| p.metrics.len()).sum();
        assert_eq!(waiting + q.ready.len(), 998);
        assert_eq!(q.datums(), 1000, "in-flight datums still count");
    }

    #[test]
    fn over_the_bound_the_oldest_data_goes_first_and_is_counted() {
        let now = SystemTime::now();
        let one = Load::metric(&key(0), &AggregateValue::Counter(10.0), 150).bytes;
        let mut q = PendingQueue::new(one * 5, 150);
        let first = (0..3).map(|i| counter(i, 10.0)).collect();
        assert_eq!(q.push(stamp(now), first), Dropped::default());
        let dropped = q.push(stamp(now), (3..7).map(|i| counter(i, 10.0)).collect());
        assert_eq!(
            dropped,
            Dropped {
                datums: 2,
                samples: 20
            }
        );
        assert_eq!(q.datums(), 5);
        assert!(q.bytes() <= one * 5);
        let (batch, _) = take(&mut q, LIMITS).unwrap();
        assert_eq!(names(&batch), vec!["M2", "M3", "M4", "M5", "M6"]);
    }

    #[test]
    fn an_undelivered_request_returns_to_the_front_in_order() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        q.push(stamp(now), (0..5).map(|i| counter(i, 1.0)).collect());
        let (batch, done) = take(&mut q, TWO).unwrap();
        assert_eq!(q.datums(), 5, "in-flight datums still count");
        q.push(stamp(now), vec![counter(5, 1.0)]);
        assert_eq!(q.finish(done, batch.datums), Dropped::default());
        let (batch, done) = take(&mut q, LIMITS).unwrap();
        assert_eq!(names(&batch), vec!["M0", "M1", "M2", "M3", "M4", "M5"]);
        q.finish(done, Vec::new());
        assert_eq!((q.datums(), q.samples(), q.bytes()), (0, 0, 0));
    }

    #[test]
    fn a_split_histogram_spans_requests_in_order_and_keeps_every_sample() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        // 400 buckets: datums of 150, 150 and 100 values.
        q.push(stamp(now), vec![histogram(0, 400), counter(1, 3.0)]);
        assert_eq!(q.datums(), 4);
        assert_eq!(q.samples(), 803);
        let (a, a_done) = take(&mut q, TWO).unwrap();
        let (b, b_done) = take(&mut q, TWO).unwrap();
        assert_eq!(names(&a), ["M0", "M0"]);
        assert_eq!(names(&b), ["M0", "M1"]);
        assert!(q.is_empty() && take(&mut q, TWO).is_none());
        let samples: u64 = a.samples() + b.samples();
        assert_eq!(samples, 803);
        q.finish(a_done, Vec::new());
        q.finish(b_done, Vec::new());
        assert_eq!((q.datums(), q.samples(), q.bytes()), (0, 0, 0));
    }

    #[test]
    fn a_metric_with_a_value_cloudwatch_refuses_is_rejected_in_turn_and_the_rest_go_out() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        let bad = (key(1), AggregateValue::Derived(f64::NAN));
        q.push(stamp(now), vec![counter(0, 1.0), bad, counter(2, 1.0)]);
        let mut rejected = Vec::new();
        let (batch, done) = q.take(LIMITS, &mut rejected).unwrap().into_parts();
        assert_eq!(names(&batch), ["M0", "M2"]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(
            (&*rejected[0].name, rejected[0].reason),
            ("M1", DropReason::NonFinite)
        );
        q.finish(done, Vec::new());
        assert_eq!((q.datums(), q.samples(), q.bytes()), (0, 0, 0));
    }

    #[test]
    fn data_older_than_two_weeks_expires_and_is_counted() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(14 * 24 * 3600);
        let mut q = PendingQueue::new(1 << 30, 150);
        q.push(stamp(old), (0..3).map(|i| counter(i, 2.0)).collect());
        q.push(stamp(now), vec![counter(3, 5.0)]);
        // One old datum made, sent, and returned unsent: it waits in front as a datum.
        let one = RequestLimits {
            max_datums: 1,
            max_bytes: 999_000,
        };
        let (batch, done) = take(&mut q, one).unwrap();
        q.finish(done, batch.datums);
        assert_eq!(
            q.expire(now),
            Dropped {
                datums: 3,
                samples: 6
            }
        );
        assert_eq!((q.datums(), q.samples()), (1, 5));
        let (batch, _) = take(&mut q, LIMITS).unwrap();
        assert_eq!(names(&batch), ["M3"]);
    }

    #[test]
    fn a_request_is_cut_at_exactly_the_datum_limit() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        q.push(stamp(now), (0..2001).map(|i| counter(i, 1.0)).collect());
        let sizes: Vec<usize> =
            std::iter::from_fn(|| take(&mut q, LIMITS).map(|b| b.0.datums.len())).collect();
        assert_eq!(sizes, vec![1000, 1000, 1]);
    }

    #[test]
    fn clearing_counts_queued_metrics_and_datums() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30, 150);
        q.push(stamp(now), vec![histogram(0, 200), counter(1, 4.0)]);
        let (batch, done) = take(&mut q, TWO).unwrap();
        q.finish(done, batch.datums);
        assert_eq!(
            q.clear(),
            Dropped {
                datums: 3,
                samples: 404
            }
        );
        assert_eq!((q.datums(), q.samples(), q.bytes()), (0, 0, 0));
    }

    proptest! {
        /// Whatever arrives, bytes stay within the bound (nothing in flight) and every sample is
        /// either published, dropped with a count, or still queued; every request is within
        /// its limits.
        #[test]
        fn memory_stays_bounded_and_samples_are_conserved(
            periods in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![
                    (1u32..1000).prop_map(|n| (false, n)),
                    (0u32..400).prop_map(|b| (true, b)),
                ], 0..40),
                1..20,
            ),
            bound_metrics in 1usize..200,
            max_datums in 1usize..50,
            return_every in 0usize..4,
        ) {
            let now = SystemTime::now();
            let bound = Load::metric(&key(0), &histogram(0, 50).1, 150).bytes * bound_metrics;
            let mut q = PendingQueue::new(bound, 150);
            let limits = RequestLimits { max_datums, max_bytes: 999_000 };
            let (mut pushed, mut dropped, mut sent) = (0u64, 0u64, 0u64);
            for (p, shapes) in periods.iter().enumerate() {
                let metrics: Vec<Metric> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, &(hist, n))| {
                        if hist { histogram(p * 100 + i, u64::from(n)) } else { counter(p * 100 + i, f64::from(n)) }
                    })
                    .collect();
                pushed += metrics.iter().map(|m| m.1.samples()).sum::<u64>();
                dropped += q.push(stamp(now), metrics).samples;
                prop_assert!(q.bytes() <= bound);
                // Now and then a request goes out, or comes back undelivered.
                if let Some((batch, done)) = take(&mut q, limits) {
                    prop_assert!(batch.datums.len() <= max_datums);
                    if return_every > 0 && p % return_every == 0 {
                        dropped += q.finish(done, batch.datums).samples;
                    } else {
                        sent += batch.samples();
                        dropped += q.finish(done, Vec::new()).samples;
                    }
                }
            }
            while let Some((batch, done)) = take(&mut q, limits) {
                prop_assert!(batch.estimated_bytes <= limits.max_bytes);
                sent += batch.samples();
                dropped += q.finish(done, Vec::new()).samples;
            }
            prop_assert_eq!((q.datums(), q.samples(), q.bytes()), (0, 0, 0));
            prop_assert_eq!(pushed, dropped + sent);
        }
    }
}
