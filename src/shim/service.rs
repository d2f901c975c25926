//! The shim's server: the `berth.shim.v1.Shim` service, the one reaper, stdio and exits.
//!
//! Everything runs on one thread. Runtime calls (`berth_runtime`, synchronous) block that thread for the
//! few milliseconds they take; because the reaper runs on the same thread, a process a runtime call
//! starts and waits for (the init helper) is always reaped by that call, and every container or exec
//! process is registered with the reaper before the reaper can run again.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_error_kind::Kinded;
use berth_runtime::{ConsoleSocket, CreateOptions, ExecOptions, Runtime, Stdio};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::fdio::{FdWriter, read_all};
use super::launch::StartFailure;
use super::logs::{LineWriter, LogFile, Stream as LogStream};
use super::session::{self, Attachers};
use super::{Bootstrap, ExitRecord, write_atomically, write_durably};
use crate::cri::shim as pb;
use crate::cri::shim::shim_server::{Shim, ShimServer};
use crate::records::now_nanos;

/// Output ExecSync keeps per stream; more is read and dropped (CRI's limit is 16 MiB).
const EXEC_OUTPUT_LIMIT: usize = 16 * 1024 * 1024;
/// After a process exits, how long its output may still take to reach EOF (a background child may hold
/// the pipe open forever; it must not hold the answer).
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Options {
    pub pod_id: String,
    pub pod_dir: PathBuf,
    pub runtime_root: PathBuf,
    pub pid_namespace: bool,
    /// The systemd cgroup driver: the shim's and its containers' cgroups are scopes systemd makes.
    pub systemd_cgroup: bool,
}

/// Who waits for a pid the reaper collects.
pub(super) enum Waiter {
    Container(String),
    Exec(oneshot::Sender<i32>),
}

pub(super) struct Container {
    pub(super) state: pb::ContainerState,
    log: Option<Arc<LogFile>>,
    /// The tasks copying stdout/stderr into the log and to attached clients; an exit is recorded after they
    /// drain.
    copiers: Vec<tokio::task::JoinHandle<()>>,
    exited: watch::Sender<bool>,
    /// Where attached clients write the container's stdin; taken (closed) when a `stdin_once` attach ends.
    pub(super) stdin: Mutex<Option<Arc<FdWriter>>>,
    pub(super) stdin_once: bool,
    /// The pty master of a tty container, for attach resizes.
    pub(super) terminal: Option<Arc<FdWriter>>,
    pub(super) attachers: Arc<Attachers>,
}

pub(super) struct ShimState {
    options: Options,
    pub(super) runtime: Runtime,
    holder: i32,
    pub(super) containers: Mutex<HashMap<String, Container>>,
    pub(super) waiters: Mutex<HashMap<i32, Waiter>>,
    subscribers: Mutex<Vec<mpsc::Sender<Result<pb::ContainerState, Status>>>>,
    shutdown: watch::Sender<bool>,
}

#[derive(Clone)]
struct Service(Arc<ShimState>);

