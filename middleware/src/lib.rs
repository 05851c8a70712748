//! tally tower.
