//! The shim's side of a restore: CRIU brings a checkpointed process tree back into a new container that
//! the runtime has made ([`berth_runtime::RestoreTarget`]: rootfs mounted, cgroup made and limited).
//!
//! CRIU is started through a gate (`berth __criu-gate`, a fresh single-threaded process that waits for
//! one byte on its stdin and then execs CRIU), so the shim can move it into the container's cgroup before
//! it does anything: every process it restores is born there, and charged there, as runc does by moving
//! its `criu swrk` before sending the request. The tree is restored stopped, as a sibling of CRIU (a child
//! of the shim, which reaps it); the runtime's `start` resumes it.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use berth_runtime::RestoreTarget;
use oci_spec::runtime::LinuxNamespaceType;

use super::CheckpointError;
use super::archive;
use super::criu::{self, RestorePlan};

/// The hidden command of the gate, dispatched from main.rs.
pub const GATE_COMMAND: &str = "__criu-gate";

/// The hidden command that gives the pod's UTS namespace its hostname back after a restore.
pub const HOSTNAME_COMMAND: &str = "__set-hostname";

/// CRIU's log of a restore, in the work directory.
pub const RESTORE_LOG: &str = "restore.log";

/// How long a restore may take before CRIU is killed.
const RESTORE_DEADLINE: Duration = Duration::from_secs(120);

/// Where the checkpoint comes from (the daemon unpacked the archive below the container's directory).
#[derive(Debug, Clone)]
pub struct RestoreSource {
    pub criu: PathBuf,
    /// The archive's `checkpoint/` directory: CRIU's images and `descriptors.json`.
    pub images_dir: PathBuf,
    /// CRIU's work directory: its log (`restore.log`) and the pid file.
    pub work_dir: PathBuf,
}

