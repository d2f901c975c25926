//! Idmapped mounts (mount_setattr(2) with `MOUNT_ATTR_IDMAP`): a snapshot seen through a user namespace's
//! id maps, so that files the host's root owns on disk belong to the namespace's root. The one place this
//! crate calls the kernel without a safe wrapper (rustix has `open_tree` and `move_mount`, not
//! `mount_setattr`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// A detached copy of the mount at `source` (open_tree with `OPEN_TREE_CLONE`), idmapped through the user
/// namespace `userns`. It disappears when the returned descriptor is closed, unless attached first.
pub(crate) fn idmapped_clone(source: &Path, userns: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let attr =
        MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    let empty = c"";
    // SAFETY: `tree` is an open mount descriptor for the whole call, `empty` a NUL-terminated string and
    // `attr` a live mount_attr of the size passed; the kernel only reads them during the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount at `target` (an existing directory).
pub(crate) fn attach(tree: BorrowedFd<'_>, target: &Path) -> std::io::Result<()> {
    rustix::mount::move_mount(tree, c"", rustix::fs::CWD, target, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
    Ok(())
}
