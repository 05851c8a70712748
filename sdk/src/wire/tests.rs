use hdrhistogram::Histogram;
use proptest::prelude::*;

use super::*;

fn payload(frame: &[u8]) -> &[u8] {
    let header = FrameHeader::parse(frame[..HEADER_LEN].try_into().unwrap(), &Limits::default())
        .expect("valid header");
    assert_eq!(header.len as usize, frame.len() - HEADER_LEN);
    &frame[HEADER_LEN..]
}

fn hist(values: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for &v in values {
        h.record(v).unwrap();
    }
    h
}

/// A histogram whose V2 body is longer than the SDK sends plain (64 KiB), so it travels
/// deflated: every other bucket of 36 powers of two (18,432 buckets), each count taking three
/// bytes and each gap one.
fn long_hist(seed: u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for octave in 0..36 {
        for j in (0..1024u64).step_by(2) {
            h.record_n((1024 + j) << octave, 100_000 + seed).unwrap();
        }
    }
    h
}

fn sample_batch() -> Batch {
    Batch {
        process: ProcessIdentity {
            instance_id: 0xdead_beef_0123_4567,
            pid: 4242,
            service: "checkout".into(),
            environment: "prod".into(),
            host: "ip-10-0-0-1".into(),
        },
        sequence: 7,
        start_unix_ms: 1_700_000_000_000,
        end_unix_ms: 1_700_000_010_000,
        drops: DropReport {
            dropped_samples: 3,
            dropped_batches: 1,
            label_overflows: 9,
        },
        series: vec![
            Series {
                name: "requests".into(),
                unit: Unit::Count,
                labels: vec![("Route".into(), "/orders/{id}".into())],
                value: SeriesValue::Counter(12),
            },
            Series {
                name: "queue_depth".into(),
                unit: Unit::None,
                labels: vec![],
                value: SeriesValue::Gauge {
                    last: 3.5,
                    min: -1.0,
                    max: 10.0,
                    updates: 4,
                },
            },
            Series {
                name: "latency".into(),
                unit: Unit::Nanoseconds,
                labels: vec![
                    ("Route".into(), "/".into()),
                    ("Method".into(), "GET".into()),
                ],
                value: SeriesValue::Histogram {
                    scale: 1.0,
                    histogram: hist(&[1, 1000, 1_000_000, 5_000_000_000]),
                },
            },
            Series {
                name: "checkout".into(),
                unit: Unit::None,
                labels: vec![],
                value: SeriesValue::Event {
                    count: 2,
                    values: Some((100.0, hist(&[1999, 4550]))),
                },
            },
            Series {
                name: "login".into(),
                unit: Unit::Count,
                labels: vec![],
                value: SeriesValue::Event {
                    count: 5,
                    values: None,
                },
            },
        ],
    }
}

#[test]
fn a_batch_survives_encode_and_decode_unchanged() {
    let batch = sample_batch();
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let decoded = decode_batch(payload(&frame), &Limits::default()).unwrap();
    assert_eq!(decoded, batch);
    assert_eq!(decoded.samples(), 12 + 4 + 4 + 2 + 5);
}

#[test]
fn an_ack_survives_encode_and_decode_unchanged() {
    for status in [
        AckStatus::Accepted,
        AckStatus::Duplicate,
        AckStatus::Rejected,
    ] {
        let ack = Ack {
            sequence: u64::MAX,
            status,
            agent_version: u16::MAX,
        };
        let mut frame = Vec::new();
        encode_ack(&ack, &mut frame);
        assert_eq!(decode_ack(payload(&frame)).unwrap(), ack);
    }
}

#[test]
fn an_ack_without_a_version_is_from_a_version_1_agent_and_later_fields_are_skipped() {
    // Sequence 7, accepted, nothing more: what agents before the version field sent.
    let old = decode_ack(&[7, 0]).unwrap();
    assert_eq!(old.agent_version, 1);
    assert_eq!(old.sequence, 7);
    // Version 3 and two bytes of a field this reader does not know.
    let later = decode_ack(&[7, 1, 3, 0xAA, 0x01]).unwrap();
    assert_eq!(
        (later.agent_version, later.status),
        (3, AckStatus::Duplicate)
    );
    // Version 0 and versions past u16 are refused, naming the field.
    for bad in [&[7u8, 0, 0][..], &[7, 0, 0x80, 0x80, 0x04]] {
        let e = decode_ack(bad).unwrap_err();
        assert!(e.to_string().contains("agent version"), "{e}");
    }
}

