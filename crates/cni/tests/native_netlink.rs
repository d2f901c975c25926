//! The native plugins' rtnetlink layer (`berth_cni::native::netlink`) against the real kernel: every request
//! runs in network namespaces the test creates, and what it did is read back twice, through the layer and
//! through iproute2's `ip -j`, so the layer cannot agree with itself on a mistake.

mod support;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use berth_cni::native::netlink::{Address, Netlink, Route, errno_text, format_mac};
use serde_json::Value;
use support::Netns;

/// Whether the test can run: it needs root for its namespaces. Without root it fails under CI and says
/// it skipped elsewhere (a developer's `cargo test` as a user).
fn as_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} creates network namespaces and must run as root (make test runs it as root)"
    );
    eprintln!("skipping {test}: it creates network namespaces and must run as root");
    false
}

/// A namespace of this test process (`ip netns add`), deleted on drop even when the test fails.
fn namespace(role: &str) -> Netns {
    Netns::new(format!("berth-nl-{role}-{}", std::process::id()))
}

/// `ip -j -d link show dev <name>` in `netns`.
fn ip_link(netns: &Netns, name: &str) -> Value {
    let shown: Value = serde_json::from_str(&netns.ip(&["-j", "-d", "link", "show", "dev", name])).unwrap();
    shown[0].clone()
}

