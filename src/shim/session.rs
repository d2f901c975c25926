//! Exec and Attach sessions: a container's or an exec'd process's stdio streamed to the daemon over one
//! bidirectional call (`StreamInput` in, `StreamOutput` out).
//!
//! An exec session owns its process: output is forwarded with backpressure (the process blocks writing when
//! the client reads slowly, as it would on a terminal), and an input stream that ends before the process
//! has exited means the client is gone, so the process is killed. An attach session only listens in: the
//! container's output goes to its log first and to each attached client through a bounded queue; a client
//! that falls that far behind is detached rather than allowed to hold up the log or the container.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_runtime::{ExecOptions, Stdio};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::fdio::{self, CHUNK, FdReader, FdWriter};
use super::logs::Stream as LogStream;
use super::service::{DRAIN_GRACE, ShimState, dev_null, not_found, pipe, runtime_status, with_console};
use crate::cri::shim as pb;
use pb::stream_input::Kind as Input;
use pb::stream_output::Kind as Output;

/// Output messages queued for one attached client before it counts as gone (at most 32 KiB each).
const ATTACH_QUEUE: usize = 256;
/// Output messages queued for an exec client; beyond this the process waits (backpressure).
const EXEC_QUEUE: usize = 16;

pub type OutputSender = mpsc::Sender<Result<pb::StreamOutput, Status>>;
pub type OutputStream = tokio_stream::wrappers::ReceiverStream<Result<pb::StreamOutput, Status>>;

fn output(kind: Output) -> Result<pb::StreamOutput, Status> {
    Ok(pb::StreamOutput { kind: Some(kind) })
}

fn chunk(stream: LogStream, bytes: &[u8]) -> Output {
    match stream {
        LogStream::Stdout => Output::Stdout(bytes.to_vec()),
        LogStream::Stderr => Output::Stderr(bytes.to_vec()),
    }
}

/// The clients attached to one container's output.
#[derive(Default)]
pub struct Attachers {
    next: AtomicU64,
    clients: Mutex<Vec<Attached>>,
}

struct Attached {
    id: u64,
    stdout: bool,
    stderr: bool,
    sender: OutputSender,
}

