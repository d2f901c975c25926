//! `host-local` IPAM in process: the same leases as the plugin binary, in the same directory format, under
//! the same lock, so the binary and this code can share a node.
//!
//! What the binary does, and so this code (containernetworking/plugins, `plugins/ipam/host-local`):
//! - The configuration is the calling plugin's whole network configuration; its `ipam` object gives the
//!   ranges: a list of range sets (`ranges`), each a list of ranges of one address family (`subnet`,
//!   optional `rangeStart`, `rangeEnd`, `gateway`), plus an old-style single range directly in `ipam`, and
//!   `runtimeConfig.ipRanges` before them. A range's gateway defaults to the subnet's address + 1, its start
//!   to the same address (the gateway is skipped when met), its end to the last address (IPv4: the one
//!   before the broadcast address). A /31, /32, /127 or /128 cannot be allocated from.
//! - ADD takes one address from each range set. A requested address (`CNI_ARGS` `IP=`, `args.cni.ips`,
//!   `runtimeConfig.ips`) is taken from the set that contains it; otherwise the search is round-robin: it
//!   starts after the address last reserved in that set (`last_reserved_ip.<set index>`), walks the set's
//!   ranges in order and wraps around once. A lease is the file `<dataDir>/<network>/<address>`, created
//!   exclusively, holding `<container id>\r\n<ifname>`. A container that already holds an address of a set
//!   is refused (no duplicate allocation). A failure releases what the ADD took.
//! - DEL removes every lease file whose content is the container's `<id>\r\n<ifname>` (or the bare id, as
//!   files of older versions are), in every set; CHECK succeeds when at least one exists.
//! - Every operation on a network's directory holds `flock` on its `lock` file.
//!
//! The result is the binary's for the configuration's `cniVersion` (0.3.0 to 1.0.0): `ips` (address with
//! the subnet's prefix length, gateway), `routes` as configured, `dns` from `resolvConf` when given.

use std::fmt;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::{CODE_INCOMPATIBLE_VERSION, CODE_INTERNAL, Invocation, failed, load_args, prints_results_for};
use crate::error::PluginError;
use crate::exec::Command;

/// Where leases live when the configuration names no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Between the container id and the interface name in a lease file.
const LINE_BREAK: &str = "\r\n";

/// Runs `host-local` for `invocation` with the configuration the binary would read on stdin: the ADD's
/// result, or nothing for DEL and CHECK.
pub fn run(invocation: &Invocation<'_>, config: &Value) -> Result<Option<Value>, PluginError> {
    let ipam = IpamConfig::load(config, invocation.cni_args).map_err(|msg| failed(CODE_INTERNAL, msg))?;
    let store = Store::open(&ipam).map_err(|err| failed(CODE_INTERNAL, err))?;
    match invocation.command {
        Command::Add => add(invocation, &ipam, &store).map(Some),
        Command::Del => {
            // Every set, releasing what can be released even after an error.
            let mut errors = Vec::new();
            for _ in &ipam.ranges {
                if let Err(err) = store.release(invocation.container_id, invocation.ifname) {
                    errors.push(err);
                }
            }
            if errors.is_empty() { Ok(None) } else { Err(failed(CODE_INTERNAL, errors.join(";"))) }
        }
        Command::Check => {
            if store.holds(invocation.container_id, invocation.ifname).map_err(|err| failed(CODE_INTERNAL, err))? {
                Ok(None)
            } else {
                Err(failed(
                    CODE_INTERNAL,
                    format!("host-local: Failed to find address added by container {}", invocation.container_id),
                ))
            }
        }
    }
}

