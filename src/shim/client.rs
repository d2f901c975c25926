//! The daemon's side of the shim API: one connection per pod's shim, opened from its bootstrap file and
//! kept until the pod goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use berth_error_kind::{ErrorKind, Kinded};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Uri};

use super::Bootstrap;
use crate::cri::shim::shim_client::ShimClient;

/// How long connecting to a shim may take: it is local, so anything longer means it is gone or stuck.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("pod {pod}: the shim is not running (no usable {path}): {reason}")]
    Gone { pod: String, path: PathBuf, reason: String },
    #[error("pod {pod}: the shim serves API {found}, this daemon speaks {wanted}")]
    Version { pod: String, found: String, wanted: &'static str },
    #[error("pod {pod}: cannot connect to the shim at {}", .socket.display())]
    Connect {
        pod: String,
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("pod {pod}: shim {call} failed: {}", .status.message())]
    Call { pod: String, call: &'static str, status: tonic::Status },
}

impl Kinded for ShimError {
    fn kind(&self) -> ErrorKind {
        match self {
            ShimError::Gone { .. } | ShimError::Connect { .. } => ErrorKind::Unavailable,
            ShimError::Version { .. } => ErrorKind::FailedPrecondition,
            ShimError::Call { status, .. } => kind_of(status.code()),
        }
    }
}

/// What a status code the shim answered with means for the daemon's caller.
pub fn kind_of(code: tonic::Code) -> ErrorKind {
    match code {
        tonic::Code::NotFound => ErrorKind::NotFound,
        tonic::Code::AlreadyExists => ErrorKind::AlreadyExists,
        tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
        tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        tonic::Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        tonic::Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

impl ShimError {
    /// Whether the shim itself is unreachable (as opposed to refusing one request).
    pub fn is_gone(&self) -> bool {
        match self {
            ShimError::Gone { .. } | ShimError::Connect { .. } => true,
            ShimError::Call { status, .. } => matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
            ShimError::Version { .. } => false,
        }
    }
}

/// A connected shim.
#[derive(Debug, Clone)]
pub struct Shim {
    pub pod_id: String,
    pub bootstrap: Bootstrap,
    pub api: ShimClient<Channel>,
}

impl Shim {
    /// Maps a failed call into a [`ShimError`] naming the pod and the call.
    pub fn failed(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> ShimError + '_ {
        move |status| ShimError::Call { pod: self.pod_id.clone(), call, status }
    }
}

/// Connects to the shim described by `bootstrap`.
pub async fn connect(pod_id: &str, bootstrap: Bootstrap) -> Result<Shim, ShimError> {
    if bootstrap.version != super::API_VERSION {
        return Err(ShimError::Version {
            pod: pod_id.to_owned(),
            found: bootstrap.version,
            wanted: super::API_VERSION,
        });
    }
    let socket = bootstrap.socket.clone();
    let dial = socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://shim.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = dial.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(connect_socket(&path).await?)) }
        }))
        .await
        .map_err(|source| ShimError::Connect { pod: pod_id.to_owned(), socket, source })?;
    Ok(Shim { pod_id: pod_id.to_owned(), bootstrap, api: ShimClient::new(channel) })
}

/// Connects to a socket whose path may be longer than the 107 bytes a socket address holds: through the
/// directory's descriptor (`/proc/self/fd/N/<name>`), which the kernel resolves like the full path.
async fn connect_socket(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsRawFd;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return tokio::net::UnixStream::connect(path).await;
    };
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let stream = tokio::net::UnixStream::connect(short).await;
    drop(dir);
    stream
}

/// The daemon's connections to shims, by pod id.
#[derive(Debug, Default)]
pub struct Shims {
    connected: Mutex<HashMap<String, Shim>>,
}

impl Shims {
    /// The pod's shim, connecting from its bootstrap file on first use.
    pub async fn get(&self, pod_id: &str, pod_dir: &Path) -> Result<Shim, ShimError> {
        if let Some(shim) = self.connected.lock().expect("shims lock").get(pod_id) {
            return Ok(shim.clone());
        }
        let gone = |reason: String| ShimError::Gone { pod: pod_id.to_owned(), path: Bootstrap::path(pod_dir), reason };
        let bootstrap = Bootstrap::load(pod_dir).map_err(|e| gone(e.to_string()))?;
        if !bootstrap.is_alive() {
            return Err(gone(format!("process {} has exited", bootstrap.pid)));
        }
        let shim = connect(pod_id, bootstrap).await?;
        self.connected.lock().expect("shims lock").insert(pod_id.to_owned(), shim.clone());
        Ok(shim)
    }

    /// Forgets the connection (the pod is gone, or the shim died).
    pub fn forget(&self, pod_id: &str) {
        self.connected.lock().expect("shims lock").remove(pod_id);
    }
}
