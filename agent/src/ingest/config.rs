//! The `[ingest]` section: where SDKs connect and the bounds on what they send, with its check.

use std::net::SocketAddr;

use serde::Deserialize;
use tally::wire::Limits;

/// `[ingest]`: the listeners SDKs send batches to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// TCP listen address. Default `127.0.0.1:9911`; empty disables TCP.
    pub tcp_addr: String,
    /// Unix socket path. Default empty (off).
    pub unix_socket: String,
    /// Group (name or numeric gid) given to the Unix socket; its mode becomes 0660 instead of
    /// 0600. Default empty (owner only).
    pub unix_socket_group: String,
    /// Allow a TCP address that is not loopback. Default `false`.
    pub allow_non_loopback: bool,
    /// Most simultaneous SDK connections; more wait in the accept queue. Default 1024.
    pub max_connections: usize,
    /// Bytes of frame payload all connections together may hold while decoding; a connection
    /// waits (back-pressure) when the budget is used up. Default 64 MiB. A quarter of it
    /// bounds the connections' parse memos together (see docs/configuration.md).
    pub max_buffered_bytes: usize,
    /// Largest frame payload in bytes. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Most series one batch may carry. Default 100000.
    pub max_series_per_batch: usize,
    /// Largest inflated histogram in bytes. Default 1 MiB.
    pub max_histogram_bytes: usize,
    /// Most histogram counters one batch may allocate. Default 4194304.
    pub max_histogram_counts_per_batch: u64,
    /// Seconds a connection may stay silent before the agent closes it. Default 300.
    pub idle_timeout_secs: u64,
    /// Seconds a frame may take to arrive completely once its header is in; a slower or
    /// stalled sender is disconnected (`reason="truncated"`) and its buffered bytes released,
    /// so it cannot hold the shared byte budget. Default 10.
    pub frame_timeout_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        let l = Limits::default();
        IngestConfig {
            tcp_addr: tally::conventions::DEFAULT_AGENT_ADDR.into(),
            unix_socket: String::new(),
            unix_socket_group: String::new(),
            allow_non_loopback: false,
            max_connections: 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            max_frame_bytes: l.max_frame_len,
            max_series_per_batch: l.max_series_per_batch,
            max_histogram_bytes: l.max_histogram_bytes,
            max_histogram_counts_per_batch: l.max_histogram_counts_per_batch,
            idle_timeout_secs: 300,
            frame_timeout_secs: 10,
        }
    }
}

impl IngestConfig {
    /// The decoder limits this section sets.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_len: self.max_frame_bytes,
            max_series_per_batch: self.max_series_per_batch,
            max_histogram_bytes: self.max_histogram_bytes,
            max_histogram_counts_per_batch: self.max_histogram_counts_per_batch,
            ..Limits::default()
        }
    }
}

impl IngestConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.tcp_addr.is_empty() && self.unix_socket.is_empty() {
            errs.push("ingest.tcp_addr and ingest.unix_socket are both empty: set at least one so SDKs can connect".into());
        }
        if !self.tcp_addr.is_empty() {
            match self.tcp_addr.parse::<SocketAddr>() {
                Err(_) => errs.push(format!(
                    "ingest.tcp_addr = {:?} is not an IP:port address (example: 127.0.0.1:9911)",
                    self.tcp_addr
                )),
                Ok(a) if !a.ip().is_loopback() && !self.allow_non_loopback => errs.push(format!(
                    "ingest.tcp_addr = {a} is not a loopback address: SDKs in the same task reach 127.0.0.1; \
                     set ingest.allow_non_loopback = true only if the network is trusted"
                )),
                Ok(_) => {}
            }
        }
        for (key, v, min) in [
            ("ingest.max_connections", self.max_connections as u64, 1),
            ("ingest.max_frame_bytes", self.max_frame_bytes as u64, 64),
            (
                "ingest.max_series_per_batch",
                self.max_series_per_batch as u64,
                1,
            ),
            (
                "ingest.max_histogram_bytes",
                self.max_histogram_bytes as u64,
                64,
            ),
            (
                "ingest.max_histogram_counts_per_batch",
                self.max_histogram_counts_per_batch,
                1,
            ),
            ("ingest.idle_timeout_secs", self.idle_timeout_secs, 1),
            ("ingest.frame_timeout_secs", self.frame_timeout_secs, 1),
        ] {
            if v < min {
                errs.push(format!("{key} = {v} is too small: use at least {min}"));
            }
        }
        if self.max_buffered_bytes < self.max_frame_bytes {
            errs.push(format!(
                "ingest.max_buffered_bytes = {} is below ingest.max_frame_bytes = {}: a largest frame could never be read; raise it",
                self.max_buffered_bytes, self.max_frame_bytes
            ));
        }
        errs
    }
}