impl Attachers {
    fn add(&self, stdout: bool, stderr: bool, sender: OutputSender) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients.lock().expect("attachers lock").push(Attached { id, stdout, stderr, sender });
        id
    }

    fn remove(&self, id: u64) {
        self.clients.lock().expect("attachers lock").retain(|c| c.id != id);
    }

    /// Hands a chunk of the container's output to every client that asked for that stream. A client whose
    /// queue is full is detached (its output stream ends with an error saying why).
    pub fn send(&self, stream: LogStream, bytes: &[u8]) {
        let mut clients = self.clients.lock().expect("attachers lock");
        if clients.is_empty() {
            return;
        }
        clients.retain(|client| {
            let wanted = match stream {
                LogStream::Stdout => client.stdout,
                LogStream::Stderr => client.stderr,
            };
            if !wanted {
                return true;
            }
            match client.sender.try_send(output(chunk(stream, bytes))) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(attach = client.id, "an attached client fell too far behind; detaching it");
                    let sender = client.sender.clone();
                    tokio::spawn(async move {
                        let _ = sender
                            .send(Err(Status::resource_exhausted(
                                "the client read the container's output too slowly and was detached",
                            )))
                            .await;
                    });
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// The container exited and its output is drained: every attach session ends.
    pub fn close_all(&self) {
        self.clients.lock().expect("attachers lock").clear();
    }
}

/// Where clients' input goes in a session.
#[derive(Default)]
struct InputTarget {
    stdin: Option<Arc<FdWriter>>,
    /// The pty master (tty sessions), for resizes.
    terminal: Option<Arc<FdWriter>>,
    /// Runs when the client's stdin ends (an attach to a `stdin_once` container closes the container's
    /// stdin then, as kubelet expects: `kubectl attach -i` to such a container ends with its input).
    on_stdin_end: Option<Box<dyn FnOnce() + Send>>,
}

impl InputTarget {
    fn end_stdin(&mut self) {
        self.stdin = None;
        if let Some(end) = self.on_stdin_end.take() {
            end();
        }
    }
}

/// Applies the client's input until its stream ends; returns then (the client is gone or detached).
/// `close_stdin` drops the session's handle on stdin: for a pipe whose only other holder was this session
/// that is EOF for the process.
async fn feed_input(mut input: Streaming<pb::StreamInput>, mut target: InputTarget) {
    loop {
        let message = match input.message().await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => return,
        };
        match message.kind {
            Some(Input::Stdin(bytes)) => {
                if let Some(stdin) = &target.stdin
                    && stdin.write_all(&bytes).await.is_err()
                {
                    // The process closed its stdin: later input has nowhere to go.
                    target.stdin = None;
                }
            }
            Some(Input::CloseStdin(_)) => target.end_stdin(),
            Some(Input::Resize(size)) => {
                if let Some(terminal) = &target.terminal
                    && let Err(err) = fdio::resize(terminal.fd(), size.width, size.height)
                {
                    tracing::debug!(error = %err, "cannot resize the terminal");
                }
            }
            Some(Input::Exec(_)) | Some(Input::Attach(_)) | None => {}
        }
    }
}

fn writer(fd: OwnedFd) -> Result<Arc<FdWriter>, Status> {
    FdWriter::new(fd).map(Arc::new).map_err(|e| Status::internal(format!("register a stdin descriptor: {e}")))
}

fn duplicate(fd: &OwnedFd) -> Result<OwnedFd, Status> {
    fd.try_clone().map_err(|e| Status::internal(format!("dup the terminal: {e}")))
}

/// Forwards one output stream of an exec'd process to the client, waiting when the client is slow.
async fn forward(fd: OwnedFd, stream: LogStream, wanted: bool, sender: OutputSender) {
    let Ok(reader) = FdReader::new(fd) else { return };
    let mut buffer = vec![0u8; CHUNK];
    while let Some(n) = reader.read(&mut buffer).await {
        // Output nobody asked for is still read, so the process never blocks on it.
        if wanted && sender.send(output(chunk(stream, &buffer[..n]))).await.is_err() {
            return;
        }
    }
}

static CONSOLE_SOCKETS: AtomicU64 = AtomicU64::new(0);

/// Starts an Exec session: the process runs when this returns; the returned stream carries its output and,
/// last, its exit code.
pub async fn exec(state: &Arc<ShimState>, mut input: Streaming<pb::StreamInput>) -> Result<OutputStream, Status> {
    let start = match input.message().await? {
        Some(pb::StreamInput { kind: Some(Input::Exec(start)) }) => start,
        _ => return Err(Status::invalid_argument("an Exec call starts with an `exec` message")),
    };
    let id = start.id.as_str();
    if !state.containers.lock().expect("containers lock").contains_key(id) {
        return Err(not_found(id));
    }
    let process: oci_spec::runtime::Process = serde_json::from_slice(&start.process)
        .map_err(|e| Status::invalid_argument(format!("the exec process is not an OCI process: {e}")))?;
    let tty = process.terminal() == Some(true);
    let mut target = InputTarget::default();
    let mut outputs = Vec::new();
    let (pid, exited) = if tty {
        let name = format!("exec-{}.sock", CONSOLE_SOCKETS.fetch_add(1, Ordering::Relaxed));
        // The pty replaces all three.
        let stdio = Stdio::Fds([dev_null()?, dev_null()?, dev_null()?]);
        let (pid, master) = with_console(&name, |console_socket| {
            let options = ExecOptions { stdio, console_socket: Some(console_socket), pid_file: None };
            state.runtime.exec(id, process, options)
        })?;
        let exited = state.exec_exit(pid);
        let master = match master {
            Ok(master) => master,
            Err(status) => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(status);
            }
        };
        let terminal = writer(duplicate(&master)?)?;
        if start.stdin {
            target.stdin = Some(Arc::clone(&terminal));
        }
        target.terminal = Some(terminal);
        outputs.push((master, LogStream::Stdout, start.stdout));
        (pid, exited)
    } else {
        let (stdin_read, stdin_write) = if start.stdin {
            let (read, write) = pipe()?;
            (read, Some(write))
        } else {
            (dev_null()?, None)
        };
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        let options =
            ExecOptions { stdio: Stdio::Fds([stdin_read, out_write, err_write]), console_socket: None, pid_file: None };
        let pid = state.runtime.exec(id, process, options).map_err(runtime_status)?;
        let exited = state.exec_exit(pid);
        if let Some(write) = stdin_write {
            target.stdin = Some(writer(write)?);
        }
        outputs.push((out_read, LogStream::Stdout, start.stdout));
        outputs.push((err_read, LogStream::Stderr, start.stderr));
        (pid, exited)
    };
    tracing::info!(container_id = %id, pid, tty, "exec started");

    let (sender, receiver) = mpsc::channel(EXEC_QUEUE);
    let container_id = start.id.clone();
    tokio::spawn(async move {
        let forwarders: Vec<_> = outputs
            .into_iter()
            .map(|(fd, stream, wanted)| tokio::spawn(forward(fd, stream, wanted, sender.clone())))
            .collect();
        let mut client = tokio::spawn(feed_input(input, target));
        tokio::select! {
            // An exit already reaped wins over a client that left at the same moment: its pid may be reused
            // by now and must not be signalled. (The reaper runs on this thread, so no reap can slip in
            // between this choice and the kill below.)
            biased;
            code = exited => {
                let code = code.unwrap_or(-1);
                // Output written before the exit reaches the client first; a background child that keeps
                // the pipe open gets a grace period, not the session.
                let _ = tokio::time::timeout(DRAIN_GRACE, async {
                    for forwarder in forwarders {
                        let _ = forwarder.await;
                    }
                })
                .await;
                let _ = sender.send(output(Output::ExitCode(code))).await;
                client.abort();
                tracing::info!(container_id = %container_id, pid, exit_code = code, "exec exited");
            }
            _ = &mut client => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                for forwarder in forwarders {
                    forwarder.abort();
                }
                tracing::info!(container_id = %container_id, pid, "exec client went away; killed the process");
            }
        }
    });
    Ok(OutputStream::new(receiver))
}

