//! The per-pod shim (`berth __shim`): the process that owns a pod's containers.
//!
//! The daemon starts one per pod sandbox ([`launch::start`]). It detaches before any thread exists (new
//! session, a fork so the daemon's child exits at once and the shim is reparented, its own cgroup), becomes
//! child subreaper, and only then starts a single-threaded tokio runtime serving `berth.shim.v1.Shim`
//! (proto/shim.proto) on `<pod dir>/sock`. It creates containers through `berth_runtime` (whose init helper
//! makes them its children), owns their stdio and CRI log files, reaps every child in one place
//! ([`service::reap`]), and writes each exit to disk before anyone hears of it. It exits only when told to
//! (Shutdown, when the pod is removed), never because the daemon went away.
//!
//! Files under the pod directory: `sock` (the API), `shim.json` ([`Bootstrap`]: how to reach the shim),
//! `shim.log` (its own log lines), `containers/<id>/exit.json` ([`ExitRecord`]).

pub mod client;
mod fdio;
pub mod launch;
mod logs;
pub mod pidns;
mod service;
mod session;

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_runtime::cgroups::{Cgroup, Layout, Scope};

use serde::{Deserialize, Serialize};

/// The shim's socket, in the pod directory.
pub const SOCKET_NAME: &str = "sock";

/// The shim API version this binary serves and speaks (the proto package is `berth.shim.v1`).
pub const API_VERSION: &str = "v1";

/// How to reach a pod's shim, written by the shim once it serves (`<pod dir>/shim.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub version: String,
    pub pid: i32,
    /// Tells the shim from a process that reused its pid after it died.
    pub start_time: u64,
    pub socket: PathBuf,
    /// Host pid of the pod's PID-namespace holder; 0 when the pod has none.
    pub pid_namespace_holder: i32,
}

impl Bootstrap {
    pub fn path(pod_dir: &Path) -> PathBuf {
        pod_dir.join("shim.json")
    }

    pub fn load(pod_dir: &Path) -> std::io::Result<Bootstrap> {
        let bytes = std::fs::read(Bootstrap::path(pod_dir))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Whether the process recorded is still this shim.
    pub fn is_alive(&self) -> bool {
        berth_runtime::state::is_same_live_process(self.pid, self.start_time)
    }
}

/// A container's exit as the shim recorded it (`<pod dir>/containers/<id>/exit.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub finished_at_unix_nanos: i64,
    pub oom_killed: bool,
    #[serde(default)]
    pub message: String,
}

impl ExitRecord {
    pub fn path(pod_dir: &Path, container_id: &str) -> PathBuf {
        pod_dir.join("containers").join(container_id).join("exit.json")
    }

    pub fn load(pod_dir: &Path, container_id: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(ExitRecord::path(pod_dir, container_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Writes `bytes` durably: a temporary file, fsync, rename, fsync of the directory. After it returns, a
/// crash of the machine cannot lose or tear the file.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Writes `bytes` whole: a temporary file renamed over `path`, so a reader sees the old file or the new one,
/// never part of it; without the fsyncs of [`write_durably`], for a file that only describes something a
/// crash of the machine ends anyway.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durably: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        if durably {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    });
    if let Err(err) = written {
        // A full disk must not leave a half-written record behind.
        let _ = std::fs::remove_file(&temporary);
        return Err(err);
    }
    if durably {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The shim's cgroup: its own, so that whatever manages the daemon's cgroup (a service manager stopping
/// berth) never takes the pod's containers with it. Under the systemd driver it is a scope,
/// `berth-shim-<pod>.scope` in `system.slice` (as CRI-O's conmon scopes are), which systemd knows and
/// removes once the shim is gone; otherwise `/berth/shim-<pod>` in each hierarchy.
pub fn cgroup(pod_id: &str, systemd: bool) -> Result<Cgroup, berth_runtime::RuntimeError> {
    let layout = Layout::host()?;
    if systemd {
        Cgroup::of_scope(layout, Scope { unit: format!("berth-shim-{pod_id}.scope"), slice: "system.slice".into() })
    } else {
        Ok(Cgroup::new(layout, PathBuf::from(format!("/berth/shim-{pod_id}"))))
    }
}

/// Makes the shim's cgroup (or starts its scope with `pid`) and moves `pid` into it: done by the daemon for
/// the shim's first process, or by the shim itself under the systemd driver (see `launch`).
pub fn enter_cgroup(pod_id: &str, systemd: bool, pid: i32) -> Result<(), berth_runtime::RuntimeError> {
    let cgroup = cgroup(pod_id, systemd)?;
    cgroup.create(Some(pid), None)?;
    cgroup.add_process(pid)
}

/// Points the given standard descriptors of this process at /dev/null: a detached process must not keep
/// its starter's pipes open (the starter reads them to EOF).
pub(crate) fn detach_stdio(fds: &[std::os::fd::RawFd]) {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for &fd in fds {
            // SAFETY: dup2 onto this process's own standard descriptors; `null` stays open during the call.
            unsafe {
                nix::libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// `berth __shim <pod id> <pod dir> <runtime root> [--pid-namespace]`: dispatched from main.rs before
/// anything else runs.
pub fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (Some(pod_id), Some(pod_dir), Some(runtime_root)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: berth __shim POD_ID POD_DIR RUNTIME_ROOT [--pid-namespace] [--systemd-cgroup]");
        return std::process::ExitCode::from(2);
    };
    let options = service::Options {
        pod_id: pod_id.clone(),
        pod_dir: PathBuf::from(pod_dir),
        runtime_root: PathBuf::from(runtime_root),
        pid_namespace: args.iter().any(|a| a == "--pid-namespace"),
        systemd_cgroup: args.iter().any(|a| a == "--systemd-cgroup"),
    };
    launch::detach_and_run(options)
}
