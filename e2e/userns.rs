//! Pods with their own user namespace (`hostUsers: false`, CRI `userns_options` mode POD): the container's
//! root is root inside and an unprivileged id on the host, its root filesystem is idmapped (root owns the
//! image's files inside, what it writes belongs to the mapped id on the host), the pod's namespaces belong
//! to the user namespace (sysfs shows the pod's network), ExecSync joins it, and removal leaves nothing.
//! A pod sharing one PID namespace gets it inside its user namespace. Plus the requests berth refuses, and
//! what they must not leave behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use berth::cli::client::Client;
use berth::cri::v1::*;
use nix::sys::signal::Signal;
use tonic::Code;

use crate::containers::leftovers;
use crate::support::cri::{
    container_config, create, create_refused, pod_config, pull, run_pod, start, status, stop_and_remove_pod,
};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

/// The host range the tests map the pod's ids to: far above any real user's ids and kubelet's range
/// (which starts at 65536 * n for small n on test nodes).
const HOST_BASE: u32 = 3_000_000;
const RANGE: u32 = 65536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping { container_id, host_id, length }
}

fn pod_userns() -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping(0, HOST_BASE, RANGE)],
        gids: vec![mapping(0, HOST_BASE, RANGE)],
    }
}

/// A daemon whose pods get loopback-only CNI (a userns pod needs its own network namespace). The test's
/// temporary directory is made traversable (0711, like /run): the container's setup runs as the root of
/// the pod's user namespace, which is nobody to the host's 0700 directories.
fn start_daemon(registry: &TestRegistry) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    std::fs::set_permissions(dirs.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    let conflist = dirs.cni_conf_dir();
    std::fs::create_dir_all(&conflist).unwrap();
    std::fs::write(
        conflist.join("10-lo.conflist"),
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

/// What kubelet sends for a `hostUsers: false` pod: own network and IPC, a PID namespace per container.
fn userns_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        userns_options: Some(pod_userns()),
        ..Default::default()
    }
}

fn with_namespaces(mut config: ContainerConfig, options: NamespaceOption) -> ContainerConfig {
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// ExecSync's stdout; panics (with stderr) unless the command exits 0.
async fn exec_out(client: &mut Client, id: &str, cmd: &[&str]) -> String {
    let response = client
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|err| panic!("ExecSync {cmd:?}: {err:?}"))
        .into_inner();
    assert_eq!(
        response.exit_code,
        0,
        "{cmd:?}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&response.stdout),
        String::from_utf8_lossy(&response.stderr)
    );
    String::from_utf8_lossy(&response.stdout).into_owned()
}

/// The processes whose cgroup names the container (the shim's exec'd helpers are gone by now).
fn container_pids(container_id: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(container_id)))
        .collect()
}

/// The real, effective, saved and filesystem uids of `pid` as the host sees them.
fn host_uids(pid: i32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid: line");
    line.split_whitespace().map(|n| n.parse().unwrap()).collect()
}

