//! The native `bridge` (with the native `host-local`) against Debian's binaries: the same configuration
//! and operations on two worlds, each a host namespace with its own pod namespace and lease directory, one
//! driven by `/usr/lib/cni/bridge`, the other by `berth_cni::native::bridge`. After every step both must
//! have answered the same (the result, with the random veth name and the MACs masked, or the same CNI
//! error code and message) and left the same host and pod: links (kind, MTU, flags, state, master, hairpin),
//! addresses, routes, the sysctls the plugin writes, the nat rules (iptables-save and ip6tables-save) and
//! the lease files. And what one made, the other deletes.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command as Process, Stdio};

use berth_cni::native::{Invocation, bridge};
use berth_cni::{Command, PluginError};
use serde_json::{Value, json};
use support::{Netns, require_prerequisites, run};

const BINARY: &str = "/usr/lib/cni/bridge";
const BRIDGE: &str = "cnitest0";

type Outcome = Result<Option<Value>, (u32, String)>;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Binary,
    Native,
}

/// One world: a host namespace (where the plugin runs), a pod namespace, a lease directory.
struct World {
    host: Netns,
    pod: Netns,
    data: tempfile::TempDir,
}

impl World {
    fn new(tag: &str, which: &str) -> World {
        let name = format!("bnb-{tag}-{which}-{}", std::process::id());
        World {
            host: Netns::new(format!("{name}-h")),
            pod: Netns::new(format!("{name}-p")),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, base: &Value) -> Value {
        let mut config = base.clone();
        if config.get("ipam").is_some() {
            config["ipam"]["dataDir"] = json!(self.data.path());
        }
        config
    }

    fn invoke(&self, driver: Driver, command: Command, id: &str, config: &Value) -> Outcome {
        self.invoke_in(&self.pod, driver, command, id, config)
    }

    /// The same for a pod namespace other than the world's own.
    fn invoke_in(&self, pod: &Netns, driver: Driver, command: Command, id: &str, config: &Value) -> Outcome {
        let config = self.config(config);
        let netns = pod.path.to_string_lossy().into_owned();
        match driver {
            Driver::Binary => self.host.enter(|| run_binary(command, id, &netns, &config)),
            Driver::Native => self.host.enter(|| {
                let invocation = Invocation { command, container_id: id, netns: &netns, ifname: "eth0", cni_args: "" };
                bridge::run(&invocation, &config).map_err(|err| match err {
                    PluginError::Failed { code, msg, .. } => (code, msg),
                    other => panic!("the native bridge failed without a CNI error: {other}"),
                })
            }),
        }
    }

    /// Everything the plugin touches, with what is random per run masked.
    fn state(&self) -> Value {
        json!({
            "host": namespace_state(&self.host),
            "pod": namespace_state(&self.pod),
            "leases": leases(self.data.path()),
        })
    }
}

fn run_binary(command: Command, id: &str, netns: &str, config: &Value) -> Outcome {
    let mut child = Process::new(BINARY)
        .env_clear()
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    if output.status.success() {
        return Ok(stdout);
    }
    let error = stdout.unwrap_or_else(|| panic!("{BINARY} failed without a CNI error: {output:?}"));
    Err((error["code"].as_u64().unwrap() as u32, error["msg"].as_str().unwrap().to_owned()))
}

/// A result with the random parts masked: the host veth's name, every MAC, the sandbox path.
fn masked(outcome: &Outcome) -> Outcome {
    outcome.clone().map(|result| {
        result.map(|mut result| {
            for interface in result["interfaces"].as_array_mut().into_iter().flatten() {
                if interface["name"].as_str().is_some_and(|name| name.starts_with("veth")) {
                    interface["name"] = json!("veth*");
                }
                if interface.get("mac").is_some() {
                    interface["mac"] = json!("<mac>");
                }
                if interface.get("sandbox").is_some() {
                    interface["sandbox"] = json!("<pod>");
                }
            }
            result
        })
    })
}

fn ip_json(netns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&netns.ip(&full)).unwrap_or(Value::Array(Vec::new()))
}

fn mask_name(name: &str) -> String {
    if name.starts_with("veth") { "veth*".into() } else { name.to_owned() }
}

