//! Root tests of a chain that fails: a plugin that hangs, crashes, prints garbage or returns a CNI error, a
//! missing plugin binary, a missing netns, and a rollback DEL that fails once. ADD must fail with a message
//! naming the plugin, the step, the network and the container; the real bridge plugin that ran first must be
//! undone (no veth, lease, iptables rule or cache entry left); and the attachment must stay removable.
//! `hack/cni/berth-test-plugin` is the misbehaving plugin.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_cni::{Capabilities, Cni, CniError, CniObserver, CniOptions, PluginCallOutcome, PluginError};
use berth_error_kind::{ErrorKind, Kinded, chain};
use serde_json::json;
use support::Rig;

/// ADD with bridge followed by the test plugin configured by `test_plugin`; returns the error.
fn failing_add(rig: &Rig, cni: &Cni, container_id: &str, test_plugin: serde_json::Value) -> CniError {
    let mut plugin = json!({"type": "berth-test-plugin"});
    plugin.as_object_mut().unwrap().extend(test_plugin.as_object().unwrap().clone());
    let network = rig.write_config("10-test.conflist", "faulty", vec![rig.bridge_plugin(), plugin]);
    let pod = rig.pod(container_id);
    let err =
        rig.host.enter(|| cni.add(&network, &rig.request(container_id, &pod, Capabilities::default())).unwrap_err());
    // The pod side is undone as well: bridge's DEL removed eth0 while the netns still existed.
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "eth0 left in the pod after a failed ADD:\n{links}");
    err
}

fn assert_rolled_back(err: &CniError, container_id: &str) -> String {
    assert!(matches!(err, CniError::AddRolledBack { .. }), "{err:?}");
    let message = chain(err);
    for part in [
        format!("CNI ADD of network \"faulty\" for container {container_id}"),
        "plugin \"berth-test-plugin\" (#1 in the chain)".to_owned(),
        "rolled back with DEL".to_owned(),
    ] {
        assert!(message.contains(&part), "{part:?} missing from: {message}");
    }
    message
}

#[test]
fn a_hanging_plugin_is_killed_at_the_timeout_and_the_add_rolled_back() {
    let rig = Rig::new("hang", 31);
    let cni = Cni::new(CniOptions { plugin_timeout: Duration::from_secs(1), ..rig.cni.options().clone() });
    let started = Instant::now();
    let err = failing_add(&rig, &cni, "ctr-hang", json!({"add": "hang", "del": "pass"}));
    let elapsed = started.elapsed();
    let message = assert_rolled_back(&err, "ctr-hang");
    assert!(message.contains("timed out after 1s"), "{message}");
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert!(elapsed < Duration::from_secs(8), "ADD + rollback took {elapsed:?}");
    rig.assert_nothing_left("ctr-hang");
}

#[test]
fn a_crashing_plugin_is_reported_with_its_signal_and_stderr_and_rolled_back() {
    let rig = Rig::new("crash", 32);
    let err = failing_add(&rig, &rig.cni, "ctr-crash", json!({"add": "crash"}));
    let message = assert_rolled_back(&err, "ctr-crash");
    assert!(message.contains("signal: 11") && message.contains("stderr: about to crash"), "{message}");
    assert_eq!(err.kind(), ErrorKind::Internal);
    rig.assert_nothing_left("ctr-crash");
}

#[test]
fn garbage_output_is_refused_and_rolled_back() {
    let rig = Rig::new("garbage", 33);
    let err = failing_add(&rig, &rig.cni, "ctr-garbage", json!({"add": "garbage"}));
    let message = assert_rolled_back(&err, "ctr-garbage");
    assert!(message.contains("not a valid CNI result") && message.contains("this is not JSON"), "{message}");
    rig.assert_nothing_left("ctr-garbage");
}

#[test]
fn a_cni_error_is_reported_with_the_plugins_own_message() {
    let rig = Rig::new("error", 34);
    let err = failing_add(&rig, &rig.cni, "ctr-error", json!({"add": "error"}));
    let message = assert_rolled_back(&err, "ctr-error");
    assert!(
        message.ends_with("failed with CNI error code 7: injected ADD failure (berth-test-plugin ADD)"),
        "{message}"
    );
    rig.assert_nothing_left("ctr-error");
}

/// What an observer heard: (network, plugin, command, outcome).
#[derive(Debug, Default)]
struct Heard(Mutex<Vec<(String, String, String, String)>>);

