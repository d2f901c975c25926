//! CDI devices: a container asks for devices by name (`CDI_devices`, or the `cdi.k8s.io/` annotations older
//! device plugins set) and gets the edits of the spec files in berth's CDI directories: a device node (the
//! host's /dev/null under another name), a mount, environment variables and a group. A spec file written
//! while berth runs is used without a restart; an unknown device fails CreateContainer with InvalidArgument
//! naming it, and nothing is left.

use berth::cri::v1::*;
use tonic::Code;

use crate::containers::leftovers;
use crate::support::cri::{
    container_config, create, create_refused, exec_out, pull, run_pod, start, stop_and_remove_pod,
};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

#[tokio::test]
async fn cdi_devices_bring_their_nodes_mounts_environment_and_groups_and_an_unknown_one_is_refused() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let dirs = DaemonDirs::new();
    let etc_cdi = dirs.path().join("etc-cdi");
    let run_cdi = dirs.path().join("run-cdi");
    let shared = dirs.path().join("cdi-shared");
    for dir in [&etc_cdi, &run_cdi, &shared] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(shared.join("firmware.bin"), b"firmware\n").unwrap();
    std::fs::write(
        etc_cdi.join("berth-test.yaml"),
        format!(
            "cdiVersion: 0.6.0\nkind: berth.test/null\ndevices:\n- name: one\n  containerEdits:\n    env: [NULL_DEVICE=one]\n    deviceNodes:\n    - path: /dev/berth-null\n      hostPath: /dev/null\n      permissions: rw\n    mounts:\n    - hostPath: {}\n      containerPath: /opt/firmware\n      options: [ro, nosuid]\n    additionalGIDs: [4321]\ncontainerEdits:\n  env: [BERTH_TEST_CDI=yes]\n",
            shared.display()
        ),
    )
    .unwrap();
    dirs.write_config(&format!(
        "[registries.\"{}\"]\ninsecure = true\n[cdi]\nspec_dirs = [\"{}\", \"{}\"]\n",
        registry.address,
        etc_cdi.display(),
        run_cdi.display()
    ));
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = crate::support::cri::pod_config("cdi", &logs, crate::support::cri::node_network());
    let pod = run_pod(&mut client, &pod_config).await;

    // Written after berth started, in the directory that takes precedence.
    std::fs::write(
        run_cdi.join("late.json"),
        r#"{"cdiVersion": "1.0.0", "kind": "berth.test/null", "devices": [{"name": "two", "containerEdits": {"env": ["NULL_DEVICE=two", "SECOND=1"], "deviceNodes": [{"path": "/dev/berth-zero", "hostPath": "/dev/zero"}]}}]}"#,
    )
    .unwrap();

    let mut config = container_config("devices", busybox, &["sleep", "1000"]);
    config.cdi_devices = vec![CdiDevice { name: "berth.test/null=one".into() }];
    config.annotations.insert("cdi.k8s.io/test-plugin".into(), "berth.test/null=two,berth.test/null=one".into());
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;

    let (code, out) = exec_out(
        &mut client,
        &id,
        &[
            "sh",
            "-c",
            "echo x > /dev/berth-null && head -c 4 /dev/berth-zero | wc -c && stat -c '%t:%T' /dev/berth-null",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["4", "1:3"], "{out}");
    let (_, env) = exec_out(&mut client, &id, &["env"]).await;
    // Devices apply in order: two's NULL_DEVICE replaces one's.
    for expected in ["NULL_DEVICE=two", "SECOND=1", "BERTH_TEST_CDI=yes"] {
        assert!(env.lines().any(|l| l == expected), "{expected} missing: {env}");
    }
    let (code, out) = exec_out(&mut client, &id, &["cat", "/opt/firmware/firmware.bin"]).await;
    assert_eq!((code, out.as_str()), (0, "firmware\n"));
    let (code, _) = exec_out(&mut client, &id, &["touch", "/opt/firmware/new"]).await;
    assert_ne!(code, 0, "the CDI mount is read-only as its options say");
    let (_, status) = exec_out(&mut client, &id, &["cat", "/proc/self/status"]).await;
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap_or_default();
    assert!(groups.split_whitespace().any(|g| g == "4321"), "{groups}");

    // Unknown, and malformed: InvalidArgument naming the device; nothing is created.
    for (name, expected) in [("berth.test/null=three", "berth.test/null=three"), ("no-vendor", "no-vendor")] {
        let mut config = container_config("unknown", busybox, &["sleep", "1000"]);
        config.cdi_devices = vec![CdiDevice { name: name.into() }];
        let status = create_refused(&mut client, &pod, &pod_config, config).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    let listed =
        client.runtime.list_containers(ListContainersRequest { filter: None }).await.unwrap().into_inner().containers;
    assert_eq!(listed.len(), 1, "only the container with known devices exists: {listed:?}");

    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, std::slice::from_ref(&id));
    assert!(left.is_empty(), "{left:#?}");
}
