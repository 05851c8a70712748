//! The sparse histogram against its oracles: the dense view merge it replaced (kept here
//! verbatim) and hdrhistogram's own bucket arithmetic.

use hdrhistogram::Histogram;
use proptest::prelude::*;
use tally::wire::{
    encode_batch, Batch, BatchView, HistogramView, Limits, ProcessIdentity, Series, SeriesValue,
    Unit, ValueView, HEADER_LEN,
};

use super::*;

/// The dense path the agent ran before sparse histograms, kept as the oracle.
mod dense {
    use hdrhistogram::Histogram;
    use tally::wire::HistogramView;

    use crate::model::sparse::HistogramRefused;

    /// Adds a decoded histogram's buckets into `h`, growing its range when needed: the same
    /// result as `Histogram::add` of the histogram the sender serialized (every bucket
    /// recorded at its lowest value, counts and total saturating).
    pub fn add_view(
        h: &mut Histogram<u64>,
        view: &HistogramView<'_>,
    ) -> Result<(), HistogramRefused> {
        let Some(top) = view.max_bucket_value() else {
            return Ok(());
        };
        h.auto(true);
        let same_layout =
            h.low() == view.lowest_discernible_value() && h.sigfig() == view.significant_digits();
        let top = if same_layout {
            h.highest_equivalent(top)
        } else {
            top
        };
        h.record_n(top, 0).map_err(|_| HistogramRefused)?;
        for &(value, count) in view.buckets().map_err(|_| HistogramRefused)?.iter() {
            h.record_n(value, count).map_err(|_| HistogramRefused)?;
        }
        Ok(())
    }

    /// The histogram a series started a period with: the sender's layout over the range its
    /// samples use.
    pub fn new_histogram(view: &HistogramView<'_>) -> Result<Histogram<u64>, HistogramRefused> {
        let low = view.lowest_discernible_value();
        let high = view.max_bucket_value().unwrap_or(0).max(2 * low);
        let mut h = Histogram::new_with_bounds(low, high, view.significant_digits())
            .map_err(|_| HistogramRefused)?;
        add_view(&mut h, view)?;
        Ok(h)
    }
}

/// Every observable part of two dense histograms is equal, the counts array included.
fn assert_same(got: &Histogram<u64>, want: &Histogram<u64>) -> Result<(), TestCaseError> {
    let recorded = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
        h.iter_recorded()
            .map(|b| (b.value_iterated_to(), b.count_at_value()))
            .collect()
    };
    prop_assert_eq!(recorded(got), recorded(want));
    prop_assert_eq!(got.len(), want.len());
    prop_assert_eq!(got.low(), want.low());
    prop_assert_eq!(got.sigfig(), want.sigfig());
    prop_assert_eq!(got.min(), want.min());
    prop_assert_eq!(got.min_nz(), want.min_nz());
    prop_assert_eq!(got.max(), want.max());
    prop_assert_eq!(got.is_auto_resize(), want.is_auto_resize());
    // With equal lengths, `==` compares every count, zeros included.
    prop_assert_eq!(got.distinct_values(), want.distinct_values());
    prop_assert!(got == want, "histograms differ");
    Ok(())
}

/// The layout of a view.
fn layout_of(view: &HistogramView<'_>) -> Layout {
    Layout::new(view.lowest_discernible_value(), view.significant_digits()).unwrap()
}

