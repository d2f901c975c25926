//! CNI for berth: finding the node's network configuration, running the plugins of its chain for a pod
//! (ADD, DEL, CHECK) and caching what was attached. The pod's `lo` is not its business: whoever makes the
//! network namespace brings it up (berth's `berth_runtime::pin`), as the `loopback` plugin would.
//!
//! This crate knows the CNI specification (<https://www.cni.dev/docs/spec/>), not CRI: the daemon asks it
//! whether a usable network exists (NetworkReady), attaches a pod's pinned network namespace with
//! [`Cni::add`], reads the pod IPs from the typed [`CniResult`], and detaches with [`Cni::del`], which works
//! from the on-disk cache after restarts and configuration changes. Everything is synchronous (plain threads
//! and child processes, no tokio): the daemon calls it from a blocking task.
//!
//! Modules: `config` (discovery), `watch` (cheap re-discovery), `exec` (one plugin process), `network`
//! (chains, rollback, cache use), `cache` (the on-disk result cache), `result` (typed results), `pod_cidr`
//! (the pod-CIDR placeholder convention), `native` (reference plugins in process, with the binaries'
//! contract), `error`.

mod cache;
mod config;
mod error;
mod exec;
pub mod native;
mod network;
mod pod_cidr;
mod result;
mod watch;

pub use cache::{CACHE_FORMAT, CachedAttachment, cached_container_ids};
pub use config::{ConfigError, NetworkConfig, find_network_config};
pub use error::{CniError, PluginError};
pub use exec::{Command, find_plugin};
pub use network::{
    AttachRequest, Attached, AttachmentRef, Bandwidth, Capabilities, ChainPath, Cni, CniObserver, CniOptions,
    DEFAULT_PLUGIN_TIMEOUT, Detached, DnsCapability, NativeMode, PluginCall, PluginCallOutcome, PodIdentity,
    PortMapping, Timings,
};
pub use pod_cidr::{substitute as substitute_pod_cidr, wants_pod_cidr};
pub use result::{CniResult, Dns, Interface, IpConfig, IpNetwork, ResultError, Route};
pub use watch::ConfigWatcher;
