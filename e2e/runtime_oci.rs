//! `berth runtime` on busybox bundles, observed from inside the container and compared with Debian's runc
//! running the very same bundle where the runtime spec fixes the outcome.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::bundle::{Bundle, describe, stdout};

fn assert_same(bundle: &Bundle, id: &str) -> String {
    let (berth, runc) = bundle.run_both(id);
    assert!(runc.status.success(), "runc failed on the test bundle:\n{}", describe(&runc));
    assert!(berth.status.success(), "berth failed:\n{}", describe(&berth));
    assert_eq!(stdout(&berth), stdout(&runc), "berth and runc disagree");
    stdout(&berth)
}

#[test]
fn user_groups_capabilities_hostname_and_rlimits_match_runc() {
    let bundle = Bundle::busybox();
    bundle.set_args(&[
        "sh",
        "-c",
        "hostname; id; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; ulimit -n; umask; \
         grep NoNewPrivs /proc/self/status; pwd; cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /dev",
    ]);
    bundle.edit(|spec| {
        spec["hostname"] = json!("berth-test");
        spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
        spec["process"]["cwd"] = json!("/tmp");
        spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 512}]);
        spec["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"]);
    });
    let out = assert_same(&bundle, "ids");
    assert!(out.starts_with("berth-test\nuid=1000 gid=1000 groups=10,20"), "{out}");
    assert!(out.contains("512\n0022\nNoNewPrivs:\t1\n/tmp\n"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000421"), "bounding set is CHOWN+KILL+NET_BIND_SERVICE: {out}");
    for device in ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd", "stdin"] {
        assert!(out.lines().any(|l| l == device), "/dev/{device} missing: {out}");
    }
}

#[test]
fn masked_paths_read_only_paths_and_a_read_only_root_match_runc() {
    let bundle = Bundle::busybox();
    bundle.set_args(&[
        "sh",
        "-c",
        "for p in /proc/keys /proc/timer_list /proc/kcore /sys/firmware; do [ -e $p ] && \
         echo masked=$(grep -c \" $p \" /proc/self/mountinfo); done; ls -A /proc/acpi | wc -l; \
         echo 1 > /proc/sys/kernel/ostype 2>&1 || echo sysctl-refused; touch /newfile 2>&1 || echo root-refused; \
         grep -c ' /proc/sys ro,' /proc/self/mountinfo",
    ]);
    let out = assert_same(&bundle, "masked");
    let masked: Vec<&str> = out.lines().filter(|l| l.starts_with("masked=")).collect();
    assert!(!masked.is_empty() && masked.iter().all(|l| *l == "masked=1"), "each masked path is a mount: {out}");
    assert!(out.contains("\n0\nsysctl-refused"), "/proc/acpi is empty: {out}");
    assert!(out.contains("sysctl-refused") && out.contains("root-refused"), "{out}");
}

#[test]
fn seccomp_refuses_a_syscall_with_the_profiles_errno_like_runc() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sh", "-c", "mkdir /tmp/x; echo exit=$?"]);
    bundle.edit(|spec| {
        spec["root"]["readonly"] = json!(false);
        spec["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                // Argument conditions: refuse personality(0xffffffff) only.
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]}
            ]
        });
    });
    let (berth, runc) = bundle.run_both("seccomp");
    let berth_text = String::from_utf8_lossy(&berth.stderr).to_string() + &stdout(&berth);
    let runc_text = String::from_utf8_lossy(&runc.stderr).to_string() + &stdout(&runc);
    assert!(berth_text.contains("Function not implemented") && berth_text.contains("exit=1"), "{}", describe(&berth));
    assert_eq!(berth_text, runc_text);
    assert!(!bundle.rootfs().join("tmp/x").exists());
}

