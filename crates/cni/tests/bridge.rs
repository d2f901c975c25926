//! Root tests of ADD/DEL/CHECK with Debian's real plugins (bridge + host-local + portmap + loopback) in
//! network namespaces the tests create: the pod is reachable, ports are mapped, the result is typed, and
//! DEL leaves nothing behind — after a restart, after the netns is gone, after the configuration changed.

mod support;

use std::net::IpAddr;

use berth_cni::{AttachmentRef, Capabilities, Cni, PortMapping};
use support::{Rig, hack_cni_dir};

fn port(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping { host_port, container_port, protocol: "tcp".into(), host_ip: String::new() }
}

#[test]
fn add_makes_the_pod_reachable_with_its_port_mapped_and_del_removes_everything() {
    let rig = Rig::new("reach", 11);
    let network = rig.write_config("10-test.conflist", "reach", rig.standard_plugins());
    let pod = rig.pod("a");
    let capabilities = Capabilities { port_mappings: vec![port(18080, 80), port(0, 81)], ..Default::default() };
    let attached = rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-reach", &pod, capabilities)).unwrap());

    let ips = attached.result.pod_ips("eth0");
    assert_eq!(ips.len(), 1, "{:?}", attached.result);
    let IpAddr::V4(ip) = ips[0] else { panic!("expected IPv4, got {ips:?}") };
    assert_eq!(ip.octets()[..3], [10, 88, 11], "{ip}");
    assert_eq!(attached.result.ips[0].gateway, Some(rig.gateway()));
    assert_eq!(rig.leases(), vec![ip.to_string()]);
    // Every plugin ran once, in order, and the timings add up.
    let order: Vec<&str> = attached.timings.calls.iter().map(|c| c.plugin.as_str()).collect();
    assert_eq!(order, ["bridge", "portmap", "loopback"]);
    assert!(attached.timings.in_plugins <= attached.timings.total);

    // The pod side: eth0 with the address, lo up (the loopback plugin; berth_runtime::pin does it for pods).
    let eth0 = pod.ip(&["-o", "-4", "addr", "show", "eth0"]);
    assert!(eth0.contains(&format!("{ip}/24")), "{eth0}");
    assert!(pod.ip(&["-o", "link", "show", "lo"]).contains("UP"));
    pod.serve(80, "pod-a");
    assert_eq!(pod.fetch("127.0.0.1".parse().unwrap(), 80).unwrap(), "pod-a", "loopback inside the pod");
    // The host side reaches the pod IP, and the host port through portmap's DNAT.
    assert_eq!(rig.host.fetch(IpAddr::V4(ip), 80).unwrap(), "pod-a");
    assert_eq!(rig.host.fetch(rig.gateway(), 18080).unwrap(), "pod-a", "hostPort 18080 -> 80");
    let nat = rig.host.iptables_save();
    assert!(nat.contains("--dport 18080"), "portmap rule missing:\n{nat}");
    assert!(!nat.contains("--dport 0 "), "host port 0 must map nothing:\n{nat}");

    let detached = rig.host.enter(|| rig.cni.del(&rig.reference("ctr-reach", Some(&pod)), Some(&network)).unwrap());
    assert_eq!(detached.networks, ["reach"]);
    let order: Vec<&str> = detached.timings.calls.iter().map(|c| c.plugin.as_str()).collect();
    assert_eq!(order, ["loopback", "portmap", "bridge"], "DEL runs the chain in reverse");
    rig.assert_nothing_left("ctr-reach");
    assert!(rig.host.fetch(rig.gateway(), 18080).is_err(), "the host port still answers after DEL");
    assert!(pod.ip(&["-o", "link", "show"]).lines().all(|l| !l.contains("eth0")), "eth0 left in the pod");

    // DEL is idempotent: nothing cached, nothing run, success.
    let again = rig.host.enter(|| rig.cni.del(&rig.reference("ctr-reach", Some(&pod)), None).unwrap());
    assert!(again.networks.is_empty() && again.timings.calls.is_empty());
}

#[test]
fn two_pods_on_the_bridge_reach_each_other() {
    let rig = Rig::new("two", 12);
    let network = rig.write_config("10-test.conflist", "two", rig.standard_plugins());
    let (a, b) = (rig.pod("a"), rig.pod("b"));
    let ip_a = rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-a", &a, Capabilities::default())).unwrap());
    let ip_b = rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-b", &b, Capabilities::default())).unwrap());
    let (ip_a, ip_b) = (ip_a.result.pod_ips("eth0")[0], ip_b.result.pod_ips("eth0")[0]);
    assert_ne!(ip_a, ip_b);
    a.serve(8000, "from-a");
    b.serve(8000, "from-b");
    assert_eq!(b.fetch(ip_a, 8000).unwrap(), "from-a");
    assert_eq!(a.fetch(ip_b, 8000).unwrap(), "from-b");
    for (id, pod) in [("ctr-a", &a), ("ctr-b", &b)] {
        rig.host.enter(|| rig.cni.del(&rig.reference(id, Some(pod)), None).unwrap());
    }
    rig.assert_nothing_left("ctr-a");
    rig.assert_nothing_left("ctr-b");
}

