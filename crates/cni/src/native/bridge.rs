//! `bridge` in process: the pod's veth pair on a Linux bridge, its addresses from `host-local`, the bridge
//! as gateway, and the masquerading rules, as the binary of containernetworking/plugins 1.1 makes them
//! (`plugins/main/bridge`), through netlink ([`super::netlink`]) instead of a process per plugin.
//!
//! What the binary does at ADD, and so this code:
//! 1. The bridge (`bridge`, default `cni0`) is created unless it exists (with `mtu`; `promiscMode`), must be a
//!    bridge, gets `accept_ra` 0 and is set up.
//! 2. In the pod's namespace, a veth pair: `CNI_IFNAME` there (with the requested MAC), its peer
//!    `veth<8 random hex>` created in the host's namespace, set up, `accept_ra` 0; the peer joins the bridge
//!    with `hairpinMode`.
//! 3. With an `ipam` section, host-local (in process too) gives the addresses; every address belongs to the
//!    pod's interface; with `isGateway` an address without gateway gets the subnet's first address; with
//!    `isDefaultGateway` a default route through the gateway is added unless the IPAM result has one. In the
//!    pod's namespace: `accept_dad` (and `enhanced_dad` with `enabledad`), `arp_notify`, IPv6 enabled when
//!    an IPv6 address comes, the addresses, the link up, the routes. The bridge port must come up (it is
//!    polled for up to 3 s). With `isGateway`, the gateways go on the bridge (an IPv4 bridge address that
//!    differs is an error unless `forceAddress`), the bridge's MAC is pinned, and forwarding is enabled; with
//!    `ipMasq`, the rules of [`super::iptables`]. A failure after IPAM releases the addresses.
//!    Without `ipam` the pod's interface is only set up (layer 2).
//! 4. The result lists the bridge, the host veth and the pod's interface (with its sandbox), the addresses,
//!    the routes and the configuration's `dns`.
//!
//! DEL releases the addresses, deletes the pod's interface (its peer goes with it) and the masquerading rules
//! of the addresses it had; a missing namespace or interface is no error. CHECK compares the previous result
//! with the host and the pod (bridge, veth peers, addresses, routes).
//!
//! Not here: `vlan` and `macspoofchk`; a configuration that uses them runs the binary
//! ([`supports`]). The IPAM must be `host-local` for the same reason.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::iptables::{self, Masqueraded};
use super::netlink::{Link, Netlink, NetlinkError, errno_text, format_mac};
use super::netns::{self, Unusable};
use super::{
    CODE_INCOMPATIBLE_VERSION, CODE_INTERNAL, Invocation, failed, host_local, json_kind, load_args, parse_cidr,
    prints_results_for,
};
use crate::error::PluginError;
use crate::exec::Command;

const DEFAULT_BRIDGE: &str = "cni0";

/// Whether the in-process bridge does everything plugin configuration `plugin` asks for.
pub fn supports(plugin: &Value) -> bool {
    let vlan = plugin.get("vlan").and_then(Value::as_i64).unwrap_or(0);
    let spoof_check = plugin.get("macspoofchk").and_then(Value::as_bool).unwrap_or(false);
    let ipam = plugin.get("ipam").and_then(|ipam| ipam.get("type")).and_then(Value::as_str).unwrap_or("");
    vlan == 0 && !spoof_check && matches!(ipam, "" | "host-local")
}

pub fn run(invocation: &Invocation<'_>, config: &Value) -> Result<Option<Value>, PluginError> {
    let conf = Conf::load(config, invocation.cni_args).map_err(internal)?;
    match invocation.command {
        Command::Add => add(invocation, &conf, config).map(Some),
        Command::Del => del(invocation, &conf, config).map(|()| None),
        Command::Check => check(invocation, &conf, config).map(|()| None),
    }
}

fn internal(msg: impl Into<String>) -> PluginError {
    failed(CODE_INTERNAL, msg)
}

/// A netlink failure as the Go plugins print it: the errno's text alone.
fn go_text(err: &NetlinkError) -> String {
    match err {
        NetlinkError::Kernel { errno, .. } => errno_text(*errno),
        other => other.to_string(),
    }
}

/// The plugin's configuration, with the defaults and derivations of the binary's `loadNetConf`.
#[derive(Debug)]
struct Conf {
    network: String,
    cni_version: String,
    bridge: String,
    is_gateway: bool,
    is_default_gateway: bool,
    force_address: bool,
    ip_masq: bool,
    mtu: Option<u32>,
    hairpin: bool,
    promisc: bool,
    enable_dad: bool,
    mac: Option<[u8; 6]>,
    /// Whether there is an IPAM section (layer 3) or not (layer 2).
    layer3: bool,
    dns: Value,
}

