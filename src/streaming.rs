//! The daemon's side of `berth_streaming`: the backend the streaming server calls.
//!
//! Exec and attach are sessions with the pod's shim (`berth.shim.v1.Shim/Exec` and `/Attach`): the
//! client's stdin and terminal sizes go to the shim as `StreamInput` messages, its output comes back as
//! `StreamOutput`. When the client goes, the streaming server drops the backend's future; that drops the
//! input stream, and the shim kills an exec'd process whose client is gone (an attach merely detaches).
//!
//! Port-forward: each connection is dialed from a short-lived thread that enters the pod's network
//! namespace (a socket keeps the namespace it was made in, so the thread can leave at once; the daemon's
//! runtime threads never change namespace).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_error_kind::ErrorKind;
use berth_streaming::{AttachRequest, Backend, BackendError, ExecRequest, ExitStatus, PortStream, Streams};

use crate::cri::shim as pb;

use crate::records::PodState;

/// How long a dial inside the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tty exec waits for the client's first terminal size, so the process starts with it (a
/// program that asks for its size at once sees the client's, not 0x0). Clients send it first thing.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(500);

pub struct DaemonBackend {
    pub pods: Arc<crate::pods::PodManager>,
    pub containers: Arc<crate::containers::ContainerManager>,
}

/// Connects to `port` on the pod's loopback (IPv4, then IPv6) from inside `netns`, or on the node's when
/// the pod uses the host network (None).
fn dial_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    let connect = move || -> std::io::Result<std::net::TcpStream> {
        if let Some(path) = &netns {
            let file = std::fs::File::open(path)?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        }
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT).or_else(|_| {
            std::net::TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), DIAL_TIMEOUT)
        })
    };
    // A thread of its own: setns() changes only the calling thread, which ends with the dial.
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(connect)?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the dialing thread panicked")))
}

#[async_trait::async_trait]
impl Backend for DaemonBackend {
    async fn exec(&self, request: ExecRequest, mut streams: Streams) -> Result<ExitStatus, BackendError> {
        let mut terminal = None;
        if request.tty {
            let first = match streams.resize.as_mut() {
                Some(sizes) => tokio::time::timeout(FIRST_SIZE_WAIT, sizes.recv()).await.ok().flatten(),
                None => None,
            };
            terminal = Some(first.map(|s| (s.width as u32, s.height as u32)).unwrap_or((0, 0)));
        }
        let flags = (request.stdin, request.stdout, request.stderr && !request.tty);
        let (input, pumps) = client_input(&mut streams);
        let output = self
            .containers
            .exec_session(&request.container_id, request.cmd, terminal, flags, input)
            .await
            .map_err(|e| backend_error(&e))?;
        let code = relay_output(&request.container_id, output, &mut streams).await?;
        drop(pumps);
        match code {
            Some(code) => Ok(ExitStatus { code }),
            None => Err(BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "container {}: the exec session ended without an exit code (the pod's shim went away)",
                    request.container_id
                ),
            )),
        }
    }

    async fn attach(&self, request: AttachRequest, mut streams: Streams) -> Result<(), BackendError> {
        let flags = (request.stdin, request.stdout, request.stderr && !request.tty);
        let (input, pumps) = client_input(&mut streams);
        let output =
            self.containers.attach_session(&request.container_id, flags, input).await.map_err(|e| backend_error(&e))?;
        relay_output(&request.container_id, output, &mut streams).await?;
        drop(pumps);
        Ok(())
    }

    async fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> Result<Box<dyn PortStream>, BackendError> {
        let pod = self
            .pods
            .find(pod_sandbox_id)
            .map_err(|e| BackendError::new(ErrorKind::Internal, format!("pod sandbox {pod_sandbox_id}: {e}")))?
            .ok_or_else(|| {
                BackendError::new(ErrorKind::NotFound, format!("pod sandbox {pod_sandbox_id} does not exist"))
            })?;
        if pod.state != PodState::Ready {
            return Err(BackendError::new(
                ErrorKind::FailedPrecondition,
                format!("pod sandbox {pod_sandbox_id} is not ready"),
            ));
        }
        let netns = pod.netns.clone();
        let stream = tokio::task::spawn_blocking(move || dial_in(netns, port))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Internal, format!("the dial did not finish: {e}")))?
            .map_err(|e| {
                BackendError::new(
                    ErrorKind::Unavailable,
                    format!("pod sandbox {pod_sandbox_id}: cannot connect to port {port} in the pod: {e}"),
                )
                .with_source(e)
            })?;
        stream.set_nonblocking(true).map_err(|e| BackendError::new(ErrorKind::Internal, e.to_string()))?;
        let stream = tokio::net::TcpStream::from_std(stream)
            .map_err(|e| BackendError::new(ErrorKind::Internal, e.to_string()))?;
        Ok(Box::new(stream))
    }
}

