//! The one place where berth's errors become gRPC statuses.
//!
//! Handlers return [`RpcError`]; [`into_status`] logs each failure once (inside the RPC's span, so the log
//! line carries the method and object ids) and chooses the code from the error's [`ErrorKind`], never from
//! its text. kubelet acts on `NotFound` and on the reason words that open pull failures, so both must be
//! exact; everything else is for the operator reading the message.

use berth_error_kind::{ErrorKind, Kinded};
use tonic::{Code, Status};

/// A failed RPC, whatever the layer it failed in.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    #[error(transparent)]
    Pod(#[from] crate::pods::PodError),
    #[error(transparent)]
    Container(#[from] crate::containers::ContainerError),
    #[error("cannot measure disk usage of {path}")]
    DiskUsage {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot pull image {reference}", .source.reason())]
    Pull {
        reference: String,
        // Boxed: a pull error is large and every handler's Result carries RpcError.
        #[source]
        source: Box<berth_image::PullError>,
    },
    #[error(
        "DeadlineExceeded: pull of image {reference} cancelled after {seconds:.1} s: the request's deadline expired"
    )]
    PullDeadline { reference: String, seconds: f64 },
    #[error(transparent)]
    Image(#[from] berth_image::ImageError),
    #[error("{task} did not finish: its worker thread failed")]
    WorkerFailed {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Kinded for RpcError {
    fn kind(&self) -> ErrorKind {
        match self {
            RpcError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            RpcError::Store(err) => err.kind(),
            RpcError::Pod(err) => err.kind(),
            RpcError::Container(err) => err.kind(),
            RpcError::DiskUsage { source, .. } => ErrorKind::of_io(source),
            RpcError::WorkerFailed { .. } => ErrorKind::Internal,
            RpcError::Pull { source, .. } => source.kind(),
            RpcError::PullDeadline { .. } => ErrorKind::DeadlineExceeded,
            RpcError::Image(err) => err.kind(),
        }
    }
}

/// The kind of the error a pod or container step failed with: the crate errors say their own, an I/O error on
/// berth's own files is ResourceExhausted when the disk is full, anything else is Internal.
pub fn kind_of_step(source: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(err) = source.downcast_ref::<berth_cni::CniError>() {
        err.kind()
    } else if let Some(err) = source.downcast_ref::<berth_runtime::RuntimeError>() {
        err.kind()
    } else if let Some(err) = source.downcast_ref::<berth_image::RootfsError>() {
        err.kind()
    } else if let Some(err) = source.downcast_ref::<berth_image::ImageError>() {
        err.kind()
    } else if let Some(err) = source.downcast_ref::<crate::shim::launch::LaunchError>() {
        err.kind()
    } else if let Some(err) = source.downcast_ref::<std::io::Error>() {
        ErrorKind::of_own_io(err)
    } else {
        ErrorKind::Internal
    }
}

/// The gRPC code for a kind.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unimplemented => Code::Unimplemented,
        ErrorKind::Internal => Code::Internal,
    }
}

pub use berth_error_kind::chain;

/// Converts a handler's error into the status the client sees, logging it once.
pub fn into_status(err: RpcError) -> Status {
    let code = code_of(err.kind());
    let message = chain(&err);
    match code {
        // Expected answers (an object that is gone, a request we refuse) are not the operator's problem.
        Code::NotFound | Code::AlreadyExists | Code::InvalidArgument | Code::Unimplemented => {
            tracing::debug!(code = ?code, error = %message, "rpc failed")
        }
        _ => tracing::warn!(code = ?code, error = %message, "rpc failed"),
    }
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_decides_the_code_and_the_message_carries_the_chain() {
        let status = into_status(RpcError::InvalidArgument { field: "location", reason: "empty".into() });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid location: empty");

        let status = into_status(RpcError::DiskUsage {
            path: "/var/lib/berth/images".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "cannot measure disk usage of /var/lib/berth/images: permission denied");
    }
}