#[test]
fn del_after_a_restart_uses_the_cache_even_when_the_configuration_changed() {
    let rig = Rig::new("changed", 13);
    let network = rig.write_config("10-test.conflist", "before", rig.standard_plugins());
    let pod = rig.pod("a");
    let capabilities = Capabilities { port_mappings: vec![port(18081, 80)], ..Default::default() };
    rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-changed", &pod, capabilities)).unwrap());
    assert_eq!(rig.leases().len(), 1);

    // The operator replaces the configuration: another name, another IPAM, no portmap.
    std::fs::remove_file(rig.conf_dir().join("10-test.conflist")).unwrap();
    let other = rig.write_config(
        "20-other.conflist",
        "after",
        vec![serde_json::json!({"type": "bridge", "bridge": "other0", "ipam": {"type": "host-local",
            "dataDir": rig.temp.path().join("other-ipam"), "ranges": [[{"subnet": "10.88.113.0/24"}]]}})],
    );
    // A new daemon: a new Cni on the same cache directory.
    let restarted = Cni::new(rig.cni.options().clone());
    let reference =
        AttachmentRef { container_id: "ctr-changed".into(), ifname: "eth0".into(), netns: Some(pod.path.clone()) };
    let detached = rig.host.enter(|| restarted.del(&reference, Some(&other)).unwrap());
    assert_eq!(detached.networks, ["before"], "DEL must use the configuration ADD used");
    rig.assert_nothing_left("ctr-changed");
    assert!(!rig.temp.path().join("other-ipam").exists(), "the new configuration's IPAM must not have run");
}

#[test]
fn del_without_the_netns_releases_the_lease_and_the_port_rules() {
    let rig = Rig::new("nonetns", 19);
    // bridge (1.1.1 as in Debian, and upstream still) finds the addresses whose masquerade rules it removes
    // by looking at the pod's interface: without the netns it cannot, so those rules would stay. berth's
    // answer is an ordering rule for the pod manager (DEL before the pinned netns is removed; a reboot, the
    // other way a netns disappears, empties iptables anyway); this test covers what DEL must still release
    // when the netns is gone, with a configuration that does not masquerade.
    let mut bridge = rig.bridge_plugin();
    bridge["ipMasq"] = serde_json::json!(false);
    let plugins = vec![bridge, serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})];
    let network = rig.write_config("10-test.conflist", "nonetns", plugins);
    let pod = rig.pod("a");
    let capabilities = Capabilities { port_mappings: vec![port(18084, 80)], ..Default::default() };
    rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-nonetns", &pod, capabilities)).unwrap());
    let netns_path = pod.path.clone();
    drop(pod);
    assert!(!netns_path.exists());
    let reference =
        AttachmentRef { container_id: "ctr-nonetns".into(), ifname: "eth0".into(), netns: Some(netns_path) };
    rig.host.enter(|| rig.cni.del(&reference, None).unwrap());
    rig.assert_nothing_left("ctr-nonetns");
}

#[test]
fn del_finishes_an_add_interrupted_by_a_crash_before_its_result_was_recorded() {
    let rig = Rig::new("crash", 14);
    let network = rig.write_config("10-test.conflist", "crash", rig.standard_plugins());
    let pod = rig.pod("a");
    let capabilities = Capabilities { port_mappings: vec![port(18082, 80)], ..Default::default() };
    rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-crash", &pod, capabilities)).unwrap());
    // What the cache holds when the daemon dies after the plugins ran but before the result was written:
    // the intent entry, without a result.
    let entry_path = rig.cache_dir().join("ctr-crash/crash-eth0.json");
    let mut entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry_path).unwrap()).unwrap();
    entry["result"] = serde_json::Value::Null;
    std::fs::write(&entry_path, serde_json::to_vec(&entry).unwrap()).unwrap();
    assert_eq!(berth_cni::cached_container_ids(&rig.cache_dir()).unwrap(), ["ctr-crash"]);

    rig.host.enter(|| rig.cni.del(&rig.reference("ctr-crash", Some(&pod)), None).unwrap());
    rig.assert_nothing_left("ctr-crash");
}

