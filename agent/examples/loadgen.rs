//! A small SDK-like load generator for the agent: sends `SERIES` distinct counter series (and,
//! with `--histograms`, one latency histogram per series) in batches over TCP and waits for
//! every ack. With `--repeat N` it then sends the same series N more times (new sequence
//! numbers, frames encoded before the clock starts) and prints the agent's end-to-end
//! throughput in series updates per second: TCP, framing, decode, merge and acks.
//!
//! ```text
//! cargo run --release -p tally-agent --example loadgen -- 127.0.0.1:9911 100000 [--histograms] [--repeat N]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tally::wire::{
    decode_ack, encode_batch, AckStatus, Batch, FrameHeader, Limits, ProcessIdentity, Series,
    SeriesValue, Unit, HEADER_LEN,
};

/// Series per batch (a batch of histograms is smaller, to stay inside the agent's default
/// `ingest.max_histogram_counts_per_batch`).
const PER_BATCH: usize = 5_000;
const PER_BATCH_HISTOGRAMS: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).map_or("127.0.0.1:9911", String::as_str);
    let total: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let histograms = args.iter().any(|a| a == "--histograms");
    let repeat: usize = match args.iter().position(|a| a == "--repeat") {
        Some(i) => args.get(i + 1).ok_or("--repeat needs a count")?.parse()?,
        None => 0,
    };
    let per_batch = if histograms {
        PER_BATCH_HISTOGRAMS
    } else {
        PER_BATCH
    };
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    // A new instance per run, so the agent never takes a rerun for a resend of the last one.
    let instance_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut seq = 0;
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut updates = 0u64;
    for _pass in 0..=repeat {
        for chunk_start in (0..total).step_by(per_batch) {
            let end = (chunk_start + per_batch).min(total);
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
                    instance_id,
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
            updates += b.series.len() as u64;
            let mut frame = Vec::new();
            encode_batch(&b, &mut frame)?;
            frames.push(frame);
        }
    }
    let first_pass = frames.len().div_ceil(repeat + 1);
    let first_updates = updates / (repeat as u64 + 1);
    let started = Instant::now();
    let mut steady = started;
    for (i, frame) in frames.iter().enumerate() {
        if i == first_pass {
            steady = Instant::now();
        }
        s.write_all(frame)?;
        let mut hdr = [0u8; HEADER_LEN];
        s.read_exact(&mut hdr)?;
        let h = FrameHeader::parse(&hdr, &Limits::default())?;
        let mut p = vec![0u8; h.len as usize];
        s.read_exact(&mut p)?;
        let ack = decode_ack(&p)?;
        if ack.status != AckStatus::Accepted {
            return Err(format!("batch {} answered {:?}", i + 1, ack.status).into());
        }
    }
    if repeat > 0 {
        let secs = steady.elapsed().as_secs_f64();
        let n = updates - first_updates;
        println!(
            "steady state: {n} series updates in {secs:.3} s = {:.2} M updates/s end to end",
            n as f64 / secs / 1e6
        );
    }
    println!(
        "sent {total} series {} times in {seq} batches in {:.2?}",
        repeat + 1,
        started.elapsed()
    );
    Ok(())
}
