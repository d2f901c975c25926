//! Container checkpoints (CRI CheckpointContainer) through CRIU, and the archive they are kept in.
//!
//! The container manager decides what to checkpoint (`containers/checkpoint.rs`); this module knows CRIU
//! ([`criu`]) and the archive's layout ([`archive`]), which is CRI-O's and Podman's.

pub mod archive;
pub mod criu;
pub mod restore;

use std::path::PathBuf;

use berth_error_kind::{ErrorKind, Kinded};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "CRIU ({program:?}) is not installed: checkpoints need CRIU 4.1 or later (hack/criu.sh builds one; [checkpoint] criu names it)"
    )]
    CriuMissing { program: String },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("criu {action} failed ({status}); its log {log} says: {detail}")]
    Criu { action: &'static str, status: String, log: PathBuf, detail: String },
    #[error("criu {action} did not finish within {seconds} s and was stopped")]
    Timeout { action: &'static str, seconds: u64 },
    #[error("cannot {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint archive {path}: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] berth_runtime::RuntimeError),
}

impl Kinded for CheckpointError {
    fn kind(&self) -> ErrorKind {
        match self {
            CheckpointError::CriuMissing { .. } => ErrorKind::FailedPrecondition,
            CheckpointError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            CheckpointError::InvalidArchive { .. } => ErrorKind::InvalidArgument,
            CheckpointError::Io { source, .. } => match ErrorKind::of_io(source) {
                ErrorKind::ResourceExhausted => ErrorKind::ResourceExhausted,
                _ => ErrorKind::Internal,
            },
            CheckpointError::Spawn { .. } | CheckpointError::Criu { .. } => ErrorKind::Internal,
            CheckpointError::Runtime(err) => err.kind(),
        }
    }
}
