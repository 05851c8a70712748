//! A StatsD load generator: UDP packets of DogStatsD lines at a fixed rate, for
//! `scripts/statsd-load.sh` (end-to-end packets per second and kernel drops).
//!
//! `statsd_loadgen ADDR PACKETS_PER_SEC SECONDS [LINES_PER_PACKET]` prints the packets and
//! lines it sent as `sent_packets=N sent_lines=M elapsed_ms=T`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: statsd_loadgen ADDR PACKETS_PER_SEC SECONDS [LINES_PER_PACKET]");
        std::process::exit(2);
    }
    let addr = &args[1];
    let rate: u64 = args[2].parse().expect("PACKETS_PER_SEC is a number");
    let secs: u64 = args[3].parse().expect("SECONDS is a number");
    let per_packet: usize = args
        .get(4)
        .map_or(1, |s| s.parse().expect("LINES_PER_PACKET is a number"));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    // 1,000 packets prepared up front: routes, kinds and values vary as in a real service.
    let packets: Vec<Vec<u8>> = (0..1000)
        .map(|p| {
            (0..per_packet)
                .map(|l| {
                    let i = p * per_packet + l;
                    let tags = format!("#route:/r{},method:GET,service:load,env:bench", i % 50);
                    match i % 4 {
                        0 | 1 => format!("load.requests:1|c|{tags}"),
                        2 => format!("load.latency:{}|ms|{tags}", 1 + i % 500),
                        _ => format!("load.depth:{}|g|{tags}", i % 100),
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        })
        .collect();
    let start = Instant::now();
    let total = rate * secs;
    let mut sent = 0u64;
    // Paced in steps of 1 ms: each step sends what the schedule says is due.
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let p = &packets[(sent % 1000) as usize];
            if sock.send_to(p, addr).is_ok() {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    println!(
        "sent_packets={sent} sent_lines={} elapsed_ms={}",
        sent * per_packet as u64,
        start.elapsed().as_millis()
    );
}
