//! Attaching a container to a network and detaching it: ADD, DEL and CHECK of a configuration list's plugin
//! chain, with the result cache and rollback.
//!
//! What the CNI spec ("Section 4: Plugin Delegation" and "Network configuration lists") asks of a runtime:
//! ADD runs the plugins in order, each receiving the previous one's result as `prevResult`; DEL runs them in
//! reverse order with the ADD's result; CHECK runs them in order with the cached result (0.4.0 and later).
//! `runtimeConfig` carries a capability only to the plugins whose `capabilities` declare it.
//!
//! berth's own rules on top:
//! - ADD writes its intent to the cache before the first plugin runs and its result after the last one; a
//!   failed ADD is undone at once by a DEL of the whole chain (plugins must tolerate DEL of what they never
//!   added), and the cache entry goes only when that DEL succeeded.
//! - DEL takes the configuration from the cache, never from the directory, so a changed or removed
//!   configuration cannot leak the old attachment. A DEL runs every plugin of the chain even when one fails
//!   (to release what can be released), reports the first failure, and keeps the entry for a retry. DEL of an
//!   attachment that is not cached succeeds: it was never made or is already gone.
//! - A netns that no longer exists is passed as an empty `CNI_NETNS` to DEL: plugins then release host-side
//!   resources (IPAM leases, iptables rules) without entering it.
//!
//! Calls for one container must not run concurrently (the pod manager serialises a pod's operations); calls
//! for different containers may.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::{self, CACHE_FORMAT, CachedAttachment, ReadError};
use crate::config::NetworkConfig;
use crate::error::{CniError, PluginError};
use crate::exec::{self, Command, Invocation};
use crate::pod_cidr;
use crate::result::CniResult;

/// The plugin timeout when none is configured: generous for a loaded node, short enough that a hung plugin
/// does not hold a RunPodSandbox until kubelet's own 4-minute deadline.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where plugins and the cache live, and how long one plugin call may take.
#[derive(Debug, Clone)]
pub struct CniOptions {
    /// Searched in order for each plugin type (`/opt/cni/bin`, then `/usr/lib/cni` by default).
    pub bin_dirs: Vec<PathBuf>,
    /// The result cache. Keep it on a persistent filesystem (e.g. `<root>/cni/results`, not `/run`): after
    /// a reboot DEL still has to release host-local's leases, which live on disk.
    pub cache_dir: PathBuf,
    pub plugin_timeout: Duration,
    /// Whether chains whose every plugin has an in-process implementation run it (see [`ChainPath`]).
    pub native: NativeMode,
}

/// `[cni] native`: run a chain in process when every plugin of it has an implementation in [`crate::native`]
/// (`Auto`), or always execute the plugin binaries (`Off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NativeMode {
    #[default]
    Auto,
    Off,
}

/// How a chain runs: in process, or by executing the plugin binaries (and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPath {
    Native,
    Binaries { reason: String },
}

impl std::fmt::Display for ChainPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainPath::Native => f.write_str("in process"),
            ChainPath::Binaries { reason } => write!(f, "the plugin binaries ({reason})"),
        }
    }
}

/// Who runs one plugin of a chain.
#[derive(Debug, Clone)]
enum Runner {
    Native,
    Binary(PathBuf),
}

