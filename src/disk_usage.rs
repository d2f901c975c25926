//! Disk usage of a directory tree, as ImageFsInfo reports it: bytes actually allocated and inodes used.
//!
//! Hard links are counted once, and the walk stays on the directory's own filesystem, so mounts below it
//! (a container's overlay rootfs, say) are not counted twice. This is a full walk; the image store keeps
//! the tree small (one file per blob and per unpacked entry), and the images work may replace it with
//! counters kept as content is added and removed.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Measures `dir`. A missing directory uses nothing.
pub fn measure(dir: &Path) -> std::io::Result<DiskUsage> {
    let top = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(DiskUsage::default()),
        Err(err) => return Err(err),
    };
    let mut usage = DiskUsage::default();
    let mut seen = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    count(&top, &mut usage, &mut seen);
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            // Content removed while we walk is simply not counted.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            if meta.dev() != top.dev() {
                continue;
            }
            count(&meta, &mut usage, &mut seen);
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(usage)
}

fn count(meta: &std::fs::Metadata, usage: &mut DiskUsage, seen: &mut HashSet<u64>) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    usage.inodes += 1;
    // st_blocks is in 512-byte units whatever the filesystem's block size (stat(2)).
    usage.bytes += meta.blocks() * 512;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocated_bytes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let empty = measure(dir.path()).unwrap();
        assert_eq!(empty.inodes, 1);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/blob"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("sub/blob"), dir.path().join("link")).unwrap();
        let usage = measure(dir.path()).unwrap();
        assert_eq!(usage.inodes, 3);
        assert!(usage.bytes >= empty.bytes + (1 << 20), "{usage:?}");
        assert!(usage.bytes < empty.bytes + (2 << 20), "hard link counted twice: {usage:?}");
        assert_eq!(measure(&dir.path().join("absent")).unwrap(), DiskUsage::default());
    }
}
