//! berth on a systemd node: a real systemd boots as PID 1 of private namespaces (`hack/systemd-node.sh`),
//! `hack/install.sh` installs berth there as `berth.service` (Type=notify) with the configuration it writes
//! for a systemd node (the systemd cgroup driver), and pods run with kubelet's systemd slice names. Each
//! container's cgroup must be a scope systemd made (`berth-<id>.scope` in the pod's slice) with the limits
//! asked for, each shim's `berth-shim-<pod>.scope`; a daemon killed with -9 and restarted by its unit must
//! find every container still running in its scope; removing the pods must leave no berth unit and no
//! scope directory in any hierarchy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;

use crate::support::cri::{self, pull, run_container, run_pod, stop_and_remove_pod};
use crate::support::{berth_bin, output_via_files, repo_root};

const MIB: i64 = 1024 * 1024;

/// A booted systemd node, stopped (everything it made removed) on drop.
struct SystemdNode {
    dir: tempfile::TempDir,
    /// `/berth-systemd-node-<name>`: the node's root cgroup in every hierarchy of the host.
    cgroup: String,
}

impl SystemdNode {
    fn start() -> SystemdNode {
        let dir = tempfile::Builder::new().prefix("berth-sdnode.").tempdir().unwrap();
        // The node's /tmp is its own: the checkout and the binary under test (often under /tmp) are shared.
        let binary_dir = Path::new(berth_bin()).parent().unwrap().to_owned();
        let mut shared = vec![repo_root()];
        if !binary_dir.starts_with(repo_root()) {
            shared.push(binary_dir);
        }
        let shared = std::env::join_paths(&shared).unwrap();
        let output = output_via_files(
            Command::new("bash").arg(script()).arg("start").arg(dir.path()).env("BERTH_SYSTEMD_NODE_SHARE", shared),
        );
        let cgroup = std::fs::read_to_string(dir.path().join("cgroup")).unwrap_or_default();
        let cgroup = format!("/{}", cgroup.trim().trim_start_matches('/'));
        let node = SystemdNode { dir, cgroup };
        assert!(output.status.success(), "the systemd node did not boot: {}", describe(&output));
        assert!(node.cgroup.starts_with("/berth-systemd-node-"), "the node's cgroup: {:?}", node.cgroup);
        node
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `command...` inside the node.
    fn exec(&self, command: &[&str]) -> Output {
        output_via_files(Command::new("bash").arg(script()).arg("exec").arg(self.path()).args(command))
    }

    /// `command...` inside the node, which must succeed: its stdout.
    fn run(&self, command: &[&str]) -> String {
        let output = self.exec(command);
        assert!(output.status.success(), "{command:?} in the systemd node: {}\n{}", describe(&output), self.journal());
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A property of a unit, as `systemctl show` gives it.
    fn property(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "--value", "-p", property, unit]).trim().to_owned()
    }

    fn units(&self, pattern: &str) -> String {
        self.run(&["systemctl", "list-units", "--all", "--plain", "--no-legend", pattern])
    }

    fn journal(&self) -> String {
        let output = output_via_files(Command::new("bash").arg(script()).arg("exec").arg(self.path()).args([
            "journalctl",
            "-n",
            "60",
            "--no-pager",
        ]));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The host's directory of a cgroup of the node in hierarchy `hierarchy` (`memory`, `cpu`, ...).
    fn host_cgroup(&self, hierarchy: &str, path: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(self.cgroup.trim_start_matches('/'))
            .join(path.trim_start_matches('/'))
    }

    /// Every directory below the node's cgroup, in every hierarchy, whose name starts with `prefix`.
    fn cgroup_dirs_named(&self, prefix: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|hierarchy| hierarchy.path().join(self.cgroup.trim_start_matches('/')))
            .filter(|dir| dir.is_dir())
            .collect();
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if entry.file_name().to_string_lossy().starts_with(prefix) {
                        found.push(entry.path());
                    }
                    pending.push(entry.path());
                }
            }
        }
        found
    }
}

impl Drop for SystemdNode {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.path()).status();
    }
}

fn script() -> PathBuf {
    repo_root().join("hack/systemd-node.sh")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display())).trim().to_owned()
}

async fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(Endpoint { path: socket.to_owned() }, Duration::from_secs(5)).await {
            Ok(client) => return client,
            Err(err) => assert!(Instant::now() < deadline, "connect to {}: {err}", socket.display()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids in a cgroup directory.
fn procs(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs")).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_under_systemd_makes_scopes_that_survive_a_daemon_kill_and_go_with_their_pods() {
    let node = SystemdNode::start();
    let dir = node.path().display().to_string();

    // A registry inside the node's network, with the busybox test image.
    let registry = node.run(&[
        "bash",
        &repo_root().join("hack/registry.sh").display().to_string(),
        "start",
        &format!("{dir}/registry"),
    ]);
    let registry = registry.trim().to_owned();
    node.run(&[
        "python3",
        &repo_root().join("hack/test-images.py").display().to_string(),
        "--registry",
        &registry,
        "--only",
        "busybox",
    ]);
    let busybox = format!("{registry}/berth-test/busybox:latest");

    // Installed as an operator would (`make install` runs this script), into the node's unit directory.
    let installed = node.run(&[
        "env",
        &format!("PREFIX={dir}/usr"),
        "UNIT_DIR=/etc/systemd/system",
        &format!("CONFIG_DIR={dir}/etc"),
        "bash",
        &repo_root().join("hack/install.sh").display().to_string(),
        berth_bin(),
    ]);
    assert!(installed.contains("cgroup driver systemd"), "install on a systemd node: {installed}");
    let config_path = node.path().join("etc/config.toml");
    let config = read(&config_path);
    assert!(config.contains("\ndriver = \"systemd\""), "{config}");
    // Private places for this test: the database and images under the node's directory, the socket where the
    // test reaches it, CNI configuration of its own (pods use the node's network).
    let socket = node.path().join("berth.sock");
    std::fs::create_dir_all(node.path().join("cni")).unwrap();
    let config = config
        .replace("root = \"/var/lib/berth\"", &format!("root = \"{dir}/root\""))
        .replace("socket = \"/run/berth/berth.sock\"", &format!("socket = \"{}\"", socket.display()))
        .replace("conf_dir = \"/etc/cni/net.d\"", &format!("conf_dir = \"{dir}/cni\""))
        + &format!("\n[registries.\"{registry}\"]\ninsecure = true\n");
    std::fs::write(&config_path, config).unwrap();
    let unit = read(&node.path().join("system/berth.service"));
    assert!(unit.contains(&format!("ExecStart={dir}/usr/bin/berth serve --config {dir}/etc/config.toml")), "{unit}");

    // Type=notify: `start` returns once berth has said READY=1, which it does once the socket is served.
    node.run(&["systemctl", "start", "berth.service"]);
    assert_eq!(node.property("berth.service", "ActiveState"), "active");
    assert_eq!(node.property("berth.service", "Type"), "notify");
    let mut client = connect(&socket).await;
    let version = client.runtime.version(VersionRequest::default()).await.expect("Version").into_inner();
    assert_eq!(version.runtime_name, "berth");
    let runtime_config = client.runtime.runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(runtime_config.linux.unwrap().cgroup_driver(), CgroupDriver::Systemd);
    pull(&mut client, &busybox).await;

    // A pod as kubelet's systemd driver names it, and a container with limits.
    let slice = "kubepods-burstable-pode2e_systemd.slice";
    let logs = node.path().join("logs");
    let mut pod_config = cri::pod_config("sdnode", &logs, cri::node_network());
    pod_config.linux.as_mut().unwrap().cgroup_parent = slice.into();
    let pod = run_pod(&mut client, &pod_config).await;
    let mut container = cri::container_config("sleeper", &busybox, &["sleep", "100000"]);
    container.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 64 * MIB,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run_container(&mut client, &pod, &pod_config, container).await;
    let second = cri::container_config("second", &busybox, &["sleep", "100000"]);
    let second = run_container(&mut client, &pod, &pod_config, second).await;
    let second_scope = format!("berth-{second}.scope");
    assert_eq!(node.property(&second_scope, "ActiveState"), "active");

    let scope = format!("berth-{id}.scope");
    let shim_scope = format!("berth-shim-{pod}.scope");
    assert_eq!(node.property(&scope, "ActiveState"), "active", "{}", node.run(&["systemctl", "status", &scope]));
    assert_eq!(node.property(&scope, "Slice"), slice);
    assert_eq!(node.property(&scope, "Delegate"), "yes");
    assert_eq!(node.property(&scope, "MemoryLimit"), (64 * MIB).to_string());
    assert_eq!(node.property(&scope, "CPUQuotaPerSecUSec"), "200ms");
    assert_eq!(node.property(&shim_scope, "ActiveState"), "active");
    assert_eq!(node.property(&shim_scope, "Slice"), "system.slice");
    assert_eq!(node.property(&scope, "Description"), format!("berth container {id}"));
    assert_eq!(node.property(&shim_scope, "Description"), format!("berth shim of pod {pod}"));
    let scope_path = format!("/kubepods.slice/kubepods-burstable.slice/{slice}/{scope}");
    assert_eq!(node.property(&scope, "ControlGroup"), scope_path);
    // The limits are in the cgroup files, as the host sees them.
    let memory = node.host_cgroup("memory", &scope_path);
    assert_eq!(read(&memory.join("memory.limit_in_bytes")), (64 * MIB).to_string());
    assert_eq!(read(&node.host_cgroup("cpu", &scope_path).join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(&node.host_cgroup("cpu", &scope_path).join("cpu.shares")), "256");
    let container_pids = procs(&memory);
    assert_eq!(container_pids.len(), 1, "the container's one process: {container_pids:?}");
    let status = node.run(&["systemctl", "status", "--no-pager", &scope]);
    assert!(status.contains("sleep 100000"), "systemctl status shows the container's process: {status}");

    // UpdateContainerResources reaches systemd's record of the limits as well as the files.
    client
        .runtime
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 96 * MIB,
                cpu_quota: 20_000,
                cpu_period: 100_000,
                cpu_shares: 256,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
    assert_eq!(node.property(&scope, "MemoryLimit"), (96 * MIB).to_string());
    assert_eq!(read(&memory.join("memory.limit_in_bytes")), (96 * MIB).to_string());

    // kill -9 the daemon; the unit restarts it (KillMode=process: only the daemon was in its way).
    drop(client);
    let main_pid = node.property("berth.service", "MainPID");
    node.run(&["kill", "-9", &main_pid]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.property("berth.service", "ActiveState") == "active"
        && node.property("berth.service", "MainPID") == main_pid
    {
        assert!(Instant::now() < deadline, "systemd did not notice the daemon's death");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.run(&["systemctl", "restart", "berth.service"]);
    assert_eq!(node.property("berth.service", "ActiveState"), "active");
    assert_ne!(node.property("berth.service", "MainPID"), main_pid);
    let mut client = connect(&socket).await;
    for container in [&id, &second] {
        let state = cri::status(&mut client, container).await.state;
        assert_eq!(state, ContainerState::ContainerRunning as i32, "container {container} after the daemon's restart");
    }
    assert_eq!(node.property(&second_scope, "ActiveState"), "active");
    assert_eq!(procs(&memory), container_pids, "the same process, in the same scope");
    assert_eq!(node.property(&scope, "ActiveState"), "active");
    let (code, out) = cri::exec_out(&mut client, &id, &["cat", "/proc/self/cgroup"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&scope), "an exec joins the container's scope: {out}");

    // Removal leaves no berth unit but the service, and no scope directory in any hierarchy.
    stop_and_remove_pod(&mut client, &pod).await;
    let left = node.units("berth-*.scope");
    assert!(left.trim().is_empty(), "units left after the pod's removal: {left}");
    let dirs = node.cgroup_dirs_named("berth-");
    assert!(dirs.is_empty(), "cgroup directories left: {dirs:?}");
    drop(client);
    node.run(&["systemctl", "stop", "berth.service"]);
    assert_eq!(node.property("berth.service", "ActiveState"), "inactive");
    let journal = node.journal();
    let last = journal.lines().rev().find(|line| line.contains("berth.service: ")).unwrap_or_default();
    assert!(last.contains("Deactivated successfully"), "berth.service did not stop cleanly: {journal}");
}

#[tokio::test]
async fn without_a_reachable_systemd_the_systemd_driver_fails_clearly_and_leaves_nothing() {
    let dirs = crate::support::DaemonDirs::new();
    dirs.write_config("[cgroup]\ndriver = \"systemd\"\n");
    let mut command = dirs.serve_command();
    let no_bus = dirs.path().join("no-bus");
    command.env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}", no_bus.display()));
    let daemon = crate::support::Daemon::spawn_command(&dirs, command);
    let mut client = daemon.client().await;
    let mut config = cri::pod_config("nobus", &dirs.path().join("logs"), cri::node_network());
    config.linux.as_mut().unwrap().cgroup_parent = "kubepods-besteffort-podnobus.slice".into();
    let refused = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), ..Default::default() })
        .await
        .expect_err("RunPodSandbox without systemd");
    let message = refused.message();
    for part in ["berth-shim-", ".scope", "StartTransientUnit", "system bus", no_bus.to_str().unwrap()] {
        assert!(message.contains(part), "the error names {part:?}: {refused:?}");
    }
    let pods = client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
    let pod_dirs: Vec<_> = std::fs::read_dir(dirs.state().join("pods")).into_iter().flatten().flatten().collect();
    assert!(pod_dirs.is_empty(), "pod directories left: {pod_dirs:?}");
    let scopes: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .flat_map(|hierarchy| std::fs::read_dir(hierarchy.path().join("system.slice")).into_iter().flatten().flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("berth-shim-"))
        .map(|entry| entry.path())
        .collect();
    assert!(scopes.is_empty(), "scope directories left: {scopes:?}");
}
