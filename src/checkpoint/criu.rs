//! Running CRIU: where the binary is, the command lines of a dump, and a run bounded by a deadline.
//!
//! berth runs `criu` as a command (as runc and crun's fallback do) rather than through CRIU's RPC socket:
//! the daemon stays multi-threaded and spawns it like any tool, and the whole exchange is its argument list
//! and its log file, which an operator can replay by hand.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CheckpointError;

/// Where CRIU is looked for when the configured name has no slash, after `PATH`: hack/criu.sh installs a
/// build that works on current kernels in /usr/local/sbin; distributions put theirs in /usr/sbin.
const FALLBACK_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The key CRIU records an external network namespace under (and restore hands the new one to).
pub const EXTERNAL_NET_KEY: &str = "extRootNetNS";
/// The same for a PID namespace the container shares with its pod.
pub const EXTERNAL_PID_KEY: &str = "extRootPidNS";

/// The CRIU binary berth runs.
#[derive(Debug, Clone)]
pub struct Criu {
    program: PathBuf,
}

impl Criu {
    /// Resolves `configured` (`[checkpoint] criu`): a path is used as is, a bare name is searched in `PATH`
    /// and then in the usual sbin directories.
    pub fn locate(configured: &str) -> Result<Criu, CheckpointError> {
        let missing = || CheckpointError::CriuMissing { program: configured.to_owned() };
        if configured.contains('/') {
            let program = PathBuf::from(configured);
            return if is_executable(&program) { Ok(Criu { program }) } else { Err(missing()) };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(configured))
            .find(|candidate| is_executable(candidate))
            .map(|program| Criu { program })
            .ok_or_else(missing)
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs `criu ACTION ARGS...`, killing it when `deadline` passes. `log` is the file the arguments told
    /// CRIU to log to: its last lines explain a failure.
    pub async fn run(
        &self,
        action: &'static str,
        args: &[OsString],
        log: &Path,
        deadline: Option<Duration>,
    ) -> Result<(), CheckpointError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg(action)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child =
            command.spawn().map_err(|source| CheckpointError::Spawn { program: self.program.clone(), source })?;
        let output = child.wait_with_output();
        let output = match deadline {
            Some(limit) => match tokio::time::timeout(limit, output).await {
                Ok(result) => result,
                // Dropping the future kills CRIU (kill_on_drop); the caller thaws what it froze.
                Err(_) => return Err(CheckpointError::Timeout { action, seconds: limit.as_secs() }),
            },
            None => output.await,
        }
        .map_err(|source| CheckpointError::Spawn { program: self.program.clone(), source })?;
        if output.status.success() {
            return Ok(());
        }
        let mut detail = log_tail(log, 12);
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        }
        Err(CheckpointError::Criu { action, status: output.status.to_string(), log: log.to_owned(), detail })
    }
}

