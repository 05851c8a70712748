//! tally SDK (under construction).
pub mod conventions;
pub mod wire;
