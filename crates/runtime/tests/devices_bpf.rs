//! The cgroup v2 device controller for real (root): rules compiled to eBPF, attached to a fresh cgroup of
//! the host's v2 hierarchy (the only one on v2 hosts, the `unified` mount on hybrid ones), and a process in
//! that cgroup opening device nodes.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use berth_runtime::cgroups::Layout;
use berth_runtime::cgroups::devices_bpf::{DeviceRule, apply};

fn v2_root() -> PathBuf {
    match Layout::detect().expect("read the cgroup layout") {
        Layout::V2 { root } => root,
        Layout::V1 { unified: Some(unified), .. } => unified,
        Layout::V1 { unified: None, .. } => panic!("missing prerequisite: no cgroup2 hierarchy is mounted"),
    }
}

/// Runs `script` in a shell placed in `cgroup` before it starts its work; returns what it printed.
fn run_in(cgroup: &std::path::Path, script: &str) -> String {
    let mut child = Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out
}

/// Removes the test cgroup however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn device_rules_are_enforced_and_replaced_on_cgroup_v2() {
    let cgroup = v2_root().join(format!("berth-devices-test-{}", std::process::id()));
    std::fs::create_dir(&cgroup).unwrap();
    let _cleanup = RemoveOnDrop(cgroup.clone());
    let probe = "head -c 1 /dev/zero >/dev/null 2>&1 && echo zero-ok || echo zero-denied; \
                 echo x > /dev/null 2>/dev/null && echo null-ok || echo null-denied";

    // Deny everything, then allow /dev/null: the last matching rule decides.
    let rules = [DeviceRule::parse("a *:* rwm", false).unwrap(), DeviceRule::parse("c 1:3 rw", true).unwrap()];
    apply(&cgroup, &rules).unwrap();
    let first = run_in(&cgroup, probe);

    // Updating replaces the program: now /dev/zero is allowed too.
    let mut wider = rules.to_vec();
    wider.push(DeviceRule::parse("c 1:5 r", true).unwrap());
    apply(&cgroup, &wider).unwrap();
    let second = run_in(&cgroup, probe);

    assert_eq!(first, "zero-denied\nnull-ok\n");
    assert_eq!(second, "zero-ok\nnull-ok\n");
}
