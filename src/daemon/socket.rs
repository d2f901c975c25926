//! The CRI socket: refusing one a live daemon serves, replacing one a crash left behind, refusing a
//! directory others may write to, binding with the configured owner, group and mode, and removing it at exit
//! only if it is still ours. Whoever can connect to the socket can run privileged containers on the node.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};

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
    #[error(
        "the socket's directory {path} (mode {mode:04o}) may be written by every user, who could put their own \
         socket in berth's place; remove the others' write bit (chmod o-w) or choose another daemon.socket"
    )]
    UnsafeDirectory { path: PathBuf, mode: u32 },
    #[error("daemon.socket_{what} {name:?}: no such {what} on this node")]
    UnknownId { what: &'static str, name: String },
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
            SocketError::NotASocket { .. }
            | SocketError::TooLong { .. }
            | SocketError::UnsafeDirectory { .. }
            | SocketError::UnknownId { .. } => ErrorKind::InvalidArgument,
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

/// Who may connect: the socket's owner and group (None: the daemon's) and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: u32,
}

impl Access {
    /// Resolves the configured names (or numeric ids) on this node.
    pub fn resolve(owner: &str, group: &str, mode: u32) -> Result<Access, SocketError> {
        let owner = resolve_id("owner", owner, |name| {
            nix::unistd::User::from_name(name).ok().flatten().map(|user| user.uid.as_raw())
        })?;
        let group = resolve_id("group", group, |name| {
            nix::unistd::Group::from_name(name).ok().flatten().map(|group| group.gid.as_raw())
        })?;
        Ok(Access { owner, group, mode })
    }
}

/// An id as configured: empty is None (the daemon's own), digits are the id, anything else a name to look up.
fn resolve_id(
    what: &'static str,
    name: &str,
    look_up: impl FnOnce(&str) -> Option<u32>,
) -> Result<Option<u32>, SocketError> {
    if name.is_empty() {
        return Ok(None);
    }
    match name.parse::<u32>() {
        Ok(id) => Ok(Some(id)),
        Err(_) => look_up(name).map(Some).ok_or_else(|| SocketError::UnknownId { what, name: name.to_owned() }),
    }
}

/// Refuses a socket directory every user may write to, and an ancestor every user may write to without
/// the sticky bit (which keeps them from renaming what is not theirs, as in /tmp): either lets anyone put
/// their own socket where kubelet connects.
pub fn check_directory(socket: &Path) -> Result<(), SocketError> {
    let Some(dir) = socket.parent() else { return Ok(()) };
    for (depth, ancestor) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(ancestor).map_err(|source| SocketError::Io {
            step: "inspect the directory of",
            path: ancestor.to_owned(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if mode & 0o002 != 0 && (depth == 0 || !sticky) {
            return Err(SocketError::UnsafeDirectory { path: ancestor.to_owned(), mode });
        }
    }
    Ok(())
}

/// Binds `path`, then gives it the owner, group and mode of `access` (a socket nobody else could reach
/// until then: the mode bind gives it has no write bit for others).
pub fn bind(path: &Path, access: Access) -> Result<(tokio::net::UnixListener, SocketFile), SocketError> {
    let io = |step: &'static str| move |source| SocketError::Io { step, path: path.to_owned(), source };
    let listener = tokio::net::UnixListener::bind(path).map_err(io("bind"))?;
    let owned = match (access.owner, access.group) {
        (None, None) => Ok(()),
        (owner, group) => std::os::unix::fs::chown(path, owner, group),
    };
    let inode = owned
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode)))
        .and_then(|()| std::fs::metadata(path))
        .map(|meta| meta.ino())
        .map_err(|source| {
            let _ = std::fs::remove_file(path);
            io("set the owner and mode of")(source)
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
