//! Image volumes (Kubernetes' `image` volume source, CRI `Mount.image`): the content of an image the node
//! has pulled, mounted read-only into a container. Nothing is copied: the volume is the image's layer
//! snapshots, seen through a read-only overlay when there are several and a read-only bind mount of the
//! one snapshot otherwise (overlayfs wants two lower directories when it has no upper one). It is mounted
//! at `containers/<id>/volumes/<n>` (n: the mount's index in the CRI request), `ro,nosuid,nodev,noexec`
//! as CRI-O does, and the container's spec binds it (or a sub path of it) to the destination.
//!
//! As for the root filesystem, the chain IDs are written first (`containers/<id>/volume-<n>.layers.json`),
//! so garbage collection keeps the snapshots while the container exists, even once the image is removed.
//! [`ImageStore::remove_rootfs`] unmounts the volumes before it deletes the container's directory.

use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::rootfs::{RootfsError, check_id, mount_overlay_with, write_layers_intent};
use crate::store::{ImageError, ImageStore};

/// Where a container's image volumes are mounted.
pub(crate) fn volumes_dir(container_dir: &Path) -> PathBuf {
    container_dir.join("volumes")
}

const VOLUME_FLAGS: MountFlags =
    MountFlags::RDONLY.union(MountFlags::NOSUID).union(MountFlags::NODEV).union(MountFlags::NOEXEC);

/// What a sub path of an image volume resolved to.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("sub path {sub_path:?} does not exist in the image")]
    Missing { sub_path: String },
    #[error("sub path {sub_path:?} cannot be used: {source}")]
    Unusable {
        sub_path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageStore {
    /// Mounts `image` (an ID, tag or digest reference) read-only as image volume number `index` of
    /// container `container_id`, and returns where it is mounted on the host.
    pub async fn mount_image_volume(
        &self,
        container_id: &str,
        index: usize,
        image: &str,
    ) -> Result<PathBuf, RootfsError> {
        check_id(container_id)?;
        let record = self.find(image).await?.ok_or_else(|| RootfsError::ImageNotFound { image: image.to_owned() })?;
        let dir = self.container_dir(container_id);
        let lowers: Vec<PathBuf> = record.chain_ids.iter().rev().map(|c| self.snapshot_path(c)).collect();
        let id = container_id.to_owned();
        tokio::task::spawn_blocking(move || mount_volume_blocking(&id, &dir, index, &record.chain_ids, &lowers))
            .await
            .map_err(|e| RootfsError::Image(ImageError::Worker(e)))?
    }
}

fn mount_volume_blocking(
    id: &str,
    dir: &Path,
    index: usize,
    chain_ids: &[crate::digest::Digest],
    lowers: &[PathBuf],
) -> Result<PathBuf, RootfsError> {
    let io = |step, path: &Path| {
        let (id, path) = (id.to_owned(), path.to_owned());
        move |source| RootfsError::Io { id, step, path, source }
    };
    let volumes = volumes_dir(dir);
    let target = volumes.join(index.to_string());
    for path in [dir, &volumes, &target] {
        match std::fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(io("cannot create", path)(err)),
        }
    }
    write_layers_intent(id, dir, &format!("volume-{index}.layers.json"), chain_ids)?;
    match lowers {
        [] => {
            // An image without layers is an empty volume: the empty directory itself, read-only.
            bind_read_only(&target, &target).map_err(io("cannot mount the empty image volume at", &target))?;
        }
        [only] => bind_read_only(only, &target).map_err(io("cannot bind the image volume's layer at", &target))?,
        _ => mount_overlay_with(id, lowers, None, &target, VOLUME_FLAGS)?,
    }
    Ok(target)
}

/// A bind mount of `source` at `target` with [`VOLUME_FLAGS`]: the classic mount(2) takes a bind's flags
/// only on a remount.
fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    rustix::mount::mount_bind(source, target)?;
    rustix::mount::mount_remount(target, MountFlags::BIND | VOLUME_FLAGS, c"").map_err(|err| {
        // Never leave a writable view of a snapshot behind.
        let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
        err.into()
    })
}

/// The host path of `sub_path` inside the mounted volume at `volume`, resolved as if the volume were the
/// root: `..` and absolute symlinks stay inside it. kubelet has checked that the sub path is relative and
/// has no `..`; symlinks in the image are what this guards against.
pub fn resolve_sub_path(volume: &Path, sub_path: &str) -> Result<PathBuf, SubPathError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let unusable = |source: std::io::Error| SubPathError::Unusable { sub_path: sub_path.to_owned(), source };
    let root = rustix::fs::open(volume, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| unusable(e.into()))?;
    let resolved = rustix::fs::openat2(
        root.as_fd(),
        sub_path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => SubPathError::Missing { sub_path: sub_path.to_owned() },
        errno => unusable(errno.into()),
    })?;
    // The volume is read-only, so the path of what was opened stays what it names.
    let path = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&resolved)))
        .map_err(unusable)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_path_resolves_inside_the_volume_even_through_symlinks() {
        let volume = tempfile::tempdir().unwrap();
        let root = volume.path();
        std::fs::create_dir_all(root.join("etc/app")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        let canonical = root.canonicalize().unwrap();

        assert_eq!(resolve_sub_path(root, "etc/app").unwrap(), canonical.join("etc/app"));
        // An absolute link points into the volume, not at the host's /etc.
        assert_eq!(resolve_sub_path(root, "abs").unwrap(), canonical.join("etc"));
        assert_eq!(resolve_sub_path(root, "abs/app").unwrap(), canonical.join("etc/app"));
        // `..` stops at the volume's root.
        assert_eq!(resolve_sub_path(root, "etc/up").unwrap(), canonical);
        assert!(matches!(resolve_sub_path(root, "missing"), Err(SubPathError::Missing { .. })));
        assert!(matches!(resolve_sub_path(root, "abs/missing/deeper"), Err(SubPathError::Missing { .. })));
    }
}