fn add(invocation: &Invocation<'_>, ipam: &IpamConfig, store: &Store) -> Result<Value, PluginError> {
    if !prints_results_for(&ipam.cni_version) {
        return Err(failed(
            CODE_INCOMPATIBLE_VERSION,
            format!("the native host-local prints no result for cniVersion {:?}", ipam.cni_version),
        ));
    }
    let dns = match &ipam.resolv_conf {
        Some(path) => parse_resolv_conf(path).map_err(|err| failed(CODE_INTERNAL, err))?,
        None => Dns::default(),
    };
    let (id, ifname) = (invocation.container_id, invocation.ifname);
    let release_all = |taken: usize| {
        for _ in 0..taken {
            let _ = store.release(id, ifname);
        }
    };
    let mut requested = ipam.requested.clone();
    let mut ips = Vec::new();
    for (index, set) in ipam.ranges.iter().enumerate() {
        let wanted = requested.iter().position(|ip| set.contains(*ip)).map(|at| requested.remove(at));
        match store.allocate(set, index, id, ifname, wanted) {
            Ok(lease) => ips.push(lease),
            Err(err) => {
                release_all(ips.len());
                return Err(failed(CODE_INTERNAL, format!("failed to allocate for range {index}: {err}")));
            }
        }
    }
    if !requested.is_empty() {
        release_all(ips.len());
        let list: Vec<String> = requested.iter().map(ToString::to_string).collect();
        return Err(failed(CODE_INTERNAL, format!("failed to allocate all requested IPs: {}", list.join(" "))));
    }
    Ok(result_json(&ipam.cni_version, &ips, &ipam.routes, &dns))
}

/// One address taken: the address with its subnet's prefix length, and the subnet's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    address: IpAddr,
    prefix: u8,
    gateway: IpAddr,
}

/// The result as the binary prints it for `cni_version` (1.0.0, or the 0.3.x/0.4.0 shape with `version`).
fn result_json(cni_version: &str, ips: &[Lease], routes: &[Route], dns: &Dns) -> Value {
    let old_shape = cni_version != "1.0.0";
    let ips: Vec<Value> = ips
        .iter()
        .map(|lease| {
            let mut ip = Map::new();
            if old_shape {
                let family = if lease.address.is_ipv4() { "4" } else { "6" };
                ip.insert("version".into(), json!(family));
            }
            ip.insert("address".into(), json!(format!("{}/{}", lease.address, lease.prefix)));
            ip.insert("gateway".into(), json!(lease.gateway.to_string()));
            Value::Object(ip)
        })
        .collect();
    let mut result = Map::new();
    result.insert("cniVersion".into(), json!(cni_version));
    if !ips.is_empty() {
        result.insert("ips".into(), Value::Array(ips));
    }
    if !routes.is_empty() {
        let routes = routes
            .iter()
            .map(|route| {
                let mut value = Map::new();
                value.insert("dst".into(), json!(route.dst.to_string()));
                if let Some(gw) = route.gw {
                    value.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(value)
            })
            .collect();
        result.insert("routes".into(), Value::Array(routes));
    }
    result.insert("dns".into(), dns.to_json());
    Value::Object(result)
}

/// An address with a prefix length, kept as written (`10.1.0.5/16` stays so, as Go's `types.IPNet` keeps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    ip: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("invalid CIDR address: {text}");
        let (ip, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix > bits(ip) {
            return Err(invalid());
        }
        Ok(Cidr { ip: canonical(ip), prefix })
    }

    fn mask(&self) -> u128 {
        let host_bits = u32::from(bits(self.ip) - self.prefix);
        let all = if bits(self.ip) == 32 { u128::from(u32::MAX) } else { u128::MAX };
        all.checked_shl(host_bits).unwrap_or(0) & all
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.ip.is_ipv4() && number(ip) & self.mask() == number(self.ip) & self.mask()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn address(number: u128, ipv4: bool) -> IpAddr {
    if ipv4 { IpAddr::V4(Ipv4Addr::from(number as u32)) } else { IpAddr::V6(Ipv6Addr::from(number)) }
}

/// The next address (wrapping at the family's end, as the plugins' `ip.NextIP`).
fn next(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(1))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6).wrapping_add(1))),
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses (Go's `To4`).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map(canonical).map_err(|_| format!("invalid IP address: {text}"))
}

/// One range of a set, complete (the plugin's `Range` after `Canonicalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    subnet: Cidr,
    start: IpAddr,
    end: IpAddr,
    gateway: IpAddr,
}

