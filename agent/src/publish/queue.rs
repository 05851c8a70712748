//! The pending queue: datums waiting for CloudWatch, oldest first, within a memory bound.
//!
//! New periods join at the back; requests are cut from the front, so the oldest data goes out
//! first when CloudWatch answers again. A request that could not be delivered returns to the
//! front. The bound (`max_pending_bytes`) covers queued datums *and* datums in flight; when a
//! new period would pass it, datums are dropped from the front (the oldest) and counted. Datums
//! older than CloudWatch accepts (two weeks) are dropped and counted before each drain.
//! Datums in flight cannot be dropped, so at most `max_concurrent_requests` requests' worth of
//! memory can sit above the bound while CloudWatch is answering them.

use std::collections::VecDeque;
use std::time::SystemTime;

use super::batch::{datum_bytes, request_overhead, Batch, RequestLimits};
use super::datum::{check_timestamp, Datum};
use super::stats::DropReason;

/// Datums and samples removed without being published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Datums.
    pub datums: u64,
    /// Samples they carried.
    pub samples: u64,
}

impl Dropped {
    fn add(&mut self, d: &Datum) {
        self.datums += 1;
        self.samples += d.samples;
    }
}

/// A request's worth of datums taken from the queue, still counted against the bound.
#[derive(Debug)]
pub struct InFlight {
    /// The datums to send.
    pub batch: Batch,
    memory: usize,
    samples: u64,
    datums: usize,
}

/// Datums waiting for CloudWatch.
#[derive(Debug)]
pub struct PendingQueue {
    items: VecDeque<Datum>,
    queued_bytes: usize,
    queued_samples: u64,
    in_flight_bytes: usize,
    in_flight_samples: u64,
    in_flight_datums: usize,
    max_bytes: usize,
}

