//! A chain that fails runs the same on both paths: for a malformed configuration, an exhausted range and a
//! plugin failing mid-chain, the in-process chain and the binaries give an error of the same kind (so the
//! same gRPC code) and the same message (up to the iptables command a failed rule names: the binary runs
//! `iptables`, berth `iptables-restore`), roll back the same way, and leave nothing on the host.

mod support;

use berth_cni::{Capabilities, ChainPath, Cni, CniError, CniOptions, NativeMode, PortMapping};
use berth_error_kind::{Kinded, chain};
use serde_json::{Value, json};
use support::Rig;

/// The two paths, each on a rig (host namespace, subnet, lease and cache directories) of its own.
fn rigs(tag: &str, octet: u8) -> [(Rig, Cni); 2] {
    let native = Rig::new(&format!("{tag}n"), octet);
    let binary = Rig::new(&format!("{tag}b"), octet + 1);
    let off = Cni::new(CniOptions { native: NativeMode::Off, ..binary.cni.options().clone() });
    let auto = Cni::new(native.cni.options().clone());
    [(native, auto), (binary, off)]
}

/// ADD of `container_id` in `pod` on `rig` with `plugins`.
fn add(
    rig: &Rig,
    cni: &Cni,
    pod: &support::Netns,
    container_id: &str,
    plugins: Vec<Value>,
    capabilities: Capabilities,
) -> Result<(), CniError> {
    let network = rig.write_config("10-test.conflist", "chainfail", plugins);
    rig.host.enter(|| cni.add(&network, &rig.request(container_id, pod, capabilities))).map(drop)
}

/// An error's message with what differs between the rigs (subnet and names) masked.
fn masked(err: &CniError, rig: &Rig) -> String {
    let message = chain(err)
        .replace(&rig.bridge, "<bridge>")
        .replace(&rig.tag, "<tag>")
        .replace(&format!("10.88.{}.", rig.subnet_octet), "10.88.x.");
    // Cut before the iptables command line a failed rule reports.
    message.split("running [").next().unwrap_or_default().to_owned()
}

/// Both paths fail alike for `plugins` (built for each rig) and leave nothing; when `retry_needed`, the
/// rollback itself failed and both keep the cache entry a later DEL retries with.
fn same_failure(
    tag: &str,
    octet: u8,
    plugins: impl Fn(&Rig) -> Vec<Value>,
    capabilities: Capabilities,
    retry_needed: bool,
) -> String {
    let [(native_rig, native), (binary_rig, binary)] = rigs(tag, octet);
    let list = json!({"cniVersion": "1.0.0", "plugins": plugins(&native_rig)});
    assert_eq!(native.chain_path(&list), ChainPath::Native, "the chain runs in process");
    let id = format!("{tag}-ctr");
    let (native_pod, binary_pod) = (native_rig.pod(&id), binary_rig.pod(&id));
    let native_err =
        add(&native_rig, &native, &native_pod, &id, plugins(&native_rig), capabilities.clone()).unwrap_err();
    let binary_err = add(&binary_rig, &binary, &binary_pod, &id, plugins(&binary_rig), capabilities).unwrap_err();
    assert_eq!(native_err.kind(), binary_err.kind(), "the same kind of error:\n{native_err:?}\n{binary_err:?}");
    assert_eq!(masked(&native_err, &native_rig), masked(&binary_err, &binary_rig));
    for rig in [&native_rig, &binary_rig] {
        let cached = berth_cni::cached_container_ids(&rig.cache_dir()).unwrap();
        assert_eq!(cached.contains(&id), retry_needed, "the cache entry for a retry: {cached:?}");
        if retry_needed {
            std::fs::remove_dir_all(rig.cache_dir().join(&id)).unwrap();
        }
        rig.assert_nothing_left(&id);
    }
    chain(&native_err)
}

#[test]
fn a_malformed_configuration_fails_alike() {
    let message = same_failure(
        "malf",
        70,
        |rig| {
            let mut bridge = rig.bridge_plugin();
            bridge["isGateway"] = json!("yes");
            vec![bridge, json!({"type": "loopback"})]
        },
        Capabilities::default(),
        true,
    );
    assert!(message.contains("cannot unmarshal string"), "{message}");
}

#[test]
fn a_plugin_failing_mid_chain_is_rolled_back_alike() {
    // portmap fails after bridge attached the pod: its mark chain does not exist on this node.
    let mapping = PortMapping { host_port: 18080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() };
    let message = same_failure(
        "mid",
        72,
        |rig| {
            vec![
                rig.bridge_plugin(),
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "externalSetMarkChain": "NO-SUCH-CHAIN"}),
                json!({"type": "loopback"}),
            ]
        },
        Capabilities { port_mappings: vec![mapping], ..Capabilities::default() },
        false,
    );
    assert!(message.contains("NO-SUCH-CHAIN") && message.contains("rolled back"), "{message}");
}

#[test]
fn an_exhausted_range_fails_alike_and_keeps_the_first_pod() {
    let mut failures = Vec::new();
    for (rig, cni) in rigs("full", 74) {
        let plugins = |rig: &Rig| {
            let mut bridge = rig.bridge_plugin();
            bridge["ipam"]["ranges"] = json!([[{"subnet": format!("10.88.{}.0/30", rig.subnet_octet)}]]);
            vec![bridge, json!({"type": "loopback"})]
        };
        let (first, second) = (rig.pod("full-a"), rig.pod("full-b"));
        add(&rig, &cni, &first, "full-a", plugins(&rig), Capabilities::default())
            .expect("the first pod gets the address");
        let err = add(&rig, &cni, &second, "full-b", plugins(&rig), Capabilities::default()).unwrap_err();
        assert!(chain(&err).contains("no IP addresses available in range set"), "{}", chain(&err));
        assert_eq!(rig.leases().len(), 1, "only the first pod's lease");
        rig.host.enter(|| cni.del(&rig.reference("full-a", Some(&first)), None)).expect("DEL");
        rig.assert_nothing_left("full-a");
        rig.assert_nothing_left("full-b");
        failures.push((err.kind(), masked(&err, &rig)));
    }
    assert_eq!(failures[0], failures[1], "native vs binary");
}