#[test]
fn every_truncation_of_a_valid_batch_is_refused_without_panicking() {
    let mut frame = Vec::new();
    encode_batch(&sample_batch(), &mut frame).unwrap();
    let p = payload(&frame);
    for cut in 0..p.len() {
        let err = decode_batch(&p[..cut], &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated { .. } | DecodeError::BadHistogram { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn a_header_with_foreign_magic_wrong_version_or_oversized_length_is_refused() {
    let limits = Limits {
        max_frame_len: 100,
        ..Limits::default()
    };
    let good = FrameHeader {
        kind: FrameKind::Batch,
        len: 100,
    }
    .to_bytes();
    assert!(FrameHeader::parse(&good, &limits).is_ok());

    let mut bad = good;
    bad[0] = b'G';
    assert!(matches!(
        FrameHeader::parse(&bad, &limits),
        Err(DecodeError::BadMagic { .. })
    ));

    let mut bad = good;
    bad[4] = 2;
    let err = FrameHeader::parse(&bad, &limits).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    assert!(err.to_string().contains("upgrade"));

    let big = FrameHeader {
        kind: FrameKind::Batch,
        len: 101,
    }
    .to_bytes();
    assert_eq!(
        FrameHeader::parse(&big, &limits),
        Err(DecodeError::FrameTooLarge { len: 101, max: 100 })
    );

    let mut bad = good;
    bad[6] = 9;
    assert_eq!(
        FrameHeader::parse(&bad, &limits),
        Err(DecodeError::UnknownFrameKind(9))
    );
}

#[test]
fn a_series_count_beyond_the_limit_is_refused_before_allocating() {
    let mut batch = sample_batch();
    batch.series.truncate(1);
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let limits = Limits {
        max_series_per_batch: 0,
        ..Limits::default()
    };
    assert!(matches!(
        decode_batch(payload(&frame), &limits),
        Err(DecodeError::TooManySeries { count: 1, max: 0 })
    ));
}

#[test]
fn a_histogram_whose_range_needs_more_counters_than_the_budget_is_refused() {
    let mut batch = sample_batch();
    batch.series.retain(|s| s.name == "latency");
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let limits = Limits {
        max_histogram_counts_per_batch: 1000,
        ..Limits::default()
    };
    let err = decode_batch(payload(&frame), &limits).unwrap_err();
    assert!(matches!(err, DecodeError::BadHistogram { .. }), "{err:?}");
    assert!(err.to_string().contains("budget"), "{err}");
}

#[test]
fn names_over_255_bytes_and_empty_names_are_refused() {
    let mut batch = sample_batch();
    batch.series[0].name = "n".repeat(256);
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    assert!(matches!(
        decode_batch(payload(&frame), &Limits::default()),
        Err(DecodeError::StringTooLong {
            len: 256,
            max: 255,
            ..
        })
    ));

    batch.series[0].name = String::new();
    frame.clear();
    encode_batch(&batch, &mut frame).unwrap();
    assert!(matches!(
        decode_batch(payload(&frame), &Limits::default()),
        Err(DecodeError::EmptyString { .. })
    ));
}

fn arb_hist() -> impl Strategy<Value = Histogram<u64>> {
    prop::collection::vec(1u64..10_000_000_000, 0..50).prop_map(|v| hist(&v))
}

fn arb_value() -> impl Strategy<Value = SeriesValue> {
    prop_oneof![
        any::<u64>().prop_map(SeriesValue::Counter),
        (any::<f64>(), any::<f64>(), any::<f64>(), any::<u64>()).prop_map(
            |(last, min, max, updates)| SeriesValue::Gauge {
                last,
                min,
                max,
                updates
            }
        ),
        (1.0f64..1e6, arb_hist())
            .prop_map(|(scale, histogram)| SeriesValue::Histogram { scale, histogram }),
        (any::<u64>(), prop::option::of((1.0f64..1e6, arb_hist())))
            .prop_map(|(count, values)| SeriesValue::Event { count, values }),
    ]
}

fn arb_series() -> impl Strategy<Value = Series> {
    (
        "[a-zA-Z_.]{1,40}",
        0u8..8,
        prop::collection::vec(("[A-Za-z]{1,20}", "\\PC{0,30}"), 0..5),
        arb_value(),
    )
        .prop_map(|(name, unit, labels, value)| Series {
            name,
            unit: Unit::from_u8(unit).unwrap(),
            labels,
            value,
        })
}

fn arb_batch() -> impl Strategy<Value = Batch> {
    (
        any::<u64>(),
        any::<u32>(),
        "\\PC{0,40}",
        any::<u64>(),
        any::<(u64, u64, u64)>(),
        prop::collection::vec(arb_series(), 0..12),
    )
        .prop_map(|(id, pid, service, seq, drops, series)| Batch {
            process: ProcessIdentity {
                instance_id: id,
                pid,
                service: service.clone(),
                environment: "test".into(),
                host: service,
            },
            sequence: seq,
            start_unix_ms: seq / 3,
            end_unix_ms: seq / 2,
            drops: DropReport {
                dropped_samples: drops.0,
                dropped_batches: drops.1,
                label_overflows: drops.2,
            },
            series,
        })
}

/// Compares batches value by value: gauges bit for bit (NaN is not equal to itself) and
/// histograms by their counts (`auto_resize` is not part of the wire format).
fn same(a: &Batch, b: &Batch) -> bool {
    fn bits(v: &SeriesValue) -> Option<[u64; 4]> {
        match v {
            SeriesValue::Gauge {
                last,
                min,
                max,
                updates,
            } => Some([last.to_bits(), min.to_bits(), max.to_bits(), *updates]),
            _ => None,
        }
    }
    a.process == b.process
        && (a.sequence, a.start_unix_ms, a.end_unix_ms)
            == (b.sequence, b.start_unix_ms, b.end_unix_ms)
        && a.drops == b.drops
        && a.series.len() == b.series.len()
        && a.series.iter().zip(&b.series).all(|(x, y)| {
            x.name == y.name
                && x.unit == y.unit
                && x.labels == y.labels
                && match (bits(&x.value), bits(&y.value)) {
                    (Some(p), Some(q)) => p == q,
                    _ => x.value == y.value,
                }
        })
}

proptest! {
    #[test]
    fn any_valid_batch_round_trips(batch in arb_batch()) {
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        let decoded = decode_batch(payload(&frame), &Limits::default()).unwrap();
        prop_assert!(same(&decoded, &batch), "{:?} != {:?}", decoded, batch);
    }

    #[test]
    fn peeking_a_batch_finds_its_instance_and_sequence_and_a_payload_cut_before_them_finds_none(
        batch in arb_batch(), cut in any::<prop::sample::Index>()
    ) {
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        let p = payload(&frame);
        let key = (batch.process.instance_id, batch.sequence);
        prop_assert_eq!(peek_batch_key(p), Some(key));
        // The shortest prefix that still holds the key: everything before it yields `None`.
        let needed = (0..=p.len()).find(|&n| peek_batch_key(&p[..n]).is_some()).unwrap();
        let n = cut.index(p.len() + 1);
        prop_assert_eq!(peek_batch_key(&p[..n]), (n >= needed).then_some(key));
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&bytes, &Limits::default());
        let _ = decode_ack(&bytes);
        let _ = peek_batch_key(&bytes);
        if bytes.len() >= HEADER_LEN {
            let _ = FrameHeader::parse(bytes[..HEADER_LEN].try_into().unwrap(), &Limits::default());
        }
    }

    #[test]
    fn corrupting_one_byte_of_a_valid_batch_never_panics(
        batch in arb_batch(), at in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        let mut p = payload(&frame).to_vec();
        if !p.is_empty() {
            let i = at.index(p.len());
            p[i] = byte;
        }
        let _ = decode_batch(&p, &Limits::default());
    }
}

// ---- The borrowing view against the old decoder (kept in `reference.rs` as an oracle) ----

use super::reference::decode_batch_reference;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use std::io::Write;

/// Asserts that the reference decoder, `decode_batch` and `BatchView::parse` judge `p` alike:
/// the same accept/refuse decision, the same refusal reason, the same decoded batch, and a
/// view whose series and histogram buckets are exactly the reference's.
fn assert_agrees_with_reference(p: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    let old = decode_batch_reference(p, limits);
    let new = decode_batch(p, limits);
    let view = BatchView::parse(p, limits);
    match (&old, &new, &view) {
        (Ok(o), Ok(n), Ok(v)) => {
            prop_assert!(same(o, n), "{o:?} != {n:?}");
            prop_assert_eq!(v.samples(), o.samples());
            prop_assert_eq!(v.len(), o.series.len());
            prop_assert_eq!(
                (v.process.instance_id, v.process.pid, v.process.service),
                (
                    o.process.instance_id,
                    o.process.pid,
                    o.process.service.as_str()
                )
            );
            for (vs, os) in v.series().zip(&o.series) {
                let mut labels = Vec::new();
                prop_assert_eq!(vs.descriptor.decode(&mut labels)?, os.name.as_str());
                prop_assert_eq!(vs.descriptor.unit(), os.unit);
                let labels: Vec<(String, String)> = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                prop_assert_eq!(&labels, &os.labels);
                prop_assert_eq!(vs.value.samples(), os.value.samples());
                let pair = match (vs.value, &os.value) {
                    (ValueView::Histogram(h), SeriesValue::Histogram { scale, histogram }) => {
                        Some((h, *scale, histogram))
                    }
                    (
                        ValueView::Event {
                            values: Some(h), ..
                        },
                        SeriesValue::Event {
                            values: Some((scale, histogram)),
                            ..
                        },
                    ) => Some((h, *scale, histogram)),
                    _ => None,
                };
                if let Some((h, scale, histogram)) = pair {
                    prop_assert_eq!(h.scale().to_bits(), scale.to_bits());
                    prop_assert_eq!(h.len(), histogram.len());
                    let buckets: Vec<(u64, u64)> = h.buckets().unwrap().into_owned();
                    let expected: Vec<(u64, u64)> = histogram
                        .iter_recorded()
                        .map(|b| {
                            (
                                histogram.lowest_equivalent(b.value_iterated_to()),
                                b.count_at_value(),
                            )
                        })
                        .collect();
                    prop_assert_eq!(buckets, expected);
                    prop_assert_eq!(
                        h.max_bucket_value(),
                        (!histogram.is_empty())
                            .then(|| histogram.lowest_equivalent(histogram.max()))
                    );
                }
            }
        }
        // The view leaves names and labels to `Descriptor::decode`: a batch refused only for
        // a string that is not UTF-8 parses, and that series is refused when decoded.
        (Err(o), Err(n @ DecodeError::InvalidUtf8 { .. }), Ok(v)) => {
            prop_assert_eq!(o.reason(), n.reason(), "{} vs {}", o, n);
            prop_assert_eq!(&v.to_batch().unwrap_err(), n);
        }
        (Err(o), Err(n @ DecodeError::InvalidUtf8 { .. }), Err(_)) => {
            prop_assert_eq!(o.reason(), n.reason(), "{} vs {}", o, n);
        }
        (Err(o), Err(n), Err(v)) => {
            prop_assert_eq!(o.reason(), n.reason(), "{} vs {}", o, n);
            prop_assert_eq!(n, v);
        }
        _ => prop_assert!(
            false,
            "decoders disagree: reference {old:?}, decode_batch {new:?}, view {view:?}"
        ),
    }
    Ok(())
}

/// A batch payload with one histogram series whose HdrHistogram blob is `blob`, verbatim.
fn payload_with_histogram_blob(blob: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&7u64.to_le_bytes()); // instance id
    p.push(1); // pid
    for s in ["svc", "env", "host"] {
        p.push(s.len() as u8);
        p.extend_from_slice(s.as_bytes());
    }
    p.extend_from_slice(&[1, 2, 3, 0, 0, 0]); // sequence, start, end, drops
    p.push(1); // one series
    push_histogram_series(&mut p, "lat", blob);
    p
}

/// Appends a histogram series named `name` (no labels, scale 1) whose blob is `blob`, verbatim.
fn push_histogram_series(p: &mut Vec<u8>, name: &str, blob: &[u8]) {
    p.push(name.len() as u8);
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&[3, Unit::Nanoseconds as u8, 0]); // histogram, unit, no labels
    p.extend_from_slice(&1.0f64.to_le_bytes());
    let mut n = blob.len();
    while n >= 0x80 {
        p.push((n as u8) | 0x80);
        n >>= 7;
    }
    p.push(n as u8);
    p.extend_from_slice(blob);
}

/// Wraps an (uncompressed) V2 body as the wire carries it: V2+DEFLATE cookie, length, zlib.
fn deflate_v2(body: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(body).unwrap();
    let z = z.finish().unwrap();
    let mut blob = (0x1c84_9304u32 | 0x10).to_be_bytes().to_vec();
    blob.extend_from_slice(&(z.len() as u32).to_be_bytes());
    blob.extend_from_slice(&z);
    blob
}

/// A histogram with any layout HdrHistogram accepts and values in (or near) its range.
fn arb_any_layout_hist() -> impl Strategy<Value = Histogram<u64>> {
    (
        prop_oneof![Just(1u64), 1u64..1000, 1u64..(1 << 40)],
        0u8..=3,
        prop::collection::vec((0u64..64, any::<u64>(), 1u64..1000), 0..30),
    )
        .prop_map(|(low, sigfig, values)| {
            let mut h = Histogram::<u64>::new_with_bounds(low, low * 4, sigfig).unwrap();
            h.auto(true);
            for (shift, v, n) in values {
                let v = (v >> shift).max(low);
                // Values near u64::MAX cannot be tracked; the rest grow the range.
                let _ = h.record_n(v, n);
            }
            h
        })
}

#[test]
fn short_histograms_travel_as_plain_v2_and_long_ones_deflated() {
    let mut batch = sample_batch();
    let short = hist(&[1, 2, 3, 1000]);
    // About 6 KB of V2: plain since bodies up to 64 KiB are (they were deflated past 1 KiB).
    let middle = hist(&(1..2000).map(|k| k * 7919).collect::<Vec<u64>>());
    let long = long_hist(0);
    batch.series = [short.clone(), middle.clone(), long.clone()]
        .into_iter()
        .enumerate()
        .map(|(i, histogram)| Series {
            name: format!("h{i}"),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram,
            },
        })
        .collect();
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let view = BatchView::parse(payload(&frame), &Limits::default()).unwrap();
    let bodies: Vec<&str> = view
        .series
        .iter()
        .map(|s| match &s.value {
            super::view::ValueEntry::Histogram(h) => match h.body {
                super::view::Body::Frame(_) => "plain",
                super::view::Body::Arena(_) => "inflated",
                super::view::Body::Deflated { .. } => "deflated",
            },
            _ => "other",
        })
        .collect();
    assert_eq!(bodies, ["plain", "plain", "inflated"]);
    // Only the long one was inflated: the arena holds nothing of the others.
    let decoded = view.to_batch().unwrap();
    assert!(same(&decoded, &batch), "{decoded:?}");
}