/// Serves until Shutdown; `holder` is the pod's PID-namespace holder's pid, 0 without one. Errors before
/// "ready" reach the daemon through stdout.
pub async fn run(options: Options, holder: i32) -> Result<(), StartFailure> {
    // The shim inherits the daemon's environment, so a test arms its crash points as the daemon's.
    crate::failpoints::arm_from_env();
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| format!("cannot watch SIGCHLD: {e}"))?;
    // Unix socket paths are limited to 107 bytes and a pod directory under a long state path can exceed
    // that: the shim works from its pod directory and binds relative names (the daemon connects through
    // /proc/self/fd, see client.rs).
    std::env::set_current_dir(&options.pod_dir)
        .map_err(|e| format!("cannot enter the pod directory {}: {e}", options.pod_dir.display()))?;
    let socket = options.pod_dir.join(super::SOCKET_NAME);
    let _ = std::fs::remove_file(super::SOCKET_NAME);
    let listener = tokio::net::UnixListener::bind(super::SOCKET_NAME)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    let pid = std::process::id() as i32;
    let bootstrap = Bootstrap {
        version: super::API_VERSION.to_owned(),
        pid,
        start_time: berth_runtime::state::process_start_time(pid).unwrap_or(0),
        socket: socket.clone(),
        pid_namespace_holder: holder,
    };
    let bootstrap_path = Bootstrap::path(&options.pod_dir);
    // Not fsynced: the file describes this live process, which a crash of the machine ends too, and a
    // missing or torn file reads as a shim that is gone (as its dead pid does). The two fsyncs were on
    // every RunPodSandbox's path on a node whose state directory is on disk.
    write_atomically(&bootstrap_path, &serde_json::to_vec(&bootstrap).expect("bootstrap serializes"))
        .map_err(|e| StartFailure::io(format!("cannot write {}", bootstrap_path.display()), &e))?;
    let state = Arc::new(ShimState {
        runtime: Runtime { systemd_cgroup: options.systemd_cgroup, ..Runtime::new(&options.runtime_root) },
        options,
        holder,
        containers: Mutex::new(HashMap::new()),
        waiters: Mutex::new(HashMap::new()),
        subscribers: Mutex::new(Vec::new()),
        shutdown: watch::channel(false).0,
    });
    // Tell the daemon, then let go of its pipe: the shim must not hold anything of the daemon's.
    println!("ready");
    super::detach_stdio(&[0, 1]);
    tracing::info!(pod_sandbox_id = %state.options.pod_id, pid, "shim serving");

    let reaper = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                reap(&state);
            }
        })
    };
    let mut stop = state.shutdown.subscribe();
    let mut stopped = state.shutdown.subscribe();
    let server = tonic::transport::Server::builder()
        .add_service(ShimServer::new(Service(Arc::clone(&state))))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    // A graceful stop waits for open connections; a daemon that keeps one open must not keep the shim.
    let result = tokio::select! {
        result = server => result,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => Ok(()),
    };
    reaper.abort();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(Bootstrap::path(&state.options.pod_dir));
    tracing::info!(pod_sandbox_id = %state.options.pod_id, "shim exiting");
    result.map_err(|e| format!("the shim's server failed: {e}").into())
}

/// Collects every child that exited and hands each exit to whoever waits for it. Orphans of the pod's
/// containers (reparented here because the shim is subreaper) are reaped and forgotten.
fn reap(state: &Arc<ShimState>) {
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => status,
        };
        let (pid, code, message) = match status {
            WaitStatus::Exited(pid, code) => (pid.as_raw(), code, String::new()),
            WaitStatus::Signaled(pid, signal, _) => (pid.as_raw(), 128 + signal as i32, format!("killed by {signal}")),
            _ => continue,
        };
        let waiter = state.waiters.lock().expect("waiters lock").remove(&pid);
        match waiter {
            Some(Waiter::Container(id)) => {
                let state = Arc::clone(state);
                tokio::spawn(async move { container_exited(&state, &id, code, message).await });
            }
            Some(Waiter::Exec(sender)) => {
                let _ = sender.send(code);
            }
            None => {}
        }
    }
}

/// Records a container's exit on disk, then tells Wait callers and event subscribers.
async fn container_exited(state: &Arc<ShimState>, id: &str, exit_code: i32, mut message: String) {
    let finished_at = now_nanos();
    let oom_killed = state.runtime.stats(id).map(|s| s.oom_kills > 0).unwrap_or(false);
    if oom_killed {
        message = "the container was killed by the kernel's out-of-memory killer".into();
    }
    let (copiers, attachers) = match state.containers.lock().expect("containers lock").get_mut(id) {
        Some(container) => (std::mem::take(&mut container.copiers), Some(Arc::clone(&container.attachers))),
        None => (Vec::new(), None),
    };
    // The log is complete before the exit is announced (kubelet reads it for termination messages), unless
    // a process that outlived the container still holds the output open.
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        for copier in copiers {
            let _ = copier.await;
        }
    })
    .await;
    if let Some(attachers) = attachers {
        attachers.close_all();
    }
    let record = ExitRecord { exit_code, finished_at_unix_nanos: finished_at, oom_killed, message: message.clone() };
    let path = ExitRecord::path(&state.options.pod_dir, id);
    if let Err(err) = write_durably(&path, &serde_json::to_vec(&record).expect("exit serializes")) {
        tracing::error!(container_id = id, path = %path.display(), error = %err, "cannot record the exit on disk");
    }
    let snapshot = {
        let mut containers = state.containers.lock().expect("containers lock");
        let Some(container) = containers.get_mut(id) else { return };
        container.state.status = pb::Status::Exited as i32;
        container.state.exit_code = exit_code;
        container.state.finished_at = finished_at;
        container.state.oom_killed = oom_killed;
        container.state.message = message;
        container.exited.send_replace(true);
        container.state.clone()
    };
    tracing::info!(container_id = id, exit_code, oom_killed, "container exited");
    publish(state, snapshot);
}