/// `ip -j <args>` in `netns`.
fn ip_json(netns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&netns.ip(&full)).unwrap()
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"].as_array().unwrap().iter().any(|shown| shown == flag)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn links_are_created_changed_and_deleted_as_ip_sees_them() {
    if !as_root("links_are_created_changed_and_deleted_as_ip_sees_them") {
        return;
    }
    let host = namespace("links-host");
    let pod = namespace("links-pod");
    let host_netns = File::open(&host.path).unwrap();

    // The bridge, as the bridge plugin makes it in the host namespace.
    let bridge = host.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        assert_eq!(netlink.link("cni-missing0").unwrap(), None);
        assert_eq!(netlink.link_by_index(4_000_000).unwrap(), None);

        netlink.add_bridge("cni-test0", Some(1400), false).unwrap();
        let err = netlink.add_bridge("cni-test0", None, false).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err:?}");
        assert_eq!(err.to_string(), "RTM_NEWLINK: file exists");
        let bridge = netlink.link("cni-test0").unwrap().expect("the bridge was created");
        assert_eq!(bridge.name, "cni-test0");
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert_eq!(bridge.mtu, 1400);
        assert!(!bridge.up && !bridge.promisc && !bridge.oper_up, "{bridge:?}");
        assert_eq!((bridge.master, bridge.peer_index), (None, None));
        assert_eq!(netlink.link_by_index(bridge.index).unwrap().as_ref(), Some(&bridge));

        // VLAN filtering needs CONFIG_BRIDGE_VLAN_FILTERING: whatever `ip` gets for it, so must we.
        let by_ip = std::process::Command::new("ip")
            .args(["-n", &host.name, "link", "add", "cni-vlanip0", "type", "bridge", "vlan_filtering", "1"])
            .output()
            .unwrap();
        match netlink.add_bridge("cni-vlan0", None, true) {
            Ok(()) => assert!(by_ip.status.success(), "ip failed where we did not: {by_ip:?}"),
            Err(err) => {
                assert_eq!(err.errno(), Some(libc::EOPNOTSUPP), "{err:?}");
                assert!(String::from_utf8_lossy(&by_ip.stderr).contains("Operation not supported"), "{by_ip:?}");
            }
        }
        netlink.set_up(bridge.index).unwrap();
        assert!(netlink.link_by_index(bridge.index).unwrap().unwrap().up);
        bridge
    });
    let shown = ip_link(&host, "cni-test0");
    assert_eq!(shown["ifindex"], bridge.index);
    assert_eq!(shown["mtu"], 1400);
    assert_eq!(shown["address"], format_mac(bridge.mac.unwrap()));
    assert_eq!(shown["linkinfo"]["info_kind"], "bridge");
    assert_eq!(shown["linkinfo"]["info_data"]["vlan_filtering"], 0);
    assert!(has_flag(&shown, "UP"), "{shown}");
    if host.ip(&["link", "show"]).contains("cni-vlan0") {
        let vlan_bridge = ip_link(&host, "cni-vlan0");
        assert_eq!(vlan_bridge["linkinfo"]["info_data"]["vlan_filtering"], 1);
        assert_eq!(vlan_bridge["mtu"], 1500, "no MTU asked for: the kernel's default");
    }

    // The veth pair, as the plugin makes it from inside the pod: eth0 there, the peer straight in the host.
    let mac = [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05];
    let eth0 = pod.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        netlink.add_veth("eth0", Some(1400), Some(mac), "veth-test0", host_netns.as_fd()).unwrap();
        let err = netlink.add_veth("eth0", None, None, "veth-test1", host_netns.as_fd()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err:?}");
        // A peer name taken in the host fails too, and leaves no half pair behind.
        let err = netlink.add_veth("eth1", None, None, "veth-test0", host_netns.as_fd()).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err:?}");
        assert_eq!(netlink.link("eth1").unwrap(), None);
        assert_eq!(netlink.link("veth-test0").unwrap(), None, "the peer is not in the pod's namespace");
        netlink.link("eth0").unwrap().expect("eth0 was created")
    });
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mac, Some(mac));
    assert_eq!(eth0.mtu, 1400);
    let shown = ip_link(&pod, "eth0");
    assert_eq!(shown["address"], "0a:58:0a:58:00:05");
    assert_eq!(shown["mtu"], 1400);

    let (veth, host_mac) = host.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        let veth = netlink.link("veth-test0").unwrap().expect("the peer is in the host namespace");
        assert_eq!(veth.kind.as_deref(), Some("veth"));
        assert_eq!(veth.mtu, 1400);
        assert_eq!(veth.peer_index, Some(eth0.index));
        assert_eq!(eth0.peer_index, Some(veth.index));

        netlink.set_master(veth.index, bridge.index).unwrap();
        assert_eq!(netlink.link_by_index(veth.index).unwrap().unwrap().master, Some(bridge.index));
        // Hairpin is for bridge ports only: the bridge itself has no port settings (Go prints this text).
        let err = netlink.set_hairpin(bridge.index, true).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP), "{err:?}");
        assert_eq!(errno_text(libc::EOPNOTSUPP), "operation not supported");
        netlink.set_up(veth.index).unwrap();

        let host_mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        netlink.set_mac(veth.index, host_mac).unwrap();
        assert_eq!(netlink.link_by_index(veth.index).unwrap().unwrap().mac, Some(host_mac));
        netlink.set_promisc(bridge.index).unwrap();
        assert!(netlink.link_by_index(bridge.index).unwrap().unwrap().promisc);
        (veth, host_mac)
    });
    let shown = ip_link(&host, "veth-test0");
    assert_eq!(shown["master"], "cni-test0");
    assert_eq!(shown["address"], format_mac(host_mac));
    assert_eq!(shown["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(shown["linkinfo"]["info_slave_data"]["hairpin"], false);
    assert!(has_flag(&ip_link(&host, "cni-test0"), "PROMISC"));

    for on in [true, false] {
        host.enter(|| Netlink::open().unwrap().set_hairpin(veth.index, on)).unwrap();
        let shown = ip_link(&host, "veth-test0");
        assert_eq!(shown["linkinfo"]["info_slave_data"]["hairpin"], on, "{shown}");
    }

    // With both ends up the pod's end gets a carrier (the kernel reports it a moment later).
    let mut pod_netlink = pod.enter(|| Netlink::open().unwrap());
    pod_netlink.set_up(eth0.index).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The socket was opened in the pod and stays there, whatever thread uses it now.
        let now = pod_netlink.link("eth0").unwrap().expect("eth0 is in the pod");
        if now.up && now.oper_up {
            break;
        }
        assert!(Instant::now() < deadline, "eth0 never became operationally up: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ip_link(&pod, "eth0")["operstate"], "UP");

    // Deleting one end deletes the pair; deleting it again is ENODEV.
    host.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        netlink.delete_link(veth.index).unwrap();
        assert_eq!(netlink.link("veth-test0").unwrap(), None);
        let err = netlink.delete_link(veth.index).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV), "{err:?}");
        assert_eq!(errno_text(libc::ENODEV), "no such device");
        netlink.delete_link(bridge.index).unwrap();
        assert_eq!(netlink.link("cni-test0").unwrap(), None);
    });
    assert_eq!(pod_netlink.link("eth0").unwrap(), None, "the pod's end went with the host's");
}