#[test]
fn a_histogram_that_does_not_fit_the_arena_is_inflated_again_and_decodes_the_same() {
    let mut batch = sample_batch();
    // Three histograms of about 70 KiB each (so they travel deflated, not plain); the arena
    // holds at most one of them inflated.
    let wide = long_hist;
    batch.series = (0..3)
        .map(|i| Series {
            name: format!("h{i}"),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram: wide(i),
            },
        })
        .collect();
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let p = payload(&frame);
    let one = BatchView::parse(p, &Limits::default()).unwrap().arena.len() / 3;
    let limits = Limits {
        max_histogram_bytes: one + one / 2,
        ..Limits::default()
    };
    let view = BatchView::parse(p, &limits).unwrap();
    assert!(view.arena.len() <= limits.max_histogram_bytes);
    assert!(view
        .series
        .iter()
        .any(|s| matches!(&s.value, super::view::ValueEntry::Histogram(h) if matches!(h.body, super::view::Body::Deflated { .. }))));
    let decoded = view.to_batch().unwrap();
    assert!(same(&decoded, &batch), "{decoded:?}");
    assert_agrees_with_reference(p, &limits).unwrap();
}

proptest! {
    #[test]
    fn the_view_and_decode_batch_agree_with_the_reference_on_valid_batches(batch in arb_batch()) {
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        assert_agrees_with_reference(payload(&frame), &Limits::default())?;
    }

    #[test]
    fn the_view_and_decode_batch_agree_with_the_reference_on_corrupted_batches(
        batch in arb_batch(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut frame = Vec::new();
        encode_batch(&batch, &mut frame).unwrap();
        let mut p = payload(&frame).to_vec();
        if !p.is_empty() {
            for (at, byte) in edits {
                let i = at.index(p.len());
                p[i] = byte;
            }
            if truncate {
                p.truncate(cut.index(p.len()));
            }
        }
        assert_agrees_with_reference(&p, &Limits::default())?;
    }

    #[test]
    fn histogram_bodies_of_any_layout_and_corruption_are_judged_like_hdrhistogram_judges_them(
        h in arb_any_layout_hist(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        extra in prop::collection::vec(any::<u8>(), 0..12),
        fix_length in any::<bool>(),
        budget in prop_oneof![Just(4u64 << 20), 0u64..100_000],
    ) {
        let mut body = Vec::new();
        V2Serializer::new().serialize(&h, &mut body).unwrap();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        body.extend_from_slice(&extra);
        if fix_length && body.len() >= 40 {
            let n = (body.len() - 40) as u32;
            body[4..8].copy_from_slice(&n.to_be_bytes());
        }
        let limits = Limits { max_histogram_counts_per_batch: budget, ..Limits::default() };
        assert_agrees_with_reference(&payload_with_histogram_blob(&deflate_v2(&body)), &limits)?;
    }

    #[test]
    fn random_bytes_are_judged_like_the_reference_judges_them(
        bytes in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        assert_agrees_with_reference(&bytes, &Limits::default())?;
    }
}

#[test]
fn a_histogram_whose_layout_differs_from_the_one_before_it_is_checked_again() {
    // Header checks are remembered per layout within a batch: a second histogram that differs
    // only in its significant digits must still meet the limit on them.
    let mut batch = sample_batch();
    let digits = |sigfig| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 30, sigfig).unwrap();
        h.record(1000).unwrap();
        Series {
            name: format!("h{sigfig}"),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram: h,
            },
        }
    };
    batch.series = vec![digits(2), digits(2), digits(3)];
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).unwrap();
    let limits = Limits {
        max_significant_digits: 2,
        ..Limits::default()
    };
    let err = BatchView::parse(payload(&frame), &limits).unwrap_err();
    assert!(
        matches!(&err, DecodeError::BadHistogram { name, .. } if name == "h3"),
        "{err:?}"
    );
    batch.series.truncate(2);
    frame.clear();
    encode_batch(&batch, &mut frame).unwrap();
    assert_eq!(BatchView::parse(payload(&frame), &limits).unwrap().len(), 2);
}