fn publish(state: &ShimState, event: pb::ContainerState) {
    state.subscribers.lock().expect("subscribers lock").retain(|s| s.try_send(Ok(event.clone())).is_ok());
}

pub(super) fn runtime_status(err: berth_runtime::RuntimeError) -> Status {
    Status::new(crate::error::code_of(err.kind()), berth_error_kind::chain(&err))
}

pub(super) fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id} is not known to this pod's shim"))
}

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Status::internal(format!("pipe2: {e}")))
}

/// The stdout and stderr pipes of a container without a terminal: the read ends join `outputs` (copied to
/// the log), the write ends are the container's.
fn output_pipes(outputs: &mut Vec<(OwnedFd, LogStream)>) -> Result<(OwnedFd, OwnedFd), Status> {
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    outputs.push((out_read, LogStream::Stdout));
    outputs.push((err_read, LogStream::Stderr));
    Ok((out_write, err_write))
}

pub(super) fn dev_null() -> Result<OwnedFd, Status> {
    std::fs::File::open("/dev/null").map(OwnedFd::from).map_err(|e| Status::internal(format!("open /dev/null: {e}")))
}

/// Copies one output stream of a container into its log and to the clients attached to it.
fn copy_output(
    fd: OwnedFd,
    stream: LogStream,
    log: Option<Arc<LogFile>>,
    attachers: Arc<Attachers>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = LineWriter::new(stream);
        read_all(fd, |chunk| {
            if let Some(log) = &log {
                writer.feed(chunk, log);
            }
            attachers.send(stream, chunk);
        })
        .await;
        if let Some(log) = &log {
            writer.finish(log);
        }
    })
}

/// Receives the pty master the container's init sends to the console socket.
pub(super) fn receive_console(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, Status> {
    use std::os::fd::FromRawFd;
    let (stream, _) = listener.accept().map_err(|e| Status::internal(format!("accept on the console socket: {e}")))?;
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut buffer = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
    let message = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Status::internal(format!("receive the terminal from the container: {e}")))?;
    for cmsg in message.cmsgs().map_err(|e| Status::internal(format!("read the terminal message: {e}")))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in our table for us; nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(Status::internal("the container sent no terminal"))
}

/// Starts a process whose terminal comes back over a console socket named `name`, relative to the shim's
/// working directory (the pod directory: short enough for a socket path). Returns what `start` made and the
/// pty master it sent; the master's failure is handed back separately so the caller can undo the start.
pub(super) fn with_console<T>(
    name: &str,
    start: impl FnOnce(ConsoleSocket) -> Result<T, berth_runtime::RuntimeError>,
) -> Result<(T, Result<OwnedFd, Status>), Status> {
    let socket_path = PathBuf::from(name);
    let _ = std::fs::remove_file(&socket_path);
    let listener = std::os::unix::net::UnixListener::bind(&socket_path)
        .map_err(|e| Status::internal(format!("bind {}: {e}", socket_path.display())))?;
    let started = start(ConsoleSocket(socket_path.clone()));
    let master = started.as_ref().ok().map(|_| receive_console(&listener));
    let _ = std::fs::remove_file(&socket_path);
    let started = started.map_err(runtime_status)?;
    Ok((started, master.expect("a started process has a console result")))
}

impl ShimState {
    /// The exit code of exec'd process `pid`, once the reaper collects it. Called right after the process
    /// starts, on the reaper's own thread, so the reaper cannot run before the pid is registered.
    pub(super) fn exec_exit(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (sender, exited) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(pid, Waiter::Exec(sender));
        exited
    }
}