#[test]
fn namespaced_sysctls_are_set_like_runc() {
    let bundle = Bundle::busybox();
    bundle.set_args(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax /proc/sys/kernel/hostname",
    ]);
    bundle.edit(|spec| {
        spec["hostname"] = json!("sysctl-box");
        spec["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "4242"});
    });
    assert_eq!(assert_same(&bundle, "sysctl"), "1\n4242\nsysctl-box\n");
}

fn wait_status(bundle: &Bundle, id: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = bundle.berth(&["state", id]);
        assert!(output.status.success(), "{}", describe(&output));
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if state["status"] == want {
            return state;
        }
        assert!(Instant::now() < deadline, "{id} never became {want}: {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cgroup_dir(controller: &str, id: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup").join(controller).join("berth").join(id)
}

#[test]
fn create_start_kill_delete_leave_nothing_behind() {
    let bundle = Bundle::busybox();
    let out = bundle.add_out_dir();
    bundle.set_args(&["sh", "-c", "echo started > /out/flag; exec sleep 60"]);
    bundle.edit(|spec| {
        spec["linux"]["resources"] = json!({"cpu": {"shares": 512, "quota": 50000, "period": 100000}, "pids": {"limit": 64},
            "memory": {"limit": 67108864}});
    });
    let id = "life";
    let created = bundle.berth(&["create", "--pid-file", "pid", id]);
    assert!(created.status.success(), "{}", describe(&created));
    let state = wait_status(&bundle, id, "created");
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(bundle.path().join("pid")).unwrap(), pid.to_string());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!out.join("flag").exists(), "the process ran before start");
    let layout = berth_runtime::cgroups::Layout::detect().unwrap();
    if !layout.is_v2() {
        let read = |c: &str, f: &str| std::fs::read_to_string(cgroup_dir(c, id).join(f)).unwrap().trim().to_owned();
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("pids", "pids.max"), "64");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        let procs = read("memory", "cgroup.procs");
        assert!(procs.lines().any(|p| p == pid.to_string()), "container not in its cgroup: {procs}");
    }

    assert!(bundle.berth(&["start", id]).status.success());
    wait_status(&bundle, id, "running");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !out.join("flag").exists() {
        assert!(Instant::now() < deadline, "the process did not run after start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ps = bundle.berth(&["ps", "--format", "json", id]);
    let pids: Vec<i64> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(pids.contains(&pid), "{pids:?}");
    let refused = bundle.berth(&["delete", id]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("is running"),
        "{}",
        describe(&refused)
    );

    assert!(bundle.berth(&["kill", id, "KILL"]).status.success());
    wait_status(&bundle, id, "stopped");
    let deleted = bundle.berth(&["delete", id]);
    assert!(deleted.status.success(), "{}", describe(&deleted));
    assert!(!bundle.state.path().join("berth").join(id).exists(), "state directory left behind");
    for controller in ["cpu", "memory", "pids", "unified"] {
        assert!(!cgroup_dir(controller, id).exists(), "{controller} cgroup left behind");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&bundle.rootfs().display().to_string()), "mount left on the host");
    let gone = bundle.berth(&["state", id]);
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
    // Deleting again with --force is not an error (idempotent removal).
    assert!(bundle.berth(&["delete", "--force", id]).status.success());
}

