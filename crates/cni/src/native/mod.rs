//! The reference CNI plugins, in process. Each function here stands for one plugin binary of
//! containernetworking/plugins and keeps its contract: it reads the configuration the binary would read on
//! stdin and the `CNI_*` values of its environment ([`Invocation`]), leaves the host exactly as the binary
//! would (the same files in the same formats, under the same locks), and answers with the result the binary
//! would print, or a [`PluginError::Failed`] carrying the CNI error code and message the binary would print.
//! Because the contract is the binary's, the chain, the result cache and DEL after a restart are the same
//! code for both paths, and a node can move between them with attachments live: what one path made, the
//! other releases.
//!
//! Modules: `bridge` (the pod's veth on a Linux bridge, gateway, masquerading), `host_local` (IPAM: address
//! leases under `/var/lib/cni/networks/<network>`), `loopback` (the pod's `lo`), `portmap` (hostPorts),
//! `iptables` (the nat rules of bridge and portmap), `nftables` (their deletion on the nf_tables backend),
//! `netlink` (links, addresses and routes),
//! `conntrack` (portmap's stale UDP entries), `netns` (running code inside a network namespace).

pub mod bridge;
pub mod conntrack;
pub mod host_local;
pub mod iptables;
pub mod loopback;
pub mod netlink;
pub mod netns;
mod nftables;
pub mod portmap;

use serde_json::Value;

use crate::error::PluginError;
use crate::exec::Command;

/// The `CNI_*` values a plugin binary would find in its environment.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// `CNI_NETNS`: the network namespace's path, empty when it is gone (DEL).
    pub netns: &'a str,
    pub ifname: &'a str,
    /// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
    pub cni_args: &'a str,
}

/// Whether plugin configuration `plugin` (an entry of a list's `plugins`) has an implementation here that
/// does everything it asks for.
pub fn implements(plugin: &Value) -> bool {
    match plugin.get("type").and_then(Value::as_str).unwrap_or("") {
        "loopback" | "host-local" | "portmap" => true,
        "bridge" => bridge::supports(plugin),
        _ => false,
    }
}

/// Runs plugin type `plugin` in process, as its binary would run with this configuration on stdin: the
/// result (ADD), or nothing (DEL, CHECK). A type without an implementation here fails as a missing
/// binary would.
pub fn run(plugin: &str, invocation: &Invocation<'_>, config: &Value) -> Result<Option<Value>, PluginError> {
    match plugin {
        "loopback" => loopback::run(invocation, config),
        "host-local" => host_local::run(invocation, config),
        "bridge" => bridge::run(invocation, config),
        "portmap" => portmap::run(invocation, config),
        _ => Err(PluginError::NotFound { bin_dirs: Vec::new() }),
    }
}

/// CNI's well-known error codes (spec, "Error"), as the Go plugins use them.
const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// What the plugins' `skel` answers for any error that carries no code of its own.
const CODE_INTERNAL: u32 = 999;

/// A failure as the plugin binary reports it on stdout.
fn failed(code: u32, msg: impl Into<String>) -> PluginError {
    PluginError::Failed { code, msg: msg.into(), details: String::new(), stderr: String::new() }
}

/// `CNI_ARGS` as the plugins' `types.LoadArgs` reads it: the values of the keys the plugin knows (`known`),
/// in order; unknown keys are an error unless `IgnoreUnknown` is true, as is a pair without `=`. The error
/// is the plugins' message; each plugin decides its code.
fn load_args<'a>(cni_args: &'a str, known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut pairs = Vec::new();
    for pair in cni_args.split(';').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("ARGS: invalid pair {pair:?}"))?;
        pairs.push((pair, key, value));
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(_, key, value)| *key == "IgnoreUnknown" && matches!(value.to_ascii_lowercase().as_str(), "1" | "true"));
    let mut values = Vec::new();
    let mut unknown = Vec::new();
    for (pair, key, value) in pairs {
        if key == "IgnoreUnknown" {
            continue;
        }
        if known.contains(&key) {
            values.push((key, value));
        } else {
            unknown.push(format!("{pair:?}"));
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        // Go's %q of a list of strings.
        return Err(format!("ARGS: unknown args [{}]", unknown.join(" ")));
    }
    Ok(values)
}

/// The JSON type Go's `encoding/json` names when a value does not fit a field ("cannot unmarshal string
/// into Go struct field ... of type bool"): the native plugins refuse configurations with the same words.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `address/prefix` as a result writes it (`10.1.0.5/16`, the address kept as written).
fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, prefix))
}

/// The spec versions whose result format the native plugins print (the Go plugins also speak 0.1.0 and
/// 0.2.0, whose results have another shape; a chain declaring those runs the binaries).
pub fn prints_results_for(cni_version: &str) -> bool {
    matches!(cni_version, "0.3.0" | "0.3.1" | "0.4.0" | "1.0.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_are_read_as_load_args_reads_them() {
        let args = load_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.9", &["IP"]).unwrap();
        assert_eq!(args, [("IP", "10.1.0.9")]);
        let err = load_args("K8S_POD_NAME=web;X=1", &["IP"]).unwrap_err();
        assert_eq!(err, r#"ARGS: unknown args ["K8S_POD_NAME=web" "X=1"]"#);
        assert!(load_args("IgnoreUnknown=true;X=1", &[]).unwrap().is_empty());
        assert!(load_args("novalue", &[]).is_err());
        assert!(load_args("", &["IP"]).unwrap().is_empty());
    }
}