impl Service {
    fn snapshot(&self, id: &str) -> Result<pb::ContainerState, Status> {
        self.0.containers.lock().expect("containers lock").get(id).map(|c| c.state.clone()).ok_or_else(|| not_found(id))
    }

    async fn wait_exit(&self, id: &str) -> Result<pb::ContainerState, Status> {
        let mut exited = {
            let containers = self.0.containers.lock().expect("containers lock");
            containers.get(id).ok_or_else(|| not_found(id))?.exited.subscribe()
        };
        let _ = exited.wait_for(|done| *done).await;
        self.snapshot(id)
    }

    fn create_blocking(&self, request: &pb::CreateRequest) -> Result<pb::ContainerState, Status> {
        let id = request.id.as_str();
        if self.0.containers.lock().expect("containers lock").contains_key(id) {
            return Err(Status::already_exists(format!("container {id} already exists in this pod")));
        }
        let dir = self.0.options.pod_dir.join("containers").join(id);
        std::fs::create_dir_all(&dir).map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        let log = if request.log_path.is_empty() {
            None
        } else {
            Some(Arc::new(LogFile::open(std::path::Path::new(&request.log_path)).map_err(|e| {
                Status::internal(format!("container {id}: cannot open the log file {}: {e}", request.log_path))
            })?))
        };
        // A tty container reads its stdin from the pty, so only a pipe-fed one gets a stdin pipe.
        let (stdin_read, stdin_write) = if request.stdin && !request.tty {
            let (read, write) = pipe()?;
            (read, Some(write))
        } else {
            (dev_null()?, None)
        };
        let mut outputs = Vec::new();
        let created = if let Some(restore) = &request.restore {
            if request.tty {
                return Err(Status::invalid_argument(format!(
                    "container {id}: restoring a checkpoint of a container with a terminal is not supported"
                )));
            }
            let (out_write, err_write) = output_pipes(&mut outputs)?;
            let source = crate::checkpoint::restore::RestoreSource {
                criu: restore.criu.clone().into(),
                images_dir: restore.images_dir.clone().into(),
                work_dir: restore.work_dir.clone().into(),
            };
            let stdio = [stdin_read.as_raw_fd(), out_write.as_raw_fd(), err_write.as_raw_fd()];
            // The restored processes hold their own copies of the write ends once CRIU is done.
            let restored = self.0.runtime.create_restored(id, std::path::Path::new(&request.bundle), |target| {
                crate::checkpoint::restore::restore(target, &source, stdio)
            });
            drop((stdin_read, out_write, err_write));
            restored.map_err(|err| Status::new(crate::error::code_of(err.kind()), berth_error_kind::chain(&err)))?
        } else if request.tty {
            let stdio = Stdio::Fds([stdin_read, dev_null()?, dev_null()?]);
            let (created, master) = with_console(&format!("console-{id}.sock"), |console_socket| {
                let options = CreateOptions { stdio, console_socket: Some(console_socket), pid_file: None };
                self.0.runtime.create(id, std::path::Path::new(&request.bundle), options)
            })?;
            outputs.push((master?, LogStream::Stdout));
            created
        } else {
            let (out_write, err_write) = output_pipes(&mut outputs)?;
            let options = CreateOptions {
                stdio: Stdio::Fds([stdin_read, out_write, err_write]),
                console_socket: None,
                pid_file: None,
            };
            self.0.runtime.create(id, std::path::Path::new(&request.bundle), options).map_err(runtime_status)?
        };
        // Registered before the reaper can run again (this thread is the reaper's).
        self.0.waiters.lock().expect("waiters lock").insert(created.pid, Waiter::Container(id.to_owned()));
        // A tty container's only output is its pty master, which attach also writes and resizes.
        let master = if request.tty { outputs.first().map(|(fd, _)| fd) } else { None };
        let input = session::container_input(stdin_write, master, request.stdin)?;
        let attachers = Arc::new(Attachers::default());
        let copiers = outputs
            .into_iter()
            .map(|(fd, stream)| copy_output(fd, stream, log.clone(), Arc::clone(&attachers)))
            .collect();
        let state = pb::ContainerState {
            id: id.to_owned(),
            status: pb::Status::Created as i32,
            pid: created.pid,
            created_at: now_nanos(),
            ..Default::default()
        };
        let (exited, _) = watch::channel(false);
        self.0.containers.lock().expect("containers lock").insert(
            id.to_owned(),
            Container {
                state: state.clone(),
                log,
                copiers,
                exited,
                stdin: Mutex::new(input.stdin),
                stdin_once: request.stdin_once,
                terminal: input.terminal,
                attachers,
            },
        );
        tracing::info!(container_id = id, pid = created.pid, "container created");
        crate::failpoints::crash_point!("shim-create-before-reply");
        Ok(state)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ContainerState, Status>> + Send>>;

#[tonic::async_trait]
impl Shim for Service {
    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse {
            pod_id: self.0.options.pod_id.clone(),
            pid: std::process::id() as i32,
            pid_namespace_holder: self.0.holder,
            version: super::API_VERSION.to_owned(),
        }))
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Result<Response<pb::ContainerState>, Status> {
        self.create_blocking(request.get_ref()).map(Response::new)
    }