// ---- The buckets a parse records (one walk of the V2 counts) ----

/// A batch payload with one histogram series per blob, each blob verbatim.
fn payload_with_histogram_blobs(blobs: &[Vec<u8>]) -> Vec<u8> {
    let mut p = payload_with_histogram_blob(&blobs[0]);
    // The series count, after the instance id, pid, "svc", "env", "host" and six varints
    // (one byte: fewer than 128 blobs); the other series are appended.
    let count_at = 8 + 1 + 4 + 4 + 5 + 6;
    assert_eq!(p[count_at], 1);
    p[count_at] = u8::try_from(blobs.len()).unwrap();
    for (i, blob) in blobs.iter().enumerate().skip(1) {
        push_histogram_series(&mut p, &format!("lat{i}"), blob);
    }
    p
}

/// The non-zero buckets of `h` as HdrHistogram yields them, at each bucket's lowest value.
fn recorded_buckets(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|b| {
            (
                h.lowest_equivalent(b.value_iterated_to()),
                b.count_at_value(),
            )
        })
        .collect()
}

/// A histogram of any layout whose counts may be huge (sums saturate) and whose values may
/// reach the top of `u64`.
fn arb_wide_hist() -> impl Strategy<Value = Histogram<u64>> {
    (
        arb_any_layout_hist(),
        prop::collection::vec(
            (
                prop_oneof![any::<u64>(), Just(u64::MAX), Just(u64::MAX / 2)],
                prop_oneof![1u64..4, (1u64 << 61)..(1u64 << 62)],
            ),
            0..4,
        ),
    )
        .prop_map(|(mut h, extra)| {
            for (v, n) in extra {
                // Values HdrHistogram cannot track are left out, as a sender would have.
                let _ = h.record_n(v.max(h.low()), n);
            }
            h
        })
}

