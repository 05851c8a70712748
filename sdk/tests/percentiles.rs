//! Percentiles computed from what reaches CloudWatch, against the exact ones.
//!
//! The agent publishes each HDR bucket as its median-equivalent value with its exact count
//! (`agent/src/publish/split.rs`); CloudWatch ranks those pairs. At the default 2 significant
//! digits a bucket at value `v` is at most `v / 128` wide, so the value sent for it is within
//! `1/256` (0.39 %) of every sample in it: that is the bound checked here, for percentiles and
//! for the sum, end to end through recording threads, several flushes, the wire and a
//! receiver that merges the deltas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use tally::testing::CaptureAgent;
use tally::{Tally, Unit};

const WAIT: Duration = Duration::from_secs(20);

fn shared() -> &'static (CaptureAgent, Tally) {
    static SHARED: OnceLock<(CaptureAgent, Tally)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let agent = CaptureAgent::start();
        let tally = Tally::builder()
            .agent(agent.addr())
            .flush_interval(Duration::from_secs(3600))
            .shards(4)
            .build()
            .expect("valid configuration");
        (agent, tally)
    })
}

static CASE: AtomicU64 = AtomicU64::new(0);

/// A skewed latency mix in nanoseconds: mostly 1-5 ms, a tail at 20-100 ms, a few
/// 0.3-3 s outliers and some sub-microsecond values (bucket 0 is exact).
fn latency() -> impl Strategy<Value = u64> {
    let log_uniform =
        |lo: f64, hi: f64| (0.0f64..1.0).prop_map(move |f| (lo * (hi / lo).powf(f)) as u64);
    prop_oneof![
        80 => log_uniform(1e6, 5e6),
        15 => log_uniform(2e7, 1e8),
        3 => log_uniform(3e8, 3e9),
        2 => 0u64..1000,
    ]
}

/// The nearest-rank quantile (the smallest value whose cumulative count reaches
/// `ceil(q * total)`), as CloudWatch ranks value/count pairs.
fn nearest_rank(pairs: &[(u64, u64)], q: f64) -> u64 {
    let total: u64 = pairs.iter().map(|p| p.1).sum();
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (v, n) in pairs {
        seen += n;
        if seen >= rank {
            return *v;
        }
    }
    pairs.last().map_or(0, |p| p.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn percentiles_and_sums_from_the_values_sent_stay_within_a_256th_of_the_exact_ones(
        values in proptest::collection::vec(latency(), 1..2000),
    ) {
        let (agent, tally) = shared();
        let name = format!("p{}", CASE.fetch_add(1, Ordering::Relaxed));
        let h = tally.histogram(&name, Unit::Nanoseconds, &[]);
        let (first, second) = values.split_at(values.len() / 2);
        for part in [first, second] {
            std::thread::scope(|s| {
                for half in part.chunks(part.len().div_ceil(2).max(1)) {
                    let h = &h;
                    s.spawn(move || half.iter().for_each(|v| h.record(*v)));
                }
            });
            tally.flush(WAIT).expect("agent acknowledges");
        }
        let totals = agent.totals();
        let got = totals.histogram(&name, &[]).expect("histogram arrives");
        prop_assert_eq!(got.len(), values.len() as u64);
        prop_assert_eq!(got.sigfig(), 2);
        // What the agent sends: each bucket's median-equivalent value with its count.
        let sent: Vec<(u64, u64)> = got
            .iter_recorded()
            .map(|b| (got.median_equivalent(b.value_iterated_to()), b.count_at_value()))
            .collect();
        let mut exact = values.clone();
        exact.sort_unstable();
        for q in [0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let want = exact[(((q * exact.len() as f64).ceil() as usize).max(1)) - 1];
            let have = nearest_rank(&sent, q);
            prop_assert!(
                u128::from(have.abs_diff(want)) * 256 <= u128::from(want),
                "p{} sent {} exact {}", q * 100.0, have, want
            );
        }
        let exact_sum: u128 = values.iter().map(|v| u128::from(*v)).sum();
        let sent_sum: u128 = sent.iter().map(|(v, n)| u128::from(*v) * u128::from(*n)).sum();
        prop_assert!(sent_sum.abs_diff(exact_sum) * 256 <= exact_sum, "sum {sent_sum} vs {exact_sum}");
    }
}
