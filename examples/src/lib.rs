//! The tally examples: an instrumented axum shop, a load generator for it, and the quickstart
//! that runs both next to a tally agent.
//!
//! Binaries (`cargo run --release -p tally-examples --bin <name> -- --help`):
//! - `shop`: the example service alone, sending to the agent at `TALLY_AGENT_ADDR`.
//! - `loadgen`: the request mix against a running shop, bounded by `--duration` and
//!   `--max-requests`.
//! - `quickstart`: starts `tally-agent`, the shop and the load together, and stops all three
//!   cleanly after `--duration` or on Ctrl-C (`scripts/quickstart.sh` builds and runs it).

pub mod cli;
pub mod load;
pub mod shop;
