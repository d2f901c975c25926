//! `portmap` in process: a pod's hostPorts as the binary of containernetworking/plugins 1.1 forwards them
//! (`plugins/meta/portmap`), written to the nat table in one `iptables-restore` per address family instead
//! of the dozen or more `iptables` runs of the binary.
//!
//! The rules, per family of the pod's addresses (from the previous result: the first IPv4 and the first
//! IPv6 address on the pod's interface):
//!
//! ```text
//! CNI-HOSTPORT-SETMARK  -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
//! CNI-HOSTPORT-MASQ     -m mark --mark 0x2000/0x2000 -j MASQUERADE
//! POSTROUTING (first)   -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
//! PREROUTING, OUTPUT    -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
//! CNI-HOSTPORT-DNAT     -m comment --comment "dnat name: ..." -m multiport -p tcp --destination-ports 80,443 -j CNI-DN-<hash>
//! CNI-DN-<hash>, per mapping:
//!                       -p tcp --dport 80 [-d hostIP] -s <pod address>/<prefix> -j CNI-HOSTPORT-SETMARK (hairpin)
//!                       -p tcp --dport 80 [-d hostIP] -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK             (IPv4)
//!                       -p tcp --dport 80 [-d hostIP] -j DNAT --to-destination <pod address>:8080
//! ```
//!
//! The shared chains and rules are added only when missing (the mark bit is `markMasqBit`, 13 by default; an
//! `externalSetMarkChain` replaces the SETMARK and MASQ chains; `snat: false` leaves out the marking rules);
//! the pod's `CNI-DN-` chain is written whole. IPv4 with SNAT sets `route_localnet` on the host interface
//! that routes to the pod, so that 127.0.0.1 can be forwarded. After the rules, conntrack entries for the
//! UDP host ports are deleted (as the binary does; a failure is only logged), so traffic of a previous pod
//! on the same port is not held by a stale entry.
//!
//! DEL removes the pod's chain and its entry rules in both families (the shared chains stay); CHECK runs the
//! binary's checks with `iptables -C`, so its answers, quirks included, are the binary's.

use std::net::IpAddr;

use serde_json::Value;

use super::iptables::{self, chains, ensure_chain, exclusively, restore, save, save_quoted};
use super::netlink::Netlink;
use super::nftables;
use super::{CODE_INTERNAL, Invocation, failed, json_kind, parse_cidr};
use crate::error::PluginError;
use crate::exec::Command;

const TOP_LEVEL_DNAT: &str = "CNI-HOSTPORT-DNAT";
const SET_MARK: &str = "CNI-HOSTPORT-SETMARK";
const MARK_MASQ: &str = "CNI-HOSTPORT-MASQ";
const OLD_TOP_LEVEL_SNAT: &str = "CNI-HOSTPORT-SNAT";
const DEFAULT_MARK_BIT: i64 = 13;

pub fn run(invocation: &Invocation<'_>, config: &Value) -> Result<Option<Value>, PluginError> {
    let internal = |msg: String| failed(CODE_INTERNAL, msg);
    match invocation.command {
        Command::Add => {
            let conf = Conf::load(config, invocation.ifname)
                .map_err(|err| internal(format!("failed to parse config: {err}")))?;
            let previous = conf.previous.clone().ok_or_else(|| internal("must be called as chained plugin".into()))?;
            if conf.mappings.is_empty() {
                return Ok(Some(previous));
            }
            for address in [conf.v4, conf.v6].into_iter().flatten() {
                forward(&conf, invocation.container_id, address).map_err(internal)?;
                let udp_ports: Vec<u16> = conf
                    .mappings
                    .iter()
                    .filter(|m| m.protocol.eq_ignore_ascii_case("udp"))
                    .filter_map(|m| u16::try_from(m.host_port).ok())
                    .collect();
                // Informative only, as for the binary: the rules are in place either way.
                let stale = match udp_ports.is_empty() {
                    true => Ok(()),
                    false => super::conntrack::delete_udp_to_ports(address.0.is_ipv6(), &udp_ports),
                };
                if let Err(err) = stale {
                    tracing::info!(error = %err, ip = %address.0, "failed to delete stale UDP conntrack entries");
                }
            }
            Ok(Some(previous))
        }
        Command::Del => {
            let conf = Conf::load(config, invocation.ifname)
                .map_err(|err| internal(format!("failed to parse config: {err}")))?;
            if conf.mappings.is_empty() {
                return Ok(None);
            }
            unforward(&conf, invocation.container_id).map_err(internal)?;
            Ok(None)
        }
        Command::Check => {
            let conf = Conf::load(config, invocation.ifname).map_err(internal)?;
            if conf.previous.is_none() {
                return Err(internal("Required prevResult missing".into()));
            }
            if conf.mappings.is_empty() {
                return Ok(None);
            }
            for address in [conf.v4, conf.v6].into_iter().flatten() {
                check(&conf, invocation.container_id, address).map_err(internal)?;
            }
            Ok(None)
        }
    }
}

