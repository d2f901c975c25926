//! The in-process path of a chain against the plugin binaries, through `Cni` itself: a chain of `loopback`
//! (the one chain every plugin of which berth implements so far) run natively and by Debian's binary on
//! two pods must give the same result and leave `lo` the same; ADD on one path is deleted on the other.

mod support;

use berth_cni::{Capabilities, ChainPath, Cni, CniOptions, NativeMode};
use serde_json::{Value, json};
use support::{Netns, Rig};

fn binaries(rig: &Rig) -> Cni {
    Cni::new(CniOptions { native: NativeMode::Off, ..rig.cni.options().clone() })
}

/// `lo`'s state in `pod`: "UP" or "DOWN" as `ip` shows it, with its addresses.
fn loopback(pod: &Netns) -> (bool, String) {
    let link = pod.ip(&["-o", "link", "show", "lo"]);
    let up = link.contains("<LOOPBACK,UP");
    let addresses = pod.ip(&["-o", "addr", "show", "lo"]);
    let addresses: Vec<&str> = addresses.split_whitespace().filter(|w| w.contains('/')).collect();
    (up, addresses.join(" "))
}

/// The result with the namespace path, which differs per pod, taken out.
fn without_sandbox(mut result: Value) -> Value {
    if let Some(interfaces) = result.get_mut("interfaces").and_then(Value::as_array_mut) {
        for interface in interfaces {
            interface.as_object_mut().unwrap().remove("sandbox");
        }
    }
    result
}

#[test]
fn a_loopback_chain_runs_in_process_with_the_binary_s_effect_and_each_path_deletes_the_other_s() {
    let rig = Rig::new("natlo", 40);
    let network = rig.write_config("10-lo.conflist", "lo-only", vec![json!({"type": "loopback"})]);
    let native = &rig.cni;
    let exec = binaries(&rig);
    assert_eq!(native.chain_path(&network.list), ChainPath::Native);
    assert_eq!(exec.chain_path(&network.list), ChainPath::Binaries { reason: "[cni] native = \"off\"".into() });
    let standard = rig.write_config("00-std.conflist", "std", rig.standard_plugins());
    assert_eq!(native.chain_path(&standard.list), ChainPath::Native);

    // Pods start with lo down (`Netns::new` sets it up: take it down again for the comparison).
    let (a, b) = (rig.pod("a"), rig.pod("b"));
    for pod in [&a, &b] {
        pod.ip(&["link", "set", "lo", "down"]);
    }
    let by_native =
        rig.host.enter(|| native.add(&network, &rig.request("ctr-a", &a, Capabilities::default())).unwrap());
    let by_binary = rig.host.enter(|| exec.add(&network, &rig.request("ctr-b", &b, Capabilities::default())).unwrap());
    assert_eq!(by_native.timings.calls.len(), 1);
    assert_eq!(by_native.timings.calls[0].plugin, "loopback");
    assert_eq!(by_native.raw_result["interfaces"][0]["sandbox"], json!(a.path));
    assert_eq!(without_sandbox(by_native.raw_result.clone()), without_sandbox(by_binary.raw_result.clone()));
    assert!(by_native.raw_result["ips"][0]["address"] == "127.0.0.1/8", "{}", by_native.raw_result);
    assert_eq!(loopback(&a), loopback(&b));
    assert!(loopback(&a).0, "lo is up after ADD");
    rig.host.enter(|| native.check(&rig.reference("ctr-a", Some(&a)))).unwrap();
    rig.host.enter(|| exec.check(&rig.reference("ctr-b", Some(&b)))).unwrap();

    // Each path deletes what the other added: lo goes down the same way, the cache entries go.
    rig.host.enter(|| exec.del(&rig.reference("ctr-a", Some(&a)), None)).unwrap();
    rig.host.enter(|| native.del(&rig.reference("ctr-b", Some(&b)), None)).unwrap();
    assert_eq!(loopback(&a), loopback(&b));
    assert!(!loopback(&a).0, "lo is down after DEL");
    // CHECK of a down lo fails on both paths (after a new ADD puts them back in the cache).
    for (cni, id, pod) in [(native, "ctr-a2", &a), (&exec, "ctr-b2", &b)] {
        rig.host.enter(|| cni.add(&network, &rig.request(id, pod, Capabilities::default())).unwrap());
        pod.ip(&["link", "set", "lo", "down"]);
        let err = rig.host.enter(|| cni.check(&rig.reference(id, Some(pod)))).unwrap_err();
        assert!(berth_error_kind::chain(&err).contains("loopback interface is down"), "{err:?}");
    }
    // DEL after the namespace is gone succeeds on the native path, as the binary's does.
    drop(a);
    rig.host.enter(|| native.del(&rig.reference("ctr-a2", None), None)).unwrap();
    rig.host.enter(|| native.del(&rig.reference("ctr-b2", Some(&b)), None)).unwrap();
    assert!(std::fs::read_dir(rig.cache_dir()).unwrap().next().is_none(), "the result cache is empty");
}
