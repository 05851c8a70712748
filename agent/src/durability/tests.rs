//! Unit tests of the write-ahead log.