#[tokio::test]
async fn a_pod_with_its_own_user_namespace_runs_as_root_inside_and_unprivileged_outside() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, mut daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = pod_config("userns", &logs, userns_options());
    let pod = run_pod(&mut client, &pod_config).await;

    // The pod reports its user namespace options, and its namespaces are pinned with the user one.
    let pod_status = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let reported = pod_status.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options;
    assert_eq!(reported, Some(pod_userns()));
    let ns_dir = dirs.state().join("pods").join(&pod).join("ns");
    let userns = std::fs::metadata(ns_dir.join("user")).expect("pinned user namespace");
    // The network namespace is owned by the pod's user namespace: NS_GET_USERNS is not reachable from
    // std, but the pinned user namespace's inode differs from the host's.
    assert_ne!(userns.ino(), std::fs::metadata("/proc/self/ns/user").unwrap().ino());

    // A volume (a directory with a root-only file, as kubelet's secrets are) and a file (like kubelet's
    // /dev/termination-log), both owned by the host's root.
    let volume = dirs.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("secret"), "s3cret").unwrap();
    std::fs::set_permissions(volume.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let termination_log = dirs.path().join("termination-log");
    std::fs::write(&termination_log, "").unwrap();
    let mut config = with_namespaces(container_config("inside", busybox, &["sleep", "1000"]), userns_options());
    config.mounts = vec![
        Mount { container_path: "/vol".into(), host_path: volume.display().to_string(), ..Default::default() },
        Mount {
            container_path: "/dev/termination-log".into(),
            host_path: termination_log.display().to_string(),
            ..Default::default()
        },
    ];
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    assert_eq!(status(&mut client, &id).await.state, ContainerState::ContainerRunning as i32);

    // Inside: root, with kubelet's maps.
    assert_eq!(exec_out(&mut client, &id, &["id", "-u"]).await, "0\n");
    assert_eq!(exec_out(&mut client, &id, &["id", "-g"]).await, "0\n");
    let words = |text: String| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let expected: Vec<String> = ["0", &HOST_BASE.to_string(), &RANGE.to_string()].map(String::from).to_vec();
    assert_eq!(words(exec_out(&mut client, &id, &["cat", "/proc/self/uid_map"]).await), expected);
    assert_eq!(words(exec_out(&mut client, &id, &["cat", "/proc/self/gid_map"]).await), expected);
    assert_eq!(exec_out(&mut client, &id, &["hostname"]).await, "userns-host\n");
    // The image's files (owned by the host's root on disk) belong to root inside: the layers are idmapped.
    assert_eq!(exec_out(&mut client, &id, &["stat", "-c", "%u:%g", "/bin/busybox"]).await, "0:0\n");
    // Root can write its root filesystem and the pod's files; devices and /dev/shm work.
    assert_eq!(
        exec_out(&mut client, &id, &["sh", "-c", "echo hi > /made-by-root && stat -c %u:%g /made-by-root"]).await,
        "0:0\n"
    );
    assert_eq!(
        exec_out(&mut client, &id, &["sh", "-c", "echo changed >> /etc/hosts && stat -c %u /etc/hosts"]).await,
        "0\n"
    );
    exec_out(&mut client, &id, &["sh", "-c", "echo x > /dev/null && head -c 4 /dev/urandom > /dev/shm/x"]).await;
    // Volumes are idmapped too: the host root's files are root's inside, and what root writes there is
    // stored as the unmapped id (0) on disk — the point of idmapped volumes (KEP-127): a volume's ids do not
    // depend on which pod's range wrote them. (The rootfs upper directory is not idmapped: see above.)
    assert_eq!(exec_out(&mut client, &id, &["stat", "-c", "%u:%g", "/vol/secret"]).await, "0:0\n");
    assert_eq!(exec_out(&mut client, &id, &["cat", "/vol/secret"]).await, "s3cret");
    exec_out(&mut client, &id, &["sh", "-c", "echo new > /vol/made && echo bye > /dev/termination-log"]).await;
    let made = std::fs::metadata(volume.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    assert_eq!(std::fs::read_to_string(&termination_log).unwrap(), "bye\n");
    // The idmapped copies were staged in the runtime's private mount namespace, never in the host's.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains("/idmap/"), "an idmap staging mount is visible on the host");

    // sysfs is the pod network's own (mounted, not the host's bound read-only): only its loopback.
    assert_eq!(exec_out(&mut client, &id, &["ls", "/sys/class/net"]).await, "lo\n");

    // Outside: the container's process is the mapped id, and what it wrote is owned by it on disk.
    let pids = container_pids(&id);
    assert!(!pids.is_empty(), "no process in the container's cgroup");
    for pid in &pids {
        assert_eq!(host_uids(*pid), vec![HOST_BASE; 4], "process {pid}");
    }
    let upper = dirs.root().join("images/containers").join(&id).join("upper");
    let made = std::fs::metadata(upper.join("made-by-root")).expect("the file in the upper directory");
    assert_eq!((made.uid(), made.gid()), (HOST_BASE, HOST_BASE));
    let upper_root = std::fs::metadata(&upper).unwrap();
    assert_eq!((upper_root.uid(), upper_root.gid()), (HOST_BASE, HOST_BASE));
    // The image's snapshots themselves are untouched (still the host root's): no chown happened.
    let snapshots = dirs.root().join("images/snapshots");
    let owners: Vec<u32> = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("bin/busybox")).ok())
        .map(|m| m.uid())
        .collect();
    assert_eq!(owners, vec![0], "busybox's owner in the snapshots");
    // The idmapped lowers were attached only while the overlay was mounted.
    assert!(!dirs.root().join("images/containers").join(&id).join("lower").exists());

    // A second container of the pod, as a non-root user: the same namespace (it sees the first one's
    // hostname and maps), its uid mapped into the pod's range on the host.
    let mut config = with_namespaces(container_config("non-root", busybox, &["sleep", "1000"]), userns_options());
    config.linux.as_mut().unwrap().security_context.as_mut().unwrap().run_as_user = Some(Int64Value { value: 1000 });
    let second = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &second).await;
    assert_eq!(
        exec_out(&mut client, &second, &["id", "-u"]).await,
        "1000
"
    );
    assert_eq!(
        exec_out(&mut client, &second, &["readlink", "/proc/self/ns/user"]).await,
        exec_out(&mut client, &id, &["readlink", "/proc/self/ns/user"]).await
    );
    let pids = container_pids(&second);
    assert!(!pids.is_empty(), "no process in the second container's cgroup");
    for pid in &pids {
        assert_eq!(host_uids(*pid), vec![HOST_BASE + 1000; 4], "process {pid}");
    }

    // A container whose userns_options differ from its pod's is refused, naming the pod.
    let other = UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping(0, HOST_BASE + RANGE, RANGE)],
        gids: vec![mapping(0, HOST_BASE + RANGE, RANGE)],
    };
    for options in [other, UserNamespace { mode: NamespaceMode::Node as i32, ..Default::default() }] {
        let mut namespaces = userns_options();
        namespaces.userns_options = Some(options);
        let config = with_namespaces(container_config("mismatch", busybox, &["true"]), namespaces);
        let err = create_refused(&mut client, &pod, &pod_config, config).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(&pod), "{err:?}");
    }

    // A daemon killed with -9 and restarted finds the pod as it was: the container still runs in the pod's
    // user namespace, and ExecSync still joins it.
    drop(client);
    daemon.stop(Signal::SIGKILL).await;
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    assert_eq!(status(&mut client, &id).await.state, ContainerState::ContainerRunning as i32);
    assert_eq!(words(exec_out(&mut client, &id, &["cat", "/proc/self/uid_map"]).await), expected);
    let restarted = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(restarted.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options, Some(pod_userns()));

    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &[pod.clone(), id.clone(), second.clone()]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test]
