//! The runtime side of each operation: what the caller of this crate runs (the `berth runtime` CLI, or
//! berth's per-pod shim). Container setup itself happens in the init helper (see `init`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process, Spec};

use crate::cgroups::{Cgroup, Layout, Scope, Stats};
use crate::error::{Result, RuntimeError};
use crate::state::{
    ContainerState, StateDir, Status, is_same_live_process, now_rfc3339, process_start_time, validate_id,
};
use crate::sync::{Channel, InitConfig, Message};
use crate::{OCI_VERSION, hooks};

/// Where the container's stdin, stdout and stderr come from (when process.terminal is false).
#[derive(Debug)]
pub enum Stdio {
    /// The caller's own fds 0, 1 and 2.
    Inherit,
    /// These three descriptors.
    Fds([OwnedFd; 3]),
}

/// A unix socket path that receives the terminal's master fd (runc's `--console-socket`).
#[derive(Debug, Clone)]
pub struct ConsoleSocket(pub PathBuf);

#[derive(Debug)]
pub struct CreateOptions {
    pub stdio: Stdio,
    pub console_socket: Option<ConsoleSocket>,
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug)]
pub struct ExecOptions {
    pub stdio: Stdio,
    pub console_socket: Option<ConsoleSocket>,
    pub pid_file: Option<PathBuf>,
}

