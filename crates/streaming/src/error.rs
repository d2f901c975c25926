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
}

impl Kinded for ServerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServerError::Bind { source, .. } => ErrorKind::of_io(source),
        }
    }
}