#[test]
fn addresses_and_routes_are_added_listed_and_deleted_as_ip_sees_them() {
    if !as_root("addresses_and_routes_are_added_listed_and_deleted_as_ip_sees_them") {
        return;
    }
    let host = namespace("routes-host");
    let pod = namespace("routes-pod");
    let host_netns = File::open(&host.path).unwrap();
    // eth0 in the pod with its peer up in the host: a link with a carrier, as the plugin's.
    let eth0 = pod.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        netlink.add_veth("eth0", None, None, "veth-route0", host_netns.as_fd()).unwrap();
        let eth0 = netlink.link("eth0").unwrap().unwrap().index;
        netlink.set_up(eth0).unwrap();
        eth0
    });
    host.enter(|| {
        let mut netlink = Netlink::open().unwrap();
        let veth = netlink.link("veth-route0").unwrap().unwrap();
        netlink.set_up(veth.index).unwrap();
    });

    let mut netlink = pod.enter(|| Netlink::open().unwrap());
    let loopback = netlink.link("lo").unwrap().unwrap().index;

    // Addresses: IPv4 with and without a broadcast address, IPv6.
    netlink.add_address(eth0, ip("10.88.0.5"), 16).unwrap();
    netlink.add_address(eth0, ip("10.89.0.4"), 31).unwrap();
    netlink.add_address(eth0, ip("fd00:88::5"), 64).unwrap();
    let err = netlink.add_address(eth0, ip("10.88.0.5"), 16).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err:?}");
    let addresses = netlink.addresses(eth0).unwrap();
    assert_eq!(
        addresses[..2],
        [Address { ip: ip("10.88.0.5"), prefix: 16 }, Address { ip: ip("10.89.0.4"), prefix: 31 }],
        "IPv4 first, in the kernel's order: {addresses:?}"
    );
    assert!(addresses.contains(&Address { ip: ip("fd00:88::5"), prefix: 64 }), "{addresses:?}");
    assert_eq!(
        netlink.addresses(loopback).unwrap(),
        [Address { ip: ip("127.0.0.1"), prefix: 8 }, Address { ip: ip("::1"), prefix: 128 }],
        "only the link asked for"
    );
    let shown = &ip_json(&pod, &["addr", "show", "dev", "eth0"])[0]["addr_info"];
    let shown_address = |local: &str| {
        shown.as_array().unwrap().iter().find(|entry| entry["local"] == local).cloned().unwrap_or_else(|| {
            panic!("ip does not show {local}: {shown}");
        })
    };
    assert_eq!(shown_address("10.88.0.5")["prefixlen"], 16);
    assert_eq!(shown_address("10.88.0.5")["broadcast"], "10.88.255.255");
    assert_eq!(shown_address("10.89.0.4")["broadcast"], Value::Null, "a /31 has no broadcast address");
    assert_eq!(shown_address("fd00:88::5")["prefixlen"], 64);

    // Routes: default routes through gateways of both families and a route without a gateway.
    netlink.add_route(ip("0.0.0.0"), 0, Some(ip("10.88.0.1")), eth0).unwrap();
    netlink.add_route(ip("10.99.0.0"), 16, None, eth0).unwrap();
    netlink.add_route(ip("::"), 0, Some(ip("fd00:88::1")), eth0).unwrap();
    let err = netlink.add_route(ip("0.0.0.0"), 0, Some(ip("10.88.0.1")), eth0).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "the same route again: {err:?}");
    // Not NLM_F_EXCL: a second default route through another gateway goes in beside the first.
    netlink.add_route(ip("0.0.0.0"), 0, Some(ip("10.88.0.2")), eth0).unwrap();
    let err = netlink.add_route(ip("10.98.0.0"), 16, Some(ip("10.77.0.1")), eth0).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "a gateway off every subnet: {err:?}");
    assert_eq!(errno_text(libc::ENETUNREACH), "network is unreachable");

    let routes = netlink.routes(eth0).unwrap();
    for expected in [
        Route { destination: ip("0.0.0.0"), prefix: 0, gateway: Some(ip("10.88.0.1")) },
        Route { destination: ip("0.0.0.0"), prefix: 0, gateway: Some(ip("10.88.0.2")) },
        Route { destination: ip("10.99.0.0"), prefix: 16, gateway: None },
        Route { destination: ip("10.88.0.0"), prefix: 16, gateway: None },
        Route { destination: ip("::"), prefix: 0, gateway: Some(ip("fd00:88::1")) },
        Route { destination: ip("fd00:88::"), prefix: 64, gateway: None },
    ] {
        assert!(routes.contains(&expected), "{expected:?} missing from {routes:?}");
    }
    let first_v6 = routes.iter().position(|route| route.destination.is_ipv6()).unwrap();
    assert!(routes[first_v6..].iter().all(|route| route.destination.is_ipv6()), "IPv4 first: {routes:?}");
    assert!(netlink.routes(loopback).unwrap().iter().all(|route| route.prefix != 0), "none of them through lo");

    let shown = ip_json(&pod, &["-d", "route", "show", "dev", "eth0"]);
    let shown_route = |dst: &str, gateway: Option<&str>| {
        shown
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["dst"] == dst && entry["gateway"].as_str() == gateway)
            .cloned()
            .unwrap_or_else(|| panic!("ip does not show {dst} via {gateway:?}: {shown}"))
    };
    for gateway in ["10.88.0.1", "10.88.0.2"] {
        let default = shown_route("default", Some(gateway));
        assert_eq!(default["protocol"], "boot", "{default}");
        assert_eq!(default["scope"], "global", "{default}");
        assert_eq!(default["type"], "unicast", "{default}");
    }
    let direct = shown_route("10.99.0.0/16", None);
    assert_eq!(direct["scope"], "global", "scope universe without a gateway, as the Go plugins add it: {direct}");
    let shown_v6 = ip_json(&pod, &["-6", "-d", "route", "show", "dev", "eth0"]);
    let default_v6 = shown_v6.as_array().unwrap().iter().find(|entry| entry["dst"] == "default").unwrap();
    assert_eq!(default_v6["gateway"], "fd00:88::1");
    assert_eq!(default_v6["protocol"], "boot");

    // Deleting addresses; an address that is not there is EADDRNOTAVAIL.
    netlink.delete_address(eth0, ip("10.89.0.4"), 31).unwrap();
    netlink.delete_address(eth0, ip("fd00:88::5"), 64).unwrap();
    let err = netlink.delete_address(eth0, ip("10.89.0.4"), 31).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL), "{err:?}");
    assert_eq!(errno_text(libc::EADDRNOTAVAIL), "cannot assign requested address");
    let addresses = netlink.addresses(eth0).unwrap();
    assert!(addresses.contains(&Address { ip: ip("10.88.0.5"), prefix: 16 }), "{addresses:?}");
    assert!(
        !addresses.iter().any(|address| [ip("10.89.0.4"), ip("fd00:88::5")].contains(&address.ip)),
        "{addresses:?}"
    );
    let shown = ip_json(&pod, &["addr", "show", "dev", "eth0"]).to_string();
    assert!(shown.contains("10.88.0.5") && !shown.contains("10.89.0.4") && !shown.contains("fd00:88::5"), "{shown}");
}

#[test]
fn errno_texts_and_macs_print_as_go_prints_them() {
    // Go's syscall.Errno.Error() for the errors netlink answers, and its fallback past the table.
    for (errno, text) in [
        (libc::EPERM, "operation not permitted"),
        (libc::ENOENT, "no such file or directory"),
        (libc::EBUSY, "device or resource busy"),
        (libc::EEXIST, "file exists"),
        (libc::ENODEV, "no such device"),
        (libc::EINVAL, "invalid argument"),
        (libc::ERANGE, "numerical result out of range"),
        (libc::EOPNOTSUPP, "operation not supported"),
        (libc::EADDRNOTAVAIL, "cannot assign requested address"),
        (libc::ENETUNREACH, "network is unreachable"),
        (libc::ENOBUFS, "no buffer space available"),
        (libc::EHWPOISON, "memory page has hardware error"),
        (0, "errno 0"),
        (41, "errno 41"),
        (134, "errno 134"),
        (-1, "errno -1"),
    ] {
        assert_eq!(errno_text(errno), text, "errno {errno}");
    }
    assert_eq!(format_mac([0x0a, 0x58, 0xAB, 0xcd, 0x00, 0xff]), "0a:58:ab:cd:00:ff");
}