/// Links, addresses (link-local IPv6 aside: it follows the random MACs), routes, sysctls and nat rules of
/// one namespace.
fn namespace_state(netns: &Netns) -> Value {
    let mut links = Vec::new();
    let mut sysctls = serde_json::Map::new();
    for link in ip_json(netns, &["-d", "link", "show"]).as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap_or("");
        if name == "lo" {
            continue;
        }
        let mut flags: Vec<String> =
            link["flags"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(str::to_owned)).collect();
        flags.sort();
        links.push(json!({
            "name": mask_name(name),
            "kind": link["linkinfo"]["info_kind"],
            "mtu": link["mtu"],
            "flags": flags,
            "operstate": link["operstate"],
            "master": link["master"],
            "promiscuity": link["promiscuity"],
            "hairpin": link["linkinfo"]["info_slave_data"]["hairpin"],
            "txqlen": link["txqlen"],
        }));
        for key in [
            "net/ipv6/conf/{}/accept_ra",
            "net/ipv6/conf/{}/accept_dad",
            "net/ipv4/conf/{}/arp_notify",
            "net/ipv6/conf/{}/disable_ipv6",
        ] {
            let path = key.replace("{}", name);
            let value = netns.enter(|| std::fs::read_to_string(format!("/proc/sys/{path}")).unwrap_or_default());
            sysctls.insert(key.replace("{}", &mask_name(name)), json!(value.trim()));
        }
    }
    links.sort_by_key(|link| link.to_string());
    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/lo/disable_ipv6"] {
        let value = netns.enter(|| std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap_or_default());
        sysctls.insert(key.into(), json!(value.trim()));
    }
    let mut addresses = Vec::new();
    for link in ip_json(netns, &["addr", "show"]).as_array().unwrap() {
        let name = mask_name(link["ifname"].as_str().unwrap_or(""));
        for address in link["addr_info"].as_array().into_iter().flatten() {
            let local = address["local"].as_str().unwrap_or("");
            if local.starts_with("fe80") {
                continue;
            }
            addresses.push(json!([name, local, address["prefixlen"], address["scope"], address["broadcast"]]));
        }
    }
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        for route in ip_json(netns, &[family, "route", "show", "table", "main"]).as_array().unwrap() {
            routes.push(json!([
                route["dst"],
                route["gateway"],
                route["dev"].as_str().map(mask_name),
                route["protocol"],
                route["scope"],
                route["flags"]
            ]));
        }
    }
    let nat = |tool: &str| -> Vec<String> {
        run("ip", &["netns", "exec", &netns.name, tool, "-t", "nat"])
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.replace(" [0:0]", ""))
            .collect()
    };
    json!({"links": links, "addresses": addresses, "routes": routes, "sysctls": sysctls,
           "iptables": nat("iptables-save"), "ip6tables": nat("ip6tables-save")})
}

/// Lease files: names, contents and modes.
fn leases(dir: &Path) -> Value {
    let mut files = Vec::new();
    for network in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(network.path()).into_iter().flatten().flatten() {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().unwrap().permissions().mode();
            let content = std::fs::read_to_string(file.path()).unwrap_or_default();
            files.push(json!([file.file_name().to_string_lossy(), content, format!("{mode:o}")]));
        }
    }
    files.sort_by_key(|file| file.to_string());
    Value::Array(files)
}

/// The two worlds, one per driver.
struct Twins {
    binary: World,
    native: World,
}

impl Twins {
    fn new(tag: &str) -> Twins {
        require_prerequisites();
        assert!(Path::new(BINARY).exists(), "{BINARY} is missing: run hack/install-deps.sh");
        Twins { binary: World::new(tag, "b"), native: World::new(tag, "n") }
    }

