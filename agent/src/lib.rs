//! tally-agent (under construction): see the module list.

pub mod alarms;
pub mod catalog;
pub mod model;
pub mod stats;
