//! CheckpointContainer through the real CRIU: a pod on a CNI network runs a shell whose counter lives only
//! in its memory; the checkpoint archive has CRI-O's layout (config, spec, CRIU images, the root
//! filesystem's changes, the log), the container keeps counting, and a failed or refused checkpoint leaves
//! the container running and no partial archive behind.

use std::path::Path;
use std::time::Duration;

use berth::cli::client::Client;
use berth::cri::v1::*;
use tonic::Code;

use crate::containers::leftovers;
use crate::pods_network::{pod_config, require_plugins, write_bridge_conflist, write_daemon_config};
use crate::support::cri::{container_config, exec_out, run_container, stop_and_remove_pod, wait_exited};
use crate::support::netns::TestNetns;
use crate::support::registry::TestRegistry;
use crate::support::{DaemonDirs, require_tool};

/// A shell counting in a variable (its memory is the only place the count is), writing each value to a
/// file in its root filesystem and to its log.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo count $i; sleep 0.1; done";

fn entries(archive: &Path) -> Vec<String> {
    let output = std::process::Command::new("tar").arg("-tf").arg(archive).output().unwrap();
    assert!(output.status.success(), "tar -tf {}: {output:?}", archive.display());
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn member(archive: &Path, name: &str) -> Vec<u8> {
    let output = std::process::Command::new("tar").arg("-xOf").arg(archive).arg(name).output().unwrap();
    assert!(output.status.success(), "tar -xOf {} {name}: {output:?}", archive.display());
    output.stdout
}

async fn counter(client: &mut Client, id: &str) -> u64 {
    let (code, out) = exec_out(client, id, &["cat", "/tmp/counter"]).await;
    assert_eq!(code, 0, "{out}");
    out.trim().parse().unwrap_or_else(|_| panic!("counter {out:?}"))
}

async fn checkpoint(client: &mut Client, id: &str, location: &Path) -> Result<(), tonic::Status> {
    client
        .runtime
        .checkpoint_container(CheckpointContainerRequest {
            container_id: id.into(),
            location: location.display().to_string(),
            timeout: 120,
        })
        .await
        .map(|_| ())
}

/// Whether the counter goes past `value` within 5 s (it counts every 0.1 s; a busy machine is slower).
async fn counts_past(client: &mut Client, id: &str, value: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if counter(client, id).await > value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn frozen(id: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mount| mount.ends_with("/freezer"))
        .any(|mount| {
            std::fs::read_to_string(format!("{mount}/berth/{id}/freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        })
}

#[tokio::test]
async fn a_checkpoint_archives_the_running_container_in_cri_o_layout_and_it_keeps_running() {
    require_plugins();
    require_tool("criu");
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox").reference.clone();
    let netns = TestNetns::new();
    let dirs = DaemonDirs::new();
    write_daemon_config(&dirs, Some(&registry));
    write_bridge_conflist(&dirs, "berthckpt", "10.99.47.0/24");
    let daemon = netns.start_daemon_with_images(&dirs, &[&busybox]).await;
    let mut client = daemon.client().await;
    let logs = dirs.path().join("logs");
    let pod_config = pod_config("counter", &logs);
    let pod = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let id =
        run_container(&mut client, &pod, &pod_config, container_config("counter", &busybox, &["sh", "-c", COUNTER]))
            .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counter(&mut client, &id).await;

    let archives = dirs.path().join("checkpoints");
    std::fs::create_dir(&archives).unwrap();
    let archive = archives.join("checkpoint-counter.tar");
    checkpoint(&mut client, &id, &archive).await.expect("CheckpointContainer");

    let names = entries(&archive);
    assert_eq!(names[..2], ["config.dump", "spec.dump"], "{names:?}");
    for expected in [
        "checkpoint/inventory.img",
        "checkpoint/descriptors.json",
        "rootfs-diff.tar",
        "deleted.files",
        "container.log",
        "dump.log",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    assert!(names.iter().all(|n| !n.starts_with("./") && !n.starts_with('/')), "{names:?}");
    let config: serde_json::Value = serde_json::from_slice(&member(&archive, "config.dump")).unwrap();
    assert_eq!(config["id"], id.as_str(), "{config}");
    assert_eq!(config["name"], "counter", "{config}");
    assert_eq!(config["rootfsImageName"], busybox.as_str(), "{config}");
    assert!(config["rootfsImageRef"].as_str().unwrap().starts_with("sha256:"), "{config}");
    let spec: serde_json::Value = serde_json::from_slice(&member(&archive, "spec.dump")).unwrap();
    assert_eq!(spec["process"]["args"][2], COUNTER, "{spec}");
    let log = String::from_utf8(member(&archive, "container.log")).unwrap();
    assert!(log.contains(&format!("stdout F count {before}")), "{log}");
    // The counter file the container wrote is in its root filesystem's changes.
    let diff = dirs.path().join("diff.tar");
    std::fs::write(&diff, member(&archive, "rootfs-diff.tar")).unwrap();
    assert!(entries(&diff).iter().any(|n| n == "tmp/counter"), "{:?}", entries(&diff));
    let mode = std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(&archive).unwrap());
    assert_eq!(mode & 0o777, 0o600, "the archive holds the container's memory");
    assert_eq!(std::fs::read_dir(&archives).unwrap().count(), 1, "only the archive, no partial file");

    // Still running, still counting, not frozen.
    assert!(counts_past(&mut client, &id, before).await, "the counter stopped at {before}");
    let after = counter(&mut client, &id).await;
    assert!(!frozen(&id));
    let status = client
        .runtime
        .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state(), ContainerState::ContainerRunning);

    // Refusals: a relative location, a directory that does not exist, an unknown container, an exited one.
    let status = checkpoint(&mut client, &id, Path::new("relative.tar")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = checkpoint(&mut client, &id, &archives.join("missing/x.tar")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("missing"), "{status:?}");
    assert!(!frozen(&id), "a failed checkpoint left the container frozen");
    let status = checkpoint(&mut client, "0123456789ab", &archives.join("x.tar")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let done = run_container(&mut client, &pod, &pod_config, container_config("done", &busybox, &["true"])).await;
    wait_exited(&mut client, &done, Duration::from_secs(10)).await;
    let status = checkpoint(&mut client, &done, &archives.join("done.tar")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(std::fs::read_dir(&archives).unwrap().count(), 1, "no archive from a refused checkpoint");
    assert!(counts_past(&mut client, &id, after).await, "the counter stopped after the refusals");

    stop_and_remove_pod(&mut client, &pod).await;
    assert_eq!(leftovers(&dirs, &[pod, id, done]), Vec::<String>::new());
}