impl PendingQueue {
    /// An empty queue bounded at `max_bytes` of estimated memory.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            items: VecDeque::new(),
            queued_bytes: 0,
            queued_samples: 0,
            in_flight_bytes: 0,
            in_flight_samples: 0,
            in_flight_datums: 0,
            max_bytes,
        }
    }

    /// Estimated memory of queued and in-flight datums.
    pub fn bytes(&self) -> usize {
        self.queued_bytes + self.in_flight_bytes
    }

    /// Queued and in-flight datums.
    pub fn datums(&self) -> usize {
        self.items.len() + self.in_flight_datums
    }

    /// Queued and in-flight samples.
    pub fn samples(&self) -> u64 {
        self.queued_samples + self.in_flight_samples
    }

    /// Whether nothing is queued (datums in flight are not counted).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends a period's datums, then drops the oldest queued datums while over the bound.
    pub fn push(&mut self, datums: Vec<Datum>) -> Dropped {
        for d in &datums {
            self.queued_bytes += d.memory_bytes();
            self.queued_samples += d.samples;
        }
        if self.items.is_empty() {
            // The usual case (CloudWatch keeps up): the period's vector becomes the queue, no
            // copy (a period can be 200k datums, and a copy would hold both at once). Behind
            // an outage the queue grows the usual way, so appending stays amortised.
            self.items = VecDeque::from(datums);
        } else {
            self.items.extend(datums);
        }
        self.evict()
    }

    fn evict(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        while self.bytes() > self.max_bytes {
            let Some(d) = self.items.pop_front() else {
                break;
            };
            self.forget(&d);
            dropped.add(&d);
        }
        dropped
    }

    fn forget(&mut self, d: &Datum) {
        self.queued_bytes -= d.memory_bytes();
        self.queued_samples -= d.samples;
    }

    /// Drops every queued datum CloudWatch would refuse by now (older than two weeks).
    pub fn expire(&mut self, now: SystemTime) -> Dropped {
        let mut dropped = Dropped::default();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for d in std::mem::take(&mut self.items) {
            if check_timestamp(d.stamp.timestamp, now) == Err(DropReason::Expired) {
                self.forget(&d);
                dropped.add(&d);
            } else {
                kept.push_back(d);
            }
        }
        self.items = kept;
        dropped
    }

    /// Takes the next request's worth of datums from the front (same namespace, within
    /// `limits`), or `None` when nothing is queued.
    pub fn take(&mut self, limits: RequestLimits) -> Option<InFlight> {
        let first = self.items.front()?;
        let namespace = first.stamp.namespace.clone();
        let mut batch = Batch {
            datums: Vec::new(),
            estimated_bytes: request_overhead(&namespace, limits.max_datums),
        };
        let (mut memory, mut samples) = (0, 0);
        while let Some(d) = self.items.front() {
            let size = datum_bytes(d);
            let full = batch.datums.len() == limits.max_datums
                || d.stamp.namespace != namespace
                || (!batch.datums.is_empty() && batch.estimated_bytes + size > limits.max_bytes);
            if full {
                break;
            }
            let d = self.items.pop_front().expect("front exists");
            self.forget(&d);
            memory += d.memory_bytes();
            samples += d.samples;
            batch.estimated_bytes += size;
            batch.datums.push(d);
        }
        if self.items.is_empty() {
            // Give the period's slots back (about 100 bytes a datum): between periods an
            // agent that keeps up holds nothing here.
            self.items = VecDeque::new();
        }
        let datums = batch.datums.len();
        self.in_flight_bytes += memory;
        self.in_flight_samples += samples;
        self.in_flight_datums += datums;
        Some(InFlight {
            batch,
            memory,
            samples,
            datums,
        })
    }

    /// Ends an in-flight request; `unsent` datums (in order) return to the front of the queue.
    /// Returns what the bound then forced out.
    pub fn finish(&mut self, done: InFlightDone, unsent: Vec<Datum>) -> Dropped {
        self.in_flight_bytes -= done.memory;
        self.in_flight_samples -= done.samples;
        self.in_flight_datums -= done.datums;
        for d in unsent.into_iter().rev() {
            self.queued_bytes += d.memory_bytes();
            self.queued_samples += d.samples;
            self.items.push_front(d);
        }
        self.evict()
    }

    /// Removes every queued datum (for the shutdown deadline).
    pub fn clear(&mut self) -> Dropped {
        let mut dropped = Dropped::default();
        for d in std::mem::take(&mut self.items) {
            dropped.add(&d);
        }
        self.queued_bytes = 0;
        self.queued_samples = 0;
        dropped
    }
}

/// The accounting of an in-flight request, once its datums are handed to the sender.
#[derive(Debug, Clone, Copy)]
pub struct InFlightDone {
    memory: usize,
    samples: u64,
    datums: usize,
}

