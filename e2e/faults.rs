//! The daemon killed between each intent it records and the fact that follows, in RunPodSandbox,
//! CreateContainer, StopPodSandbox and RemovePodSandbox, and a pod's shim killed inside Create, Start and an
//! exec: a `failpoints` build (src/failpoints.rs; `make test` builds the daemon under test with it) raises
//! SIGKILL at the crash point `BERTH_CRASH_AT` names. For every point: the RPC fails (a dead shim's with
//! Unavailable, naming the shim), the daemon restarted without the point finishes or undoes what the crash
//! interrupted before it serves, kubelet's retry succeeds, and once the pod is removed the host holds
//! nothing of it: no mount, pinned namespace, cgroup, process, veth, IP lease, CNI cache entry, iptables
//! rule or state entry.
//!
//! Each test runs its daemons in a network namespace of its own ([`TestNetns`]), with Debian's bridge
//! chain, and gives its pods a cgroup parent of its own, as kubelet does, so its census is exact.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;
use nix::sys::signal::Signal;

use crate::pods_network::{
    assert_no_pod_network_left_but, is_own_mount, listed_pods, pod_config, pod_ip, pod_rules, require_plugins,
    write_bridge_conflist, write_daemon_config,
};
use crate::support::cri::{container_config, create_request, exec_out, start, stop_and_remove_pod};
use crate::support::netns::TestNetns;
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

/// Fails (never skips) a run whose daemon has no crash points.
fn require_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "the fault-injection tests need the daemon built with `--features berth/failpoints` (hack/test.sh, \
             which `make test` runs, builds it so)"
        );
    }
}

/// A node for one test: its network namespace, directories, daemon, image and pod cgroup parent.
struct Node {
    netns: TestNetns,
    dirs: DaemonDirs,
    daemon: Option<Daemon>,
    image: String,
    /// Under every cgroup hierarchy's root; the pods' `pod<uid>` cgroups (kubelet's) go below it.
    cgroup_parent: String,
    /// The test's own small filesystems (root and state directories), not leftovers of the pods.
    small_disks: Vec<PathBuf>,
}

impl Node {
    async fn new(name: &str, bridge: &str, subnet: &str) -> Node {
        Node::start(name, bridge, subnet, None).await
    }

    /// A node whose root and state directories are each a tmpfs of `size` (unmounted with the directories).
    async fn on_small_disks(name: &str, bridge: &str, subnet: &str, size: &str) -> Node {
        Node::start(name, bridge, subnet, Some(size)).await
    }