impl Range {
    fn from_json(value: &Value) -> Result<Range, String> {
        let field = |name: &str| value.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let subnet = match field("subnet") {
            Some(text) => Cidr::parse(text)?,
            None => return Err("IP <nil> not v4 nor v6".into()),
        };
        if subnet.prefix > bits(subnet.ip) - 2 {
            return Err(format!("Network {subnet} too small to allocate from"));
        }
        // A gateway outside the subnet is accepted, as the plugins up to 1.1 accept it (later ones refuse it).
        let gateway = match field("gateway") {
            Some(text) => parse_ip(text)?,
            None => next(subnet.ip),
        };
        let mut range = Range { subnet, start: next(subnet.ip), end: last_address(&subnet), gateway };
        if let Some(text) = field("rangeStart") {
            let start = parse_ip(text)?;
            range.check_in(start, None, None)?;
            range.start = start;
        }
        if let Some(text) = field("rangeEnd") {
            let end = parse_ip(text)?;
            range.check_in(end, Some(range.start), None)?;
            range.end = end;
        }
        Ok(range)
    }

    /// The plugin's `IPInRange` with the bounds known so far.
    fn check_in(&self, ip: IpAddr, start: Option<IpAddr>, end: Option<IpAddr>) -> Result<(), String> {
        let subnet = self.subnet;
        if ip.is_ipv4() != subnet.ip.is_ipv4() {
            return Err(format!("IP {ip} is not the same protocol as subnet {subnet}"));
        }
        if !subnet.contains(ip) {
            return Err(format!("{ip} not in network {subnet}"));
        }
        if let Some(start) = start
            && number(ip) < number(start)
        {
            return Err(format!("{ip} is in network {subnet} but before start {start}"));
        }
        if let Some(end) = end
            && number(ip) > number(end)
        {
            return Err(format!("{ip} is in network {subnet} but after end {end}"));
        }
        Ok(())
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.check_in(ip, Some(self.start), Some(self.end)).is_ok()
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The last address of a subnet, or the one before it for IPv4 (the broadcast address).
fn last_address(subnet: &Cidr) -> IpAddr {
    let last = number(subnet.ip) | !subnet.mask() & if subnet.ip.is_ipv4() { u128::from(u32::MAX) } else { u128::MAX };
    let last = if subnet.ip.is_ipv4() { last - 1 } else { last };
    address(last, subnet.ip.is_ipv4())
}

/// Ranges of one family, one address of which each ADD takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RangeSet(Vec<Range>);

impl RangeSet {
    fn from_json(value: &Value) -> Result<RangeSet, String> {
        let ranges = value.as_array().ok_or("a range set must be a list of ranges")?;
        if ranges.is_empty() {
            return Err("empty range set".into());
        }
        let ranges = ranges.iter().map(Range::from_json).collect::<Result<Vec<_>, _>>()?;
        if ranges.iter().any(|r| r.start.is_ipv4() != ranges[0].start.is_ipv4()) {
            return Err("mixed address families".into());
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(format!("subnets {a} and {b} overlap"));
                }
            }
        }
        Ok(RangeSet(ranges))
    }

    fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|range| range.contains(ip))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&ranges.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    dst: Cidr,
    gw: Option<IpAddr>,
}

/// The `ipam` section with everything the binary derives from the rest of the configuration.
#[derive(Debug)]
struct IpamConfig {
    network: String,
    cni_version: String,
    ranges: Vec<RangeSet>,
    routes: Vec<Route>,
    data_dir: PathBuf,
    resolv_conf: Option<PathBuf>,
    /// Addresses asked for by `CNI_ARGS` `IP=`, `args.cni.ips` and `runtimeConfig.ips`, in that order.
    requested: Vec<IpAddr>,
}

