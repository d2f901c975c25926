//! Test rig for the root tests with Debian's real CNI plugins: network namespaces the test creates, a
//! configuration written per test, and the leak checks every test ends with.
//!
//! Isolation: each test creates a "host" namespace and runs the plugins from a thread that joined it
//! (a child process inherits the namespaces of the thread that forks it). The bridge, the host-side veths,
//! the portmap and masquerade iptables rules all live there, never in the machine's own namespace; pods are
//! further namespaces attached to that bridge. Each test uses its own subnet, bridge name and temp dirs
//! (host-local `dataDir`, result cache), and deletes its namespaces on drop, even when it fails.

#![allow(dead_code)]

pub mod twins;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_cni::{AttachRequest, AttachmentRef, Capabilities, Cni, CniOptions, NetworkConfig, PodIdentity};
use serde_json::{Value, json};

pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Panics with what to do when a prerequisite is missing: these tests never skip.
pub fn require_prerequisites() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the CNI tests create network namespaces and must run as root (make test runs them as root)"
    );
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(
            Path::new(PLUGIN_DIR).join(plugin).exists(),
            "{PLUGIN_DIR}/{plugin} is missing: run hack/install-deps.sh (package containernetworking-plugins)"
        );
    }
    for tool in ["ip", "iptables-save", "nft"] {
        assert!(
            Command::new(tool).arg("-V").output().is_ok() || Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: run hack/install-deps.sh (packages iproute2, iptables, nftables)"
        );
    }
}

/// The repository's `hack/cni`, holding the example conflist and `berth-test-plugin`.
pub fn hack_cni_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/cni").canonicalize().unwrap()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        // A namespace of the same name left by a killed earlier run would make `add` fail: remove it first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { path: PathBuf::from("/run/netns").join(&name), name }
    }

    /// Runs `f` on a thread inside this namespace (and every process it starts, too).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        berth_cni::native::netns::within(&self.path.to_string_lossy(), f).unwrap()
    }

    /// `ip -n <ns> ARGS` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn iptables_save(&self) -> String {
        run("ip", &["netns", "exec", &self.name, "iptables-save"])
    }

    /// Starts a TCP server on `port` inside the namespace that answers every connection with `reply`.
    pub fn serve(&self, port: u16, reply: &'static str) {
        let listener = self.enter(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let _ = std::io::Write::write_all(&mut stream, reply.as_bytes());
            }
        });
    }

    /// Connects from inside the namespace and returns what the server said.
    pub fn fetch(&self, address: IpAddr, port: u16) -> std::io::Result<String> {
        self.enter(|| {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::new(address, port), Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut reply = String::new();
            std::io::Read::read_to_string(&mut stream, &mut reply)?;
            Ok(reply)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One test's world: a host namespace with its own bridge and subnet, temp dirs, and a `Cni`.
pub struct Rig {
    pub tag: String,
    pub host: Netns,
    pub subnet_octet: u8,
    pub bridge: String,
    pub temp: tempfile::TempDir,
    pub cni: Cni,
}

impl Rig {
    /// `tag` names the namespaces (with the pid, so parallel runs never meet); `subnet_octet` picks
    /// 10.88.<octet>.0/24, unique per test.
    pub fn new(tag: &str, subnet_octet: u8) -> Rig {
        require_prerequisites();
        let tag = format!("bcni-{tag}-{}", std::process::id());
        let host = Netns::new(format!("{tag}-host"));
        let temp = tempfile::tempdir().unwrap();
        for dir in ["conf", "cache", "ipam"] {
            std::fs::create_dir(temp.path().join(dir)).unwrap();
        }
        let cni = Cni::new(CniOptions {
            bin_dirs: vec![hack_cni_dir(), PathBuf::from(PLUGIN_DIR)],
            cache_dir: temp.path().join("cache"),
            plugin_timeout: Duration::from_secs(20),
            native: berth_cni::NativeMode::Auto,
        });
        Rig { bridge: format!("bcni{subnet_octet}"), tag, host, subnet_octet, temp, cni }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.temp.path().join("conf")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.temp.path().join("cache")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.temp.path().join("ipam")
    }

    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 88, self.subnet_octet, 1))
    }

    /// The bridge plugin's configuration for this rig (host-local IPAM with its lease dir in the temp dir).
    pub fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam_dir(),
                "ranges": [[{"subnet": format!("10.88.{}.0/24", self.subnet_octet)}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })
    }

    /// bridge + portmap + loopback, the chain the example conflist has.
    pub fn standard_plugins(&self) -> Vec<Value> {
        vec![
            self.bridge_plugin(),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "loopback"}),
        ]
    }

    /// Writes `<conf>/<file>` with a conflist of `plugins` and returns it as discovered.
    pub fn write_config(&self, file: &str, network: &str, plugins: Vec<Value>) -> NetworkConfig {
        let list = json!({"cniVersion": "1.0.0", "name": network, "plugins": plugins});
        std::fs::write(self.conf_dir().join(file), serde_json::to_vec_pretty(&list).unwrap()).unwrap();
        berth_cni::find_network_config(&self.conf_dir()).unwrap()
    }

    pub fn pod(&self, name: &str) -> Netns {
        Netns::new(format!("{}-{name}", self.tag))
    }

    pub fn request(&self, container_id: &str, pod: &Netns, capabilities: Capabilities) -> AttachRequest {
        AttachRequest {
            container_id: container_id.to_owned(),
            netns: pod.path.clone(),
            ifname: "eth0".into(),
            pod: PodIdentity {
                namespace: "default".into(),
                name: pod.name.clone(),
                uid: format!("uid-{container_id}"),
            },
            capabilities,
            pod_cidr: None,
        }
    }

    pub fn reference(&self, container_id: &str, pod: Option<&Netns>) -> AttachmentRef {
        AttachmentRef {
            container_id: container_id.to_owned(),
            ifname: "eth0".into(),
            netns: pod.map(|p| p.path.clone()),
        }
    }

    /// Leases host-local holds (files named after an address) across all networks.
    pub fn leases(&self) -> Vec<String> {
        let mut leases = Vec::new();
        for network in std::fs::read_dir(self.ipam_dir()).unwrap().flatten() {
            for file in std::fs::read_dir(network.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.parse::<IpAddr>().is_ok() {
                    leases.push(name);
                }
            }
        }
        leases
    }

    /// Everything a detached container could leak in this rig: veths, IP leases, iptables rules mentioning
    /// it (portmap's CNI-DN-* chains, bridge's masquerade chain commented with the id), cache entries.
    pub fn assert_nothing_left(&self, container_id: &str) {
        // A veth whose peer was in a namespace that is gone disappears when the kernel's deferred netns
        // cleanup runs, which may be a moment after the last reference was dropped: wait for it, briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let veths = loop {
            let veths = self.host.ip(&["-o", "link", "show", "type", "veth"]);
            if veths.trim().is_empty() || std::time::Instant::now() > deadline {
                break veths;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(veths.trim().is_empty(), "veths left in the host namespace:\n{veths}");
        assert_eq!(self.leases(), Vec::<String>::new(), "IP leases left under {}", self.ipam_dir().display());
        let rules = self.host.iptables_save();
        let leaked: Vec<&str> =
            rules.lines().filter(|line| line.contains(container_id) || line.contains("CNI-DN-")).collect();
        assert!(leaked.is_empty(), "iptables rules left for {container_id}:\n{}", leaked.join("\n"));
        let cached = berth_cni::cached_container_ids(&self.cache_dir()).unwrap();
        assert!(!cached.contains(&container_id.to_owned()), "cache entry left for {container_id}: {cached:?}");
    }
}