/// The runtime: where state lives and which binary provides `__init`.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub root: PathBuf,
    /// The systemd cgroup driver (runc's `--systemd-cgroup`): a `cgroupsPath` is `slice:prefix:name`, and
    /// the cgroup a scope unit systemd creates and removes.
    pub systemd_cgroup: bool,
    /// The executable started as `<init_binary> __init`. `/proc/self/exe` (the default) is the running
    /// binary itself, even if the file on disk has been replaced by an upgrade since.
    pub init_binary: PathBuf,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into(), systemd_cgroup: false, init_binary: PathBuf::from("/proc/self/exe") }
    }

    pub(crate) fn state_dir(&self, id: &str) -> Result<StateDir> {
        validate_id(id)?;
        Ok(StateDir::new(&self.root, id))
    }

    /// Creates the container: everything is set up and the process waits at the start gate.
    pub fn create(&self, id: &str, bundle: &Path, options: CreateOptions) -> Result<ContainerState> {
        let dir = self.state_dir(id)?;
        let opened = OpenedBundle::open(bundle)?;
        let spec = &opened.spec;
        if spec.process().is_none() {
            return Err(invalid(&opened.spec_path, "no process"));
        }
        if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) && options.console_socket.is_none() {
            return Err(invalid(&opened.spec_path, "process.terminal needs a console socket (--console-socket)"));
        }
        let mut cleanup = self.make_state_dir(&dir, id)?;
        // Started first: its exec and start-up (about a millisecond) overlap the state files and the cgroup
        // below. It waits for its bootstrap, sent only once it is in the cgroup.
        let helper = InitHelper::spawn(&self.init_binary)?;
        let mut state = opened.first_state(&dir, id, self.systemd_cgroup)?;
        let cgroup_path = state.cgroup_path.clone();
        let rootfs = opened.rootfs.clone();
        let spec = opened.spec;
        nix::unistd::mkfifo(&dir.exec_fifo(), nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(RuntimeError::sys(format!("mkfifo {}", dir.exec_fifo().display())))?;
        // Writable by anyone (the umask took that away): a container's root in a user namespace is not the
        // host's root, yet must open the gate.
        std::fs::set_permissions(
            dir.exec_fifo(),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o622),
        )
        .map_err(RuntimeError::io("chmod", dir.exec_fifo()))?;

        let layout = Layout::host()?;
        let cgroup = state.cgroup()?;
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        // A scope is made with the helper in it: systemd moves it there before it may run anything.
        let created = cgroup.create(Some(helper.process.id() as i32), resources);
        cleanup.cgroup = Some(cgroup.clone());
        created?;
        if let Some(resources) = resources {
            cgroup.apply(resources)?;
        }
        let config = InitConfig {
            id: id.into(),
            spec: spec.clone(),
            rootfs,
            exec_fifo: Some(dir.exec_fifo()),
            cgroup_path,
            cgroup_layout: layout,
            join_pid: None,
            console_fd: options.console_socket.is_some(),
        };
        let pid = Self::run_init(
            helper,
            config,
            &cgroup,
            options.stdio,
            options.console_socket.as_ref(),
            &spec,
            &mut state,
            &mut cleanup,
        )?;
        state.pid = pid;
        state.pid_start_time = process_start_time(pid).unwrap_or(0);
        state.status = Status::Created;
        dir.save(&state)?;
        if let Some(pid_file) = &options.pid_file {
            write_pid_file(pid_file, pid)?;
        }
        cleanup.disarm();
        Ok(state)
    }

    /// Moves the started init helper into the cgroup, feeds it, and follows it until the container reports
    /// Ready; returns the container process's pid.
    #[allow(clippy::too_many_arguments)]
    fn run_init(
        mut helper: InitHelper,
        config: InitConfig,
        cgroup: &Cgroup,
        stdio: Stdio,
        console: Option<&ConsoleSocket>,
        spec: &Spec,
        state: &mut ContainerState,
        cleanup: &mut Cleanup,
    ) -> Result<i32> {
        let id = config.id.clone();
        let joining = config.join_pid.is_some();
        let helper_pid = helper.process.id() as i32;
        let ours = &helper.channel;
        let result = (|| {
            // Into the cgroup before it clones, so the container process never runs outside it.
            cgroup.add_process(helper_pid)?;
            let mut fds: Vec<RawFd> = match &stdio {
                Stdio::Inherit => vec![0, 1, 2],
                Stdio::Fds(given) => given.iter().map(|f| f.as_raw_fd()).collect(),
            };
            let console_stream = match console {
                Some(ConsoleSocket(path)) => Some(
                    std::os::unix::net::UnixStream::connect(path)
                        .map_err(RuntimeError::io("connect to the console socket", path))?,
                ),
                None => None,
            };
            if let Some(stream) = &console_stream {
                fds.push(stream.as_raw_fd());
            }
            // The start gate travels as a descriptor, as runc hands its init the exec fifo: the container
            // process may be a user namespace's root that cannot search the directories of the state path
            // (a 0700 parent), and must not need to.
            let gate = match &config.exec_fifo {
                Some(path) => Some(
                    nix::fcntl::open(
                        path,
                        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    )
                    .map_err(RuntimeError::sys(format!("open the start gate {}", path.display())))?,
                ),
                None => None,
            };
            if let Some(gate) = &gate {
                fds.push(gate.as_raw_fd());
            }
            ours.send_with_fds(&Message::Bootstrap(Box::new(config)), &fds)?;
            drop(console_stream);
            drop(gate);
            let mut pid = None;
            // The helper reports the pid after its fork returns, while the container process (its child,
            // on the same channel) reports Ready when its setup is done: on a busy machine Ready can come
            // first, so creation is done when both have arrived, in either order.
            let mut ready = false;
            let mut hooks_waiting = false;
            loop {
                match ours.receive()? {
                    Some((Message::MapIds, _)) => {
                        write_id_maps(helper_pid, spec)?;
                        ours.send(&Message::IdsMapped)?;
                    }
                    Some((Message::Pid { pid: child }, _)) => {
                        pid = Some(child);
                        cleanup.pid = Some(child);
                        if std::mem::take(&mut hooks_waiting) {
                            run_create_hooks(spec, state, child, ours)?;
                        }
                        if ready {
                            break;
                        }
                    }
                    Some((Message::RunHooks, _)) => match pid {
                        Some(pid) => run_create_hooks(spec, state, pid, ours)?,
                        // The hooks are given the container's pid: they run when it arrives.
                        None => hooks_waiting = true,
                    },
                    Some((Message::Ready, _)) if !joining => {
                        ready = true;
                        if pid.is_some() {
                            break;
                        }
                    }
                    Some((Message::Error { message }, _)) => {
                        return Err(RuntimeError::Init { id: id.clone(), message });
                    }
                    // exec: the channel closes when the new process's execve succeeds.
                    None if joining => break,
                    None => {
                        return Err(RuntimeError::Init {
                            id: id.clone(),
                            message: "the init process exited without reporting".into(),
                        });
                    }
                    Some((other, _)) => {
                        return Err(RuntimeError::Init {
                            id: id.clone(),
                            message: format!("unexpected message {other:?} from init"),
                        });
                    }
                }
            }
            pid.ok_or_else(|| RuntimeError::Init { id: id.clone(), message: "the init helper reported no pid".into() })
        })();
        // A failure left the helper where it was, perhaps still waiting for its bootstrap: dropping it kills
        // and reaps it.
        let pid = result?;
        // (A helper someone else reaped, ECHILD, did its work: it reported the pid.)
        if let Ok(status) = helper.wait()
            && !status.success()
        {
            return Err(RuntimeError::Init { id, message: format!("the init helper failed ({status})") });
        }
        Ok(pid)
    }

    /// Opens the start gate: the container's process continues to its execve.
    pub fn start(&self, id: &str) -> Result<()> {
        let dir = self.existing(id)?;
        let state = dir.load()?;
        let status = live_status(&dir, &state);
        if status != Status::Created {
            return Err(RuntimeError::WrongState { id: id.into(), status: status.to_string(), action: "start" });
        }
        if dir.restored_marker().exists() {
            self.resume_restored(&dir, &state)?;
            return self.started(&dir, state);
        }
        let fifo = dir.exec_fifo();
        let reader = nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(RuntimeError::sys(format!("open the start gate {}", fifo.display())))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut byte = [0u8; 1];
            match nix::unistd::read(&reader, &mut byte) {
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                    if !is_same_live_process(state.pid, state.pid_start_time) {
                        return Err(RuntimeError::WrongState {
                            id: id.into(),
                            status: "stopped".into(),
                            action: "start",
                        });
                    }
                    if Instant::now() > deadline {
                        return Err(RuntimeError::Init {
                            id: id.into(),
                            message: "the container did not pass the start gate within 30 s".into(),
                        });
                    }
                    let mut poll =
                        [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&reader), nix::poll::PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(10u8));
                }
                Err(errno) => return Err(RuntimeError::sys("read the start gate")(errno)),
            }
        }
        let _ = std::fs::remove_file(&fifo);
        self.started(&dir, state)
    }

    /// Records a started container and runs its poststart hooks.
    fn started(&self, dir: &StateDir, state: ContainerState) -> Result<()> {
        let mut state = state;
        state.status = Status::Running;
        dir.save(&state)?;
        let spec = self.spec_of(dir)?;
        if let Some(poststart) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
            // The container already runs: a failing poststart hook is reported, not undone (runtime.md).
            hooks::run("poststart", &poststart, &state.oci_state(Status::Running))?;
        }
        Ok(())
    }

    /// The recorded state and the live status.
    pub fn state(&self, id: &str) -> Result<(ContainerState, Status)> {
        let dir = self.existing(id)?;
        let state = dir.load()?;
        let status = live_status(&dir, &state);
        Ok((state, status))
    }

    /// The ids of every container under the root.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RuntimeError::Io { step: "list", path: self.root.clone(), source }),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Sends a signal to the container's init, or to every process in its cgroup.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let (state, status) = self.state(id)?;
        if matches!(status, Status::Stopped | Status::Creating) && !all {
            return Err(RuntimeError::WrongState { id: id.into(), status: status.to_string(), action: "kill" });
        }
        if all {
            return state.cgroup()?.signal_all(signal);
        }
        match nix::sys::signal::kill(Pid::from_raw(state.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(errno) => Err(RuntimeError::sys(format!("kill {} with {signal}", state.pid))(errno)),
        }
    }

    /// Removes the container: kills what is left (only with `force` if it runs), removes its cgroup, runs
    /// poststop hooks and removes its state. A missing container is not an error when `force` is set.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = self.state_dir(id)?;
        if !dir.exists() {
            return if force { Ok(()) } else { Err(RuntimeError::NotFound { id: id.into() }) };
        }
        let state = match dir.load() {
            Ok(state) => Some(state),
            // A state file a crash left unreadable must not make the container undeletable.
            Err(_) if force => None,
            Err(err) => return Err(err),
        };
        if let Some(state) = &state {
            let status = live_status(&dir, state);
            if status == Status::Running && !force {
                return Err(RuntimeError::WrongState {
                    id: id.into(),
                    status: status.to_string(),
                    action: "delete without --force",
                });
            }
            if is_same_live_process(state.pid, state.pid_start_time) {
                let _ = nix::sys::signal::kill(Pid::from_raw(state.pid), Signal::SIGKILL);
            }
            state.cgroup()?.delete()?;
            wait_gone(state.pid, state.pid_start_time);
            if let Ok(spec) = self.spec_of(&dir)
                && let Some(poststop) = spec.hooks().as_ref().and_then(|h| h.poststop().clone())
                && let Err(err) = hooks::run("poststop", &poststop, &state.oci_state(Status::Stopped))
            {
                // The container is gone either way; a failing poststop hook is only a warning (runtime.md).
                tracing::warn!(container_id = id, error = %err, "poststop hook failed");
            }
        }
        std::fs::remove_dir_all(&dir.path).map_err(RuntimeError::io("remove the state directory", &dir.path))
    }

    /// Runs an extra process in a running container; returns its pid (a child of the caller).
    pub fn exec(&self, id: &str, process: Process, options: ExecOptions) -> Result<i32> {
        let dir = self.existing(id)?;
        let mut state = dir.load()?;
        let status = live_status(&dir, &state);
        if status != Status::Running && status != Status::Created {
            return Err(RuntimeError::WrongState { id: id.into(), status: status.to_string(), action: "exec" });
        }
        if process.terminal() == Some(true) && options.console_socket.is_none() {
            return Err(invalid(&dir.spec_file(), "a terminal exec needs a console socket"));
        }
        // Started before the spec is read, for the same overlap as in create.
        let helper = InitHelper::spawn(&self.init_binary)?;
        let mut spec = self.spec_of(&dir)?;
        spec.set_process(Some(process));
        let layout = Layout::host()?;
        let cgroup = state.cgroup()?;
        let config = InitConfig {
            id: id.into(),
            spec: spec.clone(),
            rootfs: state.rootfs.clone(),
            exec_fifo: None,
            cgroup_path: state.cgroup_path.clone(),
            cgroup_layout: layout,
            join_pid: Some(state.pid),
            console_fd: options.console_socket.is_some(),
        };
        let mut cleanup = Cleanup { dir: None, cgroup: None, pid: None };
        let pid = Self::run_init(
            helper,
            config,
            &cgroup,
            options.stdio,
            options.console_socket.as_ref(),
            &spec,
            &mut state,
            &mut cleanup,
        )?;
        cleanup.disarm();
        if let Some(pid_file) = &options.pid_file {
            write_pid_file(pid_file, pid)?;
        }
        Ok(pid)
    }

    /// Changes the resources of a created or running container.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let (state, _) = self.state(id)?;
        state.cgroup()?.update(resources)
    }

    pub fn stats(&self, id: &str) -> Result<Stats> {
        let (state, _) = self.state(id)?;
        state.cgroup()?.stats()
    }

    /// The processes in the container's cgroup.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let (state, _) = self.state(id)?;
        state.cgroup()?.pids()
    }

    fn existing(&self, id: &str) -> Result<StateDir> {
        let dir = self.state_dir(id)?;
        if !dir.state_file().exists() {
            return Err(RuntimeError::NotFound { id: id.into() });
        }
        Ok(dir)
    }

    fn spec_of(&self, dir: &StateDir) -> Result<Spec> {
        let path = dir.spec_file();
        Spec::load(&path).map_err(|source| RuntimeError::LoadSpec { path, source })
    }
}

