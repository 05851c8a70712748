//! The `[statsd]` section: where StatsD / DogStatsD clients send, and the receiver's bounds,
//! with its check.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

/// `[statsd]`: the StatsD / DogStatsD receiver (off unless `enabled`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatsdConfig {
    /// Start the receiver. Default `false` (the shipped ECS files turn it on).
    pub enabled: bool,
    /// UDP listen address. Default `127.0.0.1:8125` (every StatsD client's default); empty
    /// disables UDP.
    pub udp_addr: String,
    /// Allow a UDP address that is not loopback. Default `false`.
    pub allow_non_loopback: bool,
    /// Unix datagram socket path (DogStatsD's `unix://` convention). Default empty (off).
    pub unix_socket: String,
    /// Group (name or numeric gid) given to the Unix socket; its mode becomes 0660 instead of
    /// 0600. Default empty (owner only).
    pub unix_socket_group: String,
    /// Socket receive buffer in bytes asked of the kernel (`SO_RCVBUF`; the kernel caps it at
    /// `net.core.rmem_max` and doubles it for bookkeeping; the effective size is logged at
    /// start). Default 8 MiB.
    pub receive_buffer_bytes: usize,
    /// Largest packet in bytes; a larger one is counted (`reason="oversized_packet"`) and
    /// dropped. Default 65536.
    pub max_packet_bytes: usize,
    /// A metric-name prefix removed before publishing (`myapp.` turns `myapp.requests` into
    /// `requests`). Default empty.
    pub strip_prefix: String,
    /// Most distinct values each tag key keeps per receiver; past it that tag's value becomes
    /// `__other__` (the other tags keep theirs), as in the SDK's families. Default 1000.
    pub label_limit: usize,
    /// Per-tag-key limits overriding `label_limit` (`{ route = 200 }`).
    pub label_limits: BTreeMap<String, usize>,
    /// Most distinct (`service:`, `env:`) pairs; a further pair is published as
    /// `__other__`. Default 64.
    pub max_identities: usize,
    /// Most distinct series (name + type + tags) the receiver holds state for (gauge values,
    /// set members); samples of a further series are dropped and counted
    /// (`reason="statsd_too_many_series"`). Default 100000.
    pub max_series: usize,
    /// Most distinct members one set remembers per period; further new members are dropped
    /// and counted (`reason="statsd_set_too_large"`). Default 100000.
    pub max_set_members: usize,
    /// Milliseconds between two hand-overs of what was received to the aggregator (a batch
    /// per hand-over, exactly like an SDK's flush). Default 1000.
    pub flush_interval_ms: u64,
    /// Embedded Metric Format address, TCP and UDP (`aws-embedded-metrics` clients'
    /// `AWS_EMF_AGENT_ENDPOINT`, `127.0.0.1:25888` in the shipped ECS files). Default empty
    /// (off). Needs `enabled`.
    pub emf_addr: String,
    /// Dimension sets of one EMF directive that are published; the others are counted and
    /// left out. Default 1.
    pub emf_max_dimension_sets: usize,
    /// Longest EMF record (a TCP line or a UDP datagram) in bytes. Default 262144.
    pub emf_max_record_bytes: usize,
    /// Most simultaneous EMF TCP connections; more are refused and counted. Default 64.
    pub emf_max_connections: usize,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        StatsdConfig {
            enabled: false,
            udp_addr: "127.0.0.1:8125".into(),
            allow_non_loopback: false,
            unix_socket: String::new(),
            unix_socket_group: String::new(),
            receive_buffer_bytes: 8 << 20,
            max_packet_bytes: 65536,
            strip_prefix: String::new(),
            label_limit: 1000,
            label_limits: BTreeMap::new(),
            max_identities: 64,
            max_series: 100_000,
            max_set_members: 100_000,
            flush_interval_ms: 1000,
            emf_addr: String::new(),
            emf_max_dimension_sets: 1,
            emf_max_record_bytes: 256 * 1024,
            emf_max_connections: 64,
        }
    }
}

