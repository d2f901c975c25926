//! A container's mounts: the standard filesystems, the pod's /dev/shm and /etc files, then the CRI mounts.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::Problem;
use crate::cri::v1 as cri;

pub(crate) struct MountRequest<'a> {
    pub config: &'a cri::ContainerConfig,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub etc_dir: &'a Path,
    pub shm: Option<&'a Path>,
    /// The pod's user namespace maps (`hostUsers: false`): CRI mounts are then idmapped through it
    /// (`ridmap`), so the pod's root owns what the host's root owns in its volumes.
    pub user_mappings: Option<&'a berth_runtime::pin::UserMappings>,
    /// Where each image volume (`Mount.image`, by its index in the request) is mounted on the host, its
    /// sub path already resolved inside it.
    pub image_volumes: &'a BTreeMap<usize, PathBuf>,
}

pub(crate) struct Mounts {
    pub mounts: Vec<Mount>,
    /// `rshared` when a mount is bidirectional, `rslave` when one receives host mounts (containerd sets the
    /// root's propagation the same way, so mounts can travel through it).
    pub rootfs_propagation: Option<String>,
}

fn mount(destination: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Result<Mount, Problem> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.into())
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()?)
}

/// containerd's defaults (its base spec with `/run` removed, plus the cgroup filesystem). /sys and the
/// cgroup filesystem are read-write only for privileged containers.
fn standard(privileged: bool) -> Result<Vec<Mount>, Problem> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys_mode])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", sys_mode])?,
    ])
}

/// A path with `.`, `..` (never above /) and repeated slashes removed, for comparing destinations.
fn clean(path: &str) -> PathBuf {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.iter().fold(PathBuf::from("/"), |path, part| path.join(part))
}

fn depth(path: &Path) -> usize {
    path.components().filter(|c| matches!(c, Component::Normal(_))).count()
}

/// The options of a CRI bind mount: `rbind`, the propagation, `ro`/`rro`/`rw`.
fn propagation_option(mount: &cri::Mount) -> Result<&'static str, Problem> {
    use cri::MountPropagation;
    match MountPropagation::try_from(mount.propagation) {
        Ok(MountPropagation::PropagationPrivate) => Ok("rprivate"),
        Ok(MountPropagation::PropagationHostToContainer) => Ok("rslave"),
        Ok(MountPropagation::PropagationBidirectional) => Ok("rshared"),
        Err(_) => {
            Err(Problem::Invalid(format!("mount {}: unknown propagation {}", mount.container_path, mount.propagation)))
        }
    }
}

/// The host side of a CRI mount: created as a directory when missing (containerd does the same, and
/// hostPath volumes without a type rely on it), then with symlinks resolved.
fn host_source(mount: &cri::Mount) -> Result<PathBuf, Problem> {
    let path = Path::new(&mount.host_path);
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(path)
                .map_err(Problem::io("create the missing mount source", path))?;
        }
        Err(err) => return Err(Problem::Io { step: "stat the mount source", path: path.into(), source: err }),
    }
    path.canonicalize().map_err(Problem::io("resolve the mount source", path))
}

/// Whether a CRI mount is an image volume.
pub(crate) fn is_image_volume(mount: &cri::Mount) -> bool {
    mount.image.as_ref().is_some_and(|i| !i.image.is_empty())
}