/// A bundle's spec and root filesystem, resolved.
pub(crate) struct OpenedBundle {
    pub(crate) bundle: PathBuf,
    pub(crate) spec_path: PathBuf,
    pub(crate) spec: Spec,
    pub(crate) rootfs: PathBuf,
}

impl OpenedBundle {
    pub(crate) fn open(bundle: &Path) -> Result<OpenedBundle> {
        let bundle = std::fs::canonicalize(bundle).map_err(RuntimeError::io("open bundle", bundle))?;
        let spec_path = bundle.join("config.json");
        let spec =
            Spec::load(&spec_path).map_err(|source| RuntimeError::LoadSpec { path: spec_path.clone(), source })?;
        let root = spec.root().as_ref().ok_or_else(|| invalid(&spec_path, "no root"))?;
        let rootfs = std::fs::canonicalize(bundle.join(root.path()))
            .map_err(RuntimeError::io("open rootfs", bundle.join(root.path())))?;
        Ok(OpenedBundle { bundle, spec_path, spec, rootfs })
    }

    /// The container's state while it is being created, written with its spec into `dir`.
    pub(crate) fn first_state(&self, dir: &StateDir, id: &str, systemd_cgroup: bool) -> Result<ContainerState> {
        let spec = &self.spec;
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let systemd_scope = if systemd_cgroup {
            // runc's default under its systemd driver is `system.slice:runc:<id>`.
            let given = cgroups_path.clone().unwrap_or_else(|| PathBuf::from(format!("system.slice:berth:{id}")));
            Some(Scope::of_cgroups_path(&given).ok_or_else(|| {
                invalid(
                    &self.spec_path,
                    &format!(
                        "linux.cgroupsPath {given:?} is not slice:prefix:name, as the systemd cgroup driver needs"
                    ),
                )
            })?)
        } else {
            None
        };
        let state = ContainerState {
            oci_version: OCI_VERSION.into(),
            id: id.into(),
            status: Status::Creating,
            pid: 0,
            pid_start_time: 0,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
            created: now_rfc3339(),
            cgroup_path: match &systemd_scope {
                Some(scope) => scope.cgroup_path()?,
                None => Cgroup::path_for(cgroups_path.as_deref(), id)?,
            },
            systemd_scope,
        };
        crate::state::write_atomic(&dir.spec_file(), &serde_json::to_vec(spec).expect("spec serializes"))?;
        dir.save(&state)?;
        Ok(state)
    }
}

