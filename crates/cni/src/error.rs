//! The errors of plugin execution and of the attach/detach operations built on it.
//!
//! [`PluginError`] says what one plugin process did wrong (not found, timed out, failed with a CNI error,
//! printed garbage); [`CniError`] says which operation (ADD/DEL/CHECK) of which network for which container
//! and interface it happened in, and which plugin of the chain it was. Messages leave the source out: the
//! daemon prints the chain once.

use std::path::PathBuf;
use std::time::Duration;

use berth_error_kind::{ErrorKind, Kinded};

use crate::exec::Command;

/// CNI's well-known error code 11, "try again later" (spec, "Error"): the plugin expects a retry to work.
const CODE_TRY_AGAIN_LATER: u32 = 11;

/// What went wrong with one plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin binary not found in {}", display_dirs(.bin_dirs))]
    NotFound { bin_dirs: Vec<PathBuf> },
    #[error("cannot start {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot talk to the plugin process ({step})")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?}; the plugin and its process group were killed")]
    Timeout { timeout: Duration },
    #[error("failed with CNI error code {code}: {msg}{}{}", details_suffix(.details), stderr_suffix(.stderr))]
    Failed { code: u32, msg: String, details: String, stderr: String },
    #[error("exited with {status} and no CNI error on stdout{}", stderr_suffix(.stderr))]
    Crashed { status: String, stderr: String },
    #[error("printed output that is not a valid CNI result: {reason}")]
    InvalidOutput { reason: String },
}

impl PluginError {
    /// A short, stable name for what went wrong (a metrics label): `not_found`, `start_failed`, `io_error`, `timeout`,
    /// `cni_error` (the plugin reported a CNI error), `crashed` or `invalid_output`.
    pub fn outcome(&self) -> &'static str {
        match self {
            PluginError::NotFound { .. } => "not_found",
            PluginError::Spawn { .. } => "start_failed",
            PluginError::Io { .. } => "io_error",
            PluginError::Timeout { .. } => "timeout",
            PluginError::Failed { .. } => "cni_error",
            PluginError::Crashed { .. } => "crashed",
            PluginError::InvalidOutput { .. } => "invalid_output",
        }
    }
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    let joined: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    if joined.is_empty() { "(no bin dirs configured)".to_owned() } else { joined.join(":") }
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() { String::new() } else { format!(" ({details})") }
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() { String::new() } else { format!("; stderr: {}", truncate(trimmed, 512)) }
}

/// Keeps a plugin's free-form output from flooding a gRPC status or a log line.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl Kinded for PluginError {
    fn kind(&self) -> ErrorKind {
        match self {
            // The node is misconfigured (no such plugin): nothing the caller can change per request.
            PluginError::NotFound { .. } => ErrorKind::FailedPrecondition,
            PluginError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            PluginError::Failed { code: CODE_TRY_AGAIN_LATER, .. } => ErrorKind::Unavailable,
            PluginError::Spawn { source, .. } | PluginError::Io { source, .. } => ErrorKind::of_io(source),
            PluginError::Failed { .. } | PluginError::Crashed { .. } | PluginError::InvalidOutput { .. } => {
                ErrorKind::Internal
            }
        }
    }
}

/// A failed CNI operation on one attachment (network, container id, interface).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(
        "CNI {command} of network {network:?} for container {container_id} ({ifname}): plugin {plugin:?} \
         (#{index} in the chain)"
    )]
    Plugin {
        command: Command,
        network: String,
        container_id: String,
        ifname: String,
        plugin: String,
        index: usize,
        #[source]
        source: Box<PluginError>,
    },
    #[error("CNI ADD of network {network:?} for container {container_id} failed and was rolled back with DEL")]
    AddRolledBack {
        network: String,
        container_id: String,
        #[source]
        source: Box<CniError>,
    },
    #[error(
        "CNI ADD of network {network:?} for container {container_id} failed ({add}), and the rollback DEL failed \
         too; the result cache keeps the attachment so a later DEL can finish the cleanup"
    )]
    RollbackFailed {
        network: String,
        container_id: String,
        add: Box<CniError>,
        #[source]
        del: Box<CniError>,
    },
    #[error("CNI {command} for container {container_id} ({ifname}): {reason}")]
    InvalidArgument { command: Command, container_id: String, ifname: String, reason: String },
    #[error("CNI ADD of network {network:?} for container {container_id}: the network namespace {netns} is unusable")]
    Netns {
        network: String,
        container_id: String,
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CNI ADD of network {network:?} for container {container_id}: the configuration uses {placeholder} but no \
         pod CIDR is known yet (UpdateRuntimeConfig has not set one)"
    )]
    NoPodCidr { network: String, container_id: String, placeholder: String },
    #[error("CNI CHECK of network {network:?} for container {container_id}: {reason}")]
    CheckUnavailable { network: String, container_id: String, reason: String },
    #[error("CNI {command} for container {container_id}: cannot {step} the result cache at {path}")]
    Cache {
        command: Command,
        container_id: String,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI {command} for container {container_id}: the cached attachment at {path} is corrupt")]
    CacheCorrupt {
        command: Command,
        container_id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("CNI ADD of network {network:?} for container {container_id}: the result of the chain is invalid")]
    InvalidResult {
        network: String,
        container_id: String,
        #[source]
        source: crate::result::ResultError,
    },
}

impl Kinded for CniError {
    fn kind(&self) -> ErrorKind {
        match self {
            CniError::Plugin { source, .. } => source.kind(),
            CniError::AddRolledBack { source, .. } => source.kind(),
            CniError::RollbackFailed { add, .. } => add.kind(),
            CniError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            CniError::Netns { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Internal,
            },
            CniError::NoPodCidr { .. } | CniError::CheckUnavailable { .. } => ErrorKind::FailedPrecondition,
            CniError::Cache { source, .. } => ErrorKind::of_io(source),
            CniError::CacheCorrupt { .. } | CniError::InvalidResult { .. } => ErrorKind::Internal,
        }
    }
}
