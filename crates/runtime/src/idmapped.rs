//! Idmapped mounts (open_tree(2) + mount_setattr(2) with `MOUNT_ATTR_IDMAP` + move_mount(2)): a copy of a
//! mount seen through a user namespace's id maps, so files the host's root owns on disk belong to the
//! namespace's root. Used for a pod's image layers (`berth_image::rootfs`) and for `idmap`/`ridmap` spec
//! mounts (`init::idmap`). Raw syscalls: nix wraps none of the three.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// A detached copy of the mount at `source` (with the mounts below it when `recursive`), idmapped through
/// the user namespace `userns`. It disappears when the returned descriptor is closed, unless attached first.
pub fn idmapped_clone(source: &Path, userns: BorrowedFd<'_>, recursive: bool) -> std::io::Result<OwnedFd> {
    let path = c_path(source)?;
    let recursive_flag = if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: `path` is a NUL-terminated string alive for the call; open_tree only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive_flag,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree just returned this new descriptor; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr =
        MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `tree` is open for the call, the empty path is a NUL-terminated static string and `attr` a
    // live mount_attr of the size passed; the kernel only reads them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches a detached mount at `target` (an existing directory or file).
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> std::io::Result<()> {
    let path = c_path(target)?;
    // SAFETY: `tree` is open for the call and both paths are NUL-terminated strings alive for it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