impl CniObserver for Heard {
    fn plugin_finished(&self, call: &PluginCallOutcome<'_>) {
        assert!(call.duration > Duration::ZERO);
        let outcome = call.error.map_or("ok", PluginError::outcome);
        let heard = (call.network.to_owned(), call.plugin.to_owned(), call.command.to_string(), outcome.to_owned());
        self.0.lock().unwrap().push(heard);
    }
}

#[test]
fn the_observer_hears_every_plugin_call_of_a_failed_add_and_its_rollback() {
    let rig = Rig::new("observer", 38);
    let heard = Arc::new(Heard::default());
    let cni = rig.cni.clone().with_observer(heard.clone());
    let err = failing_add(&rig, &cni, "ctr-observed", json!({"add": "error"}));
    assert_rolled_back(&err, "ctr-observed");
    let calls = heard.0.lock().unwrap().clone();
    let expected = [
        ("bridge", "ADD", "ok"),
        ("berth-test-plugin", "ADD", "cni_error"),
        // The rollback: DEL of the whole chain, in reverse.
        ("berth-test-plugin", "DEL", "ok"),
        ("bridge", "DEL", "ok"),
    ]
    .map(|(plugin, command, outcome)| ("faulty".to_owned(), plugin.to_owned(), command.to_owned(), outcome.to_owned()));
    assert_eq!(calls, expected.to_vec());
    rig.assert_nothing_left("ctr-observed");
}

#[test]
fn a_missing_plugin_binary_fails_before_anything_is_created() {
    let rig = Rig::new("missing", 35);
    let plugins = vec![rig.bridge_plugin(), json!({"type": "no-such-plugin"})];
    let network = rig.write_config("10-test.conflist", "faulty", plugins);
    let pod = rig.pod("a");
    let err = rig
        .host
        .enter(|| rig.cni.add(&network, &rig.request("ctr-missing", &pod, Capabilities::default())).unwrap_err());
    assert!(
        matches!(&err, CniError::Plugin { plugin, index: 1, source, .. }
            if plugin == "no-such-plugin" && matches!(**source, PluginError::NotFound { .. })),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let message = chain(&err);
    assert!(message.contains("plugin binary not found in") && message.contains("/usr/lib/cni"), "{message}");
    // Not even the bridge exists: the chain never started.
    assert!(!rig.host.ip(&["-o", "link", "show"]).contains(&rig.bridge));
    rig.assert_nothing_left("ctr-missing");
}

#[test]
fn a_missing_netns_fails_add_before_anything_is_created() {
    let rig = Rig::new("nonetns-add", 36);
    let network = rig.write_config("10-test.conflist", "faulty", rig.standard_plugins());
    let pod = rig.pod("a");
    let request = rig.request("ctr-nons", &pod, Capabilities::default());
    drop(pod);
    let err = rig.host.enter(|| rig.cni.add(&network, &request).unwrap_err());
    assert!(matches!(err, CniError::Netns { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    rig.assert_nothing_left("ctr-nons");
}

#[test]
fn a_failed_rollback_keeps_the_cache_entry_and_a_later_del_finishes_the_job() {
    let rig = Rig::new("rollback", 37);
    let marker = rig.temp.path().join("del-may-succeed");
    let err = failing_add(
        &rig,
        &rig.cni,
        "ctr-rollback",
        json!({"add": "error", "del": "error-unless-marker", "marker": marker}),
    );
    assert!(matches!(err, CniError::RollbackFailed { .. }), "{err:?}");
    let message = chain(&err);
    assert!(message.contains("the rollback DEL failed too") && message.contains("injected DEL failure"), "{message}");
    // The bridge's DEL ran although the test plugin's failed (DEL goes through the whole chain): the lease
    // is already released; the cache entry stays because the attachment is not fully detached.
    assert!(rig.leases().is_empty(), "{:?}", rig.leases());
    assert_eq!(berth_cni::cached_container_ids(&rig.cache_dir()).unwrap(), ["ctr-rollback"]);

    let pod_path = rig.host.path.parent().unwrap().join(format!("{}-ctr-rollback", rig.tag));
    let reference =
        berth_cni::AttachmentRef { container_id: "ctr-rollback".into(), ifname: "eth0".into(), netns: Some(pod_path) };
    let err = rig.host.enter(|| rig.cni.del(&reference, None).unwrap_err());
    assert!(chain(&err).contains("CNI DEL of network \"faulty\" for container ctr-rollback"), "{}", chain(&err));
    std::fs::write(&marker, "").unwrap();
    let detached = rig.host.enter(|| rig.cni.del(&reference, None).unwrap());
    assert_eq!(detached.networks, ["faulty"]);
    rig.assert_nothing_left("ctr-rollback");
}