/// The Kubernetes pod a container belongs to, passed to plugins in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A host port forwarded to the pod (the `portMappings` capability, read by `portmap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`, lower case as portmap expects.
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Traffic shaping in bits per second and bits (the `bandwidth` capability, read by `bandwidth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<u64>,
}

/// The pod's DNS settings (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCapability {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Values for the well-known capabilities (CNI "CONVENTIONS.md"); each goes into `runtimeConfig` only for
/// plugins that declare it, and only when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Mappings with `host_port` 0 are dropped (CRI's "no host port").
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsCapability>,
    pub bandwidth: Option<Bandwidth>,
    /// Static addresses with prefix (`10.88.0.9/24`), for IPAM plugins that support `ips`.
    pub ips: Vec<String>,
    pub mac: Option<String>,
}

impl Capabilities {
    fn to_runtime_config(&self) -> Value {
        let mut map = Map::new();
        let ports: Vec<&PortMapping> = self.port_mappings.iter().filter(|p| p.host_port != 0).collect();
        if !ports.is_empty() {
            map.insert("portMappings".into(), serde_json::to_value(ports).unwrap_or_default());
        }
        if let Some(dns) = &self.dns {
            map.insert("dns".into(), serde_json::to_value(dns).unwrap_or_default());
        }
        if let Some(bandwidth) = &self.bandwidth {
            map.insert("bandwidth".into(), serde_json::to_value(bandwidth).unwrap_or_default());
        }
        if !self.ips.is_empty() {
            map.insert("ips".into(), serde_json::to_value(&self.ips).unwrap_or_default());
        }
        if let Some(mac) = &self.mac {
            map.insert("mac".into(), Value::String(mac.clone()));
        }
        Value::Object(map)
    }
}

/// An ADD: which container, where its network namespace is, and what the runtime knows about the pod.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// The sandbox id (`CNI_CONTAINERID`, and `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: String,
    /// The pinned network namespace (a bind mount).
    pub netns: PathBuf,
    /// `eth0` for Kubernetes pods.
    pub ifname: String,
    pub pod: PodIdentity,
    pub capabilities: Capabilities,
    /// The node's pod CIDR from UpdateRuntimeConfig, for configurations with placeholders (see `pod_cidr`).
    pub pod_cidr: Option<String>,
}

/// A DEL or CHECK: which attachment, and where the namespace is if it still exists.
#[derive(Debug, Clone)]
pub struct AttachmentRef {
    pub container_id: String,
    pub ifname: String,
    /// `None`, or a path that no longer exists, means the namespace is gone.
    pub netns: Option<PathBuf>,
}

/// One plugin execution, for logs and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginCall {
    pub plugin: String,
    pub command: Command,
    pub duration: Duration,
}

/// Where the time of an operation went: `total - in_plugins` is berth's own overhead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    pub total: Duration,
    pub in_plugins: Duration,
    pub calls: Vec<PluginCall>,
}

/// A successful ADD.
#[derive(Debug, Clone)]
pub struct Attached {
    pub network: String,
    pub result: CniResult,
    /// The chain's result as the last plugin printed it.
    pub raw_result: Value,
    pub timings: Timings,
}

/// A successful DEL.
#[derive(Debug, Clone, Default)]
pub struct Detached {
    /// The networks detached (empty when nothing was cached: the DEL was a no-op).
    pub networks: Vec<String>,
    pub timings: Timings,
}

/// One plugin execution that finished, successfully or not, as a [`CniObserver`] hears of it.
#[derive(Debug, Clone, Copy)]
pub struct PluginCallOutcome<'a> {
    /// The network (conflist `name`) the plugin is part of.
    pub network: &'a str,
    /// The plugin's `type`.
    pub plugin: &'a str,
    pub command: Command,
    pub duration: Duration,
    /// `None` when the plugin succeeded.
    pub error: Option<&'a PluginError>,
}

/// Told of every plugin execution: ADD, DEL (rollbacks included) and CHECK, failures included. This is
/// how a caller measures plugins without this crate knowing about its metrics. Called on the thread that
/// ran the plugin, right after it ended: keep it quick and never block.
pub trait CniObserver: Send + Sync + std::fmt::Debug {
    fn plugin_finished(&self, call: &PluginCallOutcome<'_>);
}

/// Runs CNI operations with one set of options.
#[derive(Debug, Clone)]
pub struct Cni {
    options: CniOptions,
    cni_path: String,
    observer: Option<Arc<dyn CniObserver>>,
    /// The path each network's chain last took, by network name, so a change is logged once.
    announced: Arc<std::sync::Mutex<std::collections::HashMap<String, ChainPath>>>,
}

impl Cni {
    pub fn new(options: CniOptions) -> Cni {
        let cni_path = options.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
        Cni { options, cni_path, observer: None, announced: Default::default() }
    }

    /// The same, telling `observer` of each plugin execution.
    pub fn with_observer(self, observer: Arc<dyn CniObserver>) -> Cni {
        Cni { observer: Some(observer), ..self }
    }

    pub fn options(&self) -> &CniOptions {
        &self.options
    }

