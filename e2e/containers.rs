//! Containers through CRI: the per-pod shim, the lifecycle, CRI logs, ExecSync, stop grace, OOM kills,
//! a daemon killed with -9 while containers run, a shim killed with -9, and nothing left after removal.
//! Pods use the node network or loopback-only CNI, so the daemons share the host network (and reach the
//! rig's registry) without changing it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;
use nix::sys::signal::Signal;
use tonic::Code;

use crate::support::cri::{
    container_config, create, pull, run_pod, start, status, stop_and_remove_pod as remove_pod, wait_exited,
};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

/// A daemon with no CNI config needed: pods use the node's network (NODE mode) unless a test says so.
pub(crate) fn start_daemon(registry: &TestRegistry) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

fn pod_config(name: &str, logs: &std::path::Path) -> PodSandboxConfig {
    crate::support::cri::pod_config(name, logs, crate::support::cri::node_network())
}

async fn exec(client: &mut Client, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, tonic::Status> {
    client
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// The CRI records of a log file: (stream, tag, text).
fn log_records(path: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let time = parts.next().unwrap();
            assert!(time.ends_with('Z') && time.len() == 30, "timestamp {time:?} in {line:?}");
            (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned(), parts.next().unwrap_or("").to_owned())
        })
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test]
async fn a_container_runs_logs_in_cri_format_and_reports_its_exit() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = pod_config("lifecycle", &logs);
    let pod = run_pod(&mut client, &pod_config).await;

    let mut config = container_config(
        "talker",
        busybox,
        &["sh", "-c", "echo out; echo err >&2; echo \"$GREETING $(id -u):$(id -g) $(pwd)\"; printf no-newline; exit 3"],
    );
    config.envs = vec![KeyValue { key: "GREETING".into(), value: "hello".into() }];
    config.working_dir = "/tmp".into();
    config.labels = [("app".to_owned(), "talker".to_owned())].into();
    let id = create(&mut client, &pod, &pod_config, config.clone()).await;
    assert_eq!(id.len(), 64);
    let created = status(&mut client, &id).await;
    assert_eq!(created.state, ContainerState::ContainerCreated as i32);
    // image_ref is the repository digest (what kubelet shows as the pod's imageID), image_id the image's id.
    assert!(created.image_ref.contains("/berth-test/busybox@sha256:"), "{}", created.image_ref);
    assert!(created.image_id.starts_with("sha256:"), "{}", created.image_id);

    // The same request again (kubelet retrying after its timeout) gets the same container; a different one
    // with the same name is refused.
    assert_eq!(create(&mut client, &pod, &pod_config, config.clone()).await, id);
    let mut other = config.clone();
    other.command = vec!["true".into()];
    let err = client
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(other),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    start(&mut client, &id).await;
    let exited = wait_exited(&mut client, &id, Duration::from_secs(10)).await;
    assert_eq!(exited.exit_code, 3);
    assert_eq!(exited.reason, "Error");
    assert!(exited.started_at > 0 && exited.finished_at >= exited.started_at, "{exited:?}");
    let user = exited.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (0, 0));

    let records = log_records(&logs.join("talker/0.log"));
    let text: Vec<(&str, &str, &str)> = records.iter().map(|(s, t, x)| (s.as_str(), t.as_str(), x.as_str())).collect();
    assert!(text.contains(&("stdout", "F", "out")), "{text:?}");
    assert!(text.contains(&("stderr", "F", "err")), "{text:?}");
    assert!(text.contains(&("stdout", "F", "hello 0:0 /tmp")), "{text:?}");
    assert!(text.contains(&("stdout", "P", "no-newline")), "{text:?}");

    let listed = client
        .runtime
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: [("app".to_owned(), "talker".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // A terminal: output through the pty, logged as stdout.
    let mut tty = container_config("tty", busybox, &["sh", "-c", "tty; echo on-a-terminal"]);
    tty.tty = true;
    let tty_id = create(&mut client, &pod, &pod_config, tty).await;
    start(&mut client, &tty_id).await;
    wait_exited(&mut client, &tty_id, Duration::from_secs(10)).await;
    let lines: Vec<String> = log_records(&logs.join("tty/0.log"))
        .into_iter()
        .map(|(stream, _, text)| format!("{stream} {}", text.trim_end_matches('\r')))
        .collect();
    assert!(
        lines.contains(&"stdout /dev/pts/0".to_owned()) && lines.contains(&"stdout on-a-terminal".to_owned()),
        "{lines:?}"
    );

    // A successful one reports Completed.
    let done = create(&mut client, &pod, &pod_config, container_config("done", busybox, &["true"])).await;
    start(&mut client, &done).await;
    let exited = wait_exited(&mut client, &done, Duration::from_secs(10)).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"));

    client.runtime.remove_container(RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
    let err = client
        .runtime
        .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    remove_pod(&mut client, &pod).await;
    assert!(processes_with(&format!("berth-shim:{}", &pod[..12])).is_empty(), "the shim outlived its pod");
    assert!(!dirs.state().join("pods").join(&pod).exists());
}

#[tokio::test]
async fn exec_sync_stop_grace_and_a_pod_of_two_containers() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let mut pod_config = pod_config("pair", &logs);
    // Own network, IPC and UTS namespaces and one shared PID namespace.
    pod_config.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let conflist = dirs.cni_conf_dir();
    std::fs::create_dir_all(&conflist).unwrap();
    std::fs::write(
        conflist.join("10-lo.conflist"),
        r#"{"cniVersion":"1.0.0","name":"lo-only","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    let pod = run_pod(&mut client, &pod_config).await;

    // A container that ignores SIGTERM and one that writes to the shared /dev/shm.
    let mut stubborn =
        container_config("stubborn", busybox, &["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"]);
    stubborn.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            namespace_options: Some(NamespaceOption { pid: NamespaceMode::Pod as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut writer = container_config("writer", busybox, &["sh", "-c", "echo shared > /dev/shm/note; exec sleep 1000"]);
    writer.linux = stubborn.linux.clone();
    let a = create(&mut client, &pod, &pod_config, stubborn).await;
    let b = create(&mut client, &pod, &pod_config, writer).await;
    start(&mut client, &a).await;
    start(&mut client, &b).await;
    assert_eq!(status(&mut client, &a).await.state, ContainerState::ContainerRunning as i32);

    let echo = exec(&mut client, &a, &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&echo.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&echo.stderr), "to-err\n");
    assert_eq!(echo.exit_code, 7);
    // Shared IPC (/dev/shm), UTS (hostname) and PID namespaces between the two containers.
    let note = exec(&mut client, &a, &["cat", "/dev/shm/note"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&note.stdout), "shared\n");
    let hostname = exec(&mut client, &a, &["hostname"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout), "pair-host\n");
    let ps = exec(&mut client, &a, &["ps", "-o", "args"], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).contains("sleep 1000"), "{}", String::from_utf8_lossy(&ps.stdout));

    // A timeout kills the exec process, not the container, and says it timed out.
    let began = Instant::now();
    let err = exec(&mut client, &a, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("timed out"), "{err:?}");
    assert!(began.elapsed() < Duration::from_secs(5), "{:?}", began.elapsed());
    assert_eq!(status(&mut client, &a).await.state, ContainerState::ContainerRunning as i32);
    // A background child holding the pipes does not hold the answer.
    let began = Instant::now();
    let quick = exec(&mut client, &a, &["sh", "-c", "sleep 30 & echo bye"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&quick.stdout), "bye\n");
    assert!(began.elapsed() < Duration::from_secs(5), "{:?}", began.elapsed());

    // The grace period is honoured: SIGTERM is ignored, SIGKILL comes after 2 s.
    let began = Instant::now();
    client.runtime.stop_container(StopContainerRequest { container_id: a.clone(), timeout: 2 }).await.unwrap();
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "stop took {took:?}");
    let stopped = status(&mut client, &a).await;
    assert_eq!((stopped.state, stopped.exit_code), (ContainerState::ContainerExited as i32, 137));
    // Stopping again succeeds.
    client.runtime.stop_container(StopContainerRequest { container_id: a.clone(), timeout: 2 }).await.unwrap();
    let err = exec(&mut client, &a, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    remove_pod(&mut client, &pod).await;
    let listed =
        client.runtime.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(listed.is_empty(), "{listed:?}");
}

/// berth ignores SIGPIPE (every Rust program does) and ignored signals survive execve: a container used to
/// start with SIGPIPE ignored, so `yes | head -n 1` never ended. Every signal starts at its default, none
/// blocked.
#[tokio::test]
async fn a_container_starts_with_every_signal_at_its_default() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = pod_config("signals", &logs);
    let pod = run_pod(&mut client, &pod_config).await;
    let mut config = container_config("pipe", busybox, &["sh", "-c", "yes | head -n 1"]);
    config.log_path = "pipe.log".into();
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    let exited = wait_exited(&mut client, &id, Duration::from_secs(20)).await;
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    // The container's own process (no shell in between, which sets its own).
    let mut config = container_config("status", busybox, &["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]);
    config.log_path = "status.log".into();
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    let exited = wait_exited(&mut client, &id, Duration::from_secs(20)).await;
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    let lines: Vec<String> = log_records(&logs.join("status.log")).into_iter().map(|(_, _, text)| text).collect();
    assert!(lines.iter().any(|l| l.starts_with("SigIgn:") && l.ends_with("0000000000000000")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("SigBlk:") && l.ends_with("0000000000000000")), "{lines:?}");
    remove_pod(&mut client, &pod).await;
}

#[tokio::test]
async fn a_memory_hog_under_its_limit_is_oom_killed() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config("hog", &dirs.path().join("logs"));
    let pod = run_pod(&mut client, &pod_config).await;
    let mut hog =
        container_config("hog", busybox, &["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"]);
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 15 * 1024 * 1024, ..Default::default() }),
        ..Default::default()
    });
    let id = create(&mut client, &pod, &pod_config, hog).await;
    start(&mut client, &id).await;
    let exited = wait_exited(&mut client, &id, Duration::from_secs(30)).await;
    assert_eq!((exited.reason.as_str(), exited.exit_code), ("OOMKilled", 137), "{exited:?}");
    remove_pod(&mut client, &pod).await;
}

