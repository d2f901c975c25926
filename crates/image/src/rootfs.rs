//! Container root filesystems: an image's layer snapshots as overlayfs lower directories, with a
//! per-container upper and work directory (`containers/<id>/`).
//!
//! The chain IDs a container uses are written to `containers/<id>/layers.json` before the mount, so
//! garbage collection never deletes a snapshot under a container, even after the image is removed
//! (removing an image in use must not break the container). Unmounting and removing is idempotent: it
//! finishes whatever an interrupted removal left.
//!
//! A container in a user namespace (a pod with `hostUsers: false`) gets the same overlay with each lower
//! directory seen through an idmapped mount of that namespace (files the host's root owns on disk belong to
//! the namespace's root), and an upper directory owned by the namespace's root on disk; copy-up keeps the
//! ownership the idmapped lower shows, so what the container makes or changes is owned by its mapped ids on
//! the host. No layer is copied or chowned. The idmapped lowers are attached at `containers/<id>/lower/<n>`
//! only while the overlay is mounted (overlayfs keeps private clones of its layers), then detached.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::store::{ImageError, ImageStore};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("invalid container id {id:?}: use letters, digits, '-', '_' and '.', not starting with '.'")]
    ContainerId { id: String },
    #[error("image {image} not found")]
    ImageNotFound { image: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("container {id}: {step} {path}")]
    Io {
        id: String,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: {step} {path} (idmapped through the user namespace {userns})")]
    Idmap {
        id: String,
        step: &'static str,
        path: PathBuf,
        userns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "container {id}: the overlay options for {layers} layers are {length} bytes, over the kernel's limit of 4095"
    )]
    TooManyLayers { id: String, layers: usize, length: usize },
}

impl Kinded for RootfsError {
    fn kind(&self) -> ErrorKind {
        match self {
            RootfsError::ContainerId { .. } => ErrorKind::InvalidArgument,
            RootfsError::ImageNotFound { .. } => ErrorKind::NotFound,
            RootfsError::Image(err) => err.kind(),
            RootfsError::Io { source, .. } => ErrorKind::of_io(source),
            RootfsError::Idmap { .. } => ErrorKind::Internal,
            RootfsError::TooManyLayers { .. } => ErrorKind::ResourceExhausted,
        }
    }
}

pub(crate) fn check_id(id: &str) -> Result<(), RootfsError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(RootfsError::ContainerId { id: id.to_owned() }) }
}

/// The user namespace a container's root filesystem is seen through: its pinned namespace file, and the
/// host ids its root is (the upper directory's owner).
#[derive(Debug, Clone)]
pub struct IdmappedRoot {
    pub userns: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// Where the idmapped lower directories of a container are attached while its overlay is mounted.
fn lower_mounts_dir(container_dir: &Path) -> PathBuf {
    container_dir.join("lower")
}

impl ImageStore {
    /// The directory holding a container's writable layer.
    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.root().join("containers").join(container_id)
    }

    /// Mounts the layers of `image` (an ID, tag or digest reference) at `target` (an existing directory)
    /// as overlayfs, with the container's own upper directory; `read_only` mounts it read-only.
    pub async fn mount_rootfs(
        &self,
        container_id: &str,
        image: &str,
        target: &Path,
        read_only: bool,
    ) -> Result<(), RootfsError> {
        self.mount_rootfs_idmapped(container_id, image, target, read_only, None).await
    }

    /// [`mount_rootfs`](Self::mount_rootfs), with the layers seen through a user namespace when `idmap`
    /// is given (see the module comment).
    pub async fn mount_rootfs_idmapped(
        &self,
        container_id: &str,
        image: &str,
        target: &Path,
        read_only: bool,
        idmap: Option<IdmappedRoot>,
    ) -> Result<(), RootfsError> {
        check_id(container_id)?;
        let record = self.find(image).await?.ok_or_else(|| RootfsError::ImageNotFound { image: image.to_owned() })?;
        let dir = self.container_dir(container_id);
        let lowers: Vec<PathBuf> = record.chain_ids.iter().rev().map(|c| self.snapshot_path(c)).collect();
        let target = target.to_owned();
        let id = container_id.to_owned();
        let chain_ids = record.chain_ids.clone();
        tokio::task::spawn_blocking(move || {
            mount_blocking(&id, &dir, &chain_ids, &lowers, &target, read_only, idmap.as_ref())
        })
        .await
        .map_err(|e| RootfsError::Image(ImageError::Worker(e)))?
    }

