//! The native `portmap` against Debian's binary, in twin worlds (support::twins): after a bridge attached
//! the pod (the native bridge, the same in both worlds), the same portmap operations must give the same
//! answers and leave the same nat rules (iptables-save, ip6tables-save), sysctls and everything else; and
//! what one made, the other deletes.

mod support;

use berth_cni::Command;
use serde_json::{Value, json};
use support::Netns;
use support::twins::{Driver, Outcome, Twins, World, masked};

fn bridge_config(dual_stack: bool) -> Value {
    let mut ranges = vec![json!([{"subnet": "10.66.0.0/24"}])];
    if dual_stack {
        ranges.push(json!([{"subnet": "fd66::/64"}]));
    }
    json!({
        "cniVersion": "1.0.0", "name": "npm", "type": "bridge", "bridge": "cnipm0",
        "isGateway": true, "ipMasq": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

fn mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "0.0.0.0"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 9090, "containerPort": 90, "protocol": "tcp", "hostIP": "::1"}
    ])
}

/// Attaches the world's pod (or `pod`) with the native bridge; returns its result.
fn attach(world: &World, pod: &Netns, id: &str, dual_stack: bool) -> Value {
    world
        .invoke_in(pod, "bridge", Driver::Native, Command::Add, id, &bridge_config(dual_stack))
        .expect("bridge ADD")
        .expect("a bridge result")
}

