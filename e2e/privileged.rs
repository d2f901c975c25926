//! Privileged containers, and a node that cannot give everything a pod asks for: a daemon started without
//! a capability (its bounding set lacks CAP_SYS_TIME, as root in some VMs and nested containers lacks
//! CAP_SYS_RESOURCE) and a host that may not mount the hugetlb controller, with the limits kubelet sends.
//! What a privileged container may do is checked from inside it.

use berth::cri::v1::*;
use tonic::Code;

use crate::containers::leftovers;
use crate::support::cri::{
    container_config, create, create_refused, exec_out, pull, run_pod, start, status, stop_and_remove_pod,
};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

/// CAP_SYS_TIME is capability 25.
const SYS_TIME_BIT: u64 = 1 << 25;

/// The hex mask of a `Cap*:` line of a /proc status text.
fn cap_mask(status: &str, field: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// A pod on the node's network whose containers may be privileged.
fn privileged_pod(name: &str, logs: &std::path::Path) -> PodSandboxConfig {
    let mut config = crate::support::cri::pod_config(name, logs, crate::support::cri::node_network());
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context.get_or_insert_with(Default::default).privileged = true;
    config
}

fn privileged(mut config: ContainerConfig) -> ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context.get_or_insert_with(Default::default).privileged = true;
    config
}

