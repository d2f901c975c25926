//! The server's own errors (the backend's are `BackendError`).

use berth_error_kind::{ErrorKind, Kinded};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming TLS: {}: {reason}", .path.display())]
    Tls { path: std::path::PathBuf, reason: String },
}

impl Kinded for ServerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServerError::Bind { source, .. } => ErrorKind::of_io(source),
            ServerError::Tls { .. } => ErrorKind::InvalidArgument,
        }
    }
}