/// Waits for a CRIU process started elsewhere (the shim starts it through a gate, see `restore.rs`),
/// killing it when `deadline` passes. Blocking: for the shim's single thread.
pub fn wait_blocking(
    program: &Path,
    mut child: std::process::Child,
    action: &'static str,
    log: &Path,
    deadline: Duration,
) -> Result<(), CheckpointError> {
    let spawn_error = |source| CheckpointError::Spawn { program: program.to_owned(), source };
    let until = std::time::Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(spawn_error)? {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CheckpointError::Timeout { action, seconds: deadline.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    Err(CheckpointError::Criu { action, status: status.to_string(), log: log.to_owned(), detail: log_tail(log, 12) })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last lines of CRIU's log that say what went wrong (its errors start with `Error`), else its last
/// lines, joined with ` | `.
fn log_tail(log: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = all.iter().copied().filter(|l| l.contains("Error") || l.contains("error")).collect();
    let chosen = if errors.is_empty() { &all } else { &errors };
    chosen[chosen.len().saturating_sub(lines)..].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | ")
}

/// A namespace the container shares with something outside its process tree (the pod), which CRIU must
/// not dump but record by inode, to be handed a namespace of the same kind on restore.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalNamespace {
    /// CRIU's name for the kind: `net`, `pid`.
    pub kind: &'static str,
    pub inode: u64,
    pub key: &'static str,
}

/// A CRIU command line being built.
struct Args(Vec<OsString>);

impl Args {
    /// What every run of CRIU by berth names: the image directory, the work directory, a verbose log file
    /// (the one place a failure is explained) and the container's root.
    fn new(images_dir: &Path, work_dir: &Path, log_file: &Path, root: &Path) -> Args {
        let mut args = Args(Vec::new());
        args.push("--images-dir", Some(images_dir.into()));
        args.push("--work-dir", Some(work_dir.into()));
        args.push("--log-file", Some(log_file.into()));
        args.push("-v4", None);
        args.push("--root", Some(root.into()));
        args
    }

    fn push(&mut self, flag: &str, value: Option<OsString>) {
        self.0.push(flag.into());
        self.0.extend(value);
    }
}

/// What a dump of one container needs.
#[derive(Debug, Clone)]
pub struct DumpPlan {
    /// The container's init, the root of the process tree.
    pub pid: i32,
    pub images_dir: PathBuf,
    pub work_dir: PathBuf,
    pub log_file: PathBuf,
    pub root: PathBuf,
    /// Destinations of the bind mounts the spec brought in: CRIU records them as external, to be bound
    /// again from the new container's sources on restore.
    pub external_mounts: Vec<String>,
    pub external_namespaces: Vec<ExternalNamespace>,
    /// The cgroup freezer CRIU stops the container with (consistent across forks, unlike ptrace alone).
    pub freezer: Option<PathBuf>,
    pub leave_running: bool,
}

impl DumpPlan {
    /// `criu dump`'s arguments (without the action).
    pub fn args(&self) -> Vec<OsString> {
        let mut args = Args::new(&self.images_dir, &self.work_dir, &self.log_file, &self.root);
        let mut push = |flag: &str, value: Option<OsString>| args.push(flag, value);
        push("--tree", Some(self.pid.to_string().into()));
        // Locks taken with flock/fcntl are part of the state, and the cgroups are the container's own.
        push("--file-locks", None);
        push("--manage-cgroups", None);
        if self.leave_running {
            push("--leave-running", None);
        }
        if let Some(freezer) = &self.freezer {
            push("--freeze-cgroup", Some(freezer.clone().into()));
        }
        for destination in &self.external_mounts {
            push("--ext-mount-map", Some(format!("{destination}:{destination}").into()));
        }
        for namespace in &self.external_namespaces {
            push("--external", Some(format!("{}[{}]:{}", namespace.kind, namespace.inode, namespace.key).into()));
        }
        args.0
    }
}

/// What a restore of one container needs.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub images_dir: PathBuf,
    pub work_dir: PathBuf,
    pub log_file: PathBuf,
    /// Where CRIU writes the restored tree's root pid.
    pub pid_file: PathBuf,
    /// The new container's root filesystem (mounted).
    pub root: PathBuf,
    /// Each mount point the dump recorded as external, with the host path the new container binds there.
    pub external_mounts: Vec<(String, PathBuf)>,
    /// Descriptors CRIU inherits, by number, with the key the dump knows them by: the pod's namespaces
    /// ([`EXTERNAL_NET_KEY`]) and the new stdio pipes (`pipe:[inode]` of the old ones).
    pub inherited: Vec<(i32, String)>,
    /// Namespaces the restored tree joins instead of making (CRIU's kind, the pod's path): IPC and UTS.
    pub joined_namespaces: Vec<(&'static str, PathBuf)>,
}

impl RestorePlan {
    /// `criu restore`'s arguments (without the action). The tree is restored stopped, as a sibling of CRIU
    /// (a child of CRIU's parent, the shim), and stays in the cgroup CRIU was started in.
    pub fn args(&self) -> Vec<OsString> {
        let mut args = Args::new(&self.images_dir, &self.work_dir, &self.log_file, &self.root);
        let mut push = |flag: &str, value: Option<OsString>| args.push(flag, value);
        push("--restore-detached", None);
        push("--restore-sibling", None);
        push("--leave-stopped", None);
        push("--pidfile", Some(self.pid_file.clone().into()));
        push("--file-locks", None);
        push("--manage-cgroups=ignore", None);
        for (destination, source) in &self.external_mounts {
            push("--ext-mount-map", Some(format!("{destination}:{}", source.display()).into()));
        }
        for (fd, key) in &self.inherited {
            push("--inherit-fd", Some(format!("fd[{fd}]:{key}").into()));
        }
        for (kind, path) in &self.joined_namespaces {
            push("--join-ns", Some(format!("{kind}:{}", path.display()).into()));
        }
        args.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DumpPlan {
        DumpPlan {
            pid: 42,
            images_dir: "/w/checkpoint".into(),
            work_dir: "/w".into(),
            log_file: "/w/dump.log".into(),
            root: "/b/rootfs".into(),
            external_mounts: vec!["/etc/hosts".into(), "/data".into()],
            external_namespaces: vec![ExternalNamespace { kind: "net", inode: 4026532000, key: EXTERNAL_NET_KEY }],
            freezer: Some("/sys/fs/cgroup/freezer/berth/x".into()),
            leave_running: true,
        }
    }

    #[test]
    fn a_dump_names_the_tree_its_external_mounts_and_namespaces_and_leaves_the_container_running() {
        let args: Vec<String> = plan().args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("--images-dir /w/checkpoint --work-dir /w --log-file /w/dump.log -v4 --root /b/rootfs")
        );
        assert!(joined.contains("--tree 42"), "{joined}");
        for expected in [
            "--leave-running",
            "--freeze-cgroup /sys/fs/cgroup/freezer/berth/x",
            "--ext-mount-map /etc/hosts:/etc/hosts",
            "--ext-mount-map /data:/data",
            "--external net[4026532000]:extRootNetNS",
            "--file-locks",
            "--manage-cgroups",
        ] {
            assert!(joined.contains(expected), "{expected} missing from {joined}");
        }
    }

    #[test]
    fn a_restore_maps_mounts_descriptors_and_namespaces_to_the_new_pod_and_leaves_the_tree_stopped() {
        let plan = RestorePlan {
            images_dir: "/r/checkpoint".into(),
            work_dir: "/r".into(),
            log_file: "/r/restore.log".into(),
            pid_file: "/r/pid".into(),
            root: "/b/rootfs".into(),
            external_mounts: vec![("/etc/hosts".into(), "/pods/new/hosts".into())],
            inherited: vec![(5, EXTERNAL_NET_KEY.into()), (7, "pipe:[1234]".into())],
            joined_namespaces: vec![("ipc", "/pods/new/ipc".into())],
        };
        let joined = plan.args().into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>().join(" ");
        for expected in [
            "--root /b/rootfs",
            "--restore-detached --restore-sibling --leave-stopped --pidfile /r/pid",
            "--manage-cgroups=ignore",
            "--ext-mount-map /etc/hosts:/pods/new/hosts",
            "--inherit-fd fd[5]:extRootNetNS",
            "--inherit-fd fd[7]:pipe:[1234]",
            "--join-ns ipc:/pods/new/ipc",
        ] {
            assert!(joined.contains(expected), "{expected} missing from {joined}");
        }
    }

    #[test]
    fn a_dump_that_stops_the_container_has_no_leave_running() {
        let mut plan = plan();
        plan.leave_running = false;
        plan.freezer = None;
        let args: Vec<String> = plan.args().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert!(!args.iter().any(|a| a == "--leave-running" || a == "--freeze-cgroup"), "{args:?}");
    }

    #[test]
    fn the_log_tail_prefers_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        std::fs::write(
            &log,
            "(00.1) Dumping\n(00.2) Error (criu/mount.c:1): mnt: 123 is not reachable\n(00.3) Unlock\n",
        )
        .unwrap();
        assert_eq!(log_tail(&log, 5), "(00.2) Error (criu/mount.c:1): mnt: 123 is not reachable");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "b | c");
    }

    #[test]
    fn criu_is_found_by_path_or_reported_missing_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("criu");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(Criu::locate(fake.to_str().unwrap()).unwrap().program(), fake);
        let err = Criu::locate("/nonexistent/criu").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/criu"), "{err}");
    }
}
