//! The native bridge and portmap on a node whose `iptables` is the legacy backend (x_tables): there the nat
//! rules are read and removed with `iptables-save` and `iptables-restore` (on nf_tables, DEL goes through
//! netlink instead), and both paths must still leave the same tables after every step.
//!
//! PATH points this process's `iptables` tools, and so the binaries' (go-iptables runs `iptables` from
//! PATH), at Debian's `*-legacy` ones. This file is a test process of its own with this one test, so no
//! other test sees the change.

mod support;

use std::process::Command as Process;

use berth_cni::Command;
use serde_json::{Value, json};
use support::twins::{Twins, World};

#[test]
fn masquerade_and_hostports_on_the_legacy_backend() {
    support::require_prerequisites();
    let tools = tempfile::tempdir().unwrap();
    for tool in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let legacy = format!("/usr/sbin/{tool}-legacy{suffix}");
            assert!(std::path::Path::new(&legacy).exists(), "{legacy} is missing (package iptables)");
            std::os::unix::fs::symlink(&legacy, tools.path().join(format!("{tool}{suffix}"))).unwrap();
        }
    }
    let path = format!("{}:{}", tools.path().display(), std::env::var("PATH").unwrap_or_default());
    // SAFETY: the only test of this process, before it starts a thread.
    unsafe { std::env::set_var("PATH", path) };
    let version = Process::new("iptables").arg("-V").output().expect("iptables -V");
    assert!(String::from_utf8_lossy(&version.stdout).contains("legacy"), "{version:?}");

    let twins = Twins::new("leg");
    let id = "leg-pod";
    let bridge = json!({
        "cniVersion": "1.0.0", "name": "nleg", "type": "bridge", "bridge": "cnileg0",
        "isGateway": true, "ipMasq": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.67.0.0/24"}], [{"subnet": "fd67::/64"}]]}
    });
    let (binary_result, native_result) = twins.step_with("bridge", Command::Add, id, |_| bridge.clone());
    let result_of = |world: &World| {
        let outcome = if std::ptr::eq(world, &twins.binary) { &binary_result } else { &native_result };
        outcome.clone().expect("bridge ADD").expect("a bridge result")
    };
    let portmap = |world: &World| -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "nleg", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
            ]},
            "prevResult": result_of(world),
        })
    };
    twins.step_with("portmap", Command::Add, id, portmap).1.expect("portmap ADD");
    let rules = twins.native.state()["host"]["iptables"].to_string();
    assert!(rules.contains("CNI-DN-") && rules.contains("MASQUERADE"), "the rules are in the legacy tables: {rules}");
    // DEL in the chain's reverse order; each step leaves the same tables on both sides.
    twins.step_with("portmap", Command::Del, id, portmap).1.expect("portmap DEL");
    twins.step_with("bridge", Command::Del, id, |_| bridge.clone()).1.expect("bridge DEL");
    // Only the shared chains stay (CNI-HOSTPORT-*); the pod's masquerade and DNAT chains are gone.
    let state = twins.native.state()["host"].to_string();
    let pod_chains: Vec<&str> = state
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("CNI-") && !word.starts_with("CNI-HOSTPORT-"))
        .collect();
    assert!(pod_chains.is_empty(), "pod chains left: {pod_chains:?} in {state}");
}