impl StatsdConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !self.enabled {
            return errs;
        }
        if self.udp_addr.is_empty() && self.unix_socket.is_empty() && self.emf_addr.is_empty() {
            errs.push("statsd.udp_addr, statsd.unix_socket and statsd.emf_addr are all empty: set at least one, or statsd.enabled = false".into());
        }
        if !self.udp_addr.is_empty() {
            match self.udp_addr.parse::<SocketAddr>() {
                Err(_) => errs.push(format!(
                    "statsd.udp_addr = {:?} is not an IP:port address (example: 127.0.0.1:8125)",
                    self.udp_addr
                )),
                Ok(a) if !a.ip().is_loopback() && !self.allow_non_loopback => errs.push(format!(
                    "statsd.udp_addr = {a} is not a loopback address: containers in the same task reach 127.0.0.1; \
                     set statsd.allow_non_loopback = true only if the network is trusted"
                )),
                Ok(_) => {}
            }
        }
        if !self.emf_addr.is_empty() {
            match self.emf_addr.parse::<SocketAddr>() {
                Err(_) => errs.push(format!(
                    "statsd.emf_addr = {:?} is not an IP:port address (example: 127.0.0.1:25888)",
                    self.emf_addr
                )),
                Ok(a) if !a.ip().is_loopback() && !self.allow_non_loopback => errs.push(format!(
                    "statsd.emf_addr = {a} is not a loopback address: set statsd.allow_non_loopback = true only if the network is trusted"
                )),
                Ok(_) => {}
            }
        }
        for (key, v, min) in [
            (
                "statsd.emf_max_dimension_sets",
                self.emf_max_dimension_sets as u64,
                1,
            ),
            (
                "statsd.emf_max_record_bytes",
                self.emf_max_record_bytes as u64,
                256,
            ),
            (
                "statsd.emf_max_connections",
                self.emf_max_connections as u64,
                1,
            ),
            (
                "statsd.receive_buffer_bytes",
                self.receive_buffer_bytes as u64,
                4096,
            ),
            ("statsd.max_packet_bytes", self.max_packet_bytes as u64, 512),
            ("statsd.label_limit", self.label_limit as u64, 1),
            ("statsd.max_identities", self.max_identities as u64, 1),
            ("statsd.max_series", self.max_series as u64, 1),
            ("statsd.max_set_members", self.max_set_members as u64, 1),
            ("statsd.flush_interval_ms", self.flush_interval_ms, 10),
        ] {
            if v < min {
                errs.push(format!("{key} = {v} is too small: use at least {min}"));
            }
        }
        if self.max_packet_bytes > 16 << 20 {
            errs.push(format!(
                "statsd.max_packet_bytes = {} is larger than 16 MiB: no datagram is that large; use 65536",
                self.max_packet_bytes
            ));
        }
        if self.flush_interval_ms > 60_000 {
            errs.push(format!(
                "statsd.flush_interval_ms = {} is longer than a minute: samples would miss their period; use 1000",
                self.flush_interval_ms
            ));
        }
        for (k, v) in &self.label_limits {
            if *v == 0 {
                errs.push(format!(
                    "statsd.label_limits.{k} = 0 would fold every value: use at least 1"
                ));
            }
        }
        errs
    }

    /// The limit of tag key `key`.
    pub fn limit_of(&self, key: &str) -> usize {
        self.label_limits
            .get(key)
            .copied()
            .unwrap_or(self.label_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_section_is_valid_and_off() {
        let c = StatsdConfig::default();
        assert!(!c.enabled);
        assert!(c.problems().is_empty());
        let on = StatsdConfig { enabled: true, ..c };
        assert!(on.problems().is_empty(), "{:?}", on.problems());
    }

    #[test]
    fn every_key_can_be_set_by_environment_variable_and_by_flag() {
        let cfg = crate::config::Config::load(
            None,
            [
                (
                    "TALLY_STATSD__UDP_ADDR".to_owned(),
                    "127.0.0.1:9125".to_owned(),
                ),
                (
                    "TALLY_STATSD__LABEL_LIMITS__ROUTE".to_owned(),
                    "20".to_owned(),
                ),
            ],
            &[
                "statsd.enabled=true".to_owned(),
                "statsd.strip_prefix=shop.".to_owned(),
            ],
        )
        .unwrap();
        assert!(cfg.statsd.enabled);
        assert_eq!(cfg.statsd.udp_addr, "127.0.0.1:9125");
        assert_eq!(cfg.statsd.strip_prefix, "shop.");
        assert_eq!(cfg.statsd.limit_of("route"), 20);
        assert_eq!(cfg.statsd.limit_of("user"), 1000);
    }

    #[test]
    fn a_public_address_or_no_listener_is_refused_with_the_key_to_fix() {
        let c = StatsdConfig {
            enabled: true,
            udp_addr: "0.0.0.0:8125".into(),
            ..StatsdConfig::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("statsd.allow_non_loopback"), "{p:?}");
        let c = StatsdConfig {
            enabled: true,
            udp_addr: String::new(),
            ..StatsdConfig::default()
        };
        assert!(c.problems()[0].contains("statsd.unix_socket"));
        let c = StatsdConfig {
            enabled: true,
            flush_interval_ms: 1,
            ..StatsdConfig::default()
        };
        assert!(c.problems()[0].contains("statsd.flush_interval_ms"));
    }
}
