//! Criterion benchmarks for tally and its peers live in `benches/`.
