//! The daemon's side of `berth_streaming`: the backend the streaming server calls. Port-forward is built:
//! each connection is dialed from a short-lived thread that enters the pod's network namespace (a socket
//! keeps the namespace it was made in, so the thread can leave at once; the daemon's runtime threads never
//! change namespace). Exec and attach through the pod's shim come next (issue 7); until then their RPCs
//! answer Unimplemented, so the server never calls them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_error_kind::ErrorKind;
use berth_streaming::{AttachRequest, Backend, BackendError, ExecRequest, ExitStatus, PortStream, Streams};

use crate::records::PodState;

/// How long a dial inside the pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DaemonBackend {
    pub pods: Arc<crate::pods::PodManager>,
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
    async fn exec(&self, request: ExecRequest, _streams: Streams) -> Result<ExitStatus, BackendError> {
        Err(BackendError::new(
            ErrorKind::Unimplemented,
            format!("container {}: exec through the streaming server is not built yet", request.container_id),
        ))
    }

    async fn attach(&self, request: AttachRequest, _streams: Streams) -> Result<(), BackendError> {
        Err(BackendError::new(
            ErrorKind::Unimplemented,
            format!("container {}: attach through the streaming server is not built yet", request.container_id),
        ))
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
