//! What several fuzz targets share: a scratch filesystem of their own, and a census of a directory tree.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Size of the scratch tmpfs: large enough for any layer the fuzzer can make within its input limit to be
/// unpacked in part, small enough that a decompression bomb ends in ENOSPC instead of filling the disk.
const SCRATCH_OPTIONS: &std::ffi::CStr = c"size=64m,mode=0755";

/// A tmpfs at `/run/berth-fuzz/<name>`, in a mount namespace of this process alone: nothing a target
/// writes reaches the host's disks, and the mount goes when the fuzzer exits, however it exits. Needs root
/// (CAP_SYS_ADMIN), as the layer code it exercises does.
pub fn scratch(name: &str) -> PathBuf {
    // SAFETY: NEWNS alone touches no file descriptor table; the targets do all their work on this thread,
    // the one whose mount namespace this is.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNS) for the fuzz scratch filesystem (run as root): {e}"));
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )
    .expect("make / private in the fuzzer's mount namespace");
    let dir = Path::new("/run/berth-fuzz").join(name);
    std::fs::create_dir_all(&dir).expect("create the scratch mount point");
    rustix::mount::mount("berth-fuzz", &dir, "tmpfs", rustix::mount::MountFlags::empty(), SCRATCH_OPTIONS)
        .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
    dir
}

/// What a tree holds, path by path: kind, mode, owner, size, link count and content of regular files.
/// Two censuses compare equal when nothing in the tree was added, removed, changed or linked to.
pub fn census(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    walk(root, root, &mut found);
    found
}

fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let relative = path.strip_prefix(root).unwrap_or(&path).to_owned();
        let content = if meta.is_file() {
            format!("{:?}", std::fs::read(&path).unwrap_or_default())
        } else if meta.file_type().is_symlink() {
            format!("-> {:?}", std::fs::read_link(&path).unwrap_or_default())
        } else {
            String::new()
        };
        found.insert(
            relative,
            format!(
                "mode {:o} uid {} gid {} size {} nlink {} {content}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.size(),
                meta.nlink()
            ),
        );
        if meta.is_dir() {
            walk(root, &path, found);
        }
    }
}

/// Empties `dir` (keeps the directory itself), whatever modes the fuzzer's entries were given.
pub fn empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                std::fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()))
            }
            _ => std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display())),
        }
    }
}
