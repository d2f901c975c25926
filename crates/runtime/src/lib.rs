//! berth's OCI runtime: an OCI runtime spec and a bundle in, a running container out.
//!
//! [`Runtime`] is the API: create, start, state, kill, delete, exec, update, stats, ps. It knows OCI (the
//! runtime-spec and its `state`), never CRI, and is synchronous; async callers use a blocking thread.
//! Container setup runs in `berth __init` ([`init::main`]), a freshly exec'd single-threaded helper, so
//! callers may be multi-threaded. See README.md.

pub mod cgroups;
mod container;
pub mod error;
pub mod hooks;
pub mod init;
pub mod mount_api;
pub mod namespaces;
pub mod pin;
mod restored;
mod seccomp;
pub mod state;
mod sync;

pub use container::{ConsoleSocket, CreateOptions, ExecOptions, Runtime, Stdio};
pub use error::{Result, RuntimeError};
pub use restored::RestoreTarget;
pub use state::{ContainerState, Status};

/// The OCI runtime-spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";
