//! What the streaming server asks of its embedder: run an exec, attach to a container, dial a port in a pod.
//! The server knows protocols; the [`Backend`] knows containers.

use berth_error_kind::{ErrorKind, Kinded};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Run a command in a container (CRI `ExecRequest`, validated by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Attach to a running container's stdio (CRI `AttachRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Forward ports of a pod sandbox (CRI `PortForwardRequest`); the ports come from the client's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
}

/// What a streaming URL is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Request {
    pub(crate) fn path(&self) -> &'static str {
        match self {
            Request::Exec(_) => "exec",
            Request::Attach(_) => "attach",
            Request::PortForward(_) => "portforward",
        }
    }

    /// The key the concurrent-session limit counts by.
    pub(crate) fn session_key(&self) -> String {
        match self {
            Request::Exec(r) => format!("container {}", r.container_id),
            Request::Attach(r) => format!("container {}", r.container_id),
            Request::PortForward(r) => format!("pod sandbox {}", r.pod_sandbox_id),
        }
    }
}

/// A terminal size, as the client's resize stream sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's streams, as asked for in the request. A stream that was not asked for is `None`.
/// stdin reaches EOF when the client closes it; writes to stdout/stderr fail once the client is gone.
pub struct Streams {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal sizes, for a tty session: the client's initial size and every change.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
}

/// A bidirectional byte stream to a port in a pod.
pub trait PortStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PortStream for T {}

/// Runs what the clients ask for. The server drops a call's future when its client goes away (or the
/// session idles out), so an implementation must stop its work on drop (e.g. kill the exec'd process).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `request.cmd` with `streams` as its stdio; returns when it has exited and its output is written.
    async fn exec(&self, request: ExecRequest, streams: Streams) -> Result<ExitStatus, BackendError>;
    /// Connects `streams` to the container's stdio until the container exits or the client detaches.
    async fn attach(&self, request: AttachRequest, streams: Streams) -> Result<(), BackendError>;
    /// Dials `port` inside the pod sandbox's network namespace.
    async fn port_forward(&self, pod_sandbox_id: &str, port: u16) -> Result<Box<dyn PortStream>, BackendError>;
}

/// A backend's failure; its message is what the client is shown on the error stream.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BackendError {
        BackendError { kind, message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        self.source = Some(Box::new(source));
        self
    }
}

impl Kinded for BackendError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}
