//! `berth runtime` standing in for runc under a real consumer of the runc command line: containerd 1.6 and
//! its containerd-shim-runc-v2 (`ctr run --runc-binary`) create, start, exec into (with the exit code),
//! list, kill and delete a container, and run one on a terminal through the console socket.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::registry::{KillOnDrop, TestRegistry};
use crate::support::{berth_bin, require_tool};

fn ctr(socket: &Path, args: &[&str]) -> Output {
    Command::new("ctr").arg("--address").arg(socket).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn containerd_drives_berth_runtime_as_its_runc() {
    for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "skopeo", "script"] {
        require_tool(tool);
    }
    let registry = TestRegistry::get();
    let busybox = registry.image("busybox");
    let temp = tempfile::Builder::new().prefix("berth-ctd.").tempdir().unwrap();
    let dir = temp.path();
    let archive = dir.join("busybox.tar");
    let copied = Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}", busybox.reference))
        .arg(format!("oci-archive:{}:berth-test/busybox:latest", archive.display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", text(&copied));

    // The wrapper keeps the runtime's state in this test's directory whatever --root containerd passes.
    let wrapper = dir.join("berth-runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nn=$#; i=0\nwhile [ $i -lt $n ]; do a=$1; shift; i=$((i+1))\n  if [ \"$a\" = --root ]; then shift; i=$((i+1)); continue; fi\n  set -- \"$@\" \"$a\"\ndone\nexec {} runtime --root {} \"$@\"\n",
            berth_bin(),
            dir.join("runtime-state").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = dir.join("containerd.sock");
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n",
            d = dir.display(),
            s = socket.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let _containerd = KillOnDrop(
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ctr(&socket, &["version"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            std::fs::read_to_string(dir.join("containerd.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let imported = ctr(&socket, &["image", "import", archive.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported));
    let runc = wrapper.to_str().unwrap();
    let image = "berth-test/busybox:latest";

    let run =
        ctr(&socket, &["run", "--rm", "--runc-binary", runc, image, "one", "sh", "-c", "echo hello from berth; id -u"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from berth\n0\n");

    let started = ctr(&socket, &["run", "-d", "--runc-binary", runc, image, "two", "sleep", "60"]);
    assert!(started.status.success(), "{}", text(&started));
    let exec = ctr(&socket, &["task", "exec", "--exec-id", "e1", "two", "sh", "-c", "echo exec-ok; exit 3"]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec-ok\n");
    assert_eq!(exec.status.code(), Some(3), "{}", text(&exec));
    let ps = ctr(&socket, &["task", "ps", "two"]);
    assert!(ps.status.success() && text(&ps).lines().count() >= 2, "{}", text(&ps));
    assert!(ctr(&socket, &["task", "kill", "-s", "KILL", "two"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctr(&socket, &["task", "rm", "two"]).status.success() {
        assert!(Instant::now() < deadline, "task two was not removable after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ctr(&socket, &["container", "rm", "two"]).status.success());

    // A terminal: containerd's shim hands berth a console socket; `script` gives ctr a terminal of its own.
    let command = format!(
        "ctr --address {} run --rm -t --runc-binary {runc} {image} three sh -c 'tty; echo tty-ok'",
        socket.display()
    );
    let tty = Command::new("script").args(["-qec", &command, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let seen = text(&tty);
    assert!(seen.contains("/dev/pts/0") && seen.contains("tty-ok"), "{seen}");

    let leftovers: Vec<_> =
        std::fs::read_dir(dir.join("runtime-state")).map(|d| d.flatten().count()).into_iter().collect();
    assert_eq!(leftovers, [0], "berth runtime state left behind");
}
