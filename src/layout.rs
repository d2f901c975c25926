//! Where berth keeps things on disk, derived from the configured root and state directories.
//!
//! Durable state (the database, image content) lives under `root`; volatile state (the lock, per-pod
//! directories) under `state`. Every path the daemon touches is named here, so an operator reading this file
//! knows what a node's berth directories hold.

use std::path::{Path, PathBuf};

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
}

impl Layout {
    pub fn new(config: &Config) -> Layout {
        Layout {
            root: config.daemon.root.to_path_buf(),
            state: config.daemon.state.to_path_buf(),
            socket: config.daemon.socket.to_path_buf(),
        }
    }

    /// The redb metadata database.
    pub fn database(&self) -> PathBuf {
        self.root.join("berth.redb")
    }

    /// Image content and unpacked layers: the "image filesystem" kubelet asks about in ImageFsInfo.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// A pod sandbox's volatile directory: pinned namespaces, /etc files, /dev/shm, the shim's socket and
    /// bootstrap file, and each container's bundle and exit record (`containers/<id>/`).
    pub fn pod_dir(&self, pod_id: &str) -> PathBuf {
        self.state.join("pods").join(pod_id)
    }

    /// The OCI runtime's state directory (`berth_runtime` state of every container).
    pub fn runtime_state(&self) -> PathBuf {
        self.state.join("runtime")
    }

    /// Held (flock) by the running daemon, so two daemons never share one state directory.
    pub fn lock(&self) -> PathBuf {
        self.state.join("berth.lock")
    }

    /// The directories the daemon creates at start, with their modes: private, except the socket's parent,
    /// which kubelet and crictl must be able to traverse.
    pub fn directories(&self) -> Vec<(&'static str, PathBuf, u32)> {
        let socket_dir = self.socket.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        vec![
            ("daemon.root", self.root.clone(), 0o700),
            ("daemon.root", self.images(), 0o700),
            ("daemon.state", self.state.clone(), 0o711),
            ("daemon.socket", socket_dir, 0o711),
        ]
    }
}
