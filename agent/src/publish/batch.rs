//! Packing datums into PutMetricData requests that CloudWatch accepts.
//!
//! A request holds at most `max_datums_per_request` datums (CloudWatch: 1000) and at most
//! `max_request_bytes` of estimated uncompressed payload (CloudWatch: 1 MB per POST; like the
//! CloudWatch agent we stay at or below 999,000 bytes). The estimate is an upper bound of the
//! body aws-sdk-cloudwatch serializes (Smithy RPC v2 CBOR): every string is counted with its
//! longest CBOR header, every number as a 9-byte double, the timestamp as a tagged double.
//! A unit test serializes random requests through the real SDK and checks the bound holds
//! and stays within 10% of the real size, so requests are packed close to the limit but
//! never over it.

use super::datum::{Datum, DatumValue};

/// Bytes of a CBOR text string of `len` bytes, header included (RFC 8949 §3.1).
fn cbor_str(len: usize) -> usize {
    len + cbor_head(len)
}

/// Bytes of a CBOR major-type header carrying `n`.
fn cbor_head(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A CBOR double.
const DOUBLE: usize = 9;

/// Upper bound of the serialized size of `datum` inside a request.
pub fn datum_bytes(datum: &Datum) -> usize {
    let s = datum;
    // Indefinite-length map: start and break.
    let mut n = 2;
    n += cbor_str("MetricName".len()) + cbor_str(s.name.len());
    if !s.dimensions.is_empty() {
        n += cbor_str("Dimensions".len()) + cbor_head(s.dimensions.len());
        for (k, v) in s.dimensions.iter() {
            n += 2 + cbor_str("Name".len()) + cbor_str(k.len());
            n += cbor_str("Value".len()) + cbor_str(v.len());
        }
    }
    // Tag 1 (epoch seconds) + double.
    n += cbor_str("Timestamp".len()) + 1 + DOUBLE;
    n += match &datum.value {
        DatumValue::Value(_) => cbor_str("Value".len()) + DOUBLE,
        DatumValue::StatisticSet(_) => {
            cbor_str("StatisticValues".len())
                + 2
                + cbor_str("SampleCount".len())
                + cbor_str("Sum".len())
                + cbor_str("Minimum".len())
                + cbor_str("Maximum".len())
                + 4 * DOUBLE
        }
        DatumValue::Values(v) => {
            let (values, counts) = (&v.values, &v.counts);
            cbor_str("Values".len())
                + cbor_head(values.len())
                + values.len() * DOUBLE
                + cbor_str("Counts".len())
                + cbor_head(counts.len())
                + counts.len() * DOUBLE
        }
    };
    n += cbor_str("Unit".len()) + cbor_str(s.standard_unit().as_str().len());
    // StorageResolution as an integer (1 or 60; at most 9 bytes for any i32).
    n += cbor_str("StorageResolution".len()) + 9;
    n
}

/// Upper bound of a request's size without its datums.
pub fn request_overhead(namespace: &str, datums: usize) -> usize {
    2 + cbor_str("Namespace".len())
        + cbor_str(namespace.len())
        + cbor_str("MetricData".len())
        + cbor_head(datums.max(1000))
}

/// The limits one request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Datums per request.
    pub max_datums: usize,
    /// Estimated uncompressed bytes per request.
    pub max_bytes: usize,
}

/// Datums of one namespace for one request, with its estimated size.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The datums.
    pub datums: Vec<Datum>,
    /// Estimated uncompressed size of the request.
    pub estimated_bytes: usize,
}

impl Batch {
    /// Samples the batch carries.
    pub fn samples(&self) -> u64 {
        self.datums.iter().map(|d| d.samples).sum()
    }
}