impl InFlight {
    /// Splits into the datums to send and the accounting to give back to
    /// [`PendingQueue::finish`].
    pub fn into_parts(self) -> (Batch, InFlightDone) {
        (
            self.batch,
            InFlightDone {
                memory: self.memory,
                samples: self.samples,
                datums: self.datums,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::datum::{DatumValue, Stamp, ValueCounts};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tally::wire::Unit;

    fn datum(i: usize, ts: SystemTime, values: usize) -> Datum {
        Datum {
            stamp: Arc::new(Stamp {
                namespace: Arc::from("Ns"),
                timestamp: ts,
                storage_resolution: 60,
            }),
            name: format!("M{i}").into(),
            dimensions: vec![("A".into(), "b".into())].into(),
            unit: Unit::Count,
            value: DatumValue::Values(Box::new(ValueCounts {
                values: vec![1.0; values],
                counts: vec![2.0; values],
            })),
            samples: 2 * values as u64,
        }
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_datums: 1000,
        max_bytes: 999_000,
    };

    #[test]
    fn a_period_at_the_default_series_limit_fits_the_default_bound_without_a_drop() {
        use crate::model::{AggregateValue, MetricKey, PeriodData};
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
        let period = PeriodData {
            namespace: "ECS/Checkout".into(),
            timestamp: now,
            period_secs: 60,
            storage_resolution: 60,
            metrics,
        };
        let (datums, rejected) = super::super::datum::build_datums(&period, now, 150);
        assert!(rejected.is_empty());
        let mut q = PendingQueue::new(c.publish.max_pending_bytes);
        assert_eq!(q.push(datums), Dropped::default());
        assert_eq!(q.datums(), 2 * c.aggregate.max_series);
        assert!(q.bytes() <= c.publish.max_pending_bytes);
    }

    #[test]
    fn over_the_bound_the_oldest_datums_go_first_and_are_counted() {
        let now = SystemTime::now();
        let one = datum(0, now, 10).memory_bytes();
        let mut q = PendingQueue::new(one * 5);
        assert_eq!(
            q.push((0..3).map(|i| datum(i, now, 10)).collect()),
            Dropped::default()
        );
        let dropped = q.push((3..7).map(|i| datum(i, now, 10)).collect());
        assert_eq!(
            dropped,
            Dropped {
                datums: 2,
                samples: 40
            }
        );
        assert_eq!(q.datums(), 5);
        assert!(q.bytes() <= one * 5);
        let batch = q.take(LIMITS).unwrap();
        let names: Vec<&str> = batch.batch.datums.iter().map(|d| &*d.name).collect();
        assert_eq!(names, vec!["M2", "M3", "M4", "M5", "M6"]);
    }

    #[test]
    fn an_undelivered_request_returns_to_the_front_in_order() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30);
        q.push((0..5).map(|i| datum(i, now, 1)).collect());
        let small = RequestLimits {
            max_datums: 2,
            max_bytes: 999_000,
        };
        let (batch, done) = q.take(small).unwrap().into_parts();
        assert_eq!(q.datums(), 5, "in-flight datums still count");
        q.push(vec![datum(5, now, 1)]);
        assert_eq!(q.finish(done, batch.datums), Dropped::default());
        let (batch, _) = q.take(LIMITS).unwrap().into_parts();
        let names: Vec<&str> = batch.datums.iter().map(|d| &*d.name).collect();
        assert_eq!(names, vec!["M0", "M1", "M2", "M3", "M4", "M5"]);
    }

    #[test]
    fn datums_older_than_two_weeks_expire_and_are_counted() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30);
        let old = now - Duration::from_secs(14 * 24 * 3600);
        q.push(vec![datum(0, old, 3), datum(1, now, 3), datum(2, old, 1)]);
        assert_eq!(
            q.expire(now),
            Dropped {
                datums: 2,
                samples: 8
            }
        );
        assert_eq!(q.datums(), 1);
        assert_eq!(q.samples(), 6);
    }

    #[test]
    fn a_request_is_cut_at_exactly_the_datum_limit() {
        let now = SystemTime::now();
        let mut q = PendingQueue::new(1 << 30);
        q.push((0..2001).map(|i| datum(i, now, 0)).collect());
        let sizes: Vec<usize> =
            std::iter::from_fn(|| q.take(LIMITS).map(|b| b.batch.datums.len())).collect();
        assert_eq!(sizes, vec![1000, 1000, 1]);
    }

    proptest! {
        /// Whatever arrives, bytes stay within the bound (nothing in flight) and every sample is
        /// either still queued or counted as dropped.
        #[test]
        fn memory_stays_bounded_and_samples_are_conserved(
            periods in proptest::collection::vec(proptest::collection::vec(0usize..150, 0..50), 1..30),
            bound_datums in 1usize..200,
        ) {
            let now = SystemTime::now();
            let bound = datum(0, now, 50).memory_bytes() * bound_datums;
            let mut q = PendingQueue::new(bound);
            let (mut pushed, mut dropped) = (0u64, 0u64);
            for (p, sizes) in periods.iter().enumerate() {
                let d: Vec<Datum> = sizes.iter().map(|&v| datum(p, now, v)).collect();
                pushed += d.iter().map(|d| d.samples).sum::<u64>();
                dropped += q.push(d).samples;
                prop_assert!(q.bytes() <= bound);
            }
            let mut left = 0;
            while let Some(b) = q.take(LIMITS) {
                left += b.batch.samples();
                prop_assert!(b.batch.estimated_bytes <= LIMITS.max_bytes);
            }
            prop_assert_eq!(pushed, dropped + left);
        }
    }
}
