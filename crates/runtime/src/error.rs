//! Errors of the runtime library. Each names the container, the step, and the path or syscall that failed.

use std::path::PathBuf;

use berth_error_kind::{ErrorKind, Kinded};

/// A failed runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container id {id:?} is invalid: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("container {id} already exists")]
    Exists { id: String },
    #[error("container {id} does not exist")]
    NotFound { id: String },
    #[error("container {id} is {status}, cannot {action}")]
    WrongState { id: String, status: String, action: &'static str },
    #[error("invalid spec {path}: {reason}")]
    InvalidSpec { path: PathBuf, reason: String },
    #[error("cannot load spec {path}")]
    LoadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}")]
    Sys {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("container {id}: {message}")]
    Init { id: String, message: String },
    #[error("{0}")]
    Setup(String),
    #[error("cgroup {path}: {step}")]
    Cgroup {
        path: PathBuf,
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup: {0}")]
    CgroupSetup(String),
    #[error("systemd unit {unit}: {call}: {message}")]
    Systemd { unit: String, call: &'static str, message: String },
    #[error("cgroup {path} does not exist")]
    CgroupMissing { path: PathBuf },
    #[error("{hook} hook {path} {reason}")]
    Hook { hook: &'static str, path: PathBuf, reason: String },
    #[error("cannot {step} container state {path}")]
    State {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the caller has {threads} threads; the runtime only clones from a single-threaded process")]
    NotSingleThreaded { threads: usize },
    #[error("{0} is not supported on this host")]
    Unsupported(String),
}

impl Kinded for RuntimeError {
    fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::InvalidId { .. } | RuntimeError::InvalidSpec { .. } | RuntimeError::LoadSpec { .. } => {
                ErrorKind::InvalidArgument
            }
            RuntimeError::Exists { .. } => ErrorKind::AlreadyExists,
            RuntimeError::NotFound { .. } | RuntimeError::CgroupMissing { .. } => ErrorKind::NotFound,
            RuntimeError::WrongState { .. } => ErrorKind::FailedPrecondition,
            RuntimeError::Unsupported(_) => ErrorKind::FailedPrecondition,
            RuntimeError::Io { source, .. } | RuntimeError::State { source, .. } => ErrorKind::of_io(source),
            _ => ErrorKind::Internal,
        }
    }
}

impl RuntimeError {
    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { step, path, source }
    }

    pub(crate) fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
        let step = step.into();
        move |source| RuntimeError::Sys { step, source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