async fn invalid_user_namespace_requests_are_refused_and_leave_nothing() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");

    let with_userns = |userns: UserNamespace| NamespaceOption { userns_options: Some(userns), ..userns_options() };
    let no_maps = UserNamespace { mode: NamespaceMode::Pod as i32, ..Default::default() };
    let no_gids = UserNamespace { gids: vec![], ..pod_userns() };
    let root_unmapped = UserNamespace {
        uids: vec![mapping(1, HOST_BASE, RANGE)],
        gids: vec![mapping(1, HOST_BASE, RANGE)],
        ..pod_userns()
    };
    let empty_range = UserNamespace { uids: vec![mapping(0, HOST_BASE, 0)], ..pod_userns() };
    let host_network = NamespaceOption { network: NamespaceMode::Node as i32, ..userns_options() };
    let cases = [
        (with_userns(no_maps), Code::InvalidArgument, "needs uid mappings"),
        (with_userns(no_gids), Code::InvalidArgument, "needs gid mappings"),
        (with_userns(root_unmapped), Code::InvalidArgument, "do not map the namespace's root"),
        (with_userns(empty_range), Code::InvalidArgument, "is empty"),
        (host_network, Code::InvalidArgument, "host's network namespace"),
        (
            with_userns(UserNamespace { mode: NamespaceMode::Target as i32, ..Default::default() }),
            Code::Unimplemented,
            "mode TARGET",
        ),
    ];
    for (n, (options, code, words)) in cases.into_iter().enumerate() {
        let config = pod_config(&format!("refused-{n}"), &logs, options);
        let err = client
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest { config: Some(config), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "case {n}: {err:?}");
        assert!(err.message().contains(words), "case {n}: {err:?} lacks {words:?}");
        assert!(err.message().contains(&format!("refused-{n}")), "case {n}: {err:?} does not name the pod");
    }
    // A pod the helper fails to make (a sysctl its new network namespace does not have) is undone: no
    // pinned namespace, user or other, and no pod directory is left.
    let mut failing = pod_config("helper-fails", &logs, userns_options());
    failing.linux.as_mut().unwrap().sysctls = [("net.no.such.knob".to_owned(), "1".to_owned())].into();
    let err = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(failing), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.message().contains("net/no/such/knob"), "{err:?}");
    assert!(err.message().contains("user namespace"), "{err:?}");
    let left = leftovers(&dirs, &[]);
    assert!(left.is_empty(), "left behind: {left:#?}");

    let listed = client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(listed.is_empty(), "{listed:?}");

    // A container asking for a user namespace in a pod that has none is refused too.
    let host_pod_options = NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() };
    let host_pod_config = pod_config("host-users", &logs, host_pod_options.clone());
    let pod = run_pod(&mut client, &host_pod_config).await;
    let config = with_namespaces(
        container_config("wants-userns", busybox, &["true"]),
        NamespaceOption { userns_options: Some(pod_userns()), ..host_pod_options },
    );
    let err = create_refused(&mut client, &pod, &host_pod_config, config).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("the host's user namespace"), "{err:?}");
    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &[pod]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test]
