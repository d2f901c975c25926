//! ADD + DEL latency of berth-cni with the bridge + host-local + portmap + loopback chain, on both paths in
//! the same run: in process (`[cni] native = "auto"`) and Debian's plugin binaries (`"off"`); and the share
//! of it spent inside the plugins (the rest is berth's own overhead: the result cache, process spawning and
//! pipes). Run by `hack/bench/cni-add.sh` as root.
//!
//! Like the root tests, everything happens in network namespaces this program creates (a "host" one where
//! the bridge and iptables rules live, and one pod namespace re-used by every iteration), with the leases in
//! a temp dir; all of it is removed at the end.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_cni::{AttachRequest, AttachmentRef, Capabilities, Cni, CniOptions, PodIdentity, PortMapping};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip (iproute2) is required");
    assert!(status.success(), "ip {args:?} failed");
}

struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn main() {
    let iterations: usize = std::env::args().nth(1).map_or(50, |n| n.parse().expect("iterations: a number"));
    assert!(rustix::process::geteuid().is_root(), "run as root: the benchmark creates network namespaces");
    let host = format!("bcni-bench-host-{}", std::process::id());
    let pod = format!("bcni-bench-pod-{}", std::process::id());
    let _cleanup = Namespaces(vec![host.clone(), pod.clone()]);
    for name in [&host, &pod] {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
    let temp = tempfile::tempdir().unwrap();
    let conf = temp.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let list = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench",
        "plugins": [
            {"type": "bridge", "bridge": "bench0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "dataDir": temp.path().join("ipam"),
                      "ranges": [[{"subnet": "10.88.250.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(conf.join("10-bench.conflist"), list.to_string()).unwrap();
    let network = berth_cni::find_network_config(&conf).unwrap();
    let pod_path = PathBuf::from("/run/netns").join(&pod);
    let host_ns = PathBuf::from("/run/netns").join(&host);
    // Both paths in the same run, on the same namespaces: the plugins in process, then the binaries.
    for mode in [berth_cni::NativeMode::Auto, berth_cni::NativeMode::Off] {
        let cni = Cni::new(CniOptions {
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            cache_dir: temp.path().join("cache"),
            plugin_timeout: berth_cni::DEFAULT_PLUGIN_TIMEOUT,
            native: mode,
        });
        let path = cni.chain_path(&network.list);
        berth_cni::native::netns::within(&host_ns.to_string_lossy(), || {
            measure(&cni, &network, &pod_path, iterations, &path.to_string())
        })
        .unwrap();
    }
}

/// ADD + DEL `iterations` times (after one warm-up round) and prints the figures for the path `path`.
fn measure(cni: &Cni, network: &berth_cni::NetworkConfig, pod_path: &std::path::Path, iterations: usize, path: &str) {
    let (mut adds, mut dels, mut totals, mut plugin_share) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut add_overhead = Vec::new();
    let mut per_plugin: std::collections::BTreeMap<String, Duration> = std::collections::BTreeMap::new();
    // One warm-up round (creates the bridge and iptables chains, pages in the plugins).
    for round in 0..=iterations {
        let container_id = format!("bench{round}");
        let request = AttachRequest {
            container_id: container_id.clone(),
            netns: pod_path.to_path_buf(),
            ifname: "eth0".into(),
            pod: PodIdentity { namespace: "bench".into(), name: container_id.clone(), uid: container_id.clone() },
            capabilities: Capabilities {
                port_mappings: vec![PortMapping {
                    host_port: 18000,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                }],
                ..Default::default()
            },
            pod_cidr: None,
        };
        let started = Instant::now();
        let attached = cni.add(network, &request).unwrap();
        let add = started.elapsed();
        let reference = AttachmentRef { container_id, ifname: "eth0".into(), netns: Some(pod_path.to_path_buf()) };
        let detached = cni.del(&reference, None).unwrap();
        let total = started.elapsed();
        if round == 0 {
            continue;
        }
        adds.push(add);
        dels.push(total - add);
        totals.push(total);
        add_overhead.push(add - attached.timings.in_plugins);
        for call in attached.timings.calls.iter().chain(&detached.timings.calls) {
            *per_plugin.entry(format!("{} {}", call.command, call.plugin)).or_default() += call.duration;
        }
        let in_plugins = attached.timings.in_plugins + detached.timings.in_plugins;
        plugin_share.push((in_plugins, total - in_plugins));
    }
    adds.sort();
    dels.sort();
    totals.sort();
    let mut overhead: Vec<Duration> = plugin_share.iter().map(|(_, own)| *own).collect();
    overhead.sort();
    add_overhead.sort();
    let plugins: Duration = plugin_share.iter().map(|(p, _)| *p).sum();
    let all: Duration = totals.iter().sum();
    println!("cni-bench: {iterations} iterations of ADD+DEL (bridge + host-local + portmap + loopback), {path}");
    for (what, values) in [
        ("ADD", &adds),
        ("DEL", &dels),
        ("ADD+DEL", &totals),
        ("berth overhead (ADD)", &add_overhead),
        ("berth overhead (ADD+DEL)", &overhead),
    ] {
        println!("  {what:<26} p50 {:7.2} ms   p90 {:7.2} ms", percentile(values, 0.5), percentile(values, 0.9));
    }
    println!("  inside plugins: {:.1}% of the time", plugins.as_secs_f64() / all.as_secs_f64() * 100.0);
    for (call, spent) in per_plugin {
        println!("    {call:<20} mean {:7.2} ms", spent.as_secs_f64() * 1e3 / iterations as f64);
    }
}
