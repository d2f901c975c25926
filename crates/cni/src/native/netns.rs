//! Running code inside a network namespace: on a thread of its own that joins the namespace and ends with
//! the work, so no thread of the caller (the daemon's blocking pool) ever carries a pod's namespace after.

use std::os::fd::AsFd;
use std::path::Path;

/// Why the work could not run in the namespace.
#[derive(Debug)]
pub enum Unusable {
    /// The path does not exist (a DEL after the namespace went is not an error for the plugins).
    Missing(String),
    Other(String),
}

impl std::error::Error for Unusable {}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Missing(msg) | Unusable::Other(msg) => f.write_str(msg),
        }
    }
}

/// `nsfs`, and `proc` for a `/proc/<pid>/ns/net` path (the plugins' `ns.GetNS` accepts both).
const NSFS_MAGIC: u64 = 0x6e73_6673;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// Runs `work` on a new thread that joined the network namespace at `path`.
pub fn within<T: Send>(path: &str, work: impl FnOnce() -> T + Send) -> Result<T, Unusable> {
    let file = match std::fs::File::open(Path::new(path)) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unusable::Missing(format!("failed to open netns {path:?}: {err}")));
        }
        Err(err) => return Err(Unusable::Other(format!("failed to open netns {path:?}: {err}"))),
    };
    let magic = rustix::fs::fstatfs(file.as_fd())
        .map_err(|errno| Unusable::Other(format!("failed to Statfs {path:?}: {errno}")))?
        .f_type as u64;
    if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
        return Err(Unusable::Other(format!("unknown FS magic on {path:?}: {magic:x}")));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|errno| Unusable::Other(format!("failed to enter netns {path:?}: {errno}")))?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