/// The coarsest layout that holds every view's buckets (folded in order).
fn common_layout(views: &[HistogramView<'_>]) -> Layout {
    views[1..]
        .iter()
        .fold(layout_of(&views[0]), |l, v| l.common(layout_of(v)))
}

/// True when no view has buckets wider than the first view's somewhere.
fn first_is_coarsest(views: &[HistogramView<'_>]) -> bool {
    common_layout(views).same_buckets(layout_of(&views[0]))
}

/// The frame payload of one batch carrying `hists` as histogram series, in order.
fn payload(hists: &[Histogram<u64>]) -> Vec<u8> {
    let series = hists
        .iter()
        .enumerate()
        .map(|(i, h)| Series {
            name: format!("h{i}"),
            unit: Unit::Nanoseconds,
            labels: vec![],
            value: SeriesValue::Histogram {
                scale: 1.0,
                histogram: h.clone(),
            },
        })
        .collect();
    let batch = Batch {
        process: ProcessIdentity {
            instance_id: 1,
            pid: 1,
            service: "s".into(),
            environment: "e".into(),
            host: "h".into(),
        },
        sequence: 1,
        start_unix_ms: 1_700_000_000_000,
        end_unix_ms: 1_700_000_001_000,
        drops: Default::default(),
        series,
    };
    let mut frame = Vec::new();
    encode_batch(&batch, &mut frame).expect("a test batch encodes");
    frame.split_off(HEADER_LEN)
}

/// Room for the widest layouts the strategies make (5 digits over several buckets).
fn limits() -> Limits {
    Limits {
        max_histogram_counts_per_batch: 1 << 26,
        max_histogram_bytes: 1 << 26,
        max_frame_len: 1 << 26,
        ..Limits::default()
    }
}

fn views<'v>(batch: &'v BatchView<'_>) -> Vec<HistogramView<'v>> {
    batch
        .series()
        .map(|s| match s.value {
            ValueView::Histogram(h) => h,
            _ => unreachable!("only histograms were encoded"),
        })
        .collect()
}

/// A lowest discernible value HdrHistogram accepts with `digits`, from `raw`: `raw` halved
/// until `Histogram::new_with_bounds` takes it.
fn valid_low(mut raw: u64, digits: u8) -> u64 {
    raw = raw.max(1);
    while Histogram::<u64>::new_with_bounds(raw, raw.saturating_mul(2), digits).is_err() {
        raw = (raw / 2).max(1);
    }
    raw
}

/// Lowest discernible values: 1, small ones, powers of two and their neighbours (where
/// `log2` in f64 rounds), anything.
fn arb_low() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1_u64),
        1_u64..5000,
        (1_u32..63, -1_i64..=1).prop_map(|(k, d)| (1_u64 << k).wrapping_add_signed(d)),
        any::<u64>(),
    ]
}

/// How values are spread in one test case, bounded so no dense histogram (sender, oracle or
/// conversion) exceeds about 10 MB.
#[derive(Debug, Clone, Copy)]
enum Regime {
    /// 0..=3 digits, any lowest value, values anywhere in `u64`.
    Wide,
    /// 0..=5 digits, lowest values up to 2^12, values up to 2^17.
    Fine,
    /// 4..=5 digits with lowest values of 2^44..2^46, values anywhere in `u64`.
    High,
}

fn arb_layout(regime: Regime) -> BoxedStrategy<(u64, u8)> {
    match regime {
        Regime::Wide => (arb_low(), 0_u8..=3)
            .prop_map(|(low, d)| (valid_low(low, d), d))
            .boxed(),
        Regime::Fine => (arb_low(), 0_u8..=5)
            .prop_map(|(low, d)| (valid_low(low % (1 << 12), d), d))
            .boxed(),
        Regime::High => ((1_u64 << 44)..(1 << 46), 4_u8..=5)
            .prop_map(|(low, d)| (valid_low(low, d), d))
            .boxed(),
    }
}

fn arb_value(regime: Regime) -> BoxedStrategy<u64> {
    let any_magnitude = (any::<u64>(), 0_u32..64).prop_map(|(v, s)| v >> s);
    match regime {
        Regime::Wide | Regime::High => {
            prop_oneof![any_magnitude, Just(u64::MAX), Just(0_u64), 0_u64..64].boxed()
        }
        Regime::Fine => prop_oneof![
            (0_u64..(1 << 17), 0_u32..17).prop_map(|(v, s)| v >> s),
            Just((1_u64 << 17) - 1),
            Just(0_u64),
        ]
        .boxed(),
    }
}

/// Counts: mostly small, some near 2^61 so that merges saturate at `u64::MAX` (a sender
/// cannot hold more than `i64::MAX` in one bucket: V2 counts are zig-zag `i64`).
fn arb_count() -> impl Strategy<Value = (bool, u64)> {
    prop_oneof![
        8 => (1_u64..1000).prop_map(|n| (false, n)),
        1 => ((1_u64 << 61)..(1 << 61) + 1000).prop_map(|n| (true, n)),
    ]
}

