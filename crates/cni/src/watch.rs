//! Watching the configuration directory cheaply, so NetworkReady and the network used for new pods follow
//! the directory without a restart.
//!
//! [`ConfigWatcher::poll`] lists the directory and stats the candidate files (one `readdir` plus a `stat` per
//! `.conflist`/`.conf`/`.json`), and parses again only when a name, size or modification time changed. That is
//! cheap enough to call on every Status RPC and every RunPodSandbox, and needs no thread or inotify fd: a
//! CNI daemonset (flannel, Calico) that drops its file in the directory is seen at the next call.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{ConfigError, NetworkConfig, find_network_config};

/// What identifies the directory's state: each candidate's name, size and modification time.
type Fingerprint = Option<Vec<(PathBuf, u64, Option<SystemTime>)>>;

/// The current network configuration of a directory, re-read only when the directory changed.
pub struct ConfigWatcher {
    dir: PathBuf,
    fingerprint: Fingerprint,
    current: Result<NetworkConfig, ConfigError>,
    generation: u64,
}

impl ConfigWatcher {
    pub fn new(dir: &Path) -> ConfigWatcher {
        let fingerprint = fingerprint(dir);
        ConfigWatcher { dir: dir.to_owned(), fingerprint, current: find_network_config(dir), generation: 0 }
    }

    /// The current configuration (or why there is none), re-read if the directory changed since the last call.
    pub fn poll(&mut self) -> &Result<NetworkConfig, ConfigError> {
        let now = fingerprint(&self.dir);
        // An unreadable directory has no fingerprint: always re-read, so the error is current.
        if now.is_none() || now != self.fingerprint {
            self.current = find_network_config(&self.dir);
            self.fingerprint = now;
            self.generation += 1;
        }
        &self.current
    }

    /// Increases each time `poll` re-read the directory (a cheap "did anything change" for callers).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<(PathBuf, u64, Option<SystemTime>)> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| matches!(path.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect();
    files.sort();
    Some(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_appearing_changing_and_going_is_seen_without_a_new_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let mut watcher = ConfigWatcher::new(dir.path());
        assert!(watcher.poll().is_err());
        let generation = watcher.generation();
        assert!(watcher.poll().is_err());
        assert_eq!(watcher.generation(), generation, "an unchanged directory is not parsed again");

        let file = dir.path().join("10-a.conflist");
        std::fs::write(&file, r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#).unwrap();
        assert_eq!(watcher.poll().as_ref().unwrap().name, "a");

        std::fs::write(&file, r#"{"cniVersion":"1.0.0","name":"renamed","plugins":[{"type":"bridge"}]}"#).unwrap();
        assert_eq!(watcher.poll().as_ref().unwrap().name, "renamed");

        std::fs::remove_file(&file).unwrap();
        assert!(watcher.poll().is_err());
    }
}
