//! The result of a CNI ADD, typed: interfaces, IP addresses (v4 and v6), routes and DNS.
//!
//! Plugins answer in the `cniVersion` of the configuration (CNI spec, "Section 5: Result Types"). Versions
//! 0.3.0 to 1.x share one shape (`interfaces`, `ips`, `routes`, `dns`; 0.3.x adds a `version` per IP that
//! 1.0 dropped); 0.1.0 and 0.2.0 have `ip4`/`ip6` objects instead. All of them are read into [`CniResult`];
//! the raw JSON is kept as well because it is what the next plugin of a chain receives as `prevResult`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a plugin's output is not a usable result.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("not JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the address {address:?} is not an IP/prefix")]
    Address { address: String },
    #[error("IP {address} names interface {index}, but the result has {count} interfaces")]
    InterfaceIndex { address: String, index: usize, count: usize },
}

/// An address with its prefix length, as CNI writes it (`10.88.0.5/24`, `fd00::5/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpNetwork {
    type Err = ResultError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ResultError::Address { address: text.to_owned() };
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(invalid());
        }
        Ok(IpNetwork { address, prefix_len })
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for IpNetwork {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNetwork {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface the plugins created or touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for interfaces inside the container; absent for host-side ones (bridge, veth peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A chain's ADD result, in any supported version, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// Reads a plugin's stdout (or a cached result).
    pub fn parse(raw: &Value) -> Result<CniResult, ResultError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Current {
            #[serde(default)]
            cni_version: String,
            #[serde(default)]
            interfaces: Vec<Interface>,
            #[serde(default)]
            ips: Vec<IpConfig>,
            #[serde(default)]
            routes: Vec<Route>,
            #[serde(default)]
            dns: Dns,
            // 0.1.0 / 0.2.0
            #[serde(default)]
            ip4: Option<LegacyIp>,
            #[serde(default)]
            ip6: Option<LegacyIp>,
        }
        #[derive(Deserialize)]
        struct LegacyIp {
            ip: IpNetwork,
            #[serde(default)]
            gateway: Option<IpAddr>,
            #[serde(default)]
            routes: Vec<Route>,
        }
        let current: Current = serde_json::from_value(raw.clone()).map_err(ResultError::Json)?;
        let mut result = CniResult {
            cni_version: current.cni_version,
            interfaces: current.interfaces,
            ips: current.ips,
            routes: current.routes,
            dns: current.dns,
        };
        for legacy in [current.ip4, current.ip6].into_iter().flatten() {
            result.ips.push(IpConfig { address: legacy.ip, gateway: legacy.gateway, interface: None });
            result.routes.extend(legacy.routes);
        }
        for ip in &result.ips {
            if let Some(index) = ip.interface
                && index >= result.interfaces.len()
            {
                return Err(ResultError::InterfaceIndex {
                    address: ip.address.to_string(),
                    index,
                    count: result.interfaces.len(),
                });
            }
        }
        Ok(result)
    }

    /// The pod's addresses on `ifname` inside the sandbox, IPv4 first then IPv6, each once: the first is the
    /// pod IP, the rest are additional IPs (the order kubelet expects for dual-stack). An address naming no
    /// interface counts (older plugins and results leave the index out).
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let on_pod_interface = |ip: &&IpConfig| match ip.interface.and_then(|i| self.interfaces.get(i)) {
            Some(interface) => interface.name == ifname && interface.sandbox.as_deref().is_some_and(|s| !s.is_empty()),
            None => true,
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for wanted_v4 in [true, false] {
            for ip in self.ips.iter().filter(on_pod_interface) {
                if ip.address.address.is_ipv4() == wanted_v4 && !ips.contains(&ip.address.address) {
                    ips.push(ip.address.address);
                }
            }
        }
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dual_stack_bridge_result_gives_v4_then_v6_on_the_pod_interface() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}
            ],
            "ips": [
                {"address": "fd00:10::5/64", "gateway": "fd00:10::1", "interface": 2},
                {"address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 2},
                {"address": "10.99.0.1/24", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let result = CniResult::parse(&raw).unwrap();
        assert_eq!(result.pod_ips("eth0"), vec!["10.88.0.5".parse::<IpAddr>().unwrap(), "fd00:10::5".parse().unwrap()]);
        assert_eq!(result.ips[1].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");
        // Serialises and reads back unchanged (the daemon keeps it in its records).
        let again: CniResult = serde_json::from_value(serde_json::to_value(&result).unwrap()).unwrap();
        assert_eq!(again, result);
    }

    #[test]
    fn legacy_and_0_3_results_are_read() {
        let v02 = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.7/16", "gateway": "10.1.0.1"}});
        assert_eq!(CniResult::parse(&v02).unwrap().pod_ips("eth0"), vec!["10.1.0.7".parse::<IpAddr>().unwrap()]);
        let v031 = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.2.0.9/24"}]});
        assert_eq!(CniResult::parse(&v031).unwrap().pod_ips("eth0"), vec!["10.2.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        let bad_address = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]});
        assert!(CniResult::parse(&bad_address).unwrap_err().to_string().contains("10.0.0.300/24"));
        let bad_index = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/24", "interface": 4}]});
        assert!(matches!(CniResult::parse(&bad_index), Err(ResultError::InterfaceIndex { index: 4, .. })));
        assert!(CniResult::parse(&json!(["not", "an", "object"])).is_err());
    }
}