fn portmap_config(previous: &Value, extra: Value) -> Value {
    let mut config = json!({
        "cniVersion": "1.0.0", "name": "npm", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings()},
        "prevResult": previous,
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

/// ADD, CHECK, DEL, DEL again for `extra` configuration, each step the same on both sides; `prepare`
/// readies each world's host first.
fn same_lifecycle(tag: &str, dual_stack: bool, extra: Value, prepare: fn(&World)) {
    let twins = Twins::new(tag);
    prepare(&twins.binary);
    prepare(&twins.native);
    let id = format!("{tag}-pod");
    let binary_result = attach(&twins.binary, &twins.binary.pod, &id, dual_stack);
    let native_result = attach(&twins.native, &twins.native.pod, &id, dual_stack);
    let config = |world: &World| {
        let previous = if std::ptr::eq(world, &twins.binary) { &binary_result } else { &native_result };
        portmap_config(previous, extra.clone())
    };
    let (binary, native) = twins.step_with("portmap", Command::Add, &id, config);
    assert_eq!(native.as_ref().ok().cloned().flatten(), Some(native_result.clone()), "ADD passes the result on");
    assert_eq!(binary.as_ref().ok().cloned().flatten(), Some(binary_result.clone()));
    let rules = twins.native.state()["host"]["iptables"].to_string();
    assert!(rules.contains("CNI-HOSTPORT-DNAT") && rules.contains("CNI-DN-"), "the DNAT rules are there: {rules}");
    // CHECK: the same answer (1.1.1 checks an IPv4 pod's chain in the IPv6 table too, and fails there).
    let _ = twins.step_with("portmap", Command::Check, &id, config);
    twins.step_with("portmap", Command::Del, &id, config).1.expect("DEL");
    twins.step_with("portmap", Command::Del, &id, config).1.expect("a second DEL");
    let rules = twins.native.state()["host"]["iptables"].to_string();
    assert!(!rules.contains("CNI-DN-"), "the pod's chain is gone: {rules}");
}

#[test]
fn ipv4_hostports_with_host_ips() {
    same_lifecycle("v4", false, json!({}), |_| {});
}

#[test]
fn dual_stack_hostports() {
    same_lifecycle("ds", true, json!({}), |_| {});
}

#[test]
fn without_snat_with_conditions_and_another_mark_bit() {
    same_lifecycle("ns", false, json!({"snat": false, "conditionsV4": ["!", "-s", "10.9.0.0/16"]}), |_| {});
    same_lifecycle("mb", false, json!({"markMasqBit": 5}), |_| {});
    // An external mark chain is the node's (kube-proxy's KUBE-MARK-MASQ), made before any pod.
    let kube_proxy = |world: &World| {
        for tool in ["iptables", "ip6tables"] {
            support::run("ip", &["netns", "exec", &world.host.name, tool, "-t", "nat", "-N", "KUBE-MARK-MASQ"]);
        }
    };
    same_lifecycle(
        "ex",
        true,
        json!({"externalSetMarkChain": "KUBE-MARK-MASQ", "conditionsV6": ["-d", "::1"]}),
        kube_proxy,
    );
}

/// `portmap_config` for a pod whose result is `previous`, mapping `mappings` instead of [`mappings()`].
fn portmap_with(previous: &Value, mappings: Value) -> Value {
    let mut config = portmap_config(previous, json!({}));
    config["runtimeConfig"]["portMappings"] = mappings;
    config
}

/// Two pods in each world, both attached by the bridge: the world's own (`<tag>-a`) and a second namespace
/// per world (`<tag>-b`).
struct TwoPods {
    tag: String,
    /// The second pods' namespaces: the binary world's, the native world's.
    second: [Netns; 2],
    /// Each world's (first pod's result, second pod's result), in the same order.
    results: Vec<(Value, Value)>,
}

impl TwoPods {
    fn attach(twins: &Twins, tag: &str) -> TwoPods {
        let second = [
            Netns::new(format!("tw-{tag}2-b-{}", std::process::id())),
            Netns::new(format!("tw-{tag}2-n-{}", std::process::id())),
        ];
        let results = [&twins.binary, &twins.native]
            .into_iter()
            .zip(&second)
            .map(|(world, second)| {
                (
                    attach(world, &world.pod, &format!("{tag}-a"), false),
                    attach(world, second, &format!("{tag}-b"), false),
                )
            })
            .collect();
        TwoPods { tag: tag.to_owned(), second, results }
    }

    /// The portmap configuration of `world`'s first pod, with the default [`mappings()`].
    fn first_config(&self, twins: &Twins, world: &World) -> Value {
        let index = usize::from(std::ptr::eq(world, &twins.native));
        portmap_config(&self.results[index].0, json!({}))
    }

    /// portmap `command` for each world's second pod, mapping `mappings`: the binary's answer, the native one.
    fn second_step(&self, twins: &Twins, command: Command, mappings: &Value) -> [Outcome; 2] {
        let id = format!("{}-b", self.tag);
        let config = |index: usize| portmap_with(&self.results[index].1, mappings.clone());
        [
            twins.binary.invoke_in(&self.second[0], "portmap", Driver::Binary, command, &id, &config(0)),
            twins.native.invoke_in(&self.second[1], "portmap", Driver::Native, command, &id, &config(1)),
        ]
    }
}

#[test]
fn two_pods_share_the_top_level_chains() {
    let twins = Twins::new("two");
    let pods = TwoPods::attach(&twins, "two");
    let config_a = |world: &World| pods.first_config(&twins, world);
    twins.step_with("portmap", Command::Add, "two-a", config_a).1.expect("ADD");
    // The second pod maps other ports; it runs in each world's second pod namespace.
    let mappings_b = json!([{"hostPort": 7070, "containerPort": 70, "protocol": "tcp"}]);
    let [binary, native] = pods.second_step(&twins, Command::Add, &mappings_b);
    assert!(binary.is_ok() && native.is_ok(), "{binary:?} {native:?}");
    twins.assert_same_state("after the second pod's ADD");
    // Deleting the first pod leaves the shared chains and the second pod's rules.
    twins.step_with("portmap", Command::Del, "two-a", config_a).1.expect("DEL");
    let rules = twins.native.state()["host"]["iptables"].to_string();
    assert!(rules.contains("7070") && rules.contains("CNI-HOSTPORT-SETMARK"), "{rules}");
    assert!(!rules.contains("8080"), "{rules}");
    let [binary, native] = pods.second_step(&twins, Command::Del, &mappings_b);
    assert_eq!(native, binary);
    twins.assert_same_state("after both DELs");
}

#[test]
fn refusals_match() {
    let twins = Twins::new("err");
    let previous = attach(&twins.binary, &twins.binary.pod, "err-1", false);
    let _ = attach(&twins.native, &twins.native.pod, "err-1", false);
    for extra in [
        json!({"markMasqBit": 3, "externalSetMarkChain": "X"}),
        json!({"markMasqBit": 40}),
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 80, "containerPort": 0, "protocol": "tcp"}]}}),
        json!({"runtimeConfig": {"portMappings": [{"hostPort": -1, "containerPort": 80, "protocol": "tcp"}]}}),
    ] {
        for command in [Command::Add, Command::Del, Command::Check] {
            let (_, native) =
                twins.step_with("portmap", command, "err-1", |_| portmap_config(&previous, extra.clone()));
            assert!(native.is_err(), "{command} {extra}: refused");
        }
    }
    // Without a previous result: ADD and CHECK refuse, DEL goes on.
    let mut alone = portmap_config(&previous, json!({}));
    alone.as_object_mut().unwrap().remove("prevResult");
    assert!(twins.step("portmap", Command::Add, "err-1", &alone).is_err());
    assert!(twins.step("portmap", Command::Check, "err-1", &alone).is_err());
    assert!(twins.step("portmap", Command::Del, "err-1", &alone).is_ok());
    // No mappings: the previous result passes.
    let mut none = portmap_config(&previous, json!({}));
    none["runtimeConfig"] = json!({});
    assert_eq!(twins.step("portmap", Command::Add, "err-1", &none), Ok(Some(previous)));
}