impl Runtime {
    /// Creates the container's state directory; the returned guard removes it again unless disarmed.
    pub(crate) fn make_state_dir(&self, dir: &StateDir, id: &str) -> Result<Cleanup> {
        std::fs::create_dir_all(&self.root).map_err(RuntimeError::io("create the state root", &self.root))?;
        match std::fs::create_dir(&dir.path) {
            Ok(()) => Ok(Cleanup { dir: Some(dir.clone()), cgroup: None, pid: None }),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(RuntimeError::Exists { id: id.into() }),
            Err(source) => Err(RuntimeError::Io { step: "create the state directory", path: dir.path.clone(), source }),
        }
    }
}

pub(crate) fn invalid(path: &Path, reason: &str) -> RuntimeError {
    RuntimeError::InvalidSpec { path: path.to_owned(), reason: reason.to_owned() }
}

/// The status as it is now: recorded facts checked against the live process.
fn live_status(dir: &StateDir, state: &ContainerState) -> Status {
    if state.pid == 0 {
        return if state.status == Status::Creating { Status::Creating } else { Status::Stopped };
    }
    if !is_same_live_process(state.pid, state.pid_start_time) {
        return Status::Stopped;
    }
    if dir.exec_fifo().exists() || dir.restored_marker().exists() { Status::Created } else { Status::Running }
}