impl Conf {
    fn load(config: &Value, cni_args: &str) -> Result<Conf, String> {
        let flag = |key: &str| -> Result<bool, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(value)) => Ok(*value),
                Some(other) => Err(format!(
                    "failed to load netconf: json: cannot unmarshal {} into Go struct field NetConf.{key} of type bool",
                    json_kind(other)
                )),
            }
        };
        let integer = |key: &str| -> Result<i64, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(0),
                Some(value) => value.as_i64().ok_or_else(|| {
                    format!(
                        "failed to load netconf: json: cannot unmarshal {} into Go struct field NetConf.{key} of type int",
                        json_kind(value)
                    )
                }),
            }
        };
        let text = |key: &str| config.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let vlan = integer("vlan")?;
        if !(0..=4094).contains(&vlan) {
            return Err(format!("invalid VLAN ID {vlan} (must be between 0 and 4094)"));
        }
        // The MAC: CNI_ARGS MAC=, then args.cni.mac, then runtimeConfig.mac, the last one given wins.
        let mut mac = None;
        for (_, value) in load_args(cni_args, &["MAC"])? {
            if !value.is_empty() {
                mac = Some(value.to_owned());
            }
        }
        for path in [["args", "cni", "mac"].as_slice(), ["runtimeConfig", "mac"].as_slice()] {
            let found = path.iter().try_fold(config, |value, key| value.get(key)).and_then(Value::as_str);
            if let Some(found) = found.filter(|m| !m.is_empty()) {
                mac = Some(found.to_owned());
            }
        }
        let mac = mac
            .map(|text| {
                parse_mac(&text).ok_or_else(|| format!("failed to make veth pair: address {text}: invalid MAC address"))
            })
            .transpose()?;
        let bridge = Some(text("bridge")).filter(|name| !name.is_empty()).unwrap_or_else(|| DEFAULT_BRIDGE.to_owned());
        let is_default_gateway = flag("isDefaultGateway")?;
        let mtu = integer("mtu")?;
        let ipam_type = config.get("ipam").and_then(|ipam| ipam.get("type")).and_then(Value::as_str).unwrap_or("");
        let mut dns = Map::new();
        if let Some(given) = config.get("dns").and_then(Value::as_object) {
            for key in ["nameservers", "domain", "search", "options"] {
                match given.get(key) {
                    Some(Value::String(s)) if !s.is_empty() => {
                        dns.insert(key.into(), json!(s));
                    }
                    Some(Value::Array(list)) if !list.is_empty() => {
                        dns.insert(key.into(), Value::Array(list.clone()));
                    }
                    _ => {}
                }
            }
        }
        Ok(Conf {
            network: text("name"),
            cni_version: text("cniVersion"),
            bridge,
            is_gateway: flag("isGateway")? || is_default_gateway,
            is_default_gateway,
            force_address: flag("forceAddress")?,
            ip_masq: flag("ipMasq")?,
            mtu: u32::try_from(mtu).ok().filter(|mtu| *mtu > 0),
            hairpin: flag("hairpinMode")?,
            promisc: flag("promiscMode")?,
            enable_dad: flag("enabledad")?,
            mac,
            layer3: !ipam_type.is_empty(),
            dns: Value::Object(dns),
        })
    }
}

/// A 6-byte MAC in the notations Go's `net.ParseMAC` reads: `aa:bb:cc:dd:ee:ff`, `aa-bb-...`,
/// `aabb.ccdd.eeff`.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let hex: Vec<&str> = if text.len() == 17 && (text.contains(':') || text.contains('-')) {
        let separator = if text.contains(':') { ':' } else { '-' };
        text.split(separator).collect()
    } else if text.len() == 14 && text.matches('.').count() == 2 {
        text.split('.').flat_map(|group| [group.get(..2).unwrap_or("x"), group.get(2..).unwrap_or("x")]).collect()
    } else {
        return None;
    };
    if hex.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (slot, byte) in mac.iter_mut().zip(hex) {
        if byte.len() != 2 {
            return None;
        }
        *slot = u8::from_str_radix(byte, 16).ok()?;
    }
    Some(mac)
}

/// Writes a sysctl below /proc/sys as the plugins' `sysctl.Sysctl` does (the calling thread's namespace for
/// `net/...`).
fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{}", path.trim_start_matches('/')), value)
}

fn read_sysctl(path: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/sys/{path}"))?.trim_end_matches('\n').to_owned())
}

/// One address of the IPAM result, as the bridge applies it.
#[derive(Debug, Clone, Copy)]
struct Address {
    ip: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone)]
struct RouteEntry {
    destination: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
}

/// The addresses and routes of a result (IPAM's, or the previous result at CHECK).
fn addresses_and_routes(result: &Value) -> Result<(Vec<Address>, Vec<RouteEntry>), String> {
    let mut addresses = Vec::new();
    for ip in result.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let text = ip.get("address").and_then(Value::as_str).unwrap_or("");
        let (address, prefix) =
            parse_cidr(text).ok_or_else(|| format!("invalid address {text:?} in the IPAM result"))?;
        let gateway = ip.get("gateway").and_then(Value::as_str).and_then(|gw| gw.parse().ok());
        addresses.push(Address { ip: address, prefix, gateway });
    }
    let mut routes = Vec::new();
    for route in result.get("routes").and_then(Value::as_array).into_iter().flatten() {
        let text = route.get("dst").and_then(Value::as_str).unwrap_or("");
        let (destination, prefix) =
            parse_cidr(text).ok_or_else(|| format!("invalid route {text:?} in the IPAM result"))?;
        let gateway = route.get("gw").and_then(Value::as_str).and_then(|gw| gw.parse().ok());
        routes.push(RouteEntry { destination: network(destination, prefix), prefix, gateway });
    }
    Ok((addresses, routes))
}

/// A route as Go's `%v` prints the plugins' `types.Route`: `{Dst:{IP:10.1.0.0 Mask:ffff0000} GW:<nil>}`.
fn go_route(route: &RouteEntry) -> String {
    let (bits, width) = if route.destination.is_ipv4() { (32u32, 8) } else { (128, 32) };
    let mask = u128::MAX.checked_shl(bits - u32::from(route.prefix)).unwrap_or(0) & (u128::MAX >> (128 - bits));
    let gateway = route.gateway.map_or_else(|| "<nil>".to_owned(), |gw| gw.to_string());
    format!("{{Dst:{{IP:{} Mask:{mask:0width$x}}} GW:{gateway}}}", route.destination)
}

