//! The tally-agent binary (CLI under construction).
fn main() {}