/// `berth __criu-gate PROGRAM ARGS...`: waits for the shim's go (one byte on stdin; end of file means
/// the shim gave up), puts /dev/null on stdin and execs PROGRAM.
pub fn gate_main() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: berth {GATE_COMMAND} PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let mut go = [0u8; 1];
    match nix::unistd::read(std::io::stdin(), &mut go) {
        Ok(1) => {}
        _ => return ExitCode::FAILURE,
    }
    let null = match std::fs::File::open("/dev/null") {
        Ok(file) => file,
        Err(err) => {
            eprintln!("{GATE_COMMAND}: open /dev/null: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = nix::unistd::dup2_stdin(&null) {
        eprintln!("{GATE_COMMAND}: dup2 /dev/null onto stdin: {err}");
        return ExitCode::FAILURE;
    }
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("{GATE_COMMAND}: exec {}: {err}", Path::new(program).display());
    ExitCode::from(127)
}

/// `berth __set-hostname NAMESPACE HOSTNAME`: joins the UTS namespace pinned at NAMESPACE and sets its
/// hostname. CRIU writes the checkpointed hostname into a UTS namespace it joins (its image holds the old
/// pod's); the shim runs this, a fresh single-threaded process, to give the new pod its own name back.
pub fn hostname_main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let [namespace, hostname] = args.as_slice() else {
        eprintln!("usage: berth {HOSTNAME_COMMAND} NAMESPACE HOSTNAME");
        return ExitCode::from(2);
    };
    let joined = std::fs::File::open(namespace)
        .map_err(|e| e.to_string())
        .and_then(|file| nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWUTS).map_err(|e| e.to_string()));
    if let Err(err) = joined {
        eprintln!("join the UTS namespace {}: {err}", Path::new(namespace).display());
        return ExitCode::FAILURE;
    }
    if let Err(err) = nix::unistd::sethostname(hostname) {
        eprintln!("sethostname {hostname:?}: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Gives the pod's UTS namespace (joined by path) the hostname of the new container's spec again.
fn reset_hostname(target: &RestoreTarget) -> Result<(), CheckpointError> {
    let uts = target
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|n| n.typ() == LinuxNamespaceType::Uts)
        .and_then(|n| n.path().clone());
    let (Some(uts), Some(hostname)) = (uts, target.spec.hostname().as_deref().filter(|h| !h.is_empty())) else {
        return Ok(());
    };
    let program = PathBuf::from("/proc/self/exe");
    let output = std::process::Command::new(&program)
        .arg(HOSTNAME_COMMAND)
        .arg(&uts)
        .arg(hostname)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CheckpointError::Spawn { program, source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(CheckpointError::Io {
        step: "set the pod's hostname again after the restore in",
        path: uts,
        source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
    })
}

/// The restore plan for `target` from `source`: the new pod's namespaces and mounts in place of the old
/// ones, and `stdio` (the new container's descriptors 0-2) in place of the pipes the dump recorded.
fn plan(
    target: &RestoreTarget,
    source: &RestoreSource,
    descriptors: &[String],
    stdio: [RawFd; 3],
    namespace_fds: &[(RawFd, &'static str)],
) -> RestorePlan {
    let mut external_mounts = Vec::new();
    for mount in target.spec.mounts().iter().flatten() {
        if berth_runtime::init::is_bind_mount(mount)
            && let Some(host) = mount.source()
        {
            external_mounts.push((mount.destination().display().to_string(), host.clone()));
        } else if mount.typ().as_deref() == Some("cgroup") {
            for (inside, host) in target.cgroup.container_mounts(mount.destination()) {
                external_mounts.push((inside.display().to_string(), host));
            }
        }
    }
    let mut inherited: Vec<(i32, String)> = namespace_fds.iter().map(|(fd, key)| (*fd, (*key).to_owned())).collect();
    for (fd, recorded) in stdio.iter().zip(descriptors) {
        if recorded.starts_with("pipe:") {
            inherited.push((*fd, recorded.clone()));
        }
    }
    let mut joined_namespaces = Vec::new();
    for namespace in target.spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).into_iter().flatten() {
        let kind = match namespace.typ() {
            LinuxNamespaceType::Ipc => "ipc",
            LinuxNamespaceType::Uts => "uts",
            _ => continue,
        };
        if let Some(path) = namespace.path() {
            joined_namespaces.push((kind, path.clone()));
        }
    }
    RestorePlan {
        images_dir: source.images_dir.clone(),
        work_dir: source.work_dir.clone(),
        log_file: source.work_dir.join(RESTORE_LOG),
        pid_file: source.work_dir.join("restore.pid"),
        root: target.rootfs.to_owned(),
        external_mounts,
        inherited,
        joined_namespaces,
    }
}

/// Restores the checkpoint of `source` into `target`; returns the pid of the tree's root, stopped.
pub fn restore(target: &RestoreTarget, source: &RestoreSource, stdio: [RawFd; 3]) -> Result<i32, CheckpointError> {
    let descriptors_path = source.images_dir.join(archive::DESCRIPTORS);
    let descriptors: Vec<String> = std::fs::read(&descriptors_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| CheckpointError::InvalidArchive {
            path: descriptors_path.clone(),
            reason: "no readable descriptors.json in its checkpoint directory".into(),
        })?;
    // The pod's network and PID namespaces go to CRIU as open descriptors, under the keys of the dump.
    let mut namespace_files = Vec::new();
    for namespace in target.spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).into_iter().flatten() {
        let key = match namespace.typ() {
            LinuxNamespaceType::Network => criu::EXTERNAL_NET_KEY,
            LinuxNamespaceType::Pid => criu::EXTERNAL_PID_KEY,
            _ => continue,
        };
        let Some(path) = namespace.path() else { continue };
        let file = std::fs::File::open(path).map_err(|source| CheckpointError::Io {
            step: "open the pod's namespace",
            path: path.clone(),
            source,
        })?;
        namespace_files.push((file, key));
    }
    let namespace_fds: Vec<(RawFd, &'static str)> =
        namespace_files.iter().map(|(file, key)| (file.as_raw_fd(), *key)).collect();
    let plan = plan(target, source, &descriptors, stdio, &namespace_fds);
    tracing::debug!(container_id = target.id, args = ?plan.args(), "restoring the container");

    // The inherited descriptors must survive the gate's exec and CRIU's: close-on-exec is cleared for the
    // spawn alone (the shim is single-threaded, so nothing else is spawned meanwhile) and set again after.
    let inherited: Vec<RawFd> = plan.inherited.iter().map(|(fd, _)| *fd).collect();
    for fd in &inherited {
        set_cloexec(*fd, false)?;
    }
    let spawned = std::process::Command::new("/proc/self/exe")
        .arg(GATE_COMMAND)
        .arg(&source.criu)
        .arg("restore")
        .args(plan.args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    for fd in &inherited {
        set_cloexec(*fd, true)?;
    }
    drop(namespace_files);
    let mut child =
        spawned.map_err(|source| CheckpointError::Spawn { program: PathBuf::from("/proc/self/exe"), source })?;
    let mut go = child.stdin.take().expect("the gate's stdin is piped");
    if let Err(err) = target.cgroup.add_process(child.id() as i32) {
        drop(go);
        let _ = child.wait();
        return Err(err.into());
    }
    let opened = go.write_all(b"1");
    drop(go);
    if let Err(err) = opened {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CheckpointError::Spawn { program: source.criu.clone(), source: err });
    }
    criu::wait_blocking(&source.criu, child, "restore", &plan.log_file, RESTORE_DEADLINE)?;
    let pid = std::fs::read_to_string(&plan.pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| CheckpointError::Criu {
            action: "restore",
            status: "exit status: 0".into(),
            log: plan.log_file.clone(),
            detail: format!("it wrote no pid to {}", plan.pid_file.display()),
        })?;
    reset_hostname(target)?;
    Ok(pid)
}

fn set_cloexec(fd: RawFd, on: bool) -> Result<(), CheckpointError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: the descriptor is one the caller holds open for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(borrowed, FcntlArg::F_SETFD(flags)).map(drop).map_err(|errno| CheckpointError::Io {
        step: "set close-on-exec on",
        path: PathBuf::from(format!("/proc/self/fd/{fd}")),
        source: errno.into(),
    })
}
