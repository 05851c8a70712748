//! The `[admin]` section: where the loopback HTTP endpoint listens, with its check.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[admin]`: the loopback HTTP endpoint (`/health`, `/metrics`, `/cost`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address. Default `127.0.0.1:9912`; empty disables the endpoint.
    pub addr: String,
    /// Allow a non-loopback address. Default `false`.
    pub allow_non_loopback: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: tally::conventions::DEFAULT_ADMIN_ADDR.into(),
            allow_non_loopback: false,
        }
    }
}

impl AdminConfig {
    /// What is wrong with this section, one message per problem, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if !self.addr.is_empty() {
            match self.addr.parse::<SocketAddr>() {
                Err(_) => errs.push(format!(
                    "admin.addr = {:?} is not an IP:port address (example: 127.0.0.1:9912)",
                    self.addr
                )),
                Ok(a) if !a.ip().is_loopback() && !self.allow_non_loopback => {
                    errs.push(format!(
                        "admin.addr = {a} is not a loopback address; set admin.allow_non_loopback = true to allow it"
                    ))
                }
                Ok(_) => {}
            }
        }
        errs
    }
}