#[test]
fn a_failing_create_names_the_step_and_leaves_nothing_behind() {
    let bundle = Bundle::busybox();
    bundle.edit(|spec| {
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/broken", "type": "no-such-fs", "source": "none"}));
    });
    let output = bundle.berth(&["create", "broken"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("mount none (no-such-fs) on") && stderr.contains("/broken") && stderr.contains("ENODEV"),
        "{stderr}"
    );
    assert!(!bundle.state.path().join("berth/broken").exists(), "state left behind");
    for controller in ["cpu", "memory", "pids"] {
        assert!(!cgroup_dir(controller, "broken").exists(), "{controller} cgroup left behind");
    }
    let missing_program = Bundle::busybox();
    missing_program.set_args(&["/no/such/program"]);
    let output = missing_program.berth(&["create", "noprog"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/no/such/program"), "{}", describe(&output));
    assert!(!missing_program.state.path().join("berth/noprog").exists());
}

#[test]
fn a_memory_hog_is_oom_killed_and_counted() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]);
    bundle.edit(|spec| {
        spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
    });
    let id = "hog";
    assert!(bundle.berth(&["create", id]).status.success());
    assert!(bundle.berth(&["start", id]).status.success());
    wait_status(&bundle, id, "stopped");
    let stats: serde_json::Value = serde_json::from_slice(&bundle.berth(&["stats", id]).stdout).unwrap();
    assert!(stats["oom_kills"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["memory_limit_bytes"], 33554432);
    assert!(bundle.berth(&["delete", id]).status.success());
}

#[test]
fn a_container_joins_another_containers_namespaces_and_exec_enters_them() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sleep", "60"]);
    bundle.edit(|spec| spec["hostname"] = json!("alpha"));
    assert!(bundle.berth(&["run", "--detach", "alpha"]).status.success());
    let alpha = wait_status(&bundle, "alpha", "running");
    let pid = alpha["pid"].as_i64().unwrap();

    let exec = bundle.berth(&["exec", "alpha", "hostname"]);
    assert_eq!(stdout(&exec), "alpha\n", "{}", describe(&exec));
    let exit = bundle.berth(&["exec", "alpha", "sh", "-c", "exit 7"]);
    assert_eq!(exit.status.code(), Some(7));

    let joiner = Bundle::busybox();
    joiner.set_args(&["sh", "-c", "hostname; readlink /proc/self/ns/net"]);
    joiner.edit(|spec| {
        spec.as_object_mut().unwrap().remove("hostname");
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" || ns["type"] == "uts" {
                let name = if ns["type"] == "network" { "net" } else { "uts" };
                ns["path"] = json!(format!("/proc/{pid}/ns/{name}"));
            }
        }
    });
    let joined = joiner.berth(&["run", "beta"]);
    let their_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(stdout(&joined), format!("alpha\n{}\n", their_net.display()), "{}", describe(&joined));
    assert!(bundle.berth(&["delete", "--force", "alpha"]).status.success());
}

#[test]
fn update_changes_the_limits_of_a_running_container() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sleep", "60"]);
    assert!(bundle.berth(&["run", "--detach", "upd"]).status.success());
    let updated = bundle.berth(&["update", "--pids-limit", "42", "--memory", "50331648", "upd"]);
    assert!(updated.status.success(), "{}", describe(&updated));
    if !berth_runtime::cgroups::Layout::detect().unwrap().is_v2() {
        assert_eq!(std::fs::read_to_string(cgroup_dir("pids", "upd").join("pids.max")).unwrap().trim(), "42");
        assert_eq!(
            std::fs::read_to_string(cgroup_dir("memory", "upd").join("memory.limit_in_bytes")).unwrap().trim(),
            "50331648"
        );
    }
    assert!(bundle.berth(&["delete", "--force", "upd"]).status.success());
    let features: serde_json::Value = serde_json::from_slice(&bundle.berth(&["features"]).stdout).unwrap();
    assert_eq!(features["linux"]["seccomp"]["enabled"], true);
}

