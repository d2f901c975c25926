//! Container root filesystems: an image's layer snapshots as overlayfs lower directories, with a
//! per-container upper and work directory (`containers/<id>/`).
//!
//! The chain IDs a container uses are written to `containers/<id>/layers.json` before the mount, so
//! garbage collection never deletes a snapshot under a container, even after the image is removed
//! (removing an image in use must not break the container). Unmounting and removing is idempotent: it
//! finishes whatever an interrupted removal left.

use std::ffi::CString;
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
            RootfsError::TooManyLayers { .. } => ErrorKind::ResourceExhausted,
        }
    }
}

fn check_id(id: &str) -> Result<(), RootfsError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(RootfsError::ContainerId { id: id.to_owned() }) }
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
        check_id(container_id)?;
        let record = self.find(image).await?.ok_or_else(|| RootfsError::ImageNotFound { image: image.to_owned() })?;
        let dir = self.container_dir(container_id);
        let lowers: Vec<PathBuf> = record.chain_ids.iter().rev().map(|c| self.snapshot_path(c)).collect();
        let target = target.to_owned();
        let id = container_id.to_owned();
        let chain_ids = record.chain_ids.clone();
        tokio::task::spawn_blocking(move || mount_blocking(&id, &dir, &chain_ids, &lowers, &target, read_only))
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
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(RootfsError::Io { id, step: "cannot remove", path: dir, source }),
            }
        })
        .await
        .map_err(|e| RootfsError::Image(ImageError::Worker(e)))?
    }
}

fn mount_blocking(
    id: &str,
    dir: &Path,
    chain_ids: &[crate::digest::Digest],
    lowers: &[PathBuf],
    target: &Path,
    read_only: bool,
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
    let layers = dir.join("layers.json");
    let temp = dir.join(".layers.json.tmp");
    std::fs::write(&temp, serde_json::to_vec(chain_ids).expect("digests serialize"))
        .map_err(io("cannot write", &temp))?;
    std::fs::rename(&temp, &layers).map_err(io("cannot write", &layers))?;

    let lowerdir = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let options = format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.display(), work.display());
    // The mount data is one page (4096 bytes including the NUL) and longer options are cut by the kernel.
    if options.len() > 4095 {
        return Err(RootfsError::TooManyLayers { id: id.to_owned(), layers: lowers.len(), length: options.len() });
    }
    let data = CString::new(options).expect("paths have no NUL");
    let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
    rustix::mount::mount("overlay", target, "overlay", flags, Some(data.as_c_str()))
        .map_err(|e| io("cannot mount the overlay rootfs at", target)(e.into()))
}