#[derive(Debug, Clone)]
struct Mapping {
    host_port: i64,
    container_port: i64,
    protocol: String,
    host_ip: String,
}

#[derive(Debug)]
struct Conf {
    network: String,
    previous: Option<Value>,
    snat: bool,
    conditions_v4: Vec<String>,
    conditions_v6: Vec<String>,
    mark_bit: i64,
    external_set_mark_chain: Option<String>,
    mappings: Vec<Mapping>,
    /// The pod's first IPv4 and IPv6 address on its interface, with the prefix length of the result.
    v4: Option<(IpAddr, u8)>,
    v6: Option<(IpAddr, u8)>,
}

impl Conf {
    fn load(config: &Value, ifname: &str) -> Result<Conf, String> {
        let parse_error = |key: &str, want: &str, value: &Value| {
            format!(
                "failed to parse network configuration: json: cannot unmarshal {} into Go struct field PortMapConf.{key} of type {want}",
                json_kind(value)
            )
        };
        let snat = match config.get("snat") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(value)) => *value,
            Some(other) => return Err(parse_error("snat", "bool", other)),
        };
        let strings = |key: &str| -> Result<Vec<String>, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| parse_error(key, "string", item)))
                    .collect(),
                Some(other) => Err(parse_error(key, "[]string", other)),
            }
        };
        let conditions_v4 = strings("conditionsV4")?;
        let conditions_v6 = strings("conditionsV6")?;
        let mark_bit = match config.get("markMasqBit") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().ok_or_else(|| parse_error("markMasqBit", "int", value))?),
        };
        let external_set_mark_chain = match config.get("externalSetMarkChain") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name.clone()),
            Some(other) => return Err(parse_error("externalSetMarkChain", "string", other)),
        };
        let mut mappings = Vec::new();
        let given = config.get("runtimeConfig").and_then(|r| r.get("portMappings"));
        for entry in given.and_then(Value::as_array).into_iter().flatten() {
            let number = |key: &str| -> Result<i64, String> {
                match entry.get(key) {
                    None | Some(Value::Null) => Ok(0),
                    Some(value) => value.as_i64().ok_or_else(|| parse_error(key, "int", value)),
                }
            };
            let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            mappings.push(Mapping {
                host_port: number("hostPort")?,
                container_port: number("containerPort")?,
                protocol: text("protocol"),
                host_ip: text("hostIP"),
            });
        }
        let previous = config.get("prevResult").filter(|p| p.is_object()).cloned();
        if mark_bit.is_some() && external_set_mark_chain.is_some() {
            return Err("Cannot specify externalSetMarkChain and markMasqBit".into());
        }
        let mark_bit = mark_bit.unwrap_or(DEFAULT_MARK_BIT);
        if !(0..=31).contains(&mark_bit) {
            return Err("MasqMarkBit must be between 0 and 31".into());
        }
        for mapping in &mappings {
            if mapping.container_port <= 0 {
                return Err(format!("Invalid container port number: {}", mapping.container_port));
            }
            if mapping.host_port <= 0 {
                return Err(format!("Invalid host port number: {}", mapping.host_port));
            }
        }
        let (mut v4, mut v6) = (None, None);
        if let Some(previous) = &previous {
            let interfaces = previous.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
            for ip in previous.get("ips").and_then(Value::as_array).into_iter().flatten() {
                let Some((address, prefix)) = ip.get("address").and_then(Value::as_str).and_then(parse_cidr) else {
                    continue;
                };
                let slot = if address.is_ipv4() { &mut v4 } else { &mut v6 };
                if slot.is_some() {
                    continue;
                }
                // An address of a known interface other than the pod's is skipped.
                if let Some(index) = ip.get("interface").and_then(Value::as_i64) {
                    let interface = usize::try_from(index).ok().and_then(|i| interfaces.get(i));
                    if let Some(interface) = interface {
                        let name = interface.get("name").and_then(Value::as_str).unwrap_or("");
                        let sandbox = interface.get("sandbox").and_then(Value::as_str).unwrap_or("");
                        if name != ifname || sandbox.is_empty() {
                            continue;
                        }
                    }
                }
                *slot = Some((address, prefix));
            }
        }
        Ok(Conf {
            network: config.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
            previous,
            snat,
            conditions_v4,
            conditions_v6,
            mark_bit,
            external_set_mark_chain,
            mappings,
            v4,
            v6,
        })
    }

    fn mark(&self) -> String {
        let value = 1u64 << self.mark_bit;
        format!("{value:#x}/{value:#x}")
    }

    fn set_mark_chain(&self) -> &str {
        self.external_set_mark_chain.as_deref().unwrap_or(SET_MARK)
    }
}

