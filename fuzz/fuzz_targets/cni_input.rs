//! What berth reads of CNI: a plugin's result on stdout, the configuration files of the CNI directory
//! (`.conflist` and single-plugin `.conf`), and its own result cache, as DEL reads it after a restart (a
//! cache entry that was torn, edited or written by another version). The first byte picks which.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use berth_cni::{AttachmentRef, Cni, CniOptions, CniResult, find_network_config};
use berth_fuzz::{empty, scratch};
use libfuzzer_sys::fuzz_target;

fn top() -> &'static PathBuf {
    static TOP: OnceLock<PathBuf> = OnceLock::new();
    TOP.get_or_init(|| {
        let top = scratch("cni");
        for dir in ["bin", "net.d", "cache"] {
            std::fs::create_dir(top.join(dir)).unwrap();
        }
        top
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let top = top();
    match selector % 4 {
        0 => {
            let Ok(raw) = serde_json::from_slice(body) else { return };
            if let Ok(result) = CniResult::parse(&raw) {
                let ips = result.pod_ips("eth0");
                // Pod IPs come IPv4 first (kubelet takes the first as the pod's primary IP).
                let first_v6 = ips.iter().position(|ip| ip.is_ipv6()).unwrap_or(ips.len());
                assert!(ips[first_v6..].iter().all(|ip| ip.is_ipv6()), "pod IPs out of order: {ips:?}");
            }
        }
        1 | 2 => {
            let name = if selector % 4 == 1 { "10-pods.conflist" } else { "10-pods.conf" };
            let dir = top.join("net.d");
            std::fs::write(dir.join(name), body).unwrap();
            if let Ok(network) = find_network_config(&dir) {
                assert!(!network.name.is_empty() && !network.plugin_types.is_empty());
                assert!(network.list.get("plugins").and_then(|p| p.as_array()).is_some());
            }
            empty(&dir);
        }
        _ => {
            let cache = top.join("cache");
            std::fs::create_dir_all(cache.join("pod")).unwrap();
            std::fs::write(cache.join("pod/pods-eth0.json"), body).unwrap();
            let cni = Cni::new(CniOptions {
                bin_dirs: vec![top.join("bin")],
                cache_dir: cache.clone(),
                plugin_timeout: Duration::from_secs(1),
                native: berth_cni::NativeMode::Auto,
            });
            let attachment = AttachmentRef { container_id: "pod".into(), ifname: "eth0".into(), netns: None };
            let _ = cni.check(&attachment);
            let _ = cni.del(&attachment, None);
            empty(&cache);
        }
    }
});
