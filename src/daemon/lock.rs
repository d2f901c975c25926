//! The state lock: an flock on `<state>/berth.lock`, held for the daemon's lifetime, so two daemons never
//! manage the same pods. The kernel drops it when the process dies, so a crash never leaves it stuck.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the state lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another berth daemon is running with this state directory (it holds the lock {path})")]
    Held { path: PathBuf },
    #[error("cannot take the state lock {path}")]
    Flock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

#[derive(Debug)]
pub struct StateLock {
    _held: Flock<File>,
}

impl StateLock {
    pub fn acquire(path: &Path) -> Result<StateLock, LockError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| LockError::Open { path: path.to_owned(), source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(StateLock { _held: held }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held { path: path.to_owned() }),
            Err((_, source)) => Err(LockError::Flock { path: path.to_owned(), source }),
        }
    }
}