/// `ip` with the bits past `prefix` cleared.
fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// The subnet's first address: the gateway the binary assumes (`calcGatewayIP`).
fn first_address(ip: IpAddr, prefix: u8) -> IpAddr {
    match network(ip, prefix) {
        IpAddr::V4(v4) => IpAddr::V4(u32::from(v4).wrapping_add(1).into()),
        IpAddr::V6(v6) => IpAddr::V6(u128::from(v6).wrapping_add(1).into()),
    }
}

fn unspecified(v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) }
}

/// Go's `net.IP.IsGlobalUnicast`.
fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_loopback() || v4.is_multicast() || v4.is_link_local() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

fn add(invocation: &Invocation<'_>, conf: &Conf, config: &Value) -> Result<Value, PluginError> {
    if !prints_results_for(&conf.cni_version) {
        return Err(failed(
            CODE_INCOMPATIBLE_VERSION,
            format!("the native bridge prints no result for cniVersion {:?}", conf.cni_version),
        ));
    }
    if conf.hairpin && conf.promisc {
        return Err(internal("cannot set hairpin mode and promiscuous mode at the same time."));
    }
    let mut host = Netlink::open().map_err(|err| internal(format!("open a netlink socket: {err}")))?;
    let bridge = ensure_bridge(&mut host, conf)
        .map_err(|err| internal(format!("failed to create bridge {:?}: {err}", conf.bridge)))?;
    // The host's namespace, for the veth's peer: the calling thread's.
    let host_netns = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|err| internal(format!("failed to open the host's netns: {err}")))?;
    let (container_link, host_veth_name) =
        netns::within(invocation.netns, || make_veth(invocation.ifname, conf.mtu, conf.mac, host_netns.as_fd()))
            .map_err(|err| internal(err.to_string()))?
            .map_err(internal)?;
    let host_veth = connect_host_veth(&mut host, &host_veth_name, &bridge, conf.hairpin).map_err(internal)?;

    let mut interfaces = vec![
        json!({"name": conf.bridge, "mac": bridge.mac.map(format_mac).unwrap_or_default()}),
        json!({"name": host_veth.name, "mac": host_veth.mac.map(format_mac).unwrap_or_default()}),
        json!({"name": invocation.ifname, "mac": container_link.mac.map(format_mac).unwrap_or_default(), "sandbox": invocation.netns}),
    ];
    let mut result_ips = Vec::new();
    let mut result_routes = Vec::new();
    if conf.layer3 {
        let ipam_result = host_local::run(invocation, config)?.unwrap_or(Value::Null);
        let mut layer3 = || -> Result<(Vec<Address>, Vec<RouteEntry>), PluginError> {
            let (mut addresses, mut routes) = addresses_and_routes(&ipam_result).map_err(internal)?;
            if addresses.is_empty() {
                return Err(internal("IPAM plugin returned missing IP config"));
            }
            let gateways = calc_gateways(conf, &mut addresses, &mut routes);
            let ifname = invocation.ifname;
            netns::within(invocation.netns, || configure_pod_interface(ifname, conf.enable_dad, &addresses, &routes))
                .map_err(|err| internal(err.to_string()))?
                .map_err(internal)?;
            wait_for_port(&mut host, &host_veth.name).map_err(internal)?;
            if conf.is_gateway {
                for gateway in &gateways {
                    ensure_address(&mut host, &bridge, gateway.0, gateway.1, conf.force_address)
                        .map_err(|err| internal(format!("failed to set bridge addr: {err}")))?;
                }
                for v6 in [false, true] {
                    if gateways.iter().any(|gw| gw.0.is_ipv6() == v6) {
                        enable_forwarding(v6).map_err(|err| internal(format!("failed to enable forwarding: {err}")))?;
                    }
                }
            }
            if conf.ip_masq {
                let masqueraded: Vec<Masqueraded> =
                    addresses.iter().map(|a| Masqueraded { ip: a.ip, prefix: a.prefix }).collect();
                let chain = iptables::chain_name(&conf.network, invocation.container_id);
                let comment = iptables::comment(&conf.network, invocation.container_id);
                iptables::set_up(&masqueraded, &chain, &comment).map_err(internal)?;
            }
            Ok((addresses, routes))
        };
        match layer3() {
            Ok((addresses, routes)) => {
                result_ips = addresses;
                result_routes = routes;
            }
            Err(err) => {
                // As the binary does: the addresses go back; the links stay for the runtime's DEL.
                let release = Invocation { command: Command::Del, ..*invocation };
                let _ = host_local::run(&release, config);
                return Err(err);
            }
        }
    } else {
        let ifname = invocation.ifname;
        netns::within(invocation.netns, || -> Result<(), String> {
            let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
            let link = pod
                .link(ifname)
                .map_err(|err| format!("failed to retrieve link: {}", go_text(&err)))?
                .ok_or("failed to retrieve link: Link not found")?;
            pod.set_up(link.index).map_err(|err| format!("failed to set {ifname:?} up: {}", go_text(&err)))
        })
        .map_err(|err| internal(err.to_string()))?
        .map_err(internal)?;
    }
    // The bridge's MAC may have changed when the port joined or the address came: read again.
    let bridge_now = host
        .link(&conf.bridge)
        .map_err(|err| internal(format!("could not lookup {:?}: {}", conf.bridge, go_text(&err))))?
        .ok_or_else(|| internal(format!("could not lookup {:?}: Link not found", conf.bridge)))?;
    interfaces[0]["mac"] = json!(bridge_now.mac.map(format_mac).unwrap_or_default());
    Ok(result_json(&conf.cni_version, interfaces, &result_ips, &result_routes, &conf.dns))
}

