//! berth: a Kubernetes container runtime implementing the CRI v1 API.
//!
//! This package is the daemon, the CLI and every use of CRI types; the libraries it drives live under
//! `crates/`. See ARCHITECTURE.md for the map.

pub mod cdi;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod containers;
pub mod context;
pub mod cri;
pub mod daemon;
pub mod disk_usage;
pub mod error;
pub mod failpoints;
pub mod images;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod pods;
pub mod pulls;
pub mod records;
pub mod server;
pub mod shim;
pub mod stats;
pub mod step_clock;
pub mod streaming;
pub mod version;