/// Waits (up to 5 s) for a killed process to disappear, reaping it if it is our child.
fn wait_gone(pid: i32, start_time: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid > 0 && Instant::now() < deadline {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if !is_same_live_process(pid, start_time) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The createRuntime and prestart hooks, run while the container waits at their point of its setup.
fn run_create_hooks(spec: &Spec, state: &mut ContainerState, pid: i32, channel: &Channel) -> Result<()> {
    state.pid = pid;
    let hooks_spec = spec.hooks().clone().unwrap_or_default();
    let document = state.oci_state(Status::Creating);
    hooks::run("createRuntime", hooks_spec.create_runtime().as_deref().unwrap_or_default(), &document)?;
    hooks::run("prestart", hooks_spec.prestart().as_deref().unwrap_or_default(), &document)?;
    channel.send(&Message::HooksDone)
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    crate::state::write_atomic(path, pid.to_string().as_bytes())
}

/// Writes uid_map and gid_map of a process that just created a user namespace.
fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let render = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, text) in [("gid_map", render(linux.gid_mappings())), ("uid_map", render(linux.uid_mappings()))] {
        if text.is_empty() {
            continue;
        }
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text).map_err(RuntimeError::io("write", path))?;
    }
    Ok(())
}

/// A started `<init binary> __init`, waiting for its bootstrap on `channel` (its stdin). Until it has been
/// waited for, dropping it kills and reaps it, so no helper outlives a create or exec that failed, wherever
/// it failed (the helper would otherwise wait for its bootstrap forever).
struct InitHelper {
    process: std::process::Child,
    channel: Channel,
    reaped: bool,
}

impl InitHelper {
    fn spawn(binary: &Path) -> Result<InitHelper> {
        let (ours, theirs) = Channel::pair()?;
        let process = Command::new(binary)
            .arg("__init")
            .env_clear()
            .stdin(std::process::Stdio::from(theirs.into_fd()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(RuntimeError::io("start the init helper", binary))?;
        Ok(InitHelper { process, channel: ours, reaped: false })
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.process.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for InitHelper {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// Undoes a half-made container unless disarmed: kills its process, removes its cgroup and state.
pub(crate) struct Cleanup {
    pub(crate) dir: Option<StateDir>,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) pid: Option<i32>,
}

impl Cleanup {
    pub(crate) fn disarm(&mut self) {
        self.dir = None;
        self.cgroup = None;
        self.pid = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cgroup) = &self.cgroup
            && let Err(err) = cgroup.delete()
        {
            tracing::warn!(error = %err, "cannot remove the cgroup of a container that failed to start");
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(&dir.path);
        }
    }
}