/// Greedily fills requests from `datums`, in order, within `limits`. Only datums of the same
/// namespace share a request. A datum too large for any request on its own (impossible for a
/// datum that passed validation when `max_bytes >= 65536`) still gets a request of its own,
/// for CloudWatch to judge.
pub fn pack(datums: impl IntoIterator<Item = Datum>, limits: RequestLimits) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut current: Option<Batch> = None;
    for d in datums {
        let size = datum_bytes(&d);
        let fits = current.as_ref().is_some_and(|b| {
            b.datums.len() < limits.max_datums
                && b.estimated_bytes + size <= limits.max_bytes
                && b.datums[0].stamp.namespace == d.stamp.namespace
        });
        if !fits {
            if let Some(b) = current.take() {
                out.push(b);
            }
            current = Some(Batch {
                estimated_bytes: request_overhead(&d.stamp.namespace, limits.max_datums),
                datums: Vec::with_capacity(limits.max_datums.min(1000)),
            });
        }
        let b = current.as_mut().expect("set above");
        b.estimated_bytes += size;
        b.datums.push(d);
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::datum::{Stamp, ValueCounts};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::SystemTime;
    use tally::wire::Unit;

    pub(crate) fn datum(name: &str, dims: usize, values: usize) -> Datum {
        let value = if values == 0 {
            DatumValue::Value(1.0)
        } else {
            DatumValue::Values(Box::new(ValueCounts {
                values: (0..values).map(|v| v as f64 + 0.5).collect(),
                counts: vec![1.0; values],
            }))
        };
        Datum {
            stamp: Arc::new(Stamp {
                namespace: Arc::from("Tally/Test"),
                timestamp: SystemTime::now(),
                storage_resolution: 60,
            }),
            name: name.into(),
            dimensions: (0..dims)
                .map(|i| (format!("Dim{i}").into(), format!("value-{i}").into()))
                .collect(),
            unit: Unit::Milliseconds,
            value,
            samples: values.max(1) as u64,
        }
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_datums: 1000,
        max_bytes: 999_000,
    };

    #[test]
    fn exactly_1000_small_datums_make_one_request_and_1001_make_two() {
        let b = pack((0..1000).map(|i| datum(&format!("M{i}"), 2, 0)), LIMITS);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].datums.len(), 1000);
        let b = pack((0..1001).map(|i| datum(&format!("M{i}"), 2, 0)), LIMITS);
        assert_eq!(
            b.iter().map(|b| b.datums.len()).collect::<Vec<_>>(),
            vec![1000, 1]
        );
    }

    #[test]
    fn full_histograms_are_cut_by_bytes_before_the_datum_count() {
        let d = datum("Latency", 3, 150);
        let per = datum_bytes(&d);
        let b = pack(std::iter::repeat_n(d, 1000), LIMITS);
        assert!(b.len() >= 3, "{} requests", b.len());
        for batch in &b {
            assert!(batch.estimated_bytes <= LIMITS.max_bytes);
            // Packed tight: one more datum would not have fitted.
            if batch.datums.len() < 1000 && !std::ptr::eq(batch, b.last().unwrap()) {
                assert!(batch.estimated_bytes + per > LIMITS.max_bytes);
            }
        }
        assert_eq!(b.iter().map(|b| b.datums.len()).sum::<usize>(), 1000);
    }

    #[test]
    fn a_request_exactly_at_the_byte_limit_is_kept_and_one_byte_over_is_split() {
        let d = datum("Latency", 1, 150);
        let per = datum_bytes(&d);
        let exact = request_overhead("Tally/Test", 1000) + 10 * per;
        let at = RequestLimits {
            max_datums: 1000,
            max_bytes: exact,
        };
        assert_eq!(pack(std::iter::repeat_n(d.clone(), 10), at).len(), 1);
        let under = RequestLimits {
            max_datums: 1000,
            max_bytes: exact - 1,
        };
        let b = pack(std::iter::repeat_n(d, 10), under);
        assert_eq!(
            b.iter().map(|b| b.datums.len()).collect::<Vec<_>>(),
            vec![9, 1]
        );
    }

    #[test]
    fn datums_of_different_namespaces_never_share_a_request() {
        let a = datum("A", 0, 0);
        let mut b = datum("B", 0, 0);
        b.stamp = Arc::new(Stamp {
            namespace: Arc::from("Other"),
            ..(*b.stamp).clone()
        });
        let batches = pack(vec![a.clone(), b, a], LIMITS);
        assert_eq!(batches.len(), 3);
    }

    #[test]
    fn the_largest_valid_datum_fits_the_smallest_allowed_request() {
        let mut d = datum("M", 0, 150);
        d.name = "n".repeat(255).into();
        d.dimensions = (0..30)
            .map(|i| (format!("{i:0>255}").into(), "v".repeat(1024).into()))
            .collect();
        let size = request_overhead("N", 1000) + datum_bytes(&d);
        assert!(size <= crate::publish::config::MIN_REQUEST_BYTES, "{size}");
    }

    proptest! {
        #[test]
        fn packing_keeps_every_datum_in_order_and_every_request_within_limits(
            shapes in proptest::collection::vec((0usize..5, 0usize..=150), 0..1500),
            max_datums in 1usize..=1000,
            max_bytes in 65_536usize..=999_000,
        ) {
            let datums: Vec<Datum> = shapes.iter().enumerate()
                .map(|(i, &(dims, values))| datum(&format!("M{i}"), dims, values)).collect();
            let limits = RequestLimits { max_datums, max_bytes };
            let batches = pack(datums.clone(), limits);
            let flat: Vec<Datum> = batches.iter().flat_map(|b| b.datums.clone()).collect();
            prop_assert_eq!(flat, datums);
            for b in &batches {
                prop_assert!(!b.datums.is_empty());
                prop_assert!(b.datums.len() <= max_datums);
                prop_assert!(b.estimated_bytes <= max_bytes);
                let sum: usize = request_overhead("Tally/Test", max_datums)
                    + b.datums.iter().map(datum_bytes).sum::<usize>();
                prop_assert_eq!(sum, b.estimated_bytes);
            }
        }
    }
}