/// The result in the shape of `cni_version` (1.0.0, or 0.3.x/0.4.0 with `version` in each address).
fn result_json(
    cni_version: &str,
    interfaces: Vec<Value>,
    addresses: &[Address],
    routes: &[RouteEntry],
    dns: &Value,
) -> Value {
    let old_shape = cni_version != "1.0.0";
    let mut result = Map::new();
    result.insert("cniVersion".into(), json!(cni_version));
    result.insert("interfaces".into(), Value::Array(interfaces));
    if !addresses.is_empty() {
        let ips = addresses
            .iter()
            .map(|address| {
                let mut ip = Map::new();
                if old_shape {
                    ip.insert("version".into(), json!(if address.ip.is_ipv4() { "4" } else { "6" }));
                }
                ip.insert("interface".into(), json!(2));
                ip.insert("address".into(), json!(format!("{}/{}", address.ip, address.prefix)));
                if let Some(gateway) = address.gateway {
                    ip.insert("gateway".into(), json!(gateway.to_string()));
                }
                Value::Object(ip)
            })
            .collect();
        result.insert("ips".into(), Value::Array(ips));
    }
    if !routes.is_empty() {
        let routes = routes
            .iter()
            .map(|route| {
                let mut entry = Map::new();
                entry.insert("dst".into(), json!(format!("{}/{}", route.destination, route.prefix)));
                if let Some(gateway) = route.gateway {
                    entry.insert("gw".into(), json!(gateway.to_string()));
                }
                Value::Object(entry)
            })
            .collect();
        result.insert("routes".into(), Value::Array(routes));
    }
    result.insert("dns".into(), dns.clone());
    Value::Object(result)
}

/// The binary's `ensureBridge`: create unless present, check it is a bridge, `accept_ra` 0, up. Returns the
/// bridge as it is before any port joins (its MAC then is the one pinned later).
fn ensure_bridge(host: &mut Netlink, conf: &Conf) -> Result<Link, String> {
    let name = &conf.bridge;
    match host.add_bridge(name, conf.mtu, false) {
        Ok(()) => {}
        Err(err) if err.errno() == Some(libc::EEXIST) => {}
        Err(err) => return Err(format!("could not add {name:?}: {}", go_text(&err))),
    }
    let lookup = |host: &mut Netlink| -> Result<Link, String> {
        host.link(name)
            .map_err(|err| format!("could not lookup {name:?}: {}", go_text(&err)))?
            .ok_or_else(|| format!("could not lookup {name:?}: Link not found"))
    };
    if conf.promisc {
        let link = lookup(host)?;
        host.set_promisc(link.index)
            .map_err(|err| format!("could not set promiscuous mode on {name:?}: {}", go_text(&err)))?;
    }
    let bridge = lookup(host)?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(format!("{name:?} already exists but is not a bridge"));
    }
    let _ = write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    host.set_up(bridge.index).map_err(|err| go_text(&err))?;
    Ok(bridge)
}

/// In the pod's namespace: the veth pair with a random free peer name in the host's namespace (`makeVeth`,
/// ten tries), and the pod's end re-read for its MAC. Returns the pod's link and the peer's name.
fn make_veth(
    ifname: &str,
    mtu: Option<u32>,
    mac: Option<[u8; 6]>,
    host_netns: std::os::fd::BorrowedFd<'_>,
) -> Result<(Link, String), String> {
    let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
    for _ in 0..10 {
        let peer = random_veth_name()?;
        match pod.add_veth(ifname, mtu, mac, &peer, host_netns) {
            Ok(()) => {
                let link = match pod.link(ifname) {
                    Ok(Some(link)) => link,
                    Ok(None) => return Err(format!("failed to make veth pair: {ifname} vanished")),
                    Err(err) => return Err(go_text(&err)),
                };
                return Ok((link, peer));
            }
            Err(err) if err.errno() == Some(libc::EEXIST) => {
                // Like the binary, a taken peer name is retried only when it shows in this namespace.
                if matches!(pod.link(&peer), Ok(Some(_))) {
                    continue;
                }
                return Err(format!("container veth name provided ({ifname}) already exists"));
            }
            Err(err) => return Err(format!("failed to make veth pair: {}", go_text(&err))),
        }
    }
    Err("failed to find a unique veth name".into())
}