/// What one path made, the other deletes.
#[test]
fn each_path_deletes_what_the_other_made() {
    let twins = Twins::new("x");
    let results: Vec<Value> =
        [&twins.binary, &twins.native].into_iter().map(|world| attach(world, &world.pod, "x-1", true)).collect();
    let config = |index: usize| portmap_config(&results[index], json!({}));
    twins.binary.invoke("portmap", Driver::Binary, Command::Add, "x-1", &config(0)).expect("binary ADD");
    twins.native.invoke("portmap", Driver::Native, Command::Add, "x-1", &config(1)).expect("native ADD");
    twins
        .binary
        .invoke("portmap", Driver::Native, Command::Del, "x-1", &config(0))
        .expect("native DEL of the binary's ADD");
    twins
        .native
        .invoke("portmap", Driver::Binary, Command::Del, "x-1", &config(1))
        .expect("binary DEL of the native ADD");
    twins.assert_same_state("after each deleted the other's");
    let binary = twins.binary.state();
    assert!(!binary.to_string().contains("CNI-DN-"), "no pod chain left: {binary:#}");
}

/// After a UDP hostPort is set up, the conntrack entries of traffic to that port are gone (an earlier pod's
/// would otherwise hold the port's packets), and others stay.
#[test]
fn stale_udp_conntrack_entries_of_the_host_ports_are_deleted() {
    support::require_prerequisites();
    let host = Netns::new(format!("tw-ct-{}", std::process::id()));
    // Connections are tracked in a namespace once a rule needs conntrack.
    let track = [
        "netns",
        "exec",
        &host.name,
        "iptables",
        "-A",
        "OUTPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-j",
        "ACCEPT",
    ];
    support::run("ip", &track);
    host.enter(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for port in [5353, 5354] {
            socket.send_to(b"stale", ("127.0.0.1", port)).unwrap();
        }
    });
    let count = |port: u16| host.enter(|| berth_cni::native::conntrack::count_udp_to_ports(false, &[port]).unwrap());
    assert_eq!((count(5353), count(5354)), (1, 1), "one entry per port before");
    host.enter(|| berth_cni::native::conntrack::delete_udp_to_ports(false, &[5353])).unwrap();
    assert_eq!((count(5353), count(5354)), (0, 1), "the mapped port's entry is gone, the other stays");
}