impl IpamConfig {
    fn load(config: &Value, cni_args: &str) -> Result<IpamConfig, String> {
        let ipam = config.get("ipam").filter(|v| v.is_object()).ok_or("IPAM config missing 'ipam' key")?;
        let text = |value: &Value, name: &str| value.get(name).and_then(Value::as_str).unwrap_or("").to_owned();
        let mut requested = Vec::new();
        for (_, ip) in load_args(cni_args, &["IP"])? {
            requested.push(parse_ip(ip)?);
        }
        let listed = |value: Option<&Value>| -> Vec<String> {
            value
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for ip in listed(config.pointer("/args/cni/ips")) {
            requested.push(parse_ip(&ip)?);
        }
        for ip in listed(config.pointer("/runtimeConfig/ips")) {
            // `10.1.0.5/24` or `10.1.0.5`: the address is what counts.
            requested.push(parse_ip(ip.split('/').next().unwrap_or(""))?);
        }

        let mut sets: Vec<&Value> = Vec::new();
        if let Some(runtime) = config.pointer("/runtimeConfig/ipRanges").and_then(Value::as_array) {
            sets.extend(runtime);
        }
        let old_style = ipam.get("subnet").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        let old_style_set = Value::Array(vec![ipam.clone()]);
        if old_style {
            sets.push(&old_style_set);
        }
        if let Some(listed) = ipam.get("ranges").and_then(Value::as_array) {
            sets.extend(listed);
        }
        if sets.is_empty() {
            return Err("no IP ranges specified".into());
        }
        let ranges = sets
            .iter()
            .enumerate()
            .map(|(index, set)| RangeSet::from_json(set).map_err(|err| format!("invalid range set {index}: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        let cni_version = text(config, "cniVersion");
        let v4 = ranges.iter().filter(|set| set.0[0].start.is_ipv4()).count();
        if (v4 > 1 || ranges.len() - v4 > 1) && matches!(cni_version.as_str(), "" | "0.1.0" | "0.2.0") {
            return Err(format!("CNI version {cni_version} does not support more than 1 address per family"));
        }
        for (i, a) in ranges.iter().enumerate() {
            for (j, b) in ranges.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(format!("range set {i} overlaps with {j}"));
                }
            }
        }
        let mut routes = Vec::new();
        for route in ipam.get("routes").and_then(Value::as_array).into_iter().flatten() {
            let dst = Cidr::parse(&text(route, "dst"))?;
            let gw = match text(route, "gw").as_str() {
                "" => None,
                gw => Some(parse_ip(gw)?),
            };
            routes.push(Route { dst, gw });
        }
        let data_dir = match text(ipam, "dataDir").as_str() {
            "" => PathBuf::from(DEFAULT_DATA_DIR),
            dir => PathBuf::from(dir),
        };
        let resolv_conf = Some(text(ipam, "resolvConf")).filter(|p| !p.is_empty()).map(PathBuf::from);
        Ok(IpamConfig { network: text(config, "name"), cni_version, ranges, routes, data_dir, resolv_conf, requested })
    }
}

#[derive(Debug, Default)]
struct Dns {
    nameservers: Vec<String>,
    domain: String,
    search: Vec<String>,
    options: Vec<String>,
}

impl Dns {
    fn to_json(&self) -> Value {
        let mut dns = Map::new();
        if !self.nameservers.is_empty() {
            dns.insert("nameservers".into(), json!(self.nameservers));
        }
        if !self.domain.is_empty() {
            dns.insert("domain".into(), json!(self.domain));
        }
        if !self.search.is_empty() {
            dns.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            dns.insert("options".into(), json!(self.options));
        }
        Value::Object(dns)
    }
}

fn parse_resolv_conf(path: &Path) -> Result<Dns, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("open {}: {err}", path.display()))?;
    let mut dns = Dns::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|err| format!("read {}: {err}", path.display()))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| (*s).to_owned());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_owned()),
            "domain" => dns.domain = fields[1].to_owned(),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    Ok(dns)
}

/// What a lease file holds: the container id and the interface (files of older versions hold the id alone).
fn lease_key(id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", id.trim())
}

/// A network's lease directory and its lock.
struct Store {
    dir: PathBuf,
    lock: std::fs::File,
}

/// Holds the store's `flock` until dropped.
struct Locked<'a>(&'a std::fs::File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.0, rustix::fs::FlockOperation::Unlock);
    }
}