    /// Unmounts `target` (if mounted) and deletes the container's writable layer. Succeeds when there is
    /// nothing left to do.
    pub async fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<(), RootfsError> {
        check_id(container_id)?;
        let dir = self.container_dir(container_id);
        let target = target.to_owned();
        let id = container_id.to_owned();
        tokio::task::spawn_blocking(move || {
            match rustix::mount::unmount(&target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
                Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(errno) => {
                    return Err(RootfsError::Io {
                        id: id.clone(),
                        step: "cannot unmount",
                        path: target,
                        source: errno.into(),
                    });
                }
            }
            remove_layer(&id, &dir)
        })
        .await
        .map_err(|e| RootfsError::Image(ImageError::Worker(e)))?
    }

    /// The containers that have a writable layer (`containers/<id>/`), mounted or not.
    pub fn layered_containers(&self) -> Result<Vec<String>, RootfsError> {
        let dir = self.root().join("containers");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RootfsError::Io { id: String::new(), step: "cannot list", path: dir, source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RootfsError::Io {
                id: String::new(),
                step: "cannot list",
                path: dir.clone(),
                source,
            })?;
            ids.extend(entry.file_name().to_str().map(str::to_owned));
        }
        Ok(ids)
    }

    /// Deletes the writable layer of a container whose rootfs is no longer mounted anywhere (a node that
    /// restarted, or a layer no container record names).
    pub async fn remove_layer(&self, container_id: &str) -> Result<(), RootfsError> {
        check_id(container_id)?;
        let dir = self.container_dir(container_id);
        let id = container_id.to_owned();
        tokio::task::spawn_blocking(move || remove_layer(&id, &dir))
            .await
            .map_err(|e| RootfsError::Image(ImageError::Worker(e)))?
    }
}

/// Detaches what is mounted below a container's layer directory, then deletes it.
fn remove_layer(id: &str, dir: &Path) -> Result<(), RootfsError> {
    // A crash while an idmapped overlay was being mounted may have left its lowers attached, and image
    // volumes are mounted below the directory: they must go before the directory does, or removing it
    // would delete the image's snapshots.
    detach_lowers(&lower_mounts_dir(dir)).map_err(|(path, source)| RootfsError::Io {
        id: id.to_owned(),
        step: "cannot detach the idmapped lower directory",
        path,
        source,
    })?;
    detach_lowers(&crate::image_volume::volumes_dir(dir)).map_err(|(path, source)| RootfsError::Io {
        id: id.to_owned(),
        step: "cannot unmount the image volume",
        path,
        source,
    })?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RootfsError::Io { id: id.to_owned(), step: "cannot remove", path: dir.to_owned(), source }),
    }
}

fn mount_blocking(
    id: &str,
    dir: &Path,
    chain_ids: &[crate::digest::Digest],
    lowers: &[PathBuf],
    target: &Path,
    read_only: bool,
    idmap: Option<&IdmappedRoot>,
) -> Result<(), RootfsError> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        let id = id.to_owned();
        move |source| RootfsError::Io { id, step, path, source }
    };
    let upper = dir.join("upper");
    let work = dir.join("work");
    for path in [dir, &upper, &work] {
        match std::fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io("cannot create", path)(err)),
        }
    }
    // Intent before the mount: from here on, garbage collection keeps these snapshots.
    write_layers_intent(id, dir, "layers.json", chain_ids)?;

    let Some(idmap) = idmap else {
        return mount_overlay(id, lowers, &upper, &work, target, read_only);
    };
    // The namespace's root owns the upper directory's root (the overlay's root directory), so it can write
    // there; everything below is created by copy-up or by the container with the right owners.
    std::os::unix::fs::chown(&upper, Some(idmap.uid), Some(idmap.gid)).map_err(io("cannot chown", &upper))?;
    let userns = std::fs::File::open(&idmap.userns).map_err(io("cannot open the user namespace", &idmap.userns))?;
    let attached_dir = lower_mounts_dir(dir);
    let idmap_error = |step, path: &Path| {
        let (id, path, userns) = (id.to_owned(), path.to_owned(), idmap.userns.clone());
        move |source| RootfsError::Idmap { id, step, path, userns, source }
    };
    let mut attached = Vec::with_capacity(lowers.len());
    let mut result = Ok(());
    for (index, lower) in lowers.iter().enumerate() {
        let at = attached_dir.join(index.to_string());
        let step = std::fs::create_dir_all(&at)
            .map_err(io("cannot create", &at))
            .and_then(|()| {
                berth_runtime::mount_api::idmapped_clone(lower, userns.as_fd(), false)
                    .map_err(idmap_error("cannot clone the mount of", lower))
            })
            .and_then(|tree| {
                berth_runtime::mount_api::attach(tree.as_fd(), &at).map_err(idmap_error("cannot attach", &at))
            });
        if let Err(err) = step {
            result = Err(err);
            break;
        }
        attached.push(at);
    }
    if result.is_ok() {
        result = mount_overlay(id, &attached, &upper, &work, target, read_only);
    }
    // Attached only for the mount: the overlay holds its own clones of them from here on.
    let detached = detach_lowers(&attached_dir).map_err(|(path, source)| RootfsError::Io {
        id: id.to_owned(),
        step: "cannot detach the idmapped lower directory",
        path,
        source,
    });
    result.and(detached)
}