/// A sender's histogram: one of the case's layouts, any values (none at all too).
fn arb_hist(regime: Regime, layouts: Vec<(u64, u8)>) -> impl Strategy<Value = Histogram<u64>> {
    (
        0..layouts.len(),
        prop::collection::vec((arb_value(regime), arb_count()), 0..30),
    )
        .prop_map(move |(pick, values)| {
            let (low, digits) = layouts[pick];
            let mut h =
                Histogram::<u64>::new_with_bounds(low, low.saturating_mul(2), digits).unwrap();
            h.auto(true);
            // At most three huge counts: no bucket passes i64::MAX.
            let mut huge = 0;
            for (v, (is_huge, n)) in values {
                let n = if is_huge && huge < 3 {
                    huge += 1;
                    n
                } else {
                    n % 1000 + 1
                };
                h.record_n(v, n).unwrap();
            }
            h
        })
}

/// One to three layouts, then one to six histograms using them (so a case mixes same-layout
/// and other-layout merges).
fn arb_case() -> impl Strategy<Value = Vec<Histogram<u64>>> {
    prop_oneof![
        6 => Just(Regime::Wide),
        1 => Just(Regime::Fine),
        1 => Just(Regime::High),
    ]
    .prop_flat_map(|regime| {
        (
            Just(regime),
            prop::collection::vec(arb_layout(regime), 1..=3),
        )
    })
    .prop_flat_map(|(regime, layouts)| prop::collection::vec(arb_hist(regime, layouts), 1..=6))
}