#[test]
fn hooks_run_at_their_points_with_the_state_and_a_failing_one_undoes_create() {
    let bundle = Bundle::busybox();
    let out = bundle.add_out_dir();
    bundle.set_args(&["true"]);
    let host_hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())], "timeout": 5});
    bundle.edit(|spec| {
        spec["hooks"] = json!({
            "createRuntime": [host_hook("createRuntime")],
            "prestart": [host_hook("prestart")],
            "createContainer": [host_hook("createContainer")],
            // Runs inside the container, after pivot_root: the container's own /bin/sh and /out.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /out/startContainer.json"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    let run = bundle.berth(&["run", "hooked"]);
    assert!(run.status.success(), "{}", describe(&run));
    for (hook, status) in [
        ("createRuntime", "creating"),
        ("prestart", "creating"),
        ("createContainer", "created"),
        ("startContainer", "running"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text =
            std::fs::read_to_string(out.join(format!("{hook}.json"))).unwrap_or_else(|_| panic!("{hook} did not run"));
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{hook}: {e}: {text}"));
        assert_eq!(state["id"], "hooked", "{hook}");
        assert_eq!(state["status"], status, "{hook}");
    }

    let failing = Bundle::busybox();
    failing.edit(|spec| {
        spec["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no >&2; exit 3"]}]})
    });
    let output = failing.berth(&["create", "refused"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("prestart hook /bin/sh failed") && stderr.contains("no"),
        "{stderr}"
    );
    assert!(!failing.state.path().join("berth/refused").exists());
    assert!(!cgroup_dir("pids", "refused").exists());
}

#[test]
fn a_user_namespace_maps_ids_like_runc() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map; stat -c %u /bin/busybox"]);
    bundle.edit(|spec| {
        spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let out = assert_same(&bundle, "userns");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "100000", "65536", "0", "100000", "65536", "65534"], "{out}");
}

#[test]
fn a_terminal_is_sent_to_the_console_socket() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    let bundle = Bundle::busybox();
    bundle.set_args(&["sh", "-c", "tty; echo hello-from-the-terminal"]);
    bundle.edit(|spec| spec["process"]["terminal"] = json!(true));
    let socket_path = bundle.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut name = [0u8; 128];
        let mut control = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let message = nix::sys::socket::recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &mut iov,
            Some(&mut control),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let fd = message
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("a terminal fd");
        // SAFETY: the kernel just gave this descriptor to this process.
        let master = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut text = Vec::new();
        let _ = (&master).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let run = bundle.berth(&["run", "--console-socket", socket_path.to_str().unwrap(), "tty"]);
    assert!(run.status.success(), "{}", describe(&run));
    let seen = receiver.join().unwrap();
    assert!(seen.contains("/dev/pts/0") && seen.contains("hello-from-the-terminal"), "{seen:?}");
}