impl Store {
    fn open(ipam: &IpamConfig) -> Result<Store, String> {
        let dir = ipam.data_dir.join(&ipam.network);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|err| format!("mkdir {}: {err}", dir.display()))?;
        let path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .mode(0o750)
            .open(&path)
            .map_err(|err| format!("open {}: {err}", path.display()))?;
        Ok(Store { dir, lock })
    }

    fn locked(&self) -> Result<Locked<'_>, String> {
        rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|errno| format!("flock {}: {errno}", self.dir.join("lock").display()))?;
        Ok(Locked(&self.lock))
    }

    /// Takes an address of `set` (number `index` in the configuration) for the container: `wanted`, or the
    /// next free one after the last reserved.
    fn allocate(
        &self,
        set: &RangeSet,
        index: usize,
        id: &str,
        ifname: &str,
        wanted: Option<IpAddr>,
    ) -> Result<Lease, String> {
        let _locked = self.locked()?;
        if let Some(ip) = wanted {
            let range = set.range_for(ip).ok_or_else(|| format!("{ip} not in range set {set}"))?;
            if ip == range.gateway {
                return Err(format!("requested ip {ip} is subnet's gateway"));
            }
            if !self.reserve(id, ifname, ip, index)? {
                return Err(format!("requested IP address {ip} is not available in range set {set}"));
            }
            return Ok(Lease { address: ip, prefix: range.subnet.prefix, gateway: range.gateway });
        }
        for held in self.held_by(id, ifname)? {
            if set.contains(held) {
                return Err(format!("{held} has been allocated to {id}, duplicate allocation is not allowed"));
            }
        }
        let last = std::fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{index}")))
            .ok()
            .and_then(|text| text.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .filter(|ip| set.contains(*ip));
        let mut candidates = Candidates::new(set, last);
        while let Some((ip, range)) = candidates.next() {
            if self.reserve(id, ifname, ip, index)? {
                return Ok(Lease { address: ip, prefix: range.subnet.prefix, gateway: range.gateway });
            }
        }
        Err(format!("no IP addresses available in range set: {set}"))
    }

    /// Creates the lease file of `ip` unless it exists, then records `ip` as the set's last reserved.
    fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, index: usize) -> Result<bool, String> {
        let path = self.dir.join(ip.to_string());
        let mut file = match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(err) => return Err(format!("open {}: {err}", path.display())),
        };
        if let Err(err) = file.write_all(lease_key(id, ifname).as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(format!("write {}: {err}", path.display()));
        }
        drop(file);
        let last = self.dir.join(format!("{LAST_RESERVED_PREFIX}{index}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&last)
            .and_then(|mut file| file.write_all(ip.to_string().as_bytes()))
            .map_err(|err| format!("write {}: {err}", last.display()))?;
        Ok(true)
    }

    /// Every file of the directory tree and its content (unreadable ones are skipped, as the binary does).
    fn files(&self) -> Result<Vec<(PathBuf, String)>, String> {
        let mut files = Vec::new();
        let mut pending = vec![self.dir.clone()];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if dir == self.dir => return Err(format!("read {}: {err}", dir.display())),
                Err(_) => continue,
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(path);
                } else if let Ok(content) = std::fs::read(&path) {
                    files.push((path, String::from_utf8_lossy(&content).trim().to_owned()));
                }
            }
        }
        Ok(files)
    }

    /// The lease files of the container's interface: those of this version's format, or failing any, of the
    /// old one (the bare id).
    fn leases_of(&self, id: &str, ifname: &str) -> Result<Vec<PathBuf>, String> {
        let files = self.files()?;
        let current = lease_key(id, ifname);
        let matching = |key: &str| -> Vec<PathBuf> {
            files.iter().filter(|(_, content)| content == key).map(|(path, _)| path.clone()).collect()
        };
        let found = matching(&current);
        Ok(if found.is_empty() { matching(id.trim()) } else { found })
    }

    fn held_by(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, String> {
        let files = self.files()?;
        let current = lease_key(id, ifname);
        Ok(files
            .iter()
            .filter(|(_, content)| *content == current || content == id.trim())
            .filter_map(|(path, _)| path.file_name()?.to_str()?.parse::<IpAddr>().ok())
            .collect())
    }

    fn release(&self, id: &str, ifname: &str) -> Result<(), String> {
        let _locked = self.locked()?;
        for path in self.leases_of(id, ifname)? {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    fn holds(&self, id: &str, ifname: &str) -> Result<bool, String> {
        let _locked = self.locked()?;
        Ok(!self.leases_of(id, ifname)?.is_empty())
    }
}

/// The round-robin search of a set: from the address after `last` (or the first range's start), through
/// the ranges in order, wrapping around once; the ranges' gateways are skipped.
struct Candidates<'a> {
    set: &'a RangeSet,
    range: usize,
    current: Option<IpAddr>,
    first: Option<IpAddr>,
}

impl<'a> Candidates<'a> {
    fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Candidates<'a> {
        match last.and_then(|ip| set.0.iter().position(|r| r.contains(ip)).map(|range| (range, ip))) {
            Some((range, ip)) => Candidates { set, range, current: Some(ip), first: None },
            None => Candidates { set, range: 0, current: None, first: Some(set.0[0].start) },
        }
    }

    fn next(&mut self) -> Option<(IpAddr, &'a Range)> {
        loop {
            let mut range = &self.set.0[self.range];
            let ip = match self.current {
                None => {
                    self.first = Some(range.start);
                    range.start
                }
                Some(current) if current == range.end => {
                    self.range = (self.range + 1) % self.set.0.len();
                    range = &self.set.0[self.range];
                    range.start
                }
                Some(current) => next(current),
            };
            let started = self.current.is_none();
            self.current = Some(ip);
            if !started {
                match self.first {
                    None => self.first = Some(ip),
                    Some(first) if first == ip => return None,
                    Some(_) => {}
                }
            }
            if ip != range.gateway {
                return Some((ip, range));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: Value) -> RangeSet {
        RangeSet::from_json(&ranges).unwrap()
    }

    fn all(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        let mut candidates = Candidates::new(set, last.map(|ip| ip.parse().unwrap()));
        let mut out = Vec::new();
        while let Some((ip, _)) = candidates.next() {
            out.push(ip.to_string());
        }
        out
    }

    #[test]
    fn ranges_get_the_binary_s_defaults() {
        let range = Range::from_json(&json!({"subnet": "10.1.2.0/24"})).unwrap();
        assert_eq!(range.to_string(), "10.1.2.1-10.1.2.254");
        assert_eq!(range.gateway.to_string(), "10.1.2.1");
        let range = Range::from_json(&json!({"subnet": "fd00:1::/120"})).unwrap();
        assert_eq!(range.to_string(), "fd00:1::1-fd00:1::ff");
        let err = Range::from_json(&json!({"subnet": "10.1.2.0/31"})).unwrap_err();
        assert_eq!(err, "Network 10.1.2.0/31 too small to allocate from");
        let err = Range::from_json(&json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.5"}))
            .unwrap_err();
        assert_eq!(err, "10.1.2.5 is in network 10.1.2.0/24 but before start 10.1.2.9");
        assert!(Cidr::parse("10.1.2.0/33").is_err() && Cidr::parse("10.1.2.0").is_err());
    }

    #[test]
    fn the_search_is_round_robin_across_ranges_skipping_gateways() {
        let two = set(json!([
            {"subnet": "10.1.0.0/30"},
            {"subnet": "10.2.0.0/29", "rangeStart": "10.2.0.4", "rangeEnd": "10.2.0.5"}
        ]));
        // 10.1.0.1 is the first range's gateway; .2 is its last address; then the second range.
        assert_eq!(all(&two, None), ["10.1.0.2", "10.2.0.4", "10.2.0.5"]);
        assert_eq!(all(&two, Some("10.2.0.4")), ["10.2.0.5", "10.1.0.2", "10.2.0.4"]);
        // A last address outside the set starts from the beginning.
        assert_eq!(all(&two, Some("192.168.0.1")), ["10.1.0.2", "10.2.0.4", "10.2.0.5"]);
    }

    #[test]
    fn configuration_errors_read_as_the_binary_s() {
        let load = |config: Value| IpamConfig::load(&config, "IgnoreUnknown=1").map(|_| ()).unwrap_err();
        assert_eq!(load(json!({"name": "n"})), "IPAM config missing 'ipam' key");
        assert_eq!(load(json!({"name": "n", "ipam": {}})), "no IP ranges specified");
        assert_eq!(
            load(
                json!({"cniVersion": "1.0.0", "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]}})
            ),
            "range set 0 overlaps with 1"
        );
        assert_eq!(
            load(
                json!({"cniVersion": "1.0.0", "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}})
            ),
            "invalid range set 0: mixed address families"
        );
        let config = IpamConfig::load(
            &json!({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"ips": ["10.1.0.7/24"]},
                    "ipam": {"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]}}),
            "IgnoreUnknown=1;IP=fd00::9",
        )
        .unwrap();
        assert_eq!(config.ranges.len(), 2, "the old-style range comes before the listed sets");
        assert_eq!(config.ranges[0].0[0].subnet.to_string(), "10.1.0.0/24");
        assert_eq!(config.requested, ["fd00::9".parse::<IpAddr>().unwrap(), "10.1.0.7".parse().unwrap()]);
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
    }
}
