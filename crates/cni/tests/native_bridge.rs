//! The native `bridge` (with the native `host-local`) against Debian's binaries: the same configuration
//! and operations on two worlds, each a host namespace with its own pod namespace and lease directory, one
//! driven by `/usr/lib/cni/bridge`, the other by `berth_cni::native::bridge`. After every step both must
//! have answered the same (the result, with the random veth name and the MACs masked, or the same CNI
//! error code and message) and left the same host and pod: links (kind, MTU, flags, state, master, hairpin),
//! addresses, routes, the sysctls the plugin writes, the nat rules (iptables-save and ip6tables-save) and
//! the lease files. And what one made, the other deletes.

mod support;

use berth_cni::Command;
use serde_json::{Value, json};
use support::Netns;
use support::twins::{Driver, Twins, World, masked};

const BRIDGE: &str = "cnitest0";

fn ipv4_config() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "nbr",
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "mtu": 1400,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

/// ADD, CHECK, DEL and a second DEL give the same answers and states on both paths; CHECK passes when
/// `check_passes` (1.1.1's CHECK fails for a route without gateway and for a layer-2 attachment, on both).
fn same_lifecycle(tag: &str, config: Value, check_passes: bool) {
    let twins = Twins::new(tag);
    let id = format!("{tag}-container");
    let binary = twins.binary.invoke("bridge", Driver::Binary, Command::Add, &id, &config);
    let native = twins.native.invoke("bridge", Driver::Native, Command::Add, &id, &config);
    assert_eq!(masked(&native), masked(&binary), "ADD: native vs binary answer");
    twins.assert_same_state("ADD: native vs binary state");
    // CHECK with each world's own result, as the runtime passes the cached result.
    let check = |world: &World, driver: Driver, result: &support::twins::Outcome| {
        let mut config = config.clone();
        config["prevResult"] = result.clone().unwrap().unwrap();
        world.invoke("bridge", driver, Command::Check, &id, &config)
    };
    let binary_check = check(&twins.binary, Driver::Binary, &binary);
    let native_check = check(&twins.native, Driver::Native, &native);
    assert_eq!(native_check, binary_check, "CHECK: native vs binary");
    assert_eq!(native_check.is_ok(), check_passes, "CHECK of a fresh ADD: {native_check:?}");
    twins.step("bridge", Command::Del, &id, &config).expect("DEL");
    twins.step("bridge", Command::Del, &id, &config).expect("a second DEL");
}

#[test]
fn ipv4_with_gateway_masquerade_hairpin_and_mtu() {
    same_lifecycle("v4", ipv4_config(), true);
}

#[test]
fn ipv6_with_default_gateway() {
    let mut config = ipv4_config();
    config["isDefaultGateway"] = json!(true);
    config["ipMasq"] = json!(false);
    config["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "fd77::/64"}]]});
    same_lifecycle("v6", config, true);
}

#[test]
fn dual_stack_with_masquerade_and_old_result_version() {
    let mut config = ipv4_config();
    config["cniVersion"] = json!("0.4.0");
    config["isDefaultGateway"] = json!(true);
    config["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.78.0.0/24"}], [{"subnet": "fd78::/64"}]],
                            "routes": [{"dst": "10.99.0.0/16"}]});
    same_lifecycle("ds", config, false);
}

/// On a node whose nat tables exist already (kube-proxy's rules in POSTROUTING), the native path writes a
/// new pod's masquerading chain and jump itself (over nf_tables, no iptables process): the rules must be
/// the binary's, expression by expression, for both families and a second pod, and DEL must remove them.
#[test]
fn dual_stack_masquerade_on_an_existing_nat_table() {
    let twins = Twins::new("nt");
    for world in [&twins.binary, &twins.native] {
        for (tool, source) in [("iptables", "198.51.100.0/24"), ("ip6tables", "2001:db8::/64")] {
            support::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &world.host.name,
                    tool,
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    source,
                    "-m",
                    "comment",
                    "--comment",
                    "node rule",
                    "-j",
                    "RETURN",
                ],
            );
        }
    }
    twins.assert_same_state("the node's own rules");
    let mut config = ipv4_config();
    config["ipam"] = json!({"type": "host-local", "ranges": [[{"subnet": "10.76.0.0/23"}], [{"subnet": "fd76::/64"}]]});
    let second_pod = |which: &str| Netns::new(format!("bnb-nt-{which}-{}", std::process::id()));
    let (binary_pod, native_pod) = (second_pod("b"), second_pod("n"));
    let second = |command: Command| {
        let binary = twins.binary.invoke_in(&binary_pod, "bridge", Driver::Binary, command, "nt-2", &config);
        let native = twins.native.invoke_in(&native_pod, "bridge", Driver::Native, command, "nt-2", &config);
        assert_eq!(masked(&native), masked(&binary), "{command} of the second pod: native vs binary");
        twins.assert_same_state(&format!("after {command} of the second pod"));
        native
    };
    twins.step("bridge", Command::Add, "nt-1", &config).expect("ADD");
    second(Command::Add).expect("ADD of the second pod");
    let state = twins.native.state();
    let rules = state["host"]["nf_tables"].to_string();
    assert!(rules.contains("target name MASQUERADE") && rules.contains("jump -> CNI-"), "pod rules: {state:#}");
    twins.step("bridge", Command::Del, "nt-1", &config).expect("DEL");
    second(Command::Del).expect("DEL of the second pod");
    let state = twins.native.state();
    assert!(!state.to_string().contains("CNI-"), "no pod rules left: {state:#}");
    assert!(state.to_string().contains("node rule"), "the node's rules stay: {state:#}");
}