#[tokio::test]
async fn containers_outlive_a_daemon_killed_with_sigkill_and_a_dead_shim_never_hangs() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, mut daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let mut pods = Vec::new();
    for n in 0..20 {
        let pod_config = pod_config(&format!("survivor-{n}"), &logs);
        let pod = run_pod(&mut client, &pod_config).await;
        let config = container_config(
            &format!("ticker-{n}"),
            busybox,
            &["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"],
        );
        let id = create(&mut client, &pod, &pod_config, config).await;
        start(&mut client, &id).await;
        if n >= 3 {
            pods.push((pod, id, String::new()));
            continue;
        }
        // One that exits while the daemon is down.
        let brief = create(
            &mut client,
            &pod,
            &pod_config,
            container_config(&format!("brief-{n}"), busybox, &["sh", "-c", "sleep 1; exit 4"]),
        )
        .await;
        start(&mut client, &brief).await;
        pods.push((pod, id, brief));
    }
    let before: HashMap<String, ContainerStatus> = {
        let mut map = HashMap::new();
        for (_, id, _) in &pods {
            map.insert(id.clone(), status(&mut client, id).await);
        }
        map
    };
    drop(client);
    daemon.stop(Signal::SIGKILL).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    for (_, id, brief) in &pods {
        let now = status(&mut client, id).await;
        assert_eq!(now, before[id], "the status changed across the restart");
        if brief.is_empty() {
            continue;
        }
        let exited = status(&mut client, brief).await;
        assert_eq!((exited.state, exited.exit_code), (ContainerState::ContainerExited as i32, 4), "{exited:?}");
    }
    // Logs kept flowing: the ticker's numbers are continuous.
    let (_, first, _) = &pods[0];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks: Vec<u64> = log_records(&logs.join("ticker-0/0.log"))
        .iter()
        .filter_map(|(_, _, text)| text.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() > 20, "{ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "ticks not continuous: {ticks:?}");
    assert_eq!(exec(&mut client, first, &["echo", "alive"], 5).await.unwrap().stdout, b"alive\n");

    // kill -9 one pod's shim: its container is reported (exited or unknown, never running forever) and the
    // pod can be stopped and removed.
    let (pod, id, _) = &pods[1];
    let bootstrap = berth::shim::Bootstrap::load(&dirs.state().join("pods").join(pod)).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bootstrap.pid), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = status(&mut client, id).await.state;
        if state != ContainerState::ContainerRunning as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "container of a dead shim still reported running:\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pod gets a new shim for its next container.
    let pod_config = pod_config("survivor-1", &logs);
    let mut again = container_config("after-shim-death", busybox, &["sleep", "1000"]);
    again.metadata.as_mut().unwrap().attempt = 1;
    let again = create(&mut client, pod, &pod_config, again).await;
    start(&mut client, &again).await;
    assert_eq!(exec(&mut client, &again, &["echo", "new shim"], 5).await.unwrap().stdout, b"new shim\n");
    let restarted = berth::shim::Bootstrap::load(&dirs.state().join("pods").join(pod)).unwrap();
    assert_ne!(restarted.pid, bootstrap.pid);
    for (pod, _, _) in &pods {
        remove_pod(&mut client, pod).await;
    }
    assert!(processes_with("tick $i").is_empty(), "a container process outlived its pod");
    let listed = client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(listed.is_empty());
}

