//! A small SDK-like load generator for the agent: sends `SERIES` distinct counter series (and,
//! with `--histograms`, one latency histogram per series) in batches over TCP and waits for
//! every ack.
//!
//! ```text
//! cargo run --release -p tally-agent --example loadgen -- 127.0.0.1:9911 100000 [--histograms]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally::wire::{
    decode_ack, encode_batch, AckStatus, Batch, FrameHeader, Limits, ProcessIdentity, Series,
    SeriesValue, Unit, HEADER_LEN,
};

const PER_BATCH: usize = 5_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).map_or("127.0.0.1:9911", String::as_str);
    let total: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let histograms = args.iter().any(|a| a == "--histograms");
    let mut s = TcpStream::connect(addr)?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let started = Instant::now();
    let mut seq = 0;
    let mut frame = Vec::new();
    for chunk_start in (0..total).step_by(PER_BATCH) {
        let end = (chunk_start + PER_BATCH).min(total);
        let mut series = Vec::with_capacity(end - chunk_start);
        for i in chunk_start..end {
            let labels = vec![
                ("Method".to_owned(), "GET".to_owned()),
                ("Route".to_owned(), format!("/r{i}")),
            ];
            series.push(Series {
                name: "RequestCount".into(),
                unit: Unit::Count,
                labels: labels.clone(),
                value: SeriesValue::Counter(1),
            });
            if histograms {
                let mut h = Histogram::<u64>::new(2)?;
                h.record(1_000_000 + i as u64)?;
                series.push(Series {
                    name: "ResponseTime".into(),
                    unit: Unit::Nanoseconds,
                    labels,
                    value: SeriesValue::Histogram {
                        scale: 1.0,
                        histogram: h,
                    },
                });
            }
        }
        seq += 1;
        let b = Batch {
            process: ProcessIdentity {
                instance_id: 42,
                pid: std::process::id(),
                service: "loadgen".into(),
                environment: "bench".into(),
                host: "localhost".into(),
            },
            sequence: seq,
            start_unix_ms: now_ms,
            end_unix_ms: now_ms,
            drops: Default::default(),
            series,
        };
        frame.clear();
        encode_batch(&b, &mut frame)?;
        s.write_all(&frame)?;
        let mut hdr = [0u8; HEADER_LEN];
        s.read_exact(&mut hdr)?;
        let h = FrameHeader::parse(&hdr, &Limits::default())?;
        let mut p = vec![0u8; h.len as usize];
        s.read_exact(&mut p)?;
        let ack = decode_ack(&p)?;
        if ack.status != AckStatus::Accepted {
            return Err(format!("batch {seq} answered {:?}", ack.status).into());
        }
    }
    println!(
        "sent {total} series in {seq} batches in {:.2?}",
        started.elapsed()
    );
    Ok(())
}