/// Writes the chain IDs a container is about to mount to `<container dir>/<name>` (a name ending in
/// `layers.json`, which garbage collection reads), atomically.
pub(crate) fn write_layers_intent(
    id: &str,
    dir: &Path,
    name: &str,
    chain_ids: &[crate::digest::Digest],
) -> Result<(), RootfsError> {
    let layers = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let io = |path: &Path| {
        let (id, path) = (id.to_owned(), path.to_owned());
        move |source| RootfsError::Io { id, step: "cannot write", path, source }
    };
    std::fs::write(&temp, serde_json::to_vec(chain_ids).expect("digests serialize")).map_err(io(&temp))?;
    std::fs::rename(&temp, &layers).map_err(io(&layers))
}

/// Detaches and removes whatever is attached under `dir` (the idmapped lowers), then `dir`. Missing is fine.
pub(crate) fn detach_lowers(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err((dir.to_owned(), err)),
    };
    for entry in entries {
        let path = entry.map_err(|err| (dir.to_owned(), err))?.path();
        match rustix::mount::unmount(&path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(errno) => return Err((path, errno.into())),
        }
        // rmdir, never a recursive removal: if the unmount did not happen, this fails instead of deleting
        // a snapshot's files.
        match std::fs::remove_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err((path, err)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err((dir.to_owned(), err)),
    }
}

fn mount_overlay(
    id: &str,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    read_only: bool,
) -> Result<(), RootfsError> {
    let upper_options = format!("upperdir={},workdir={}", upper.display(), work.display());
    let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
    mount_overlay_with(id, lowers, Some(&upper_options), target, flags)
}

/// Mounts the overlay of `lowers` (top first) at `target`, with `upper_options` (`upperdir=...,workdir=...`)
/// or read-only without them.
pub(crate) fn mount_overlay_with(
    id: &str,
    lowers: &[PathBuf],
    upper_options: Option<&str>,
    target: &Path,
    flags: MountFlags,
) -> Result<(), RootfsError> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        let id = id.to_owned();
        move |source| RootfsError::Io { id, step, path, source }
    };
    let lowerdir = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let mut options = format!("lowerdir={lowerdir}");
    // `volatile` (Linux 5.10): the overlay never syncs its upper filesystem, neither on the container's
    // syncs nor when it is unmounted. A container's writable layer does not outlive the container, and a
    // host crash ends the container, so there is nothing for those syncs to keep; without the option the
    // unmount at RemoveContainer flushed the whole upper filesystem (60 ms here, against 6 ms with it).
    let volatile = upper_options.is_some() && VOLATILE_ACCEPTED.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(upper) = upper_options {
        options.push(',');
        options.push_str(upper);
    }
    if volatile {
        options.push_str(",volatile");
    }
    // The mount data is one page (4096 bytes including the NUL) and longer options are cut by the kernel.
    if options.len() > 4095 {
        return Err(RootfsError::TooManyLayers { id: id.to_owned(), layers: lowers.len(), length: options.len() });
    }
    let data = CString::new(options.clone()).expect("paths have no NUL");
    match rustix::mount::mount("overlay", target, "overlay", flags, Some(data.as_c_str())) {
        // A kernel before 5.10 does not know the option: mount without it from now on.
        Err(rustix::io::Errno::INVAL) if volatile => {
            let plain = CString::new(options.trim_end_matches(",volatile")).expect("paths have no NUL");
            rustix::mount::mount("overlay", target, "overlay", flags, Some(plain.as_c_str()))
                .map_err(|e| io("cannot mount the overlay at", target)(e.into()))?;
            VOLATILE_ACCEPTED.store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("this kernel's overlayfs has no volatile option: container rootfs unmounts will sync");
            Ok(())
        }
        result => result.map_err(|e| io("cannot mount the overlay at", target)(e.into())),
    }
}

/// Whether overlay mounts still take `volatile`; cleared the first time the kernel refuses it.
static VOLATILE_ACCEPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