async fn a_shared_pid_namespace_is_made_inside_the_pods_user_namespace() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let shared = NamespaceOption { pid: NamespaceMode::Pod as i32, ..userns_options() };
    let pod_config = pod_config("userns-shared-pid", &dirs.path().join("logs"), shared.clone());
    let pod = run_pod(&mut client, &pod_config).await;
    let mut ids = Vec::new();
    for (name, command) in [("first", ["sleep", "1001"]), ("second", ["sleep", "1002"])] {
        let config = with_namespaces(container_config(name, busybox, &command), shared.clone());
        let id = create(&mut client, &pod, &pod_config, config).await;
        start(&mut client, &id).await;
        ids.push(id);
    }
    // /proc is the shared namespace's (mounting it needed the namespace to be the user namespace's): each
    // container sees the other's process, and the pod's reaper as pid 1.
    let ps = exec_out(&mut client, &ids[0], &["ps", "-o", "pid,args"]).await;
    assert!(ps.contains("sleep 1002") && ps.contains("sleep 1001"), "{ps}");
    assert_eq!(exec_out(&mut client, &ids[1], &["id", "-u"]).await, "0\n");
    let words = |text: String| text.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(exec_out(&mut client, &ids[1], &["cat", "/proc/self/uid_map"]).await),
        ["0".to_owned(), HOST_BASE.to_string(), RANGE.to_string()]
    );
    for id in &ids {
        for pid in container_pids(id) {
            assert_eq!(host_uids(pid), vec![HOST_BASE; 4], "process {pid}");
        }
    }
    stop_and_remove_pod(&mut client, &pod).await;
    let mut all = ids.clone();
    all.push(pod);
    let left = leftovers(&dirs, &all);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Runs `cmd` with a tty through the Exec RPC and the streaming server; returns what the terminal showed.
async fn tty_exec(client: &mut Client, id: &str, cmd: &[&str]) -> (String, i32) {
    use berth_streaming::client::{CommandIo, Transport, run_command};
    let url = client
        .runtime
        .exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let (sizes, resize) = tokio::sync::mpsc::channel(1);
    sizes.send(berth_streaming::TerminalSize { width: 77, height: 22 }).await.unwrap();
    let (output, mut reader) = tokio::io::duplex(64 * 1024);
    let io = CommandIo { stdin: None, stdout: Some(Box::new(output)), stderr: None, tty: true, resize: Some(resize) };
    let code = tokio::time::timeout(std::time::Duration::from_secs(20), run_command(&url, Transport::Spdy, io))
        .await
        .expect("the exec ends")
        .expect("the exec runs");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut text).await.unwrap();
    (text, code)
}

#[tokio::test]
async fn terminals_work_in_a_pod_with_its_own_user_namespace() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config("userns-tty", &dirs.path().join("logs"), userns_options());
    let pod = run_pod(&mut client, &pod_config).await;
    // A tty container: its init, already root of the pod's user namespace (nobody to the host), hands the
    // pty to the shim through the console socket; and a tty exec beside it.
    let mut config =
        with_namespaces(container_config("tty", busybox, &["sh", "-c", "tty; sleep 1000"]), userns_options());
    config.tty = true;
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    let log = dirs.path().join("logs/tty/0.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("/dev/pts/") {
        assert!(std::time::Instant::now() < deadline, "{:?}", std::fs::read_to_string(&log));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (shown, code) = tty_exec(&mut client, &id, &["sh", "-c", "tty; stty size; id -u"]).await;
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("/dev/pts/") && shown.contains("22 77") && shown.contains("0\r\n"), "{shown:?}");
    stop_and_remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &[id, pod]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