#[test]
fn a_histogram_whose_buckets_do_not_fit_the_buffer_is_walked_again_and_reads_the_same() {
    // Every bucket of a 0-digit histogram over 1..1024 holds a sample: 11 non-zero buckets of
    // the 12 its range charges, over the 6 a budget of exactly 12 counters lets a view record.
    let mut dense = Histogram::<u64>::new_with_bounds(1, 1024, 0).unwrap();
    for v in 1..=1024 {
        dense.record(v).unwrap();
    }
    let mut body = Vec::new();
    V2Serializer::new().serialize(&dense, &mut body).unwrap();
    let limits = Limits {
        max_histogram_counts_per_batch: 12,
        ..Limits::default()
    };
    for blob in [body.clone(), deflate_v2(&body)] {
        let p = payload_with_histogram_blob(&blob);
        let view = BatchView::parse(&p, &limits).unwrap();
        assert!(view.buckets.is_empty());
        let ValueView::Histogram(h) = view.series().next().unwrap().value else {
            panic!("a histogram series");
        };
        assert!(matches!(h.buckets().unwrap(), std::borrow::Cow::Owned(_)));
        assert_eq!(h.buckets().unwrap().into_owned(), recorded_buckets(&dense));
        assert_eq!(h.len(), dense.len());
        assert_agrees_with_reference(&p, &limits).unwrap();
    }
}

