//! CheckpointContainer through the real CRIU: a pod on a CNI network runs a shell whose counter lives only
//! in its memory; the checkpoint archive has CRI-O's layout (config, spec, CRIU images, the root
//! filesystem's changes, the log), the container keeps counting, and a failed or refused checkpoint leaves
//! the container running and no partial archive behind.

use std::path::Path;
use std::time::Duration;

use berth::cli::client::Client;
use berth::cri::v1::*;
use nix::sys::signal::Signal;
use tonic::Code;

use crate::containers::leftovers;
use crate::pods_network::{pod_config, require_plugins, write_bridge_conflist, write_daemon_config};
use crate::support::cri::{
    container_config, create, create_refused, exec_out, pull, run_container, run_pod, start, status,
    stop_and_remove_pod, wait_exited,
};
use crate::support::netns::TestNetns;
use crate::support::registry::TestRegistry;

use crate::support::{Daemon, DaemonDirs, require_tool};

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

/// The counter's last value. The shell truncates the file before it writes it, so an empty read is retried.
async fn counter(client: &mut Client, id: &str) -> u64 {
    let mut out = String::new();
    for _ in 0..20 {
        let (code, read) = exec_out(client, id, &["cat", "/tmp/counter"]).await;
        assert_eq!(code, 0, "{read}");
        if let Ok(value) = read.trim().parse() {
            return value;
        }
        out = read;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("counter {out:?}")
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

/// A daemon in a network namespace of its own with a bridge network, and the test images' busybox.
struct Rig {
    registry: TestRegistry,
    busybox: String,
    netns: TestNetns,
    dirs: DaemonDirs,
    daemon: Daemon,
    client: Client,
}

impl Rig {
    async fn start(bridge: &str, subnet: &str) -> Rig {
        require_plugins();
        require_tool("criu");
        let registry = TestRegistry::get();
        let busybox = registry.image("busybox").reference.clone();
        let netns = TestNetns::new();
        let dirs = DaemonDirs::new();
        write_daemon_config(&dirs, Some(&registry));
        write_bridge_conflist(&dirs, bridge, subnet);
        let daemon = netns.start_daemon_with_images(&dirs, &[&busybox]).await;
        let client = daemon.client().await;
        Rig { registry, busybox, netns, dirs, daemon, client }
    }
}

#[tokio::test]
async fn a_checkpoint_archives_the_running_container_in_cri_o_layout_and_it_keeps_running() {
    let Rig { registry: _registry, busybox, netns: _netns, dirs, daemon: _daemon, mut client } =
        Rig::start("berthckpt", "10.99.47.0/24").await;
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

#[tokio::test]
async fn a_checkpoint_restored_in_a_new_pod_goes_on_counting_from_its_memory_with_its_files_and_log() {
    let Rig { registry, busybox, netns, dirs, mut daemon, mut client } = Rig::start("berthrest", "10.99.48.0/24").await;
    let logs = dirs.path().join("logs");
    let first_config = pod_config("counter", &logs.join("first"));
    let first_pod = run_pod(&mut client, &first_config).await;
    // As kubelet asks by default: a PID namespace of the container's own, which CRIU dumps and makes again.
    let own_pid_namespace = |mut config: ContainerConfig| {
        config.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption { pid: NamespaceMode::Container as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        config
    };
    let original = run_container(
        &mut client,
        &first_pod,
        &first_config,
        own_pid_namespace(container_config("counter", &busybox, &["sh", "-c", COUNTER])),
    )
    .await;
    // Far enough that a counter started afresh could not have reached it when it is first read.
    assert!(counts_past(&mut client, &original, 0).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while counter(&mut client, &original).await < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archive = dirs.path().join("counter.tar");
    let checkpointed = counter(&mut client, &original).await;
    checkpoint(&mut client, &original, &archive).await.expect("CheckpointContainer");
    stop_and_remove_pod(&mut client, &first_pod).await;

    let second_config = pod_config("restored", &logs.join("second"));
    let second_pod = run_pod(&mut client, &second_config).await;

    // Refused: a file that is no checkpoint, and an archive without CRIU's images; neither leaves anything.
    let not_a_checkpoint = dirs.path().join("not-a-checkpoint.tar");
    std::fs::write(&not_a_checkpoint, b"just bytes").unwrap();
    let refused = create_refused(
        &mut client,
        &second_pod,
        &second_config,
        container_config("plain", &not_a_checkpoint.display().to_string(), &[]),
    )
    .await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("not-a-checkpoint.tar"), "{refused:?}");
    let metadata_only = dirs.path().join("metadata-only");
    std::fs::create_dir(&metadata_only).unwrap();
    for name in ["config.dump", "spec.dump"] {
        std::fs::write(metadata_only.join(name), member(&archive, name)).unwrap();
    }
    let broken = dirs.path().join("broken.tar");
    let packed = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&broken)
        .arg("-C")
        .arg(&metadata_only)
        .args(["config.dump", "spec.dump"])
        .status()
        .unwrap();
    assert!(packed.success());
    let refused = create_refused(
        &mut client,
        &second_pod,
        &second_config,
        container_config("broken", &broken.display().to_string(), &[]),
    )
    .await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("descriptors.json"), "{refused:?}");

    let restored = create(
        &mut client,
        &second_pod,
        &second_config,
        own_pid_namespace(container_config("counter", &archive.display().to_string(), &[])),
    )
    .await;
    let created = status(&mut client, &restored).await;
    assert_eq!(created.state(), ContainerState::ContainerCreated, "{created:?}");
    start(&mut client, &restored).await;
    let resumed = counter(&mut client, &restored).await;
    assert!(
        resumed >= checkpointed,
        "the restored counter is at {resumed}, the checkpointed one was at {checkpointed}"
    );
    assert!(counts_past(&mut client, &restored, resumed).await, "the restored counter does not count");
    let running = status(&mut client, &restored).await;
    assert_eq!(running.state(), ContainerState::ContainerRunning, "{running:?}");
    // Its log holds the first run's lines and goes on from there.
    let later = counter(&mut client, &restored).await;
    assert!(counts_past(&mut client, &restored, later).await);
    let log = std::fs::read_to_string(&running.log_path).unwrap();
    assert!(log.contains("stdout F count 1\n"), "{log}");
    assert!(log.contains(&format!("stdout F count {later}\n")), "{log}");
    // It lives in the new pod: its hostname and /etc files, and the pod's hostname is left as it was.
    let (code, hostname) = exec_out(&mut client, &restored, &["hostname"]).await;
    assert_eq!((code, hostname.trim()), (0, "restored"));
    let (code, init) = exec_out(&mut client, &restored, &["cat", "/proc/1/cmdline"]).await;
    assert_eq!(code, 0);
    assert!(init.starts_with("sh\0-c\0i=0"), "pid 1 of its own PID namespace: {init:?}");
    let (code, hosts) = exec_out(&mut client, &restored, &["cat", "/etc/hosts"]).await;
    assert_eq!(code, 0);
    assert!(hosts.lines().any(|l| l.ends_with("\trestored")), "{hosts}");
    // The same checkpoint as an image (kubelet's way: a pod's image, pulled), restored beside it.
    let tag = dirs
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let pushed = std::process::Command::new("python3")
        .arg(crate::support::repo_root().join("hack/test-images.py"))
        .args(["--registry", &registry.address, "--checkpoint-image"])
        .arg(&archive)
        .arg(format!("berth-test/checkpoint:{tag}"))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{pushed:?}");
    let checkpoint_image = format!("{}/berth-test/checkpoint:{tag}", registry.address);
    // The registry is reached from the host's network only: the daemon restarts there to pull it, and
    // the restored container lives on through both restarts.
    drop(client);
    let stopped = daemon.stop(Signal::SIGTERM).await;
    assert!(stopped.success(), "{}", daemon.log_text());
    let mut puller = Daemon::start_in(&dirs);
    pull(&mut puller.client().await, &checkpoint_image).await;
    assert!(puller.stop(Signal::SIGTERM).await.success(), "{}", puller.log_text());
    let daemon = netns.start_daemon(&dirs);
    let mut client = daemon.client().await;
    assert!(counts_past(&mut client, &restored, later).await, "the restored container after the daemon's restarts");
    let from_image = create(
        &mut client,
        &second_pod,
        &second_config,
        own_pid_namespace(container_config("counter-from-image", &checkpoint_image, &[])),
    )
    .await;
    start(&mut client, &from_image).await;
    let resumed = counter(&mut client, &from_image).await;
    assert!(resumed >= checkpointed, "restored from the image at {resumed}, checkpointed at {checkpointed}");
    assert!(counts_past(&mut client, &from_image, resumed).await, "the counter restored from the image does not count");

    // Stopped like any container: its exit is seen and nothing is left.
    client
        .runtime
        .stop_container(StopContainerRequest { container_id: restored.clone(), timeout: 5 })
        .await
        .expect("StopContainer");
    assert_eq!(status(&mut client, &restored).await.state(), ContainerState::ContainerExited);
    stop_and_remove_pod(&mut client, &second_pod).await;
    assert_eq!(leftovers(&dirs, &[first_pod, original, second_pod, restored, from_image]), Vec::<String>::new());
}