/// `veth` and 8 random hex digits, as `ip.RandomVethName`.
fn random_veth_name() -> Result<String, String> {
    let mut entropy = [0u8; 4];
    getrandom::fill(&mut entropy).map_err(|err| format!("failed to generate random veth name: {err}"))?;
    Ok(format!("veth{}", entropy.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// In the host's namespace: the peer up with `accept_ra` 0, attached to the bridge, hairpin as configured.
fn connect_host_veth(host: &mut Netlink, name: &str, bridge: &Link, hairpin: bool) -> Result<Link, String> {
    let link = host
        .link(name)
        .map_err(|err| format!("failed to lookup {name:?}: {}", go_text(&err)))?
        .ok_or_else(|| format!("failed to lookup {name:?}: Link not found"))?;
    host.set_up(link.index).map_err(|err| format!("failed to set {name:?} up: {}", go_text(&err)))?;
    let _ = write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    host.set_master(link.index, bridge.index)
        .map_err(|err| format!("failed to connect {name:?} to bridge {}: {}", bridge.name, go_text(&err)))?;
    host.set_hairpin(link.index, hairpin)
        .map_err(|err| format!("failed to setup hairpin mode for {name}: {}", go_text(&err)))?;
    // Re-read: the MAC reported is the one the link has in this namespace.
    host.link(name)
        .map_err(|err| format!("failed to lookup {name:?}: {}", go_text(&err)))?
        .ok_or_else(|| format!("failed to lookup {name:?}: Link not found"))
}

/// The binary's `calcGateways`: every address gets the gateway the configuration implies, a default route
/// per family is added with `isDefaultGateway`; returns the bridge addresses (gateway with the address's
/// prefix) to ensure with `isGateway`.
fn calc_gateways(conf: &Conf, addresses: &mut [Address], routes: &mut Vec<RouteEntry>) -> Vec<(IpAddr, u8)> {
    let mut gateways = Vec::new();
    let mut default_found = [false, false];
    for address in addresses.iter_mut() {
        let v6 = address.ip.is_ipv6();
        if address.gateway.is_none() && conf.is_gateway {
            address.gateway = Some(first_address(address.ip, address.prefix));
        }
        if conf.is_default_gateway && !default_found[usize::from(v6)] {
            let has_default = routes
                .iter()
                .any(|route| route.gateway.is_some() && route.prefix == 0 && route.destination.is_ipv6() == v6);
            if !has_default {
                routes.push(RouteEntry { destination: unspecified(v6), prefix: 0, gateway: address.gateway });
            }
            default_found[usize::from(v6)] = true;
        }
        if let Some(gateway) = address.gateway.filter(|_| conf.is_gateway) {
            gateways.push((gateway, address.prefix));
        }
    }
    gateways
}

/// In the pod's namespace: DAD and ARP sysctls, then `ipam.ConfigureIface`: IPv6 enabled when needed, the
/// addresses, the link up, IPv6 addresses settled, the routes (through the family's first gateway when a
/// route names none).
fn configure_pod_interface(
    ifname: &str,
    enable_dad: bool,
    addresses: &[Address],
    routes: &[RouteEntry],
) -> Result<(), String> {
    if enable_dad {
        let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
        let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
    } else {
        let _ = write_sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
    }
    let _ = write_sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
    let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
    let link = pod
        .link(ifname)
        .map_err(|err| format!("failed to lookup {ifname:?}: {}", go_text(&err)))?
        .ok_or_else(|| format!("failed to lookup {ifname:?}: Link not found"))?;
    let mut ipv6_enabled = false;
    let (mut v4_gateway, mut v6_gateway) = (None, None);
    for address in addresses {
        if !ipv6_enabled && address.ip.is_ipv6() {
            for name in ["lo", ifname] {
                let key = format!("net/ipv6/conf/{name}/disable_ipv6");
                match read_sysctl(&key) {
                    Ok(value) if value == "0" => {}
                    Ok(value) => write_sysctl(&key, "0").map_err(|err| {
                        format!("failed to enable IPv6 for interface {name:?} ({key}={value}): {err}")
                    })?,
                    Err(_) => {}
                }
            }
            ipv6_enabled = true;
        }
        pod.add_address(link.index, address.ip, address.prefix).map_err(|err| {
            format!("failed to add IP addr {}/{} to {ifname:?}: {}", address.ip, address.prefix, go_text(&err))
        })?;
        let slot = if address.gateway.is_some_and(|gw| gw.is_ipv4()) { &mut v4_gateway } else { &mut v6_gateway };
        if slot.is_none() {
            *slot = address.gateway;
        }
    }
    pod.set_up(link.index).map_err(|err| format!("failed to set {ifname:?} UP: {}", go_text(&err)))?;
    if v6_gateway.is_some() {
        settle_addresses(ifname);
    }
    for route in routes {
        let gateway = route.gateway.or(if route.destination.is_ipv4() { v4_gateway } else { v6_gateway });
        pod.add_route(route.destination, route.prefix, gateway, link.index).map_err(|err| {
            let via = gateway.map_or_else(|| "<nil>".to_owned(), |gw| gw.to_string());
            format!(
                "failed to add route '{}/{} via {via} dev {ifname}': {}",
                route.destination,
                route.prefix,
                go_text(&err)
            )
        })?;
    }
    Ok(())
}

/// `ip.SettleAddresses(ifname, 10)`: waits while an address of the link is tentative or failed DAD, read from
/// `/proc/thread-self/net/if_inet6` (the calling thread's namespace). Like the binary, gives up silently.
fn settle_addresses(ifname: &str) {
    const TENTATIVE_OR_DAD_FAILED: u32 = 0x40 | 0x08;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let unsettled = std::fs::read_to_string("/proc/thread-self/net/if_inet6").is_ok_and(|table| {
            table.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() == 6
                    && fields[5] == ifname
                    && u32::from_str_radix(fields[4], 16).is_ok_and(|flags| flags & TENTATIVE_OR_DAD_FAILED != 0)
            })
        });
        if !unsettled || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bridge port must be operationally up before the pod is reported ready. The kernel sets that state a
/// moment after the link came up (its link watch runs deferred), usually within a millisecond: it is polled
/// with growing pauses from 1 ms, up to 3 s in all (the binary polls at 0, 50, 500, 1000 and 1000 ms, so a
/// port not up at once costs it 50 ms).
fn wait_for_port(host: &mut Netlink, name: &str) -> Result<(), String> {
    let mut pause = Duration::ZERO;
    let mut waited = Duration::ZERO;
    loop {
        std::thread::sleep(pause);
        waited += pause;
        let link = host.link(name).map_err(|err| go_text(&err))?.ok_or("Link not found")?;
        if link.oper_up {
            return Ok(());
        }
        if waited >= Duration::from_secs(3) {
            return Err("bridge port in error state: down".into());
        }
        pause = (pause * 2).clamp(Duration::from_millis(1), Duration::from_millis(500));
    }
}

/// The binary's `ensureAddr`: the gateway address on the bridge unless there; an IPv4 address (or an
/// overlapping IPv6 one) that differs is an error, or replaced with `forceAddress`; then the bridge's MAC is
/// pinned to what it was before the port joined, so it does not follow its ports.
fn ensure_address(host: &mut Netlink, bridge: &Link, ip: IpAddr, prefix: u8, force: bool) -> Result<(), String> {
    let wanted = format!("{ip}/{prefix}");
    let present =
        host.addresses(bridge.index).map_err(|err| format!("could not get list of IP addresses: {}", go_text(&err)))?;
    for address in present.iter().filter(|a| a.ip.is_ipv6() == ip.is_ipv6()) {
        if format!("{}/{}", address.ip, address.prefix) == wanted {
            return Ok(());
        }
        let overlaps = network(address.ip, address.prefix) == network(ip, address.prefix)
            || network(ip, prefix) == network(address.ip, prefix);
        if ip.is_ipv4() || overlaps {
            if force {
                host.delete_address(bridge.index, address.ip, address.prefix)
                    .map_err(|err| format!("could not remove IP address from {:?}: {}", bridge.name, go_text(&err)))?;
            } else {
                return Err(format!("{:?} already has an IP address different from {wanted}", bridge.name));
            }
        }
    }
    match host.add_address(bridge.index, ip, prefix) {
        Ok(()) => {}
        Err(err) if err.errno() == Some(libc::EEXIST) => {}
        Err(err) => return Err(format!("could not add IP address to {:?}: {}", bridge.name, go_text(&err))),
    }
    if let Some(mac) = bridge.mac {
        host.set_mac(bridge.index, mac).map_err(|err| format!("could not set bridge's mac: {}", go_text(&err)))?;
    }
    Ok(())
}

/// `ip_forward` (IPv4) or `conf/all/forwarding` (IPv6) to 1 unless it is already.
fn enable_forwarding(v6: bool) -> std::io::Result<()> {
    let key = if v6 { "net/ipv6/conf/all/forwarding" } else { "net/ipv4/ip_forward" };
    if read_sysctl(key)? == "1" {
        return Ok(());
    }
    write_sysctl(key, "1")
}

/// The pod's interface as DEL finds it: its index and its global unicast addresses with their prefixes.
type PodLink = (u32, Vec<(IpAddr, u8)>);

fn del(invocation: &Invocation<'_>, conf: &Conf, config: &Value) -> Result<(), PluginError> {
    let release = || if conf.layer3 { host_local::run(invocation, config).map(|_| ()) } else { Ok(()) };
    if invocation.netns.is_empty() {
        return release();
    }
    let ifname = invocation.ifname;
    let found = netns::within(invocation.netns, || -> Result<Option<PodLink>, String> {
        let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
        let Some(link) = pod.link(ifname).map_err(|err| format!("failed to lookup {ifname:?}: {}", go_text(&err)))?
        else {
            return Ok(None);
        };
        let addresses = pod
            .addresses(link.index)
            .map_err(|err| format!("failed to get IP addresses for {ifname:?}: {}", go_text(&err)))?;
        let global = addresses.into_iter().filter(|a| is_global_unicast(a.ip)).map(|a| (a.ip, a.prefix)).collect();
        Ok(Some((link.index, global)))
    });
    let (index, removed) = match found {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return release(),
        Ok(Err(err)) => return Err(internal(err)),
        Err(Unusable::Missing(_)) => return release(),
        Err(err) => return Err(internal(err.to_string())),
    };
    let masqueraded = conf.layer3 && conf.ip_masq && !removed.is_empty();
    // The link and the masquerading rules go at once: on the legacy backend, the iptables-restore that
    // deletes the rules waits for an RCU grace period when it exits (10-20 ms on a node), and the link's
    // deletion overlaps it (on nf_tables the rules go over a socket kept open, without a wait; the link's
    // deletion returns as soon as the kernel unlisted it). The errors are reported in the binary's order:
    // link, address, rules.
    std::thread::scope(|scope| {
        let rules = masqueraded.then(|| {
            scope.spawn(|| {
                let addresses: Vec<Masqueraded> =
                    removed.iter().map(|&(ip, prefix)| Masqueraded { ip, prefix }).collect();
                let chain = iptables::chain_name(&conf.network, invocation.container_id);
                let comment = iptables::comment(&conf.network, invocation.container_id);
                iptables::tear_down(&addresses, &chain, &comment)
            })
        });
        let deleted = netns::within(invocation.netns, || -> Result<(), String> {
            Netlink::delete_link_until_unlisted(index)
                .map_err(|err| format!("failed to delete {ifname:?}: {}", go_text(&err)))
        });
        let rules = rules.map(|rules| rules.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        match deleted {
            Ok(Ok(())) | Err(Unusable::Missing(_)) => {}
            Ok(Err(err)) => return Err(internal(err)),
            Err(err) => return Err(internal(err.to_string())),
        }
        release()?;
        rules.unwrap_or(Ok(())).map_err(internal)
    })
}

fn check(invocation: &Invocation<'_>, conf: &Conf, config: &Value) -> Result<(), PluginError> {
    // The namespace must open before anything else is checked.
    netns::within(invocation.netns, || ()).map_err(|err| internal(err.to_string()))?;
    if !conf.layer3 {
        // The binary asks the IPAM plugin to CHECK whatever its type, and an empty type is no plugin: a
        // layer-2 attachment never passes CHECK there. Kept so that both paths answer alike.
        return Err(internal("no plugin name provided"));
    }
    host_local::run(invocation, config)?;
    let previous =
        config.get("prevResult").filter(|p| p.is_object()).ok_or_else(|| internal("Required prevResult missing"))?;
    let interfaces = previous.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let field = |interface: &Value, key: &str| interface.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let bridge_entry = interfaces.iter().find(|i| field(i, "name") == conf.bridge);
    let pod_entry = interfaces.iter().find(|i| {
        field(i, "name") != conf.bridge
            && field(i, "name") == invocation.ifname
            && field(i, "sandbox") == invocation.netns
    });

    let mut host = Netlink::open().map_err(|err| internal(format!("open a netlink socket: {err}")))?;
    // The bridge.
    let bridge_name = bridge_entry.map(|i| field(i, "name")).unwrap_or_default();
    if bridge_name.is_empty() {
        return Err(internal("Interface name missing "));
    }
    if bridge_entry.is_some_and(|i| !field(i, "sandbox").is_empty()) {
        return Err(internal(format!("Interface {bridge_name} should not be in sandbox")));
    }
    let bridge = host
        .link(&bridge_name)
        .map_err(|err| internal(go_text(&err)))?
        .ok_or_else(|| internal(format!("Interface name {bridge_name} not found")))?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(internal(format!("Interface {bridge_name} does not have link type of bridge")));
    }
    let bridge_mac = bridge_entry.map(|i| field(i, "mac")).unwrap_or_default();
    if !bridge_mac.is_empty() && Some(bridge_mac.clone()) != bridge.mac.map(format_mac) {
        return Err(internal(format!("Bridge interface {bridge_name} Mac doesn't match: {bridge_mac}")));
    }
    if bridge.promisc != conf.promisc {
        return Err(internal(format!(
            "Bridge interface {bridge_name} configured Promisc Mode {} doesn't match current state: {} ",
            conf.promisc, bridge.promisc
        )));
    }
    let sandbox = pod_entry.map(|i| field(i, "sandbox")).unwrap_or_default();
    if invocation.netns != sandbox {
        return Err(internal(format!(
            "Sandbox in prevResult {sandbox} doesn't match configured netns: {}",
            invocation.netns
        )));
    }
    // The pod's interface.
    let pod_name = pod_entry.map(|i| field(i, "name")).unwrap_or_default();
    let pod_mac = pod_entry.map(|i| field(i, "mac")).unwrap_or_default();
    let (addresses, routes) = addresses_and_routes(previous).map_err(internal)?;
    let pod_link = netns::within(invocation.netns, || -> Result<Link, String> {
        if pod_name.is_empty() {
            return Err("Interface name missing ".into());
        }
        let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
        let link = pod
            .link(&pod_name)
            .map_err(|err| go_text(&err))?
            .ok_or_else(|| format!("Interface name {pod_name} not found"))?;
        if link.kind.as_deref() != Some("veth") {
            return Err(format!("Error: Container interface {pod_name} not of type veth"));
        }
        if link.peer_index.is_none() {
            return Err(format!("Unable to obtain veth peer index for veth {pod_name}"));
        }
        if !pod_mac.is_empty() && Some(pod_mac.clone()) != link.mac.map(format_mac) {
            return Err(format!(
                "Interface {pod_name} Mac {pod_mac} doesn't match container Mac: {}",
                link.mac.map(format_mac).unwrap_or_default()
            ));
        }
        Ok(link)
    })
    .map_err(|err| internal(err.to_string()))?
    .map_err(internal)?;
    // The host veth: the first other interface of the result that is a veth peered with the pod's interface and
    // attached to the bridge.
    let mut veth_found = false;
    for interface in interfaces.iter().filter(|i| field(i, "name") != bridge_name && field(i, "name") != pod_name) {
        let name = field(interface, "name");
        if name.is_empty() {
            return Err(internal("Interface name missing "));
        }
        let link = host
            .link(&name)
            .map_err(|err| internal(go_text(&err)))?
            .ok_or_else(|| internal(format!("Interface name {name} not found")))?;
        if !field(interface, "sandbox").is_empty() {
            return Err(internal(format!("Interface {name} should not be in sandbox")));
        }
        if link.kind.as_deref() != Some("veth") {
            continue;
        }
        if link.peer_index.is_none() {
            return Err(internal(format!("Unable to obtain veth peer index for veth {name}")));
        }
        if pod_link.peer_index != Some(link.index)
            || link.peer_index != Some(pod_link.index)
            || link.master != Some(bridge.index)
        {
            continue;
        }
        let mac = field(interface, "mac");
        if !mac.is_empty() && Some(mac.clone()) != link.mac.map(format_mac) {
            return Err(internal(format!("Interface {name} Mac doesn't match: {mac} not found")));
        }
        veth_found = true;
        break;
    }
    if !veth_found {
        return Err(internal(format!("CNI veth created for bridge {} was not found", conf.bridge)));
    }
    // The addresses and routes of the result, in the pod.
    let ifname = invocation.ifname;
    netns::within(invocation.netns, || -> Result<(), String> {
        let mut pod = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
        let link = pod.link(ifname).ok().flatten().ok_or_else(|| format!("Cannot find container link {ifname}"))?;
        let present = pod.addresses(link.index).map_err(|_| "Cannot obtain List of IP Addresses".to_owned())?;
        let table = pod.routes(link.index).map_err(|err| go_text(&err))?;
        for address in &addresses {
            if !present.iter().any(|p| p.ip == address.ip && p.prefix == address.prefix) {
                return Err(format!("Failed to match addr {}/{} on interface {ifname}", address.ip, address.prefix));
            }
            let subnet = network(address.ip, address.prefix);
            if !table.iter().any(|r| r.destination == subnet && r.prefix == address.prefix) {
                let gateway = address.gateway.map_or_else(|| "<nil>".to_owned(), |gw| gw.to_string());
                return Err(format!("Failed to find Gateway {gateway} for interface {ifname}"));
            }
        }
        for route in &routes {
            let found = table.iter().any(|r| {
                r.destination == route.destination
                    && r.prefix == route.prefix
                    && (route.prefix == 0 && route.gateway.is_none() || r.gateway == route.gateway)
            });
            if !found {
                return Err(format!("Expected Route {} not found in routing table", go_route(route)));
            }
        }
        Ok(())
    })
    .map_err(|err| internal(err.to_string()))?
    .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_print_as_go_prints_them() {
        let route = RouteEntry { destination: "10.99.0.0".parse().unwrap(), prefix: 16, gateway: None };
        assert_eq!(go_route(&route), "{Dst:{IP:10.99.0.0 Mask:ffff0000} GW:<nil>}");
        let route =
            RouteEntry { destination: "::".parse().unwrap(), prefix: 0, gateway: Some("fd00::1".parse().unwrap()) };
        assert_eq!(go_route(&route), "{Dst:{IP::: Mask:00000000000000000000000000000000} GW:fd00::1}");
    }

    #[test]
    fn macs_are_read_as_go_reads_them() {
        assert_eq!(parse_mac("0a:58:0a:58:00:05"), Some([0x0a, 0x58, 0x0a, 0x58, 0, 5]));
        assert_eq!(parse_mac("0A-58-0A-58-00-05"), Some([0x0a, 0x58, 0x0a, 0x58, 0, 5]));
        assert_eq!(parse_mac("0a58.0a58.0005"), Some([0x0a, 0x58, 0x0a, 0x58, 0, 5]));
        assert_eq!(parse_mac("0a:58:0a:58:00"), None);
        assert_eq!(parse_mac("zz:58:0a:58:00:05"), None);
    }

    #[test]
    fn gateways_and_the_default_route_follow_the_configuration() {
        let conf = Conf::load(
            &json!({"name": "n", "cniVersion": "1.0.0", "isDefaultGateway": true, "ipam": {"type": "host-local"}}),
            "",
        )
        .unwrap();
        assert!(conf.is_gateway && conf.layer3);
        let mut addresses = vec![
            Address { ip: "10.1.0.5".parse().unwrap(), prefix: 16, gateway: None },
            Address { ip: "fd00::5".parse().unwrap(), prefix: 64, gateway: Some("fd00::1".parse().unwrap()) },
        ];
        let mut routes =
            vec![RouteEntry { destination: unspecified(true), prefix: 0, gateway: Some("fd00::9".parse().unwrap()) }];
        let gateways = calc_gateways(&conf, &mut addresses, &mut routes);
        assert_eq!(addresses[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(gateways, [("10.1.0.1".parse().unwrap(), 16), ("fd00::1".parse().unwrap(), 64)]);
        // An IPv4 default route is added; the IPv6 one was in the IPAM result already.
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (routes[1].destination, routes[1].prefix, routes[1].gateway),
            (unspecified(false), 0, Some("10.1.0.1".parse().unwrap()))
        );
    }

    #[test]
    fn configurations_the_binary_refuses_are_refused() {
        let err = Conf::load(&json!({"isGateway": "yes"}), "").unwrap_err();
        assert!(err.contains("cannot unmarshal string into Go struct field NetConf.isGateway of type bool"), "{err}");
        assert!(Conf::load(&json!({"vlan": 5000}), "").unwrap_err().contains("invalid VLAN ID 5000"));
        assert!(Conf::load(&json!({}), "X=1").unwrap_err().contains("unknown args"));
        assert!(
            Conf::load(&json!({"runtimeConfig": {"mac": "nope"}}), "").unwrap_err().contains("invalid MAC address")
        );
        let conf = Conf::load(
            &json!({"args": {"cni": {"mac": "0a:00:00:00:00:01"}}}),
            "IgnoreUnknown=1;MAC=0a:00:00:00:00:02",
        )
        .unwrap();
        assert_eq!(conf.mac, Some([0x0a, 0, 0, 0, 0, 1]));
        assert_eq!(conf.bridge, DEFAULT_BRIDGE);
    }

    #[test]
    fn only_what_is_implemented_is_supported() {
        assert!(supports(&json!({"type": "bridge", "ipam": {"type": "host-local"}})));
        assert!(supports(&json!({"type": "bridge"})));
        assert!(!supports(&json!({"type": "bridge", "vlan": 3, "ipam": {"type": "host-local"}})));
        assert!(!supports(&json!({"type": "bridge", "macspoofchk": true})));
        assert!(!supports(&json!({"type": "bridge", "ipam": {"type": "dhcp"}})));
    }
}