proptest! {
    #[test]
    fn the_buckets_a_parse_records_are_those_hdrhistogram_decodes(
        hists in prop::collection::vec((arb_wide_hist(), any::<bool>()), 1..5),
        budget_slack in prop_oneof![Just(0u64), 0u64..64, Just(4u64 << 20)],
        small_arena in any::<bool>(),
    ) {
        let mut blobs = Vec::new();
        let mut bodies = Vec::new();
        let mut counts = 0u64;
        for (h, deflated) in &hists {
            let mut body = Vec::new();
            // Counts above i64::MAX have no V2 encoding: such a histogram is not sent.
            prop_assume!(V2Serializer::new().serialize(h, &mut body).is_ok());
            counts += hdr_counts_len(h.low(), h.high(), h.sigfig()).unwrap();
            blobs.push(if *deflated { deflate_v2(&body) } else { body.clone() });
            bodies.push(body);
        }
        let largest = bodies.iter().map(Vec::len).max().unwrap();
        let limits = Limits {
            // Exactly the counters the batch needs (so the buffer holds half of them), or more.
            max_histogram_counts_per_batch: counts + budget_slack,
            // Small: inflated bodies past the first that fits are kept compressed.
            max_histogram_bytes: if small_arena { largest } else { 1 << 20 },
            ..Limits::default()
        };
        let p = payload_with_histogram_blobs(&blobs);
        let view = BatchView::parse(&p, &limits).unwrap();
        prop_assert!(view.buckets.len() as u64 <= limits.max_histogram_counts_per_batch / 2);
        for (s, (h, _)) in view.series().zip(&hists) {
            let ValueView::Histogram(v) = s.value else {
                panic!("a histogram series");
            };
            prop_assert_eq!(v.buckets().unwrap().into_owned(), recorded_buckets(h));
            prop_assert_eq!(v.len(), h.len());
            prop_assert_eq!(
                v.max_bucket_value(),
                (!h.is_empty()).then(|| h.lowest_equivalent(h.max()))
            );
        }
        assert_agrees_with_reference(&p, &limits)?;
    }
}

// ---- Parsing with the memo of a sender's recent batches (wire::memo) ----