    /// How the chain of configuration list `list` runs: in process when native mode allows it, its
    /// `cniVersion` is one the native plugins print results for, and every plugin has an implementation.
    pub fn chain_path(&self, list: &Value) -> ChainPath {
        if self.options.native == NativeMode::Off {
            return ChainPath::Binaries { reason: "[cni] native = \"off\"".into() };
        }
        let version = list.get("cniVersion").and_then(Value::as_str).unwrap_or("");
        if !crate::native::prints_results_for(version) {
            return ChainPath::Binaries { reason: format!("cniVersion {version:?}") };
        }
        let plugins = plugins_of(list);
        let missing: Vec<&str> = plugins
            .iter()
            .filter(|plugin| !crate::native::implements(plugin))
            .map(|plugin| plugin.get("type").and_then(Value::as_str).unwrap_or(""))
            .collect();
        if plugins.is_empty() {
            return ChainPath::Binaries { reason: "no plugins".into() };
        }
        if missing.is_empty() {
            ChainPath::Native
        } else {
            ChainPath::Binaries { reason: format!("not in process: {}", missing.join(", ")) }
        }
    }

    /// Logs, once per change, which path network `name` takes.
    fn announce(&self, name: &str, path: &ChainPath) {
        let mut announced = self.announced.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if announced.get(name) != Some(path) {
            tracing::info!(network = name, "CNI network {name:?} runs {path}");
            announced.insert(name.to_owned(), path.clone());
        }
    }

    /// Who runs each plugin of `list`, in chain order: all in process for a native chain, otherwise each
    /// plugin's binary; the first missing binary is an error with its index and type.
    fn runners(&self, list: &Value) -> Result<Vec<Runner>, (usize, String, PluginError)> {
        let plugins = plugins_of(list);
        if self.chain_path(list) == ChainPath::Native {
            return Ok(vec![Runner::Native; plugins.len()]);
        }
        plugins
            .iter()
            .enumerate()
            .map(|(index, plugin)| {
                let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or("");
                exec::find_plugin(&self.options.bin_dirs, plugin_type)
                    .map(Runner::Binary)
                    .map_err(|err| (index, plugin_type.to_owned(), err))
            })
            .collect()
    }

    /// ADD: runs the chain, caches and returns the result. On failure the
    /// chain is rolled back with DEL before the error is returned.
    pub fn add(&self, network: &NetworkConfig, request: &AttachRequest) -> Result<Attached, CniError> {
        let started = Instant::now();
        let container_id = request.container_id.as_str();
        validate(Command::Add, container_id, &request.ifname, Some(&network.name), &request.pod)?;
        let network_name = network.name.clone();
        let config = pod_cidr::substitute(&network.list, request.pod_cidr.as_deref()).map_err(|placeholder| {
            CniError::NoPodCidr {
                network: network_name.clone(),
                container_id: container_id.to_owned(),
                placeholder: placeholder.to_owned(),
            }
        })?;
        // Every check that needs no side effect comes first: a missing plugin or namespace fails before
        // anything is created, so there is nothing to roll back.
        self.announce(&network_name, &self.chain_path(&config));
        let runners = self.runners(&config).map_err(|(index, plugin, source)| CniError::Plugin {
            command: Command::Add,
            network: network_name.clone(),
            container_id: container_id.to_owned(),
            ifname: request.ifname.clone(),
            index,
            plugin,
            source: Box::new(source),
        })?;
        std::fs::metadata(&request.netns).map_err(|source| CniError::Netns {
            network: network_name.clone(),
            container_id: container_id.to_owned(),
            netns: request.netns.clone(),
            source,
        })?;

        let path = cache::entry_path(&self.options.cache_dir, container_id, &network_name, &request.ifname);
        let mut entry = CachedAttachment {
            format: CACHE_FORMAT.to_owned(),
            container_id: container_id.to_owned(),
            network: network_name.clone(),
            ifname: request.ifname.clone(),
            config,
            cni_args: cni_args(container_id, &request.pod),
            runtime_config: request.capabilities.to_runtime_config(),
            result: None,
        };
        cache::write(&path, &entry)
            .map_err(|source| cache_error(Command::Add, container_id, "write", &path, source))?;

        let netns = request.netns.to_string_lossy().into_owned();
        let mut timings = Timings::default();
        let chained = self.run_chain(Command::Add, &entry, &runners, &netns, None, &mut timings);
        let outcome = chained.and_then(|raw| match CniResult::parse(&raw) {
            Ok(result) => Ok((raw, result)),
            Err(source) => Err(CniError::InvalidResult {
                network: network_name.clone(),
                container_id: container_id.to_owned(),
                source,
            }),
        });
        let (raw, result) = match outcome {
            Ok(done) => done,
            Err(add) => return Err(self.roll_back(add, &path, &entry, &netns)),
        };
        entry.result = Some(raw.clone());
        if let Err(source) = cache::write(&path, &entry) {
            // Without the result the attachment is still DEL-able from the intent entry, but berth promised
            // the caller a cached result: undo, so the pod is retried cleanly.
            let add = cache_error(Command::Add, container_id, "write", &path, source);
            return Err(self.roll_back(add, &path, &entry, &netns));
        }
        timings.total = started.elapsed();
        tracing::info!(
            container_id,
            network = %network_name,
            ips = ?result.pod_ips(&request.ifname),
            total_ms = timings.total.as_secs_f64() * 1e3,
            plugins_ms = timings.in_plugins.as_secs_f64() * 1e3,
            "CNI ADD done"
        );
        Ok(Attached { network: network_name, result, raw_result: raw, timings })
    }