    async fn start(name: &str, bridge: &str, subnet: &str, disk_size: Option<&str>) -> Node {
        require_failpoints();
        require_plugins();
        let registry = TestRegistry::get();
        let image = registry.image("busybox").reference.clone();
        let netns = TestNetns::new();
        let dirs = DaemonDirs::new();
        let mut small_disks = Vec::new();
        if let Some(size) = disk_size {
            for dir in [dirs.root(), dirs.state()] {
                std::fs::create_dir_all(&dir).unwrap();
                let options = format!("size={size},mode=0755");
                nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(&*options))
                    .unwrap_or_else(|e| panic!("mount a {size} tmpfs at {}: {e}", dir.display()));
                small_disks.push(dir);
            }
        }
        write_daemon_config(&dirs, Some(&registry));
        write_bridge_conflist(&dirs, bridge, subnet);
        let daemon = netns.start_daemon_with_images(&dirs, &[&image]).await;
        let cgroup_parent = format!("berth-e2e-faults-{name}-{}", std::process::id());
        Node { netns, dirs, daemon: Some(daemon), image, cgroup_parent, small_disks }
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("a daemon")
    }

    async fn client(&self) -> Client {
        self.daemon().client().await
    }

    /// Stops the running daemon (SIGTERM; pods and containers outlive it) and starts one with `env`.
    async fn restart(&mut self, env: &[(&str, &str)]) {
        if let Some(mut daemon) = self.daemon.take() {
            if daemon.child.try_wait().unwrap().is_none() {
                let status = daemon.stop(Signal::SIGTERM).await;
                assert!(status.success(), "the daemon exited with {status}:\n{}", daemon.log_text());
            }
        }
        self.daemon = Some(self.netns.start_daemon_with_env(&self.dirs, env));
    }

    /// A daemon armed to kill itself at `point`.
    async fn restart_armed(&mut self, point: &str) {
        self.restart(&[("BERTH_CRASH_AT", point)]).await;
    }

    /// Waits (up to 20 s) for the armed daemon to die at `point`, and checks that SIGKILL ended it and that
    /// the RPC it was serving failed as a broken connection does.
    async fn assert_crashed(&mut self, point: &str, err: &tonic::Status) {
        assert!(
            matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal),
            "{point}: {err:?}"
        );
        let daemon = self.daemon.as_mut().expect("a daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(Signal::SIGKILL as i32),
                    "{point}: the daemon ended with {status}, not at its crash point:\n{}",
                    daemon.log_text()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{point}: the daemon never reached its crash point:\n{}",
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A pod config as kubelet sends it, with its cgroup under this node's parent.
    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let mut config = pod_config(name, &self.dirs.path().join("logs"));
        let uid = config.metadata.as_ref().unwrap().uid.clone();
        config.linux = Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}/pod{uid}", self.cgroup_parent),
            ..Default::default()
        });
        config
    }

    fn container_config(&self) -> ContainerConfig {
        container_config("sleeper", &self.image, &["sleep", "1000"])
    }

    /// The cgroup directories of this node's hierarchy in every mounted hierarchy: the parent itself first.
    fn cgroup_roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![PathBuf::from("/sys/fs/cgroup").join(&self.cgroup_parent)];
        for entry in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            roots.push(entry.path().join(&self.cgroup_parent));
        }
        roots.into_iter().filter(|root| root.is_dir()).collect()
    }

    /// Everything the node's pods could have left, after the last one was removed (see the module doc).
    /// A process killed with its cgroup may still be exiting for a moment: the census is retried for 5 s.
    fn assert_nothing_left(&self, point: &str) {
        assert_no_pod_network_left_but(&self.netns, &self.dirs, &[], &self.small_disks);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{point}: left behind after the pod was removed:\n{}", left.join("\n"));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What [`Node::assert_nothing_left`] looks for. The pods' ids are the ones the daemons logged: the pods
    /// a crash interrupted were never returned.
    fn leftovers(&self) -> Vec<String> {
        let ids = ids_in_logs(&self.dirs);
        let mut left = crate::containers::leftovers(&self.dirs, &ids);
        left.retain(|found| !found.strip_prefix("mount: ").is_some_and(|line| is_own_mount(line, &self.small_disks)));
        left.extend(temporary_files(&[self.dirs.root(), self.dirs.state()]));
        for id in &ids {
            left.extend(pod_rules(&self.netns, id).into_iter().map(|rule| format!("iptables rule: {rule}")));
        }
        // The pod<uid> level is kubelet's; the sandbox's and containers' cgroups below it are berth's.
        for root in self.cgroup_roots() {
            for pod in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                for entry in std::fs::read_dir(pod.path()).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        left.push(format!("cgroup: {}", entry.path().display()));
                    }
                }
            }
        }
        let daemon = self.daemon().pid().as_raw();
        let test_dir = self.dirs.path().display().to_string();
        for pid in processes() {
            if pid == daemon {
                continue;
            }
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .replace('\0', " ");
            if cgroup.contains(&self.cgroup_parent) || cmdline.contains(&test_dir) {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                left.push(format!("process {pid}: {cmdline} (stat: {})", stat.trim_end()));
            }
        }
        left
    }
}

impl Drop for Node {
    /// The pods' `pod<uid>` cgroups and the parent (kubelet removes its own), deepest first.
    fn drop(&mut self) {
        drop(self.daemon.take());
        for root in self.cgroup_roots() {
            let mut dirs = vec![root.clone()];
            let mut index = 0;
            while index < dirs.len() {
                let children: Vec<PathBuf> = std::fs::read_dir(&dirs[index])
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                dirs.extend(children);
                index += 1;
            }
            for dir in dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Files a write left half-made below `dirs`: the temporary names berth writes records under before it
/// renames them into place (`*.tmp`, `*.tmp<pid>`, `.berth.redb.creating-<pid>`).
fn temporary_files(dirs: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(file_type) = entry.file_type() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if file_type.is_dir() {
                stack.push(entry.path());
            } else if name.contains(".tmp") || name.contains(".creating-") {
                found.push(format!("half-written file: {}", entry.path().display()));
            }
        }
    }
    found
}

/// Live (not zombie) process ids.
fn processes() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .collect()
}

