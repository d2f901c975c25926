//! The container's root filesystem: propagation, the spec's mounts, device nodes, pivot_root, masked and
//! read-only paths, sysctls, hostname.
//!
//! Every destination is resolved inside the rootfs the way the kernel would resolve it after pivot_root
//! (symlinks followed but never above the rootfs), so an image's symlink cannot redirect a mount onto the
//! host.

use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::cgroups;
use crate::error::{Result, RuntimeError};

fn mount_error(what: String) -> impl FnOnce(nix::Error) -> RuntimeError {
    RuntimeError::sys(what)
}

/// Before pivot_root: propagation of `/`, the rootfs as a mount point, the spec's mounts, /dev content.
pub(super) fn prepare(
    spec: &Spec,
    rootfs: &Path,
    has_mount_namespace: bool,
    cgroup_path: &Path,
    layout: &cgroups::Layout,
) -> Result<()> {
    if !has_mount_namespace {
        return Ok(());
    }
    let root_shared = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .is_some_and(|p| p == "shared" || p == "rshared");
    if root_shared {
        // A bidirectional volume (rootfsPropagation rshared, as containerd asks for it): the host's mounts
        // keep their peer groups, so a mount the container makes in a volume bound from a shared host mount
        // reaches the host. pivot_root refuses a shared parent of the new root or a shared current root:
        // those two become private, in this namespace only.
        make_parent_mount_private(rootfs)?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(mount_error("make / private in the container's mount namespace".into()))?;
    } else {
        // Nothing mounted in the container may propagate back to the host (runc's default as well); the
        // spec's rootfsPropagation is applied to the new root at the end.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(mount_error("make / rslave in the container's mount namespace".into()))?;
    }
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(mount_error(format!("bind {} onto itself", rootfs.display())))?;
    if root_shared {
        // What the setup mounts in the rootfs itself (proc, dev, the volumes' mount points) must not reach
        // the host's copy of the rootfs; volumes bound into it still join their sources' peer groups.
        mount(None::<&str>, rootfs, None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
            .map_err(mount_error(format!("make the rootfs {} rslave", rootfs.display())))?;
    }
    let mounts = spec.mounts().clone().unwrap_or_default();
    for spec_mount in &mounts {
        mount_one(spec, rootfs, spec_mount, cgroup_path, layout)?;
    }
    let dev_is_tmpfs =
        mounts.iter().any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("bind"));
    if dev_is_tmpfs {
        create_devices(spec, rootfs)?;
    }
    Ok(())
}

/// Makes the mount the rootfs sits on private: the nearest directory above the rootfs that is a mount point
/// (a propagation change on anything else is EINVAL).
fn make_parent_mount_private(rootfs: &Path) -> Result<()> {
    let mut candidate = rootfs.parent();
    while let Some(path) = candidate {
        match mount(None::<&str>, path, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINVAL) => candidate = path.parent(),
            Err(errno) => {
                return Err(mount_error(format!("make {} private (the rootfs's parent mount)", path.display()))(errno));
            }
        }
    }
    Ok(())
}

/// A mount's flags, propagation changes and filesystem data, from its options.
#[derive(Debug, PartialEq)]
struct MountOptions {
    flags: MsFlags,
    propagation: Vec<MsFlags>,
    data: Vec<String>,
    bind: bool,
    /// `rro`: read-only recursively, submounts included (mount_setattr, Linux 5.12).
    recursive_read_only: bool,
}

fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
        bind: false,
        recursive_read_only: false,
    };
    for option in options {
        let (set, clear) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rro" => {
                parsed.recursive_read_only = true;
                (MsFlags::MS_RDONLY, MsFlags::empty())
            }
            "rw" | "rrw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" | "nomand" => (MsFlags::empty(), MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                let kind = match option.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                let recursive = if option.starts_with('r') { MsFlags::MS_REC } else { MsFlags::empty() };
                parsed.propagation.push(kind | recursive);
                (MsFlags::empty(), MsFlags::empty())
            }
            data => {
                parsed.data.push(data.to_owned());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        parsed.flags.insert(set);
        parsed.flags.remove(clear);
    }
    parsed
}

