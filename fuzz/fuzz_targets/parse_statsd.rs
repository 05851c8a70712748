//! Fuzzes the StatsD / DogStatsD boundary: one datagram, split into lines and parsed, then
//! merged by a receiver into a real intake and aggregator. Any line may be refused; none may
//! panic, and what is accepted keeps the parser's promises (a name, finite values, a rate in
//! (0, 1], non-negative values where only those make sense).
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tally_agent::aggregate::{Aggregator, Settings};
use tally_agent::config::Config;
use tally_agent::testing::{Intake, Sequences};
use tally_agent::stats::Stats;
use tally_agent::statsd::parse::{parse_line, Kind, Line};
use tally_agent::statsd::{Receiver, StatsdConfig, StatsdStats};

fn receiver() -> &'static Mutex<Receiver> {
    static R: OnceLock<Mutex<Receiver>> = OnceLock::new();
    R.get_or_init(|| {
        let stats = Stats::new();
        let config = Config::default();
        let aggregator = Aggregator::new(Settings::from_config(&config), &stats, SystemTime::now());
        let intake = Intake::new(aggregator, Sequences::new(64, Duration::from_secs(600)), &stats);
        let cfg = StatsdConfig {
            max_series: 1000,
            max_set_members: 1000,
            label_limit: 50,
            ..StatsdConfig::default()
        };
        Mutex::new(Receiver::new(cfg, intake, StatsdStats::new(&stats, "udp"), 60, 0))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.split('\n') {
            if let Some(Ok(Line::Metric(m))) = parse_line(line) {
                assert!(!m.name.is_empty());
                assert!(m.rate > 0.0 && m.rate <= 1.0);
                for v in m.values() {
                    assert!(v.is_finite());
                    assert!(v >= 0.0 || m.kind == Kind::Gauge);
                }
                assert!(m.kind != Kind::Set || !m.member.is_empty());
            }
        }
    }
    let mut r = receiver().lock().unwrap_or_else(|e| e.into_inner());
    r.packet(data, SystemTime::now());
    r.flush(false);
});