#[tokio::test]
async fn privileged_containers_get_what_berth_holds_and_a_capability_it_lacks_is_refused_by_name() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let setpriv = crate::support::require_tool("setpriv");
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    // setpriv execs the daemon in place, so the pid is the daemon's; root's capabilities after exec are its
    // bounding set, now without CAP_SYS_TIME.
    let serve = dirs.serve_command();
    let mut command = std::process::Command::new(setpriv);
    command.arg("--bounding-set").arg("-sys_time").arg("--").arg(serve.get_program()).args(serve.get_args());
    let daemon = Daemon::spawn_command(&dirs, command);
    let daemon_status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let held = cap_mask(&daemon_status, "CapEff:");
    assert_eq!(held & SYS_TIME_BIT, 0, "the daemon still holds CAP_SYS_TIME: {daemon_status}");

    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = privileged_pod("privileged", &logs);
    let pod = run_pod(&mut client, &pod_config).await;

    // A privileged container runs (it used to exit at once: capset of a capability berth lacks) with every
    // capability the daemon holds, and does what only privileged containers may.
    let id =
        create(&mut client, &pod, &pod_config, privileged(container_config("all", busybox, &["sleep", "1000"]))).await;
    start(&mut client, &id).await;
    let (code, inside) = exec_out(&mut client, &id, &["cat", "/proc/self/status"]).await;
    assert_eq!(code, 0, "{inside}");
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(cap_mask(&inside, field), held, "{field} of the privileged container:\n{inside}");
    }
    let (code, out) =
        exec_out(&mut client, &id, &["sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && umount /mnt/t"])
            .await;
    assert_eq!(code, 0, "a privileged container cannot mount: {out}");
    let (code, out) = exec_out(&mut client, &id, &["test", "-c", "/dev/kmsg"]).await;
    assert_eq!(code, 0, "a privileged container does not see the host's devices: {out}");

    // add: [ALL] means the same set.
    let mut config = container_config("add-all", busybox, &["sleep", "1000"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability { add_capabilities: vec!["ALL".into()], ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let add_all = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &add_all).await;
    let (_, inside) = exec_out(&mut client, &add_all, &["cat", "/proc/self/status"]).await;
    assert_eq!(cap_mask(&inside, "CapEff:"), held, "add ALL:\n{inside}");

    // Asking for the missing one by name fails CreateContainer, naming it, and leaves nothing.
    let mut config = container_config("wants-sys-time", busybox, &["sleep", "1000"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            capabilities: Some(Capability { add_capabilities: vec!["SYS_TIME".into()], ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let refused = create_refused(&mut client, &pod, &pod_config, config).await;
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("\"SYS_TIME\"") && refused.message().contains("does not hold"), "{refused:?}");

    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &[pod.clone(), id.clone(), add_all.clone()]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// kubelet fills `hugepage_limits` for every page size the kernel offers, whether or not the hugetlb cgroup
/// controller is mounted; a container must start either way, limited where the controller exists.
#[tokio::test]
async fn a_container_with_kubelets_huge_page_limits_starts_with_or_without_the_hugetlb_controller() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = crate::containers::start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = crate::support::cri::pod_config("hugepages", &logs, crate::support::cri::node_network());
    let pod = run_pod(&mut client, &pod_config).await;

    let mut config = container_config("limited", busybox, &["sleep", "1000"]);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            hugepage_limits: vec![
                HugepageLimit { page_size: "2MB".into(), limit: 0 },
                HugepageLimit { page_size: "1GB".into(), limit: 0 },
            ],
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    assert_eq!(status(&mut client, &id).await.state, ContainerState::ContainerRunning as i32);

    let layout = berth_runtime::cgroups::Layout::detect().unwrap();
    let cgroup_files: Vec<std::path::PathBuf> = ["/sys/fs/cgroup/hugetlb", "/sys/fs/cgroup"]
        .iter()
        .flat_map(|root| walk(std::path::Path::new(root), &id))
        .filter_map(|dir| {
            let file = dir.join("hugetlb.2MB.limit_in_bytes");
            let v2 = dir.join("hugetlb.2MB.max");
            if file.exists() { Some(file) } else { v2.exists().then_some(v2) }
        })
        .collect();
    if layout.has_controller("hugetlb") {
        assert!(!cgroup_files.is_empty(), "hugetlb is mounted, yet the container's cgroup has no 2MB limit");
        for file in &cgroup_files {
            assert_eq!(std::fs::read_to_string(file).unwrap().trim(), "0", "{}", file.display());
        }
    } else {
        assert!(cgroup_files.is_empty(), "{cgroup_files:?}");
    }
    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &[pod.clone(), id.clone()]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Directories below `root` whose name contains `needle`.
fn walk(root: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.file_name().to_string_lossy().contains(needle) {
                    found.push(entry.path());
                }
                stack.push(entry.path());
            }
        }
    }
    found
}

/// A mount a privileged container makes inside a bidirectional volume appears on the host (and one the host
/// makes appears in the container). berth used to make the new root rslave after pivot_root, which cut every
/// volume off from its host peers.
#[tokio::test]
async fn a_mount_made_in_a_bidirectional_volume_reaches_the_host() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = crate::containers::start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;

    // The volume's source is a shared mount of its own, as kubelet's Bidirectional volumes must be.
    let volume = dirs.path().join("volume");
    let from_host = dirs.path().join("from-host");
    std::fs::create_dir_all(volume.join("host-made")).unwrap();
    std::fs::create_dir_all(&from_host).unwrap();
    std::fs::write(from_host.join("flag"), "host").unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("mount").args(args).status().unwrap();
        assert!(status.success(), "mount {args:?}");
    };
    let volume_str = volume.to_str().unwrap();
    run(&["--bind", volume_str, volume_str]);
    run(&["--make-rshared", volume_str]);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-R").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(volume.clone());

    let logs = dirs.path().join("logs");
    let pod_config = privileged_pod("bidirectional", &logs);
    let pod = run_pod(&mut client, &pod_config).await;
    let mut config = privileged(container_config("mounter", busybox, &["sleep", "1000"]));
    config.mounts = vec![Mount {
        container_path: "/volume".into(),
        host_path: volume_str.into(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;

    // Host to container.
    run(&["--bind", from_host.to_str().unwrap(), volume.join("host-made").to_str().unwrap()]);
    let (code, out) = exec_out(&mut client, &id, &["cat", "/volume/host-made/flag"]).await;
    assert_eq!((code, out.trim()), (0, "host"), "a host mount did not reach the container");
    // Container to host.
    let (code, out) =
        exec_out(&mut client, &id, &["sh", "-c", "mkdir -p /volume/container-made && mount -t tmpfs made /volume/container-made && echo c > /volume/container-made/flag"]).await;
    assert_eq!(code, 0, "{out}");
    let seen = std::fs::read_to_string(volume.join("container-made/flag")).unwrap_or_default();
    assert_eq!(seen.trim(), "c", "the container's mount did not reach the host");

    stop_and_remove_pod(&mut client, &pod).await;
}
