//! Twin worlds for comparing a native plugin with Debian's binary: each world is a host namespace (where
//! the plugin runs), a pod namespace and a lease directory; one is driven by `/usr/lib/cni/<plugin>`, the
//! other by `berth_cni::native`. A step runs in both and requires the same answer (random veth names, MACs
//! and sandbox paths masked) and the same state: links (kind, MTU, flags, state, master, hairpin), addresses,
//! routes, the sysctls the plugins write, the nat rules (iptables-save, ip6tables-save, and as nf_tables holds
//! them) and the lease files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command as Process, Stdio};

use berth_cni::native::Invocation;
use berth_cni::{Command, PluginError};
use serde_json::{Value, json};

use super::{Netns, PLUGIN_DIR, require_prerequisites, run};

/// An answer: a result (or nothing), or a CNI error's code and message.
pub type Outcome = Result<Option<Value>, (u32, String)>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Driver {
    Binary,
    Native,
}

pub struct World {
    pub host: Netns,
    pub pod: Netns,
    pub data: tempfile::TempDir,
}

impl World {
    pub fn new(tag: &str, which: &str) -> World {
        let name = format!("tw-{tag}-{which}-{}", std::process::id());
        World {
            host: Netns::new(format!("{name}-h")),
            pod: Netns::new(format!("{name}-p")),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// `base` with this world's lease directory.
    pub fn config(&self, base: &Value) -> Value {
        let mut config = base.clone();
        if config.get("ipam").is_some() {
            config["ipam"]["dataDir"] = json!(self.data.path());
        }
        config
    }

    pub fn invoke(&self, plugin: &str, driver: Driver, command: Command, id: &str, config: &Value) -> Outcome {
        self.invoke_in(&self.pod, plugin, driver, command, id, config)
    }

    /// The same for a pod namespace other than the world's own.
    pub fn invoke_in(
        &self,
        pod: &Netns,
        plugin: &str,
        driver: Driver,
        command: Command,
        id: &str,
        config: &Value,
    ) -> Outcome {
        let config = self.config(config);
        let netns = pod.path.to_string_lossy().into_owned();
        match driver {
            Driver::Binary => self.host.enter(|| run_binary(plugin, command, id, &netns, "", &config)),
            Driver::Native => self.host.enter(|| {
                let invocation = Invocation { command, container_id: id, netns: &netns, ifname: "eth0", cni_args: "" };
                berth_cni::native::run(plugin, &invocation, &config).map_err(|err| match err {
                    PluginError::Failed { code, msg, .. } => (code, msg),
                    other => panic!("the native {plugin} failed without a CNI error: {other}"),
                })
            }),
        }
    }

    /// Everything the plugins touch, with what is random per run masked.
    pub fn state(&self) -> Value {
        json!({
            "host": namespace_state(&self.host),
            "pod": namespace_state(&self.pod),
            "leases": leases(self.data.path()),
        })
    }
}

/// Runs Debian's binary of `plugin` with `config` on stdin, in the calling thread's namespaces.
pub fn run_binary(plugin: &str, command: Command, id: &str, netns: &str, cni_args: &str, config: &Value) -> Outcome {
    let binary = Path::new(PLUGIN_DIR).join(plugin);
    let mut child = Process::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", PLUGIN_DIR)
        // The test's own PATH first, as a runtime passes its PATH on (a test may point `iptables` at a
        // backend of its choice), then where Debian keeps the tools.
        .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", std::env::var("PATH").unwrap_or_default()))
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
    let error = stdout.unwrap_or_else(|| panic!("{} failed without a CNI error: {output:?}", binary.display()));
    Err((error["code"].as_u64().unwrap() as u32, error["msg"].as_str().unwrap().to_owned()))
}

/// A result with the random parts masked: the host veth's name, every MAC, the sandbox path.
pub fn masked(outcome: &Outcome) -> Outcome {
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
            "net/ipv4/conf/{}/route_localnet",
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
            // A chain's packet and byte counters (`:OUTPUT ACCEPT [1:40]`): traffic the namespace happened
            // to send (an IPv6 router solicitation), not rules.
            .map(|line| match line.rsplit_once(" [") {
                Some((chain, counters)) if line.starts_with(':') && counters.ends_with(']') => chain.to_owned(),
                _ => line.to_owned(),
            })
            .collect()
    };
    // The same rules as nf_tables holds them, expression by expression (iptables-save reads them back the
    // same from more than one encoding), per chain in the chain's order; the order of the chains in the
    // table (their creation order, which means nothing) and rule handles (a count of every rule ever
    // added) are left out. Each chain: its rules' expressions, then the chain as `nft` lists it.
    let nf_tables = |family: &str| -> BTreeMap<String, Vec<String>> {
        let args = ["netns", "exec", &netns.name, "nft", "--debug=netlink", "list", "table", family, "nat"];
        let output = Process::new("ip").args(args).output().unwrap();
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(rule) = line.strip_prefix(&format!("{family} nat ")) {
                current = rule.split(' ').next().map(str::to_owned);
            } else if let Some(chain) = line.strip_prefix("\tchain ") {
                current = chain.strip_suffix(" {").map(str::to_owned);
            } else if line.starts_with("table ") || line.trim() == "}" {
                current = None;
            } else if let Some(chain) = current.as_ref().filter(|_| !line.is_empty()) {
                chains.entry(chain.clone()).or_default().push(without_counts(line.trim()));
            }
        }
        chains
    };
    json!({"links": links, "addresses": addresses, "routes": routes, "sysctls": sysctls,
           "iptables": nat("iptables-save"), "ip6tables": nat("ip6tables-save"),
           "nf_tables": [nf_tables("ip"), nf_tables("ip6")]})
}