    async fn start(&self, request: Request<pb::ContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        let id = &request.get_ref().id;
        self.snapshot(id)?;
        self.0.runtime.start(id).map_err(runtime_status)?;
        let mut containers = self.0.containers.lock().expect("containers lock");
        let container = containers.get_mut(id).ok_or_else(|| not_found(id))?;
        container.state.started_at = now_nanos();
        // The exit may already have been recorded (a container that ends at once).
        if container.state.status == pb::Status::Created as i32 {
            container.state.status = pb::Status::Running as i32;
        }
        tracing::info!(container_id = %id, "container started");
        crate::failpoints::crash_point!("shim-start-before-reply");
        Ok(Response::new(container.state.clone()))
    }

    async fn kill(&self, request: Request<pb::KillRequest>) -> Result<Response<pb::Empty>, Status> {
        let request = request.into_inner();
        let state = self.snapshot(&request.id)?;
        if state.status == pb::Status::Exited as i32 && !request.all {
            return Ok(Response::new(pb::Empty {}));
        }
        let signal = Signal::try_from(request.signal)
            .map_err(|_| Status::invalid_argument(format!("signal {} is not a signal", request.signal)))?;
        match self.0.runtime.kill(&request.id, signal, request.all) {
            Ok(()) => Ok(Response::new(pb::Empty {})),
            // It exited between the check and the signal.
            Err(berth_runtime::RuntimeError::WrongState { .. }) => Ok(Response::new(pb::Empty {})),
            Err(err) => Err(runtime_status(err)),
        }
    }

    async fn wait(&self, request: Request<pb::ContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        self.wait_exit(&request.get_ref().id).await.map(Response::new)
    }

    async fn delete(&self, request: Request<pb::ContainerRequest>) -> Result<Response<pb::Empty>, Status> {
        let id = request.into_inner().id;
        if let Ok(state) = self.snapshot(&id)
            && state.status != pb::Status::Exited as i32
        {
            let _ = self.0.runtime.kill(&id, Signal::SIGKILL, true);
            if tokio::time::timeout(Duration::from_secs(10), self.wait_exit(&id)).await.is_err() {
                return Err(Status::deadline_exceeded(format!("container {id} did not exit within 10 s of SIGKILL")));
            }
        }
        self.0.runtime.delete(&id, true).map_err(runtime_status)?;
        self.0.containers.lock().expect("containers lock").remove(&id);
        let dir = self.0.options.pod_dir.join("containers").join(&id);
        let _ = std::fs::remove_file(ExitRecord::path(&self.0.options.pod_dir, &id));
        let _ = std::fs::remove_dir(&dir);
        tracing::info!(container_id = %id, "container deleted");
        Ok(Response::new(pb::Empty {}))
    }

    async fn state(&self, request: Request<pb::ContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        self.snapshot(&request.get_ref().id).map(Response::new)
    }

    async fn list(&self, _: Request<pb::Empty>) -> Result<Response<pb::ListResponse>, Status> {
        let containers = self.0.containers.lock().expect("containers lock").values().map(|c| c.state.clone()).collect();
        Ok(Response::new(pb::ListResponse { containers }))
    }