/// The pod and container ids the daemons of `dirs` logged (64 hex digits that are not a `sha256:` digest).
fn ids_in_logs(dirs: &DaemonDirs) -> Vec<String> {
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dirs.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("daemon-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let bytes = text.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let end = start + bytes[start..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if end - start == 64 && !text[..start].ends_with("sha256:") {
                ids.insert(text[start..end].to_ascii_lowercase());
            }
            start = end + 1;
        }
    }
    ids.into_iter().collect()
}

async fn run_pod(client: &mut Client, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
    client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn create_container(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    client.runtime.create_container(create_request(pod, pod_config, config)).await.map(|r| r.into_inner().container_id)
}

async fn containers_of(client: &mut Client, pod: &str) -> Vec<Container> {
    let filter = ContainerFilter { pod_sandbox_id: pod.into(), ..Default::default() };
    client
        .runtime
        .list_containers(ListContainersRequest { filter: Some(filter) })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// A container in the pod that runs and answers an exec: the pod works.
async fn assert_pod_works(client: &mut Client, node: &Node, pod: &str, config: &PodSandboxConfig, point: &str) {
    let id = create_container(client, pod, config, node.container_config())
        .await
        .unwrap_or_else(|e| panic!("{point}: CreateContainer in the retried pod: {e}"));
    start(client, &id).await;
    assert_eq!(exec_out(client, &id, &["echo", "alive"]).await, (0, "alive\n".into()), "{point}");
    assert!(pod_ip(client, pod).await.starts_with("10.99."), "{point}: the pod has no IP");
}

#[tokio::test]
async fn a_crash_inside_run_pod_sandbox_is_undone_at_start_up_and_the_retry_succeeds() {
    let mut node = Node::new("run", "berthflt1", "10.99.61.0/24").await;
    for (n, point) in ["run-pod-sandbox-after-intent", "run-pod-sandbox-after-cni-add", "run-pod-sandbox-before-ready"]
        .iter()
        .enumerate()
    {
        let config = node.pod_config(&format!("crash-run-{n}"));
        node.restart_armed(point).await;
        let mut client = node.client().await;
        let err = run_pod(&mut client, &config).await.expect_err("RunPodSandbox through a crash");
        drop(client);
        node.assert_crashed(point, &err).await;

        node.restart(&[]).await;
        let mut client = node.client().await;
        assert_eq!(listed_pods(&mut client).await, Vec::new(), "{point}: the half-made sandbox is listed");
        // kubelet's retry: the same config again.
        let pod = run_pod(&mut client, &config).await.unwrap_or_else(|e| panic!("{point}: the retry: {e}"));
        assert_pod_works(&mut client, &node, &pod, &config, point).await;
        stop_and_remove_pod(&mut client, &pod).await;
        node.assert_nothing_left(point);
    }
}

#[tokio::test]
async fn a_crash_inside_create_container_is_undone_at_start_up_and_the_retry_succeeds() {
    let mut node = Node::new("create", "berthflt2", "10.99.62.0/24").await;
    for (n, point) in ["create-container-after-intent", "create-container-before-created"].iter().enumerate() {
        let config = node.pod_config(&format!("crash-create-{n}"));
        node.restart(&[]).await;
        let mut client = node.client().await;
        let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
        drop(client);

        node.restart_armed(point).await;
        let mut client = node.client().await;
        let err = create_container(&mut client, &pod, &config, node.container_config())
            .await
            .expect_err("CreateContainer through a crash");
        drop(client);
        node.assert_crashed(point, &err).await;

        node.restart(&[]).await;
        let mut client = node.client().await;
        assert_eq!(containers_of(&mut client, &pod).await, Vec::new(), "{point}: the half-made container is listed");
        // kubelet's retry: the same container (name and attempt) again, in the same pod.
        assert_pod_works(&mut client, &node, &pod, &config, point).await;
        stop_and_remove_pod(&mut client, &pod).await;
        node.assert_nothing_left(point);
    }
}

/// CreateContainer's first record is provisional: a machine crash before its outcome is written loses it,
/// and the node's /run with the pod's directory, but not the container's writable layer on disk.
#[tokio::test]
async fn a_writable_layer_no_container_record_names_is_removed_at_start_up() {
    let mut node = Node::new("layers", "berthflt7", "10.99.67.0/24").await;
    let config = node.pod_config("layers");
    let mut client = node.client().await;
    let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
    let container =
        create_container(&mut client, &pod, &config, node.container_config()).await.expect("CreateContainer");
    drop(client);
    let layers = node.dirs.root().join("images/containers");
    let orphan = layers.join("7b3c5d1e9f2a4b6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e");
    std::fs::create_dir_all(orphan.join("upper/etc")).unwrap();
    std::fs::create_dir_all(orphan.join("work")).unwrap();
    std::fs::write(orphan.join("upper/etc/written-by-the-container"), "x").unwrap();

    node.restart(&[]).await;
    assert!(!orphan.exists(), "the layer no record names is still there");
    assert!(layers.join(&container).join("upper").is_dir(), "the layer of a recorded container was removed");
    let mut client = node.client().await;
    assert_pod_works(&mut client, &node, &pod, &config, "layers").await;
    stop_and_remove_pod(&mut client, &pod).await;
    node.assert_nothing_left("layers");
}

#[tokio::test]
async fn a_crash_inside_stop_or_remove_pod_sandbox_is_finished_by_the_retry() {
    let mut node = Node::new("stop", "berthflt3", "10.99.63.0/24").await;
    let points = [
        ("stop-pod-sandbox-after-containers", false),
        ("stop-pod-sandbox-after-not-ready", false),
        ("remove-pod-sandbox-after-containers", true),
        ("pod-teardown-after-cni-del", true),
        ("remove-pod-sandbox-before-forget", true),
    ];
    for (n, (point, stopped_first)) in points.iter().enumerate() {
        let config = node.pod_config(&format!("crash-stop-{n}"));
        node.restart(&[]).await;
        let mut client = node.client().await;
        let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
        assert_pod_works(&mut client, &node, &pod, &config, point).await;
        drop(client);

        node.restart_armed(point).await;
        let mut client = node.client().await;
        let request = if *stopped_first {
            client
                .runtime
                .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
                .await
                .expect("StopPodSandbox");
            "RemovePodSandbox"
        } else {
            "StopPodSandbox"
        };
        let err = if *stopped_first {
            client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.map(drop)
        } else {
            client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.map(drop)
        }
        .expect_err(&format!("{request} through a crash"));
        drop(client);
        node.assert_crashed(point, &err).await;

        node.restart(&[]).await;
        let mut client = node.client().await;
        // kubelet's retry: StopPodSandbox and RemovePodSandbox again, both idempotent.
        stop_and_remove_pod(&mut client, &pod).await;
        assert_eq!(listed_pods(&mut client).await, Vec::new(), "{point}: the pod is still listed");
        node.assert_nothing_left(point);
    }
}

#[tokio::test]
async fn a_shim_killed_inside_create_start_or_exec_fails_the_rpc_and_the_retry_succeeds() {
    let mut node = Node::new("shim", "berthflt4", "10.99.64.0/24").await;
    for (n, point) in
        ["shim-create-before-reply", "shim-start-before-reply", "shim-exec-after-spawn"].iter().enumerate()
    {
        let config = node.pod_config(&format!("shim-{n}"));
        // The pod's shim inherits the armed daemon's environment.
        node.restart_armed(point).await;
        let mut client = node.client().await;
        let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
        let mut container = node.container_config();
        let err = match *point {
            "shim-create-before-reply" => {
                create_container(&mut client, &pod, &config, container.clone()).await.map(drop)
            }
            "shim-start-before-reply" => {
                let id =
                    create_container(&mut client, &pod, &config, container.clone()).await.expect("CreateContainer");
                client.runtime.start_container(StartContainerRequest { container_id: id }).await.map(drop)
            }
            _ => {
                let id =
                    create_container(&mut client, &pod, &config, container.clone()).await.expect("CreateContainer");
                start(&mut client, &id).await;
                let exec = ExecSyncRequest { container_id: id, cmd: vec!["echo".into(), "lost".into()], timeout: 10 };
                client.runtime.exec_sync(exec).await.map(drop)
            }
        }
        .expect_err("an RPC whose shim dies in the middle");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{point}: {err:?}");
        assert!(err.message().contains("shim"), "{point}: the error does not say the pod's shim failed: {err:?}");
        assert!(node.daemon.as_mut().unwrap().child.try_wait().unwrap().is_none(), "{point}: the daemon died too");
        drop(client);

        // Disarmed (the daemon's environment is the shims'), as the fault is gone.
        node.restart(&[]).await;
        let mut client = node.client().await;
        // kubelet's retry: what is left of the container is removed, the next attempt created and started in a
        // new shim.
        for left in containers_of(&mut client, &pod).await {
            assert_ne!(
                left.state,
                ContainerState::ContainerRunning as i32,
                "{point}: a container of the dead shim runs"
            );
            client
                .runtime
                .remove_container(RemoveContainerRequest { container_id: left.id })
                .await
                .expect("RemoveContainer");
        }
        container.metadata.as_mut().unwrap().attempt = 1;
        let id = create_container(&mut client, &pod, &config, container)
            .await
            .unwrap_or_else(|e| panic!("{point}: the retried CreateContainer: {e}"));
        start(&mut client, &id).await;
        assert_eq!(exec_out(&mut client, &id, &["echo", "alive"]).await, (0, "alive\n".into()), "{point}");
        stop_and_remove_pod(&mut client, &pod).await;
        node.assert_nothing_left(point);
    }
}

/// Unmounts a test's tmpfs however the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn a_full_log_disk_drops_output_without_blocking_the_container_until_kubelet_frees_it() {
    let mut node = Node::new("logs", "berthflt5", "10.99.65.0/24").await;
    node.restart(&[]).await;
    // The pod's log directory on a 64 KiB filesystem; the container writes about 300 KiB.
    let logs = node.dirs.path().join("small-logs");
    std::fs::create_dir_all(&logs).unwrap();
    nix::mount::mount(Some("tmpfs"), &logs, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=64k,mode=0755"))
        .expect("mount a 64 KiB tmpfs for the pod's logs");
    let unmount = Unmount(logs.clone());
    let mut config = node.pod_config("full-logs");
    config.log_directory = logs.display().to_string();
    let mut client = node.client().await;
    let pod = run_pod(&mut client, &config).await.expect("RunPodSandbox");
    let script = "i=0; while [ $i -lt 5000 ]; do echo \"line $i of a container whose log disk is full\"; i=$((i+1)); \
                  done; touch /tmp/finished; exec sleep 1000";
    let container = container_config("writer", &node.image, &["sh", "-c", script]);
    let id = create_container(&mut client, &pod, &config, container).await.expect("CreateContainer");
    start(&mut client, &id).await;

    // The container is never blocked on its output: it gets through all of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while exec_out(&mut client, &id, &["test", "-f", "/tmp/finished"]).await.0 != 0 {
        assert!(Instant::now() < deadline, "the container did not get through its output on a full log disk");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was written is whole records: no line cut where the disk filled.
    let log_path = logs.join("writer/0.log");
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(text.len() > 32 * 1024, "the log holds only {} bytes", text.len());
    assert!(text.ends_with('\n'), "the log ends mid-record: {:?}", &text[text.len().saturating_sub(100)..]);
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        assert!(
            fields.len() == 4 && fields[1] == "stdout" && fields[2] == "F" && fields[3].starts_with("line "),
            "a broken record in the log: {line:?}"
        );
    }

    // kubelet rotates: the full file goes, the container's log is reopened, and output is written again.
    std::fs::remove_file(&log_path).unwrap();
    client
        .runtime
        .reopen_container_log(ReopenContainerLogRequest { container_id: id.clone() })
        .await
        .expect("ReopenContainerLog");
    // The container's process (the pod's PID namespace is shared, so not PID 1) writes one more line.
    let (code, out) = exec_out(&mut client, &id, &["sh", "-c", "echo written again > /proc/$(pidof sleep)/fd/1"]).await;
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.ends_with(" stdout F written again\n") {
            break;
        }
        assert!(Instant::now() < deadline, "no output after the rotation: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Said once (at most once a minute), not once per dropped record.
    let shim_log = std::fs::read_to_string(node.dirs.state().join("pods").join(&pod).join("shim.log")).unwrap();
    assert_eq!(shim_log.matches("cannot write the container log").count(), 1, "{shim_log}");

    stop_and_remove_pod(&mut client, &pod).await;
    drop(unmount);
    node.assert_nothing_left("full log disk");
}

/// Writes one file in `dir` until its filesystem is full (1 MiB writes, then 4 KiB ones); returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    for chunk in [1 << 20, 4096] {
        let bytes = vec![0u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(_) => continue,
                Err(err) if err.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(err) => panic!("filling {}: {err}", filler.display()),
            }
        }
    }
    filler
}