fn mount_one(
    spec: &Spec,
    rootfs: &Path,
    spec_mount: &Mount,
    cgroup_path: &Path,
    layout: &cgroups::Layout,
) -> Result<()> {
    let options = parse_options(spec_mount.options().as_deref().unwrap_or_default());
    let typ = spec_mount.typ().clone().unwrap_or_else(|| if options.bind { "bind".into() } else { "none".into() });
    let bind = is_bind_mount(spec_mount);
    let destination = make_mount_point(rootfs, spec_mount)?;
    let source = spec_mount.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    let describe = |step: &str| format!("{step} {} ({typ}) on {}", source.display(), destination.display());

    if typ == "cgroup" {
        mount_cgroup(spec, &destination, &options, cgroup_path, layout)?;
    } else if bind {
        let recursive = options.flags & MsFlags::MS_REC;
        mount(Some(&source), &destination, None::<&str>, MsFlags::MS_BIND | recursive, None::<&str>)
            .map_err(mount_error(describe("bind-mount")))?;
        let extra = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            remount_bind(&destination, extra).map_err(mount_error(describe("remount with options")))?;
        }
    } else {
        let data = (!options.data.is_empty()).then(|| options.data.join(","));
        let result = mount(Some(&source), &destination, Some(typ.as_str()), options.flags, data.as_deref());
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted in a user namespace that does not own the network namespace; bind the
            // host's instead, read-only.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                mount(Some("/sys"), &destination, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(mount_error(describe("bind /sys as a fallback for")))?;
                remount_bind(
                    &destination,
                    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                )
                .map_err(mount_error(describe("remount read-only")))?;
            }
            Err(errno) => return Err(mount_error(describe("mount"))(errno)),
        }
    }
    if options.recursive_read_only {
        set_read_only_recursively(&destination).map_err(mount_error(describe("make recursively read-only")))?;
    }
    for propagation in &options.propagation {
        mount(None::<&str>, &destination, None::<&str>, *propagation, None::<&str>)
            .map_err(mount_error(describe(&format!("set propagation {propagation:?} of"))))?;
    }
    Ok(())
}

/// Makes a mount and every mount below it read-only (`rro`): a remount only changes the top mount.
fn set_read_only_recursively(destination: &Path) -> nix::Result<()> {
    crate::mount_api::set_read_only_recursively(destination)
        .map_err(|err| nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))
}

