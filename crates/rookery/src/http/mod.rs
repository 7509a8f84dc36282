//! The node's HTTP listener (placeholder until the lead's http skeleton
//! lands): the operations API's module and the defaults `rookery ctl`
//! takes from a configuration.

pub mod api;
mod api_json;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::config::Config;

/// The API's URL on the node `config` describes: its HTTP listener, on
/// loopback when it listens on every address.
pub fn api_url(config: &Config) -> Option<String> {
    let mut address = config.metrics.listen.0?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(format!("http://{address}"))
}

/// The API's bearer token file of the node `config` describes.
pub fn admin_token_file(_config: &Config) -> Option<PathBuf> {
    None
}