    /// Runs `command` in both worlds, requires the same answer and the same state, and returns the answer.
    fn step(&self, command: Command, id: &str, config: &Value) -> Outcome {
        let binary = self.binary.invoke(Driver::Binary, command, id, config);
        let native = self.native.invoke(Driver::Native, command, id, config);
        assert_eq!(masked(&native), masked(&binary), "{command} {id}: native vs binary answer");
        let (binary_state, native_state) = (self.binary.state(), self.native.state());
        assert_eq!(
            native_state, binary_state,
            "{command} {id}: native vs binary state\nnative: {native_state:#}\nbinary: {binary_state:#}"
        );
        native
    }
}

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
    let binary = twins.binary.invoke(Driver::Binary, Command::Add, &id, &config);
    let native = twins.native.invoke(Driver::Native, Command::Add, &id, &config);
    assert_eq!(masked(&native), masked(&binary), "ADD: native vs binary answer");
    assert_eq!(twins.native.state(), twins.binary.state(), "ADD: native vs binary state");
    // CHECK with each world's own result, as the runtime passes the cached result.
    let check = |world: &World, driver: Driver, result: &Outcome| {
        let mut config = config.clone();
        config["prevResult"] = result.clone().unwrap().unwrap();
        world.invoke(driver, Command::Check, &id, &config)
    };
    let binary_check = check(&twins.binary, Driver::Binary, &binary);
    let native_check = check(&twins.native, Driver::Native, &native);
    assert_eq!(native_check, binary_check, "CHECK: native vs binary");
    assert_eq!(native_check.is_ok(), check_passes, "CHECK of a fresh ADD: {native_check:?}");
    twins.step(Command::Del, &id, &config).expect("DEL");
    twins.step(Command::Del, &id, &config).expect("a second DEL");
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
    assert!(twins.step(Command::Add, "err-1", &config).is_err());
    // A link of the bridge's name that is no bridge.
    for world in [&twins.binary, &twins.native] {
        world.host.ip(&["link", "add", "notabridge", "type", "veth", "peer", "name", "notabridge-peer"]);
    }
    let mut config = ipv4_config();
    config["bridge"] = json!("notabridge");
    assert!(twins.step(Command::Add, "err-2", &config).is_err());
    // An exhausted range: a /30 holds one address besides the gateway; the failed ADD releases nothing
    // that the first holds, and DEL of both leaves nothing.
    let mut config = ipv4_config();
    config["ipam"]["ranges"] = json!([[{"subnet": "10.79.0.0/30"}]]);
    twins.step(Command::Add, "err-3", &config).expect("the first ADD");
    // The second pod needs a namespace of its own in each world.
    let binary_pod = Netns::new(format!("bnb-err2-b-{}", std::process::id()));
    let native_pod = Netns::new(format!("bnb-err2-n-{}", std::process::id()));
    let both = |command: Command| {
        let binary = twins.binary.invoke_in(&binary_pod, Driver::Binary, command, "err-4", &config);
        let native = twins.native.invoke_in(&native_pod, Driver::Native, command, "err-4", &config);
        assert_eq!(native, binary, "{command} in an exhausted range: native vs binary");
        assert_eq!(twins.native.state(), twins.binary.state(), "after {command} in an exhausted range");
        native
    };
    assert!(both(Command::Add).is_err(), "the range is exhausted");
    both(Command::Del).expect("DEL of the pod whose ADD failed");
    twins.step(Command::Del, "err-3", &config).expect("DEL");
    // A second ADD for a pod whose interface exists already.
    twins.step(Command::Add, "err-5", &config).expect("ADD");
    assert!(twins.step(Command::Add, "err-6", &config).is_err(), "eth0 exists in the pod");
    twins.step(Command::Del, "err-5", &config).expect("DEL");
    twins.step(Command::Del, "err-6", &config).expect("DEL");
}

/// What one path made, the other deletes, leaving what a DEL of the same path leaves.
#[test]
fn each_path_deletes_what_the_other_made() {
    let twins = Twins::new("x");
    let config = ipv4_config();
    // World "binary": the binary adds, the native plugin deletes; world "native": the other way round.
    twins.binary.invoke(Driver::Binary, Command::Add, "x-1", &config).expect("binary ADD");
    twins.native.invoke(Driver::Native, Command::Add, "x-1", &config).expect("native ADD");
    twins.binary.invoke(Driver::Native, Command::Del, "x-1", &config).expect("native DEL of the binary's ADD");
    twins.native.invoke(Driver::Binary, Command::Del, "x-1", &config).expect("binary DEL of the native ADD");
    let (binary, native) = (twins.binary.state(), twins.native.state());
    assert_eq!(native, binary);
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