/// Starts an Attach session on a running container.
pub async fn attach(state: &Arc<ShimState>, mut input: Streaming<pb::StreamInput>) -> Result<OutputStream, Status> {
    let start = match input.message().await? {
        Some(pb::StreamInput { kind: Some(Input::Attach(start)) }) => start,
        _ => return Err(Status::invalid_argument("an Attach call starts with an `attach` message")),
    };
    let id = start.id.clone();
    let (sender, receiver) = mpsc::channel(ATTACH_QUEUE);
    let (attachers, attach_id, target, stdin_once) = {
        let containers = state.containers.lock().expect("containers lock");
        let container = containers.get(&id).ok_or_else(|| not_found(&id))?;
        if container.state.status == pb::Status::Exited as i32 {
            return Err(Status::failed_precondition(format!("container {id} has exited")));
        }
        let attach_id = container.attachers.add(start.stdout, start.stderr, sender);
        let stdin = if start.stdin { container.stdin.lock().expect("stdin lock").clone() } else { None };
        let target = InputTarget { stdin, terminal: container.terminal.clone(), on_stdin_end: None };
        (Arc::clone(&container.attachers), attach_id, target, container.stdin_once && start.stdin)
    };
    let close_container_stdin = {
        let state = Arc::clone(state);
        let id = id.clone();
        move || {
            if let Some(container) = state.containers.lock().expect("containers lock").get(&id) {
                container.stdin.lock().expect("stdin lock").take();
            }
        }
    };
    let mut target = target;
    if stdin_once {
        target.on_stdin_end = Some(Box::new(close_container_stdin.clone()));
    }
    tracing::info!(container_id = %id, attach = attach_id, "attached");
    tokio::spawn(async move {
        feed_input(input, target).await;
        attachers.remove(attach_id);
        if stdin_once {
            // The first attach with stdin has ended (or its stdin did): the container's stdin closes.
            close_container_stdin();
        }
        tracing::info!(container_id = %id, attach = attach_id, "detached");
    });
    Ok(OutputStream::new(receiver))
}

/// What a container keeps for attach: where its stdin is written (the pipe's write end, or for a tty a
/// duplicate of the pty master when the container was created with stdin) and, for a tty, the pty master
/// for resizes.
pub fn container_input(
    stdin_pipe: Option<OwnedFd>,
    master: Option<&OwnedFd>,
    stdin: bool,
) -> Result<ContainerInput, Status> {
    let terminal = master.map(|m| duplicate(m).and_then(writer)).transpose()?;
    let stdin = match (stdin_pipe, &terminal) {
        (Some(pipe), _) => Some(writer(pipe)?),
        (None, Some(terminal)) if stdin => Some(Arc::clone(terminal)),
        _ => None,
    };
    Ok(ContainerInput { stdin, terminal })
}

pub struct ContainerInput {
    pub stdin: Option<Arc<FdWriter>>,
    pub terminal: Option<Arc<FdWriter>>,
}
