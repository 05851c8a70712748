//! tally-agent (under construction): see the module list.

pub mod catalog;
pub mod ecs;
pub mod model;
pub mod stats;
