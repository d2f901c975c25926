//! `loopback` in process: the pod's `lo` up at ADD (its addresses in the result, or the previous plugin's
//! result passed on), down at DEL, and CHECK that it is up. Like the binary, it works on `lo` whatever
//! `CNI_IFNAME` says, and a DEL whose namespace is gone succeeds.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use serde_json::{Value, json};

use super::netns::{self, Unusable};
use super::{CODE_INCOMPATIBLE_VERSION, CODE_INTERNAL, Invocation, failed, prints_results_for};
use crate::error::PluginError;
use crate::exec::Command;

const LOOPBACK: &str = "lo";

pub fn run(invocation: &Invocation<'_>, config: &Value) -> Result<Option<Value>, PluginError> {
    let netns = invocation.netns;
    let internal = |err: String| failed(CODE_INTERNAL, err);
    match invocation.command {
        Command::Add => {
            let version = config.get("cniVersion").and_then(Value::as_str).unwrap_or("");
            if !prints_results_for(version) {
                return Err(failed(
                    CODE_INCOMPATIBLE_VERSION,
                    format!("the native loopback prints no result for cniVersion {version:?}"),
                ));
            }
            let addresses = netns::within(netns, || {
                set_up(LOOPBACK, true)?;
                loopback_addresses()
            })
            .map_err(|err| internal(err.to_string()))?
            .map_err(internal)?;
            // With a previous result (loopback after other plugins in a chain), that result is passed on.
            if let Some(previous) = config.get("prevResult").filter(|p| p.is_object()) {
                return Ok(Some(previous.clone()));
            }
            let ips: Vec<Value> = addresses
                .iter()
                .map(|(ip, prefix)| {
                    let mut entry = json!({"interface": 0, "address": format!("{ip}/{prefix}")});
                    if version != "1.0.0" {
                        entry["version"] = json!(if ip.is_ipv4() { "4" } else { "6" });
                    }
                    entry
                })
                .collect();
            let mut result = json!({
                "cniVersion": version,
                "interfaces": [{"name": LOOPBACK, "mac": "00:00:00:00:00:00", "sandbox": netns}],
                "dns": {},
            });
            if !ips.is_empty() {
                result["ips"] = Value::Array(ips);
            }
            Ok(Some(result))
        }
        Command::Del => {
            if netns.is_empty() {
                return Ok(None);
            }
            match netns::within(netns, || set_up(LOOPBACK, false)) {
                Ok(done) => done.map(|()| None).map_err(internal),
                Err(Unusable::Missing(_)) => Ok(None),
                Err(err) => Err(internal(err.to_string())),
            }
        }
        Command::Check => {
            let up = netns::within(netns, is_up).map_err(|err| internal(err.to_string()))?.map_err(internal)?;
            if up { Ok(None) } else { Err(internal("loopback interface is down".into())) }
        }
    }
}

/// The first IPv4 and the first IPv6 address of `lo` with their prefix lengths, after checking that every
/// address it has is a loopback address (as the binary does).
fn loopback_addresses() -> Result<Vec<(IpAddr, u8)>, String> {
    let mut v4 = None;
    let mut v6 = None;
    for entry in getifaddrs().map_err(|errno| format!("list the addresses of lo: {errno}"))? {
        if entry.interface_name != LOOPBACK {
            continue;
        }
        let address = entry.address.as_ref();
        let netmask = entry.netmask.as_ref();
        let (ip, prefix) = if let Some(sin) = address.and_then(|a| a.as_sockaddr_in()) {
            let mask = netmask.and_then(|m| m.as_sockaddr_in()).map_or(0, |m| u32::from(m.ip()).count_ones());
            (IpAddr::V4(sin.ip()), mask as u8)
        } else if let Some(sin6) = address.and_then(|a| a.as_sockaddr_in6()) {
            let mask = netmask.and_then(|m| m.as_sockaddr_in6()).map_or(0, |m| u128::from(m.ip()).count_ones());
            (IpAddr::V6(sin6.ip()), mask as u8)
        } else {
            continue;
        };
        if !ip.is_loopback() {
            return Err(format!("loopback interface found with non-loopback address {:?}", ip.to_string()));
        }
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        slot.get_or_insert((ip, prefix));
    }
    Ok(v4.into_iter().chain(v6).collect())
}

fn is_up() -> Result<bool, String> {
    let entries = getifaddrs().map_err(|errno| format!("list the interfaces: {errno}"))?;
    let mut found = false;
    for entry in entries.filter(|e| e.interface_name == LOOPBACK) {
        found = true;
        if entry.flags.contains(InterfaceFlags::IFF_UP) {
            return Ok(true);
        }
    }
    if found { Ok(false) } else { Err("Link not found".into()) }
}

/// Sets interface `name` of the calling thread's network namespace up or down: SIOCGIFFLAGS/SIOCSIFFLAGS on
/// a socket of the namespace (netdevice(7)).
fn set_up(name: &str, up: bool) -> Result<(), String> {
    use std::os::fd::AsRawFd;

    let socket = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)
        .map_err(|errno| format!("open a socket to configure {name}: {errno}"))?;
    // SAFETY: `ifreq` is plain old data (arrays and a union of integers/pointers); all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(format!("interface name {name:?} is too long"));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: `request` names the interface with a NUL-terminated name (the rest is zero); SIOCGIFFLAGS
    // writes only `ifr_ifru.ifru_flags` inside it, and the socket is open for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(format!("get the flags of {name}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    let wanted = if up { flags | libc::IFF_UP as libc::c_short } else { flags & !(libc::IFF_UP as libc::c_short) };
    if wanted == flags {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = wanted;
    // SAFETY: as above; SIOCSIFFLAGS only reads the request.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(format!("set {name} {}: {}", if up { "up" } else { "down" }, std::io::Error::last_os_error()));
    }
    Ok(())
}