fn cri_mount(
    mount: &cri::Mount,
    image_volume: Option<&Path>,
    user_mappings: Option<&berth_runtime::pin::UserMappings>,
) -> Result<(Mount, &'static str), Problem> {
    if !mount.container_path.starts_with('/') {
        return Err(Problem::Invalid(format!("mount destination {:?} is not absolute", mount.container_path)));
    }
    if is_image_volume(mount) {
        let Some(source) = image_volume else {
            return Err(Problem::Invalid(format!("image volume {}: not mounted", mount.container_path)));
        };
        // Read-only whatever the request says, and never a source of devices, setuid files or programs.
        let mut options = vec![propagation_option(mount)?, "ro", "nosuid", "nodev", "noexec"];
        if user_mappings.is_some() {
            options.push("ridmap");
        }
        return Ok((bind(&mount.container_path, source, &options)?, options[0]));
    }
    if mount.host_path.is_empty() {
        return Err(Problem::Invalid(format!("mount {}: empty host path", mount.container_path)));
    }
    if !mount.uid_mappings.is_empty() || !mount.gid_mappings.is_empty() {
        // Maps of its own are honoured when they are the pod's (the only user namespace an idmapped mount
        // can be made through here).
        let own = crate::pods::userns::mappings(Some(&cri::UserNamespace {
            mode: crate::pods::MODE_POD,
            uids: mount.uid_mappings.clone(),
            gids: mount.gid_mappings.clone(),
        }));
        if !matches!((own, user_mappings), (Ok(Some(own)), Some(pod)) if own == *pod) {
            return Err(Problem::Unsupported(format!(
                "idmapped mount {} with maps other than its pod's user namespace",
                mount.container_path
            )));
        }
    }
    let propagation = propagation_option(mount)?;
    let mode = if mount.recursive_read_only {
        // kubelet checks the same; the kernel's recursive read-only (mount_setattr) cannot be undone by a
        // propagated mount, so only private mounts may ask for it.
        if !mount.readonly {
            return Err(Problem::Invalid(format!(
                "mount {}: recursive read-only needs readonly",
                mount.container_path
            )));
        }
        if propagation != "rprivate" {
            return Err(Problem::Invalid(format!(
                "mount {}: recursive read-only needs private propagation",
                mount.container_path
            )));
        }
        "rro"
    } else if mount.readonly {
        "ro"
    } else {
        "rw"
    };
    if mount.selinux_relabel {
        tracing::debug!(destination = %mount.container_path, "SELinux relabelling asked for; berth does not relabel");
    }
    let source = host_source(mount)?;
    let mut options = vec![propagation, mode];
    if user_mappings.is_some() {
        options.push("ridmap");
    }
    Ok((bind(&mount.container_path, source, &options)?, propagation))
}

fn bind(destination: &str, source: impl Into<PathBuf>, options: &[&str]) -> Result<Mount, Problem> {
    let mut all = vec!["rbind"];
    all.extend_from_slice(options);
    mount(destination, "bind", source, &all)
}

/// The mounts in the order they are made: the standard ones not replaced by a CRI mount (a CRI mount of /dev
/// replaces everything under it too), then the pod's files and every CRI mount, shallow paths first so a
/// mount never hides a deeper one (a stable sort keeps the CRI's order among equals).
pub(crate) fn mounts(request: &MountRequest) -> Result<Mounts, Problem> {
    let config = request.config;
    let requested: Vec<PathBuf> = config.mounts.iter().map(|m| clean(&m.container_path)).collect();
    let replaces_dev = requested.iter().any(|p| p == Path::new("/dev"));
    let mut mounts: Vec<Mount> = standard(request.privileged)?
        .into_iter()
        .filter(|m| !requested.iter().any(|p| p == m.destination()))
        .filter(|m| !(replaces_dev && m.destination().starts_with("/dev")))
        .collect();

    let etc_mode = if request.readonly_rootfs { "ro" } else { "rw" };
    let mut extra: Vec<Mount> = Vec::new();
    for (file, destination) in
        [("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")]
    {
        if !requested.iter().any(|p| p == Path::new(destination)) {
            extra.push(bind(destination, request.etc_dir.join(file), &["rprivate", etc_mode])?);
        }
    }
    if !requested.iter().any(|p| p == Path::new("/dev/shm")) && !replaces_dev {
        let shm = request.shm.unwrap_or(Path::new("/dev/shm"));
        extra.push(bind("/dev/shm", shm, &["rprivate", "rw", "nosuid", "nodev", "noexec"])?);
    }
    let mut rootfs_propagation: Option<String> = None;
    for (index, requested_mount) in config.mounts.iter().enumerate() {
        let image_volume = request.image_volumes.get(&index).map(PathBuf::as_path);
        let (mount, propagation) = cri_mount(requested_mount, image_volume, request.user_mappings)?;
        match propagation {
            "rshared" => rootfs_propagation = Some("rshared".into()),
            "rslave" if rootfs_propagation.is_none() => rootfs_propagation = Some("rslave".into()),
            _ => {}
        }
        extra.push(mount);
    }
    extra.sort_by_key(|m| depth(m.destination()));
    mounts.extend(extra);
    Ok(Mounts { mounts, rootfs_propagation })
}