/// Parses each of `earlier` with the memo, then `next` plainly and with the memo, and checks
/// both give the same view or the same error.
fn assert_memo_changes_nothing(
    earlier: &[&[u8]],
    next: &[u8],
    memo: &mut ParseMemo,
) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    for e in earlier {
        let remembered = BatchView::parse_remembering(e, &limits, memo).map(|v| format!("{v:?}"));
        prop_assert_eq!(
            remembered,
            BatchView::parse(e, &limits).map(|v| format!("{v:?}"))
        );
    }
    let plain = BatchView::parse(next, &limits).map(|v| format!("{v:?}"));
    let remembered = BatchView::parse_remembering(next, &limits, memo).map(|v| format!("{v:?}"));
    prop_assert_eq!(plain, remembered);
    prop_assert!(memo.batches() <= ParseMemo::BATCHES);
    Ok(())
}

fn encoded(batch: &Batch) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_batch(batch, &mut frame).unwrap();
    frame[HEADER_LEN..].to_vec()
}

proptest! {
    #[test]
    fn a_memo_of_earlier_batches_changes_no_parse_of_the_next(
        first in arb_batch(),
        other in arb_batch(),
        values in prop::collection::vec(arb_value(), 12),
        idle in prop::collection::vec(any::<bool>(), 12),
        shuffle in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        // The next batch: the first one's series with other values (what an SDK sends), some
        // left out (idle this interval), sometimes rotated (another order), then maybe
        // corrupted or cut short anywhere, descriptors included.
        let mut next = first.clone();
        for (s, v) in next.series.iter_mut().zip(values) {
            s.value = v;
        }
        let mut keep = idle.iter().map(|i| !i);
        next.series.retain(|_| keep.next().unwrap_or(true));
        if !next.series.is_empty() && shuffle.index(4) == 0 {
            let k = shuffle.index(next.series.len());
            next.series.rotate_left(k);
        }
        let (first_bytes, other_bytes) = (encoded(&first), encoded(&other));
        let mut bytes = encoded(&next);
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] ^= b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len() + 1));
        }
        // After the first batch alone; after it and another batch of the same sender (a
        // flush split in two); after a refused first batch.
        assert_memo_changes_nothing(&[&first_bytes], &bytes, &mut ParseMemo::new())?;
        assert_memo_changes_nothing(&[&first_bytes, &other_bytes], &bytes, &mut ParseMemo::new())?;
        let broken = &first_bytes[..first_bytes.len().saturating_sub(1)];
        assert_memo_changes_nothing(&[broken], &bytes, &mut ParseMemo::new())?;
    }
}

/// A batch of `n` counter series named `{prefix}{i}`, three labels each.
fn counters(prefix: &str, n: usize) -> Batch {
    let mut b = sample_batch();
    b.series = (0..n)
        .map(|i| Series {
            name: format!("{prefix}{i}"),
            unit: Unit::Count,
            labels: vec![
                ("Method".into(), "GET".into()),
                ("Route".into(), format!("/r/{i}")),
                ("StatusClass".into(), "2xx".into()),
            ],
            value: SeriesValue::Counter(i as u64 + 1),
        })
        .collect();
    b
}

#[test]
fn a_memo_recognises_the_series_a_sender_sends_again() {
    let limits = Limits::default();
    let mut memo = ParseMemo::new();
    let a = counters("a", 50);
    BatchView::parse_remembering(&encoded(&a), &limits, &mut memo).unwrap();
    assert_eq!(memo.recalled(), 0, "a first batch is checked in full");
    // The same series again: all recognised.
    BatchView::parse_remembering(&encoded(&a), &limits, &mut memo).unwrap();
    assert_eq!(memo.recalled(), 50);
    // Three idle series left out and one new one: the 47 others are recognised.
    let mut b = a.clone();
    b.series.remove(30);
    b.series.remove(20);
    b.series.remove(10);
    b.series.insert(40, counters("new", 1).series.remove(0));
    BatchView::parse_remembering(&encoded(&b), &limits, &mut memo).unwrap();
    assert_eq!(memo.recalled(), 50 + 47);
    // Seven in eight recognised: the memo keeps the batch with the idle series in it.
    assert_eq!((memo.batches(), memo.len()), (1, 50));
    // A flush split into two batches, sent again and again: both are remembered.
    let c = counters("c", 30);
    for _ in 0..3 {
        BatchView::parse_remembering(&encoded(&b), &limits, &mut memo).unwrap();
        BatchView::parse_remembering(&encoded(&c), &limits, &mut memo).unwrap();
    }
    assert_eq!(memo.batches(), 2);
    assert_eq!(memo.recalled(), 50 + 47 + 3 * 47 + 2 * 30);
}

#[test]
fn a_memo_follows_a_split_flush_whose_batches_move_with_idle_series() {
    let limits = Limits::default();
    let mut memo = ParseMemo::new();
    let all = counters("s", 100);
    let split = |series: &[Series]| {
        let mut a = all.clone();
        a.series = series[..50].to_vec();
        let mut b = all.clone();
        b.series = series[50..].to_vec();
        (encoded(&a), encoded(&b))
    };
    let (a, b) = split(&all.series);
    BatchView::parse_remembering(&a, &limits, &mut memo).unwrap();
    BatchView::parse_remembering(&b, &limits, &mut memo).unwrap();
    // Five series of the first batch idle: the second batch now begins five series later.
    let mut fewer = all.series.clone();
    fewer.drain(10..15);
    let (a, b) = split(&fewer);
    BatchView::parse_remembering(&a, &limits, &mut memo).unwrap();
    BatchView::parse_remembering(&b, &limits, &mut memo).unwrap();
    // The first batch: its 45 remembered series (the 5 it took from the second batch were
    // not in the batch it was walked beside); the second: all but those 5 of its 50.
    assert_eq!(memo.recalled(), 45 + 45);
}