    async fn exec_sync(&self, request: Request<pb::ExecSyncRequest>) -> Result<Response<pb::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let process: oci_spec::runtime::Process = serde_json::from_slice(&request.process)
            .map_err(|e| Status::invalid_argument(format!("the exec process is not an OCI process: {e}")))?;
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let options = ExecOptions {
            stdio: Stdio::Fds([dev_null()?, out_write, err_write]),
            console_socket: None,
            pid_file: None,
        };
        let pid = self.0.runtime.exec(&request.id, process, options).map_err(runtime_status)?;
        crate::failpoints::crash_point!("shim-exec-after-spawn");
        let exited = self.0.exec_exit(pid);
        let collect = |fd: OwnedFd| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&buffer);
            let task = tokio::spawn(read_all(fd, move |chunk| {
                let mut kept = sink.lock().expect("exec output lock");
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }));
            (task, buffer)
        };
        let (out_task, stdout) = collect(out_read);
        let (err_task, stderr) = collect(err_read);
        let exited = async { exited.await.unwrap_or(-1) };
        // None: the timeout passed first; the process is killed and what it wrote so far is returned.
        let exit_code = match request.timeout_millis {
            0 => Some(exited.await),
            millis => tokio::time::timeout(Duration::from_millis(millis as u64), exited).await.ok(),
        };
        if exit_code.is_some() {
            let drain = async {
                let _ = out_task.await;
                let _ = err_task.await;
            };
            let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
        } else {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            tracing::info!(container_id = %request.id, pid, "exec timed out; killed it");
        }
        Ok(Response::new(pb::ExecSyncResponse {
            stdout: std::mem::take(&mut *stdout.lock().expect("exec output lock")),
            stderr: std::mem::take(&mut *stderr.lock().expect("exec output lock")),
            exit_code: exit_code.unwrap_or(-1),
            timed_out: exit_code.is_none(),
        }))
    }

    type ExecStream = session::OutputStream;

    async fn exec(
        &self,
        request: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        session::exec(&self.0, request.into_inner()).await.map(Response::new)
    }

    type AttachStream = session::OutputStream;

    async fn attach(
        &self,
        request: Request<tonic::Streaming<pb::StreamInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        session::attach(&self.0, request.into_inner()).await.map(Response::new)
    }

    async fn reopen_log(&self, request: Request<pb::ContainerRequest>) -> Result<Response<pb::Empty>, Status> {
        let id = &request.get_ref().id;
        let log = self.0.containers.lock().expect("containers lock").get(id).ok_or_else(|| not_found(id))?.log.clone();
        if let Some(log) = log {
            log.reopen().map_err(|e| {
                Status::internal(format!("container {id}: cannot reopen the log file {}: {e}", log.path().display()))
            })?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn update(&self, request: Request<pb::UpdateRequest>) -> Result<Response<pb::Empty>, Status> {
        let request = request.into_inner();
        self.snapshot(&request.id)?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&request.resources)
            .map_err(|e| Status::invalid_argument(format!("the resources are not OCI linux.resources: {e}")))?;
        self.0.runtime.update(&request.id, &resources).map_err(runtime_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    type EventsStream = EventStream;

    async fn events(&self, _: Request<pb::Empty>) -> Result<Response<Self::EventsStream>, Status> {
        let (sender, receiver) = mpsc::channel(1024);
        self.0.subscribers.lock().expect("subscribers lock").push(sender);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn shutdown(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        let ids: Vec<String> = self.0.containers.lock().expect("containers lock").keys().cloned().collect();
        for id in ids {
            if let Err(status) = self.delete(Request::new(pb::ContainerRequest { id: id.clone() })).await {
                tracing::warn!(container_id = %id, error = %status.message(), "cannot delete a container at shutdown");
            }
        }
        if self.0.holder > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.0.holder), Signal::SIGKILL);
        }
        tracing::info!(pod_sandbox_id = %self.0.options.pod_id, "shutting down");
        self.0.subscribers.lock().expect("subscribers lock").clear();
        self.0.shutdown.send_replace(true);
        Ok(Response::new(pb::Empty {}))
    }
}