/// Pods set up at the same time on a fresh node (the shared chains do not exist yet) all get their
/// hostPorts, and the shared entry rules exist once.
#[test]
fn concurrent_first_pods_keep_each_others_rules() {
    let twins = Twins::new("conc");
    let world = &twins.native;
    let pods: Vec<Netns> = (0..6).map(|i| Netns::new(format!("tw-conc{i}-{}", std::process::id()))).collect();
    let results: Vec<Value> =
        pods.iter().enumerate().map(|(i, pod)| attach(world, pod, &format!("conc-{i}"), false)).collect();
    std::thread::scope(|scope| {
        for (i, (pod, result)) in pods.iter().zip(&results).enumerate() {
            scope.spawn(move || {
                let config =
                    portmap_with(result, json!([{"hostPort": 7100 + i, "containerPort": 80, "protocol": "tcp"}]));
                world
                    .invoke_in(pod, "portmap", Driver::Native, Command::Add, &format!("conc-{i}"), &config)
                    .expect("portmap ADD");
            });
        }
    });
    let rules = support::run("ip", &["netns", "exec", &world.host.name, "iptables-save", "-t", "nat"]);
    for i in 0..6 {
        assert!(rules.contains(&format!("--dports {}", 7100 + i)), "pod {i}'s entry rule is there:\n{rules}");
    }
    for chain in ["PREROUTING", "OUTPUT", "POSTROUTING"] {
        let entries = rules
            .lines()
            .filter(|line| line.starts_with(&format!("-A {chain} ")) && line.contains("CNI-HOSTPORT"))
            .count();
        assert_eq!(entries, 1, "one shared entry rule in {chain}:\n{rules}");
    }
}

/// A hostPort that is taken, by a host process listening on it and by another pod's mapping: neither path
/// refuses it (portmap never checks; kubelet's scheduling keeps hostPorts apart), both leave the same rules,
/// and the pod mapped first keeps the port's traffic until it is deleted.
#[test]
fn a_taken_host_port_is_mapped_the_same_way() {
    let twins = Twins::new("taken");
    let listeners: Vec<std::net::TcpListener> = [&twins.binary, &twins.native]
        .into_iter()
        .map(|world| world.host.enter(|| std::net::TcpListener::bind("0.0.0.0:8080")).expect("a host listener"))
        .collect();
    let pods = TwoPods::attach(&twins, "taken");
    let config_a = |world: &World| pods.first_config(&twins, world);
    twins.step_with("portmap", Command::Add, "taken-a", config_a).1.expect("ADD of a port a host process holds");
    let mappings_b = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]);
    let add_b = pods.second_step(&twins, Command::Add, &mappings_b);
    assert!(add_b[0].is_ok(), "the binary maps a port another pod maps: {:?}", add_b[0]);
    assert_eq!(masked(&add_b[1]), masked(&add_b[0]), "the same answer");
    twins.assert_same_state("after both pods mapped 8080");
    let rules: String = twins.native.state()["host"]["iptables"]
        .as_array()
        .expect("iptables-save lines")
        .iter()
        .filter_map(|line| Some(format!("{}\n", line.as_str()?)))
        .collect();
    let first_pod_chain = rules
        .lines()
        .find(|line| line.starts_with("-A CNI-HOSTPORT-DNAT "))
        .and_then(|line| line.rsplit_once("-j ").map(|(_, chain)| chain.trim().to_owned()))
        .unwrap_or_else(|| panic!("no jump in CNI-HOSTPORT-DNAT:\n{rules}"));
    let first_pod_address =
        pods.results[1].0["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    assert!(
        rules.lines().any(|line| line.starts_with(&format!("-A {first_pod_chain} "))
            && line.contains(&format!("--to-destination {first_pod_address}:80"))),
        "the first pod's chain ({first_pod_chain}, {first_pod_address}) comes first:\n{rules}"
    );
    // Deleting the first pod hands the port to the second; deleting the second leaves no pod chain.
    twins.step_with("portmap", Command::Del, "taken-a", config_a).1.expect("DEL");
    let rules = twins.native.state()["host"]["iptables"].to_string();
    assert!(rules.contains("8080"), "the second pod keeps its mapping: {rules}");
    let del_b = pods.second_step(&twins, Command::Del, &mappings_b);
    assert_eq!(masked(&del_b[1]), masked(&del_b[0]));
    twins.assert_same_state("after both DELs");
    assert!(!twins.native.state().to_string().contains("CNI-DN-"), "no pod chain left");
    drop(listeners);
}