#[test]
fn layer_2_without_ipam() {
    let mut config = ipv4_config();
    config.as_object_mut().unwrap().remove("ipam");
    config["promiscMode"] = json!(true);
    config["hairpinMode"] = json!(false);
    same_lifecycle("l2", config, false);
}

#[test]
fn refusals_and_failures_match() {
    let twins = Twins::new("err");
    // Hairpin and promiscuous mode together.
    let mut config = ipv4_config();
    config["promiscMode"] = json!(true);
    assert!(twins.step("bridge", Command::Add, "err-1", &config).is_err());
    // A link of the bridge's name that is no bridge.
    for world in [&twins.binary, &twins.native] {
        world.host.ip(&["link", "add", "notabridge", "type", "veth", "peer", "name", "notabridge-peer"]);
    }
    let mut config = ipv4_config();
    config["bridge"] = json!("notabridge");
    assert!(twins.step("bridge", Command::Add, "err-2", &config).is_err());
    // An exhausted range: a /30 holds one address besides the gateway; the failed ADD releases nothing
    // that the first holds, and DEL of both leaves nothing.
    let mut config = ipv4_config();
    config["ipam"]["ranges"] = json!([[{"subnet": "10.79.0.0/30"}]]);
    twins.step("bridge", Command::Add, "err-3", &config).expect("the first ADD");
    // The second pod needs a namespace of its own in each world.
    let binary_pod = Netns::new(format!("bnb-err2-b-{}", std::process::id()));
    let native_pod = Netns::new(format!("bnb-err2-n-{}", std::process::id()));
    let both = |command: Command| {
        let binary = twins.binary.invoke_in(&binary_pod, "bridge", Driver::Binary, command, "err-4", &config);
        let native = twins.native.invoke_in(&native_pod, "bridge", Driver::Native, command, "err-4", &config);
        assert_eq!(native, binary, "{command} in an exhausted range: native vs binary");
        twins.assert_same_state(&format!("after {command} in an exhausted range"));
        native
    };
    assert!(both(Command::Add).is_err(), "the range is exhausted");
    both(Command::Del).expect("DEL of the pod whose ADD failed");
    twins.step("bridge", Command::Del, "err-3", &config).expect("DEL");
    // A second ADD for a pod whose interface exists already.
    twins.step("bridge", Command::Add, "err-5", &config).expect("ADD");
    assert!(twins.step("bridge", Command::Add, "err-6", &config).is_err(), "eth0 exists in the pod");
    twins.step("bridge", Command::Del, "err-5", &config).expect("DEL");
    twins.step("bridge", Command::Del, "err-6", &config).expect("DEL");
}

/// What one path made, the other deletes, leaving what a DEL of the same path leaves.
#[test]
fn each_path_deletes_what_the_other_made() {
    let twins = Twins::new("x");
    let config = ipv4_config();
    // World "binary": the binary adds, the native plugin deletes; world "native": the other way round.
    twins.binary.invoke("bridge", Driver::Binary, Command::Add, "x-1", &config).expect("binary ADD");
    twins.native.invoke("bridge", Driver::Native, Command::Add, "x-1", &config).expect("native ADD");
    twins
        .binary
        .invoke("bridge", Driver::Native, Command::Del, "x-1", &config)
        .expect("native DEL of the binary's ADD");
    twins.native.invoke("bridge", Driver::Binary, Command::Del, "x-1", &config).expect("binary DEL of the native ADD");
    twins.assert_same_state("after each deleted the other's");
    let binary = twins.binary.state();
    let leases: Vec<&Value> = binary["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|lease| lease[0].as_str().unwrap().parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "no lease left: {binary:#}");
    assert!(!binary.to_string().contains("CNI-"), "no masquerading chain left: {binary:#}");
    assert!(binary["pod"]["links"].as_array().unwrap().is_empty(), "no pod interface left: {binary:#}");
}
