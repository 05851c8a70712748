//! Writes the committed seed corpus: small valid frames of every kind, so the fuzzer starts
//! from inputs that reach deep into the decoder. Run by `scripts/fuzz.sh --seeds`.

use hdrhistogram::Histogram;
use tally::wire::{
    encode_ack, encode_batch, Ack, AckStatus, Batch, DropReport, ProcessIdentity, Series,
    SeriesValue, Unit,
};

fn hist(values: &[u64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("3 digits is valid");
    for &v in values {
        h.record(v).expect("auto-resizing histogram");
    }
    h
}

fn batch(series: Vec<Series>) -> Batch {
    Batch {
        process: ProcessIdentity {
            instance_id: 42,
            pid: 7,
            service: "svc".into(),
            environment: "dev".into(),
            host: "h".into(),
        },
        sequence: 1,
        start_unix_ms: 1_700_000_000_000,
        end_unix_ms: 1_700_000_010_000,
        drops: DropReport {
            dropped_samples: 1,
            dropped_batches: 1,
            label_overflows: 2,
        },
        series,
    }
}

fn series(name: &str, value: SeriesValue) -> Series {
    Series {
        name: name.into(),
        unit: Unit::Count,
        labels: vec![("Route".into(), "/a".into())],
        value,
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "seeds/decode_frame".into());
    std::fs::create_dir_all(&dir).expect("create seed dir");
    let seeds: Vec<(&str, Batch)> = vec![
        ("empty", batch(vec![])),
        ("counter", batch(vec![series("c", SeriesValue::Counter(5))])),
        (
            "gauge",
            batch(vec![series(
                "g",
                SeriesValue::Gauge {
                    last: 1.0,
                    min: 0.5,
                    max: 2.0,
                    updates: 3,
                },
            )]),
        ),
        (
            "histogram",
            batch(vec![series(
                "h",
                SeriesValue::Histogram {
                    scale: 1.0,
                    histogram: hist(&[1, 10, 1000, 123_456]),
                },
            )]),
        ),
        (
            "event",
            batch(vec![series(
                "e",
                SeriesValue::Event {
                    count: 2,
                    values: Some((100.0, hist(&[1999, 25]))),
                },
            )]),
        ),
    ];
    for (name, b) in seeds {
        let mut out = Vec::new();
        encode_batch(&b, &mut out).expect("encode seed");
        std::fs::write(format!("{dir}/{name}.bin"), out).expect("write seed");
    }
    let mut out = Vec::new();
    encode_ack(
        &Ack {
            sequence: 9,
            status: AckStatus::Accepted,
            agent_version: 1,
        },
        &mut out,
    );
    std::fs::write(format!("{dir}/ack.bin"), out).expect("write seed");
}
