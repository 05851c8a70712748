//! tally-agent (under construction): see the module list.

pub mod catalog;
pub mod model;
pub mod publish;
pub mod stats;