proptest! {
    // Each case encodes, decodes and densely merges up to six histograms, some of 5 digits.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Starting from the first view and merging the others, the sparse histogram converts to
    /// exactly the dense histogram the agent built before: same layout, counts, total,
    /// extremes and counts-array length. (And a histogram taken directly makes the same
    /// sparse histogram as its decoded view.)
    #[test]
    fn sparse_merges_of_views_convert_to_exactly_the_dense_histogram(hists in arb_case()) {
        let payload = payload(&hists);
        let batch = BatchView::parse(&payload, &limits()).unwrap();
        let views = views(&batch);
        let mut scratch = Vec::new();
        for (h, v) in hists.iter().zip(&views) {
            prop_assert_eq!(
                SparseHistogram::from_histogram(h),
                SparseHistogram::from_view(v, &mut scratch).unwrap()
            );
        }
        // The dense path kept the first view's layout; the sparse one takes the coarsest
        // layout that holds every view (checked against its own oracle below), which is the
        // first view's when no later view is coarser.
        prop_assume!(first_is_coarsest(&views));
        let mut sparse = SparseHistogram::from_view(&views[0], &mut scratch).unwrap();
        let mut dense = dense::new_histogram(&views[0]).unwrap();
        for v in &views[1..] {
            sparse.add_view(v, &mut scratch).unwrap();
            dense::add_view(&mut dense, v).unwrap();
        }
        prop_assert_eq!(sparse.len(), dense.len());
        prop_assert!(sparse.buckets().windows(2).all(|w| w[0].0 < w[1].0));
        prop_assert!(sparse.buckets().iter().all(|b| b.1 > 0));
        let converted = sparse.to_histogram().unwrap();
        assert_same(&converted, &dense)?;
        prop_assert_eq!(converted.high(), dense.high());
        // What the sinks read straight from the sparse form.
        prop_assert_eq!(sparse.min(), dense.min());
        prop_assert_eq!(sparse.max(), dense.max());
        for &(value, _) in sparse.buckets() {
            prop_assert_eq!(sparse.median_equivalent(value), dense.median_equivalent(value));
        }
        // hdrhistogram's own scan overflows once the counts add up past u64::MAX.
        if sparse.buckets().iter().try_fold(0_u64, |t, b| t.checked_add(b.1)).is_some() {
            for q in [0.0, 1e-9, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0, 1.5] {
                prop_assert_eq!(sparse.value_at_quantile(q), dense.value_at_quantile(q));
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Adding whole sparse histograms (what a close does where two series meet under one
    /// published key, and for rollups) is merging their views.
    #[test]
    fn adding_sparse_histograms_equals_merging_their_views(hists in arb_case()) {
        let payload = payload(&hists);
        let batch = BatchView::parse(&payload, &limits()).unwrap();
        let views = views(&batch);
        prop_assume!(first_is_coarsest(&views));
        let mut scratch = Vec::new();
        let mut sparse = SparseHistogram::from_view(&views[0], &mut scratch).unwrap();
        let mut dense = dense::new_histogram(&views[0]).unwrap();
        for v in &views[1..] {
            sparse.add(&SparseHistogram::from_view(v, &mut scratch).unwrap(), &mut scratch);
            dense::add_view(&mut dense, v).unwrap();
        }
        let converted = sparse.to_histogram().unwrap();
        assert_same(&converted, &dense)?;
        prop_assert_eq!(converted.high(), dense.high());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Views of any layouts merge into the coarsest layout that holds them all, whatever
    /// their order: every bucket of every view is counted in the bucket of that layout that
    /// contains it (a dense histogram of that layout recording each view's buckets is the
    /// oracle), so a finer sender arriving first no longer pulls a coarser sender's samples
    /// down to the lower ends of its buckets.
    #[test]
    fn views_of_any_layouts_merge_at_the_coarsest_in_any_order(hists in arb_case()) {
        let payload = payload(&hists);
        let batch = BatchView::parse(&payload, &limits()).unwrap();
        let views = views(&batch);
        let common = common_layout(&views);
        let mut oracle = Histogram::<u64>::new_with_bounds(common.low, 2 * common.low, common.digits)
            .unwrap();
        oracle.auto(true);
        for v in &views {
            for &(value, count) in v.buckets().unwrap().iter() {
                oracle.record_n(value, count).unwrap();
            }
        }
        let want: Vec<Bucket> = oracle
            .iter_recorded()
            .map(|b| (common.lowest_equivalent(b.value_iterated_to()), b.count_at_value()))
            .collect();
        let mut scratch = Vec::new();
        let merge = |order: &mut dyn Iterator<Item = &HistogramView<'_>>, scratch: &mut Vec<Bucket>| {
            let first = order.next().unwrap();
            let mut h = SparseHistogram::from_view(first, scratch).unwrap();
            for v in order {
                h.add_view(v, scratch).unwrap();
            }
            h
        };
        let forward = merge(&mut views.iter(), &mut scratch);
        let backward = merge(&mut views.iter().rev(), &mut scratch);
        for h in [&forward, &backward] {
            prop_assert!(h.layout.same_buckets(common));
            prop_assert!(h.buckets().windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(h.buckets().iter().all(|b| b.1 > 0));
            prop_assert_eq!(h.len(), oracle.len());
            prop_assert_eq!(h.min(), oracle.min());
            if oracle.iter_recorded().map(|b| b.count_at_value()).try_fold(0_u64, u64::checked_add).is_some() {
                prop_assert_eq!(h.buckets(), &want[..]);
                for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
                    prop_assert_eq!(h.value_at_quantile(q), oracle.value_at_quantile(q));
                }
            }
        }
        prop_assert_eq!(forward.buckets(), backward.buckets());
        // Whole sparse histograms (closes, rollups) take the same path.
        let mut added = SparseHistogram::from_view(&views[views.len() - 1], &mut scratch).unwrap();
        for v in views.iter().rev().skip(1) {
            added.add(&SparseHistogram::from_view(v, &mut scratch).unwrap(), &mut scratch);
        }
        prop_assert_eq!(added.buckets(), forward.buckets());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The layout arithmetic is hdrhistogram's: the same layouts are refused, and every
    /// value falls in a bucket with the same lowest and highest values.
    #[test]
    fn the_bucket_formula_agrees_with_hdrhistogram(
        low in arb_low(),
        digits in 0_u8..=6,
        values in prop::collection::vec(prop_oneof![any::<u64>(), Just(u64::MAX), 0_u64..4096], 1..16),
    ) {
        let reference = Histogram::<u64>::new_with_bounds(low, low.saturating_mul(2), digits);
        let layout = Layout::new(low, digits);
        prop_assert_eq!(layout.is_some(), reference.is_ok());
        if let (Some(layout), Ok(reference)) = (layout, reference) {
            for v in values {
                prop_assert_eq!(layout.lowest_equivalent(v), reference.lowest_equivalent(v));
                prop_assert_eq!(layout.highest_equivalent(v), reference.highest_equivalent(v));
                prop_assert_eq!(layout.median_equivalent(v), reference.median_equivalent(v));
            }
        }
    }

    /// Galloping finds the same position as a binary search from the start.
    #[test]
    fn seeking_finds_the_first_bucket_not_below_a_value(
        mut values in prop::collection::btree_set(0_u64..10_000, 0..200),
        from_fraction in 0.0_f64..=1.0,
        target in 0_u64..10_001,
    ) {
        let buckets: Vec<Bucket> = std::mem::take(&mut values).into_iter().map(|v| (v, 1)).collect();
        let from = ((buckets.len() as f64) * from_fraction) as usize;
        let want = from + buckets[from..].partition_point(|b| b.0 < target);
        prop_assert_eq!(seek(&buckets, from, target), want);
    }

    /// Buckets given out of order (which no view yields) still merge exactly.
    #[test]
    fn buckets_in_any_order_merge_like_sorted_ones(
        start in prop::collection::btree_map(0_u64..500, 1_u64..100, 0..40),
        incoming in prop::collection::vec((0_u64..500, 1_u64..100), 0..60),
    ) {
        let layout = Layout::new(1, 3).unwrap();
        let base = SparseHistogram {
            buckets: start.into_iter().collect(),
            total: 0,
            high: 2,
            layout,
            max_marks: MaxMarks::default(),
        };
        let mut shuffled = base.clone();
        let mut scratch = Vec::new();
        shuffled.merge_buckets(incoming.iter().copied(), false, &mut scratch);
        let mut sorted_in = incoming.clone();
        sorted_in.sort_by_key(|b| b.0);
        let mut sorted = base;
        sorted.merge_buckets(sorted_in.into_iter(), false, &mut scratch);
        prop_assert_eq!(&shuffled, &sorted);
        prop_assert!(shuffled.buckets().windows(2).all(|w| w[0].0 < w[1].0));
    }
}

#[test]
fn merging_a_view_whose_buckets_are_all_present_neither_allocates_nor_moves() {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for k in 0..20_u64 {
        h.record(1_000_000 + k * 137_000).unwrap();
    }
    let payload = payload(&[h.clone(), h]);
    let batch = BatchView::parse(&payload, &limits()).unwrap();
    let views = views(&batch);
    let mut scratch = Vec::new();
    let mut sparse = SparseHistogram::from_view(&views[0], &mut scratch).unwrap();
    assert_eq!(sparse.buckets().len(), 20);
    assert_eq!(
        sparse.buckets.capacity(),
        20,
        "a new series holds no spare capacity"
    );
    let before = sparse.buckets().as_ptr();
    sparse.add_view(&views[1], &mut scratch).unwrap();
    assert_eq!(
        sparse.buckets().as_ptr(),
        before,
        "the buckets stayed where they were"
    );
    assert!(scratch.is_empty(), "nothing was set aside for insertion");
    assert_eq!(sparse.len(), 40);
    assert!(sparse.buckets().iter().all(|b| b.1 == 2));
}

#[test]
fn counts_and_the_total_saturate_instead_of_wrapping() {
    let mut h = Histogram::<u64>::new(2).unwrap();
    h.record_n(100, i64::MAX as u64).unwrap();
    let mut sparse = SparseHistogram::from_histogram(&h);
    let mut scratch = Vec::new();
    for _ in 0..3 {
        sparse.add(&SparseHistogram::from_histogram(&h), &mut scratch);
    }
    assert_eq!(sparse.len(), u64::MAX);
    assert_eq!(sparse.buckets(), &[(100, u64::MAX)]);
    assert_eq!(sparse.to_histogram().unwrap().len(), u64::MAX);
}

#[test]
fn a_coarser_view_folds_neighbouring_buckets_into_one() {
    // 3 digits keeps 1000 and 1001 apart; 0 digits puts both in the bucket from 1000 - 1000 % 512.
    let mut fine = Histogram::<u64>::new(3).unwrap();
    fine.record(1000).unwrap();
    fine.record(1001).unwrap();
    let coarse = Histogram::<u64>::new(0).unwrap();
    let mut sparse = SparseHistogram::from_histogram(&coarse);
    sparse.add(&SparseHistogram::from_histogram(&fine), &mut Vec::new());
    assert_eq!(sparse.buckets(), &[(coarse.lowest_equivalent(1000), 2)]);
}

/// The one place where the dense view merge (and so the sparse one) and `Histogram::add` of
/// the deserialized histograms disagree: the maximum of the topmost bucket, which
/// `highest_equivalent` saturates to `u64::MAX - 1` unless the recorded value was exactly
/// `u64::MAX`. The view merge records the bucket's lowest value when the lowest discernible
/// values differ (2048 and 2049 here, identical buckets); `Histogram::add` copies the
/// deserialized maximum, the bucket's highest value. Both are the end of the range.
#[test]
fn the_topmost_buckets_maximum_is_the_dense_view_merges() {
    let first = Histogram::<u64>::new_with_bounds(2048, 8192, 0).unwrap();
    let mut second = Histogram::<u64>::new_with_bounds(2049, 4098, 0).unwrap();
    second.auto(true);
    second.record(1 << 63).unwrap();
    let payload = payload(&[first, second]);
    let batch = BatchView::parse(&payload, &limits()).unwrap();
    let views = views(&batch);
    let mut scratch = Vec::new();
    let mut sparse = SparseHistogram::from_view(&views[0], &mut scratch).unwrap();
    sparse.add_view(&views[1], &mut scratch).unwrap();
    let mut dense = dense::new_histogram(&views[0]).unwrap();
    dense::add_view(&mut dense, &views[1]).unwrap();
    let mut added = views[0].to_histogram().unwrap();
    added.auto(true);
    added.add(views[1].to_histogram().unwrap()).unwrap();
    assert_eq!(sparse.to_histogram().unwrap().max(), u64::MAX - 1);
    assert_eq!(dense.max(), u64::MAX - 1);
    assert_eq!(added.max(), u64::MAX);
}

/// Log-uniform values over 1 ms..100 ms in nanoseconds, deterministic.
fn latencies(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (1e6 * 100f64.powf(u)) as u64
        })
        .collect()
}

#[test]
fn a_coarser_sender_arriving_after_a_finer_one_keeps_its_percentiles_unbiased() {
    // Two processes of one service: an old SDK at 3 significant digits, a new one at 1
    // (buckets up to 1/16 wide). The exact percentiles of their union against what the
    // merged histogram says, with the fine sender first (the order that used to bias low).
    let (fine_values, coarse_values) = (latencies(20_000, 7), latencies(20_000, 11));
    let mut fine = Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).unwrap();
    let mut coarse = Histogram::<u64>::new_with_bounds(1, 1 << 40, 1).unwrap();
    for &v in &fine_values {
        fine.record(v).unwrap();
    }
    for &v in &coarse_values {
        coarse.record(v).unwrap();
    }
    let mut all: Vec<u64> = fine_values.iter().chain(&coarse_values).copied().collect();
    all.sort_unstable();
    let payload = payload(&[fine, coarse]);
    let batch = BatchView::parse(&payload, &limits()).unwrap();
    let views = views(&batch);
    let mut scratch = Vec::new();
    let mut fine_first = SparseHistogram::from_view(&views[0], &mut scratch).unwrap();
    fine_first.add_view(&views[1], &mut scratch).unwrap();
    let mut coarse_first = SparseHistogram::from_view(&views[1], &mut scratch).unwrap();
    coarse_first.add_view(&views[0], &mut scratch).unwrap();
    for q in [0.5, 0.9, 0.99, 0.999] {
        let exact = all[((q * all.len() as f64).ceil() as usize).max(1) - 1] as f64;
        // What the publisher sends for the bucket holding the quantile: its middle.
        let got = fine_first.median_equivalent(fine_first.value_at_quantile(q)) as f64;
        let error = (got - exact).abs() / exact;
        // Half the widest bucket of the coarse layout (1/16), plus the sampling of a rank.
        assert!(
            error <= 1.0 / 32.0 + 0.002,
            "p{}: merged {got} vs exact {exact} ({:.2}%)",
            q * 100.0,
            error * 100.0
        );
    }
    // The mean of what the publisher sends (each bucket's middle with its count, as
    // CloudWatch sees Values/Counts) against the exact mean: the coarse sender's samples sit
    // in the middle of their buckets, not at their lower ends.
    let sent: f64 = fine_first
        .buckets()
        .iter()
        .map(|&(v, c)| fine_first.median_equivalent(v) as f64 * c as f64)
        .sum::<f64>()
        / fine_first.len() as f64;
    let exact = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
    let bias = (sent - exact) / exact;
    assert!(
        bias.abs() < 0.005,
        "mean of the published values off by {:.2}%",
        bias * 100.0
    );
    assert_eq!(fine_first.buckets(), coarse_first.buckets());
    assert_eq!(fine_first.significant_digits(), 1);
}