fn backend_error(err: &crate::containers::ContainerError) -> BackendError {
    use berth_error_kind::Kinded;
    BackendError::new(err.kind(), berth_error_kind::chain(err))
}

/// Tasks feeding the shim from the client, aborted when the session ends or is dropped, and the input
/// stream's own sender: the stream stays open while this lives, so the shim does not mistake a client
/// without stdin for one that went away.
struct Pumps {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _open: tokio::sync::mpsc::Sender<pb::StreamInput>,
}

impl Drop for Pumps {
    fn drop(&mut self) {
        for pump in &self.tasks {
            pump.abort();
        }
    }
}

/// The input stream of a shim session: the client's stdin (then `close_stdin` at its EOF) and terminal
/// sizes, open as long as the returned [`Pumps`] live.
fn client_input(streams: &mut Streams) -> (tokio_stream::wrappers::ReceiverStream<pb::StreamInput>, Pumps) {
    use pb::stream_input::Kind;
    use tokio::io::AsyncReadExt;
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let mut pumps = Vec::new();
    if let Some(mut stdin) = streams.stdin.take() {
        let sender = sender.clone();
        pumps.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 32 * 1024];
            loop {
                let message = match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => Kind::CloseStdin(pb::Empty {}),
                    Ok(n) => Kind::Stdin(buffer[..n].to_vec()),
                };
                let last = matches!(message, Kind::CloseStdin(_));
                if sender.send(pb::StreamInput { kind: Some(message) }).await.is_err() || last {
                    return;
                }
            }
        }));
    }
    if let Some(mut sizes) = streams.resize.take() {
        let sender = sender.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let size = pb::TerminalSize { width: size.width.into(), height: size.height.into() };
                if sender.send(pb::StreamInput { kind: Some(Kind::Resize(size)) }).await.is_err() {
                    return;
                }
            }
        }));
    }
    (tokio_stream::wrappers::ReceiverStream::new(receiver), Pumps { tasks: pumps, _open: sender })
}

/// Writes the session's output to the client's streams; returns the exit code when the shim sent one.
async fn relay_output(
    container_id: &str,
    mut output: tonic::Streaming<pb::StreamOutput>,
    streams: &mut Streams,
) -> Result<Option<i32>, BackendError> {
    use pb::stream_output::Kind;
    use tokio::io::AsyncWriteExt;
    let mut exit_code = None;
    loop {
        let message = match output.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                return Err(BackendError::new(
                    crate::shim::client::kind_of(status.code()),
                    format!("container {container_id}: {}", status.message()),
                ));
            }
        };
        let (sink, bytes) = match message.kind {
            Some(Kind::Stdout(bytes)) => (streams.stdout.as_mut(), bytes),
            Some(Kind::Stderr(bytes)) => (streams.stderr.as_mut(), bytes),
            Some(Kind::ExitCode(code)) => {
                exit_code = Some(code);
                continue;
            }
            None => continue,
        };
        if let Some(sink) = sink
            && sink.write_all(&bytes).await.is_err()
        {
            // The client is gone; the server drops this session and, with it, the process.
            break;
        }
    }
    for sink in [streams.stdout.as_mut(), streams.stderr.as_mut()].into_iter().flatten() {
        let _ = sink.flush().await;
        let _ = sink.shutdown().await;
    }
    Ok(exit_code)
}
