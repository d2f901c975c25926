//! The native `host-local` against Debian's binary: the same operations on two lease directories, one per
//! implementation, must give the same results (or the same CNI error code and message) and leave the same
//! files (names, contents, modes) after every step; and leases one made, the other releases.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use berth_cni::native::{Invocation, host_local};
use berth_cni::{Command, PluginError};
use serde_json::{Value, json};

const BINARY: &str = "/usr/lib/cni/host-local";

use support::twins::Outcome;

struct Pair {
    _dir: tempfile::TempDir,
    binary_dir: PathBuf,
    native_dir: PathBuf,
}

impl Pair {
    fn new() -> Pair {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run hack/install-deps.sh (package containernetworking-plugins)"
        );
        let dir = tempfile::tempdir().unwrap();
        let binary_dir = dir.path().join("binary");
        let native_dir = dir.path().join("native");
        Pair { _dir: dir, binary_dir, native_dir }
    }

    /// Runs `command` with both implementations, each on its own directory, and returns the outcome once
    /// both agree on it and on the files they left.
    fn run(&self, command: Command, id: &str, cni_args: &str, config: &Value) -> Outcome {
        let with_dir = |dir: &Path| {
            let mut config = config.clone();
            config["ipam"]["dataDir"] = json!(dir);
            config
        };
        let binary = run_binary(command, id, cni_args, &with_dir(&self.binary_dir));
        let invocation = Invocation { command, container_id: id, netns: "/proc/self/ns/net", ifname: "eth0", cni_args };
        let native = host_local::run(&invocation, &with_dir(&self.native_dir)).map_err(|err| match err {
            PluginError::Failed { code, msg, .. } => (code, msg),
            other => panic!("the native plugin failed without a CNI error: {other}"),
        });
        assert_eq!(native, binary, "{command} {id} {cni_args}: native vs binary");
        assert_eq!(snapshot(&self.native_dir), snapshot(&self.binary_dir), "{command} {id}: the lease files differ");
        native
    }
}

fn run_binary(command: Command, id: &str, cni_args: &str, config: &Value) -> Outcome {
    support::twins::run_binary("host-local", command, id, "/proc/self/ns/net", cni_args, config)
}

/// Every file under `dir` (relative path, content, mode), sorted.
fn snapshot(dir: &Path) -> Vec<(String, String, u32)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if meta.is_dir() {
                files.push((format!("{name}/"), String::new(), meta.permissions().mode() & 0o7777));
                pending.push(path);
            } else {
                let content = std::fs::read_to_string(&path).unwrap();
                files.push((name, content, meta.permissions().mode() & 0o7777));
            }
        }
    }
    files.sort();
    files
}

fn network(version: &str, ipam: Value) -> Value {
    json!({"cniVersion": version, "name": "pods", "type": "bridge", "ipam": ipam})
}

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web";