/// An iptables rule as the arguments after the chain name.
type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

/// A rule as one iptables-restore line after `-A <chain> `: arguments with spaces or quotes quoted.
fn restore_line(rule: &Rule) -> String {
    rule.iter()
        .map(|arg| if arg.is_empty() || arg.contains([' ', '"', '\'', '\\']) { save_quoted(arg) } else { arg.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pod's DNAT chain: its rules and the entry rules that jump to it from CNI-HOSTPORT-DNAT
/// (`fillDnatRules`).
fn dnat_rules(conf: &Conf, container_id: &str, address: (IpAddr, u8)) -> (Vec<Rule>, Vec<Rule>) {
    let v6 = address.0.is_ipv6();
    let mut comment = format!("dnat name: \"{}\" id: \"{}\"", conf.network, container_id);
    if comment.len() > 255 {
        let mut cut = 253;
        while !comment.is_char_boundary(cut) {
            cut -= 1;
        }
        comment.truncate(cut);
        comment.push_str("...");
    }
    // Host ports by protocol, protocols sorted, at most 15 ports per multiport rule.
    let mut protocols: Vec<&str> = Vec::new();
    for mapping in &conf.mappings {
        if !protocols.contains(&mapping.protocol.as_str()) {
            protocols.push(&mapping.protocol);
        }
    }
    protocols.sort_unstable();
    let conditions = if v6 { &conf.conditions_v6 } else { &conf.conditions_v4 };
    let mut entries = Vec::new();
    for protocol in protocols {
        let ports: Vec<String> =
            conf.mappings.iter().filter(|m| m.protocol == protocol).map(|m| m.host_port.to_string()).collect();
        for chunk in ports.chunks(15) {
            let mut entry = rule(&["-m", "comment", "--comment", &comment, "-m", "multiport", "-p", protocol]);
            entry.extend(["--destination-ports".to_owned(), chunk.join(",")]);
            entry.extend(conditions.iter().cloned());
            entries.push(entry);
        }
    }
    let container_net = format!("{}/{}", address.0, address.1);
    let destination = if v6 { format!("[{}]:", address.0) } else { format!("{}:", address.0) };
    let mut rules = Vec::new();
    for mapping in &conf.mappings {
        let mut base = rule(&["-p", &mapping.protocol, "--dport", &mapping.host_port.to_string()]);
        if !mapping.host_ip.is_empty() {
            // Go's net.ParseIP: an unparsable host IP counts as IPv6 and unspecified-ness is false.
            let host_ip: Option<IpAddr> = mapping.host_ip.parse().ok();
            let host_v6 = host_ip.is_none_or(|ip| ip.is_ipv6());
            if host_v6 != v6 {
                continue;
            }
            if !host_ip.is_some_and(|ip| ip.is_unspecified()) {
                base.extend(["-d".to_owned(), mapping.host_ip.clone()]);
            }
        }
        if conf.snat {
            let mut hairpin = base.clone();
            hairpin.extend(rule(&["-s", &container_net, "-j", conf.set_mark_chain()]));
            rules.push(hairpin);
            if !v6 {
                let mut localhost = base.clone();
                localhost.extend(rule(&["-s", "127.0.0.1", "-j", conf.set_mark_chain()]));
                rules.push(localhost);
            }
        }
        let mut dnat = base;
        dnat.extend(rule(&["-j", "DNAT", "--to-destination", &format!("{destination}{}", mapping.container_port)]));
        rules.push(dnat);
    }
    (rules, entries)
}

fn dnat_chain(conf: &Conf, container_id: &str) -> String {
    iptables::chain_name_with_prefix("DN-", &conf.network, container_id)
}

/// ADD for one family: one iptables-save, one iptables-restore (and, on a node's first pod, the shared
/// chains made with `-N`: declared in a batch, an existing chain would be emptied).
fn forward(conf: &Conf, container_id: &str, address: (IpAddr, u8)) -> Result<(), String> {
    exclusively(|| forward_locked(conf, container_id, address))
}

fn forward_locked(conf: &Conf, container_id: &str, address: (IpAddr, u8)) -> Result<(), String> {
    let v6 = address.0.is_ipv6();
    let saved = save(v6).map_err(|err| format!("failed to open iptables: {err}"))?;
    let existing = chains(&saved);
    let lines: Vec<&str> = saved.lines().collect();
    let has = |chain: &str, wanted: &[&str]| {
        lines.iter().any(|line| {
            line.strip_prefix("-A ")
                .and_then(|rest| rest.strip_prefix(chain))
                .is_some_and(|rest| rest.starts_with(' ') && wanted.iter().all(|part| rest.contains(part)))
        })
    };
    let mut declare = String::new();
    let mut body = String::new();
    let mark = conf.mark();
    if conf.snat {
        if conf.external_set_mark_chain.is_none() {
            if !existing.contains(&SET_MARK) {
                ensure_chain(v6, SET_MARK).map_err(|err| format!("unable to create chain {SET_MARK}: {err}"))?;
            }
            if !has(SET_MARK, &["--set-xmark", &mark]) {
                let set_mark = rule(&[
                    "-m",
                    "comment",
                    "--comment",
                    "CNI portfwd masquerade mark",
                    "-j",
                    "MARK",
                    "--set-xmark",
                    &mark,
                ]);
                body.push_str(&format!("-A {SET_MARK} {}\n", restore_line(&set_mark)));
            }
            if !existing.contains(&MARK_MASQ) {
                ensure_chain(v6, MARK_MASQ).map_err(|err| format!("unable to create chain {MARK_MASQ}: {err}"))?;
            }
            if !has(MARK_MASQ, &["--mark", &mark, "-j MASQUERADE"]) {
                body.push_str(&format!("-A {MARK_MASQ} -m mark --mark {mark} -j MASQUERADE\n"));
            }
            if !has("POSTROUTING", &["CNI portfwd requiring masquerade", &format!("-j {MARK_MASQ}")]) {
                body.push_str(&format!(
                    "-I POSTROUTING 1 -m comment --comment \"CNI portfwd requiring masquerade\" -j {MARK_MASQ}\n"
                ));
            }
        }
        if !v6 {
            enable_localnet_routing(address.0).map_err(|err| format!("unable to enable route_localnet: {err}"))?;
        }
    }
    if !existing.contains(&TOP_LEVEL_DNAT) {
        ensure_chain(v6, TOP_LEVEL_DNAT).map_err(|err| format!("failed to create top-level DNAT chain: {err}"))?;
    }
    for entry_chain in ["PREROUTING", "OUTPUT"] {
        if !has(entry_chain, &["--dst-type LOCAL", &format!("-j {TOP_LEVEL_DNAT}")]) {
            body.push_str(&format!("-A {entry_chain} -m addrtype --dst-type LOCAL -j {TOP_LEVEL_DNAT}\n"));
        }
    }
    // The pod's chain is written whole (declaring it creates it, or empties it), and its entry rules replace
    // any earlier ones.
    let chain = dnat_chain(conf, container_id);
    declare.push_str(&format!(":{chain} - [0:0]\n"));
    let (rules, entries) = dnat_rules(conf, container_id, address);
    let mut written: Vec<String> = Vec::new();
    for rule in &rules {
        let line = restore_line(rule);
        if !written.contains(&line) {
            body.push_str(&format!("-A {chain} {line}\n"));
            written.push(line);
        }
    }
    for line in lines.iter().filter(|line| is_jump(line, TOP_LEVEL_DNAT, &chain)) {
        body.push_str(&format!("-D {}\n", &line[3..]));
    }
    for entry in &entries {
        body.push_str(&format!("-A {TOP_LEVEL_DNAT} {} -j {chain}\n", restore_line(entry)));
    }
    restore(v6, &format!("*nat\n{declare}{body}COMMIT\n")).map_err(|err| format!("unable to setup DNAT: {err}"))
}

/// Whether iptables-save line `line` is a rule of `from` jumping to `to`.
fn is_jump(line: &str, from: &str, to: &str) -> bool {
    line.strip_prefix("-A ").and_then(|rest| rest.strip_prefix(from)).is_some_and(|rest| rest.starts_with(' '))
        && line.ends_with(&format!("-j {to}"))
}

/// `route_localnet` on the host interface that routes to the pod (`getRoutableHostIF`), so that traffic to
/// 127.0.0.1:hostPort can be forwarded to it.
fn enable_localnet_routing(pod_ip: IpAddr) -> Result<(), String> {
    let mut host = Netlink::open().map_err(|err| format!("open a netlink socket: {err}"))?;
    let Some(index) = host.route_get(pod_ip).ok().flatten() else { return Ok(()) };
    let Some(link) = host.link_by_index(index).ok().flatten() else { return Ok(()) };
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/route_localnet", link.name), "1")
        .map_err(|err| format!("open /proc/sys/net/ipv4/conf/{}/route_localnet: {err}", link.name))
}

/// DEL: the pod's chain and its entry rules, in each family whose iptables works; the chain of old
/// versions (`CNI-SN-`) too. With a previous result (the runtime passes the cached one), only the families
/// of the pod's addresses are read: the other cannot hold the pod's chain, and each family's read costs a
/// process.
fn unforward(conf: &Conf, container_id: &str) -> Result<(), String> {
    exclusively(|| unforward_locked(conf, container_id))
}

fn unforward_locked(conf: &Conf, container_id: &str) -> Result<(), String> {
    let dnat = dnat_chain(conf, container_id);
    let old_snat = iptables::chain_name_with_prefix("SN-", &conf.network, container_id);
    let families: Vec<bool> = match (conf.previous.is_some(), conf.v4, conf.v6) {
        (true, v4, v6) if v4.is_some() || v6.is_some() => [(false, v4.is_some()), (true, v6.is_some())]
            .into_iter()
            .filter_map(|(v6, present)| present.then_some(v6))
            .collect(),
        _ => vec![false, true],
    };
    if nftables::nft_backend() {
        // The same deletions through nf_tables (no process, no wait at its exit); both families' tables
        // are reachable there, so neither is skipped.
        for v6 in families {
            let ours = |rule: &nftables::Rule| {
                let target = if rule.chain == TOP_LEVEL_DNAT { &dnat } else { &old_snat };
                rule.jump.as_deref() == Some(target.as_str())
            };
            nftables::tear_down(v6, &[TOP_LEVEL_DNAT, OLD_TOP_LEVEL_SNAT], ours, &[&dnat, &old_snat])
                .map_err(|err| format!("could not teardown {} dnat: {err}", if v6 { "ipv6" } else { "ipv4" }))?;
        }
        return Ok(());
    }
    let mut usable = 0;
    for v6 in families {
        let Ok(saved) = save(v6) else { continue };
        usable += 1;
        let existing = chains(&saved);
        let mut batch = String::new();
        for (chain, from) in [(dnat.as_str(), TOP_LEVEL_DNAT), (old_snat.as_str(), OLD_TOP_LEVEL_SNAT)] {
            if !existing.contains(&chain) {
                continue;
            }
            batch.push_str(&format!("-F {chain}\n"));
            for line in saved.lines().filter(|line| is_jump(line, from, chain)) {
                batch.push_str(&format!("-D {}\n", &line[3..]));
            }
            batch.push_str(&format!("-X {chain}\n"));
        }
        if !batch.is_empty() {
            let family = if v6 { "ipv6" } else { "ipv4" };
            restore(v6, &format!("*nat\n{batch}COMMIT\n"))
                .map_err(|err| format!("could not teardown {family} dnat: {err}"))?;
        }
    }
    if usable == 0 {
        return Err("neither iptables nor ip6tables usable".into());
    }
    Ok(())
}

/// CHECK for one of the pod's addresses, as the binary checks: the chain and every rule, in both families'
/// tables (so an IPv4 pod's check fails in the IPv6 table, as the binary's does).
fn check(conf: &Conf, container_id: &str, address: (IpAddr, u8)) -> Result<(), String> {
    let chain = dnat_chain(conf, container_id);
    let (rules, entries) = dnat_rules(conf, container_id, address);
    let mut usable = 0;
    for v6 in [false, true] {
        let Ok(saved) = save(v6) else { continue };
        usable += 1;
        let family = if v6 { "ipv6" } else { "ipv4" };
        let fail = |why: String| format!("could not check {family} dnat: {why}");
        if !chains(&saved).contains(&chain.as_str()) {
            return Err(fail(format!("chain {chain} not found in iptables table nat")));
        }
        for rule in rules.iter().rev() {
            if !exists(v6, &chain, rule) {
                return Err(fail(format!("rule {} in chain {chain} not found in table nat", go_rules(&rules))));
            }
        }
        for entry in entries.iter().rev() {
            let mut jump = entry.clone();
            jump.extend(["-j".to_owned(), chain.clone()]);
            if !exists(v6, TOP_LEVEL_DNAT, &jump) {
                return Err(fail(format!(
                    "rule {} in chain {TOP_LEVEL_DNAT} not found in table nat",
                    go_rules(&entries)
                )));
            }
        }
    }
    if usable == 0 {
        return Err("neither iptables nor ip6tables usable".into());
    }
    Ok(())
}

fn exists(v6: bool, chain: &str, rule: &Rule) -> bool {
    let mut args = vec!["-t", "nat", "-C", chain];
    args.extend(rule.iter().map(String::as_str));
    iptables::run(v6, &args).is_ok()
}

/// Rules as Go's `%s` prints a `[][]string`: `[[-p tcp --dport 80] [...]]`.
fn go_rules(rules: &[Rule]) -> String {
    format!("[{}]", rules.iter().map(|rule| format!("[{}]", rule.join(" "))).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: Value) -> Conf {
        let mut config = json!({
            "name": "net",
            "prevResult": {
                "interfaces": [{"name": "br"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
                "ips": [{"interface": 2, "address": "10.1.0.5/16"}, {"interface": 2, "address": "fd00::5/64"}]
            },
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]}
        });
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        Conf::load(&config, "eth0").unwrap()
    }

    #[test]
    fn the_pods_addresses_come_from_its_interface() {
        let conf = conf(json!({}));
        assert_eq!(conf.v4, Some(("10.1.0.5".parse().unwrap(), 16)));
        assert_eq!(conf.v6, Some(("fd00::5".parse().unwrap(), 64)));
        assert_eq!(conf.mark(), "0x2000/0x2000");
        let other = Conf::load(&json!({"prevResult": {"interfaces": [{"name": "br"}], "ips": [{"interface": 0, "address": "10.1.0.1/16"}]}}), "eth0").unwrap();
        assert_eq!(other.v4, None);
    }

    #[test]
    fn rules_follow_the_binarys_layout() {
        let conf = conf(json!({}));
        let (rules, entries) = dnat_rules(&conf, "abc", conf.v4.unwrap());
        let lines: Vec<String> = rules.iter().map(restore_line).collect();
        assert_eq!(
            lines,
            [
                "-p tcp --dport 8080 -s 10.1.0.5/16 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8080 -j DNAT --to-destination 10.1.0.5:80",
                "-p udp --dport 5353 -d 127.0.0.1 -s 10.1.0.5/16 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 5353 -d 127.0.0.1 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 5353 -d 127.0.0.1 -j DNAT --to-destination 10.1.0.5:53",
            ]
        );
        assert_eq!(entries.len(), 2, "one multiport rule per protocol");
        assert_eq!(
            restore_line(&entries[0]),
            r#"-m comment --comment "dnat name: \"net\" id: \"abc\"" -m multiport -p tcp --destination-ports 8080"#
        );
        // The IPv6 address gets no localhost rule, and the IPv4 host IP's mapping is left out.
        let (rules, _) = dnat_rules(&conf, "abc", conf.v6.unwrap());
        let lines: Vec<String> = rules.iter().map(restore_line).collect();
        assert_eq!(
            lines,
            [
                "-p tcp --dport 8080 -s fd00::5/64 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 8080 -j DNAT --to-destination [fd00::5]:80"
            ]
        );
    }

    #[test]
    fn configurations_the_binary_refuses_are_refused() {
        let load = |config: Value| Conf::load(&config, "eth0").unwrap_err();
        assert_eq!(
            load(json!({"markMasqBit": 3, "externalSetMarkChain": "X"})),
            "Cannot specify externalSetMarkChain and markMasqBit"
        );
        assert_eq!(load(json!({"markMasqBit": 32})), "MasqMarkBit must be between 0 and 31");
        assert_eq!(
            load(json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 0}]}})),
            "Invalid container port number: 0"
        );
        assert_eq!(
            load(json!({"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 1}]}})),
            "Invalid host port number: 0"
        );
        assert!(load(json!({"snat": "yes"})).contains("cannot unmarshal string"));
    }
}