#[test]
fn check_reports_an_attachment_that_was_tampered_with() {
    let rig = Rig::new("check", 15);
    // Not portmap: Debian's portmap 1.1.1 fails CHECK whenever ip6tables has no chain for the pod ("could
    // not check ipv6 dnat"), even with IPv4 mappings only.
    let plugins = vec![rig.bridge_plugin(), serde_json::json!({"type": "loopback"})];
    let network = rig.write_config("10-test.conflist", "check", plugins);
    let pod = rig.pod("a");
    rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-check", &pod, Capabilities::default())).unwrap());
    rig.host.enter(|| rig.cni.check(&rig.reference("ctr-check", Some(&pod))).unwrap());
    // Someone removes the default route the result promised.
    pod.ip(&["route", "del", "default"]);
    let err = rig.host.enter(|| rig.cni.check(&rig.reference("ctr-check", Some(&pod))).unwrap_err());
    let message = berth_error_kind::chain(&err);
    assert!(message.contains("CNI CHECK of network \"check\" for container ctr-check"), "{message}");
    assert!(message.contains("plugin \"bridge\""), "{message}");
    rig.host.enter(|| rig.cni.del(&rig.reference("ctr-check", Some(&pod)), None).unwrap());
    rig.assert_nothing_left("ctr-check");
}

#[test]
fn a_pod_cidr_placeholder_is_filled_and_the_filled_config_is_cached_for_del() {
    let rig = Rig::new("cidr", 16);
    let mut bridge = rig.bridge_plugin();
    bridge["ipam"]["ranges"] = serde_json::json!([[{"subnet": "{{podCIDR}}"}]]);
    let network = rig.write_config("10-test.conflist", "cidr", vec![bridge]);
    assert_eq!(berth_cni::wants_pod_cidr(&network.list), Some("{{podCIDR}}"));
    let pod = rig.pod("a");
    let mut request = rig.request("ctr-cidr", &pod, Capabilities::default());

    let err = rig.host.enter(|| rig.cni.add(&network, &request).unwrap_err());
    assert!(err.to_string().contains("no pod CIDR is known"), "{err}");
    assert_eq!(berth_error_kind::Kinded::kind(&err), berth_error_kind::ErrorKind::FailedPrecondition);
    rig.assert_nothing_left("ctr-cidr");

    request.pod_cidr = Some("10.88.116.0/24".into());
    let attached = rig.host.enter(|| rig.cni.add(&network, &request).unwrap());
    assert_eq!(attached.result.pod_ips("eth0")[0].to_string().rsplit_once('.').unwrap().0, "10.88.116");
    rig.host.enter(|| rig.cni.del(&rig.reference("ctr-cidr", Some(&pod)), None).unwrap());
    rig.assert_nothing_left("ctr-cidr");
}

#[test]
fn the_shipped_example_conflist_attaches_and_detaches() {
    let rig = Rig::new("example", 17);
    let example = hack_cni_dir().join("10-berth-bridge.conflist");
    let mut list: serde_json::Value = serde_json::from_slice(&std::fs::read(&example).unwrap()).unwrap();
    // Only the lease directory moves to the test's temp dir; the rest (bridge berth0, 10.88.0.0/16) is used
    // as shipped, inside the test's own host namespace.
    list["plugins"][0]["ipam"]["dataDir"] = serde_json::json!(rig.ipam_dir());
    std::fs::write(rig.conf_dir().join("10-berth-bridge.conflist"), list.to_string()).unwrap();
    let network = berth_cni::find_network_config(&rig.conf_dir()).unwrap();
    assert_eq!(network.plugin_types, ["bridge", "portmap", "loopback"]);
    let pod = rig.pod("a");
    let capabilities = Capabilities { port_mappings: vec![port(18083, 80)], ..Default::default() };
    let attached = rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-example", &pod, capabilities)).unwrap());
    let ip = attached.result.pod_ips("eth0")[0];
    pod.serve(80, "example");
    assert_eq!(rig.host.fetch(ip, 80).unwrap(), "example");
    assert!(rig.host.ip(&["-o", "link", "show", "berth0"]).contains("berth0"));
    rig.host.enter(|| rig.cni.del(&rig.reference("ctr-example", Some(&pod)), None).unwrap());
    rig.assert_nothing_left("ctr-example");
}

#[test]
fn dns_and_mac_capabilities_reach_the_plugins_that_declare_them() {
    let rig = Rig::new("caps", 18);
    // bridge itself does not read runtimeConfig; `tuning` declares `mac` and sets it on eth0.
    let plugins = vec![rig.bridge_plugin(), serde_json::json!({"type": "tuning", "capabilities": {"mac": true}})];
    let network = rig.write_config("10-test.conflist", "caps", plugins);
    let pod = rig.pod("a");
    let capabilities = Capabilities { mac: Some("02:42:0a:58:12:34".into()), ..Default::default() };
    rig.host.enter(|| rig.cni.add(&network, &rig.request("ctr-caps", &pod, capabilities)).unwrap());
    let link = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("02:42:0a:58:12:34"), "tuning did not get the mac capability: {link}");
    rig.host.enter(|| rig.cni.del(&rig.reference("ctr-caps", Some(&pod)), None).unwrap());
    rig.assert_nothing_left("ctr-caps");
}
