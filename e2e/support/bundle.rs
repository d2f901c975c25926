//! OCI bundles for runtime tests: a busybox-static root filesystem and runc's default spec (`runc spec`),
//! adjusted per test, so the same bundle runs under `berth runtime` and under Debian's runc.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

pub struct Bundle {
    pub dir: tempfile::TempDir,
    /// Container state for both runtimes (`--root`), private to the test.
    pub state: tempfile::TempDir,
}

impl Bundle {
    /// A bundle whose rootfs has busybox with every applet, and runc's default config.json with
    /// `terminal: false`.
    pub fn busybox() -> Bundle {
        super::require_tool("runc");
        assert!(Path::new("/bin/busybox").exists(), "missing prerequisite busybox-static: run hack/install-deps.sh");
        let dir = tempfile::Builder::new().prefix("berth-bundle.").tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp", "root", "out"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").unwrap();
        let spec = Command::new("runc").arg("spec").current_dir(dir.path()).output().unwrap();
        assert!(spec.status.success(), "runc spec: {}", String::from_utf8_lossy(&spec.stderr));
        let bundle = Bundle { dir, state: tempfile::Builder::new().prefix("berth-rt.").tempdir().unwrap() };
        bundle.edit(|spec| spec["process"]["terminal"] = json!(false));
        bundle
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    pub fn spec(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path().join("config.json")).unwrap()).unwrap()
    }

    pub fn edit(&self, change: impl FnOnce(&mut Value)) {
        let mut spec = self.spec();
        change(&mut spec);
        std::fs::write(self.path().join("config.json"), serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    pub fn set_args(&self, args: &[&str]) {
        self.edit(|spec| spec["process"]["args"] = json!(args));
    }

    /// Mounts a fresh host directory read-write at /out in the container, for the test to observe.
    pub fn add_out_dir(&self) -> PathBuf {
        let out = self.path().join("out-host");
        std::fs::create_dir_all(&out).unwrap();
        self.edit(|spec| {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]
            }))
        });
        out
    }

    /// `berth runtime --root <state> <args...>` with the bundle as working directory.
    pub fn berth(&self, args: &[&str]) -> Output {
        let mut command = Command::new(super::berth_bin());
        command.arg("runtime").arg("--root").arg(self.state.path().join("berth")).args(args);
        self.output_of(command)
    }

    /// `runc --root <state> <args...>` with the bundle as working directory.
    pub fn runc(&self, args: &[&str]) -> Output {
        let mut command = Command::new("runc");
        command.arg("--root").arg(self.state.path().join("runc")).args(args);
        self.output_of(command)
    }

    /// Runs a runtime command in the bundle, its output in files (see `output_via_files`).
    fn output_of(&self, mut command: Command) -> Output {
        super::output_via_files(command.current_dir(self.path()))
    }

    /// Runs the bundle to completion under both runtimes; returns (berth, runc).
    pub fn run_both(&self, id: &str) -> (Output, Output) {
        (self.berth(&["run", id]), self.runc(&["run", id]))
    }
}

/// stdout and stderr of a run, for messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