/// The error an RPC meets on a full disk: ResourceExhausted, saying so.
fn assert_disk_full(err: &tonic::Status, what: &str) {
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{what}: {err:?}");
    assert!(err.message().contains("No space left on device"), "{what}: {}", err.message());
}

#[tokio::test]
async fn a_full_disk_fails_pod_and_container_creation_cleanly_and_the_retry_succeeds_once_space_is_freed() {
    let mut node = Node::on_small_disks("disk", "berthflt6", "10.99.66.0/24", "48m").await;
    let mut client = node.client().await;
    // A pod that was running before the disk filled.
    let running_config = node.pod_config("before-the-disk-filled");
    let running = run_pod(&mut client, &running_config).await.expect("RunPodSandbox");
    let sleeper = create_container(&mut client, &running, &running_config, node.container_config())
        .await
        .expect("CreateContainer");
    start(&mut client, &sleeper).await;

    // The state directory (pod files, bundles, shim records), then the root (state database, CNI cache,
    // container layers), then both.
    let (state, root) = (node.dirs.state(), node.dirs.root());
    for (n, disks) in [vec![state.clone()], vec![root.clone()], vec![state.clone(), root.clone()]].iter().enumerate() {
        let what = format!("full {}", disks.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" + "));
        let fillers: Vec<PathBuf> = disks.iter().map(|disk| fill(disk)).collect();
        let config = node.pod_config(&format!("on-a-full-disk-{n}"));
        let err = run_pod(&mut client, &config).await.expect_err("RunPodSandbox on a full disk");
        assert_disk_full(&err, &format!("{what}: RunPodSandbox"));
        let listed: Vec<String> = listed_pods(&mut client).await.into_iter().map(|pod| pod.id).collect();
        assert_eq!(listed, vec![running.clone()], "{what}: the half-made pod is listed");
        let before: Vec<String> = containers_of(&mut client, &running).await.into_iter().map(|c| c.id).collect();
        let container = container_config(&format!("more-{n}"), &node.image, &["sleep", "1000"]);
        let err = create_container(&mut client, &running, &running_config, container.clone())
            .await
            .expect_err("CreateContainer on a full disk");
        assert_disk_full(&err, &format!("{what}: CreateContainer"));
        let containers: Vec<String> = containers_of(&mut client, &running).await.into_iter().map(|c| c.id).collect();
        assert_eq!(containers, before, "{what}: the half-made container is listed");

        for filler in fillers {
            std::fs::remove_file(filler).unwrap();
        }
        // kubelet's retries, on the same daemon.
        let pod = run_pod(&mut client, &config).await.unwrap_or_else(|e| panic!("{what}: the retry: {e}"));
        assert_pod_works(&mut client, &node, &pod, &config, &what).await;
        stop_and_remove_pod(&mut client, &pod).await;
        let id = create_container(&mut client, &running, &running_config, container)
            .await
            .unwrap_or_else(|e| panic!("{what}: the retried CreateContainer: {e}"));
        start(&mut client, &id).await;
        assert_eq!(exec_out(&mut client, &id, &["echo", "alive"]).await, (0, "alive\n".into()), "{what}");
    }

    // Stopping a pod while both disks are full: it succeeds, or fails for the disk and the retry finishes it.
    let fillers = [fill(&state), fill(&root)];
    let stop = client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: running.clone() }).await;
    if let Err(err) = stop {
        assert_disk_full(&err, "StopPodSandbox");
    }
    for filler in fillers {
        std::fs::remove_file(filler).unwrap();
    }
    stop_and_remove_pod(&mut client, &running).await;
    drop(client);
    node.assert_nothing_left("full disk");
    // A restarted daemon finds nothing half-made either.
    node.restart(&[]).await;
    let mut client = node.client().await;
    assert_eq!(listed_pods(&mut client).await, Vec::new());
    node.assert_nothing_left("full disk, after a restart");
}
