//! The result cache: what berth attached, kept on disk until a DEL succeeds.
//!
//! One file per attachment, `<cache_dir>/<container id>/<network>-<ifname>.json`. It holds the network
//! configuration exactly as ADD used it (after pod-CIDR substitution), the `CNI_ARGS` and `runtimeConfig`
//! given, and the result. DEL reads everything from here, so it works after a daemon restart, after the netns
//! is gone and after the configuration directory changed or lost the network altogether (libcni's cache has
//! the same purpose; this format is berth's own).
//!
//! Intent before side effect: the entry is written *before* the first plugin runs, with no result, and
//! completed after the chain succeeds. A daemon that dies in the middle of an ADD therefore still finds the
//! configuration to DEL with. Files are replaced by rename, so a daemon crash leaves the old entry or the new
//! one, never half of one.
//!
//! Not fsynced, on purpose: what an entry describes (veths, iptables rules, the netns) is ended by the only
//! event that loses unsynced data, a machine crash; the page cache outlives a daemon crash. The one thing that
//! survives a reboot, a host-local lease file, is written by the plugin without fsync too. An fsync pair
//! (file, then directory) costs ~10 ms on the project's VM disk, twice per ADD: more than all of berth's
//! other overhead. An entry a power loss left empty reads as corrupt, and DEL falls back to the current
//! configuration (see `network.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Marks the format, so a future change can be recognised.
pub const CACHE_FORMAT: &str = "berth-cni-cache/v1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    pub format: String,
    pub container_id: String,
    pub network: String,
    pub ifname: String,
    /// The network configuration list as ADD ran it.
    pub config: Value,
    /// The `CNI_ARGS` string ADD passed.
    pub cni_args: String,
    /// Every capability value the runtime offered (filtered per plugin at each call).
    pub runtime_config: Value,
    /// The chain's result; `None` while the ADD is in flight or when it failed.
    pub result: Option<Value>,
}

pub(crate) fn container_dir(cache_dir: &Path, container_id: &str) -> PathBuf {
    cache_dir.join(container_id)
}

pub(crate) fn entry_path(cache_dir: &Path, container_id: &str, network: &str, ifname: &str) -> PathBuf {
    container_dir(cache_dir, container_id).join(format!("{network}-{ifname}.json"))
}

/// Writes `entry` atomically (temp file, rename); not fsynced (see the module header).
pub(crate) fn write(path: &Path, entry: &CachedAttachment) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    let temp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&temp).and_then(|mut file| file.write_all(&bytes));
    let result = written.and_then(|()| std::fs::rename(&temp, path));
    if result.is_err() {
        // A full disk must not leave a half-written entry behind, nor the directory made for it (it
        // stays if another network or interface of the container is cached in it).
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_dir(dir);
    }
    result
}

pub(crate) enum ReadError {
    Io(std::io::Error),
    Corrupt(serde_json::Error),
}

/// An entry as read: the attachment, or why its file cannot be used.
pub(crate) type ReadEntry = (PathBuf, Result<CachedAttachment, ReadError>);

/// Every entry cached for `container_id` with interface `ifname`, whatever the network (the network may have
/// been renamed or removed since ADD). A corrupt file is returned as such, so the caller decides; only a
/// directory that cannot be listed fails the whole read.
pub(crate) fn read_container(
    cache_dir: &Path,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<ReadEntry>, (PathBuf, ReadError)> {
    let dir = container_dir(cache_dir, container_id);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err((dir, ReadError::Io(err))),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| (dir.clone(), ReadError::Io(err)))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let read = std::fs::read(&path)
            .map_err(ReadError::Io)
            .and_then(|bytes| serde_json::from_slice::<CachedAttachment>(&bytes).map_err(ReadError::Corrupt));
        match read {
            Ok(cached) if cached.ifname != ifname => {}
            // A corrupt file's interface is unknown: its name says `<network>-<ifname>.json`.
            Err(_)
                if !path.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with(&format!("-{ifname}"))) => {}
            read => found.push((path, read)),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Removes an entry, and the container's directory when it was the last one.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    if let Some(dir) = path.parent() {
        // Leftover temp files of a crashed write go with the directory.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // ENOTEMPTY: another interface or network of the same container is still cached.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Container ids that have cache entries: what a daemon restarting after a crash may still have to DEL.
pub fn cached_container_ids(cache_dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir()
            && let Some(name) = entry.file_name().to_str()
        {
            ids.push(name.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}
