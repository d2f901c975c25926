//! Pinned pod namespaces for real (root): made from a thread of this (multi-threaded) test process, seen
//! from inside with nsenter, and gone after unpin.

use std::collections::BTreeMap;
use std::process::Command;

use berth_runtime::pin::{PinRequest, PinnedKind, pin_in_thread, unpin};

/// Runs `command` inside the pinned network and UTS namespaces of `dir`; returns its stdout.
fn inside(dir: &std::path::Path, command: &[&str]) -> String {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", dir.join("net").display()))
        .arg(format!("--uts={}", dir.join("uts").display()))
        .args(command)
        .output()
        .expect("run nsenter (util-linux)");
    assert!(
        output.status.success(),
        "{command:?} in the pinned namespaces: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn mounted(path: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts.lines().any(|line| line.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

#[test]
fn a_thread_pins_a_pods_namespaces_with_lo_up_its_hostname_and_sysctls() {
    let temp = tempfile::tempdir().unwrap();
    let request = PinRequest {
        dir: temp.path().join("ns"),
        kinds: vec![PinnedKind::Net, PinnedKind::Uts, PinnedKind::Ipc],
        hostname: Some("pinned-pod".into()),
        sysctls: BTreeMap::from([("net.ipv4.ip_unprivileged_port_start".to_owned(), "80".to_owned())]),
        user: None,
    };
    pin_in_thread(&request).expect("pin");
    for kind in ["net", "uts", "ipc"] {
        assert!(mounted(&request.dir.join(kind)), "{kind} is pinned by a bind mount");
    }
    // Pods expect 127.0.0.1 to work whatever their CNI configuration says: lo is up from the start.
    let lo = inside(&request.dir, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("<LOOPBACK,UP,LOWER_UP>"), "{lo}");
    assert_eq!(inside(&request.dir, &["hostname"]).trim(), "pinned-pod");
    let sysctl = inside(&request.dir, &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    assert_eq!(sysctl.trim(), "80");
    // This thread stayed in the host's namespaces.
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap()
    );

    unpin(&request.dir).expect("unpin");
    for kind in ["net", "uts", "ipc"] {
        assert!(!mounted(&request.dir.join(kind)), "{kind} is unpinned");
    }
    unpin(&request.dir).expect("a repeated unpin is fine");
}
