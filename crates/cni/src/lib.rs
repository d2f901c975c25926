//! CNI for berth: finding the node's network configuration (and, as the networking work lands, running
//! the plugins it names and caching their results).
//!
//! This crate knows the CNI specification (<https://www.cni.dev/docs/spec/>), not CRI: the daemon asks it
//! whether a usable network exists and reports the answer as the NetworkReady condition.

mod config;

pub use config::{ConfigError, NetworkConfig, find_network_config};