    fn roll_back(&self, add: CniError, path: &Path, entry: &CachedAttachment, netns: &str) -> CniError {
        tracing::warn!(container_id = %entry.container_id, network = %entry.network, error = %add, "CNI ADD failed; rolling back with DEL");
        let mut timings = Timings::default();
        match self.del_entry(path, entry, netns, &mut timings) {
            Ok(()) => CniError::AddRolledBack {
                network: entry.network.clone(),
                container_id: entry.container_id.clone(),
                source: Box::new(add),
            },
            Err(del) => CniError::RollbackFailed {
                network: entry.network.clone(),
                container_id: entry.container_id.clone(),
                add: Box::new(add),
                del: Box::new(del),
            },
        }
    }

    /// DEL: detaches every network cached for the container and interface, with the configuration ADD used.
    /// With nothing cached, `fallback` (the current configuration) is used when given, otherwise DEL is a
    /// successful no-op. Idempotent: a second DEL finds nothing cached.
    pub fn del(&self, attachment: &AttachmentRef, fallback: Option<&NetworkConfig>) -> Result<Detached, CniError> {
        let started = Instant::now();
        let container_id = attachment.container_id.as_str();
        validate(Command::Del, container_id, &attachment.ifname, None, &PodIdentity::default())?;
        let netns = usable_netns(attachment.netns.as_deref());
        let entries = cache::read_container(&self.options.cache_dir, container_id, &attachment.ifname)
            .map_err(|(path, err)| read_error(Command::Del, container_id, path, err))?;
        let mut timings = Timings::default();
        let mut networks = Vec::new();
        let mut first_error = None;
        let mut handled_any = false;
        for (path, entry) in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    // A corrupt entry cannot say what to DEL; the current configuration is the best guess.
                    let Some(network) = fallback else {
                        first_error.get_or_insert(read_error(Command::Del, container_id, path, err));
                        continue;
                    };
                    tracing::warn!(container_id, path = %path.display(), "corrupt CNI cache entry; using the current configuration for DEL");
                    self.fallback_entry(network, attachment)
                }
            };
            handled_any = true;
            match self.del_entry(&path, &entry, &netns, &mut timings) {
                Ok(()) => networks.push(entry.network.clone()),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        if !handled_any
            && first_error.is_none()
            && let Some(network) = fallback
        {
            validate(Command::Del, container_id, &attachment.ifname, Some(&network.name), &PodIdentity::default())?;
            let entry = self.fallback_entry(network, attachment);
            let path = cache::entry_path(&self.options.cache_dir, container_id, &network.name, &attachment.ifname);
            self.del_entry(&path, &entry, &netns, &mut timings)?;
            networks.push(entry.network);
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        timings.total = started.elapsed();
        tracing::info!(container_id, ?networks, total_ms = timings.total.as_secs_f64() * 1e3, "CNI DEL done");
        Ok(Detached { networks, timings })
    }

    /// CHECK: asks every plugin whether the cached attachment is still as ADD left it.
    pub fn check(&self, attachment: &AttachmentRef) -> Result<Timings, CniError> {
        let started = Instant::now();
        let container_id = attachment.container_id.as_str();
        validate(Command::Check, container_id, &attachment.ifname, None, &PodIdentity::default())?;
        let entries = cache::read_container(&self.options.cache_dir, container_id, &attachment.ifname)
            .map_err(|(path, err)| read_error(Command::Check, container_id, path, err))?;
        let netns = usable_netns(attachment.netns.as_deref());
        let unavailable = |network: &str, reason: &str| CniError::CheckUnavailable {
            network: network.to_owned(),
            container_id: container_id.to_owned(),
            reason: reason.to_owned(),
        };
        if entries.is_empty() {
            return Err(unavailable("", "nothing is attached (no cached ADD result)"));
        }
        if netns.is_empty() {
            return Err(unavailable("", "the network namespace is gone"));
        }
        let mut timings = Timings::default();
        for (path, entry) in entries {
            let entry = entry.map_err(|err| read_error(Command::Check, container_id, path, err))?;
            let Some(result) = entry.result.clone() else {
                return Err(unavailable(&entry.network, "the ADD never completed"));
            };
            let version = entry.config.get("cniVersion").and_then(Value::as_str).unwrap_or("");
            if version_tuple(version) < (0, 4, 0) {
                return Err(unavailable(&entry.network, &format!("cniVersion {version} has no CHECK (0.4.0+)")));
            }
            let runners = self.runners(&entry.config).map_err(|(index, plugin, source)| CniError::Plugin {
                command: Command::Check,
                network: entry.network.clone(),
                container_id: container_id.to_owned(),
                ifname: entry.ifname.clone(),
                plugin,
                index,
                source: Box::new(source),
            })?;
            self.run_chain(Command::Check, &entry, &runners, &netns, Some(result), &mut timings)?;
        }
        timings.total = started.elapsed();
        Ok(timings)
    }

    /// A cache entry standing for `network` when nothing usable is cached (no CNI_ARGS pod names are known).
    fn fallback_entry(&self, network: &NetworkConfig, attachment: &AttachmentRef) -> CachedAttachment {
        CachedAttachment {
            format: CACHE_FORMAT.to_owned(),
            container_id: attachment.container_id.clone(),
            network: network.name.clone(),
            ifname: attachment.ifname.clone(),
            config: network.list.clone(),
            cni_args: cni_args(&attachment.container_id, &PodIdentity::default()),
            runtime_config: Value::Object(Map::new()),
            result: None,
        }
    }

    /// Runs the DEL chain of a cached entry in reverse, every plugin even after a failure, and removes the
    /// entry when all succeeded.
    fn del_entry(
        &self,
        path: &Path,
        entry: &CachedAttachment,
        netns: &str,
        timings: &mut Timings,
    ) -> Result<(), CniError> {
        let plugins = plugins_of(&entry.config);
        // The cached configuration decides the path, so an attachment made by either path is released by
        // whichever the configuration takes now: both leave the host the same.
        let native = self.chain_path(&entry.config) == ChainPath::Native;
        let mut first_error = None;
        for (index, plugin) in plugins.iter().enumerate().rev() {
            let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
            let runner = if native {
                Ok(Runner::Native)
            } else {
                exec::find_plugin(&self.options.bin_dirs, &plugin_type).map(Runner::Binary)
            };
            let outcome = runner.and_then(|runner| {
                self.run_one(Command::Del, entry, plugin, &runner, netns, entry.result.clone(), timings)
            });
            if let Err(source) = outcome {
                tracing::warn!(container_id = %entry.container_id, network = %entry.network, plugin = %plugin_type, error = %source, "CNI DEL of a plugin failed");
                first_error.get_or_insert(CniError::Plugin {
                    command: Command::Del,
                    network: entry.network.clone(),
                    container_id: entry.container_id.clone(),
                    ifname: entry.ifname.clone(),
                    plugin: plugin_type,
                    index,
                    source: Box::new(source),
                });
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        cache::remove(path).map_err(|source| cache_error(Command::Del, &entry.container_id, "remove", path, source))
    }

    /// Runs the chain in order (ADD, CHECK), feeding each result to the next plugin; returns the last result.
    fn run_chain(
        &self,
        command: Command,
        entry: &CachedAttachment,
        runners: &[Runner],
        netns: &str,
        mut prev_result: Option<Value>,
        timings: &mut Timings,
    ) -> Result<Value, CniError> {
        let plugins = plugins_of(&entry.config);
        for (index, (plugin, runner)) in plugins.iter().zip(runners).enumerate() {
            let output =
                self.run_one(command, entry, plugin, runner, netns, prev_result.take(), timings).and_then(|stdout| {
                    match command {
                        // CHECK prints nothing on success; the cached result goes on down the chain.
                        Command::Check => Ok(None),
                        _ => {
                            serde_json::from_slice::<Value>(&stdout).ok().filter(Value::is_object).map(Some).ok_or_else(
                                || PluginError::InvalidOutput {
                                    reason: format!(
                                        "expected a JSON result object, got {:?}",
                                        crate::error::truncate(&String::from_utf8_lossy(&stdout), 200)
                                    ),
                                },
                            )
                        }
                    }
                });
            match output {
                Ok(Some(result)) => prev_result = Some(result),
                Ok(None) => prev_result = entry.result.clone(),
                Err(source) => {
                    return Err(CniError::Plugin {
                        command,
                        network: entry.network.clone(),
                        container_id: entry.container_id.clone(),
                        ifname: entry.ifname.clone(),
                        plugin: plugin.get("type").and_then(Value::as_str).unwrap_or("").to_owned(),
                        index,
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(prev_result.unwrap_or(Value::Null))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_one(
        &self,
        command: Command,
        entry: &CachedAttachment,
        plugin: &Value,
        runner: &Runner,
        netns: &str,
        prev_result: Option<Value>,
        timings: &mut Timings,
    ) -> Result<Vec<u8>, PluginError> {
        let config = plugin_config(&entry.config, plugin, prev_result, &entry.runtime_config);
        let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        let started = Instant::now();
        let outcome = match runner {
            Runner::Native => {
                let invocation = crate::native::Invocation {
                    command,
                    container_id: &entry.container_id,
                    netns,
                    ifname: &entry.ifname,
                    cni_args: &entry.cni_args,
                };
                // The result travels on as the binary's stdout would: one parse for both paths.
                crate::native::run(&plugin_type, &invocation, &config)
                    .map(|result| result.map(|value| value.to_string().into_bytes()).unwrap_or_default())
            }
            Runner::Binary(binary) => {
                let stdin = serde_json::to_vec(&config)
                    .map_err(|err| PluginError::Io { step: "encode the config", source: err.into() })?;
                let invocation = Invocation {
                    command,
                    container_id: &entry.container_id,
                    netns,
                    ifname: &entry.ifname,
                    cni_args: &entry.cni_args,
                    cni_path: &self.cni_path,
                    stdin: &stdin,
                    timeout: self.options.plugin_timeout,
                };
                exec::run(binary, &invocation)
            }
        };
        let duration = started.elapsed();
        tracing::debug!(container_id = %entry.container_id, plugin = %plugin_type, %command, ms = duration.as_secs_f64() * 1e3, ok = outcome.is_ok(), "CNI plugin call");
        if let Some(observer) = &self.observer {
            observer.plugin_finished(&PluginCallOutcome {
                network: &entry.network,
                plugin: &plugin_type,
                command,
                duration,
                error: outcome.as_ref().err(),
            });
        }
        timings.in_plugins += duration;
        timings.calls.push(PluginCall { plugin: plugin_type, command, duration });
        outcome
    }
}

/// The configuration one plugin receives (libcni's "buildOneConfig"): its own object plus the list's `name`
/// and `cniVersion`, the previous result, and the capabilities it declared.
fn plugin_config(list: &Value, plugin: &Value, prev_result: Option<Value>, runtime_config: &Value) -> Value {
    let mut config = plugin.as_object().cloned().unwrap_or_default();
    for key in ["name", "cniVersion"] {
        if let Some(value) = list.get(key) {
            config.insert(key.to_owned(), value.clone());
        }
    }
    if let Some(prev_result) = prev_result {
        config.insert("prevResult".into(), prev_result);
    }
    let declared = plugin.get("capabilities").and_then(Value::as_object);
    let mut offered = Map::new();
    if let (Some(declared), Some(values)) = (declared, runtime_config.as_object()) {
        for (capability, value) in values {
            if declared.get(capability).and_then(Value::as_bool) == Some(true) {
                offered.insert(capability.clone(), value.clone());
            }
        }
    }
    if !offered.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(offered));
    }
    Value::Object(config)
}

fn plugins_of(config: &Value) -> Vec<Value> {
    config.get("plugins").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// `CNI_ARGS` as kubelet's dockershim and every CRI runtime pass it (`IgnoreUnknown=1` first, so plugins
/// that do not know the K8S_ keys accept them).
fn cni_args(container_id: &str, pod: &PodIdentity) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={}",
        pod.namespace, pod.name, pod.uid
    )
}

fn usable_netns(netns: Option<&Path>) -> String {
    match netns {
        Some(path) if path.exists() => path.to_string_lossy().into_owned(),
        _ => String::new(),
    }
}

/// Ids and names become file names and `CNI_ARGS` fields: refuse what would escape or break either.
fn validate(
    command: Command,
    container_id: &str,
    ifname: &str,
    network: Option<&str>,
    pod: &PodIdentity,
) -> Result<(), CniError> {
    let invalid = |reason: String| CniError::InvalidArgument {
        command,
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        reason,
    };
    // CNI spec: container ids are alphanumeric plus `-`, `_` and `.`; network names likewise.
    let plain = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !plain(container_id) {
        return Err(invalid(format!("container id {container_id:?} must be alphanumeric plus - _ .")));
    }
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ':']) || ifname.chars().any(char::is_whitespace)
    {
        return Err(invalid(format!("interface name {ifname:?} is not a valid Linux interface name")));
    }
    if let Some(network) = network
        && !plain(network)
    {
        return Err(invalid(format!("network name {network:?} must be alphanumeric plus - _ .")));
    }
    for (what, value) in [("namespace", &pod.namespace), ("name", &pod.name), ("uid", &pod.uid)] {
        if value.contains([';', '=']) {
            return Err(invalid(format!("pod {what} {value:?} cannot go into CNI_ARGS")));
        }
    }
    Ok(())
}

fn version_tuple(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn cache_error(
    command: Command,
    container_id: &str,
    step: &'static str,
    path: &Path,
    source: std::io::Error,
) -> CniError {
    CniError::Cache { command, container_id: container_id.to_owned(), step, path: path.to_owned(), source }
}

fn read_error(command: Command, container_id: &str, path: PathBuf, err: ReadError) -> CniError {
    match err {
        ReadError::Io(source) => cache_error(command, container_id, "read", &path, source),
        ReadError::Corrupt(source) => {
            CniError::CacheCorrupt { command, container_id: container_id.to_owned(), path, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runtime_config_reaches_only_plugins_that_declare_the_capability() {
        let capabilities = Capabilities {
            port_mappings: vec![
                PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() },
                PortMapping { host_port: 0, container_port: 81, protocol: "tcp".into(), host_ip: String::new() },
            ],
            dns: Some(DnsCapability { servers: vec!["10.96.0.10".into()], ..Default::default() }),
            bandwidth: None,
            ips: vec![],
            mac: Some("aa:bb:cc:dd:ee:ff".into()),
        };
        let runtime_config = capabilities.to_runtime_config();
        let list = json!({"cniVersion": "1.0.0", "name": "pods", "plugins": []});
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true, "mac": false}});
        let config = plugin_config(&list, &portmap, Some(json!({"ips": []})), &runtime_config);
        assert_eq!(
            config,
            json!({
                "type": "portmap", "capabilities": {"portMappings": true, "mac": false},
                "name": "pods", "cniVersion": "1.0.0", "prevResult": {"ips": []},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
            })
        );
        let bridge = json!({"type": "bridge"});
        assert_eq!(plugin_config(&list, &bridge, None, &runtime_config).get("runtimeConfig"), None);
    }

    /// A `Cni` whose only plugin, `recorder`, appends its command and stdin to `log` and succeeds.
    fn recording_cni(dir: &Path) -> (Cni, NetworkConfig, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("calls.log");
        let plugin = dir.join("recorder");
        std::fs::write(
            &plugin,
            format!("#!/bin/sh\n{{ echo \"$CNI_COMMAND $CNI_NETNS\"; cat; echo; }} >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let list = json!({"cniVersion": "1.0.0", "name": "current", "plugins": [{"type": "recorder"}]});
        let network = NetworkConfig {
            path: dir.join("10-current.conflist"),
            name: "current".into(),
            cni_version: "1.0.0".into(),
            plugin_types: vec!["recorder".into()],
            list,
        };
        let options = CniOptions {
            bin_dirs: vec![dir.to_owned()],
            cache_dir: dir.join("cache"),
            plugin_timeout: Duration::from_secs(10),
            native: NativeMode::Auto,
        };
        (Cni::new(options), network, log)
    }

    #[test]
    fn a_corrupt_cache_entry_is_reported_or_deleted_with_the_current_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cni, network, log) = recording_cni(dir.path());
        let entry = dir.path().join("cache/c1/old-eth0.json");
        std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
        std::fs::write(&entry, "").unwrap();
        let reference = AttachmentRef { container_id: "c1".into(), ifname: "eth0".into(), netns: None };

        let err = cni.del(&reference, None).unwrap_err();
        assert!(matches!(err, CniError::CacheCorrupt { .. }), "{err:?}");
        assert!(entry.exists(), "without a fallback the entry must stay for the caller to decide");

        let detached = cni.del(&reference, Some(&network)).unwrap();
        assert_eq!(detached.networks, ["current"]);
        assert!(!entry.exists() && !entry.parent().unwrap().exists());
        let calls = std::fs::read_to_string(&log).unwrap();
        // The netns was not given: DEL runs with an empty CNI_NETNS.
        assert!(calls.starts_with("DEL \n{"), "{calls}");
        assert!(calls.contains("\"name\":\"current\""), "{calls}");
    }

    #[test]
    fn del_with_nothing_cached_runs_nothing_unless_a_fallback_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (cni, network, log) = recording_cni(dir.path());
        let reference = AttachmentRef { container_id: "c2".into(), ifname: "eth0".into(), netns: None };
        assert!(cni.del(&reference, None).unwrap().networks.is_empty());
        assert!(!log.exists());
        assert_eq!(cni.del(&reference, Some(&network)).unwrap().networks, ["current"]);
        assert!(std::fs::read_to_string(&log).unwrap().starts_with("DEL "));
    }

    #[test]
    fn a_chain_runs_in_process_only_when_allowed_printable_and_fully_implemented() {
        let dir = tempfile::tempdir().unwrap();
        let (cni, _, _) = recording_cni(dir.path());
        let list = |version: &str, plugins: Value| json!({"cniVersion": version, "name": "n", "plugins": plugins});
        let loopback = json!([{"type": "loopback"}]);
        assert_eq!(cni.chain_path(&list("1.0.0", loopback.clone())), ChainPath::Native);
        assert_eq!(cni.chain_path(&list("0.3.1", loopback.clone())), ChainPath::Native);
        let old = cni.chain_path(&list("0.2.0", loopback.clone()));
        assert_eq!(old, ChainPath::Binaries { reason: "cniVersion \"0.2.0\"".into() });
        let mixed = cni.chain_path(&list("1.0.0", json!([{"type": "bridge"}, {"type": "loopback"}, {"type": "x"}])));
        assert_eq!(mixed.to_string(), "the plugin binaries (not in process: x)");
        // A plugin type that is implemented, configured with what is not (a VLAN), runs its binary.
        let vlan = cni.chain_path(&list("1.0.0", json!([{"type": "bridge", "vlan": 7}, {"type": "loopback"}])));
        assert_eq!(vlan.to_string(), "the plugin binaries (not in process: bridge)");
        assert!(matches!(cni.chain_path(&list("1.0.0", json!([]))), ChainPath::Binaries { .. }));
        let off = Cni::new(CniOptions { native: NativeMode::Off, ..cni.options().clone() });
        assert!(matches!(off.chain_path(&list("1.0.0", loopback)), ChainPath::Binaries { .. }));
    }

    #[test]
    fn cni_args_carry_the_pod_and_bad_ids_are_refused() {
        let pod = PodIdentity { namespace: "default".into(), name: "web".into(), uid: "u-1".into() };
        assert_eq!(
            cni_args("abc", &pod),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        assert!(validate(Command::Add, "abc123", "eth0", Some("pods"), &pod).is_ok());
        for (id, ifname, network) in
            [("../x", "eth0", "n"), ("a", "eth0/", "n"), ("a", "eth0", "../n"), ("", "eth0", "n")]
        {
            let err = validate(Command::Add, id, ifname, Some(network), &pod).unwrap_err();
            assert_eq!(berth_error_kind::Kinded::kind(&err), berth_error_kind::ErrorKind::InvalidArgument);
        }
    }
}