#[test]
fn a_memo_keeps_what_it_knows_through_a_refused_batch() {
    let limits = Limits::default();
    let batch = sample_batch();
    let good = encoded(&batch);
    let mut memo = ParseMemo::new();
    BatchView::parse_remembering(&good, &limits, &mut memo).unwrap();
    assert_eq!(memo.len(), batch.series.len());
    let mut cut = good.clone();
    cut.pop();
    assert!(BatchView::parse_remembering(&cut, &limits, &mut memo).is_err());
    assert_eq!(memo.len(), batch.series.len());
    assert_eq!(memo.recalled(), 0, "a refused batch counts nothing");
}

#[test]
fn a_memo_stays_within_its_bounds() {
    let limits = Limits::default();
    let mut memo = ParseMemo::new();
    let parse = |b: &Batch, memo: &mut ParseMemo| {
        BatchView::parse_remembering(&encoded(b), &limits, memo).unwrap();
    };
    // More distinct batches than it keeps: the first ones stay (a sender cycling through
    // them keeps those recognised), the others are checked in full.
    let many: Vec<Batch> = (0..ParseMemo::BATCHES + 3)
        .map(|k| counters(&format!("b{k}-"), 10))
        .collect();
    for b in &many {
        parse(b, &mut memo);
    }
    assert_eq!(memo.batches(), ParseMemo::BATCHES);
    let seen = memo.recalled();
    parse(&many[0], &mut memo);
    parse(&many[ParseMemo::BATCHES + 2], &mut memo);
    assert_eq!(
        memo.recalled(),
        seen + 10,
        "the first batch is still known, the last not"
    );
    // A batch whose descriptors alone pass the byte bound is never remembered.
    let mut big = sample_batch();
    let long = "x".repeat(MAX_LABEL_VALUE_LEN);
    big.series = (0..300)
        .map(|i| Series {
            name: format!("m{i}"),
            unit: Unit::Count,
            labels: vec![("Big".into(), long.clone())],
            value: SeriesValue::Counter(1),
        })
        .collect();
    let bytes = encoded(&big);
    assert!(
        bytes.len() > ParseMemo::MAX_BYTES,
        "the batch must pass the bound"
    );
    assert_eq!(
        BatchView::parse_remembering(&bytes, &limits, &mut memo)
            .unwrap()
            .len(),
        300
    );
    // Batches not used for a while make room for new ones: a sender whose series changed
    // is recognised again. Each of these takes about half the byte bound.
    let halves: Vec<Batch> = (0..2)
        .map(|k| {
            let mut b = big.clone();
            b.series.truncate(120);
            for s in &mut b.series {
                s.name = format!("{k}{}", s.name);
            }
            b
        })
        .collect();
    for _ in 0..40 {
        parse(&halves[0], &mut memo);
        parse(&halves[1], &mut memo);
    }
    let seen = memo.recalled();
    parse(&halves[0], &mut memo);
    parse(&halves[1], &mut memo);
    assert_eq!(memo.recalled(), seen + 240);
    assert!(
        memo.heap_bytes() <= ParseMemo::MAX_BYTES + 64 * 1024,
        "{}",
        memo.heap_bytes()
    );
}

#[test]
fn a_descriptor_kept_as_bytes_parses_again_only_whole() {
    let mut frame = Vec::new();
    encode_batch(&sample_batch(), &mut frame).unwrap();
    let view = BatchView::parse(payload(&frame), &Limits::default()).unwrap();
    for s in view.series() {
        let bytes = s.descriptor.as_bytes();
        let again = Descriptor::parse(bytes).unwrap();
        assert_eq!(again.unit(), s.descriptor.unit());
        assert_eq!(again.as_bytes(), bytes);
        // Cut short anywhere, or with a byte more, it is refused.
        for end in 0..bytes.len() {
            assert!(Descriptor::parse(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            Descriptor::parse(&longer),
            Err(DecodeError::TrailingBytes(1))
        ));
    }
    // Too many labels: the batch parse's error, naming the metric.
    let mut d = vec![4];
    d.extend_from_slice(b"Hits");
    d.extend_from_slice(&[1, 0, MAX_LABELS as u8 + 1]);
    match Descriptor::parse(&d) {
        Err(DecodeError::TooManyLabels { name, count, .. }) => {
            assert_eq!((name.as_str(), count), ("Hits", MAX_LABELS as u64 + 1));
        }
        other => panic!("{other:?}"),
    }
}