/// `line` with the figures of its counters (`pkts 1 bytes 40`, `packets 1 bytes 40`) as `N`: what traffic a
/// test sent is no part of the rules.
fn without_counts(line: &str) -> String {
    let mut words: Vec<&str> = line.split(' ').collect();
    for index in 1..words.len() {
        if ["pkts", "packets", "bytes"].contains(&words[index - 1]) && words[index].parse::<u64>().is_ok() {
            words[index] = "N";
        }
    }
    words.join(" ")
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
pub struct Twins {
    pub binary: World,
    pub native: World,
}

impl Twins {
    pub fn new(tag: &str) -> Twins {
        require_prerequisites();
        Twins { binary: World::new(tag, "b"), native: World::new(tag, "n") }
    }

    /// Runs `command` of `plugin` in both worlds with the configuration `config` gives for each, requires
    /// the same answer and the same state, and returns each world's answer (binary, native).
    pub fn step_with(
        &self,
        plugin: &str,
        command: Command,
        id: &str,
        config: impl Fn(&World) -> Value,
    ) -> (Outcome, Outcome) {
        let binary = self.binary.invoke(plugin, Driver::Binary, command, id, &config(&self.binary));
        let native = self.native.invoke(plugin, Driver::Native, command, id, &config(&self.native));
        assert_eq!(masked(&native), masked(&binary), "{plugin} {command} {id}: native vs binary answer");
        self.assert_same_state(&format!("{plugin} {command} {id}"));
        (binary, native)
    }

    /// Both worlds' states are equal. A bridge's carrier and operational state follow its ports a moment
    /// later (the kernel's link watch runs deferred), so a difference gets two seconds to settle.
    pub fn assert_same_state(&self, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let (binary_state, native_state) = (self.binary.state(), self.native.state());
            if native_state == binary_state {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!("{what}: native vs binary state\nnative: {native_state:#}\nbinary: {binary_state:#}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The same with one configuration for both.
    pub fn step(&self, plugin: &str, command: Command, id: &str, config: &Value) -> Outcome {
        self.step_with(plugin, command, id, |_| config.clone()).1
    }
}
