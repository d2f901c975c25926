//! The kernel's mount API where the classic mount(2) cannot do the job: open_tree(2), mount_setattr(2) and
//! move_mount(2), raw syscalls since nix wraps none of them.
//! - Idmapped mounts (`MOUNT_ATTR_IDMAP`): a copy of a mount seen through a user namespace's id maps, so
//!   files the host's root owns on disk belong to the namespace's root. Used for a pod's image layers
//!   (`berth_image::rootfs`) and for `idmap`/`ridmap` spec mounts (`init::idmap`).
//! - Recursive read-only (`rro`, `init::rootfs`): a remount only changes the top mount.

use std::ffi::CStr;
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

const MOUNT_ATTR_RDONLY: u64 = 0x1;
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
    mount_setattr(tree.as_raw_fd(), c"", flags, &attr)?;
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

/// Makes the mount at `path` and every mount below it read-only.
pub fn set_read_only_recursively(path: &Path) -> std::io::Result<()> {
    let path = c_path(path)?;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    mount_setattr(libc::AT_FDCWD, &path, libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW, &attr)
}

fn mount_setattr(dirfd: libc::c_int, path: &CStr, flags: libc::c_int, attr: &MountAttr) -> std::io::Result<()> {
    // SAFETY: `path` is a NUL-terminated string and `attr` a live mount_attr of the size passed; the kernel
    // only reads both during the call (`dirfd` is the caller's open descriptor or AT_FDCWD).
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Whether this kernel has mount_setattr(2) (Linux 5.12+), which recursive read-only mounts (`rro`) and
/// idmapped mounts need. Asked once with an invalid descriptor: a kernel without the call answers ENOSYS
/// (or EPERM from a seccomp filter that denies unknown calls), one with it rejects the descriptor (EBADF).
pub fn mount_setattr_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
        match mount_setattr(-1, c"", libc::AT_EMPTY_PATH, &attr) {
            Ok(()) => true,
            Err(err) => !matches!(err.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_setattr_is_found_on_kernels_that_have_it() {
        // mount_setattr is Linux 5.12; the kernel release tells what the probe must answer.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
        let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        assert_eq!(super::mount_setattr_available(), version >= (5, 12), "kernel {release}");
    }
}