#[test]
fn a_console_socket_nobody_listens_on_fails_create_at_once_and_leaves_nothing() {
    let bundle = Bundle::busybox();
    bundle.edit(|spec| spec["process"]["terminal"] = json!(true));
    let missing = bundle.path().join("nobody-listens.sock");
    let began = Instant::now();
    // The init helper is already waiting for its bootstrap when the socket turns out unreachable: it must be
    // killed, not waited for (create used to hang here).
    let output = bundle.berth(&["create", "--console-socket", missing.to_str().unwrap(), "noconsole"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(began.elapsed() < Duration::from_secs(10), "create took {:?}", began.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("console socket") && stderr.contains("nobody-listens.sock"), "{stderr}");
    assert!(!bundle.state.path().join("berth/noconsole").exists(), "state left behind");
    for controller in ["cpu", "memory", "pids"] {
        assert!(!cgroup_dir(controller, "noconsole").exists(), "{controller} cgroup left behind");
    }
}

#[test]
fn a_time_namespace_applies_its_offsets() {
    let bundle = Bundle::busybox();
    bundle.set_args(&["sh", "-c", "cat /proc/self/timens_offsets"]);
    bundle.edit(|spec| {
        spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
        spec["linux"]["timeOffsets"] =
            json!({"monotonic": {"secs": 86400, "nanosecs": 0}, "boottime": {"secs": 3600, "nanosecs": 0}});
    });
    let run = bundle.berth(&["run", "timens"]);
    assert!(run.status.success(), "{}", describe(&run));
    let text = stdout(&run);
    assert!(text.contains("monotonic") && text.contains("86400") && text.contains("3600"), "{text}");
}

#[test]
fn an_lsm_label_the_host_cannot_apply_is_a_clear_error() {
    let bundle = Bundle::busybox();
    let host_has_apparmor =
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y");
    if host_has_apparmor {
        // On a host with AppArmor the profile would be applied; this test is about hosts without it.
        return assert!(Path::new("/sys/module/apparmor").exists());
    }
    bundle.edit(|spec| spec["process"]["apparmorProfile"] = json!("berth-test-profile"));
    let output = bundle.berth(&["create", "lsm"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "AppArmor profile \"berth-test-profile\" was asked for, but AppArmor is not supported on this host"
        ),
        "{stderr}"
    );
    assert!(!bundle.state.path().join("berth/lsm").exists());
}

#[test]
fn pinned_namespaces_outlive_their_helper_are_joined_by_containers_and_unpin_cleanly() {
    use berth_runtime::pin::{PinRequest, PinnedKind, pin, unpin};

    let bundle = Bundle::busybox();
    let dir = bundle.state.path().join("pod-ns");
    let request = PinRequest {
        dir: dir.clone(),
        kinds: vec![PinnedKind::Net, PinnedKind::Ipc, PinnedKind::Uts],
        hostname: Some("pinned-pod".into()),
        sysctls: [("net.ipv4.ip_unprivileged_port_start".to_owned(), "80".to_owned())].into(),
        user: None,
    };
    let binary = Path::new(crate::support::berth_bin());
    pin(binary, &request).expect("pin");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for kind in ["net", "ipc", "uts"] {
        assert!(mountinfo.contains(&dir.join(kind).display().to_string()), "{kind} is not pinned");
    }

    // A container joins them by path, as a pod's containers will.
    bundle.set_args(&[
        "sh",
        "-c",
        "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; readlink /proc/self/ns/net",
    ]);
    bundle.edit(|spec| {
        spec.as_object_mut().unwrap().remove("hostname");
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            let file = match ns["type"].as_str().unwrap() {
                "network" => "net",
                "ipc" => "ipc",
                "uts" => "uts",
                _ => continue,
            };
            ns["path"] = json!(dir.join(file));
        }
    });
    let first = bundle.berth(&["run", "pod-a"]);
    let second = bundle.berth(&["run", "pod-b"]);
    assert!(first.status.success(), "{}", describe(&first));
    let lines: Vec<String> = stdout(&first).lines().map(str::to_owned).collect();
    assert_eq!(lines[..2], ["pinned-pod", "80"], "{lines:?}");
    assert_eq!(stdout(&first), stdout(&second), "two containers of one pod share its namespaces");

    unpin(&dir).expect("unpin");
    unpin(&dir).expect("unpin again is a no-op");
    assert!(!dir.exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&dir.display().to_string()), "a pin mount is left");

    // A request that cannot be honoured fails cleanly, naming the problem, and pins nothing.
    let bad = PinRequest { sysctls: [("net.no.such.knob".to_owned(), "1".to_owned())].into(), ..request };
    let err = pin(binary, &bad).unwrap_err().to_string();
    assert!(err.contains("net/no/such/knob"), "{err}");
    assert!(!dir.exists(), "a failed pin left {}", dir.display());
}

#[test]
fn a_recursive_read_only_mount_makes_its_submounts_read_only_too() {
    let bundle = Bundle::busybox();
    let source = bundle.path().join("rro-source");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    nix::mount::mount(Some("tmpfs"), &source.join("sub"), Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m"))
        .expect("mount a tmpfs below the source");
    bundle.set_args(&[
        "sh",
        "-c",
        "touch /data/top 2>/dev/null && echo top-writable; touch /data/sub/x 2>/dev/null && echo sub-writable; \
         echo done",
    ]);
    bundle.edit(|spec| {
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": source, "options": ["rbind", "rro", "rprivate"]
        }))
    });
    let output = bundle.berth(&["run", "rro"]);
    let _ = nix::mount::umount2(&source.join("sub"), nix::mount::MntFlags::MNT_DETACH);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "done\n", "both the mount and its submount must be read-only");
}