#[test]
fn ipv4_leases_go_round_robin_and_are_released_by_id() {
    let pair = Pair::new();
    let config = network(
        "1.0.0",
        json!({"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/29"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
    );
    let first = pair.run(Command::Add, "c1", ARGS, &config).unwrap().unwrap();
    assert_eq!(first["ips"][0]["address"], "10.77.0.2/29", "{first}");
    pair.run(Command::Add, "c2", ARGS, &config).unwrap();
    pair.run(Command::Check, "c1", ARGS, &config).unwrap();
    // Duplicate allocation is refused; DEL frees; the next ADD goes on from the last reserved address.
    let duplicate = pair.run(Command::Add, "c1", ARGS, &config).unwrap_err();
    assert!(duplicate.1.contains("duplicate allocation is not allowed"), "{duplicate:?}");
    pair.run(Command::Del, "c1", ARGS, &config).unwrap();
    pair.run(Command::Check, "c1", ARGS, &config).unwrap_err();
    let third = pair.run(Command::Add, "c3", ARGS, &config).unwrap().unwrap();
    assert_eq!(third["ips"][0]["address"], "10.77.0.4/29");
    // .5 and .6 left, then the freed .2: the range wraps around, then it is exhausted.
    for id in ["c4", "c5", "c6"] {
        pair.run(Command::Add, id, ARGS, &config).unwrap();
    }
    let exhausted = pair.run(Command::Add, "c7", ARGS, &config).unwrap_err();
    assert_eq!(
        exhausted.1,
        "failed to allocate for range 0: no IP addresses available in range set: 10.77.0.1-10.77.0.6"
    );
    // DEL of what was never added, and a second DEL, succeed.
    pair.run(Command::Del, "never", ARGS, &config).unwrap();
    pair.run(Command::Del, "c3", ARGS, &config).unwrap();
    pair.run(Command::Del, "c3", ARGS, &config).unwrap();
}

#[test]
fn dual_stack_requested_addresses_and_the_old_result_shape() {
    let pair = Pair::new();
    let ipam = json!({
        "type": "host-local",
        "ranges": [
            [{"subnet": "10.78.0.0/24", "rangeStart": "10.78.0.10", "rangeEnd": "10.78.0.11"}],
            [{"subnet": "fd00:78::/64", "gateway": "fd00:78::fe"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:78::fe"}]
    });
    for version in ["1.0.0", "0.4.0"] {
        let config = network(version, ipam.clone());
        let result = pair.run(Command::Add, &format!("a-{version}"), ARGS, &config).unwrap().unwrap();
        assert_eq!(result["ips"].as_array().unwrap().len(), 2, "{result}");
        pair.run(Command::Del, &format!("a-{version}"), ARGS, &config).unwrap();
    }
    let config = network("1.0.0", ipam);
    let requested = pair.run(Command::Add, "b", &format!("{ARGS};IP=10.78.0.11"), &config).unwrap().unwrap();
    assert_eq!(requested["ips"][0]["address"], "10.78.0.11/24");
    let taken = pair.run(Command::Add, "c", &format!("{ARGS};IP=10.78.0.11"), &config).unwrap_err();
    assert!(taken.1.contains("is not available in range set"), "{taken:?}");
    // A failure in the second set releases what the first one took.
    let gateway = pair.run(Command::Add, "d", &format!("{ARGS};IP=fd00:78::fe"), &config).unwrap_err();
    assert!(gateway.1.contains("subnet's gateway"), "{gateway:?}");
    let outside = pair.run(Command::Add, "e", &format!("{ARGS};IP=10.99.0.1"), &config).unwrap_err();
    assert_eq!(outside.1, "failed to allocate all requested IPs: 10.99.0.1");
}

#[test]
fn invalid_configurations_fail_alike() {
    let pair = Pair::new();
    for ipam in [
        json!({"type": "host-local"}),
        json!({"type": "host-local", "ranges": [[{"subnet": "10.79.0.0/31"}]]}),
        json!({"type": "host-local", "ranges": [[{"subnet": "10.79.0.0/24"}], [{"subnet": "10.79.0.0/25"}]]}),
        json!({"type": "host-local", "ranges": [[{"subnet": "10.79.0.0/24"}, {"subnet": "fd00::/64"}]]}),
    ] {
        let error = pair.run(Command::Add, "x", ARGS, &network("1.0.0", ipam)).unwrap_err();
        assert_eq!(error.0, 999, "{error:?}");
    }
    // Debian's plugins (1.1) accept a gateway outside the subnet, and then hand out the subnet's .1.
    let outside = network("1.0.0", json!({"ranges": [[{"subnet": "10.79.0.0/24", "gateway": "10.80.0.1"}]]}));
    let result = pair.run(Command::Add, "g", ARGS, &outside).unwrap().unwrap();
    assert_eq!(result["ips"][0]["address"], "10.79.0.1/24");
    let unknown = pair
        .run(Command::Add, "x", "K8S_POD_NAME=web", &network("1.0.0", json!({"subnet": "10.79.0.0/24"})))
        .unwrap_err();
    assert!(unknown.1.contains("unknown args"), "{unknown:?}");
}

#[test]
fn leases_made_by_one_are_released_by_the_other() {
    let pair = Pair::new();
    let config = |dir: &Path| {
        network("1.0.0", json!({"type": "host-local", "dataDir": dir, "ranges": [[{"subnet": "10.81.0.0/24"}]]}))
    };
    // Both work on the binary's directory now.
    let dir = &pair.binary_dir;
    let by_binary = run_binary(Command::Add, "h1", ARGS, &config(dir)).unwrap().unwrap();
    let invocation = |command, id| Invocation {
        command,
        container_id: id,
        netns: "/proc/self/ns/net",
        ifname: "eth0",
        cni_args: ARGS,
    };
    let by_native = host_local::run(&invocation(Command::Add, "h2"), &config(dir)).unwrap().unwrap();
    assert_eq!(by_binary["ips"][0]["address"], "10.81.0.2/24");
    assert_eq!(by_native["ips"][0]["address"], "10.81.0.3/24", "the native one continues the binary's round robin");
    host_local::run(&invocation(Command::Check, "h1"), &config(dir)).unwrap();
    run_binary(Command::Check, "h2", ARGS, &config(dir)).unwrap();
    host_local::run(&invocation(Command::Del, "h1"), &config(dir)).unwrap();
    run_binary(Command::Del, "h2", ARGS, &config(dir)).unwrap();
    let left: Vec<String> = snapshot(&dir.join("pods")).into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(left, ["last_reserved_ip.0", "lock"]);
}
