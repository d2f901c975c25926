//! The CRI socket: refusing one a live daemon serves, replacing one a crash left behind, binding with the
//! right mode, and removing it at exit only if it is still ours.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};

/// The socket's mode: kubelet runs as root; a group may be given access by the operator.
pub const SOCKET_MODE: u32 = 0o660;

/// The longest path a unix socket address can hold (sun_path is 108 bytes with the trailing NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path} is in use by a running daemon; stop it first or configure another daemon.socket")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket path {path} is {length} bytes long; unix sockets allow at most {MAX_SOCKET_PATH}")]
    TooLong { path: PathBuf, length: usize },
    #[error("cannot {step} socket {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Kinded for SocketError {
    fn kind(&self) -> ErrorKind {
        match self {
            SocketError::InUse { .. } => ErrorKind::Unavailable,
            SocketError::NotASocket { .. } | SocketError::TooLong { .. } => ErrorKind::InvalidArgument,
            SocketError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

/// Fails if a daemon answers on `path`; removes a stale socket nobody listens on.
pub fn check_not_served(path: &Path) -> Result<(), SocketError> {
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong { path: path.to_owned(), length });
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(SocketError::Io { step: "inspect", path: path.to_owned(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket { path: path.to_owned() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse { path: path.to_owned() }),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing the stale socket a previous daemon left");
            std::fs::remove_file(path).map_err(|source| SocketError::Io {
                step: "remove stale",
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(SocketError::Io { step: "probe", path: path.to_owned(), source }),
    }
}

/// The socket file a daemon created, identified by inode so it removes only its own.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

/// Binds `path` with [`SOCKET_MODE`].
pub fn bind(path: &Path) -> Result<(tokio::net::UnixListener, SocketFile), SocketError> {
    let io = |step: &'static str| move |source| SocketError::Io { step, path: path.to_owned(), source };
    let listener = tokio::net::UnixListener::bind(path).map_err(io("bind"))?;
    let set_mode = std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE));
    let inode = set_mode.and_then(|()| std::fs::metadata(path)).map(|meta| meta.ino()).map_err(|source| {
        let _ = std::fs::remove_file(path);
        io("set the mode of")(source)
    })?;
    Ok((listener, SocketFile { path: path.to_owned(), inode }))
}

impl SocketFile {
    /// Removes the socket file if it is still the one we bound (another daemon may have replaced it).
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.ino() == self.inode => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot remove the socket");
                }
            }
            _ => {}
        }
    }
}