/// What a pod and its containers could leave on the host, by their ids: mounts and nsfs mounts under the
/// test's directories, cgroup directories, processes (shims, holders, containers) and state entries.
pub(crate) fn leftovers(dirs: &DaemonDirs, ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let prefix = dirs.path().to_string_lossy().into_owned();
    for line in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        if line.split(' ').nth(4).is_some_and(|target| target.starts_with(&prefix)) {
            found.push(format!("mount: {line}"));
        }
    }
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| name.contains(id.as_str())) {
                    found.push(format!("cgroup: {}", entry.path().display()));
                }
                stack.push(entry.path());
            }
        }
    }
    for pid in std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // A zombie holds nothing but its pid until its parent (init, for a shim) reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let cmdline =
            String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).into_owned();
        if ids.iter().any(|id| cgroup.contains(id.as_str()) || cmdline.contains(&id[..12])) {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    for dir in [dirs.state().join("pods"), dirs.state().join("runtime"), dirs.root().join("images/containers")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            found.push(format!("state: {}", entry.path().display()));
        }
    }
    found
}

#[tokio::test]
async fn security_context_user_caps_readonly_masked_paths_and_resources_are_seen_inside() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let logs = dirs.path().join("logs");
    let pod_config = pod_config("secure", &logs);
    let pod = run_pod(&mut client, &pod_config).await;
    let mut config = container_config("locked", busybox, &["sleep", "1000"]);
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 65534 }),
            run_as_group: Some(Int64Value { value: 65534 }),
            supplemental_groups: vec![1234],
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Default::default()
            }),
            masked_paths: vec!["/etc/group".into(), "/proc/keys".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..Default::default()
        }),
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 64 * 1024 * 1024, ..Default::default() }),
    });
    let id = create(&mut client, &pod, &pod_config, config).await;
    start(&mut client, &id).await;
    let out = |r: ExecSyncResponse| String::from_utf8_lossy(&r.stdout).trim().to_owned();

    let ids = out(exec(&mut client, &id, &["id"], 10).await.unwrap());
    assert!(ids.starts_with("uid=65534") && ids.contains("gid=65534") && ids.contains("1234"), "{ids}");
    let user = status(&mut client, &id).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (65534, 65534));
    assert!(user.supplemental_groups.contains(&1234), "{user:?}");
    let caps = out(exec(&mut client, &id, &["grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)", "/proc/self/status"], 10)
        .await
        .unwrap());
    // NET_BIND_SERVICE is bit 10.
    assert!(caps.contains("CapBnd:\t0000000000000400"), "{caps}");
    assert!(caps.contains("NoNewPrivs:\t1"), "{caps}");
    let write = exec(&mut client, &id, &["touch", "/newfile"], 10).await.unwrap();
    assert_ne!(write.exit_code, 0, "the read-only rootfs was writable");
    // Masked files read empty; /proc/sys is read-only; /dev/shm works.
    let group = exec(&mut client, &id, &["cat", "/etc/group"], 10).await.unwrap();
    assert!(group.stdout.is_empty() && group.exit_code == 0, "{group:?}");
    let keys = exec(&mut client, &id, &["wc", "-c", "/proc/keys"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).split_whitespace().next(), Some("0"), "{keys:?}");
    let mounts = out(exec(&mut client, &id, &["cat", "/proc/self/mountinfo"], 10).await.unwrap());
    assert!(
        mounts.contains(" /proc/keys ") && mounts.contains(" /etc/group "),
        "masked paths are not mounted over:\n{mounts}"
    );
    let sysctl = exec(&mut client, &id, &["sh", "-c", "echo 1 > /proc/sys/kernel/ns_last_pid"], 10).await.unwrap();
    assert_ne!(sysctl.exit_code, 0);
    assert_eq!(exec(&mut client, &id, &["touch", "/dev/shm/ok"], 10).await.unwrap().exit_code, 0);

    // UpdateContainerResources applies at once.
    client
        .runtime
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources { memory_limit_in_bytes: 96 * 1024 * 1024, ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap();
    let limit = out(exec(
        &mut client,
        &id,
        &["sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"],
        10,
    )
    .await
    .unwrap());
    assert_eq!(limit, (96 * 1024 * 1024).to_string());
    let recorded = status(&mut client, &id).await.resources.unwrap().linux.unwrap();
    assert_eq!(recorded.memory_limit_in_bytes, 96 * 1024 * 1024);

    // ReopenContainerLog: after a rename, new output goes to a new file.
    let mut talker = container_config("talker", busybox, &["sh", "-c", "while true; do echo line; sleep 0.05; done"]);
    talker.log_path = "talker.log".into();
    let talker_id = create(&mut client, &pod, &pod_config, talker).await;
    start(&mut client, &talker_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(logs.join("talker.log"), logs.join("talker.log.1")).unwrap();
    client.runtime.reopen_container_log(ReopenContainerLogRequest { container_id: talker_id.clone() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = log_records(&logs.join("talker.log.1")).len();
    let fresh = log_records(&logs.join("talker.log")).len();
    assert!(rotated > 0 && fresh > 0, "rotated {rotated}, fresh {fresh}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log_records(&logs.join("talker.log.1")).len(), rotated, "the old file still grows after reopen");

    let pod_status = client
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pod_status.containers_statuses.len(), 2);

    let everything = vec![pod.clone(), id.clone(), talker_id.clone()];
    remove_pod(&mut client, &pod).await;
    let left = leftovers(&dirs, &everything);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test]
async fn a_run_pod_sandbox_the_client_abandoned_completes_and_the_retry_gets_it() {
    let registry = TestRegistry::get();
    let (dirs, daemon) = start_daemon(&registry);
    let mut client = daemon.client().await;
    let pod_config = pod_config("abandoned", &dirs.path().join("logs"));
    let mut request =
        tonic::Request::new(RunPodSandboxRequest { config: Some(pod_config.clone()), ..Default::default() });
    request.set_timeout(Duration::from_millis(1));
    let abandoned = client.runtime.run_pod_sandbox(request).await;
    assert!(abandoned.is_err(), "expected the 1 ms deadline to pass first: {abandoned:?}");
    let id = run_pod(&mut client, &pod_config).await;
    let listed = client.runtime.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [id.as_str()], "one sandbox, not two");
    remove_pod(&mut client, &id).await;
    let left = leftovers(&dirs, &[id]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