/// Remounts a bind mount with new flags, keeping the flags the kernel locks on it (nosuid, nodev, noexec
/// and atime flags inherited from a mount owned by another user namespace cannot be cleared).
fn remount_bind(destination: &Path, flags: MsFlags) -> nix::Result<()> {
    let base = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    match mount(None::<&str>, destination, None::<&str>, base, None::<&str>) {
        Err(nix::errno::Errno::EPERM) => {
            let locked = nix::sys::statvfs::statvfs(destination)?.flags();
            let mut keep = MsFlags::empty();
            for (vfs, ms) in [
                (nix::sys::statvfs::FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (nix::sys::statvfs::FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (nix::sys::statvfs::FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (nix::sys::statvfs::FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (nix::sys::statvfs::FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (nix::sys::statvfs::FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if locked.contains(vfs) {
                    keep |= ms;
                }
            }
            mount(None::<&str>, destination, None::<&str>, base | keep, None::<&str>)
        }
        other => other,
    }
}

/// cgroup mounts show the container's own cgroup: with a cgroup namespace the kernel does that for a fresh
/// cgroup filesystem; without one, the container's cgroup directories are bind-mounted.
fn mount_cgroup(
    spec: &Spec,
    destination: &Path,
    options: &MountOptions,
    cgroup_path: &Path,
    layout: &cgroups::Layout,
) -> Result<()> {
    let own_namespace = crate::namespaces::has(spec, oci_spec::runtime::LinuxNamespaceType::Cgroup);
    let read_only = options.flags.contains(MsFlags::MS_RDONLY);
    let fs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME;
    let mut mounted = Vec::new();
    match layout {
        cgroups::Layout::V2 { root } => {
            if own_namespace {
                mount(Some("cgroup2"), destination, Some("cgroup2"), fs_flags, None::<&str>)
                    .map_err(mount_error(format!("mount cgroup2 on {}", destination.display())))?;
            } else {
                let source = root.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
                mount(Some(&source), destination, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(mount_error(format!("bind {} on {}", source.display(), destination.display())))?;
            }
            mounted.push(destination.to_path_buf());
        }
        cgroups::Layout::V1 { .. } => {
            mount(Some("tmpfs"), destination, Some("tmpfs"), fs_flags, Some("mode=755"))
                .map_err(mount_error(format!("mount tmpfs for cgroups on {}", destination.display())))?;
            for (target, host_mount, controllers) in layout.v1_container_mounts(destination) {
                std::fs::DirBuilder::new().mode(0o755).create(&target).map_err(RuntimeError::io("create", &target))?;
                let result = if own_namespace {
                    match controllers {
                        Some(controllers) => mount(
                            Some("cgroup"),
                            &target,
                            Some("cgroup"),
                            fs_flags,
                            Some(controllers.join(",").as_str()),
                        ),
                        None => mount(Some("cgroup2"), &target, Some("cgroup2"), fs_flags, None::<&str>),
                    }
                } else {
                    let source = host_mount.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
                    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                };
                result.map_err(mount_error(format!(
                    "mount cgroup hierarchy {} on {}",
                    host_mount.display(),
                    target.display()
                )))?;
                mounted.push(target);
            }
            if read_only {
                mounted.push(destination.to_path_buf());
            }
        }
    }
    if read_only {
        for target in mounted {
            remount_bind(&target, fs_flags | MsFlags::MS_RDONLY)
                .or_else(|_| {
                    mount(
                        None::<&str>,
                        &target,
                        None::<&str>,
                        MsFlags::MS_REMOUNT | fs_flags | MsFlags::MS_RDONLY,
                        None::<&str>,
                    )
                })
                .map_err(mount_error(format!("remount {} read-only", target.display())))?;
        }
    }
    Ok(())
}

/// For a restore: the mount points of the spec's mounts, made in `rootfs` as `prepare` would make them, so
/// CRIU finds where to mount each (a checkpoint's root filesystem changes leave them out). Mounts below a
/// tmpfs mount are skipped: CRIU restores that tmpfs's content, mount points included.
pub(crate) fn create_mount_points(spec: &Spec, rootfs: &Path) -> Result<()> {
    let mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    let tmpfs: Vec<&Path> =
        mounts.iter().filter(|m| m.typ().as_deref() == Some("tmpfs")).map(|m| m.destination().as_path()).collect();
    for spec_mount in &mounts {
        let destination = spec_mount.destination();
        if tmpfs.iter().any(|t| destination != *t && destination.starts_with(t)) {
            continue;
        }
        make_mount_point(rootfs, spec_mount)?;
    }
    Ok(())
}

/// Whether a spec mount is a bind mount (`type: bind`, or a `bind`/`rbind` option).
pub fn is_bind_mount(spec_mount: &Mount) -> bool {
    spec_mount.typ().as_deref() == Some("bind")
        || spec_mount.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
}

/// Makes a spec mount's mount point inside `rootfs` (a file for a bind mount of a file, else a directory)
/// and returns it, resolved as the container will see it.
fn make_mount_point(rootfs: &Path, spec_mount: &Mount) -> Result<PathBuf> {
    let destination = resolve_in_root(rootfs, spec_mount.destination())?;
    let directory = !is_bind_mount(spec_mount)
        || spec_mount.source().as_ref().is_none_or(|s| std::fs::metadata(s).map(|m| m.is_dir()).unwrap_or(true));
    create_mount_point(&destination, directory)?;
    Ok(destination)
}

fn create_mount_point(destination: &Path, directory: bool) -> Result<()> {
    if std::fs::symlink_metadata(destination).is_ok() {
        return Ok(());
    }
    if directory {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(destination)
            .map_err(RuntimeError::io("create mount point", destination))
    } else {
        if let Some(parent) = destination.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(RuntimeError::io("create mount point", parent))?;
        }
        std::fs::File::create(destination).map(drop).map_err(RuntimeError::io("create mount point", destination))
    }
}

/// Resolves `path` as the container will see it: relative to `root`, following symlinks (at most 255)
/// without ever leaving `root`. Missing components are kept as they are.
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str().to_owned())
            .chain(resolved.iter().cloned())
            .chain(std::iter::once(part.clone()))
            .collect();
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(RuntimeError::Io {
                        step: "resolve",
                        path: path.to_owned(),
                        source: std::io::Error::from_raw_os_error(libc::ELOOP),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(RuntimeError::io("read link", &candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(name) => pending.push(name.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |path, part| path.join(part)))
}

/// The devices every container gets (runtime-spec config-linux.md, "Default Devices").
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

fn create_devices(spec: &Spec, rootfs: &Path) -> Result<()> {
    let mut devices: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = default_devices()
        .into_iter()
        .map(|(path, major, minor)| (PathBuf::from(path), SFlag::S_IFCHR, major, minor, 0o666, 0, 0))
        .collect();
    for device in spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default() {
        devices.retain(|d| d.0 != *device.path());
        devices.push(spec_device(&device)?);
    }
    for (path, kind, major, minor, mode, uid, gid) in devices {
        let target = resolve_in_root(rootfs, &path)?;
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(RuntimeError::io("create", parent))?;
        }
        let _ = std::fs::remove_file(&target);
        match mknod(&target, kind, Mode::from_bits_truncate(mode), makedev(major, minor)) {
            Ok(()) => {
                nix::unistd::chown(&target, Some(uid.into()), Some(gid.into()))
                    .map_err(RuntimeError::sys(format!("chown device {}", target.display())))?;
            }
            // In a user namespace mknod is refused: bind the host's node instead (runc does the same).
            Err(nix::errno::Errno::EPERM) => {
                std::fs::File::create(&target).map_err(RuntimeError::io("create", &target))?;
                mount(Some(&path), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(mount_error(format!("bind device {} on {}", path.display(), target.display())))?;
            }
            Err(errno) => return Err(mount_error(format!("mknod {}", target.display()))(errno)),
        }
    }
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ];
    for (target, link) in links {
        let at = resolve_in_root(rootfs, Path::new(link))?;
        let _ = std::fs::remove_file(&at);
        symlink(target, &at).map_err(RuntimeError::io("create symlink", &at))?;
    }
    if Path::new("/proc/kcore").exists() {
        let at = resolve_in_root(rootfs, Path::new("/dev/core"))?;
        let _ = symlink("/proc/kcore", &at);
    }
    Ok(())
}

fn spec_device(device: &LinuxDevice) -> Result<(PathBuf, SFlag, u64, u64, u32, u32, u32)> {
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RuntimeError::InvalidSpec {
                path: "config.json".into(),
                reason: format!(
                    "device {} has type \"a\", which only device cgroup rules may use",
                    device.path().display()
                ),
            });
        }
    };
    Ok((
        device.path().clone(),
        kind,
        device.major() as u64,
        device.minor() as u64,
        device.file_mode().unwrap_or(0o666),
        device.uid().unwrap_or(0),
        device.gid().unwrap_or(0),
    ))
}

/// Makes the rootfs the process's root: pivot_root with a mount namespace, chroot without one.
pub(super) fn enter(rootfs: &Path, has_mount_namespace: bool) -> Result<()> {
    if !has_mount_namespace {
        nix::unistd::chroot(rootfs).map_err(RuntimeError::sys(format!("chroot to {}", rootfs.display())))?;
        return nix::unistd::chdir("/").map_err(RuntimeError::sys("chdir / after chroot"));
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; unmounting "." then removes it
    // without needing a directory for it inside the container (pivot_root(2), NOTES).
    let old_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RuntimeError::sys("open the old root /"))?;
    let new_root = nix::fcntl::open(
        rootfs,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(RuntimeError::sys(format!("open rootfs {}", rootfs.display())))?;
    nix::unistd::fchdir(&new_root).map_err(RuntimeError::sys(format!("chdir to rootfs {}", rootfs.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(RuntimeError::sys(format!("pivot_root to {}", rootfs.display())))?;
    // "." names the mount the working directory is on, never the one stacked on it: from the new root's
    // directory, the rslave below would reach the new root and every volume in it, and cut a
    // bidirectional volume off from its host peers. From the old root's directory it reaches the old root.
    nix::unistd::fchdir(&old_root).map_err(RuntimeError::sys("chdir to the old root after pivot_root"))?;
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(RuntimeError::sys("make the old root rslave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(RuntimeError::sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(RuntimeError::sys("chdir / after pivot_root"))
}

/// After pivot_root: masked and read-only paths, sysctls, hostname, read-only root, root propagation.
pub(super) fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    // Sysctls first: /proc/sys is usually among the read-only paths.
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        let file = crate::namespaces::sysctl_file(&key).ok_or_else(|| RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: format!("invalid sysctl name {key:?}"),
        })?;
        std::fs::write(&file, value.as_bytes()).map_err(RuntimeError::io("write sysctl", &file))?;
    }
    for path in linux.masked_paths().iter().flatten() {
        mask(Path::new(path))?;
    }
    for path in linux.readonly_paths().iter().flatten() {
        let path = Path::new(path);
        match mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(errno) => return Err(mount_error(format!("bind read-only path {}", path.display()))(errno)),
        }
        remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC)
            .map_err(mount_error(format!("remount {} read-only", path.display())))?;
    }
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        // In the host's UTS namespace this would rename the node (runc refuses it as well).
        let own_uts =
            spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).is_some_and(|namespaces| {
                namespaces.iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Uts)
            });
        if !own_uts {
            return Err(RuntimeError::sys(format!(
                "sethostname {hostname:?} without a UTS namespace of the container's own"
            ))(nix::errno::Errno::EINVAL));
        }
        nix::unistd::sethostname(hostname).map_err(RuntimeError::sys(format!("sethostname {hostname:?}")))?;
    }
    if let Some(domainname) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: the pointer and length describe a live byte slice for the duration of the call.
        let result = unsafe { libc::setdomainname(domainname.as_ptr().cast(), domainname.len()) };
        if result != 0 {
            return Err(RuntimeError::sys(format!("setdomainname {domainname:?}"))(nix::errno::Errno::last()));
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(RuntimeError::sys("remount the root filesystem read-only"))?;
    }
    if let Some(propagation) = linux.rootfs_propagation().as_deref().filter(|p| !p.is_empty()) {
        let parsed = parse_options(&[propagation.to_owned()]);
        let Some(flag) = parsed.propagation.first() else {
            return Err(RuntimeError::InvalidSpec {
                path: "config.json".into(),
                reason: format!("unknown rootfsPropagation {propagation:?}"),
            });
        };
        mount(None::<&str>, "/", None::<&str>, *flag, None::<&str>)
            .map_err(RuntimeError::sys(format!("set rootfsPropagation {propagation}")))?;
    }
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(RuntimeError::Io { step: "inspect masked path", path: path.to_owned(), source }),
    };
    let result = if meta.is_dir() {
        mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0k"))
    } else {
        mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    result.map_err(mount_error(format!("mask {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let options: Vec<String> =
            ["rbind", "ro", "nosuid", "rslave", "mode=755", "size=65536k"].map(String::from).to_vec();
        let parsed = parse_options(&options);
        assert!(parsed.bind);
        assert_eq!(parsed.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(parsed.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(parse_options(&["ro".into(), "rw".into()]).flags, MsFlags::empty());
    }

    #[test]
    fn symlinks_resolve_inside_the_root_and_never_above_it() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("../../../../etc", r.join("usr/escape")).unwrap();
        symlink("/", r.join("usr/slash")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(r, Path::new("/lib/x")).unwrap(), r.join("usr/lib/x"));
        assert_eq!(resolve_in_root(r, Path::new("/usr/escape/passwd")).unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve_in_root(r, Path::new("/usr/slash/../../tmp")).unwrap(), r.join("tmp"));
        assert_eq!(resolve_in_root(r, Path::new("../../x")).unwrap(), r.join("x"));
        assert!(resolve_in_root(r, Path::new("/loop1")).is_err());
    }
}
