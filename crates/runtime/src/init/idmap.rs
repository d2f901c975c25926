//! Idmapped bind mounts: spec mounts with the `idmap` or `ridmap` option (runtime-spec config.md, "Mounts":
//! without `uidMappings`/`gidMappings` of its own the mount takes the container's user namespace's maps).
//!
//! An idmapped mount of a host filesystem can only be made with privilege over that filesystem's user
//! namespace (the host's), so it is made by the helper before it joins the container's user namespace,
//! and only for a user namespace joined by path (a pod's), whose maps exist already. The helper moves into
//! a private mount namespace first, attaches each idmapped copy under a tmpfs at `<state dir>/idmap/<n>`
//! there, and points the spec mount at it; the container's mount namespace, made later as a copy of that
//! one, binds it like any other source. Nothing is attached in the host's mount namespace, and everything
//! goes when the container's setup detaches its old root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use oci_spec::runtime::LinuxNamespaceType;

use crate::error::{Result, RuntimeError};
use crate::namespaces;
use crate::sync::InitConfig;

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

/// Whether a mount asks to be idmapped: Some(recursive).
fn idmap_option(options: &[String]) -> Option<bool> {
    if options.iter().any(|o| o == "ridmap") {
        Some(true)
    } else if options.iter().any(|o| o == "idmap") {
        Some(false)
    } else {
        None
    }
}

/// Makes the idmapped copies of the spec's `idmap`/`ridmap` mounts and rewrites those mounts to bind them
/// (see the module comment). Does nothing, and changes no namespace, when no mount asks for it.
pub(super) fn stage(config: &mut InitConfig) -> Result<()> {
    let mut mounts = config.spec.mounts().clone().unwrap_or_default();
    if !mounts.iter().any(|m| idmap_option(m.options().as_deref().unwrap_or_default()).is_some()) {
        return Ok(());
    }
    let invalid = |reason: String| RuntimeError::InvalidSpec { path: "config.json".into(), reason };
    let userns = namespaces::of(&config.spec)
        .into_iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::User)
        .and_then(|ns| ns.path().clone())
        .ok_or_else(|| {
            invalid("idmapped mounts (idmap, ridmap) need a user namespace joined by path (linux.namespaces)".into())
        })?;
    if !namespaces::creates(&config.spec, LinuxNamespaceType::Mount) {
        return Err(invalid("idmapped mounts (idmap, ridmap) need a new mount namespace".into()));
    }
    let state_dir =
        config.exec_fifo.as_deref().and_then(Path::parent).ok_or_else(|| {
            invalid("idmapped mounts (idmap, ridmap) are only made when a container is created".into())
        })?;
    let userns_file = std::fs::File::open(&userns).map_err(RuntimeError::io("open the user namespace", &userns))?;

    // A private mount namespace, receiving from the host's but never propagating back to it.
    unshare(CloneFlags::CLONE_NEWNS).map_err(RuntimeError::sys("unshare(CLONE_NEWNS) for idmapped mounts"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(RuntimeError::sys("make / rslave in the idmap staging namespace"))?;
    let staging = state_dir.join("idmap");
    std::fs::create_dir_all(&staging).map_err(RuntimeError::io("create the idmap staging directory", &staging))?;
    mount(Some("tmpfs"), &staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0711,size=64k"))
        .map_err(RuntimeError::sys(format!("mount a tmpfs on {}", staging.display())))?;

    for (index, spec_mount) in mounts.iter_mut().enumerate() {
        let options = spec_mount.options().clone().unwrap_or_default();
        let Some(recursive) = idmap_option(&options) else { continue };
        let bind = options.iter().any(|o| o == "bind" || o == "rbind") || spec_mount.typ().as_deref() == Some("bind");
        let destination = spec_mount.destination().display().to_string();
        if !bind {
            return Err(invalid(format!("mount {destination}: idmap and ridmap are only supported on bind mounts")));
        }
        let source = spec_mount.source().clone().ok_or_else(|| invalid(format!("mount {destination}: no source")))?;
        let at = staging.join(index.to_string());
        let is_dir = std::fs::metadata(&source).map_err(RuntimeError::io("stat the mount source", &source))?.is_dir();
        if is_dir {
            std::fs::create_dir(&at).map_err(RuntimeError::io("create", &at))?;
        } else {
            std::fs::write(&at, b"").map_err(RuntimeError::io("create", &at))?;
        }
        let tree = idmapped_clone(&source, &userns_file, recursive).map_err(|errno| {
            RuntimeError::sys(format!(
                "make an idmapped mount of {} for {destination} through the user namespace {}",
                source.display(),
                userns.display()
            ))(errno)
        })?;
        attach(&tree, &at).map_err(RuntimeError::sys(format!("attach the idmapped mount at {}", at.display())))?;
        spec_mount.set_source(Some(at));
        spec_mount.set_options(Some(options.into_iter().filter(|o| o != "idmap" && o != "ridmap").collect()));
    }
    config.spec.set_mounts(Some(mounts));
    Ok(())
}

fn idmapped_clone(source: &Path, userns: &std::fs::File, recursive: bool) -> nix::Result<OwnedFd> {
    let path = std::ffi::CString::new(source.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
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
        return Err(nix::errno::Errno::last());
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
        return Err(nix::errno::Errno::last());
    }
    Ok(tree)
}

fn attach(tree: &OwnedFd, target: &Path) -> nix::Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
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
    if result == 0 { Ok(()) } else { Err(nix::errno::Errno::last()) }
}

#[cfg(test)]
mod tests {
    use super::idmap_option;

    #[test]
    fn idmap_options_are_recognised() {
        let options = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(idmap_option(&options(&["rbind", "ridmap"])), Some(true));
        assert_eq!(idmap_option(&options(&["bind", "idmap", "ro"])), Some(false));
        assert_eq!(idmap_option(&options(&["rbind", "rprivate"])), None);
    }
}
